"""Turnbull-Wakeman's discrete arithmetic Asian: QuantLib's engine, seasoned or not; Monte Carlo
within its standard error; the exact European with one fixing left; bad schedules named."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pricing import black_scholes
from pricing.analytic_exotics import discrete_asian_price
from pricing.quantlib import bs_asian_tw_price

MONTHLY = [30 * i for i in range(1, 13)]  # fixing days
MARKET = {"spot": 100.0, "volatility": 0.3, "rate": 0.05, "dividend": 0.02}


@pytest.mark.parametrize(
    ("day", "running_sum", "strike", "is_call"),
    [(0, 0.0, 100.0, True), (0, 0.0, 110.0, False), (95, 330.0, 100.0, True),
     (95, 330.0, 95.0, False), (200, 600.0, 100.0, True), (330, 1100.0, 150.0, False),
     (330, 1300.0, 90.0, True), (330, 1300.0, 90.0, False)],
)  # fmt: skip
def test_matches_quantlibs_turnbull_wakeman_engine(
    day: int, running_sum: float, strike: float, is_call: bool
) -> None:
    # QuantLib values on its evaluation date the fixings to come, with the count and sum of the
    # known ones; the last two cases have K' = 12 * 90 - 1300 < 0 (a forward; the put worthless)
    future = [(d - day) / 365 for d in MONTHLY if d > day]
    expected = bs_asian_tw_price(**MARKET, strike=strike, fixing_times=future, is_call=is_call,
                                 running_sum=running_sum, past_fixings=12 - len(future))  # fmt: skip
    price = discrete_asian_price(**MARKET, strike=strike, fixing_times=[d / 365 for d in MONTHLY],
                                 time=day / 365, is_call=is_call, running_sum=running_sum)  # fmt: skip
    assert float(price) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    ("time", "running_sum", "strike", "is_call"),
    [(0.0, 0.0, 1.0, True), (0.0, 0.0, 1.05, False), (0.25, 2.1, 1.0, True),
     (0.25, 1.9, 1.0, False)],
)  # fmt: skip
def test_monte_carlo_of_the_discrete_average_agrees_within_four_standard_errors(
    time: float, running_sum: float, strike: float, is_call: bool
) -> None:
    # the lognormal fit is an approximation: on 2M paths it sat 1-2 errors (about 5e-5) off here,
    # well inside 4 errors of the 200k paths below
    fixings = torch.tensor([0.125, 0.25, 0.375, 0.5], dtype=torch.float64)
    rate, dividend, vol, n_paths = 0.03, 0.01, 0.25, 200_000
    steps = torch.diff(fixings[fixings > time], prepend=torch.tensor([time], dtype=torch.float64))
    z = torch.randn(n_paths, steps.numel(), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))  # fmt: skip
    log_spot = torch.cumsum((rate - dividend - 0.5 * vol**2) * steps + vol * steps.sqrt() * z, 1)
    average = (running_sum + log_spot.exp().sum(1)) / fixings.numel()
    payoff = (average - strike if is_call else strike - average).clamp(min=0.0)
    payoff = payoff * math.exp(-rate * (0.5 - time))
    price = discrete_asian_price(spot=1.0, strike=strike, volatility=vol, fixing_times=fixings,
                                 time=time, rate=rate, dividend=dividend, is_call=is_call,
                                 running_sum=running_sum)  # fmt: skip
    error = float(payoff.std()) / math.sqrt(n_paths)
    assert abs(float(payoff.mean()) - float(price)) < 4.0 * error


@pytest.mark.parametrize("is_call", [True, False], ids=["call", "put"])
def test_one_fixing_left_is_the_european_struck_at_the_rest_of_the_sum(is_call: bool) -> None:
    # (past + S_T) / n - K = (S_T - K') / n with K' = n K - past; greeks by autograd included
    spot = torch.tensor([80.0, 95.0, 100.0, 105.0, 120.0], dtype=torch.float64,
                        requires_grad=True)  # fmt: skip
    args = {"volatility": 0.25, "rate": 0.04, "dividend": 0.01, "is_call": is_call}
    price = discrete_asian_price(spot=spot, strike=100.0, fixing_times=[0.25, 0.5, 0.75, 1.0],
                                 time=0.75, running_sum=290.0, **args)  # fmt: skip
    european = black_scholes.price(spot=spot, strike=4 * 100.0 - 290.0, maturity=0.25, **args) / 4
    torch.testing.assert_close(price, european, rtol=1e-13, atol=1e-13)
    (delta,) = torch.autograd.grad(price.sum(), spot)
    (expected,) = torch.autograd.grad(european.sum(), spot)
    torch.testing.assert_close(delta, expected, rtol=1e-12, atol=1e-13)


def test_broadcasts_valuation_times_against_paths() -> None:
    # a hedging grid: times (T,), spots and sums (N, T); each entry as if priced alone
    fixings = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    times = torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=torch.float64)
    spot = torch.tensor([[1.0, 1.1, 0.9, 1.2], [1.0, 0.8, 0.85, 0.9]], dtype=torch.float64)
    sums = torch.tensor([[0.0, 1.1, 2.0, 3.2], [0.0, 0.8, 1.65, 2.55]], dtype=torch.float64)
    args = {"strike": 1.0, "volatility": 0.2, "fixing_times": fixings, "rate": 0.02}
    grid = discrete_asian_price(spot=spot, time=times, running_sum=sums, **args)
    alone = [[float(discrete_asian_price(spot=float(spot[i, j]), time=float(times[j]),
                                         running_sum=float(sums[i, j]), **args))
              for j in range(4)] for i in range(2)]  # fmt: skip
    torch.testing.assert_close(grid, torch.tensor(alone, dtype=torch.float64), rtol=1e-14,
                               atol=1e-15)  # fmt: skip


@pytest.mark.parametrize(("fixing", "running_sum"), [(0.25, 100.0), (0.5, 200.0)])
@pytest.mark.parametrize("is_call", [True, False], ids=["call", "put"])
def test_a_fixing_within_rounding_of_the_valuation_time_is_known(
    fixing: float, running_sum: float, is_call: bool
) -> None:
    # Regression: a time an ulp before a fixing (a grid's 0.30000000000000004 against 0.3) made
    # it a fixing to come, counted again on top of running_sum (a call 25.19 for 2.50); before
    # the first fixing the sum was refused as "no fixing known"
    args = {"spot": 100.0, "strike": 100.0, "volatility": 0.2, "rate": 0.03, "is_call": is_call,
            "fixing_times": [0.25, 0.5, 0.75, 1.0], "running_sum": running_sum}  # fmt: skip
    at = discrete_asian_price(time=fixing, **args)
    for time in (math.nextafter(fixing, 0.0), math.nextafter(fixing, 1.0)):
        torch.testing.assert_close(
            discrete_asian_price(time=time, **args), at, rtol=1e-12, atol=0.0
        )


SCHEDULE = [0.1, 0.3, 0.5, 0.7, 0.9]


@pytest.mark.parametrize(
    ("time", "fixing_times", "exact_time", "running_sum"),
    [(np.float32(0.7), SCHEDULE, 0.7, 400.0),
     (torch.tensor([0.7], dtype=torch.float32), SCHEDULE, 0.7, 400.0),
     (0.3, np.array(SCHEDULE, dtype=np.float32), 0.3, 200.0)],  # 0.30000001 against 0.3
    ids=["numpy-float32-time", "float32-tensor-time", "float32-schedule"],
)  # fmt: skip
def test_a_fixing_within_float32_rounding_of_the_valuation_time_is_known(
    time: object, fixing_times: object, exact_time: float, running_sum: float
) -> None:
    # Regression: the tolerance was float64's 1e-12 whatever the inputs: a float32 time of 0.7
    # (0.69999999) left the fixing at 0.7 to come, counted again on top of running_sum (20.00
    # for 0.71)
    args = {"spot": 100.0, "strike": 100.0, "volatility": 0.2, "running_sum": running_sum}
    exact = discrete_asian_price(time=exact_time, fixing_times=SCHEDULE, **args)
    rounded = discrete_asian_price(time=time, fixing_times=fixing_times, **args)
    torch.testing.assert_close(rounded.double().reshape(()), exact, rtol=1e-5, atol=0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"fixing_times": [0.5, 0.25, 1.0]}, "fixing_times must be increasing"),
     ({"fixing_times": [-0.1, 0.5]}, "fixing_times must be finite and >= 0"),
     ({"fixing_times": []}, "fixing_times must hold at least one"),
     ({"time": 1.0}, r"time must be in \[0, last fixing = 1.0\)"),
     # within rounding of the last fixing, none was left: "forward must be > 0"
     ({"time": math.nextafter(1.0, 0.0)}, r"time must be in \[0, last fixing = 1.0\)"),
     ({"running_sum": -1.0}, "running_sum must be finite and >= 0"),
     # before the first fixing it was added to the average all the same (50.0 for 5.2036)
     ({"time": 0.2, "running_sum": 100.0},
      "running_sum must be 0 where no fixing is at or before time; got 100.0"),
     ({"volatility": 0.0}, "volatility must be finite and > 0")],
)  # fmt: skip
def test_bad_input_names_the_field(kwargs: dict, message: str) -> None:
    args = {"spot": 100.0, "strike": 100.0, "volatility": 0.2, "fixing_times": [0.5, 1.0]}
    with pytest.raises(ValueError, match=message):
        discrete_asian_price(**{**args, **kwargs})


@pytest.mark.parametrize(
    ("volatility", "years", "dividend"), [(5.0, 50.0, 0.02), (3.0, 100.0, 0.1), (1.0, 40.0, 0.0)]
)
def test_huge_total_variance_matches_the_moments_in_high_precision(
    volatility: float, years: float, dividend: float
) -> None:
    # e^{sigma^2 u} overflowed past sigma^2 u = 709 (sigma 5 over 50 years): the fitted variance
    # was inf, refused as "volatility must be finite" (QuantLib's engine gives NaN there)
    import mpmath

    mpmath.mp.dps = 50
    times = [years / 4, years / 2, years]
    r, q, v = mpmath.mpf(0.05), mpmath.mpf(dividend), mpmath.mpf(volatility)
    t = [mpmath.mpf(x) for x in times]
    first = sum(100 * mpmath.exp((r - q) * x) for x in t)
    second = sum(10_000 * mpmath.exp((r - q) * (a + b) + v**2 * min(a, b)) for a in t for b in t)
    sd = mpmath.sqrt(mpmath.log(second / first**2))
    for strike in (50.0, 100.0, 200.0):
        d1 = (mpmath.log(first / (3 * strike)) + sd**2 / 2) / sd
        call = first * mpmath.ncdf(d1) - 3 * strike * mpmath.ncdf(d1 - sd)
        expected = float(mpmath.exp(-r * t[-1]) * call / 3)
        spot, vol = (torch.tensor(v, dtype=torch.float64, requires_grad=True)
                     for v in (100.0, volatility))  # fmt: skip
        price = discrete_asian_price(spot=spot, strike=strike, volatility=vol,
                                     fixing_times=times, rate=0.05, dividend=dividend)  # fmt: skip
        greeks = torch.autograd.grad(price, (spot, vol))  # an inf in the unused branch: NaN
        assert price.item() == pytest.approx(expected, rel=1e-10, abs=1e-12), strike
        assert all(math.isfinite(g.item()) for g in greeks)
