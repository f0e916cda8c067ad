"""SABR calibration: recovery of known smiles (fixed, free and shifted), the scipy/QuantLib optimum."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pricing.calibration import available_methods, calibrate
from pricing.sabr import lognormal_vol

SMILES = [  # (maturity, forward, alpha, rho, nu) at beta = 0.5
    (0.25, 100.0, 2.0, -0.3, 0.8),
    (1.0, 102.0, 1.8, -0.25, 0.5),
    (2.0, 104.0, 1.7, -0.2, 0.4),
]


def _smiles(beta: float = 0.5, shift: float = 0.0, noise_bp: float = 0.0) -> pd.DataFrame:
    rows = []
    for t, forward, alpha, rho, nu in SMILES:
        strike = forward * np.exp(np.linspace(-0.4, 0.4, 11) * np.sqrt(t))
        vol = lognormal_vol(forward=forward, strike=torch.tensor(strike), maturity=t, alpha=alpha,
                            beta=beta, rho=rho, nu=nu, shift=shift).numpy()  # fmt: skip
        rows.append(pd.DataFrame({"strike": strike, "maturity": t, "forward": forward,
                                  "discount": 1.0, "implied_vol": vol, "shift": shift}))  # fmt: skip
    table = pd.concat(rows, ignore_index=True)
    noise = np.random.default_rng(5).standard_normal(len(table)) * noise_bp * 1e-4
    return table.assign(implied_vol=table["implied_vol"] + noise)


def _params(fit) -> np.ndarray:
    return np.array([fit.params[n] for n in ("alpha", "rho", "nu")]).T


def test_fixed_beta_recovers_every_smile() -> None:
    fit = calibrate("sabr", _smiles(), beta=0.5)
    np.testing.assert_allclose(_params(fit), np.array(SMILES)[:, 2:], rtol=1e-7, atol=1e-9)
    assert fit.params["beta"] == [0.5, 0.5, 0.5]
    assert fit.rmse_iv_bp < 1e-4 and fit.converged


def test_free_beta_recovers_beta_too() -> None:
    fit = calibrate("sabr", _smiles(beta=0.7), free_beta=True)
    np.testing.assert_allclose(fit.params["beta"], 0.7, rtol=0, atol=1e-4)
    assert fit.rmse_iv_bp < 1e-3


def test_shifted_sabr_recovers_a_smile_with_negative_strikes() -> None:
    table = _smiles(beta=0.5, shift=150.0)
    table["strike"] -= 160.0  # strikes around -60 .. -54: only K + shift > 0 matters
    table["forward"] -= 160.0
    vols = []
    for t, forward, alpha, rho, nu in SMILES:
        rows = table[table["maturity"] == t]
        vols.append(lognormal_vol(forward=forward - 160.0, strike=torch.tensor(rows["strike"].values),
                                  maturity=t, alpha=alpha, beta=0.5, rho=rho, nu=nu,
                                  shift=150.0).numpy())  # fmt: skip
    table["implied_vol"] = np.concatenate(vols)
    table = table.rename(columns={"implied_vol": "iv"})
    fit = calibrate("sabr", table, beta=0.5)
    np.testing.assert_allclose(_params(fit), np.array(SMILES)[:, 2:], rtol=1e-6, atol=1e-8)
    assert fit.params["shift"] == [150.0, 150.0, 150.0]


def test_direct_reaches_the_scipy_quantlib_optimum_on_noisy_smiles() -> None:
    table = _smiles(noise_bp=30.0)
    direct = calibrate("sabr", table, beta=0.5)
    reference = calibrate("sabr", table, method="quantlib", beta=0.5)
    assert direct.rmse_iv_bp <= reference.rmse_iv_bp + 1e-6
    np.testing.assert_allclose(_params(direct), _params(reference), rtol=1e-4, atol=1e-6)


def test_methods_and_bad_arguments_are_reported() -> None:
    assert {"direct", "quantlib"} <= set(available_methods("sabr"))
    with pytest.raises(ValueError, match="unknown method 'magic' for sabr; available: direct"):
        calibrate("sabr", _smiles(), method="magic")
    with pytest.raises(ValueError, match="model must be 'heston' or 'sabr'"):
        calibrate("bates", _smiles())
    with pytest.raises(ValueError, match="weights must be 'equal', 'vega' or 'spread'"):
        calibrate("sabr", _smiles(), weights="loud")
    with pytest.raises(ValueError, match="weights must be 33 finite values"):
        calibrate("sabr", _smiles(), weights=np.ones(3))


def test_spread_weights_need_bid_and_ask() -> None:
    from pricing.quotes import QuoteError

    with pytest.raises(QuoteError, match="weights='spread' needs bid and ask"):
        calibrate("sabr", _smiles(), weights="spread")


@pytest.mark.parametrize("method", ["direct", "quantlib"])
def test_smiles_with_fewer_quotes_than_free_parameters_are_reported(method: str) -> None:
    # Two strikes for (alpha, rho, nu): one of many exact fits came back converged without a word
    # (rho -0.07 from direct, +0.04 from scipy, for a true -0.25).
    table = _smiles()
    two = table[(table["maturity"] != 1.0) | table["strike"].isin(table["strike"].iloc[[12, 14]])]
    with pytest.warns(UserWarning, match=r"3 free parameters \(alpha, rho, nu\): 2 at T=1;"):
        calibrate("sabr", two, method=method, beta=0.5)
    with pytest.warns(UserWarning, match=r"4 free parameters \(alpha, beta, rho, nu\): 3 at T=2;"):
        calibrate("sabr", table.drop(index=[22, 23, 24, 25, 26, 27, 28, 29]), method=method,
                  free_beta=True)  # fmt: skip
    weights = np.ones(len(table))
    weights[:9] = 0.0  # 2 of the 11 strikes of T = 0.25 left
    with pytest.warns(UserWarning, match=r"2 at T=0.25;"):  # weight 0 says nothing
        calibrate("sabr", table, method=method, beta=0.5, weights=weights)


@pytest.mark.parametrize("method", ["direct", "quantlib"])
def test_a_free_beta_on_a_bound_is_reported(method: str) -> None:
    # the DAX smiles leave beta nearly free: it ended at 0 or 1 on most expiries, all reported
    # as converged without a word
    dax = str(Path(__file__).parents[2] / "data" / "dax_2002_sepp" / "implied_vols.csv")
    with pytest.warns(UserWarning, match=r"SABR beta ended on a bound of \[0, 1\] at T=0.0356"):
        fit = calibrate("sabr", dax, method=method, free_beta=True)
    ends = [b for b in fit.params["beta"] if min(b, 1.0 - b) <= 1e-6]
    assert len(ends) >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        calibrate("sabr", dax, method=method)  # beta fixed: nothing to say


@pytest.mark.parametrize("method", ["direct", "quantlib"])
def test_parameters_at_a_bound_are_listed_per_expiry(method: str) -> None:
    # nu capped at 0.45 (truth 0.8, 0.5, 0.4 by expiry): the first two smiles end on the cap,
    # and the fit said nothing of it; the fixed beta = 0.5 is no bound
    fit = calibrate("sabr", _smiles(), method=method, beta=0.5, bounds={"nu": (0.01, 0.45)})
    assert fit.at_bounds == {"nu": ["upper", "upper", None]}
    np.testing.assert_allclose(fit.params["nu"][:2], [0.45, 0.45], rtol=1e-6, atol=0.0)
    assert calibrate("sabr", _smiles(), method=method, beta=0.5).at_bounds == {}


def test_equal_bounds_hold_a_parameter_in_both_methods() -> None:
    # equal ends fix a parameter (bounds_reached never lists it): the direct fit held rho there,
    # the quantlib reference failed in scipy ("Each lower bound must be strictly less than each
    # upper bound"), naming no parameter
    bounds = {"rho": (0.1, 0.1)}
    direct = calibrate("sabr", _smiles(noise_bp=30.0), beta=0.5, bounds=bounds)
    reference = calibrate("sabr", _smiles(noise_bp=30.0), method="quantlib", beta=0.5,
                          bounds=bounds)  # fmt: skip
    assert direct.params["rho"] == reference.params["rho"] == [0.1, 0.1, 0.1]
    assert reference.converged
    assert reference.rmse_iv_bp == pytest.approx(direct.rmse_iv_bp, rel=1e-5)
    np.testing.assert_allclose(_params(reference), _params(direct), rtol=1e-4, atol=1e-6)


def test_the_reference_fit_takes_at_most_max_iterations_steps() -> None:
    # scipy's trf counts one call per step and none of the finite-difference Jacobian's: a
    # budget of max_iterations * (p + 1) calls let max_iterations=1 take 4 steps
    from pricing.calibration_sabr import fit_smile_scipy

    smile = _smiles(noise_bp=30.0)
    first = smile[smile["maturity"] == smile["maturity"].min()]
    kw = dict(forward=float(first["forward"].iloc[0]), strike=first["strike"].to_numpy(),
              maturity=float(first["maturity"].iloc[0]), market_iv=first["implied_vol"].to_numpy(),
              beta=0.5)  # fmt: skip
    for budget in (1, 3):
        _, _, converged, steps = fit_smile_scipy(max_iterations=budget, **kw)
        assert steps <= budget and not converged
    assert fit_smile_scipy(**kw)[2]  # the default budget converges
