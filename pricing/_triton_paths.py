"""Triton kernels for CUDA: counter-based normals, and whole QE Heston paths in one kernel.

:func:`normals` writes the normals of :func:`pricing._philox.counter_normals` (same counters,
same Box-Muller; equal up to the rounding of the transcendental functions). :func:`qe_paths`
simulates a chunk of Heston QE paths with no normals in memory at all: each program owns a block
of paths, keeps their log spot and variance in registers, draws each pair of steps' four normals
from Philox in place and writes one row of spots and variances per step. On a GPU, the normals
and the per-step launches of the eager simulation cost more than the arithmetic; here the cost is
the Philox rounds, the step's transcendentals and the two output rows.

The QE step is :func:`pricing._qe_fused.fused_qe_step`, term for term (both branches, branch-free,
the exponential branch's ``1 - U = Phi(-zv)`` by ``erf`` and floored at half the dtype's epsilon),
except that its ``log1p(u)`` is ``log(1 + u)`` (Triton's core language has no ``log1p``): the log
spot moves by at most half an epsilon per step.

Importing this module does not import Triton (:mod:`pricing._triton_kernels` is imported when a
kernel is first launched); without Triton :func:`available` is False and nothing here is called.
"""

from __future__ import annotations

import importlib.util

import torch

INSTALLED = importlib.util.find_spec("triton") is not None
"""Whether Triton can be imported (CUDA builds of torch bring it; CPU-only installs use the torch
operations of :mod:`pricing._philox`)."""

__all__ = ["INSTALLED", "available", "normals", "qe_paths"]

_BLOCK_UNITS = 256
"""Units per program of :func:`normals`."""
_BLOCK_PATHS = 128
"""Paths per program of :func:`qe_paths`: one float per thread and step, so that enough programs
fill the GPU at the default chunk size."""


def available(device: torch.device, dtype: torch.dtype | None = None) -> bool:
    """Whether the kernels can run on ``device`` (CUDA with Triton installed), for ``dtype``
    where given (:func:`qe_paths` computes in float32 or float64 only)."""
    wide = dtype is None or dtype in (torch.float32, torch.float64)
    return INSTALLED and device.type == "cuda" and wide


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
    from pricing import _triton_kernels as kernels

    out = torch.empty((n_steps, n_factors, n_units), dtype=dtype, device=device)
    blocks = -(-n_units // _BLOCK_UNITS)
    if n_units and per_unit:
        grid = (-(-per_unit // 4) * blocks,)
        kernels.normals_kernel[grid](out, *_key(seed), unit_start, n_units, per_unit, blocks,
                                     DTYPE=kernels.tl_dtype(dtype), BLOCK=_BLOCK_UNITS)  # fmt: skip
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
    from pricing import _triton_kernels as kernels

    kernels.tl_dtype(s0.dtype)  # float32 or float64
    grid = (-(-n_cols // _BLOCK_PATHS),)
    kernels.qe_paths_kernel[grid](spot_out, var_out, s0.contiguous(), v0.contiguous(),
                           constants.contiguous(), n_cols, first_path, n_steps, (n_steps + 1) // 2,
                           *_key(seed),
                           ANTITHETIC=antithetic, PSI_C=psi_c, EPS_HALF=eps_half,
                           BLOCK=_BLOCK_PATHS)  # fmt: skip
