"""Black-Scholes: published values, QuantLib agreement, no-arbitrage properties, implied-vol accuracy."""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing import black_scholes as bs
from pricing import quantlib as qlref


def _case_inputs(row) -> dict:
    return dict(
        spot=row.spot,
        strike=row.strike,
        maturity=row.maturity_years,
        volatility=row.volatility,
        rate=row.rate,
        dividend=row.dividend_yield,
        is_call=row.option_type == "call",
    )


def test_prices_match_published_haug_and_hull_values(reference_table):
    table = reference_table("bs_european_prices.csv")
    for row in table.itertuples():
        value = float(bs.price(**_case_inputs(row)))
        assert value == pytest.approx(row.expected_price, abs=row.tolerance_abs), row.case_id


def test_greeks_match_published_values(reference_table):
    table = reference_table("bs_greeks.csv")
    for row in table.itertuples():
        inputs = _case_inputs(row)
        g = bs.greeks(**inputs)._asdict()
        price = float(bs.price(**inputs))
        g["price"] = price
        g["theta_per_day"] = g["theta"] / 365.0
        g["elasticity"] = g["delta"] * row.spot / price
        value = float(g[row.greek])
        assert value == pytest.approx(row.expected_value, abs=row.tolerance_abs), row.case_id


def _random_cases(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return dict(
        spot=rng.uniform(50, 150, n),
        strike=rng.uniform(40, 160, n),
        maturity=np.round(rng.uniform(1, 3 * 365, n)) / 365.0,
        volatility=rng.uniform(0.05, 1.0, n),
        rate=rng.uniform(-0.02, 0.08, n),
        dividend=rng.uniform(0.0, 0.05, n),
        is_call=rng.random(n) < 0.5,
    )


def test_prices_and_greeks_agree_with_quantlib_on_random_cases():
    cases = _random_cases(2000, seed=1)
    ours = bs.greeks(**{k: torch.as_tensor(v) for k, v in cases.items()})._asdict()
    ours["price"] = bs.price(**{k: torch.as_tensor(v) for k, v in cases.items()})
    ref = qlref.bs_greeks(**cases)
    for name, values in ref.items():
        np.testing.assert_allclose(ours[name].numpy(), values, rtol=1e-9, atol=1e-10, err_msg=name)


def test_greeks_equal_autograd_derivatives_of_the_price(device):
    cases = _random_cases(200, seed=2)
    t = {k: torch.as_tensor(v, device=device) for k, v in cases.items()}
    for name in ("spot", "volatility", "rate", "dividend", "maturity"):
        t[name] = t[name].clone().requires_grad_(True)
    price = bs.price(**t)
    grads = torch.autograd.grad(
        price.sum(), [t["spot"], t["volatility"], t["rate"], t["dividend"], t["maturity"]]
    )
    g = bs.greeks(**{k: v.detach() for k, v in t.items()})
    for ours, auto in zip((g.delta, g.vega, g.rho, g.dividend_rho, -g.theta), grads, strict=True):
        torch.testing.assert_close(ours, auto, rtol=1e-9, atol=1e-9)


def test_put_call_parity_holds_to_rounding():
    cases = _random_cases(2000, seed=3)
    kw = {k: torch.as_tensor(v) for k, v in cases.items() if k != "is_call"}
    call = bs.price(**kw, is_call=True)
    put = bs.price(**kw, is_call=False)
    t = kw["maturity"]
    parity = kw["spot"] * torch.exp(-kw["dividend"] * t) - kw["strike"] * torch.exp(-kw["rate"] * t)
    torch.testing.assert_close(call - put, parity, rtol=0.0, atol=1e-11)


def test_prices_respect_no_arbitrage_bounds_and_are_monotone_convex_in_strike():
    strikes = torch.linspace(20.0, 300.0, 561, dtype=torch.float64)
    for is_call in (True, False):
        p = bs.price(
            spot=100.0,
            strike=strikes,
            maturity=0.7,
            volatility=0.3,
            rate=0.03,
            dividend=0.01,
            is_call=is_call,
        )
        df_r, df_q = math.exp(-0.03 * 0.7), math.exp(-0.01 * 0.7)
        forward_value = 100.0 * df_q - strikes * df_r
        lower = torch.clamp(forward_value if is_call else -forward_value, min=0.0)
        upper = torch.full_like(strikes, 100.0 * df_q) if is_call else strikes * df_r
        assert bool((p >= lower - 1e-12).all()) and bool((p <= upper).all())
        slope = torch.diff(p)
        assert bool((slope < 0).all()) if is_call else bool((slope > 0).all())
        assert bool((torch.diff(slope) > -1e-12).all()), "price must be convex in strike"


def _mp_black_call(forward: float, strike: float, total_vol: float) -> float:
    """50-digit Black call price with mpmath: an independent, obviously correct reference."""
    with mpmath.workdps(50):
        f, k, s = mpmath.mpf(forward), mpmath.mpf(strike), mpmath.mpf(total_vol)
        d1 = mpmath.log(f / k) / s + s / 2
        return float(f * mpmath.ncdf(d1) - k * mpmath.ncdf(d1 - s))


@pytest.mark.parametrize(
    ("strike", "maturity", "vol"),
    [
        (150.0, 1 / 365, 0.3),
        (300.0, 1.0, 0.2),
        (101.0, 1 / (365 * 24), 0.1),
        (100.0, 1e-6, 0.2),
        (100.5, 10.0, 0.001),
        (3000.0, 10.0, 0.5),
    ],
)
def test_tiny_and_near_money_prices_keep_full_relative_precision(strike, maturity, vol):
    # The naive F N(d1) - K N(d2) loses every digit in these cases (or underflows to 0).
    p = float(bs.black_price(forward=100.0, strike=strike, maturity=maturity, volatility=vol))
    ref = _mp_black_call(100.0, strike, vol * math.sqrt(maturity))
    assert ref > 0.0
    assert p == pytest.approx(ref, rel=1e-12)


def _log_uniform_cases(
    seed: int, n: int, x_max: float, maturities: tuple[float, float], vols: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` log-moneyness values uniform on ``[-x_max, x_max]``, maturities and vols log-uniform
    on the given ranges (float64)."""
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.uniform(-x_max, x_max, n))
    maturity = torch.as_tensor(np.exp(rng.uniform(*map(math.log, maturities), n)))
    vol = torch.as_tensor(np.exp(rng.uniform(*map(math.log, vols), n)))
    return x, maturity, vol


@pytest.mark.parametrize("is_call", [True, False])
def test_implied_vol_round_trip_to_near_machine_precision(is_call):
    n = 20000
    x, maturity, vol = _log_uniform_cases(4, n, 4.0, (1 / 365, 30.0), (0.01, 3.0))
    forward, strike = torch.ones(n, dtype=torch.float64), torch.exp(-x)
    p = bs.black_price(
        forward=forward, strike=strike, maturity=maturity, volatility=vol, is_call=is_call
    )
    iv, status = bs.implied_vol_with_status(
        price=p, forward=forward, strike=strike, maturity=maturity, is_call=is_call
    )
    # Where vega is not negligible, the price pins down the vol: relative error ~ eps * price / vega.
    vega = torch.autograd.functional.jacobian(
        lambda v: bs.black_price(
            forward=forward, strike=strike, maturity=maturity, volatility=v, is_call=is_call
        ).sum(),
        vol,
    )
    # Subnormal prices (below ~1e-308) carry too few significant bits to resolve anything.
    resolvable = (vega * vol > 1e-8 * p) & (p > 1e-300)
    assert int(resolvable.sum()) > n // 3
    assert bool((status[resolvable] == 0).all())
    rel_err = ((iv - vol).abs() / vol)[resolvable]
    # Condition number of vol in price: (dp/p) / (dvol/vol) = vega * vol / p. The solver must reach
    # the accuracy the input's last bits allow: ~1e-13 relative (1024 eps) times the inverse
    # condition number. (Near the money with total vol < 0.01 the normalised price itself is only
    # good to ~1e-13 relative, which sets the constant.)
    eps = torch.finfo(torch.float64).eps
    allowed = 1024 * eps * (1.0 + (p / (vega * vol)))[resolvable]
    assert bool((rel_err <= allowed).all()), float((rel_err / allowed).max())
    assert float(rel_err.median()) < 1e-15


def test_implied_vol_at_tiny_total_vol_keeps_the_accuracy_the_price_allows():
    # The solver's deep-wing objective differenced two erfcx values that cancel for a tiny s
    # (~eps y / s relative), where the pricer uses a series: vols 2e-10 off (s = 1e-6, 1e-11
    # at s = 5e-5, 0.1% vol for a day) for prices that pin them down to ~1e-15, status "ok".
    rng = np.random.default_rng(12)
    s = torch.as_tensor(np.exp(rng.uniform(math.log(1e-6), math.log(4e-3), 20000)))
    z = torch.as_tensor(rng.uniform(1.05, 30.0, 20000))  # out of the money, d1 < -1
    vol, strike = (s * math.sqrt(365.0)).requires_grad_(), torch.exp(z * s)
    p = bs.black_price(forward=1.0, strike=strike, maturity=1 / 365, volatility=vol)
    (vega,) = torch.autograd.grad(p.sum(), vol)
    p, vol = p.detach(), vol.detach()
    iv, status = bs.implied_vol_with_status(price=p, forward=1.0, strike=strike, maturity=1 / 365)
    resolvable = p > 1e-300
    assert int(resolvable.sum()) > 15000 and bool((status[resolvable] == 0).all())
    rel_err = ((iv - vol).abs() / vol)[resolvable]
    eps = torch.finfo(torch.float64).eps
    allowed = 1024 * eps * (1.0 + p / (vega * vol))[resolvable]  # as in the round-trip test
    assert bool((rel_err <= allowed).all()), float((rel_err / allowed).max())


@pytest.mark.parametrize("start_factor", [1.0, 1.02, 0.5, 5.0, math.nan, -1.0])
def test_implied_vol_from_a_given_start_is_the_same_root(start_factor):
    # A start near the root (a model price near a market quote), far from it, or unusable (NaN,
    # negative: the closed-form guess takes over) must give the root the guess gives.
    n = 4000
    x, maturity, vol = _log_uniform_cases(7, n, 1.5, (7 / 365, 10.0), (0.05, 1.5))
    strike, is_call = torch.exp(-x), x < 0
    p = bs.black_price(forward=1.0, strike=strike, maturity=maturity, volatility=vol,
                       is_call=is_call)  # fmt: skip
    p[0] = 2.0  # above the upper bound: NaN with its status whatever the start
    kwargs = dict(price=p, forward=1.0, strike=strike, maturity=maturity, is_call=is_call)
    plain, plain_status = bs.implied_vol_with_status(**kwargs)
    started, status = bs.implied_vol_with_status(**kwargs, initial_vol=vol * start_factor)
    assert torch.equal(status, plain_status) and int(status[0]) == 2
    torch.testing.assert_close(started, plain, rtol=1e-13, atol=0.0, equal_nan=True)


def test_implied_vol_start_of_the_wrong_shape_is_named():
    with pytest.raises(ValueError, match="initial_vol of shape"):
        bs.black_implied_vol(price=[8.0, 9.0], forward=100.0, strike=100.0, maturity=1.0,
                             initial_vol=[0.2, 0.2, 0.2])  # fmt: skip


def test_implied_vol_for_very_short_and_deep_wing_options():
    # 1 hour to expiry, 3% OTM, and 10-sigma wings for 1-year options.
    cases = [
        (100.0, 103.0, 1 / (365 * 24), 0.25),
        (100.0, 600.0, 1.0, 0.2),
        (100.0, 15.0, 1.0, 0.2),
    ]
    for forward, strike, maturity, vol in cases:
        for is_call in (True, False):
            p = bs.black_price(
                forward=forward, strike=strike, maturity=maturity, volatility=vol, is_call=is_call
            )
            otm = (strike > forward) == is_call
            if not otm:
                continue
            iv = bs.black_implied_vol(
                price=p, forward=forward, strike=strike, maturity=maturity, is_call=is_call
            )
            assert float(iv) == pytest.approx(vol, rel=1e-13)


def test_implied_vol_agrees_with_quantlib():
    cases = _random_cases(1000, seed=5)
    kw = {k: torch.as_tensor(v) for k, v in cases.items()}
    p = bs.price(**kw)
    t = kw["maturity"]
    forward = kw["spot"] * torch.exp((kw["rate"] - kw["dividend"]) * t)
    discount = torch.exp(-kw["rate"] * t)
    ours = bs.black_implied_vol(
        price=p,
        forward=forward,
        strike=kw["strike"],
        maturity=t,
        discount=discount,
        is_call=kw["is_call"],
    )
    ref = qlref.bs_implied_vol(
        price=p.numpy(),
        forward=forward.numpy(),
        strike=cases["strike"],
        maturity=cases["maturity"],
        discount=discount.numpy(),
        is_call=cases["is_call"],
    )
    true_vol = cases["volatility"]
    ours_err = np.abs(ours.numpy() - true_vol)
    ref_err = np.abs(np.nan_to_num(ref, nan=np.inf) - true_vol)
    converged = ref_err < 1e-9 * true_vol
    assert converged.mean() > 0.9
    np.testing.assert_allclose(ours.numpy()[converged], ref[converged], rtol=1e-9)
    # Where the price determines the vol well (vega * vol / price > 1e-3, so the input rounding
    # moves the vol by < 1e-12), never less accurate than QuantLib's solver at accuracy 1e-12.
    vega = bs.greeks(**kw).vega.numpy()
    well_posed = vega * true_vol > 1e-3 * p.numpy()
    assert well_posed.mean() > 0.8
    assert bool(np.all((ours_err <= np.maximum(ref_err, 1e-12 * true_vol))[well_posed]))


def test_prices_outside_no_arbitrage_bounds_give_nan_with_a_reason():
    prices = torch.tensor([5.0, 150.0, 100.0, 20.0, float("nan")], dtype=torch.float64)
    iv, status = bs.implied_vol_with_status(price=prices, forward=100.0, strike=80.0, maturity=1.0)
    reasons = [bs.IV_STATUS[int(s)] for s in status]
    assert torch.isnan(iv[[0, 1, 2, 4]]).all()
    assert reasons[0] == "price below intrinsic value"
    assert reasons[1] == reasons[2] == "price at or above the upper bound"
    assert float(iv[3]) == 0.0 and reasons[3] == "ok"  # exactly intrinsic: zero vol
    assert reasons[4].startswith("invalid input")


def test_discounted_intrinsic_prices_give_zero_vol_not_below_intrinsic():
    # black_price at vol 0 is D * (F - K); dividing by D rounded 5% of them below F - K, which
    # reported "price below intrinsic value" for a price equal to it (here F, K, D of such a case).
    forward, strike, discount = 135.26328384806567, 78.81909163688601, 0.5685192308229681
    price = bs.black_price(forward=forward, strike=strike, maturity=1.0, volatility=0.0,
                           discount=discount)  # fmt: skip
    assert float(price) / discount < forward - strike  # the rounding this test is about
    iv, status = bs.implied_vol_with_status(price=price, forward=forward, strike=strike,
                                            maturity=1.0, discount=discount)  # fmt: skip
    assert bs.IV_STATUS[int(status)] == "ok" and float(iv) == 0.0


def test_discounted_intrinsic_prices_rounded_above_intrinsic_give_zero_vol():
    # The other 5%: P / D rounded above F - K, and that rounding (1.8e-15 here) was solved as a
    # time value: a vol of 0.66 with status "ok" for a price equal to the intrinsic value.
    forward, strike, discount = 10.452591935626954, 0.07051956264326277, 0.4331925439639992
    price = bs.black_price(forward=forward, strike=strike, maturity=1.0, volatility=0.0,
                           discount=discount)  # fmt: skip
    assert float(price) / discount > forward - strike  # the rounding this test is about
    iv, status = bs.implied_vol_with_status(price=price, forward=forward, strike=strike,
                                            maturity=1.0, discount=discount)  # fmt: skip
    assert bs.IV_STATUS[int(status)] == "ok" and float(iv) == 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_in_the_money_prices_at_zero_vol_give_zero_vol(dtype):
    # in float32 half of them came out "ok" with vols up to 1.1 (float64: 5%, up to 0.66)
    rng = np.random.default_rng(11)
    forward = torch.as_tensor(np.exp(rng.uniform(0.0, 7.0, 4000)), dtype=dtype)
    strike = forward * torch.as_tensor(np.exp(rng.uniform(-5.0, 5.0, 4000)), dtype=dtype)
    discount = torch.as_tensor(np.exp(-rng.uniform(-0.1, 2.0, 4000)), dtype=dtype)
    options = dict(forward=forward, strike=strike, maturity=1.0, discount=discount,
                   is_call=strike < forward)  # fmt: skip
    price = bs.black_price(**options, volatility=0.0)  # the intrinsic value, rounded
    iv, status = bs.implied_vol_with_status(price=price, **options)
    assert bool((status == 0).all()) and float(iv.abs().max()) == 0.0


@settings(max_examples=200, deadline=None)
@given(
    log_moneyness=st.floats(-2.0, 2.0),
    maturity=st.floats(0.01, 10.0),
    vol=st.floats(0.02, 2.0),
    is_call=st.booleans(),
)
def test_implied_vol_inverts_price_property(log_moneyness, maturity, vol, is_call):
    strike = 100.0 * math.exp(-log_moneyness)
    p = bs.black_price(
        forward=100.0, strike=strike, maturity=maturity, volatility=vol, is_call=is_call
    )
    time_value = float(p) - max((100.0 - strike) if is_call else (strike - 100.0), 0.0)
    if time_value < max(1e-6 * float(p), 1e-250):  # the price no longer resolves the vol
        return
    iv = bs.black_implied_vol(
        price=p, forward=100.0, strike=strike, maturity=maturity, is_call=is_call
    )
    assert float(iv) == pytest.approx(vol, rel=1e-9)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("volatility", dict(volatility=-0.2)),
        ("maturity", dict(maturity=0.0)),
        ("strike", dict(strike=-1.0)),
        ("spot", dict(spot=float("nan"))),
        # an overflowing carry or discount named 'forward', which the caller never gave
        (r"rate - dividend.*got 800", dict(rate=800.0)),
        (r"rate - dividend.*got 800", dict(dividend=-800.0)),
        (r"^rate must be above.*got -800", dict(rate=-800.0, dividend=-800.0)),
    ],
)
def test_bad_input_raises_naming_the_field(field, kwargs):
    base = dict(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2)
    base.update(kwargs)
    with pytest.raises(ValueError, match=field):
        bs.price(**base)


def test_bad_input_error_names_the_element_index():
    with pytest.raises(ValueError, match="index 2"):
        bs.price(spot=100.0, strike=[90.0, 100.0, -5.0], maturity=1.0, volatility=0.2)


def test_float32_and_device_are_preserved(device):
    spot = torch.tensor([100.0, 120.0], dtype=torch.float32, device=device)
    p = bs.price(spot=spot, strike=100.0, maturity=1.0, volatility=0.2)
    assert p.dtype == torch.float32 and p.device.type == device.type
    ref = bs.price(spot=spot.double().cpu(), strike=100.0, maturity=1.0, volatility=0.2)
    torch.testing.assert_close(p.double().cpu(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("is_call", [True, False])
def test_autograd_greeks_are_right_exactly_at_the_money(is_call):
    # F = K exactly: the in/out-of-the-money branch switch must not drop half of the delta.
    spot = torch.tensor([100.0], dtype=torch.float64, requires_grad=True)
    rate = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    p = bs.price(spot=spot, strike=100.0, maturity=1.0, volatility=0.2, rate=rate, is_call=is_call)
    delta, rho = torch.autograd.grad(p.sum(), [spot, rate])
    g = bs.greeks(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2, is_call=is_call)
    torch.testing.assert_close(delta, g.delta.reshape(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rho, g.rho.reshape(1), rtol=1e-12, atol=1e-12)


def test_deep_out_of_the_money_greeks_keep_their_relative_accuracy() -> None:
    # The erf-based normal CDF returned 0 (strike 300) or lost 4e-6 relative (strike 200).
    from pricing.quantlib import bs_greeks

    strike = np.array([200.0, 300.0])
    ours = bs.greeks(spot=100.0, strike=torch.tensor(strike), maturity=0.25, volatility=0.2,
                     rate=0.02, dividend=0.01)  # fmt: skip
    reference = bs_greeks(spot=100.0, strike=strike, maturity=0.25, volatility=0.2, rate=0.02,
                          dividend=0.01)  # fmt: skip
    np.testing.assert_allclose(ours.delta.numpy(), reference["delta"], rtol=1e-8, atol=0)
    assert bool((ours.delta > 0).all()) and bool((ours.rho > 0).all())


@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"),
    [(torch.float64, 1e-8, 1e-12), (torch.float32, 1e-2, 1e-6)],
    ids=["float64", "float32"],
)
@pytest.mark.parametrize("is_call", [True, False], ids=["call", "put"])
def test_autograd_greeks_at_tiny_total_vol_are_finite_and_match_the_closed_forms(
    is_call: bool, dtype: torch.dtype, rtol: float, atol: float
) -> None:
    # Regression: far from the strike at a tiny vol * sqrt(T) (1e-8 in float64; in float32 from
    # 3e-4, e.g. S/K = 0.1 at 0.5% for a day), the price underflowed through ln 0 = -inf and
    # delta, vega and gamma by autograd were 0 * inf = NaN. In float32 near the money the inputs
    # themselves resolve d1 to ~eps / s only, hence the looser tolerance.
    vols, maturities = [1e-12, 1e-9, 1e-6, 1e-3, 5e-3], [1 / (365 * 24), 1 / 365, 1.0]
    strikes = [1.0, 10.0, 50.0, 90.0, 99.0, 100.0, 101.0, 110.0, 200.0, 1e4]
    vol, maturity, strike = (torch.tensor(c, dtype=dtype) for c in
                             zip(*itertools.product(vols, maturities, strikes), strict=True))  # fmt: skip
    spot = torch.full_like(strike, 100.0, requires_grad=True)
    sigma = vol.clone().requires_grad_(True)
    price = bs.price(spot=spot, strike=strike, maturity=maturity, volatility=sigma, rate=0.01,
                     is_call=is_call)  # fmt: skip
    delta, vega = torch.autograd.grad(price.sum(), (spot, sigma), create_graph=True)
    (gamma,) = torch.autograd.grad(delta.sum(), spot)
    closed = bs.greeks(spot=100.0, strike=strike, maturity=maturity, volatility=vol, rate=0.01,
                       is_call=is_call)  # fmt: skip
    for ours, reference in ((delta, closed.delta), (vega, closed.vega), (gamma, closed.gamma)):
        assert bool(torch.isfinite(ours).all())
        torch.testing.assert_close(ours.detach(), reference, rtol=rtol, atol=atol)


def test_call_flags_broadcast_like_the_other_inputs_and_strings_are_refused() -> None:
    # is_call may carry the batch shape: one strike, a call and a put; or (2, 1) against (3,)
    both = bs.price(spot=100.0, strike=95.0, maturity=1.0, volatility=0.2, rate=0.03,
                    is_call=[True, False])  # fmt: skip
    call = bs.price(spot=100.0, strike=95.0, maturity=1.0, volatility=0.2, rate=0.03)
    put = bs.price(spot=100.0, strike=95.0, maturity=1.0, volatility=0.2, rate=0.03, is_call=False)
    torch.testing.assert_close(both, torch.stack([call, put]), rtol=0, atol=0)
    grid = bs.black_price(forward=100.0, strike=torch.tensor([90.0, 100.0, 110.0]), maturity=1.0,
                          volatility=0.2, is_call=torch.tensor([[True], [False]]))  # fmt: skip
    assert grid.shape == (2, 3)
    with pytest.raises(TypeError, match="is_call must be booleans"):
        bs.price(spot=100.0, strike=95.0, maturity=1.0, volatility=0.2, is_call="False")
    with pytest.raises(ValueError, match=r"is_call must be booleans or 0/1, got 0\.7"):
        bs.price(spot=100.0, strike=95.0, maturity=1.0, volatility=0.2, is_call=0.7)


def test_every_greek_has_the_broadcast_shape_including_the_option_flags():
    # gamma and vega (which do not depend on is_call) came back as () beside (2,) fields
    g = bs.greeks(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2, is_call=[True, False])
    assert {tuple(field.shape) for field in g} == {(2,)}
    assert torch.equal(g.gamma[0], g.gamma[1]) and torch.equal(g.vega[0], g.vega[1])


def test_mixed_precision_tensors_promote_and_mismatched_shapes_are_named():
    # the first tensor's float32 rounded a float64 strike; mismatched shapes gave torch's
    # "size of tensor a (3) must match" without saying which inputs
    price = bs.price(spot=torch.tensor([100.0], dtype=torch.float32),
                     strike=torch.tensor([100.0 + 1e-9], dtype=torch.float64), maturity=1.0,
                     volatility=0.2)  # fmt: skip
    assert price.dtype == torch.float64
    with pytest.raises(
        ValueError, match=r"do not broadcast: spot \(\), strike \(3,\), maturity \(2,\)"
    ):
        bs.price(spot=100.0, strike=[90.0, 100.0, 110.0], maturity=[1.0, 2.0], volatility=0.2)


@pytest.mark.parametrize("field", ["forward", "strike", "maturity", "discount"])
def test_implied_vol_of_an_infinite_input_is_invalid(field):
    # an infinite forward gave NaN with status 0 ("ok"), an infinite strike a vol of 0 with
    # status 0, an infinite maturity or discount "price below intrinsic value"
    args = {"price": 5.0, "forward": 100.0, "strike": 80.0, "maturity": 1.0, "discount": 1.0}
    vol, status = bs.implied_vol_with_status(**{**args, field: math.inf})
    assert math.isnan(float(vol)) and bs.IV_STATUS[int(status)].startswith("invalid input")


def test_implied_vol_broadcasts_flags_with_more_elements_than_the_prices():
    # a scalar price with a call and a put flag raised torch's "output with shape [1] doesn't
    # match the broadcast shape [2]" from inside the solver
    price = bs.black_price(forward=100.0, strike=100.0, maturity=1.0, volatility=0.2)
    vol, status = bs.implied_vol_with_status(price=price, forward=100.0, strike=100.0,
                                             maturity=1.0, is_call=[True, False])  # fmt: skip
    assert status.tolist() == [0, 0]
    torch.testing.assert_close(vol, torch.full((2,), 0.2, dtype=torch.float64), rtol=1e-12,
                               atol=0.0)  # fmt: skip


@pytest.mark.parametrize("scale", [1e-300, 1e302])
def test_price_and_implied_vol_do_not_overflow_forward_times_strike(scale):
    # sqrt(F K) was formed as sqrt(F * K): 0 or inf at these scales (price 0 or inf, vol 0 or
    # status 2); at the money the price is F (2 N(sigma sqrt(T) / 2) - 1)
    price = bs.black_price(forward=scale, strike=scale, maturity=1.0, volatility=0.3)
    assert float(price) == pytest.approx(scale * math.erf(0.15 / math.sqrt(2.0)), rel=1e-14)
    vol, status = bs.implied_vol_with_status(price=price, forward=scale, strike=scale,
                                             maturity=1.0)  # fmt: skip
    assert int(status) == 0 and float(vol) == pytest.approx(0.3, rel=1e-12)


def test_implied_vol_of_float32_inputs_is_solved_in_float64():
    # float32: the normalised price of this deep out-of-the-money call (7.6e-44, a float32
    # subnormal, over sqrt(F K) = 200) underflowed to 0, and the vol came out 0 with status 0
    f32 = torch.float32
    forward, strike = torch.tensor(100.0, dtype=f32), torch.tensor([400.0, 110.0], dtype=f32)
    price = bs.black_price(forward=forward.double(), strike=strike.double(), maturity=1.0,
                           volatility=0.1).to(f32)  # fmt: skip
    vol, status = bs.implied_vol_with_status(price=price, forward=forward, strike=strike,
                                             maturity=torch.tensor(1.0, dtype=f32))  # fmt: skip
    assert vol.dtype == f32 and status.tolist() == [0, 0]
    # the vol of the float32-rounded price, to float32's rounding; 0.1 within the price's rounding
    exact = bs.black_implied_vol(price=price.double(), forward=100.0, strike=strike.double(),
                                 maturity=1.0)  # fmt: skip
    torch.testing.assert_close(vol.double(), exact, rtol=1e-7, atol=0.0)
    torch.testing.assert_close(vol, torch.full((2,), 0.1, dtype=f32), rtol=1e-5, atol=0.0)


def test_float32_discounted_intrinsic_prices_are_not_below_intrinsic():
    # the float64 solve must still allow the float32 rounding of D * (F - K): with float64's
    # slack a quarter of these were "price below intrinsic value"
    gen = torch.Generator().manual_seed(0)
    forward, strike = (50.0 + 100.0 * torch.rand(2, 500, generator=gen)).float()
    discount = (0.5 + 0.5 * torch.rand(500, generator=gen)).float()
    price = bs.black_price(forward=forward, strike=strike, maturity=1.0, volatility=0.0,
                           discount=discount)  # fmt: skip
    iv, status = bs.implied_vol_with_status(price=price, forward=forward, strike=strike,
                                            maturity=1.0, discount=discount)  # fmt: skip
    assert price.dtype == torch.float32 and bool((status == 0).all()) and bool((iv == 0).all())


def test_implied_vol_compile_must_be_a_bool():
    # compile="no" would be truthy and compile
    with pytest.raises(ValueError, match="compile must be True or False"):
        bs.black_implied_vol(price=8.0, forward=100.0, strike=100.0, maturity=1.0, compile="no")


@pytest.mark.parametrize("total_vol", [1e-8, 1e-6, 1e-4, 1e-3])
def test_near_money_prices_greeks_and_implied_vols_at_tiny_total_vol_match_mpmath(total_vol):
    # Regression: erf(d1/sqrt2) - erf(d2/sqrt2) and ln(F/K) both lost ~log10(1/s) digits near
    # the money: prices 7e-12 off in relative terms at s = 1e-4 (5e-8 at 1e-8), autograd and
    # closed-form deltas as much (6e-9 at 1e-8), and implied vols 2e-8 off at 1e-8 from prices
    # exact to the last bit.
    rng = np.random.default_rng(31)
    forward = 100.0
    strike = forward * np.exp(rng.uniform(-1.2, 1.2, 24) * total_vol)
    is_call = rng.random(24) < 0.5
    spot = torch.full((24,), forward, dtype=torch.float64, requires_grad=True)
    vol = torch.full((24,), total_vol, dtype=torch.float64, requires_grad=True)
    p = bs.black_price(forward=spot, strike=torch.as_tensor(strike), maturity=1.0, volatility=vol,
                       is_call=torch.as_tensor(is_call))  # fmt: skip
    delta, vega = torch.autograd.grad(p.sum(), (spot, vol))
    ref = []
    with mpmath.workdps(50):
        for k, call in zip(strike, is_call, strict=True):
            f, k, s = mpmath.mpf(forward), mpmath.mpf(float(k)), mpmath.mpf(total_vol)
            d1 = mpmath.log(f / k) / s + s / 2
            price = f * mpmath.ncdf(d1) - k * mpmath.ncdf(d1 - s) - (0 if call else f - k)
            ref.append([float(price), float(mpmath.ncdf(d1)) - (0 if call else 1),
                        float(f * mpmath.npdf(d1))])  # fmt: skip
    ref = torch.tensor(ref, dtype=torch.float64)
    torch.testing.assert_close(p.detach(), ref[:, 0], rtol=1e-14, atol=0.0)
    torch.testing.assert_close(delta, ref[:, 1], rtol=1e-14, atol=0.0)
    torch.testing.assert_close(vega, ref[:, 2], rtol=1e-14, atol=0.0)
    closed = bs.greeks(spot=forward, strike=torch.as_tensor(strike), maturity=1.0,
                       volatility=total_vol, is_call=torch.as_tensor(is_call))  # fmt: skip
    torch.testing.assert_close(closed.delta, ref[:, 1], rtol=1e-14, atol=0.0)
    torch.testing.assert_close(closed.vega, ref[:, 2], rtol=1e-14, atol=0.0)
    iv = bs.black_implied_vol(price=ref[:, 0], forward=forward, strike=torch.as_tensor(strike),
                              maturity=1.0, is_call=torch.as_tensor(is_call))  # fmt: skip
    torch.testing.assert_close(iv, vol.detach(), rtol=1e-14, atol=0.0)
