"""The truth on disk (``--masks``): each scan's lesion and lung masks as NIfTI, ``truth.csv`` and ``lesions.csv``.

The masks lie on the series' own grid (same shape, spacing, origin and direction as the series reads through
:mod:`pipeline.data.reader`); :func:`~pipeline.data.demo.cohort.write_demo_cohort` says where the files go and writes
``generator.json`` beside them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.demo.lesions import _diameter_mm, lesion_distance
from pipeline.data.demo.plan import _SCAN_PREFIX, CLASS_NAMES, _scan_coordinates, _ScanPlan, _series_folder
from pipeline.data.demo.render import SyntheticCT, series_affine_ras
from pipeline.errors import UserError
from pipeline.io import atomic_path

__all__: list[str] = []


#: columns of ``truth.csv`` (one row per scan) and ``lesions.csv`` (one row per lesion)
_TRUTH_COLUMNS = [
    "path",
    "label",
    "site",
    "severity",
    "n_lesions",
    "lesion_voxels",
    "lesion_volume_ml",
    "lung_volume_ml",
    "lesion_mask",
    "lung_mask",
]
_LESION_COLUMNS = [
    "path",
    "lesion",
    "kind",
    "volume_ml",
    "diameter_mm",
    "target_hu",
    "centre_i",
    "centre_j",
    "centre_k",
    "centre_r_mm",
    "centre_a_mm",
    "centre_s_mm",
]


def _prepare_truth_dir(truth_dir: Path) -> None:
    """Refuse a file or a foreign non-empty folder; clear the masks of a previous demo truth folder."""
    if truth_dir.exists() and not truth_dir.is_dir():
        raise UserError(f"{truth_dir}: the truth folder must be a folder, but a file has that name")
    truth_dir.mkdir(parents=True, exist_ok=True)
    entries = [p for p in truth_dir.iterdir() if not p.name.startswith(".")]
    if not entries:
        return
    if not (truth_dir / "truth.csv").is_file():
        raise UserError(f"{truth_dir}: folder is not empty and holds no demo truth (no truth.csv); choose another")
    masks = truth_dir / "masks"
    if masks.is_dir():
        for path in masks.glob(f"{_SCAN_PREFIX}*.nii.gz"):
            path.unlink()


def _write_truth_masks(truth_dir: Path, plan: _ScanPlan, volume: SyntheticCT) -> tuple[dict, list[dict]]:
    """Write one scan's lesion and lung masks as NIfTI; return its ``truth.csv`` row and its ``lesions.csv`` rows."""
    import nibabel as nib  # only the truth needs it; the DICOM writer does not

    folder = _series_folder(plan.index)
    affine = series_affine_ras(volume)
    names = {"lesion": f"masks/{folder}_lesion.nii.gz", "lung": f"masks/{folder}_lung.nii.gz"}
    descriptions = {"lesion": "aamct demo lesion mask (1 = GGO/consolidation)", "lung": "aamct demo lung mask"}
    for kind, mask in (("lesion", volume.lesion_mask), ("lung", volume.lung_mask)):
        # (slices, rows, columns) -> (column, row, slice): the reader's (X, Y, Z) index order
        image = nib.Nifti1Image(np.ascontiguousarray(mask.transpose(2, 1, 0), dtype=np.uint8), affine)
        image.set_sform(affine, code=1)
        image.set_qform(affine, code=1)
        image.header.set_intent("label")
        image.header["descrip"] = descriptions[kind].encode()
        image.header.set_xyzt_units(xyz="mm")
        with atomic_path(truth_dir / names[kind]) as tmp:
            nib.save(image, tmp)
    voxel_ml = float(np.prod(volume.spacing_mm)) / 1000.0
    lesion_voxels = int(volume.lesion_mask.sum())
    ggos = [lesion for lesion in plan.lesions if lesion.kind == "ggo"]
    coords = _scan_coordinates(plan)
    rows = []
    for number, lesion in enumerate(ggos, start=1):
        found = lesion_distance(lesion, coords.x, coords.y, coords.z, coords.grid, coords.shape)
        own = 0 if found is None else int(((found[1] < 1.0) & volume.lung_mask[found[0]]).sum())
        k, j, i = coords.grid.index_of(np.array([lesion.centre]))[0].tolist()
        world = (
            lesion.centre[0] + plan.body_offset[0],
            lesion.centre[1] + plan.body_offset[1],
            lesion.centre[2] + plan.carina_z,
        )
        rows.append(
            {
                "path": folder,
                "lesion": number,
                "kind": lesion.kind,
                "volume_ml": round(own * voxel_ml, 4),
                "diameter_mm": round(_diameter_mm(own * voxel_ml), 2),
                "target_hu": round(lesion.target_hu, 1),
                "centre_i": i,
                "centre_j": j,
                "centre_k": k,
                "centre_r_mm": round(-world[0], 2),
                "centre_a_mm": round(-world[1], 2),
                "centre_s_mm": round(world[2], 2),
            }
        )
    scan_row = {
        "path": folder,
        "label": CLASS_NAMES[plan.label],
        "site": plan.site,
        "severity": plan.severity,
        "n_lesions": len(ggos),
        "lesion_voxels": lesion_voxels,
        "lesion_volume_ml": round(lesion_voxels * voxel_ml, 4),
        "lung_volume_ml": round(int(volume.lung_mask.sum()) * voxel_ml, 2),
        "lesion_mask": names["lesion"],
        "lung_mask": names["lung"],
    }
    return scan_row, rows
