"""Shared fixtures: reference-data loading and the device fixture (CUDA skipped when absent)."""

from __future__ import annotations

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
