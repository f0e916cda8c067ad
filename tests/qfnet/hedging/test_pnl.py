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
