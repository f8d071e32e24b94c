"""Adaptive Attention Module: weights in (0, 1), fusion formulas, stored maps, TorchScript."""

from __future__ import annotations

import io

import pytest
import torch

from pipeline.networks.attention import AdaptiveAttention, hidden_channels, set_store_attention


@pytest.fixture
def features() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 16, 7, 8, 9) * 3


def test_attention_weights_lie_strictly_between_zero_and_one(features):
    module = AdaptiveAttention(channels=16, reduction=4)
    channel, spatial = module.attention_weights(features)
    assert channel.shape == (2, 16, 1, 1, 1)
    assert spatial.shape == (2, 1, 7, 8, 9)
    for weights in (channel, spatial):
        assert torch.all(weights > 0) and torch.all(weights < 1)


@pytest.mark.parametrize("fusion", ["product", "sum"])
def test_fusion_formula(features, fusion):
    module = AdaptiveAttention(channels=16, reduction=4, fusion=fusion).eval()
    with torch.no_grad():
        channel, spatial = module.attention_weights(features)
        out = module(features)
    expected = features * channel * spatial if fusion == "product" else features * channel + features * spatial
    torch.testing.assert_close(out, expected)


def test_both_fusions_have_the_same_parameters():
    counts = {
        fusion: sum(p.numel() for p in AdaptiveAttention(channels=32, fusion=fusion).parameters())
        for fusion in ("product", "sum")
    }
    assert counts["product"] == counts["sum"] > 0


def test_dilated_spatial_branch_uses_the_requested_rates():
    module = AdaptiveAttention(channels=16, dilations=(1, 2, 3))
    assert [conv.dilation for conv in module.spatial.aspp.convs] == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]
    assert [conv.kernel_size for conv in module.spatial.aspp.convs] == [(3, 3, 3)] * 3


def test_hidden_width_has_a_floor_for_narrow_features():
    assert hidden_channels(256, 16) == 16
    assert hidden_channels(16, 16) == 4
    assert hidden_channels(2, 16) == 2
    module = AdaptiveAttention(channels=8, reduction=16)
    assert module.channel.fc[0].out_features == hidden_channels(8, 16)
    with pytest.raises(ValueError):
        hidden_channels(0, 16)


def test_unknown_fusion_is_rejected():
    with pytest.raises(ValueError, match="fusion"):
        AdaptiveAttention(channels=8, fusion="max")


def test_stored_maps_keep_the_graph_for_attention_transfer(features):
    module = AdaptiveAttention(channels=16, reduction=4)
    assert set_store_attention(module, True) == [module]
    module(features)
    assert module.last_channel_attention.shape == (2, 16, 1, 1, 1)
    assert module.last_spatial_attention.shape == (2, 1, 7, 8, 9)
    module.last_spatial_attention.mean().backward()
    assert module.spatial.fuse.weight.grad is not None and module.spatial.fuse.weight.grad.abs().sum() > 0
    set_store_attention(module, False)
    assert module.last_spatial_attention.numel() == 0


def test_torchscript_round_trip_with_stored_maps(features):
    module = AdaptiveAttention(channels=16, reduction=4).eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    loaded.store_attention = True
    with torch.no_grad():
        expected = module(features)
        got = loaded(features)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(loaded.last_spatial_attention, module.attention_weights(features)[1].detach())


@pytest.mark.parametrize("branches", ["channel", "spatial"])
def test_single_branch_ablation_builds_and_applies_only_that_branch(features, branches):
    module = AdaptiveAttention(channels=16, reduction=4, branches=branches).eval()
    full = AdaptiveAttention(channels=16, reduction=4)
    kept = module.channel if branches == "channel" else module.spatial
    dropped = module.spatial if branches == "channel" else module.channel
    assert kept is not None and dropped is None
    assert sum(p.numel() for p in module.parameters()) < sum(p.numel() for p in full.parameters())
    with torch.no_grad():
        channel, spatial = module.attention_weights(features)
        expected = features * (channel if branches == "channel" else spatial)
        assert torch.allclose(module(features), expected)
        missing = spatial if branches == "channel" else channel
        assert torch.all(missing == 1)  # the branch that is not built reads as ones
        scripted = torch.jit.script(module)
        assert torch.allclose(scripted(features), module(features), atol=1e-6)


def test_unknown_branches_are_rejected():
    with pytest.raises(ValueError, match="branches must be one of"):
        AdaptiveAttention(channels=16, branches="none")


# --- the variants of issue 14 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["residual", "gated"])
def test_new_fusion_formulas(features, fusion):
    module = AdaptiveAttention(channels=16, reduction=4, fusion=fusion)
    with torch.no_grad():
        for parameter in module.parameters():  # off the (for "gated": neutral) initial point
            parameter.add_(0.3 * torch.randn_like(parameter))
    module.eval()
    with torch.no_grad():
        channel, spatial = module.attention_weights(features)
        out = module(features)
    expected = features * (1 + channel * spatial) if fusion == "residual" else features * (2 * channel) * (2 * spatial)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("spatial", ["aspp", "separable"])
@pytest.mark.parametrize("branches", ["both", "channel", "spatial"])
def test_gated_fusion_is_exactly_the_identity_at_init(features, spatial, branches):
    module = AdaptiveAttention(channels=16, reduction=4, fusion="gated", spatial=spatial, branches=branches).eval()
    with torch.no_grad():
        channel, spatial_map = module.attention_weights(features)
        out = module(features)
    assert torch.equal(out, features)
    if branches != "spatial":
        assert torch.all(channel == 0.5)  # a neutral gate, 2 * 0.5 = 1
    if branches != "channel":
        assert torch.all(spatial_map == 0.5)


def test_separable_branch_is_depthwise_at_the_requested_rates():
    module = AdaptiveAttention(channels=64, reduction=16, spatial="separable", dilations=(1, 2, 3))
    convs = [block.conv for block in module.spatial.context]
    assert [conv.dilation for conv in convs] == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]
    assert all(conv.groups == conv.in_channels == conv.out_channels == 4 for conv in convs)
    paper = AdaptiveAttention(channels=64, reduction=16, spatial="aspp")
    assert sum(p.numel() for p in module.spatial.parameters()) < sum(p.numel() for p in paper.spatial.parameters()) / 2


def test_half_resolution_map_is_computed_coarse_and_returned_full_size():
    module = AdaptiveAttention(channels=16, reduction=4, spatial="separable", spatial_stride=2).eval()
    seen = []
    module.spatial.reduce.register_forward_hook(lambda _m, inputs, _out: seen.append(tuple(inputs[0].shape[2:])))
    with torch.no_grad():
        large = module.attention_weights(torch.randn(1, 16, 8, 10, 12))[1]
        small = module.attention_weights(torch.randn(1, 16, 3, 8, 8))[1]
    assert seen == [(4, 5, 6), (3, 8, 8)]  # halved; a map with an axis below 4 is not pooled
    assert large.shape == (1, 1, 8, 10, 12) and small.shape == (1, 1, 3, 8, 8)


def test_cheap_branch_scripts_with_stored_maps(features):
    module = AdaptiveAttention(channels=16, reduction=4, fusion="gated", spatial="separable", spatial_stride=2)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    module.eval()
    loaded = torch.jit.script(module)
    loaded.store_attention = True
    with torch.no_grad():
        torch.testing.assert_close(loaded(features), module(features))
    torch.testing.assert_close(loaded.last_spatial_attention, module.attention_weights(features)[1])


def test_unknown_spatial_branch_or_stride_is_rejected():
    with pytest.raises(ValueError, match="spatial branch"):
        AdaptiveAttention(channels=16, spatial="dense")
    with pytest.raises(ValueError, match="stride"):
        AdaptiveAttention(channels=16, spatial_stride=4)
