"""``models/run.json``: what a trained (or distilled) ``models/model.pt`` is, written beside it.

A checkpoint is only a state dict; to run it, the network name (and registry arguments) and the preprocessing it was
trained with must be known. The training config writes this record when a run starts and the distillation cascade
writes it for its final student, so later stages (``aamct evaluate-cohort``, ``aamct bundle export``, the evaluation
config) read the run folder instead of being told the network again on the command line::

    {"network_name": "aam_student", "network_kwargs": {}, "roi_size": [64, 64, 32], "spacing": [5, 5, 10],
     "hu_window": [-1000, 400], "class_names": ["negative", "positive"], "written_by": "distilling",
     "teacher": "aam_resnet50"}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.io import write_json_atomic

__all__ = [
    "RUN_RECORD",
    "RECORDED_SETTINGS",
    "read_run_record",
    "recorded_settings",
    "recorded_value",
    "write_run_record",
]

RUN_RECORD = "run.json"
#: the config keys a record fixes for anything that loads the weights (the inference config's names)
RECORDED_SETTINGS: tuple[str, ...] = ("network_name", "roi_size", "spacing", "hu_window")


def _listed(values: Sequence[Any] | None) -> list[Any] | None:
    return None if values is None else [float(v) if isinstance(v, float) else v for v in values]


def write_run_record(
    ckpt_dir: str | os.PathLike,
    *,
    network_name: str,
    roi_size: Sequence[int],
    spacing: Sequence[float] | None = None,
    hu_window: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    network_kwargs: Mapping[str, Any] | None = None,
    written_by: str = "training",
    teacher: str | None = None,
    rank: int = 0,
) -> Path | None:
    """Write ``<ckpt_dir>/run.json`` (rank 0 only; atomic).

    Args:
        ckpt_dir: the folder of ``model.pt``.
        network_name: registry name of the network.
        roi_size: network input size.
        spacing: resampling spacing (mm) of the preprocessing.
        hu_window: HU window of the preprocessing.
        class_names: class names in label order.
        network_kwargs: extra registry arguments the network was built with.
        written_by: ``"training"`` or ``"distilling"``.
        teacher: the teacher's network name, for a distilled student.
        rank: distributed rank; only rank 0 writes.

    Returns:
        The record's path, or ``None`` on ranks other than 0.
    """
    if int(rank) != 0:
        return None
    record = {
        "network_name": str(network_name),
        "network_kwargs": dict(network_kwargs or {}),
        "roi_size": [int(v) for v in roi_size],
        "spacing": _listed(spacing),
        "hu_window": _listed(hu_window),
        "class_names": None if class_names is None else [str(c) for c in class_names],
        "written_by": written_by,
        "teacher": teacher,
    }
    return write_json_atomic(Path(ckpt_dir) / RUN_RECORD, record)


def read_run_record(location: str | os.PathLike) -> dict[str, Any] | None:
    """The record beside a checkpoint, in a ``models/`` folder, or in a run / bundle folder's ``models/``.

    Args:
        location: ``model.pt``, the folder holding it, or the run folder holding ``models/``.

    Returns:
        The record, or ``None`` when there is none.

    Raises:
        UserError: if a record exists but is not a JSON object.
    """
    path = Path(location)
    folder = path.parent if path.suffix else path
    for candidate in (folder / RUN_RECORD, folder / "models" / RUN_RECORD):
        if candidate.is_file():
            try:
                record = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise UserError(f"{candidate}: unreadable run record ({err})") from None
            if not isinstance(record, dict) or not isinstance(record.get("network_name"), str):
                raise UserError(f"{candidate}: not a run record (no network_name)")
            return record
    return None


def recorded_settings(location: str | os.PathLike) -> dict[str, Any]:
    """Config overrides fixing the network and preprocessing to the recorded ones (empty without a record).

    Registry arguments come back as ``network_def#<name>`` keys, the bundle CLI's override form.

    Args:
        location: as for :func:`read_run_record`.

    Returns:
        ``{"network_name": ..., "roi_size": ..., ..., "network_def#<arg>": ...}`` for the values the record has.
    """
    record = read_run_record(location)
    if record is None:
        return {}
    settings = {key: record[key] for key in RECORDED_SETTINGS if record.get(key) is not None}
    settings.update({f"network_def#{k}": v for k, v in (record.get("network_kwargs") or {}).items()})
    return settings


def recorded_value(location: str | os.PathLike, key: str, default: Any = None) -> Any:
    """One recorded setting (e.g. ``network_name``), or ``default`` when there is no record or no such value.

    ``evaluate.json`` uses it so the evaluated checkpoint's own network is built unless the command line says
    otherwise.
    """
    record = read_run_record(location)
    value = None if record is None else record.get(key)
    return default if value is None else value
