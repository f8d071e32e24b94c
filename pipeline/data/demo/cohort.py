"""The demo cohort: who is who, which label, which site, which lesions; and writing it all to disk.

Cohort design: about 50/50 labels at patient level, three sites (``site-a``, ``site-b``, ``site-c``, differing in
field of view, noise level and noise grain, so an external-site hold-out shows a small domain shift), and a few
patients with a follow-up study (same patient, new study, same label) so patient-level splitting matters. Each
patient carries obviously fake PHI (``Demopatient^Case0007``, ``DEMO-0007``, a birth date) that the pipeline must strip.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.demo.anatomy import _draw_anatomy, _Thorax
from pipeline.data.demo.dicom_writer import _write_series
from pipeline.data.demo.lesions import (
    _SEVERITIES,
    DIFFICULTIES,
    HARD_LESION_DIAMETER_MM,
    Lesion,
    LesionSpec,
    _diameter_mm,
    _draw_covid_lesions,
    _draw_lesion,
    _place_sized_lesions,
    lesion_volume_range_ml,
)
from pipeline.data.demo.plan import _SCAN_PREFIX, CLASS_NAMES, _Anatomy, _ScanPlan, _series_folder, _stream
from pipeline.data.demo.render import SyntheticCT, _render
from pipeline.data.demo.scanner import SITES, DemoGeometry, demo_geometry
from pipeline.data.demo.truth import _LESION_COLUMNS, _TRUTH_COLUMNS, _prepare_truth_dir, _write_truth_masks
from pipeline.errors import UserError
from pipeline.io import write_csv_atomic, write_json_atomic

__all__ = ["DemoCase", "DemoCohort", "write_demo_cohort"]

logger = logging.getLogger(__name__)


_MAX_CASES = 9999


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

    Difficulty: ``default`` is the learnable demo described in :mod:`~pipeline.data.demo.lesions` (its files are
    unchanged by the options below unless a size range is given). ``hard`` gives each positive 4-7 smaller, fainter
    ground-glass opacities (-450 to -330 HU, no consolidation) of :data:`HARD_LESION_DIAMETER_MM` (equivalent-sphere
    diameter, unless ``lesion_size_range`` says otherwise), 2-13 % of the lung, placed like the default's (anywhere in
    either lung), but each smaller than a default GGO, fainter and never consolidated; the patients, labels, sites and
    acquisitions are those of the default demo with the same seed. With a size range, every lesion is placed on the
    scan's own grid so that its *mask* has a volume inside the range, is one connected piece, lies in the lung and
    touches no other lesion (so each connected component of the written lesion mask is one lesion).

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
        lesion_spec = LesionSpec(difficulty=difficulty, volume_ml=volume_range)
    elif difficulty == "hard":
        lesion_spec = LesionSpec(difficulty=difficulty, volume_ml=lesion_volume_range_ml(*HARD_LESION_DIAMETER_MM))
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
        # only folders this package writes, never anything outside the cohort root
        if folder.name.startswith(_SCAN_PREFIX) and folder.parent == root and folder.is_dir():
            shutil.rmtree(folder)


def _plan_cohort(
    *, cases: int, size: int, seed: int, geometry: DemoGeometry, lesion_spec: LesionSpec | None = None
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
    lesion_spec: LesionSpec | None = None,
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
    lesions: list[Lesion] = []
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
