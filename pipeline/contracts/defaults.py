"""The one default of every stage setting: network, input size, spacing, HU window, body threshold, threshold.

Every stage reads these values from here: the transform chains (:mod:`pipeline.transforms`) take them as keyword
defaults, and the bundle configs take them through ``$pipeline.contracts....`` expressions (``train.json`` and
``inference.json``; ``evaluate.json``, ``distill.json`` and ``multi_gpu_train.json`` are merged over ``train.json``).
The stock-MONAI ``inference_torchscript.json`` cannot import the package; it carries these values as literals, which
``aamct bundle export`` replaces with the exported run's own settings, and a test holds them equal to these.

The Makefile restates none of them: ``make train`` without variables runs the configs' defaults, and ``make demo``
passes its own recipe (a smaller network, a higher learning rate) explicitly.

:data:`CONFIG_DEFAULTS` maps the bundle-config key of each setting to its default in the JSON form a config holds.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

__all__ = [
    "BUNDLE_MAX_COMPRESSION_RATIO",
    "BUNDLE_MAX_MEMBERS",
    "BUNDLE_MAX_MODEL_BYTES",
    "BUNDLE_MAX_TEXT_BYTES",
    "BUNDLE_MAX_TOTAL_BYTES",
    "BUNDLE_RATIO_FLOOR_BYTES",
    "CONFIG_DEFAULTS",
    "DEFAULT_BODY_THRESHOLD_HU",
    "DEFAULT_CASE_TIMEOUT_S",
    "DEFAULT_CLASS_NAMES",
    "DEFAULT_DISTILLATION_STAGES",
    "DEFAULT_HU_WINDOW",
    "DEFAULT_INFERENCE_NETWORK_NAME",
    "DEFAULT_MAX_VOXELS",
    "DEFAULT_NETWORK_NAME",
    "DEFAULT_ROI_SIZE",
    "DEFAULT_SCOPE_THRESHOLDS",
    "DEFAULT_SPACING",
    "DEFAULT_THRESHOLD",
    "TORCHSCRIPT_MEMORY_LIMIT_BYTES",
    "TORCHSCRIPT_TIME_LIMIT_S",
]

#: the network trained by ``train.json``, by registry name: MONAI's DenseNet-121 at width 0.25, the network with the
#: highest smallest-tertile sensitivity on the hard demo over 5 training seeds (benchmarks/results/small_lesions.md:
#: 36/45 = 0.80 pooled vs 32/45 for the AAM-ResNet-18 and 29/45 for ResNet-18, both at width 0.25; issue 21: the
#: default follows the small-lesion result, tests/benchmarks/test_docs_quote_results.py). On AdrenalMNIST3D 28^3
#: ResNet-18 led the AAM-ResNet-18 (0.859 vs 0.816, paired +0.007, p 0.50); DenseNet-121 was not run there.
DEFAULT_NETWORK_NAME: str = "densenet121_small"
#: the distillation cascade of ``distill.json``: the trained network teaches these in turn
DEFAULT_DISTILLATION_STAGES: tuple[str, ...] = ("aam_assistant", "aam_student")
#: the network ``inference.json`` builds for weights without a run record: the default cascade's final student
DEFAULT_INFERENCE_NETWORK_NAME: str = DEFAULT_DISTILLATION_STAGES[-1]
#: network input (x, y, z): small enough to train on a CPU (the demo); real cohorts on a GPU use e.g. (128, 128, 64)
DEFAULT_ROI_SIZE: tuple[int, int, int] = (64, 64, 32)
#: target voxel size in mm (x, y, z), matched to DEFAULT_ROI_SIZE: a ~350 mm field of view and ~320 mm of slices
#: land near 64 x 64 x 32 before the crop, so the final resize changes little; use about (2.5, 2.5, 5.0) with
#: (128, 128, 64)
DEFAULT_SPACING: tuple[float, float, float] = (5.0, 5.0, 10.0)
#: lung window in HU, mapped to 0..1
DEFAULT_HU_WINDOW: tuple[float, float] = (-1000.0, 400.0)
#: voxels above this HU count as body for the foreground crop (air is about -1000, aerated lung about -850 .. -700)
DEFAULT_BODY_THRESHOLD_HU: float = -500.0
#: decision threshold on the positive-class probability when no operating point was frozen on validation data
DEFAULT_THRESHOLD: float = 0.5
#: class names, index = integer label, when a bundle's metadata names none
DEFAULT_CLASS_NAMES: tuple[str, ...] = ("negative", "positive")

#: most voxels a scan may declare (NIfTI header dims, DICOM Rows x Columns x slices), checked before any voxel is
#: decompressed: 2^28 = 268 M voxels (1 GiB as float32) holds a 512 x 512 x 1,024-slice thin-section chest CT; a
#: header declaring more is refused by name (a 4.7 MB .nii.gz declaring 1024 x 1024 x 512 took 11.9 GB to load)
DEFAULT_MAX_VOXELS: int = 1 << 28
#: the scope check of every scan (pipeline.data.scope): a chest CT with lungs in view, or a row that is never scored.
#: Set by benchmarks/bench_scope.py (results/scope.md; lungs measured on the check's ~4 mm grid) over 63 chests and
#: 60 other scans: the smallest chest is a demo chest cut to its upper 2/3 of lung, 1,020 ml over 174 mm (shortest
#: chest extent 151 mm; the real chest Lung_Dx-A0001: 5,463 ml over 270 mm, cut to 2/3: 3,848 ml); the other scans
#: with the most lung are the real chest's lowest quarter of lung (bases, 787 ml over 70 mm) and the real
#: abdominal-pelvic volume (lung bases, 432 ml over 156 mm). Both figures must pass: 700 ml and 110 mm lie between.
#: Air reads -1024 .. -1011 HU and the body's median tissue -24 .. +45 HU on the real chest, the real abdomens and every
#: demo scan; RescaleIntercept 0 instead of -1024 moves air to 0 HU. Gas pockets read about -1000 HU on average,
#: aerated lung about -850.
DEFAULT_SCOPE_THRESHOLDS: MappingProxyType[str, Any] = MappingProxyType(
    {
        "min_lung_ml": 700.0,
        "min_lung_extent_mm": 110.0,
        "lung_hu": -400.0,
        "gas_mean_hu": -975.0,
        "min_piece_ml": 20.0,
        "airway_max_area_mm2": 600.0,
        "airway_midline_mm": 30.0,
        "cut_fraction": 0.15,
        "air_hu": (-1200.0, -800.0),
        "tissue_hu": (-150.0, 200.0),
        "coarse_voxel_mm": 4.0,
    }
)

#: bundle-config key -> default value, as JSON holds it (lists, not tuples)
CONFIG_DEFAULTS: MappingProxyType[str, Any] = MappingProxyType(
    {
        "network_name": DEFAULT_NETWORK_NAME,
        "stages": list(DEFAULT_DISTILLATION_STAGES),
        "roi_size": list(DEFAULT_ROI_SIZE),
        "spacing": list(DEFAULT_SPACING),
        "hu_window": list(DEFAULT_HU_WINDOW),
        "body_threshold_hu": DEFAULT_BODY_THRESHOLD_HU,
        "scope_thresholds": {k: list(v) if isinstance(v, tuple) else v for k, v in DEFAULT_SCOPE_THRESHOLDS.items()},
    }
)

# --- received-bundle gate (pipeline.trust): caps read from a bundle zip's central directory before inflating ---
# Set from real exports: the tiny test export (aam_student_small, 32^3) is 16 members, 27.0 MB inflated from a
# 24.5 MB zip: model.pt 8.48 MB (ratio 1.09), model.ts 9.22 MB (1.11), model_dense.ts 9.26 MB, metadata.json 14.7 kB,
# the largest config 11 kB (ratio 3.8). The largest registry network, aam_resnet34, has a 255 MB state dict, so its
# three model files take about 0.8 GB; the caps leave room for that and refuse anything far beyond it.
#: most members a bundle zip may hold (an export has 16)
BUNDLE_MAX_MEMBERS = 64
#: largest inflated size of one member under models/ (aam_resnet34's weights are 255 MB)
BUNDLE_MAX_MODEL_BYTES = 512 * 1024**2
#: largest inflated size of any other member (configs, docs, LICENSE: an export's largest is 15 kB)
BUNDLE_MAX_TEXT_BYTES = 4 * 1024**2
#: largest inflated size of all members together
BUNDLE_MAX_TOTAL_BYTES = 1536 * 1024**2
#: largest inflated / stored size of a member above BUNDLE_RATIO_FLOOR_BYTES (model files: 1.1; zeros: ~1000)
BUNDLE_MAX_COMPRESSION_RATIO = 20.0
#: members below this inflated size are not ratio-checked (their size cap bounds them; text compresses ~4x)
BUNDLE_RATIO_FLOOR_BYTES = 1024**2
#: seconds a received TorchScript model may take to load and run the gate's probe inputs, in a child process
TORCHSCRIPT_TIME_LIMIT_S = 120.0
#: address space the child running a received TorchScript model may add to the parent's (RLIMIT_AS)
TORCHSCRIPT_MEMORY_LIMIT_BYTES = 6 * 1024**3
#: wall-clock seconds one case of ``aamct evaluate-cohort`` / ``infer`` may take before it becomes an error row and
#: the batch goes on: about 60x a clinical-size case with the default map on 2 CPU cores (the real 512 x 512 x 64
#: chest takes 3-10 s, benchmarks/results/case_time.md), so only a hung or pathological case reaches it
DEFAULT_CASE_TIMEOUT_S = 600.0
