"""The CPU inference form: same logits and class-activation map as the eager network, every convolution on oneDNN."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from pipeline.networks import DenseClassifier, build, optimized_for_inference

CHEAP_GATED = {"attention_fusion": "gated", "attention_spatial": "separable", "attention_spatial_stride": 2}


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("aam_student_small", {"width": 0.125, **CHEAP_GATED}),
        ("aam_student_small", {"width": 0.125, "attention_fusion": "product", "attention_spatial": "aspp"}),
        ("resnet18", {"widen_factor": 0.25}),
    ],
)
def test_deployed_network_gives_the_eager_logits_and_cam(name, kwargs):
    torch.manual_seed(0)
    model = build(name, **kwargs).eval()
    with torch.no_grad():  # off the initial point (gates at 1, norms at identity), so that every part shows
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    deployed = optimized_for_inference(model, preserved_methods=["class_activation"])
    x = torch.randn(1, 1, 40, 48, 36)
    with torch.no_grad():
        # oneDNN sums in another order and the norms are folded into the weights: float32 rounding, not a change
        torch.testing.assert_close(deployed(x), model(x), atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(deployed.class_activation(x), model.class_activation(x), atol=1e-3, rtol=1e-3)


def test_deployed_form_runs_no_native_slow_convolution():
    # the reason it exists: at batch 1, small 3D maps go to PyTorch's slow_conv3d in eager mode
    model = build("aam_student_small", width=0.125).eval()
    x = torch.randn(1, 1, 32, 64, 64)

    def slow_calls(module) -> int:
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            module(x)
        return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::slow_conv"))

    assert slow_calls(model) > 0
    assert slow_calls(optimized_for_inference(DenseClassifier(model))) == 0
