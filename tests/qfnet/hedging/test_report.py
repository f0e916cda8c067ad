"""Backtest plots."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qfnet.hedging.pnl import HedgeResult
from qfnet.hedging.report import plot_histograms


@pytest.mark.slow
def test_histograms_of_more_than_2_pow_24_paths_in_all(tmp_path: Path) -> None:
    # the shared bins came from torch.quantile of every strategy's P&L together, which raised
    # "quantile() input tensor is too large" above 2**24 values (here 2 x (2**23 + 1))
    n = 2**23 + 1
    pnl = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    empty = torch.zeros(1, 1, 1, dtype=torch.float64)
    results = {name: HedgeResult(empty, pnl, pnl, pnl) for name in ("delta", "learned")}
    written = plot_histograms(results, tmp_path)
    assert written == ["pnl_hist_delta.png", "pnl_hist_learned.png"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in written)
