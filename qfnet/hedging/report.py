"""Backtest plots: a P&L histogram per strategy and hedge ratio against spot.

Uses matplotlib's object-oriented :class:`~matplotlib.figure.Figure` (no pyplot state, no
backend switch), so it is safe to call from any process.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure

from qfnet import functional as F
from qfnet.hedging.markets import HedgeData, Market
from qfnet.hedging.pnl import HedgeResult

__all__ = ["plot_hedge_ratio", "plot_histograms"]


def plot_histograms(results: dict[str, HedgeResult], out_dir: Path) -> list[str]:
    """Write ``pnl_hist_<strategy>.png`` for each strategy (shared bins, VaR95/ES95 marked).

    Returns the file names written.

    Examples:
        >>> import tempfile
        >>> from qfnet.hedging.config import HedgeConfig
        >>> from qfnet.hedging.pnl import run_strategy
        >>> from qfnet.hedging.strategies import BlackScholesDelta
        >>> market = Market(HedgeConfig())
        >>> data = market.data(market.simulate(64, generator=torch.Generator().manual_seed(0)))
        >>> results = {"delta": run_strategy(BlackScholesDelta(), data, market)}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     plot_histograms(results, Path(tmp))
        ['pnl_hist_delta.png']
    """
    pnls = {k: r.pnl.detach().to(torch.float64).cpu() for k, r in results.items()}
    finite = torch.cat([p for k, p in pnls.items() if k != "no_hedge"] or list(pnls.values()))
    # not torch.quantile: it refuses more than 2**24 values, here all strategies' paths together
    lo, hi = F._quantile(finite, 0.0005).item(), F._quantile(finite, 0.9995).item()
    names = []
    for name, pnl in pnls.items():
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        ax.hist(pnl.clamp(lo, hi).numpy(), bins=120, range=(lo, hi), color="tab:blue", alpha=0.8)
        var = -F.value_at_risk(pnl, 0.95).item()
        es = -F.expected_shortfall(pnl, 0.95).item()
        ax.axvline(var, color="tab:orange", ls="--", label=f"-VaR95 = {var:.4g}")
        ax.axvline(es, color="tab:red", ls="-", label=f"-ES95 = {es:.4g}")
        ax.set(title=f"P&L: {name}", xlabel="terminal P&L (discounted)", ylabel="paths")
        ax.legend()
        fig.tight_layout()
        file = f"pnl_hist_{name}.png"
        fig.savefig(out_dir / file, dpi=90)
        names.append(file)
    return names


def plot_hedge_ratio(
    results: dict[str, HedgeResult],
    data: HedgeData,
    market: Market,
    out_dir: Path,
    *,
    max_points: int = 4000,
) -> str:
    """Write ``hedge_ratio_vs_spot.png``: positions in the underlying against spot at three
    dates (start, middle, last rebalancing), for every strategy that hedges.

    Examples:
        >>> import tempfile
        >>> from qfnet.hedging.config import HedgeConfig
        >>> from qfnet.hedging.pnl import run_strategy
        >>> from qfnet.hedging.strategies import BlackScholesDelta
        >>> market = Market(HedgeConfig())
        >>> data = market.data(market.simulate(64, generator=torch.Generator().manual_seed(0)))
        >>> results = {"delta": run_strategy(BlackScholesDelta(), data, market)}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     plot_hedge_ratio(results, data, market, Path(tmp))
        'hedge_ratio_vs_spot.png'
    """
    steps = sorted({0, market.n_steps // 2, market.n_steps - 1})
    fig = Figure(figsize=(5 * len(steps), 4))
    axes = fig.subplots(1, len(steps), squeeze=False)
    n = min(max_points, data.spot.shape[0])
    for ax, t in zip(axes[0], steps, strict=True):
        spot = data.spot[:n, t].cpu()
        for name, res in results.items():
            if name == "no_hedge":
                continue
            ax.scatter(spot, res.positions[:n, t, 0].detach().cpu(), s=2, alpha=0.4, label=name)
        tau = float(market.time_grid[-1] - market.time_grid[t])
        ax.set(title=f"step {t} (tau = {tau:.4f} y)", xlabel="spot", ylabel="units of underlying")
    axes[0][0].legend(markerscale=5)
    fig.tight_layout()
    file = "hedge_ratio_vs_spot.png"
    fig.savefig(out_dir / file, dpi=90)
    return file
