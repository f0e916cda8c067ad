"""Heston pathwise greeks against the semi-analytic pricer, within k standard errors."""

from __future__ import annotations

import pytest
import torch

from pricing import heston
from pricing.mc_greeks import heston_pathwise_greeks

K_SE = 4.0  # |MC - reference| <= K_SE * std_error + QE_BIAS_REL * |reference|
# QE with N_STEPS = 32: on 524288 antithetic paths (both parameter sets, calls and puts) price,
# delta and dv0 all came within 2 standard errors of the semi-analytic values, which bounds the
# discretisation bias by about 0.1% of price and delta and 0.5% of dv0. 0.5% of the reference
# covers it and is small next to the 4 standard errors of N_PATHS paths (2-4% of each value).
QE_BIAS_REL = 0.005
N_PATHS, N_STEPS = 32768, 32
# Full-truncation Euler with EULER_STEPS = 64 (FELLER_HOLDS, call and put, two seeds of 524288
# antithetic paths each): dV/dv0 came out 0.4-0.85% above the semi-analytic value (z up to 4),
# dV/dtheta 0.1-0.4% below, the other greeks within 2 standard errors. 1% of the reference covers
# the scheme's bias.
EULER_BIAS_REL = 0.01
EULER_STEPS = 64

FELLER_HOLDS = {"spot": 100.0, "strike": 105.0, "maturity": 1.0, "v0": 0.04, "kappa": 2.0,
                "theta": 0.05, "sigma": 0.3, "rho": -0.6, "rate": 0.03, "dividend": 0.01}  # fmt: skip
# 2 kappa theta / sigma^2 = 0.33: many QE steps take the exponential branch and reach v = 0
FELLER_FAILS = {"spot": 100.0, "strike": 100.0, "maturity": 1.0, "v0": 0.04, "kappa": 1.5,
                "theta": 0.04, "sigma": 0.6, "rho": -0.7, "rate": 0.02, "dividend": 0.0}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _semi_analytic(params: dict, is_call: bool) -> list[float]:
    """Price and its derivatives in spot, v0, kappa, theta, sigma, rho by autograd through the
    Fourier pricer."""
    names = ("spot", "v0", "kappa", "theta", "sigma", "rho")
    leaves = {n: torch.tensor(params[n], dtype=torch.float64, requires_grad=True) for n in names}
    value = heston.price(**{**params, **leaves}, is_call=is_call)
    return [value.item(), *(g.item() for g in torch.autograd.grad(value, tuple(leaves.values())))]


@pytest.mark.parametrize(
    ("params", "is_call", "antithetic"),
    [
        (FELLER_HOLDS, True, True),
        (FELLER_HOLDS, False, False),
        (FELLER_FAILS, True, False),
        (FELLER_FAILS, False, True),
    ],
    ids=["feller-call-antithetic", "feller-put", "no-feller-call", "no-feller-put-antithetic"],
)
def test_price_delta_and_dv0_match_the_semi_analytic_pricer(
    params: dict, is_call: bool, antithetic: bool
) -> None:
    r = heston_pathwise_greeks(**params, is_call=is_call, n_paths=N_PATHS, n_steps=N_STEPS,
                               antithetic=antithetic, generator=_gen(1))  # fmt: skip
    exact = _semi_analytic(params, is_call)[:3]
    for name, estimate, value in zip(r._fields[:3], r[:3], exact, strict=True):
        tol = K_SE * estimate.std_error.item() + QE_BIAS_REL * abs(value)
        assert abs(estimate.price.item() - value) <= tol, (name, estimate.price.item(), value)
        assert estimate.n_paths == N_PATHS
    assert r.dkappa is r.dtheta is r.dsigma is r.drho is None  # QE's branch switch biases them


@pytest.mark.parametrize("is_call", [True, False], ids=["call", "put"])
def test_euler_greeks_in_all_parameters_match_the_semi_analytic_pricer(is_call: bool) -> None:
    r = heston_pathwise_greeks(**FELLER_HOLDS, is_call=is_call, n_paths=N_PATHS,
                               n_steps=EULER_STEPS, scheme="euler", antithetic=True,
                               generator=_gen(3))  # fmt: skip
    for name, estimate, value in zip(r._fields, r, _semi_analytic(FELLER_HOLDS, is_call),
                                     strict=True):  # fmt: skip
        tol = K_SE * estimate.std_error.item() + EULER_BIAS_REL * abs(value)
        assert abs(estimate.price.item() - value) <= tol, (name, estimate.price.item(), value)


def test_euler_greeks_are_the_derivatives_of_the_discretised_price() -> None:
    # central differences of the Monte Carlo price itself (same seed: common random numbers); at
    # h = 1e-5 a few paths' payoff or truncation kinks still fall inside +-h (sigma: 1.6e-3 off)
    args = {**FELLER_HOLDS, "n_paths": 8192, "n_steps": 16, "scheme": "euler"}
    pathwise = heston_pathwise_greeks(**args, generator=_gen(4))
    for name in ("v0", "kappa", "theta", "sigma", "rho"):
        h = 1e-6
        up = heston_pathwise_greeks(**{**args, name: args[name] + h}, generator=_gen(4))
        down = heston_pathwise_greeks(**{**args, name: args[name] - h}, generator=_gen(4))
        difference = (up.price.price - down.price.price).item() / (2 * h)
        estimate = getattr(pathwise, "d" + name).price.item()
        assert estimate == pytest.approx(difference, rel=1e-4), name


def test_qe_dv0_at_zero_initial_variance_matches_the_semi_analytic_pricer() -> None:
    # what the Euler greeks' refusal of v0 = 0 points to: QE's step is smooth in v at 0
    params = {**FELLER_FAILS, "v0": 0.0}
    price, delta, dv0, *_ = _semi_analytic(params, is_call=True)
    r = heston_pathwise_greeks(**params, n_paths=8192, n_steps=N_STEPS, antithetic=True,
                               generator=_gen(5))  # fmt: skip
    for name, expected in (("price", price), ("delta", delta), ("dv0", dv0)):
        got = getattr(r, name)
        tol = K_SE * got.std_error.item() + QE_BIAS_REL * abs(expected)
        assert abs(got.price.item() - expected) <= tol, (name, got.price.item(), expected)


@pytest.mark.parametrize("scheme", ["qe", "euler"])
def test_chunking_and_no_grad_mode_do_not_change_the_estimates(scheme: str) -> None:
    args = {**FELLER_FAILS, "n_paths": 4096, "n_steps": 8, "antithetic": True, "scheme": scheme}
    whole = heston_pathwise_greeks(**args, generator=_gen(2))
    with torch.no_grad():
        chunked = heston_pathwise_greeks(**args, generator=_gen(2), chunk_size=1024)
    assert sum(a is not None for a in whole) == (3 if scheme == "qe" else 7)
    for a, b in zip(whole, chunked, strict=True):
        if a is None:
            assert b is None
            continue
        torch.testing.assert_close(b.price, a.price, rtol=1e-12, atol=0.0)
        torch.testing.assert_close(b.std_error, a.std_error, rtol=1e-9, atol=0.0)


@pytest.mark.parametrize("scheme", ["qe", "euler"])
def test_inference_mode_does_not_change_the_estimates(scheme: str) -> None:
    # its leaves were inference tensors: "element 0 of tensors does not require grad"
    args = {**FELLER_FAILS, "n_paths": 2048, "n_steps": 4, "antithetic": True, "scheme": scheme}
    expected = heston_pathwise_greeks(**args, generator=_gen(4))
    with torch.inference_mode():
        got = heston_pathwise_greeks(**args, generator=_gen(4))
    for a, b in zip(expected, got, strict=True):
        if a is not None:
            assert torch.equal(b.price, a.price) and torch.equal(b.std_error, a.std_error)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"v0": -0.01}, "v0"),
        ({"n_paths": 0}, "n_paths"),
        ({"n_paths": 7, "antithetic": True}, "n_paths"),
        ({"n_steps": 0}, "n_steps"),
        ({"spot": 0.0}, "spot"),
        ({"sigma": 0.0}, "sigma"),
        ({"rho": 1.5}, "rho"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"scheme": "milstein"}, "scheme"),
        ({"scheme": "euler", "rho": 1.0}, r"rho must be in \(-1, 1\) for the Euler greeks"),
        # the Euler step's sqrt(v0 dt) has an infinite slope at 0: dv0 came out 47 +- 1.6
        # against the 64 of the discretised price (and of the semi-analytic one)
        ({"scheme": "euler", "v0": 0.0}, r"v0 must be > 0 for the Euler greeks"),
        # sigma^2 <= 3 kappa theta: QE's first step is quadratic, its diffusion's slope in v0 at
        # 0 like 1 / |b + Z|; dv0 had no mean (8 seeds: -7.5 +- 79 to 93 +- 36 against 67.6)
        ({"v0": 0.0}, r"v0 must be > 0 for the QE greeks where sigma\^2 <= 3 kappa theta"),
        # one backward pass per run: two strikes or flags gave one delta, the sum of theirs
        ({"strike": torch.tensor([90.0, 110.0])}, r"strike must be a single value"),
        ({"is_call": [True, False]}, r"is_call must be one flag"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        heston_pathwise_greeks(**{**FELLER_HOLDS, "n_paths": 8, "n_steps": 2, **kwargs})
