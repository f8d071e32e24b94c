"""Whole-volume sliding-window inference with heatmaps, and the resumable batch evaluation of new cohorts.

* :mod:`~pipeline.inference.sliding`: :class:`DenseClassificationInferer`, MONAI's sliding window run on the
  network's dense class-activation map; the stitched map gives the case score (its spatial mean) and the heatmap.
* :mod:`~pipeline.inference.heatmap`: the heatmap mapped back onto the source image's own grid, NIfTI and PNG montage.
* :mod:`~pipeline.inference.maps`: the map kinds (occlusion, CAM, Grad-CAM, attention) and :class:`MapMaker`.
* :mod:`~pipeline.inference.localisation`: does a map point at the lesion (pointing game, energy, voxel AUROC, the
  position baselines), scored against lesion masks.
* :mod:`~pipeline.inference.gallery`: ``gallery.html``, every case's map overlay of a scored cohort.
* :mod:`~pipeline.inference.case`: :class:`CasePredictor`, load -> preprocess -> infer -> heatmap for one case.
* :mod:`~pipeline.inference.cohort`: :class:`CohortRunner`, the resumable, shardable batch job and its tables.
* :mod:`~pipeline.inference.bundle`: bundle folder / zip, its inference config, weights and class names.
* :mod:`~pipeline.inference.cli`: ``aamct evaluate-cohort`` and ``aamct infer``.

Public names are imported lazily (see :mod:`pipeline._lazy`), so ``aamct --help`` does not load torch.
"""

from pipeline._lazy import lazy_exports

_HOME = {
    "CaseFailure": "case",
    "CasePrediction": "case",
    "CasePredictor": "case",
    "CohortCase": "cohort",
    "CohortRunner": "cohort",
    "CohortSummary": "cohort",
    "DenseClassificationInferer": "sliding",
    "DensePrediction": "sliding",
    "PREDICTION_COLUMNS": "cohort",
    "STAGES": "case",
    "Shard": "cohort",
    "as_dense_predictor": "sliding",
    "discover_cases": "cohort",
    "inference_config_path": "bundle",
    "load_weights": "bundle",
    "map_affine": "heatmap",
    "positive_evidence": "sliding",
    "read_cases": "cohort",
    "read_class_names": "bundle",
    "resample_to_grid": "heatmap",
    "resolve_bundle": "bundle",
    "split_loading": "case",
    "write_heatmap_nifti": "heatmap",
    "write_montage_png": "heatmap",
}

__all__ = sorted(_HOME)
__getattr__, __dir__ = lazy_exports(__name__, _HOME)
