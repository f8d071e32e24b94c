"""Patient-level, label-stratified splits of a manifest: external hold-out, train/test and cross-validation folds.

``aamct manifest split FILE.csv`` fills the manifest's ``split`` and ``fold`` columns and writes the MONAI datalist
beside it (``FILE.datalist.json``, see :mod:`pipeline.data.datalist`).

Rules (also in ``data_manifests/README.md``):

1. Every case of a patient lands in the same split and, within ``train``, the same fold: scans of one person are
   correlated, so letting them straddle train and test would inflate every reported metric.
2. Optional external hold-out first: every case of one site (``external_site``) or ``external_count`` patients
   drawn stratified by label. A patient with cases both at the held-out site and elsewhere is an error, because
   it would sit in two splits.
3. The remaining patients are split train/test by :class:`sklearn.model_selection.StratifiedShuffleSplit` on
   patient-level labels, so the test share (default 0.3) is a share of *patients*.
4. The training cases get ``n_folds`` folds from :class:`sklearn.model_selection.StratifiedGroupKFold` with the
   patient as the group: folds are balanced in *case* labels (what validation metrics count) while keeping
   patients whole.

A patient's label, used only for the stratification in rules 2-3, is the most frequent class among its cases; a
tie goes to the higher class index (for ``negative``/``positive``: positive). Case labels are never changed.

Everything is deterministic for a seed and independent of the manifest's row order (patients and cases are sorted
by their pseudonymous ids before they are shuffled). scikit-learn supplies the splitters; this module only adds
the patient-level bookkeeping, the checks and the file writing, which neither MONAI nor scikit-learn provide.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit

from pipeline.contracts.datalist import datalist_beside
from pipeline.data.datalist import write_datalist
from pipeline.errors import UserError
from pipeline.io import write_csv_atomic

__all__ = [
    "REQUIRED_COLUMNS",
    "NEGATIVE_CLASS_NAMES",
    "SplitResult",
    "split_manifest",
    "infer_class_names",
]

logger = logging.getLogger(__name__)

#: columns a manifest must have before it can be split (``split`` / ``fold`` are added when absent)
REQUIRED_COLUMNS: tuple[str, ...] = ("case_id", "patient_id", "image", "label", "site")
#: class names (compared case-insensitively) that go first when the class list is inferred
NEGATIVE_CLASS_NAMES: frozenset[str] = frozenset(
    {"negative", "neg", "normal", "healthy", "control", "no", "false", "benign", "absent", "none"}
)

_INTEGER_LABEL = re.compile(r"^[+-]?\d+(\.0*)?$")


@dataclass(frozen=True)
class SplitResult:
    """What :func:`split_manifest` wrote.

    Attributes:
        manifest_path: the manifest rewritten with ``split`` and ``fold``.
        datalist_path: the datalist JSON written beside it.
        classes: class names; integer labels in the datalist index into this list.
        seed: the seed used.
        n_folds: number of folds over the training split.
        cases: ``{split: {class name: number of cases}}`` for ``train``, ``test`` and ``external``.
        patients: ``{split: number of patients}``.
        folds: ``{fold: {class name: number of cases}}`` over the training split.
        external_rule: how the external split was chosen, e.g. ``"site site-c"``, or None.
        missing_images: number of rows whose ``image`` path does not exist on this machine.
        mixed_label_patients: patients whose cases carry different labels (kept whole, stratified by majority).
    """

    manifest_path: Path
    datalist_path: Path
    classes: list[str]
    seed: int
    n_folds: int
    cases: dict[str, dict[str, int]]
    patients: dict[str, int]
    folds: dict[int, dict[str, int]]
    external_rule: str | None = None
    missing_images: int = 0
    mixed_label_patients: int = 0

    def summary(self) -> str:
        """A short human-readable report (no identifiers, only counts)."""

        def counts(per_class: dict[str, int]) -> str:
            return ", ".join(f"{name} {per_class.get(name, 0)}" for name in self.classes)

        lines = [f"split {self.manifest_path} (seed {self.seed}, {self.n_folds} folds, classes {self.classes})"]
        for split in ("train", "test", "external"):
            n_cases = sum(self.cases.get(split, {}).values())
            if split == "external" and n_cases == 0:
                continue
            rule = f" [{self.external_rule}]" if split == "external" and self.external_rule else ""
            lines.append(
                f"  {split:<9}{self.patients.get(split, 0):>5} patients {n_cases:>5} cases ({counts(self.cases.get(split, {}))}){rule}"
            )
        for fold, per_class in sorted(self.folds.items()):
            lines.append(f"  {f'fold {fold}':<9}{'':<15}{sum(per_class.values()):>5} cases ({counts(per_class)})")
        if self.mixed_label_patients:
            lines.append(f"  note: {self.mixed_label_patients} patient(s) have cases with different labels")
        if self.missing_images:
            lines.append(f"  warning: {self.missing_images} image path(s) do not exist on this machine")
        lines.append(f"  datalist: {self.datalist_path}")
        return "\n".join(lines)


def infer_class_names(labels: Sequence[str]) -> list[str]:
    """The class list implied by a manifest's (non-empty) label strings.

    Rule: if every label is an integer, the classes are ``["0", "1", ..., str(max)]`` so each integer is its own
    index. Otherwise the distinct names are sorted, with negative-like names (:data:`NEGATIVE_CLASS_NAMES`,
    compared case-insensitively) moved to the front: ``{"positive", "negative"}`` -> ``["negative", "positive"]``,
    ``{"covid", "normal", "pneumonia"}`` -> ``["normal", "covid", "pneumonia"]``.

    Args:
        labels: label strings as written in the manifest (empty strings are ignored).

    Returns:
        The class names; a label's integer value is its index in this list.

    Raises:
        UserError: if integer labels and names are mixed, an integer is negative, or two names differ only in case.
    """
    present = sorted({label.strip() for label in labels if label.strip()})
    if not present:
        return []
    integers = [label for label in present if _INTEGER_LABEL.match(label)]
    if integers and len(integers) == len(present):
        values = sorted({int(float(label)) for label in integers})
        if values[0] < 0:
            raise UserError(f"integer labels must be 0 or more, found {values[0]}")
        return [str(i) for i in range(values[-1] + 1)]
    if integers:
        raise UserError(
            f"labels mix integers ({', '.join(integers[:3])}) and names ({', '.join(sorted(set(present) - set(integers))[:3])});"
            " give the class list with --classes"
        )
    folded = Counter(label.casefold() for label in present)
    clashes = [label for label in present if folded[label.casefold()] > 1]
    if clashes:
        raise UserError(
            f"labels {', '.join(repr(c) for c in clashes)} differ only in upper/lower case; use one spelling"
        )
    negatives = [label for label in present if label.casefold() in NEGATIVE_CLASS_NAMES]
    return negatives + [label for label in present if label not in negatives]


def split_manifest(
    manifest: str | os.PathLike,
    *,
    external_site: str | None = None,
    external_count: int | None = None,
    test_fraction: float = 0.3,
    n_folds: int = 5,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    datalist_out: str | os.PathLike | None = None,
) -> SplitResult:
    """Split a manifest at patient level, rewrite it with ``split``/``fold`` and write its datalist JSON.

    Args:
        manifest: the manifest CSV (columns ``case_id, patient_id, image, label, site`` at least); rewritten
            atomically with ``split`` and ``fold`` filled in and every other column kept as it was.
        external_site: hold out every case of this site as ``external``.
        external_count: hold out this many patients (drawn stratified by label) as ``external``.
        test_fraction: share of the remaining patients that go to ``test``, in (0, 1).
        n_folds: cross-validation folds over the training split (at least 2).
        seed: seed of every random choice.
        class_names: the class list (index = integer label); inferred with :func:`infer_class_names` when None.
        datalist_out: datalist JSON to write; default ``<manifest stem>.datalist.json`` beside the manifest.

    Returns:
        A :class:`SplitResult` with the counts per split, fold and class.

    Raises:
        UserError: for a missing/unreadable manifest or missing columns, empty or duplicate ids, missing labels,
            labels outside ``class_names``, an unknown external site, a patient that would sit in two splits,
            or too few patients per class for the test split or the folds.
    """
    manifest = Path(manifest)
    _check_options(external_site, external_count, test_fraction, n_folds, seed)
    frame = _read_manifest(manifest)

    classes = list(class_names) if class_names else infer_class_names(frame["label"].tolist())
    if class_names is not None and len(set(classes)) != len(classes):
        raise UserError(f"class names must be distinct, got {classes}")
    label_index = _label_indices(frame, classes, manifest)
    if len(set(label_index.tolist())) < 2:
        raise UserError(
            f"{manifest}: all cases have the same label ({classes[label_index[0]]}); a split needs two classes"
        )

    # Patient table, sorted by pseudonymous id so the row order of the manifest does not change the split.
    patient_ids = np.array(sorted(set(frame["patient_id"])))
    patient_label, mixed = _patient_labels(frame, label_index, patient_ids)
    patient_split = dict.fromkeys(patient_ids.tolist(), "train")

    external_rule = None
    if external_site is not None:
        external_rule = f"site {external_site}"
        for patient in _external_by_site(frame, external_site, manifest):
            patient_split[patient] = "external"
    elif external_count is not None:
        external_rule = f"{external_count} patients"
        for patient in _external_by_count(patient_ids, patient_label, external_count, seed, classes):
            patient_split[patient] = "external"

    remaining = np.array([p for p in patient_ids if patient_split[p] == "train"])
    if remaining.size == 0:
        raise UserError(f"{manifest}: the external hold-out takes every patient; nothing is left to train on")
    remaining_labels = np.array([patient_label[p] for p in remaining])
    for patient in _stratified_holdout(remaining, remaining_labels, test_fraction, seed, classes, what="test split"):
        patient_split[patient] = "test"

    frame["split"] = frame["patient_id"].map(patient_split)
    fold_of_row = _assign_folds(frame, label_index, n_folds, seed, classes)
    frame["fold"] = ["" if fold is None else str(fold) for fold in fold_of_row]
    _check_patients_whole(frame)

    datalist_path = Path(datalist_out) if datalist_out is not None else datalist_beside(manifest)
    entries, missing = _datalist_entries(frame, label_index, manifest)
    write_csv_atomic(manifest, frame)
    write_datalist(
        datalist_path,
        classes=classes,
        manifest=manifest,
        seed=seed,
        n_folds=n_folds,
        test_fraction=test_fraction,
        external_site=external_site,
        external_count=external_count,
        training=entries["train"],
        test=entries["test"],
        external=entries["external"],
    )
    if missing:
        logger.warning("%d image path(s) in %s do not exist on this machine", missing, manifest)
    return _result(frame, label_index, classes, manifest, datalist_path, seed, n_folds, external_rule, missing, mixed)


def _check_options(
    external_site: str | None, external_count: int | None, test_fraction: float, n_folds: int, seed: int
) -> None:
    if external_site is not None and external_count is not None:
        raise UserError("give either --external-site or --external-count, not both")
    if external_site is not None and not str(external_site).strip():
        raise UserError("--external-site must name a site")
    if external_count is not None and external_count < 1:
        raise UserError(f"--external-count must be 1 or more, got {external_count}")
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    if n_folds < 2:
        raise UserError(f"--folds must be 2 or more, got {n_folds}")
    if not 0 <= seed < 2**32:
        raise UserError(f"--seed must be between 0 and 2**32 - 1, got {seed}")


def _read_manifest(manifest: Path) -> pd.DataFrame:
    if not manifest.is_file():
        raise UserError(f"{manifest}: manifest not found")
    try:
        # Every column as text: other columns must come back out exactly as they went in.
        frame = pd.read_csv(manifest, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise UserError(f"{manifest}: cannot read the manifest CSV ({' '.join(str(err).split())})") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise UserError(
            f"{manifest}: missing column(s) {', '.join(missing)}; a manifest needs {', '.join(REQUIRED_COLUMNS)}"
        )
    if frame.empty:
        raise UserError(f"{manifest}: the manifest has no rows")
    for column in ("case_id", "patient_id", "label", "image"):
        frame[column] = frame[column].str.strip()
    for column, what in (("case_id", "case id"), ("patient_id", "patient id"), ("image", "image path")):
        empty = frame.index[frame[column] == ""]
        if len(empty):
            raise UserError(f"{manifest}: line {empty[0] + 2} has an empty {what} ({len(empty)} row(s) in all)")
    duplicated = frame["case_id"][frame["case_id"].duplicated()]
    if len(duplicated):
        raise UserError(f"{manifest}: case id {duplicated.iloc[0]} appears more than once")
    unlabelled = frame.index[frame["label"] == ""]
    if len(unlabelled):
        shown = ", ".join(f"line {i + 2} ({frame.at[i, 'case_id']})" for i in unlabelled[:3])
        raise UserError(
            f"{manifest}: {len(unlabelled)} case(s) have no label, e.g. {shown}; label every case before splitting"
        )
    for column in ("split", "fold"):
        if column not in frame.columns:
            frame[column] = ""
    return frame


def _label_indices(frame: pd.DataFrame, classes: list[str], manifest: Path) -> np.ndarray:
    """Map each row's label (a class name, or an integer index) to its class index."""
    by_name = {name: index for index, name in enumerate(classes)}
    indices = np.empty(len(frame), dtype=np.int64)
    for row, label in enumerate(frame["label"]):
        if label in by_name:
            indices[row] = by_name[label]
        elif _INTEGER_LABEL.match(label) and 0 <= int(float(label)) < len(classes):
            indices[row] = int(float(label))
        else:
            raise UserError(
                f"{manifest}: line {row + 2} ({frame.at[row, 'case_id']}) has label {label!r}, "
                f"which is not one of the classes {', '.join(classes)} (or 0..{len(classes) - 1})"
            )
    return indices


def _patient_labels(
    frame: pd.DataFrame, label_index: np.ndarray, patient_ids: np.ndarray
) -> tuple[dict[str, int], int]:
    """Per patient: its most frequent case label, ties to the higher class index; also the number of mixed patients."""
    labels_of: dict[str, list[int]] = {p: [] for p in patient_ids.tolist()}
    for patient, label in zip(frame["patient_id"], label_index, strict=True):
        labels_of[patient].append(int(label))
    result: dict[str, int] = {}
    mixed = 0
    for patient, labels in labels_of.items():
        counts = Counter(labels)
        mixed += len(counts) > 1
        result[patient] = max(counts, key=lambda label, counts=counts: (counts[label], label))
    return result, mixed


def _external_by_site(frame: pd.DataFrame, site: str, manifest: Path) -> list[str]:
    sites = sorted(set(frame["site"]) - {""})
    if site not in sites:
        raise UserError(f"{manifest}: no case has site {site!r}; sites present: {', '.join(sites) or 'none'}")
    held = frame["site"] == site
    external_patients = set(frame.loc[held, "patient_id"])
    straddling = sorted(external_patients & set(frame.loc[~held, "patient_id"]))
    if straddling:
        other = sorted(set(frame.loc[frame["patient_id"].eq(straddling[0]) & ~held, "site"]))
        raise UserError(
            f"{manifest}: patient {straddling[0]} has cases at {site} and at {', '.join(repr(s) for s in other)}, so holding "
            f"out {site} would put it in two splits ({len(straddling)} such patient(s)); use --external-count or fix the sites"
        )
    return sorted(external_patients)


def _external_by_count(
    patient_ids: np.ndarray, patient_label: dict[str, int], count: int, seed: int, classes: list[str]
) -> list[str]:
    if count >= len(patient_ids):
        raise UserError(f"--external-count {count} leaves no patients for training (there are {len(patient_ids)})")
    labels = np.array([patient_label[p] for p in patient_ids])
    return _stratified_holdout(patient_ids, labels, count, seed, classes, what="external hold-out")


def _stratified_holdout(
    patient_ids: np.ndarray, labels: np.ndarray, size: float | int, seed: int, classes: list[str], *, what: str
) -> list[str]:
    """Draw ``size`` (a share or a count) of the patients, stratified by patient label."""
    present, counts = np.unique(labels, return_counts=True)
    if len(present) < 2:
        raise UserError(
            f"the patients left for the {what} all have class {classes[present[0]]}; a split needs two classes"
        )
    if counts.min() < 2:
        scarce = classes[present[counts.argmin()]]
        raise UserError(
            f"too few patients per class for the {what}: class {scarce!r} has {counts.min()} patient(s), needs at least 2"
        )
    n_drawn = int(np.ceil(size * len(patient_ids))) if isinstance(size, float) else int(size)
    if n_drawn < len(present) or len(patient_ids) - n_drawn < len(present):
        raise UserError(
            f"the {what} would take {n_drawn} of {len(patient_ids)} patients; stratifying {len(present)} classes needs at "
            f"least {len(present)} patients on each side"
        )
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=size, random_state=seed)
    _, held_out = next(splitter.split(np.zeros(len(patient_ids)), labels))
    return sorted(patient_ids[held_out].tolist())


def _assign_folds(
    frame: pd.DataFrame, label_index: np.ndarray, n_folds: int, seed: int, classes: list[str]
) -> list[int | None]:
    """Fold per row for training rows (None elsewhere): StratifiedGroupKFold over cases grouped by patient."""
    train_rows = np.flatnonzero(frame["split"].to_numpy() == "train")
    # sort by (patient, case) so that the folds do not depend on the manifest's row order
    order = sorted(train_rows, key=lambda row: (frame.at[row, "patient_id"], frame.at[row, "case_id"]))
    rows = np.array(order)
    groups = frame["patient_id"].to_numpy()[rows]
    labels = label_index[rows]
    for label in np.unique(labels):
        n_patients = len(set(groups[labels == label]))
        if n_patients < n_folds:
            raise UserError(
                f"too few patients per class for {n_folds} folds: class {classes[label]!r} has {n_patients} patient(s) in "
                f"the training split, needs at least {n_folds}; lower --folds or add cases"
            )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of_row: list[int | None] = [None] * len(frame)
    for fold, (_, val_positions) in enumerate(splitter.split(np.zeros(len(rows)), labels, groups)):
        for position in val_positions:
            fold_of_row[rows[position]] = fold
    lacking = [
        f for f in range(n_folds) if len({label_index[r] for r in rows if fold_of_row[r] == f}) < len(np.unique(labels))
    ]
    if lacking:
        logger.warning("fold(s) %s lack a class in validation; consider fewer folds", lacking)
    return fold_of_row


def _check_patients_whole(frame: pd.DataFrame) -> None:
    """Invariant: one split and one fold per patient. A failure here is a bug, not a user mistake."""
    per_patient = frame.groupby("patient_id")[["split", "fold"]].nunique()
    broken = per_patient[(per_patient["split"] > 1) | (per_patient["fold"] > 1)]
    if len(broken):
        raise RuntimeError(f"internal error: patient {broken.index[0]} was split across splits or folds")


def _datalist_entries(
    frame: pd.DataFrame, label_index: np.ndarray, manifest: Path
) -> tuple[dict[str, list[dict]], int]:
    base = manifest.resolve().parent
    entries: dict[str, list[dict]] = {"train": [], "test": [], "external": []}
    missing = 0
    for row in range(len(frame)):
        image = frame.at[row, "image"]
        resolved = image if os.path.isabs(image) else os.path.normpath(base / image)
        missing += not os.path.exists(resolved)
        entry = {
            "image": resolved,
            "label": int(label_index[row]),
            "case_id": frame.at[row, "case_id"],
            "patient_id": frame.at[row, "patient_id"],
            "site": frame.at[row, "site"],
        }
        if "scope" in frame.columns and str(frame.at[row, "scope"]).strip():
            entry["scope"] = str(frame.at[row, "scope"]).strip()  # the manifest builder's verdict, for pre-flight
        split = frame.at[row, "split"]
        if split == "train":
            entry["fold"] = int(frame.at[row, "fold"])
        entries[split].append(entry)
    return entries, missing


def _result(
    frame: pd.DataFrame,
    label_index: np.ndarray,
    classes: list[str],
    manifest: Path,
    datalist_path: Path,
    seed: int,
    n_folds: int,
    external_rule: str | None,
    missing: int,
    mixed: int,
) -> SplitResult:
    names = np.array(classes, dtype=object)[label_index]
    cases: dict[str, dict[str, int]] = {}
    patients: dict[str, int] = {}
    for split in ("train", "test", "external"):
        in_split = frame["split"].to_numpy() == split
        cases[split] = {name: int(np.sum(names[in_split] == name)) for name in classes}
        patients[split] = int(frame.loc[in_split, "patient_id"].nunique())
    folds: dict[int, dict[str, int]] = {}
    for fold in range(n_folds):
        in_fold = frame["fold"].to_numpy() == str(fold)
        folds[fold] = {name: int(np.sum(names[in_fold] == name)) for name in classes}
    return SplitResult(
        manifest_path=manifest,
        datalist_path=datalist_path,
        classes=classes,
        seed=seed,
        n_folds=n_folds,
        cases=cases,
        patients=patients,
        folds=folds,
        external_rule=external_rule,
        missing_images=missing,
        mixed_label_patients=mixed,
    )
