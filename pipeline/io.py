"""Atomic file writes: every output is written to a temporary file beside its target, then renamed.

A killed run therefore never leaves a half-written file under the final name.

Every CSV the project writes goes through :func:`write_csv_atomic`, which neutralises spreadsheet formulas
(:func:`neutralise_csv_cell`): a manifest's site, label or case text comes from whoever filled it in, and a cell such
as ``=HYPERLINK("http://...")`` would run as a formula in the spreadsheet a collaborator opens the table with.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CSV_FORMULA_TRIGGERS",
    "atomic_path",
    "neutralise_csv_cell",
    "neutralise_csv_frame",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

#: first characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection"): ``= + - @``, and tab
#: and carriage return, which some spreadsheets skip before looking for one
CSV_FORMULA_TRIGGERS: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
#: a plain number (``-0.25``, ``+3``, ``-1e-05``): starts like a formula but is read as the number it is
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``, on failure remove it.

    Args:
        target: final path of the file.
        suffix: suffix of the temporary file (defaults to the target's own suffixes, so writers that infer the
            format from the name, e.g. ``nibabel.save`` with ``.nii.gz``, keep working).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file readable by its owner only; a result is an ordinary file (a collaborator, a PACS
        # import job or a web server reads it), so give it the mode open() would have given under the umask
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask (reading it means setting it, so under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json_atomic(target: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``target`` atomically (NaN is written as ``null``)."""
    text = json.dumps(_nan_to_none(obj), indent=indent, sort_keys=False, default=_json_default) + "\n"
    return write_text_atomic(target, text)


def neutralise_csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula, prefixed with ``'`` (shown as text); anything else as is.

    A cell is neutralised when it starts with one of :data:`CSV_FORMULA_TRIGGERS` and is not a plain number:
    ``-0.25`` stays a number. Idempotent: a neutralised cell (``'=...``) already reads as text and is kept as it is,
    so a table read and written again (``aamct manifest split`` rewrites the manifest) does not grow quotes.
    Non-text values (numbers, ``None``, NaN) are returned unchanged.
    """
    if not isinstance(value, str) or not value:
        return value
    if value.startswith(CSV_FORMULA_TRIGGERS) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def neutralise_csv_frame(frame):
    """A copy of a pandas DataFrame whose text cells and column names are neutralised (:func:`neutralise_csv_cell`)."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or str(out[column].dtype) in ("string", "str"):
            out[column] = out[column].map(neutralise_csv_cell)
    out.columns = [neutralise_csv_cell(str(c)) if isinstance(c, str) else c for c in out.columns]
    return out


def write_csv_atomic(target: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame to ``target`` as CSV (no index) atomically, formulas neutralised.

    Text cells that a spreadsheet would run as formulas get a leading ``'`` (:func:`neutralise_csv_cell`).
    """
    with atomic_path(target) as tmp:
        neutralise_csv_frame(frame).to_csv(tmp, index=False)
    return Path(target)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover - numpy is a hard dependency
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj
