"""The export's PHI guard: identifiers read from DICOM headers are found in plain and in deflated nested files."""

from __future__ import annotations

import zipfile

import pydicom
import pytest

from pipeline.sharing.phi_guard import collect_phi_values, find_phi, phi_needles


def test_needles_cover_name_components_and_date_spellings():
    assert phi_needles("PatientName", "Doe^Johnathan^^Dr") == {"doe^johnathan^^dr", "johnathan"}
    assert phi_needles("PatientBirthDate", "19600101") == {"19600101", "1960-01-01"}
    assert phi_needles("PatientID", "  ") == set()


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    from pipeline.data.demo import write_demo_cohort

    root = tmp_path_factory.mktemp("phi") / "dicom"
    write_demo_cohort(root, cases=1, size=32, seed=0)
    folder = next(p for p in root.iterdir() if p.is_dir())
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PatientName = "Zanzibarova^Ottoline"
        ds.PatientID = "MRN-55501234"
        ds.PatientBirthDate = "19330415"
        ds.save_as(path)
    return folder


def test_collects_values_from_one_header_per_series(series):
    needles = collect_phi_values([series])
    assert needles["PatientName"] >= {"zanzibarova", "ottoline"}
    assert needles["PatientID"] == {"mrn-55501234"}
    assert needles["PatientBirthDate"] == {"19330415", "1933-04-15"}


def test_finds_values_in_plain_files_names_and_deflated_nested_members(series, tmp_path):
    needles = collect_phi_values([series])
    root = tmp_path / "bundle"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "README.md").write_text("clean text\n")
    assert find_phi(root, needles) == []

    (root / "configs").mkdir()
    (root / "configs" / "train.json").write_text('{"note": "born 1933-04-15"}')
    with zipfile.ZipFile(root / "model.ts", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("extra/metadata.json", '{"who": "ZANZIBAROVA"}' * 50)
    (root / "mrn-55501234.txt").write_text("x")
    hits = {(hit.file, hit.keyword) for hit in find_phi(root, needles)}
    assert hits == {
        ("configs/train.json", "PatientBirthDate"),
        ("model.ts!extra/metadata.json", "PatientName"),
        ("mrn-55501234.txt", "PatientID"),
    }
    # the deflated member hides the value from a plain byte search of the outer file
    assert b"zanzibarova" not in (root / "model.ts").read_bytes().lower()


def test_nifti_and_missing_paths_give_no_values(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"\x00" * 10)
    assert collect_phi_values([tmp_path / "a.nii.gz", tmp_path / "missing"]) == {}
