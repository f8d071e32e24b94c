"""COVID-like lesions: severities, drawing, placement to a size range, and the rendering of one lesion.

Positive cases carry COVID-like lesions anywhere in either lung (centres uniform over the lungs' volume: any lobe,
periphery and centre): dense ground-glass opacities (-300 to -160 HU, blobby with soft edges, vessels still visible
through them) and, in more severe cases, consolidation (-100 to 40 HU, hides the vessels). Severity varies: mild
(2-4 GGOs of about 4.5-6 cm, 2-9 % of the lung), moderate (2-4, 4-10 %) and extensive (3-5, 7-18 %). Both classes
may contain small solid nodules as distractors.

The lesion signal is a design choice, measured on fresh cohorts: where a lesion lies must say nothing that the image
does not, and the classifier must still learn it. Earlier demos put 4-12 GGOs of 5-9 cm near the pleura and the
lower lobes (11-53 % of the lung): a map that ignored the image and pointed where the other cases' lesions are most
often hit 0.74 of the positives (leave one out, 10 mm margin; :func:`pipeline.evaluation.localisation.position_baselines`),
so a high pointing game measured the prior. Now that position prior is 0.38-0.42 on 120-160-case cohorts (a random
point in the lung: 0.16). Fewer, fainter lesions (1-3 GGOs of -430 to -340 HU) dropped the demo recipe's test AUC to
0.62-0.74; this density gives 0.94 (one training, 120 cases; the small-lesion benchmark has it over seeds).

The hard demo (``--difficulty hard``, see :func:`~pipeline.data.demo.cohort.write_demo_cohort`) was tuned with the
demo recipe (``benchmarks/demo_models.py``: 120 cases, aam_student_small, lr 6e-4, batch 8, cosine, 30 epochs, early
stop after 10 epochs without gain) to a test AUC inside 0.75-0.92, where a network can be better or worse than
another (lesions anywhere, 160 cases: 0.81, one training); weaker settings (1-3 lesions of 12-28 mm, or 2-5 of
25-50 mm, or 6-12 of 20-45 mm) stayed near chance or below the band with that recipe (test AUC 0.53-0.70, one
training each, with the earlier peripheral placement).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.data.demo.anatomy import _Thorax, paint
from pipeline.data.demo.plan import Grid, Lesion, _scan_coordinates, _ScanPlan, _series_folder
from pipeline.errors import UserError

__all__ = [
    "DIFFICULTIES",
    "HARD_LESION_DIAMETER_MM",
    "LESION_SIZE_UNITS",
    "LesionSpec",
    "lesion_distance",
    "lesion_volume_range_ml",
]

logger = logging.getLogger(__name__)


#: COVID-like lesions per severity of a positive scan: (fewest, most GGOs; smallest, largest GGO radius in mm before a
#: random 0.7-1.3 stretch per axis; GGO HU range; chance of a consolidative core per GGO). Drawn with p 0.2/0.4/0.4.
_SEVERITIES: dict[str, tuple[int, int, float, float, float, float, float]] = {
    "mild": (2, 4, 22.0, 28.0, -300.0, -200.0, 0.4),
    "moderate": (2, 4, 22.0, 30.0, -280.0, -180.0, 0.6),
    "extensive": (3, 5, 24.0, 32.0, -260.0, -160.0, 0.8),
}


#: the ``--difficulty`` settings
DIFFICULTIES: tuple[str, ...] = ("default", "hard")
#: ``--lesion-size-range`` units: equivalent-sphere diameter in mm, or volume in ml (both measured on the mask)
LESION_SIZE_UNITS: tuple[str, ...] = ("mm", "ml")
#: tries per lesion to draw one whose rendered mask fits the size range, the lung and the gap to the others
_PLACEMENT_ATTEMPTS = 300


@dataclass(frozen=True)
class LesionSpec:
    """Sized lesions: the ``hard`` demo, or any cohort given ``--lesion-size-range``.

    Attributes:
        difficulty: ``default`` (a size range on the default demo: each positive keeps its drawn severity's lesion
            count and GGO density) or ``hard``.
        volume_ml: range of each lesion's mask volume.
        count: fewest and most lesions of a positive scan (``hard``).
        hu: GGO density range (``hard``).
        opacity: blend weight of the GGO at its centre.
        lumpiness: outline irregularity.
    """

    difficulty: str
    volume_ml: tuple[float, float]
    count: tuple[int, int] = (4, 7)
    hu: tuple[float, float] = (-450.0, -330.0)
    opacity: tuple[float, float] = (0.85, 1.0)
    lumpiness: tuple[float, float] = (0.05, 0.15)

    @property
    def severity_counts(self) -> bool:
        return self.difficulty == "default"


#: the hard demo's lesions when no --lesion-size-range is given (equivalent-sphere diameter, mm)
HARD_LESION_DIAMETER_MM: tuple[float, float] = (30.0, 60.0)


def lesion_volume_range_ml(low: float, high: float, *, unit: str = "mm") -> tuple[float, float]:
    """A ``--lesion-size-range`` as a range of lesion volumes in millilitres.

    Args:
        low: smallest lesion.
        high: largest lesion.
        unit: ``mm`` (equivalent-sphere diameter: the diameter of a sphere of the lesion's volume) or ``ml``.

    Returns:
        ``(low_ml, high_ml)``.

    Raises:
        UserError: for an unknown unit, a non-positive bound or ``low >= high``.
    """
    if unit not in LESION_SIZE_UNITS:
        raise UserError(f"--lesion-size-unit must be one of {', '.join(LESION_SIZE_UNITS)}, got {unit!r}")
    try:
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        raise UserError(f"--lesion-size-range needs two numbers, got {low!r} {high!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
        raise UserError(f"--lesion-size-range needs 0 < MIN < MAX, got {low:g} {high:g} {unit}")
    if unit == "ml":
        return low, high
    return _volume_ml(low), _volume_ml(high)


def _volume_ml(diameter_mm: float) -> float:
    return math.pi * diameter_mm**3 / 6.0 / 1000.0


def _diameter_mm(volume_ml: float) -> float:
    return (6.0 * volume_ml * 1000.0 / math.pi) ** (1.0 / 3.0)


def _place_sized_lesions(rng: np.random.Generator, plan: _ScanPlan, spec: LesionSpec) -> tuple[Lesion, ...]:
    """Ground-glass opacities whose rendered masks have a volume inside ``spec``'s range (rejection sampling).

    Each candidate is rendered on the scan's own voxel grid exactly as :func:`~pipeline.data.demo.render._render` will
    render it, and kept only if its mask (``distance < 1``) has a volume within the range, is one connected piece
    (26-neighbourhood), lies entirely in the lung (so the lung clipping of the mask leaves it unchanged) and keeps a
    one-voxel gap to the lesions already placed (so every lesion is its own connected component of the written mask). No
    consolidation cores: the mask of a lesion is the GGO itself.

    Raises:
        UserError: when not even one lesion of the range fits this scan's lung at this matrix size.
    """
    coords = _scan_coordinates(plan)
    x, y, z, grid, shape = coords.x, coords.y, coords.z, coords.grid, coords.shape
    thorax = _Thorax(plan.anatomy, lung_scale=plan.lung_scale, body_scale=plan.body_scale)
    voxel_ml = coords.pixel * coords.pixel * coords.dz / 1000.0
    low_ml, high_ml = spec.volume_ml
    if spec.severity_counts:
        n_low, n_high = _SEVERITIES[plan.severity][:2]
        hu = _SEVERITIES[plan.severity][4:6]
    else:
        (n_low, n_high), hu = spec.count, spec.hu
    wanted = int(rng.integers(n_low, n_high + 1))
    occupied = np.zeros(shape, dtype=bool)
    neighbourhood = np.ones((3, 3, 3), dtype=bool)
    lesions: list[Lesion] = []
    for _ in range(wanted):
        for _attempt in range(_PLACEMENT_ATTEMPTS):
            # log-uniform target volume; the per-axis stretch is normalised so the ellipsoid keeps that volume
            target_ml = math.exp(rng.uniform(math.log(low_ml), math.log(high_ml)))
            radius = (3.0 * target_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
            lesion = _draw_lesion(rng, thorax, kind="ggo", radius=radius, hu=hu)
            stretch = math.prod(lesion.radii) ** (1.0 / 3.0) / radius
            lesion = dataclasses.replace(
                lesion,
                radii=tuple(r / stretch for r in lesion.radii),
                lumpiness=float(rng.uniform(*spec.lumpiness)),
                opacity=float(rng.uniform(*spec.opacity)),
            )
            found = lesion_distance(lesion, x, y, z, grid, shape)
            if found is None:
                continue
            box, distance = found
            inside = distance < 1.0
            if not low_ml <= inside.sum() * voxel_ml <= high_ml:
                continue
            lung = thorax.masks(x[:, :, box[2]], y[:, box[1], :], z[box[0]], edge_mm=coords.pixel, edge_z_mm=coords.dz)
            if (inside & ~(lung["lung"] > 0.5)).any() or (occupied[box] & inside).any():
                continue
            if ndimage.label(inside, structure=neighbourhood)[1] != 1:
                continue
            occupied[box] |= ndimage.binary_dilation(inside, structure=neighbourhood)
            lesions.append(lesion)
            break
    if not lesions:
        raise UserError(
            f"{_series_folder(plan.index)}: no lesion of {low_ml:.3g}-{high_ml:.3g} ml fits inside its lung at "
            f"--size {plan.size} (a voxel is {voxel_ml:.3g} ml); widen --lesion-size-range"
        )
    if len(lesions) < wanted:
        logger.debug("%s: placed %d of %d lesions", _series_folder(plan.index), len(lesions), wanted)
    return tuple(lesions)


def _draw_covid_lesions(rng: np.random.Generator, severity: str, thorax: _Thorax) -> list[Lesion]:
    n_low, n_high, r_low, r_high, hu_low, hu_high, p_core = _SEVERITIES[severity]
    lesions = []
    for _ in range(int(rng.integers(n_low, n_high + 1))):
        radius = float(rng.uniform(r_low, r_high))
        # centred at least 40 % of a radius inside the lung, so most of the opacity survives the lung clipping
        ggo = _draw_lesion(rng, thorax, kind="ggo", radius=radius, hu=(hu_low, hu_high), inset_mm=0.4 * radius)
        lesions.append(ggo)
        if rng.random() < p_core:
            shrink = float(rng.uniform(0.4, 0.7))
            lesions.append(
                dataclasses.replace(
                    ggo,
                    radii=tuple(r * shrink for r in ggo.radii),
                    target_hu=float(rng.uniform(-100, 40)),
                    opacity=float(rng.uniform(0.85, 1.0)),
                    kind="consolidation",
                )
            )
    return lesions


def _draw_lesion(
    rng: np.random.Generator,
    thorax: _Thorax,
    *,
    kind: str,
    radius: float,
    hu: tuple[float, float] = (20.0, 60.0),
    inset_mm: float = 4.0,
) -> Lesion:
    """A lesion centred anywhere inside either lung: uniform over the lungs' volume (any lobe, periphery and centre).

    The centre is drawn uniformly in the box around both lungs and kept when it lies in a lung at least ``inset_mm``
    from its outline (rejection sampling, so every lung voxel is equally likely). Lesions used to prefer the periphery,
    the lower lobes and the back, which let a map that ignores the image point at them (position prior 0.74 on the
    default demo, leave one out): now where a lesion is says nothing that the image does not.
    """
    _, _, right_ax, right_by = thorax.lung_ellipse(-1.0)
    right_cx, right_cy = thorax.lung_ellipse(-1.0)[:2]
    left_cx, left_cy, left_ax, left_by = thorax.lung_ellipse(1.0)
    x_range = (right_cx - right_ax, left_cx + left_ax)
    y_range = (min(right_cy - right_by, left_cy - left_by), max(right_cy + right_by, left_cy + left_by))
    centre = (0.0, 0.0, 0.0)
    for _attempt in range(200):
        centre = (
            float(rng.uniform(*x_range)),
            float(rng.uniform(*y_range)),
            float(rng.uniform(thorax.base, thorax.apex)),
        )
        # the centre must be lung (not dome, heart or wall), or the lesion could vanish under the masks
        if thorax.contains_lung(centre, margin_mm=inset_mm):
            break
    waves = []
    for _ in range(4):  # random direction, 1.5-3 radians per radius: a few bumps across the lesion
        direction = rng.normal(size=3)
        wave = direction / np.linalg.norm(direction) * rng.uniform(1.5, 3.0)
        waves.append((*wave.tolist(), float(rng.uniform(0, 2 * math.pi))))
    if kind == "nodule":
        stretch = (1.0, 1.0, 1.0)
        target, opacity, edge, lumpiness = float(rng.uniform(*hu)), 1.0, 0.12, 0.05
    else:
        stretch = tuple(rng.uniform(0.7, 1.3, 3).tolist())
        target, opacity = float(rng.uniform(*hu)), float(rng.uniform(0.9, 1.0))
        edge, lumpiness = float(rng.uniform(0.2, 0.4)), float(rng.uniform(0.1, 0.3))
    return Lesion(
        centre=centre,
        radii=tuple(radius * s for s in stretch),
        in_plane_angle=float(rng.uniform(0, math.pi)),
        target_hu=target,
        opacity=opacity,
        edge=edge,
        lumpiness=lumpiness,
        waves=tuple(waves),
        kind=kind,
    )


def _render_lesion(parenchyma, lesion_mask, lesion: Lesion, x, y, z, grid: Grid) -> None:
    """Blend one blobby, soft-edged ellipsoid into the parenchyma, only inside its bounding box (fast at 512)."""
    found = lesion_distance(lesion, x, y, z, grid, parenchyma.shape)
    if found is None:
        return
    box, distance = found
    alpha = (lesion.opacity * 0.5 * (1.0 - np.tanh((distance - 1.0) / lesion.edge))).astype(np.float32)
    paint(parenchyma[box], alpha, lesion.target_hu)
    if lesion_mask is not None:
        lesion_mask[box] |= distance < 1.0


def lesion_distance(lesion: Lesion, x, y, z, grid: Grid, shape) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """A lesion's bounding box on the grid and the normalised distance from its centre inside it (< 1: lesion).

    Returns:
        ``(box, distance)``, or None when the box misses the volume.
    """
    extent = max(lesion.radii) * (1.0 + lesion.lumpiness) * (1.0 + 2.5 * lesion.edge)
    centre = np.array(lesion.centre)
    low, high = grid.index_of(np.stack([centre - extent, centre + extent]))
    box = tuple(slice(max(0, lo), min(n, hi + 1)) for lo, hi, n in zip(low, high, shape, strict=True))
    if any(s.start >= s.stop for s in box):
        return None
    dx = x[:, :, box[2]] - lesion.centre[0]
    dy = y[:, box[1], :] - lesion.centre[1]
    dz = z[box[0], :, :] - lesion.centre[2]
    cos, sin = math.cos(lesion.in_plane_angle), math.sin(lesion.in_plane_angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    distance = np.sqrt((u / lesion.radii[0]) ** 2 + (v / lesion.radii[1]) ** 2 + (dz / lesion.radii[2]) ** 2)
    # lumpy outline: a few random low-frequency waves modulate the radius
    mean_radius = sum(lesion.radii) / 3
    wobble = sum(
        np.cos((kx * dx + ky * dy + kz * dz) / mean_radius + phase) for kx, ky, kz, phase in lesion.waves
    ) / len(lesion.waves)
    distance = distance * (1.0 + lesion.lumpiness * wobble)
    return box, distance
