"""Total implied volatility from a normalised OTM Black price: guess, then safeguarded Householder steps.

Given ``x = -|ln(F/K)| <= 0`` and the normalised out-of-the-money price ``beta``, find ``s = sigma sqrt(T)``
with ``b(x, s) = beta`` (see :mod:`pricing._normalized_black`). Two objectives keep Newton-type steps
well conditioned:

* lower half (``beta <= exp(x/2) / 2``): ``f(s) = ln b(s) - ln beta``, which is nearly linear in
  ``1/s^2`` deep in the wing where ``b`` itself spans hundreds of orders of magnitude;
* upper half: ``f(s) = ln c* - ln c(s)`` with ``c = exp(x/2) - b`` the distance to the upper bound,
  which is well conditioned as ``b`` saturates.

Each iteration takes a fourth-order Householder step computed from closed-form derivative ratios, kept
inside a bracket ``[lo, hi]`` that bisection tightens whenever a step would leave it, so the iteration
cannot diverge. Converged elements leave the active set, so late iterations are cheap.

References:
    P. Jaeckel (2015), "Let's be rational", Wilmott, pp. 40-53 (objective transforms, Householder steps).
    A. S. Householder (1970), "The Numerical Treatment of a Single Nonlinear Equation".
"""

from __future__ import annotations

import math

import torch

from pricing._normalized_black import complement, log_normalized_call, log_vega, vega_ratios

__all__ = ["IV_STATUS", "solve_total_vol"]

IV_STATUS: dict[int, str] = {
    0: "ok",
    1: "price below intrinsic value",
    2: "price at or above the upper bound",
    3: "invalid input (non-finite price or non-positive forward, strike, maturity or discount)",
    4: "no convergence",
}

_MAX_ITER = 40
_STEP_TOL = 1e-9  # a 4th-order step this small leaves an error far below eps
_BRACKET_TOL = 4.0 * torch.finfo(torch.float64).eps
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _initial_guess(x: torch.Tensor, beta: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Cheap starting points: asymptotic inversions of the lower wing and of the upper tail."""
    ln_beta = torch.log(beta)
    # b(x, s) <= b(0, s) <= s / sqrt(2 pi): this ATM bound never overshoots the root.
    s_atm = math.sqrt(2.0 * math.pi) * beta
    # Lower wing: ln b ~ -x^2/(2 s^2) - s^2/8 - ln(2 pi)/2 + ln(s^3 / x^2), solved by fixed point.
    x2 = (x * x).clamp_min(1e-300)
    s = torch.sqrt(x2 / (2.0 * torch.clamp(-ln_beta, min=1.0)))
    s_c = torch.sqrt(2.0 * torch.abs(x))
    for _ in range(3):
        rhs = -ln_beta - 0.125 * s * s - _HALF_LOG_2PI + 3.0 * torch.log(s) - torch.log(x2)
        s = torch.minimum(torch.sqrt(x2 / (2.0 * torch.clamp(rhs, min=1e-3))), 0.99 * s_c)
    s_lower = torch.maximum(s, s_atm)
    # Upper tail: c(s) ~ (exp(x/2) + exp(-x/2)) Phi(-s/2).
    c_star = torch.exp(0.5 * x) - beta
    ratio = torch.clamp(c_star / (2.0 * torch.cosh(0.5 * x)), min=1e-300, max=0.5)
    s_upper = -2.0 * torch.special.ndtri(ratio)
    s0 = torch.where(upper, s_upper, s_lower)
    return torch.where(torch.isfinite(s0) & (s0 > 0), s0, torch.ones_like(s0))


def _objective(
    x: torch.Tensor, s: torch.Tensor, target: torch.Tensor, upper: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Objective ``f``, ``f'`` and the ratios ``f''/f'``, ``f'''/f'`` at ``s``."""
    q, r = vega_ratios(x, s)
    lv = log_vega(x, s)
    # Each element needs only its own objective: ln b below, ln c above.
    ln_value = torch.empty_like(s)
    ln_value[~upper] = log_normalized_call(x[~upper], s[~upper])
    ln_value[upper] = torch.log(complement(x[upper], s[upper]))
    f = torch.where(upper, target - ln_value, ln_value - target)
    # u = b'/b on the lower objective; on the upper one f' = b'/c and the same ratio
    # formulas hold with u = -b'/c.
    ratio = torch.exp(lv - ln_value)
    u = torch.where(upper, -ratio, ratio)
    fp = torch.abs(u)
    h2 = q - u
    h3 = r - 3.0 * q * u + 2.0 * u * u
    return f, fp, h2, h3


def _householder_step(f, fp, h2, h3) -> torch.Tensor:
    nu = -f / fp
    return nu * (1.0 + 0.5 * h2 * nu) / (1.0 + nu * (h2 + h3 * nu / 6.0))


def solve_total_vol(
    x: torch.Tensor,
    beta: torch.Tensor,
    *,
    invalid: torch.Tensor,
    below: torch.Tensor,
    above: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``b(x, s) = beta`` for ``s`` where the inputs are valid; NaN and a status elsewhere.

    Shape:
        x, beta, masks: the same shape (any, including 0-d); outputs: that shape.
    """
    shape = x.shape
    x, beta = x.reshape(-1), beta.reshape(-1)
    invalid, below, above = invalid.reshape(-1), below.reshape(-1), above.reshape(-1)
    status = torch.zeros(x.shape, dtype=torch.int64, device=x.device)
    status[below] = 1
    status[above] = 2
    status[invalid] = 3
    s_out = torch.full_like(x, float("nan"))
    at_intrinsic = (status == 0) & (beta <= 0)
    s_out[at_intrinsic] = 0.0
    todo = torch.nonzero((status == 0) & (beta > 0), as_tuple=True)
    if todo[0].numel() == 0:
        return s_out.reshape(shape), status.reshape(shape)
    xa, ba = x[todo], beta[todo]
    upper = ba > 0.5 * torch.exp(0.5 * xa)
    target = torch.where(upper, torch.log(torch.exp(0.5 * xa) - ba), torch.log(ba))
    s = _initial_guess(xa, ba, upper)
    lo, hi = torch.zeros_like(s), torch.full_like(s, float("inf"))
    solved = torch.zeros_like(s, dtype=torch.bool)
    active = torch.arange(s.numel(), device=s.device)
    for _ in range(_MAX_ITER):
        sa, xa_, ta, ua = s[active], xa[active], target[active], upper[active]
        f, fp, h2, h3 = _objective(xa_, sa, ta, ua)
        lo[active] = torch.where(f < 0, sa, lo[active])
        hi[active] = torch.where(f > 0, sa, hi[active])
        step = _householder_step(f, fp, h2, h3)
        new = sa + step
        la, ha = lo[active], hi[active]
        small = torch.abs(step) <= _STEP_TOL * sa
        inside = torch.isfinite(new) & (new > la) & (new < ha)
        bisect = torch.where(torch.isinf(ha), 2.0 * sa, 0.5 * (la + ha))
        s[active] = torch.where(small | inside, new, bisect)
        done = (f == 0) | small | (ha - la <= _BRACKET_TOL * la)
        solved[active] = done
        active = active[~done]
        if active.numel() == 0:
            break
    s_out[todo] = torch.where(solved, s, torch.full_like(s, float("nan")))
    status[todo] = torch.where(solved, 0, 4)
    return s_out.reshape(shape), status.reshape(shape)
