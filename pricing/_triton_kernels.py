"""The Triton kernels of :mod:`pricing._triton_paths` (imported only when they are launched, so
that importing the simulators does not import Triton)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.random import philox_impl

__all__ = ["normals_kernel", "qe_paths_kernel", "tl_dtype"]


@triton.jit
def _uniform(bits, DTYPE: tl.constexpr):
    """:func:`pricing._philox.uniform_from_bits`: ``(2 (bits >> 9) + 1) 2^-24``."""
    return ((bits >> 9) * 2 + 1).to(DTYPE) * 5.9604644775390625e-08


@triton.jit
def _box_muller(u1, u2):
    """Two normals from two uniforms, as :func:`pricing._philox.counter_normals` pairs them."""
    radius = tl.sqrt(-2.0 * tl.log(u1))
    angle = 6.283185307179586 * u2
    return radius * tl.cos(angle), radius * tl.sin(angle)


@triton.jit
def _normals4(seed_lo, seed_hi, unit, call, DTYPE: tl.constexpr):
    """The four normals of Philox call ``call`` of each ``unit`` (int64 block)."""
    c0 = (unit & 0xFFFFFFFF).to(tl.uint32)
    c1 = (unit >> 32).to(tl.uint32)
    c2 = (unit * 0 + call).to(tl.uint32)
    c3 = c1 * 0
    k0 = seed_lo.to(tl.uint32)
    k1 = seed_hi.to(tl.uint32)
    r0, r1, r2, r3 = philox_impl(c0, c1, c2, c3, k0, k1, 10)
    z0, z1 = _box_muller(_uniform(r0, DTYPE), _uniform(r1, DTYPE))
    z2, z3 = _box_muller(_uniform(r2, DTYPE), _uniform(r3, DTYPE))
    return z0, z1, z2, z3


@triton.jit
def normals_kernel(out_ptr, seed_lo, seed_hi, unit_start, n_units, per_unit, n_blocks,
                    DTYPE: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """Program ``(call, block)``: the four rows ``4 call ..`` of ``out`` (per_unit, n_units)."""
    pid = tl.program_id(0)
    call = pid // n_blocks
    cols = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_units
    z0, z1, z2, z3 = _normals4(seed_lo, seed_hi, unit_start + cols.to(tl.int64), call, DTYPE)
    row = 4 * call.to(tl.int64)
    tl.store(out_ptr + row * n_units + cols, z0, mask=mask)
    tl.store(out_ptr + (row + 1) * n_units + cols, z1, mask=mask & (row + 1 < per_unit))
    tl.store(out_ptr + (row + 2) * n_units + cols, z2, mask=mask & (row + 2 < per_unit))
    tl.store(out_ptr + (row + 3) * n_units + cols, z3, mask=mask & (row + 3 < per_unit))


@triton.jit
def _qe_step(x, v, zv, zx, k_ptr, PSI_C: tl.constexpr, EPS_HALF: tl.constexpr):
    """:func:`pricing._qe_fused.fused_qe_step` for one block of paths."""
    decay = tl.load(k_ptr)
    theta_term = tl.load(k_ptr + 1)
    s2_v = tl.load(k_ptr + 2)
    s2_c = tl.load(k_ptr + 3)
    big_a = tl.load(k_ptr + 4)
    drift = tl.load(k_ptr + 5)
    k0 = tl.load(k_ptr + 6)
    k1 = tl.load(k_ptr + 7)
    k2 = tl.load(k_ptr + 8)
    k3 = tl.load(k_ptr + 9)
    k4 = tl.load(k_ptr + 10)
    m = v * decay + theta_term
    tp = 2.0 * m * m / (v * s2_v + s2_c)  # 2 / psi
    quadratic = tp >= 2.0 / PSI_C
    b2 = (tp - 1.0) + tl.sqrt(tp) * tl.sqrt(tl.maximum(tp - 1.0, 0.0))
    b = tl.sqrt(b2)
    a = m / (1.0 + b2)
    y = 2.0 * big_a * a
    root = b + zv
    v_quadratic = a * root * root
    one_minus_p = tl.minimum(2.0 * tp / (2.0 + tp), 1.0)
    one_minus_u = tl.maximum(0.5 * (1.0 - tl.math.erf(zv * 0.7071067811865476)), EPS_HALF)
    v_exponential = tl.maximum(tl.log(one_minus_p / one_minus_u), 0.0) * (m / one_minus_p)
    gap = one_minus_p - big_a * m
    v_next = tl.where(quadratic, v_quadratic, v_exponential)
    # log(1 + u) for the fused step's log1p(u) (no log1p in Triton's core language)
    log_term = tl.log(1.0 + tl.where(quadratic, -y, one_minus_p * one_minus_p / gap - one_minus_p))
    excess = (y * b) * (y * b) / (2.0 * (1.0 - y)) - 0.5 * (log_term + y)
    deviation = a * (zv * (2.0 * b + zv) - 1.0)
    martingale = tl.where(quadratic, k2 * deviation - 0.5 * k4 * m - excess, k2 * v_next - log_term)
    valid = tl.where(quadratic, y < 1.0, gap > 0)
    corrected = tl.where(
        valid, drift - 0.5 * k3 * v + martingale, drift + k0 + k1 * v + k2 * v_next
    )
    diffusion = tl.sqrt(tl.maximum(k3 * v + k4 * v_next, 0.0))
    return x + corrected + diffusion * zx, v_next


@triton.jit
def qe_paths_kernel(spot_ptr, var_ptr, s0_ptr, v0_ptr, k_ptr, n_cols, first_path, n_steps,
                     n_calls, seed_lo, seed_hi, ANTITHETIC: tl.constexpr, PSI_C: tl.constexpr,
                     EPS_HALF: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """Paths ``first_path + [pid BLOCK, (pid + 1) BLOCK)``: rows 0..T of spot and var."""
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    s0 = tl.load(s0_ptr + cols, mask=mask, other=1.0)
    v = tl.load(v0_ptr + cols, mask=mask, other=0.0)
    x = v * 0.0
    tl.store(spot_ptr + cols, s0, mask=mask)
    tl.store(var_ptr + cols, v, mask=mask)
    path = first_path + cols.to(tl.int64)
    if ANTITHETIC:  # pairs (2i, 2i + 1) share unit i, with opposite normals
        unit = path // 2
        sign = 1.0 - 2.0 * (path % 2).to(s0.dtype)
    else:
        unit = path
        sign = 1.0 + v * 0.0
    for call in range(0, n_calls):  # steps 2 call and 2 call + 1; n_calls = ceil(T / 2)
        z0, z1, z2, z3 = _normals4(seed_lo, seed_hi, unit, call, s0.dtype)
        step = 2 * call
        x, v = _qe_step(x, v, sign * z0, sign * z1, k_ptr + step * 11, PSI_C, EPS_HALF)
        row = (step + 1).to(tl.int64) * n_cols
        tl.store(spot_ptr + row + cols, s0 * tl.exp(x), mask=mask)
        tl.store(var_ptr + row + cols, v, mask=mask)
        if step + 1 < n_steps:
            x, v = _qe_step(x, v, sign * z2, sign * z3, k_ptr + (step + 1) * 11, PSI_C,
                            EPS_HALF)  # fmt: skip
            row = (step + 2).to(tl.int64) * n_cols
            tl.store(spot_ptr + row + cols, s0 * tl.exp(x), mask=mask)
            tl.store(var_ptr + row + cols, v, mask=mask)


def tl_dtype(dtype: torch.dtype) -> object:
    """Triton's float32 or float64 for ``dtype``."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"Triton paths support float32 and float64, got {dtype}")
    return tl.float32 if dtype == torch.float32 else tl.float64
