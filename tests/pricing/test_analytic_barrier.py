"""Closed-form barrier options: Haug's published Reiner-Rubinstein values, parity, QuantLib."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from pricing import black_scholes
from pricing.analytic_barrier import BARRIER_TYPES, barrier_price, discrete_barrier_shift
from pricing.payoffs import barrier as barrier_payoff
from pricing.simulate import gbm, time_grid


def _row_price(row: pd.Series) -> float:
    return barrier_price(
        spot=row.spot, strike=row.strike, barrier=row.barrier, barrier_type=row.barrier_type,
        maturity=row.maturity_years, volatility=row.volatility, rate=row.rate,
        dividend=row.dividend_yield, is_call=row.option_type == "call", rebate=row.rebate,
    ).item()  # fmt: skip


def test_every_published_case(reference_table: Callable[[str], pd.DataFrame]) -> None:
    table = reference_table("barrier_prices.csv")
    assert set(table.barrier_type) == set(BARRIER_TYPES) and len(table) == 72
    for row in table.itertuples():
        assert abs(_row_price(row) - row.expected_price) <= row.tolerance_abs, row.case_id


@pytest.mark.parametrize("is_call", [True, False], ids=["call", "put"])
@pytest.mark.parametrize("direction", ["down", "up"])
def test_in_plus_out_is_the_vanilla_option(direction: str, is_call: bool) -> None:
    # without rebates, knock-in + knock-out = vanilla, for strikes on both sides of the barrier
    strike = torch.linspace(70.0, 130.0, 13, dtype=torch.float64)
    barrier, spot = (90.0, 100.0) if direction == "down" else (115.0, 100.0)
    args = {"spot": spot, "strike": strike, "barrier": barrier, "maturity": 0.75,
            "volatility": 0.3, "rate": 0.05, "dividend": 0.02, "is_call": is_call}  # fmt: skip
    knock_in = barrier_price(**args, barrier_type=f"{direction}_in")
    knock_out = barrier_price(**args, barrier_type=f"{direction}_out")
    vanilla = black_scholes.price(spot=spot, strike=strike, maturity=0.75, volatility=0.3,
                                  rate=0.05, dividend=0.02, is_call=is_call)  # fmt: skip
    torch.testing.assert_close(knock_in + knock_out, vanilla, rtol=1e-12, atol=1e-12)
    assert bool((knock_in >= -1e-14).all()) and bool((knock_out >= -1e-14).all())


def test_a_spot_beyond_the_barrier_has_been_hit() -> None:
    args = {"strike": 100.0, "barrier": 95.0, "maturity": 0.5, "volatility": 0.2, "rate": 0.03}
    out = barrier_price(spot=94.0, barrier_type="down_out", rebate=2.5, **args)
    knock_in = barrier_price(spot=94.0, barrier_type="down_in", **args)
    vanilla = black_scholes.price(spot=94.0, strike=100.0, maturity=0.5, volatility=0.2, rate=0.03)
    assert out.item() == 2.5
    torch.testing.assert_close(knock_in, vanilla, rtol=1e-15, atol=0.0)


def test_the_call_flag_may_be_a_one_element_tensor() -> None:
    args = {"spot": 100.0, "strike": 100.0, "barrier": 90.0, "barrier_type": "down_in",
            "maturity": 1.0, "volatility": 0.2}  # fmt: skip
    for flag in (True, False):
        expected = barrier_price(**args, is_call=flag)
        assert torch.equal(barrier_price(**args, is_call=torch.tensor(flag)), expected)


def test_autograd_delta_matches_central_differences() -> None:
    spot = torch.tensor([96.0, 100.0, 110.0], dtype=torch.float64, requires_grad=True)
    args = {"strike": 100.0, "barrier": 95.0, "barrier_type": "down_out", "maturity": 0.5,
            "volatility": 0.25, "rate": 0.08, "dividend": 0.04, "rebate": 3.0}  # fmt: skip
    (delta,) = torch.autograd.grad(barrier_price(spot=spot, **args).sum(), spot)
    h = 1e-5
    with torch.no_grad():
        central = barrier_price(spot=spot + h, **args) - barrier_price(spot=spot - h, **args)
    torch.testing.assert_close(delta, central / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("is_call", [True, False], ids=["call", "put"])
@pytest.mark.parametrize("barrier_type", BARRIER_TYPES)
def test_strike_and_barrier_greeks_at_a_strike_on_the_barrier_among_strikes_on_both_sides(
    barrier_type: str, is_call: bool
) -> None:
    # the price is smooth in the strike and the barrier where they meet; torch.maximum(K, H)
    # split the tie's gradient between them (a down-and-in call's dV/dK: -0.188 for -0.376)
    level = 95.0 if barrier_type.startswith("down") else 105.0
    strike = torch.tensor([80.0, level, 120.0], dtype=torch.float64, requires_grad=True)
    barrier = torch.tensor(level, dtype=torch.float64, requires_grad=True)
    args = {"spot": 100.0, "barrier_type": barrier_type, "maturity": 0.5, "volatility": 0.25,
            "rate": 0.05, "dividend": 0.02, "is_call": is_call}  # fmt: skip
    price = barrier_price(strike=strike, barrier=barrier, **args)[1]
    d_strike, d_barrier = torch.autograd.grad(price, (strike, barrier))
    h = 1e-4
    with torch.no_grad():

        def at(k: float, b: float) -> float:
            return barrier_price(strike=k, barrier=b, **args).item()

        central_k = (at(level + h, level) - at(level - h, level)) / (2 * h)
        central_b = (at(level, level + h) - at(level, level - h)) / (2 * h)
    assert d_strike[1].item() == pytest.approx(central_k, rel=1e-6, abs=1e-8)
    assert d_barrier.item() == pytest.approx(central_b, rel=1e-6, abs=1e-8)


def test_shifted_barrier_prices_a_daily_monitored_barrier_within_monte_carlo_error() -> None:
    # up-and-out call monitored at 50 dates: the shifted continuous formula against Monte Carlo of
    # exactly that discrete monitoring. On 2M paths the discrete price is 1.7865 +- 0.0028: the
    # shift gives 1.8092 (its own error, 1.3%), the unshifted formula 1.4572.
    args = {"strike": 100.0, "maturity": 0.5, "volatility": 0.25, "rate": 0.03}
    n_paths, n_steps, barrier = 200_000, 50, 120.0
    paths = gbm(n_paths, n_steps, spot=100.0, generator=torch.Generator().manual_seed(3), **{
        k: v for k, v in args.items() if k != "strike"})  # fmt: skip
    grid = time_grid(n_steps, 0.5)
    payoff = barrier_payoff(paths, strike=100.0, barrier=barrier, barrier_type="up_out",
                            time_grid=grid) * np.exp(-0.03 * 0.5)  # fmt: skip
    mc, se = payoff.mean().item(), payoff.std().item() / n_paths**0.5
    shifted = discrete_barrier_shift(barrier, 0.25, 0.5 / n_steps, down=False)
    price = barrier_price(spot=100.0, barrier=shifted, barrier_type="up_out", **args).item()
    continuous = barrier_price(spot=100.0, barrier=barrier, barrier_type="up_out", **args).item()
    assert abs(price - mc) <= 4 * se + 0.04  # 0.04: the correction's own error, 0.023 here
    assert abs(continuous - mc) > 10 * se  # the shift matters


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"barrier_type": "double_out"}, "barrier_type"),
        ({"spot": 0.0}, "spot"),
        ({"volatility": float("nan")}, "volatility"),
        ({"rebate": -1.0}, "rebate"),
        ({"rebate": float("nan")}, "rebate"),
        ({"rate": float("nan")}, "rate"),
        ({"dividend": float("inf")}, "dividend"),
        ({"maturity": -0.5}, "maturity"),
        ({"is_call": "False"}, "is_call"),
        ({"is_call": [True, False]}, "is_call must be one flag"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict, field: str) -> None:
    args = {"spot": 100.0, "strike": 100.0, "barrier": 90.0, "barrier_type": "down_out",
            "maturity": 1.0, "volatility": 0.2}  # fmt: skip
    with pytest.raises((ValueError, TypeError), match=field):
        barrier_price(**{**args, **kwargs})


@pytest.mark.parametrize("barrier_type", BARRIER_TYPES)
def test_negative_rates_price_within_monte_carlo_error(barrier_type: str) -> None:
    # r = q = -2%, vol 30%: mu^2 + 2 r / sigma^2 < 0, where the rebate-at-hit term's lambda is
    # imaginary; without a rebate that term must not turn the price into NaN.
    from pricing.mc_exotics import bs_barrier

    level = 120.0 if barrier_type.startswith("up") else 80.0
    market = {"spot": 100.0, "barrier": level, "barrier_type": barrier_type, "maturity": 1.0,
              "volatility": 0.3, "rate": -0.02, "dividend": -0.02}  # fmt: skip
    exact = float(barrier_price(strike=100.0, **market))
    mc = bs_barrier(strike=100.0, n_paths=2**17, n_steps=64, antithetic=True,
                    generator=torch.Generator().manual_seed(11), **market)  # fmt: skip
    assert np.isfinite(exact)
    assert abs(float(mc.price) - exact) <= 4 * float(mc.std_error) + 1e-12


def test_a_rebate_at_the_hit_without_a_closed_form_is_refused() -> None:
    with pytest.raises(ValueError, match=r"rebate paid at the hit has no closed form.*rate -0.02"):
        barrier_price(spot=100.0, strike=100.0, barrier=120.0, barrier_type="up_out", maturity=1.0,
                      volatility=0.3, rate=-0.02, dividend=-0.02, rebate=1.0)  # fmt: skip


@pytest.mark.parametrize("barrier_type", ["down_in", "up_in"])
def test_a_knock_in_rebate_is_priced_where_the_rebate_at_the_hit_has_no_closed_form(
    barrier_type: str,
) -> None:
    # a knock-in's rebate is paid at expiry (Haug's E): the knock-out's F, computed for every
    # type, refused these ("a knock-out rebate paid at the hit has no closed form here")
    from pricing.quantlib import bs_barrier_price

    level = 120.0 if barrier_type.startswith("up") else 80.0
    for is_call in (True, False):
        args = {"spot": 100.0, "strike": 100.0, "barrier": level, "barrier_type": barrier_type,
                "maturity": 1.0, "volatility": 0.3, "rate": -0.02, "dividend": -0.02,
                "is_call": is_call, "rebate": 2.0}  # fmt: skip
        ours = float(barrier_price(**args))
        assert ours == pytest.approx(bs_barrier_price(**args), rel=1e-10, abs=0.0)


@pytest.mark.parametrize("barrier_type", BARRIER_TYPES)
@pytest.mark.parametrize(
    ("maturity", "volatility", "rate", "dividend", "rebate"),
    [(1.0, 0.005, 0.05, 0.0, 0.0), (10.0, 0.02, 0.05, 0.0, 0.0), (10.0, 0.02, 0.0, 0.05, 2.0)],
)
def test_low_volatility_matches_quantlib_where_the_reflection_factors_are_huge(
    barrier_type: str,
    maturity: float,
    volatility: float,
    rate: float,
    dividend: float,
    rebate: float,
) -> None:
    # (H/S)^(2 mu) reaches e^1000 here while its normal CDF underflows: formed separately, the
    # product was NaN (sigma 0.5%) or 100% off (torch's ndtr loses the tail below -6).
    from pricing.quantlib import bs_barrier_price

    level = 120.0 if barrier_type.startswith("up") else 80.0
    for is_call in (True, False):
        args = {"spot": 100.0, "strike": 100.0, "barrier": level, "barrier_type": barrier_type,
                "maturity": maturity, "volatility": volatility, "rate": rate,
                "dividend": dividend, "is_call": is_call, "rebate": rebate}  # fmt: skip
        ours = float(barrier_price(**args))
        reference = bs_barrier_price(**args)
        assert ours == pytest.approx(reference, rel=1e-7, abs=1e-12), (is_call, ours, reference)


@pytest.mark.parametrize(("kwargs", "message"), [({"interval": -1 / 252}, "interval"),
                                                 ({"volatility": float("nan")}, "volatility"),
                                                 ({"barrier": -110.0}, "barrier")])  # fmt: skip
def test_discrete_barrier_shift_refuses_bad_inputs(kwargs, message):
    # a negative interval was a math domain error, a NaN vol a NaN barrier
    from pricing.analytic_barrier import discrete_barrier_shift

    args = {"barrier": 110.0, "volatility": 0.2, "interval": 1 / 252, "down": False} | kwargs
    with pytest.raises(ValueError, match=message):
        discrete_barrier_shift(**args)


@pytest.mark.parametrize("barrier_type", BARRIER_TYPES)
@pytest.mark.parametrize(("rate", "dividend"), [(0.1, 0.0), (0.0, 0.1)])
def test_autograd_delta_is_finite_at_low_volatility_on_both_sides_of_barrier_and_strike(
    barrier_type: str, rate: float, dividend: float
) -> None:
    # sigma 1%, carry +-10%: the reflection factors (H/S)^(2 mu) reach e^1000 for spots beyond
    # the barrier and, in the case for strikes on the other side of it, form inf - inf. The
    # price hid that NaN behind torch.where; its gradient did not (delta was NaN).
    level = 110.0 if barrier_type.startswith("up") else 90.0
    spot = torch.tensor([50.0, 95.0, 100.0, 100.0, 125.0, 200.0], dtype=torch.float64,
                        requires_grad=True)  # fmt: skip
    args = {"strike": torch.tensor([80.0, 100.0, 85.0, 120.0, 95.0, 80.0], dtype=torch.float64),
            "barrier": level, "barrier_type": barrier_type, "maturity": 1.0, "volatility": 0.01,
            "rate": rate, "dividend": dividend}  # fmt: skip
    for is_call in (True, False):
        price = barrier_price(spot=spot, **args, is_call=is_call)
        (delta,) = torch.autograd.grad(price.sum(), spot)
        h = 1e-5
        with torch.no_grad():
            up = barrier_price(spot=spot + h, **args, is_call=is_call)
            central = (up - barrier_price(spot=spot - h, **args, is_call=is_call)) / (2 * h)
        assert bool(torch.isfinite(delta).all()), (is_call, delta)
        torch.testing.assert_close(delta, central, rtol=1e-6, atol=1e-7)


def test_a_price_that_is_the_rebate_term_alone_still_has_a_gradient() -> None:
    # down-and-out put struck below the barrier: worth F (the rebate term), 0 without a rebate
    spot = torch.tensor(100.0, dtype=torch.float64, requires_grad=True)
    price = barrier_price(spot=spot, strike=80.0, barrier=90.0, barrier_type="down_out",
                          maturity=1.0, volatility=0.2, is_call=False)  # fmt: skip
    (delta,) = torch.autograd.grad(price, spot)
    assert price.item() == 0.0 and delta.item() == 0.0


@pytest.mark.parametrize("name", ["rate", "dividend"])
def test_rate_and_dividend_given_as_tensors_that_require_grad_keep_their_graph(
    name, gradient_matches_central_difference
):
    # the scalar check turned them into floats: with the spot requiring grad too, rho came back
    # None without a word (alone, backward refused the graph-less price)
    args = dict(strike=100.0, barrier=90.0, barrier_type="down_out", maturity=1.0,
                volatility=0.2, rate=0.05, dividend=0.02, is_call=True, rebate=2.0)  # fmt: skip
    gradient_matches_central_difference(barrier_price, args, name)


def test_a_rebate_given_as_a_tensor_that_requires_grad_keeps_its_graph() -> None:
    # the price is linear in the rebate: its sensitivity by autograd was lost when the rebate was
    # checked into a float
    kw = dict(spot=100.0, strike=90.0, barrier=95.0, barrier_type="down_out", maturity=0.5,
              volatility=0.25, rate=0.08, dividend=0.04)  # fmt: skip
    rebate = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(barrier_price(**kw, rebate=rebate), rebate)
    expected = barrier_price(**kw, rebate=1.0) - barrier_price(**kw, rebate=0.0)
    torch.testing.assert_close(slope, expected, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("barrier_type", BARRIER_TYPES)
def test_a_zero_rebate_that_requires_grad_has_its_sensitivity(barrier_type: str) -> None:
    # at 0 the rebate terms were skipped: autograd gave 0 (down-and-out: 0.54) for the
    # probability-weighted discount that a unit of rebate is worth
    level = 90.0 if barrier_type.startswith("down") else 110.0
    kw = dict(spot=100.0, strike=100.0, barrier=level, barrier_type=barrier_type, maturity=1.0,
              volatility=0.2, rate=0.05, dividend=0.01)  # fmt: skip
    rebate = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(barrier_price(**kw, rebate=rebate), rebate)
    expected = barrier_price(**kw, rebate=1.0) - barrier_price(**kw, rebate=0.0)
    assert float(expected) > 0.1
    torch.testing.assert_close(slope, expected, rtol=1e-12, atol=0.0)


@pytest.mark.usefixtures("torch_warns_always")
def test_a_rebate_that_requires_grad_is_checked_without_a_scalar_conversion_warning() -> None:
    # math.isfinite of the rebate converted it to a float: torch's "Converting a tensor with
    # requires_grad=True to a scalar" UserWarning
    rebate = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        barrier_price(spot=100.0, strike=90.0, barrier=95.0, barrier_type="down_out",
                      maturity=0.5, volatility=0.25, rate=0.08, rebate=rebate)  # fmt: skip


def test_a_discrete_shift_barrier_that_requires_grad_keeps_its_graph() -> None:
    # the scalar check turned the barrier into a float: d(shifted)/d(barrier) came back None
    barrier = torch.tensor(110.0, dtype=torch.float64, requires_grad=True)
    vol = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    shifted = discrete_barrier_shift(barrier, vol, 1 / 252, down=False)
    slope, _ = torch.autograd.grad(shifted, (barrier, vol))
    expected = float(discrete_barrier_shift(110.0, 0.2, 1 / 252, down=False)) / 110.0
    torch.testing.assert_close(slope.item(), expected, rtol=1e-12, atol=0.0)


def _price_and_greeks(dtype: torch.dtype, spot, volatility, **kwargs) -> tuple[torch.Tensor, ...]:
    """Price, delta, vega and gamma by autograd, each as float64."""
    spot = torch.as_tensor(spot, dtype=dtype).clone().requires_grad_(True)
    vol = torch.full_like(spot, volatility).requires_grad_(True)
    price = barrier_price(spot=spot, volatility=vol, **kwargs)
    delta, vega = torch.autograd.grad(price.sum(), (spot, vol), create_graph=True)
    (gamma,) = torch.autograd.grad(delta.sum(), spot)
    return tuple(v.detach().double() for v in (price, delta, vega, gamma))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("barrier_type", BARRIER_TYPES)
def test_greeks_are_finite_at_tiny_volatility_and_short_maturity(
    barrier_type: str, dtype: torch.dtype
) -> None:
    # Regression: float32 knock-ins far from the barrier (S = 50, K = H = 100 at 0.1% for a day)
    # priced 0 with NaN greeks: the vanilla price they fall back to once hit, computed on every
    # path and not selected, had NaN gradients where its normalised price underflowed, and
    # torch.where passed them on. At 1e-6 vol, torch.special.log_ndtr's gradient in the
    # reflection terms also went inf, so knock-outs too.
    up = barrier_type.startswith("up")
    spot = [30.0, 50.0, 90.0, 99.0] if up else [101.0, 110.0, 200.0, 300.0]
    for volatility, maturity, strike, is_call in itertools.product(
        [1e-6, 1e-3], [1 / (365 * 24), 1 / 365], [50.0, 100.0, 200.0], [True, False]
    ):
        values = _price_and_greeks(dtype, spot, volatility, strike=strike, barrier=100.0,
                                   barrier_type=barrier_type, maturity=maturity,
                                   is_call=is_call)  # fmt: skip
        for value in values:
            assert bool(torch.isfinite(value).all()), (volatility, maturity, strike, is_call)


def test_float32_greeks_agree_with_float64_where_reflection_terms_lie_far_in_the_tail() -> None:
    # At 0.2% vol and 5% carry, float32 vega was -945.7 against -1067.06: the gradient of
    # torch.special.log_ndtr differences exp(-x^2/2) and Phi(x) (4.5% off at x = -1000).
    kw = dict(strike=90.0, barrier=100.0, barrier_type="up_out", maturity=1.0, rate=0.05)
    single = _price_and_greeks(torch.float32, [95.0], 0.002, **kw)
    double = _price_and_greeks(torch.float64, [95.0], 0.002, **kw)
    for ours, reference in zip(single, double, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    h = 1e-7  # float64 vega against central differences
    with torch.no_grad():
        bumped = [barrier_price(spot=95.0, volatility=0.002 + d, **kw) for d in (h, -h)]
    torch.testing.assert_close(double[2], ((bumped[0] - bumped[1]) / (2 * h)).reshape(1),
                               rtol=1e-7, atol=0.0)  # fmt: skip
