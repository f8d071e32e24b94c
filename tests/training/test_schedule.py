import pytest
import torch

from pipeline.errors import UserError
from pipeline.training.schedule import FINAL_LR_FRACTION, make_scheduler


def _optimizer(lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_cosine_anneals_to_the_final_fraction_at_the_last_epoch():
    optimizer = _optimizer()
    scheduler = make_scheduler("cosine", optimizer, epochs=8)
    rates = []
    for _ in range(8):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == sorted(rates, reverse=True) and rates[0] < 1e-3
    assert rates[-1] == pytest.approx(1e-3 * FINAL_LR_FRACTION)
    assert rates[3] == pytest.approx(1e-3 * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) / 2))  # half way


def test_constant_keeps_the_rate_and_its_state_round_trips():
    optimizer = _optimizer()
    scheduler = make_scheduler("constant", optimizer, epochs=3)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert scheduler.state_dict()["last_epoch"] == 3


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="lr_schedule must be one of constant, cosine, got 'step'"):
        make_scheduler("step", _optimizer(), epochs=3)
