"""Baseline classifiers: MONAI's 3D ResNet and DenseNet-121, and a U-Net encoder with a pooled classification head.

The MONAI baselines are thin subclasses that add only ``class_activation`` (per-location class logits); their
layers, parameter names and parameter counts are MONAI's own, so MONAI / MedicalNet state dicts load unchanged:

- :class:`CAMResNet` (:class:`monai.networks.nets.ResNet`): ``fc`` follows a global average pool, so applying ``fc``
  at every location of the ``layer4`` map and averaging gives the logits exactly.
- :class:`CAMDenseNet121` (:class:`monai.networks.nets.DenseNet121`): ``class_layers`` is relu -> pool -> linear,
  so applying relu and the linear layer per location and averaging gives the logits exactly.
- :class:`UNetEncoderClassifier`: the encoder half of MONAI's :class:`~monai.networks.nets.BasicUNet` (its
  ``TwoConv`` / ``Down`` blocks, same module names ``conv_0``, ``down_1``..``down_4`` so BasicUNet weights load into
  it) with a 1x1x1 convolution head and global average pooling. MONAI has no classification head for U-Net encoders,
  hence this class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv
from monai.networks.nets import DenseNet121, ResNet
from monai.networks.nets.basic_unet import Down, TwoConv
from monai.networks.nets.resnet import get_inplanes
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = ["CAMDenseNet121", "CAMResNet", "UNetEncoderClassifier", "monai_densenet121", "monai_resnet"]

#: MONAI's resnet<depth>() factories: depth -> (block, layers); shortcut "B" and bias_downsample=True are the
#: ResNet constructor defaults those factories use
_MONAI_RESNETS: dict[int, tuple[str, list[int]]] = {
    10: ("basic", [1, 1, 1, 1]),
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
}


def _per_location_linear(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # (B, C, *spatial) -> (B, K, *spatial): the Linear acts on the channel axis at every location; takes the weights
    # rather than the nn.Linear because TorchScript cannot pass modules to free functions
    return nn.functional.linear(features.movedim(1, -1), weight, bias).movedim(-1, 1)


class CAMResNet(ResNet):
    """MONAI's :class:`~monai.networks.nets.ResNet` plus :meth:`class_activation` (same constructor arguments)."""

    @torch.jit.export
    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``layer4`` feature map ``(B, C, d, h, w)``."""
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    @torch.jit.export
    def class_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location class logits ``(B, num_classes, d, h, w)`` whose spatial mean equals ``forward(x)``.

        Args:
            x: input ``(B, n_input_channels, *spatial)``.

        Returns:
            ``fc`` applied at every location of the ``layer4`` feature map.

        Raises:
            RuntimeError: if the model was built with ``feed_forward=False`` (no ``fc``).
        """
        fc = self.fc
        if fc is None:
            raise RuntimeError("class_activation needs the fc layer; this ResNet was built with feed_forward=False")
        return _per_location_linear(self.extract_features(x), fc.weight, fc.bias)


class CAMDenseNet121(DenseNet121):
    """MONAI's :class:`~monai.networks.nets.DenseNet121` plus :meth:`class_activation` (same constructor arguments)."""

    @torch.jit.export
    def class_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location class logits ``(B, out_channels, d, h, w)`` whose spatial mean equals ``forward(x)``.

        Args:
            x: input ``(B, in_channels, *spatial)``.

        Returns:
            ``class_layers.out`` applied at every location of ``relu(features(x))``.
        """
        features = self.class_layers.relu(self.features(x))
        return _per_location_linear(features, self.class_layers.out.weight, self.class_layers.out.bias)


class UNetEncoderClassifier(nn.Module):
    """BasicUNet's encoder (five levels, four 2x max-pools) with a pooled 1x1x1-convolution classification head.

    The first level runs at full resolution, as in BasicUNet (no strided stem), so it is by far the most expensive
    baseline per voxel on CPU.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels.
        num_classes: number of classes.
        features: channels of the five encoder levels (BasicUNet's first five ``features``).
        act: activation (BasicUNet's default LeakyReLU 0.1).
        norm: normalisation (BasicUNet's default affine instance norm).
        bias: convolution bias (BasicUNet's default).
        dropout: dropout inside the convolution blocks.

    Raises:
        ValueError: if ``features`` does not give five channel counts.
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 2,
        features: Sequence[int] = (32, 32, 64, 128, 256),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        bias: bool = True,
        dropout: float | tuple = 0.0,
    ) -> None:
        super().__init__()
        fea = ensure_tuple_rep(features, 5)
        if len(fea) != 5:
            raise ValueError(f"features must give 5 channel counts, got {features}")
        self.conv_0 = TwoConv(spatial_dims, in_channels, fea[0], act, norm, bias, dropout)
        self.down_1 = Down(spatial_dims, fea[0], fea[1], act, norm, bias, dropout)
        self.down_2 = Down(spatial_dims, fea[1], fea[2], act, norm, bias, dropout)
        self.down_3 = Down(spatial_dims, fea[2], fea[3], act, norm, bias, dropout)
        self.down_4 = Down(spatial_dims, fea[3], fea[4], act, norm, bias, dropout)
        self.feature_channels = fea[4]
        self.classifier = Conv[Conv.CONV, spatial_dims](fea[4], num_classes, kernel_size=1, bias=True)

    @torch.jit.export
    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Deepest encoder features ``(B, features[4], d, h, w)`` at 1/16 of the input size (rounded down)."""
        return self.down_4(self.down_3(self.down_2(self.down_1(self.conv_0(x)))))

    @torch.jit.export
    def class_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location class logits ``(B, num_classes, d, h, w)``; their spatial mean equals ``forward(x)``."""
        return self.classifier(self.extract_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` for ``x`` of shape ``(B, in_channels, *spatial)``."""
        return self.class_activation(x).flatten(2).mean(dim=-1)


def monai_resnet(
    depth: int,
    *,
    spatial_dims: int = 3,
    in_channels: int = 1,
    num_classes: int = 2,
    conv1_t_size: int = 7,
    conv1_t_stride: int = 2,
    no_max_pool: bool = False,
    widen_factor: float = 1.0,
) -> CAMResNet:
    """MONAI's ``resnet<depth>`` (same layers and parameter count) as a :class:`CAMResNet`.

    Args:
        depth: 10, 18, 34, 50 or 101.
        spatial_dims: number of spatial dimensions.
        in_channels: input channels (MONAI's ``n_input_channels``).
        num_classes: number of classes.
        conv1_t_size: stem kernel size (MONAI default 7).
        conv1_t_stride: stem stride; 2 here (MONAI's default 1 keeps the stem at full resolution, ~8x the compute of
            layer1 onwards on CPU). It does not change the parameter count.
        no_max_pool: skip the stem's max-pool (MONAI default False).
        widen_factor: MONAI's width multiplier.

    Returns:
        The network.

    Raises:
        ValueError: for an unsupported depth.
    """
    if depth not in _MONAI_RESNETS:
        raise ValueError(f"depth must be one of {sorted(_MONAI_RESNETS)}, got {depth}")
    block, layers = _MONAI_RESNETS[depth]
    return CAMResNet(
        block=block,
        layers=layers,
        block_inplanes=get_inplanes(),
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_size=conv1_t_size,
        conv1_t_stride=conv1_t_stride,
        no_max_pool=no_max_pool,
        widen_factor=widen_factor,
        num_classes=num_classes,
    )


def monai_densenet121(
    *,
    spatial_dims: int = 3,
    in_channels: int = 1,
    num_classes: int = 2,
    dropout_prob: float = 0.0,
    width: float = 1.0,
) -> CAMDenseNet121:
    """MONAI's ``DenseNet121`` (7x7x7 stride-2 stem + max-pool, MONAI's own) as a :class:`CAMDenseNet121`.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels.
        num_classes: number of classes (MONAI's ``out_channels``).
        dropout_prob: dropout inside the dense layers.
        width: scales MONAI's ``init_features`` (64) and ``growth_rate`` (32), as ``widen_factor`` scales a ResNet
            (0.25: 16 and 8), so the baselines can be compared at one width.

    Returns:
        The network.

    Raises:
        ValueError: for a width that leaves fewer than 1 channel.
    """
    init_features, growth_rate = round(64 * width), round(32 * width)
    if init_features < 1 or growth_rate < 1:
        raise ValueError(f"densenet121: width {width} leaves no channels (init_features 64, growth_rate 32 scaled)")
    return CAMDenseNet121(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        dropout_prob=dropout_prob,
        init_features=init_features,
        growth_rate=growth_rate,
    )
