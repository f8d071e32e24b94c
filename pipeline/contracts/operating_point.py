"""``models/operating_point.json``: the decision threshold frozen on validation data, and the one lookup of it.

Evaluation chooses the threshold once, on the validation fold, and freezes it beside the checkpoint it was chosen for
(:func:`write_operating_point`, with the checkpoint's SHA-256 under ``provenance``); test and external evaluation,
``aamct evaluate-cohort``, the inference bundle and export then apply it unchanged. Where to find it is decided here
only (:func:`operating_point_path`, :func:`frozen_threshold`)::

    {"threshold": 0.43, "method": "youden", "target_sensitivity": null, "chosen_on": "validation",
     "validation_sensitivity": 0.9, "validation_specificity": 0.8, "n_validation": 20,
     "provenance": {"checkpoint_sha256": "...", "fold": 0, ...}}

A case is called positive when its score is **at or above** the threshold (scikit-learn's ``roc_curve`` convention).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.contracts.defaults import DEFAULT_THRESHOLD
from pipeline.errors import UserError
from pipeline.io import write_json_atomic

__all__ = [
    "OPERATING_POINT_FILE",
    "FrozenThreshold",
    "OperatingPoint",
    "frozen_threshold",
    "operating_point_path",
    "read_operating_point",
    "write_operating_point",
]

OPERATING_POINT_FILE = "operating_point.json"
#: keys of a bundle's ``configs/metadata.json`` that may hold a released threshold (top level or ``operating_point``)
_METADATA_THRESHOLD_KEYS = ("operating_threshold", "threshold")


@dataclass(frozen=True, kw_only=True)
class OperatingPoint:
    """A frozen decision threshold and where it came from.

    Attributes:
        threshold: call positive when ``score >= threshold``.
        method: ``"youden"``, ``"target_sensitivity"`` or ``"fixed"``.
        target_sensitivity: the target for ``"target_sensitivity"``.
        chosen_on: ``"validation"`` (chosen from data), ``"given"`` (supplied by the user) or ``"default"``.
        validation_sensitivity: sensitivity reached on the validation data.
        validation_specificity: specificity reached on the validation data.
        n_validation: validation cases used.
    """

    threshold: float
    method: str
    target_sensitivity: float | None = None
    chosen_on: str = "given"
    validation_sensitivity: float | None = None
    validation_specificity: float | None = None
    n_validation: int | None = None

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)

    def describe(self) -> str:
        """One sentence for a report's methods section."""
        if self.chosen_on == "default":
            return (
                f"No threshold or validation data was supplied, so the decision threshold was left at the default "
                f"{self.threshold:.4g}; it was not chosen on validation data."
            )
        if self.chosen_on != "validation":
            return f"The decision threshold was fixed in advance at {self.threshold:.4g} and applied unchanged."
        how = (
            "maximising Youden's J (sensitivity + specificity - 1)"
            if self.method == "youden"
            else f"as the most specific threshold reaching a sensitivity of at least {self.target_sensitivity:.0%}"
        )
        return (
            f"The decision threshold ({self.threshold:.4g}) was chosen on {self.n_validation} validation cases "
            f"{how} and then applied unchanged to every evaluated split."
        )


@dataclass(frozen=True)
class FrozenThreshold:
    """The operating threshold applied unchanged to a new cohort, and where it came from.

    Attributes:
        threshold: call positive when ``probability >= threshold``.
        source: the file (and key) it was read from, ``"default"`` when none was found, or e.g. ``"command line"``.
    """

    threshold: float
    source: str

    @property
    def is_default(self) -> bool:
        """True when no frozen threshold was found and the default is used."""
        return self.source == "default"


def operating_point_path(checkpoint: str | os.PathLike) -> Path:
    """Where the operating point of a checkpoint is frozen: ``operating_point.json`` beside it.

    Args:
        checkpoint: the ``model.pt`` the threshold is chosen for (e.g. ``RUN/models/model.pt``).

    Returns:
        ``RUN/models/operating_point.json`` for ``RUN/models/model.pt``.
    """
    return Path(os.path.abspath(checkpoint)).parent / OPERATING_POINT_FILE


def write_operating_point(
    path: str | os.PathLike, operating_point: OperatingPoint, *, provenance: Mapping[str, Any] | None = None
) -> Path:
    """Freeze an operating point in a JSON file (atomically), e.g. a bundle's ``models/operating_point.json``.

    The file holds the :class:`OperatingPoint` fields at the top level (``threshold`` first, the key inference and
    export read) and, under ``provenance``, where it came from (checkpoint digest, fold, validation cases).

    Args:
        path: the JSON file to write.
        operating_point: the frozen operating point.
        provenance: plain-JSON facts about how it was chosen.

    Returns:
        The written path.
    """
    payload: dict[str, Any] = operating_point.to_dict()
    payload["provenance"] = dict(provenance or {})
    return write_json_atomic(path, payload)


def read_operating_point(path: str | os.PathLike) -> tuple[OperatingPoint, dict[str, Any]]:
    """Read an operating point written by :func:`write_operating_point` (or a hand-written ``{"threshold": t}``).

    Args:
        path: the JSON file.

    Returns:
        ``(operating point, provenance)``; a file with only ``threshold`` gives a ``"fixed"`` / ``"given"`` point.

    Raises:
        UserError: a missing or unreadable file, or a threshold that is not a finite number.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: operating point file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a readable operating point JSON ({err})") from None
    if not isinstance(data, Mapping):
        raise UserError(f"{path}: an operating point file must hold a JSON object")
    threshold = data.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise UserError(f"{path}: 'threshold' must be a finite number, got {threshold!r}")
    known = {f.name for f in fields(OperatingPoint)}
    values = {key: value for key, value in data.items() if key in known}
    values["threshold"] = float(threshold)
    values.setdefault("method", "fixed")
    provenance = data.get("provenance")
    return OperatingPoint(**values), dict(provenance) if isinstance(provenance, Mapping) else {}


def frozen_threshold(location: str | os.PathLike, *, default: float = DEFAULT_THRESHOLD) -> FrozenThreshold:
    """The threshold frozen for a bundle, a run folder or a checkpoint: the one lookup every stage uses.

    Looked up, in order: ``operating_point.json`` beside the checkpoint (for a folder: in its ``models/``), written by
    evaluation; then the folder's ``configs/metadata.json`` (``operating_threshold`` or ``threshold``, at the top level
    or under ``operating_point``), as an exported bundle releases it.

    Args:
        location: a bundle or run folder (holding ``models/``), or a ``model.pt``.
        default: used, with ``source="default"``, when neither file has a threshold.

    Returns:
        The :class:`FrozenThreshold`; its ``source`` names the file and key relative to the folder.

    Raises:
        UserError: a file that exists but whose threshold is not a number in ``[0, 1]``.
    """
    path = Path(location)
    if path.suffix:  # a checkpoint: RUN/models/model.pt -> RUN
        operating_point_file, root = operating_point_path(path), path.parent.parent
    else:
        operating_point_file, root = path / "models" / OPERATING_POINT_FILE, path
    if operating_point_file.is_file():
        operating_point, _ = read_operating_point(operating_point_file)
        return _in_unit_interval(operating_point.threshold, operating_point_file, "threshold", root)
    metadata_file = root / "configs" / "metadata.json"
    if metadata_file.is_file():
        try:
            data = json.loads(metadata_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{metadata_file}: not valid JSON ({err})") from None
        if isinstance(data, Mapping):
            for scope_name, scope in (("", data), ("operating_point.", data.get("operating_point"))):
                if not isinstance(scope, Mapping):
                    continue
                for key in _METADATA_THRESHOLD_KEYS:
                    if key in scope:
                        return _in_unit_interval(scope[key], metadata_file, scope_name + key, root)
    return FrozenThreshold(float(default), "default")


def _in_unit_interval(value: Any, path: Path, key: str, root: Path) -> FrozenThreshold:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UserError(f"{path}: {key} must be a number in [0, 1], got {value!r}")
    try:
        shown = path.relative_to(root).as_posix()
    except ValueError:
        shown = str(path)
    return FrozenThreshold(float(value), f"{shown}:{key}")
