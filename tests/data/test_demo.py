"""The generated demo cohort: real DICOM series readable by SimpleITK, with the intended geometry, HU and labels."""

from __future__ import annotations

import filecmp
import hashlib
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from scipy import ndimage

from pipeline.cli import main
from pipeline.data.demo import (
    CLASS_NAMES,
    HARD_LESION_DIAMETER_MM,
    SITES,
    demo_geometry,
    lesion_volume_range_ml,
    write_demo_cohort,
)
from pipeline.data.reader import read_volume
from pipeline.errors import UserError


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Ten scans at the default 64 matrix: nine patients, one with a follow-up, both labels, several sites."""
    return write_demo_cohort(tmp_path_factory.mktemp("demo") / "cohort", cases=10, size=64, seed=0)


def _read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder))
    assert len(series_ids) == 1, f"{folder} should hold exactly one series, found {series_ids}"
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))
    return reader.Execute()


def _first(cohort, label: str):
    return next(case for case in cohort.cases if case.label == label)


@pytest.mark.parametrize("label", CLASS_NAMES)
def test_simpleitk_reads_series_with_intended_geometry(cohort, label):
    case = _first(cohort, label)
    image = _read_series(case.series_dir)
    geometry = demo_geometry(64)

    assert image.GetSize() == (64, 64, case.n_slices)
    assert geometry.min_slices <= case.n_slices <= geometry.max_slices
    assert np.allclose(image.GetSpacing(), (case.pixel_spacing_mm, case.pixel_spacing_mm, geometry.slice_spacing_mm))
    # a chest field of view, axial slices with identity direction cosines
    assert 320 < case.pixel_spacing_mm * 64 < 380
    assert np.allclose(image.GetDirection(), np.eye(3).ravel())

    rendered = case.render()
    assert np.allclose(image.GetOrigin(), rendered.origin_mm, atol=1e-3)
    # what SimpleITK decodes (with the rescale applied) is exactly the rendered HU volume
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), rendered.hu)


@pytest.mark.parametrize("label", CLASS_NAMES)
def test_hounsfield_units_of_air_lung_and_lesions(cohort, label):
    case = _first(cohort, label)
    hu = sitk.GetArrayFromImage(_read_series(case.series_dir)).astype(np.float64)
    rendered = case.render()

    air = hu[:, :4, :]  # the rows in front of the patient (anterior of the body, above the table)
    assert abs(air.mean() + 1000) < 15
    assert 10 < air.std() < 40  # scanner noise, not a flat fill

    bone = hu.max()
    assert bone > 300  # vertebrae and ribs

    if label == "negative":
        assert not rendered.lesion_mask.any()
        assert rendered.lung_mask.sum() > 500
        assert -900 < np.median(hu[rendered.lung_mask]) < -750  # aerated lung, vessels and nodules included
    else:
        # ground glass (-430 .. -300 HU, soft rims) and consolidation: well above aerated lung (~-850), below soft
        # tissue
        assert rendered.lesion_mask.any()
        assert -550 < np.median(hu[rendered.lesion_mask]) < -150
        assert np.percentile(hu[rendered.lesion_mask], 90) > -450


def test_lesions_only_in_positives_and_counted(cohort):
    for case in cohort.cases:
        if case.label == "positive":
            assert case.lesion_voxels > 0 and case.lesion_volume_ml > 0 and case.n_lesions >= 1
            assert case.severity in ("mild", "moderate", "extensive")
        else:
            assert case.lesion_voxels == 0 and case.n_lesions == 0 and case.severity == "none"
    positive = _first(cohort, "positive")
    assert positive.render().lesion_mask.sum() == positive.lesion_voxels


def test_every_positive_carries_a_learnable_lesion_burden(cohort):
    # the demo must be learnable by a small network at 5 mm voxels: even a mild case fills ~10 % or more of its lung
    # (the earlier 2-8 % left mild positives indistinguishable from negatives), and lesions lie in the lung
    positives = [case for case in cohort.cases if case.label == "positive"]
    assert positives
    for case in positives:
        rendered = case.render()
        assert not (rendered.lesion_mask & ~rendered.lung_mask).any()
        assert rendered.lesion_mask.sum() / rendered.lung_mask.sum() > 0.05, (case.path, case.severity)


def test_labels_csv_matches_folders(cohort):
    labels = pd.read_csv(cohort.labels_csv, dtype=str, keep_default_na=False)
    assert list(labels.columns) == ["path", "label", "site"]
    folders = sorted(p.name for p in cohort.root.iterdir() if p.is_dir())
    assert sorted(labels["path"]) == folders == [case.path for case in cohort.cases]
    for row in labels.itertuples():
        case = cohort.cases[row.Index]
        assert (row.label, row.site) == (case.label, case.site)
        assert len(list((cohort.root / row.path).glob("*.dcm"))) == case.n_slices
        first = pydicom.dcmread(next((cohort.root / row.path).glob("*.dcm")), stop_before_pixels=True)
        assert first.InstitutionName == row.site
    counts = labels["label"].value_counts()
    assert set(counts.index) == set(CLASS_NAMES)
    assert abs(counts["positive"] - counts["negative"]) <= 2
    assert set(labels["site"]) <= set(SITES) and labels["site"].nunique() >= 2


def test_dicom_headers_are_complete_ct_with_fake_phi(cohort):
    case = cohort.cases[0]
    files = sorted(case.series_dir.glob("*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    first = datasets[0]
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.file_meta.MediaStorageSOPClassUID == CTImageStorage == first.SOPClassUID
    assert first.Modality == "CT" and list(first.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert first.Manufacturer == "aamct demo"
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert (first.BitsAllocated, first.PixelRepresentation) == (16, 1)
    assert (float(first.RescaleSlope), float(first.RescaleIntercept)) == (1.0, -1024.0)
    assert float(first.SliceThickness) == float(first.SpacingBetweenSlices) == case.slice_spacing_mm
    # fake, obviously synthetic identifiers that the pipeline must strip
    assert str(first.PatientName).startswith("Demopatient^Case") and first.PatientID.startswith("DEMO-")
    assert len(first.PatientBirthDate) == 8
    for uid_name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert UID(first[uid_name].value).is_valid
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    # instance 1 is the top slice; positions step down by the slice spacing
    by_instance = sorted(datasets, key=lambda ds: ds.InstanceNumber)
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in by_instance])
    assert np.allclose(np.diff(z), -case.slice_spacing_mm)
    series_uids = {pydicom.dcmread(next(c.series_dir.glob("*.dcm"))).SeriesInstanceUID for c in cohort.cases}
    assert len(series_uids) == len(cohort.cases)


def test_follow_up_scans_share_the_patient_not_the_study(cohort):
    follow_ups = [case for case in cohort.cases if case.study == 2]
    assert follow_ups, "a ten-scan cohort should contain a follow-up study"
    for follow_up in follow_ups:
        baseline = next(c for c in cohort.cases if c.patient == follow_up.patient and c.study == 1)
        first = pydicom.dcmread(next(baseline.series_dir.glob("*.dcm")), stop_before_pixels=True)
        second = pydicom.dcmread(next(follow_up.series_dir.glob("*.dcm")), stop_before_pixels=True)
        assert first.PatientID == second.PatientID and first.PatientName == second.PatientName
        assert first.StudyInstanceUID != second.StudyInstanceUID
        assert second.StudyDate > first.StudyDate
        assert (baseline.label, baseline.site) == (follow_up.label, follow_up.site)
    assert len({case.patient for case in cohort.cases}) == len(cohort.cases) - len(follow_ups)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_same_seed_gives_byte_identical_files(tmp_path):
    first = write_demo_cohort(tmp_path / "a", cases=3, size=32, seed=5)
    second = write_demo_cohort(tmp_path / "b", cases=3, size=32, seed=5)
    other = write_demo_cohort(tmp_path / "c", cases=3, size=32, seed=6)
    files = _tree(first.root)
    assert files == _tree(second.root) and len(files) > 3
    _, mismatch, errors = filecmp.cmpfiles(first.root, second.root, files, shallow=False)
    assert mismatch == [] and errors == []
    _, differ, _ = filecmp.cmpfiles(first.root, other.root, [f for f in files if f.endswith(".dcm")], shallow=False)
    assert differ, "a different seed must give different images"


#: sha256 over (hu, lesion_mask, lung_mask) bytes of both scans of a 2-case, size-32, seed-0 cohort, per difficulty;
#: computed with the single-file generator just before it was split into the pipeline.data.demo package (the hashes
#: of that commit's 12-case cohorts, with and without --difficulty hard / --masks, matched file for file after it)
_PINNED_RENDER_SHA256 = {
    "default": "cab84dd48aee845a7977d51a39a607823ff99942a9cff9a43332ce4e111a305b",
    "hard": "05adc2f838e71063e41e52a88b0a1ffb32a1359f074dc088d3d6bb7f2ec39ba7",
}


@pytest.mark.parametrize("difficulty", sorted(_PINNED_RENDER_SHA256))
def test_rendered_volumes_match_the_pinned_bytes(tmp_path, difficulty):
    # Guards refactors of the generator (moving code between its modules, reordering draws of a random stream) that
    # would silently change every demo cohort, and with it the cached cohorts and trained demo models keyed on them.
    # A deliberate change to the generated images updates the hash here and says so; a numpy/scipy upgrade that
    # changes zoom/gaussian_filter rounding would also show here.
    cohort = write_demo_cohort(tmp_path / difficulty, cases=2, size=32, seed=0, difficulty=difficulty)
    digest = hashlib.sha256()
    for case in cohort.cases:
        rendered = case.render()
        for array in (rendered.hu, rendered.lesion_mask, rendered.lung_mask):
            digest.update(np.ascontiguousarray(array).tobytes())
    assert [case.label for case in cohort.cases] == ["positive", "negative"]
    assert digest.hexdigest() == _PINNED_RENDER_SHA256[difficulty]


def test_same_seed_gives_the_same_patients_at_another_size(tmp_path):
    small = write_demo_cohort(tmp_path / "small", cases=4, size=32, seed=9)
    larger = write_demo_cohort(tmp_path / "larger", cases=4, size=48, seed=9)

    def who(case):
        return (case.label, case.site, case.patient, case.study, case.severity, case.n_lesions)

    assert [who(c) for c in small.cases] == [who(c) for c in larger.cases]
    assert small.cases[0].pixel_spacing_mm > larger.cases[0].pixel_spacing_mm


def test_rerun_into_the_same_folder_replaces_the_old_cohort(tmp_path):
    write_demo_cohort(tmp_path / "demo", cases=4, size=32, seed=0)
    smaller = write_demo_cohort(tmp_path / "demo", cases=2, size=32, seed=1)
    assert sorted(p.name for p in smaller.root.iterdir() if p.is_dir()) == ["scan-0001", "scan-0002"]
    assert len(pd.read_csv(smaller.labels_csv)) == 2


def test_refuses_bad_arguments_and_foreign_folders(tmp_path):
    with pytest.raises(UserError, match="--size"):
        write_demo_cohort(tmp_path / "x", cases=2, size=16)
    with pytest.raises(UserError, match="--cases"):
        write_demo_cohort(tmp_path / "x", cases=0)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        write_demo_cohort(foreign, cases=2, size=32)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_geometry_scales_from_demo_to_acquired_size():
    small, full = demo_geometry(64), demo_geometry(512)
    assert (small.min_slices, small.max_slices) == (24, 32)
    assert (full.min_slices, full.max_slices) == (50, 80)
    assert full.slice_spacing_mm == 5.0
    # about the same cranio-caudal coverage at both sizes
    assert abs(small.slice_spacing_mm * 28 - full.slice_spacing_mm * 65) < 20


def test_cli_writes_cohort_and_reports_user_errors(tmp_path, capsys):
    assert main(["demo-data", "--out", str(tmp_path / "cli"), "--cases", "2", "--size", "32", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 demo CT series" in out and "Demopatient" not in out and "DEMO-" not in out
    assert (tmp_path / "cli" / "labels.csv").is_file()

    assert main(["demo-data", "--out", str(tmp_path / "bad"), "--size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aamct: error:") and "--size" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------------------------------
# truth on disk (--masks) and the hard demo (--difficulty hard, --lesion-size-range)

_NEIGHBOURS = np.ones((3, 3, 3), dtype=bool)  # 26-neighbourhood: lesions that touch even diagonally are one piece


@pytest.fixture(scope="module")
def truth_cohort(tmp_path_factory):
    """The default demo (six scans, both labels) with its masks and truth tables."""
    return write_demo_cohort(tmp_path_factory.mktemp("truth") / "cohort", cases=6, size=64, seed=0, masks=True)


def _truth(cohort) -> pd.DataFrame:
    return pd.read_csv(cohort.truth_dir / "truth.csv", dtype={"path": str}, keep_default_na=False)


def _mask(cohort, relative: str) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(cohort.truth_dir / relative)
    return np.asarray(image.dataobj), image


def _voxel_ml(image: nib.Nifti1Image) -> float:
    return float(np.prod(image.header.get_zooms()[:3])) / 1000.0


@pytest.mark.parametrize("label", CLASS_NAMES)
def test_masks_lie_on_the_grid_the_reader_returns_for_the_series(truth_cohort, label):
    case = _first(truth_cohort, label)
    row = _truth(truth_cohort).set_index("path").loc[case.path]
    hu, meta = read_volume(case.series_dir)
    rendered = case.render()
    for column, expected in (("lesion_mask", rendered.lesion_mask), ("lung_mask", rendered.lung_mask)):
        mask, image = _mask(truth_cohort, row[column])
        assert Path(row[column]).name.startswith(case.path)  # named by the series folder
        assert mask.shape == hu.shape
        np.testing.assert_allclose(image.affine, meta["affine"], atol=1e-4)
        np.testing.assert_allclose(image.get_qform(), meta["affine"], atol=1e-4)
        assert image.header.get_intent()[0] == "label" and mask.dtype == np.uint8
        # the mask in the reader's (X, Y, Z) order is the generator's own (slice, row, column) mask
        np.testing.assert_array_equal(mask.transpose(2, 1, 0), expected)
    lesion, image = _mask(truth_cohort, row["lesion_mask"])
    lung, _ = _mask(truth_cohort, row["lung_mask"])
    assert row["lesion_volume_ml"] == pytest.approx(lesion.sum() * _voxel_ml(image), abs=1e-3)
    assert row["lung_volume_ml"] == pytest.approx(lung.sum() * _voxel_ml(image), abs=0.01)
    assert (row["label"], row["site"], row["n_lesions"]) == (case.label, case.site, case.n_lesions)
    if label == "positive":
        # read through the reader, the mask picks out the opacities: far denser than the rest of the lung
        inside, rest = hu[lesion > 0], hu[(lung > 0) & (lesion == 0)]
        assert inside.mean() > rest.mean() + 250
        assert not (lesion > lung).any()
    else:
        assert lesion.sum() == 0 and row["lesion_volume_ml"] == 0


def test_truth_tables_cover_every_scan_and_masks_stay_out_of_the_dicom_tree(truth_cohort):
    truth = _truth(truth_cohort)
    labels = pd.read_csv(truth_cohort.labels_csv, dtype=str, keep_default_na=False)
    assert truth["path"].tolist() == labels["path"].tolist()
    assert truth["label"].tolist() == labels["label"].tolist()
    lesions = pd.read_csv(truth_cohort.truth_dir / "lesions.csv", dtype={"path": str})
    assert lesions.groupby("path").size().to_dict() == {
        row.path: row.n_lesions for row in truth.itertuples() if row.n_lesions
    }
    assert set(lesions["kind"]) == {"ggo"} and (lesions["volume_ml"] > 0).all()
    # no NIfTI (or any non-DICOM file but labels.csv) under the DICOM root: manifest build would reject it
    assert [p.name for p in truth_cohort.root.rglob("*") if p.is_file() and p.suffix != ".dcm"] == ["labels.csv"]
    settings = json.loads((truth_cohort.truth_dir / "generator.json").read_text())
    assert (settings["cases"], settings["size"], settings["seed"], settings["difficulty"]) == (6, 64, 0, "default")


def test_masks_leave_the_default_cohort_byte_identical(tmp_path):
    plain = write_demo_cohort(tmp_path / "plain", cases=3, size=32, seed=4)
    with_truth = write_demo_cohort(tmp_path / "with", cases=3, size=32, seed=4, masks=True)
    files = _tree(plain.root)
    assert files == _tree(with_truth.root)
    _, mismatch, errors = filecmp.cmpfiles(plain.root, with_truth.root, files, shallow=False)
    assert mismatch == [] and errors == []
    assert with_truth.truth_dir == (tmp_path / "with_truth").resolve()


def _components(cohort) -> dict[str, list[float]]:
    """Per scan: the volume (ml) of each connected component of its written lesion mask."""
    volumes = {}
    for row in _truth(cohort).itertuples():
        mask, image = _mask(cohort, row.lesion_mask)
        labelled, n = ndimage.label(mask > 0, structure=_NEIGHBOURS)
        counts = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
        volumes[row.path] = sorted(float(c) * _voxel_ml(image) for c in counts)
    return volumes


@pytest.mark.parametrize(
    ("size_range", "unit"),
    [(None, "mm"), ((14.0, 22.0), "mm"), ((2.0, 6.0), "ml")],
    ids=["hard-default-range", "mm-range", "ml-range"],
)
def test_hard_demo_lesions_lie_inside_the_requested_size_range(tmp_path, size_range, unit):
    cohort = write_demo_cohort(
        tmp_path / "hard",
        cases=8,
        size=64,
        seed=2,
        difficulty="hard",
        lesion_size_range=size_range,
        lesion_size_unit=unit,
        masks=True,
    )
    low_ml, high_ml = lesion_volume_range_ml(*(size_range or HARD_LESION_DIAMETER_MM), unit=unit)
    assert cohort.lesion_volume_range_ml == pytest.approx((low_ml, high_ml))
    truth = _truth(cohort).set_index("path")
    lesions = pd.read_csv(cohort.truth_dir / "lesions.csv", dtype={"path": str})
    components = _components(cohort)
    positives = truth.index[truth["label"] == "positive"]
    assert len(positives) >= 3
    for path, volumes in components.items():
        if path not in positives:
            assert volumes == []
            continue
        # every lesion is its own piece of the mask, and every piece is inside the range
        assert 1 <= len(volumes) == truth.loc[path, "n_lesions"] <= 7
        assert all(low_ml - 1e-9 <= v <= high_ml + 1e-9 for v in volumes), (path, volumes, (low_ml, high_ml))
        listed = sorted(lesions.loc[lesions["path"] == path, "volume_ml"])
        np.testing.assert_allclose(listed, volumes, atol=1e-3)
        assert sum(volumes) == pytest.approx(truth.loc[path, "lesion_volume_ml"], abs=1e-3)
    if unit == "mm":
        low_mm, high_mm = size_range or HARD_LESION_DIAMETER_MM
        assert lesions["diameter_mm"].between(low_mm - 0.01, high_mm + 0.01).all()


def test_hard_demo_is_smaller_and_fainter_on_the_same_patients(tmp_path):
    default = write_demo_cohort(tmp_path / "default", cases=6, size=64, seed=0)
    hard = write_demo_cohort(tmp_path / "hard", cases=6, size=64, seed=0, difficulty="hard")

    def who(case):
        return (case.label, case.site, case.patient, case.study, case.n_slices)

    assert [who(c) for c in default.cases] == [who(c) for c in hard.cases]
    for easy, difficult in zip(default.cases, hard.cases, strict=True):
        if easy.label == "negative":
            assert difficult.lesion_voxels == 0
            continue
        rendered, rendered_easy = difficult.render(), easy.render()
        # a hard positive carries 2-12 % of its lung in lesions, and less than the same
        # patient's default scan
        assert 0.02 < rendered.lesion_mask.sum() / rendered.lung_mask.sum() < 0.12
        assert difficult.lesion_volume_ml < easy.lesion_volume_ml
        # fainter: ground glass only (no consolidation), below the default's density on the same patient; a lesion
        # anywhere in the lung has vessels running through it (solid voxels), so the upper quartile, not the top
        # percentiles, says "no consolidation"
        hard_hu = np.median(rendered.hu[rendered.lesion_mask])
        assert hard_hu < np.median(rendered_easy.hu[rendered_easy.lesion_mask])
        assert -600 < hard_hu < -300 and np.percentile(rendered.hu[rendered.lesion_mask], 75) < -250
        assert difficult.severity == "hard" and 4 <= difficult.n_lesions <= 7


def test_size_range_and_truth_folder_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(UserError, match="0 < MIN < MAX"):
        write_demo_cohort(tmp_path / "a", cases=2, size=32, lesion_size_range=(20, 10))
    with pytest.raises(UserError, match="--lesion-size-unit"):
        write_demo_cohort(tmp_path / "a", cases=2, size=32, lesion_size_range=(1, 2), lesion_size_unit="cm")
    with pytest.raises(UserError, match="--difficulty"):
        write_demo_cohort(tmp_path / "a", cases=2, size=32, difficulty="extreme")
    with pytest.raises(UserError, match="outside the DICOM folder"):
        write_demo_cohort(tmp_path / "a", cases=2, size=32, truth_dir=tmp_path / "a" / "truth")
    # at 32 x 32 a voxel is ~2 ml: no lesion of 3-5 mm (0.01-0.07 ml) fits
    with pytest.raises(UserError, match="widen --lesion-size-range"):
        write_demo_cohort(tmp_path / "b", cases=2, size=32, seed=0, difficulty="hard", lesion_size_range=(3, 5))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="no demo truth"):
        write_demo_cohort(tmp_path / "c", cases=2, size=32, truth_dir=foreign)
    assert (foreign / "notes.txt").read_text() == "mine"

    args = ["demo-data", "--out", str(tmp_path / "cli"), "--cases", "2", "--size", "32"]
    assert main([*args, "--difficulty", "hard", "--lesion-size-range", "30", "20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aamct: error:") and "--lesion-size-range" in err and len(err.strip().splitlines()) == 1


def test_cli_writes_the_hard_demo_with_its_truth(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["demo-data", "--out", str(out), "--cases", "4", "--seed", "1", "--difficulty", "hard", "--masks"]
    assert main([*args, "--lesion-size-range", "1.5", "8", "--lesion-size-unit", "ml"]) == 0
    printed = capsys.readouterr().out
    assert "hard" in printed and "1.5-8 ml" in printed and str(out) + "_truth" in printed
    truth = pd.read_csv(out.parent / "cli_truth" / "truth.csv")
    assert len(truth) == 4 and (out.parent / "cli_truth" / truth["lesion_mask"][0]).is_file()
    settings = json.loads((out.parent / "cli_truth" / "generator.json").read_text())
    assert settings["lesion_volume_range_ml"] == [1.5, 8.0] and settings["difficulty"] == "hard"
    assert math.isclose(settings["lesion_diameter_range_mm"][0], (6 * 1500 / math.pi) ** (1 / 3))
