"""Small real pieces for the inference tests: a tiny AAM-ResNet, NIfTI volumes written with nibabel, predictors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import NibabelReader
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


def make_predictor(network: nn.Module | None = None, *, reader=None, roi_size=TEST_ROI, spacing=TEST_SPACING, **kwargs):
    """A real CasePredictor on the project's inference chain (CTImageReader unless ``reader`` is given)."""
    return CasePredictor(
        network=network if network is not None else tiny_network(),
        inferer=DenseClassificationInferer(roi_size=roi_size, mode="gaussian"),
        preprocessing=infer_transforms(roi_size=roi_size, spacing=spacing, reader=reader),
        **kwargs,
    )


class CountingReader(NibabelReader):
    """MONAI's NibabelReader that counts reads and can simulate a kill (KeyboardInterrupt) on chosen files."""

    def __init__(self, interrupt_on: str | None = None) -> None:
        super().__init__()
        self.interrupt_on = interrupt_on
        self.reads: list[str] = []

    def read(self, data, **kwargs):
        name = str(data[0] if isinstance(data, (list, tuple)) else data)
        if self.interrupt_on and self.interrupt_on in name:
            raise KeyboardInterrupt(f"simulated kill while loading {Path(name).name}")
        self.reads.append(Path(name).name)
        return super().read(data, **kwargs)
