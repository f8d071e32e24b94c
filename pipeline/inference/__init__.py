"""Whole-volume sliding-window inference with heatmaps, and the resumable batch evaluation of new cohorts.

* :mod:`~pipeline.inference.sliding`: :class:`DenseClassificationInferer`, MONAI's sliding window run on the
  network's dense class-activation map; the stitched map gives the case score (its spatial mean) and the heatmap.
* :mod:`~pipeline.inference.heatmap`: the heatmap mapped back onto the source image's own grid, NIfTI and PNG montage.
* :mod:`~pipeline.inference.case`: :class:`CasePredictor`, load -> preprocess -> infer -> heatmap for one case.
* :mod:`~pipeline.inference.cohort`: :class:`CohortRunner`, the resumable, shardable batch job and its tables.
* :mod:`~pipeline.inference.bundle`: bundle folder / zip, weights, frozen threshold and class names.
* :mod:`~pipeline.inference.cli`: ``aamct evaluate-cohort`` and ``aamct infer``.
"""

from pipeline.inference.bundle import (
    FrozenThreshold,
    inference_config_path,
    load_weights,
    read_class_names,
    read_frozen_threshold,
    resolve_bundle,
)
from pipeline.inference.case import STAGES, CaseFailure, CasePrediction, CasePredictor, split_loading
from pipeline.inference.cohort import (
    PREDICTION_COLUMNS,
    CohortCase,
    CohortRunner,
    CohortSummary,
    Shard,
    discover_cases,
    read_cases,
    read_manifest_cases,
)
from pipeline.inference.heatmap import map_affine, resample_to_grid, write_heatmap_nifti, write_montage_png
from pipeline.inference.sliding import (
    DenseClassificationInferer,
    DensePrediction,
    as_dense_predictor,
    positive_evidence,
)

__all__ = [
    "PREDICTION_COLUMNS",
    "STAGES",
    "CaseFailure",
    "CasePrediction",
    "CasePredictor",
    "CohortCase",
    "CohortRunner",
    "CohortSummary",
    "DenseClassificationInferer",
    "DensePrediction",
    "FrozenThreshold",
    "Shard",
    "as_dense_predictor",
    "discover_cases",
    "inference_config_path",
    "load_weights",
    "map_affine",
    "positive_evidence",
    "read_cases",
    "read_class_names",
    "read_frozen_threshold",
    "read_manifest_cases",
    "resample_to_grid",
    "resolve_bundle",
    "split_loading",
    "write_heatmap_nifti",
    "write_montage_png",
]
