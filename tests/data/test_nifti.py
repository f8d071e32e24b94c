"""NIfTI checks on real files and on NIfTI files written with nibabel, one broken aspect each."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from pipeline.data.nifti import NiftiRejected, check_nifti, check_nifti_header, file_sha256
from tests.conftest import shared_path


def _write(path, data, affine=None, *, codes=True):
    image = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine)
    if not codes:
        image.set_sform(None, code=0)
        image.set_qform(None, code=0)
    nib.save(image, path)
    return path


@pytest.mark.realdata
@pytest.mark.parametrize(
    "name, shape, n_slices",
    [("totalseg_example_ct.nii.gz", (122, 101, 112), 112), ("totalseg_example_ct_sm.nii.gz", (122, 101, 30), 30)],
)
def test_real_ct_files_pass(name, shape, n_slices):
    path = shared_path("nifti", name)
    info = check_nifti(path, min_slices=16)
    assert info.shape == shape
    assert info.n_slices == n_slices
    assert info.spacing_mm == "3.000x3.000x3.000"
    assert info.sha256 == file_sha256(path)


def test_good_and_singleton_4d_volumes_pass(tmp_path):
    data = np.zeros((6, 7, 20), dtype=np.int16)
    info = check_nifti(_write(tmp_path / "a.nii.gz", data), min_slices=20)
    assert (info.shape, info.spacing_mm, info.n_slices) == ((6, 7, 20), "0.800x0.800x2.500", 20)
    info = check_nifti(_write(tmp_path / "b.nii", data[..., None].astype(np.float32)))
    assert info.shape == (6, 7, 20)


def test_slices_are_counted_along_the_axis_closest_to_si(tmp_path):
    # array axis 0 runs S-I here (a sagittal-first layout): 30 slices, not 8
    affine = np.array([[0, 0, 0.8, 0], [0, 0.8, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1.0]])
    info = check_nifti(_write(tmp_path / "p.nii.gz", np.zeros((30, 9, 8), np.int16), affine))
    assert info.n_slices == 30


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("four_d", "not a 3D volume: shape (4, 5, 6, 2)"),
        ("two_d", "not a 3D volume: shape (4, 5)"),
        ("nan", "non-finite values: 2 of 120 voxels are NaN or infinite"),
        ("tiny_spacing", "voxel size 0.01x0.8x2.5 mm is outside 0.1-20 mm (a wrong header?)"),
        ("huge_spacing", "voxel size 0.8x0.8x50 mm is outside 0.1-20 mm (a wrong header?)"),
        ("singular", "singular affine (determinant 0)"),
        ("no_orientation", "no orientation: sform_code and qform_code are both 0"),
        ("too_few", "too few slices: 6 (minimum 16)"),
        ("not_nifti", "unreadable NIfTI: "),
        ("truncated", "cannot read the voxel data: "),
    ],
)
def test_each_bad_file_is_rejected_with_a_reason(tmp_path, kind, expected):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = tmp_path / f"{kind}.nii.gz"
    min_slices = 1
    if kind == "four_d":
        _write(path, np.zeros((4, 5, 6, 2), np.int16))
    elif kind == "two_d":
        _write(path, np.zeros((4, 5), np.int16))
    elif kind == "nan":
        data[1, 2, 3] = np.nan
        data[0, 0, 0] = np.inf
        _write(path, data)
    elif kind == "tiny_spacing":
        _write(path, data, np.diag([0.01, 0.8, 2.5, 1.0]))
    elif kind == "huge_spacing":
        _write(path, data, np.diag([0.8, 0.8, 50.0, 1.0]))
    elif kind == "singular":
        affine = np.diag([0.8, 0.8, 2.5, 1.0])
        affine[:3, 2] = affine[:3, 0]  # two identical columns
        _write(path, data, affine)
    elif kind == "no_orientation":
        _write(path, data, codes=False)
    elif kind == "too_few":
        _write(path, data)
        min_slices = 16
    elif kind == "not_nifti":
        path.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    elif kind == "truncated":
        _write(path, np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32))
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(NiftiRejected) as err:
        check_nifti(path, min_slices=min_slices)
    assert str(err.value).startswith(expected), str(err.value)
    assert "\n" not in str(err.value)


def test_zero_voxel_size_is_named_before_the_singular_affine(tmp_path):
    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([0.8, 0.8, 2.5, 1.0]))
    image.set_qform(None, code=0)
    image.set_sform(np.diag([0.8, 0.0, 2.5, 1.0]), code=2)  # nibabel cannot store this one as a qform
    nib.save(image, tmp_path / "zero.nii.gz")
    with pytest.raises(NiftiRejected, match=r"^zero voxel size along array axis 1 \(voxel size 0.8x0x2.5 mm\)$"):
        check_nifti(tmp_path / "zero.nii.gz")


def test_header_checks_read_no_voxel_and_the_reader_reads_them_once(tmp_path, monkeypatch):
    from nibabel.arrayproxy import ArrayProxy

    from pipeline.data.reader import ScanRejected, read_volume

    path = _write(tmp_path / "v.nii.gz", np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32))
    reads = []
    original = ArrayProxy.__array__
    monkeypatch.setattr(ArrayProxy, "__array__", lambda self, *a, **k: reads.append(1) or original(self, *a, **k))
    header = check_nifti_header(path, min_slices=20)
    assert (header.shape, header.n_slices, reads) == ((20, 20, 20), 20, [])
    array, _ = read_volume(path)
    assert len(reads) == 1 and array.shape == (20, 20, 20)
    # so a damaged voxel stream passes the header checks and is caught by the reader, with check_nifti's reason
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    check_nifti_header(path)
    with pytest.raises(NiftiRejected) as expected:
        check_nifti(path)
    with pytest.raises(ScanRejected) as got:
        read_volume(path)
    assert got.value.reason == str(expected.value) and got.value.reason.startswith("cannot read the voxel data: ")
