"""The TorchScript runner: unknown operators refused before anything runs; the memory limit of the child."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import UserError
from pipeline.trust.torchscript import ALLOWED_OPS, archive_problems, run_torchscript


class _Prints(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("hello from a received model")
        return x + 1.0


class _Allocates(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.ones([1 << 31]).sum()


def test_print_is_refused_before_it_runs(tmp_path):
    path = tmp_path / "prints.ts"
    torch.jit.save(torch.jit.script(_Prints()), str(path))
    assert archive_problems(path) == []
    run = run_torchscript({"prints.ts": path}, {"x": torch.zeros(2)}, time_limit_s=60)
    assert run.refused == {"prints.ts": ["prim::Print"]} and run.outputs == {}


def test_the_child_runs_out_of_its_memory_limit(tmp_path):
    path = tmp_path / "big.ts"
    torch.jit.save(torch.jit.script(_Allocates()), str(path))
    with pytest.raises(UserError, match="memory"):
        run_torchscript(
            {"big.ts": path},
            {"x": torch.zeros(2)},
            memory_bytes=1024**3,
            allowed=ALLOWED_OPS | {"aten::ones"},
            time_limit_s=60,
        )


@pytest.mark.parametrize("name", ["unet_encoder", "densenet121_small"])
def test_the_allowlist_covers_the_registrys_traces(name):
    """What the exporter writes (a trace of the dense map, and the scripted spatial mean around it) passes the
    operator check; all registry networks were measured (module docstring), two kinds run here."""
    from pipeline.networks import DenseClassifier, SpatialMeanClassifier, build
    from pipeline.trust.torchscript import graph_operators

    network = build(name).eval()
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        dense = torch.jit.trace(DenseClassifier(network).eval(), x, check_trace=False)
        classifier = torch.jit.script(SpatialMeanClassifier(dense).eval())
        for module in (dense, classifier):
            assert graph_operators(module) - ALLOWED_OPS == set()
        torch.testing.assert_close(classifier(x), network(x), rtol=1e-4, atol=1e-5)  # model.ts is the classifier
