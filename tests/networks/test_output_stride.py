"""Output stride and attention-MIL pooling: a class map with resolution, still the classifier's own evidence.

What would be wrong: a class map whose mean is not the logits (sliding-window scores would differ from the
classifier's), a registry entry that
changed the default network's weights, or a form that TorchScript cannot carry into the exported bundle.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.store import network_fingerprint
from pipeline.networks import build
from pipeline.networks.aam_resnet import AAMResNet
from pipeline.networks.pooling import GatedAttentionPooling

WINDOW = (64, 64, 32)  # the demo's network input


def _params(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


@pytest.mark.parametrize(
    ("name", "grid"),
    [("aam_student_small", (2, 2, 1)), ("aam_student_small_os8", (8, 8, 8)), ("aam_student_small_mil", (8, 8, 8))],
)
def test_class_map_resolution_and_its_mean_is_the_logits(name, grid):
    torch.manual_seed(0)
    network = build(name).eval()
    x = torch.randn(2, 1, *WINDOW)
    with torch.no_grad():
        class_map, logits = network.class_activation(x), network(x)
    assert tuple(class_map.shape) == (2, 2, *grid)
    torch.testing.assert_close(class_map.flatten(2).mean(2), logits, rtol=1e-5, atol=1e-5)


def test_output_stride_adds_no_parameters_and_leaves_the_default_network_alone():
    torch.manual_seed(0)
    plain = build("aam_student_small")
    torch.manual_seed(0)
    dilated = build("aam_student_small_os8")
    assert _params(plain) == _params(dilated)
    # same weights drawn in the same order: only strides and dilations differ
    for (name, a), (_, b) in zip(plain.state_dict().items(), dilated.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=f"{name} differs")
    assert dilated.output_stride == (8, 8, 4) and plain.output_stride == (32, 32, 32)
    # the stored results of the default network stay valid: its fingerprint does not see the new options
    assert network_fingerprint("aam_student_small") != network_fingerprint("aam_student_small_os8")
    mil = build("aam_student_small_mil")
    assert _params(mil) - _params(plain) == sum(p.numel() for p in mil.mil_pool.parameters()) > 0


def test_attention_pooling_weights_sum_to_one_and_follow_the_evidence():
    pool = GatedAttentionPooling(spatial_dims=3, channels=4, hidden=8)
    features = torch.zeros(1, 4, 3, 3, 3)
    weights = pool(features)
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / 27))  # no evidence anywhere: uniform
    torch.manual_seed(0)
    features = torch.randn(2, 4, 3, 3, 3)
    weights = pool(features)
    assert weights.shape == (2, 1, 3, 3, 3) and (weights >= 0).all()
    torch.testing.assert_close(weights.flatten(1).sum(1), torch.ones(2))
    # the network reports the same weights, uniform for mean pooling
    torch.manual_seed(0)
    network = build("aam_student_small_mil").eval()
    x = torch.randn(1, 1, *WINDOW)
    with torch.no_grad():
        w = network.instance_weights(x)
        torch.testing.assert_close(w, network.mil_pool(network.extract_features(x)))
        flat = build("aam_student_small_os8").eval().instance_weights(x)
    torch.testing.assert_close(flat, torch.full_like(flat, 1 / flat[0, 0].numel()))


@pytest.mark.parametrize("name", ["aam_student_small_os8", "aam_student_small_mil"])
def test_new_forms_script_and_keep_their_outputs(name):
    torch.manual_seed(0)
    network = build(name).eval()
    scripted = torch.jit.script(network)
    x = torch.randn(1, 1, *WINDOW)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), network(x))
        torch.testing.assert_close(scripted.class_activation(x), network.class_activation(x))


@pytest.mark.parametrize(("output_stride", "message"), [(6, "output_stride must be one of"), ((8, 8), "length 3")])
def test_bad_output_strides_are_refused(output_stride, message):
    with pytest.raises(ValueError, match=message):
        AAMResNet(depth=18, width=0.25, output_stride=output_stride)


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="pooling must be one of"):
        AAMResNet(depth=18, width=0.25, pooling="max")
