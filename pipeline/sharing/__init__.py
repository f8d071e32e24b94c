"""Share trained bundles: export a checksummed MONAI bundle zip, verify one received, inspect its model card.

* :func:`export_bundle` -- ``aamct bundle export``: ``NAME_vVERSION.zip`` in MONAI's archive layout, ``model.pt``
  state dict, TorchScript classifier ``model.ts`` and dense map ``model_dense.ts`` (through MONAI ``ckpt_export``),
  model card and ``eval_metrics`` from the run's ``metrics.json``, portable config paths, ``large_files.yml``,
  a new version for new weights only + changelog, ``checksums.sha256``;
* :func:`verify_bundle` -- ``aamct bundle verify``: checksums, metadata schema (offline), weights-only loading,
  ``verify_net_in_out``, a listing of every ``$`` expression and ``_target_``;
* :func:`inspect_bundle` -- ``aamct bundle inspect``: the model card summary.

A recipient with only MONAI installed runs ``configs/inference_torchscript.json`` of the zip (see the card).
Names are imported lazily so that ``aamct --help`` does not load torch.
"""

from __future__ import annotations

from pipeline._lazy import lazy_exports

__all__ = [
    "METADATA_SCHEMA_PATH",
    "ExportResult",
    "VerificationReport",
    "export_bundle",
    "inspect_bundle",
    "metadata_problems",
    "verify_bundle",
]

_HOME = {
    "METADATA_SCHEMA_PATH": "metadata",
    "metadata_problems": "metadata",
    "ExportResult": "export",
    "export_bundle": "export",
    "VerificationReport": "verify",
    "verify_bundle": "verify",
    "inspect_bundle": "inspection",
}

__getattr__, __dir__ = lazy_exports(__name__, _HOME)
