"""The thorax phantom: one patient's body shape and the soft (partial-volume) masks of one scan's chest.

Air outside the body, a patient table, subcutaneous fat (~-100 HU) around soft tissue (~45 HU), two lungs (~-850 HU
with a gravity-dependent density gradient and low-frequency texture) with branching vessel trees (~40 HU, thinning
toward the periphery, rendered with partial-volume weights), heart, mediastinum, trachea and main bronchi, descending
aorta, vertebrae with discs and spinal canal, slanted ribs, sternum. The shapes and the patient draws live here, in
the patient coordinates of :mod:`~pipeline.data.demo.plan`; :mod:`~pipeline.data.demo.render` paints them.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from pipeline.data.demo.plan import Grid, _Anatomy, _ScanPlan

__all__ = ["paint"]


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    year = int(rng.integers(1940, 1996))
    return _Anatomy(
        body_half_width=float(rng.uniform(135, 160)),
        body_half_depth=float(rng.uniform(95, 115)),
        fat_thickness=float(rng.uniform(8, 25)),
        fat_hu=float(rng.uniform(-115, -85)),
        soft_tissue_hu=float(rng.uniform(35, 55)),
        lung_apex=float(rng.uniform(85, 110)),
        lung_base=-float(rng.uniform(150, 180)),
        dome_height_right=float(rng.uniform(55, 80)),
        dome_height_left=float(rng.uniform(40, 65)),
        heart_shift=float(rng.uniform(-8, 8)),
        rib_pitch=float(rng.uniform(32, 38)),
        rib_phase=float(rng.uniform(0, 1)),
        disc_phase=float(rng.uniform(0, 1)),
        vessel_seed=int(rng.integers(2**31)),
        sex=str(rng.choice(["F", "M"])),
        birth_date=f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
    )


def _inner_body(anatomy: _Anatomy, body_scale: float) -> tuple[float, float]:
    return (
        anatomy.body_half_width * body_scale - anatomy.fat_thickness,
        anatomy.body_half_depth * body_scale - anatomy.fat_thickness,
    )


def _lung_ellipse(side: float, half_width: float, half_depth: float, lung_scale: float) -> tuple[float, ...]:
    """Centre and full-size semi-axes of one lung's cross-section; the right lung is a little larger."""
    size = lung_scale * (1.04 if side < 0 else 0.96)
    return side * 0.45 * half_width, 0.05 * half_depth, 0.38 * half_width * size, 0.72 * half_depth * size


def _lung_taper(z: np.ndarray, anatomy: _Anatomy, lung_scale: float) -> np.ndarray:
    """Cross-section scale along z: 0 at the apex, full width from 55 % of the way down."""
    apex, base = anatomy.lung_apex * lung_scale, anatomy.lung_base * lung_scale
    return np.sqrt(np.clip((apex - z) / (0.55 * (apex - base)), 0.0, 1.0))


def _inside_ellipse(x, y, cx, cy, ax, by, edge_mm: float) -> np.ndarray:
    """Soft (partial-volume) ellipse mask: 1 inside, 0 outside, a linear ramp of ``edge_mm`` across the boundary."""
    ax = np.maximum(ax, 1e-3)
    by = np.maximum(by, 1e-3)
    rho = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / by) ** 2)
    return np.clip(0.5 - (rho - 1.0) * np.minimum(ax, by) / edge_mm, 0.0, 1.0).astype(np.float32)


def paint(volume: np.ndarray, mask: np.ndarray, hu: float | np.ndarray) -> None:
    """Blend ``hu`` into ``volume`` with weight ``mask`` (painter's algorithm, in place)."""
    volume += mask * (hu - volume)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...], scale_mm: float):
    """Zero-mean, unit-std low-frequency texture: coarse white noise (one value per ``scale_mm``) linearly upsampled."""
    coarse_shape = tuple(max(2, int(math.ceil(n * s / scale_mm)) + 1) for n, s in zip(shape, spacing, strict=True))
    coarse = rng.standard_normal(coarse_shape).astype(np.float32)
    field = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse_shape, strict=True)], order=1)
    field = field[tuple(slice(0, n) for n in shape)]
    return (field - field.mean()) / max(float(field.std()), 1e-6)


class _Thorax:
    """The soft-tissue and lung geometry of one scan as soft masks; also used at planning time to place lesions.

    Args:
        anatomy: the patient's body shape.
        lung_scale: inspiration depth of this scan.
        body_scale: body size of this scan.
    """

    def __init__(self, anatomy: _Anatomy, *, lung_scale: float, body_scale: float) -> None:
        self.anatomy, self.lung_scale = anatomy, lung_scale
        self.a_in, self.b_in = _inner_body(anatomy, body_scale)
        self.vertebra_y, self.vertebra_r = 0.45 * self.b_in, 0.17 * self.b_in
        self.canal_y = self.vertebra_y + self.vertebra_r + 9.0
        self.apex, self.base = anatomy.lung_apex * lung_scale, anatomy.lung_base * lung_scale

    def lung_ellipse(self, side: float) -> tuple[float, ...]:
        """Centre and full-size semi-axes ``(cx, cy, ax, by)`` of one lung (side -1 = right, +1 = left)."""
        return _lung_ellipse(side, self.a_in, self.b_in, self.lung_scale)

    def masks(self, x, y, z, *, edge_mm: float, edge_z_mm: float) -> dict[str, np.ndarray]:
        """Soft masks (0..1) of mediastinum, heart, aorta and lung on the broadcast grid ``x``, ``y``, ``z`` (mm)."""
        a_in, b_in, anatomy = self.a_in, self.b_in, self.anatomy
        ones = np.ones_like(z)
        mediastinum = _inside_ellipse(x, y, 0.0, -0.15 * b_in, 0.16 * a_in, 0.55 * b_in, edge_mm) * ones
        heart_scale = np.sqrt(np.clip(1.0 - ((z - (self.base + 75.0)) / 70.0) ** 2, 0.0, 1.0))
        heart = _inside_ellipse(
            x,
            y,
            0.12 * a_in + anatomy.heart_shift,
            -0.2 * b_in,
            0.42 * a_in * heart_scale,
            0.45 * b_in * heart_scale,
            edge_mm,
        )
        aorta = _inside_ellipse(x, y, 0.14 * a_in, 0.42 * b_in, 11.0, 11.0, edge_mm) * (z < 40.0)
        spine_region = np.maximum(
            _inside_ellipse(x, y, 0, self.vertebra_y, self.vertebra_r + 6.0, self.vertebra_r + 6.0, edge_mm),
            _inside_ellipse(x, y, 0, self.canal_y, 16.0, 16.0, edge_mm),
        )
        # Lungs: tapered elliptic cylinders over a diaphragm dome, kept inside the chest wall.
        taper = _lung_taper(z, anatomy, self.lung_scale)
        lung_shape = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=np.float32)
        for side, dome in ((-1.0, anatomy.dome_height_right), (1.0, anatomy.dome_height_left)):
            cx, cy, ax, by = self.lung_ellipse(side)
            rho2 = ((x - cx) / np.maximum(ax * taper, 1e-3)) ** 2 + ((y - cy) / np.maximum(by * taper, 1e-3)) ** 2
            dome_surface = self.base + dome * np.clip(1.0 - rho2, 0.0, 1.0)
            above_dome = np.clip(0.5 + (z - dome_surface) / edge_z_mm, 0.0, 1.0)
            lung_shape = np.maximum(
                lung_shape, _inside_ellipse(x, y, cx, cy, ax * taper, by * taper, edge_mm) * above_dome
            )
        chest_cavity = _inside_ellipse(x, y, 0, 0, 0.86 * a_in, 0.86 * b_in, edge_mm)
        lung = lung_shape * chest_cavity * (1 - mediastinum) * (1 - heart) * (1 - aorta) * (1 - spine_region)
        return {"mediastinum": mediastinum, "heart": heart, "aorta": aorta, "lung": lung}

    def contains_lung(self, point: tuple[float, float, float], margin_mm: float) -> bool:
        """Whether ``point`` (mm) lies in a lung at least ``margin_mm`` from its outline (a coarse grid probe)."""
        offsets = np.array([-margin_mm, 0.0, margin_mm], dtype=np.float32)
        x = (point[0] + offsets)[None, None, :]
        y = (point[1] + offsets)[None, :, None]
        z = (point[2] + offsets)[:, None, None]
        return bool(self.masks(x, y, z, edge_mm=1.0, edge_z_mm=1.0)["lung"].min() > 0.99)


def _render_vessels(anatomy: _Anatomy, lung_axes, plan: _ScanPlan, shape, grid: Grid) -> np.ndarray:
    """Pulmonary vessel trees as a partial-volume fraction map (0..1).

    About a dozen trees per lung fan out from the hilum and branch dichotomously for 7 generations (radius
    x0.78, length x0.8 each). Centre-line points
    carry their tube's cross-section (pi r^2 x step) as a volume fraction; one Gaussian blur per radius band with
    sigma = r / sqrt(2) turns lines into tubes whose peak fraction is about 1 (thick) or below 1 (thin, partial
    volume), so vessels fade toward the periphery at any resolution.
    """
    rng = np.random.default_rng(anatomy.vessel_seed)
    voxel_mm3 = float(np.prod(grid.spacing))
    step = min(grid.spacing) / 2.0
    radius_bands = (0.0, 1.5, 3.0, 4.5, np.inf)
    # per radius band: centre-line voxel indices with their volume-fraction weights, and the radii that fell in it
    band_points: list[list[tuple[np.ndarray, float]]] = [[] for _ in radius_bands[:-1]]
    band_radius: list[list[float]] = [[] for _ in radius_bands[:-1]]
    apex, base = anatomy.lung_apex * plan.lung_scale, anatomy.lung_base * plan.lung_scale
    for side, (cx, cy, ax, by) in lung_axes.items():
        hilum = np.array([cx - side * 0.55 * ax, cy, -10.0])
        # Root branches fan out from the hilum over the lateral hemisphere (Fibonacci directions, jittered per
        # patient); a root is ~1/3 of the way to the lung's outline, so after 7 shrinking, bending generations the tips
        # reach the periphery (whatever overshoots the lung is masked away).
        n = np.arange(36) + 0.5
        polar, azimuth = np.arccos(1 - 2 * n / 36), np.pi * (1 + 5**0.5) * n
        roots = np.stack([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], axis=1)
        roots = roots[side * roots[:, 0] > -0.2] + rng.normal(0, 0.15, (1, 3))
        roots /= np.linalg.norm(roots, axis=1, keepdims=True)
        lung_centre, lung_axes_mm = np.array([cx, cy, (apex + base) / 2]), np.array([ax, by, (apex - base) / 2])
        reach = _distance_to_ellipsoid(hilum, roots, lung_centre, lung_axes_mm)
        starts = np.repeat(hilum[None], len(roots), axis=0)
        directions = roots
        lengths = reach / 2.8
        radius = 4.5
        for _generation in range(7):
            n_steps = np.maximum(1, np.ceil(lengths / step).astype(int))
            segment = np.repeat(np.arange(len(starts)), n_steps)
            t = (np.arange(n_steps.sum()) - np.repeat(np.cumsum(n_steps) - n_steps, n_steps) + 0.5) / n_steps[segment]
            points = starts[segment] + directions[segment] * (lengths[segment] * t)[:, None]
            band = int(np.searchsorted(radius_bands, radius, side="right") - 1)
            band_radius[band].append(radius)
            band_points[band].append((grid.index_of(points), np.pi * radius**2 * step / voxel_mm3))
            # two children per segment, bent apart in a random plane and pulled outward (away from the hilum)
            ends = starts + directions * lengths[:, None]
            outward = ends - hilum
            outward /= np.maximum(np.linalg.norm(outward, axis=1, keepdims=True), 1e-6)
            normal = rng.normal(size=directions.shape)
            normal -= np.sum(normal * directions, axis=1, keepdims=True) * directions
            normal /= np.linalg.norm(normal, axis=1, keepdims=True)
            children = []
            for sign, (lo, hi) in ((1.0, (20.0, 40.0)), (-1.0, (25.0, 45.0))):
                angle = np.radians(rng.uniform(lo, hi, len(starts)))[:, None]
                child = np.cos(angle) * directions + sign * np.sin(angle) * normal + 0.25 * outward
                children.append(child / np.linalg.norm(child, axis=1, keepdims=True))
            starts = np.concatenate([ends, ends])
            directions = np.concatenate(children)
            lengths = np.concatenate([lengths, lengths]) * rng.uniform(0.75, 0.85, 2 * len(lengths))
            radius *= 0.78
    fraction = np.zeros(shape, dtype=np.float32)
    for points, radii in zip(band_points, band_radius, strict=True):
        if not radii:
            continue
        density = np.zeros(shape, dtype=np.float32)  # one band at a time keeps the memory of a 512 scan low
        for index, weight in points:
            _splat(density, index, weight)
        sigma_mm = float(np.mean(radii)) / math.sqrt(2.0)
        fraction += ndimage.gaussian_filter(density, [sigma_mm / s for s in grid.spacing], truncate=3.0)
        del density
    return np.clip(fraction, 0.0, 1.0)


def _distance_to_ellipsoid(point: np.ndarray, directions: np.ndarray, centre: np.ndarray, axes: np.ndarray):
    """Distance from ``point`` (inside the ellipsoid) to its surface along each unit direction (rows)."""
    p = (point - centre) / axes
    d = directions / axes
    a = np.sum(d * d, axis=1)
    b = 2 * np.sum(d * p, axis=1)
    c = np.sum(p * p) - 1.0
    return (-b + np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))) / (2 * a)


def _splat(density: np.ndarray, index: np.ndarray, weight: float) -> None:
    """Add ``weight`` at each ``(slice, row, column)`` index; indices outside the volume are dropped."""
    inside = np.all((index >= 0) & (index < np.array(density.shape)), axis=1)
    index = index[inside]
    np.add.at(density, (index[:, 0], index[:, 1], index[:, 2]), weight)
