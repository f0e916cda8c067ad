"""QE step fused by ``torch.compile`` (opt-in fast path).

Both variance branches, the martingale correction and the log-spot update are evaluated
elementwise without data-dependent indexing, which inductor fuses into one loop over the paths.
Same numbers as :func:`pricing._simulate_steps.heston_qe_step` up to floating-point rounding
(the exponential branch's ``1 - U = Phi(-zv)`` is computed as ``erfc(zv / sqrt 2) / 2``). Every
path pays for both branches, so the work is one erfc, two logarithms and three square roots.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pricing._simulate_steps import PSI_C, HestonStep

__all__ = ["fused_qe_step", "step_constants"]

_KERNEL: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
_SQRT_HALF = math.sqrt(0.5)


def step_constants(c: HestonStep, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Pack the constants of a step into one tensor (no recompilation across steps).

    Shape:
        Output: (11,).
    """
    values = [c.decay, c.theta * (1.0 - c.decay), c.s2_v, c.s2_c, c.a_coef, c.drift,
              c.k0, c.k1, c.k2, c.k3, c.k4]  # fmt: skip
    return torch.tensor(values, dtype=dtype, device=device)


def _qe_step(
    x: torch.Tensor, v: torch.Tensor, zv: torch.Tensor, zx: torch.Tensor, k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both QE branches, elementwise and branch-free (so that inductor fuses them)."""
    decay, theta_term, s2_v, s2_c, big_a, drift, k0, k1, k2, k3, k4 = k.unbind()
    m = v * decay + theta_term
    psi = (v * s2_v + s2_c) / (m * m)
    tp = 2.0 / psi
    b2 = (tp - 1.0) + (tp * (tp - 1.0)).clamp_min(0.0).sqrt()
    a = m / (1.0 + b2)
    w = 1.0 - 2.0 * big_a * a
    p = ((psi - 1.0) / (psi + 1.0)).clamp(0.0, 0.999)
    beta = (1.0 - p) / m
    quadratic = psi <= PSI_C
    one_minus_u = 0.5 * torch.erfc(zv * _SQRT_HALF)
    v_exp = ((1.0 - p) / one_minus_u).log().clamp_min(0.0) / beta
    v_next = torch.where(quadratic, a * (b2.sqrt() + zv).square(), v_exp)
    # one logarithm for both branches: log(w) (quadratic) or log(p + beta (1 - p) / (beta - A))
    log_term = torch.where(quadratic, w, p + beta * (1.0 - p) / (beta - big_a)).log()
    log_mgf = torch.where(quadratic, big_a * b2 * a / w - 0.5 * log_term, log_term)
    valid = torch.where(quadratic, w > 0, beta > big_a)
    corrected = torch.where(valid, drift - log_mgf - 0.5 * k3 * v, drift + k0 + k1 * v)
    diffusion = (k3 * v + k4 * v_next).clamp_min(0.0).sqrt()
    return x + corrected + k2 * v_next + diffusion * zx, v_next


def fused_qe_step(
    x: torch.Tensor,
    v: torch.Tensor,
    zv: torch.Tensor,
    zx: torch.Tensor,
    c: HestonStep,
    constants: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """QE step (as :func:`pricing._simulate_steps.heston_qe_step`) through the compiled kernel.

    Shape:
        x, v, zv, zx: (C,). constants: (11,) from :func:`step_constants`.
    """
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = torch.compile(_qe_step)
    return _KERNEL(x, v, zv, zx, constants)
