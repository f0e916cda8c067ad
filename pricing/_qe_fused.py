"""QE step fused by ``torch.compile`` (opt-in fast path of :func:`pricing.simulate.heston`).

Both variance branches, the martingale correction, the log-spot update and the spot itself are
evaluated elementwise without data-dependent indexing, which inductor fuses into one loop over the
paths that writes the step's spot and variance straight into the rows of the output paths. Every
path pays for both branches: one ``erf``, two logarithms and four square roots.

Same numbers as :func:`pricing._simulate_steps.heston_qe_step` up to floating-point rounding, with
one difference in the far tail. The exponential branch's ``1 - U = Phi(-zv)`` is computed as
``(1 - erf(zv / sqrt 2)) / 2`` (inductor's ``ndtr``, four times cheaper than its ``erfc``), which
resolves ``1 - U`` to an absolute ``eps / 2`` of the dtype, like a uniform drawn with the dtype's
mantissa; it is floored there, so a normal beyond the dtype's range (``zv > 5.3`` in float32, a
``6e-8`` event) gives the variance of ``1 - U = eps / 2`` instead of an infinite one. The eager
step uses the exact tail.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from pricing._simulate_steps import PSI_C, HestonStep

__all__ = ["compiled_qe_step_into", "fused_qe_step", "qe_step_into", "step_constants"]


def step_constants(c: HestonStep, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Pack the constants of a step into one tensor (no recompilation across steps).

    Shape:
        Output: (11,).
    """
    values = [c.decay, c.theta_term, c.s2_v, c.s2_c, c.a_coef, c.drift,
              c.k0, c.k1, c.k2, c.k3, c.k4]  # fmt: skip
    return torch.tensor(values, dtype=dtype, device=device)


def fused_qe_step(
    x: torch.Tensor, v: torch.Tensor, zv: torch.Tensor, zx: torch.Tensor, k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both QE branches, elementwise and branch-free (so that inductor fuses them).

    With ``psi = s^2 / m^2`` the branch quantities are written through ``2 / psi``: ``p = (2 -
    2/psi) / (2 + 2/psi)``, which saves two of the textbook form's nine divisions per path.

    Shape:
        x, v, zv, zx: (C,). k: (11,) from :func:`step_constants`. Output: x', v', each (C,).
    """
    decay, theta_term, s2_v, s2_c, big_a, drift, k0, k1, k2, k3, k4 = k.unbind()
    m = v * decay + theta_term  # conditional mean of v(t + dt)
    tp = 2.0 * m * m / (v * s2_v + s2_c)  # 2 / psi
    quadratic = tp >= 2.0 / PSI_C
    # quadratic branch: v' = a (b + zv)^2; sqrt(tp) sqrt(tp - 1), as their product overflows
    b2 = (tp - 1.0) + tp.sqrt() * (tp - 1.0).clamp_min(0.0).sqrt()
    b = b2.sqrt()
    a = m / (1.0 + b2)
    y = 2.0 * big_a * a  # 1 - w of the martingale correction
    v_quadratic = a * (b + zv).square()
    # exponential branch: v' = log((1 - p) / (1 - U)) / beta past p, with beta = (1 - p) / m, so
    # that beta (1 - p) / (beta - A) = (1 - p)^2 / (1 - p - A m); 1 - p = 2 tp / (2 + tp) stays
    # exact as p nears 1 (clamped to 0.001 it drew other variances than the eager step's
    # past psi ~ 2000); capped at 1 (unused: the quadratic branch)
    one_minus_p = (2.0 * tp / (2.0 + tp)).clamp_max(1.0)
    one_minus_u = torch.special.ndtr(-zv).clamp_min(torch.finfo(zv.dtype).eps / 2)
    v_exponential = (one_minus_p / one_minus_u).log().clamp_min(0.0) * (m / one_minus_p)
    gap = one_minus_p - big_a * m  # m (beta - A)
    v_next = torch.where(quadratic, v_quadratic, v_exponential)
    # one logarithm for both branches: log(1 - y) (quadratic) or log(p + beta (1 - p) / (beta - A))
    log_term = torch.where(quadratic, -y, one_minus_p.square() / gap - one_minus_p).log1p()
    # K2 v' - log E[exp(A v')]; quadratic without its terms of order rho m / sigma, which cancel
    # (see pricing._simulate_steps._qe_quadratic_martingale)
    excess = (y * b).square() / (2.0 * (1.0 - y)) - 0.5 * (log_term + y)
    deviation = a * (zv * (2.0 * b + zv) - 1.0)  # v' - m
    martingale = torch.where(
        quadratic, k2 * deviation - 0.5 * k4 * m - excess, k2 * v_next - log_term
    )
    valid = torch.where(quadratic, y < 1.0, gap > 0)
    corrected = torch.where(
        valid, drift - 0.5 * k3 * v + martingale, drift + k0 + k1 * v + k2 * v_next
    )
    diffusion = (k3 * v + k4 * v_next).clamp_min(0.0).sqrt()
    return x + corrected + diffusion * zx, v_next


def qe_step_into(
    x: torch.Tensor,
    v: torch.Tensor,
    z: torch.Tensor,
    k: torch.Tensor,
    s0: torch.Tensor,
    spot_out: torch.Tensor,
    var_out: torch.Tensor,
) -> torch.Tensor:
    """One QE step that writes ``s0 exp(x')`` into ``spot_out`` and ``v'`` into ``var_out``
    (run through :func:`compiled_qe_step_into`, one fused loop).

    Args:
        x: log spot relative to ``s0``.
        v: variance.
        z: the step's normals, ``z[0]`` for the variance and ``z[1]`` for the log spot.
        k: step constants from :func:`step_constants`.
        s0: initial spot, a scalar tensor or one per path.
        spot_out, var_out: rows of the output paths, overwritten.

    Returns:
        x', the next log spot.

    Shape:
        x, v, spot_out, var_out: (C,). z: (2, C). k: (11,). s0: () or (C,). Output: (C,).
    """
    x_next, v_next = fused_qe_step(x, v, z[0], z[1], k)
    spot_out.copy_(s0 * x_next.exp())
    var_out.copy_(v_next)
    return x_next


_CPU_OPTIONS = {"cpp_wrapper": True, "cpp.threads": 1}
"""Inductor options of the CPU step: a C++ wrapper, which releases the GIL while the kernel runs,
so that the background thread drawing the next slab's normals
(:meth:`pricing._mc_random.NormalSource.slabs`, two or more torch threads) runs at the same time
(the default Python wrapper holds the GIL: the two alternated); and one thread per kernel, since
the generator's single stream, not the step, bounds the rate once they overlap."""


@functools.cache
def compiled_qe_step_into(device_type: str = "cpu") -> Callable[..., torch.Tensor]:
    """:func:`qe_step_into` through ``torch.compile`` for ``device_type`` (compiled on first call,
    once per process); on the CPU with :data:`_CPU_OPTIONS`."""
    return torch.compile(qe_step_into, options=_CPU_OPTIONS if device_type == "cpu" else None)
