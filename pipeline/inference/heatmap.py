"""Heatmaps in the source image's own geometry: resampling, NIfTI writing, a PNG montage and a three-plane overlay.

The stitched class map lives on a coarse grid (the preprocessed grid divided by the network's output stride). It is
mapped straight back to the grid of the image as loaded (same shape, spacing, origin and direction as the input
DICOM series or NIfTI file) by world coordinates, i.e. through the affines, which does not depend on which
preprocessing transforms ran or whether they are invertible (``Invertd`` would need every transform invertible).
NIfTI files get sform and qform both set, as ITK / 3D Slicer / ITK-SNAP expect, and say in ``descrip`` and
``intent_name`` what their values are; the montage uses :func:`monai.visualize.blend_images` and
:func:`monai.visualize.matshow3d`; the overlay (:func:`write_overlay_png`, what the gallery shows) is drawn with
matplotlib: axial, coronal and sagittal planes through the map's peak, lung window, the map as a translucent colour
overlay with a colour bar, and the case's id, score, label and status.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample
from monai.visualize import blend_images, matshow3d

from pipeline.io import atomic_path

__all__ = [
    "LUNG_WINDOW_HU",
    "map_affine",
    "montage_frames",
    "resample_to_grid",
    "overlay_planes",
    "write_heatmap_nifti",
    "write_montage_png",
    "write_overlay_png",
]

#: display window for CT lungs (level -600 HU, width 1500 HU)
LUNG_WINDOW_HU: tuple[float, float] = (-1350.0, 150.0)


def map_affine(
    grid_affine: np.ndarray | torch.Tensor,
    grid_shape: Sequence[int],
    map_shape: Sequence[int],
    *,
    origin: float | None = None,
) -> np.ndarray:
    """Affine of a coarse map that covers the same field of view as a finer grid.

    Each map voxel covers ``f = grid_shape / map_shape`` grid voxels. Map voxel ``j`` is centred on grid voxel
    ``f * j + origin``: ``origin=None`` is ``(f - 1) / 2``, the way ``torch.nn.functional.interpolate(...,
    align_corners=False)`` aligns centres; a network whose strided convolutions are padded symmetrically (the
    ResNets) centres them at ``f * j`` (``origin=0``, :func:`pipeline.inference.maps.map_origin`).

    Args:
        grid_affine: ``4x4`` voxel-to-world affine of the fine grid.
        grid_shape: spatial shape of the fine grid.
        map_shape: spatial shape of the coarse map.
        origin: grid position of map voxel 0's centre (``None``: the interpolation convention).

    Returns:
        ``4x4`` float64 voxel-to-world affine of the map.
    """
    grid_affine = _affine64(grid_affine)
    factors = np.asarray(grid_shape, dtype=np.float64) / np.asarray(map_shape, dtype=np.float64)
    map_to_grid = np.diag([*factors, 1.0])
    map_to_grid[:3, 3] = (factors - 1.0) / 2.0 if origin is None else np.where(factors > 1.0, float(origin), 0.0)
    return grid_affine @ map_to_grid


def resample_to_grid(
    volume: np.ndarray | torch.Tensor,
    *,
    source_affine: np.ndarray | torch.Tensor,
    target_affine: np.ndarray | torch.Tensor,
    target_shape: Sequence[int],
) -> np.ndarray:
    """Trilinear resampling of a 3D volume onto another grid, by world coordinates, borders extended.

    When the two grids are axis-aligned with each other (any permutation, flip, scaling and shift, which covers
    orientation changes, spacing changes, crops and pads) the interpolation is separable and is done as three small
    matrix products: about 50x faster than a full ``grid_sample`` for a 512x512x80 target. Oblique cases fall back
    to MONAI's :class:`~monai.transforms.SpatialResample`. Both give the same values (tested).

    Args:
        volume: ``(X, Y, Z)`` values on the source grid.
        source_affine: ``4x4`` voxel-to-world affine of ``volume``.
        target_affine: ``4x4`` voxel-to-world affine of the target grid.
        target_shape: spatial shape of the target grid.

    Returns:
        ``target_shape`` float32 array.
    """
    values = _as_float32(volume)
    source_affine = _affine64(source_affine)
    target_affine = _affine64(target_affine)
    target_shape = tuple(int(s) for s in target_shape)
    # target voxel index -> source voxel index
    target_to_source = np.linalg.solve(source_affine, target_affine)
    linear = target_to_source[:3, :3]
    scale = np.abs(linear).max()
    significant = np.abs(linear) > 1e-6 * scale
    if not (significant.sum(axis=0) == 1).all() or not (significant.sum(axis=1) == 1).all():
        resampled = SpatialResample(mode="bilinear", padding_mode="border", align_corners=False, dtype=torch.float32)(
            MetaTensor(torch.as_tensor(values)[None], affine=torch.as_tensor(source_affine)),
            dst_affine=torch.as_tensor(target_affine),
            spatial_size=target_shape,
        )
        return np.asarray(resampled[0].as_tensor(), dtype=np.float32)

    result = values
    # contract one source axis at a time; the target axis fed by source axis p is the one its row points to
    target_axis_of = [int(np.flatnonzero(significant[p])[0]) for p in range(3)]
    for p in range(3):
        d = target_axis_of[p]
        weights = _linear_weights(
            n_source=values.shape[p],
            coordinates=linear[p, d] * np.arange(target_shape[d]) + target_to_source[p, 3],
        )
        # tensordot puts the new (target) axis first; moving it back keeps source axis order for the next step
        result = np.moveaxis(np.tensordot(weights, result, axes=([1], [p])), 0, p)
    # result axes are now (target_axis_of[0], target_axis_of[1], target_axis_of[2]); put them in target order
    return np.ascontiguousarray(np.transpose(result, np.argsort(target_axis_of)), dtype=np.float32)


def _linear_weights(*, n_source: int, coordinates: np.ndarray) -> np.ndarray:
    """``(len(coordinates), n_source)`` matrix of 1D linear-interpolation weights, coordinates clamped to the ends."""
    clamped = np.clip(coordinates, 0.0, n_source - 1)
    lower = np.floor(clamped).astype(np.int64)
    upper = np.minimum(lower + 1, n_source - 1)
    fraction = (clamped - lower).astype(np.float32)
    weights = np.zeros((len(coordinates), n_source), dtype=np.float32)
    rows = np.arange(len(coordinates))
    np.add.at(weights, (rows, lower), 1.0 - fraction)
    np.add.at(weights, (rows, upper), fraction)
    return weights


def write_heatmap_nifti(
    target: str | os.PathLike,
    heatmap: np.ndarray | torch.Tensor,
    affine: np.ndarray | torch.Tensor,
    *,
    dtype: str = "uint8",
    description: str | None = None,
    intent_name: str | None = None,
) -> Path:
    """Write a 3D heatmap as NIfTI, atomically, with sform and qform both set to ``affine`` (as MONAI's writer does).

    Storage: by default 8-bit with NIfTI's ``scl_slope`` / ``scl_inter`` chosen by nibabel to span the map's range,
    so viewers and readers (SimpleITK, nibabel, 3D Slicer) get the float values back to within 1/255 of the range.
    A float32 heatmap of a 512x512x80 series is ~70 MB and ~2.5 s to gzip; the 8-bit one ~7 MB and ~0.5 s, which
    matters for a cohort of thousands. MONAI's ``NibabelWriter`` casts without scaling, hence nibabel directly.

    Args:
        target: output path (``.nii.gz`` or ``.nii``).
        heatmap: ``(X, Y, Z)`` values on the grid described by ``affine``.
        affine: ``4x4`` voxel-to-world affine in RAS (the MONAI / nibabel convention), e.g. the loaded image's.
        dtype: ``"uint8"`` (scaled, compact) or ``"float32"`` (exact).
        description: what the values are, stored in the header's ``descrip`` (80 bytes at most, cut there).
        intent_name: a short name of the map (``intent_name``, 16 bytes at most), with the intent code
            ``NIFTI_INTENT_ESTIMATE`` (a parameter estimate per voxel).

    Returns:
        The written path.

    Raises:
        ValueError: for another ``dtype``.
    """
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"heatmap dtype must be 'uint8' or 'float32', not {dtype!r}")
    values = _as_float32(heatmap)
    affine = _affine64(affine)
    image = nib.Nifti1Image(values, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.set_data_dtype(np.dtype(dtype))
    if description is not None:
        image.header["descrip"] = description.encode("ascii", "replace")[:80]
    if intent_name is not None:
        image.header.set_intent("estimate", name=intent_name[:16])
    with atomic_path(target) as tmp:
        nib.save(image, tmp)
    return Path(target)


def montage_frames(
    *,
    image: np.ndarray | torch.Tensor,
    heatmap: np.ndarray | torch.Tensor,
    affine: np.ndarray | torch.Tensor,
    n_slices: int = 12,
    window_hu: tuple[float, float] = LUNG_WINDOW_HU,
    max_frame_size: int = 256,
) -> np.ndarray:
    """Axial slices in radiological view with the positive evidence blended in, as RGB frames.

    Only positive evidence is coloured (negative log-odds stay transparent) and opacity grows with it, so the
    overlay points at what drove a positive call. Slices are shown head first, each with the patient's right on the
    image's left and anterior at the top, whatever the storage order of the volume.

    Args:
        image: ``(X, Y, Z)`` CT in HU on the grid of ``affine``.
        heatmap: ``(X, Y, Z)`` evidence (log-odds) on the same grid.
        affine: ``4x4`` RAS affine of the grid.
        n_slices: number of evenly spaced axial slices.
        window_hu: display window ``(low, high)`` in HU.
        max_frame_size: frames are subsampled by an integer step to at most this many pixels a side (a montage of
            512x512 slices is mostly resampling time for no visible gain).

    Returns:
        ``(3, rows, cols, n)`` float array in ``[0, 1]`` (MONAI's channel-first layout, frames last).
    """
    image_lps = _to_display_order(_as_float32(image), affine)
    heat_lps = _to_display_order(_as_float32(heatmap), affine)
    depth = image_lps.shape[2]
    slices = np.unique(np.linspace(0, depth - 1, num=max(1, min(n_slices, depth))).round().astype(int))[::-1]
    step = max(1, int(np.ceil(max(image_lps.shape[:2]) / max_frame_size)))
    # frames as (rows = towards posterior, cols = towards patient left): the radiological view of an axial slice
    frames_image = np.transpose(image_lps[::step, ::step, slices], (1, 0, 2))[None]
    frames_heat = np.transpose(heat_lps[::step, ::step, slices], (1, 0, 2))[None]
    low, high = window_hu
    gray = np.clip((frames_image - low) / (high - low), 0.0, 1.0)
    positive = np.clip(frames_heat, 0.0, None)
    scale = float(np.percentile(positive, 99.5)) if positive.any() else 1.0
    strength = np.clip(positive / max(scale, 1e-6), 0.0, 1.0)
    return np.asarray(blend_images(gray, strength, alpha=0.6 * strength, cmap="jet", rescale_arrays=False))


def write_montage_png(
    target: str | os.PathLike,
    *,
    image: np.ndarray | torch.Tensor,
    heatmap: np.ndarray | torch.Tensor,
    affine: np.ndarray | torch.Tensor,
    n_slices: int = 12,
    window_hu: tuple[float, float] = LUNG_WINDOW_HU,
    title: str | None = None,
) -> Path:
    """PNG montage of :func:`montage_frames`, four slices a row, written atomically.

    Args:
        target: output ``.png`` path.
        image: ``(X, Y, Z)`` CT in HU on the grid of ``affine``.
        heatmap: ``(X, Y, Z)`` evidence (log-odds) on the same grid.
        affine: ``4x4`` RAS affine of the grid.
        n_slices: number of evenly spaced axial slices.
        window_hu: display window ``(low, high)`` in HU.
        title: figure title (no PHI: pass the pseudonymous case id and the score).

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: a batch job on a server has no display
    import matplotlib.pyplot as plt

    frames = montage_frames(image=image, heatmap=heatmap, affine=affine, n_slices=n_slices, window_hu=window_hu)
    n_frames = frames.shape[-1]
    rows = 1 + (n_frames - 1) // 4
    fig = plt.figure()
    try:
        matshow3d(
            frames,
            fig=fig,
            title=title,
            frame_dim=-1,
            channel_dim=0,
            figsize=(12, max(3, 3 * rows)),
            frames_per_row=4,
            fill_value=0.0,
        )
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(target)


def overlay_planes(
    *,
    image: np.ndarray | torch.Tensor,
    heatmap: np.ndarray | torch.Tensor,
    affine: np.ndarray | torch.Tensor,
) -> dict[str, dict]:
    """The axial, coronal and sagittal planes through the map's peak, oriented as a radiologist reads them.

    Axial: patient right on the image's left, anterior at the top. Coronal: right on the left, superior at the top.
    Sagittal: anterior on the left, superior at the top. Whatever the storage order of the volume.

    Args:
        image: ``(X, Y, Z)`` CT in HU on the grid of ``affine``.
        heatmap: ``(X, Y, Z)`` map on the same grid.
        affine: ``4x4`` RAS affine of the grid.

    Returns:
        ``{"axial" | "coronal" | "sagittal": {"image": 2D, "heatmap": 2D, "aspect": row/column pixel ratio,
        "peak": (row, column)}}`` and ``"peak_lps"``: the peak's index in (L, P, S) display order. A constant map
        (e.g. no positive evidence anywhere) has no peak (``None``): its planes go through the volume's middle.
    """
    image_lps = _to_display_order(_as_float32(image), affine)
    heat_lps = _to_display_order(_as_float32(heatmap), affine)
    spacing = _display_spacing(affine)
    finite = np.where(np.isfinite(heat_lps), heat_lps, -np.inf)
    shown = heat_lps[np.isfinite(heat_lps)]
    flat = shown.size == 0 or float(shown.max()) <= float(shown.min())
    # a constant map has no peak: show the middle of the volume and mark nothing
    peak = tuple(n // 2 for n in heat_lps.shape) if flat else np.unravel_index(int(np.argmax(finite)), heat_lps.shape)
    i, j, k = (int(v) for v in peak)
    planes = {
        # rows: posterior (down), columns: patient left (right of the image)
        "axial": (image_lps[:, :, k].T, heat_lps[:, :, k].T, spacing[1] / spacing[0], (j, i)),
        # rows: superior at the top (flipped S), columns: patient left
        "coronal": (
            image_lps[:, j, :].T[::-1],
            heat_lps[:, j, :].T[::-1],
            spacing[2] / spacing[0],
            (heat_lps.shape[2] - 1 - k, i),
        ),
        # rows: superior at the top, columns: posterior (anterior on the left)
        "sagittal": (
            image_lps[i, :, :].T[::-1],
            heat_lps[i, :, :].T[::-1],
            spacing[2] / spacing[1],
            (heat_lps.shape[2] - 1 - k, j),
        ),
    }
    result: dict[str, dict] = {
        name: {"image": img, "heatmap": heat, "aspect": float(aspect), "peak": None if flat else where}
        for name, (img, heat, aspect, where) in planes.items()
    }
    result["peak_lps"] = {"index": None if flat else (i, j, k)}
    return result


def write_overlay_png(
    target: str | os.PathLike,
    *,
    image: np.ndarray | torch.Tensor,
    heatmap: np.ndarray | torch.Tensor,
    affine: np.ndarray | torch.Tensor,
    title: str,
    colorbar_label: str = "relative evidence",
    window_hu: tuple[float, float] = LUNG_WINDOW_HU,
    value_range: tuple[float, float] | None = None,
    alpha: float = 0.45,
) -> Path:
    """A PNG for a person: three planes through the map's peak, lung window, translucent map with a colour bar.

    The map is drawn with the ``inferno`` colour map, transparent where it is below 5 % of its range (so the anatomy
    stays readable where the map says nothing); a cross marks the peak in every plane.

    Args:
        target: output ``.png`` path (written atomically).
        image: ``(X, Y, Z)`` CT in HU on the grid of ``affine``.
        heatmap: ``(X, Y, Z)`` map on the same grid.
        affine: ``4x4`` RAS affine of the grid.
        title: the caption (no PHI: the pseudonymous case id, score, label, status).
        colorbar_label: what the colours mean.
        window_hu: display window ``(low, high)`` in HU.
        value_range: colour scale ``(low, high)`` (default: 0 .. the map's maximum, or its range if negative).
        alpha: opacity of the map.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: a batch job on a server has no display
    import matplotlib.pyplot as plt

    planes = overlay_planes(image=image, heatmap=heatmap, affine=affine)
    values = _as_float32(heatmap)
    if value_range is None:
        finite = values[np.isfinite(values)]
        high = float(finite.max()) if finite.size else 1.0
        low = min(0.0, float(finite.min())) if finite.size else 0.0
        value_range = (low, high if high > low else low + 1.0)
    low, high = value_range
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8), facecolor="black")
    try:
        shown = None
        for axis, name in zip(axes, ("axial", "coronal", "sagittal"), strict=True):
            plane = planes[name]
            axis.imshow(plane["image"], cmap="gray", vmin=window_hu[0], vmax=window_hu[1], aspect=plane["aspect"])
            heat = np.ma.masked_less(plane["heatmap"], low + 0.05 * (high - low))
            shown = axis.imshow(heat, cmap="inferno", vmin=low, vmax=high, alpha=alpha, aspect=plane["aspect"])
            if plane["peak"] is not None:
                row, column = plane["peak"]
                axis.plot([column], [row], marker="+", color="cyan", markersize=14, markeredgewidth=1.5)
            axis.set_title(name, color="white", fontsize=10)
            axis.set_axis_off()
        bar = fig.colorbar(shown, ax=list(axes), fraction=0.025, pad=0.02)
        # wrapped: the map's description is longer than the bar is tall
        bar.set_label("\n".join(textwrap.wrap(colorbar_label, 44)) or colorbar_label, color="white")
        bar.ax.yaxis.set_tick_params(color="white", labelcolor="white")
        if planes["peak_lps"]["index"] is None:
            title += "   (map is flat: nothing highlighted)"
        fig.suptitle(title, color="white", fontsize=11)
        with atomic_path(target) as tmp:
            # bbox "tight": the colour bar's label sits right of the bar, outside the axes grid, and was cut off
            fig.savefig(tmp, dpi=90, format="png", facecolor="black", bbox_inches="tight", pad_inches=0.15)
    finally:
        plt.close(fig)
    return Path(target)


def _display_spacing(affine: np.ndarray | torch.Tensor) -> np.ndarray:
    """Voxel spacing along the (L, P, S) display axes of :func:`_to_display_order`."""
    affine = _affine64(affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(("L", "P", "S"))
    )
    display = np.empty(3)
    for source_axis, (target_axis, _flip) in enumerate(transform):
        display[int(target_axis)] = spacing[source_axis]
    return display


def _as_float32(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """A float32 numpy array of an array or tensor (any strides, any device)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().float().numpy()
    return np.asarray(values, dtype=np.float32)


def _affine64(affine: np.ndarray | torch.Tensor) -> np.ndarray:
    """A float64 numpy ``4x4`` affine of an array or tensor."""
    if isinstance(affine, torch.Tensor):
        return affine.detach().cpu().double().numpy()
    return np.asarray(affine, dtype=np.float64)


def _to_display_order(volume: np.ndarray, affine: np.ndarray | torch.Tensor) -> np.ndarray:
    """Reorder axes so they run towards patient Left, Posterior, Superior (the radiological display order)."""
    affine = _affine64(affine)
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(("L", "P", "S"))
    )
    return nib.orientations.apply_orientation(volume, transform)
