"""QuantLib adapters: market inputs and option types are read as given, or refused by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import QuantLib as ql
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


@pytest.mark.parametrize(
    ("columns", "forward", "discount"),
    [({"discount": DISCOUNT, "dividend": [0.01] * 2},
      100.0 * np.exp(-0.01 * MATURITY) / DISCOUNT, DISCOUNT),
     ({"rate": [0.03] * 2, "dividend": [0.01] * 2, "borrow": [0.02] * 2},
      100.0 * np.exp((0.03 - 0.01 - 0.02) * MATURITY), np.exp(-0.03 * MATURITY)),
     ({"spot": [np.nan] * 2, "forward": [100.0, 100.0], "rate": [0.05, 0.05]},
      np.full(2, 100.0), DISCOUNT),
     ({"forward": [np.nan, 101.0], "rate": [0.05, 0.05]},
      np.array([100.0 * np.exp(0.05), 101.0]), DISCOUNT)],
    ids=["discount-without-rate", "borrow", "forward-with-rate", "forward-gap-from-spot"],
)  # fmt: skip
def test_heston_price_table_reads_each_row_as_the_cli_does(columns, forward, discount):
    # a spot row with a discount but no rate was priced at rate 0 (10.06 read as 7.02), a borrow
    # cost was ignored (the 110 call at 3.81 for 3.00 with a 2% borrow), a forward
    # with a rate but no discount was discounted at 1 (4.08 for 3.88 at 5%), and a row whose
    # forward was missing raised QuantLib's "negative or null underlying given"
    prices = qlref.heston_price_table(_table(**columns))
    expected = heston.price(
        forward=torch.tensor(forward),
        discount=torch.tensor(discount),
        strike=torch.tensor([90.0, 110.0]),
        maturity=torch.tensor(MATURITY),
        **MODEL,
    )
    np.testing.assert_allclose(prices, expected.numpy(), rtol=1e-9, atol=0.0)


def test_heston_price_table_names_a_row_without_a_forward():
    table = _table(spot=[np.nan, 100.0], forward=[np.nan, 100.0])
    with pytest.raises(ValueError, match=r"row 1.*no forward"):
        qlref.heston_price_table(table)


def test_heston_price_refuses_a_discount_given_with_spot():
    with pytest.raises(ValueError, match="discount goes with forward"):
        qlref.heston_price(spot=100.0, strike=100.0, maturity=MATURITY, discount=DISCOUNT, **MODEL)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("v0", -0.01, r"v0 must be finite and >= 0, got -0.01"),
     ("theta", -0.04, r"theta must be finite and > 0, got -0.04"),
     ("sigma", np.array([0.5, 0.0]), r"sigma must be finite and > 0, got 0.0 at index 1"),
     ("rho", 1.5, r"rho must be in \(-1, 1\), got 1.5"),
     ("kappa", math.nan, r"kappa must be finite and > 0, got nan")],
)  # fmt: skip
def test_heston_price_refuses_parameters_outside_their_domain_by_name(field, value, message):
    # QuantLib priced them: v0 = -0.01 at 4.10 and theta = -0.04 at 88.5 (spot 100, ATM call)
    with pytest.raises(ValueError, match=message):
        qlref.heston_price(spot=100.0, strike=100.0, maturity=MATURITY, **{**MODEL, field: value})


@pytest.mark.parametrize("engine", ["reference", "reference_cv"])
def test_heston_price_adaptive_engines_give_nan_naming_an_option_that_does_not_converge(engine):
    # Gauss-Lobatto at 1e-12 hits its iteration limit for this 1-day, v0 = 1e-6 surface at K/S 0.2
    # and 5: "reference_cv" raised QuantLib's bare "max number of iterations reached"
    case = {"v0": 1e-6, "kappa": 0.01, "theta": 0.04, "sigma": 0.01, "rho": -0.7}
    with pytest.warns(UserWarning, match=rf"2 option\(s\).*'{engine}'.*first at index 1"):
        prices = qlref.heston_price(spot=100.0, strike=np.array([100.0, 20.0, 500.0]),
                                    maturity=1 / 365, engine=engine, **case)  # fmt: skip
    assert np.isnan(prices[1:]).all()
    assert 0.0 < prices[0] < 0.01


def test_heston_price_exp_sinh_cv_engine_matches_lewis_reference_value():
    # Lewis' 50-digit value, as in heston_price's example (the "reference" engine)
    price = qlref.heston_price(spot=100.0, strike=100.0, maturity=1.0, rate=0.01, dividend=0.02,
                               v0=0.04, kappa=4.0, theta=0.25, sigma=1.0, rho=-0.5, is_call=False,
                               engine="exp_sinh_cv")  # fmt: skip
    assert float(price) == pytest.approx(17.05527096127, rel=0.0, abs=1e-9)


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


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: qlref.heston_price(spot=100.0, strike=100.0, maturity=[1.0, 0.0], **MODEL),
         r"maturity must be a finite number of years > 0, got 0.0 at index 1"),
        (lambda: qlref.heston_price(forward=100.0, strike=100.0, maturity=-0.5, **MODEL),
         r"maturity must be .* > 0, got -0.5"),
        (lambda: qlref.heston_price_table(_table(maturity=[1.0, 0.0], discount=[0.99, 1.0])),
         r"maturity must be .* > 0, got 0.0 at row 2"),
        (lambda: qlref.heston_mc_price(spot=100.0, strike=100.0, maturity=0.0, n_paths=2,
                                       n_steps=1, **MODEL),
         r"maturity must be .* > 0, got 0.0"),
        # a period of 0 was fitted as an option expiring today, at a model vol of 0.001
        (lambda: qlref.heston_calibrate(spot=100.0, strike=np.array([90.0, 100.0, 110.0] * 2),
                                        period=np.array([0] * 3 + [365] * 3),
                                        market_vol=np.full(6, 0.2), curve_days=np.array([1, 365]),
                                        zero_rate=np.zeros(2)),
         r"period must be at least 1 day, got 0 at index 0"),
    ],
    ids=["heston_price", "heston_price-forward", "heston_price_table", "heston_mc_price",
         "heston_calibrate"],
)  # fmt: skip
def test_a_maturity_of_zero_is_a_value_error_naming_where(call, message):
    # a maturity of 0 raised ZeroDivisionError in the time scaling, a negative one a QuantLib
    # RuntimeError about a NaN stdDev
    with pytest.raises(ValueError, match=message):
        call()


@pytest.fixture
def user_evaluation_date():
    """A user's own evaluation date, set before the test and unset (today) after it."""
    settings = ql.Settings.instance()
    settings.evaluationDate = ql.Date(15, ql.March, 2024)
    yield ql.Date(15, ql.March, 2024)
    settings.evaluationDate = ql.Date()


def test_adapters_give_the_callers_evaluation_date_back(user_evaluation_date):
    # every adapter left QuantLib's global evaluation date at 2002-07-05: a user's own curves and
    # options in the same process were then valued from that date
    settings = ql.Settings.instance()
    qlref.heston_price(spot=100.0, strike=100.0, maturity=1.0, **MODEL)
    assert settings.evaluationDate == user_evaluation_date
    qlref.bs_barrier_price(spot=100.0, strike=100.0, barrier=90.0, barrier_type="down_out",
                           maturity=1.0, volatility=0.2)  # fmt: skip
    assert settings.evaluationDate == user_evaluation_date
    qlref.sabr_fd_price(forward=0.03, strike=[0.03], maturity=0.25, alpha=0.03, beta=0.5,
                        rho=-0.3, nu=0.4, t_grid=5, f_grid=20, x_grid=5)  # fmt: skip
    assert settings.evaluationDate == user_evaluation_date
    with pytest.raises(ValueError, match="engine must be one of"):  # raised with the date set
        qlref.heston_price(spot=100.0, strike=100.0, maturity=1.0, engine="nope", **MODEL)
    assert settings.evaluationDate == user_evaluation_date


def test_adapters_leave_an_unset_evaluation_date_following_today():
    settings = ql.Settings.instance()
    settings.evaluationDate = ql.Date()
    qlref.heston_price(spot=100.0, strike=100.0, maturity=1.0, **MODEL)
    assert settings.evaluationDate == ql.Date.todaysDate()


BS_MARKET = {"spot": 100.0, "volatility": 0.25, "rate": 0.05, "dividend": 0.02}


def test_exotic_mc_adapters_run_antithetic_within_four_standard_errors():
    # bench_exotics compared our best configuration with QuantLib's without QuantLib's antithetic
    # variates (the adapters had no such option), which cut its work at equal error by ~1.5x
    from pricing.analytic_barrier import barrier_price

    contract = {"strike": 100.0, "barrier": 90.0, "barrier_type": "down_out", "maturity": 1.0}
    barrier = qlref.bs_barrier_mc_price(**BS_MARKET, **contract, n_paths=8_000, n_steps=50,
                                        antithetic=True)  # fmt: skip
    exact = float(barrier_price(**BS_MARKET, **contract))
    assert barrier.n_paths == 8_000
    assert abs(barrier.price - exact) <= 4 * barrier.std_error
    fixings = [round(365 * i / 4) / 365 for i in range(1, 5)]
    asian = {**BS_MARKET, "strike": 100.0, "fixing_times": fixings, "control": True}
    paired = qlref.bs_asian_mc_price(**asian, n_paths=8_000, antithetic=True)
    plain = qlref.bs_asian_mc_price(**asian, n_paths=8_000, seed=7)
    combined = np.hypot(paired.std_error, plain.std_error)
    assert abs(paired.price - plain.price) <= 4 * combined


@pytest.mark.parametrize("adapter", ["bs_barrier_mc_price", "bs_asian_mc_price"])
def test_exotic_mc_adapters_refuse_an_odd_antithetic_path_count(adapter):
    contract = ({"barrier": 90.0, "barrier_type": "down_out", "maturity": 1.0, "n_steps": 4}
                if adapter == "bs_barrier_mc_price" else {"fixing_times": [1.0]})  # fmt: skip
    with pytest.raises(ValueError, match=r"even with antithetic\), got 101"):
        getattr(qlref, adapter)(**BS_MARKET, strike=100.0, **contract, n_paths=101,
                                antithetic=True)  # fmt: skip


def test_sabr_fd_strikes_below_minus_the_shift_are_worth_their_forward_payoff():
    # QuantLib's engine raised a Boost "non centrality parameter" error for K + shift <= 0
    price = qlref.sabr_fd_price(forward=0.01, strike=[-0.03, -0.03, -0.02], maturity=1.0,
                                alpha=0.05, beta=0.5, rho=-0.2, nu=0.4, shift=0.02,
                                discount=0.98, is_call=[True, False, True])  # fmt: skip
    np.testing.assert_allclose(price, [0.98 * 0.04, 0.0, 0.98 * 0.03], rtol=1e-15, atol=0)


BARRIER = {"spot": 100.0, "strike": 100.0, "barrier": 90.0, "barrier_type": "down_out",
           "maturity": 1.0, "volatility": 0.2}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [({"volatility": -0.2}, r"volatility must be finite and > 0; got -0.2"),
     ({"volatility": 0.0}, r"volatility must be finite and > 0; got 0.0"),
     ({"barrier": -90.0}, r"barrier must be finite and > 0; got -90.0"),
     ({"rebate": -1.0}, r"rebate must be finite and >= 0; got -1.0"),
     ({"rate": math.nan}, r"rate must be finite; got nan"),
     ({"barrier": 110.0}, r"spot 100.0 is beyond the barrier 110.0 of a down_out option"),
     ({"barrier": 90.0, "barrier_type": "up_in"},
      r"spot 100.0 is beyond the barrier 90.0 of a up_in option")],
    ids=["negative-vol", "zero-vol", "negative-barrier", "negative-rebate", "nan-rate",
         "down-beyond", "up-beyond"],
)  # fmt: skip
def test_barrier_adapter_refuses_inputs_out_of_domain_by_name(change, message):
    # QuantLib priced a volatility of -0.2 as 0.2 (6.4674) and one of 0 as NaN, a barrier of -90
    # as never hit (the vanilla 7.9656), a rebate of -1 as none, and refused a spot beyond the
    # barrier with a RuntimeError "barrier touched" that named neither
    with pytest.raises(ValueError, match=message):
        qlref.bs_barrier_price(**{**BARRIER, **change})


def test_barrier_mc_adapter_refuses_a_spot_beyond_the_barrier_by_name():
    with pytest.raises(ValueError, match=r"spot 100.0 is beyond the barrier 110.0"):
        qlref.bs_barrier_mc_price(**{**BARRIER, "barrier": 110.0}, n_paths=2, n_steps=1)


def test_barrier_adapter_prices_a_spot_on_the_barrier_as_hit():
    # on the barrier is hit but not beyond it: QuantLib prices it, as barrier_price does
    out = qlref.bs_barrier_price(**{**BARRIER, "barrier": 100.0}, rebate=2.5)
    assert out == pytest.approx(2.5, rel=1e-12, abs=0.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"fixing_times": []}, r"fixing_times must hold at least one fixing; got none"),
     ({"volatility": -0.2}, r"volatility must be finite and > 0; got -0.2"),
     ({"running_sum": 100.0}, r"running_sum \(100.0\) and past_fixings \(0\) must be both 0"),
     ({"past_fixings": 1}, r"running_sum \(0.0\) and past_fixings \(1\) must be both 0"),
     ({"past_fixings": -1, "running_sum": 1.0}, r"past_fixings must be a whole number >= 0"),
     ({"running_sum": math.nan, "past_fixings": 1}, r"running_sum must be finite and >= 0")],
    ids=["no-fixing", "negative-vol", "sum-without-count", "count-without-sum",
         "negative-count", "nan-sum"],
)  # fmt: skip
def test_asian_tw_adapter_refuses_inconsistent_seasoning_by_name(change, message):
    # a running sum of 100 without past_fixings was ignored (the unseasoned 7.9656), a volatility
    # of -0.2 priced as 0.2, no fixing was an IndexError and a negative count SWIG's "Wrong number
    # or type of arguments"
    asian = {"spot": 100.0, "strike": 100.0, "fixing_times": [1.0], "volatility": 0.2}
    with pytest.raises(ValueError, match=message):
        qlref.bs_asian_tw_price(**{**asian, **change})


def test_asian_tw_adapter_takes_numpy_seasoning():
    # a past_fixings of np.int64(1) passed the whole-number check, then failed in SWIG ("Wrong
    # number or type of arguments for overloaded function 'new_DiscreteAveragingAsianOption'")
    asian = {"spot": 100.0, "strike": 100.0, "fixing_times": [182 / 365, 1.0], "volatility": 0.2}
    expected = qlref.bs_asian_tw_price(**asian, running_sum=100.0, past_fixings=1)
    got = qlref.bs_asian_tw_price(**asian, running_sum=np.float64(100.0), past_fixings=np.int64(1))
    assert got == pytest.approx(expected, rel=1e-15, abs=0)
