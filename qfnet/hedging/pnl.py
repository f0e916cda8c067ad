"""Run a strategy over hedging data: positions, P&L with costs, turnover and risk metrics."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from qfnet import functional as F
from qfnet.hedging.markets import HedgeData, Market
from qfnet.hedging.strategies import Strategy

__all__ = ["HedgeResult", "risk_metrics", "run_strategy"]


class HedgeResult(NamedTuple):
    """Per-path outcome of a strategy.

    Shape:
        - positions: (N, T, H)
        - pnl, cost, turnover: (N,)

    Examples:
        >>> from qfnet.hedging.config import HedgeConfig
        >>> from qfnet.hedging.strategies import BlackScholesDelta
        >>> m = Market(HedgeConfig())
        >>> d = m.data(m.simulate(4, generator=torch.Generator().manual_seed(0)))
        >>> result = run_strategy(BlackScholesDelta(), d, m)
        >>> result.positions.shape, result.pnl.shape, bool((result.cost > 0).all())
        (torch.Size([4, 20, 1]), torch.Size([4]), True)
    """

    positions: torch.Tensor
    pnl: torch.Tensor
    cost: torch.Tensor
    turnover: torch.Tensor


def run_strategy(strategy: Strategy, data: HedgeData, market: Market) -> HedgeResult:
    """Positions of ``strategy`` on ``data`` and the resulting P&L (premium from the config).

    Examples:
        >>> from qfnet.hedging.config import HedgeConfig
        >>> from qfnet.hedging.strategies import NoHedge
        >>> m = Market(HedgeConfig())
        >>> d = m.data(m.simulate(4, generator=torch.Generator().manual_seed(0)))
        >>> bool((run_strategy(NoHedge(), d, m).pnl == -d.payoff).all())
        True
    """
    _check_data(data, market)
    positions = strategy.positions(data)
    cost_rate = market.cost.to(data.prices.dtype)
    liquidate = market.market.liquidate
    pnl = F.hedge_pnl(
        positions, data.prices, data.payoff, cost=cost_rate,
        premium=market.config.derivative.premium, liquidate=liquidate, income=data.income,
    )  # fmt: skip
    cost = F.transaction_costs(positions, data.prices, cost=cost_rate, liquidate=liquidate)
    return HedgeResult(positions, pnl, cost, F.turnover(positions, liquidate=liquidate))


def _check_data(data: HedgeData, market: Market) -> None:
    """Refuse paths made for another market: the baselines' per-step grids (tau, band width)
    failed on them with torch's "The size of tensor a (10) must match the size of tensor b (5)"."""
    steps, instruments = data.prices.shape[1] - 1, data.prices.shape[-1]
    if data.prices.dim() != 3 or (steps, instruments) != (market.n_steps, market.n_instruments):
        raise ValueError(
            f"data has {steps} steps and {instruments} instrument(s) (prices "
            f"{tuple(data.prices.shape)}), the market {market.n_steps} steps (market.n_steps) "
            f"and {market.n_instruments} (market.instruments): paths made for another config?"
        )


def risk_metrics(
    pnl: torch.Tensor, *, entropic_risk_aversion: float = 1.0, notional: float = 1.0
) -> dict[str, float]:
    """Summary statistics of a P&L sample: ``mean, std, var95, es95, es99, entropic``.

    VaR and ES are of the loss ``-pnl`` (positive is bad); ``entropic`` uses the given risk
    aversion per unit notional.

    Raises:
        ValueError: a NaN or infinite P&L, or a metric of a finite one that overflows (a mean
            of P&L near float64's largest value).

    Examples:
        >>> sorted(risk_metrics(torch.randn(1000, dtype=torch.float64)))
        ['entropic', 'es95', 'es99', 'mean', 'std', 'var95']
    """
    p = pnl.to(torch.float64)
    metrics = {
        "mean": float(p.mean()),
        "std": _std(p),
        "var95": float(F.value_at_risk(p, 0.95)),
        "es95": float(F.expected_shortfall(p, 0.95)),
        "es99": float(F.expected_shortfall(p, 0.99)),
        "entropic": float(F.entropic_risk(p, entropic_risk_aversion, notional=notional)),
    }
    for name, value in metrics.items():  # an inf metric was a NaN bootstrap interval
        if not math.isfinite(value) and (name, p.numel()) != ("std", 1):  # 1 path: a NaN std
            raise ValueError(f"risk_metrics: {name} is {value}: the P&L, from {float(p.min()):.4g} "
                             f"to {float(p.max()):.4g}, overflows float64")  # fmt: skip
    return metrics


def _std(pnl: torch.Tensor) -> float:
    """Sample standard deviation of ``pnl``, computed on ``pnl / max |pnl|``: the squares of a
    finite P&L beyond 1e154 (a paths file's rise of 1e300 times its start) made it inf, and
    the bootstrap's interval of it NaN, with numpy's "invalid value encountered in subtract".

    Shape:
        - pnl: (N,)
    """
    scale = pnl.abs().max()
    if not 0.0 < float(scale) < math.inf:  # all zero: 0; a NaN or inf P&L: as torch gives it
        return float(pnl.std())
    return float(scale * (pnl / scale).std())
