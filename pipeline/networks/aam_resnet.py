"""AAM-ResNet-3D: a ResNet with scaled residual units, Adaptive Attention Modules and a dense (CAM) classifier head.

Layout (``spatial_dims``-generic through MONAI's ``Conv`` / ``Pool`` factories and ``get_norm_layer``)::

    stem    : k^3 convolution (default 7x7x7, stride 2, no bias) + norm + act + 3x3x3 max-pool stride 2
              (the torchvision / MONAI layout; MONAI's ResNet defaults to stride 1, which is ~8x slower on CPU)
    layer1-4: scaled residual units (pipeline.networks.blocks), widths (64, 128, 256, 512) * width multiplier,
              stride 2 at the start of layers 2-4, AAM on the residual branch of every unit ("block") or of the last
              unit of each layer ("stage"), or nowhere ("none")
    head    : 1x1x1 convolution C -> num_classes (a Linear applied per location)

Total stride 32: any input of at least 32 voxels per axis works (odd sizes included). Because the classifier is
linear and applied per location, ``class_activation(x)`` (per-location class logits at 1/32 resolution) averaged over
space equals ``forward(x)``, so CAM heatmaps and sliding-window whole-volume inference come without Grad-CAM.

A map with resolution, from the same forward pass (both off by default, so the registry's networks are unchanged):

- ``output_stride=8`` (or one value per axis, e.g. ``(8, 8, 4)``): layers whose stride would take an axis past the
  output stride keep stride 1 there and dilate their 3x3x3 convolutions instead (DeepLab's atrous ResNet, Chen et
  al., "Rethinking Atrous Convolution", 2017; torchvision's ``replace_stride_with_dilation``: the first unit of such
  a layer keeps the previous rate, the others double it), so the last feature map, and the class map on it, stay at
  1/8 (the receptive field grows as before; the parameters are the same).
- ``pooling="attention"``: gated attention pooling over the last map's locations instead of their mean
  (attention-based multiple-instance learning, Ilse et al., ICML 2018; :mod:`pipeline.networks.pooling`); the class
  map ``N a_k W h_k + b`` keeps the spatial-mean contract.

The backbone's parameters are drawn in the same random order whatever the attention: every Adaptive Attention Module
is built (and initialised) on a forked random stream that is then discarded, so ``AAMResNet(attention="none")`` and
an attention variant built after the same ``torch.manual_seed`` share every backbone weight. With a pass-through
attention (``attention_fusion="gated"``, or ``gamma_placement="attention"`` with ``gamma_init=0``) the two networks
then compute the same output at initialisation.

The defaults were chosen by measurement (``benchmarks/results/medmnist_adrenalmnist3d_probes.md``: one seed each on
AdrenalMNIST3D, selected on the val split among the variants that meet the latency goal of ``bench_networks``):
residual fusion ``x * (1 + a_c * a_s)`` with the cheap spatial branch (depthwise-separable dilated convolutions at half
resolution) in every unit, gamma 0.5 on the branch. ``build(name, **PAPER_FORM)`` builds the paper's form.

Variants that make the attention unable to hurt at initialisation (all options of :class:`AAMResNet`; the paper's form,
:data:`PAPER_FORM`, stays available):

- ``attention_fusion="gated"``: gates centred on pass-through, initialised to exactly 1 (see
  :mod:`pipeline.networks.attention`); ``"residual"``: ``x * (1 + a)`` (Wang et al., CVPR 2017).
- ``zero_init_residual=True``: the last norm of every residual branch starts at zero, so every unit starts as its
  shortcut (Goyal et al., "Accurate, Large Minibatch SGD", 2017; the torchvision option of the same name).
- ``attention="stage"``: attention only in the last unit of each stage (as BAM sits at stage ends, Park et al., BMVC
  2018).
- ``gamma_placement="attention"`` (with ``gamma_init=0``): ``F + gamma * (A(F) - F)``, gamma scales only the attention's
  change, initialised to zero (SAGAN, Zhang et al., ICML 2019).
- ``attention_spatial="separable"``, ``attention_spatial_stride=2``: the cheap spatial branch (depthwise-separable
  dilated convolutions at half resolution; DeepLabv3+, Chen et al., ECCV 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.utils import ensure_tuple_rep
from torch import nn

from pipeline.networks.attention import ATTENTION_BRANCHES, FUSION_MODES, SPATIAL_BRANCHES, AdaptiveAttention
from pipeline.networks.blocks import (
    GAMMA_PLACEMENTS,
    SHORTCUT_MODES,
    ScaledResidualBasicBlock,
    ScaledResidualBottleneck,
)
from pipeline.networks.pooling import GatedAttentionPooling

__all__ = ["AAMResNet", "ATTENTION_PLACEMENTS", "DEPTHS", "PAPER_FORM", "POOLINGS"]

#: depth -> (residual unit, units per layer), as in He et al. 2016 / MONAI's resnet18/34/50
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}
ATTENTION_PLACEMENTS: tuple[str, ...] = ("block", "stage", "none")
#: how the last feature map becomes the case's features: the mean over locations, or gated attention (MIL)
POOLINGS: tuple[str, ...] = ("mean", "attention")
#: the AAM-ResNet as the paper describes it (and as this project built it up to session 3): AAM with product fusion
#: and the full dilated ASPP spatial branch at full resolution in every unit, gamma 0.5 scaling the whole branch
PAPER_FORM: dict[str, object] = {
    "attention": "block",
    "attention_fusion": "product",
    "attention_spatial": "aspp",
    "attention_spatial_stride": 1,
    "gamma_placement": "branch",
    "gamma_init": 0.5,
    "zero_init_residual": False,
}
_AFFINE_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_UNITS = {"basic": ScaledResidualBasicBlock, "bottleneck": ScaledResidualBottleneck}


def _isolated_rng(factory: type[nn.Module], **kwargs: object) -> nn.Module:
    """Build ``factory(**kwargs)`` on a fork of the CPU random stream, leaving the global stream where it was.

    Why: the backbone's weights must not depend on whether (and where) attention modules are built, so that an
    attention variant and the attention-free network built after the same seed share the backbone exactly.
    """
    with torch.random.fork_rng(devices=[]):
        return factory(**kwargs)


class AAMResNet(nn.Module):
    """3D ResNet with learnable residual scaling, Adaptive Attention Modules and a class-activation head.

    Args:
        depth: 18 or 34 (basic units) or 50 (bottleneck units).
        spatial_dims: number of spatial dimensions (3 for CT).
        in_channels: input channels.
        num_classes: number of classes (logits).
        width: width multiplier applied to ``base_planes`` (rounded, at least 1 channel).
        base_planes: per-layer widths before the multiplier (bottleneck outputs are 4x these).
        layers: units per layer, overriding the ``depth`` table (the unit type still follows ``depth``).
        stem_kernel: kernel size of the stem convolution.
        stem_stride: stride of the stem convolution.
        stem_max_pool: follow the stem with a 3x3x3 max-pool of stride 2.
        attention: AAM placement, ``"block"`` (every unit), ``"stage"`` (last unit of each layer) or ``"none"``.
        attention_reduction: reduction ratio ``r`` of the AAM branches.
        attention_dilations: dilation rates of the AAM spatial branch.
        attention_fusion: one of :data:`~pipeline.networks.attention.FUSION_MODES` (default ``"residual"``,
            ``x * (1 + a_c * a_s)``; the paper's is ``"product"``; see :mod:`pipeline.networks.attention`).
        attention_branches: ``"both"`` (the AAM), ``"channel"`` or ``"spatial"`` (one branch only: ablation).
        attention_spatial: the AAM's spatial branch, ``"aspp"`` (full dilated convolutions, the paper's) or
            ``"separable"`` (depthwise dilated convolutions, the default).
        attention_spatial_stride: ``1`` (spatial map at full resolution) or ``2`` (half resolution, upsampled: the
            default).
        gamma_init: initial value of every residual scale ``gamma``.
        learn_gamma: learn ``gamma`` (default) or keep it fixed at ``gamma_init`` (ablation: ``gamma_init=1``,
            ``learn_gamma=False`` is the plain residual ``F(x) + Ws(x)``).
        gamma_placement: ``"branch"`` (``gamma * A(F)``, the paper's) or ``"attention"`` (``F + gamma * (A(F) - F)``);
            see :mod:`pipeline.networks.blocks`.
        zero_init_residual: initialise the last norm's scale of every residual branch to zero (Goyal et al. 2017).
        shortcut: ``"auto"`` (1x1x1 projection only where the shape changes, identity elsewhere) or ``"projection"``
            (1x1x1 projection on every shortcut).
        dropout_prob: dropout on the pooled features before the classifier (training only).
        output_stride: total stride of the last feature map, one value or one per axis (``None``: the stem's stride
            times 8, i.e. 32 with the default stem); a smaller value dilates the later layers instead of striding
            them (see the module docstring). Each value must be the stem's stride times 1, 2, 4 or 8.
        pooling: one of :data:`POOLINGS`: ``"mean"`` (global average pool) or ``"attention"`` (gated attention
            pooling over the last map's locations, :class:`~pipeline.networks.pooling.GatedAttentionPooling`).
        pooling_hidden: hidden width of the attention pooling.
        act: activation (MONAI ``get_act_layer`` name or ``(name, args)``).
        norm: normalisation (MONAI ``get_norm_layer`` name or ``(name, args)``).

    Raises:
        ValueError: for an unknown depth, placement, fusion or shortcut mode, or non-positive sizes.
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 2,
        width: float = 1.0,
        base_planes: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] | None = None,
        stem_kernel: int = 7,
        stem_stride: int = 2,
        stem_max_pool: bool = True,
        attention: str = "block",
        attention_reduction: int = 16,
        attention_dilations: Sequence[int] = (1, 2, 3),
        attention_fusion: str = "residual",
        attention_branches: str = "both",
        attention_spatial: str = "separable",
        attention_spatial_stride: int = 2,
        gamma_init: float = 0.5,
        learn_gamma: bool = True,
        gamma_placement: str = "branch",
        zero_init_residual: bool = False,
        shortcut: str = "auto",
        dropout_prob: float = 0.0,
        output_stride: int | Sequence[int] | None = None,
        pooling: str = "mean",
        pooling_hidden: int = 32,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth}")
        if attention not in ATTENTION_PLACEMENTS:
            raise ValueError(f"attention must be one of {ATTENTION_PLACEMENTS}, got {attention!r}")
        if attention_fusion not in FUSION_MODES:
            raise ValueError(f"attention_fusion must be one of {FUSION_MODES}, got {attention_fusion!r}")
        if attention_branches not in ATTENTION_BRANCHES:
            raise ValueError(f"attention_branches must be one of {ATTENTION_BRANCHES}, got {attention_branches!r}")
        if attention_spatial not in SPATIAL_BRANCHES:
            raise ValueError(f"attention_spatial must be one of {SPATIAL_BRANCHES}, got {attention_spatial!r}")
        if attention_spatial_stride not in (1, 2):
            raise ValueError(f"attention_spatial_stride must be 1 or 2, got {attention_spatial_stride}")
        if gamma_placement not in GAMMA_PLACEMENTS:
            raise ValueError(f"gamma_placement must be one of {GAMMA_PLACEMENTS}, got {gamma_placement!r}")
        if shortcut not in SHORTCUT_MODES:
            raise ValueError(f"shortcut must be one of {SHORTCUT_MODES}, got {shortcut!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if width <= 0 or in_channels < 1 or num_classes < 1:
            raise ValueError(
                f"width, in_channels and num_classes must be positive, got {width}, {in_channels}, {num_classes}"
            )
        if len(base_planes) != 4 or min(base_planes) < 1:
            raise ValueError(f"base_planes must give 4 positive widths, got {tuple(base_planes)}")
        unit_name, default_layers = DEPTHS[depth]
        layers = tuple(int(n) for n in (layers if layers is not None else default_layers))
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must give 4 positive unit counts, got {layers}")
        unit = _UNITS[unit_name]
        stage_strides = _stage_strides(
            spatial_dims=spatial_dims,
            stem_stride=stem_stride * (2 if stem_max_pool else 1),
            output_stride=output_stride,
        )

        self.depth = depth
        self.attention_placement = attention
        conv_type = Conv[Conv.CONV, spatial_dims]
        planes = [max(1, round(p * width)) for p in base_planes]
        stem_kernel_size = ensure_tuple_rep(stem_kernel, spatial_dims)

        stem: list[nn.Module] = [
            conv_type(
                in_channels,
                planes[0],
                kernel_size=stem_kernel_size,
                stride=stem_stride,
                padding=tuple(k // 2 for k in stem_kernel_size),
                bias=False,
            ),
            get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=planes[0]),
            get_act_layer(name=act),
        ]
        if stem_max_pool:
            stem.append(Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)

        channels = planes[0]
        stages: list[nn.Module] = []
        dilation = (1,) * spatial_dims
        for index, (stage_planes, n_units) in enumerate(zip(planes, layers, strict=True)):
            units: list[nn.Module] = []
            stride, entry_dilation = stage_strides[index], dilation
            # an axis that keeps stride 1 where the plain ResNet strides dilates by 2 instead, from the second unit on
            dilation = tuple(d * (2 // s) if index > 0 else d for d, s in zip(dilation, stride, strict=True))
            for position in range(n_units):
                out_channels = stage_planes * unit.expansion
                wants_attention = attention == "block" or (attention == "stage" and position == n_units - 1)
                aam = (
                    _isolated_rng(
                        AdaptiveAttention,
                        spatial_dims=spatial_dims,
                        channels=out_channels,
                        reduction=attention_reduction,
                        dilations=attention_dilations,
                        fusion=attention_fusion,
                        branches=attention_branches,
                        spatial=attention_spatial,
                        spatial_stride=attention_spatial_stride,
                        act=act,
                        norm=norm,
                    )
                    if wants_attention
                    else None
                )
                units.append(
                    unit(
                        channels,
                        stage_planes,
                        spatial_dims=spatial_dims,
                        stride=_compact(stride) if position == 0 else 1,
                        dilation=_compact(entry_dilation if position == 0 else dilation),
                        attention=aam,
                        gamma_init=gamma_init,
                        learn_gamma=learn_gamma,
                        gamma_placement=gamma_placement,
                        shortcut=shortcut,
                        act=act,
                        norm=norm,
                    )
                )
                channels = out_channels
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_channels = channels
        self.output_stride = tuple(
            stem_stride * (2 if stem_max_pool else 1) * math.prod(axis) for axis in zip(*stage_strides, strict=True)
        )
        self.global_pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.attention_pooling = pooling == "attention"
        # built on its own random stream, as the AAMs are: the backbone and classifier draw the same weights either way
        self.mil_pool = (
            _isolated_rng(GatedAttentionPooling, spatial_dims=spatial_dims, channels=channels, hidden=pooling_hidden)
            if self.attention_pooling
            else nn.Identity()
        )
        self.dropout = nn.Dropout(p=float(dropout_prob))
        self.classifier = conv_type(channels, num_classes, kernel_size=1, bias=True)
        self._init_weights(conv_type, zero_init_residual=zero_init_residual)

    def _init_weights(self, conv_type: type[nn.Module], *, zero_init_residual: bool) -> None:
        # MONAI ResNet's scheme (Kaiming fan_out for convolutions, unit norms); the classifier keeps PyTorch's default
        # (Linear-like) init so initial logits stay small, bias 0 as MONAI does for its fc. The attention modules
        # initialised themselves on their own random stream: skipping them keeps the backbone's draws in the same order
        # whatever the attention
        inside_attention = {
            id(sub)
            for aam in self.modules()
            if isinstance(aam, (AdaptiveAttention, GatedAttentionPooling))
            for sub in aam.modules()
        }
        for module in self.modules():
            if id(module) in inside_attention:
                continue
            if isinstance(module, conv_type) and module is not self.classifier:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, _AFFINE_NORMS) and module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.classifier.bias)
        if zero_init_residual:
            for unit in self.modules():
                if isinstance(unit, (ScaledResidualBasicBlock, ScaledResidualBottleneck)):
                    last_norm = unit.bn3 if isinstance(unit, ScaledResidualBottleneck) else unit.bn2
                    if getattr(last_norm, "weight", None) is not None:
                        nn.init.zeros_(last_norm.weight)

    @torch.jit.export
    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-layer feature map ``(B, feature_channels, d, h, w)`` at 1/``output_stride`` of the input size (rounded
        up; 1/32 by default)."""
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    @torch.jit.export
    def class_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location class logits ``(B, num_classes, d, h, w)``; their spatial mean equals ``forward(x)``.

        Args:
            x: input ``(B, in_channels, D, H, W)``, every spatial size at least 32.

        Returns:
            The dense class-activation map (no dropout: use in eval mode for the equality with ``forward``). With
            attention pooling it is ``N a_k W h_k + b`` (``N`` locations, weights ``a_k``), whose mean is the logits.
        """
        features = self.extract_features(x)
        dense = self.classifier(features)
        if not self.attention_pooling:
            return dense
        weights = self.mil_pool(features)
        bias = self.classifier.bias
        if bias is None:
            return dense * (weights * float(weights[0, 0].numel()))
        bias = bias.reshape([1, -1] + [1] * (features.dim() - 2))
        return (dense - bias) * (weights * float(weights[0, 0].numel())) + bias

    @torch.jit.export
    def instance_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention pooling's weights ``(B, 1, d, h, w)`` (sum 1 per case); uniform ``1 / N`` for mean pooling."""
        features = self.extract_features(x)
        if self.attention_pooling:
            return self.mil_pool(features)
        ones = torch.ones_like(features[:, :1])
        return ones / float(ones[0, 0].numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` for ``x`` of shape ``(B, in_channels, D, H, W)``."""
        features = self.extract_features(x)
        if self.attention_pooling:
            weights = self.mil_pool(features)
            pooled = (features * weights).sum(dim=list(range(2, features.dim())), keepdim=True)
        else:
            pooled = self.global_pool(features)
        return self.classifier(self.dropout(pooled)).flatten(1)


def _stage_strides(
    *, spatial_dims: int, stem_stride: int, output_stride: int | Sequence[int] | None
) -> list[tuple[int, ...]]:
    """The per-axis stride of layers 1-4: 2 at the start of layers 2-4 until an axis reaches ``output_stride``.

    Raises:
        ValueError: an output stride that is not the stem's stride times 1, 2, 4 or 8.
    """
    if output_stride is None:
        targets = (stem_stride * 8,) * spatial_dims
    else:
        targets = tuple(ensure_tuple_rep(output_stride, spatial_dims))
    allowed = tuple(stem_stride * 2**k for k in range(4))
    if any(int(t) not in allowed for t in targets):
        raise ValueError(
            f"output_stride must be one of {allowed} per axis (the stem's stride times 2^k), got {targets}"
        )
    strides, reached = [(1,) * spatial_dims], [stem_stride] * spatial_dims
    for _ in range(3):
        stage = tuple(2 if reached[axis] * 2 <= int(targets[axis]) else 1 for axis in range(spatial_dims))
        reached = [r * s for r, s in zip(reached, stage, strict=True)]
        strides.append(stage)
    return strides


def _compact(values: tuple[int, ...]) -> int | tuple[int, ...]:
    """One int where every axis agrees (what the default network's units were always given)."""
    return values[0] if len(set(values)) == 1 else values
