"""Heston pricer: published values, QuantLib agreement, no-arbitrage properties, tiny prices, gradients."""

from __future__ import annotations

import math
import warnings

import mpmath
import numpy as np
import pytest
import torch

from pricing import black_scholes as bs
from pricing import heston
from pricing import quantlib as qlref

PARAM_BOX = {
    "v0": (0.005, 0.5),
    "kappa": (0.2, 8.0),
    "theta": (0.005, 0.5),
    "sigma": (0.05, 1.5),
    "rho": (-0.95, 0.5),
}
IV_TOL_BP = 0.01
"""Implied-vol agreement (bp) with QuantLib's adaptive reference where vega is not negligible."""
PRICE_TOL_REL_SPOT = 1e-12
"""Price agreement, relative to spot, where vega is negligible (QuantLib's own noise is ~1e-15 abs)."""
MIN_VEGA_REL_SPOT = 1e-5
"""Vega (per unit vol) counts as negligible below this fraction of spot: QuantLib's price noise of
~1e-14 spot then moves the implied vol by less than 1e-5 bp."""


def _random_cases(n: int, seed: int, t_min: float, t_max: float, z_max: float) -> dict:
    """Random parameters in PARAM_BOX, log-uniform maturities, strikes up to ``z_max`` std devs."""
    rng = np.random.default_rng(seed)
    case = {name: rng.uniform(lo, hi, n) for name, (lo, hi) in PARAM_BOX.items()}
    maturity = np.exp(rng.uniform(math.log(t_min), math.log(t_max), n))
    rate, dividend = rng.uniform(-0.01, 0.08, n), rng.uniform(0.0, 0.05, n)
    kappa_t = case["kappa"] * maturity
    variance = (
        case["theta"] * maturity
        + (case["v0"] - case["theta"]) * -np.expm1(-kappa_t) / case["kappa"]
    )
    forward = 100.0 * np.exp((rate - dividend) * maturity)
    strike = forward * np.exp(rng.uniform(-z_max, z_max, n) * np.sqrt(variance))
    is_call = rng.uniform(size=n) < 0.5
    market = dict(spot=100.0, strike=strike, maturity=maturity, rate=rate, dividend=dividend)
    return {**market, **case, "is_call": is_call}


def _ours(case: dict, **kwargs) -> np.ndarray:
    tensors = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in case.items()}
    return heston.price(**tensors, **kwargs).numpy()


def _iv(price: np.ndarray, case: dict) -> np.ndarray:
    keys = ("spot", "strike", "maturity", "rate", "dividend", "is_call")
    inputs = {k: torch.as_tensor(case[k]) for k in keys}
    return bs.implied_vol(price=torch.as_tensor(price), **inputs).numpy()


def _vega(vol: np.ndarray, case: dict) -> np.ndarray:
    """Black-Scholes vega per unit vol at ``vol``."""
    t = case["maturity"]
    total = vol * np.sqrt(t)
    forward = 100.0 * np.exp((case["rate"] - case["dividend"]) * t)
    d1 = np.log(forward / case["strike"]) / total + 0.5 * total
    density = np.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi)
    return 100.0 * np.exp(-case["dividend"] * t) * density * np.sqrt(t)


def _assert_agrees_with_quantlib(case: dict, ours: np.ndarray, reference: np.ndarray) -> None:
    iv_ours, iv_ref = _iv(ours, case), _iv(reference, case)
    vega_ok = np.isfinite(iv_ref) & (_vega(iv_ref, case) / 100.0 > MIN_VEGA_REL_SPOT)
    assert vega_ok.mean() > 0.8, "too few cases with non-negligible vega to be a test"
    error_bp = np.abs(iv_ours - iv_ref)[vega_ok] * 1e4
    assert error_bp.max() <= IV_TOL_BP, f"max implied-vol error {error_bp.max():.2e} bp"
    price_error = np.abs(ours - reference)[~vega_ok] / 100.0
    np.testing.assert_allclose(price_error, 0.0, rtol=0, atol=PRICE_TOL_REL_SPOT)


def test_prices_match_published_reference_values(reference_table):
    table = reference_table("heston_european_prices.csv")
    for row in table.itertuples():
        value = heston.price(
            spot=row.spot,
            strike=row.strike,
            maturity=row.maturity_years,
            rate=row.rate,
            dividend=row.dividend_yield,
            params=heston.HestonParams(row.v0, row.kappa, row.theta, row.sigma, row.rho),
            is_call=row.option_type == "call",
        )
        assert float(value) == pytest.approx(row.expected_price, abs=row.tolerance_abs), row.case_id


def test_lewis_fifty_digit_values_to_1e_9():
    """Lewis' puts (exact to 1e-15 in the CSV) at a tolerance far below the CSV's 1e-6."""
    strikes = np.array([80.0, 90.0, 100.0, 110.0, 120.0])
    puts = [
        7.958878113256768,
        12.017966707346305,
        17.05527096127011,
        23.0178258984428,
        29.811026202682473,
    ]
    value = heston.price(
        spot=100.0,
        strike=torch.tensor(strikes),
        maturity=1.0,
        rate=0.01,
        dividend=0.02,
        v0=0.04,
        kappa=4.0,
        theta=0.25,
        sigma=1.0,
        rho=-0.5,
        is_call=False,
    )
    np.testing.assert_allclose(value.numpy(), puts, rtol=0, atol=1e-9)


def test_agrees_with_quantlib_reference_on_random_cases():
    case = _random_cases(1000, seed=11, t_min=1 / 365, t_max=10.0, z_max=5.0)
    reference = qlref.heston_price(engine="reference", **case)
    _assert_agrees_with_quantlib(case, _ours(case), reference)


def test_agrees_with_quantlib_on_one_day_and_ten_year_maturities():
    for maturity in (1 / 365, 10.0):
        case = _random_cases(100, seed=12, t_min=maturity, t_max=maturity, z_max=4.0)
        reference = qlref.heston_price(engine="reference", **case)
        _assert_agrees_with_quantlib(case, _ours(case), reference)


def test_put_call_parity():
    case = _random_cases(500, seed=13, t_min=1 / 365, t_max=10.0, z_max=6.0)
    calls, puts = _ours({**case, "is_call": True}), _ours({**case, "is_call": False})
    forward = 100.0 * np.exp((case["rate"] - case["dividend"]) * case["maturity"])
    parity = np.exp(-case["rate"] * case["maturity"]) * (forward - case["strike"])
    np.testing.assert_allclose(calls - puts, parity, rtol=0, atol=1e-12 * 100.0)


def test_prices_within_no_arbitrage_bounds():
    case = _random_cases(500, seed=14, t_min=1 / 365, t_max=10.0, z_max=6.0)
    discount = np.exp(-case["rate"] * case["maturity"])
    forward = 100.0 * np.exp((case["rate"] - case["dividend"]) * case["maturity"])
    calls, puts = _ours({**case, "is_call": True}), _ours({**case, "is_call": False})
    slack = 1e-12 * 100.0
    assert np.all(calls >= np.maximum(discount * (forward - case["strike"]), 0.0) - slack)
    assert np.all(calls <= discount * forward + slack)
    assert np.all(puts >= np.maximum(discount * (case["strike"] - forward), 0.0) - slack)
    assert np.all(puts <= discount * case["strike"] + slack)


@pytest.mark.parametrize("maturity", [1 / 365, 0.25, 10.0])
def test_call_prices_decrease_and_are_convex_in_strike(maturity):
    strikes = torch.exp(torch.linspace(-1.5, 1.5, 301, dtype=torch.float64)) * 100.0
    params = heston.HestonParams(
        v0=torch.tensor([[0.04], [0.3], [0.01]]),
        kappa=torch.tensor([[1.5], [4.0], [0.3]]),
        theta=torch.tensor([[0.04], [0.1], [0.2]]),
        sigma=torch.tensor([[0.5], [1.4], [0.1]]),
        rho=torch.tensor([[-0.7], [0.4], [-0.1]]),
    )
    calls = heston.price(spot=100.0, strike=strikes[None, :], maturity=maturity, params=params)
    assert calls.shape == (3, 301)
    slope = torch.diff(calls, dim=1) / torch.diff(strikes)
    tol = 1e-12  # price units per unit strike: float64 round-off only
    assert torch.all(slope <= tol)
    assert torch.all(torch.diff(slope, dim=1) >= -tol)


def test_tiny_prices_are_positive_and_match_quantlib_control_variate_engine():
    """Deep OTM, 1 to 7 days: relative agreement where QuantLib resolves the price (> 1e-10)."""
    rng = np.random.default_rng(15)
    case = _random_cases(60, seed=15, t_min=1 / 365, t_max=7 / 365, z_max=1.0)
    z = rng.uniform(4.5, 8.0, 60) * np.where(case["is_call"], 1.0, -1.0)
    case["strike"] = 100.0 * np.exp(z * np.sqrt(case["v0"] * case["maturity"]))
    ours = _ours(case)
    assert np.all(ours > 0.0)
    reference = qlref.heston_price(engine="reference_cv", **case)
    resolved = reference > 1e-10
    assert resolved.sum() >= 10
    np.testing.assert_allclose(ours[resolved], reference[resolved], rtol=1e-4, atol=0)


def _mp_lewis_call(forward: float, strike: float, maturity: float, *params: float) -> mpmath.mpf:
    """Lewis' call price in 36-digit arithmetic with the little-trap characteristic function."""
    with mpmath.workdps(36):
        v0, kappa, theta, sigma, rho = (mpmath.mpf(p) for p in params)
        f, k, t = mpmath.mpf(forward), mpmath.mpf(strike), mpmath.mpf(maturity)

        def cf(u):
            beta = kappa - rho * sigma * 1j * u
            d = mpmath.sqrt(beta**2 + sigma**2 * (u * u + 1j * u))
            g, e = (beta - d) / (beta + d), mpmath.exp(-d * t)
            c = kappa * theta / sigma**2 * ((beta - d) * t - 2 * mpmath.log((1 - g * e) / (1 - g)))
            return mpmath.exp(c + v0 * (beta - d) / sigma**2 * (1 - e) / (1 - g * e))

        x = mpmath.log(f / k)
        integral = mpmath.quad(
            lambda u: mpmath.re(mpmath.exp(1j * u * x) * cf(u - 0.5j)) / (u * u + 0.25),
            [*mpmath.linspace(0, 2000, 41), mpmath.inf],
        )
        return f - mpmath.sqrt(f * k) / mpmath.pi * integral


@pytest.mark.parametrize(
    "strike, maturity, params",
    [(108.0, 1 / 365, (0.04, 1.5, 0.04, 0.5, -0.7)), (80.0, 2 / 365, (0.09, 2.0, 0.06, 0.9, -0.8))],
)
def test_tiny_prices_match_high_precision_lewis_integral(strike, maturity, params):
    call = _mp_lewis_call(100.0, strike, maturity, *params)
    expected = float(call if strike > 100.0 else call - (100.0 - strike))
    value = heston.price(
        forward=100.0,
        strike=strike,
        maturity=maturity,
        is_call=strike > 100.0,
        params=heston.HestonParams(*params),
    )
    assert expected < 1e-12
    assert float(value) == pytest.approx(expected, rel=1e-8)


WIDE_BOX_PRICE_ATOL = 1e-12
"""Price agreement (forward 1) with the wide-box mpmath values: ours is within 1e-15 of them."""


@pytest.mark.parametrize("file", ["heston_wide_box_mpmath.csv", "heston_in_box_mpmath.csv"])
def test_prices_match_40_digit_lewis_integrals(reference_table, file):
    # Wide box: random options where QuantLib 1.44's AnalyticHestonEngine missed by 0.6-65 bp of
    # vol: adaptive Gauss-Lobatto (engine="reference" and "reference_cv"; kappa 11-20, sigma
    # 0.056-0.19, v0 0.036-0.93, 1.9-15 years), Gauss-Laguerre of order 144, QuantLib's default
    # (sigma 2.1, rho -0.996, 9.4 years; 2-3 day options) or 192 on the angled contour (1-2 days).
    # In the box: options whose integrand decays slowly across the core panel, where the default
    # nodes were off by 0.26-5.9 bp of vol (pricing.heston.SLOW_DECAY). A 40-digit Lewis integral
    # settles each (the CSVs' notes give QuantLib's vols or our earlier errors).
    table = reference_table(file)
    is_call = torch.tensor((table["option_type"] == "call").to_numpy())
    columns = ("forward", "discount", "strike", "maturity_years", "v0", "kappa", "theta", "sigma",
               "rho")  # fmt: skip
    forward, discount, strike, maturity, *model = (
        torch.tensor(table[c].to_numpy()) for c in columns
    )
    market = dict(forward=forward, discount=discount, strike=strike, maturity=maturity,
                  is_call=is_call)  # fmt: skip
    value = heston.price(**market, params=heston.HestonParams(*model))
    np.testing.assert_allclose(value.numpy(), table["expected_price"], rtol=0,
                               atol=WIDE_BOX_PRICE_ATOL)  # fmt: skip
    vol = bs.black_implied_vol(price=value, **market)
    np.testing.assert_allclose(vol.numpy(), table["expected_implied_vol"], rtol=0,
                               atol=IV_TOL_BP * 1e-4)  # fmt: skip


def test_outside_the_validated_box_the_default_nodes_widen():
    # Vol of vol 3 in the far put wing: the box's 32/24 nodes gave 6.7e-4, 150% off.
    params = (0.04, 2.0, 0.04, 3.0, -0.7)
    call = _mp_lewis_call(1.0, math.exp(-2.0), 1.0, *params)
    expected = float(call - (1.0 - math.exp(-2.0)))
    value = heston.price(forward=1.0, strike=math.exp(-2.0), maturity=1.0, is_call=False,
                         params=heston.HestonParams(*params))  # fmt: skip
    assert float(value) == pytest.approx(expected, rel=1e-6)


ATM_TINY_VARIANCE_RTOL = 1e-6
"""Agreement with QuantLib's adaptive reference at the money, tiny variance, large vol of vol."""


@pytest.mark.parametrize("strike", [100.0, 100.001])
def test_at_the_money_tiny_variance_large_vol_of_vol_matches_quantlib(strike):
    # v0 = theta 1e-8 to 1e-5, vol of vol 0.5-2, kappa 10: past the core the integrand decays
    # like 1 / z^2 for decades (rate ~1e-4 over the core's length), which the Gauss-Laguerre tail
    # missed, unchanged as the nodes doubled: 5.96e-3 for 5.09e-3, 0.111 for 6.4e-4, -9.5e-5
    # for 2.9e-4, -3.0e-4 for 1.1e-5 (strikes 3% away were right). Monte Carlo (QE) converges
    # to QuantLib's values.
    case = {
        "v0": np.array([1e-5, 1e-6, 1e-6, 1e-6, 1e-6, 1e-7, 1e-8]),
        "sigma": np.array([2.0, 2.0, 2.0, 2.0, 0.5, 2.0, 0.5]),
        "rho": np.array([0.0, 0.0, -0.95, -0.95, 0.95, -0.95, -0.95]),
        "maturity": np.array([0.25, 0.25, 0.25, 0.011, 0.25, 0.011, 0.011]),
    }
    case = {**case, "theta": case["v0"], "kappa": 10.0, "spot": 100.0, "strike": strike}
    reference = qlref.heston_price(engine="reference", **case)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # settled, not flagged as still moving
        value = _ours(case)
    np.testing.assert_allclose(value, reference, rtol=ATM_TINY_VARIANCE_RTOL, atol=0)


def test_far_outside_the_box_the_nodes_refine_until_the_price_settles():
    # Vol of vol 2.25-4.9 with strong positive rho: the wide nodes alone were off by 113 bp
    # (20 years), 1.1 bp (11 days) and 0.39 bp; a 30-digit Lewis integral agrees with QuantLib.
    case = {
        "v0": np.array([0.0134, 0.0007, 0.0017]),
        "kappa": np.array([0.02, 0.001, 1.6]),
        "theta": np.array([0.0015, 0.27, 0.0002]),
        "sigma": np.array([2.25, 4.9, 4.4]),
        "rho": np.array([0.944, 0.985, 0.967]),
        "maturity": np.array([20.0, 11 / 365, 1.7]),
        "strike": np.array([585.0, 100.0, 117.0]),
        "is_call": np.array([False, False, True]),
        "spot": 100.0,
        "rate": np.zeros(3),
        "dividend": np.zeros(3),
    }
    reference = qlref.heston_price(engine="reference_cv", **case)
    error_bp = np.abs(_iv(_ours(case), case) - _iv(reference, case)) * 1e4
    assert error_bp.max() <= IV_TOL_BP, error_bp


NEAR_ZERO_VARIANCE_PUT = dict(forward=1.0, strike=0.41, maturity=0.69, is_call=False, v0=3e-6,
                              kappa=2.5e-4, theta=0.16, sigma=3.6, rho=-0.2)  # fmt: skip
"""v0 and kappa near 0, vol of vol 3.6: Lewis' line with a core panel of thousands of widths."""


def test_near_zero_variance_prices_refine_past_512_core_nodes():
    # 512 core nodes, the last refinement, gave -4.3e-5 for 5.375e-7 (QuantLib's adaptive and
    # angled-contour engines: 5.3753433538e-7); 8192 core nodes agree with the default to 2e-10.
    value = float(heston.price(**NEAR_ZERO_VARIANCE_PUT))
    converged = float(heston.price(**NEAR_ZERO_VARIANCE_PUT, core_nodes=8192, tail_nodes=360))
    assert value > 0 and value == pytest.approx(converged, rel=1e-8)


def test_prices_still_moving_at_the_last_refinement_are_warned_of(monkeypatch):
    # those prices were returned as if settled, up to 100 times off or negative
    monkeypatch.setattr(heston, "REFINED_NODES", ((128, 96),))
    with pytest.warns(RuntimeWarning, match=r"1 Heston price\(s\) still moved"):
        heston.price(**NEAR_ZERO_VARIANCE_PUT)


@pytest.mark.parametrize(("log_strike", "maturity"), [(0.01, 1 / 365), (-0.05, 1 / 365),
                                                      (0.05, 7 / 365)])  # fmt: skip
def test_zero_initial_variance_prices_converge_and_stay_positive(log_strike, maturity):
    # v0 = 0 over a day or a week: the box's nodes gave a negative price (-3.9e-23 for 3.5e-26)
    # or were 1e5 times (or 1%) off; the defaults must equal a run with many more nodes.
    kwargs = dict(forward=1.0, strike=math.exp(log_strike), maturity=maturity, v0=0.0, kappa=1.5,
                  theta=0.04, sigma=0.5, rho=-0.7, is_call=log_strike > 0)  # fmt: skip
    value = float(heston.price(**kwargs))
    converged = float(heston.price(**kwargs, core_nodes=256, tail_nodes=192))
    assert value > 0 and value == pytest.approx(converged, rel=1e-7)


def test_many_tail_nodes_stay_finite():
    # Gauss-Laguerre weights w e^x overflowed past ~180 nodes (inf, then NaN prices).
    kwargs = dict(forward=1.0, strike=1.0, maturity=1.0, v0=0.04, kappa=1.5, theta=0.04,
                  sigma=0.5, rho=-0.7)  # fmt: skip
    reference = heston.price(**kwargs)
    for nodes in (186, 192, 300):
        assert float(heston.price(**kwargs, tail_nodes=nodes)) == pytest.approx(float(reference),
                                                                                rel=1e-12)  # fmt: skip


def test_many_tail_nodes_stay_finite_beside_options_with_the_control_variate():
    # A 3-day wing at rho = -0.999 (no control variate) priced in one pass with an option on
    # Lewis' line (control on): the control's term was multiplied by 0 for the first, and its
    # exp(phase) overflowed at the far tail nodes, 0 * inf = NaN, from 128 tail nodes on.
    off = dict(strike=105.36021994887079, maturity=0.009404603146284708, v0=0.0236352100978366,
               kappa=0.14756869259666686, theta=0.0013483476028979956, sigma=0.3109016449029692,
               rho=-0.999)  # fmt: skip
    on = dict(strike=94.40895772773247, maturity=0.11753985329514721, v0=0.04847720917178101,
              kappa=0.1397467552663159, theta=0.009395692133123601, sigma=2.7483651838740597,
              rho=-0.999)  # fmt: skip
    both = {name: torch.tensor([off[name], on[name]], dtype=torch.float64) for name in off}
    for nodes in (128, 192, 256, heston.MAX_TAIL_NODES):
        together = heston.price(spot=100.0, **both, core_nodes=64, tail_nodes=nodes)
        alone = [float(heston.price(spot=100.0, **o, core_nodes=64, tail_nodes=nodes))
                 for o in (off, on)]  # fmt: skip
        assert torch.isfinite(together).all(), nodes
        np.testing.assert_allclose(together.numpy(), alone, rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize(("field", "value"), [("core_nodes", 0), ("core_nodes", 2.5),
                                              ("tail_nodes", -3), ("tail_nodes", 400),
                                              ("tail_nodes", True)])  # fmt: skip
def test_bad_node_counts_name_the_argument(field, value):
    # 0 core nodes silently became the default; 400 tail nodes gave NaN (scipy's Laguerre roots).
    with pytest.raises(ValueError, match=field):
        heston.price(forward=1.0, strike=1.0, maturity=1.0, v0=0.04, kappa=1.5, theta=0.04,
                     sigma=0.5, rho=-0.7, **{field: value})  # fmt: skip


def test_gradients_match_finite_differences():
    inputs = [
        torch.tensor([0.04, 0.2, 0.01], dtype=torch.float64, requires_grad=True),  # v0
        torch.tensor([1.5, 5.0, 0.5], dtype=torch.float64, requires_grad=True),  # kappa
        torch.tensor([0.04, 0.1, 0.3], dtype=torch.float64, requires_grad=True),  # theta
        torch.tensor([0.5, 1.2, 0.2], dtype=torch.float64, requires_grad=True),  # sigma
        torch.tensor([-0.7, 0.3, -0.2], dtype=torch.float64, requires_grad=True),  # rho
        torch.tensor([90.0, 120.0, 100.0], dtype=torch.float64, requires_grad=True),  # strike
    ]
    maturity = torch.tensor([0.5, 2.0, 7 / 365], dtype=torch.float64)

    def f(v0, kappa, theta, sigma, rho, strike):
        return heston.price(
            spot=100.0,
            strike=strike,
            maturity=maturity,
            v0=v0,
            kappa=kappa,
            theta=theta,
            sigma=sigma,
            rho=rho,
            rate=0.02,
            is_call=False,
        )

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_delta_matches_central_difference():
    kwargs = dict(
        strike=torch.tensor([70.0, 100.0, 130.0]),
        maturity=0.5,
        rate=0.03,
        dividend=0.01,
        v0=0.05,
        kappa=2.0,
        theta=0.06,
        sigma=0.7,
        rho=-0.6,
    )
    bump = 1e-3
    up = heston.price(spot=100.0 + bump, **kwargs)
    down = heston.price(spot=100.0 - bump, **kwargs)
    expected = (up - down) / (2 * bump)
    torch.testing.assert_close(heston.delta(spot=100.0, **kwargs), expected, rtol=1e-6, atol=1e-8)
    put_delta = heston.delta(spot=100.0, is_call=False, **kwargs)
    torch.testing.assert_close(put_delta, expected - math.exp(-0.01 * 0.5), rtol=1e-6, atol=1e-8)


def test_delta_is_the_same_under_inference_mode():
    # its spot leaf was an inference tensor there: "element 0 of tensors does not require grad"
    kwargs = dict(strike=torch.tensor([70.0, 100.0, 130.0]), maturity=0.5, v0=0.05, kappa=2.0,
                  theta=0.06, sigma=0.7, rho=-0.6)  # fmt: skip
    expected = heston.delta(spot=100.0, **kwargs)
    with torch.inference_mode():
        got = heston.delta(spot=100.0, **kwargs)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_delta_takes_tensors_made_under_inference_mode():
    # a strike (or spot, or params' field) made inside the block is an inference tensor, which
    # autograd refused to save: "Inference tensors cannot be saved for backward"
    # (float64: a float32 tensor was converted, and the copy was an ordinary tensor)
    fields = dict(kappa=2.0, theta=0.06, sigma=0.7, rho=-0.6)
    expected = heston.delta(spot=[100.0, 105.0, 110.0], strike=[70.0, 100.0, 130.0],
                            maturity=0.5, v0=0.05, **fields)  # fmt: skip
    with torch.inference_mode():
        spot = torch.tensor([100.0, 105.0, 110.0], dtype=torch.float64)
        strike = torch.tensor([70.0, 100.0, 130.0], dtype=torch.float64)
        v0 = torch.tensor(0.05, dtype=torch.float64)
        params = heston.HestonParams(v0=v0, **fields)
        inside = heston.delta(spot=spot, strike=strike, maturity=spot * 0 + 0.5, v0=v0,
                              **fields)  # fmt: skip
        with_params = heston.delta(spot=spot, strike=strike, maturity=0.5, params=params)
    outside = heston.delta(spot=spot, strike=strike, maturity=0.5, v0=0.05, **fields)
    for got in (inside, with_params, outside):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("maturity", [0.5, 2.0, 30.0])
@pytest.mark.parametrize("is_call", [True, False])
def test_delta_exactly_at_the_forward_matches_central_difference(maturity, is_call):
    # K = F exactly: the OTM side switches there, and abs(k)'s zero gradient made delta 0.5 off.
    kwargs = dict(strike=100.0, maturity=maturity, v0=0.04, kappa=1.5, theta=0.04, sigma=0.5,
                  rho=-0.7, is_call=is_call)  # fmt: skip
    bump = 1e-4
    expected = (heston.price(spot=100.0 + bump, **kwargs) - heston.price(spot=100.0 - bump, **kwargs)
                ) / (2 * bump)  # fmt: skip
    torch.testing.assert_close(heston.delta(spot=100.0, **kwargs), expected, rtol=1e-6, atol=1e-8)


def test_parameter_block_broadcasts_against_strikes():
    v0 = torch.tensor([[0.04], [0.09]])
    strikes = torch.tensor([[80.0, 100.0, 125.0]])
    common = dict(spot=100.0, maturity=1.0, kappa=2.0, theta=0.05, sigma=0.6, rho=-0.5)
    block = heston.price(strike=strikes, v0=v0, **common)
    assert block.shape == (2, 3) and block.dtype == torch.float64
    for i in range(2):
        for j in range(3):
            single = heston.price(strike=float(strikes[0, j]), v0=float(v0[i, 0]), **common)
            torch.testing.assert_close(block[i, j], single, rtol=1e-13, atol=0.0)


def test_forward_discount_inputs_equal_spot_rate_dividend_inputs():
    params = heston.HestonParams(v0=0.04, kappa=1.5, theta=0.05, sigma=0.6, rho=-0.6)
    strike, maturity, rate, dividend = torch.tensor([80.0, 105.0]), 2.0, 0.03, 0.01
    from_spot = heston.price(
        spot=100.0, strike=strike, maturity=maturity, rate=rate, dividend=dividend, params=params
    )
    forward = 100.0 * math.exp((rate - dividend) * maturity)
    from_forward = heston.price(
        forward=forward,
        discount=math.exp(-rate * maturity),
        strike=strike,
        maturity=maturity,
        params=params,
    )
    torch.testing.assert_close(from_forward, from_spot, rtol=1e-13, atol=0.0)


def test_runs_on_device_and_matches_cpu(device):
    kwargs = dict(
        strike=[60.0, 100.0, 160.0],
        maturity=[0.01, 1.0, 5.0],
        v0=0.04,
        kappa=1.5,
        theta=0.04,
        sigma=0.8,
        rho=-0.7,
    )
    on_device = heston.price(spot=torch.tensor(100.0, dtype=torch.float64, device=device), **kwargs)
    assert on_device.device.type == device.type
    torch.testing.assert_close(
        on_device.cpu(), heston.price(spot=100.0, **kwargs), rtol=1e-12, atol=0.0
    )


def test_characteristic_function_is_a_martingale_cf_and_matches_original_heston_form():
    kwargs = dict(maturity=0.7, v0=0.05, kappa=2.0, theta=0.06, sigma=0.4, rho=-0.5)
    u = torch.tensor([0.0, -1j, 0.3, 1.7 - 0.5j, 4.0], dtype=torch.complex128)
    phi = heston.characteristic_function(u, **kwargs)
    torch.testing.assert_close(phi[:2], torch.ones(2, dtype=torch.complex128), rtol=0, atol=1e-14)
    # Heston's original (1993) form: fine for these mild parameters, where no branch cut is crossed.
    t, v0, kappa, theta, sigma, rho = kwargs.values()
    w = u.numpy()[2:]
    d = np.sqrt((rho * sigma * 1j * w - kappa) ** 2 + sigma**2 * (1j * w + w * w))
    g = (kappa - rho * sigma * 1j * w + d) / (kappa - rho * sigma * 1j * w - d)
    e = np.exp(d * t)
    c = (
        kappa
        * theta
        / sigma**2
        * ((kappa - rho * sigma * 1j * w + d) * t - 2 * np.log((1 - g * e) / (1 - g)))
    )
    dd = (kappa - rho * sigma * 1j * w + d) / sigma**2 * (1 - e) / (1 - g * e)
    expected = np.exp(c + dd * v0)  # the original form is 0/0 at u = 0 and u = -i
    np.testing.assert_allclose(phi[2:].numpy(), expected, rtol=1e-12, atol=1e-14)


def test_characteristic_function_is_finite_where_d_vanishes():
    # At u = -2i, d^2 = (kappa - 2 rho sigma)^2 - 2 sigma^2 is exactly 0 for these parameters: the
    # 1e-300 nudge of d in (exp(-d T) - 1) / (2 d) was squared to 0 in the complex division, and
    # csqrt(0) was 0 / 0, so E[(S_T / F)^2] came out NaN instead of its limit (continuous in kappa)
    sigma, rho = 0.6, 0.9
    kappa = 2.0 * rho * sigma - sigma * math.sqrt(2.0)
    assert (kappa - 2.0 * rho * sigma) ** 2 - 2.0 * sigma**2 == 0.0
    kwargs = dict(maturity=1.0, v0=0.04, theta=0.04, sigma=sigma, rho=rho)
    u = torch.tensor([-2j], dtype=torch.complex128)
    at_zero = heston.characteristic_function(u, kappa=kappa, **kwargs)
    nearby = heston.characteristic_function(u, kappa=kappa * (1.0 + 1e-12), **kwargs)
    torch.testing.assert_close(at_zero, nearby, rtol=1e-9, atol=0.0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("strike", 0.0),
        ("strike", float("nan")),
        ("maturity", -1.0),
        ("spot", 0.0),
        ("rho", 1.0),
        ("sigma", 0.0),
        ("v0", -0.01),
        ("kappa", float("inf")),
    ],
)
def test_bad_input_raises_error_naming_the_field(field, value):
    kwargs = dict(
        spot=100.0, strike=100.0, maturity=1.0, v0=0.04, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7
    )
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        heston.price(**kwargs)


def test_far_wing_short_dated_prices_are_never_negative() -> None:
    # 3 days, strikes 1.6 to 2 times the spot: quadrature rounding gave -5e-151, which a quote
    # table of these prices then failed ("price must be >= 0")
    strike = torch.linspace(160.0, 200.0, 5, dtype=torch.float64)
    kw = dict(spot=100.0, strike=strike, maturity=3 / 365, v0=0.04, kappa=1.5, theta=0.05,
              sigma=0.6, rho=-0.7)  # fmt: skip
    assert bool((heston.price(**kw) >= 0).all())
    assert bool((heston.price(**kw, is_call=False) >= strike - 100.0).all())


def test_far_call_wing_prices_below_the_default_nodes_accuracy_are_repriced_not_negative() -> None:
    # 12 standard deviations into the call wing of negatively correlated in-box parameters,
    # the box's 32/24 nodes gave -2.0e-9, -3.3e-12 and -1.4e-11 (F = 100) for prices of
    # 1.4e-11, 2.9e-16 and 1.7e-16: puts below their intrinsic value by as much
    case = {
        "strike": [3450.7631699881254, 389.64319008316284, 1011.9232535205434],
        "maturity": [5.5848572518518855, 0.1788597545573377, 2.2632772266214993],
        "v0": [0.015659805974533106, 0.005674155850485843, 0.026811599959350133],
        "kappa": [0.25913227729910404, 0.5631346538386863, 2.4857730560350624],
        "theta": [0.005318413148030087, 0.0823154423521725, 0.0064964215110401595],
        "sigma": [0.8344311152545779, 0.9851107114941025, 1.4196352396008727],
        "rho": [-0.8664631035901423, -0.4488522190082602, -0.8415839941532638],
    }
    case = {k: torch.tensor(v, dtype=torch.float64) for k, v in case.items()}
    case.update(forward=100.0, discount=0.97)
    call = heston.price(**case)
    converged = heston.price(**case, core_nodes=256, tail_nodes=192)
    assert bool((call > 0).all()), call
    torch.testing.assert_close(call, converged, rtol=1e-6, atol=0.0)
    put = heston.price(**case, is_call=False)
    assert bool((put >= 0.97 * (case["strike"] - 100.0)).all())


@pytest.mark.parametrize(("rate", "dividend", "field"), [(50.0, 0.0, "rate - dividend"),
                                                         (-30.0, -30.0, "rate")])  # fmt: skip
def test_an_overflowing_carry_or_discount_is_named_not_a_nan_price(rate, dividend, field):
    # 30 years at rate 50: forward = 100 e^1500 = inf, and the price was a silent NaN
    with pytest.raises(ValueError, match=f"{field} must be"):
        heston.price(spot=100.0, strike=100.0, maturity=30.0, rate=rate, dividend=dividend,
                     v0=0.04, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7)  # fmt: skip


def test_params_validate_elementwise_and_name_the_index():
    with pytest.raises(ValueError, match=r"theta.*index 1"):
        heston.HestonParams(
            v0=0.04, kappa=1.0, theta=torch.tensor([0.04, -0.1]), sigma=0.5, rho=0.0
        )


def test_model_and_market_given_twice_or_missing_are_rejected():
    with pytest.raises(ValueError, match="missing"):
        heston.price(spot=100.0, strike=100.0, maturity=1.0, v0=0.04)
    params = heston.HestonParams(v0=0.04, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7)
    with pytest.raises(ValueError, match="not both"):
        heston.price(spot=100.0, strike=100.0, maturity=1.0, params=params, v0=0.04)
    with pytest.raises(ValueError, match="forward"):
        heston.price(spot=100.0, forward=100.0, strike=100.0, maturity=1.0, params=params)


def test_quantlib_adapter_forward_inputs_and_table_match_spot_inputs():
    common = dict(
        strike=np.array([80.0, 120.0]),
        maturity=np.array([0.3, 2.7]),
        v0=0.05,
        kappa=2.0,
        theta=0.06,
        sigma=0.7,
        rho=-0.6,
        is_call=np.array([False, True]),
    )
    rate, dividend = 0.03, 0.01
    from_spot = qlref.heston_price(spot=100.0, rate=rate, dividend=dividend, **common)
    t = common["maturity"]
    forward, discount = 100.0 * np.exp((rate - dividend) * t), np.exp(-rate * t)
    from_forward = qlref.heston_price(forward=forward, discount=discount, **common)
    np.testing.assert_allclose(from_forward, from_spot, rtol=1e-12, atol=0.0)
    table = {
        "option_type": ["put", "C"],
        "forward": forward,
        "discount": discount,
        "strike": common["strike"],
        "maturity": t,
    }
    table.update({n: np.full(2, common[n]) for n in ("v0", "kappa", "theta", "sigma", "rho")})
    np.testing.assert_allclose(qlref.heston_price_table(table), from_spot, rtol=1e-12, atol=0.0)


def test_parameters_given_as_python_numbers_are_checked_in_float64():
    # float32 checks rounded rho = 0.99999999 to 1 and theta = 1e-50 to 0, refusing them
    params = heston.HestonParams(v0=0.04, kappa=1.5, theta=1e-50, sigma=0.5, rho=0.99999999)
    assert params.rho == 0.99999999
    with pytest.raises(ValueError, match=r"v0 must be >= 0; got -0.01 at index 1"):
        heston.HestonParams(v0=[0.04, -0.01], kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7)


@pytest.mark.parametrize(("maturity", "message"), [(math.nan, "finite"), (-1.0, ">= 0")])
def test_characteristic_function_checks_the_maturity(maturity, message):
    with pytest.raises(ValueError, match=f"maturity must be {message}"):
        heston.characteristic_function(torch.tensor([0.5]), maturity=maturity, v0=0.04,
                                       kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7)  # fmt: skip


_MARKET = dict(spot=100.0, strike=100.0, maturity=1.0)
_MODEL = dict(v0=0.04, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7)


def test_float32_results_are_the_float64_prices_rounded():
    # ordinary in-box parameters, at the money: float32 arithmetic made the saddle's
    # finite-difference curvature garbage, an infinite core panel and a silent NaN price
    # (1 in 45 sampled in-box options)
    kw = dict(forward=100.0, strike=[80.0, 100.0, 115.0], maturity=3.4875914676751374,
              v0=0.00858779840346996, kappa=4.772550671814076, theta=0.024605343655036045,
              sigma=0.26863589099678536, rho=0.10115421694024307)  # fmt: skip
    single = heston.price(**kw, dtype=torch.float32)
    assert single.dtype == torch.float32
    expected = heston.price(**kw).to(torch.float32)
    torch.testing.assert_close(single, expected, rtol=0.0, atol=0.0)


def test_float32_inputs_keep_float32_gradients():
    strike = torch.tensor([90.0, 110.0], requires_grad=True)
    value = heston.price(spot=100.0, strike=strike, maturity=1.0, dtype=torch.float32, **_MODEL)
    (grad,) = torch.autograd.grad(value.sum(), strike)
    assert grad.dtype == torch.float32 and bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16, torch.complex128])
def test_a_dtype_other_than_float32_or_float64_is_refused(dtype):
    # int64 truncated v0 = 0.04 to 0 and returned NaN; float16 failed inside torch's erfcx
    with pytest.raises(ValueError, match=r"dtype must be torch\.float32 or torch\.float64"):
        heston.price(**_MARKET, **_MODEL, dtype=dtype)


@pytest.mark.parametrize("field", ["strike", "maturity", "spot", "v0", "kappa", "rho"])
@pytest.mark.parametrize("flag", [True, np.bool_(True), torch.tensor([True, True])])
def test_a_bool_given_for_a_number_is_refused_by_name(field, flag):
    # kappa=True priced kappa = 1 and strike=True a strike of 1 (rho=True a refusal of "1.0")
    kwargs = {**_MARKET, **_MODEL, field: flag}
    with pytest.raises(ValueError, match=f"{field} must be a real number, not a bool"):
        heston.price(**kwargs)


def test_heston_params_refuse_bools_and_non_numbers_by_name():
    with pytest.raises(ValueError, match="kappa must be a real number, not a bool"):
        heston.HestonParams(v0=0.04, kappa=True, theta=0.04, sigma=0.5, rho=-0.7)
    with pytest.raises(ValueError, match=r"v0 must be a real number or array, got '0\.04'"):
        heston.HestonParams(v0="0.04", kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7)
    with pytest.raises(ValueError, match="sigma must be a real number or array, got None"):
        heston.HestonParams(v0=0.04, kappa=1.5, theta=0.04, sigma=None, rho=-0.7)


def test_heston_params_that_do_not_broadcast_are_refused_naming_the_fields():
    # accepted before, and pricing then failed naming no field
    with pytest.raises(ValueError, match=r"do not broadcast: v0 \(2,\), kappa \(3,\)"):
        heston.HestonParams(v0=[0.04, 0.05], kappa=[1.0, 2.0, 3.0], theta=0.04, sigma=0.5,
                            rho=-0.7)  # fmt: skip


def test_heston_params_compare_by_value_with_tensor_fields():
    # the generated == compared the batch elementwise and raised ("Boolean value of Tensor with
    # more than one value is ambiguous")
    v0 = torch.tensor([0.04, 0.05], dtype=torch.float64)
    params = heston.HestonParams(v0=v0, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7)
    same = heston.HestonParams(v0=v0.clone(), kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7)
    other = heston.HestonParams(v0=v0 + 0.01, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7)
    assert params == same and hash(params) == hash(same)
    assert params != other and params != heston.HestonParams(0.04, 1.5, 0.04, 0.5, -0.7)
    assert len({params, same, other}) == 2


def test_compile_must_be_a_bool():
    # compile="no" was truthy: it compiled
    with pytest.raises(ValueError, match="compile must be True or False"):
        heston.price(**_MARKET, **_MODEL, compile="no")


def test_otm_implied_vol_takes_a_list_of_ratios():
    from_list = heston.otm_implied_vol(ratio=[0.9, 1.1], maturity=1.0, **_MODEL)
    from_tensor = heston.otm_implied_vol(
        ratio=torch.tensor([0.9, 1.1], dtype=torch.float64), maturity=1.0, **_MODEL
    )
    torch.testing.assert_close(from_list, from_tensor, rtol=0.0, atol=0.0)


def test_otm_implied_vol_is_nan_where_the_otm_price_underflows_to_zero():
    # 1 day, v0 = 1e-6: the wings' prices are 0 in float64, and their vol was reported as 0
    ratio = torch.tensor([0.2, 1.0, 5.0], dtype=torch.float64)
    model = dict(_MODEL, v0=1e-6)
    otm = heston.price(forward=1.0, strike=ratio, maturity=1 / 365, is_call=ratio >= 1, **model)
    assert otm[0] == 0.0 and otm[2] == 0.0 and otm[1] > 0.0
    vols = heston.otm_implied_vol(ratio=ratio, maturity=1 / 365, **model)
    assert torch.isnan(vols[[0, 2]]).all()
    expected = bs.black_implied_vol(price=otm[1], forward=1.0, strike=1.0, maturity=1 / 365)
    torch.testing.assert_close(vols[1], expected, rtol=0.0, atol=0.0)


def test_delta_inputs_that_do_not_broadcast_raise_a_value_error_listing_shapes():
    with pytest.raises(
        ValueError, match=r"do not broadcast: strike \(3,\), maturity \(\), spot \(2,\)"
    ):
        heston.delta(spot=torch.tensor([100.0, 110.0]), strike=torch.tensor([90.0, 100.0, 110.0]),
                     maturity=1.0, **_MODEL)  # fmt: skip


def test_result_is_on_the_device_of_the_parameters_when_only_they_are_tensors(device):
    # the CPU is_call flags came first among the tensors and took a CUDA v0 to the CPU
    v0 = torch.tensor([0.04, 0.09], dtype=torch.float64, device=device)
    value = heston.price(**_MARKET, v0=v0, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7)
    assert value.device.type == device.type


@pytest.mark.parametrize("bad", [math.nan, -0.9, 0.0])
def test_otm_implied_vol_names_a_bad_ratio(bad):
    # the error named 'strike', which the caller never gave
    with pytest.raises(ValueError, match=r"^ratio must be finite and > 0"):
        heston.otm_implied_vol(ratio=[1.1, bad], maturity=1.0, **_MODEL)


def test_far_wing_of_a_tiny_skewed_variance_matches_the_control_variate_reference() -> None:
    # 30 standard deviations out at the expected variance, but the integrated variance is very
    # right-skewed (v0 << sigma^2 T): QuantLib's plain adaptive engine gives 1e-215 here, its
    # control-variate engine, a 40-digit Carr-Madan integral and Monte Carlo give 3.3e-8 (a
    # guard: a sweep against the plain engine took our price for wrong)
    model = dict(v0=1e-7, kappa=10.0, theta=1e-8, sigma=0.1, rho=0.0)
    ours = heston.price(forward=1.0, strike=1.001, maturity=0.011, **model)
    reference = qlref.heston_price(forward=1.0, strike=1.001, maturity=0.011,
                                   engine="reference_cv", **model)  # fmt: skip
    assert ours.item() == pytest.approx(float(np.ravel(reference)[0]), rel=1e-8, abs=0.0)


EDGE_OF_EXPLOSION_CASES = {
    "v0": np.array([9.122759425366239e-06, 0.018697000976890567]),
    "kappa": np.array([1.5, 1.0732492433379353]),
    "theta": np.array([0.04, 0.04]),
    "sigma": np.array([1.2759132820422725, 1.3050236551950152]),
    "rho": np.array([-0.809042536434661, -0.7314265361012291]),
    "maturity": np.array([0.013585959139982309, 30.0]),
    "strike": np.exp([-0.029312076194898826, 2.4539310785263067]),
    "is_call": np.array([False, True]),
    "forward": 1.0,
}
"""Options whose saddle search ends within its difference step of the moment explosion."""


def test_a_saddle_at_the_edge_of_moment_explosion_matches_quantlib() -> None:
    # psi fell until the moment exploded, so the grid's minimum lay within the step h of the
    # explosion: psi(alpha + h) = inf made the curvature infinite, the core 1e-149 long and the
    # prices 5.3e-141 and 2.7e-139 for QuantLib's 3.3e-6 and 2.2e-5, at any node count
    case = EDGE_OF_EXPLOSION_CASES
    ours = heston.price(**{n: torch.as_tensor(v) for n, v in case.items()}).numpy()
    reference = qlref.heston_price(engine="reference_cv", **case)
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=0.0)
