"""The one scan loader against the manifest builder on the same real files: same verdict, same words, no fallback."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from monai.data import ImageReader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from monai.transforms.io import array as monai_io
from monai.utils import ensure_tuple
from pydicom.uid import JPEG2000Lossless

from pipeline.cli import main
from pipeline.data.dicom import DICOMDIR_REASON
from pipeline.data.loading import DEFAULT_MIN_SLICES, LoadScan, LoadScand, ScanRejected, check_scan, scan_rejection
from pipeline.data.manifest import build_manifest
from pipeline.data.reader import CTImageReader
from pipeline.errors import UserError
from tests.data.dicom_factory import PHI, write_ct_series

GARBAGE_DICOM = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"\x07" * 64
DICOMDIR = Path(pydicom.data.get_testdata_file("DICOMDIR"))


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, *, codes: bool = True) -> Path:
    image = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]))
    if affine is not None:
        # stored as the sform only: nibabel cannot write a degenerate affine as a qform
        image.set_qform(None, code=0)
        image.set_sform(affine, code=2)
    if not codes:
        image.set_sform(None, code=0)
        image.set_qform(None, code=0)
    nib.save(image, path)
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Good and bad scans, each broken in one way in real files, and the manifest builder's verdict on them."""
    root = tmp_path_factory.mktemp("cohort")
    dicom = root / "dicom"
    cases: dict[str, Path] = {}
    culprit: dict[str, str] = {}  # the file a reason must name

    good = write_ct_series(dicom / "good", n_slices=20)
    shutil.copy(DICOMDIR, good.folder / "DICOMDIR")  # a media index beside the images: listed, blocks nothing
    cases["good"] = good.folder
    tilt = write_ct_series(
        dicom / "tilt", n_slices=20, tilt_degrees=15.0, edit=lambda k, ds: setattr(ds, "GantryDetectorTilt", "15")
    )
    cases["tilt"] = tilt.folder
    truncated = write_ct_series(dicom / "truncated", n_slices=20)
    victim = truncated.files[6]
    victim.write_bytes(victim.read_bytes()[:-100])  # cut inside the pixel data
    cases["truncated"], culprit["truncated"] = truncated.folder, victim.name
    j2k = write_ct_series(dicom / "j2k_truncated", n_slices=20, rows=32, columns=32, transfer_syntax=JPEG2000Lossless)
    victim = j2k.files[12]
    victim.write_bytes(victim.read_bytes()[:-40])  # a cut-off compressed file: its header still reads
    cases["j2k_truncated"], culprit["j2k_truncated"] = j2k.folder, victim.name
    damaged = write_ct_series(dicom / "damaged_header", n_slices=20)
    damaged.files[9].write_bytes(GARBAGE_DICOM)  # one slice's header destroyed: the rest has a gap
    cases["damaged_header"], culprit["damaged_header"] = damaged.folder, damaged.files[9].name
    z = [-40.0 + 2.0 * k for k in range(20)]
    z[11] += 1.3  # one ImagePositionPatient shifted: a gap on one side, crowding on the other
    moved = write_ct_series(dicom / "moved", positions=[(-80.0, -90.0, v) for v in z])
    cases["moved"], culprit["moved"] = moved.folder, moved.files[11].name
    cases["too_few"] = write_ct_series(dicom / "too_few", n_slices=5).folder

    nifti = root / "nifti"
    nifti.mkdir()
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 1000, size=(8, 9, 20)).astype(np.float32)
    cases["good_nifti"] = _nifti(nifti / "good.nii.gz", volume)
    with_nan = volume.copy()
    with_nan[1, 2, 3] = np.nan
    cases["nan"] = _nifti(nifti / "nan.nii.gz", with_nan)
    cases["two_d"] = _nifti(nifti / "two_d.nii.gz", volume[:, :, 0])
    cases["four_d"] = _nifti(nifti / "four_d.nii.gz", np.stack([volume, volume], axis=-1))
    cases["zero_spacing"] = _nifti(nifti / "zero_spacing.nii.gz", volume, np.diag([0.8, 0.0, 2.5, 1.0]))
    singular = np.diag([0.8, 0.8, 2.5, 1.0])
    singular[:3, 2] = singular[:3, 0]
    cases["singular"] = _nifti(nifti / "singular.nii.gz", volume, singular)
    cases["no_orientation"] = _nifti(nifti / "no_orientation.nii.gz", volume, codes=False)

    out = root / "manifest" / "cohort.csv"
    result = build_manifest(
        dicom_root=dicom,
        nifti_glob=str(nifti / "*.nii.gz"),
        labels_csv=None,
        out=out,
        key_file=_key(root),
        allow_out_of_scope=True,  # toy volumes, not chests (the scope check: tests/data/test_scope.py)
    )
    rejections = pd.read_csv(result.rejections_path, dtype=str, keep_default_na=False)
    accepted = set(pd.read_csv(out, dtype=str, keep_default_na=False)["image"])
    reasons = dict(zip(rejections["path"], rejections["reason"], strict=True))
    return {"cases": cases, "culprit": culprit, "reasons": reasons, "accepted": accepted, "good": good}


def _key(root: Path) -> Path:
    key = root / "pseudonym.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    return key


BAD = ["tilt", "truncated", "j2k_truncated", "damaged_header", "moved", "too_few"]
BAD_NIFTI = ["nan", "two_d", "four_d", "zero_spacing", "singular", "no_orientation"]


@pytest.mark.parametrize("name", BAD + BAD_NIFTI)
def test_loader_refuses_with_the_manifest_builders_reason(cohort, name):
    path = cohort["cases"][name]
    manifest_reason = cohort["reasons"][str(path)]  # the row the manifest builder wrote for these files
    with pytest.raises(ScanRejected) as err:
        LoadScand(keys="image")({"image": str(path)})
    assert isinstance(err.value, UserError)
    assert err.value.path == path
    assert err.value.reason == manifest_reason
    assert str(err.value) == f"{path}: {manifest_reason}"
    assert "\n" not in str(err.value)
    if name in cohort["culprit"]:  # one file is the problem: the reason names it
        assert cohort["culprit"][name] in manifest_reason


@pytest.mark.parametrize("name", BAD + BAD_NIFTI)
def test_header_probe_gives_the_same_reason_without_decoding(cohort, name):
    path = cohort["cases"][name]
    if name == "nan":  # only the voxels show NaN: the probe passes it, the loader (above) does not
        assert check_scan(path) is None
    else:
        assert check_scan(path) == cohort["reasons"][str(path)]


def test_the_reasons_say_what_is_wrong(cohort):
    reasons, cases, culprit = cohort["reasons"], cohort["cases"], cohort["culprit"]
    assert reasons[str(cases["tilt"])].startswith("gantry tilt of 15.00 degrees")
    assert "GantryDetectorTilt (15)" in reasons[str(cases["tilt"])]
    assert reasons[str(cases["tilt"])].endswith("tilted stacks are rejected, not resampled")
    assert reasons[str(cases["moved"])].startswith(f"slice position inconsistency: {culprit['moved']} lies at")
    assert "missing slices" not in reasons[str(cases["moved"])]
    assert reasons[str(cases["damaged_header"])].startswith(
        f"unreadable file in the series folder: {culprit['damaged_header']} (unreadable DICOM header"
    )
    # the damaged file itself has its own row, so every file is still accounted for
    assert reasons[str(cases["damaged_header"] / culprit["damaged_header"])].startswith("unreadable DICOM header")
    assert reasons[str(cases["truncated"])].startswith("truncated pixel data: ")
    assert reasons[str(cases["j2k_truncated"])].startswith("truncated pixel data: ")
    assert reasons[str(cases["too_few"])] == f"too few slices: 5 (minimum {DEFAULT_MIN_SLICES})"
    assert reasons[str(cases["nan"])] == "non-finite values: 1 of 1440 voxels are NaN or infinite"
    assert reasons[str(cases["zero_spacing"])].startswith("zero voxel size along array axis 1")
    assert reasons[str(cases["good"] / "DICOMDIR")] == DICOMDIR_REASON


def test_good_scans_load_as_written_with_the_documented_meta(cohort):
    series = cohort["good"]
    assert str(series.folder) in cohort["accepted"]  # the DICOMDIR beside the images did not block them
    loaded = LoadScand(keys="image", ensure_channel_first=True, allow_out_of_scope=True)({"image": str(series.folder)})[
        "image"
    ]
    assert tuple(loaded.shape) == (1, *series.hu.shape)
    np.testing.assert_array_equal(loaded[0].numpy(), series.hu)
    np.testing.assert_allclose(loaded.affine.numpy(), series.affine_ras, atol=1e-6)
    meta = loaded.meta
    assert meta["filename_or_obj"] == str(series.folder)
    assert meta["source"] == "dicom" and meta["space"] == "RAS"
    np.testing.assert_allclose(meta["spacing"], [0.8, 0.7, 2.0])
    assert tuple(meta["spatial_shape"]) == series.hu.shape
    assert not any(value in repr(meta) for value in PHI.values())
    nifti = cohort["cases"]["good_nifti"]
    image = LoadScan(allow_out_of_scope=True)(str(nifti))
    np.testing.assert_array_equal(image.numpy(), nib.load(nifti).get_fdata(dtype=np.float32))
    assert image.meta["source"] == "nifti"
    assert check_scan(series.folder) is None and check_scan(nifti) is None


def test_missing_path_and_minimum_slice_policy(cohort, tmp_path):
    missing = tmp_path / "not-there"
    with pytest.raises(ScanRejected) as err:
        LoadScan()(str(missing))
    assert str(err.value) == f"{missing}: no such file or folder"
    assert check_scan(missing) == err.value.reason
    # the default is the manifest builder's minimum; toy volumes pass min_slices=1
    few = cohort["cases"]["too_few"]
    assert LoadScand(keys="image").min_slices == DEFAULT_MIN_SLICES == 16
    assert tuple(
        LoadScand(keys="image", min_slices=1, allow_out_of_scope=True)({"image": str(few)})["image"].shape
    ) == (20, 24, 5)
    assert check_scan(few, min_slices=5) is None
    with pytest.raises(ValueError, match="min_slices must be at least 1"):
        LoadScan(min_slices=0)


class _AcceptsAnything(ImageReader):
    """A MONAI reader that reads every path as a zero volume: the kind of fallback that must never be reached."""

    calls: list[str] = []

    def verify_suffix(self, filename) -> bool:
        return True

    def read(self, data, **kwargs):
        type(self).calls.append(str(ensure_tuple(data)[0]))
        return np.zeros((4, 4, 4), np.float32)

    def get_data(self, img):
        return img, {"affine": np.eye(4), "original_channel_dim": float("nan"), "spatial_shape": np.array(img.shape)}


def test_the_loader_never_falls_back_to_another_reader(cohort, monkeypatch):
    # registered the way MONAI learns readers: LoadImage instantiates every entry of SUPPORTED_READERS
    monkeypatch.setitem(monai_io.SUPPORTED_READERS, "acceptsanything", _AcceptsAnything)
    _AcceptsAnything.calls = []
    tilt = str(cohort["cases"]["tilt"])
    # the hazard: MONAI's own loader, given our reader, swallows its refusal and returns another reader's volume
    stock = LoadImaged(keys="image", reader=CTImageReader(min_slices=1))({"image": tilt})["image"]
    assert tuple(stock.shape) == (4, 4, 4) and _AcceptsAnything.calls == [tilt]
    _AcceptsAnything.calls = []
    loader = LoadScand(keys="image")
    for name in BAD + BAD_NIFTI:
        with pytest.raises(ScanRejected):
            loader({"image": str(cohort["cases"][name])})
    assert _AcceptsAnything.calls == []
    assert loader._loader.readers == [loader._loader.reader]
    with pytest.raises(TypeError, match="reads with CTImageReader only"):
        loader.register(_AcceptsAnything())
    with pytest.raises(TypeError, match="reads with CTImageReader only"):
        loader({"image": tilt}, reader=_AcceptsAnything())


def test_no_warning_or_traceback_reaches_the_output(cohort, capfd, recwarn):
    capfd.readouterr()
    recwarn.clear()
    loader = LoadScand(keys="image", allow_out_of_scope=True)
    for name in BAD + BAD_NIFTI:
        with pytest.raises(ScanRejected):
            loader({"image": str(cohort["cases"][name])})
    loader({"image": str(cohort["cases"]["good"])})
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert [str(w.message) for w in recwarn] == []


def test_a_rejection_is_found_through_monai_compose_and_survives_pickling(cohort):
    tilt = cohort["cases"]["tilt"]
    chain = Compose([LoadScand(keys="image", allow_out_of_scope=True), EnsureChannelFirstd(keys="image")])
    with pytest.raises(RuntimeError) as err:
        chain({"image": str(tilt)})
    found = scan_rejection(err.value)
    assert found is not None and found.path == tilt and found.reason == cohort["reasons"][str(tilt)]
    assert scan_rejection(RuntimeError("unrelated")) is None
    # DataLoader workers pickle the transform and the error
    clone = pickle.loads(pickle.dumps(chain))
    good = cohort["good"]
    np.testing.assert_array_equal(clone({"image": str(good.folder)})["image"][0].numpy(), good.hu)
    copy = pickle.loads(pickle.dumps(found))
    assert (copy.path, copy.reason, str(copy)) == (found.path, found.reason, str(found))


def test_manifest_build_on_the_cohort_prints_no_traceback(cohort, tmp_path, capsys):
    root = cohort["cases"]["good"].parent
    key = _key(tmp_path)
    assert (
        main(["manifest", "build", "--dicom-root", str(root), "--key-file", str(key), "--out", str(tmp_path / "m.csv")])
        == 0
    )
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "WARNING" not in captured.err
