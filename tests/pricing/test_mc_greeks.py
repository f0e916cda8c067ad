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

FELLER_HOLDS = {"spot": 100.0, "strike": 105.0, "maturity": 1.0, "v0": 0.04, "kappa": 2.0,
                "theta": 0.05, "sigma": 0.3, "rho": -0.6, "rate": 0.03, "dividend": 0.01}  # fmt: skip
# 2 kappa theta / sigma^2 = 0.33: many QE steps take the exponential branch and reach v = 0
FELLER_FAILS = {"spot": 100.0, "strike": 100.0, "maturity": 1.0, "v0": 0.04, "kappa": 1.5,
                "theta": 0.04, "sigma": 0.6, "rho": -0.7, "rate": 0.02, "dividend": 0.0}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _semi_analytic(params: dict, is_call: bool) -> tuple[float, float, float]:
    """Price, dV/dspot and dV/dv0 by autograd through the Fourier pricer."""
    spot = torch.tensor(params["spot"], dtype=torch.float64, requires_grad=True)
    v0 = torch.tensor(params["v0"], dtype=torch.float64, requires_grad=True)
    value = heston.price(**{**params, "spot": spot, "v0": v0}, is_call=is_call)
    d_spot, d_v0 = torch.autograd.grad(value, (spot, v0))
    return value.item(), d_spot.item(), d_v0.item()


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
    for name, estimate, exact in zip(r._fields, r, _semi_analytic(params, is_call), strict=True):
        tol = K_SE * estimate.std_error.item() + QE_BIAS_REL * abs(exact)
        assert abs(estimate.price.item() - exact) <= tol, (name, estimate.price.item(), exact)
        assert estimate.n_paths == N_PATHS


def test_chunking_and_no_grad_mode_do_not_change_the_estimates() -> None:
    args = {**FELLER_FAILS, "n_paths": 4096, "n_steps": 8, "antithetic": True}
    whole = heston_pathwise_greeks(**args, generator=_gen(2))
    with torch.no_grad():
        chunked = heston_pathwise_greeks(**args, generator=_gen(2), chunk_size=1024)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(b.price, a.price, rtol=1e-12, atol=0.0)
        torch.testing.assert_close(b.std_error, a.std_error, rtol=1e-9, atol=0.0)


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
    ],
)
def test_bad_input_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        heston_pathwise_greeks(**{**FELLER_HOLDS, "n_paths": 8, "n_steps": 2, **kwargs})
