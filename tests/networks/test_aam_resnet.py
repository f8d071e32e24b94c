"""AAM-ResNet-3D: shapes, residual scales, attention placement, dense output, TorchScript, overfitting."""

from __future__ import annotations

import io

import pytest
import torch

from pipeline.networks import DEPTHS, PAPER_FORM, AAMResNet, attention_modules, set_store_attention

TINY = {"width": 0.125}  # widths 8, 16, 32, 64: fast on CPU, same topology as the real networks


def _script_round_trip(model: torch.nn.Module) -> torch.jit.ScriptModule:
    """Script, save and load ``model``.

    The tests call the result under ``torch.jit.optimized_execution(False)``: the TorchScript interpreter runs the
    graph as saved, without the profiling executor's profiling run and optimisation passes on the first calls (about
    1 s per call for these networks); the optimised deployed form is tests/networks/test_deploy.py's.
    """
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
    with torch.no_grad(), torch.jit.optimized_execution(False):  # see _script_round_trip
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


# --- attention variants that cannot hurt at initialisation (issue 14) ---------------------------------------------

#: every attention variant of the network, each with the attention-free network it must equal at initialisation
#: (``None``: the variant is not pass-through, the paper's product form and the residual fusion)
VARIANTS: dict[str, tuple[dict, dict | None]] = {
    "paper": (dict(PAPER_FORM), None),
    "residual fusion": ({"attention_fusion": "residual"}, None),
    "gated": ({"attention_fusion": "gated"}, {}),
    "gated, cheap spatial": (
        {"attention_fusion": "gated", "attention_spatial": "separable", "attention_spatial_stride": 2},
        {},
    ),
    "gated, stage ends": ({"attention_fusion": "gated", "attention": "stage", "attention_spatial": "separable"}, {}),
    "gamma on attention, 0": (
        {"gamma_placement": "attention", "gamma_init": 0.0, "attention_spatial_stride": 2},
        {"gamma_placement": "attention"},
    ),
    "zero-init residual": (
        {"zero_init_residual": True, "attention_spatial": "separable"},
        {"zero_init_residual": True},
    ),
}


# every variant at depth 18, the bottleneck units once (scripting a depth-50 network takes most of the time)
@pytest.mark.parametrize(("variant", "depth"), [(name, 18) for name in VARIANTS] + [("gated, cheap spatial", 50)])
def test_every_variant_scripts_and_keeps_an_exact_class_activation_map(variant, depth):
    kwargs, _ = VARIANTS[variant]
    torch.manual_seed(5)
    model = AAMResNet(depth=depth, **TINY, **kwargs)
    _perturb_gates(model)  # off the initial point, so that the attention actually shapes the features
    model.eval()
    loaded = _script_round_trip(model)
    x = torch.randn(2, 1, 37, 33, 40)
    with torch.no_grad(), torch.jit.optimized_execution(False):  # see _script_round_trip
        logits = model(x)
        torch.testing.assert_close(model.class_activation(x).flatten(2).mean(-1), logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded(x), logits)
        torch.testing.assert_close(loaded.class_activation(x), model.class_activation(x))


def _perturb_gates(model: torch.nn.Module) -> None:
    """Move every zero-initialised part (gates, gamma at 0, zeroed norms) off zero, as training would."""
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("variant", [name for name, (_, free) in VARIANTS.items() if free is not None])
def test_pass_through_variant_equals_the_attention_free_network_at_init(variant, depth):
    kwargs, attention_free = VARIANTS[variant]
    torch.manual_seed(3)
    attended = AAMResNet(depth=depth, **TINY, **kwargs).eval()
    torch.manual_seed(3)
    plain = AAMResNet(depth=depth, attention="none", **TINY, **attention_free).eval()
    assert attention_modules(attended) and not attention_modules(plain)
    x = torch.randn(2, 1, 40, 36, 33)
    with torch.no_grad():
        torch.testing.assert_close(attended(x), plain(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(attended.class_activation(x), plain.class_activation(x), atol=1e-6, rtol=0)


def test_the_backbone_does_not_depend_on_the_attention_built_around_it():
    # same seed -> the same backbone weights whatever the attention: the premise of the equality above
    weights = []
    for kwargs in ({"attention": "none"}, dict(PAPER_FORM), {"attention": "stage", "attention_fusion": "gated"}):
        torch.manual_seed(7)
        state = AAMResNet(depth=18, **TINY, **kwargs).state_dict()
        weights.append({k: v for k, v in state.items() if ".attention." not in k})
    for other in weights[1:]:
        assert other.keys() == weights[0].keys()
        for key in weights[0]:
            torch.testing.assert_close(other[key], weights[0][key], atol=0, rtol=0, msg=key)


def test_the_paper_form_is_not_pass_through():
    # the control of the equality test: the product fusion damps every branch at initialisation
    torch.manual_seed(3)
    paper = AAMResNet(depth=18, **TINY, **PAPER_FORM).eval()
    torch.manual_seed(3)
    plain = AAMResNet(depth=18, attention="none", **TINY).eval()
    x = torch.randn(2, 1, 40, 36, 33)
    with torch.no_grad():
        assert (paper(x) - plain(x)).abs().max() > 1e-3


def test_pass_through_gates_still_learn_from_the_first_step():
    torch.manual_seed(0)
    model = AAMResNet(depth=18, attention="stage", attention_fusion="gated", attention_spatial="separable", **TINY)
    torch.nn.functional.cross_entropy(model(torch.randn(2, 1, 48, 48, 48)), torch.tensor([0, 1])).backward()
    for module in attention_modules(model):
        # the zeroed output layers are where the gradient first arrives
        assert module.channel.fc[2].weight.grad.abs().sum() > 0
        assert module.spatial.fuse.weight.grad.abs().sum() > 0


def test_gamma_on_the_attention_starts_at_zero_and_learns():
    torch.manual_seed(0)
    model = AAMResNet(depth=18, gamma_placement="attention", gamma_init=0.0, **TINY)
    gammas = {name: p for name, p in model.named_parameters() if name.endswith("gamma")}
    assert len(gammas) == sum(DEPTHS[18][1]) and all(torch.all(p == 0) for p in gammas.values())
    torch.nn.functional.cross_entropy(model(torch.randn(2, 1, 32, 32, 32)), torch.tensor([0, 1])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gammas.values())


@pytest.mark.parametrize("depth", [18, 50])
def test_zero_init_residual_zeroes_the_last_norm_of_every_branch(depth):
    model = AAMResNet(depth=depth, zero_init_residual=True, **TINY)
    last = [unit.bn3 if depth == 50 else unit.bn2 for stage in (model.layer1, model.layer2) for unit in stage]
    assert last and all(torch.all(norm.weight == 0) for norm in last)
    assert torch.all(model.layer1[0].bn1.weight == 1)  # only the last norm of each branch


@pytest.mark.parametrize(
    "kwargs",
    [{"attention_spatial": "dense"}, {"attention_spatial_stride": 3}, {"gamma_placement": "shortcut"}],
)
def test_bad_variant_options_are_rejected(kwargs):
    with pytest.raises(ValueError):
        AAMResNet(**kwargs)
