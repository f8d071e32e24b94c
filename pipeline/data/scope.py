"""The scope check of a scan: is it a chest CT with the lungs in view, measured from the image itself.

A classifier of chest CT (COVID-19 positive / negative) gives a probability for any volume it is handed; an abdomen,
a head or a series with a wrong rescale would get one too, with a heatmap on the liver. This module decides, from
the HU volume as the loader returns it, whether a scan is one the model was made for:

* **HU plausibility**: outside air must read near -1000 HU and the body's soft tissue near +40 HU (a series written
  with RescaleIntercept 0 instead of -1024 reads air at about 0 HU and fails);
* **body** (:func:`body_mask`): the largest piece denser than the body threshold, holes filled slice by slice;
* **lungs** (:func:`lung_mask`, :func:`measure_lungs`): low-density voxels inside the body that are not connected to
  the outside air in their axial slice, without the midline airway (small air pieces near the body's left-right
  centre: trachea, main bronchi, also small midline gas pockets) and without pure-gas pockets (bowel and stomach gas
  read about -1000 HU throughout, aerated lung about -850) or small scattered pieces;
* **measurements**: lung volume (ml), craniocaudal lung extent (mm), whether the lungs are cut by the first or last
  slice (a warning, the scan stays in scope), and the verdict ``in_scope`` / ``out_of_scope`` with a one-line reason
  that names the measured values.

The masks are computed on a coarse grid (block means of about :data:`~pipeline.contracts.defaults.
DEFAULT_SCOPE_THRESHOLDS` ``coarse_voxel_mm`` voxels), so the check costs a few per cent of scoring a case
(benchmarks/bench_scope.py). DICOM tags (Modality, ImageType) may add a note but never decide: they are often blank
or wrong. MONAI has no body, lung or scope check for CT, so this is our own code, on scipy's labelling and
morphology.

The loader (:mod:`pipeline.data.loading`) runs :func:`assess_scope` on every scan it loads and refuses an
out-of-scope one with :class:`ScanOutOfScope` unless told to allow it; ``aamct manifest build`` runs the same
function on the same loaded volume, so every stage gives one scan one verdict.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.contracts.defaults import DEFAULT_BODY_THRESHOLD_HU, DEFAULT_SCOPE_THRESHOLDS
from pipeline.data.reader import ScanRejected

__all__ = [
    "IN_SCOPE",
    "OUT_OF_SCOPE",
    "SCOPE_COLUMNS",
    "LungMeasurement",
    "ScanOutOfScope",
    "ScopeResult",
    "ScopeThresholds",
    "assess_scope",
    "body_mask",
    "lung_mask",
    "measure_lungs",
]

IN_SCOPE = "in_scope"
OUT_OF_SCOPE = "out_of_scope"
#: the scope columns of the manifest and of ``predictions.csv``, in order
SCOPE_COLUMNS: tuple[str, ...] = ("scope", "lung_ml", "lung_extent_mm", "lung_cut", "scope_note")

#: the lung threshold of the full-resolution display mask (:func:`lung_mask`): aerated lung and ground glass
_DISPLAY_LUNG_HU = -250.0
#: the closing radius that pulls denser opacities and vessels at the lung's edge into the display mask
_DISPLAY_CLOSING_MM = 10.0


@dataclass(frozen=True, kw_only=True)
class ScopeThresholds:
    """The numbers the scope verdict is made with (defaults: :data:`~pipeline.contracts.defaults.
    DEFAULT_SCOPE_THRESHOLDS`, where each value's measurement is given).

    Attributes:
        min_lung_ml: least lung volume of a chest CT in scope.
        min_lung_extent_mm: least craniocaudal extent of the lungs.
        lung_hu: voxels (coarse block means) inside the body below this count as lung candidates.
        gas_mean_hu: a candidate piece whose mean is below this is gas (bowel, stomach), not lung.
        min_piece_ml: candidate pieces smaller than this are dropped (scattered gas, noise).
        airway_max_area_mm2: a piece of an axial slice at most this large near the midline is airway, not lung.
        airway_midline_mm: "near the midline": its centre within this distance of the body's left-right centre.
        cut_fraction: the lungs are cut by an edge slice when its lung area exceeds this share of the largest.
        air_hu: range the outside air (the 1st percentile of the voxels above -1500 HU) must lie in.
        tissue_hu: range the body's median soft tissue (voxels from -500 to 3000 HU inside the body) must lie in.
        coarse_voxel_mm: the masks are computed on block means of about this voxel size.
    """

    min_lung_ml: float
    min_lung_extent_mm: float
    lung_hu: float
    gas_mean_hu: float
    min_piece_ml: float
    airway_max_area_mm2: float
    airway_midline_mm: float
    cut_fraction: float
    air_hu: tuple[float, float]
    tissue_hu: tuple[float, float]
    coarse_voxel_mm: float

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | ScopeThresholds | None = None) -> ScopeThresholds:
        """The thresholds of a mapping (a bundle config's ``scope_thresholds``), defaults for keys it lacks.

        Raises:
            ValueError: an unknown key.
        """
        if isinstance(values, ScopeThresholds):
            return values
        merged = dict(DEFAULT_SCOPE_THRESHOLDS)
        unknown = sorted(set(values or {}) - set(merged))
        if unknown:
            raise ValueError(f"unknown scope threshold(s) {', '.join(unknown)}; known: {', '.join(sorted(merged))}")
        merged.update(values or {})
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in merged.items() if k in names})


@dataclass(frozen=True, kw_only=True)
class LungMeasurement:
    """What :func:`measure_lungs` found.

    Attributes:
        lung_ml: lung volume in millilitres.
        extent_mm: craniocaudal extent of the slices holding lung, in mm.
        cut_superior: the lungs reach the most superior slice (apices not in view).
        cut_inferior: the lungs reach the most inferior slice (bases not in view).
        air_hu: the outside air's HU (1st percentile of the voxels above -1500 HU).
        tissue_hu: the body's median soft tissue HU.
        gas_ml: volume of the pieces taken for gas (not lung).
        airway_ml: volume of the pieces taken for midline airway (not lung).
    """

    lung_ml: float
    extent_mm: float
    cut_superior: bool
    cut_inferior: bool
    air_hu: float
    tissue_hu: float
    gas_ml: float = 0.0
    airway_ml: float = 0.0


@dataclass(frozen=True, kw_only=True)
class ScopeResult:
    """The verdict of :func:`assess_scope` on one scan.

    Attributes:
        verdict: :data:`IN_SCOPE` or :data:`OUT_OF_SCOPE`.
        reason: one line naming the measured values (empty when in scope).
        measurement: the :class:`LungMeasurement`.
        warnings: e.g. the lungs cut by the first or last slice (the scan stays in scope).
        notes: what the DICOM tags say (never decisive).
        seconds: the check's wall-clock time.
    """

    verdict: str
    reason: str
    measurement: LungMeasurement
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def in_scope(self) -> bool:
        """True for a chest CT with enough lung in view."""
        return self.verdict == IN_SCOPE

    @property
    def lung_cut(self) -> str:
        """``top``, ``bottom``, ``top+bottom`` or empty: where the lungs run out of the scan."""
        sides = [
            name
            for name, cut in (("top", self.measurement.cut_superior), ("bottom", self.measurement.cut_inferior))
            if cut
        ]
        return "+".join(sides)

    def columns(self, *, allowed: bool = False) -> dict[str, Any]:
        """The :data:`SCOPE_COLUMNS` of a table row.

        Args:
            allowed: the scan was scored although out of scope (``--allow-out-of-scope``): the note says so.
        """
        note = list(self.warnings) + list(self.notes)
        if allowed and not self.in_scope:
            note.insert(0, f"scored although out of scope (--allow-out-of-scope): {self.reason}")
        return {
            "scope": self.verdict,
            "lung_ml": round(self.measurement.lung_ml, 1),
            "lung_extent_mm": round(self.measurement.extent_mm, 1),
            "lung_cut": self.lung_cut,
            "scope_note": "; ".join(note),
        }

    def as_meta(self) -> dict[str, Any]:
        """A flat, JSON- and collate-friendly copy for a loaded image's meta (``scope``, ``scope_*`` keys)."""
        columns = self.columns()
        return {
            "scope": self.verdict,
            "scope_reason": self.reason,
            "scope_lung_ml": columns["lung_ml"],
            "scope_lung_extent_mm": columns["lung_extent_mm"],
            "scope_lung_cut": columns["lung_cut"],
            "scope_note": columns["scope_note"],
            "scope_seconds": round(self.seconds, 4),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-friendly (benchmarks, records)."""
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            **asdict(self.measurement),
            "lung_cut": self.lung_cut,
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "seconds": self.seconds,
        }


class ScanOutOfScope(ScanRejected):
    """A scan the loader refuses because it is not a chest CT with lungs in view; ``scope`` holds the measurement.

    Its message is ``"<path>: <reason>"`` like every :class:`~pipeline.data.reader.ScanRejected`; callers that
    write tables give it the status ``out_of_scope`` rather than ``error``.
    """

    def __init__(self, path: str | os.PathLike, reason: str, scope: ScopeResult | None = None) -> None:
        super().__init__(path, reason)
        self.scope = scope

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason, self.scope))


# ---------------------------------------------------------------------------------------------------------- geometry


def _axes(affine: Any, ndim: int = 3) -> tuple[np.ndarray, int, int, bool]:
    """(spacing per array axis, axial axis, left-right axis, index increasing = superior)."""
    if affine is None:
        return np.ones(ndim), 2, 0, True
    matrix = np.asarray(_as_numpy(affine), dtype=float)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    spacing = np.where(spacing > 0, spacing, 1.0)
    direction = matrix / spacing
    axial = int(np.argmax(np.abs(direction[2])))
    left_right = int(np.argmax(np.where(np.arange(3) == axial, -1.0, np.abs(direction[0]))))
    return spacing, axial, left_right, bool(direction[2, axial] > 0)


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (MetaTensor affine)
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _subsample(hu: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Every ``factors``-th voxel, starting in the middle of the first block: the coarse grid of the check.

    Samples rather than block means: a mean reads the whole volume (0.1 s for 512 x 512 x 64 slices on one core,
    most of the check's cost), a sample reads 1 / (fx fy fz) of it, and the thresholds the check applies (-400 and
    -500 HU) lie 400 HU and more from lung and tissue, far beyond the noise of one voxel.
    """
    factors = tuple(min(f, n) for f, n in zip(factors, hu.shape, strict=True))  # type: ignore[assignment]
    return np.ascontiguousarray(hu[tuple(slice(f // 2, None, f) for f in factors)], dtype=np.float32)


def _in_plane(axial: int) -> np.ndarray:
    """A 3x3x3 structure connecting voxels within one axial slice only (4-connected in the plane)."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    index = [1, 1, 1]
    structure[tuple(index)] = True
    for axis in range(3):
        if axis == axial:
            continue
        for offset in (0, 2):
            index = [1, 1, 1]
            index[axis] = offset
            structure[tuple(index)] = True
    return structure


def _fill_axial(mask: np.ndarray, axial: int) -> np.ndarray:
    """Holes filled slice by slice along ``axial``: the background pieces of each slice that touch no in-plane edge.

    One labelling of the background with an in-plane structure (what ``binary_fill_holes`` with that structure
    computes, without its repeated dilations: 3x faster on a 100 x 100 x 64 grid).
    """
    labels, n = ndimage.label(~mask, structure=_in_plane(axial))
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, dtype=bool)
    for axis in range(3):
        if axis == axial:
            continue
        for end in (0, -1):
            outside[np.take(labels, end, axis=axis).ravel()] = True
    outside[0] = True  # label 0: the mask itself
    return ~outside[labels] | mask


def _largest_piece(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


# ------------------------------------------------------------------------------------------------------------ masks


def body_mask(hu: np.ndarray, affine: Any = None, *, threshold_hu: float = DEFAULT_BODY_THRESHOLD_HU) -> np.ndarray:
    """The patient's body on a CT volume: everything denser than the threshold, largest piece, holes filled.

    Holes are filled slice by slice along the axis closest to superior-inferior (an axial lung is a hole in the
    body's cross-section; in 3D it opens into the airways). The patient table is a separate piece and is left out.

    Args:
        hu: ``(X, Y, Z)`` CT in HU.
        affine: its ``4x4`` affine (to find the axial axis); without it the last axis is taken as axial.
        threshold_hu: the body threshold (default -500 HU, the foreground crop's).

    Returns:
        Boolean mask of ``hu``'s shape (all True if nothing is denser than the threshold).
    """
    dense = np.asarray(hu) > threshold_hu
    if not dense.any():
        return np.ones(dense.shape, dtype=bool)
    _, axial, _, _ = _axes(affine)
    return _fill_axial(_largest_piece(dense), axial)


def lung_mask(hu: np.ndarray, affine: Any = None) -> np.ndarray:
    """An approximate lung mask for display (a map's region, its peak): the lungs found by :func:`measure_lungs`,
    grown to the denser lung around them.

    The lung pieces (without the midline airway and gas pockets, see the module docstring) are found on a coarse
    grid; at full resolution the mask is the body's voxels below -250 HU (aerated lung and ground glass) within
    those pieces, closed with a ball of about 10 mm and filled slice by slice, so that vessels and consolidations
    enclosed by lung count as lung. Not a segmentation to measure anything with.

    Args:
        hu: ``(X, Y, Z)`` CT in HU.
        affine: its ``4x4`` affine (spacing and axial axis); without it, 1 mm voxels and the last axis as axial.

    Returns:
        Boolean mask of ``hu``'s shape; the body mask when no lung is found (not a chest CT).
    """
    hu = np.asarray(hu, dtype=np.float32)
    body = body_mask(hu, affine)
    spacing, axial, _, _ = _axes(affine)
    found = _find_lungs(hu, affine, DEFAULT_THRESHOLDS)
    if not found.lung.any():
        return body
    # the coarse lung, grown by one coarse voxel, brought back to the full grid
    coarse = ndimage.binary_dilation(found.lung, iterations=1)
    region = _upsample_mask(coarse, found.factors, hu.shape)
    low = body & (hu < _DISPLAY_LUNG_HU) & region
    radius = np.maximum(1, np.round(_DISPLAY_CLOSING_MM / spacing)).astype(int)
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((g / max(r, 1)) ** 2 for g, r in zip(grid, radius, strict=True)) <= 1.0
    closed = ndimage.binary_closing(low, structure=ball, border_value=0)
    return _fill_axial(closed, axial) & body


def _upsample_mask(coarse: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    full = coarse
    for axis, factor in enumerate(factors):
        full = np.repeat(full, factor, axis=axis)
    pad = [(0, max(0, n - m)) for n, m in zip(shape, full.shape, strict=True)]
    full = np.pad(full, pad, mode="edge")
    return full[tuple(slice(0, n) for n in shape)]


# ----------------------------------------------------------------------------------------------------- measurement


@dataclass
class _Found:
    lung: np.ndarray  # coarse lung mask
    factors: tuple[int, int, int]
    coarse_spacing: np.ndarray
    axial: int
    superior_up: bool
    air_hu: float
    tissue_hu: float
    gas_ml: float
    airway_ml: float


def _find_lungs(hu: np.ndarray, affine: Any, thresholds: ScopeThresholds) -> _Found:
    spacing, axial, left_right, superior_up = _axes(affine)
    factors = tuple(max(1, int(np.ceil(thresholds.coarse_voxel_mm / s - 1e-6))) for s in spacing)
    coarse = _subsample(np.asarray(hu), factors)  # type: ignore[arg-type]
    coarse_spacing = spacing * np.asarray(hu.shape) / np.asarray(coarse.shape)
    voxel_ml = float(np.prod(coarse_spacing)) / 1000.0

    valid = coarse[coarse > -1500.0]  # outside the reconstruction circle scanners store -2000 / -3024
    air_hu = float(np.percentile(valid, 1)) if valid.size else float("nan")
    dense = coarse > DEFAULT_BODY_THRESHOLD_HU
    body = _fill_axial(_largest_piece(dense), axial) if dense.any() else np.zeros(coarse.shape, dtype=bool)
    tissue = coarse[body & (coarse > -500.0) & (coarse < 3000.0)]
    tissue_hu = float(np.median(tissue)) if tissue.size else float("nan")

    candidates = body & ~dense & (coarse < thresholds.lung_hu)
    airway = _midline_airway(candidates, coarse_spacing, axial, left_right, body, thresholds)
    candidates &= ~airway
    labels, n = ndimage.label(candidates)
    lung = np.zeros(coarse.shape, dtype=bool)
    gas_ml = 0.0
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        # a piece's mean HU on the coarse grid: gas reads about -1000 throughout, aerated lung about -850
        means = np.bincount(labels.ravel(), weights=coarse.ravel(), minlength=n + 1) / np.maximum(sizes, 1)
        keep = np.zeros(n + 1, dtype=bool)
        for index in range(1, n + 1):
            piece_ml = sizes[index] * voxel_ml
            if piece_ml < thresholds.min_piece_ml:
                continue
            if means[index] < thresholds.gas_mean_hu:
                gas_ml += float(piece_ml)
                continue
            keep[index] = True
        # vessels and consolidation enclosed by aerated lung in their axial slice are lung too
        lung = _fill_axial(keep[labels], axial) & body
    return _Found(
        lung=lung,
        factors=factors,  # type: ignore[arg-type]
        coarse_spacing=coarse_spacing,
        axial=axial,
        superior_up=superior_up,
        air_hu=air_hu,
        tissue_hu=tissue_hu,
        gas_ml=gas_ml,
        airway_ml=float(airway.sum()) * voxel_ml,
    )


def _midline_airway(
    candidates: np.ndarray,
    spacing: np.ndarray,
    axial: int,
    left_right: int,
    body: np.ndarray,
    thresholds: ScopeThresholds,
) -> np.ndarray:
    """The small air pieces of each axial slice near the body's left-right centre (trachea, main bronchi)."""
    labels, n = ndimage.label(candidates, structure=_in_plane(axial))
    if n == 0:
        return np.zeros(candidates.shape, dtype=bool)
    plane_axes = [a for a in range(3) if a != axial]
    pixel_mm2 = float(spacing[plane_axes[0]] * spacing[plane_axes[1]])
    areas = np.bincount(labels.ravel(), minlength=n + 1) * pixel_mm2
    # each piece lies in one slice: its bounding box gives the slice and its left-right centre
    boxes = ndimage.find_objects(labels)
    piece_lr = np.zeros(n + 1)
    piece_slice = np.zeros(n + 1)
    for index, box in enumerate(boxes, start=1):
        piece_lr[index] = (box[left_right].start + box[left_right].stop - 1) / 2.0
        piece_slice[index] = box[axial].start
    # the body's left-right centre in every axial slice
    other = tuple(a for a in range(3) if a not in (axial, left_right))
    occupied = body.any(axis=other[0])  # 2D: (axial, left_right) in axis order
    if axial > left_right:
        occupied = occupied.T
    first = np.argmax(occupied, axis=1)
    last = occupied.shape[1] - 1 - np.argmax(occupied[:, ::-1], axis=1)
    centre = np.where(occupied.any(axis=1), (first + last) / 2.0, occupied.shape[1] / 2.0)
    off_mm = np.abs(piece_lr - centre[np.clip(np.rint(piece_slice).astype(int), 0, len(centre) - 1)])
    off_mm *= spacing[left_right]
    airway_piece = (areas <= thresholds.airway_max_area_mm2) & (off_mm <= thresholds.airway_midline_mm)
    airway_piece[0] = False
    return airway_piece[labels]


def measure_lungs(
    hu: np.ndarray, affine: Any = None, *, thresholds: ScopeThresholds | Mapping[str, Any] | None = None
) -> LungMeasurement:
    """Measure the lungs of a CT volume on a coarse grid (see the module docstring).

    Args:
        hu: ``(X, Y, Z)`` CT in HU (a leading channel of one is dropped).
        affine: its ``4x4`` voxel -> RAS mm affine; without it, 1 mm voxels with the last axis superior.
        thresholds: the scope thresholds (default :data:`~pipeline.contracts.defaults.DEFAULT_SCOPE_THRESHOLDS`).

    Returns:
        The :class:`LungMeasurement`.
    """
    thresholds = ScopeThresholds.from_mapping(thresholds)
    hu = _spatial(hu)
    found = _find_lungs(hu, affine, thresholds)
    voxel_ml = float(np.prod(found.coarse_spacing)) / 1000.0
    lung = found.lung
    per_slice = np.moveaxis(lung, found.axial, 0).reshape(lung.shape[found.axial], -1).sum(axis=1)
    occupied = np.nonzero(per_slice)[0]
    extent = 0.0
    cut_low = cut_high = False
    if occupied.size:
        extent = float(occupied[-1] - occupied[0] + 1) * float(found.coarse_spacing[found.axial])
        largest = float(per_slice.max())
        cut_low = per_slice[0] > thresholds.cut_fraction * largest
        cut_high = per_slice[-1] > thresholds.cut_fraction * largest
    cut_superior, cut_inferior = (cut_high, cut_low) if found.superior_up else (cut_low, cut_high)
    return LungMeasurement(
        lung_ml=float(lung.sum()) * voxel_ml,
        extent_mm=extent,
        cut_superior=bool(cut_superior),
        cut_inferior=bool(cut_inferior),
        air_hu=found.air_hu,
        tissue_hu=found.tissue_hu,
        gas_ml=found.gas_ml,
        airway_ml=found.airway_ml,
    )


def _spatial(hu: Any) -> np.ndarray:
    array = _as_numpy(hu)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"the scope check needs a 3D volume, got shape {tuple(array.shape)}")
    return np.asarray(array, dtype=np.float32)


def assess_scope(
    hu: np.ndarray,
    affine: Any = None,
    *,
    thresholds: ScopeThresholds | Mapping[str, Any] | None = None,
    modality: str = "",
    image_type: tuple[str, ...] = (),
    body_part: str = "",
    study_description: str = "",
) -> ScopeResult:
    """Is this a chest CT with lungs in view? The verdict with its measurements and a one-line reason.

    Args:
        hu: ``(X, Y, Z)`` CT in HU as the loader returns it.
        affine: its voxel -> RAS mm affine.
        thresholds: the scope thresholds (default :data:`~pipeline.contracts.defaults.DEFAULT_SCOPE_THRESHOLDS`).
        modality: the DICOM Modality, when known (a note only).
        image_type: the DICOM ImageType values, when known (a note only).
        body_part: the DICOM BodyPartExamined, when known (a note only: often blank or wrong).
        study_description: the DICOM StudyDescription, when known (a note naming a body-part word it holds, never
            the text itself).

    Returns:
        The :class:`ScopeResult`.
    """
    start = time.perf_counter()
    limits = ScopeThresholds.from_mapping(thresholds)
    m = measure_lungs(hu, affine, thresholds=limits)
    reason = ""
    low_air, high_air = limits.air_hu
    low_tissue, high_tissue = limits.tissue_hu
    if not np.isfinite(m.air_hu) or not low_air <= m.air_hu <= high_air:
        reason = (
            f"implausible HU: outside air reads {m.air_hu:.0f} HU (expected {low_air:.0f} to {high_air:.0f}; soft "
            f"tissue {m.tissue_hu:.0f} HU): a wrong RescaleSlope / RescaleIntercept, or not a CT in HU"
        )
    elif not np.isfinite(m.tissue_hu) or not low_tissue <= m.tissue_hu <= high_tissue:
        reason = (
            f"implausible HU: the body's soft tissue reads {m.tissue_hu:.0f} HU (expected {low_tissue:.0f} to "
            f"{high_tissue:.0f}; air {m.air_hu:.0f} HU): a wrong RescaleSlope / RescaleIntercept, or not a CT in HU"
        )
    elif m.lung_ml < limits.min_lung_ml or m.extent_mm < limits.min_lung_extent_mm:
        what = "no lungs in view" if m.lung_ml < 0.1 * limits.min_lung_ml else "too little lung in view"
        reason = (
            f"{what}: {_ml(m.lung_ml)} of lung over {m.extent_mm:.0f} mm, a chest CT has >= "
            f"{_ml(limits.min_lung_ml)} over >= {limits.min_lung_extent_mm:.0f} mm"
        )
    warnings = []
    if m.lung_ml > 0 and (m.cut_superior or m.cut_inferior):
        where = {
            (True, False): "by the first superior slice (apices not in view)",
            (False, True): "by the last inferior slice (bases not in view)",
            (True, True): "at both ends (apices and bases not in view)",
        }[(m.cut_superior, m.cut_inferior)]
        warnings.append(f"lungs cut {where}")
    notes = []
    if modality and modality.upper() != "CT":
        notes.append(f"DICOM Modality is {modality!r}, not CT")
    if any(value in ("LOCALIZER", "SCOUT") for value in image_type):
        notes.append("DICOM ImageType says localizer")
    part = body_part.strip().upper()
    if part and not any(word in part for word in _CHEST_WORDS):
        notes.append(f"DICOM BodyPartExamined is {part[:16]!r}, not chest")
    words = set(re.findall(r"[A-Z]+", study_description.upper()))
    other = sorted(words & _OTHER_BODY_WORDS)
    if other and not words & set(_CHEST_WORDS):
        notes.append(f"DICOM StudyDescription names {other[0].lower()}, not chest")
    return ScopeResult(
        verdict=OUT_OF_SCOPE if reason else IN_SCOPE,
        reason=reason,
        measurement=m,
        warnings=tuple(warnings),
        notes=tuple(notes),
        seconds=time.perf_counter() - start,
    )


#: BodyPartExamined / StudyDescription words of a chest (a note says when the tags name something else)
_CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "THX", "TORAX", "THORAKS", "PULM")
_OTHER_BODY_WORDS = frozenset(
    {"HEAD", "BRAIN", "NECK", "ABDOMEN", "ABD", "PELVIS", "SPINE", "KNEE", "HIP", "ANKLE", "SHOULDER", "SINUS", "LIVER"}
)


def _ml(value: float) -> str:
    return f"{value:,.0f} ml"


DEFAULT_THRESHOLDS = ScopeThresholds.from_mapping()
