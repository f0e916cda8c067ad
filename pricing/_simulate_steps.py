"""One-step updates of the Heston (QE, full-truncation Euler) and SABR simulators.

Each step maps the state vectors at ``t_i`` and two standard normals per path to the state at
``t_{i+1}``. Step constants that depend only on ``dt`` and the parameters are precomputed once per
step in :class:`HestonStep`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pricing._special import ndtr

__all__ = [
    "PSI_C",
    "EulerStep",
    "HestonStep",
    "heston_euler_step",
    "heston_qe_step",
    "qe_exponential_branch",
    "qe_is_martingale",
    "qe_mean",
    "qe_variance_step",
    "sabr_step",
]

PSI_C = 1.5
"""Andersen's switching level between the quadratic and exponential variance samplers."""

_GAMMA1 = 0.5
_GAMMA2 = 0.5
_SQRT_HALF = math.sqrt(0.5)


@dataclass(frozen=True)
class HestonStep:
    """Constants of one Heston step of length ``dt`` (Andersen 2008, eqs. (17)-(18), (33)).

    Attributes:
        dt: step length.
        drift: ``(rate - dividend) * dt``.
        decay: ``exp(-kappa dt)``.
        theta: long-run variance.
        theta_term: ``theta (1 - exp(-kappa dt))``, the constant term of the conditional mean of
            ``v(t + dt)`` (from ``expm1``: ``1 - decay`` rounded to 0 for ``kappa dt`` below
            1e-16, and the step was NaN).
        s2_v: coefficient of ``v`` in the conditional variance of ``v(t + dt)``.
        s2_c: constant term of that conditional variance.
        k0, k1, k2, k3, k4: log-spot coefficients for gamma1 = gamma2 = 0.5.
        a_coef: ``A = K2 + K4 / 2`` of the martingale correction.
        kappa, sigma, rho: model parameters (used by the Euler scheme).
    """

    dt: float
    drift: float
    decay: float
    theta: float
    theta_term: float
    s2_v: float
    s2_c: float
    k0: float
    k1: float
    k2: float
    k3: float
    k4: float
    a_coef: float
    kappa: float
    sigma: float
    rho: float

    @classmethod
    def build(
        cls, dt: float, *, kappa: float, theta: float, sigma: float, rho: float, drift: float
    ) -> HestonStep:
        """Precompute the constants of a step of length ``dt``."""
        kappa, theta, sigma, rho = float(kappa), float(theta), float(sigma), float(rho)
        decay = math.exp(-kappa * dt)
        # 1 - decay by expm1: the difference lost its digits as kappa dt fell (2% of the variance
        # of v' at kappa dt = 2.5e-15) and was 0 below 1.1e-16, which made every path NaN
        growth = -math.expm1(-kappa * dt)
        k1 = _GAMMA1 * dt * (kappa * rho / sigma - 0.5) - rho / sigma
        k2 = _GAMMA2 * dt * (kappa * rho / sigma - 0.5) + rho / sigma
        k3 = _GAMMA1 * dt * (1.0 - rho * rho)
        k4 = _GAMMA2 * dt * (1.0 - rho * rho)
        return cls(
            dt=dt,
            drift=float(drift) * dt,
            decay=decay,
            theta=theta,
            theta_term=theta * growth,
            s2_v=sigma * sigma * decay * growth / kappa,
            s2_c=theta * sigma * sigma * growth * (growth / (2.0 * kappa)),
            k0=-rho * kappa * theta * dt / sigma,
            k1=k1,
            k2=k2,
            k3=k3,
            k4=k4,
            a_coef=k2 + 0.5 * k4,
            kappa=kappa,
            sigma=sigma,
            rho=rho,
        )


def heston_qe_step(
    x: torch.Tensor, v: torch.Tensor, zv: torch.Tensor, zx: torch.Tensor, c: HestonStep
) -> tuple[torch.Tensor, torch.Tensor]:
    """Andersen's QE step with martingale correction.

    Args:
        x: log spot relative to the initial spot.
        v: variance (non-negative).
        zv: normals driving the variance (``1 - U = Phi(-zv)`` in the exponential branch).
        zx: independent normals driving the log spot.
        c: step constants.

    Shape:
        All tensors (C,).

    References:
        Andersen (2008), J. Comput. Finance 11(3): eqs. (23), (26)-(27), (33) and section 4.2.
    """
    v_next, mean = qe_variance_step(v, zv, c)
    # floor at the dtype's smallest normal number, not 0: sqrt has an infinite slope at 0, which
    # would turn the zero gradient of paths with v = v' = 0 into NaN (a floor of 1e-300 was 0 in
    # float32: most dS_T/dv0 were NaN); the value moves by at most sqrt(tiny) * zx (1e-19 in float32)
    diffusion = (c.k3 * v + c.k4 * v_next).clamp_min(torch.finfo(v_next.dtype).tiny).sqrt()
    return x + mean + diffusion * zx, v_next


def qe_variance_step(
    v: torch.Tensor, zv: torch.Tensor, c: HestonStep
) -> tuple[torch.Tensor, torch.Tensor]:
    """QE variance update and the martingale-corrected log-spot mean ``(r - q) dt + K0* + K1 v
    + K2 v'``.

    Given the variance path, the QE log-spot increment is normal with this mean and variance
    ``K3 v + K4 v'`` (used by conditional Monte Carlo).

    Shape:
        All tensors (C,).
    """
    m = v * c.decay + c.theta_term  # conditional mean of v(t + dt)
    psi = (v * c.s2_v + c.s2_c) / (m * m)
    # quadratic branch, v' = a (b + Z)^2, evaluated everywhere (the common case); psi capped at
    # psi_c (a no-op where the branch is kept) so that the overwritten paths stay finite and
    # their zero gradient does not become NaN (0 * inf) under autograd
    two_over_psi = 2.0 / psi.clamp_max(PSI_C)
    # sqrt(2/psi) sqrt(2/psi - 1): their product overflowed float32 from 2/psi ~ 2e19 (sigma 1e-10)
    root = two_over_psi.sqrt() * (two_over_psi - 1.0).clamp_min(0.0).sqrt()
    b2 = (two_over_psi - 1.0) + root
    b = b2.sqrt()
    a = m / (1.0 + b2)
    v_next = a * (b + zv).square()
    martingale, valid = _qe_quadratic_martingale(m, a, b, zv, c)
    # exponential branch on the paths where psi > psi_c only (rare away from v = 0)
    idx = (psi > PSI_C).nonzero().squeeze(-1)
    if idx.numel():
        v_e, log_mgf_e, valid_e = qe_exponential_branch(v[idx], zv[idx], c)
        v_next = v_next.index_put((idx,), v_e)
        martingale = martingale.index_put((idx,), c.k2 * v_e - log_mgf_e)
        valid = valid.index_put((idx,), valid_e)
    return v_next, qe_mean(v, v_next, martingale, valid, c)


def _qe_quadratic_martingale(
    m: torch.Tensor, a: torch.Tensor, b: torch.Tensor, zv: torch.Tensor, c: HestonStep
) -> tuple[torch.Tensor, torch.Tensor]:
    """``K2 v' - log E[exp(A v')]`` of the quadratic branch ``v' = a (b + zv)^2`` and whether
    ``E[exp(A v')]`` exists (``2 A a < 1``).

    Both terms are of order ``rho m / sigma`` and cancel to order 1: rounding them separately
    biased the mean float32 spot by 1.7% at sigma 1e-6 and by 26% at 1e-8. With ``m = a (1 +
    b^2)`` and ``y = 2 A a`` the difference is ``K2 (v' - m) - K4 m / 2 - R``, where ``v' - m =
    a (zv (2 b + zv) - 1)`` and ``R = log E[exp(A v')] - A m = (y b)^2 / (2 (1 - y)) - (log(1 - y)
    + y) / 2``, each term of order 1 (Andersen 2008, eq. (34)).

    Shape:
        All tensors (C,).
    """
    y = (2.0 * c.a_coef) * a
    valid = y < 1.0
    # y capped below 1 (a no-op where valid) so that the overwritten paths stay finite
    y = y.clamp_max(1.0 - torch.finfo(y.dtype).eps)
    excess = (y * b).square() / (2.0 * (1.0 - y)) - 0.5 * (torch.log1p(-y) + y)  # R
    deviation = a * (zv * (2.0 * b + zv) - 1.0)  # v' - m
    return c.k2 * deviation - (0.5 * c.k4) * m - excess, valid


def qe_exponential_branch(
    v: torch.Tensor, zv: torch.Tensor, c: HestonStep
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """QE exponential sampler for paths with ``psi > PSI_C``: next variance, log-MGF, validity.

    Returns ``(v', log E[exp(A v') | v], A < beta)``; the log-MGF is only meaningful where valid.
    (``psi > PSI_C`` needs ``m`` below the conditional standard deviation of ``v'``, so ``A m``
    and ``A v'`` are small here even for a small sigma: no cancellation to guard against.)

    Shape:
        All tensors (E,), the paths in the exponential regime.

    References:
        Andersen (2008), eqs. (26)-(27) and (34).
    """
    m = v * c.decay + c.theta_term
    psi = (v * c.s2_v + c.s2_c) / (m * m)
    # 1 - p = 2 / (psi + 1), not 1 - (psi - 1) / (psi + 1): p rounded to 1 where psi exceeds
    # 1 / eps (about 2e7 in float32: sigma^2 / (2 kappa theta) at v = 0), and beta = 0 made v'
    # 0 / 0, NaN on every path from the second step (theta 1e-8, kappa 10, sigma 2)
    one_minus_p = 2.0 / (psi + 1.0)
    beta = one_minus_p / m
    # log(1 - U), U = Phi(zv): erfc keeps its accuracy to zv ~ 37 (torch's ndtr is 0 past 8.3,
    # and log_ndtr is 3.7 times slower)
    log_one_minus_u = ndtr(-zv).log()
    v_next = (one_minus_p.log() - log_one_minus_u).clamp_min(0.0) / beta
    # floored at the dtype's smallest normal number (1e-300 was 0 in float32: where A >= beta the
    # unused 0 / 0 of the gradient made dS/dv0 NaN on every path)
    gap = (beta - c.a_coef).clamp_min(torch.finfo(beta.dtype).tiny)
    return v_next, (1.0 - one_minus_p + beta * one_minus_p / gap).log(), beta > c.a_coef


def qe_mean(
    v: torch.Tensor,
    v_next: torch.Tensor,
    martingale: torch.Tensor,
    valid: torch.Tensor,
    c: HestonStep,
) -> torch.Tensor:
    """Martingale-corrected log-spot mean ``(r - q) dt + K0* + K1 v + K2 v'`` (Andersen 2008,
    eq. (33)), from ``martingale = K2 v' - log E[exp(A v')]``.

    Where ``E[exp(A v')]`` does not exist (``valid`` False) the uncorrected ``K0 + K1 v + K2 v'``
    is used.

    Shape:
        All tensors (C,).
    """
    corrected = c.drift - (0.5 * c.k3) * v + martingale
    if c.a_coef <= 0.0:  # E[exp(A v')] always exists
        return corrected
    return torch.where(valid, corrected, c.drift + c.k0 + c.k1 * v + c.k2 * v_next)


def qe_is_martingale(steps: list[HestonStep], v0: float | None) -> bool:
    """Whether every QE step of ``steps`` keeps its martingale correction on every path, so that
    ``E[S_{t+1} | S_t, v_t] = S_t exp((r - q) dt)`` step by step and the simulated spot is an
    exact martingale: the first step at ``v0`` (None: at every variance, for per-path starts),
    the later ones at every ``v >= 0`` (the first step's variance reaches all of them). Where a
    step falls back to the uncorrected drift, ``E[exp(A v')]`` is infinite, and so is ``E[S_T]``.

    References:
        Andersen (2008), section 4.2 (the corrections' conditions ``A < 1/(2a)`` and ``A <
        beta``).
    """
    first, *later = steps
    starts = _corrects_everywhere(first) if v0 is None else _corrects_at(first, v0)
    return starts and all(_corrects_everywhere(c) for c in later)


def _corrects_at(c: HestonStep, v: float) -> bool:
    """Whether the martingale correction of step ``c`` holds at the variance ``v``."""
    if c.a_coef <= 0.0:
        return True
    m = v * c.decay + c.theta_term
    s2 = v * c.s2_v + c.s2_c
    if s2 > PSI_C * m * m:  # exponential branch: A < beta = (1 - p) / m = 2 m / (s^2 + m^2)
        return c.a_coef < 2.0 * m / (s2 + m * m)
    return 2.0 * c.a_coef * _quadratic_a(m, s2) < 1.0  # quadratic branch: 2 A a < 1


def _corrects_everywhere(c: HestonStep) -> bool:
    """Whether the martingale correction of step ``c`` holds at every variance ``v >= 0``.

    In terms of ``m = E[v' | v]``, the conditional variance of ``v'`` is ``s^2 = alpha m - g``
    with ``alpha = sigma^2 (1 - e^{-kappa dt}) / kappa`` and ``g = theta sigma^2 (1 - e^{-kappa
    dt})^2 / (2 kappa)``, so ``psi = s^2 / m^2`` falls as ``v`` grows: the exponential branch
    (``psi > psi_c``) holds the ``m`` below ``m_c``, the root of ``psi_c m^2 = alpha m - g``, where
    ``beta = 2 / (m + alpha - g / m)`` falls to ``2 / ((1 + psi_c) m_c)``; the quadratic branch the
    ``m`` above, where ``a = m - sqrt(m^2 - s^2 / 2)`` is monotonic in ``m``, from its value at
    ``max(m_c, theta (1 - e^{-kappa dt}))`` to its limit ``alpha / 4``.
    """
    if c.a_coef <= 0.0:
        return True
    growth = c.theta_term / c.theta
    alpha = c.sigma * c.sigma * growth / c.kappa
    g = c.theta * c.sigma * c.sigma * growth * growth / (2.0 * c.kappa)
    m_low = c.theta_term  # m at v = 0
    if c.s2_c > PSI_C * m_low * m_low:  # exponential branch at v = 0, up to m_c
        # the discriminant is >= 0 where psi > psi_c at v = 0, but rounds below it where psi
        # is psi_c there (sigma^2 = 3 kappa theta, e.g. 0.3^2 = 3 * 0.5 * 0.06): math.sqrt's
        # "math domain error" stopped heston_european, past the explosion, at such parameters
        root = math.sqrt(max(alpha * alpha - 4.0 * PSI_C * g, 0.0))
        m_c = (alpha + root) / (2.0 * PSI_C)
        if c.a_coef * (1.0 + PSI_C) * m_c >= 2.0:
            return False
        m_low = m_c
    a_low = _quadratic_a(m_low, alpha * m_low - g)
    return 2.0 * c.a_coef * max(a_low, 0.25 * alpha) < 1.0


def _quadratic_a(m: float, s2: float) -> float:
    """The quadratic branch's ``a = m / (1 + b^2) = m - sqrt(m^2 - s^2 / 2)`` at ``psi = s^2 / m^2
    <= psi_c``, written without the difference's cancellation."""
    return 0.5 * s2 / (m + math.sqrt(max(m * m - 0.5 * s2, 0.0)))


@dataclass(frozen=True)
class EulerStep:
    """One full-truncation Euler step: its length and the model parameters as given.

    Unlike :class:`HestonStep` nothing is converted to ``float``: ``kappa, theta, sigma, rho`` may
    be tensors, one value per path (C,), that require grad (pathwise derivatives in the model
    parameters, :func:`pricing.mc_greeks.heston_pathwise_greeks`).

    Attributes:
        dt: step length.
        drift: ``(rate - dividend) * dt``.
        kappa, theta, sigma, rho: model parameters, floats or tensors broadcasting against (C,).
    """

    dt: float
    drift: float
    kappa: float | torch.Tensor
    theta: float | torch.Tensor
    sigma: float | torch.Tensor
    rho: float | torch.Tensor


def heston_euler_step(
    x: torch.Tensor, v: torch.Tensor, zv: torch.Tensor, zx: torch.Tensor, c: EulerStep | HestonStep
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-truncation Euler step: ``v^+ = max(v, 0)`` in drift and diffusion, log-Euler spot.

    Differentiable in the state and in tensor parameters of ``c``: the square root is taken of
    ``max(v^+ dt, tiny)``, so a variance of exactly 0 (``v0 = 0``) passes a zero gradient through
    it instead of the infinite slope of the square root at 0 (the value moves by at most
    ``sqrt(tiny)``, about 1e-154 in float64).

    Args:
        x: log spot relative to the initial spot.
        v: variance state (may be negative; only ``v^+`` enters the dynamics).
        zv: normals driving the variance.
        zx: independent normals; the spot's normal is ``rho zv + sqrt(1 - rho^2) zx``.
        c: step length and parameters.

    Shape:
        All tensors (C,).

    References:
        Lord, Koekkoek and van Dijk (2010), Quant. Finance 10(2), section 3 (full truncation).
    """
    vp = v.clamp_min(0.0)
    sqrt_vdt = (vp * c.dt).clamp_min(torch.finfo(v.dtype).tiny).sqrt()
    v_next = v + c.kappa * (c.theta - vp) * c.dt + c.sigma * sqrt_vdt * zv
    if isinstance(c.rho, torch.Tensor):
        rho_bar = (1.0 - c.rho * c.rho).clamp_min(0.0).sqrt()
    else:
        rho_bar = math.sqrt(max(1.0 - c.rho * c.rho, 0.0))
    z_spot = c.rho * zv + rho_bar * zx
    x_next = x + c.drift - 0.5 * vp * c.dt + sqrt_vdt * z_spot
    return x_next, v_next


def sabr_step(
    x: torch.Tensor,
    alpha: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    dt: float,
    beta: float,
    rho: float,
    nu: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SABR step for the shifted forward ``x = F + shift`` and the volatility ``alpha``.

    The volatility is exact: ``alpha' = alpha exp(nu sqrt(dt) z2 - nu^2 dt / 2)``. The forward uses
    log-Euler for ``beta == 1`` and Euler with absorption at zero for ``beta < 1``, with the Brownian
    increment ``sqrt(dt) (rho z2 + sqrt(1 - rho^2) z1)`` and the left-point volatility.

    Shape:
        All tensors (C,).

    References:
        Hagan et al. (2002), Wilmott Magazine (model); Glasserman (2004), section 3.4.
    """
    rho, nu = float(rho), float(nu)
    sqdt = math.sqrt(dt)
    dw = sqdt * (rho * z2 + math.sqrt(max(1.0 - rho * rho, 0.0)) * z1)
    alpha_next = alpha * torch.exp(nu * sqdt * z2 - 0.5 * nu * nu * dt)
    if beta == 1.0:
        return x * torch.exp(alpha * dw - 0.5 * alpha * alpha * dt), alpha_next
    alive = x > 0
    moved = (x + alpha * x.clamp_min(0.0).pow(beta) * dw).clamp_min(0.0)
    return torch.where(alive, moved, torch.zeros_like(x)), alpha_next
