"""Scaled residual units: shapes, the learnable scale gamma, shortcut choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.networks.blocks import ScaledResidualBasicBlock, ScaledResidualBottleneck, make_shortcut


@pytest.mark.parametrize("unit", [ScaledResidualBasicBlock, ScaledResidualBottleneck])
@pytest.mark.parametrize(("size", "stride"), [((8, 8, 8), 1), ((9, 10, 11), 2)])
def test_unit_output_shape(unit, size, stride):
    block = unit(6, 4, stride=stride)
    out = block(torch.randn(2, 6, *size))
    expected_spatial = tuple((s - 1) // stride + 1 for s in size)
    assert out.shape == (2, 4 * unit.expansion, *expected_spatial)


@pytest.mark.parametrize("unit", [ScaledResidualBasicBlock, ScaledResidualBottleneck])
def test_gamma_starts_at_half_and_receives_gradient(unit):
    block = unit(8, 4, stride=2)
    out_channels = 4 * unit.expansion
    assert block.gamma.shape == (1, out_channels, 1, 1, 1)
    assert torch.all(block.gamma == 0.5)
    block(torch.randn(2, 8, 6, 6, 6)).pow(2).mean().backward()
    assert block.gamma.grad is not None
    assert block.gamma.grad.abs().sum() > 0


def test_gamma_scales_the_residual_branch_only():
    block = ScaledResidualBasicBlock(4, 4).eval()
    block.act = nn.Identity()  # without the final activation H(x) = gamma * F(x) + x exactly
    x = torch.randn(1, 4, 5, 5, 5)
    with torch.no_grad():
        out_half = block(x)
        block.gamma.fill_(0.0)
        out_zero = block(x)
        block.gamma.fill_(1.0)
        out_one = block(x)
    torch.testing.assert_close(out_zero, x)  # identity shortcut when the shape is unchanged
    torch.testing.assert_close(out_half - x, 0.5 * (out_one - x))


def test_shortcut_is_identity_only_where_shape_is_unchanged():
    same = make_shortcut(spatial_dims=3, in_channels=8, out_channels=8, stride=1, mode="auto", norm="batch")
    wider = make_shortcut(spatial_dims=3, in_channels=8, out_channels=16, stride=1, mode="auto", norm="batch")
    forced = make_shortcut(spatial_dims=3, in_channels=8, out_channels=8, stride=1, mode="projection", norm="batch")
    assert isinstance(same, nn.Identity)
    for projection in (wider, forced):
        assert isinstance(projection[0], nn.Conv3d)
        assert projection[0].kernel_size == (1, 1, 1)
    with pytest.raises(ValueError, match="shortcut mode"):
        make_shortcut(spatial_dims=3, in_channels=8, out_channels=8, stride=1, mode="none", norm="batch")


def test_units_are_spatial_dims_generic():
    block = ScaledResidualBottleneck(3, 2, spatial_dims=2, stride=2)
    assert block(torch.randn(2, 3, 9, 12)).shape == (2, 8, 5, 6)
    assert block.gamma.shape == (1, 8, 1, 1)
