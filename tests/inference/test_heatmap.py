"""Heatmap resampling back to the source grid, NIfTI writing and the montage."""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from pipeline.inference.heatmap import (
    map_affine,
    montage_frames,
    resample_to_grid,
    write_heatmap_nifti,
    write_montage_png,
)

# (source voxel -> world) affines that permute, flip and scale axes, as Orientation / Spacing / crops produce
AXIS_ALIGNED = [
    np.array([[0, -2.0, 0, 30], [0, 0, 3.0, -4], [1.5, 0, 0, 7], [0, 0, 0, 1]]),
    np.array([[-4.0, 0, 0, 60], [0, 4.0, 0, -10], [0, 0, -5.0, 80], [0, 0, 0, 1]]),
]


def _monai_resample(values, source_affine, target_affine, target_shape):
    resampled = SpatialResample(mode="bilinear", padding_mode="border", align_corners=False, dtype=torch.float64)(
        MetaTensor(torch.as_tensor(values)[None], affine=torch.as_tensor(source_affine)),
        dst_affine=torch.as_tensor(target_affine),
        spatial_size=target_shape,
    )
    return resampled[0].numpy()


@pytest.mark.parametrize("source_affine", AXIS_ALIGNED)
def test_axis_aligned_resampling_equals_monai_spatial_resample(source_affine):
    values = np.random.default_rng(0).normal(size=(5, 7, 3)).astype(np.float32)
    target_affine = np.array([[0.7, 0, 0, 1], [0, -0.9, 0, 40], [0, 0, 2.1, -2], [0, 0, 0, 1]])
    fast = resample_to_grid(values, source_affine=source_affine, target_affine=target_affine, target_shape=(40, 30, 20))
    reference = _monai_resample(values, source_affine, target_affine, (40, 30, 20))
    assert fast.shape == (40, 30, 20) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, reference, atol=1e-5)


def _rotation(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


@pytest.mark.parametrize("degrees", [0.0, 17.0])
def test_trilinear_resampling_reproduces_a_linear_field(degrees):
    # trilinear interpolation is exact for a linear function of position, inside the source field of view
    source_affine = np.diag([2.0, 2.0, 3.0, 1.0])
    source_shape = (30, 30, 20)
    world = (
        np.einsum("ij,j...->i...", source_affine[:3, :3], np.indices(source_shape))
        + source_affine[:3, 3, None, None, None]
    )
    gradient = np.array([0.3, -0.2, 0.5])
    field = np.einsum("i,i...->...", gradient, world) + 4.0
    target_affine = np.eye(4)
    target_affine[:3, :3] = _rotation(degrees) @ np.diag([1.5, 1.5, 2.0])
    target_affine[:3, 3] = [20.0, 20.0, 15.0]
    target_shape = (12, 12, 10)
    resampled = resample_to_grid(
        field, source_affine=source_affine, target_affine=target_affine, target_shape=target_shape
    )
    target_world = (
        np.einsum("ij,j...->i...", target_affine[:3, :3], np.indices(target_shape))
        + target_affine[:3, 3, None, None, None]
    )
    np.testing.assert_allclose(resampled, np.einsum("i,i...->...", gradient, target_world) + 4.0, atol=2e-3)


def test_map_affine_places_a_coarse_map_like_interpolate():
    grid_affine = np.array([[0, 0, -2.5, 10], [0.8, 0, 0, -5], [0, 0.8, 0, 3], [0, 0, 0, 1]])
    coarse = torch.randn(8, 6, 4)
    grid_shape = (64, 48, 32)
    upsampled = resample_to_grid(
        coarse,
        source_affine=map_affine(grid_affine, grid_shape, coarse.shape),
        target_affine=grid_affine,
        target_shape=grid_shape,
    )
    expected = F.interpolate(coarse[None, None], size=grid_shape, mode="trilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(upsampled, expected.numpy(), atol=1e-5)


def _sitk_geometry_of_affine(affine: np.ndarray):
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    return spacing, np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3], (lps / spacing).ravel()


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_heatmap_nifti_keeps_geometry_and_values(tmp_path, dtype):
    affine = np.array([[-0.8, 0, 0, 120.0], [0, -0.8, 0, 90.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
    values = np.random.default_rng(1).normal(size=(20, 16, 6)).astype(np.float32) * 3
    path = write_heatmap_nifti(tmp_path / "heat.nii.gz", values, affine, dtype=dtype)
    image = sitk.ReadImage(str(path))
    spacing, origin, direction = _sitk_geometry_of_affine(affine)
    assert image.GetSize() == values.shape
    np.testing.assert_allclose(image.GetSpacing(), spacing, atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), origin, atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), direction, atol=1e-6)
    read_back = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    tolerance = (values.max() - values.min()) / 255 if dtype == "uint8" else 1e-6
    np.testing.assert_allclose(read_back, values, atol=tolerance)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.nii.gz"]  # no temporary file left behind


def test_heatmap_dtype_is_checked(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_heatmap_nifti(tmp_path / "h.nii.gz", np.zeros((2, 2, 2)), np.eye(4), dtype="int64")


def _blob_volume(shape=(40, 40, 10)):
    """Black volume with a bright cube at high i, high j (patient right-anterior in RAS), top slice only."""
    volume = np.full(shape, -1350.0, dtype=np.float32)
    volume[30:36, 30:36, -1] = 150.0
    return volume


def test_montage_shows_radiological_view_head_first():
    volume = _blob_volume()
    frames = montage_frames(image=volume, heatmap=np.zeros_like(volume), affine=np.eye(4), n_slices=4)
    assert frames.shape == (3, 40, 40, 4)
    first = frames[0, :, :, 0]  # gray, so every channel holds the image
    rows, cols = np.nonzero(first > 0.5)
    # patient right (high i in RAS) on the image's left, anterior (high j) at the top, top slice first
    assert rows.max() < 20 and cols.max() < 20
    assert frames[..., 1:].max() < 0.5


def test_montage_does_not_depend_on_storage_order():
    volume = _blob_volume()
    ras = montage_frames(image=volume, heatmap=np.zeros_like(volume), affine=np.eye(4), n_slices=3)
    # the same anatomy stored LPS (i, j flipped) with the matching affine
    lps_affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps_affine[:3, 3] = [39.0, 39.0, 0.0]
    flipped = volume[::-1, ::-1, :]
    lps = montage_frames(image=flipped, heatmap=np.zeros_like(flipped), affine=lps_affine, n_slices=3)
    np.testing.assert_allclose(lps, ras)


def test_positive_evidence_is_coloured_and_negative_evidence_is_not():
    image = np.full((32, 32, 2), -300.0, dtype=np.float32)
    heat = np.zeros_like(image)
    heat[:16] = -5.0  # negative evidence: stays gray
    heat[16:] = 5.0  # positive evidence: coloured
    frames = montage_frames(image=image, heatmap=heat, affine=np.eye(4), n_slices=1)[..., 0]
    channel_spread = frames.max(axis=0) - frames.min(axis=0)
    # RAS high i is shown on the image's left: columns 0..15 hold i >= 16
    assert channel_spread[:, :16].min() > 0.1
    assert channel_spread[:, 16:].max() < 1e-6


def test_montage_png_is_written(tmp_path):
    volume = _blob_volume((64, 64, 12))
    path = write_montage_png(
        tmp_path / "case.png", image=volume, heatmap=np.ones_like(volume), affine=np.eye(4), title="case-1 p=0.9"
    )
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.png"]
