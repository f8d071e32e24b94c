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


@pytest.mark.parametrize("unit", [ScaledResidualBasicBlock, ScaledResidualBottleneck])
def test_gamma_on_the_attention_scales_only_what_the_attention_changes(unit):
    channels = 4 * unit.expansion  # identity shortcut, so that H(x) - x is the residual term
    block = unit(channels, 4, attention=_Halve(), gamma_placement="attention", gamma_init=0.0).eval()
    plain = unit(channels, 4, gamma_placement="attention").eval()
    plain.load_state_dict(block.state_dict(), strict=False)
    block.act, plain.act = nn.Identity(), nn.Identity()
    x = torch.randn(1, channels, 5, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(block(x), plain(x))  # gamma 0: the plain residual unit F(x) + x
        block.gamma.fill_(1.0)
        branch = plain(x) - x
        torch.testing.assert_close(block(x) - x, 0.5 * branch)  # gamma 1: the attention's full effect
        block.gamma.fill_(0.5)
        torch.testing.assert_close(block(x) - x, 0.75 * branch)  # F + 0.5 * (F / 2 - F)
    assert "gamma" not in dict(plain.named_parameters())  # no attention: no learnable gamma


class _Halve(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x


def test_unknown_gamma_placement_is_rejected():
    with pytest.raises(ValueError, match="gamma_placement"):
        ScaledResidualBasicBlock(4, 4, gamma_placement="shortcut")
