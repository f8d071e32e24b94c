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
    "CONFIG_DEFAULTS",
    "DEFAULT_BODY_THRESHOLD_HU",
    "DEFAULT_CLASS_NAMES",
    "DEFAULT_DISTILLATION_STAGES",
    "DEFAULT_HU_WINDOW",
    "DEFAULT_INFERENCE_NETWORK_NAME",
    "DEFAULT_NETWORK_NAME",
    "DEFAULT_ROI_SIZE",
    "DEFAULT_SPACING",
    "DEFAULT_THRESHOLD",
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

#: bundle-config key -> default value, as JSON holds it (lists, not tuples)
CONFIG_DEFAULTS: MappingProxyType[str, Any] = MappingProxyType(
    {
        "network_name": DEFAULT_NETWORK_NAME,
        "stages": list(DEFAULT_DISTILLATION_STAGES),
        "roi_size": list(DEFAULT_ROI_SIZE),
        "spacing": list(DEFAULT_SPACING),
        "hu_window": list(DEFAULT_HU_WINDOW),
        "body_threshold_hu": DEFAULT_BODY_THRESHOLD_HU,
    }
)
