"""The project's reader against what was written, against SimpleITK, and through MONAI's LoadImage."""

from __future__ import annotations

import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from monai.transforms import LoadImage, LoadImaged
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from pipeline.data.reader import CTImageReader, ScanRejected, read_volume
from pipeline.errors import UserError
from tests.conftest import shared_path
from tests.data.dicom_factory import PHI, write_ct_series


def _sitk_volume(folder) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK's reading of a series folder, converted to the MONAI (X, Y, Z) array and RAS affine."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    reader.SetOutputPixelType(sitk.sitkFloat32)
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.fixture(scope="module")
def real_series_sitk():
    """The real JPEG 2000 series folder and SimpleITK's reading of it (decoded once for the module)."""
    folder = shared_path("dicom", "totalseg_abdomen_ct")
    return folder, *_sitk_volume(folder)


@pytest.mark.realdata
def test_real_jpeg2000_series_equals_simpleitk(real_series_sitk):
    folder, expected, expected_affine = real_series_sitk
    array, meta = read_volume(folder)
    assert array.shape == (512, 512, 20)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, expected)
    np.testing.assert_allclose(meta["affine"], expected_affine, atol=1e-4)
    np.testing.assert_allclose(meta["spacing"], [0.9765625, 0.9765625, 2.0])
    assert tuple(meta["spatial_shape"]) == (512, 512, 20)
    assert float(array.min()) > -1100 and float(array.max()) < 3100  # plausible HU, not stored values


@pytest.mark.realdata
def test_real_series_through_monai_load_imaged(real_series_sitk):
    folder, expected, expected_affine = real_series_sitk
    loaded = LoadImaged(keys="image", reader=CTImageReader(), ensure_channel_first=True)({"image": str(folder)})
    image = loaded["image"]
    assert tuple(image.shape) == (1, 512, 512, 20)
    np.testing.assert_array_equal(image[0].numpy(), expected)
    np.testing.assert_allclose(image.affine.numpy(), expected_affine, atol=1e-4)
    assert image.meta["filename_or_obj"] == str(folder)
    assert image.meta["source"] == "dicom"
    assert not any(key.startswith("0010") for key in image.meta)  # no patient-module tags


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless], ids=lambda s: s.name
)
def test_synthetic_series_reads_exactly_what_was_written(tmp_path, syntax):
    series = write_ct_series(tmp_path / "s", n_slices=12, rows=32, columns=40, transfer_syntax=syntax)
    array, meta = read_volume(series.folder, workers=2)
    np.testing.assert_array_equal(array, series.hu)
    np.testing.assert_allclose(meta["affine"], series.affine_ras, atol=1e-6)
    np.testing.assert_allclose(meta["original_affine"], series.affine_ras, atol=1e-6)
    assert meta["space"] == "RAS"
    assert np.isnan(meta["original_channel_dim"])


def test_oblique_reversed_series_matches_simpleitk(tmp_path):
    c, s = np.cos(np.radians(25)), np.sin(np.radians(25))
    series = write_ct_series(
        tmp_path / "obl", n_slices=10, orientation=(c, s, 0.0, -s, c, 0.0), slice_spacing=-1.5, rescale_slope=0.5
    )
    array, meta = read_volume(series.folder)
    expected, expected_affine = _sitk_volume(series.folder)
    np.testing.assert_allclose(array, expected, atol=1e-4)
    np.testing.assert_allclose(meta["affine"], expected_affine, atol=1e-4)


def test_rescale_and_unused_high_bits(tmp_path):
    def twelve_bit(k, ds):
        stored = np.frombuffer(ds.PixelData, dtype="<i2").reshape(ds.Rows, ds.Columns) - 1500  # some negatives
        ds.BitsStored, ds.HighBit = 12, 11
        # keep only 12 bits: the top 4 bits of negative values are zero, as some writers leave them
        ds.PixelData = (stored.astype("<i2").view("<u2") & 0x0FFF).tobytes()

    series = write_ct_series(tmp_path / "s", n_slices=4, rescale_slope=2.0, rescale_intercept=-10.0, edit=twelve_bit)
    array, _ = read_volume(series.folder, workers=1)
    stored = (series.hu + 10.0) / 2.0 - 1500  # the factory's stored values, shifted as in the edit above
    np.testing.assert_array_equal(array, (stored * 2.0 - 10.0).astype(np.float32))
    reference = pydicom.dcmread(series.files[0]).pixel_array  # pydicom's own unused-bits correction
    np.testing.assert_array_equal(array[:, :, 0], reference.T * 2.0 - 10.0)
    assert float(array.min()) < -10.0


def test_threads_processes_and_sequential_agree(tmp_path):
    series = write_ct_series(tmp_path / "s", n_slices=8)
    sequential, _ = read_volume(series.folder, workers=1)
    threaded, _ = read_volume(series.folder, workers=2)
    processes, _ = read_volume(series.folder, workers=2, use_processes=True)
    np.testing.assert_array_equal(sequential, series.hu)
    np.testing.assert_array_equal(threaded, series.hu)
    np.testing.assert_array_equal(processes, series.hu)


def test_list_of_files_and_folder_with_a_scout_read_the_same_series(tmp_path):
    folder = tmp_path / "mixed"
    axial = write_ct_series(folder, n_slices=10, file_prefix="AX")
    write_ct_series(folder, n_slices=2, file_prefix="LOC", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    (folder / "notes.txt").write_text("export log\n")
    from_folder, _ = read_volume(folder)
    from_files, meta = read_volume(list(reversed(axial.files)))
    np.testing.assert_array_equal(from_folder, axial.hu)
    np.testing.assert_array_equal(from_files, axial.hu)
    np.testing.assert_allclose(meta["affine"], axial.affine_ras, atol=1e-6)


def test_meta_holds_no_identifying_values(tmp_path):
    series = write_ct_series(tmp_path / "s", n_slices=4)
    _, meta = read_volume(series.folder)
    text = repr(meta)
    for value in PHI.values():
        assert value not in text
    assert {"affine", "original_affine", "spatial_shape", "pixdim", "filename_or_obj"} <= set(meta)


def test_reader_errors_are_user_errors_naming_the_path(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        read_volume(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=f"^{empty}: no DICOM files$"):
        read_volume(empty)
    write_ct_series(tmp_path / "patient" / "series-1", n_slices=2)
    with pytest.raises(UserError, match=r"no DICOM files directly inside; it holds sub-folders \(series-1\)"):
        read_volume(tmp_path / "patient")
    gap = write_ct_series(tmp_path / "gap", positions=[(0.0, 0.0, z) for z in (0.0, 2.0, 4.0, 10.0, 12.0)])
    with pytest.raises(UserError, match=f"^{gap.folder}: missing slices: a gap of 6.000 mm"):
        read_volume(gap.folder)
    a = write_ct_series(tmp_path / "a", n_slices=3)
    b = write_ct_series(tmp_path / "b", n_slices=3)
    with pytest.raises(UserError, match="belong to 2 series"):
        read_volume([*a.files, *b.files])


@pytest.mark.parametrize("damage", ["codestream_tail", "image_size_marker"])
def test_undecodable_jpeg2000_slice_is_rejected_naming_it_and_the_decoder_stays_quiet(tmp_path, capfd, damage):
    broken = write_ct_series(tmp_path / "broken", n_slices=3, transfer_syntax=JPEG2000Lossless, rows=32, columns=32)
    data = bytearray(broken.files[1].read_bytes())
    # the encapsulation stays intact (the last 8 bytes are its sequence delimiter), so only decoding can tell
    if damage == "codestream_tail":
        data[-208:-8] = b"\0" * 200
    else:
        siz = data.find(b"\xff\x4f\xff\x51")  # start of codestream, then the image and tile size marker
        data[siz + 8 : siz + 16] = b"\x7f" * 8
    broken.files[1].write_bytes(bytes(data))
    capfd.readouterr()
    with pytest.raises(ScanRejected) as err:
        read_volume(broken.folder)
    assert err.value.path == broken.folder
    assert err.value.reason.startswith(f"cannot decode the pixel data of {broken.files[1].name} (")
    assert "\n" not in str(err.value)
    # GDCM prints OpenJPEG's complaints with C stdio: they must land in the reason, not on the terminal
    assert capfd.readouterr().err == ""
    if damage == "image_size_marker":
        assert "; decoder: Invalid number of tiles" in err.value.reason
    # the other slices and stderr itself are unharmed: the next read works and prints normally
    print("still here", file=sys.stderr)
    assert capfd.readouterr().err == "still here\n"


def test_nifti_matches_nibabel_and_monai(tmp_path):
    import nibabel as nib

    path = shared_path("nifti", "totalseg_example_ct_sm.nii.gz")
    array, meta = read_volume(path)
    image = nib.load(path)
    np.testing.assert_array_equal(array, image.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(meta["affine"], image.affine)
    assert meta["source"] == "nifti"
    ours = LoadImage(reader=CTImageReader(), image_only=True)(str(path))
    monai = LoadImage(reader="NibabelReader", image_only=True)(str(path))
    np.testing.assert_array_equal(ours.numpy(), monai.numpy())
    np.testing.assert_allclose(ours.affine.numpy(), monai.affine.numpy())


def test_nifti_4d_singleton_is_squeezed_and_4d_rejected(tmp_path):
    import nibabel as nib

    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6, 1)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), tmp_path / "one.nii.gz")
    array, meta = read_volume(tmp_path / "one.nii.gz")
    assert array.shape == (4, 5, 6)
    np.testing.assert_array_equal(array, data[..., 0])
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.int16), np.eye(4)), tmp_path / "two.nii.gz")
    with pytest.raises(
        ScanRejected,
        match=r"two.nii.gz: not a 3D volume: shape \(4, 5, 6, 2\) \(3D, or 4D with one volume, expected\)$",
    ):
        read_volume(tmp_path / "two.nii.gz")


def test_ct_image_reader_stacks_several_names_as_channels(tmp_path):
    a = write_ct_series(tmp_path / "a", n_slices=4)
    b = write_ct_series(tmp_path / "b", n_slices=4, seed=1)
    reader = CTImageReader(workers=1)
    assert reader.verify_suffix([str(a.folder), "x.nii.gz", "IM0001.dcm"])
    assert not reader.verify_suffix("image.png")
    array, meta = reader.get_data(reader.read([str(a.folder), str(b.folder)]))
    assert array.shape == (2, 20, 24, 4)
    np.testing.assert_array_equal(array[1], b.hu)
    assert meta["original_channel_dim"] == 0


def test_concurrent_jpeg2000_reads_share_the_quiet_decoder_and_each_gets_its_own_verdict(tmp_path, capfd):
    from concurrent.futures import ThreadPoolExecutor

    good = write_ct_series(tmp_path / "good", n_slices=6, transfer_syntax=JPEG2000Lossless, rows=32, columns=32)
    bad = write_ct_series(tmp_path / "bad", n_slices=6, transfer_syntax=JPEG2000Lossless, rows=32, columns=32)
    data = bytearray(bad.files[2].read_bytes())
    siz = data.find(b"\xff\x4f\xff\x51")
    data[siz + 8 : siz + 16] = b"\x7f" * 8
    bad.files[2].write_bytes(bytes(data))

    def read(folder):
        try:
            return read_volume(folder, workers=2)[0]
        except ScanRejected as err:
            return err

    capfd.readouterr()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(read, [good.folder, bad.folder] * 3))
    for result in results[0::2]:
        np.testing.assert_array_equal(result, good.hu)
    for result in results[1::2]:
        assert isinstance(result, ScanRejected) and bad.files[2].name in result.reason
    assert capfd.readouterr().err == ""
    sys.stderr.write("stderr restored\n")
    assert capfd.readouterr().err == "stderr restored\n"
