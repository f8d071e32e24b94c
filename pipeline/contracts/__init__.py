"""The on-disk contracts between stages, below every stage: each file format has one reader and one home.

* :mod:`~pipeline.contracts.defaults`: the one default of every stage setting (network, roi_size, spacing, ...).
* :mod:`~pipeline.contracts.run_record`: ``models/run.json`` and :func:`settings_for`, what a checkpoint needs.
* :mod:`~pipeline.contracts.operating_point`: ``models/operating_point.json`` and :func:`frozen_threshold`.
* :mod:`~pipeline.contracts.datalist`: reading the datalist JSON (:func:`load_datalist`, :func:`select`).
* :mod:`~pipeline.contracts.manifest`: manifest / rejections columns, case-id rules, :func:`read_manifest`.
* :mod:`~pipeline.contracts.failure`: :func:`fail` and :func:`one_line_user_errors`, the one-line end of a run.

This package imports only :mod:`pipeline.errors`, :mod:`pipeline.io` and libraries; every stage may import it.
Public names are imported lazily (see :mod:`pipeline._lazy`), so a bundle config's ``$import pipeline.contracts``
costs nothing until a name is used.
"""

from pipeline._lazy import lazy_exports

_HOME = {
    "CARRIED_COLUMNS": "manifest",
    "CASE_ID_PATTERN": "manifest",
    "CONFIG_DEFAULTS": "defaults",
    "DEFAULT_BODY_THRESHOLD_HU": "defaults",
    "DEFAULT_CLASS_NAMES": "defaults",
    "DEFAULT_DISTILLATION_STAGES": "defaults",
    "DEFAULT_HU_WINDOW": "defaults",
    "DEFAULT_INFERENCE_NETWORK_NAME": "defaults",
    "DEFAULT_NETWORK_NAME": "defaults",
    "DEFAULT_ROI_SIZE": "defaults",
    "DEFAULT_SPACING": "defaults",
    "DEFAULT_THRESHOLD": "defaults",
    "ERROR_PREFIX": "failure",
    "TRACEBACK_ENV": "failure",
    "FrozenThreshold": "operating_point",
    "MANIFEST_COLUMNS": "manifest",
    "ManifestCase": "manifest",
    "OPERATING_POINT_FILE": "operating_point",
    "OperatingPoint": "operating_point",
    "RECORDED_SETTINGS": "run_record",
    "REJECTION_COLUMNS": "manifest",
    "REQUIRED_COLUMNS": "manifest",
    "RUN_RECORD": "run_record",
    "RunSettings": "run_record",
    "SELECTIONS": "datalist",
    "SPLIT_KEYS": "datalist",
    "check_case_id": "manifest",
    "check_datalist_layout": "datalist",
    "check_unique_case_ids": "manifest",
    "class_names": "datalist",
    "datalist_beside": "datalist",
    "fail": "failure",
    "find_run_record": "run_record",
    "frozen_threshold": "operating_point",
    "load_datalist": "datalist",
    "one_line_user_errors": "failure",
    "operating_point_path": "operating_point",
    "path_case_id": "manifest",
    "read_manifest": "manifest",
    "read_operating_point": "operating_point",
    "read_rejections": "manifest",
    "rejections_path_for": "manifest",
    "resolve_datalist": "datalist",
    "resolve_image": "manifest",
    "select": "datalist",
    "settings_for": "run_record",
    "user_error_line": "failure",
    "write_operating_point": "operating_point",
    "write_run_record": "run_record",
}

__all__ = sorted(_HOME)
__getattr__, __dir__ = lazy_exports(__name__, _HOME)
