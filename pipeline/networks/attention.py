"""The Adaptive Attention Module (AAM): channel and spatial attention in parallel, fused into one reweighting.

Channel branch
    ``a_c = sigmoid(W2 relu(W1 GAP(x)))`` of shape ``(B, C, 1, 1, 1)``: global average pool, a two-layer MLP with
    reduction ``r``, sigmoid. This is exactly MONAI's :class:`~monai.networks.blocks.ChannelSELayer`, which is reused
    (subclassed) for its layers; it only lacks a way to return the weights instead of the reweighted tensor, which the
    fusion and attention transfer need, so :class:`ChannelAttention` adds that method.

Spatial branch
    ``a_s = sigmoid(conv1x1(ASPP(reduce(x))))`` of shape ``(B, 1, D, H, W)``: a 1x1x1 convolution reducing ``C`` to
    ``m = C / r`` channels (+ norm + act), MONAI's :class:`~monai.networks.blocks.SimpleASPP` with 3x3x3 convolutions at
    dilations ``(1, 2, 3)`` (each ``m`` channels, concatenated, then its own 1x1x1 conv + norm + act), and a 1x1x1
    convolution to one channel, sigmoid.

Fusion (the paper does not give the formula; this is our choice)
    ``"product"`` (default): ``AAM(x) = x * a_c * a_s``, a single multiplicative map in (0, 1), the parallel form of
    CBAM's sequential channel-then-spatial reweighting. ``"sum"`` (the measured alternative, see
    ``benchmarks/bench_networks.py``): ``AAM(x) = x * a_c + x * a_s``, the sum of the two reweightings (a map in
    (0, 2)). Both variants have the same parameters.

For attention transfer, set ``store_attention = True`` on a module (or on a whole network with
:func:`set_store_attention`); each forward then keeps ``last_channel_attention`` and ``last_spatial_attention``
(with their autograd graph, so a distillation loss can back-propagate through them; switch storing off, which clears
them, before ``copy.deepcopy`` of the model). Works under ``torch.jit.script``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ChannelSELayer, Convolution, SimpleASPP
from monai.networks.layers.factories import Conv
from torch import nn

__all__ = [
    "ATTENTION_BRANCHES",
    "FUSION_MODES",
    "AdaptiveAttention",
    "ChannelAttention",
    "SpatialAttention",
    "attention_modules",
    "hidden_channels",
    "set_store_attention",
]

FUSION_MODES: tuple[str, ...] = ("product", "sum")
#: which AAM branches are built: both (the AAM), or one of them alone (the ablation variants)
ATTENTION_BRANCHES: tuple[str, ...] = ("both", "channel", "spatial")


def hidden_channels(channels: int, reduction: int, *, minimum: int = 4) -> int:
    """Width of the attention bottleneck: ``channels // reduction``, but at least ``minimum`` (or ``channels``).

    Why the floor: narrow students (8-16 channels) with ``r = 16`` would otherwise get a 0- or 1-unit MLP.

    Args:
        channels: channels of the attended feature map.
        reduction: reduction ratio ``r``.
        minimum: smallest hidden width.

    Returns:
        The hidden width, between 1 and ``channels``.

    Raises:
        ValueError: if ``channels`` or ``reduction`` is not positive.
    """
    if channels < 1 or reduction < 1:
        raise ValueError(f"channels and reduction must be positive, got channels={channels} reduction={reduction}")
    return min(channels, max(channels // reduction, minimum))


class ChannelAttention(ChannelSELayer):
    """MONAI's squeeze-and-excitation layer with a method that returns the channel weights ``a_c``.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: channels of the attended feature map.
        hidden: width of the MLP's hidden layer (``channels / r``).
        act: activation of the hidden layer.
    """

    def __init__(self, *, spatial_dims: int, channels: int, hidden: int, act: str | tuple = "relu") -> None:
        # ChannelSELayer takes a reduction ratio and uses int(channels // r) hidden units; aiming at hidden + 0.5
        # makes the floor land on `hidden` whatever the float rounding
        ratio = channels / (hidden + 0.5)
        super().__init__(spatial_dims=spatial_dims, in_channels=channels, r=ratio, acti_type_1=act)  # type: ignore[arg-type]
        if self.fc[0].out_features != hidden:  # pragma: no cover - guards against a change in MONAI's rounding
            raise RuntimeError(f"ChannelSELayer produced {self.fc[0].out_features} hidden units, expected {hidden}")

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Channel weights ``a_c`` in (0, 1).

        Args:
            x: features ``(B, C, *spatial)``.

        Returns:
            Tensor ``(B, C, 1, ..., 1)``.
        """
        b, c = x.shape[0], x.shape[1]
        pooled = self.avg_pool(x).view(b, c)
        return self.fc(pooled).view([b, c] + [1] * (x.ndim - 2))


class SpatialAttention(nn.Module):
    """Spatial weights ``a_s = sigmoid(conv1x1(SimpleASPP(reduce(x))))`` from parallel dilated 3x3x3 convolutions.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: channels of the attended feature map.
        hidden: channels after the reducing 1x1x1 convolution and of each dilated convolution.
        dilations: dilation rates of the 3x3x3 convolutions.
        act: activation after the reducing conv and after the ASPP fusion conv.
        norm: normalisation after the reducing conv and after the ASPP fusion conv.
    """

    def __init__(
        self,
        *,
        spatial_dims: int,
        channels: int,
        hidden: int,
        dilations: Sequence[int] = (1, 2, 3),
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        dilations = tuple(int(d) for d in dilations)
        if not dilations or min(dilations) < 1:
            raise ValueError(f"dilations must be a non-empty sequence of positive integers, got {dilations}")
        self.reduce = Convolution(
            spatial_dims=spatial_dims, in_channels=channels, out_channels=hidden, kernel_size=1, act=act, norm=norm
        )
        self.aspp = SimpleASPP(
            spatial_dims=spatial_dims,
            in_channels=hidden,
            conv_out_channels=hidden,
            kernel_sizes=(3,) * len(dilations),
            dilations=dilations,
            norm_type=norm,
            acti_type=act,
        )
        self.fuse = Conv[Conv.CONV, spatial_dims](hidden * len(dilations), 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial weights ``(B, 1, *spatial)`` in (0, 1) for features ``x`` of shape ``(B, C, *spatial)``."""
        return torch.sigmoid(self.fuse(self.aspp(self.reduce(x))))


class AdaptiveAttention(nn.Module):
    """Adaptive Attention Module: parallel channel and spatial attention, fused (see the module docstring).

    Args:
        spatial_dims: number of spatial dimensions.
        channels: channels of the attended feature map (input and output).
        reduction: reduction ratio ``r`` of both branches (hidden width from :func:`hidden_channels`).
        dilations: dilation rates of the spatial branch's 3x3x3 convolutions.
        fusion: ``"product"`` (``x * a_c * a_s``) or ``"sum"`` (``x * a_c + x * a_s``).
        branches: ``"both"`` (the AAM), ``"channel"`` (``x * a_c``, no spatial branch built) or ``"spatial"``
            (``x * a_s``, no channel branch built); the single-branch forms are the ablation variants, for which the
            missing branch's weights read as ones.
        act: activation inside the branches.
        norm: normalisation inside the spatial branch.

    Raises:
        ValueError: for an unknown ``fusion`` / ``branches`` or bad ``channels`` / ``reduction`` / ``dilations``.
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        channels: int,
        reduction: int = 16,
        dilations: Sequence[int] = (1, 2, 3),
        fusion: str = "product",
        branches: str = "both",
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}")
        if branches not in ATTENTION_BRANCHES:
            raise ValueError(f"branches must be one of {ATTENTION_BRANCHES}, got {branches!r}")
        hidden = hidden_channels(channels, reduction)
        self.fusion = fusion
        self.branches = branches
        self.fuse_by_sum = fusion == "sum"
        self.channel = (
            ChannelAttention(spatial_dims=spatial_dims, channels=channels, hidden=hidden, act=act)
            if branches != "spatial"
            else None
        )
        self.spatial = (
            SpatialAttention(
                spatial_dims=spatial_dims, channels=channels, hidden=hidden, dilations=dilations, act=act, norm=norm
            )
            if branches != "channel"
            else None
        )
        self.store_attention = False
        # plain tensor attributes (not buffers: nothing to save), replaced on each forward while store_attention is on
        self.last_channel_attention = torch.empty(0)
        self.last_spatial_attention = torch.empty(0)

    @torch.jit.export
    def attention_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both attention maps for ``x`` without applying them.

        Args:
            x: features ``(B, C, *spatial)``.

        Returns:
            ``(a_c, a_s)`` with shapes ``(B, C, 1, ..., 1)`` and ``(B, 1, *spatial)``, values in (0, 1); a branch
            that is not built (``branches`` ablation) gives ones.
        """
        if self.channel is not None:
            channel_weights = self.channel.attention_weights(x)
        else:
            channel_weights = torch.ones([x.shape[0], x.shape[1]] + [1] * (x.ndim - 2), dtype=x.dtype, device=x.device)
        if self.spatial is not None:
            spatial_weights = self.spatial(x)
        else:
            spatial_weights = torch.ones_like(x[:, :1])
        return channel_weights, spatial_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reweight ``x`` of shape ``(B, C, *spatial)``; same shape out."""
        channel_weights, spatial_weights = self.attention_weights(x)
        if self.store_attention:
            self.last_channel_attention = channel_weights
            self.last_spatial_attention = spatial_weights
        if self.channel is None:
            return x * spatial_weights
        if self.spatial is None:
            return x * channel_weights
        if self.fuse_by_sum:
            return x * channel_weights + x * spatial_weights
        return x * (channel_weights * spatial_weights)

    def extra_repr(self) -> str:
        return f"fusion={self.fusion!r}, branches={self.branches!r}"


def attention_modules(model: nn.Module) -> list[AdaptiveAttention]:
    """Every :class:`AdaptiveAttention` inside ``model``, in forward (registration) order.

    Args:
        model: any module.

    Returns:
        The attention modules, shallowest stage first.
    """
    return [module for module in model.modules() if isinstance(module, AdaptiveAttention)]


def set_store_attention(model: nn.Module, store: bool = True) -> list[AdaptiveAttention]:
    """Switch attention-map storing on or off for every AAM in ``model`` (clears stored maps when switching off).

    Args:
        model: any module (eager; for a scripted module set ``store_attention`` on its submodules directly).
        store: keep the maps of the next forward passes.

    Returns:
        The attention modules affected, in forward order.
    """
    modules = attention_modules(model)
    for module in modules:
        module.store_attention = store
        if not store:
            module.last_channel_attention = torch.empty(0)
            module.last_spatial_attention = torch.empty(0)
    return modules
