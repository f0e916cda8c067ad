"""The demo report's computed text: calibration notes, the QuantLib reference, the hedging setup."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from qfnet.demo import (
    HEDGE_CONFIG,
    _calibration_notes,
    _hedge_setup,
    _quantlib_reference_sse,
)
from qfnet.hedging.config import load_config

DAX_DIRECT = {"v0": 0.191, "kappa": 15.56, "theta": 0.0746, "sigma": 3.3, "rho": -0.512}
NETWORK_ANSWER = {"v0": 0.165, "kappa": 5.0, "theta": 0.0676, "sigma": 1.0, "rho": -0.587}


def _fit(params, rmse):
    return SimpleNamespace(params=params, rmse_iv_bp=rmse)


def test_the_network_row_beyond_its_training_box_is_explained():
    # the DAX optimum (kappa 15.6, sigma 3.3) lies outside the network's box: its row showed
    # ~320 bp against ~130 bp with converged=True, and the report said nothing
    results = {"direct": _fit(DAX_DIRECT, 132.1), "network": _fit(NETWORK_ANSWER, 321.6),
               "surrogate": _fit(DAX_DIRECT, 132.1)}  # fmt: skip
    text = "\n".join(_calibration_notes(results, ["`network`: at the edge of its box"]))
    assert "kappa 0.5 to 5" in text and "sigma 0.1 to 1" in text  # the network's box
    assert "outside it (kappa 15.6, sigma 3.3)" in text
    assert "stays inside (kappa 5, sigma 1)" in text
    assert "RMSE of 321.6 bp against 132.1 bp" in text
    assert "polishes the fit with the exact pricer" in text  # the surrogate's row beyond its box
    assert "- `network`: at the edge of its box" in text


def test_a_direct_optimum_inside_the_boxes_is_not_called_outside():
    inside = {"v0": 0.04, "kappa": 1.5, "theta": 0.05, "sigma": 0.6, "rho": -0.7}
    results = {"direct": _fit(inside, 10.0), "network": _fit(inside, 12.0),
               "surrogate": _fit(inside, 10.0)}  # fmt: skip
    text = "\n".join(_calibration_notes(results, []))
    assert "lies inside that box" in text
    assert "outside" not in text and "polishes" not in text and "Warnings" not in text


def test_the_quantlib_reference_is_computed_and_matches_the_published_sse():
    version, sse = _quantlib_reference_sse()
    assert version.count(".") >= 1
    assert sse == pytest.approx(177.2, abs=0.05)  # Sepp (2003), one decimal


def test_the_hedging_setup_follows_the_config_it_describes():
    config = load_config(HEDGE_CONFIG)
    changed = dataclasses.replace(
        config,
        market=dataclasses.replace(config.market, n_steps=10, cost=5e-4),
        derivative=dataclasses.replace(config.derivative, strike=1.1, is_call=False),
        objective=dataclasses.replace(config.objective, alpha=0.99),
        paths=dataclasses.replace(config.paths, train=4000),
        training=dataclasses.replace(config.training, epochs=1),
    )
    text = _hedge_setup(changed)
    # the text was fixed ("Short ATM call, 20 daily steps, 10 bp ..."), whatever was run
    assert text.startswith("Short european put (strike 1.1), 10 rebalancing steps")
    assert "5 bp proportional costs" in text and "ES99" in text
    assert "(4000 training paths, at most 1 epoch)" in text
