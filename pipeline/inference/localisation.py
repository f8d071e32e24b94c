"""Does a heatmap point at the lesion? Pointing game, energy inside lesions and voxel AUROC against lesion masks.

Three figures per positive case, each comparing a map (any kind, on the scan's own grid) with the truth masks (the
demo generator's, ``aamct demo-data --masks``, or any lesion / lung segmentation on the same grid):

* **pointing game** (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016): a hit when the
  map's maximum lies inside the lesion mask dilated by ``margin_mm`` (a Euclidean distance on the voxel spacing,
  :func:`scipy.ndimage.distance_transform_edt`). A map with no positive value (nothing highlighted) is a miss; ties
  for the maximum are broken by the first voxel in C order. The cohort figure is the hit rate with a Wilson interval
  (statsmodels' ``proportion_confint``, as :func:`pipeline.evaluation.operating_point.proportion_with_ci` gives it;
  map scoring sits beside the maps, below evaluation in the data flow, so it asks statsmodels itself).
* **energy inside lesions**: the share of the map's (non-negative) mass inside the lung that lies in lesions: 1 when
  every highlighted lung voxel is lesion, the lesion share of the lung for a flat map. Reported beside the lesions'
  own share of the lung (the flat-map baseline).
* **voxel AUROC**: the map as a score separating lesion voxels from the other lung voxels
  (:func:`sklearn.metrics.roc_auc_score`); 0.5 for a map unrelated to the lesions.

Every cohort figure needs its trivial baselines beside it (:func:`position_baselines`): a map that ignores the image
and points where the *other* cases' lesions are most often (the leave-one-out position prior), one that points at
their mean lesion position, and a point drawn at random in the case's lung. A map only shows that it saw the lesion
where it beats all three.

The lung restricts energy and AUROC because a classifier's evidence for lung disease should lie in the lung; the
pointing game uses the whole volume (a peak in the air is a miss). Negative cases have no lesion and are not scored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from pipeline.errors import UserError

__all__ = [
    "DEFAULT_MARGIN_MM",
    "CaseLocalisation",
    "PositionBaselines",
    "load_on_same_grid",
    "position_baselines",
    "lesion_energy_fraction",
    "pointing_game_hit",
    "hit_rate_with_ci",
    "score_case",
    "summarise_localisation",
    "voxel_auroc",
]

#: the pointing game's tolerance: about one voxel of the demo's 5 x 5 x 10 mm training grid
DEFAULT_MARGIN_MM = 10.0


@dataclass(frozen=True)
class CaseLocalisation:
    """The localisation figures of one positive case.

    Attributes:
        case: the case's name.
        hit: the map's peak lies in the lesion mask dilated by the margin.
        peak_distance_mm: distance from the peak to the nearest lesion voxel (0 inside).
        energy_in_lesion: share of the in-lung map mass inside lesions (None when the map has no mass in the lung).
        lesion_share_of_lung: the lesions' share of the lung's voxels (what a flat map's energy would be).
        voxel_auroc: lesion vs other lung voxels (None when the lung has no non-lesion voxel).
        lesion_volume_ml: the lesion mask's volume.
    """

    case: str
    hit: bool
    peak_distance_mm: float
    energy_in_lesion: float | None
    lesion_share_of_lung: float
    voxel_auroc: float | None
    lesion_volume_ml: float


def pointing_game_hit(
    heatmap: np.ndarray, lesion_mask: np.ndarray, *, spacing_mm: Sequence[float], margin_mm: float = DEFAULT_MARGIN_MM
) -> tuple[bool, float]:
    """Whether the map's maximum lies within ``margin_mm`` of a lesion voxel.

    Args:
        heatmap: the map.
        lesion_mask: the lesions, same shape.
        spacing_mm: voxel size per axis (same axis order as the arrays).
        margin_mm: tolerance.

    Returns:
        ``(hit, distance_mm)``: the peak's distance to the nearest lesion voxel (0 inside; ``inf`` with no lesion or
        no positive value in the map).

    Raises:
        ValueError: shapes differ.
    """
    heatmap, lesion_mask = _same_shape(heatmap, lesion_mask)
    if not lesion_mask.any() or not np.isfinite(heatmap).any() or np.nanmax(heatmap) <= 0:
        return False, float("inf")
    peak = np.unravel_index(int(np.nanargmax(heatmap)), heatmap.shape)
    distance = ndimage.distance_transform_edt(~lesion_mask, sampling=tuple(float(s) for s in spacing_mm))
    peak_distance = float(distance[peak])
    return peak_distance <= margin_mm, peak_distance


def lesion_energy_fraction(heatmap: np.ndarray, lesion_mask: np.ndarray, lung_mask: np.ndarray) -> float | None:
    """Share of the map's non-negative mass inside the lung that lies in lesions.

    Returns:
        The fraction, or None when the map has no positive value in the lung.
    """
    heatmap, lesion_mask = _same_shape(heatmap, lesion_mask)
    _, lung_mask = _same_shape(heatmap, lung_mask)
    mass = np.clip(np.nan_to_num(heatmap, nan=0.0), 0.0, None)
    in_lung = float(mass[lung_mask].sum())
    if in_lung <= 0:
        return None
    return float(mass[lung_mask & lesion_mask].sum()) / in_lung


def voxel_auroc(heatmap: np.ndarray, lesion_mask: np.ndarray, lung_mask: np.ndarray) -> float | None:
    """AUROC of the map separating lesion voxels from the other lung voxels.

    Returns:
        The AUROC, or None when the lung holds only one of the two kinds of voxel.
    """
    heatmap, lesion_mask = _same_shape(heatmap, lesion_mask)
    _, lung_mask = _same_shape(heatmap, lung_mask)
    region = lung_mask | lesion_mask
    truth = lesion_mask[region]
    if truth.all() or not truth.any():
        return None
    return float(roc_auc_score(truth, np.nan_to_num(heatmap[region], nan=0.0)))


def score_case(
    case: str,
    heatmap: np.ndarray,
    lesion_mask: np.ndarray,
    lung_mask: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    margin_mm: float = DEFAULT_MARGIN_MM,
) -> CaseLocalisation:
    """All three figures for one positive case (arrays on one grid).

    Raises:
        ValueError: shapes differ or the lesion mask is empty.
    """
    lesion_mask = np.asarray(lesion_mask) > 0
    lung_mask = np.asarray(lung_mask) > 0
    if not lesion_mask.any():
        raise ValueError(f"{case}: the lesion mask is empty (a negative case has nothing to point at)")
    hit, distance = pointing_game_hit(heatmap, lesion_mask, spacing_mm=spacing_mm, margin_mm=margin_mm)
    region = lung_mask | lesion_mask
    return CaseLocalisation(
        case=case,
        hit=hit,
        peak_distance_mm=distance,
        energy_in_lesion=lesion_energy_fraction(heatmap, lesion_mask, region),
        lesion_share_of_lung=float(lesion_mask.sum() / max(int(region.sum()), 1)),
        voxel_auroc=voxel_auroc(heatmap, lesion_mask, lung_mask),
        lesion_volume_ml=float(lesion_mask.sum() * np.prod([float(s) for s in spacing_mm]) / 1000.0),
    )


def summarise_localisation(
    scores: Sequence[CaseLocalisation], *, margin_mm: float = DEFAULT_MARGIN_MM, confidence: float = 0.95
) -> dict[str, Any]:
    """Cohort figures: pointing-game hit rate with its Wilson interval, mean energy and AUROC (with their spread).

    Args:
        scores: one per positive case.
        margin_mm: the margin the hits were scored with (recorded).
        confidence: interval level.

    Returns:
        A JSON-ready dict (``pointing_game``: rate, ci, hits, n; ``energy_in_lesion`` and ``voxel_auroc``: mean, sd,
        median, n; ``lesion_share_of_lung``: mean; ``cases``: the per-case figures).
    """
    hits = sum(score.hit for score in scores)
    rate, ci = hit_rate_with_ci(hits, len(scores), confidence=confidence)
    return {
        "margin_mm": margin_mm,
        "n_cases": len(scores),
        "pointing_game": {
            "rate": rate,
            "ci": ci,
            "ci_method": "wilson",
            "hits": hits,
            "n": len(scores),
        },
        "energy_in_lesion": _spread([score.energy_in_lesion for score in scores]),
        "lesion_share_of_lung": _spread([score.lesion_share_of_lung for score in scores]),
        "voxel_auroc": _spread([score.voxel_auroc for score in scores]),
        "cases": [asdict(score) for score in scores],
    }


def load_on_same_grid(*paths: str | os.PathLike, atol: float = 1e-3) -> tuple[list[np.ndarray], np.ndarray]:
    """Read NIfTI files that must share one grid (a map and its masks) and check that they do.

    Args:
        paths: NIfTI files.
        atol: tolerance on the affines (mm).

    Returns:
        ``(arrays, affine)``: float32 arrays in the files' (X, Y, Z) order and the first file's affine.

    Raises:
        UserError: a file cannot be read, or its shape or affine differs from the first file's (naming both).
    """
    import nibabel as nib

    arrays, affine, first = [], None, None
    for path in paths:
        try:
            image = nib.load(path)
            data = np.asarray(image.dataobj, dtype=np.float32)
        except Exception as err:  # nibabel raises many kinds; the user needs the file and the reason
            raise UserError(f"{path}: cannot read NIfTI ({type(err).__name__}: {err})") from None
        if affine is None:
            affine, first, shape = np.asarray(image.affine), Path(path), data.shape
        elif data.shape != shape or not np.allclose(image.affine, affine, atol=atol):
            raise UserError(
                f"{path}: not on the grid of {first} (shape {data.shape} vs {shape}, or a different affine); "
                "a map and its masks must share the scan's grid"
            )
        arrays.append(data)
    return arrays, affine


def hit_rate_with_ci(hits: int, n: int, *, confidence: float = 0.95) -> tuple[float | None, list[float] | None]:
    """A hit rate with its Wilson interval; ``(None, None)`` for no cases."""
    if n == 0:
        return None, None
    lower, upper = proportion_confint(hits, n, alpha=1.0 - confidence, method="wilson")
    return hits / n, [float(lower), float(upper)]


def _same_shape(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b) > 0
    if a.shape != b.shape:
        raise ValueError(f"map shape {a.shape} and mask shape {b.shape} differ")
    return a, b


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
    kept = np.array([v for v in values if v is not None], dtype=float)
    if kept.size == 0:
        return {"mean": None, "sd": None, "median": None, "n": 0}
    return {
        "mean": float(kept.mean()),
        "sd": float(kept.std(ddof=1)) if kept.size > 1 else None,
        "median": float(np.median(kept)),
        "n": int(kept.size),
    }


#: the grid of normalised positions the position prior is counted on: (axis 0, axis 1, axis 2) bins of the unit cube
PRIOR_BINS: tuple[int, int, int] = (32, 32, 16)


@dataclass(frozen=True)
class PositionBaselines:
    """Pointing-game hit rates of maps that ignore the image, for the same positive cases and the same scoring.

    Attributes:
        prior_peak: pointing at the peak of the leave-one-out lesion frequency (the other cases' lesion masks
            averaged on normalised coordinates): where lesions are most often.
        prior_mean: pointing at the leave-one-out mean of the cases' lesion centroids (normalised coordinates).
        random_in_lung: the expected hit rate of a point drawn uniformly in each case's lung (exact expectation: the
            share of lung voxels within the margin of a lesion, averaged over cases; no sampling noise).
        n_cases: positive cases scored.
        hits_peak: per-case hits of ``prior_peak`` (case order as given).
        hits_mean: per-case hits of ``prior_mean``.
    """

    prior_peak: float
    prior_mean: float
    random_in_lung: float
    n_cases: int
    hits_peak: tuple[bool, ...]
    hits_mean: tuple[bool, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: each baseline as ``{"rate", "ci", "hits", "n"}`` (Wilson CIs; the random point: rate only)."""

        def rate(hits: Sequence[bool]) -> dict[str, Any]:
            value, ci = hit_rate_with_ci(int(sum(hits)), len(hits))
            return {"rate": value, "ci": ci, "hits": int(sum(hits)), "n": len(hits)}

        return {
            "position_prior_peak": rate(self.hits_peak),
            "position_prior_mean": rate(self.hits_mean),
            "random_point_in_lung": {"rate": self.random_in_lung, "n": self.n_cases, "expected": True},
        }


def _normalised_frequency(lesion_mask: np.ndarray, bins: Sequence[int] = PRIOR_BINS) -> np.ndarray:
    """The share of each bin of the unit cube (normalised voxel coordinates) that is lesion."""
    mask = np.asarray(lesion_mask) > 0
    counts = np.zeros(tuple(bins), dtype=np.float64)
    totals = np.zeros(tuple(bins), dtype=np.float64)
    grids = np.meshgrid(
        *[np.minimum((np.arange(n) * b) // n, b - 1) for n, b in zip(mask.shape, bins, strict=True)], indexing="ij"
    )
    flat = np.ravel_multi_index([g.ravel() for g in grids], tuple(bins))
    np.add.at(counts.reshape(-1), flat, mask.ravel().astype(np.float64))
    np.add.at(totals.reshape(-1), flat, 1.0)
    return counts / np.maximum(totals, 1.0)


def _centroid_normalised(lesion_mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(lesion_mask) > 0
    index = np.argwhere(mask).mean(axis=0)
    return (index + 0.5) / np.array(mask.shape, dtype=float)


def _to_voxel(point: np.ndarray, shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(min(max(np.floor(p * n), 0), n - 1)) for p, n in zip(point, shape, strict=True))


def position_baselines(
    lesion_masks: Sequence[np.ndarray],
    lung_masks: Sequence[np.ndarray],
    spacings_mm: Sequence[Sequence[float]],
    *,
    margin_mm: float = DEFAULT_MARGIN_MM,
    bins: Sequence[int] = PRIOR_BINS,
) -> PositionBaselines:
    """The pointing game of three maps that never look at the image, scored like :func:`pointing_game_hit`.

    Positions are normalised voxel coordinates (index / shape per axis, so scans of other sizes and extents share one
    frame: the frame a classifier sees after its input is resized). For each case, the prior comes from all the
    *other* cases (leave one out), so a case never points at its own lesion. Written here: scikit-learn and MONAI have
    no position-prior baseline for the pointing game.

    Args:
        lesion_masks: one per positive case (any shapes; the axis order must be the same for every case).
        lung_masks: the same cases' lung masks (same shapes as their lesion masks).
        spacings_mm: each case's voxel size per axis.
        margin_mm: the pointing game's tolerance.
        bins: the normalised grid the lesion frequency is counted on.

    Returns:
        :class:`PositionBaselines`.

    Raises:
        ValueError: fewer than two cases, lengths differ, or a lesion mask is empty.
    """
    if not len(lesion_masks) == len(lung_masks) == len(spacings_mm):
        raise ValueError("position_baselines: lesion masks, lung masks and spacings differ in number")
    if len(lesion_masks) < 2:
        raise ValueError("position_baselines: the leave-one-out prior needs at least two positive cases")
    masks = [np.asarray(mask) > 0 for mask in lesion_masks]
    for number, mask in enumerate(masks):
        if not mask.any():
            raise ValueError(f"position_baselines: lesion mask {number} is empty")
    frequencies = np.stack([_normalised_frequency(mask, bins) for mask in masks])
    centroids = np.stack([_centroid_normalised(mask) for mask in masks])
    total_frequency, total_centroid = frequencies.sum(axis=0), centroids.sum(axis=0)
    hits_peak, hits_mean, random_rates = [], [], []
    count = len(masks)
    for mask, lung, spacing, frequency, centroid in zip(
        masks, lung_masks, spacings_mm, frequencies, centroids, strict=True
    ):
        distance = ndimage.distance_transform_edt(~mask, sampling=tuple(float(s) for s in spacing))
        others = total_frequency - frequency
        peak_bin = np.array(np.unravel_index(int(np.argmax(others)), others.shape), dtype=float)
        peak = (peak_bin + 0.5) / np.array(others.shape, dtype=float)
        mean_point = (total_centroid - centroid) / (count - 1)
        hits_peak.append(bool(distance[_to_voxel(peak, mask.shape)] <= margin_mm))
        hits_mean.append(bool(distance[_to_voxel(mean_point, mask.shape)] <= margin_mm))
        region = (np.asarray(lung) > 0) | mask
        random_rates.append(float((distance[region] <= margin_mm).mean()))
    return PositionBaselines(
        prior_peak=float(np.mean(hits_peak)),
        prior_mean=float(np.mean(hits_mean)),
        random_in_lung=float(np.mean(random_rates)),
        n_cases=count,
        hits_peak=tuple(hits_peak),
        hits_mean=tuple(hits_mean),
    )
