"""Shape helpers of pricing._typing: torch's broadcasting rule without torch's first-call cost."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pricing._typing import broadcast_shape, broadcast_shapes


@pytest.mark.parametrize(
    "shapes",
    [((3,), (2, 1)), ((), (4,)), ((1, 5), (5,)), ((2, 0), (1,)), ((7, 1, 3), (6, 1))],
)
def test_broadcast_shapes_is_torchs_rule(shapes):
    assert broadcast_shapes(*shapes) == torch.broadcast_shapes(*shapes)
    assert isinstance(broadcast_shapes(*shapes), torch.Size)


def test_shapes_that_do_not_broadcast_name_their_inputs():
    with pytest.raises(ValueError, match=r"\(3,\), \(4,\)"):
        broadcast_shape([torch.zeros(3), torch.zeros(4)])


def test_compiled_code_broadcasts_symbolic_shapes():
    def area(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.ones(broadcast_shapes(a.shape, b.shape))

    compiled = torch.compile(area, backend="eager", dynamic=True)
    assert compiled(torch.zeros(3), torch.zeros(2, 1)).shape == (2, 3)


def test_pricing_and_calibrating_do_not_import_sympy():
    """Eager ``torch.broadcast_shapes`` imports sympy on its first call (0.5-1.2 s, a third of a
    ``qfnet calibrate`` run): pricers and the direct calibration must not call it."""
    script = textwrap.dedent(
        """
        import sys
        import pandas as pd
        import torch
        from pricing import black_scholes, heston, sabr
        from pricing.calibration import calibrate
        from pricing.quote_cleaning import prepare_quotes
        from pricing.quotes import read_quotes

        strike = torch.tensor([80.0, 90.0, 100.0, 110.0, 120.0] * 2, dtype=torch.float64)
        maturity = torch.tensor([0.5] * 5 + [1.0] * 5, dtype=torch.float64)
        black_scholes.price(spot=100.0, strike=strike, maturity=maturity, volatility=0.2)
        sabr.lognormal_vol(forward=100.0, strike=strike, maturity=maturity, alpha=0.2, beta=1.0,
                           rho=-0.3, nu=0.5)
        premium = heston.price(spot=100.0, strike=strike, maturity=maturity, v0=0.04,
                               kappa=1.5, theta=0.05, sigma=0.5, rho=-0.7)
        iv = black_scholes.black_implied_vol(price=premium, forward=100.0, strike=strike,
                                             maturity=maturity)
        table = pd.DataFrame({"strike": strike.numpy(), "maturity": maturity.numpy(),
                              "spot": 100.0, "rate": 0.0, "implied_vol": iv.numpy()})
        quotes, _ = prepare_quotes(read_quotes(table))
        calibrate("heston", quotes, method="direct", n_scan=16, n_starts=1)
        print("sympy" in sys.modules)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=300)  # fmt: skip
    assert run.stdout.strip().splitlines()[-1] == "False", run.stderr


def _entry_points():
    """One call per public pricer (the argument it varies, and its valid keyword arguments)."""
    from pricing import (
        analytic_barrier,
        analytic_exotics,
        analytic_lookback,
        black_scholes,
        heston,
        monte_carlo,
        sabr,
        simulate,
    )

    bs = dict(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2, rate=0.01)
    hp = dict(v0=0.04, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7)
    sp = dict(forward=0.03, strike=0.03, maturity=1.0, alpha=0.2, beta=0.5, rho=-0.3, nu=0.4)
    lb = dict(spot=100.0, running_extremum=100.0, maturity=1.0, volatility=0.2)
    return [
        (black_scholes.price, "spot", bs),
        (black_scholes.greeks, "volatility", bs),
        (black_scholes.black_price, "forward", dict(bs, forward=100.0, spot=None, rate=None)),
        (black_scholes.implied_vol, "strike", dict(bs, price=8.0, volatility=None)),
        (
            black_scholes.black_implied_vol,
            "price",
            dict(price=8.0, forward=100.0, strike=100.0, maturity=1.0),
        ),
        (heston.price, "strike", dict(spot=100.0, strike=100.0, maturity=1.0, **hp)),
        (heston.delta, "maturity", dict(spot=100.0, strike=100.0, maturity=1.0, **hp)),
        (sabr.lognormal_vol, "strike", sp),
        (sabr.alpha_from_atm_vol, "atm_vol", dict(sp, strike=None, alpha=None, atm_vol=0.2)),
        (
            analytic_barrier.barrier_price,
            "barrier",
            dict(bs, barrier=90.0, barrier_type="down_out"),
        ),
        (analytic_lookback.lookback_price, "running_extremum", lb),
        (analytic_lookback.discrete_lookback_price, "volatility", dict(lb, interval=0.01)),
        (analytic_exotics.levy_asian_price, "elapsed", dict(bs, elapsed=0.25)),
        (analytic_exotics.geometric_asian_price, "spot", bs),
        (
            simulate.gbm,
            "rate",
            dict(n_paths=8, n_steps=2, spot=100.0, volatility=0.2, maturity=1.0, rate=0.01),
        ),
        (monte_carlo.bs_european, "dividend", dict(bs, dividend=0.0, n_paths=64)),
    ]


def _call(fn, args, **changed):
    return fn(**{k: v for k, v in (args | changed).items() if v is not None})


@pytest.mark.parametrize("bad", ["100", "abc", np.array(["1.0"]), None])
@pytest.mark.parametrize("case", range(16))
def test_text_and_none_are_refused_naming_the_argument(case, bad):
    # torch said "new(): invalid data type 'str'" or "must be real number, not NoneType"
    fn, name, args = _entry_points()[case]
    with pytest.raises(TypeError, match=f"^{name} must be real numbers, got"):
        fn(**{k: v for k, v in args.items() if v is not None} | {name: bad})


@pytest.mark.parametrize("case", range(16))
def test_a_complex_is_refused_naming_the_argument(case):
    # it was cast to real with only torch's warning, or failed in torch naming nothing
    fn, name, args = _entry_points()[case]
    with pytest.raises(ValueError, match=f"^{name} must be real, not complex"):
        _call(fn, args, **{name: args[name] + 0.01j})


@pytest.mark.parametrize("case", range(16))
def test_a_bool_is_refused_naming_the_argument(case):
    # black_scholes.price(spot=True) priced a spot of 1
    fn, name, args = _entry_points()[case]
    with pytest.raises(ValueError, match=f"^{name} must be a real number, not a bool"):
        _call(fn, args, **{name: True})


@pytest.mark.parametrize("case", range(14))  # the simulators take one spot, not a vector
def test_unbroadcastable_shapes_name_the_arguments(case):
    fn, name, args = _entry_points()[case]
    other = next(k for k, v in args.items() if k != name and isinstance(v, float))
    with pytest.raises(ValueError, match=rf"{other} \(2,\).*|{name} \(3,\)"):
        _call(fn, args, **{name: [args[name]] * 3, other: [args[other]] * 2})


@pytest.mark.parametrize("case", range(14))
def test_a_float16_tensor_is_priced_in_at_least_float32(case):
    # "erfcx_cpu" not implemented for 'Half' inside torch, or a price to 3 digits
    fn, name, args = _entry_points()[case]
    half = _call(fn, args, **{name: torch.tensor(args[name], dtype=torch.float16)})
    full = _call(fn, args, **{name: torch.tensor(args[name], dtype=torch.float16).double()})
    half, full = (v[0] if isinstance(v, tuple) else v for v in (half, full))
    assert half.dtype in (torch.float32, torch.float64)  # float64 where a pricer computes in it
    torch.testing.assert_close(half.double(), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "extra"),
    [("rate", {}), ("dividend", {}), ("interval", {"interval": 0.01})],
)
def test_a_float_argument_given_several_values_or_none_names_it(name, extra):
    from pricing import analytic_lookback

    fn = analytic_lookback.discrete_lookback_price if extra else analytic_lookback.lookback_price
    args = dict(spot=100.0, running_extremum=100.0, maturity=1.0, volatility=0.2, **extra)
    with pytest.raises(ValueError, match=rf"^{name} must be a single number, got shape \(0,\)"):
        fn(**args | {name: torch.zeros(0)})


def test_a_nan_volatility_of_a_discrete_lookback_is_named():
    # the shifted extremum was reported: "running_extremum must be finite and > 0; got nan"
    from pricing import analytic_lookback

    with pytest.raises(ValueError, match=r"^volatility must be finite and > 0; got nan"):
        analytic_lookback.discrete_lookback_price(
            spot=100.0, running_extremum=100.0, maturity=1.0, volatility=float("nan"), interval=0.01
        )
