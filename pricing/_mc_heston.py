"""Conditional Monte Carlo for Heston Europeans under the QE scheme (variance paths only)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch

from pricing import black_scholes
from pricing._heston_fourier import moment_explosion_time
from pricing._mc_random import NormalSource, base_seed, drawn_slabs, step_normals
from pricing._simulate_checks import (
    check_heston,
    check_nonnegative,
    check_paths,
    check_positive,
    check_qe_sigma,
)
from pricing._simulate_chunks import check_per_path, per_path
from pricing._simulate_steps import HestonStep, qe_variance_step
from pricing._typing import TensorLike, call_flags, check_numbers, real_number, real_tensor
from pricing._validation import check_finite
from pricing.simulate import time_grid

__all__ = [
    "ConditionalChunk",
    "conditional_chunks",
    "conditional_forward_explosion_time",
    "conditional_log_moments",
]


class ConditionalChunk(NamedTuple):
    """Per-path conditional quantities of one chunk.

    Attributes:
        payoff: ``E[payoff | variance path]``, undiscounted, (C,) or (C, K).
        forward: ``E[S_T | variance path]``, (C,).
    """

    payoff: torch.Tensor
    forward: torch.Tensor


def conditional_forward_explosion_time(
    kappa: torch.Tensor, sigma: torch.Tensor, rho: torch.Tensor
) -> torch.Tensor:
    """Time from which ``E[F^2]`` is infinite (``inf`` if never), ``F = E[S_T | variance path]``
    the conditional forward that conditional Monte Carlo averages (its calls lie between
    ``F - K`` and ``F``, so their variance is infinite exactly when ``E[F^2]`` is).

    ``F / S_0 = exp(rho int sqrt(v) dW - rho^2 / 2 int v)`` (the forward's variance-driven part),
    so ``F^2 / S_0^2 = E(2 rho int sqrt(v) dW) exp(rho^2 int v)``: under the measure of that
    stochastic exponential ``v`` is a CIR process of speed ``kappa - 2 rho sigma``, and ``E[F^2]``
    is ``S_0^2 E[exp(rho^2 int v)]`` under it. This is the Riccati equation of ``E[(S_T/F)^p]``
    (speed ``kappa - rho sigma p``, rate ``p (p - 1) / 2``) at ``p (p - 1) = 2 rho^2`` and
    correlation ``2 rho / p``: ``E[F^2]`` explodes where ``E[S_T^2]`` does at ``|rho| = 1`` and
    later otherwise, and never for ``rho <= 0``, whose speed and discriminant
    ``kappa^2 - 4 kappa rho sigma + 2 rho^2 sigma^2`` stay positive.

    Shape:
        inputs broadcast together; output: their shape.

    References:
        Andersen and Piterbarg (2007), "Moment explosions in stochastic volatility models",
        Finance Stoch. 11, prop. 3.1.

    Examples:
        >>> kappa, sigma, rho = torch.tensor([1.0, 1.92, 0.45], dtype=torch.float64)
        >>> round(float(conditional_forward_explosion_time(kappa, sigma, rho)), 4)  # E[S^2]: 0.99
        1.9005
        >>> float(conditional_forward_explosion_time(kappa, sigma, -rho))
        inf
    """
    p = 0.5 * (1.0 + torch.sqrt(1.0 + 8.0 * rho * rho))  # in [1, 2]
    return moment_explosion_time(p, kappa, sigma, 2.0 * rho / p)


def conditional_log_moments(
    z: Iterable[torch.Tensor], steps: list[HestonStep], v0: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``ln(S_T / S_0)`` given the QE variance path driven by ``z``.

    Shape:
        z: the T steps' normals in order, (C,) each (a (T, C) tensor, or any iterable of rows).
        Output: two tensors (C,).
    """
    v = mean = var = None
    for step, z_i in zip(steps, z, strict=True):
        if v is None:
            v, mean, var = torch.full_like(z_i, v0), torch.zeros_like(z_i), torch.zeros_like(z_i)
        v_next, step_mean = qe_variance_step(v, z_i, step)
        mean += step_mean
        var += step.k3 * v + step.k4 * v_next
        v = v_next
    return mean, var.clamp_min(0.0)


def conditional_chunks(
    n_paths: int,
    n_steps: int,
    *,
    spot: float,
    strike: TensorLike,
    is_call: TensorLike,
    v0: float,
    kappa: float,
    theta: float,
    sigma: float,
    rho: float,
    maturity: float,
    rate: float,
    dividend: float,
    antithetic: bool,
    sobol: bool,
    dtype: torch.dtype,
    device: torch.device | str | None,
    generator: torch.Generator | None,
    chunk_size: int | None,
) -> Iterator[tuple[slice, ConditionalChunk]]:
    """Yield conditional payoffs and forwards chunk by chunk (one normal per step and path).

    Shape:
        Output: payoff (C,) or (C, K); forward (C,).
    """
    check_paths(n_paths)
    check_numbers(spot=spot)
    # one number each, by name (the steps are built from floats: a tensor of several values or
    # none failed in float(), naming nothing)
    scalars = {"v0": v0, "kappa": kappa, "theta": theta, "sigma": sigma, "rho": rho, "rate": rate,
               "dividend": dividend}  # fmt: skip
    v0, kappa, theta, sigma, rho, rate, dividend = (real_number(n, v) for n, v in scalars.items())
    check_positive("spot", spot)
    check_heston(v0, kappa, theta, sigma, rho)
    # a NaN rate or dividend was refused as "forward must be finite" (by the Black price)
    check_finite(rate=rate, dividend=dividend)
    check_qe_sigma(sigma, dtype)  # the simulators' floor: below it the QE step is NaN
    grid = time_grid(n_steps, maturity, dtype=dtype, device=device)
    steps = [
        HestonStep.build(dt, kappa=kappa, theta=theta, sigma=sigma, rho=rho, drift=rate - dividend)
        for dt in grid.diff().tolist()
    ]
    source = NormalSource(
        n_paths=n_paths, n_steps=n_steps, n_factors=1, seed=base_seed(generator),
        antithetic=antithetic, sobol=sobol, dtype=dtype, device=grid.device,
        times=tuple(grid.tolist()) if sobol else None,
    )  # fmt: skip
    # a numpy spot failed in ``spot * torch.exp(...)``, and one per path in a second chunk
    s0 = real_tensor("spot", spot, dtype=dtype, device=grid.device)
    # one value of any shape as the number: (1, 1) made each chunk's payoffs (1, C)
    s0 = s0.reshape(()) if s0.numel() == 1 else s0
    check_per_path(n_paths, spot=s0)
    k = real_tensor("strike", strike, dtype=dtype, device=grid.device)
    if k.ndim > 1:  # as the other pricers: (1, 1) made each chunk's payoffs (1, C), refused as
        # "need at least 2 independent samples, got 1", and (1, K) named the forward's shape
        raise ValueError(f"strike must be a scalar or 1-D, got shape {tuple(k.shape)}")
    # here: Black's formula said "strike must be finite and > 0", yet a zero strike is legal
    check_nonnegative("strike", k)
    call = call_flags(is_call, device=grid.device)  # 0.5 or 2 was a call
    vector = k.ndim == 1 or call.ndim == 1
    # a zero strike is legal, as in every other Monte Carlo pricer (Black's formula refused it):
    # its call pays S_T, whose conditional expectation is the forward, and its put pays 0
    zero = k == 0
    k_black = torch.where(zero, 1.0, k) if bool(zero.any()) else k
    for start, stop, slabs in drawn_slabs(source, chunk_size):
        rows = (z[0] for z in step_normals(slabs))  # (C,) per step, a slab of steps at a time
        mean, var = conditional_log_moments(rows, steps, float(v0))
        fwd = per_path(s0, start, stop, n_paths) * torch.exp(mean + 0.5 * var)  # (C,)
        sd = var.sqrt()
        if vector:
            fwd_k, sd_k = fwd[:, None], sd[:, None]
        else:
            fwd_k, sd_k = fwd, sd
        # a forward below the dtype's least positive number (e^-745 S_0 in float64, e^-103 in
        # float32: ln F reached -1,000 at kappa 0.1, sigma 2, v0 2, rho -0.9 and 30 years) is 0,
        # which Black's formula refused as "forward must be finite and > 0": its call is worth
        # less than it, 0 to that precision, and its put the strike. (It does not overflow: by
        # Markov's inequality P(F > e^88 E[F]) < e^-88.)
        lost = fwd_k == 0
        underflow = bool(lost.any())
        payoff = black_scholes.black_price(
            forward=torch.where(lost, 1.0, fwd_k) if underflow else fwd_k, strike=k_black,
            maturity=1.0, volatility=sd_k, is_call=call,
        )  # fmt: skip
        if underflow:
            payoff = torch.where(lost, torch.where(call, 0.0, k), payoff)
        if k_black is not k:
            payoff = torch.where(zero, torch.where(call, fwd_k, 0.0), payoff)
        yield slice(start, stop), ConditionalChunk(payoff, fwd)
