"""Shared fixtures: reference-data loading, the device fixture (CUDA skipped when absent) and one
torch thread for small simulations; torch warnings every time, for tests that expect none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

DATA_DIR = Path(__file__).parent / "data"


def _devices() -> list:
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
    return ["cpu", pytest.param("cuda", marks=[cuda, pytest.mark.cuda])]


@pytest.fixture(params=_devices())
def device(request) -> torch.device:
    """Every test using this fixture runs on the CPU and, where present, on CUDA."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def reference_table():
    """Load a reference CSV from tests/data by file name."""

    def load(name: str) -> pd.DataFrame:
        return pd.read_csv(DATA_DIR / name)

    return load


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the test (modules of small simulations opt in with ``pytestmark``):
    their tensors are small, so threads do not help, and on a busy machine OpenMP barriers across
    descheduled threads slow them down tenfold."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def torch_warns_always() -> Iterator[None]:
    """Torch's warnings each time, not once per process (a test that expects none would pass
    where an earlier test had already triggered it)."""
    previous = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(previous)
