"""One lesion of a known size pasted into the lungs of a CT volume in memory: ground glass or a real LIDC nodule.

The lesion-insertion stress test (``aamct stress-test``, :mod:`pipeline.evaluation.stress`) asks how small a lesion a
model finds on a site's own negative scans. This module makes the copies: pure numpy / scipy on an HU volume, its
voxel spacing and a lung mask (the caller's: :func:`pipeline.inference.maps.lung_mask` in the product), returning a new
volume and the lesion's mask; the input is never modified and no geometry is touched (the caller keeps the scan's
affine and header).

Two kinds:

* ``ggo`` -- the demo generator's ground-glass opacity (:mod:`pipeline.data.demo.lesions`: the same lumpy, soft-edged
  ellipsoid, its distance function ``lesion_distance`` and its painter's blend ``paint``), with the HU, opacity and
  lumpiness of the hard demo's sized lesions (``LesionSpec``: -450 to -330 HU at opacity 0.85-1.0 over the lung).
* ``nodule`` -- a real nodule: an LIDC-IDRI crop (:class:`NoduleLibrary`, ``/work/shared/data/lidc_nodules``) of the
  nearest volume (one of the few nearest, drawn), scaled to the requested volume when it differs by more than 5 %,
  resampled to the scan's spacing and pasted with its own HU and a soft edge (its mask smoothed with a 0.6 mm
  Gaussian). Texture by flag: ``solid`` (LIDC texture rating 5, not calcified: 587 crops), ``sub-solid`` (ratings
  1-3: ground glass, non-solid or part solid mixed; 92 crops, none calcified) or ``any`` (all 814, calcified ones at
  bone density included). Calcified nodules (93, up to ~1300 HU) are left out of ``solid``: benign and denser than
  the soft-tissue nodule a stress test of small-lesion sensitivity means.

Why hand-written: neither MONAI nor TorchIO inserts a lesion of a given volume into a lung mask. Partial volume is
rendered, not ignored: the lesion is evaluated on a grid of at most ~0.3-2 mm sub-voxels (a sixteenth of its
diameter) and averaged into each scan voxel, as a scanner's detector integrates it, so a 5 mm nodule in a 5 x 5 x 10 mm
voxel is a faint partial-volume voxel, not a whole one at full density. The returned mask is the voxels at least
half inside the lesion (the most-covered voxel when none is); ``lesion_volume_ml`` is the lesion's own volume, measured
on the sub-voxel grid (within 1 % of the request), ``mask_volume_ml`` the mask's, which at coarse spacing differs.

Placement: the centre is a lung voxel drawn uniformly among those deep enough in the lung (Euclidean distance to the
lung's outline at least the lesion's equivalent radius), and a draw is kept only if the mask lies wholly inside the
lung (up to 40 draws);
the blend is confined to the lung and to the mask dilated by :attr:`Insertion.margin_mm`, so nothing else changes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.data.demo.anatomy import paint
from pipeline.data.demo.lesions import LesionSpec, lesion_distance
from pipeline.data.demo.plan import Grid, Lesion
from pipeline.errors import UserError

__all__ = [
    "DEFAULT_SIZES_MM",
    "GGO_HU",
    "KINDS",
    "TEXTURES",
    "Insertion",
    "InsertionError",
    "NoduleCrop",
    "NoduleLibrary",
    "insert_lesion",
    "lung_depth",
    "sphere_volume_ml",
    "equivalent_diameter_mm",
]

#: the stress test's default ladder of equivalent-sphere diameters (mm)
DEFAULT_SIZES_MM: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0, 30.0, 40.0)
#: lesion kinds
KINDS: tuple[str, ...] = ("ggo", "nodule")
#: LIDC texture choices: rating 5 / ratings 1-3 / all
TEXTURES: tuple[str, ...] = ("solid", "sub-solid", "any")
_SPEC = LesionSpec(difficulty="hard", volume_ml=(1.0, 2.0))
#: the ground glass's target density (the hard demo's sized GGOs)
GGO_HU: tuple[float, float] = _SPEC.hu
#: a nodule's soft edge: its mask smoothed with this Gaussian (mm) before it is blended in
_NODULE_EDGE_MM = 0.6
#: sub-voxels per scan voxel along an axis, at most (a 5 mm lesion in an 11.6 mm slice: 0.7 mm sub-voxels)
_MAX_SUB_VOXELS = 16
#: placement draws before a copy is given up
_PLACEMENT_ATTEMPTS = 40
#: nodules drawn from among this many of the nearest volume
_NEAREST_NODULES = 5
#: scale a nodule when its volume differs from the request by more than this fraction
_SCALE_TOLERANCE = 0.05


class InsertionError(UserError):
    """A lesion of the requested size does not fit in this scan's lung (one line: size, kind and why)."""


def sphere_volume_ml(diameter_mm: float) -> float:
    """Volume (ml) of a sphere of ``diameter_mm``."""
    return math.pi * float(diameter_mm) ** 3 / 6.0 / 1000.0


def equivalent_diameter_mm(volume_ml: float) -> float:
    """Diameter (mm) of the sphere of ``volume_ml``."""
    return (6.0 * float(volume_ml) * 1000.0 / math.pi) ** (1.0 / 3.0)


@dataclass(frozen=True)
class Insertion:
    """A copy of a scan with one lesion in it.

    Attributes:
        hu: the copy (float32, the input's shape and axis order).
        mask: the lesion (voxels at least half inside it; never empty).
        kind: ``ggo`` or ``nodule``.
        requested_diameter_mm: the requested equivalent-sphere diameter.
        lesion_volume_ml: the lesion's volume on its sub-voxel grid.
        mask_volume_ml: ``mask``'s volume.
        centre_voxel: the voxel the lesion is centred on.
        margin_mm: nothing changed farther than this from ``mask`` (and nothing outside the lung).
        source: ``ggo`` or the LIDC file the nodule came from.
        texture: the nodule's LIDC texture rating text (``""`` for ground glass).
        scale: linear scale applied to the nodule (1 for ground glass).
        attempts: placement draws used.
    """

    hu: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    kind: str
    requested_diameter_mm: float
    lesion_volume_ml: float
    mask_volume_ml: float
    centre_voxel: tuple[int, int, int]
    margin_mm: float
    source: str
    texture: str = ""
    scale: float = 1.0
    attempts: int = 1

    @property
    def lesion_diameter_mm(self) -> float:
        """Equivalent-sphere diameter of :attr:`lesion_volume_ml`."""
        return equivalent_diameter_mm(self.lesion_volume_ml)

    def record(self) -> dict[str, object]:
        """The JSON-ready description (no arrays)."""
        return {
            "kind": self.kind,
            "requested_diameter_mm": self.requested_diameter_mm,
            "lesion_volume_ml": round(self.lesion_volume_ml, 5),
            "lesion_diameter_mm": round(self.lesion_diameter_mm, 3),
            "mask_volume_ml": round(self.mask_volume_ml, 5),
            "centre_voxel": list(self.centre_voxel),
            "margin_mm": round(self.margin_mm, 3),
            "source": self.source,
            "texture": self.texture,
            "scale": round(self.scale, 4),
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class NoduleCrop:
    """One LIDC nodule: its crop in HU and mask on the crop's own grid, RAS axis order.

    Attributes:
        file: the crop's file name (``LIDC-IDRI-0001_R_1.nii.gz``).
        hu: crop HU (float32).
        mask: the nodule (bool).
        spacing_mm: voxel size along the three axes.
        texture: the radiologists' consensus texture.
    """

    file: str
    hu: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    spacing_mm: tuple[float, float, float]
    texture: str

    @property
    def volume_ml(self) -> float:
        return float(self.mask.sum()) * float(np.prod(self.spacing_mm)) / 1000.0


class NoduleLibrary:
    """The LIDC-IDRI nodule crops of ``lidc_nodules/`` (``image/``, ``nodule_mask/``, ``nodules.csv``), by texture.

    LIDC-IDRI: Armato SG III et al., Medical Physics 38(2):915-931, 2011, doi:10.1118/1.3528204 (CC BY 3.0), crops
    and consensus table as prepared by the ``PabloLION/ct-slicing`` repository.

    Args:
        folder: the ``lidc_nodules`` folder.
        texture: ``solid``, ``sub-solid`` or ``any`` (see the module docstring).

    Raises:
        UserError: the folder or its table is missing, the texture is unknown, or no nodule has it.
    """

    def __init__(self, *, folder: str | os.PathLike, texture: str = "solid") -> None:
        import pandas as pd

        if texture not in TEXTURES:
            raise UserError(f"nodule texture must be one of {', '.join(TEXTURES)}, got {texture!r}")
        self.folder = Path(folder)
        table_path = self.folder / "nodules.csv"
        if not table_path.is_file():
            raise UserError(f"{table_path}: no LIDC nodule table (expected lidc_nodules/ with nodules.csv)")
        table = pd.read_csv(table_path)
        rating = pd.to_numeric(table["Texture_value"], errors="coerce")
        uncalcified = table["Calcification"].astype(str).str.strip().str.lower() == "absent"
        if texture == "solid":
            table = table[(rating == 5) & uncalcified]
        elif texture == "sub-solid":
            table = table[(rating <= 3) & uncalcified]
        if table.empty:
            raise UserError(f"{table_path}: no nodule of texture {texture!r}")
        self.texture = texture
        self.table = table.sort_values("volume_ml").reset_index(drop=True)
        self._cache: dict[str, NoduleCrop] = {}

    def nearest(self, volume_ml: float, rng: np.random.Generator) -> NoduleCrop:
        """One of the :data:`_NEAREST_NODULES` nodules nearest ``volume_ml`` (in log volume), drawn with ``rng``."""
        distance = np.abs(np.log(self.table["volume_ml"].to_numpy(float)) - math.log(volume_ml))
        order = np.argsort(distance, kind="stable")[:_NEAREST_NODULES]
        row = self.table.iloc[int(order[int(rng.integers(order.size))])]
        return self.crop(str(row["file"]), texture=str(row["Texture"]))

    def crop(self, file: str, *, texture: str = "") -> NoduleCrop:
        """The crop of ``file`` (read once, RAS axis order)."""
        import nibabel as nib

        if file not in self._cache:
            image = nib.as_closest_canonical(nib.load(self.folder / "image" / file))
            mask = nib.as_closest_canonical(nib.load(self.folder / "nodule_mask" / file))
            hu = np.asarray(image.dataobj, dtype=np.float32)
            self._cache[file] = NoduleCrop(
                file=file,
                hu=hu,
                mask=np.asarray(mask.dataobj) > 0,
                spacing_mm=tuple(float(z) for z in image.header.get_zooms()[:3]),
                texture=texture,
            )
        return self._cache[file]


def insert_lesion(
    hu: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    lung_mask: np.ndarray,
    kind: str,
    diameter_mm: float,
    rng: np.random.Generator,
    nodules: NoduleLibrary | None = None,
    lung_depth_mm: np.ndarray | None = None,
) -> Insertion:
    """A copy of ``hu`` with one lesion of equivalent diameter ``diameter_mm`` at a random place in ``lung_mask``.

    Args:
        hu: ``(X, Y, Z)`` CT in HU (not modified).
        spacing_mm: voxel size along the three axes (the third is the axial one for the GGO's shape).
        lung_mask: boolean lungs, ``hu``'s shape.
        kind: ``ggo`` or ``nodule``.
        diameter_mm: equivalent-sphere diameter of the lesion.
        rng: the random stream (placement, shape, nodule choice): the same stream gives the same copy.
        nodules: the nodule library (``kind="nodule"``).
        lung_depth_mm: :func:`lung_depth_mm` of ``lung_mask``, when the caller inserts many lesions into one scan
            (computed here otherwise).

    Returns:
        The :class:`Insertion`.

    Raises:
        InsertionError: the lung has no room for a lesion of this size.
        UserError: an unknown kind, a non-positive size, shapes that differ, or a nodule without a library.
    """
    volume = np.asarray(hu)
    lung = np.asarray(lung_mask, dtype=bool)
    spacing = np.asarray([float(s) for s in spacing_mm], dtype=float)
    if kind not in KINDS:
        raise UserError(f"lesion kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not (math.isfinite(diameter_mm) and diameter_mm > 0):
        raise UserError(f"lesion diameter must be a positive number of mm, got {diameter_mm!r}")
    if volume.ndim != 3 or lung.shape != volume.shape or spacing.shape != (3,):
        raise UserError(f"insertion needs a 3D volume, a lung mask of its shape and 3 spacings, got {volume.shape}")
    if kind == "nodule" and nodules is None:
        raise UserError("nodule insertion needs the LIDC nodule library (--nodules DIR)")
    target_ml = sphere_volume_ml(diameter_mm)
    depth = lung_depth(lung, spacing) if lung_depth_mm is None else np.asarray(lung_depth_mm)
    if depth.shape != lung.shape:
        raise UserError(f"lung depth of shape {depth.shape} for a lung mask of shape {lung.shape}")
    if depth.max() < 0.5 * diameter_mm:  # before any rendering: no lung point is that far from the lung's outline
        raise InsertionError(
            f"no room for a {diameter_mm:g} mm {kind} in this lung (deepest lung point {depth.max():.1f} mm from its "
            f"outline)"
        )
    fine_mm = min(2.0, max(0.25, diameter_mm / 16.0))
    steps = np.clip(np.ceil(spacing / fine_mm), 1, _MAX_SUB_VOXELS).astype(int)
    lesion = _GgoLesion(rng, target_ml, spacing, steps) if kind == "ggo" else _Nodule(
        nodules.nearest(target_ml, rng), rng, target_ml, spacing, steps
    )  # fmt: skip
    # a centre at least the lesion's equivalent radius deep; whether the lesion's own (lumpy, stretched) mask fits
    # inside the lung is checked on each draw
    candidates = np.flatnonzero(depth.ravel() >= 0.5 * diameter_mm)
    if candidates.size == 0:
        raise InsertionError(
            f"no room for a {diameter_mm:g} mm {kind} in this lung (deepest lung point {depth.max():.1f} mm from its "
            f"outline)"
        )
    for attempt in range(1, _PLACEMENT_ATTEMPTS + 1):
        centre = np.array(np.unravel_index(int(candidates[int(rng.integers(candidates.size))]), volume.shape))
        fields = lesion.fields(centre, volume.shape)
        if fields is None:
            continue
        box, occupancy, alpha, lesion_hu = fields
        mask_box = _volume_preserving_mask(occupancy, alpha)
        if (mask_box & ~lung[box]).any():
            continue
        near = ndimage.distance_transform_edt(~mask_box, sampling=tuple(spacing)) <= lesion.margin_mm
        weight = (alpha * (lung[box] & near)).astype(np.float32)
        out = volume.astype(np.float32, copy=True)
        region = out[box]  # a view: paint blends in place
        paint(region, weight, lesion_hu)
        mask = np.zeros(volume.shape, dtype=bool)
        mask[box] = mask_box
        return Insertion(
            hu=out,
            mask=mask,
            kind=kind,
            requested_diameter_mm=float(diameter_mm),
            lesion_volume_ml=lesion.volume_ml,
            mask_volume_ml=float(mask_box.sum()) * float(np.prod(spacing)) / 1000.0,
            centre_voxel=tuple(int(c) for c in centre),
            margin_mm=lesion.margin_mm,
            source=lesion.source,
            texture=lesion.texture,
            scale=lesion.scale,
            attempts=attempt,
        )
    raise InsertionError(
        f"a {diameter_mm:g} mm {kind} did not fit inside this lung in {_PLACEMENT_ATTEMPTS} placements"
    )


def lung_depth(lung_mask: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Each lung voxel's Euclidean distance (mm) to the nearest voxel outside the lung (0 outside)."""
    spacing = tuple(float(s) for s in spacing_mm)
    return ndimage.distance_transform_edt(np.asarray(lung_mask, dtype=bool), sampling=spacing).astype(np.float32)


def _volume_preserving_mask(occupancy: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The ``round(sum(occupancy))`` most-covered voxels (at least one): a mask whose volume is the lesion's to half a
    voxel (a fixed 0.5 cut is biased where sub-voxel counts are even: a voxel half inside is common), ties broken by
    the blend weight (nearer the lesion's centre first)."""
    count = max(1, int(round(float(occupancy.sum()))))
    order = np.lexsort((-alpha.ravel(), -occupancy.ravel()))[:count]
    mask = np.zeros(occupancy.size, dtype=bool)
    mask[order] = True
    return mask.reshape(occupancy.shape)


def _block_mean(values: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Mean over each ``steps``-sized block (the sub-voxels of one scan voxel)."""
    n = [s // k for s, k in zip(values.shape, steps, strict=True)]
    shaped = values.reshape(n[0], steps[0], n[1], steps[1], n[2], steps[2])
    return shaped.mean(axis=(1, 3, 5))


class _SubVoxelLesion:
    """A lesion evaluated on sub-voxels around a centre voxel; subclasses give its density and coverage there."""

    source = "ggo"
    texture = ""
    scale = 1.0

    def __init__(self, spacing: np.ndarray, steps: np.ndarray, half_extent_mm: float) -> None:
        self.spacing, self.steps = spacing, steps
        self.half = np.ceil(half_extent_mm / spacing).astype(int) + 1

    def offsets_mm(self) -> list[np.ndarray]:
        """Sub-voxel centres (mm from the centre voxel's centre) along each axis of the local box."""
        axes = []
        for h, s, k in zip(self.half, self.spacing, self.steps, strict=True):
            native = np.arange(-h, h + 1)
            sub = (np.arange(k) + 0.5) / k - 0.5
            axes.append(((native[:, None] + sub[None, :]) * s).ravel())
        return axes

    def box(self, centre: np.ndarray, shape: Sequence[int]) -> tuple[tuple[slice, ...], list[slice]] | None:
        """The scan box around ``centre`` and the matching sub-voxel slices (None when it leaves the scan)."""
        low, high = centre - self.half, centre + self.half + 1
        if (low < 0).any() or (high > np.asarray(shape)).any():
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True)), []

    @property
    def sub_voxel_ml(self) -> float:
        return float(np.prod(self.spacing / self.steps)) / 1000.0


class _GgoLesion(_SubVoxelLesion):
    """The demo's ground glass (:func:`pipeline.data.demo.lesions.lesion_distance`), calibrated to a volume."""

    def __init__(self, rng: np.random.Generator, target_ml: float, spacing, steps) -> None:
        radius = (3.0 * target_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
        stretch = rng.uniform(0.7, 1.3, 3)
        stretch = stretch / math.prod(stretch.tolist()) ** (1.0 / 3.0)
        waves = []
        for _ in range(4):  # as the demo draws them: random direction, 1.5-3 radians per radius
            direction = rng.normal(size=3)
            wave = direction / np.linalg.norm(direction) * rng.uniform(1.5, 3.0)
            waves.append((*wave.tolist(), float(rng.uniform(0, 2 * math.pi))))
        self.lesion = Lesion(
            centre=tuple((rng.uniform(-0.5, 0.5, 3) * spacing).tolist()),  # sub-voxel position
            radii=tuple((radius * stretch).tolist()),
            in_plane_angle=float(rng.uniform(0, math.pi)),
            target_hu=float(rng.uniform(*_SPEC.hu)),
            opacity=float(rng.uniform(*_SPEC.opacity)),
            edge=float(rng.uniform(0.2, 0.4)),
            lumpiness=float(rng.uniform(*_SPEC.lumpiness)),
            waves=tuple(waves),
            kind="ggo",
        )
        for _ in range(6):  # the lumpy outline changes the volume: rescale the radii until it matches
            self._set_extent(spacing, steps)
            volume = float((self._distance() < 1.0).sum()) * self.sub_voxel_ml
            ratio = target_ml / max(volume, 1e-9)
            if abs(ratio - 1.0) < 0.01:
                break
            self.lesion = _replace_radii(self.lesion, ratio ** (1.0 / 3.0))
        self.volume_ml = volume
        mean_radius = sum(self.lesion.radii) / 3.0
        # the blend is cut where the tanh rim has fallen below 2 % of the opacity (distance 1 + 2 edge)
        self.margin_mm = max(2.0 * self.lesion.edge * mean_radius * (1.0 + self.lesion.lumpiness), float(spacing.max()))

    def _set_extent(self, spacing, steps) -> None:
        extent = max(self.lesion.radii) * (1.0 + self.lesion.lumpiness) * (1.0 + 2.5 * self.lesion.edge)
        super().__init__(spacing, steps, extent + float(np.abs(self.lesion.centre).max()))

    def _distance(self) -> np.ndarray:
        """The demo's normalised distance on the sub-voxel box, in (X, Y, Z) order (the renderer works in Z, Y, X)."""
        ax, ay, az = self.offsets_mm()
        x, y, z = ax[None, None, :], ay[None, :, None], az[:, None, None]
        spacing = (az[1] - az[0] if az.size > 1 else 1.0, ay[1] - ay[0] if ay.size > 1 else 1.0, ax[1] - ax[0])
        grid = Grid(origin=(float(az[0]), float(ay[0]), float(ax[0])), spacing=tuple(float(s) for s in spacing))
        shape = (az.size, ay.size, ax.size)
        distance = np.full(shape, np.inf, dtype=np.float64)
        found = lesion_distance(self.lesion, x, y, z, grid, shape)
        if found is not None:
            box, inner = found
            distance[box] = inner
        return np.transpose(distance, (2, 1, 0))

    def fields(self, centre: np.ndarray, shape: Sequence[int]):
        placed = self.box(centre, shape)
        if placed is None:
            return None
        box, _ = placed
        distance = self._distance()
        inside = (distance < 1.0).astype(np.float32)
        rim = 1.0 + 2.0 * self.lesion.edge
        alpha = np.where(
            distance <= rim, self.lesion.opacity * 0.5 * (1.0 - np.tanh((distance - 1.0) / self.lesion.edge)), 0.0
        )
        occupancy = _block_mean(inside, self.steps)
        return box, occupancy, _block_mean(alpha, self.steps).astype(np.float32), self.lesion.target_hu


def _replace_radii(lesion: Lesion, factor: float) -> Lesion:
    import dataclasses

    return dataclasses.replace(lesion, radii=tuple(r * factor for r in lesion.radii))


class _Nodule(_SubVoxelLesion):
    """An LIDC crop scaled to a volume, sampled on sub-voxels (random flips / in-plane quarter turns)."""

    def __init__(self, crop: NoduleCrop, rng: np.random.Generator, target_ml: float, spacing, steps) -> None:
        hu, mask = crop.hu, crop.mask
        flips = [bool(f) for f in rng.integers(0, 2, 3)]
        turns = int(rng.integers(0, 4))
        for axis, flip in enumerate(flips):
            if flip:
                hu, mask = np.flip(hu, axis), np.flip(mask, axis)
        crop_spacing = np.asarray(crop.spacing_mm, dtype=float)
        if turns % 2:
            crop_spacing = crop_spacing[[1, 0, 2]]
        hu, mask = np.rot90(hu, turns, axes=(0, 1)), np.rot90(mask, turns, axes=(0, 1))
        self.crop_hu = np.ascontiguousarray(hu, dtype=np.float32)
        soft = ndimage.gaussian_filter(mask.astype(np.float32), sigma=tuple(_NODULE_EDGE_MM / crop_spacing))
        self.crop_soft = soft
        self.crop_mask = np.ascontiguousarray(mask, dtype=np.float32)
        self.crop_spacing = crop_spacing
        index = np.argwhere(mask)
        self.crop_centre = (index.min(axis=0) + index.max(axis=0)) / 2.0  # crop voxel at the scan voxel's centre
        self.source, self.texture = crop.file, crop.texture
        ratio = target_ml / crop.volume_ml
        self.scale = ratio ** (1.0 / 3.0) if abs(ratio - 1.0) > _SCALE_TOLERANCE else 1.0
        reach = (np.abs(index - self.crop_centre).max(axis=0) + 1.0) * crop_spacing
        self.steps = steps
        best: tuple[float, float, float] | None = None  # (error, scale, volume)
        for step in range(8):  # resampling changes the volume: measure it on the sub-voxels and rescale
            self._resize(reach, spacing)
            volume = float((self._sample(self.crop_mask) >= 0.5).sum()) * self.sub_voxel_ml
            ratio = target_ml / max(volume, 1e-9)
            if best is None or abs(ratio - 1.0) < best[0]:
                best = (abs(ratio - 1.0), self.scale, volume)
            unscaled_fits = step == 0 and self.scale == 1.0 and abs(ratio - 1.0) <= _SCALE_TOLERANCE
            if unscaled_fits or abs(ratio - 1.0) < 0.01:
                break
            self.scale *= ratio ** (1.0 / 3.0)
        _, self.scale, self.volume_ml = best
        self._resize(reach, spacing)
        self.margin_mm = max(3.0 * _NODULE_EDGE_MM * self.scale, float(spacing.max()))

    def _resize(self, reach: np.ndarray, spacing: np.ndarray) -> None:
        self.reach_mm = float(reach.max()) * self.scale + 0.5 * float(spacing.max())
        super().__init__(spacing, self.steps, self.reach_mm + 3 * _NODULE_EDGE_MM)

    def _sample(self, values: np.ndarray, order: int = 1) -> np.ndarray:
        """``values`` (on the crop grid) at the sub-voxel centres, in (X, Y, Z) order."""
        axes = [
            self.crop_centre[i] + offsets / (self.scale * self.crop_spacing[i])
            for i, offsets in enumerate(self.offsets_mm())
        ]
        grid = np.meshgrid(*axes, indexing="ij")
        return ndimage.map_coordinates(values, grid, order=order, mode="constant", cval=0.0)

    def fields(self, centre: np.ndarray, shape: Sequence[int]):
        placed = self.box(centre, shape)
        if placed is None:
            return None
        box, _ = placed
        inside = (self._sample(self.crop_mask) >= 0.5).astype(np.float32)
        # full weight inside the nodule (its HU already holds its scanner's partial volume), the soft edge outside
        alpha = np.maximum(np.clip(self._sample(self.crop_soft), 0.0, 1.0), inside)
        density = self._sample(self.crop_hu)
        occupancy = _block_mean(inside, self.steps)
        weighted = _block_mean(density * inside, self.steps)
        # each voxel's own nodule HU: the mean over its sub-voxels inside the nodule; the rim takes the nodule's mean
        mean_hu = float((density * inside).sum() / max(inside.sum(), 1.0))
        lesion_hu = np.where(occupancy > 0, weighted / np.maximum(occupancy, 1e-6), mean_hu).astype(np.float32)
        return box, occupancy, _block_mean(alpha, self.steps).astype(np.float32), lesion_hu
