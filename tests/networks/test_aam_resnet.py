"""AAM-ResNet-3D: shapes, residual scales, attention placement, dense output, TorchScript, overfitting."""

from __future__ import annotations

import io

import pytest
import torch

from pipeline.networks import DEPTHS, AAMResNet, attention_modules, set_store_attention

TINY = {"width": 0.125}  # widths 8, 16, 32, 64: fast on CPU, same topology as the real networks


def _script_round_trip(model: torch.nn.Module) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize("depth", sorted(DEPTHS))
@pytest.mark.parametrize("size", [(32, 32, 32), (33, 34, 35), (40, 64, 37)])
def test_logits_and_dense_map_shapes(depth, size):
    model = AAMResNet(depth=depth, num_classes=3, **TINY).eval()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        logits = model(x)
        dense = model.class_activation(x)
    assert logits.shape == (2, 3)
    assert dense.shape == (2, 3, *((s + 31) // 32 for s in size))  # total stride 32, rounded up


@pytest.mark.parametrize("size", [(32, 32, 32), (65, 70, 33)])
def test_dense_map_averaged_equals_logits(size):
    torch.manual_seed(1)
    model = AAMResNet(depth=18, num_classes=4, **TINY).eval()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        torch.testing.assert_close(model.class_activation(x).flatten(2).mean(-1), model(x), atol=1e-5, rtol=1e-5)


def test_gammas_exist_start_at_half_and_receive_gradients():
    model = AAMResNet(depth=18, in_channels=2, **TINY)
    gammas = {name: p for name, p in model.named_parameters() if name.endswith("gamma")}
    assert len(gammas) == sum(DEPTHS[18][1])
    assert all(torch.all(p == 0.5) for p in gammas.values())
    torch.nn.functional.cross_entropy(model(torch.randn(2, 2, 32, 32, 32)), torch.tensor([0, 1])).backward()
    for name, p in gammas.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_fixed_gamma_ablation_is_a_buffer_that_gets_no_gradient_and_still_saves():
    model = AAMResNet(depth=18, learn_gamma=False, gamma_init=1.0, **TINY)
    assert not [name for name, _ in model.named_parameters() if name.endswith("gamma")]
    buffers = {name: b for name, b in model.named_buffers() if name.endswith("gamma")}
    assert len(buffers) == sum(DEPTHS[18][1]) and all(torch.all(b == 1.0) for b in buffers.values())
    assert set(buffers) <= set(model.state_dict())
    learned = AAMResNet(depth=18, **TINY)
    assert sum(p.numel() for p in learned.parameters()) - sum(p.numel() for p in model.parameters()) == sum(
        b.numel() for b in buffers.values()
    )


@pytest.mark.parametrize("branches", ["channel", "spatial"])
def test_attention_branch_ablation_reaches_every_module(branches):
    model = AAMResNet(depth=18, attention_branches=branches, **TINY)
    modules = attention_modules(model)
    assert modules and all(m.branches == branches for m in modules)
    assert model.eval()(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2)


@pytest.mark.parametrize(("placement", "expected"), [("block", sum(DEPTHS[34][1])), ("stage", 4), ("none", 0)])
def test_attention_placement(placement, expected):
    model = AAMResNet(depth=34, attention=placement, **TINY)
    assert len(attention_modules(model)) == expected


def test_attention_maps_are_inspectable_and_differentiable():
    torch.manual_seed(0)  # unseeded, a saturated sigmoid (exactly 1.0 in float32) depended on the tests run before
    model = AAMResNet(depth=18, attention="stage", **TINY)
    modules = set_store_attention(model, True)
    model(torch.randn(2, 1, 64, 64, 64))
    spatial_sizes = [m.last_spatial_attention.shape[2:] for m in modules]
    assert spatial_sizes == [(16, 16, 16), (8, 8, 8), (4, 4, 4), (2, 2, 2)]
    for module in modules:
        assert torch.all((module.last_spatial_attention > 0) & (module.last_spatial_attention < 1))
        assert torch.all((module.last_channel_attention > 0) & (module.last_channel_attention < 1))
    # an attention-transfer style loss on the first map must reach the stem
    modules[0].last_spatial_attention.pow(2).mean().backward()
    assert model.stem[0].weight.grad is not None and model.stem[0].weight.grad.abs().sum() > 0


def test_width_multiplier_and_projection_shortcuts_change_parameter_count():
    def count(model):
        return sum(p.numel() for p in model.parameters())

    narrow, wide = AAMResNet(depth=18, width=0.125), AAMResNet(depth=18, width=0.25)
    projected = AAMResNet(depth=18, width=0.125, shortcut="projection")
    assert wide.feature_channels == 2 * narrow.feature_channels
    assert count(wide) > 3 * count(narrow)  # parameters grow about quadratically with width
    assert count(projected) > count(narrow)


@pytest.mark.parametrize("fusion", ["product", "sum"])
def test_torchscript_round_trip_gives_equal_outputs(fusion):
    model = AAMResNet(depth=50, attention_fusion=fusion, **TINY).eval()
    loaded = _script_round_trip(model)
    x = torch.randn(1, 1, 33, 32, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        torch.testing.assert_close(loaded.class_activation(x), model.class_activation(x))


def test_spatial_dims_generic_2d():
    model = AAMResNet(depth=18, spatial_dims=2, num_classes=3, **TINY).eval()
    x = torch.randn(2, 1, 64, 48)
    with torch.no_grad():
        assert model(x).shape == (2, 3)
        assert model.class_activation(x).shape == (2, 3, 2, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"depth": 101},
        {"attention": "everywhere"},
        {"attention_fusion": "max"},
        {"attention_branches": "neither"},
        {"width": 0},
        {"layers": (2, 2)},
    ],
)
def test_bad_configuration_is_rejected(kwargs):
    with pytest.raises(ValueError):
        AAMResNet(**kwargs)


def test_small_variant_overfits_a_handful_of_volumes():
    torch.manual_seed(0)
    volumes = torch.randn(6, 1, 32, 32, 32)
    labels = torch.tensor([0, 1] * 3)
    model = AAMResNet(depth=18, attention="stage", **TINY)  # one AAM per layer keeps the test quick
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(volumes), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.25 * sum(losses[:3]) / 3, losses
    model.eval()
    with torch.no_grad():
        assert (model(volumes).argmax(1) == labels).all()
