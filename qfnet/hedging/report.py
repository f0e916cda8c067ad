"""Backtest plots: a P&L histogram per strategy and hedge ratio against spot.

Uses matplotlib's object-oriented :class:`~matplotlib.figure.Figure` (no pyplot state, no
backend switch), so it is safe to call from any process.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure

from pricing._atomic import save_figure_atomically
from qfnet import functional as F
from qfnet.hedging.markets import HedgeData, Market
from qfnet.hedging.pnl import HedgeResult

__all__ = ["plot_hedge_ratio", "plot_histograms"]


def plot_histograms(results: dict[str, HedgeResult], out_dir: Path) -> list[str]:
    """Write ``pnl_hist_<strategy>.png`` for each strategy (VaR95/ES95 marked).

    The bins span the 0.05%-99.95% quantiles of the hedging strategies' P&L together (shared,
    so the hedges compare), widened for a strategy whose own quantiles reach beyond (``no_hedge``
    above all); the few paths still outside are counted in the edge bins, their number in the
    legend. Returns the file names written.

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
    hedged = torch.cat([p for k, p in pnls.items() if k != "no_hedge"] or list(pnls.values()))
    shared = _central_range(hedged)
    names = []
    for name, pnl in pnls.items():
        # the shared range alone piled no_hedge's P&L into its two edge bins (11,644 of 20,000
        # paths at the top, 4,185 at the bottom) with its VaR95 and ES95 off the histogram
        own = _central_range(pnl)
        lo, hi = min(shared[0], own[0]), max(shared[1], own[1])
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        ax.hist(pnl.clamp(lo, hi).numpy(), bins=120, range=(lo, hi), color="tab:blue", alpha=0.8)
        # + 0.0: a VaR or ES of 0 (a no_hedge of an option mostly out of the money) was
        # labelled "-VaR95 = -0", its negation -0.0
        var = -F.value_at_risk(pnl, 0.95).item() + 0.0
        es = -F.expected_shortfall(pnl, 0.95).item() + 0.0
        ax.axvline(var, color="tab:orange", ls="--", label=f"-VaR95 = {var:.4g}")
        ax.axvline(es, color="tab:red", ls="-", label=f"-ES95 = {es:.4g}")
        below, above = int((pnl < lo).sum()), int((pnl > hi).sum())
        if below or above:  # drawn in the edge bins: say how many are not where they are shown
            ax.plot([], [], " ", label=f"{below} below, {above} above: in the edge bins")
        ax.set(title=f"P&L: {name}", xlabel="terminal P&L (discounted)", ylabel="paths")
        ax.legend()
        fig.tight_layout()
        file = f"pnl_hist_{name}.png"
        save_figure_atomically(fig, out_dir / file, dpi=90)
        names.append(file)
    return names


def _central_range(pnl: torch.Tensor) -> tuple[float, float]:
    """The 0.05% and 99.95% quantiles of ``pnl`` (not torch.quantile: it refuses more than
    2**24 values, as all strategies' paths together can be).

    Shape:
        - pnl: (N,)
    """
    return F._quantile(pnl, 0.0005).item(), F._quantile(pnl, 0.9995).item()


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
    save_figure_atomically(fig, out_dir / file, dpi=90)
    return file
