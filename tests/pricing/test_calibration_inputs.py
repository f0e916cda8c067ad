"""Calibration inputs: parameter names, bounds, starts, weights and SABR beta/shift settings are
checked before any fitting, and every error names the field."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pricing.calibration import calibrate, calibrate_many
from pricing.quotes import QuoteError
from pricing.sabr import lognormal_vol

HESTON_X0 = {"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.5, "rho": -0.7}


def _smile(shift: float = 0.0, maturity: float = 1.0) -> pd.DataFrame:
    strike = 100.0 * np.exp(np.linspace(-0.3, 0.3, 7))
    vol = lognormal_vol(forward=100.0, strike=torch.tensor(strike), maturity=maturity, alpha=0.3,
                        beta=1.0, rho=-0.3, nu=0.6, shift=shift).numpy()  # fmt: skip
    return pd.DataFrame({"strike": strike, "maturity": maturity, "forward": 100.0,
                         "discount": 1.0, "implied_vol": vol, "shift": shift})  # fmt: skip


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        ("sabr", {"bounds": {"vol": (0.1, 0.2)}}, r"sabr has no parameter 'vol'"),
        (
            "heston",
            {"bounds": {"v0": (0.2, 0.1)}},
            r"bounds\['v0'\]: lower 0.2 is not <= upper 0.1",
        ),
        ("sabr", {"bounds": {"rho": (math.nan, 0.0)}}, r"bounds\['rho'\]: lower nan"),
        ("sabr", {"bounds": {"rho": 0.5}}, r"bounds\['rho'\]: expected \(lower, upper\)"),
        ("heston", {"x0": {"v0": 0.04}}, r"x0: missing \['kappa', 'theta', 'sigma', 'rho'\]"),
        ("heston", {"x0": HESTON_X0 | {"lambda": 1.0}}, r"x0: unknown \['lambda'\]"),
        ("heston", {"x0": HESTON_X0 | {"v0": math.nan}}, r"x0\['v0'\]: must be a finite number"),
        ("sabr", {"x0": {"alpha": 0.3, "rho": 0.0}}, r"x0: missing \['nu'\].*beta optional"),
        ("heston", {"beta": 0.5}, r"SABR options; Heston has no beta"),
        ("heston", {"free_beta": True}, r"SABR options; Heston has no beta"),
        ("sabr", {"beta": math.nan}, r"beta: must be in \[0, 1\], got nan"),
        ("sabr", {"beta": 1.5}, r"beta: must be in \[0, 1\]"),
        ("sabr", {"beta": 0.5, "free_beta": True}, r"fixes SABR beta and free_beta fits it"),
        ("sabr", {"beta": 0.5, "bounds": {"beta": (0.0, 1.0)}}, r"needs free_beta=True"),
        ("sabr", {"weights": np.zeros(7)}, r"weights are all zero"),
    ],
)
def test_bad_settings_are_rejected_naming_the_field(model: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        calibrate(model, _smile(), **kwargs)
    if "weights" not in kwargs:  # calibrate_many checks them once for every table
        with pytest.raises(ValueError, match=message):
            calibrate_many(model, [_smile(), _smile()], **kwargs)


def test_sabr_accepts_x0_without_beta_and_beta_bounds_with_free_beta() -> None:
    fit = calibrate("sabr", _smile(), x0={"alpha": 0.3, "rho": -0.3, "nu": 0.6})
    assert fit.params["nu"][0] == pytest.approx(0.6, rel=1e-7)
    fit = calibrate("sabr", _smile(), free_beta=True, bounds={"beta": (0.9, 1.0)})
    assert 0.9 <= fit.params["beta"][0] <= 1.0


def test_quantlib_sabr_keeps_to_the_bounds_and_quantlib_heston_refuses_them() -> None:
    # The smile's nu is 0.6: a box of [1, 2] must hold the reference fit at its edge.
    fit = calibrate("sabr", _smile(), method="quantlib", bounds={"nu": (1.0, 2.0)})
    assert fit.params["nu"][0] == pytest.approx(1.0, abs=1e-9)
    direct = calibrate("sabr", _smile(), bounds={"nu": (1.0, 2.0)})
    assert direct.rmse_iv_bp == pytest.approx(fit.rmse_iv_bp, rel=1e-5)
    with pytest.raises(ValueError, match=r"method 'quantlib' takes no bounds"):
        calibrate("heston", _smile(), method="quantlib", bounds={"v0": (0.01, 0.2)})


def test_sabr_shift_must_be_one_per_expiry() -> None:
    table = _smile(shift=5.0)
    table.loc[3, "shift"] = math.nan  # an empty shift is 0: not the expiry's 5
    with pytest.raises(QuoteError, match=r"column 'shift'.*T=1: shift varies within the smile"):
        calibrate("sabr", table)
    two = pd.concat([_smile(shift=5.0), _smile(shift=0.0, maturity=2.0)], ignore_index=True)
    assert calibrate("sabr", two).params["shift"] == [5.0, 0.0]


def test_editing_implied_vol_after_cleaning_is_what_gets_fitted() -> None:
    from pricing.quote_cleaning import clean_quotes

    clean, _ = clean_quotes(_smile())
    shifted = clean.assign(implied_vol=clean["implied_vol"] + 0.01)  # market_iv still the old one
    fit, moved = calibrate("sabr", clean), calibrate("sabr", shifted)
    np.testing.assert_allclose(moved.residuals["market_iv"], shifted["implied_vol"], rtol=0,
                               atol=1e-15)  # fmt: skip
    assert abs(moved.params["alpha"][0] - fit.params["alpha"][0]) > 1e-3
