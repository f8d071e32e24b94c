"""The transform chains of the pipeline (train / eval / infer), built only from MONAI transforms.

Every chain starts with the same deterministic preprocessing, so a case is seen identically by training, validation,
evaluation and inference (the bundle configs pass one set of ``roi_size`` / ``spacing`` / ``hu_window`` values to all
of them; their defaults, here and in the configs, are :mod:`pipeline.contracts.defaults`)::

    LoadScand                      DICOM series folder or NIfTI file -> float32 HU, RAS affine, no PHI in the meta
    EnsureChannelFirstd            (X, Y, Z) -> (1, X, Y, Z)
    Orientationd("RAS")            same voxel order for every scanner / file
    Spacingd(spacing)              one physical voxel size (anisotropic CT slices are resampled, not stretched later)
    CropForegroundd(HU > -500)     cut the air around the body, so the fixed-size input spends its voxels on anatomy
    ScaleIntensityRanged(window)   HU window (lung window -1000..400 by default) -> 0..1, clipped
    Resized(roi_size, area)        fixed network input size
    EnsureTyped(float32)

``LoadScand`` (:mod:`pipeline.data.loading`) is the one scan loader of every stage: it applies exactly the checks of
``aamct manifest build`` (series choice, geometry incl. gantry tilt, damaged files; NIfTI shape, values and affine)
and reads with :class:`~pipeline.data.reader.CTImageReader` alone, so a scan the builder would reject fails here with
the builder's reason (:class:`~pipeline.data.loading.ScanRejected`, ``"<path>: <reason>"``) instead of being read
by another MONAI reader. ``min_slices`` is the builder's ``--min-slices`` (default 16).

The training chain adds augmentation (left-right flip, a small affine, intensity shift and Gaussian noise) after the
deterministic part, so MONAI's ``PersistentDataset`` / ``CacheDataset`` cache everything up to the first random
transform, and hands plain tensors (no meta data) to the training step. Labels (integers) become a ``(1,)`` long tensor, i.e. ``(B, 1)`` per batch, the shape
``monai.losses.FocalLoss(to_onehot_y=True)`` and ``AsDiscreted(to_onehot=...)`` expect.

Every transform used is MONAI's own (``LoadScand`` is a MONAI ``LoadImaged`` with one reader); the only code here is
the parameter plumbing and :class:`HUAbove`, a picklable foreground selector (MONAI ships only ``is_positive``, which
would keep the air of an HU volume).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    Orientationd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandShiftIntensityd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
)

from pipeline.contracts.defaults import (
    DEFAULT_BODY_THRESHOLD_HU,
    DEFAULT_HU_WINDOW,
    DEFAULT_ROI_SIZE,
    DEFAULT_SPACING,
)
from pipeline.data.loading import DEFAULT_MIN_SLICES, LoadScand

__all__ = [
    "IMAGE_KEY",
    "LABEL_KEY",
    "HUAbove",
    "preprocessing_transforms",
    "augmentation_transforms",
    "train_transforms",
    "eval_transforms",
    "infer_transforms",
]

IMAGE_KEY = "image"
LABEL_KEY = "label"


@dataclass(frozen=True)
class HUAbove:
    """Foreground selector for ``CropForegroundd``: voxels brighter than ``threshold`` HU.

    A module-level class rather than a lambda so that DataLoader workers and ``PersistentDataset`` can pickle it.

    Args:
        threshold: HU value; voxels strictly above it are foreground.
    """

    threshold: float = DEFAULT_BODY_THRESHOLD_HU

    def __call__(self, image):
        """Boolean foreground mask of ``image`` (array or tensor of HU values)."""
        return image > self.threshold


def preprocessing_transforms(
    *,
    roi_size: Sequence[int] = DEFAULT_ROI_SIZE,
    spacing: Sequence[float] | None = DEFAULT_SPACING,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    body_threshold_hu: float | None = DEFAULT_BODY_THRESHOLD_HU,
    min_slices: int = DEFAULT_MIN_SLICES,
    workers: int | None = None,
    allow_out_of_scope: bool = False,
    scope_thresholds: Mapping[str, Any] | None = None,
    with_label: bool = True,
) -> list[MapTransform]:
    """The deterministic chain shared by training, evaluation and inference.

    Args:
        roi_size: fixed output size (x, y, z) in voxels.
        spacing: target voxel size (x, y, z) in mm; ``None`` keeps the acquired spacing.
        hu_window: ``(low, high)`` HU mapped to 0..1 (values outside are clipped).
        body_threshold_hu: HU above which a voxel counts as body for the foreground crop; ``None`` skips the crop.
        min_slices: fewest slices a scan may have (the manifest builder's ``--min-slices``; 1 for toy volumes).
        workers: slice-decoding threads per scan (1 inside a multi-worker ``DataLoader``; default: see
            :class:`~pipeline.data.loading.LoadScan`).
        allow_out_of_scope: load scans the scope check finds out of scope (not a chest CT with lungs in view)
            instead of refusing them (:class:`~pipeline.data.loading.LoadScan`; toy volumes in tests).
        scope_thresholds: the scope check's thresholds (default: :data:`pipeline.contracts.DEFAULT_SCOPE_THRESHOLDS`).
        with_label: also turn the integer ``label`` into a ``(1,)`` long tensor.

    Returns:
        The list of MONAI dictionary transforms (wrap it in ``Compose`` or concatenate it with augmentation).

    Raises:
        ValueError: if ``roi_size`` / ``spacing`` do not have three entries or ``hu_window`` is not increasing.
    """
    roi = _three(roi_size, "roi_size", int)
    window = [float(v) for v in hu_window]
    if len(window) != 2 or not window[0] < window[1]:
        raise ValueError(f"hu_window must be two increasing HU values (low, high), got {list(hu_window)!r}")
    chain: list[MapTransform] = [
        LoadScand(
            keys=IMAGE_KEY,
            min_slices=min_slices,
            workers=workers,
            allow_out_of_scope=allow_out_of_scope,
            scope_thresholds=scope_thresholds,
        ),
        EnsureChannelFirstd(keys=IMAGE_KEY),
        # labels=None: read "RAS" in the image's own space (MONAI's coming default; silences its FutureWarning)
        Orientationd(keys=IMAGE_KEY, axcodes="RAS", labels=None),
    ]
    if spacing is not None:
        chain.append(
            Spacingd(keys=IMAGE_KEY, pixdim=_three(spacing, "spacing", float), mode="bilinear", dtype=torch.float32)
        )
    if body_threshold_hu is not None:
        # cropped in HU, before windowing: after the window, dense tissue and bone saturate together and the
        # threshold would depend on the window chosen
        # no start/end coordinate keys in the item: a PersistentDataset turns them into tensors, so a batch mixing
        # cached and freshly loaded cases could not be collated (the crop is in the image's meta data anyway)
        chain.append(
            CropForegroundd(
                keys=IMAGE_KEY,
                source_key=IMAGE_KEY,
                select_fn=HUAbove(float(body_threshold_hu)),
                start_coord_key=None,
                end_coord_key=None,
            )
        )
    chain += [
        ScaleIntensityRanged(keys=IMAGE_KEY, a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True),
        # "area" (box averaging): the usual step is a downsampling, where plain interpolation aliases; MONAI's
        # trilinear + anti_aliasing would also do, but its Gaussian pads with zeros and darkens the crop's borders
        Resized(keys=IMAGE_KEY, spatial_size=roi, mode="area"),
        EnsureTyped(keys=IMAGE_KEY, dtype=torch.float32),
    ]
    if with_label:
        chain += [
            EnsureTyped(keys=LABEL_KEY, dtype=torch.long, track_meta=False),
            EnsureChannelFirstd(keys=LABEL_KEY, channel_dim="no_channel"),
        ]
    return chain


def augmentation_transforms(
    *,
    roi_size: Sequence[int] = DEFAULT_ROI_SIZE,
    flip_prob: float = 0.5,
    affine_prob: float = 0.5,
    rotate_deg: float = 10.0,
    scale_fraction: float = 0.1,
    shift_prob: float = 0.3,
    shift_offset: float = 0.05,
    noise_prob: float = 0.3,
    noise_std: float = 0.02,
) -> list[MapTransform]:
    """Training-only random transforms, applied to the preprocessed (windowed, fixed-size) image.

    Args:
        roi_size: the (fixed) image size, so the affine's sampling grid is built once and reused.
        flip_prob: probability of a left-right flip (x axis; the lungs are near mirror images, the other axes are not).
        affine_prob: probability of the small affine.
        rotate_deg: maximum in-plane (axial) rotation in degrees, either direction.
        scale_fraction: maximum isotropic zoom in or out, as a fraction.
        shift_prob: probability of an intensity offset.
        shift_offset: maximum intensity offset (the image is in 0..1).
        noise_prob: probability of additive Gaussian noise.
        noise_std: standard deviation of that noise.

    Returns:
        The list of MONAI random dictionary transforms.
    """
    return [
        RandFlipd(keys=IMAGE_KEY, spatial_axis=0, prob=flip_prob),
        RandAffined(
            keys=IMAGE_KEY,
            prob=affine_prob,
            spatial_size=_three(roi_size, "roi_size", int),
            rotate_range=(0.0, 0.0, math.radians(rotate_deg)),
            scale_range=(scale_fraction, scale_fraction, scale_fraction),
            mode="bilinear",
            # the windowed background is 0 (air), so padding with zeros adds nothing the network could latch onto
            padding_mode="zeros",
            cache_grid=True,
        ),
        RandShiftIntensityd(keys=IMAGE_KEY, offsets=shift_offset, prob=shift_prob),
        RandGaussianNoised(keys=IMAGE_KEY, prob=noise_prob, mean=0.0, std=noise_std),
    ]


def train_transforms(
    *,
    roi_size: Sequence[int] = DEFAULT_ROI_SIZE,
    spacing: Sequence[float] | None = DEFAULT_SPACING,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    body_threshold_hu: float | None = DEFAULT_BODY_THRESHOLD_HU,
    min_slices: int = DEFAULT_MIN_SLICES,
    workers: int | None = None,
    allow_out_of_scope: bool = False,
    scope_thresholds: Mapping[str, Any] | None = None,
    augment: bool = True,
) -> Compose:
    """Preprocessing followed by augmentation, for the training split.

    Args:
        roi_size: fixed output size (x, y, z).
        spacing: target voxel size (x, y, z) in mm, or ``None``.
        hu_window: ``(low, high)`` HU window.
        body_threshold_hu: foreground threshold in HU, or ``None``.
        min_slices: see :func:`preprocessing_transforms`.
        workers: see :func:`preprocessing_transforms`.
        allow_out_of_scope: see :func:`preprocessing_transforms`.
        scope_thresholds: see :func:`preprocessing_transforms`.
        augment: append :func:`augmentation_transforms` (``False`` gives the evaluation chain).

    Returns:
        A MONAI ``Compose``.
    """
    chain = preprocessing_transforms(
        roi_size=roi_size,
        spacing=spacing,
        hu_window=hu_window,
        body_threshold_hu=body_threshold_hu,
        min_slices=min_slices,
        workers=workers,
        allow_out_of_scope=allow_out_of_scope,
        scope_thresholds=scope_thresholds,
    )
    if augment:
        chain += augmentation_transforms(roi_size=roi_size)
    # plain tensors for the training step: MetaTensor bookkeeping on every network op costs time and nothing needs
    # the meta data after this point (the cached part above keeps it, for inversion and inspection)
    chain.append(EnsureTyped(keys=[IMAGE_KEY, LABEL_KEY], track_meta=False))
    return Compose(chain)


def eval_transforms(
    *,
    roi_size: Sequence[int] = DEFAULT_ROI_SIZE,
    spacing: Sequence[float] | None = DEFAULT_SPACING,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    body_threshold_hu: float | None = DEFAULT_BODY_THRESHOLD_HU,
    min_slices: int = DEFAULT_MIN_SLICES,
    workers: int | None = None,
    allow_out_of_scope: bool = False,
    scope_thresholds: Mapping[str, Any] | None = None,
) -> Compose:
    """The deterministic chain with labels, for validation and evaluation.

    Args:
        roi_size: fixed output size (x, y, z).
        spacing: target voxel size (x, y, z) in mm, or ``None``.
        hu_window: ``(low, high)`` HU window.
        body_threshold_hu: foreground threshold in HU, or ``None``.
        min_slices: see :func:`preprocessing_transforms`.
        workers: see :func:`preprocessing_transforms`.
        allow_out_of_scope: see :func:`preprocessing_transforms`.
        scope_thresholds: see :func:`preprocessing_transforms`.

    Returns:
        A MONAI ``Compose``.
    """
    return Compose(
        preprocessing_transforms(
            roi_size=roi_size,
            spacing=spacing,
            hu_window=hu_window,
            body_threshold_hu=body_threshold_hu,
            min_slices=min_slices,
            workers=workers,
            allow_out_of_scope=allow_out_of_scope,
            scope_thresholds=scope_thresholds,
        )
    )


def infer_transforms(
    *,
    roi_size: Sequence[int] = DEFAULT_ROI_SIZE,
    spacing: Sequence[float] | None = DEFAULT_SPACING,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    body_threshold_hu: float | None = DEFAULT_BODY_THRESHOLD_HU,
    min_slices: int = DEFAULT_MIN_SLICES,
    workers: int | None = None,
    allow_out_of_scope: bool = False,
    scope_thresholds: Mapping[str, Any] | None = None,
) -> Compose:
    """The deterministic chain without labels, for inference on unlabelled cases.

    Every step is invertible, so ``monai.transforms.Invertd`` with this chain maps heatmaps back onto the
    acquired grid.

    Args:
        roi_size: fixed output size (x, y, z).
        spacing: target voxel size (x, y, z) in mm, or ``None``.
        hu_window: ``(low, high)`` HU window.
        body_threshold_hu: foreground threshold in HU, or ``None``.
        min_slices: see :func:`preprocessing_transforms`.
        workers: see :func:`preprocessing_transforms`.
        allow_out_of_scope: see :func:`preprocessing_transforms`.
        scope_thresholds: see :func:`preprocessing_transforms`.

    Returns:
        A MONAI ``Compose``.
    """
    return Compose(
        preprocessing_transforms(
            roi_size=roi_size,
            spacing=spacing,
            hu_window=hu_window,
            body_threshold_hu=body_threshold_hu,
            min_slices=min_slices,
            workers=workers,
            allow_out_of_scope=allow_out_of_scope,
            scope_thresholds=scope_thresholds,
            with_label=False,
        )
    )


def _three(values: Sequence[float] | float, name: str, kind: type) -> tuple:
    if isinstance(values, (int, float)):
        values = [values] * 3
    values = list(values)
    if len(values) != 3 or any(kind(v) <= 0 for v in values):
        raise ValueError(f"{name} must be three positive numbers (x, y, z), got {values!r}")
    return tuple(kind(v) for v in values)
