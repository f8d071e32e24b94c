"""A last check before a bundle leaves the building: none of the cohort's patient identifiers is in it.

The exporter only copies aggregate numbers into a bundle, so PHI should never get there; this guard makes that a
checked property instead of an intention. It reads the identifying header fields of one file per DICOM series of
the training datalist (``PatientName``, ``PatientID``, ``PatientBirthDate`` and a few more), then searches every
staged file -- and every member of the zip-format files inside it (``model.pt`` and ``model.ts`` are zip archives)
-- for those values, case-insensitively. The values themselves are never printed or logged: a hit names the file
and the DICOM keyword only. Neither MONAI nor pydicom offers such a scan, hence this module.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PHI_KEYWORDS", "PhiHit", "collect_phi_values", "datalist_images", "find_phi", "phi_needles"]

logger = logging.getLogger(__name__)

#: DICOM keywords whose values must never appear in a shared bundle
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
)
#: shorter values (e.g. a one-letter name component) would match by chance in binary weights
_MIN_NEEDLE = 4
_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ""}


@dataclass(frozen=True)
class PhiHit:
    """One identifier found in a staged file.

    Attributes:
        file: path relative to the searched root (``models/model.ts!extra/metadata.json`` for a nested member).
        keyword: the DICOM keyword whose value was found (the value itself is not kept).
    """

    file: str
    keyword: str


def phi_needles(keyword: str, value: Any) -> set[str]:
    """Search strings for one header value: the whole value and its name components / date spellings.

    Args:
        keyword: DICOM keyword (``PatientName`` values are split at ``^`` and ``=``, dates also get ``YYYY-MM-DD``).
        value: the header value (``str``, ``PersonName`` or a multi-value).

    Returns:
        Lower-case strings of at least 4 characters.
    """
    values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    needles: set[str] = set()
    for item in values:
        text = str(item).strip()
        if not text:
            continue
        needles.add(text)
        if "Name" in keyword:
            for part in text.replace("=", "^").split("^"):
                needles.add(part.strip())
        if keyword.endswith("Date") and len(text) == 8 and text.isdigit():
            needles.add(f"{text[:4]}-{text[4:6]}-{text[6:]}")
    return {n.lower() for n in needles if len(n) >= _MIN_NEEDLE}


def _first_dicom_header(series_dir: Path):
    import pydicom

    for path in sorted(series_dir.iterdir()):
        if path.is_file() and path.suffix.lower() in _DICOM_SUFFIXES:
            try:
                return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(PHI_KEYWORDS))
            except Exception:  # not DICOM (a stray text file): try the next one
                continue
    return None


def collect_phi_values(images: Iterable[str | Path]) -> dict[str, set[str]]:
    """Identifier search strings from one header per DICOM series (NIfTI files carry no such fields).

    Args:
        images: series folders or files, e.g. the ``image`` entries of a datalist.

    Returns:
        ``{keyword: {needle, ...}}`` (lower case).
    """
    found: dict[str, set[str]] = {}
    for image in images:
        path = Path(image)
        header = None
        if path.is_dir():
            header = _first_dicom_header(path)
        elif path.is_file() and path.suffix.lower() in _DICOM_SUFFIXES:
            import pydicom

            try:
                header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(PHI_KEYWORDS))
            except Exception:
                header = None
        if header is None:
            continue
        for keyword in PHI_KEYWORDS:
            value = header.get(keyword)
            if value is not None:
                found.setdefault(keyword, set()).update(phi_needles(keyword, value))
    return {k: v for k, v in found.items() if v}


def datalist_images(datalist: Mapping[str, Any]) -> list[str]:
    """Every ``image`` path of every split of a MONAI datalist."""
    return [
        str(row["image"])
        for rows in datalist.values()
        if isinstance(rows, list)
        for row in rows
        if isinstance(row, Mapping) and row.get("image")
    ]


def _blobs(path: Path, relative: str) -> Iterable[tuple[str, bytes]]:
    data = path.read_bytes()
    yield relative, data
    if zipfile.is_zipfile(io.BytesIO(data)):
        # torch checkpoints and TorchScript files are zips; a deflated member would hide a value from a byte search
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    yield f"{relative}!{info.filename}", info.filename.encode() + b"\n" + archive.read(info)


def find_phi(root: str | Path, needles: Mapping[str, Sequence[str] | set[str]]) -> list[PhiHit]:
    """Search every file under ``root`` (names and content, nested zip members included) for the needles.

    Args:
        root: staged bundle folder.
        needles: ``{keyword: lower-case strings}`` from :func:`collect_phi_values`.

    Returns:
        One :class:`PhiHit` per (file, keyword) found; empty when clean.
    """
    root = Path(root)
    encoded = {kw: [n.encode("utf-8") for n in values] for kw, values in needles.items()}
    hits: list[PhiHit] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        for name, blob in _blobs(path, relative):
            haystack = name.lower().encode("utf-8") + b"\n" + blob.lower()
            for keyword, values in encoded.items():
                if any(value in haystack for value in values):
                    hits.append(PhiHit(name, keyword))
    return hits
