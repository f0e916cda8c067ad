"""Backtest plots."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qfnet.hedging.config import HedgeConfig
from qfnet.hedging.markets import Market
from qfnet.hedging.pnl import HedgeResult, run_strategy
from qfnet.hedging.report import plot_hedge_ratio, plot_histograms
from qfnet.hedging.strategies import BlackScholesDelta


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


@pytest.fixture()
def figures(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The figures the report draws, by file name, kept instead of written."""
    import qfnet.hedging.report

    drawn: dict = {}
    monkeypatch.setattr(qfnet.hedging.report, "save_figure_atomically",
                        lambda fig, path, **_: drawn.update({path.name: fig}))  # fmt: skip
    return drawn


def test_histograms_cover_a_strategy_beyond_the_hedges_bins_and_count_the_clipped(
    tmp_path: Path, figures: dict
) -> None:
    # the bins spanned the hedging strategies' P&L only: no_hedge's was clamped into them, half
    # its paths drawn in each edge bin and its VaR95 and ES95 off the histogram, without a word
    n = 2001
    empty = torch.zeros(1, 1, 1, dtype=torch.float64)
    pnls = {"no_hedge": torch.linspace(-1.0, 1.0, n, dtype=torch.float64),
            "delta": torch.linspace(-0.1, 0.1, n, dtype=torch.float64)}  # fmt: skip
    plot_histograms({k: HedgeResult(empty, p, p, p) for k, p in pnls.items()}, tmp_path)
    for name, pnl in pnls.items():
        ax = figures[f"pnl_hist_{name}.png"].axes[0]
        counts = [bar.get_height() for bar in ax.patches]
        assert len(counts) == 120 and sum(counts) == n
        assert max(counts) < 0.02 * n  # evenly spread: nothing piled in an edge bin
        assert ax.patches[0].get_x() <= float(pnl[1])  # the bins reach the 0.05% quantile
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels[-1] == "1 below, 1 above: in the edge bins"


def _write_histograms(out_dir: Path) -> str:
    pnl = torch.linspace(-1.0, 1.0, 101, dtype=torch.float64)
    empty = torch.zeros(1, 1, 1, dtype=torch.float64)
    return plot_histograms({"delta": HedgeResult(empty, pnl, pnl, pnl)}, out_dir)[0]


def _write_hedge_ratio(out_dir: Path) -> str:
    market = Market(HedgeConfig())
    data = market.data(market.simulate(16, generator=torch.Generator().manual_seed(0)))
    results = {"delta": run_strategy(BlackScholesDelta(), data, market)}
    return plot_hedge_ratio(results, data, market, out_dir)


@pytest.mark.parametrize("write", [_write_histograms, _write_hedge_ratio])
def test_an_interrupted_plot_leaves_the_previous_file_and_no_temporary(
    write, tmp_path: Path, fill_the_disk
) -> None:
    # the plots were saved in place: a write cut short (a full disk) left half a PNG behind
    name = write(tmp_path)
    before = (tmp_path / name).read_bytes()

    fill_the_disk()
    with pytest.raises(OSError, match="No space left"):
        write(tmp_path)
    assert (tmp_path / name).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left


def test_a_var_and_es_of_zero_are_labelled_0_not_minus_0(tmp_path: Path, figures: dict) -> None:
    # the labels showed the negated VaR and ES: a VaR of 0.0 (the loss of an unhedged option
    # that mostly expires worthless) was drawn as "-VaR95 = -0"
    empty = torch.zeros(1, 1, 1, dtype=torch.float64)
    pnl = -torch.zeros(100, dtype=torch.float64)  # -payoff of an option that expires worthless
    plot_histograms({"no_hedge": HedgeResult(empty, pnl, pnl, pnl)}, tmp_path)
    legend = figures["pnl_hist_no_hedge.png"].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["-VaR95 = 0", "-ES95 = 0"]
