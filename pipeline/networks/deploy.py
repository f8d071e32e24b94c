"""A network in its CPU inference form: TorchScript, frozen, optimised for inference (oneDNN convolutions).

Why this exists: at batch size 1 PyTorch's CPU convolution dispatcher sends a 3D convolution to oneDNN only for
grouped convolutions, kernels larger than 3 or large enough maps (``N * C * D * H > 20480``, a rule tuned on 2D
images); the rest run through the native ``slow_conv3d`` / ``slow_conv_dilated3d`` kernels, which are several times
slower. Narrow networks (the distilled students) and the late, small feature maps of every ResNet fall on the slow
side: ``benchmarks/results/networks.json`` (``profile``) counts the calls and their time. PyTorch's own
``torch.jit.optimize_for_inference`` rewrites a frozen TorchScript module to prepacked oneDNN convolutions (and folds
every batch norm into the convolution before it), so this module only chains PyTorch's three calls; nothing here is
hand-written numerics. The result is an inference-only module for CPU float32 input (no gradients, no attention-map
storing); ``torch.testing.assert_close`` with its own tolerance holds against the eager network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["optimized_for_inference"]


def optimized_for_inference(model: nn.Module, *, preserved_methods: Sequence[str] = ()) -> torch.jit.ScriptModule:
    """``torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(model.eval())))``.

    Args:
        model: a registry network or a :class:`~pipeline.networks.DenseClassifier` (left in eval mode).
        preserved_methods: exported methods to keep besides ``forward`` (e.g. ``["class_activation"]``).

    Returns:
        The frozen, optimised TorchScript module (CPU inference only).
    """
    scripted = torch.jit.script(model.eval())
    frozen = torch.jit.freeze(scripted, preserved_attrs=list(preserved_methods))
    return torch.jit.optimize_for_inference(frozen, other_methods=list(preserved_methods) or None)
