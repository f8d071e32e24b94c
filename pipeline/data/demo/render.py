"""One scan rendered from its plan: the exact Hounsfield units the DICOM files store, with lesion and lung masks.

Painter's order: patient table, fat, soft tissue, lung parenchyma (gradient, texture, ground-glass opacities,
vessels, consolidation, nodules), mediastinum, heart, aorta, airways, spine, ribs, sternum, then the site's scanner
noise and the clip to the stored range. Shapes come from :mod:`~pipeline.data.demo.anatomy` and
:mod:`~pipeline.data.demo.lesions`; texture and noise from the scan's own render stream (key 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.demo.anatomy import _inner_body, _inside_ellipse, _render_vessels, _smooth_field, _Thorax, paint
from pipeline.data.demo.lesions import _render_lesion
from pipeline.data.demo.plan import _scan_coordinates, _ScanPlan, _stream
from pipeline.data.demo.scanner import _HU_MAX, _HU_MIN, _SITE_PROTOCOLS, _scanner_noise

__all__ = ["SyntheticCT", "series_affine_ras"]


_AIR_HU = -1000.0


@dataclass(frozen=True)
class SyntheticCT:
    """One rendered scan, in the array order of ``SimpleITK.GetArrayFromImage`` for the written series.

    Attributes:
        hu: float32 ``(slices, rows, columns)`` Hounsfield units exactly as stored in the DICOM files (integers,
            clipped to -1024..3071); slice 0 is the most inferior (lowest ImagePositionPatient z), row index grows
            toward the patient's back (+y), column index toward the patient's left (+x).
        lesion_mask: bool, same shape: voxels inside a ground-glass opacity or consolidation (empty for negatives).
        lung_mask: bool, same shape: voxels that are mostly lung (lesions and vessels included).
        spacing_mm: ``(x, y, z)`` = (column spacing, row spacing, slice spacing).
        origin_mm: LPS position ``(x, y, z)`` of voxel ``[0, 0, 0]``.
    """

    hu: np.ndarray
    lesion_mask: np.ndarray
    lung_mask: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]


def series_affine_ras(volume: SyntheticCT) -> np.ndarray:
    """The RAS voxel-to-world affine of a rendered scan's series, for arrays indexed (column, row, slice).

    It is the affine :func:`pipeline.data.reader.read_volume` returns for the written DICOM series (tested), so a
    NIfTI written with it overlays the series in any viewer.
    """
    affine = np.diag([*volume.spacing_mm, 1.0])
    affine[:3, 3] = volume.origin_mm
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS (DICOM) -> RAS (NIfTI)


def _render(plan: _ScanPlan) -> SyntheticCT:
    """Render one scan's HU volume and lesion mask from its plan (deterministic)."""
    anatomy, protocol = plan.anatomy, _SITE_PROTOCOLS[plan.site]
    rng = _stream(plan.seed, 3, plan.index)  # noise and texture; the plan's own stream fixed the content
    coords = _scan_coordinates(plan)
    x, y, z, shape, grid = coords.x, coords.y, coords.z, coords.shape, coords.grid
    pixel, dz, origin_xy, z_bottom = coords.pixel, coords.dz, coords.origin_xy, coords.z_bottom
    spacing_zyx = grid.spacing
    edge = pixel  # partial-volume ramp of one pixel

    a_body = anatomy.body_half_width * plan.body_scale
    b_body = anatomy.body_half_depth * plan.body_scale
    a_in, b_in = _inner_body(anatomy, plan.body_scale)
    volume = np.full(shape, _AIR_HU, dtype=np.float32)

    # patient table: a curved carbon-fibre slab under the back
    table_y = b_body + 15.0 + 0.0006 * x**2
    table = ((y >= table_y) & (y <= table_y + 8.0) & (np.abs(x) < 0.45 * protocol.field_of_view_mm)).astype(np.float32)
    paint(volume, np.broadcast_to(table, shape), 80.0)

    paint(volume, _inside_ellipse(x, y, 0, 0, a_body, b_body, edge) * np.ones_like(z), anatomy.fat_hu)
    paint(volume, _inside_ellipse(x, y, 0, 0, a_in, b_in, edge) * np.ones_like(z), anatomy.soft_tissue_hu)

    thorax = _Thorax(anatomy, lung_scale=plan.lung_scale, body_scale=plan.body_scale)
    masks = thorax.masks(x, y, z, edge_mm=edge, edge_z_mm=dz)
    mediastinum, heart, aorta, lung = masks["mediastinum"], masks["heart"], masks["aorta"], masks["lung"]
    vertebra_y, vertebra_r, canal_y = thorax.vertebra_y, thorax.vertebra_r, thorax.canal_y
    lung_axes = {side: thorax.lung_ellipse(side) for side in (-1.0, 1.0)}

    # Parenchyma: base density, gravity-dependent gradient toward the back, low-frequency texture.
    parenchyma = np.full(shape, plan.lung_hu, dtype=np.float32)
    parenchyma += plan.dependent_gradient_hu * np.clip((y + b_in) / (2 * b_in), 0.0, 1.0)
    parenchyma += 12.0 * _smooth_field(rng, shape, spacing_zyx, 12.0)

    lesion_mask = np.zeros(shape, dtype=bool)
    by_kind = {kind: [les for les in plan.lesions if les.kind == kind] for kind in ("ggo", "consolidation", "nodule")}
    for lesion in by_kind["ggo"]:
        _render_lesion(parenchyma, lesion_mask, lesion, x, y, z, grid)
    vessels = _render_vessels(anatomy, lung_axes, plan, shape, grid)
    paint(parenchyma, vessels, plan.vessel_hu)
    for lesion in by_kind["consolidation"]:  # consolidation hides the vessels, so it goes on top
        _render_lesion(parenchyma, lesion_mask, lesion, x, y, z, grid)
    for lesion in by_kind["nodule"]:
        _render_lesion(parenchyma, None, lesion, x, y, z, grid)
    paint(volume, lung, parenchyma)
    lung_mask = lung > 0.5
    lesion_mask &= lung_mask
    del parenchyma, vessels

    paint(volume, mediastinum * (1 - heart), anatomy.soft_tissue_hu - 5.0)
    paint(volume, heart, 40.0)
    paint(volume, aorta, 42.0)

    # airways: trachea above the carina, main bronchi diverging below it
    trachea = _inside_ellipse(x, y, 0.0, 0.1 * b_in, 8.0, 8.0, edge) * (z > 0.0)
    paint(volume, trachea, _AIR_HU)
    bronchus_x = 8.0 + 1.2 * np.clip(-z, 0.0, None)
    for side in (-1.0, 1.0):
        bronchus = _inside_ellipse(x, y, side * bronchus_x, 0.1 * b_in, 6.0, 6.0, edge) * ((z <= 0.0) & (z > -35.0))
        paint(volume, bronchus, _AIR_HU)

    # spine: vertebral body (cancellous with cortex, discs every ~28 mm), spinal canal inside a bony arch
    disc = (np.mod(z / 28.0 + anatomy.disc_phase, 1.0) < 0.2).astype(np.float32)
    body = _inside_ellipse(x, y, 0, vertebra_y, vertebra_r, vertebra_r, edge) * np.ones_like(z)
    marrow = _inside_ellipse(x, y, 0, vertebra_y, vertebra_r - 2.5, vertebra_r - 2.5, edge)
    paint(volume, body, 650.0 * (1 - disc) + 90.0 * disc)
    paint(volume, marrow * (1 - disc), 260.0)
    paint(volume, _inside_ellipse(x, y, 0, canal_y, 14.0, 14.0, edge) * np.ones_like(z), 480.0)
    paint(volume, _inside_ellipse(x, y, 0, canal_y, 8.0, 8.0, edge) * np.ones_like(z), 20.0)

    # ribs: slanted arcs in the chest wall (lower anteriorly), absent at the spine and the sternum
    eta = np.sqrt((x / a_in) ** 2 + (y / b_in) ** 2)
    theta = np.arctan2(x, y)  # 0 at the back, +-pi at the front
    in_wall = (eta > 0.87) & (eta < 0.95) & (np.abs(theta) > 0.25) & (np.abs(theta) < 2.6)
    rib_z = (z + 22.0 * (1 - np.cos(theta))) / anatomy.rib_pitch + anatomy.rib_phase
    lung_span = (z > anatomy.lung_base - 20.0) & (z < anatomy.lung_apex + 10.0)
    ribs = in_wall & (np.mod(rib_z, 1.0) < 10.0 / anatomy.rib_pitch) & lung_span
    paint(volume, ribs.astype(np.float32), 550.0)
    sternum_z = (z > anatomy.lung_base + 30.0) & (z < anatomy.lung_apex - 10.0)
    paint(volume, _inside_ellipse(x, y, 0, -0.9 * b_in, 16.0, 7.0, edge) * sternum_z, 380.0)

    volume += _scanner_noise(rng, shape, protocol)
    hu = np.clip(np.rint(volume), _HU_MIN, _HU_MAX).astype(np.float32)
    return SyntheticCT(
        hu=hu,
        lesion_mask=lesion_mask,
        lung_mask=lung_mask,
        spacing_mm=(pixel, pixel, dz),
        origin_mm=(origin_xy, origin_xy, z_bottom),
    )
