"""Closed-form lookback options: Haug's published values, limits, Monte Carlo, bad input."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from pricing import black_scholes
from pricing.analytic_lookback import discrete_lookback_price, lookback_price
from pricing.payoffs import lookback as lookback_payoff
from pricing.simulate import gbm, time_grid


def test_every_published_case(reference_table: Callable[[str], pd.DataFrame]) -> None:
    table = reference_table("lookback_prices.csv")
    for row in table.itertuples():
        price = lookback_price(
            spot=row.spot, running_extremum=row.running_extremum, maturity=row.maturity_years,
            volatility=row.volatility, rate=row.rate, dividend=row.dividend_yield,
            kind=row.lookback, is_call=row.option_type == "call",
            strike=None if row.lookback == "floating" else row.strike,
        )  # fmt: skip
        assert abs(price.item() - row.expected_price) <= row.tolerance_abs, row.case_id


@pytest.mark.parametrize("is_call", [True, False], ids=["call", "put"])
@pytest.mark.parametrize("kind", ["floating", "fixed"])
def test_zero_carry_is_the_limit_of_small_carry(kind: str, is_call: bool) -> None:
    # r = q: the sigma^2 / (2 b) terms are 0/0; the price is continuous in b
    args = {"spot": 100.0, "running_extremum": 100.0, "maturity": 0.5, "volatility": 0.3,
            "kind": kind, "is_call": is_call, "strike": None if kind == "floating" else 95.0}  # fmt: skip
    at_zero = lookback_price(**args, rate=0.04, dividend=0.04).item()
    near = [lookback_price(**args, rate=0.04, dividend=0.04 + e).item() for e in (1e-4, -1e-4)]
    assert at_zero == pytest.approx(0.5 * sum(near), rel=1e-6)


def test_float32_inputs_get_the_float64_price() -> None:
    # zero carry: the sigma^2 / (2 b) terms cancel every digit float32 has
    spot = torch.tensor([1.0, 1.1, 1.2], dtype=torch.float32)
    args = {"running_extremum": 1.0, "maturity": 0.5, "volatility": 0.2}
    single = lookback_price(spot=spot, **args)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), lookback_price(spot=spot.double(), **args),
                               rtol=1e-6, atol=0.0)  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "is_call", "strike"),
    [("floating", True, None), ("floating", False, None), ("fixed", True, 105.0),
     ("fixed", False, 95.0)],
)  # fmt: skip
def test_seasoned_prices_match_monte_carlo_with_continuous_monitoring(
    kind: str, is_call: bool, strike: float | None
) -> None:
    # the path extremum between grid dates is drawn from the Brownian bridge: continuous monitoring
    spot, t, vol, rate = 100.0, 0.25, 0.3, 0.05
    extremum = 92.0 if is_call == (kind == "floating") else 108.0
    paths = gbm(100_000, 8, spot=spot, maturity=t, volatility=vol, rate=rate,
                generator=torch.Generator().manual_seed(7))  # fmt: skip
    payoff = lookback_payoff(paths, kind=kind, is_call=is_call, strike=strike,
                             running_extremum=extremum, time_grid=time_grid(8, t), volatility=vol,
                             generator=torch.Generator().manual_seed(8))  # fmt: skip
    payoff = payoff * math.exp(-rate * t)
    mc, se = payoff.mean().item(), payoff.std().item() / len(payoff) ** 0.5
    price = lookback_price(spot=spot, running_extremum=extremum, maturity=t, volatility=vol,
                           rate=rate, kind=kind, is_call=is_call, strike=strike).item()  # fmt: skip
    assert abs(price - mc) <= 4 * se, (price, mc, se)


def test_fixed_call_is_at_least_the_european_call() -> None:
    strike = torch.linspace(80.0, 130.0, 11, dtype=torch.float64)
    fixed = lookback_price(spot=100.0, running_extremum=100.0, maturity=1.0, volatility=0.2,
                           rate=0.03, kind="fixed", strike=strike)  # fmt: skip
    european = black_scholes.price(spot=100.0, strike=strike, maturity=1.0, volatility=0.2,
                                   rate=0.03)  # fmt: skip
    assert bool((fixed >= european).all())
    assert bool((fixed.diff() < 0).all())  # decreasing in strike


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "partial"}, "kind"),
        ({"strike": 100.0}, "strike"),
        ({"running_extremum": 110.0}, "running_extremum must be the minimum"),
        ({"volatility": 0.0}, "volatility"),
        ({"spot": float("inf")}, "spot"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict, match: str) -> None:
    args = {"spot": 100.0, "running_extremum": 95.0, "maturity": 1.0, "volatility": 0.2}
    with pytest.raises(ValueError, match=match):
        lookback_price(**{**args, **kwargs})


# Broadie-Glasserman-Kou leaves an o(sqrt(dt)) error; measured against 400k antithetic paths
# (0.1% SE): at most 0.2% at 50 dates a year and 1.1% at 12, while the continuous price is 9-14%
# (50 dates) and 19-29% (12 dates) too high. The bounds add the SE allowance to those.
BGK_REL = {50: 0.004, 12: 0.015}


@pytest.mark.parametrize("dates", [50, 12])
@pytest.mark.parametrize(
    ("kind", "is_call", "strike", "extremum"),
    [("floating", True, None, 100.0), ("floating", False, None, 104.0),
     ("fixed", True, 100.0, 100.0), ("fixed", False, 100.0, 97.0)],
)  # fmt: skip
def test_discretely_monitored_prices_match_monte_carlo_on_the_monitoring_dates(
    dates: int, kind: str, is_call: bool, strike: float | None, extremum: float
) -> None:
    # the Monte Carlo payoff takes the extremum of the grid dates only (discrete monitoring), the
    # running extremum included; seasoned where the extremum is not the spot
    spot, t, vol, rate, dividend = 100.0, 1.0, 0.3, 0.05, 0.02
    paths = gbm(200_000, dates, spot=spot, maturity=t, volatility=vol, rate=rate,
                dividend=dividend, antithetic=True, generator=torch.Generator().manual_seed(9))  # fmt: skip
    payoff = lookback_payoff(paths, kind=kind, is_call=is_call, strike=strike,
                             running_extremum=extremum) * math.exp(-rate * t)  # fmt: skip
    pairs = payoff.view(-1, 2).mean(1)
    mc, se = pairs.mean().item(), pairs.std().item() / len(pairs) ** 0.5
    args = {"spot": spot, "running_extremum": extremum, "maturity": t, "volatility": vol,
            "rate": rate, "dividend": dividend, "kind": kind, "is_call": is_call,
            "strike": strike}  # fmt: skip
    discrete = discrete_lookback_price(**args, interval=t / dates).item()
    continuous = lookback_price(**args).item()
    assert abs(discrete - mc) <= 4 * se + BGK_REL[dates] * mc, (discrete, mc, se)
    assert continuous - mc > 0.05 * mc  # the correction is what gets there


@pytest.mark.parametrize(
    ("is_call", "case"),
    [(False, dict(spot=34.28, running_extremum=34.28, maturity=3.58, volatility=0.0033,
                  rate=0.0051, dividend=-0.035, interval=3.58 / 451)),
     (True, dict(spot=3.30, running_extremum=3.27, maturity=5.38, volatility=0.006,
                 rate=-0.0059, dividend=0.148, interval=5.38 / 45))],
)  # fmt: skip
def test_discrete_floating_lookback_is_at_least_the_european_at_its_extremum(is_call, case):
    # the Broadie-Glasserman-Kou correction went below 0 where the drift outweighs a tiny vol
    # (-0.0014 and -0.0016 here); the payoff is at least the European one struck at the running
    # extremum, path by path
    price = discrete_lookback_price(**case, is_call=is_call)
    european = black_scholes.price(
        spot=case["spot"], strike=case["running_extremum"], maturity=case["maturity"],
        volatility=case["volatility"], rate=case["rate"], dividend=case["dividend"],
        is_call=is_call,
    )  # fmt: skip
    assert price.item() >= european.item() >= 0.0


@pytest.mark.parametrize(
    ("is_call", "strike", "extremum", "interval"),
    [(True, 80.0, 100.0, 1 / 12), (True, 100.0, 100.0, 1 / 52), (False, 120.0, 100.0, 1 / 12),
     (True, 100.0, 105.0, 1.0)],
)  # fmt: skip
def test_discrete_fixed_lookback_is_at_least_its_value_with_the_expiry_alone(
    is_call: bool, strike: float, extremum: float, interval: float
) -> None:
    # BGK's correction undercut the European floor where the drift outweighs the volatility
    # (26.08 for 26.15 in the first case, 7.66 for 7.69 in the second); with the expiry the only
    # date left (interval = maturity) the floor is the price: (M - K)^+ discounted plus the
    # European struck at max(K, M) (calls)
    rate, dividend, vol, t = (0.08, 0.0, 0.005, 1.0) if is_call else (0.0, 0.08, 0.005, 1.0)
    price = discrete_lookback_price(spot=100.0, running_extremum=extremum, maturity=t,
                                    volatility=vol, interval=interval, rate=rate,
                                    dividend=dividend, kind="fixed", strike=strike,
                                    is_call=is_call)  # fmt: skip
    level = max(strike, extremum) if is_call else min(strike, extremum)
    sign = 1.0 if is_call else -1.0
    floor = math.exp(-rate * t) * max(sign * (extremum - strike), 0.0) + black_scholes.price(
        spot=100.0, strike=level, maturity=t, volatility=vol, rate=rate, dividend=dividend,
        is_call=is_call).item()  # fmt: skip
    assert price.item() >= floor - 1e-12
    if interval == t:
        assert price.item() == pytest.approx(floor, rel=1e-12)


@pytest.mark.parametrize("kind", ["floating", "fixed"])
def test_discrete_lookback_refuses_an_interval_past_the_expiry(kind: str) -> None:
    # a fixed strike call at the money was 6.6e-5 (its floor 3.78) at an interval of 5 years
    # for 0.1; a hedging grid's last time to expiry, an ulp off its step, is accepted
    args = {"spot": 100.0, "running_extremum": 100.0, "volatility": 0.3, "kind": kind,
            "strike": 100.0 if kind == "fixed" else None}  # fmt: skip
    with pytest.raises(ValueError, match=r"maturity must be >= interval = 5.0 .*; got 0.1 at "
                                         r"index 1"):  # fmt: skip
        discrete_lookback_price(**args, maturity=[6.0, 0.1], interval=5.0)
    price = discrete_lookback_price(**args, maturity=math.nextafter(0.1, 0.0), interval=0.1)
    assert bool(torch.isfinite(price))


@pytest.mark.parametrize(
    "maturity",
    [np.float32(0.7), np.array([0.7, 1.4], dtype=np.float32),
     torch.tensor([0.7, 1.4], dtype=torch.float32)],
    ids=["numpy-scalar", "numpy-array", "tensor"],
)  # fmt: skip
def test_discrete_lookback_accepts_a_float32_maturity_a_rounding_below_the_interval(
    maturity: object,
) -> None:
    # Regression: the tolerance was 1e-9 whatever the dtype: float32's 0.7 (0.69999999) was
    # refused as "maturity must be >= interval = 0.7"
    args = {"spot": 100.0, "running_extremum": 100.0, "volatility": 0.3, "interval": 0.7}
    price = discrete_lookback_price(**args, maturity=maturity)
    exact = discrete_lookback_price(**args, maturity=[0.7, 1.4])
    torch.testing.assert_close(price.double(), exact[: price.numel()].reshape(price.shape),
                               rtol=1e-5, atol=0.0)  # fmt: skip


@pytest.mark.parametrize("maturity", [0.0, -1.0, math.nan, math.inf])
def test_discrete_lookback_names_an_invalid_maturity_before_the_interval(maturity: float) -> None:
    # Regression: 0 and -1 were "must be >= interval" (the interval's check came first), and
    # NaN passed that check
    with pytest.raises(ValueError, match=r"maturity must be finite and > 0"):
        discrete_lookback_price(spot=100.0, running_extremum=100.0, volatility=0.3,
                                maturity=[1.0, maturity], interval=0.1)  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "strike", "extremum"), [("floating", None, 0.97), ("fixed", 105.0, 1.03)]
)
def test_discrete_lookback_of_float32_inputs_is_float32(
    kind: str, strike: float | None, extremum: float
) -> None:
    # as lookback_price: the moved extremum, float64, made the price float64
    spot = torch.tensor([100.0, 110.0], dtype=torch.float32)
    args = dict(running_extremum=spot * extremum, maturity=1.0, volatility=0.2, interval=1 / 52,
                rate=0.03, kind=kind, strike=strike)  # fmt: skip
    single = discrete_lookback_price(spot=spot, **args)
    assert single.dtype == torch.float32
    double = discrete_lookback_price(spot=spot.double(), **args)
    np.testing.assert_allclose(single.numpy(), double.numpy(), rtol=1e-6, atol=0)


def test_discrete_lookback_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError, match="interval must be positive"):
        discrete_lookback_price(spot=100.0, running_extremum=100.0, maturity=1.0,
                                volatility=0.2, interval=0.0)  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [dict(running_extremum=100.0, maturity=1.0, volatility=0.2),
     dict(running_extremum=100.0, maturity=10.0, volatility=0.05, rate=0.03, dividend=0.03,
          kind="fixed", strike=120.0)],
)  # fmt: skip
def test_zero_carry_is_the_limit_of_symmetric_carries(case: dict) -> None:
    # At r = q the sigma^2 / (2 b) terms are 0/0. The limit, by Richardson extrapolation of
    # carries +-d (where the formula is accurate): averages are L + c d^2 + O(d^4).
    base = {"spot": 100.0, "rate": 0.0, "dividend": 0.0} | case

    def average(d: float) -> float:
        up = lookback_price(
            **(base | {"rate": base["rate"] + d / 2, "dividend": base["dividend"] - d / 2})
        )
        down = lookback_price(
            **(base | {"rate": base["rate"] - d / 2, "dividend": base["dividend"] + d / 2})
        )
        return 0.5 * (float(up) + float(down))

    limit = (4.0 * average(5e-5) - average(1e-4)) / 3.0
    assert float(lookback_price(**base)) == pytest.approx(limit, rel=2e-8)


@pytest.mark.parametrize("bad", ["False", 0.5, 2])
def test_option_type_must_be_a_flag_not_a_truthy_value(bad):
    # "False" was truthy: the floating lookback priced a call (and skipped the extremum check)
    args = dict(spot=120.0, running_extremum=130.0, maturity=1.0, volatility=0.3)
    with pytest.raises((TypeError, ValueError), match="is_call"):
        lookback_price(**args, is_call=bad)
    with pytest.raises((TypeError, ValueError), match="is_call"):
        discrete_lookback_price(**args, is_call=bad, interval=1 / 12)
    paths = torch.full((2, 3), 120.0, dtype=torch.float64)
    with pytest.raises((TypeError, ValueError), match="is_call"):
        lookback_payoff(paths, kind="floating", is_call=bad)
    assert float(lookback_price(**args, is_call=0)) == float(lookback_price(**args, is_call=False))


@pytest.mark.parametrize(("field", "value"), [("rate", math.nan), ("dividend", math.inf)])
def test_non_finite_rate_or_dividend_is_refused(field, value):
    with pytest.raises(ValueError, match=f"{field} must be finite"):
        lookback_price(spot=100.0, running_extremum=100.0, maturity=1.0, volatility=0.3,
                       **{field: value})  # fmt: skip


@pytest.mark.parametrize(("rate", "dividend"), [(0.1, 0.0), (0.0, 0.1)])
@pytest.mark.parametrize(
    ("kind", "is_call", "strike"),
    [("floating", True, None), ("floating", False, None), ("fixed", True, 50.0),
     ("fixed", True, 200.0), ("fixed", False, 50.0), ("fixed", False, 200.0)],
)  # fmt: skip
def test_low_volatility_matches_the_formula_in_high_precision(
    kind: str, is_call: bool, strike: float | None, rate: float, dividend: float
) -> None:
    # sigma 1%, carry +-10%: (S/E)^(-2b/sigma^2) = (S/E)^(-+2000) overflowed while its normal CDF
    # underflowed, and the price was NaN (the fixed put struck at 50 even at inception).
    import mpmath

    mpmath.mp.dps = 50
    spot, t, vol = 100.0, 1.0, 0.01
    below = (kind == "floating") == is_call
    for ratio in (1.0, 1.5, 3.0):
        extremum = spot / ratio if below else spot * ratio
        ours = lookback_price(spot=spot, running_extremum=extremum, maturity=t, volatility=vol,
                              rate=rate, dividend=dividend, kind=kind, is_call=is_call,
                              strike=strike)  # fmt: skip
        expected = _lookback_mpmath(spot, extremum, t, vol, rate, dividend, kind, is_call, strike)
        assert ours.item() == pytest.approx(float(expected), rel=1e-9, abs=1e-12), ratio


@pytest.mark.parametrize(("maturity", "volatility"), [(10.0, 0.001), (100.0, 0.01), (1 / 365, 2.0)])
@pytest.mark.parametrize(
    ("kind", "is_call", "strike"),
    [("floating", True, None), ("floating", False, None), ("fixed", True, 100.0),
     ("fixed", False, 100.0)],
)  # fmt: skip
def test_zero_carry_matches_the_limit_in_high_precision(
    kind: str, is_call: bool, strike: float | None, maturity: float, volatility: float
) -> None:
    # r = q = 0, the defaults: interpolated across b = 0 between carries of -+1e-6, the price was
    # 1.7e-6 off at 10 years and 0.1% vol (the formulas vary in b sqrt(T) / sigma), 1e-8 at one
    # day and 200% vol (cancellation); the limit is the formula at b = -1e-30 in 80 digits
    import mpmath

    mpmath.mp.dps = 80
    spot = 100.0
    below = (kind == "floating") == is_call
    extremum = spot * (0.999 if below else 1.001)
    ours = lookback_price(spot=spot, running_extremum=extremum, maturity=maturity,
                          volatility=volatility, kind=kind, is_call=is_call,
                          strike=strike)  # fmt: skip
    expected = _lookback_mpmath(spot, extremum, maturity, volatility, 0.0, mpmath.mpf("1e-30"),
                                kind, is_call, strike)  # fmt: skip
    assert ours.item() == pytest.approx(float(expected), rel=1e-9)


def _lookback_mpmath(spot, extremum, t, vol, rate, dividend, kind, is_call, strike):
    """Haug (2007), sections 4.15.1-4.15.2, term by term in mpmath (no overflow at 50 digits)."""
    import mpmath

    s, e, t, vol, r = (mpmath.mpf(v) for v in (spot, extremum, t, vol, rate))
    b, phi, n = r - mpmath.mpf(dividend), 1 if is_call else -1, mpmath.ncdf
    level, intrinsic = e, 0
    if kind == "fixed":
        level = max(mpmath.mpf(strike), e) if is_call else min(mpmath.mpf(strike), e)
        intrinsic = mpmath.exp(-r * t) * max(phi * (e - strike), 0)
    sd = vol * mpmath.sqrt(t)
    d1 = (mpmath.log(s / level) + b * t) / sd + sd / 2
    reflection = (s / level) ** (-2 * b / vol**2)
    shifted = d1 - 2 * b * mpmath.sqrt(t) / vol
    scale = s * mpmath.exp(-r * t) * vol**2 / (2 * b)
    vanilla = phi * (s * mpmath.exp((b - r) * t) * n(phi * d1)
                     - level * mpmath.exp(-r * t) * n(phi * (d1 - sd)))  # fmt: skip
    if kind == "floating":
        return vanilla + phi * scale * (reflection * n(-phi * shifted)
                                        - mpmath.exp(b * t) * n(-phi * d1))  # fmt: skip
    return intrinsic + vanilla + phi * scale * (mpmath.exp(b * t) * n(phi * d1)
                                                - reflection * n(phi * shifted))  # fmt: skip


@pytest.mark.parametrize("kind", ["floating", "fixed"])
def test_a_rate_given_as_a_tensor_that_requires_grad_keeps_its_graph(
    kind, gradient_matches_central_difference
):
    # the scalar check turned it into a float: with the spot requiring grad too, rho came back
    # None without a word
    args = dict(running_extremum=100.0, maturity=1.0, volatility=0.2, rate=0.05, dividend=0.02,
                is_call=True, kind=kind, strike=None if kind == "floating" else 95.0)  # fmt: skip
    gradient_matches_central_difference(lookback_price, args, "rate")


@pytest.mark.parametrize(
    "dividend", [[0.01], np.array([0.01]), torch.tensor([0.01], dtype=torch.float64)]
)
def test_discrete_floating_lookback_takes_a_one_element_dividend(dividend):
    # the forward's correction used the dividend as given: a list or array of one value failed
    # with "bad operand type for unary -: 'list'" or numpy's '*' on a tensor
    args = dict(spot=100.0, running_extremum=100.0, maturity=1.0, volatility=0.2, rate=0.03,
                interval=1 / 52)  # fmt: skip
    expected = discrete_lookback_price(**args, dividend=0.01)
    torch.testing.assert_close(discrete_lookback_price(**args, dividend=dividend), expected,
                               rtol=1e-12, atol=0.0)  # fmt: skip


@pytest.mark.parametrize("is_call", [True, False], ids=["call", "put"])
def test_fixed_strike_greeks_at_inception_at_the_money(is_call: bool) -> None:
    # spot = running extremum = strike: the price is smooth in the strike (dV/dK = -+discount:
    # the extremum passes the strike at once) and flat in the extremum; maximum(K, M) split the
    # tie's gradient while the intrinsic value took all of it (-1.5 and 0.5 discounts for a call)
    strike = torch.tensor(100.0, dtype=torch.float64, requires_grad=True)
    extremum = torch.tensor(100.0, dtype=torch.float64, requires_grad=True)
    args = {"spot": 100.0, "maturity": 0.5, "volatility": 0.25, "rate": 0.05, "dividend": 0.02,
            "kind": "fixed", "is_call": is_call}  # fmt: skip
    price = lookback_price(strike=strike, running_extremum=extremum, **args)
    d_strike, d_extremum = torch.autograd.grad(price, (strike, extremum))
    assert d_strike.item() == pytest.approx(
        -math.exp(-0.05 * 0.5) if is_call else math.exp(-0.05 * 0.5), rel=1e-12
    )
    assert d_extremum.item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"running_extremum": -5.0}, r"running_extremum must be finite and > 0; got -5\.0$"),
     ({"kind": "fixed", "strike": -2.0}, r"strike must be finite and > 0; got -2\.0$")],
)  # fmt: skip
def test_discrete_lookback_reports_the_extremum_and_strike_as_given(kwargs, match):
    # checked after the BGK shift, a strike of -2 was reported as the moved -2.068 and a running
    # extremum of -5 as -4.835
    args = {"spot": 100.0, "running_extremum": 100.0, "maturity": 1.0, "volatility": 0.2,
            "rate": 0.05, "interval": 1 / 12}  # fmt: skip
    with pytest.raises(ValueError, match=match):
        discrete_lookback_price(**{**args, **kwargs})


def test_discrete_lookback_floating_given_a_strike_names_the_kind() -> None:
    # checked for its sign first, a floating lookback's strike of -1 was "strike must be finite
    # and > 0", not the strike not taken by a floating lookback
    args = {"spot": 100.0, "running_extremum": 100.0, "maturity": 1.0, "volatility": 0.2,
            "interval": 1 / 12}  # fmt: skip
    with pytest.raises(ValueError, match="not taken for kind='floating'"):
        discrete_lookback_price(**args, strike=-1.0)
