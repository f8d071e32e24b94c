"""DICOM outputs of a case: a Parametric Map of the heatmap and a score SR, read back and checked against the source.

Checked on the real JPEG 2000 series of ../shared/data (skipped when absent) and on generated series whose headers
carry PatientName / PatientID / BirthDate and whose slices are stored out of order with a flipped orientation. The
map's values are looked up through the Parametric Map's own per-frame geometry (positions, orientation, spacing),
not through the writer's mapping, turned into real-world values by the file's own Real World Value Mapping (16-bit
stored values, ``value = stored * slope + intercept``), and compared with the NIfTI heatmap at the same world point
(within half a quantisation step).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

import pipeline
from pipeline.data.reader import read_volume
from pipeline.errors import UserError
from pipeline.inference.dicom_outputs import write_dicom_outputs
from pipeline.inference.heatmap import write_heatmap_nifti
from tests.conftest import shared_path
from tests.data.dicom_factory import PHI, write_ct_series

DCIODVFY = shutil.which("dciodvfy")


def _world_heatmap(shape, affine) -> np.ndarray:
    """A map that is a different, smooth function of the world position at every voxel (so any mix-up shows)."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    world = (
        np.einsum("ab,bxyz->axyz", affine[:3, :3], np.stack([i, j, k]).astype(np.float64))
        + affine[:3, 3, None, None, None]
    )
    return (0.3 + 0.2 * np.sin(world[0] / 17.0) + 0.15 * np.cos(world[1] / 23.0) + 0.004 * world[2]).astype(np.float32)


def _nifti_heatmap(series: Path, target: Path, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The heatmap as inference writes it (NIfTI on the grid the reader loads), read back with nibabel."""
    volume, meta = read_volume(series)
    write_heatmap_nifti(target, _world_heatmap(volume.shape, meta["affine"]), meta["affine"], dtype=dtype)
    image = nib.load(target)
    return np.asarray(image.get_fdata(), dtype=np.float32), np.asarray(image.affine)


def _pm_value_at(pm: pydicom.Dataset, frames: np.ndarray, world_ras: np.ndarray) -> float:
    """The map's value at a world point, located through the Parametric Map's own geometry."""
    lps = world_ras * np.array([-1.0, -1.0, 1.0])
    shared = pm.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    row_spacing, col_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    normal = np.cross(row_dir, col_dir)
    positions = np.asarray(
        [g.PlanePositionSequence[0].ImagePositionPatient for g in pm.PerFrameFunctionalGroupsSequence], dtype=float
    )
    frame = int(np.argmin(np.abs((lps - positions) @ normal)))
    offset = lps - positions[frame]
    column = int(round(offset @ row_dir / col_spacing))
    row = int(round(offset @ col_dir / row_spacing))
    return float(frames[frame, row, column])


def _real_world_frames(pm: pydicom.Dataset) -> tuple[np.ndarray, float]:
    """``(frames as real-world values, slope)`` through the map's own Real World Value Mapping (float64)."""
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    slope, intercept = float(mapping.RealWorldValueSlope), float(mapping.RealWorldValueIntercept)
    assert (int(mapping.RealWorldValueFirstValueMapped), int(mapping.RealWorldValueLastValueMapped)) == (0, 65535)
    return pm.pixel_array.astype(np.float64) * slope + intercept, slope


def _referenced_uids(dataset: pydicom.Dataset) -> set[str]:
    """Every ReferencedSOPInstanceUID anywhere in the dataset."""
    found = set()

    def walk(ds):
        for element in ds:
            if element.VR == "SQ":
                for item in element.value:
                    walk(item)
            elif element.keyword == "ReferencedSOPInstanceUID":
                found.add(str(element.value))

    walk(dataset)
    return found


def _source_uids(series: Path) -> tuple[set[str], str]:
    uids, frames = set(), set()
    for path in series.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids.add(str(ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID))
        frames.add(str(ds.FrameOfReferenceUID))
    assert len(frames) == 1
    return uids, frames.pop()


def _check_outputs(series: Path, outputs, heatmap: np.ndarray, affine: np.ndarray) -> None:
    import highdicom as hd

    source_uids, frame_of_reference = _source_uids(series)
    pm = pydicom.dcmread(outputs.parametric_map)
    sr = pydicom.dcmread(outputs.structured_report)
    hd.pm.ParametricMap.from_dataset(pm)  # highdicom parses it back as a Parametric Map (raises otherwise)
    hd.sr.Comprehensive3DSR.from_dataset(sr)
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert pm.FrameOfReferenceUID == frame_of_reference == outputs.frame_of_reference_uid
    for ds in (pm, sr):
        referenced = _referenced_uids(ds)
        assert referenced and referenced <= source_uids, referenced - source_uids
        assert ds.SOPInstanceUID not in source_uids
        assert ds.SeriesInstanceUID != pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True).get(
            "SeriesInstanceUID"
        )
    assert int(pm.NumberOfFrames) == len(source_uids)
    assert (pm.BitsAllocated, pm.BitsStored, pm.PixelRepresentation) == (16, 16, 0) and "FloatPixelData" not in pm
    frames, slope = _real_world_frames(pm)
    rng = np.random.default_rng(7)
    voxels = [tuple(int(rng.integers(0, n)) for n in heatmap.shape) for _ in range(3)]
    for voxel in voxels:
        world = affine[:3, :3] @ np.asarray(voxel, dtype=float) + affine[:3, 3]
        assert _pm_value_at(pm, frames, world) == pytest.approx(float(heatmap[voxel]), abs=slope / 2 + 1e-6), voxel


def _dciodvfy_errors(path: Path) -> list[str]:
    done = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.realdata
def test_real_jpeg2000_series_outputs_read_back_on_the_source_geometry(tmp_path):
    series = shared_path("dicom", "totalseg_abdomen_ct")
    heatmap, affine = _nifti_heatmap(series, tmp_path / "case.nii.gz", dtype="uint8")
    outputs = write_dicom_outputs(
        series, heatmap, affine, tmp_path / "dicom", case_id="case-7f3a", probability=0.83, threshold=0.4
    )
    _check_outputs(series, outputs, heatmap, affine)
    assert outputs.pseudonymised and any("SeriesInstanceUID" in note for note in outputs.notes)
    # nothing identifying of the source survives: its non-empty patient / study values are searched for
    source = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    needles = [
        str(source.get(k))
        for k in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate", "InstitutionName")
        if str(source.get(k) or "").strip()
    ]
    assert "20221208" in needles  # positive control: the real series does carry a study date
    for path in (outputs.parametric_map, outputs.structured_report):
        raw = path.read_bytes()
        assert not [n for n in needles if n.encode() in raw], path.name
        assert str(pydicom.dcmread(path).PatientID) == "case-7f3a"
    if DCIODVFY is None:
        pytest.skip("dciodvfy (Debian dicom3tools) not installed: the outputs were read back but not validated")
    for path in (outputs.parametric_map, outputs.structured_report):
        assert _dciodvfy_errors(path) == [], path.name


def _generated(tmp_path: Path) -> Path:
    # a flipped in-plane orientation and files whose names and InstanceNumbers disagree with the slice order
    written = write_ct_series(
        tmp_path / "series",
        n_slices=9,
        rows=14,
        columns=12,
        orientation=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
        slice_spacing=-3.0,
        accession="ACC-99031",
    )
    return written.folder


def test_generated_series_outputs_carry_no_patient_identity_and_validate(tmp_path):
    series = _generated(tmp_path)
    heatmap, affine = _nifti_heatmap(series, tmp_path / "case.nii.gz", dtype="float32")
    outputs = write_dicom_outputs(
        series, heatmap, affine, tmp_path / "dicom", case_id="case-00b2", probability=0.21, threshold=0.4
    )
    _check_outputs(series, outputs, heatmap, affine)
    assert outputs.notes == ()
    for path in (outputs.parametric_map, outputs.structured_report):
        raw = path.read_bytes()
        for value in (*PHI.values(), "Zyxwvut", "Quinella", "ACC-99031"):
            assert value.encode() not in raw, (path.name, value)
        ds = pydicom.dcmread(path)
        assert str(ds.PatientID) == "case-00b2" and not ds.get("PatientBirthDate")
        assert ds.StudyInstanceUID == pydicom.dcmread(next(series.iterdir())).StudyInstanceUID  # same study
    if DCIODVFY is None:
        pytest.skip("dciodvfy (Debian dicom3tools) not installed: the outputs were read back but not validated")
    for path in (outputs.parametric_map, outputs.structured_report):
        assert _dciodvfy_errors(path) == [], path.name


def test_sr_holds_the_score_threshold_and_decision(tmp_path):
    series = _generated(tmp_path)
    heatmap, affine = _nifti_heatmap(series, tmp_path / "case.nii.gz", dtype="float32")
    for probability, meaning in ((0.61, "Positive"), (0.39, "Negative")):
        outputs = write_dicom_outputs(
            series, heatmap, affine, tmp_path / meaning, case_id="case-1", probability=probability, threshold=0.4
        )
        values: dict[str, float] = {}
        decisions: list[tuple[str, str]] = []

        def walk(items, values=values, decisions=decisions):
            for item in items:
                if item.ValueType == "NUM":
                    values[item.ConceptNameCodeSequence[0].CodeMeaning] = float(
                        item.MeasuredValueSequence[0].NumericValue
                    )
                if item.ValueType == "CODE":
                    decisions.append(
                        (item.ConceptNameCodeSequence[0].CodeMeaning, item.ConceptCodeSequence[0].CodeMeaning)
                    )
                if "ContentSequence" in item:
                    walk(item.ContentSequence)

        walk(pydicom.dcmread(outputs.structured_report).ContentSequence)
        assert values["Probability of positive"] == pytest.approx(probability)
        assert values["Frozen operating threshold"] == pytest.approx(0.4)
        assert ("positive at operating point", meaning) in decisions


def test_parametric_map_is_16_bit_and_reads_back_through_its_mapping(tmp_path):
    """Every voxel of the NIfTI heatmap, read back from the file (pixel * slope + intercept, located through the
    map's own geometry), within half a step; the 65536 levels span exactly the map's range; two bytes a pixel."""
    series = _generated(tmp_path)
    heatmap, affine = _nifti_heatmap(series, tmp_path / "case.nii.gz", dtype="float32")
    outputs = write_dicom_outputs(
        series, heatmap, affine, tmp_path / "dicom", case_id="case-q", probability=0.5, threshold=0.4
    )
    pm = pydicom.dcmread(outputs.parametric_map)
    assert pm.BitsAllocated == 16 and pm.pixel_array.dtype == np.uint16
    assert str(pm.SoftwareVersions) == pipeline.__version__
    frames, slope = _real_world_frames(pm)
    low, high = float(heatmap.min()), float(heatmap.max())
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert float(mapping.RealWorldValueIntercept) == pytest.approx(low, abs=1e-12)
    assert slope == pytest.approx((high - low) / 65535, rel=1e-9)  # no level wasted: the step is as fine as it gets
    errors = [
        abs(_pm_value_at(pm, frames, affine[:3, :3] @ np.asarray(voxel, dtype=float) + affine[:3, 3]) - heatmap[voxel])
        for voxel in np.ndindex(*heatmap.shape)
    ]
    assert max(errors) <= slope / 2 + 1e-7, max(errors)
    pixels = int(pm.NumberOfFrames) * int(pm.Rows) * int(pm.Columns)
    assert len(pm.PixelData) == 2 * pixels
    # the whole stored range is used, and the default window shows the map's min..max
    assert int(pm.pixel_array.min()) == 0 and int(pm.pixel_array.max()) == 65535
    window = pm.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    assert (float(window.WindowCenter), float(window.WindowWidth)) == (32767.5, 65535.0)


def test_a_constant_map_reads_back_exactly_and_a_nan_map_is_refused(tmp_path):
    series = _generated(tmp_path)
    volume, meta = read_volume(series)
    constant = np.full(volume.shape, 0.25, dtype=np.float32)
    outputs = write_dicom_outputs(
        series, constant, meta["affine"], tmp_path / "c", case_id="c", probability=0.1, threshold=0.5
    )
    frames, _ = _real_world_frames(pydicom.dcmread(outputs.parametric_map))
    assert np.array_equal(frames, np.full(frames.shape, 0.25))
    broken = constant.copy()
    broken[0, 0, 0] = np.nan
    with pytest.raises(UserError, match="1 NaN or infinite values"):
        write_dicom_outputs(series, broken, meta["affine"], tmp_path / "n", case_id="n", probability=0.1, threshold=0.5)


def test_keep_patient_identity_copies_the_source_patient(tmp_path):
    series = _generated(tmp_path)
    heatmap, affine = _nifti_heatmap(series, tmp_path / "case.nii.gz", dtype="float32")
    outputs = write_dicom_outputs(
        series,
        heatmap,
        affine,
        tmp_path / "dicom",
        case_id="case-00b2",
        probability=0.5,
        threshold=0.4,
        keep_patient_identity=True,
    )
    ds = pydicom.dcmread(outputs.parametric_map)
    assert not outputs.pseudonymised
    assert str(ds.PatientName) == PHI["PatientName"] and ds.PatientID == PHI["PatientID"]


def test_bad_inputs_are_one_line_user_errors(tmp_path):
    series = _generated(tmp_path)
    volume, meta = read_volume(series)
    with pytest.raises(UserError, match="3D volume"):
        write_dicom_outputs(series, np.zeros(5), meta["affine"], tmp_path, case_id="c", probability=0.1, threshold=0.5)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no DICOM files"):
        write_dicom_outputs(empty, volume, meta["affine"], tmp_path, case_id="c", probability=0.1, threshold=0.5)


def test_evaluate_cohort_dicom_out_writes_outputs_for_dicom_cases_only(tmp_path, capsys, caplog):
    """``aamct evaluate-cohort --dicom-out``: the DICOM case gets a Parametric Map equal to its NIfTI heatmap and an
    SR with its row's probability; the NIfTI case is scored and says why it has none; no PHI in the outputs; the
    default log level shows none of highdicom's per-module INFO lines."""
    import json
    import logging

    caplog.set_level(logging.INFO)  # the CLI's default level

    from pipeline.cli import main
    from tests.inference.helpers import chest_like_volume, tiny_bundle, write_nifti

    cohort = tmp_path / "cohort"
    series = write_ct_series(cohort / "series_a", n_slices=24, rows=40, columns=36, pixel_spacing=(4.0, 4.0)).folder
    write_nifti(cohort / "volume_b.nii.gz", chest_like_volume(seed=1))
    out, dicom = tmp_path / "out", tmp_path / "dicom"
    args = ["evaluate-cohort", "--bundle", str(tiny_bundle(tmp_path / "bundle")), "--input", str(cohort)]
    assert (
        main([*args, "--out", str(out), "--no-montage", "--heatmap-dtype", "float32", "--dicom-out", str(dicom)]) == 0
    )
    capsys.readouterr()
    assert not [r for r in caplog.records if r.name.startswith("highdicom") and r.levelno < logging.WARNING]
    assert any(r.name.startswith("pipeline") for r in caplog.records)  # INFO records were captured at all
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert set(table["status"]) == {"ok"} and len(table) == 2
    dicom_row = table[table["dicom_map"] != ""].iloc[0]
    nifti_row = table[table["dicom_map"] == ""].iloc[0]
    assert nifti_row["dicom_note"] == "not a DICOM input" and dicom_row["dicom_note"] == ""
    heatmap_image = nib.load(out / dicom_row["heatmap"])
    outputs = SimpleNamespace(
        parametric_map=out / dicom_row["dicom_map"],
        structured_report=out / dicom_row["dicom_sr"],
        frame_of_reference_uid=str(pydicom.dcmread(next(series.iterdir())).FrameOfReferenceUID),
    )
    _check_outputs(
        series, outputs, np.asarray(heatmap_image.get_fdata(), dtype=np.float32), np.asarray(heatmap_image.affine)
    )
    sr = pydicom.dcmread(outputs.structured_report)
    numbers = [
        float(item.MeasuredValueSequence[0].NumericValue)
        for group in sr.ContentSequence
        if "ContentSequence" in group
        for item in group.ContentSequence
        if "ContentSequence" in item
        for item in item.ContentSequence
        if item.ValueType == "NUM"
    ]
    assert pytest.approx(float(dicom_row["probability"]), abs=1e-6) in numbers
    for path in (outputs.parametric_map, outputs.structured_report):
        raw = path.read_bytes()
        assert not [v for v in PHI.values() if v.encode() in raw], path.name
    assert json.loads((out / "run.json").read_text())  # the ordinary run folder is intact
    assert main([*args, "--out", str(tmp_path / "o2"), "--keep-patient-identity"]) == 2
    assert capsys.readouterr().err.strip().endswith("give --dicom-out DIR")
