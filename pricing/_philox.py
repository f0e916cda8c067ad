"""Counter-based standard normals for accelerators: Philox-4x32-10 and Box-Muller.

Normal ``k = t F + f`` (step ``t``, factor ``f``) of unit ``u`` (a path, or an antithetic pair)
is lane ``k mod 4`` of Philox-4x32-10 at counter ``(u mod 2^32, u div 2^32, k div 4, 0)`` under
the key ``(seed mod 2^32, seed div 2^32)``, mapped to normals by Box-Muller: lanes 0 and 1 give the
first pair, lanes 2 and 3 the second. A number depends on the seed, the unit and its index alone,
so any split of the paths into chunks, and any kernel that draws them (the torch operations here or
the Triton kernels of :mod:`pricing._triton_paths`), gives the same normals.

Uniforms take the top 23 bits, ``u = (2 (r >> 9) + 1) 2^-24``, exact in float32 and float64 and
never 0 or 1, so float32 and float64 runs of one seed share their normals up to rounding; the tails
end at 5.8 standard deviations (a probability of 8e-9 per draw), as do the CPU generator's float32
normals (:attr:`pricing._mc_random.NormalSource.draw_dtype`).

This module is the reference implementation in plain torch integer operations (int64 tensors
holding 32-bit words), used where Triton is absent and by the tests.

References:
    Salmon, Moraes, Dror and Shaw (2011), "Parallel random numbers: as easy as 1, 2, 3", SC11
    (Philox, section 3.3; known answers in Random123's ``kat_vectors``).
    Box and Muller (1958), "A note on the generation of random normal deviates", Ann. Math.
    Statist. 29(2).
"""

from __future__ import annotations

import math

import torch

__all__ = ["MULTIPLIERS", "WEYL", "counter_normals", "philox4x32", "uniform_from_bits"]

MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
"""Philox-4x32 round multipliers (Salmon et al. 2011, table 2)."""
WEYL = (0x9E3779B9, 0xBB67AE85)
"""Philox-4x32 key increments per round (the golden ratio and sqrt(3) - 1, in 32-bit words)."""
_MASK = 0xFFFFFFFF


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * m`` for 32-bit ``a`` (int64 tensor) and constant ``m``,
    from 16-bit halves of ``m`` so that no int64 product overflows."""
    high, low = a * (m >> 16), a * (m & 0xFFFF)  # each < 2^48
    t = low + ((high & 0xFFFF) << 16)  # a m = (high >> 16) 2^32 + t, t < 2^49
    return (high >> 16) + (t >> 32), t & _MASK


def philox4x32(
    counter: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    key: tuple[int, int],
    rounds: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox-4x32 of ``counter`` (four int64 tensors of 32-bit words, broadcastable) under ``key``.

    Examples:
        >>> zero = torch.zeros(1, dtype=torch.int64)
        >>> [f"{int(w):08x}" for w in philox4x32((zero,) * 4, (0, 0))]  # Random123 kat_vectors
        ['6627e8d5', 'e169c58d', 'bc57ac4c', '9b00dbd8']
    """
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(c0, MULTIPLIERS[0])
        hi1, lo1 = _mulhilo(c2, MULTIPLIERS[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + WEYL[0]) & _MASK, (k1 + WEYL[1]) & _MASK
    return c0, c1, c2, c3


def uniform_from_bits(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(2 (bits >> 9) + 1) 2^-24``: a uniform in (0, 1) from the top 23 bits of a 32-bit word.

    Examples:
        >>> uniform_from_bits(torch.tensor([0, 0xFFFFFFFF]), torch.float32).tolist()
        [5.960464477539063e-08, 0.9999999403953552]
    """
    return ((bits >> 9) * 2 + 1).to(dtype) * 2.0**-24


def _box_muller(u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * math.pi) * u2
    return radius * torch.cos(angle), radius * torch.sin(angle)


def counter_normals(
    seed: int,
    unit_start: int,
    n_units: int,
    n_steps: int,
    n_factors: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Normals of units ``[unit_start, unit_start + n_units)`` (see the module docstring).

    Shape:
        Output: (T, F, U), ``U = n_units``.

    Examples:
        >>> z = counter_normals(7, 0, 3, 2, 2, dtype=torch.float64, device=torch.device("cpu"))
        >>> z.shape, torch.equal(z[:, :, 1:], counter_normals(7, 1, 2, 2, 2,
        ...     dtype=torch.float64, device=torch.device("cpu")))
        (torch.Size([2, 2, 3]), True)
    """
    per_unit = n_steps * n_factors
    calls = -(-per_unit // 4)
    if dtype.itemsize < 4:  # float16 / bfloat16: 2^24 overflows float16; widen, then round
        return counter_normals(seed, unit_start, n_units, n_steps, n_factors,
                               dtype=torch.float32, device=device).to(dtype)  # fmt: skip
    unit = torch.arange(unit_start, unit_start + n_units, dtype=torch.int64, device=device)
    index = torch.arange(calls, dtype=torch.int64, device=device).unsqueeze(-1)  # (J, 1)
    counter = (unit & _MASK, unit >> 32, index, torch.zeros_like(index))
    lanes = philox4x32(counter, (seed & _MASK, (seed >> 32) & _MASK))  # 4 x (J, U)
    u = [uniform_from_bits(bits, dtype) for bits in lanes]
    z0, z1 = _box_muller(u[0], u[1])
    z2, z3 = _box_muller(u[2], u[3])
    normals = torch.stack((z0, z1, z2, z3), dim=1).reshape(4 * calls, n_units)  # (4J, U)
    return normals[:per_unit].reshape(n_steps, n_factors, n_units)  # (T, F, U)
