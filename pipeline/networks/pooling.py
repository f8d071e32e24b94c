"""Gated attention pooling over the locations of a feature map: attention-based multiple-instance learning.

Ilse, Tomczak and Welling, "Attention-based Deep Multiple Instance Learning" (ICML 2018), pool a bag of instance
embeddings ``h_k`` with learned weights ``a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))`` into
``z = sum_k a_k h_k``, which a linear classifier scores. Here each location of a network's last feature map is an
instance (a patch of the input, as large as the receptive field, at the output stride), so the weights form a map
over the input that the classifier itself produced, and with a linear classifier ``W``:

    ``W z + b = sum_k a_k (W h_k) + b = mean_k (N a_k W h_k) + b``   (``N`` locations)

so ``N a_k W h_k + b`` is a per-location class map whose spatial mean is exactly the logits: the dense
class-activation contract every registry network keeps (:class:`pipeline.networks.DenseClassifier`, sliding-window
inference and the CAM heatmap need nothing else). MONAI has no attention-MIL pooling for dense 3D feature maps (its
:class:`~monai.networks.nets.MILModel` pools a bag of separate 2D tiles through a torchvision backbone), hence this
module; the three projections are 1x1x1 convolutions, i.e. V, U and w applied at every location.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn

__all__ = ["GatedAttentionPooling"]


class GatedAttentionPooling(nn.Module):
    """Gated attention weights over the locations of ``(B, C, *spatial)`` features, softmax over all locations.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: feature channels ``C``.
        hidden: width ``L`` of the attention's hidden layer (Ilse et al. use 128 for 500-d embeddings).
    """

    def __init__(self, *, spatial_dims: int = 3, channels: int, hidden: int = 32) -> None:
        super().__init__()
        if channels < 1 or hidden < 1:
            raise ValueError(f"channels and hidden must be positive, got {channels}, {hidden}")
        conv_type = Conv[Conv.CONV, spatial_dims]
        self.value = conv_type(channels, hidden, kernel_size=1, bias=True)  # V
        self.gate = conv_type(channels, hidden, kernel_size=1, bias=True)  # U
        self.score = conv_type(hidden, 1, kernel_size=1, bias=True)  # w

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The weights ``(B, 1, *spatial)``: non-negative, summing to 1 over the locations of each case."""
        logits = self.score(torch.tanh(self.value(features)) * torch.sigmoid(self.gate(features)))
        shape = logits.shape
        return torch.softmax(logits.flatten(2), dim=2).view(shape)
