"""Residual units with a learnable per-channel scale on the residual branch.

Both units compute ``H(x) = act(gamma * A(F(x)) + Ws(x))`` where ``F`` is the usual residual branch (two 3x3x3
convolutions for the basic unit, 1x1x1 -> 3x3x3 -> 1x1x1 for the bottleneck), ``A`` is an optional attention module
applied to the residual branch (the Adaptive Attention Module of :mod:`pipeline.networks.attention`, or identity),
``gamma`` is a learnable per-channel scale initialised to 0.5, and ``Ws`` is the shortcut.

MONAI's :class:`monai.networks.nets.resnet.ResNetBlock` / ``ResNetBottleneck`` have neither the scale nor an
attention slot, and their ``forward`` cannot be extended without copying it, so these units are written here; they
follow MONAI's layer layout (same convolutions, norms and activation placement, ``Conv``/``get_norm_layer``/
``get_act_layer`` factories) so parameter counts match MONAI's blocks apart from ``gamma`` and the attention.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

__all__ = ["SHORTCUT_MODES", "ScaledResidualBasicBlock", "ScaledResidualBottleneck", "make_shortcut"]

#: ``"auto"``: ``Ws`` is a 1x1x1 convolution + norm where the shape changes (stride != 1 or channel count changes) and
#: identity elsewhere (as in He et al. 2016, option B); ``"projection"``: a 1x1x1 convolution + norm on every shortcut.
SHORTCUT_MODES: tuple[str, ...] = ("auto", "projection")


def make_shortcut(
    *, spatial_dims: int, in_channels: int, out_channels: int, stride: int, mode: str, norm: str | tuple
) -> nn.Module:
    """The shortcut ``Ws`` of a residual unit.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels entering the unit.
        out_channels: channels leaving the unit.
        stride: stride of the unit.
        mode: one of :data:`SHORTCUT_MODES`.
        norm: normalisation type for the projection (MONAI ``get_norm_layer`` name or ``(name, args)``).

    Returns:
        ``nn.Identity`` when ``mode == "auto"`` and the shape is unchanged, else a 1x1x1 convolution (no bias) + norm.

    Raises:
        ValueError: for an unknown ``mode``.
    """
    if mode not in SHORTCUT_MODES:
        raise ValueError(f"shortcut mode must be one of {SHORTCUT_MODES}, got {mode!r}")
    if mode == "auto" and stride == 1 and in_channels == out_channels:
        return nn.Identity()
    conv_type = Conv[Conv.CONV, spatial_dims]
    return nn.Sequential(
        conv_type(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=out_channels),
    )


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


class ScaledResidualBasicBlock(nn.Module):
    """Basic residual unit ``act(gamma * A(bn2(conv2(act(bn1(conv1(x)))))) + Ws(x))`` (two 3x3x3 convolutions).

    Args:
        in_channels: channels of the input.
        planes: channels of the output (``expansion`` is 1).
        spatial_dims: number of spatial dimensions.
        stride: stride of the first convolution (and of the projection shortcut).
        attention: module applied to the residual branch before scaling; ``None`` for none. It must map
            ``(B, planes, ...)`` to the same shape.
        gamma_init: initial value of the per-channel scale ``gamma``.
        learn_gamma: ``False`` keeps ``gamma`` fixed at ``gamma_init`` (a buffer; the ablation "without gamma" uses
            ``gamma_init=1``, the plain residual sum).
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
        stride: int = 1,
        attention: nn.Module | None = None,
        gamma_init: float = 0.5,
        learn_gamma: bool = True,
        shortcut: str = "auto",
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        out_channels = planes * self.expansion
        self.conv1 = conv_type(in_channels, planes, kernel_size=3, padding=1, stride=stride, bias=False)
        self.bn1 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=planes)
        self.act = get_act_layer(name=act)
        self.conv2 = conv_type(planes, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=out_channels)
        self.attention = attention if attention is not None else nn.Identity()
        _set_channel_scale(self, out_channels, spatial_dims, gamma_init, learn_gamma)
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
        out = self.attention(self.bn2(self.conv2(out)))
        return self.act(self.gamma * out + self.shortcut(x))


class ScaledResidualBottleneck(nn.Module):
    """Bottleneck residual unit (1x1x1 -> 3x3x3 -> 1x1x1, ``expansion`` 4) with scale ``gamma`` and attention slot.

    ``H(x) = act(gamma * A(bn3(conv3(act(bn2(conv2(act(bn1(conv1(x))))))))) + Ws(x))``; the stride sits on the 3x3x3
    convolution, as in MONAI's ``ResNetBottleneck``.

    Args:
        in_channels: channels of the input.
        planes: width of the bottleneck; the output has ``4 * planes`` channels.
        spatial_dims: number of spatial dimensions.
        stride: stride of the 3x3x3 convolution (and of the projection shortcut).
        attention: module applied to the residual branch before scaling (``(B, 4 * planes, ...)`` in and out);
            ``None`` for none.
        gamma_init: initial value of the per-channel scale ``gamma``.
        learn_gamma: ``False`` keeps ``gamma`` fixed at ``gamma_init`` (a buffer; the ablation "without gamma" uses
            ``gamma_init=1``, the plain residual sum).
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
        stride: int = 1,
        attention: nn.Module | None = None,
        gamma_init: float = 0.5,
        learn_gamma: bool = True,
        shortcut: str = "auto",
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        out_channels = planes * self.expansion
        self.conv1 = conv_type(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=planes)
        self.conv2 = conv_type(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=planes)
        self.conv3 = conv_type(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=out_channels)
        self.act = get_act_layer(name=act)
        self.attention = attention if attention is not None else nn.Identity()
        _set_channel_scale(self, out_channels, spatial_dims, gamma_init, learn_gamma)
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
        out = self.attention(self.bn3(self.conv3(out)))
        return self.act(self.gamma * out + self.shortcut(x))
