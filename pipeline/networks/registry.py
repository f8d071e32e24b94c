"""Networks by name: ``build(name, in_channels=1, num_classes=2, **kwargs)``.

Parameters measured with ``in_channels=1, num_classes=2`` (``benchmarks/bench_networks.py`` re-measures them with
FLOPs and CPU latency at 1x1x64x128x128); "vs R50" is the ratio to MONAI's 3D ``resnet50`` (46,163,010).

==================== ========================================== ========== ======= =================================
name                 network                                    params     vs R50  stem
==================== ========================================== ========== ======= =================================
aam_resnet50         AAMResNet depth 50, width 1, stage AAMs    47,245,158  1.023  7^3 conv s2 + max-pool s2
aam_resnet34         AAMResNet depth 34, width 1                63,736,186  1.381  7^3 conv s2 + max-pool s2
aam_resnet18         AAMResNet depth 18, width 1                33,306,714  0.722  7^3 conv s2 + max-pool s2
aam_assistant        AAMResNet depth 34, width 0.625            24,914,266  0.540  7^3 conv s2 + max-pool s2
aam_student          AAMResNet depth 18, width 0.5               8,339,370  0.181  7^3 conv s2 + max-pool s2
aam_student_small    AAMResNet depth 18, width 0.25              2,092,234  0.045  7^3 conv s2 + max-pool s2
aam_student_small_os8  the same, output stride (8, 8, 4)         2,092,234  0.045  7^3 conv s2 + max-pool s2
aam_student_small_mil  os8 + gated attention-MIL pooling         2,100,523  0.046  7^3 conv s2 + max-pool s2
resnet50             MONAI ResNet-50 (CAMResNet)                46,163,010  1.000  7^3 conv s2 (MONAI default s1)
resnet18             MONAI ResNet-18 (CAMResNet)                33,161,922  0.718  7^3 conv s2 (MONAI default s1)
densenet121          MONAI DenseNet-121 (CAMDenseNet121)        11,244,674  0.244  7^3 conv s2 + max-pool s2
densenet121_small    DenseNet-121 at width 0.25 (train default)    722,978  0.016  7^3 conv s2 + max-pool s2
unet_encoder         BasicUNet encoder + pooled 1x1x1 head       3,571,042  0.077  none: two 3^3 convs at full res
==================== ========================================== ========== ======= =================================

All AAM-ResNets use :class:`~pipeline.networks.aam_resnet.AAMResNet`'s defaults: AAM on every residual unit
(``attention="block"``) with residual fusion ``x * (1 + a_c * a_s)`` and the cheap spatial branch (depthwise-separable
dilated convolutions at half resolution), ``gamma_init=0.5`` on the branch, ``shortcut="auto"`` (chosen by measurement,
see the AAMResNet module docstring); ``build(name, **PAPER_FORM)`` gives the paper's form (product fusion, full ASPP
at full resolution), and any keyword argument of AAMResNet changes one option. The
MONAI ResNets keep MONAI's max-pool after the stem too. Every entry has ``class_activation`` (see
:class:`pipeline.networks.DenseClassifier`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from pipeline.errors import UserError
from pipeline.networks.aam_resnet import AAMResNet
from pipeline.networks.baselines import UNetEncoderClassifier, monai_densenet121, monai_resnet

__all__ = ["NetworkSpec", "available", "build", "network_spec"]

_AAM_STEM = "7x7x7 conv stride 2 + 3x3x3 max-pool stride 2"


@dataclass(frozen=True)
class NetworkSpec:
    """One registry entry.

    Attributes:
        name: registry name.
        factory: callable taking ``in_channels``, ``num_classes`` and keyword arguments.
        defaults: keyword arguments the entry passes to ``factory`` (user keyword arguments override them).
        stem: the input stem, in words (the benchmark records it).
        summary: one line on what the network is.
        gradcam_layer: the module (by name) whose activations Grad-CAM maps take
            (``aamct evaluate-cohort --heatmap gradcam``; :mod:`pipeline.inference.maps`).
    """

    name: str
    factory: Callable[..., nn.Module]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    stem: str = ""
    summary: str = ""
    gradcam_layer: str = "layer4"

    def accepted_arguments(self) -> list[str]:
        """Keyword arguments ``factory`` accepts (besides ``in_channels`` / ``num_classes``)."""
        parameters = inspect.signature(self.factory).parameters
        return sorted(
            name
            for name, parameter in parameters.items()
            if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
            and name not in {"in_channels", "num_classes"}
        )


def _monai_resnet_factory(depth: int) -> Callable[..., nn.Module]:
    def factory(
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        spatial_dims: int = 3,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 2,
        no_max_pool: bool = False,
        widen_factor: float = 1.0,
    ) -> nn.Module:
        return monai_resnet(
            depth,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            conv1_t_size=conv1_t_size,
            conv1_t_stride=conv1_t_stride,
            no_max_pool=no_max_pool,
            widen_factor=widen_factor,
        )

    factory.__name__ = f"monai_resnet{depth}"
    return factory


def _aam(name: str, summary: str, **defaults: Any) -> NetworkSpec:
    return NetworkSpec(name, AAMResNet, MappingProxyType(defaults), _AAM_STEM, summary)


_REGISTRY: dict[str, NetworkSpec] = {
    spec.name: spec
    for spec in (
        # one AAM per stage (BAM's placement): on 256-2048-channel bottleneck outputs an AAM in every unit costs
        # 1.35x ResNet-50's deployed latency, at stage ends 1.17x (benchmarks/results/networks.json)
        _aam(
            "aam_resnet50",
            "AAM-ResNet-50 teacher (bottleneck units, width 1, AAM at stage ends)",
            depth=50,
            width=1.0,
            attention="stage",
        ),
        _aam("aam_resnet34", "AAM-ResNet-34 (basic units, width 1)", depth=34, width=1.0),
        _aam("aam_resnet18", "AAM-ResNet-18 (basic units, width 1)", depth=18, width=1.0),
        _aam(
            "aam_assistant", "AAM-ResNet-34 at width 0.625: the distillation teaching assistant", depth=34, width=0.625
        ),
        # width 0.5, not 0.625: channel counts that are multiples of 32 run ~1.7x faster on oneDNN at 0.64x the FLOPs
        # (benchmarks/results/networks.json), which the student's latency goal (<= 0.3x ResNet-50) needs
        _aam("aam_student", "AAM-ResNet-18 at width 0.5: the distilled student (<= 31% of R50)", depth=18, width=0.5),
        _aam(
            "aam_student_small", "AAM-ResNet-18 at width 0.25: the small student (<= 10% of R50)", depth=18, width=0.25
        ),
        # the same network with a class map at 1/8 in-plane and 1/4 through-plane (40 mm cells on the demo's
        # 5 x 5 x 10 mm grid): layers 3-4 dilate instead of striding, so one forward pass gives score and map
        _aam(
            "aam_student_small_os8",
            "aam_student_small with output stride (8, 8, 4): dilated layers 3-4, a class map with resolution",
            depth=18,
            width=0.25,
            output_stride=(8, 8, 4),
        ),
        _aam(
            "aam_student_small_mil",
            "aam_student_small_os8 with gated attention-MIL pooling (Ilse et al. 2018) instead of the mean",
            depth=18,
            width=0.25,
            output_stride=(8, 8, 4),
            pooling="attention",
        ),
        NetworkSpec(
            "resnet50",
            _monai_resnet_factory(50),
            {},
            "7x7x7 conv stride 2 (conv1_t_stride=2; MONAI default 1) + 3x3x3 max-pool stride 2",
            "MONAI 3D ResNet-50, shortcut B",
        ),
        NetworkSpec(
            "resnet18",
            _monai_resnet_factory(18),
            {},
            "7x7x7 conv stride 2 (conv1_t_stride=2; MONAI default 1) + 3x3x3 max-pool stride 2",
            "MONAI 3D ResNet-18, shortcut B",
        ),
        NetworkSpec(
            "densenet121",
            monai_densenet121,
            {},
            "7x7x7 conv stride 2 + 3x3x3 max-pool stride 2 (MONAI's own)",
            "MONAI 3D DenseNet-121",
            gradcam_layer="class_layers.relu",
        ),
        # train.json's default: the network with the highest smallest-tertile sensitivity on the hard demo over 5
        # seeds (benchmarks/results/small_lesions.md: 36/45 vs 32/45 for aam_student_small, 29/45 for ResNet-18 w0.25)
        NetworkSpec(
            "densenet121_small",
            monai_densenet121,
            {"width": 0.25},
            "7x7x7 conv stride 2 + 3x3x3 max-pool stride 2 (MONAI's own)",
            "MONAI 3D DenseNet-121 at width 0.25 (init_features 16, growth_rate 8)",
            gradcam_layer="class_layers.relu",
        ),
        NetworkSpec(
            "unet_encoder",
            UNetEncoderClassifier,
            {},
            "none: two 3x3x3 convs at full resolution (BasicUNet's first level), then 2x max-pools",
            "BasicUNet encoder (32, 32, 64, 128, 256) with a pooled 1x1x1-conv head",
            gradcam_layer="down_4",
        ),
    )
}


def available() -> list[str]:
    """Names accepted by :func:`build`, in registry order (AAM-ResNets first, then baselines)."""
    return list(_REGISTRY)


def network_spec(name: str) -> NetworkSpec:
    """The registry entry called ``name``.

    Args:
        name: a name from :func:`available`.

    Returns:
        Its :class:`NetworkSpec`.

    Raises:
        UserError: for an unknown name.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"network {name!r}: unknown name; available: {', '.join(_REGISTRY)}") from None


def build(
    name: str,
    *,
    in_channels: int = 1,
    num_classes: int = 2,
    options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the network called ``name`` (3D, ``(B, in_channels, D, H, W)`` -> ``(B, num_classes)`` logits).

    Args:
        name: a name from :func:`available`.
        in_channels: input channels.
        num_classes: number of classes.
        **kwargs: further keyword arguments of the entry's factory (e.g. ``width``, ``attention_fusion`` for the
            AAM-ResNets; ``conv1_t_stride`` for the MONAI ResNets); they override the entry's defaults.
        options: the same as a mapping (what a bundle config passes: ``"options": "@network_kwargs"``, the
            registry arguments a run records in ``models/run.json``); ``kwargs`` win over it.

    Returns:
        The network, in training mode, on the CPU.

    Raises:
        UserError: for an unknown name, an argument the network does not take, or a value it rejects.
    """
    spec = network_spec(name)
    kwargs = {**dict(options or {}), **kwargs}
    accepted = spec.accepted_arguments()
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UserError(f"network {name!r}: unknown argument(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    arguments = {**spec.defaults, **kwargs}
    try:
        return spec.factory(in_channels=in_channels, num_classes=num_classes, **arguments)
    except ValueError as err:
        raise UserError(f"network {name!r}: {err}") from None
