"""Small real pieces for the inference tests: a tiny AAM-ResNet, NIfTI volumes written with nibabel, predictors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from pipeline.inference import CasePredictor, DenseClassificationInferer
from pipeline.networks import build
from pipeline.transforms import infer_transforms

#: network input of the tests: the smallest the ResNets accept (stride 32)
TEST_ROI = (32, 32, 32)
#: coarse resampling keeps every test volume tiny
TEST_SPACING = (6.0, 6.0, 6.0)


def tiny_network(seed: int = 0) -> nn.Module:
    """An AAM-ResNet-18 at 1/8 width (a few hundred kB), randomly initialised, in eval mode."""
    torch.manual_seed(seed)
    return build("aam_resnet18", width=0.125).eval()


class PerVoxelEvidence(nn.Module):
    """A stride-1 "dense classifier" whose positive-class logit is the input itself (negative class: its negation).

    Its heatmap is the (windowed) image, so where the bright structure lies is known exactly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, x], dim=1)


def chest_like_volume(shape=(40, 36, 24), *, blob_at=None, blob_radius=4, seed=0) -> np.ndarray:
    """HU volume: air around an elliptic body (soft tissue) with darker 'lungs' and an optional bright blob."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    volume = np.full(shape, -1000.0, dtype=np.float32)
    volume[(x / 0.85) ** 2 + (y / 0.75) ** 2 < 1] = 40.0
    volume[((np.abs(x) - 0.4) / 0.3) ** 2 + (y / 0.5) ** 2 < 1] = -850.0
    if blob_at is not None:
        i, j, k = np.indices(shape)
        volume[(i - blob_at[0]) ** 2 + (j - blob_at[1]) ** 2 + (k - blob_at[2]) ** 2 <= blob_radius**2] = 300.0
    return volume + rng.normal(0, 10, shape).astype(np.float32)


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``volume`` (int16 HU, as scanners store it) with ``affine`` (default: 2 mm, RAS)."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    image = nib.Nifti1Image(np.round(volume).astype(np.int16), affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def tiny_bundle(root: Path, *, seed: int = 4) -> Path:
    """A bundle folder with its own ``configs/inference.json`` (tiny network, 32^3 windows) and ``models/model.pt``."""
    import json

    from pipeline.inference.bundle import PROJECT_BUNDLE

    config = json.loads((PROJECT_BUNDLE / "configs" / "inference.json").read_text())
    config.update(network_name="aam_resnet18", roi_size=list(TEST_ROI), spacing=list(TEST_SPACING))
    config["network_def"]["width"] = 0.125
    # the dense CAM: one forward pass per case keeps these tests fast (the default, occlusion, takes one per block
    # position; tests/inference/test_maps.py covers every kind)
    config["heatmap_kind"] = "cam"
    config["allow_out_of_scope"] = True  # the toy volumes are not chests: scored anyway (rows marked out_of_scope)
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (root / "models").mkdir()
    torch.save(tiny_network(seed=seed).state_dict(), root / "models" / "model.pt")
    return root


def make_predictor(
    network: nn.Module | None = None, *, roi_size=TEST_ROI, spacing=TEST_SPACING, allow_out_of_scope=True, **kwargs
):
    """A real CasePredictor on the project's inference chain (the one loader, LoadScand).

    The map kind is the dense CAM unless ``heatmap_kind`` is given: one forward pass per case keeps the cohort tests
    fast (the default kind, occlusion, runs one per block position; tests/inference/test_maps.py covers every kind).
    """
    kwargs.setdefault("heatmap_kind", "cam")
    return CasePredictor(
        network=network if network is not None else tiny_network(),
        inferer=DenseClassificationInferer(roi_size=roi_size, mode="gaussian"),
        # the toy volumes are not chests (tiny lungs): scored anyway, as with min_slices=1 for toy slice counts
        preprocessing=infer_transforms(roi_size=roi_size, spacing=spacing, allow_out_of_scope=allow_out_of_scope),
        **kwargs,
    )


class CountingPredictor:
    """Wraps a predictor: records which images it was asked to score and can simulate a kill on a chosen file.

    Args:
        predictor: the real predictor.
        interrupt_on: a file name; scoring it raises ``KeyboardInterrupt`` as a kill of the process would.
    """

    def __init__(self, predictor, interrupt_on: str | None = None) -> None:
        self.predictor = predictor
        self.interrupt_on = interrupt_on
        self.calls: list[str] = []

    def __call__(self, image, **kwargs):
        name = Path(image).name
        if self.interrupt_on and name == self.interrupt_on:
            raise KeyboardInterrupt(f"simulated kill while scoring {name}")
        self.calls.append(name)
        return self.predictor(image, **kwargs)
