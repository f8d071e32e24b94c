"""``aamct manifest build`` end to end on a mixed tree of real DICOM files: accounting, labels, privacy, CLI."""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from pydicom.uid import MPEG2MPML, generate_uid

from pipeline.cli import main
from pipeline.data.manifest import MANIFEST_COLUMNS, REJECTION_COLUMNS, build_manifest, read_labels
from pipeline.data.pseudonym import KEY_ENV_VAR, Pseudonymizer, load_key
from pipeline.errors import UserError
from tests.conftest import shared_path
from tests.data.dicom_factory import PHI, write_ct_series, write_enhanced_ct, write_text_file

OTHER_PHI = {"PatientName": "Brackenbury^Odalys", "PatientID": "HOSP-0099182", "PatientBirthDate": "19580214"}
NO_ID_PHI = {"PatientName": "Vintergatan^Ebbe", "PatientID": "", "PatientBirthDate": "19771003"}


@pytest.fixture
def key_file(tmp_path) -> Path:
    path = tmp_path / "pseudonym.key"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    return path


@pytest.fixture(autouse=True)
def _isolated_key_locations(tmp_path, monkeypatch):
    """No test may read or create the developer's real per-user key."""
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def mixed_tree(tmp_path):
    """A cohort with good series, every kind of bad input, and a labels CSV inside the tree."""
    root = tmp_path / "cohort"
    study_a = generate_uid()
    good = {
        "a": write_ct_series(root / "p1" / "study1" / "axial", study_uid=study_a, accession="ACC-1001"),
        "b": write_ct_series(root / "p1" / "study2" / "axial", n_slices=17, accession="ACC-1002"),
        "c": write_ct_series(root / "p2" / "ct", n_slices=18, phi=OTHER_PHI, accession="ACC-2001"),
        "d": write_ct_series(root / "p3" / "ct", n_slices=16, phi=NO_ID_PHI, accession="ACC-3001"),
    }
    bad = {
        "scout": write_ct_series(
            root / "p1" / "study1" / "scout",
            study_uid=study_a,
            n_slices=2,
            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        ).folder,
        "mr": write_ct_series(root / "p4" / "mr", n_slices=16, modality="MR").folder,
        "gap": write_ct_series(
            root / "p5" / "gap", positions=[(0.0, 0.0, 2.0 * i) for i in range(20) if i != 9]
        ).folder,
        "tilt": write_ct_series(root / "p6" / "tilt", tilt_degrees=12.0).folder,
        # a one-file series: its row names the file
        "enhanced": write_enhanced_ct(root / "p7" / "enhanced" / "vol.dcm"),
        "mpeg": write_ct_series(root / "p8" / "mpeg", n_slices=16, transfer_syntax=MPEG2MPML).folder,
        "few": write_ct_series(root / "p9" / "few", n_slices=5).folder,
        "text": write_text_file(root / "export.log", "exported by PACS\n"),
    }
    truncated = write_ct_series(root / "p10" / "trunc", n_slices=16)
    truncated.files[3].write_bytes(truncated.files[3].read_bytes()[:-50])
    bad["truncated"] = truncated.folder
    labels = pd.DataFrame(
        [
            {"path": "p1/study1", "label": "positive", "site": "site-x"},  # ancestor folder of series a
            {"series_uid": good["b"].series_uid, "label": "negative"},
            {"patient_id": OTHER_PHI["PatientID"], "label": "positive", "site": "site-y"},
            {"accession": "ACC-3001", "label": "negative"},
            {"path": "p99/nowhere", "label": "positive"},  # matches nothing: line 6
            {"study_uid": generate_uid(), "label": "negative"},  # matches nothing: line 7
        ],
        columns=["path", "series_uid", "study_uid", "accession", "patient_id", "label", "site"],
    ).fillna("")
    labels_csv = root / "labels.csv"
    labels.to_csv(labels_csv, index=False)
    n_files = sum(1 for p in root.rglob("*") if p.is_file()) - 1  # the labels CSV is not a scanned file
    return root, labels_csv, good, bad, n_files


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_mixed_tree_accounts_for_every_file_and_labels_cases(tmp_path, mixed_tree, key_file, caplog):
    root, labels_csv, good, bad, n_files = mixed_tree
    out = tmp_path / "manifests" / "cohort.csv"
    with caplog.at_level(logging.DEBUG):
        result = build_manifest(
            dicom_root=root,
            nifti_glob=None,
            labels_csv=labels_csv,
            out=out,
            site="hospital-1",
            min_slices=None,
            key_file=key_file,
            workers=2,
            allow_out_of_scope=True,  # toy volumes, not chests (the scope check: tests/data/test_scope.py)
        )
    manifest = _read(out)
    rejections = _read(tmp_path / "manifests" / "cohort.rejections.csv")
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert list(rejections.columns) == list(REJECTION_COLUMNS)
    assert result.rejections_path == tmp_path / "manifests" / "cohort.rejections.csv"

    # every good case is in the manifest, every bad input in the rejections, and the files add up
    images = {Path(p) for p in manifest["image"]}
    assert images == {s.folder for s in good.values()}  # outside the manifest folder: absolute paths
    rejected = dict(zip(rejections["path"], rejections["reason"], strict=True))
    assert set(rejected) == {str(p) for p in bad.values()}
    assert manifest["n_slices"].astype(int).sum() + rejections["n_files"].astype(int).sum() == n_files
    assert result.n_files == n_files and result.n_cases == 4 and result.n_rejected == len(bad)

    expected_reasons = {
        "scout": "skipped: scout/LOCALIZER series",
        "mr": "skipped: modality MR (not CT)",
        "gap": "missing slices: a gap of 4.000 mm",
        "tilt": "gantry tilt of 12.00 degrees",
        "enhanced": "multi-frame Enhanced CT is not supported",
        "mpeg": "unsupported transfer syntax MPEG2 Main Profile / Main Level",
        "few": "too few slices: 5 (minimum 16)",
        "text": "not a DICOM file",
        "truncated": "truncated pixel data",
    }
    for name, prefix in expected_reasons.items():
        assert rejected[str(bad[name])].startswith(prefix), (name, rejected[str(bad[name])])

    by_image = manifest.set_index("image")
    row = {name: by_image.loc[str(series.folder)] for name, series in good.items()}
    assert (row["a"].label, row["a"].site) == ("positive", "site-x")
    assert (row["b"].label, row["b"].site) == ("negative", "hospital-1")
    assert (row["c"].label, row["c"].site) == ("positive", "site-y")
    assert (row["d"].label, row["d"].site) == ("negative", "hospital-1")
    assert row["a"].spacing_mm == "0.800x0.700x2.000" and row["a"].source == "dicom"
    assert (manifest["split"] == "").all() and (manifest["fold"] == "").all()

    # pseudonymous ids: one patient for a and b (same PatientID), another for c, a fallback for d
    assert all(re.fullmatch(r"case-[0-9a-f]{10}", c) for c in manifest["case_id"])
    assert all(re.fullmatch(r"pt-[0-9a-f]{10}", p) for p in manifest["patient_id"])
    assert manifest["case_id"].is_unique
    assert row["a"].patient_id == row["b"].patient_id
    assert len({row["a"].patient_id, row["c"].patient_id, row["d"].patient_id}) == 3

    summary = result.summary()
    assert "accepted 4 cases (4 labelled, 0 without a label)" in summary
    assert f"scanned {n_files} DICOM-tree files" in summary
    assert "labels: 2 of 6 rows match no accepted case (CSV lines 6, 7)" in summary
    assert "note: 1 cases have no PatientID" in summary

    # nothing identifying anywhere: outputs, summary, logs
    written = out.read_text() + result.rejections_path.read_text() + summary + caplog.text
    for phi in (PHI, OTHER_PHI, NO_ID_PHI):
        for value in phi.values():
            if value:
                assert value not in written
    for series in good.values():
        assert series.series_uid not in out.read_text() and series.study_uid not in out.read_text()
    for accession in ("ACC-1001", "ACC-1002", "ACC-2001", "ACC-3001"):
        assert accession not in written


def test_non_ascii_and_invalid_patient_ids_never_reach_logs_or_warnings(tmp_path, key_file, caplog, recwarn):
    phi = {"PatientName": "Müller^Jörg", "PatientID": "ÄBC\x01-7781", "PatientBirthDate": "19500101"}
    write_ct_series(
        tmp_path / "data" / "s",
        n_slices=16,
        phi=phi,
        edit=lambda k, ds: setattr(ds, "SpecificCharacterSet", "ISO_IR 100"),
    )
    recwarn.clear()  # pydicom warned about the invalid value while the test wrote it
    with caplog.at_level(logging.DEBUG):
        result = build_manifest(
            dicom_root=tmp_path / "data",
            nifti_glob=None,
            labels_csv=None,
            out=tmp_path / "m.csv",
            key_file=key_file,
            allow_out_of_scope=True,  # toy volumes, not chests (the scope check: tests/data/test_scope.py)
        )
    seen = caplog.text + " ".join(str(w.message) for w in recwarn) + result.summary()
    seen += result.manifest_path.read_text(encoding="utf-8") + result.rejections_path.read_text(encoding="utf-8")
    for value in ("ÄBC", "7781", "Müller", "19500101"):
        assert value not in seen
    # the id is the HMAC of the PatientID decoded with its character set (ISO_IR 100 -> latin-1)
    assert _read(result.manifest_path)["patient_id"].tolist() == [
        Pseudonymizer(load_key(key_file)).patient_id(phi["PatientID"])
    ]


def test_ids_are_stable_under_one_key_and_change_with_another(tmp_path, key_file):
    series = write_ct_series(tmp_path / "data" / "s1", n_slices=16)

    def build(name, **kwargs):
        build_manifest(
            dicom_root=tmp_path / "data",
            nifti_glob=None,
            labels_csv=None,
            out=tmp_path / name,
            allow_out_of_scope=True,
            **kwargs,
        )
        return _read(tmp_path / name)

    first = build("one.csv", key_file=key_file)
    again = build("two.csv", key_file=key_file)
    other_key = tmp_path / "other.key"
    other_key.write_text("ffffffffffffffffffffffffffffffff")
    other = build("three.csv", key_file=other_key)
    assert first["case_id"].tolist() == again["case_id"].tolist()
    assert first["case_id"].tolist() != other["case_id"].tolist()
    pseudonymizer = Pseudonymizer(load_key(key_file))
    assert first["case_id"].tolist() == [pseudonymizer.case_id(series.study_uid, series.series_uid)]
    assert first["patient_id"].tolist() == [pseudonymizer.patient_id(PHI["PatientID"])]
    assert first["image"].tolist() == ["data/s1"]  # inside the manifest's folder: relative
    assert first["label"].tolist() == [""]


def test_conflicting_labels_reject_the_case(tmp_path, key_file):
    series = write_ct_series(tmp_path / "data" / "s1", n_slices=16)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label\ns1,positive\n{series.folder},negative\n")
    result = build_manifest(
        dicom_root=tmp_path / "data",
        nifti_glob=None,
        labels_csv=labels,
        out=tmp_path / "m.csv",
        key_file=key_file,
        allow_out_of_scope=True,
    )
    assert result.n_cases == 0
    (reason,) = _read(result.rejections_path)["reason"]
    assert reason == "conflicting labels 'negative', 'positive' in the labels CSV (lines 2, 3)"


def test_nifti_inputs_are_checked_labelled_and_deduplicated(tmp_path, key_file):
    folder = tmp_path / "nifti"
    folder.mkdir()
    data = np.random.default_rng(0).integers(-1000, 1000, size=(8, 9, 20)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.0, 1.0])), folder / "good.nii.gz")
    shutil.copy(folder / "good.nii.gz", folder / "zz_copy.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 20, 3), np.int16), np.eye(4)), folder / "series4d.nii.gz")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,patient_id\nnifti/good.nii.gz,positive,MRN-555\n")
    result = build_manifest(
        dicom_root=None,
        nifti_glob=str(folder / "*.nii.gz"),
        labels_csv=labels,
        out=tmp_path / "m.csv",
        key_file=key_file,
        allow_out_of_scope=True,
    )
    manifest = _read(result.manifest_path)
    assert manifest[["image", "label", "n_slices", "spacing_mm", "source"]].values.tolist() == [
        ["nifti/good.nii.gz", "positive", "20", "0.700x0.700x2.000", "nifti"]
    ]
    assert manifest["patient_id"].tolist() == [Pseudonymizer(load_key(key_file)).patient_id("MRN-555")]
    reasons = dict(zip(_read(result.rejections_path)["path"], _read(result.rejections_path)["reason"], strict=True))
    assert reasons == {
        "nifti/series4d.nii.gz": "not a 3D volume: shape (8, 9, 20, 3) (3D, or 4D with one volume, expected)",
        "nifti/zz_copy.nii.gz": "duplicate case: same identity (UIDs or content) as nifti/good.nii.gz",
    }
    assert "MRN-555" not in result.manifest_path.read_text()


@pytest.mark.realdata
def test_real_jpeg2000_series_and_nifti_files_are_refused_out_of_scope_or_kept_when_allowed(tmp_path, key_file):
    series = shared_path("dicom", "totalseg_abdomen_ct")
    nifti = shared_path("nifti", "totalseg_example_ct.nii.gz").parent
    kwargs = dict(dicom_root=series.parent, nifti_glob=str(nifti / "*.nii.gz"), labels_csv=None, key_file=key_file)
    # abdominal CT (no lung / lung bases only): rejected, the reason naming the measured lung volume
    refused = build_manifest(**kwargs, out=tmp_path / "refused.csv")
    assert refused.n_cases == 0 and refused.rejection_kinds == {"out of scope": 3}
    reasons = _read(refused.rejections_path).set_index("path")["reason"]
    assert re.match(r"no lungs in view: 0 ml of lung", reasons[str(series)])
    assert re.match(
        r"too little lung in view: \d+ ml of lung over \d+ mm", reasons[str(nifti / "totalseg_example_ct.nii.gz")]
    )

    result = build_manifest(**kwargs, out=tmp_path / "real.csv", allow_out_of_scope=True)
    manifest = _read(result.manifest_path).set_index("image")
    dicom_row = manifest.loc[str(series)]
    assert (dicom_row.n_slices, dicom_row.spacing_mm, dicom_row.source) == ("20", "0.977x0.977x2.000", "dicom")
    assert manifest.loc[str(nifti / "totalseg_example_ct.nii.gz")].n_slices == "112"
    assert manifest.loc[str(nifti / "totalseg_example_ct_sm.nii.gz")].n_slices == "30"
    assert result.n_rejected == 0
    assert set(manifest["scope"]) == {"out_of_scope"}
    assert manifest["scope_note"].str.startswith("scored although out of scope").all()
    # the real series has blank UIDs and PatientID: its ids come from the content fingerprint
    assert "note: 3 cases have no PatientID" in result.summary()


def test_cli_build_returns_0_on_a_mixed_tree_and_2_on_usage_errors(tmp_path, mixed_tree, key_file, capsys):
    root, labels_csv, *_ = mixed_tree
    out = tmp_path / "cli.csv"
    common = ["--key-file", str(key_file), "--out", str(out)]
    toy = ["--allow-out-of-scope"]  # toy volumes, not chests
    assert main(["manifest", "build", "--dicom-root", str(root), "--labels", str(labels_csv), *common, *toy]) == 0
    printed = capsys.readouterr()
    assert "accepted 4 cases" in printed.out
    assert out.is_file() and (tmp_path / "cli.rejections.csv").is_file()

    missing = tmp_path / "no-such-root"
    assert main(["manifest", "build", "--dicom-root", str(missing), *common]) == 2
    err = capsys.readouterr().err
    assert err == f"aamct: error: {missing}: DICOM root folder not found\n"

    assert main(["manifest", "build", *common]) == 2
    assert capsys.readouterr().err == "aamct: error: no inputs: give --dicom-root and/or --nifti-glob\n"


@pytest.mark.parametrize(
    "case, message",
    [
        ("labels_missing", "labels CSV not found"),
        ("labels_without_label", "no 'label' column (columns: path, diagnosis)"),
        ("labels_without_key", "no key column; add one of path, series_uid, study_uid, accession, patient_id"),
        ("glob_matches_nothing", "--nifti-glob"),
        ("out_is_folder", "is a folder; --out must name a CSV file"),
        ("short_key", "pseudonym key is 5 bytes; use at least 16"),
        ("bad_min_slices", "--min-slices must be at least 1, got 0"),
    ],
)
def test_usage_errors_are_one_line_user_errors(tmp_path, key_file, case, message):
    data = tmp_path / "data"
    write_ct_series(data / "s", n_slices=16)
    kwargs = dict(dicom_root=data, nifti_glob=None, labels_csv=None, out=tmp_path / "m.csv", key_file=key_file)
    if case == "labels_missing":
        kwargs["labels_csv"] = tmp_path / "missing.csv"
    elif case == "labels_without_label":
        (tmp_path / "l.csv").write_text("path,diagnosis\ns,positive\n")
        kwargs["labels_csv"] = tmp_path / "l.csv"
    elif case == "labels_without_key":
        (tmp_path / "l.csv").write_text("name,label\ns,positive\n")
        kwargs["labels_csv"] = tmp_path / "l.csv"
    elif case == "glob_matches_nothing":
        kwargs["nifti_glob"] = str(tmp_path / "*.nii.gz")
    elif case == "out_is_folder":
        kwargs["out"] = data
    elif case == "short_key":
        (tmp_path / "short.key").write_text("abcde")
        kwargs["key_file"] = tmp_path / "short.key"
    elif case == "bad_min_slices":
        kwargs["min_slices"] = 0
    with pytest.raises(UserError) as err:
        build_manifest(**kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "m.csv").exists()


def test_labels_resolve_paths_against_root_then_csv_folder(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (tmp_path / "elsewhere" / "b").mkdir(parents=True)
    labels = tmp_path / "elsewhere" / "labels.csv"
    labels.write_text("path,label\na,1\nb,0\n/abs/c,1\n,0\n")
    rows = read_labels(labels, dicom_root=root)
    assert [(r.key, r.value, r.label, r.line) for r in rows] == [
        ("path", os.path.realpath(root / "a"), "1", 2),
        ("path", os.path.realpath(tmp_path / "elsewhere" / "b"), "0", 3),
        ("path", "/abs/c", "1", 4),
        ("", "", "0", 5),
    ]


def test_pseudonym_key_sources_and_per_user_key_file(tmp_path, monkeypatch, key_file):
    created = load_key()  # XDG_CONFIG_HOME points into tmp_path (see the autouse fixture)
    key_path = tmp_path / "xdg" / "aamct" / "pseudonym.key"
    assert key_path.is_file()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert load_key() == created and len(created) == 64
    monkeypatch.setenv(KEY_ENV_VAR, "environment-key-0123456789")
    assert load_key() == b"environment-key-0123456789"
    assert load_key(key_file) == b"0123456789abcdef0123456789abcdef"
    monkeypatch.setenv(KEY_ENV_VAR, "short")
    with pytest.raises(UserError, match="shorter than 16 bytes"):
        load_key()


def test_pseudonymizer_separates_domains_and_hides_its_key():
    pseudonymizer = Pseudonymizer(b"k" * 32)
    assert pseudonymizer.patient_id("1.2.3") != pseudonymizer.patient_id("", fallback="1.2.3")
    assert pseudonymizer.case_id("1.2", "3") != pseudonymizer.case_id("1", "2.3")
    assert "kkkk" not in repr(pseudonymizer)
    with pytest.raises(ValueError):
        pseudonymizer.patient_id("", fallback="")


@pytest.mark.parametrize("case", ["proc", "empty", "trailing_slash", "fifo", "labels_file", "file_as_folder"])
def test_bad_out_values_are_one_line_errors_without_traceback(tmp_path, key_file, capsys, case):
    data = tmp_path / "data"
    write_ct_series(data / "s", n_slices=16)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\ns,1\n")
    out = {
        "proc": "/proc/m.csv",  # os.access says writable to root; creating a file there fails
        "empty": "",
        "trailing_slash": f"{tmp_path / 'outdir'}/",
        "fifo": str(tmp_path / "pipe.csv"),
        "labels_file": str(labels),
        "file_as_folder": str(labels / "m.csv"),
    }[case]
    if case == "fifo":
        os.mkfifo(out)  # a rename would replace it (as it would a device such as /dev/null)
    argv = ["manifest", "build", "--dicom-root", str(data), "--labels", str(labels), "--key-file", str(key_file)]
    argv.append("--allow-out-of-scope")  # toy volumes, not chests
    assert main([*argv, "--out", out]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("aamct: error: "), captured.err
    assert "Traceback" not in captured.err
    expected = {
        "proc": "/proc/m.csv: cannot write here: creating a file in /proc fails (",
        "empty": "--out must name a CSV file, got ''",
        "trailing_slash": "--out must name a CSV file, got ",
        "fifo": "pipe.csv: exists and is not a regular file",
        "labels_file": "labels.csv: is one of the inputs",
        "file_as_folder": "labels.csv is not a folder",
    }[case]
    assert expected in lines[0]
    assert labels.read_text() == "path,label\ns,1\n"  # no input was touched
    if case == "fifo":
        assert stat.S_ISFIFO(os.stat(out).st_mode)


def test_progress_bar_on_a_terminal_only_and_never_changes_the_outputs(tmp_path, key_file, capsys, monkeypatch):
    from pipeline.data import manifest as manifest_module

    write_ct_series(tmp_path / "data" / "s", n_slices=16)
    argv = ["manifest", "build", "--dicom-root", str(tmp_path / "data"), "--key-file", str(key_file)]
    argv.append("--allow-out-of-scope")  # toy volumes, not chests
    # pytest's stderr is no terminal: no bar
    assert main([*argv, "--out", str(tmp_path / "a.csv")]) == 0
    assert "reading DICOM headers" not in capsys.readouterr().err
    # a terminal: the bar is drawn (no delay here, so it shows on a short run), the outputs are the same
    monkeypatch.setattr(manifest_module, "_stderr_is_terminal", lambda: True)
    from tqdm import tqdm

    monkeypatch.setattr(tqdm, "__init__", _without_delay(tqdm.__init__))
    assert main([*argv, "--out", str(tmp_path / "b.csv")]) == 0
    assert "reading DICOM headers" in capsys.readouterr().err
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    # --quiet: no bar even on a terminal
    assert main([*argv, "--out", str(tmp_path / "c.csv"), "--quiet"]) == 0
    assert "reading DICOM headers" not in capsys.readouterr().err


def _without_delay(init):
    def wrapped(self, *args, **kwargs):
        kwargs["delay"] = 0
        kwargs["mininterval"] = 0
        init(self, *args, **kwargs)

    return wrapped
