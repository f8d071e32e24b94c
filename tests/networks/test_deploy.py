"""The CPU inference form: same logits and class-activation map as the eager network, every convolution on oneDNN."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from pipeline.networks import DenseClassifier, build, optimized_for_inference


@pytest.mark.parametrize("name", ["aam_student_small", "resnet18"])
def test_deployed_network_gives_the_eager_logits_and_cam(name):
    torch.manual_seed(0)
    kwargs = {"widen_factor": 0.25} if name == "resnet18" else {"width": 0.125}
    model = build(name, **kwargs).eval()
    with torch.no_grad():  # move the norms off their identity init, so that folding them into the convolutions shows
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    deployed = optimized_for_inference(model, preserved_methods=["class_activation"])
    x = torch.randn(1, 1, 40, 48, 36)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(deployed.class_activation(x), model.class_activation(x), atol=1e-4, rtol=1e-4)


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
