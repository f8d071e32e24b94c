"""The Adaptive Attention Module (AAM): channel and spatial attention in parallel, fused into one reweighting.

Channel branch
    ``a_c = sigmoid(W2 relu(W1 GAP(x)))`` of shape ``(B, C, 1, 1, 1)``: global average pool, a two-layer MLP with
    reduction ``r``, sigmoid. This is exactly MONAI's :class:`~monai.networks.blocks.ChannelSELayer` (Hu et al.,
    "Squeeze-and-Excitation Networks", CVPR 2018), which is reused (subclassed) for its layers; it only lacks a way to
    return the weights instead of the reweighted tensor, which the fusion and attention transfer need, so
    :class:`ChannelAttention` adds that method.

Spatial branch, ``a_s`` of shape ``(B, 1, D, H, W)`` (``spatial=...``)
    ``"aspp"`` (the paper's form): a 1x1x1 convolution reducing ``C`` to ``m = C / r`` channels (+ norm + act),
    MONAI's :class:`~monai.networks.blocks.SimpleASPP` with full 3x3x3 convolutions at dilations ``(1, 2, 3)`` (each
    ``m`` channels, concatenated, then its own 1x1x1 conv + norm + act), and a 1x1x1 convolution to one channel,
    sigmoid.

    ``"separable"`` (cheap): the same reduction, then one *depthwise* dilated 3x3x3 convolution per rate (+ norm +
    act), concatenated and projected to one channel by a 1x1x1 convolution, sigmoid: the atrous depthwise-separable
    convolution of DeepLabv3+ (Chen et al., "Encoder-Decoder with Atrous Separable Convolution", ECCV 2018), whose
    pointwise part is folded into the final projection. Why: at batch 1 PyTorch's CPU backend runs small full
    dilated 3D convolutions through its naive ``slow_conv_dilated3d`` kernel (oneDNN is only chosen for grouped
    convolutions, batches > 1 or large maps), which made the paper's branch most of the AAM-ResNet-50's CPU time
    (``benchmarks/results/networks.json``, ``profile``); the depthwise convolutions are also ~``m`` times fewer FLOPs.

    ``spatial_stride=2`` computes the map at half resolution (2x average pool of the input, every spatial size >= 4)
    and upsamples its logits back (linear interpolation) before the sigmoid, as BAM's and CBAM's maps are coarse by
    nature; ``1`` keeps full resolution.

Fusion (``fusion=...``; the paper does not give the formula)
    ``"product"``: ``AAM(x) = x * a_c * a_s``, a single multiplicative map in (0, 1), the parallel form of CBAM's
    sequential channel-then-spatial reweighting (Woo et al., ECCV 2018). At initialisation the map is about
    ``0.5 * 0.5``, so every residual branch starts damped.

    ``"sum"``: ``AAM(x) = x * a_c + x * a_s``, the sum of the two reweightings (a map in (0, 2)).

    ``"residual"``: ``AAM(x) = x * (1 + a_c * a_s)``, the attention residual learning of Wang et al. ("Residual
    Attention Network for Image Classification", CVPR 2017): the attention can only emphasise, never suppress below
    the identity (a map in (1, 2)).

    ``"gated"``: ``AAM(x) = x * (2 a_c) * (2 a_s)``, gates centred on pass-through (a map in (0, 4)) whose last layers
    (the channel MLP's output layer and the spatial branch's projection) are initialised to zero, so that every gate
    reads exactly 1 at initialisation and the network starts as its attention-free counterpart (as zero-initialised
    residual branches do in Goyal et al. 2017 and ReZero, Bachlechner et al. 2020). ``2 sigmoid(z) = 1 + tanh(z / 2)``:
    the gate is ``1 + (a symmetric correction)``, learned from the identity outwards.

    A branch that is not built (``branches="channel"`` / ``"spatial"``, the ablation variants) reads as the neutral
    gate of the fusion: ``x * g(a)`` with ``g(a) = a`` (product, sum), ``1 + a`` (residual) or ``2 a`` (gated).

For attention transfer and the attention heatmaps, set ``store_attention = True`` on a module (or on a whole network
with :func:`set_store_attention`); each forward then keeps ``last_channel_attention`` and ``last_spatial_attention``
(the sigmoid maps ``a_c`` and ``a_s``, at the input's full resolution whatever ``spatial_stride``; with their autograd
graph, so a distillation loss can back-propagate through them; switch storing off, which clears them, before
``copy.deepcopy`` of the model). Works under ``torch.jit.script``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ChannelSELayer, Convolution, SimpleASPP
from monai.networks.layers.factories import Conv, Pool
from torch import nn

__all__ = [
    "ATTENTION_BRANCHES",
    "FUSION_MODES",
    "SPATIAL_BRANCHES",
    "AdaptiveAttention",
    "ChannelAttention",
    "SpatialAttention",
    "attention_modules",
    "hidden_channels",
    "set_store_attention",
]

FUSION_MODES: tuple[str, ...] = ("product", "sum", "residual", "gated")
#: which AAM branches are built: both (the AAM), or one of them alone (the ablation variants)
ATTENTION_BRANCHES: tuple[str, ...] = ("both", "channel", "spatial")
#: how the spatial branch computes its map: the paper's full dilated convolutions, or depthwise-separable ones
SPATIAL_BRANCHES: tuple[str, ...] = ("aspp", "separable")
#: the smallest spatial size (every axis) at which ``spatial_stride=2`` still pools: below it the map stays at full
#: resolution (pooling a 2-voxel axis would leave one value, i.e. no spatial attention on that axis at all)
_MIN_SIZE_TO_POOL = 4
_AFFINE_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}
_FUSION_CODES = {name: code for code, name in enumerate(FUSION_MODES)}


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


def _init_module(module: nn.Module) -> None:
    """Kaiming (fan-out) convolutions and unit norms: the scheme of the AAM-ResNet's backbone (and MONAI's ResNet)."""
    for sub in module.modules():
        if isinstance(sub, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, _AFFINE_NORMS) and sub.weight is not None:
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


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

    def zero_output_layer(self) -> None:
        """Zero the output layer, so that ``a_c`` is exactly 0.5 everywhere (the gated fusion's pass-through)."""
        nn.init.zeros_(self.fc[2].weight)
        nn.init.zeros_(self.fc[2].bias)


class SpatialAttention(nn.Module):
    """Spatial weights ``a_s = sigmoid(project(context(reduce(x))))`` from dilated 3x3x3 convolutions.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: channels of the attended feature map.
        hidden: channels after the reducing 1x1x1 convolution and of each dilated convolution.
        dilations: dilation rates of the 3x3x3 convolutions.
        act: activation after the reducing conv and after each context convolution (ASPP: after its fusion conv).
        norm: normalisation, likewise.
        kind: ``"aspp"`` (full dilated convolutions, MONAI's SimpleASPP: the paper's form) or ``"separable"``
            (depthwise dilated convolutions; see the module docstring).
        stride: ``1`` (map at full resolution) or ``2`` (map at half resolution, upsampled back).

    Raises:
        ValueError: for bad ``dilations``, ``kind`` or ``stride``.
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
        kind: str = "aspp",
        stride: int = 1,
    ) -> None:
        super().__init__()
        dilations = tuple(int(d) for d in dilations)
        if not dilations or min(dilations) < 1:
            raise ValueError(f"dilations must be a non-empty sequence of positive integers, got {dilations}")
        if kind not in SPATIAL_BRANCHES:
            raise ValueError(f"spatial branch must be one of {SPATIAL_BRANCHES}, got {kind!r}")
        if stride not in (1, 2):
            raise ValueError(f"spatial attention stride must be 1 or 2, got {stride}")
        self.kind = kind
        self.stride = int(stride)
        self.min_size_to_pool = _MIN_SIZE_TO_POOL  # an attribute: TorchScript cannot read module globals
        self.interpolation = _INTERPOLATION[spatial_dims]
        self.pool = Pool[Pool.AVG, spatial_dims](kernel_size=2, stride=2) if stride == 2 else nn.Identity()
        self.reduce = Convolution(
            spatial_dims=spatial_dims, in_channels=channels, out_channels=hidden, kernel_size=1, act=act, norm=norm
        )
        if kind == "aspp":
            self.aspp = SimpleASPP(
                spatial_dims=spatial_dims,
                in_channels=hidden,
                conv_out_channels=hidden,
                kernel_sizes=(3,) * len(dilations),
                dilations=dilations,
                norm_type=norm,
                acti_type=act,
            )
            self.context = nn.ModuleList()
        else:
            self.aspp = nn.Identity()
            self.context = nn.ModuleList(
                Convolution(
                    spatial_dims=spatial_dims,
                    in_channels=hidden,
                    out_channels=hidden,
                    kernel_size=3,
                    dilation=d,
                    groups=hidden,
                    act=act,
                    norm=norm,
                    bias=False,
                )
                for d in dilations
            )
        self.separable = kind == "separable"
        self.fuse = Conv[Conv.CONV, spatial_dims](hidden * len(dilations), 1, kernel_size=1)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x
        for size in x.shape[2:]:
            if size < self.min_size_to_pool:
                return x
        return self.pool(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-sigmoid map ``(B, 1, *spatial)`` at the input's resolution."""
        reduced = self.reduce(self._pooled(x))
        if self.separable:
            context = torch.cat([conv(reduced) for conv in self.context], dim=1)
        else:
            context = self.aspp(reduced)
        out = self.fuse(context)
        if out.shape[2:] != x.shape[2:]:
            out = nn.functional.interpolate(out, size=x.shape[2:], mode=self.interpolation, align_corners=False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial weights ``(B, 1, *spatial)`` in (0, 1) for features ``x`` of shape ``(B, C, *spatial)``."""
        return torch.sigmoid(self.logits(x))

    def zero_output_layer(self) -> None:
        """Zero the projection, so that ``a_s`` is exactly 0.5 everywhere (the gated fusion's pass-through)."""
        nn.init.zeros_(self.fuse.weight)
        if self.fuse.bias is not None:
            nn.init.zeros_(self.fuse.bias)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, stride={self.stride}"


class AdaptiveAttention(nn.Module):
    """Adaptive Attention Module: parallel channel and spatial attention, fused (see the module docstring).

    Args:
        spatial_dims: number of spatial dimensions.
        channels: channels of the attended feature map (input and output).
        reduction: reduction ratio ``r`` of both branches (hidden width from :func:`hidden_channels`).
        dilations: dilation rates of the spatial branch's 3x3x3 convolutions.
        fusion: one of :data:`FUSION_MODES` (``"product"``: ``x * a_c * a_s``, the paper's; ``"gated"``:
            pass-through at initialisation).
        branches: ``"both"`` (the AAM), ``"channel"`` (no spatial branch built) or ``"spatial"`` (no channel branch
            built); the single-branch forms are the ablation variants, for which the missing branch's weights read
            as ones (:meth:`attention_weights`) and its gate as neutral.
        spatial: the spatial branch, one of :data:`SPATIAL_BRANCHES`.
        spatial_stride: ``1`` (spatial map at full resolution) or ``2`` (half resolution, upsampled).
        act: activation inside the branches.
        norm: normalisation inside the spatial branch.

    Raises:
        ValueError: for an unknown ``fusion`` / ``branches`` / ``spatial`` or bad ``channels`` / ``reduction`` /
            ``dilations`` / ``spatial_stride``.
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
        spatial: str = "aspp",
        spatial_stride: int = 1,
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
        self.fusion_code = _FUSION_CODES[fusion]  # an int: TorchScript compares it faster than a string
        self.branches = branches
        self.channel = (
            ChannelAttention(spatial_dims=spatial_dims, channels=channels, hidden=hidden, act=act)
            if branches != "spatial"
            else None
        )
        self.spatial = (
            SpatialAttention(
                spatial_dims=spatial_dims,
                channels=channels,
                hidden=hidden,
                dilations=dilations,
                act=act,
                norm=norm,
                kind=spatial,
                stride=spatial_stride,
            )
            if branches != "channel"
            else None
        )
        self.store_attention = False
        # plain tensor attributes (not buffers: nothing to save), replaced on each forward while store_attention is on
        self.last_channel_attention = torch.empty(0)
        self.last_spatial_attention = torch.empty(0)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the branches: Kaiming (fan-out) convolutions, unit norms; the gated fusion's gates at 1.

        The channel MLP keeps PyTorch's default ``Linear`` initialisation (as MONAI's SE layer does). The spatial
        projection to one channel gets the Kaiming fan-out initialisation of every convolution (the scheme this
        project has used since its first AAM: with a fan-out of 1 its logits start large, so ``a_s`` starts near 0
        or 1 per voxel); the gated fusion zeroes it (and the MLP's output layer) instead, so that it starts neutral.
        """
        if self.spatial is not None:
            _init_module(self.spatial)
        if self.fusion == "gated":
            if self.channel is not None:
                self.channel.zero_output_layer()
            if self.spatial is not None:
                self.spatial.zero_output_layer()

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

    def _gate(self, weights: torch.Tensor) -> torch.Tensor:
        """One branch's gate alone (the other branch not built): neutral partner for every fusion."""
        if self.fusion_code == 2:  # residual
            return 1.0 + weights
        if self.fusion_code == 3:  # gated
            return 2.0 * weights
        return weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reweight ``x`` of shape ``(B, C, *spatial)``; same shape out."""
        channel_weights, spatial_weights = self.attention_weights(x)
        if self.store_attention:
            self.last_channel_attention = channel_weights
            self.last_spatial_attention = spatial_weights
        if self.channel is None:
            return x * self._gate(spatial_weights)
        if self.spatial is None:
            return x * self._gate(channel_weights)
        if self.fusion_code == 1:  # sum
            return x * channel_weights + x * spatial_weights
        if self.fusion_code == 2:  # residual: x + (x * a_c) * a_s, two passes over x instead of three
            return torch.addcmul(x, x * channel_weights, spatial_weights)
        if self.fusion_code == 3:  # gated: x * (2 a_c) * (2 a_s), the channel factor folded first (two passes)
            return (x * (4.0 * channel_weights)) * spatial_weights
        return (x * channel_weights) * spatial_weights

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
