"""The manifest CSV and its rejections CSV: column names, case-id rules, image-path resolution, and the reader.

A manifest has one row per accepted case (``aamct manifest build`` writes it, ``aamct manifest split`` fills
``split`` / ``fold``)::

    case_id, patient_id, image, label, site, split, fold [, n_slices, spacing_mm, source, ...]

``image`` is a DICOM series folder or a NIfTI file, relative to the manifest's folder or absolute
(:func:`resolve_image`). Case ids are plain pseudonymous ids (:data:`CASE_ID_PATTERN`): they become file names of
per-case outputs, so they may not hold separators. Beside it, ``<stem>.rejections.csv`` (:func:`rejections_path_for`)
lists every rejected series or file with its one-line reason (:data:`REJECTION_COLUMNS`).

:func:`read_manifest` is the reader of every stage that takes a manifest (``aamct evaluate-cohort --manifest``, the
inference bundle); :mod:`pipeline.data.manifest` and :mod:`pipeline.data.splits` write these columns.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.errors import UserError

__all__ = [
    "CARRIED_COLUMNS",
    "CASE_ID_PATTERN",
    "MANIFEST_COLUMNS",
    "REJECTION_COLUMNS",
    "REQUIRED_COLUMNS",
    "ManifestCase",
    "check_case_id",
    "check_unique_case_ids",
    "path_case_id",
    "read_manifest",
    "read_rejections",
    "rejections_path_for",
    "resolve_image",
]

#: the manifest contract (ARCHITECTURE.md); the builder appends ``n_slices, spacing_mm, source``
MANIFEST_COLUMNS: tuple[str, ...] = ("case_id", "patient_id", "image", "label", "site", "split", "fold")
#: columns a manifest must have for scoring (the other contract columns are optional there)
REQUIRED_COLUMNS: tuple[str, ...] = ("case_id", "image")
#: optional manifest columns carried through to per-case outputs (the evaluation report uses them)
CARRIED_COLUMNS: tuple[str, ...] = ("label", "site", "split", "fold")
#: columns of ``<stem>.rejections.csv``: one row per rejected series or file
REJECTION_COLUMNS: tuple[str, ...] = ("path", "series_uid", "reason", "n_files")
#: a case id: letters, digits and ``._-``, starting with a letter or digit, at most 128 characters
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True, kw_only=True)
class ManifestCase:
    """One manifest row, as the scoring stages use it.

    Attributes:
        case_id: pseudonymous id (also the file stem of its outputs).
        image: DICOM series folder or NIfTI file (resolved: absolute, or relative to the working directory).
        label: class name or index as in the manifest, empty when unknown.
        site: acquiring site, may be empty.
        split: manifest split, may be empty.
        fold: manifest fold, may be empty.
    """

    case_id: str
    image: Path
    label: str = ""
    site: str = ""
    split: str = ""
    fold: str = ""


def rejections_path_for(manifest_path: str | os.PathLike) -> Path:
    """``FILE.csv`` -> ``FILE.rejections.csv`` (beside it)."""
    path = Path(manifest_path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(f"{stem}.rejections.csv")


def resolve_image(value: str | os.PathLike, manifest_dir: str | os.PathLike) -> Path:
    """A manifest ``image`` value as a path: absolute as written, relative ones against the manifest's folder."""
    image = Path(str(value).strip()).expanduser()
    return image if image.is_absolute() else Path(manifest_dir) / image


def check_case_id(case_id: str, *, where: str) -> str:
    """``case_id`` stripped, or a one-line UserError naming ``where`` when it is not a plain id.

    Raises:
        UserError: an id with separators, spaces or other characters, or an empty one.
    """
    case_id = str(case_id).strip()
    if not CASE_ID_PATTERN.match(case_id):
        raise UserError(f"{where}: case_id {case_id!r} is not a plain id (letters, digits, ._-)")
    return case_id


def check_unique_case_ids(case_ids: Iterable[str], *, where: str) -> None:
    """One-line UserError naming ``where`` when an id repeats (outputs are keyed by case id)."""
    seen: set[str] = set()
    for case_id in case_ids:
        if case_id in seen:
            raise UserError(f"{where}: case_id {case_id!r} appears more than once")
        seen.add(case_id)


def path_case_id(relative: str | os.PathLike, *extra: str) -> str:
    """A pseudonymous case id for an image found by path (no manifest): ``case-`` + 10 hex digits of SHA-256.

    Folder and file names of hospital exports are often patient names or numbers, so they never become ids.

    Args:
        relative: the image path (relative to the searched folder, for ids that survive moving the folder).
        *extra: further identity, e.g. a SeriesInstanceUID for one of several series in one folder.
    """
    key = "|".join([Path(relative).as_posix(), *extra])
    return "case-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def read_manifest(manifest: str | os.PathLike, *, split: str | None = None) -> list[ManifestCase]:
    """The cases of a manifest CSV (``case_id, image`` required; ``label, site, split, fold`` optional).

    Args:
        manifest: the manifest; relative ``image`` paths are relative to its folder.
        split: keep only rows of this split (e.g. ``test``), compared without case.

    Returns:
        The cases in manifest order.

    Raises:
        UserError: missing file or column, a bad or duplicate ``case_id``, an empty ``image``, or no row left.
    """
    path = Path(manifest)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise UserError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    if split is not None:
        if "split" not in frame.columns:
            raise UserError(f"{path}: no 'split' column to select split {split!r} from")
        frame = frame[frame["split"].str.strip().str.lower() == split.strip().lower()]
        if frame.empty:
            raise UserError(f"{path}: no case in split {split!r}")
    cases = []
    for row_number, row in zip(frame.index + 2, frame.to_dict("records"), strict=True):
        where = f"{path}: row {row_number}"
        case_id = check_case_id(row["case_id"], where=where)
        if not str(row["image"]).strip():
            raise UserError(f"{where}: empty image path")
        cases.append(
            ManifestCase(
                case_id=case_id,
                image=resolve_image(row["image"], path.parent),
                **{column: str(row.get(column, "")).strip() for column in CARRIED_COLUMNS},
            )
        )
    if not cases:
        raise UserError(f"{path}: the manifest lists no case")
    check_unique_case_ids((case.case_id for case in cases), where=str(path))
    return cases


def read_rejections(rejections: str | os.PathLike) -> pd.DataFrame:
    """A rejections CSV as written by ``aamct manifest build`` (every column as text).

    Raises:
        UserError: a missing or unreadable file, or one without the :data:`REJECTION_COLUMNS`.
    """
    path = Path(rejections)
    if not path.is_file():
        raise UserError(f"{path}: rejections CSV not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise UserError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in REJECTION_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame
