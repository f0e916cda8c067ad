"""QuantLib adapters: market inputs and option types are read as given, or refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pricing import heston
from pricing import quantlib as qlref

MODEL = {"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.5, "rho": -0.7}
MATURITY = np.array([1.0, 2.0])
DISCOUNT = np.exp(-0.05 * MATURITY)


def _table(**columns: object) -> dict[str, object]:
    table = {"strike": [90.0, 110.0], "maturity": MATURITY, "spot": [100.0, 100.0]}
    table.update({name: [value] * 2 for name, value in MODEL.items()})
    return {**table, **columns}


def test_heston_price_table_discounts_at_its_discount_column():
    # a spot row with a discount but no rate was priced at rate 0 (10.06 read as 7.02)
    prices = qlref.heston_price_table(_table(discount=DISCOUNT, dividend=[0.01, 0.01]))
    spot, dividend = 100.0, 0.01
    forward = spot * np.exp(-dividend * MATURITY) / DISCOUNT
    expected = heston.price(
        forward=torch.tensor(forward),
        discount=torch.tensor(DISCOUNT),
        strike=torch.tensor([90.0, 110.0]),
        maturity=torch.tensor(MATURITY),
        **MODEL,
    )
    np.testing.assert_allclose(prices, expected.numpy(), rtol=1e-9, atol=0.0)


def test_heston_price_refuses_a_discount_given_with_spot():
    with pytest.raises(ValueError, match="discount goes with forward"):
        qlref.heston_price(spot=100.0, strike=100.0, maturity=MATURITY, discount=DISCOUNT, **MODEL)


def test_heston_price_table_refuses_an_unknown_option_type():
    # anything but call/C was priced as a put
    with pytest.raises(ValueError, match=r"option_type must be call or put, got 'cal' at row 2"):
        qlref.heston_price_table(_table(option_type=["put", "cal"]))
    calls = qlref.heston_price_table(_table(option_type=[" Call", "C"]))
    np.testing.assert_allclose(calls, qlref.heston_price_table(_table()), rtol=0.0, atol=0.0)


def test_scalar_adapters_refuse_a_string_option_type():
    # is_call="put" is truthy: the barrier and Monte Carlo adapters priced a call
    barrier = dict(spot=100.0, strike=100.0, barrier=90.0, barrier_type="down_out", maturity=1.0)
    with pytest.raises(TypeError, match="is_call must be a bool, got 'put'"):
        qlref.bs_barrier_price(**barrier, volatility=0.2, is_call="put")
    with pytest.raises(TypeError, match="is_call must be a bool"):
        qlref.heston_mc_price(spot=100.0, strike=100.0, maturity=1.0, is_call="put", n_paths=2,
                              n_steps=1, **MODEL)  # fmt: skip
    put = qlref.bs_barrier_price(**barrier, volatility=0.2, is_call=np.False_)
    assert put == pytest.approx(qlref.bs_barrier_price(**barrier, volatility=0.2, is_call=False),
                                rel=0.0, abs=0.0)  # fmt: skip


@pytest.mark.parametrize(("option", "value"), [("period_unit", "week"), ("calendar", "TARGET")])
def test_heston_calibrate_refuses_an_unknown_period_unit_or_calendar(option, value):
    # "week" was read as days and "TARGET" as no calendar
    quotes = dict(spot=100.0, strike=np.array([100.0]), period=np.array([4]),
                  market_vol=np.array([0.2]), curve_days=np.array([1, 365]),
                  zero_rate=np.zeros(2))  # fmt: skip
    with pytest.raises(ValueError, match=repr(value)):
        qlref.heston_calibrate(**quotes, **{option: value})


def test_calibration_zero_curve_is_flat_past_its_last_pillar():
    # QuantLib's ZeroCurve went on at the last segment's slope: 4.09% at 2 years, not 3%
    curve = qlref._zero_curve(np.array([30, 365]), np.array([0.01, 0.03]))
    days = np.array([15, 200, 730, 3650])
    discounts = [curve.discount(qlref.EVALUATION_DATE + int(n)) for n in days]
    rates = -np.log(discounts) / (days / 365.0)
    expected = [0.01, 0.01 + 0.02 * 170 / 335, 0.03, 0.03]
    np.testing.assert_allclose(rates, expected, rtol=1e-12, atol=1e-15)
