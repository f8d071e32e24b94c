"""The generated demo cohort: real DICOM series readable by SimpleITK, with the intended geometry, HU and labels."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from pipeline.cli import main
from pipeline.data.demo import CLASS_NAMES, SITES, demo_geometry, write_demo_cohort
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
        assert -900 < np.median(hu[rendered.lung_mask]) < -780  # aerated lung, vessels included
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
