"""Levy's arithmetic Asian approximation: Haug's published values, parity, seasoning, bad input."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
import pytest
import torch

from pricing.analytic_exotics import levy_asian_price


def test_every_published_case(reference_table: Callable[[str], pd.DataFrame]) -> None:
    table = reference_table("asian_prices.csv")
    table = table[table.average == "arithmetic"]
    assert len(table) == 20 and bool((table.elapsed_years > 0).any())  # seasoned cases included
    for row in table.itertuples():
        price = levy_asian_price(
            spot=row.spot, strike=row.strike, maturity=row.maturity_years,
            volatility=row.volatility, rate=row.rate, dividend=row.dividend_yield,
            is_call=row.option_type == "call", running_average=row.running_average,
            elapsed=row.elapsed_years,
        )  # fmt: skip
        assert abs(price.item() - row.expected_price) <= row.tolerance_abs, row.case_id


def test_call_minus_put_is_the_seasoned_forward() -> None:
    strike = torch.linspace(60.0, 140.0, 9, dtype=torch.float64)
    args = {"spot": 100.0, "strike": strike, "maturity": 0.5, "volatility": 0.3, "rate": 0.05,
            "dividend": 0.01, "running_average": 90.0, "elapsed": 0.25}  # fmt: skip
    call, put = levy_asian_price(**args), levy_asian_price(**args, is_call=False)
    # S_E = S e^{-rT2} (e^{bT2} - 1) / (b T): the discounted expected remaining average
    s_e = 100.0 * math.exp(-0.05 * 0.5) * math.expm1(0.04 * 0.5) / (0.04 * 0.75)
    forward = s_e - (strike - 90.0 * 0.25 / 0.75) * math.exp(-0.05 * 0.5)
    torch.testing.assert_close(call - put, forward, rtol=1e-12, atol=1e-12)
    assert bool((call.diff() < 0).all()) and bool((put.diff() > 0).all())


def test_a_strike_covered_by_the_past_average_makes_the_call_a_forward() -> None:
    # seasoned strike 100 - 160 * 0.5 / 0.75 < 0: the call pays the average minus the strike
    args = {"spot": 100.0, "strike": 100.0, "maturity": 0.25, "volatility": 0.3, "rate": 0.05,
            "running_average": 160.0, "elapsed": 0.5}  # fmt: skip
    call, put = levy_asian_price(**args), levy_asian_price(**args, is_call=False)
    assert put.item() == 0.0
    seasoned = 100.0 - 160.0 * 0.5 / 0.75
    s_e = 100.0 * math.expm1(0.05 * 0.25) / (0.05 * 0.75)
    expected = math.exp(-0.05 * 0.25) * (s_e - seasoned)
    assert call.item() == pytest.approx(expected, rel=1e-12)


def test_zero_carry_is_the_limit_of_small_carry() -> None:
    # (e^{bT} - 1) / b at b = 0 is T; a carry of 1e-9 either side must not move the price
    args = {"spot": 100.0, "strike": 100.0, "maturity": 0.5, "volatility": 0.2, "rate": 0.03}
    at_zero = levy_asian_price(**args, dividend=0.03).item()
    near = [levy_asian_price(**args, dividend=0.03 + e).item() for e in (1e-4, -1e-4)]
    assert at_zero == pytest.approx(0.5 * sum(near), rel=1e-6)
    tiny = [levy_asian_price(**args, dividend=0.03 + e).item() for e in (1e-9, -1e-9)]
    assert tiny == pytest.approx([at_zero, at_zero], rel=1e-8)


def test_float32_inputs_get_the_float64_price() -> None:
    spot = torch.tensor([0.9, 1.0, 1.1], dtype=torch.float32)
    args = {"strike": 1.0, "maturity": 0.5, "volatility": 0.2, "running_average": 1.02,
            "elapsed": 0.25}  # fmt: skip
    single = levy_asian_price(spot=spot, **args)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), levy_asian_price(spot=spot.double(), **args),
                               rtol=1e-6, atol=0.0)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"spot": -1.0}, "spot"), ({"volatility": 0.0}, "volatility"), ({"elapsed": -0.1}, "elapsed"),
     ({"running_average": float("nan")}, "running_average"), ({"maturity": 0.0}, "maturity")],
)  # fmt: skip
def test_bad_input_names_the_field(kwargs: dict, field: str) -> None:
    args = {"spot": 100.0, "strike": 100.0, "maturity": 0.5, "volatility": 0.2}
    with pytest.raises(ValueError, match=field):
        levy_asian_price(**{**args, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"volatility": -0.2}, "volatility"), ({"maturity": -1.0}, "maturity"),
     ({"spot": 0.0}, "spot"), ({"rate": float("nan")}, "rate")],
)  # fmt: skip
def test_geometric_asian_bad_input_names_the_field(kwargs: dict, field: str) -> None:
    from pricing.analytic_exotics import geometric_asian_price

    args = {"spot": 100.0, "strike": 100.0, "maturity": 1.0, "volatility": 0.2} | kwargs
    with pytest.raises(ValueError, match=rf"^{field} must be finite"):
        geometric_asian_price(**args)


@pytest.mark.parametrize("times", [[0.5, float("nan")], [0.5, 1.5], [-0.1, 0.5]])
def test_geometric_asian_fixing_times_outside_the_life_name_the_field(times: list) -> None:
    # a NaN fixing time passed the range test and came out as a NaN 'forward'
    from pricing.analytic_exotics import geometric_asian_price

    args = {"spot": 100.0, "strike": 100.0, "maturity": 1.0, "volatility": 0.2}
    with pytest.raises(ValueError, match=r"^fixing_times must be in \[0, maturity = 1.0\]"):
        geometric_asian_price(**args, fixing_times=times)


@pytest.mark.parametrize("fixing_times", [None, [0.0, 0.5, 1.0]], ids=["continuous", "fixings"])
def test_geometric_asian_of_float32_inputs_is_float32(fixing_times: list | None) -> None:
    # as the other pricers: evaluated in float64, the result in the inputs' dtype (was float64);
    # a fixing at 0 (today's spot) is accepted, as the docstring now says
    from pricing.analytic_exotics import geometric_asian_price

    spot = torch.tensor([90.0, 100.0, 110.0], dtype=torch.float32)
    args = {"strike": 100.0, "maturity": 1.0, "volatility": 0.2, "rate": 0.03,
            "fixing_times": fixing_times}  # fmt: skip
    single = geometric_asian_price(spot=spot, **args)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), geometric_asian_price(spot=spot.double(), **args),
                               rtol=1e-6, atol=0.0)  # fmt: skip


def test_geometric_asian_weights_without_fixing_times_are_refused() -> None:
    # they were ignored: weights [0.9, 0.1] priced the continuous average (4.4319 at spot and
    # strike 100, 20% vol, 1 year)
    from pricing.analytic_exotics import geometric_asian_price

    args = {"spot": 100.0, "strike": 100.0, "maturity": 1.0, "volatility": 0.2}
    with pytest.raises(ValueError, match=r"^weights are those of fixing_times"):
        geometric_asian_price(**args, weights=[0.9, 0.1])


def test_option_type_must_be_a_flag_and_rates_finite():
    # is_call="False" priced the call (5.1426 for a put of 3.7157); a NaN rate gave NaN
    args = dict(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2, rate=0.06, dividend=0.03)
    with pytest.raises(TypeError, match="is_call"):
        levy_asian_price(**args | {"is_call": "False"})
    assert float(levy_asian_price(**args, is_call=0)) == float(levy_asian_price(**args,
                                                                                is_call=False))  # fmt: skip
    with pytest.raises(ValueError, match="rate must be finite"):
        levy_asian_price(**args | {"rate": math.nan})


@pytest.mark.parametrize(
    ("rate", "dividend", "volatility", "gap"),
    [(0.01, 0.05, 0.2, 0.0), (0.02, 0.11, 0.3, 0.0), (0.02, 0.11, 0.3, 1e-12),
     (0.02, 0.11, 0.3, -1e-9), (0.02, 0.11, 0.3, 1e-7)],
)  # fmt: skip
def test_carry_equal_to_minus_the_variance_matches_the_formula_in_high_precision(
    rate: float, dividend: float, volatility: float, gap: float
) -> None:
    # r - q = -sigma^2 (r 1%, q 5%, sigma 20%): the second moment's 2 S^2 / (b + sigma^2) divided
    # by zero (NaN), and near it cancelled every digit (1e-12 away: 0.4% off at the money).
    import mpmath

    mpmath.mp.dps = 50
    rate = rate + gap
    for strike in (80.0, 100.0, 120.0):
        args = {"spot": 100.0, "strike": strike, "maturity": 1.0, "volatility": volatility,
                "rate": rate, "dividend": dividend}  # fmt: skip
        expected = _levy_call_mpmath(**args)
        assert levy_asian_price(**args).item() == pytest.approx(float(expected), rel=1e-8)


@pytest.mark.parametrize(
    ("maturity", "volatility"), [(1 / 252, 0.015), (1e-4, 0.1), (2.6e-4, 7.8e-4), (1e-8, 0.2)]
)
def test_small_total_volatility_matches_the_formula_in_high_precision(
    maturity: float, volatility: float
) -> None:
    # total vols 1e-3 to 2e-5: the variance ln M - 2 ln E[A], about sigma^2 T / 3, was a
    # difference of two logarithms of order ln S, which kept 3e-4 of the price at 1e-3, 5% at
    # 1e-4 and rounded to a negative variance below ~1e-5 (a NaN price)
    import mpmath

    mpmath.mp.dps = 50
    rtol = 1e-8
    spot = 1734.0
    width = volatility * math.sqrt(maturity)
    for z in (-1.0, 0.0, 1.0):
        strike = spot * math.exp(0.5 * 0.03 * maturity + z * width)
        args = {"spot": spot, "strike": strike, "maturity": maturity, "volatility": volatility,
                "rate": 0.05, "dividend": 0.02}  # fmt: skip
        expected = float(_levy_call_mpmath(**args))
        assert levy_asian_price(**args).item() == pytest.approx(expected, rel=rtol), z


@pytest.mark.parametrize(
    ("maturity", "volatility", "dividend"),
    [(50.0, 5.0, 0.02), (100.0, 3.0, 0.1), (40.0, 1.0, 0.0), (31.0, 1.0, -0.5)],
)
def test_huge_total_variance_matches_the_formula_in_high_precision(
    maturity: float, volatility: float, dividend: float
) -> None:
    # past (2 b + sigma^2) T of about 709 the second moment's exponential overflowed, inf - inf:
    # a silent NaN price (sigma 5 over 50 years)
    import mpmath

    mpmath.mp.dps = 50
    for strike in (50.0, 100.0, 200.0):
        args = {"spot": 100.0, "strike": strike, "maturity": maturity, "volatility": volatility,
                "rate": 0.05, "dividend": dividend}  # fmt: skip
        expected = float(_levy_call_mpmath(**args))
        spot, vol = (torch.tensor(v, dtype=torch.float64, requires_grad=True)
                     for v in (100.0, volatility))  # fmt: skip
        price = levy_asian_price(**{**args, "spot": spot, "volatility": vol})
        greeks = torch.autograd.grad(price, (spot, vol))  # an inf in the unused branch: NaN
        assert price.item() == pytest.approx(expected, rel=1e-8), strike
        assert all(math.isfinite(g.item()) for g in greeks)


def _levy_call_mpmath(*, spot, strike, maturity, volatility, rate, dividend):
    """Haug (2007), section 4.20.2, in mpmath; the second moment at b + sigma^2 = 0 is its limit
    ``2 S^2 dE/db`` with ``E(x) = (exp(x T) - 1) / x``."""
    import mpmath

    s, k, t, vol, r = (mpmath.mpf(v) for v in (spot, strike, maturity, volatility, rate))
    b = r - mpmath.mpf(dividend)

    def growth(x):
        return t if x == 0 else mpmath.expm1(x * t) / x

    s_e = s * mpmath.exp(-r * t) * growth(b) / t
    c = b + vol**2
    m = 2 * s**2 * (mpmath.diff(growth, b) if c == 0 else (growth(b + c) - growth(b)) / c)
    log_l = mpmath.log(m / t**2)
    sd = mpmath.sqrt(log_l - 2 * (r * t + mpmath.log(s_e)))
    d1 = (log_l / 2 - mpmath.log(k)) / sd
    return s_e * mpmath.ncdf(d1) - k * mpmath.exp(-r * t) * mpmath.ncdf(d1 - sd)


def test_geometric_asian_refuses_a_past_average_without_its_weight() -> None:
    # past_average=150 with past_weight 0 priced the unseasoned option, as the Monte Carlo
    # payoff did before it refused the same input
    from pricing.analytic_exotics import geometric_asian_price

    with pytest.raises(ValueError, match=r"past_average=150\.0 needs past_weight > 0"):
        geometric_asian_price(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2,
                              past_average=150.0)  # fmt: skip


@pytest.mark.parametrize("name", ["rate", "dividend"])
@pytest.mark.parametrize("average", ["levy", "geometric"])
def test_rate_and_dividend_given_as_tensors_that_require_grad_keep_their_graph(
    average, name, gradient_matches_central_difference
):
    # the scalar check turned them into floats: with the spot requiring grad too, rho came back
    # None without a word; before that, the geometric price's discount went through math.exp
    # and left its share of rho out (29.0 for 23.5)
    from pricing.analytic_exotics import geometric_asian_price

    pricer = levy_asian_price if average == "levy" else geometric_asian_price
    args = dict(strike=100.0, maturity=1.0, volatility=0.2, rate=0.05, dividend=0.02,
                is_call=True)  # fmt: skip
    gradient_matches_central_difference(pricer, args, name)


@pytest.mark.parametrize("name", ["maturity", "past_weight", "past_average"])
def test_geometric_asian_maturity_and_seasoning_that_require_grad_keep_their_graph(
    name, gradient_matches_central_difference
):
    # the scalar check turned them into floats: theta and the past weight's and past average's
    # sensitivities came back None (silently, beside a spot requiring grad; the past average
    # went through math.log); the discount's math.exp also left the maturity's share of theta
    # out (2.086 for 1.970)
    from pricing.analytic_exotics import geometric_asian_price

    args = dict(strike=100.0, maturity=1.0, volatility=0.2, rate=0.03, is_call=True,
                past_average=101.0, past_weight=0.25)  # fmt: skip
    gradient_matches_central_difference(geometric_asian_price, args, name)


@pytest.mark.parametrize("name", ["rate", "dividend"])
@pytest.mark.parametrize("strike", [80.0, 100.0])
def test_rate_and_dividend_sensitivities_at_zero_carry(
    strike, name, gradient_matches_central_difference
):
    # at r = q, (exp(b T) - 1) / b took its limit T through torch.where, without its derivative
    # in b: rho and the dividend's sensitivity lost the carry's share (-18.4 and -1.28 for 24.1
    # and -43.8 at the strike of 80)
    args = dict(strike=strike, maturity=1.0, volatility=0.3, rate=0.05, dividend=0.05,
                is_call=True)  # fmt: skip
    gradient_matches_central_difference(levy_asian_price, args, name)
