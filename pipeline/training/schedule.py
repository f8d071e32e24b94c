"""Learning-rate schedules shared by ``train.json`` and the distillation cascade.

The protocol's optimiser is AdamW at a constant rate (``"constant"``, the bundle default). ``"cosine"`` anneals it
over the run's maximum epochs to 1 % of the initial rate with PyTorch's ``CosineAnnealingLR``, stepped once per epoch
by MONAI's ``LrScheduleHandler``: a short schedule (the MedMNIST benchmark's ten-odd epochs) still ends on a low rate,
where the validation AUC is least noisy. Only the schedule's choice is written here; the scheduler is PyTorch's.
"""

from __future__ import annotations

import torch

from pipeline.errors import UserError

__all__ = ["LR_SCHEDULES", "FINAL_LR_FRACTION", "cosine_schedule", "make_scheduler"]

LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
#: the cosine schedule's last rate, as a fraction of the initial one
FINAL_LR_FRACTION = 0.01


def cosine_schedule(optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """Cosine annealing of every parameter group over ``epochs`` epochs to ``FINAL_LR_FRACTION`` of its rate.

    Args:
        optimizer: the optimiser (its groups' current ``lr`` is the initial rate).
        epochs: the run's maximum epochs (the schedule's period).

    Returns:
        The scheduler, to be stepped once per epoch.
    """
    base = min(group["lr"] for group in optimizer.param_groups)
    return torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, int(epochs)), eta_min=base * FINAL_LR_FRACTION
    )


def make_scheduler(
    schedule: str, optimizer: torch.optim.Optimizer, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler of a schedule name (``"constant"`` gives a no-op ``LambdaLR``, so checkpoints always hold one).

    Args:
        schedule: one of :data:`LR_SCHEDULES`.
        optimizer: the optimiser.
        epochs: the run's maximum epochs.

    Returns:
        A scheduler stepped once per epoch.

    Raises:
        UserError: for an unknown schedule name.
    """
    if schedule not in LR_SCHEDULES:
        raise UserError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    if schedule == "cosine":
        return cosine_schedule(optimizer, epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda _epoch: 1.0)
