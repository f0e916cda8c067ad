"""End-to-end paths on every available device (CPU always; CUDA where present, skipped otherwise):
Monte Carlo pricing, the surrogate, and deep-hedging training."""

from __future__ import annotations

import pytest
import torch

from pricing import black_scholes, heston, monte_carlo
from pricing.datasets import DomainError
from qfnet.hedging.config import config_from_dict
from qfnet.hedging.train import train
from qfnet.surrogate import SABR_PDE_SURROGATE, implied_vol, load_surrogate

HESTON = {"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.5, "rho": -0.7}
MARKET = {"spot": 100.0, "maturity": 1.0, "rate": 0.03, "dividend": 0.01}
K_SE = 3.0


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def test_heston_monte_carlo_on_device_is_within_3_se_and_reproducible(device) -> None:
    strikes = torch.tensor([80.0, 100.0, 120.0], dtype=torch.float64)
    analytic = heston.price(strike=strikes, **MARKET, **HESTON)

    def run(seed: int) -> monte_carlo.MCResult:
        return monte_carlo.heston_european(
            strike=strikes, **MARKET, **HESTON, n_paths=16_384, n_steps=50, antithetic=True,
            control=True, generator=_generator(device, seed), device=device, progress=False,
        )  # fmt: skip

    first = run(7)
    assert first.price.device.type == device.type
    price, se = first.price.cpu(), first.std_error.cpu()
    # QE with 50 steps has a discretisation bias far below 3 SE at this path count
    assert torch.all((price - analytic).abs() <= K_SE * se), (price, analytic, se)
    torch.testing.assert_close(run(7).price, first.price, rtol=0, atol=0)
    assert not torch.equal(run(8).price, first.price)


def test_black_scholes_monte_carlo_on_device_is_within_3_se(device) -> None:
    result = monte_carlo.bs_european(
        spot=100.0, strike=105.0, maturity=0.5, volatility=0.25, rate=0.02, n_paths=50_000,
        generator=_generator(device, 3), device=device,
    )  # fmt: skip
    exact = black_scholes.price(
        spot=100.0, strike=105.0, maturity=0.5, volatility=0.25, rate=0.02, is_call=True
    )
    assert abs(result.price.item() - exact.item()) <= K_SE * result.std_error.item()


def test_surrogate_on_device_matches_cpu_and_refuses_out_of_domain(device) -> None:
    cpu_net = load_surrogate()
    net = load_surrogate(device=device)
    query = {
        **HESTON,
        "maturity": torch.tensor([0.25, 1.0, 2.0], dtype=torch.float64),
        "log_moneyness": torch.tensor([-0.1, 0.0, 0.15], dtype=torch.float64),
    }
    on_device = implied_vol(net, **query)
    assert on_device.device.type == device.type
    # float32 weights: another device's matmul may round differently (1e-6 vol = 0.01 bp)
    torch.testing.assert_close(on_device.cpu(), implied_vol(cpu_net, **query), rtol=0, atol=1e-6)
    with pytest.raises(DomainError, match="kappa"):
        implied_vol(net, **{**query, "kappa": 50.0})
    flagged = implied_vol(net, **{**query, "kappa": 50.0}, out_of_domain="nan")
    assert flagged.device.type == device.type and torch.isnan(flagged).all()


def test_sabr_pde_surrogate_on_device_matches_cpu(device) -> None:
    query = {"alpha": 0.2, "beta": 0.5, "rho": -0.3, "nu": 0.6,
             "maturity": torch.tensor([0.5, 5.0, 10.0], dtype=torch.float64),
             "log_moneyness": torch.tensor([-0.2, 0.0, 0.3], dtype=torch.float64)}  # fmt: skip
    on_device = implied_vol(load_surrogate(SABR_PDE_SURROGATE, device=device), **query)
    assert on_device.device.type == device.type
    expected = implied_vol(load_surrogate(SABR_PDE_SURROGATE), **query)
    torch.testing.assert_close(on_device.cpu(), expected, rtol=0, atol=1e-6)


def test_deep_hedge_trains_on_device(device) -> None:
    config = config_from_dict(
        {
            "seed": 5,
            "market": {"n_steps": 10, "cost": 1.0e-3},
            "paths": {"train": 4000, "val": 1000, "test": 1000},
            "strategy": {"type": "ntb", "hidden": [8]},
            "training": {"epochs": 2, "batch_size": 1000, "device": device.type},
            "baselines": {"ww_risk_aversion": 1.0},
        }
    )
    result = train(config)
    losses = result.history["train_loss"] + result.history["val_loss"]
    assert len(result.history["train_loss"]) == 2
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert next(result.model.parameters()).device.type == "cpu"  # moved back for saving/use
