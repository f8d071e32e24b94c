"""Same seed, same machine, same threads: the same weights, bit for bit (and a different seed: different weights).

The demo's figures are only reproducible if a training run is a function of its seed and data on one machine; a
stray unseeded random draw (a transform, the loader's shuffling, a network built before the seed is set) would make
every run another draw. The other half of reproducibility, across machines, is recorded rather than enforced:
``models/run.json`` holds :func:`pipeline.contracts.run_record.numerics_record`.
"""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.losses import FocalLoss
from monai.transforms import Compose
from monai.utils import set_determinism

from pipeline.contracts.run_record import numerics_record
from pipeline.networks import build
from pipeline.transforms import augmentation_transforms

ROI = (32, 32, 32)


def _train(seed: int) -> dict[str, torch.Tensor]:
    """Two epochs of the train.json recipe's parts (network, focal loss, AdamW, augmentation, shuffling)."""
    set_determinism(seed=seed)
    generator = torch.Generator().manual_seed(1234)  # the data are fixed; only the run's seed varies
    data = [{"image": torch.rand((1, *ROI), generator=generator), "label": torch.tensor([i % 2])} for i in range(8)]
    loader = DataLoader(
        Dataset(data, transform=Compose(augmentation_transforms(roi_size=ROI))),
        batch_size=4,
        shuffle=True,
        num_workers=0,
    )
    network = build("aam_student_small", in_channels=1, num_classes=2, options={"width": 0.125})
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-5),
        loss_function=FocalLoss(gamma=2.0, alpha=0.25, use_softmax=True, to_onehot_y=True),
    )
    trainer.run()
    set_determinism(seed=None)
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


@pytest.fixture(scope="module")
def first_run() -> dict[str, torch.Tensor]:
    return _train(seed=0)


def test_same_seed_gives_the_same_weights_exactly(first_run):
    again = _train(seed=0)
    assert list(again) == list(first_run)
    different = [k for k in first_run if not torch.equal(first_run[k], again[k])]
    assert different == [], f"weights differ between two runs of seed 0: {different[:5]}"


def test_another_seed_gives_other_weights(first_run):
    other = _train(seed=1)
    floating = [k for k, v in first_run.items() if v.is_floating_point() and "weight" in k]
    assert floating and sum(not torch.equal(first_run[k], other[k]) for k in floating) > len(floating) // 2


def test_numerics_record_describes_this_process():
    record = numerics_record()
    assert record["torch"] == torch.__version__
    assert record["num_threads"] == torch.get_num_threads()
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["mkldnn_enabled"] == torch.backends.mkldnn.enabled
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert numerics_record()["num_threads"] == 1
    finally:
        torch.set_num_threads(previous)
