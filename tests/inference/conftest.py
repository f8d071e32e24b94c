"""Fixtures of the inference tests (helpers live in :mod:`tests.inference.helpers`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.inference.helpers import tiny_network


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the volumes here are tiny, and on a busy 2-core machine two OpenMP threads waiting for each
    other made the first forward passes ~50x slower (seconds instead of tens of milliseconds)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def network() -> nn.Module:
    """One tiny network for the session (only ever used in eval mode, never trained)."""
    return tiny_network()
