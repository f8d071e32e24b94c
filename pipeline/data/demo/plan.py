"""What one scan is before it is rendered: the records planning fills and rendering reads, and the scan's grid.

Patient coordinates (mm): x to the patient's left, y to the back, z up, relative to the body centre and the carina;
world coordinates are DICOM LPS.

Random streams: ``_stream(seed, key, ...)`` (:class:`numpy.random.SeedSequence`) gives one stream per purpose, so one
scan's draws never shift another's: key 0 the cohort (labels, sites, follow-ups, dates), 1 a patient's anatomy (per
patient), 2 a scan's plan (acquisition, severity, default lesions, nodules), 3 a scan's texture and noise at render
time, 4 a scan's sized lesions (``--difficulty hard`` or ``--lesion-size-range``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.demo.scanner import demo_geometry

__all__ = ["CLASS_NAMES", "Grid", "Lesion"]


#: class names in label order (index 0 = negative)
CLASS_NAMES: tuple[str, str] = ("negative", "positive")
_SCAN_PREFIX = "scan-"


def _stream(seed: int, *keys: int) -> np.random.Generator:
    """An independent random stream per (seed, purpose, index), so one scan's draws never shift another's."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


@dataclass(frozen=True)
class _Anatomy:
    """Per-patient body shape, shared by a patient's baseline and follow-up scans (mm, relative to the body centre)."""

    body_half_width: float
    body_half_depth: float
    fat_thickness: float
    fat_hu: float
    soft_tissue_hu: float
    lung_apex: float  # above the carina
    lung_base: float  # below the carina (negative)
    dome_height_right: float
    dome_height_left: float
    heart_shift: float
    rib_pitch: float
    rib_phase: float
    disc_phase: float
    vessel_seed: int
    sex: str
    birth_date: str


@dataclass(frozen=True)
class Lesion:
    centre: tuple[float, float, float]  # patient coordinates, mm
    radii: tuple[float, float, float]
    in_plane_angle: float
    target_hu: float
    opacity: float
    edge: float  # softness of the rim, in units of the radius
    lumpiness: float
    waves: tuple[tuple[float, float, float, float], ...]  # wave vector (3) + phase
    kind: str  # "ggo" | "consolidation" | "nodule"


@dataclass(frozen=True)
class _ScanPlan:
    """Everything needed to render and write one scan; rendering it twice gives the same voxels."""

    index: int  # 1-based scan number
    patient: int  # 1-based patient number
    study: int  # 1 = baseline, 2 = follow-up
    label: int
    site: str
    size: int
    seed: int
    n_slices: int
    anatomy: _Anatomy
    body_offset: tuple[float, float]
    body_scale: float
    lung_scale: float
    carina_z: float  # world z of the carina
    top_margin: float
    lung_hu: float
    dependent_gradient_hu: float
    vessel_hu: float
    severity: str
    lesions: tuple[Lesion, ...]
    study_date: str
    study_time: str


@dataclass(frozen=True)
class Grid:
    """Maps patient coordinates (mm; x, y, z) to voxel indices (slice, row, column) of one scan."""

    origin: tuple[float, float, float]  # patient (z, y, x) of voxel [0, 0, 0]
    spacing: tuple[float, float, float]  # (slice, row, column) spacing, mm

    def index_of(self, points: np.ndarray) -> np.ndarray:
        """Nearest voxel ``(slice, row, column)`` of each patient point ``(x, y, z)``; ``points`` is ``(n, 3)``."""
        zyx = np.asarray(points, dtype=float)[:, ::-1]
        return np.rint((zyx - np.array(self.origin)) / np.array(self.spacing)).astype(int)


@dataclass(frozen=True)
class _ScanCoordinates:
    """The voxel grid of one scan: world placement and patient coordinates broadcastable to ``(z, y, x)``."""

    x: np.ndarray  # (1, 1, columns) patient x of each column, mm
    y: np.ndarray  # (1, rows, 1)
    z: np.ndarray  # (slices, 1, 1), relative to the carina
    shape: tuple[int, int, int]
    pixel: float
    dz: float
    origin_xy: float  # world (LPS) x and y of voxel [0, 0, 0]
    z_bottom: float  # world z of slice 0
    grid: Grid


def _scan_coordinates(plan: _ScanPlan) -> _ScanCoordinates:
    """The grid a plan renders on (shared by rendering and by lesion placement at planning time)."""
    anatomy = plan.anatomy
    geometry = demo_geometry(plan.size)
    size, n_slices = plan.size, plan.n_slices
    pixel = geometry.pixel_spacing_mm(plan.site)
    dz = geometry.slice_spacing_mm

    # World grid (LPS): columns along +x, rows along +y, slices ascending in z.
    offsets = (np.arange(size) - (size - 1) / 2) * pixel
    origin_xy = round(float(offsets[0]), 4)
    z_top = round(plan.carina_z + anatomy.lung_apex * plan.lung_scale + plan.top_margin, 2)
    z_bottom = round(z_top - (n_slices - 1) * dz, 2)
    world_z = z_bottom + np.arange(n_slices) * dz

    # Patient coordinates relative to the (shifted) body centre and the carina, broadcastable to (z, y, x).
    x = (origin_xy + np.arange(size) * pixel - plan.body_offset[0]).astype(np.float32)[None, None, :]
    y = (origin_xy + np.arange(size) * pixel - plan.body_offset[1]).astype(np.float32)[None, :, None]
    z = (world_z - plan.carina_z).astype(np.float32)[:, None, None]
    grid = Grid(
        origin=(z_bottom - plan.carina_z, origin_xy - plan.body_offset[1], origin_xy - plan.body_offset[0]),
        spacing=(dz, pixel, pixel),
    )
    return _ScanCoordinates(
        x=x,
        y=y,
        z=z,
        shape=(n_slices, size, size),
        pixel=pixel,
        dz=dz,
        origin_xy=origin_xy,
        z_bottom=z_bottom,
        grid=grid,
    )


def _series_folder(index: int) -> str:
    return f"{_SCAN_PREFIX}{index:04d}"
