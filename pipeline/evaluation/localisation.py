"""Does a heatmap point at the lesion? Pointing game, energy inside lesions and voxel AUROC against lesion masks.

Three figures per positive case, each comparing a map (any kind, on the scan's own grid) with the truth masks (the
demo generator's, ``aamct demo-data --masks``, or any lesion / lung segmentation on the same grid):

* **pointing game** (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016): a hit when the
  map's maximum lies inside the lesion mask dilated by ``margin_mm`` (a Euclidean distance on the voxel spacing,
  :func:`scipy.ndimage.distance_transform_edt`). A map with no positive value (nothing highlighted) is a miss; ties
  for the maximum are broken by the first voxel in C order. The cohort figure is the hit rate with a Wilson interval
  (:func:`pipeline.evaluation.operating_point.proportion_with_ci`).
* **energy inside lesions**: the share of the map's (non-negative) mass inside the lung that lies in lesions: 1 when
  every highlighted lung voxel is lesion, the lesion share of the lung for a flat map. Reported beside the lesions'
  own share of the lung (the flat-map baseline).
* **voxel AUROC**: the map as a score separating lesion voxels from the other lung voxels
  (:func:`sklearn.metrics.roc_auc_score`); 0.5 for a map unrelated to the lesions.

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

from pipeline.errors import UserError
from pipeline.evaluation.operating_point import proportion_with_ci

__all__ = [
    "DEFAULT_MARGIN_MM",
    "CaseLocalisation",
    "load_on_same_grid",
    "lesion_energy_fraction",
    "pointing_game_hit",
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
    estimate = proportion_with_ci(hits, len(scores), confidence=confidence, what="pointing-game hit rate")
    return {
        "margin_mm": margin_mm,
        "n_cases": len(scores),
        "pointing_game": {
            "rate": estimate.value,
            "ci": list(estimate.ci) if estimate.ci else None,
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
