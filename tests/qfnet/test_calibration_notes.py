"""The calibration notes of the demo report: why the methods' rows differ."""

from __future__ import annotations

from types import SimpleNamespace

from qfnet.calibration_notes import calibration_notes

DAX_DIRECT = {"v0": 0.191, "kappa": 15.56, "theta": 0.0746, "sigma": 3.3, "rho": -0.512}
NETWORK_ANSWER = {"v0": 0.165, "kappa": 5.0, "theta": 0.0676, "sigma": 1.0, "rho": -0.587}


def _fit(params, rmse):
    return SimpleNamespace(params=params, rmse_iv_bp=rmse)


def test_the_network_row_beyond_its_training_box_is_explained():
    # the DAX optimum (kappa 15.6, sigma 3.3) lies outside the network's box: its row showed
    # ~320 bp against ~130 bp with converged=True, and the report said nothing
    results = {"direct": _fit(DAX_DIRECT, 132.1), "network": _fit(NETWORK_ANSWER, 321.6),
               "surrogate": _fit(DAX_DIRECT, 132.1)}  # fmt: skip
    text = "\n".join(calibration_notes(results, ["`network`: at the edge of its box"]))
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
    text = "\n".join(calibration_notes(results, []))
    assert "lies inside that box" in text
    assert "outside" not in text and "polishes" not in text and "Warnings" not in text
