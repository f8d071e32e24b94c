"""Residual units with a learnable per-channel scale on the residual branch.

Both units compute ``H(x) = act(R(F(x)) + Ws(x))`` where ``F`` is the usual residual branch (two 3x3x3 convolutions
for the basic unit, 1x1x1 -> 3x3x3 -> 1x1x1 for the bottleneck), ``A`` is an optional attention module applied to the
residual branch (the Adaptive Attention Module of :mod:`pipeline.networks.attention`, or identity), ``gamma`` is a
learnable per-channel scale, ``Ws`` is the shortcut, and ``R`` places ``gamma`` (``gamma_placement``):

- ``"branch"`` (the paper's): ``R(F) = gamma * A(F)``, gamma initialised to 0.5: the whole branch is scaled;
- ``"attention"``: ``R(F) = F + gamma * (A(F) - F)``: gamma scales only what the attention changes, the branch itself
  passes at full strength; with ``gamma_init=0`` the unit starts as the plain residual unit ``act(F(x) + Ws(x))`` and
  learns how much attention to apply, as the attention output of SAGAN (Zhang et al., ICML 2019) and DANet (Fu et al.,
  CVPR 2019) is added through a scale initialised to zero. A unit without attention has no gamma in this placement
  (a fixed buffer of ones keeps the state-dict layout), so it is exactly the plain residual unit.

Both units take a per-axis ``stride`` and a per-axis ``dilation`` of their 3x3x3 convolutions, so that a network can
trade a stage's stride for dilation (DeepLab's atrous ResNet, Chen et al. 2017; torchvision's
``replace_stride_with_dilation``) and keep its last feature map at a finer output stride.

MONAI's :class:`monai.networks.nets.resnet.ResNetBlock` / ``ResNetBottleneck`` have neither the scale nor an
attention slot, and their ``forward`` cannot be extended without copying it, so these units are written here; they
follow MONAI's layer layout (same convolutions, norms and activation placement, ``Conv``/``get_norm_layer``/
``get_act_layer`` factories) so parameter counts match MONAI's blocks apart from ``gamma`` and the attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

__all__ = [
    "GAMMA_PLACEMENTS",
    "SHORTCUT_MODES",
    "ScaledResidualBasicBlock",
    "ScaledResidualBottleneck",
    "make_shortcut",
]

#: ``"auto"``: ``Ws`` is a 1x1x1 convolution + norm where the shape changes (stride != 1 or channel count changes) and
#: identity elsewhere (as in He et al. 2016, option B); ``"projection"``: a 1x1x1 convolution + norm on every shortcut.
SHORTCUT_MODES: tuple[str, ...] = ("auto", "projection")
#: where the residual scale ``gamma`` acts (see the module docstring)
GAMMA_PLACEMENTS: tuple[str, ...] = ("branch", "attention")


def make_shortcut(
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    stride: int | Sequence[int],
    mode: str,
    norm: str | tuple,
) -> nn.Module:
    """The shortcut ``Ws`` of a residual unit.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels entering the unit.
        out_channels: channels leaving the unit.
        stride: stride of the unit (one value or one per axis).
        mode: one of :data:`SHORTCUT_MODES`.
        norm: normalisation type for the projection (MONAI ``get_norm_layer`` name or ``(name, args)``).

    Returns:
        ``nn.Identity`` when ``mode == "auto"`` and the shape is unchanged, else a 1x1x1 convolution (no bias) + norm.

    Raises:
        ValueError: for an unknown ``mode``.
    """
    if mode not in SHORTCUT_MODES:
        raise ValueError(f"shortcut mode must be one of {SHORTCUT_MODES}, got {mode!r}")
    strided = any(int(v) != 1 for v in _per_axis(stride, spatial_dims))
    if mode == "auto" and not strided and in_channels == out_channels:
        return nn.Identity()
    conv_type = Conv[Conv.CONV, spatial_dims]
    return nn.Sequential(
        conv_type(in_channels, out_channels, kernel_size=1, stride=_conv_arg(stride, spatial_dims), bias=False),
        get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=out_channels),
    )


def _per_axis(value: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """``value`` as one positive int per spatial axis."""
    values = (int(value),) * spatial_dims if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != spatial_dims or min(values) < 1:
        raise ValueError(f"expected one positive value or {spatial_dims}, got {value!r}")
    return values


def _conv_arg(value: int | Sequence[int], spatial_dims: int) -> int | tuple[int, ...]:
    """A stride / dilation / padding argument: a plain int where every axis agrees (the state of the default units)."""
    values = _per_axis(value, spatial_dims)
    return values[0] if len(set(values)) == 1 else values


def _set_channel_scale(module: nn.Module, channels: int, spatial_dims: int, init: float, learn: bool) -> None:
    """Give ``module`` its ``gamma``: a learnable parameter, or (``learn=False``, the ablation) a fixed buffer.

    Stored already broadcastable, ``(1, C, 1, ..., 1)``, so forward needs no reshape (and stays TorchScript-friendly);
    either way it is saved in the state dict under the same name.
    """
    value = torch.full((1, channels) + (1,) * spatial_dims, float(init))
    if learn:
        module.gamma = nn.Parameter(value)
    else:
        module.register_buffer("gamma", value)


class _ScaledResidualUnit(nn.Module):
    """What both units share: the attention slot, ``gamma`` and its placement, the shortcut, the output."""

    def _setup_scaling(
        self,
        *,
        out_channels: int,
        spatial_dims: int,
        attention: nn.Module | None,
        gamma_init: float,
        learn_gamma: bool,
        gamma_placement: str,
    ) -> None:
        if gamma_placement not in GAMMA_PLACEMENTS:
            raise ValueError(f"gamma_placement must be one of {GAMMA_PLACEMENTS}, got {gamma_placement!r}")
        self.gamma_placement = gamma_placement
        self.scale_attention_only = gamma_placement == "attention"
        self.attention = attention if attention is not None else nn.Identity()
        self.has_attention = attention is not None
        if self.scale_attention_only and attention is None:
            _set_channel_scale(self, out_channels, spatial_dims, 1.0, False)  # unused: the plain residual unit
        else:
            _set_channel_scale(self, out_channels, spatial_dims, gamma_init, learn_gamma)

    def _residual(self, branch: torch.Tensor) -> torch.Tensor:
        if not self.scale_attention_only:
            return self.gamma * self.attention(branch)
        if not self.has_attention:
            return branch
        return branch + self.gamma * (self.attention(branch) - branch)


class ScaledResidualBasicBlock(_ScaledResidualUnit):
    """Basic residual unit ``act(R(bn2(conv2(act(bn1(conv1(x)))))) + Ws(x))`` (two 3x3x3 convolutions).

    Args:
        in_channels: channels of the input.
        planes: channels of the output (``expansion`` is 1).
        spatial_dims: number of spatial dimensions.
        stride: stride of the first convolution (and of the projection shortcut), one value or one per axis.
        dilation: dilation (and padding) of both 3x3x3 convolutions, one value or one per axis.
        attention: module applied to the residual branch before scaling; ``None`` for none. It must map
            ``(B, planes, ...)`` to the same shape.
        gamma_init: initial value of the per-channel scale ``gamma``.
        learn_gamma: ``False`` keeps ``gamma`` fixed at ``gamma_init`` (a buffer; the ablation "without gamma" uses
            ``gamma_init=1``, the plain residual sum).
        gamma_placement: one of :data:`GAMMA_PLACEMENTS` (``"branch"``: ``gamma * A(F)``; ``"attention"``:
            ``F + gamma * (A(F) - F)``).
        shortcut: one of :data:`SHORTCUT_MODES`.
        act: activation (MONAI ``get_act_layer`` name or ``(name, args)``).
        norm: normalisation (MONAI ``get_norm_layer`` name or ``(name, args)``).
    """

    expansion: int = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        *,
        spatial_dims: int = 3,
        stride: int | Sequence[int] = 1,
        dilation: int | Sequence[int] = 1,
        attention: nn.Module | None = None,
        gamma_init: float = 0.5,
        learn_gamma: bool = True,
        gamma_placement: str = "branch",
        shortcut: str = "auto",
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        out_channels = planes * self.expansion
        stride, dilation = _conv_arg(stride, spatial_dims), _conv_arg(dilation, spatial_dims)
        self.conv1 = conv_type(
            in_channels, planes, kernel_size=3, padding=dilation, stride=stride, dilation=dilation, bias=False
        )
        self.bn1 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=planes)
        self.act = get_act_layer(name=act)
        self.conv2 = conv_type(planes, out_channels, kernel_size=3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=out_channels)
        self._setup_scaling(
            out_channels=out_channels,
            spatial_dims=spatial_dims,
            attention=attention,
            gamma_init=gamma_init,
            learn_gamma=learn_gamma,
            gamma_placement=gamma_placement,
        )
        self.shortcut = make_shortcut(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            stride=stride,
            mode=shortcut,
            norm=norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the unit to ``x`` of shape ``(B, in_channels, *spatial)``."""
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self._residual(self.bn2(self.conv2(out))) + self.shortcut(x))


class ScaledResidualBottleneck(_ScaledResidualUnit):
    """Bottleneck residual unit (1x1x1 -> 3x3x3 -> 1x1x1, ``expansion`` 4) with scale ``gamma`` and attention slot.

    ``H(x) = act(R(bn3(conv3(act(bn2(conv2(act(bn1(conv1(x))))))))) + Ws(x))``; the stride sits on the 3x3x3
    convolution, as in MONAI's ``ResNetBottleneck``.

    Args:
        in_channels: channels of the input.
        planes: width of the bottleneck; the output has ``4 * planes`` channels.
        spatial_dims: number of spatial dimensions.
        stride: stride of the 3x3x3 convolution (and of the projection shortcut), one value or one per axis.
        dilation: dilation (and padding) of the 3x3x3 convolution, one value or one per axis.
        attention: module applied to the residual branch before scaling (``(B, 4 * planes, ...)`` in and out);
            ``None`` for none.
        gamma_init: initial value of the per-channel scale ``gamma``.
        learn_gamma: ``False`` keeps ``gamma`` fixed at ``gamma_init`` (a buffer; the ablation "without gamma" uses
            ``gamma_init=1``, the plain residual sum).
        gamma_placement: one of :data:`GAMMA_PLACEMENTS` (``"branch"``: ``gamma * A(F)``; ``"attention"``:
            ``F + gamma * (A(F) - F)``).
        shortcut: one of :data:`SHORTCUT_MODES`.
        act: activation (MONAI ``get_act_layer`` name or ``(name, args)``).
        norm: normalisation (MONAI ``get_norm_layer`` name or ``(name, args)``).
    """

    expansion: int = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        *,
        spatial_dims: int = 3,
        stride: int | Sequence[int] = 1,
        dilation: int | Sequence[int] = 1,
        attention: nn.Module | None = None,
        gamma_init: float = 0.5,
        learn_gamma: bool = True,
        gamma_placement: str = "branch",
        shortcut: str = "auto",
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        out_channels = planes * self.expansion
        self.conv1 = conv_type(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=planes)
        stride, dilation = _conv_arg(stride, spatial_dims), _conv_arg(dilation, spatial_dims)
        self.conv2 = conv_type(
            planes, planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=planes)
        self.conv3 = conv_type(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=out_channels)
        self.act = get_act_layer(name=act)
        self._setup_scaling(
            out_channels=out_channels,
            spatial_dims=spatial_dims,
            attention=attention,
            gamma_init=gamma_init,
            learn_gamma=learn_gamma,
            gamma_placement=gamma_placement,
        )
        self.shortcut = make_shortcut(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            stride=stride,
            mode=shortcut,
            norm=norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the unit to ``x`` of shape ``(B, in_channels, *spatial)``."""
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        return self.act(self._residual(self.bn3(self.conv3(out))) + self.shortcut(x))
