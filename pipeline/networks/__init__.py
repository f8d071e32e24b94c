"""Classification networks: AAM-ResNet-3D (teacher / assistant / students) and baselines, by name.

``build(name, in_channels=1, num_classes=2, **kwargs)`` returns a module mapping ``(B, C, D, H, W)`` (each spatial
size >= 32) to ``(B, num_classes)`` logits; ``available()`` lists the names (table with parameter counts in
:mod:`pipeline.networks.registry`). Every registered network also has ``class_activation(x)``, per-location class
logits whose spatial mean equals the logits; :class:`DenseClassifier` exposes it as ``forward`` for sliding-window
inference and CAM heatmaps.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.networks.aam_resnet import ATTENTION_PLACEMENTS, DEPTHS, PAPER_FORM, AAMResNet
from pipeline.networks.attention import (
    ATTENTION_BRANCHES,
    FUSION_MODES,
    SPATIAL_BRANCHES,
    AdaptiveAttention,
    attention_modules,
    set_store_attention,
)
from pipeline.networks.baselines import CAMDenseNet121, CAMResNet, UNetEncoderClassifier
from pipeline.networks.blocks import GAMMA_PLACEMENTS, ScaledResidualBasicBlock, ScaledResidualBottleneck
from pipeline.networks.deploy import optimized_for_inference
from pipeline.networks.registry import NetworkSpec, available, build, network_spec

__all__ = [
    "ATTENTION_PLACEMENTS",
    "DEPTHS",
    "ATTENTION_BRANCHES",
    "FUSION_MODES",
    "GAMMA_PLACEMENTS",
    "PAPER_FORM",
    "SPATIAL_BRANCHES",
    "AAMResNet",
    "AdaptiveAttention",
    "CAMDenseNet121",
    "CAMResNet",
    "DenseClassifier",
    "NetworkSpec",
    "ScaledResidualBasicBlock",
    "ScaledResidualBottleneck",
    "SpatialMeanClassifier",
    "UNetEncoderClassifier",
    "attention_modules",
    "available",
    "build",
    "network_spec",
    "optimized_for_inference",
    "set_store_attention",
]


class DenseClassifier(nn.Module):
    """Wrap a classifier so that ``forward`` returns its dense class-activation map instead of pooled logits.

    ``DenseClassifier(model)(x)`` is ``model.class_activation(x)``, shape ``(B, num_classes, d, h, w)`` at the
    network's output stride (1/32 for the ResNets and DenseNet, 1/16 for ``unet_encoder``); averaging it over space
    gives ``model(x)``. Use it with ``monai.inferers.sliding_window_inference`` (whose output may be smaller than the
    input) and to write CAM heatmaps. Every registry entry supports it; the wrapper is TorchScript-able.

    Args:
        model: a network with a ``class_activation(x)`` method (all of :func:`available`).

    Raises:
        TypeError: if ``model`` has no ``class_activation`` method.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(model, "class_activation", None)):
            raise TypeError(
                f"{type(model).__name__} has no class_activation(x); use a network from pipeline.networks.build "
                f"({', '.join(available())})"
            )
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense class logits ``(B, num_classes, d, h, w)`` for ``x`` of shape ``(B, C, D, H, W)``."""
        return self.model.class_activation(x)


class SpatialMeanClassifier(nn.Module):
    """The classifier again, from a dense class-logit map: ``forward(x)`` is the spatial mean of ``dense(x)``.

    ``dense`` is a :class:`DenseClassifier` or its TorchScript trace; since averaging a registry network's dense map
    over space gives its logits, ``SpatialMeanClassifier(DenseClassifier(model))(x)`` equals ``model(x)`` (to float
    rounding). The exporter traces the dense map once and scripts this wrapper around the trace for ``model.ts``.
    """

    def __init__(self, dense: nn.Module) -> None:
        super().__init__()
        self.dense = dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` for ``x`` of shape ``(B, C, D, H, W)``."""
        return torch.flatten(self.dense(x), 2).mean(2)
