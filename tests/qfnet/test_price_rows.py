"""Pricing quote-table rows: forwards and discounts per row, option types, against QuantLib."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pricing import black_scholes as bs
from pricing import quantlib as qlref
from pricing.quotes import QuoteError, read_quotes
from qfnet.price_rows import TIME_VALUE_LOST, black_vols, forward_and_discount, price_table


def test_a_given_discount_without_a_forward_sets_the_carry_rate():
    # spot 100, dividend yield 2%, discount exp(-0.05): the forward is 100 exp(0.03), as
    # QuantLib's Black-Scholes-Merton process on that discount curve has it (it was 100 exp(-0.02))
    rate, dividend, t = 0.05, 0.02, 1.5
    table = read_quotes(pd.DataFrame({"option_type": ["call", "put"], "strike": 100.0,
                                      "maturity": t, "spot": 100.0, "dividend": dividend,
                                      "discount": np.exp(-rate * t), "volatility": 0.2}))  # fmt: skip
    forward, _ = forward_and_discount(table)
    np.testing.assert_allclose(forward, 100.0 * np.exp((rate - dividend) * t), rtol=1e-14, atol=0)
    priced = price_table(table, model="bs")["price"].to_numpy()
    reference = qlref.bs_price(spot=100.0, strike=100.0, maturity=t, volatility=0.2, rate=rate,
                               dividend=dividend, is_call=np.array([True, False]))  # fmt: skip
    np.testing.assert_allclose(priced, reference, rtol=1e-12, atol=0)


@pytest.mark.parametrize("option_type", ["C", "Call", None])
def test_an_option_type_read_quotes_did_not_normalise_is_an_error_not_a_put(option_type):
    table = pd.DataFrame({"option_type": ["put", option_type], "strike": 110.0, "maturity": 1.0,
                          "spot": 100.0, "volatility": 0.2})  # fmt: skip
    with pytest.raises(QuoteError, match=r"row 2, column 'option_type'"):
        price_table(table, model="bs")


@pytest.mark.parametrize(
    ("model", "params", "message"),
    [
        ("heston", {"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.3, "rho": -1.5}, "rho"),
        ("heston", {"v0": -0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.3, "rho": -0.5}, "v0"),
        ("sabr", {"alpha": 0.3, "beta": 1.5, "rho": -0.5, "nu": 0.5}, "beta"),
        ("sabr", {"alpha": 0.3, "beta": 1.0, "rho": -0.95, "nu": 2.0}, "volatility"),
        ("bs", {"volatility": -0.2}, "volatility"),
    ],
)
def test_quantlib_engine_refuses_the_parameters_the_analytic_one_does(model, params, message):
    # QuantLib priced rho = -1.5 (negative prices written) and raised bare RuntimeErrors for the
    # others; Hagan's vol is negative at (K = 5, T = 30) for rho = -0.95, nu = 2
    table = pd.DataFrame({"option_type": "call", "strike": [1.0, 5.0], "maturity": [1.0, 30.0],
                          "forward": 1.0})  # fmt: skip
    # a --params value is named as such (every row holds it); Hagan's vol by its row
    for engine in ("analytic", "quantlib"):
        with pytest.raises(ValueError, match=rf"(row \d|--params): {message} must be"):
            price_table(table, model=model, engine=engine, params=params)


def test_a_borrow_cost_enters_the_carry_as_quantlib_prices_it():
    # a borrow column was ignored: the forward was spot exp((rate - dividend) T)
    rate, dividend, borrow, t = 0.05, 0.01, 0.03, 2.0
    table = read_quotes(pd.DataFrame({"option_type": ["call", "put"], "strike": 100.0,
                                      "maturity": t, "spot": 100.0, "rate": rate,
                                      "dividend": dividend, "borrow_cost": borrow,
                                      "volatility": 0.2}))  # fmt: skip
    forward, _ = forward_and_discount(table)
    np.testing.assert_allclose(forward, 100.0 * np.exp((rate - dividend - borrow) * t), rtol=1e-14)
    priced = price_table(table, model="bs")["price"].to_numpy()
    reference = qlref.bs_price(spot=100.0, strike=100.0, maturity=t, volatility=0.2, rate=rate,
                               dividend=dividend + borrow, is_call=np.array([True, False]))  # fmt: skip
    np.testing.assert_allclose(priced, reference, rtol=1e-12, atol=0)


def test_the_quantlib_engine_prices_heston_with_a_reference_engine():
    # QuantLib's default 144-node Gauss-Laguerre priced this 1-day near-the-money call 0.235,
    # where its adaptive engines and the analytic pricer give 1.37e-6
    heston = {"v0": 1e-4, "kappa": 0.01, "theta": 0.05, "sigma": 2.5, "rho": -0.999}
    table = read_quotes(pd.DataFrame({"option_type": "call", "strike": [4470.0],
                                      "maturity": 1 / 365, "spot": 4468.17, "rate": 0.0}))  # fmt: skip
    prices = {engine: price_table(table, model="heston", engine=engine, params=heston)["price"]
              for engine in ("analytic", "quantlib")}  # fmt: skip
    np.testing.assert_allclose(prices["quantlib"], prices["analytic"], rtol=1e-6, atol=0)


def test_an_empty_shift_prices_as_zero_as_read_quotes_reads_it():
    # read_quotes (and iv) take an empty shift cell as 0; price refused it as "missing or
    # non-numeric value"
    sabr = {"alpha": 0.05, "beta": 0.5, "rho": 0.0, "nu": 0.3}
    table = read_quotes(pd.DataFrame({"option_type": "call", "strike": [0.01, 0.02],
                                      "maturity": 1.0, "forward": 0.02, "shift": [0.01, None]}))  # fmt: skip
    priced = price_table(table, model="sabr", params=sabr)["price"].to_numpy()
    unshifted = price_table(table.drop(columns="shift"), model="sabr", params=sabr)
    np.testing.assert_allclose(priced[1], unshifted["price"].to_numpy()[1], rtol=1e-14, atol=0)


@pytest.mark.parametrize("model", ["bs", "heston"])
def test_a_text_shift_beside_an_unshifted_model_is_named_by_row_as_sabr_names_it(model):
    # the check of a shift beside bs or heston raised a bare "could not convert string to float:
    # 'abc'" (no row, no column) where it priced before; a gap is 0 (read_quotes' reading)
    params = {"volatility": 0.2} if model == "bs" else {
        "v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.3, "rho": -0.5}  # fmt: skip
    table = pd.DataFrame({"option_type": ["call", "put"], "strike": 100.0, "maturity": 1.0,
                          "forward": 100.0, "shift": pd.Series([None, "abc"], dtype=object)})  # fmt: skip
    with pytest.raises(QuoteError, match=r"row 2, column 'shift': not a number: 'abc'"):
        price_table(table, model=model, params=params)
    priced = price_table(table.assign(shift=[None, 0.0]), model=model, params=params)
    unshifted = price_table(table.drop(columns="shift"), model=model, params=params)
    np.testing.assert_allclose(priced["price"], unshifted["price"], rtol=1e-14, atol=0)


def test_float32_prices_deep_in_the_money_have_no_resolvable_vol():
    # a 4-day put struck at twice the forward: its float32 price is its intrinsic value to float32
    # rounding, which black_vols solved in float64 as an "ok" vol of 1.37 (the true one: 0.064)
    forward, strike, maturity, vol = 102.3065, 198.8281, 0.0102, 0.0637
    discount = np.exp(-0.03 * maturity)
    rows = {"forward": np.array([forward, forward]), "strike": np.array([strike, forward]),
            "discount": np.full(2, discount), "maturity": np.full(2, maturity)}  # fmt: skip
    prices = bs.black_price(
        volatility=vol, is_call=False, **{name: torch.tensor(value) for name, value in rows.items()}
    )
    rows32 = {name: value.astype(np.float32) for name, value in rows.items()}
    vols, status = black_vols(prices.to(torch.float32), is_call=np.array([False, False]), **rows32)
    assert status[0] == TIME_VALUE_LOST and np.isnan(vols[0])
    assert status[1] == "ok"
    np.testing.assert_allclose(vols[1], vol, rtol=1e-5, atol=0)


def test_a_price_tensor_that_requires_grad_gets_its_vol():
    price = torch.tensor([7.9655674554], dtype=torch.float64, requires_grad=True)
    vols, status = black_vols(price, forward=np.array([100.0]), discount=np.ones(1),
                              strike=np.array([100.0]), maturity=np.ones(1),
                              is_call=np.array([True]))  # fmt: skip
    assert status.tolist() == ["ok"]
    np.testing.assert_allclose(vols, [0.2], rtol=1e-9, atol=0)


def test_a_volatility_in_percent_in_params_is_refused_as_a_files_column_is():
    # a file's volatility of 20 was "looks like a percentage", --params' priced a 2000% vol
    table = read_quotes(pd.DataFrame({"option_type": ["call"], "strike": [100.0],
                                      "maturity": [0.5], "spot": [100.0]}))  # fmt: skip
    with pytest.raises(ValueError, match=r"--params: volatility 20 looks like a percentage"):
        price_table(table, model="bs", params={"volatility": 20.0})
    with pytest.raises(QuoteError, match="looks like a percentage"):
        read_quotes(table.assign(volatility=20.0))
    priced = price_table(table, model="bs", params={"volatility": 5.0})  # 500%: decimals still
    np.testing.assert_allclose(priced["implied_vol"], 5.0, rtol=1e-9, atol=0)
