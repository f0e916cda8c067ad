"""Strategy P&L on hand-built paths: gains, costs on the first and last trade, premium."""

from __future__ import annotations

import pytest
import torch

from qfnet.hedging.config import config_from_dict
from qfnet.hedging.markets import HedgeData, Market
from qfnet.hedging.pnl import risk_metrics, run_strategy

DT = torch.float64


class _Fixed:
    def __init__(self, positions: list[float]) -> None:
        self.h = torch.tensor([positions], dtype=DT).unsqueeze(-1)  # (1, T, 1)

    def positions(self, data: HedgeData) -> torch.Tensor:
        return self.h


def _data(spot: list[float], payoff: float) -> HedgeData:
    s = torch.tensor([spot], dtype=DT)
    t = s.shape[1] - 1
    zeros = torch.zeros(1, t, 1, dtype=DT)
    return HedgeData(
        spot=s,
        prices=s.unsqueeze(-1),
        income=zeros,
        payoff=torch.tensor([payoff], dtype=DT),
        features=torch.zeros(1, t, 5, dtype=DT),
        reference=zeros,
        vol=torch.full((1, t), 0.2, dtype=DT),
    )


@pytest.mark.parametrize("liquidate", [True, False])
def test_run_strategy_pnl_by_hand(liquidate: bool) -> None:
    market = Market(
        config_from_dict(
            {
                "market": {"n_steps": 3, "cost": 0.002, "liquidate": liquidate},
                "derivative": {"premium": 0.03},
            }
        )
    )
    data = _data([1.00, 1.02, 0.99, 1.05], payoff=0.05)
    res = run_strategy(_Fixed([0.5, 0.7, 0.4]), data, market)
    gains = 0.5 * 0.02 + 0.7 * (-0.03) + 0.4 * 0.06
    trades = [(0.5, 1.00), (0.2, 1.02), (0.3, 0.99)] + ([(0.4, 1.05)] if liquidate else [])
    cost = 0.002 * sum(q * p for q, p in trades)
    assert res.cost.item() == pytest.approx(cost, abs=1e-15)
    assert res.turnover.item() == pytest.approx(sum(q for q, _ in trades), abs=1e-15)
    assert res.pnl.item() == pytest.approx(0.03 + gains - cost - 0.05, abs=1e-15)


def test_risk_metrics_of_a_known_sample() -> None:
    pnl = torch.arange(100, dtype=DT) - 50.0  # losses 50, 49, ..., -49
    m = risk_metrics(pnl, entropic_risk_aversion=1e-6)
    assert m["mean"] == pytest.approx(-0.5, abs=1e-12)
    assert m["es95"] == pytest.approx(48.0, abs=1e-12)  # mean of 50, 49, 48, 47, 46
    assert m["es99"] == pytest.approx(50.0, abs=1e-12)
    assert m["var95"] == pytest.approx(45.05, abs=1e-9)  # linear interpolation of quantiles
    assert m["entropic"] == pytest.approx(0.5, abs=1e-3)  # tends to -mean as aversion -> 0


def test_risk_metrics_refuse_a_nan_pnl_instead_of_reporting_nan() -> None:
    pnl = torch.tensor([0.1, float("nan"), -0.2], dtype=DT)  # var95 and es95 came out NaN
    with pytest.raises(ValueError, match=r"value_at_risk: pnl has 1 non-finite value\(s\), the "
                                         r"first on path 1"):  # fmt: skip
        risk_metrics(pnl)


@pytest.mark.parametrize("n_steps", [10, 40])
def test_delta_hedging_error_of_a_sold_put_matches_the_discrete_hedging_theory(
    n_steps: int,
) -> None:
    # Sold at the Black-Scholes price with a rate and a dividend, no costs: the P&L averages 0,
    # and its spread is Bertsimas-Kogan-Lo's (2000) sqrt(dt/2 E int e^{-2rt} (Gamma sigma^2 S^2)^2
    # dt) to O(dt) (10,000 paths: within 5% at 10 steps, 3% at 40), halving with 4x the steps
    from pricing import black_scholes
    from qfnet.hedging.strategies import BlackScholesDelta
    from qfnet.hedging.train import make_paths

    vol, mat, rate, div, strike = 0.3, 0.5, 0.05, 0.02, 1.05
    premium = float(black_scholes.price(spot=1.0, strike=strike, maturity=mat, volatility=vol,
                                        rate=rate, dividend=div, is_call=False))  # fmt: skip
    market = Market(config_from_dict({
        "market": {"n_steps": n_steps, "volatility": vol, "maturity": mat, "rate": rate,
                   "dividend": div, "cost": 0.0},
        "derivative": {"strike": strike, "is_call": False, "premium": premium}}))  # fmt: skip
    data, raw = make_paths(market, 10_000, split="test", seed=0)
    pnl = run_strategy(BlackScholesDelta(), data, market).pnl
    se = pnl.std().item() / pnl.numel() ** 0.5
    assert abs(pnl.mean().item()) < 4.0 * se
    grid, s = market.time_grid, raw.spot[:, :-1]
    gamma = black_scholes.greeks(spot=s, strike=strike, maturity=grid[-1] - grid[:-1],
                                 volatility=vol, rate=rate, dividend=div).gamma  # fmt: skip
    dt = mat / n_steps
    integral = ((gamma * vol**2 * s**2) ** 2 * torch.exp(-2.0 * rate * grid[:-1])).sum(1) * dt
    assert pnl.std().item() == pytest.approx((0.5 * dt * integral.mean().item()) ** 0.5, rel=0.1)


def test_run_strategy_refuses_paths_made_for_another_market() -> None:
    # a backtest of such paths got as far as the Whalley-Wilmott band, whose per-step grid
    # failed with torch's "The size of tensor a (10) must match the size of tensor b (5)"
    from qfnet.hedging.strategies import WhalleyWilmott
    from qfnet.hedging.train import make_paths

    ten = Market(config_from_dict({"market": {"n_steps": 10}}))
    five = Market(config_from_dict({"market": {"n_steps": 5}}))
    data, _ = make_paths(five, 8, split="test", seed=0)
    with pytest.raises(
        ValueError, match=r"data has 5 steps .* the market 10 steps \(market\.n_steps\)"
    ):
        run_strategy(WhalleyWilmott(ten, 1.0), data, ten)
