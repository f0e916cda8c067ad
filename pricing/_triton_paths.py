"""Triton kernels for CUDA: counter-based normals, and whole QE Heston paths in one kernel.

:func:`normals` writes the normals of :func:`pricing._philox.counter_normals` (same counters,
same Box-Muller; equal up to the rounding of the transcendental functions). :func:`qe_paths`
simulates a chunk of Heston QE paths with no normals in memory at all: each program owns a block
of paths, keeps their log spot and variance in registers, draws each pair of steps' four normals
from Philox in place and writes one row of spots and variances per step. On a GPU, the normals
and the per-step launches of the eager simulation cost more than the arithmetic; here the cost is
the Philox rounds, the step's transcendentals and the two output rows.

The QE step is :func:`pricing._qe_fused.fused_qe_step`, term for term (both branches, branch-free,
the exponential branch's ``1 - U = Phi(-zv)`` by ``erf`` and floored at half the dtype's epsilon).

Import-safe without Triton: :func:`available` is then False and nothing here is called.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.random import philox_impl
except ImportError:  # CPU-only installs: the torch operations of pricing._philox are used
    triton = None

__all__ = ["available", "normals", "qe_paths"]

_BLOCK_UNITS = 256
"""Units per program of :func:`normals`."""
_BLOCK_PATHS = 128
"""Paths per program of :func:`qe_paths`: one float per thread and step, so that enough programs
fill the GPU at the default chunk size."""


def available(device: torch.device, dtype: torch.dtype | None = None) -> bool:
    """Whether the kernels can run on ``device`` (CUDA with Triton installed), for ``dtype``
    where given (:func:`qe_paths` computes in float32 or float64 only)."""
    wide = dtype is None or dtype in (torch.float32, torch.float64)
    return triton is not None and device.type == "cuda" and wide


if triton is not None:

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
        u0 = ((r0 >> 9) * 2 + 1).to(DTYPE) * 5.9604644775390625e-08  # 2^-24
        u1 = ((r1 >> 9) * 2 + 1).to(DTYPE) * 5.9604644775390625e-08
        u2 = ((r2 >> 9) * 2 + 1).to(DTYPE) * 5.9604644775390625e-08
        u3 = ((r3 >> 9) * 2 + 1).to(DTYPE) * 5.9604644775390625e-08
        radius_a = tl.sqrt(-2.0 * tl.log(u0))
        radius_b = tl.sqrt(-2.0 * tl.log(u2))
        angle_a = 6.283185307179586 * u1
        angle_b = 6.283185307179586 * u3
        return (radius_a * tl.cos(angle_a), radius_a * tl.sin(angle_a),
                radius_b * tl.cos(angle_b), radius_b * tl.sin(angle_b))  # fmt: skip

    @triton.jit
    def _normals_kernel(out_ptr, seed_lo, seed_hi, unit_start, n_units, per_unit, n_blocks,
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
        b2 = (tp - 1.0) + tl.sqrt(tl.maximum(tp * (tp - 1.0), 0.0))
        a = m / (1.0 + b2)
        w = 1.0 - 2.0 * big_a * a
        root = tl.sqrt(b2) + zv
        v_quadratic = a * root * root
        one_minus_p = tl.minimum(tl.maximum(2.0 * tp / (2.0 + tp), 0.001), 1.0)
        one_minus_u = tl.maximum(0.5 * (1.0 - tl.math.erf(zv * 0.7071067811865476)), EPS_HALF)
        v_exponential = tl.maximum(tl.log(one_minus_p / one_minus_u), 0.0) * (m / one_minus_p)
        gap = one_minus_p - big_a * m
        v_next = tl.where(quadratic, v_quadratic, v_exponential)
        log_term = tl.log(
            tl.where(quadratic, w, (1.0 - one_minus_p) + one_minus_p * one_minus_p / gap)
        )
        log_mgf = tl.where(quadratic, big_a * b2 * a / w - 0.5 * log_term, log_term)
        valid = tl.where(quadratic, w > 0, gap > 0)
        corrected = tl.where(valid, drift - log_mgf - 0.5 * k3 * v, drift + k0 + k1 * v)
        diffusion = tl.sqrt(tl.maximum(k3 * v + k4 * v_next, 0.0))
        return x + corrected + k2 * v_next + diffusion * zx, v_next

    @triton.jit
    def _qe_paths_kernel(spot_ptr, var_ptr, s0_ptr, v0_ptr, k_ptr, n_cols, first_path, n_steps,
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


def _tl_dtype(dtype: torch.dtype) -> object:
    """Triton's float32 or float64 for ``dtype``."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"Triton paths support float32 and float64, got {dtype}")
    return tl.float32 if dtype == torch.float32 else tl.float64


def _key(seed: int) -> tuple[int, int]:
    return seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF


def normals(
    seed: int,
    unit_start: int,
    n_units: int,
    n_steps: int,
    n_factors: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """:func:`pricing._philox.counter_normals` by one Triton kernel.

    Shape:
        Output: (T, F, U).
    """
    per_unit = n_steps * n_factors
    if dtype.itemsize < 4:  # float16 / bfloat16: drawn in float32, then rounded
        return normals(seed, unit_start, n_units, n_steps, n_factors, dtype=torch.float32,
                       device=device).to(dtype)  # fmt: skip
    out = torch.empty((n_steps, n_factors, n_units), dtype=dtype, device=device)
    blocks = triton.cdiv(n_units, _BLOCK_UNITS)
    if n_units and per_unit:
        grid = (triton.cdiv(per_unit, 4) * blocks,)
        _normals_kernel[grid](out, *_key(seed), unit_start, n_units, per_unit, blocks,
                              DTYPE=_tl_dtype(dtype), BLOCK=_BLOCK_UNITS)  # fmt: skip
    return out


def qe_paths(
    s0: torch.Tensor,
    v0: torch.Tensor,
    constants: torch.Tensor,
    spot_out: torch.Tensor,
    var_out: torch.Tensor,
    *,
    seed: int,
    first_path: int,
    antithetic: bool,
    psi_c: float,
) -> None:
    """Heston QE paths ``first_path + [0, C)`` with in-kernel normals, written into the outputs.

    The normals are those of :func:`pricing._philox.counter_normals` with two factors (variance,
    then log spot), per path or, with ``antithetic``, per pair ``(2i, 2i + 1)`` with opposite signs.

    Shape:
        s0, v0: (C,). constants: (T, 11), the rows of
        :func:`pricing._qe_fused.step_constants`. spot_out, var_out: (T+1, C), overwritten.
    """
    n_steps, n_cols = constants.shape[0], s0.shape[0]
    if not (spot_out.is_contiguous() and var_out.is_contiguous()):
        raise ValueError("qe_paths writes rows of contiguous (T+1, C) outputs")
    if n_cols == 0:
        return
    eps_half = torch.finfo(s0.dtype).eps / 2
    _tl_dtype(s0.dtype)
    grid = (triton.cdiv(n_cols, _BLOCK_PATHS),)
    _qe_paths_kernel[grid](spot_out, var_out, s0.contiguous(), v0.contiguous(),
                           constants.contiguous(), n_cols, first_path, n_steps, (n_steps + 1) // 2,
                           *_key(seed),
                           ANTITHETIC=antithetic, PSI_C=psi_c, EPS_HALF=eps_half,
                           BLOCK=_BLOCK_PATHS)  # fmt: skip
