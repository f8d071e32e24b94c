"""The generated demo cohort: chest-CT-like volumes with and without COVID-like lesions, written as DICOM series.

``aamct demo-data --out DIR --cases N [--size S] [--seed S]`` writes ``DIR/scan-0001/ ... DIR/scan-N/`` (one DICOM
file per axial slice) and ``DIR/labels.csv`` (``path,label,site``), the labels CSV that
``aamct manifest build --dicom-root DIR --labels DIR/labels.csv`` accepts.

Why not MONAI's own synthetic data: :func:`monai.data.synthetic.create_test_image_3d` draws random spheres on a
0..1 background, with no anatomy, no Hounsfield units and no DICOM; the pipeline's ingestion, HU windowing and
classifier need all three, so this module renders its own phantom and writes it with pydicom (MONAI has no DICOM
writer; itk is deliberately not installed).

What a volume contains (all sizes in millimetres, so ``--size 64`` and ``--size 512`` show the same patients):
air outside the body, a patient table, subcutaneous fat (~-100 HU) around soft tissue (~45 HU), two lungs
(~-850 HU with a gravity-dependent density gradient and low-frequency texture) with branching vessel trees
(~40 HU, thinning toward the periphery, rendered with partial-volume weights), heart, mediastinum, trachea and main
bronchi, descending aorta, vertebrae with discs and spinal canal, slanted ribs, sternum, and in-plane correlated
scanner noise (per-site sigma 15-25 HU). Positive cases carry COVID-like lesions anywhere in either lung (centres
uniform over the lungs' volume: any lobe, periphery and centre): dense ground-glass opacities (-300 to -160 HU,
blobby with soft edges, vessels still visible through them) and, in more severe cases, consolidation (-100 to 40 HU,
hides the vessels). Severity varies: mild (2-4 GGOs of about 4.5-6 cm, 2-9 % of the lung), moderate (2-4, 4-10 %)
and extensive (3-5, 7-18 %). Both classes may contain small solid nodules as distractors.

The lesion signal is a design choice, measured on fresh cohorts: where a lesion lies must say nothing that the image
does not, and the classifier must still learn it. Earlier demos put 4-12 GGOs of 5-9 cm near the pleura and the
lower lobes (11-53 % of the lung): a map that ignored the image and pointed where the other cases' lesions are most
often hit 0.74 of the positives (leave one out, 10 mm margin; :func:`pipeline.evaluation.localisation.position_baselines`),
so a high pointing game measured the prior. Now that position prior is 0.38-0.42 on 120-160-case cohorts (a random
point in the lung: 0.16). Fewer, fainter lesions (1-3 GGOs of -430 to -340 HU) dropped the demo recipe's test AUC to
0.62-0.74; this density gives 0.94 (one training, 120 cases; the small-lesion benchmark has it over seeds).

Cohort design: about 50/50 labels at patient level, three sites (``site-a``, ``site-b``, ``site-c``, differing in
field of view, noise level and noise grain, so an external-site hold-out shows a small domain shift), and a few
patients with a follow-up study (same patient, new study, same label) so patient-level splitting matters. Each
patient carries obviously fake PHI (``Demopatient^Case0007``, ``DEMO-0007``, a birth date) that the pipeline must strip.

The hard demo (``--difficulty hard``) and the truth on disk (``--masks``): see :func:`write_demo_cohort`. The hard
setting was tuned with the demo recipe (``benchmarks/demo_models.py``: 120 cases, aam_student_small, lr 6e-4, batch
8, cosine, 30 epochs, early stop after 10 epochs without gain) to a test AUC inside 0.75-0.92, where a network can be
better or worse than another (lesions anywhere, 160 cases: 0.81, one training); weaker settings (1-3 lesions of
12-28 mm, or 2-5 of 25-50 mm, or 6-12 of 20-45 mm) stayed near chance or below the band with that recipe (test AUC
0.53-0.70, one training each, with the earlier peripheral placement).

Everything is deterministic for a seed: anatomy comes from a per-patient random stream, acquisition and lesions
from a per-scan stream (``numpy.random.SeedSequence``), UIDs are hashes of seed, size, patient, study and slice
(:func:`pydicom.uid.generate_uid` with ``entropy_srcs``), dates are drawn from the same streams, so a rerun writes
byte-identical files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from pipeline.errors import UserError
from pipeline.io import atomic_path, write_csv_atomic, write_json_atomic

__all__ = [
    "CLASS_NAMES",
    "DIFFICULTIES",
    "HARD_LESION_DIAMETER_MM",
    "LESION_SIZE_UNITS",
    "SITES",
    "DemoGeometry",
    "DemoCase",
    "DemoCohort",
    "SyntheticCT",
    "demo_geometry",
    "lesion_volume_range_ml",
    "series_affine_ras",
    "write_demo_cohort",
]

logger = logging.getLogger(__name__)

#: class names in label order (index 0 = negative)
CLASS_NAMES: tuple[str, str] = ("negative", "positive")
#: the demo sites
SITES: tuple[str, ...] = ("site-a", "site-b", "site-c")

# Stored value = HU + 1024 (RescaleIntercept -1024), clipped to the 12-bit range scanners use.
_RESCALE_INTERCEPT = -1024
_HU_MIN, _HU_MAX = -1024, 3071
_MIN_SIZE, _MAX_SIZE = 32, 1024
_MAX_CASES = 9999
_SCAN_PREFIX = "scan-"
_UID_NAMESPACE = "aamct-demo-v1"
_AIR_HU = -1000.0

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
class _LesionSpec:
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


@dataclass(frozen=True)
class _SiteProtocol:
    """How a site's scanner reconstructs: field of view, noise level and noise grain (in-plane correlation)."""

    field_of_view_mm: float
    noise_sigma_hu: float
    noise_grain_px: float
    station: str


_SITE_PROTOCOLS: dict[str, _SiteProtocol] = {
    "site-a": _SiteProtocol(field_of_view_mm=350.0, noise_sigma_hu=18.0, noise_grain_px=0.8, station="DEMO-CT-A"),
    "site-b": _SiteProtocol(field_of_view_mm=360.0, noise_sigma_hu=24.0, noise_grain_px=1.0, station="DEMO-CT-B"),
    "site-c": _SiteProtocol(field_of_view_mm=340.0, noise_sigma_hu=15.0, noise_grain_px=0.6, station="DEMO-CT-C"),
}


@dataclass(frozen=True)
class DemoGeometry:
    """Matrix and slice geometry of the demo scans for one ``size``.

    Attributes:
        size: in-plane matrix (rows = columns).
        min_slices: fewest slices of a scan.
        max_slices: most slices of a scan.
        slice_spacing_mm: distance between slice centres (slices are contiguous: thickness = spacing).
    """

    size: int
    min_slices: int
    max_slices: int
    slice_spacing_mm: float

    def pixel_spacing_mm(self, site: str) -> float:
        """In-plane pixel size at ``site`` (its field of view over the matrix)."""
        return round(_SITE_PROTOCOLS[site].field_of_view_mm / self.size, 4)


def demo_geometry(size: int) -> DemoGeometry:
    """The demo geometry for an in-plane matrix ``size``.

    Slices scale with the matrix between two anchors, 24-32 slices at 64 and 50-80 at 512 (a chest CT as acquired);
    the slice spacing keeps the mean cranio-caudal coverage at about 325 mm (5.0 mm at 512, 11.6 mm at 64). A scan's
    slice count is drawn in that range and raised where needed so that it covers both lungs, apex to base.

    Args:
        size: in-plane matrix, 32..1024.

    Returns:
        The geometry.

    Raises:
        UserError: if ``size`` is outside 32..1024.
    """
    if not isinstance(size, int) or isinstance(size, bool) or not _MIN_SIZE <= size <= _MAX_SIZE:
        raise UserError(f"--size must be an integer from {_MIN_SIZE} to {_MAX_SIZE}, got {size!r}")
    anchors = [32, 64, 512]
    min_slices = int(round(np.interp(size, anchors, [16, 24, 50])))
    max_slices = int(round(np.interp(size, anchors, [22, 32, 80])))
    spacing = round(325.0 / ((min_slices + max_slices) / 2), 1)
    return DemoGeometry(size=size, min_slices=min_slices, max_slices=max_slices, slice_spacing_mm=spacing)


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
class _Lesion:
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
    lesions: tuple[_Lesion, ...]
    study_date: str
    study_time: str


@dataclass(frozen=True)
class DemoCase:
    """One written demo scan.

    Attributes:
        index: scan number, 1-based (``scan-0007`` has index 7).
        path: the series folder relative to the cohort root, as written to ``labels.csv``.
        series_dir: the series folder (absolute).
        label: ``negative`` or ``positive``.
        site: the site name.
        patient: the (fake) patient number, shared by a baseline and its follow-up.
        study: 1 for a baseline scan, 2 for a follow-up.
        n_slices: number of slices (DICOM files).
        pixel_spacing_mm: in-plane pixel size.
        slice_spacing_mm: distance between slices.
        severity: ``none``, ``mild``, ``moderate`` or ``extensive``.
        n_lesions: number of ground-glass / consolidation lesions.
        lesion_voxels: voxels inside lesions (0 for negatives).
        lesion_volume_ml: lesion volume in millilitres.
    """

    index: int
    path: str
    series_dir: Path
    label: str
    site: str
    patient: int
    study: int
    n_slices: int
    pixel_spacing_mm: float
    slice_spacing_mm: float
    severity: str
    n_lesions: int
    lesion_voxels: int
    lesion_volume_ml: float
    _plan: _ScanPlan = dataclasses.field(repr=False, compare=False)

    def render(self) -> SyntheticCT:
        """Render the scan again (deterministic): the exact voxels written to the DICOM files plus lesion and lung masks."""
        return _render(self._plan)


@dataclass(frozen=True)
class DemoCohort:
    """The written demo cohort.

    Attributes:
        root: the output folder.
        labels_csv: ``root/labels.csv`` (``path,label,site``).
        cases: one :class:`DemoCase` per scan, in scan order.
        size: in-plane matrix.
        seed: the seed.
        geometry: the slice geometry.
        difficulty: ``default`` or ``hard``.
        lesion_volume_range_ml: the range every lesion's mask volume lies in (None: the default demo's lesions).
        truth_dir: the folder of masks and truth tables (None: not written).
    """

    root: Path
    labels_csv: Path
    cases: list[DemoCase]
    size: int
    seed: int
    geometry: DemoGeometry
    difficulty: str = "default"
    lesion_volume_range_ml: tuple[float, float] | None = None
    truth_dir: Path | None = None

    def summary(self) -> str:
        """A short report: counts per label, site and study, geometry and where the files are (no PHI)."""
        labels = Counter(case.label for case in self.cases)
        sites = Counter(case.site for case in self.cases)
        patients = len({case.patient for case in self.cases})
        follow_ups = sum(case.study > 1 for case in self.cases)
        severities = Counter(case.severity for case in self.cases if case.label == "positive")
        slices = [case.n_slices for case in self.cases]
        lines = [f"wrote {len(self.cases)} demo CT series to {self.root} (seed {self.seed}, {self.difficulty})"]
        if self.lesion_volume_range_ml is not None:
            low, high = self.lesion_volume_range_ml
            lines.append(
                f"  lesions: {low:.3g}-{high:.3g} ml each ({_diameter_mm(low):.1f}-{_diameter_mm(high):.1f} mm "
                "equivalent-sphere diameter)"
            )
        if self.truth_dir is not None:
            lines.append(f"  truth: lesion and lung masks + truth.csv, lesions.csv in {self.truth_dir}")
        return "\n".join(
            [
                *lines,
                f"  labels: {', '.join(f'{name} {labels.get(name, 0)}' for name in CLASS_NAMES)}"
                f" (positives: {', '.join(f'{k} {v}' for k, v in sorted(severities.items())) or 'none'})",
                f"  patients: {patients}, of whom {follow_ups} have a follow-up study",
                f"  sites: {', '.join(f'{name} {sites[name]}' for name in SITES if sites[name])}",
                f"  geometry: {self.size}x{self.size} x {min(slices)}-{max(slices)} slices, "
                f"{self.geometry.slice_spacing_mm} mm slice spacing",
                f"  labels CSV: {self.labels_csv}",
                f"  next: aamct manifest build --dicom-root {self.root} --labels {self.labels_csv} --out MANIFEST.csv",
            ]
        )


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


def series_affine_ras(volume: SyntheticCT) -> np.ndarray:
    """The RAS voxel-to-world affine of a rendered scan's series, for arrays indexed (column, row, slice).

    It is the affine :func:`pipeline.data.reader.read_volume` returns for the written DICOM series (tested), so a
    NIfTI written with it overlays the series in any viewer.
    """
    affine = np.diag([*volume.spacing_mm, 1.0])
    affine[:3, 3] = volume.origin_mm
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS (DICOM) -> RAS (NIfTI)


def write_demo_cohort(
    out: str | os.PathLike,
    *,
    cases: int = 40,
    size: int = 64,
    seed: int = 0,
    difficulty: str = "default",
    lesion_size_range: tuple[float, float] | None = None,
    lesion_size_unit: str = "mm",
    masks: bool = False,
    truth_dir: str | os.PathLike | None = None,
) -> DemoCohort:
    """Write the generated demo cohort as DICOM series plus ``labels.csv`` (and, with ``masks``, its truth).

    Each series is written into a temporary folder and renamed into place, and ``labels.csv`` is written last, so an
    interrupted run never leaves a half-written series under its final name. Rerunning into the same folder replaces
    the scans listed in its old ``labels.csv``; any other non-empty folder is refused.

    Difficulty: ``default`` is the learnable demo described in the module docstring (its files are unchanged by the
    options below unless a size range is given). ``hard`` gives each positive 4-7 smaller, fainter ground-glass
    opacities (-450 to -330 HU, no consolidation) of :data:`HARD_LESION_DIAMETER_MM` (equivalent-sphere diameter,
    unless ``lesion_size_range`` says otherwise), 2-13 % of the lung, placed like the default's (anywhere in either
    lung), but each smaller than a default GGO, fainter and never consolidated; the patients,
    labels, sites and acquisitions are those of the default demo with the same seed. With a size range, every lesion is placed on the scan's own grid so that its *mask* has a
    volume inside the range, is one connected piece, lies in the lung and touches no other lesion (so each connected
    component of the written lesion mask is one lesion).

    Truth (``masks``): into ``truth_dir`` (default: ``<out>_truth`` beside ``out``, outside the DICOM tree so that
    ``aamct manifest build --dicom-root <out>`` does not meet NIfTI files) go ``masks/<series>_lesion.nii.gz`` and
    ``masks/<series>_lung.nii.gz`` (uint8 0/1 on the series' own grid: same shape, spacing, origin and direction as
    the series reads through :mod:`pipeline.data.reader`), ``truth.csv`` (one row per scan: label, lesion volume
    in ml from the mask, number of lesions, mask paths), ``lesions.csv`` (one row per lesion: its own mask volume,
    equivalent diameter, centre) and ``generator.json`` (the settings that made the cohort).

    Args:
        out: the output folder (created if missing).
        cases: number of scans, 1..9999.
        size: in-plane matrix, 32..1024 (64 trains in minutes on a CPU; 512 is the acquired geometry).
        seed: seed of everything random (0 .. 2**32 - 1).
        difficulty: ``default`` or ``hard``.
        lesion_size_range: ``(min, max)`` size of every lesion, in ``lesion_size_unit``.
        lesion_size_unit: ``mm`` (equivalent-sphere diameter) or ``ml``.
        masks: write the truth folder.
        truth_dir: where the truth goes (implies ``masks``).

    Returns:
        The :class:`DemoCohort` with one :class:`DemoCase` per scan.

    Raises:
        UserError: for a bad ``cases``/``size``/``seed``/difficulty/size range, a range no lesion fits at this
            ``size``, or an ``out``/``truth_dir`` that is a file or a non-empty foreign folder.
    """
    if isinstance(cases, bool) or not isinstance(cases, int) or not 1 <= cases <= _MAX_CASES:
        raise UserError(f"--cases must be an integer from 1 to {_MAX_CASES}, got {cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UserError(f"--seed must be an integer from 0 to 2**32 - 1, got {seed!r}")
    if difficulty not in DIFFICULTIES:
        raise UserError(f"--difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    geometry = demo_geometry(size)
    lesion_spec = None
    if lesion_size_range is not None:
        if len(lesion_size_range) != 2:
            raise UserError(f"--lesion-size-range needs MIN MAX, got {lesion_size_range!r}")
        volume_range = lesion_volume_range_ml(*lesion_size_range, unit=lesion_size_unit)
        lesion_spec = _LesionSpec(difficulty=difficulty, volume_ml=volume_range)
    elif difficulty == "hard":
        lesion_spec = _LesionSpec(difficulty=difficulty, volume_ml=lesion_volume_range_ml(*HARD_LESION_DIAMETER_MM))
    root = Path(out)
    if truth_dir is not None or masks:
        truth_dir = Path(truth_dir) if truth_dir is not None else root.parent / f"{root.name}_truth"
        if truth_dir.resolve() == root.resolve() or root.resolve() in truth_dir.resolve().parents:
            raise UserError(f"{truth_dir}: the truth folder must lie outside the DICOM folder {root}")
    _prepare_output(root)
    if truth_dir is not None:
        _prepare_truth_dir(truth_dir)

    plans = _plan_cohort(cases=cases, size=size, seed=seed, geometry=geometry, lesion_spec=lesion_spec)
    written: list[DemoCase] = []
    truth_rows: list[dict] = []
    lesion_rows: list[dict] = []
    for plan in plans:
        volume = _render(plan)
        series_dir = root / _series_folder(plan.index)
        _write_series(series_dir, plan, volume, geometry)
        if truth_dir is not None:
            scan_row, rows = _write_truth_masks(truth_dir, plan, volume)
            truth_rows.append(scan_row)
            lesion_rows.extend(rows)
        lesion_voxels = int(volume.lesion_mask.sum())
        voxel_ml = float(np.prod(volume.spacing_mm)) / 1000.0
        written.append(
            DemoCase(
                index=plan.index,
                path=_series_folder(plan.index),
                series_dir=series_dir.resolve(),
                label=CLASS_NAMES[plan.label],
                site=plan.site,
                patient=plan.patient,
                study=plan.study,
                n_slices=plan.n_slices,
                pixel_spacing_mm=volume.spacing_mm[0],
                slice_spacing_mm=volume.spacing_mm[2],
                severity=plan.severity,
                n_lesions=sum(lesion.kind == "ggo" for lesion in plan.lesions),
                lesion_voxels=lesion_voxels,
                lesion_volume_ml=round(lesion_voxels * voxel_ml, 2),
                _plan=plan,
            )
        )
        logger.debug("wrote %s (%s, %d slices)", series_dir, CLASS_NAMES[plan.label], plan.n_slices)

    labels = pd.DataFrame(
        {"path": [c.path for c in written], "label": [c.label for c in written], "site": [c.site for c in written]}
    )
    labels_csv = write_csv_atomic(root / "labels.csv", labels)
    volume_range = lesion_spec.volume_ml if lesion_spec is not None else None
    if truth_dir is not None:
        write_csv_atomic(truth_dir / "lesions.csv", pd.DataFrame(lesion_rows, columns=_LESION_COLUMNS))
        write_json_atomic(
            truth_dir / "generator.json",
            {
                "generator": "aamct demo-data",
                "cohort": str(root.resolve()),
                "cases": cases,
                "size": size,
                "seed": seed,
                "difficulty": difficulty,
                "lesion_volume_range_ml": list(volume_range) if volume_range else None,
                "lesion_diameter_range_mm": [_diameter_mm(v) for v in volume_range] if volume_range else None,
            },
        )
        write_csv_atomic(truth_dir / "truth.csv", pd.DataFrame(truth_rows, columns=_TRUTH_COLUMNS))
    return DemoCohort(
        root=root.resolve(),
        labels_csv=labels_csv.resolve(),
        cases=written,
        size=size,
        seed=seed,
        geometry=geometry,
        difficulty=difficulty,
        lesion_volume_range_ml=volume_range,
        truth_dir=truth_dir.resolve() if truth_dir is not None else None,
    )


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
        found = _lesion_distance(lesion, coords.x, coords.y, coords.z, coords.grid, coords.shape)
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


# --------------------------------------------------------------------------------------------------------------------
# planning: who is who, which label, which site, which lesions


def _stream(seed: int, *keys: int) -> np.random.Generator:
    """An independent random stream per (seed, purpose, index), so one scan's draws never shift another's."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _plan_cohort(
    *, cases: int, size: int, seed: int, geometry: DemoGeometry, lesion_spec: _LesionSpec | None = None
) -> list[_ScanPlan]:
    rng = _stream(seed, 0)
    # A few patients (about one scan in eight) get a follow-up study.
    n_follow_ups = 0 if cases < 4 else max(1, round(cases * 0.12))
    n_patients = cases - n_follow_ups
    n_positive = n_patients // 2 + int(n_patients % 2 and rng.random() < 0.5)
    patient_labels = rng.permutation(np.array([1] * n_positive + [0] * (n_patients - n_positive)))
    # Sites round-robin within each label, so every site (and any held-out site) has both classes.
    patient_sites: dict[int, str] = {}
    for label in (0, 1):
        members = np.flatnonzero(patient_labels == label)
        offset = int(rng.integers(len(SITES)))
        for rank, patient in enumerate(members):
            patient_sites[int(patient)] = SITES[(rank + offset) % len(SITES)]
    with_follow_up = set(rng.choice(n_patients, size=n_follow_ups, replace=False).tolist())

    plans: list[_ScanPlan] = []
    for patient in range(n_patients):
        anatomy = _draw_anatomy(_stream(seed, 1, patient))
        baseline_date = dt.date(2020, 3, 1) + dt.timedelta(days=int(rng.integers(0, 300)))
        follow_up_date = baseline_date + dt.timedelta(days=int(rng.integers(14, 60)))
        for study, date in enumerate([baseline_date, follow_up_date][: 1 + (patient in with_follow_up)], start=1):
            index = len(plans) + 1
            plans.append(
                _plan_scan(
                    _stream(seed, 2, index),
                    index=index,
                    patient=patient + 1,
                    study=study,
                    label=int(patient_labels[patient]),
                    site=patient_sites[patient],
                    size=size,
                    seed=seed,
                    geometry=geometry,
                    anatomy=anatomy,
                    study_date=date.strftime("%Y%m%d"),
                    lesion_spec=lesion_spec,
                )
            )
    return plans


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


def _plan_scan(
    rng: np.random.Generator,
    *,
    index: int,
    patient: int,
    study: int,
    label: int,
    site: str,
    size: int,
    seed: int,
    geometry: DemoGeometry,
    anatomy: _Anatomy,
    study_date: str,
    lesion_spec: _LesionSpec | None = None,
) -> _ScanPlan:
    # one uniform draw whatever the size, so the rest of this stream (and thus the lesions) is the same at every size
    drawn_slices = geometry.min_slices + int(rng.random() * (geometry.max_slices - geometry.min_slices + 1))
    lung_scale = float(rng.uniform(0.96, 1.04))
    body_scale = float(rng.uniform(0.97, 1.03))
    body_offset = (float(rng.normal(0, 6)), float(rng.normal(0, 6)))
    top_margin = float(rng.uniform(5, 40))
    # A chest CT covers both lungs: enough slices from above the apex to below the costophrenic recesses.
    lung_length = (anatomy.lung_apex - anatomy.lung_base) * lung_scale
    needed = int(math.ceil((lung_length + top_margin + 5.0) / geometry.slice_spacing_mm)) + 1
    n_slices = min(max(drawn_slices, needed), geometry.max_slices)

    thorax = _Thorax(anatomy, lung_scale=lung_scale, body_scale=body_scale)
    severity = "none"
    lesions: list[_Lesion] = []
    if label == 1:
        if lesion_spec is None or lesion_spec.difficulty == "default":
            severity = str(rng.choice(list(_SEVERITIES), p=[0.2, 0.4, 0.4]))
        else:
            severity = lesion_spec.difficulty
        if lesion_spec is None:
            lesions.extend(_draw_covid_lesions(rng, severity, thorax))
    for _ in range(int(rng.integers(0, 3))):  # benign-looking solid nodules in both classes
        lesions.append(_draw_lesion(rng, thorax, kind="nodule", radius=float(rng.uniform(2.5, 5.0))))
    seconds = int(rng.integers(8 * 3600, 18 * 3600))
    plan = _ScanPlan(
        index=index,
        patient=patient,
        study=study,
        label=label,
        site=site,
        size=size,
        seed=seed,
        n_slices=n_slices,
        anatomy=anatomy,
        body_offset=body_offset,
        body_scale=body_scale,
        lung_scale=lung_scale,
        carina_z=float(rng.uniform(-250, -150)),
        top_margin=top_margin,
        lung_hu=float(rng.uniform(-870, -830)),
        dependent_gradient_hu=float(rng.uniform(20, 60)),
        vessel_hu=float(rng.uniform(30, 50)),
        severity=severity,
        lesions=tuple(lesions),
        study_date=study_date,
        study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
    )
    if label == 1 and lesion_spec is not None:
        # sized lesions come from their own stream (key 4), placed on this scan's grid: see _place_sized_lesions
        sized = _place_sized_lesions(_stream(seed, 4, index), plan, lesion_spec)
        plan = dataclasses.replace(plan, lesions=sized + plan.lesions)
    return plan


def _place_sized_lesions(rng: np.random.Generator, plan: _ScanPlan, spec: _LesionSpec) -> tuple[_Lesion, ...]:
    """Ground-glass opacities whose rendered masks have a volume inside ``spec``'s range (rejection sampling).

    Each candidate is rendered on the scan's own voxel grid exactly as :func:`_render` will render it, and kept only
    if its mask (``distance < 1``) has a volume within the range, is one connected piece (26-neighbourhood), lies
    entirely in the lung (so the lung clipping of the mask leaves it unchanged) and keeps a one-voxel gap to the
    lesions already placed (so every lesion is its own connected component of the written mask). No consolidation
    cores: the mask of a lesion is the GGO itself.

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
    lesions: list[_Lesion] = []
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
            found = _lesion_distance(lesion, x, y, z, grid, shape)
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


def _draw_covid_lesions(rng: np.random.Generator, severity: str, thorax: _Thorax) -> list[_Lesion]:
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
) -> _Lesion:
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
    return _Lesion(
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


# --------------------------------------------------------------------------------------------------------------------
# anatomy helpers (patient coordinates: x to the patient's left, y to the back, z up, relative to body centre/carina)


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


def _paint(volume: np.ndarray, mask: np.ndarray, hu: float | np.ndarray) -> None:
    """Blend ``hu`` into ``volume`` with weight ``mask`` (painter's algorithm, in place)."""
    volume += mask * (hu - volume)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...], scale_mm: float):
    """Zero-mean, unit-std low-frequency texture: coarse white noise (one value per ``scale_mm``) linearly upsampled."""
    coarse_shape = tuple(max(2, int(math.ceil(n * s / scale_mm)) + 1) for n, s in zip(shape, spacing, strict=True))
    coarse = rng.standard_normal(coarse_shape).astype(np.float32)
    field = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse_shape, strict=True)], order=1)
    field = field[tuple(slice(0, n) for n in shape)]
    return (field - field.mean()) / max(float(field.std()), 1e-6)


# --------------------------------------------------------------------------------------------------------------------
# rendering


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


@dataclass(frozen=True)
class _Grid:
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
    grid: _Grid


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
    grid = _Grid(
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
    _paint(volume, np.broadcast_to(table, shape), 80.0)

    _paint(volume, _inside_ellipse(x, y, 0, 0, a_body, b_body, edge) * np.ones_like(z), anatomy.fat_hu)
    _paint(volume, _inside_ellipse(x, y, 0, 0, a_in, b_in, edge) * np.ones_like(z), anatomy.soft_tissue_hu)

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
    _paint(parenchyma, vessels, plan.vessel_hu)
    for lesion in by_kind["consolidation"]:  # consolidation hides the vessels, so it goes on top
        _render_lesion(parenchyma, lesion_mask, lesion, x, y, z, grid)
    for lesion in by_kind["nodule"]:
        _render_lesion(parenchyma, None, lesion, x, y, z, grid)
    _paint(volume, lung, parenchyma)
    lung_mask = lung > 0.5
    lesion_mask &= lung_mask
    del parenchyma, vessels

    _paint(volume, mediastinum * (1 - heart), anatomy.soft_tissue_hu - 5.0)
    _paint(volume, heart, 40.0)
    _paint(volume, aorta, 42.0)

    # airways: trachea above the carina, main bronchi diverging below it
    trachea = _inside_ellipse(x, y, 0.0, 0.1 * b_in, 8.0, 8.0, edge) * (z > 0.0)
    _paint(volume, trachea, _AIR_HU)
    bronchus_x = 8.0 + 1.2 * np.clip(-z, 0.0, None)
    for side in (-1.0, 1.0):
        bronchus = _inside_ellipse(x, y, side * bronchus_x, 0.1 * b_in, 6.0, 6.0, edge) * ((z <= 0.0) & (z > -35.0))
        _paint(volume, bronchus, _AIR_HU)

    # spine: vertebral body (cancellous with cortex, discs every ~28 mm), spinal canal inside a bony arch
    disc = (np.mod(z / 28.0 + anatomy.disc_phase, 1.0) < 0.2).astype(np.float32)
    body = _inside_ellipse(x, y, 0, vertebra_y, vertebra_r, vertebra_r, edge) * np.ones_like(z)
    marrow = _inside_ellipse(x, y, 0, vertebra_y, vertebra_r - 2.5, vertebra_r - 2.5, edge)
    _paint(volume, body, 650.0 * (1 - disc) + 90.0 * disc)
    _paint(volume, marrow * (1 - disc), 260.0)
    _paint(volume, _inside_ellipse(x, y, 0, canal_y, 14.0, 14.0, edge) * np.ones_like(z), 480.0)
    _paint(volume, _inside_ellipse(x, y, 0, canal_y, 8.0, 8.0, edge) * np.ones_like(z), 20.0)

    # ribs: slanted arcs in the chest wall (lower anteriorly), absent at the spine and the sternum
    eta = np.sqrt((x / a_in) ** 2 + (y / b_in) ** 2)
    theta = np.arctan2(x, y)  # 0 at the back, +-pi at the front
    in_wall = (eta > 0.87) & (eta < 0.95) & (np.abs(theta) > 0.25) & (np.abs(theta) < 2.6)
    rib_z = (z + 22.0 * (1 - np.cos(theta))) / anatomy.rib_pitch + anatomy.rib_phase
    lung_span = (z > anatomy.lung_base - 20.0) & (z < anatomy.lung_apex + 10.0)
    ribs = in_wall & (np.mod(rib_z, 1.0) < 10.0 / anatomy.rib_pitch) & lung_span
    _paint(volume, ribs.astype(np.float32), 550.0)
    sternum_z = (z > anatomy.lung_base + 30.0) & (z < anatomy.lung_apex - 10.0)
    _paint(volume, _inside_ellipse(x, y, 0, -0.9 * b_in, 16.0, 7.0, edge) * sternum_z, 380.0)

    volume += _scanner_noise(rng, shape, protocol)
    hu = np.clip(np.rint(volume), _HU_MIN, _HU_MAX).astype(np.float32)
    return SyntheticCT(
        hu=hu,
        lesion_mask=lesion_mask,
        lung_mask=lung_mask,
        spacing_mm=(pixel, pixel, dz),
        origin_mm=(origin_xy, origin_xy, z_bottom),
    )


def _render_lesion(parenchyma, lesion_mask, lesion: _Lesion, x, y, z, grid: _Grid) -> None:
    """Blend one blobby, soft-edged ellipsoid into the parenchyma, only inside its bounding box (fast at 512)."""
    found = _lesion_distance(lesion, x, y, z, grid, parenchyma.shape)
    if found is None:
        return
    box, distance = found
    alpha = (lesion.opacity * 0.5 * (1.0 - np.tanh((distance - 1.0) / lesion.edge))).astype(np.float32)
    _paint(parenchyma[box], alpha, lesion.target_hu)
    if lesion_mask is not None:
        lesion_mask[box] |= distance < 1.0


def _lesion_distance(lesion: _Lesion, x, y, z, grid: _Grid, shape) -> tuple[tuple[slice, ...], np.ndarray] | None:
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


def _render_vessels(anatomy: _Anatomy, lung_axes, plan: _ScanPlan, shape, grid: _Grid) -> np.ndarray:
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


def _scanner_noise(rng: np.random.Generator, shape: tuple[int, ...], protocol: _SiteProtocol) -> np.ndarray:
    """Gaussian noise correlated in-plane (reconstruction-kernel grain), scaled to the site's sigma in HU."""
    white = rng.standard_normal(shape, dtype=np.float32)
    grain = protocol.noise_grain_px
    noise = ndimage.gaussian_filter(white, (0.0, grain, grain), truncate=3.0)
    return noise * np.float32(protocol.noise_sigma_hu / max(float(noise.std()), 1e-6))


# --------------------------------------------------------------------------------------------------------------------
# writing


def _series_folder(index: int) -> str:
    return f"{_SCAN_PREFIX}{index:04d}"


def _prepare_output(root: Path) -> None:
    """Refuse a file or a foreign non-empty folder; clear the scans of a previous demo cohort in the same folder."""
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: --out must be a folder, but a file has that name")
    root.mkdir(parents=True, exist_ok=True)
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        return
    labels_csv = root / "labels.csv"
    if not labels_csv.is_file():
        raise UserError(f"{root}: folder is not empty and holds no demo cohort (no labels.csv); choose an empty --out")
    try:
        previous = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)["path"].tolist()
    except (KeyError, ValueError, pd.errors.ParserError) as err:
        raise UserError(f"{labels_csv}: cannot read the previous demo labels ({err}); choose an empty --out") from None
    for rel in previous:
        folder = root / rel
        # only folders this module writes, never anything outside the cohort root
        if folder.name.startswith(_SCAN_PREFIX) and folder.parent == root and folder.is_dir():
            shutil.rmtree(folder)


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


def _write_series(series_dir: Path, plan: _ScanPlan, volume: SyntheticCT, geometry: DemoGeometry) -> None:
    """Write one DICOM file per slice into a temporary folder, then rename it into place."""
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{series_dir.name}.", dir=series_dir.parent))
    try:
        stored = (volume.hu - _RESCALE_INTERCEPT).astype(np.int16)
        uid = _uid_factory(plan)
        n_slices = plan.n_slices
        # one dataset per series, only the per-slice elements change (building 30 elements per slice is the cost)
        dataset = _series_dataset(plan, volume, geometry, uid)
        for instance in range(1, n_slices + 1):
            k = n_slices - instance  # instance 1 is the most superior slice, as scanners number a head-first scan
            sop_uid = uid(f"series-{plan.index}", f"instance-{instance}")
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = sop_uid
            dataset.InstanceNumber = instance
            z = _ds(volume.origin_mm[2] + k * volume.spacing_mm[2])
            dataset.ImagePositionPatient = [_ds(volume.origin_mm[0]), _ds(volume.origin_mm[1]), z]
            dataset.SliceLocation = z
            dataset.PixelData = np.ascontiguousarray(stored[k], dtype="<i2").tobytes()
            dataset.save_as(tmp_dir / f"slice-{instance:03d}.dcm", enforce_file_format=True)
        if series_dir.exists():
            shutil.rmtree(series_dir)
        os.replace(tmp_dir, series_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)


def _uid_factory(plan: _ScanPlan):
    def uid(*parts: object) -> str:
        # separators keep ("1", "23") and ("12", "3") apart; generate_uid joins its sources without one
        return generate_uid(
            entropy_srcs=[f"{_UID_NAMESPACE}|seed={plan.seed}|size={plan.size}|", *(f"{p}|" for p in parts)]
        )

    return uid


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for a millimetre value."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _series_dataset(plan: _ScanPlan, volume: SyntheticCT, geometry: DemoGeometry, uid) -> FileDataset:
    """The elements shared by every slice of a series (the per-slice ones are set by :func:`_write_series`)."""
    patient_key, study_key = f"patient-{plan.patient}", f"study-{plan.patient}-{plan.study}"
    series_key = f"series-{plan.index}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = plan.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = plan.study_time
    ds.AccessionNumber = f"DEMOACC{plan.patient:04d}{plan.study}"
    ds.Modality = "CT"
    ds.Manufacturer = "aamct demo"
    ds.ManufacturerModelName = "synthetic chest phantom"
    ds.InstitutionName = plan.site
    ds.StationName = _SITE_PROTOCOLS[plan.site].station
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST (synthetic demo)"
    ds.SeriesDescription = f"Chest {geometry.slice_spacing_mm} mm (synthetic demo)"
    ds.ImageComments = "synthetic demo image generated by aamct; not patient data; PHI fields are fake"
    # Obviously fake PHI on purpose: the pipeline must strip it and never write it anywhere.
    ds.PatientName = f"Demopatient^Case{plan.patient:04d}"
    ds.PatientID = f"DEMO-{plan.patient:04d}"
    ds.PatientBirthDate = plan.anatomy.birth_date
    ds.PatientSex = plan.anatomy.sex
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = _ds(geometry.slice_spacing_mm)
    ds.SpacingBetweenSlices = _ds(geometry.slice_spacing_mm)
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uid(patient_key, study_key)
    ds.SeriesInstanceUID = uid(series_key)
    ds.StudyID = str(plan.study)
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uid(series_key, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = volume.hu.shape[1:]
    ds.PixelSpacing = [_ds(volume.spacing_mm[1]), _ds(volume.spacing_mm[0])]  # row spacing, column spacing
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = str(_RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.BurnedInAnnotation = "NO"
    return ds
