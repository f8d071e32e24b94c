"""A tiny labelled NIfTI cohort with a datalist, and a checkpoint, for the bundle and handler tests.

Volumes are 32 x 32 x 12 voxels at 5 x 5 x 10 mm (train.json's default spacing, so nothing is resampled): air at
-1000 HU around an elliptic body of soft tissue with two aerated lungs; positive cases get ground-glass blobs in the
lungs. Written as real ``.nii.gz`` files and listed in a datalist written by the pipeline's own ``write_datalist``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.data.datalist import write_datalist

SHAPE = (32, 32, 16)  # 16 slices: the fewest the manifest builder and the scan loader accept by default
SPACING = (5.0, 5.0, 10.0)
CLASSES = ["negative", "positive"]
#: overrides every bundle run in these tests uses: tiny input, smallest network, no worker processes
BUNDLE_OVERRIDES = {
    "roi_size": [32, 32, 32],
    "num_workers": 0,
    "batch_size": 2,
    "network_name": "aam_student_small",
    # the toy volumes are not chests (under 1 L of lung): loaded anyway, as min_slices=1 loads toy slice counts
    "allow_out_of_scope": True,
}


def ct_volume(*, positive: bool, seed: int) -> np.ndarray:
    """One synthetic chest-like CT volume in HU (x, y, z)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    volume = np.full(SHAPE, -1000.0)
    volume[(x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1.0] = 40.0
    for centre in (-0.4, 0.4):
        volume[((x - centre) / 0.3) ** 2 + (y / 0.45) ** 2 <= 1.0] = -850.0
    if positive:
        for _ in range(3):
            cx, cy, cz = rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3), rng.uniform(-0.6, 0.6)
            volume[((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) <= 0.2**2] = -450.0
    return (volume + rng.normal(0.0, 15.0, SHAPE)).astype(np.float32)


def write_nifti(path: Path, volume: np.ndarray) -> Path:
    """Write a volume with a RAS affine of the test spacing."""
    nib.save(nib.Nifti1Image(volume, np.diag([*SPACING, 1.0])), path)
    return path


@dataclass(frozen=True)
class TinyCohort:
    """The written cohort.

    Attributes:
        root: its folder.
        datalist: the datalist JSON.
        training: training entries (folds 0 and 1, both classes in each).
        test: test entries.
    """

    root: Path
    datalist: Path
    training: list[dict]
    test: list[dict]


def write_cohort(root: Path, *, n_per_fold_class: int = 2, n_test_per_class: int = 2, broken_test_case: bool = False):
    """Write the cohort: 2 folds x 2 classes x ``n_per_fold_class`` training cases, and a test split."""
    root.mkdir(parents=True, exist_ok=True)
    training, test, index = [], [], 0
    for fold in (0, 1):
        for label in (0, 1):
            for _ in range(n_per_fold_class):
                index += 1
                path = write_nifti(root / f"vol{index:02d}.nii.gz", ct_volume(positive=bool(label), seed=index))
                site = "site-a" if index % 2 else "site-b"
                training.append(
                    {"image": path.name, "label": label, "case_id": f"case-{index:04d}", "site": site, "fold": fold}
                )
    for label in (0, 1):
        for _ in range(n_test_per_class):
            index += 1
            path = write_nifti(root / f"vol{index:02d}.nii.gz", ct_volume(positive=bool(label), seed=index))
            test.append({"image": path.name, "label": label, "case_id": f"case-{index:04d}", "site": "site-a"})
    if broken_test_case:
        index += 1
        broken = root / f"vol{index:02d}.nii.gz"
        full = root / "full.nii.gz"
        write_nifti(full, ct_volume(positive=False, seed=index))
        broken.write_bytes(full.read_bytes()[:200])  # a truncated file: the header is gone, the reader fails
        full.unlink()
        test.append({"image": broken.name, "label": 0, "case_id": f"case-{index:04d}", "site": "site-b"})
    datalist = write_datalist(
        root / "cohort.datalist.json",
        classes=CLASSES,
        manifest=root / "cohort.csv",
        seed=0,
        n_folds=2,
        training=training,
        test=test,
    )
    return TinyCohort(root=root, datalist=datalist, training=training, test=test)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> TinyCohort:
    """8 training cases in 2 folds, 4 test cases and one truncated test file."""
    return write_cohort(tmp_path_factory.mktemp("tiny_cohort"), broken_test_case=True)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """``models/model.pt`` of a run folder: a seeded, untrained ``aam_student_small`` in MONAI's bare state-dict
    layout (what train.json's best-checkpoint saver writes). Evaluation only needs *a* checkpoint of that layout."""
    from pipeline.networks import build

    run = tmp_path_factory.mktemp("run")
    (run / "models").mkdir()
    torch.manual_seed(0)
    network = build("aam_student_small", in_channels=1, num_classes=2)
    torch.save(network.state_dict(), run / "models" / "model.pt")
    return run / "models" / "model.pt"
