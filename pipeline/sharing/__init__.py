"""Share trained bundles: export a checksummed MONAI bundle zip, verify one received, inspect its model card.

* :func:`export_bundle` -- ``aamct bundle export``: MONAI archive layout, ``model.pt`` state dict, TorchScript
  ``model.ts`` (through MONAI ``ckpt_export``), model card, version bump + changelog, ``checksums.sha256``;
* :func:`verify_bundle` -- ``aamct bundle verify``: checksums, metadata schema (offline), weights-only loading,
  ``verify_net_in_out``, a listing of every ``$`` expression and ``_target_``;
* :func:`inspect_bundle` -- ``aamct bundle inspect``: the model card summary.

A recipient with only MONAI installed runs ``configs/inference_torchscript.json`` of the zip (see the card).
Names are imported lazily so that ``aamct --help`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "METADATA_SCHEMA_PATH",
    "ExportResult",
    "VerificationReport",
    "export_bundle",
    "inspect_bundle",
    "metadata_problems",
    "verify_bundle",
]

_HOMES = {
    "METADATA_SCHEMA_PATH": "pipeline.sharing.metadata",
    "metadata_problems": "pipeline.sharing.metadata",
    "ExportResult": "pipeline.sharing.export",
    "export_bundle": "pipeline.sharing.export",
    "VerificationReport": "pipeline.sharing.verify",
    "verify_bundle": "pipeline.sharing.verify",
    "inspect_bundle": "pipeline.sharing.inspection",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'pipeline.sharing' has no attribute {name!r}")
