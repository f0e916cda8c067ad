"""Shape helpers of pricing._typing: torch's broadcasting rule without torch's first-call cost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from functools import partial

import numpy as np
import pytest
import torch

from pricing import black_scholes
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
            analytic_exotics.discrete_asian_price,
            "running_sum",
            dict(bs, maturity=None, fixing_times=[0.5, 1.0], time=0.5, running_sum=100.0),
        ),
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
@pytest.mark.parametrize("case", range(17))
def test_text_and_none_are_refused_naming_the_argument(case, bad):
    # torch said "new(): invalid data type 'str'" or "must be real number, not NoneType"
    fn, name, args = _entry_points()[case]
    with pytest.raises(TypeError, match=f"^{name} must be real numbers, got"):
        fn(**{k: v for k, v in args.items() if v is not None} | {name: bad})


@pytest.mark.parametrize("case", range(17))
def test_a_complex_is_refused_naming_the_argument(case):
    # it was cast to real with only torch's warning, or failed in torch naming nothing
    fn, name, args = _entry_points()[case]
    with pytest.raises(ValueError, match=f"^{name} must be real, not complex"):
        _call(fn, args, **{name: args[name] + 0.01j})


@pytest.mark.parametrize("case", range(17))
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


def _more_entry_points():
    """Arguments of the payoffs, Monte Carlo pricers and simulators converted by the shared
    helpers (each call with valid keyword arguments; the payoffs' paths bound first)."""
    from pricing import heston, mc_exotics, monte_carlo, payoffs

    paths = torch.tensor([[100.0, 95.0, 110.0], [100.0, 105.0, 120.0]], dtype=torch.float64)
    grid = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    barrier = dict(strike=100.0, barrier=90.0, barrier_type="down_out", rebate=1.0, rate=0.01)
    mc = dict(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2, n_paths=64)
    hp = dict(v0=0.04, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7)
    sabr = dict(forward=100.0, alpha=0.2, beta=1.0, rho=0.0, nu=0.3, maturity=1.0, shift=1.0)
    sabr_mc = dict(sabr, strike=100.0, n_paths=64, n_steps=2)
    return [
        (partial(payoffs.european, paths), "strike", dict(strike=100.0)),
        (
            partial(payoffs.asian, paths),
            "past_weight",
            dict(strike=100.0, past_average=100.0, past_weight=0.5),
        ),
        (partial(payoffs.barrier, paths, time_grid=grid), "barrier", barrier),
        (partial(payoffs.barrier, paths, time_grid=grid), "rebate", barrier),
        (partial(payoffs.barrier, paths, time_grid=grid), "rate", barrier),
        (
            partial(payoffs.barrier, paths, time_grid=grid),
            "volatility",
            barrier | {"volatility": 0.2},
        ),
        (
            partial(payoffs.lookback, paths, kind="floating", is_call=True),
            "running_extremum",
            dict(running_extremum=100.0),
        ),
        (mc_exotics.bs_barrier, "rebate", mc | barrier),
        (mc_exotics.bs_pathwise_greeks, "spot", mc),
        (mc_exotics.bs_pathwise_greeks, "strike", mc),
        (mc_exotics.bs_pathwise_greeks, "volatility", mc),
        (
            monte_carlo.heston_european,
            "strike",
            dict(mc, volatility=None, **hp, n_steps=2, conditional=True),
        ),
        (monte_carlo.sabr_european, "strike", sabr_mc),
        (monte_carlo.sabr_european, "shift", sabr_mc),
        (mc_exotics.bs_asian, "past_weight", mc | {"past_average": 100.0, "past_weight": 0.5}),
        (heston.characteristic_function, "maturity", dict(u=1.0, maturity=1.0, **hp)),
        (heston.otm_implied_vol, "ratio", dict(ratio=1.1, maturity=1.0, **hp)),
        (partial(monte_carlo.estimate, torch.arange(8.0)), "confidence", dict(confidence=0.9)),
    ]


_MORE = range(18)


@pytest.mark.parametrize(
    ("case", "bad"),
    # None is a volatility's or running extremum's default (cases 5 and 6)
    [(case, bad) for case in _MORE for bad in ("100", None) if bad or case not in (5, 6)],
)
def test_text_and_none_are_refused_by_the_payoffs_and_simulators(case, bad):
    # torch said "new(): invalid data type 'str'", "must be real number, not NoneType", or
    # float() took spot="100" as 100 (bs_pathwise_greeks)
    fn, name, args = _more_entry_points()[case]
    with pytest.raises(TypeError, match=f"^{name} must be real numbers, got"):
        fn(**{k: v for k, v in args.items() if v is not None} | {name: bad})


@pytest.mark.parametrize("case", _MORE)
def test_a_complex_or_bool_is_refused_by_the_payoffs_and_simulators(case):
    # payoffs.european(strike=True) paid a strike of 1
    fn, name, args = _more_entry_points()[case]
    with pytest.raises(ValueError, match=f"^{name} must be real, not complex"):
        _call(fn, args, **{name: args[name] + 0.01j})
    with pytest.raises(ValueError, match=f"^{name} must be a real number, not a bool"):
        _call(fn, args, **{name: True})


@pytest.mark.parametrize("size", [3, 0])
@pytest.mark.parametrize("case", [1, 2, 3, 4, 6, 7, 8, 10, 13, 14, 17])
def test_a_scalar_argument_given_several_values_or_none_is_named(case, size):
    # "Boolean value of Tensor with more than one value is ambiguous", "only one element
    # tensors can be converted to Python scalars", "full_like(): fill_value must be Number"
    fn, name, args = _more_entry_points()[case]
    with pytest.raises(
        ValueError, match=rf"^{name} must be a single number, got shape \({size},\)"
    ):
        _call(fn, args, **{name: torch.full((size,), args[name])})


@pytest.mark.parametrize(
    ("simulator", "name", "scheme"),
    [("gbm", "maturity", None), ("heston", "rate", "qe"), ("heston", "sigma", "qe"),
     ("heston", "maturity", "euler"), ("sabr", "alpha", None), ("sabr", "beta", None),
     ("sabr", "shift", None)],
)  # fmt: skip
def test_a_simulator_scalar_given_no_value_is_named(simulator, name, scheme):
    # an empty tensor passed the "one value" checks and failed in float(), naming nothing
    from pricing import simulate

    args = {
        "gbm": dict(spot=100.0, volatility=0.2, maturity=1.0),
        "heston": dict(spot=100.0, v0=0.04, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7,
                       maturity=1.0, rate=0.01, scheme=scheme),
        "sabr": dict(forward=100.0, alpha=0.2, beta=0.5, rho=0.0, nu=0.3, maturity=1.0,
                     shift=0.0),
    }[simulator]  # fmt: skip
    with pytest.raises(ValueError, match=rf"^{name}\b.*(single number|one value|one float value)"):
        getattr(simulate, simulator)(4, 2, **args | {name: torch.zeros(0)})


@pytest.mark.parametrize("pricer", ["bs_european", "bs_asian", "bs_pathwise_greeks"])
def test_a_per_path_rate_of_a_pricer_that_discounts_by_one_rate_is_named(pricer):
    # the simulator takes a rate per path, the discount factor one: math.exp said "only one
    # element tensors can be converted to Python scalars"
    from pricing import mc_exotics, monte_carlo

    fn = getattr(monte_carlo, pricer, None) or getattr(mc_exotics, pricer)
    with pytest.raises(ValueError, match=r"^rate must be a single number, got shape \(64,\)"):
        fn(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2, n_paths=64,
           rate=torch.full((64,), 0.01))  # fmt: skip


def test_a_conditional_heston_parameter_given_several_values_is_named():
    from pricing import monte_carlo

    with pytest.raises(ValueError, match=r"^v0 must be a single number, got shape \(3,\)"):
        monte_carlo.heston_european(spot=100.0, strike=100.0, maturity=1.0, v0=torch.full((3,), 0.04),
                                    kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7, n_paths=64,
                                    n_steps=2, conditional=True)  # fmt: skip


@pytest.mark.parametrize("pricer", ["simulate", "monte_carlo"])
def test_a_one_element_tensor_shift_is_the_float_shift(pricer):
    # torch.full_like(): "fill_value must be Number, not Tensor"
    from pricing import monte_carlo, simulate

    def run(shift):
        g = torch.Generator().manual_seed(0)
        args = dict(forward=100.0, alpha=0.2, beta=0.5, rho=-0.3, nu=0.4, maturity=1.0,
                    shift=shift, generator=g)  # fmt: skip
        if pricer == "simulate":
            return simulate.sabr(16, 2, **args).forward
        return monte_carlo.sabr_european(strike=100.0, n_paths=16, n_steps=2, **args).price

    torch.testing.assert_close(run(torch.tensor([5.0])), run(5.0), rtol=0.0, atol=0.0)


def test_the_characteristic_function_takes_complex_u_and_refuses_text():
    from pricing import heston

    hp = dict(maturity=1.0, v0=0.04, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7)
    torch.testing.assert_close(heston.characteristic_function([0.0, -1j], **hp),
                               torch.ones(2, dtype=torch.complex128), rtol=1e-12, atol=1e-12)  # fmt: skip
    with pytest.raises(ValueError, match=r"^u must be a real number, not a bool"):
        heston.characteristic_function(True, **hp)
    with pytest.raises(TypeError, match=r"^u must be real numbers, got '1.0'"):
        heston.characteristic_function("1.0", **hp)


_SIMULATOR_ARGS = {
    "gbm": dict(spot=100.0, volatility=0.2, maturity=1.0, rate=0.03, dividend=0.01),
    "heston": dict(spot=100.0, v0=0.04, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7,
                   maturity=1.0, rate=0.03, dividend=0.01),
    "sabr": dict(forward=100.0, alpha=0.2, beta=0.5, rho=-0.3, nu=0.4, maturity=1.0, shift=1.0),
}  # fmt: skip


@pytest.mark.parametrize("shape", [(), (1,)])
@pytest.mark.parametrize(
    ("simulator", "name", "scheme"),
    [(s, n, "euler" if s == "heston" and n in ("kappa", "rho") else None)
     for s, a in _SIMULATOR_ARGS.items() for n in a]
    + [("heston", "kappa", "qe"), ("heston", "sigma", "qe")],
)  # fmt: skip
def test_a_numpy_number_is_the_float_in_the_simulators(simulator, name, scheme, shape):
    # a 0-d or one-element array failed in torch ("mul_(): argument 'other' (position 1) must be
    # Tensor, not numpy.ndarray") or float() ("only 0-dimensional arrays can be converted")
    from pricing import simulate

    args = _SIMULATOR_ARGS[simulator] | ({"scheme": scheme} if scheme else {})

    def run(value):
        g = torch.Generator().manual_seed(0)
        out = getattr(simulate, simulator)(8, 2, **args | {name: value}, generator=g)
        return out if isinstance(out, torch.Tensor) else torch.stack(tuple(out))

    expected = run(args[name])
    torch.testing.assert_close(run(np.full(shape, args[name])), expected, rtol=0.0, atol=0.0)


@pytest.mark.parametrize(("simulator", "name"), [("gbm", "spot"), ("gbm", "volatility"),
                                                 ("heston", "spot"), ("heston", "v0")])  # fmt: skip
def test_a_numpy_array_per_path_is_the_tensor_per_path(simulator, name):
    # it was not sliced per chunk like a tensor (or failed in torch), and one of the wrong
    # length was not named
    from pricing import simulate

    args = _SIMULATOR_ARGS[simulator]

    def run(value):
        g = torch.Generator().manual_seed(0)
        out = getattr(simulate, simulator)(2500, 2, **args | {name: value}, generator=g,
                                           chunk_size=1024)  # fmt: skip
        return out if isinstance(out, torch.Tensor) else out.spot

    per_path = np.linspace(0.5, 1.5, 2500) * args[name]
    torch.testing.assert_close(run(per_path), run(torch.from_numpy(per_path)), rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match=rf"^{name} has 3 values for 2500 paths"):
        run(np.full(3, args[name]))


@pytest.mark.parametrize(("simulator", "name"), [("heston", "rate"), ("heston", "dividend"),
                                                 ("sabr", "forward"), ("sabr", "nu")])  # fmt: skip
def test_a_numpy_array_for_a_one_value_simulator_argument_is_named(simulator, name):
    from pricing import simulate

    with pytest.raises(ValueError, match=rf"^{name}: {simulator} takes one value, got .* \(3,\)"):
        getattr(simulate, simulator)(8, 2, **_SIMULATOR_ARGS[simulator] | {name: np.full(3, 0.01)})


def _heston_greeks_args():
    return dict(spot=100.0, strike=100.0, maturity=1.0, v0=0.04, kappa=1.5, theta=0.04,
                sigma=0.5, rho=-0.7, rate=0.03, n_paths=64, n_steps=2, scheme="euler")  # fmt: skip


@pytest.mark.parametrize("name", ["spot", "v0", "kappa", "rho", "rate", "maturity"])
def test_heston_pathwise_greeks_refuse_text_and_several_values_by_name(name):
    # float() took spot="100" as 100 (and v0, kappa under Euler); rho failed in "-1 < rho < 1"
    # ("'<' not supported between instances of 'int' and 'str'", "Boolean value of Tensor with
    # more than one value is ambiguous"); the discount's rate in math.exp
    from pricing import mc_greeks

    args = _heston_greeks_args()
    with pytest.raises(TypeError, match=rf"^{name} must be real numbers, got '0.5'"):
        mc_greeks.heston_pathwise_greeks(**args | {name: "0.5"})
    with pytest.raises(ValueError, match=rf"^{name}\b.*(single number|one value)"):
        mc_greeks.heston_pathwise_greeks(**args | {name: torch.full((3,), 0.5)})


@pytest.mark.parametrize("name", ["spot", "v0", "rho", "rate", "maturity"])
def test_heston_pathwise_greeks_take_a_numpy_number(name):
    from pricing import mc_greeks

    def run(value):
        g = torch.Generator().manual_seed(0)
        r = mc_greeks.heston_pathwise_greeks(**_heston_greeks_args() | {name: value}, generator=g)
        return torch.stack([r.price.price, r.delta.price, r.drho.price])

    value = _heston_greeks_args()[name]
    torch.testing.assert_close(run(np.array([value])), run(value), rtol=0.0, atol=0.0)


def _control_pricers():
    from pricing import mc_exotics, monte_carlo

    mc = dict(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2, n_paths=64, control=True)
    hp = dict(v0=0.04, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7, n_steps=2)
    return {
        "bs_european": (monte_carlo.bs_european, mc),
        "heston_conditional": (
            monte_carlo.heston_european,
            {k: v for k, v in mc.items() if k != "volatility"} | hp | {"conditional": True},
        ),
        "bs_asian": (mc_exotics.bs_asian, mc | {"n_steps": 4}),
        "bs_barrier": (mc_exotics.bs_barrier, mc | {"barrier": 80.0, "barrier_type": "down_out"}),
        "bs_lookback": (mc_exotics.bs_lookback, mc | {"kind": "fixed", "is_call": True}),
    }


@pytest.mark.parametrize("name", ["spot", "dividend"])
@pytest.mark.parametrize(
    "pricer", ["bs_european", "heston_conditional", "bs_asian", "bs_barrier", "bs_lookback"]
)
def test_a_per_path_argument_of_a_control_mean_is_named(pricer, name):
    # the control's mean spot e^{-qT} (or its closed form) took a per-path spot as one mean per
    # strike: bs_european priced -147 for 7.97, bs_asian 69 for 4.6; a per-path dividend failed
    # in math.exp ("only one element tensors can be converted to Python scalars")
    fn, args = _control_pricers()[pricer]
    value = torch.full((64,), 100.0 if name == "spot" else 0.01, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"^{name} must be a single number, got shape \(64,\)"):
        fn(**args | {name: value})


@pytest.mark.parametrize(
    "pricer", ["bs_european", "heston_conditional", "bs_asian", "bs_barrier", "bs_lookback"]
)
def test_a_numpy_number_is_the_float_in_the_control_pricers(pricer):
    fn, args = _control_pricers()[pricer]

    def run(**changed):
        return fn(**args | changed, generator=torch.Generator().manual_seed(0)).price

    expected = run(dividend=0.01)
    got = run(spot=np.array([100.0]), dividend=np.array([0.01]), maturity=np.array([1.0]))
    torch.testing.assert_close(got, expected, rtol=0.0, atol=0.0)


def test_a_sabr_discount_given_several_values_is_named():
    # torch: "The size of tensor a (64) must match the size of tensor b (3)"
    from pricing import monte_carlo

    with pytest.raises(ValueError, match=r"^discount must be a single number, got shape \(3,\)"):
        monte_carlo.sabr_european(forward=100.0, strike=100.0, maturity=1.0, alpha=0.2, beta=1.0,
                                  rho=0.0, nu=0.3, discount=torch.full((3,), 0.9), n_paths=64,
                                  n_steps=2)  # fmt: skip


@pytest.mark.parametrize("kind", ["tensor", "numpy"])
def test_a_per_path_spot_of_conditional_heston_is_sliced_per_chunk(kind):
    # the second chunk failed: "The size of tensor a (2500) must match the size of tensor b
    # (1024)"; a numpy spot failed in ``spot * torch.exp(...)``
    from pricing import monte_carlo

    def run(spot):
        return monte_carlo.heston_european(spot=spot, strike=100.0, maturity=1.0, v0=0.04,
                                           kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7,
                                           n_paths=2500, n_steps=2, conditional=True,
                                           chunk_size=1024,
                                           generator=torch.Generator().manual_seed(0)).price  # fmt: skip

    spot = np.full(2500, 100.0)
    got = run(torch.from_numpy(spot) if kind == "tensor" else spot)
    torch.testing.assert_close(got, run(100.0), rtol=1e-12, atol=0.0)
    # one value of shape (1, 1) is the number: each chunk's payoffs were (1, C), and the second
    # chunk failed ("The size of tensor a (452) must match the size of tensor b (1024)")
    one = np.full((1, 1), 100.0)
    got = run(torch.from_numpy(one) if kind == "tensor" else one)
    torch.testing.assert_close(got, run(100.0), rtol=1e-12, atol=0.0)


def test_real_scalar_keeps_the_graph_of_a_tensor_that_requires_grad_only():
    from pricing._typing import real_scalar

    rate = torch.tensor([0.05], dtype=torch.float64, requires_grad=True)
    kept = real_scalar("rate", rate)
    assert kept.shape == () and kept.requires_grad
    (2.0 * kept).backward()
    assert rate.grad.tolist() == [2.0]
    assert real_scalar("rate", torch.tensor([0.25])) == 0.25  # no graph: a float, as real_number
    with pytest.raises(ValueError, match=r"rate must be a single number, got shape \(2,\)"):
        real_scalar("rate", torch.zeros(2, requires_grad=True))
    with pytest.raises(TypeError, match="rate must be real numbers"):
        real_scalar("rate", "0.05")


def test_a_read_only_array_is_copied_not_shared(torch_warns_always) -> None:
    # a read-only array (a pandas column of a parquet table) was shared with the tensor: torch
    # warned "The given NumPy array is not writable ... undefined behavior" from inside a pricer
    strike = np.array([90.0, 100.0, 110.0])
    strike.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        price = black_scholes.price(spot=100.0, strike=strike, maturity=1.0, volatility=0.2)
    assert price.shape == (3,)


def test_a_read_only_is_call_array_is_copied_not_shared(torch_warns_always) -> None:
    # a read-only is_call (a pandas column's to_numpy()) warned the same from call_flags
    is_call = np.array([True, False, True])
    is_call.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        price = black_scholes.price(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2,
                                    is_call=is_call)  # fmt: skip
    assert price.shape == (3,)
