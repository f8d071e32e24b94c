"""The train / eval / infer transform chains on real files: written NIfTI phantoms, a written DICOM series, and the
shared real CT data."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import PersistentDataset
from monai.transforms import Compose, Invertd, Randomizable

from pipeline.contracts.defaults import DEFAULT_ROI_SIZE
from pipeline.data.loading import LoadScand, check_scan, scan_rejection
from pipeline.transforms import (
    HUAbove,
    augmentation_transforms,
    eval_transforms,
    infer_transforms,
    preprocessing_transforms,
    train_transforms,
)
from tests.conftest import shared_path

SHAPE = (60, 50, 20)
SPACING = (6.0, 6.0, 12.0)


def _write_nifti(path, volume: np.ndarray, spacing=SPACING, flip_x: bool = False):
    affine = np.diag([*spacing, 1.0])
    if flip_x:
        # voxel i = 0 lies at the patient's left (largest x), as in LPS-stored data
        affine[0, 0] = -spacing[0]
        affine[0, 3] = spacing[0] * (volume.shape[0] - 1)
    nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), str(path))
    return str(path)


def _chest_phantom(body_half_axes=(24.0, 18.0)) -> np.ndarray:
    """Air around an elliptic body (40 HU) with two lungs (-850 HU)."""
    x, y, _ = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    cx, cy = SHAPE[0] / 2, SHAPE[1] / 2
    volume = np.full(SHAPE, -1000.0)
    body = ((x - cx) / body_half_axes[0]) ** 2 + ((y - cy) / body_half_axes[1]) ** 2 < 1
    volume[body] = 40.0
    for side in (-1, 1):
        lung = ((x - cx - side * body_half_axes[0] / 2) / (body_half_axes[0] / 3)) ** 2 + (
            (y - cy) / (body_half_axes[1] / 2)
        ) ** 2 < 1
        volume[lung] = -850.0
    return volume


def _air_share(image: torch.Tensor) -> float:
    return float((image < 0.01).float().mean())


@pytest.fixture
def phantom(tmp_path):
    return _write_nifti(tmp_path / "chest.nii.gz", _chest_phantom())


def test_eval_chain_gives_fixed_size_windowed_image_and_channel_label(phantom):
    out = eval_transforms(roi_size=(32, 32, 16), spacing=(4.0, 4.0, 8.0))({"image": phantom, "label": 1})
    image, label = out["image"], out["label"]
    assert tuple(image.shape) == (1, 32, 32, 16)
    assert image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert tuple(label.shape) == (1,) and label.dtype == torch.long and int(label[0]) == 1


@pytest.mark.parametrize(("hu", "expected"), [(-1200.0, 0.0), (-300.0, 0.5), (1000.0, 1.0)])
def test_hu_window_maps_to_unit_range_and_clips(tmp_path, hu, expected):
    path = _write_nifti(tmp_path / "flat.nii.gz", np.full(SHAPE, hu))
    # toy volumes, not chests: loaded anyway, as min_slices=1 loads toy slice counts
    chain = eval_transforms(
        roi_size=(16, 16, 8), spacing=None, hu_window=(-1000, 400), body_threshold_hu=None, allow_out_of_scope=True
    )
    image = chain({"image": path, "label": 0})["image"]
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-5)


def test_body_crop_spends_the_input_on_the_body(tmp_path):
    small_body = _write_nifti(tmp_path / "small.nii.gz", _chest_phantom(body_half_axes=(12.0, 9.0)))
    cropped = eval_transforms(roi_size=(32, 32, 16), spacing=None, allow_out_of_scope=True)(
        {"image": small_body, "label": 0}
    )["image"]
    uncropped = eval_transforms(roi_size=(32, 32, 16), spacing=None, body_threshold_hu=None, allow_out_of_scope=True)(
        {"image": small_body, "label": 0}
    )["image"]
    assert _air_share(uncropped) > 0.6  # the body covers a small part of the field of view
    assert _air_share(cropped) < 0.35  # after the crop only the corners of the ellipse are air
    assert HUAbove(-500.0)(torch.tensor([-1000.0, -600.0, -400.0, 40.0])).tolist() == [False, False, True, True]


def test_orientation_reorders_voxels_to_ras(tmp_path):
    volume = np.full(SHAPE, -1000.0)
    volume[:5] = 400.0  # a bright slab at voxel i < 5, which the flipped affine puts at the patient's left (+x)
    path = _write_nifti(tmp_path / "lps.nii.gz", volume, flip_x=True)
    chain = eval_transforms(roi_size=SHAPE, spacing=None, body_threshold_hu=None, allow_out_of_scope=True)
    image = chain({"image": path, "label": 0})["image"]
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")
    profile = image[0].mean(dim=(1, 2))
    assert float(profile[-5:].mean()) > 0.9 and float(profile[:5].mean()) < 0.1  # the slab moved to high x


def test_spacing_resamples_to_the_target_voxel_size(phantom):
    chain = preprocessing_transforms(roi_size=(16, 16, 8), spacing=(3.0, 3.0, 6.0))
    data = {"image": phantom, "label": 0}
    for transform in chain[:4]:  # load, channel, orientation, spacing
        data = transform(data)
    image = data["image"]
    np.testing.assert_allclose(image.pixdim.numpy(), [3.0, 3.0, 6.0], atol=1e-4)
    # the same physical extent between the first and last voxel centres
    expected = tuple(
        round((n - 1) * old / new) + 1 for n, old, new in zip(SHAPE, SPACING, (3.0, 3.0, 6.0), strict=True)
    )
    assert tuple(image.shape[1:]) == expected


def test_train_chain_augments_reproducibly_and_keeps_the_size(phantom):
    out = train_transforms(roi_size=(32, 32, 16), spacing=(4.0, 4.0, 8.0))({"image": phantom, "label": 0})
    assert tuple(out["image"].shape) == (1, 32, 32, 16)
    # the random part alone, on the preprocessed case (what PersistentDataset replays every epoch)
    preprocessed = eval_transforms(roi_size=(32, 32, 16), spacing=(4.0, 4.0, 8.0))({"image": phantom, "label": 0})
    augment = augmentation_transforms(roi_size=(32, 32, 16))
    assert augment and all(isinstance(t, Randomizable) for t in augment)

    def run(seed: int) -> torch.Tensor:
        chain = Compose(augmentation_transforms(roi_size=(32, 32, 16), flip_prob=1.0, affine_prob=1.0, noise_prob=1.0))
        chain.set_random_state(seed=seed)
        return torch.stack([chain(dict(preprocessed))["image"] for _ in range(3)])

    first, again, other = run(1), run(1), run(2)
    assert tuple(first.shape) == (3, 1, 32, 32, 16)
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first[0], first[1])  # a fresh draw per call
    assert not torch.allclose(first[0], preprocessed["image"])


def test_infer_chain_needs_no_label_and_inverts_to_the_acquired_grid(phantom):
    chain = infer_transforms(roi_size=(32, 32, 16), spacing=(4.0, 4.0, 8.0))
    out = chain({"image": phantom})
    assert tuple(out["image"].shape) == (1, 32, 32, 16) and "label" not in out
    out["heatmap"] = out["image"].clone()
    restored = Invertd(keys="heatmap", transform=chain, orig_keys="image", nearest_interp=False)(out)
    assert tuple(restored["heatmap"].shape) == (1, *SHAPE)


def test_persistent_dataset_caches_only_the_deterministic_part(tmp_path, phantom):
    cache = tmp_path / "cache"
    other = _write_nifti(tmp_path / "other.nii.gz", _chest_phantom(body_half_axes=(20.0, 15.0)))
    data = [{"image": phantom, "label": 0}, {"image": other, "label": 1}]
    chain = train_transforms(roi_size=(32, 32, 16))
    chain.set_random_state(seed=0)
    dataset = PersistentDataset(data, transform=chain, cache_dir=cache)
    first = [dataset[i]["image"] for i in range(2)]
    cached = sorted(p.name for p in cache.iterdir())
    later = [dataset[0]["image"] for _ in range(4)]
    assert len(cached) == 2 and sorted(p.name for p in cache.iterdir()) == cached
    # augmentation runs after the cache, on every read
    assert any(not torch.allclose(first[0], image) for image in later)


def test_written_dicom_series_through_the_train_chain(tmp_path):
    from pipeline.data.demo import write_demo_cohort

    cohort = write_demo_cohort(tmp_path / "demo", cases=1, size=32, seed=3)
    out = train_transforms(roi_size=(32, 32, 16))({"image": str(cohort.cases[0].series_dir), "label": 1})
    assert tuple(out["image"].shape) == (1, 32, 32, 16)
    assert 0.05 < float(out["image"].mean()) < 0.95  # body and lungs, neither all air nor all bone


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"roi_size": (32, 32)}, "roi_size"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"hu_window": (400, -1000)}, "hu_window"),
    ],
)
def test_bad_parameters_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        eval_transforms(**kwargs)


@pytest.mark.realdata
def test_real_ct_dicom_and_nifti_through_the_eval_chain():
    # real abdominal CT: out of scope for the chest classifier (tests/data/test_scope.py), read here anyway
    chain = eval_transforms(allow_out_of_scope=True)
    for path in (shared_path("dicom", "totalseg_abdomen_ct"), shared_path("nifti", "totalseg_example_ct_sm.nii.gz")):
        image = chain({"image": str(path), "label": 0})["image"]
        assert tuple(image.shape) == (1, *DEFAULT_ROI_SIZE)
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        # an abdomen cropped to the body: mostly soft tissue (~0.7 in the lung window), little air
        assert 0.4 < float(image.mean()) < 0.9, path


def test_a_batch_mixing_cached_and_fresh_cases_collates(tmp_path, phantom):
    from monai.data import DataLoader

    other = _write_nifti(tmp_path / "other.nii.gz", _chest_phantom(body_half_axes=(20.0, 15.0)))
    data = [{"image": phantom, "label": 0}, {"image": other, "label": 1}]
    chain = train_transforms(roi_size=(32, 32, 16))
    dataset = PersistentDataset(data, transform=chain, cache_dir=tmp_path / "cache")
    dataset[0]  # only the first case is cached, as after a run interrupted in its first epoch
    batch = next(iter(DataLoader(dataset, batch_size=2, num_workers=0)))
    assert batch["image"].shape == (2, 1, 32, 32, 16)
    assert not any(key.startswith("foreground_") for key in batch)


@pytest.mark.parametrize("chain", [train_transforms, eval_transforms, infer_transforms])
def test_every_chain_opens_scans_with_the_one_loader_and_its_checks(chain, tmp_path):
    from tests.data.dicom_factory import write_ct_series

    transforms = chain(roi_size=(16, 16, 8)).transforms
    assert isinstance(transforms[0], LoadScand)
    assert not any(type(t).__name__ in ("LoadImaged", "LoadImage") for t in transforms)
    tilted = write_ct_series(tmp_path / "tilted", tilt_degrees=15.0).folder
    nan = tmp_path / "nan.nii.gz"
    volume = _chest_phantom()
    volume[5, 5, 5] = np.nan
    nib.save(nib.Nifti1Image(volume, np.diag([*SPACING, 1.0])), str(nan))
    for image in (tilted, nan):
        with pytest.raises(RuntimeError) as failure:
            chain(roi_size=(16, 16, 8))({"image": str(image), "label": 0})
        rejection = scan_rejection(failure.value)
        assert rejection is not None and rejection.path == image, failure.value
        # a tilted stack is refused as the header probe (the manifest builder's check) refuses it, not read anyway
        if image == tilted:
            assert rejection.reason == check_scan(image)
        else:
            assert rejection.reason.startswith("non-finite values")
