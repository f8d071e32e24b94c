"""``models/run.json``: what a trained (or distilled) ``models/model.pt`` is, and the one reader of it.

A checkpoint is only a state dict; to run it, the network name (and registry arguments) and the preprocessing it was
trained with must be known. The training config writes this record when a run starts (every rank count: the DDP
config keeps train.json's ``initialize`` list) and the distillation cascade writes it for its final student::

    {"network_name": "aam_student", "network_kwargs": {}, "roi_size": [64, 64, 32], "spacing": [5, 5, 10],
     "hu_window": [-1000, 400], "class_names": ["negative", "positive"], "written_by": "distilling",
     "teacher": "aam_resnet50", "numerics": {"torch": "2.13.0+cpu", "num_threads": 2, "onednn": "3.12.0", ...}}

``numerics`` (:func:`numerics_record`) says what decides the floating-point results beside the seed: the same seed
and data give the same weights only with the same torch, oneDNN, thread count and CPU instruction set (a different
thread count or ISA changes the order of the convolutions' sums, and over 30 epochs the run becomes another draw).

Every later stage reads it through :func:`settings_for` (evaluation and distillation configs, ``aamct
evaluate-cohort``, ``aamct bundle export``), which returns a :class:`RunSettings`: the recorded values, with the
stage defaults of :mod:`pipeline.contracts.defaults` (or the caller's fallbacks) for whatever the record does not
say, and the record's path (``None`` without one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pipeline.contracts.defaults import DEFAULT_HU_WINDOW, DEFAULT_NETWORK_NAME, DEFAULT_ROI_SIZE, DEFAULT_SPACING
from pipeline.errors import UserError
from pipeline.io import write_json_atomic

__all__ = [
    "NUMERICS_KEY",
    "RECORDED_SETTINGS",
    "RUN_RECORD",
    "RunSettings",
    "find_run_record",
    "numerics_record",
    "settings_for",
    "write_run_record",
]

RUN_RECORD = "run.json"
#: the bundle-config keys a record fixes for anything that loads the weights (plus ``network_def#<arg>`` keys)
RECORDED_SETTINGS: tuple[str, ...] = ("network_name", "roi_size", "spacing", "hu_window")
#: the record's key for :func:`numerics_record` (informative: no reader changes its settings by it)
NUMERICS_KEY = "numerics"


def numerics_record() -> dict[str, Any]:
    """What decides a run's floating-point results on this machine, beside the seed and the data.

    Returns:
        ``torch`` (version), ``num_threads`` / ``num_interop_threads`` (``torch.get_num_threads()``: intra-op
        threads, the order of the convolutions' reductions), ``onednn`` (the oneDNN version torch was built with,
        from ``torch.__config__.show()``; ``None`` where it is not listed), ``mkldnn_enabled``
        (``torch.backends.mkldnn.enabled``), ``cpu_capability`` (``torch.backends.cpu.get_cpu_capability()``: the
        vector ISA of the CPU kernels, e.g. ``AVX512``), ``deterministic_algorithms``, ``omp_num_threads`` (the
        environment variable, ``None`` when unset), ``cpu_count`` and ``machine`` (``platform.machine()``).
    """
    import platform
    import re

    import torch  # here, not at the top: the contracts floor is imported by tools that never load a network

    config = torch.__config__.show()
    match = re.search(r"(?:oneDNN|MKL-DNN)\s+v?([0-9][0-9.]*)", config)
    return {
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "onednn": match.group(1) if match else None,
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The network and preprocessing a checkpoint needs.

    Attributes:
        network_name: registry name of the network.
        network_kwargs: extra registry arguments the network was built with (e.g. ``{"width": 0.125}``).
        roi_size: network input (x, y, z).
        spacing: resampling spacing in mm (x, y, z); ``None`` when the run kept the acquired spacing.
        hu_window: HU window (low, high) mapped to 0..1.
        class_names: class names in label order, when recorded.
        written_by: ``"training"`` or ``"distilling"``, when recorded.
        teacher: the teacher's network name, for a distilled student.
        record: the ``run.json`` these settings were read from; ``None`` when there is none (defaults only).
    """

    network_name: str = DEFAULT_NETWORK_NAME
    network_kwargs: Mapping[str, Any] = field(default_factory=dict)
    roi_size: tuple[int, int, int] = DEFAULT_ROI_SIZE
    spacing: tuple[float, float, float] | None = DEFAULT_SPACING
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW
    class_names: tuple[str, ...] | None = None
    written_by: str | None = None
    teacher: str | None = None
    record: Path | None = None

    @property
    def recorded(self) -> bool:
        """True when a run record was found (the values are the run's own, not defaults)."""
        return self.record is not None

    def config_overrides(self) -> dict[str, Any]:
        """These settings as bundle-config overrides (JSON values; registry arguments as ``network_def#<arg>``)."""
        overrides: dict[str, Any] = {
            "network_name": self.network_name,
            "roi_size": list(self.roi_size),
            "spacing": None if self.spacing is None else list(self.spacing),
            "hu_window": list(self.hu_window),
        }
        overrides.update({f"network_def#{key}": value for key, value in self.network_kwargs.items()})
        return overrides

    def to_record(self) -> dict[str, Any]:
        """The JSON object written as ``run.json``."""
        return {
            "network_name": self.network_name,
            "network_kwargs": dict(self.network_kwargs),
            "roi_size": list(self.roi_size),
            "spacing": None if self.spacing is None else list(self.spacing),
            "hu_window": list(self.hu_window),
            "class_names": None if self.class_names is None else list(self.class_names),
            "written_by": self.written_by,
            "teacher": self.teacher,
        }


def _checked(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Validated, normalised field values (tuples, floats); one-line UserError naming ``source`` otherwise."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "network_name":
            if not isinstance(value, str) or not value:
                raise UserError(f"{source}: network_name must be a registry name, got {value!r}")
            out[key] = value
        elif key == "network_kwargs":
            if not isinstance(value, Mapping):
                raise UserError(f"{source}: network_kwargs must be an object of registry arguments, got {value!r}")
            out[key] = dict(value)
        elif key in ("roi_size", "spacing", "hu_window"):
            if value is None and key == "spacing":
                out[key] = None
                continue
            length, kind = (2, float) if key == "hu_window" else (3, int if key == "roi_size" else float)
            if (
                not isinstance(value, Sequence)
                or isinstance(value, str)
                or len(value) != length
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
            ):
                raise UserError(f"{source}: {key} must be {length} numbers, got {value!r}")
            if key != "hu_window" and any(v <= 0 for v in value):
                raise UserError(f"{source}: {key} must be positive, got {list(value)!r}")
            if key == "hu_window" and not value[0] < value[1]:
                raise UserError(f"{source}: hu_window must be increasing (low, high), got {list(value)!r}")
            out[key] = tuple(kind(v) for v in value)
        elif key == "class_names":
            if value is not None and (isinstance(value, str) or not isinstance(value, Sequence)):
                raise UserError(f"{source}: class_names must be a list of names, got {value!r}")
            out[key] = None if value is None else tuple(str(v) for v in value)
        elif key in ("written_by", "teacher"):
            out[key] = None if value is None else str(value)
    return out


def write_run_record(
    ckpt_dir: str | os.PathLike,
    *,
    network_name: str,
    roi_size: Sequence[int],
    spacing: Sequence[float] | None = DEFAULT_SPACING,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    class_names: Sequence[str] | None = None,
    network_kwargs: Mapping[str, Any] | None = None,
    written_by: str = "training",
    teacher: str | None = None,
    rank: int = 0,
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path | None:
    """Write ``<ckpt_dir>/run.json`` (rank 0 only; atomic), with the machine's :func:`numerics_record`.

    Args:
        ckpt_dir: the folder of ``model.pt``.
        network_name: registry name of the network.
        roi_size: network input size.
        spacing: resampling spacing (mm) of the preprocessing; ``None`` when the acquired spacing was kept.
        hu_window: HU window of the preprocessing.
        class_names: class names in label order.
        network_kwargs: extra registry arguments the network was built with.
        written_by: ``"training"`` or ``"distilling"``.
        teacher: the teacher's network name, for a distilled student.
        rank: distributed rank; only rank 0 writes.
        seed: the run's seed (recorded beside the numerics; informative).
        extra: further informative entries (JSON values), e.g. why this model is the one exported; they cannot
            override the recorded settings.

    Returns:
        The record's path, or ``None`` on ranks other than 0.

    Raises:
        UserError: a value that is not of the recorded kind (e.g. a two-entry ``roi_size``).
    """
    if int(rank) != 0:
        return None
    values = _checked(
        {
            "network_name": network_name,
            "network_kwargs": dict(network_kwargs or {}),
            "roi_size": roi_size,
            "spacing": spacing,
            "hu_window": hu_window,
            "class_names": class_names,
            "written_by": written_by,
            "teacher": teacher,
        },
        source=str(Path(ckpt_dir) / RUN_RECORD),
    )
    record = {**dict(extra or {}), **RunSettings(**values).to_record()}
    if seed is not None:
        record["seed"] = int(seed)
    record[NUMERICS_KEY] = numerics_record()
    return write_json_atomic(Path(ckpt_dir) / RUN_RECORD, record)


def find_run_record(location: str | os.PathLike) -> Path | None:
    """The record beside a checkpoint, in a ``models/`` folder, or in a run / bundle folder's ``models/``.

    Args:
        location: ``model.pt``, the folder holding it, or the run folder holding ``models/``.

    Returns:
        The ``run.json`` path, or ``None`` when there is none.
    """
    path = Path(location)
    folder = path.parent if path.suffix else path
    for candidate in (folder / RUN_RECORD, folder / "models" / RUN_RECORD):
        if candidate.is_file():
            return candidate
    return None


def settings_for(location: str | os.PathLike, **fallback: Any) -> RunSettings:
    """The settings a checkpoint needs: its run record, else ``fallback``, else the stage defaults.

    This is the one reader of ``run.json``: the evaluation and distillation configs
    (``$pipeline.contracts.settings_for(@checkpoint)``), ``aamct evaluate-cohort`` and ``aamct bundle export`` all
    call it.

    Args:
        location: ``model.pt``, its folder, or the run / bundle folder holding ``models/``.
        **fallback: values (by :class:`RunSettings` field name) used where the record has none, or when there is no
            record, e.g. ``network_name=@network_name`` from a command line.

    Returns:
        The :class:`RunSettings`; ``record`` names the file read, ``None`` when there was none.

    Raises:
        UserError: a record that is not readable JSON, has no ``network_name``, or holds values of the wrong kind;
            an unknown fallback name.
    """
    known = {f.name for f in fields(RunSettings)} - {"record"}
    unknown = sorted(set(fallback) - known)
    if unknown:
        raise UserError(f"settings_for: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    settings = replace(RunSettings(), **_checked(fallback, source="settings_for fallback"))
    path = find_run_record(location)
    if path is None:
        return settings
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable run record ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("network_name"), str):
        raise UserError(f"{path}: not a run record (no network_name)")
    # a key the record holds wins; spacing null is a recorded choice (no resampling), not a missing value
    recorded = {key: value for key, value in data.items() if key in known and (value is not None or key == "spacing")}
    return replace(settings, **_checked(recorded, source=str(path)), record=path)
