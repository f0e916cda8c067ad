"""Chunk generators behind :mod:`pricing.simulate` (public through that module).

Each generator validates its inputs, draws one seed from the generator, and yields
``(path_slice, paths)`` chunk by chunk; see :mod:`pricing.simulate` for the options.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import NamedTuple

import torch

from pricing import _hugepages as hugepages
from pricing._mc_random import (
    NormalSource,
    base_seed,
    drawn_chunks,
    drawn_slabs,
    step_normals,
)
from pricing._qe_fused import compiled_qe_step_into, step_constants
from pricing._simulate_checks import (
    check_chunk_size,
    check_grid,
    check_heston,
    check_nonnegative,
    check_paths,
    check_positive,
    check_qe_sigma,
    check_sabr,
    check_steps,
)
from pricing._simulate_steps import (
    PSI_C,
    EulerStep,
    HestonStep,
    heston_euler_step,
    heston_qe_step,
    sabr_step,
)
from pricing._triton_paths import available as triton_available
from pricing._triton_paths import qe_paths as triton_qe_paths
from pricing._typing import DEFAULT_DTYPE, check_numbers, real_number, real_tensor
from pricing._validation import check_finite

__all__ = [
    "HestonPaths",
    "SabrPaths",
    "check_per_path",
    "gbm_chunks",
    "heston_chunks",
    "per_path",
    "sabr_chunks",
    "time_grid",
]

Scalar = float | torch.Tensor


class HestonPaths(NamedTuple):
    """Heston paths.

    Attributes:
        spot: spot price paths, shape (N, T+1).
        variance: instantaneous variance paths, shape (N, T+1) (non-negative).

    Examples:
        >>> from pricing import simulate
        >>> paths = simulate.heston(8, 4, spot=100.0, v0=0.04, kappa=1.5, theta=0.04, sigma=0.5,
        ...                         rho=-0.7, maturity=1.0, generator=torch.Generator().manual_seed(0))
        >>> paths.spot.shape, paths.variance[:, 0].unique().tolist(), bool((paths.variance >= 0).all())
        (torch.Size([8, 5]), [0.04], True)
    """

    spot: torch.Tensor
    variance: torch.Tensor


class SabrPaths(NamedTuple):
    """SABR paths.

    Attributes:
        forward: forward price paths, shape (N, T+1).
        vol: stochastic volatility (alpha_t) paths, shape (N, T+1).

    Examples:
        >>> from pricing import simulate
        >>> paths = simulate.sabr(8, 4, forward=0.03, alpha=0.2, beta=0.5, rho=-0.3, nu=0.4,
        ...                       maturity=1.0, generator=torch.Generator().manual_seed(0))
        >>> paths.forward.shape, paths.vol[:, 0].unique().tolist(), bool((paths.forward >= 0).all())
        (torch.Size([8, 5]), [0.2], True)
    """

    forward: torch.Tensor
    vol: torch.Tensor


def time_grid(
    n_steps: int | None = None,
    maturity: float | None = None,
    *,
    grid: torch.Tensor | None = None,
    dtype: torch.dtype = DEFAULT_DTYPE,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return a validated time grid: ``grid`` when given, else ``n_steps`` uniform steps to maturity.

    Args:
        n_steps: number of steps T (checked against ``grid`` when both are given).
        maturity: last time in years (checked against ``grid`` when both are given).
        grid: explicit grid ``0 = t_0 < t_1 < ... < t_T``.
        dtype: floating dtype of the result.
        device: device of the result.

    Shape:
        Output: (T+1,).

    Examples:
        >>> time_grid(4, 1.0).tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if maturity is not None:  # None with a grid; one number, by name (float() named nothing)
        maturity = real_number("maturity", maturity)
    if grid is None:
        if n_steps is None or maturity is None:
            raise ValueError("give n_steps and maturity, or time_grid")
        check_steps(n_steps)
        check_positive("maturity", maturity)
        return torch.linspace(0.0, float(maturity), n_steps + 1, dtype=dtype, device=device)
    given = grid.dtype if isinstance(grid, torch.Tensor) else dtype
    grid = torch.as_tensor(grid, dtype=dtype, device=device)
    check_grid(grid)
    if n_steps is not None and n_steps != grid.numel() - 1:
        raise ValueError(f"n_steps={n_steps} disagrees with time_grid of {grid.numel() - 1} steps")
    # a float32 grid (given so, or cast to dtype) ends within its rounding of maturity: a float64
    # grid [0, 0.1] in float32 ended at 0.10000000149 and was refused with maturity=0.1
    tol = max([1e-9] + [torch.finfo(d).eps for d in (given, dtype) if d.is_floating_point])
    if maturity is not None and not math.isclose(float(grid[-1]), float(maturity), rel_tol=tol):
        raise ValueError(
            f"maturity={float(maturity)} disagrees with time_grid[-1]={float(grid[-1])}"
        )
    return grid


def gbm_chunks(
    n_paths: int,
    n_steps: int | None = None,
    *,
    spot: Scalar,
    volatility: Scalar,
    maturity: float | None = None,
    rate: Scalar = 0.0,
    dividend: Scalar = 0.0,
    time_grid: torch.Tensor | None = None,
    antithetic: bool = False,
    sobol: bool = False,
    dtype: torch.dtype = DEFAULT_DTYPE,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    reuse_buffers: bool = False,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield :func:`gbm` paths chunk by chunk as ``(path_slice, paths)``; arguments as :func:`gbm`,
    and ``reuse_buffers`` as in :func:`heston_chunks`.

    Without autograd each chunk is built in place in one buffer, a few steps of normals at a time
    (the log increments, their running sum row by row, then ``exp``); with a graph (an argument
    that requires grad) out of place from the chunk's normals.

    Shape:
        Output: paths of each chunk (C, T+1) with C = ``path_slice.stop - path_slice.start``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> chunks = gbm_chunks(3000, 2, spot=1.0, volatility=0.2, maturity=1.0, generator=g,
        ...                     chunk_size=1024)
        >>> [(s.start, p.shape[0]) for s, p in chunks]
        [(0, 1024), (1024, 1024), (2048, 952)]
    """
    check_paths(n_paths)
    check_chunk_size(chunk_size)
    grid = _grid(n_steps, maturity, time_grid, dtype, device)
    check_numbers(spot=spot, volatility=volatility, rate=rate, dividend=dividend)
    check_positive("spot", spot)
    check_nonnegative("volatility", volatility)
    check_finite(rate=rate, dividend=dividend)
    spot, volatility, rate, dividend = _from_numpy(
        dtype, grid.device, spot=spot, volatility=volatility, rate=rate, dividend=dividend
    ).values()
    check_per_path(n_paths, spot=spot, volatility=volatility, rate=rate, dividend=dividend)
    dt = grid.diff()[:, None]  # (T, 1)
    source = _source(n_paths, grid, 1, antithetic, sobol, generator, dtype)
    graph = any(
        isinstance(p, torch.Tensor) and p.requires_grad for p in (spot, volatility, rate, dividend)
    )
    buffers = _Buffers(reuse_buffers and not graph, dtype, grid.device, count=1)

    def chunks() -> Iterator[tuple[slice, torch.Tensor]]:
        for start, stop, normals in drawn_chunks(source, chunk_size):
            s0 = per_path(spot, start, stop, n_paths)
            vol = per_path(volatility, start, stop, n_paths)
            mu = per_path(rate, start, stop, n_paths) - per_path(dividend, start, stop, n_paths)
            z = normals[:, 0, :]  # (T, C)
            increments = (mu - 0.5 * vol**2) * dt + vol * dt.sqrt() * z  # (T, C)
            log_growth = torch.cat((torch.zeros_like(increments[:1]), increments.cumsum(0)))
            # in dtype: a float64 parameter promoted float32 paths to float64 (as in place it
            # does not)
            yield slice(start, stop), (s0 * log_growth.exp()).to(dtype).T  # (C, T+1)

    def chunks_in_place() -> Iterator[tuple[slice, torch.Tensor]]:
        for start, stop, slabs in drawn_slabs(source, chunk_size):
            s0 = per_path(spot, start, stop, n_paths)
            vol = per_path(volatility, start, stop, n_paths)
            mu = per_path(rate, start, stop, n_paths) - per_path(dividend, start, stop, n_paths)
            scale, drift = vol * dt.sqrt(), (mu - 0.5 * vol**2) * dt  # (T, 1 or C)
            out = buffers.get((len(dt) + 1, stop - start))[0]  # (T+1, C)
            out[0] = 0.0
            t = 0
            for slab in slabs:  # (S, 1, C): the log increments of S steps
                n = len(slab)
                torch.mul(slab[:, 0], scale[t : t + n], out=out[t + 1 : t + 1 + n])
                out[t + 1 : t + 1 + n].add_(drift[t : t + n])
                t += n
            # the running sum, row by row (torch's cumsum along dim 0 is ~10x slower here)
            for i in range(1, len(out)):
                out[i].add_(out[i - 1])
            yield slice(start, stop), out.exp_().mul_(s0).T  # (C, T+1)

    return chunks() if graph else chunks_in_place()


def heston_chunks(
    n_paths: int,
    n_steps: int | None = None,
    *,
    spot: Scalar,
    v0: Scalar,
    kappa: Scalar,
    theta: Scalar,
    sigma: Scalar,
    rho: Scalar,
    maturity: float | None = None,
    rate: Scalar = 0.0,
    dividend: Scalar = 0.0,
    scheme: str = "qe",
    time_grid: torch.Tensor | None = None,
    antithetic: bool = False,
    sobol: bool = False,
    dtype: torch.dtype = DEFAULT_DTYPE,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    compile: bool = False,
    reuse_buffers: bool = False,
) -> Iterator[tuple[slice, HestonPaths]]:
    """Yield :func:`heston` paths chunk by chunk as ``(path_slice, HestonPaths)``.

    Arguments as :func:`heston`, and ``reuse_buffers``: write every chunk into the memory of the
    one before (a chunk's tensors are then valid only until the next chunk is requested), for
    consumers that reduce each chunk before asking for the next, such as the pricers. Fresh
    memory is paid for on its first write, one page fault per page: on one thread here that was
    a fifth of an eager float64 simulation's time and a third of a compiled one's. With autograd
    every chunk gets fresh memory all the same (the graph keeps the paths).

    Shape:
        Output: each chunk's spot and variance (C, T+1).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> chunks = heston_chunks(2048, 3, spot=100.0, v0=0.04, kappa=1.5, theta=0.04, sigma=0.5,
        ...                        rho=-0.7, maturity=1.0, generator=g, chunk_size=1024)
        >>> [tuple(h.spot.shape) for _, h in chunks]
        [(1024, 4), (1024, 4)]
    """
    check_paths(n_paths)
    check_chunk_size(chunk_size)
    grid = _grid(n_steps, maturity, time_grid, dtype, device)
    check_numbers(spot=spot, v0=v0, kappa=kappa, theta=theta, sigma=sigma, rho=rho, rate=rate,
                   dividend=dividend)  # fmt: skip
    check_positive("spot", spot)
    check_heston(v0, kappa, theta, sigma, rho)
    check_finite(rate=rate, dividend=dividend)
    spot, v0, kappa, theta, sigma, rho, rate, dividend = _from_numpy(
        dtype, grid.device, spot=spot, v0=v0, kappa=kappa, theta=theta, sigma=sigma, rho=rho,
        rate=rate, dividend=dividend,
    ).values()  # fmt: skip
    _check_one_value("heston", rate=rate, dividend=dividend)
    if scheme not in ("qe", "euler"):
        raise ValueError(f"scheme must be 'qe' or 'euler', got {scheme!r}")
    model = {"kappa": kappa, "theta": theta, "sigma": sigma, "rho": rho}
    if scheme == "qe":
        _check_float_params(model)
        check_qe_sigma(sigma, dtype)
    elif compile:
        raise ValueError("compile=True is only available for scheme='qe'")
    check_per_path(n_paths, spot=spot, v0=v0, **model)
    start_grad = any(isinstance(p, torch.Tensor) and p.requires_grad for p in (spot, v0))
    if compile and start_grad:
        raise ValueError("compile=True has no autograd: spot and v0 must not require grad")
    dts = grid.diff().tolist()
    params = _as_floats(model)
    # Euler only (QE refuses them): per-path parameters, or ones with a graph, sliced per chunk
    tensor_params = {name: p for name, p in params.items() if isinstance(p, torch.Tensor)}
    params_need_grad = any(p.requires_grad for p in tensor_params.values())
    if scheme == "euler":
        steps = [EulerStep(dt, float(rate - dividend) * dt, **params) for dt in dts]
    else:
        steps = [HestonStep.build(dt, **model, drift=rate - dividend) for dt in dts]
    step_fn = heston_euler_step if scheme == "euler" else heston_qe_step
    source = _source(n_paths, grid, 2, antithetic, sobol, generator, dtype)
    constants = (
        [step_constants(c, dtype=dtype, device=grid.device) for c in steps] if compile else []
    )

    graph = start_grad or params_need_grad
    buffers = _Buffers(reuse_buffers and not graph, dtype, grid.device, count=2)
    if compile and not sobol and triton_available(grid.device, dtype):
        return _triton_qe_chunks(source, chunk_size, spot, v0, torch.stack(constants), buffers)

    def chunks() -> Iterator[tuple[slice, HestonPaths]]:
        for start, stop, slabs in drawn_slabs(source, chunk_size, prefetch=compile):
            v0_c = torch.as_tensor(
                per_path(v0, start, stop, n_paths), dtype=dtype, device=grid.device
            )
            s0 = torch.as_tensor(
                per_path(spot, start, stop, n_paths), dtype=dtype, device=grid.device
            )
            # (T+1, C) each: the spot (the log spot until the end, on the eager path) and variance
            log_s, var = buffers.get((len(steps) + 1, stop - start))
            if compile:
                _fused_qe_paths(s0, v0_c, slabs, constants, log_s, var)
                yield slice(start, stop), HestonPaths(log_s.T, var.T)
                continue
            x = torch.zeros_like(log_s[0])
            v = x + v0_c  # (C,); a per-path v0 tensor keeps its graph (pathwise dV/dv0)
            log_s[0], var[0] = x, v
            chunk_steps = steps
            if tensor_params:  # the chunk's slice of per-path parameters
                sliced = {name: torch.as_tensor(per_path(p, start, stop, n_paths), dtype=dtype,
                                                device=grid.device)
                          for name, p in tensor_params.items()}  # fmt: skip
                chunk_steps = [replace(step, **sliced) for step in steps]
            # with a graph (pathwise greeks) autograd keeps the normals: copy them out of the buffer
            keep_normals = v.requires_grad or params_need_grad
            for i, (zv, zx) in enumerate(step_normals(slabs, copy=keep_normals), start=1):
                x, v = step_fn(x, v, zv, zx, chunk_steps[i - 1])
                log_s[i], var[i] = x, v
            if s0.requires_grad or log_s.requires_grad:  # exp_ + mul_ breaks autograd
                spot_paths = s0 * log_s.exp()
            else:
                spot_paths = log_s.exp_().mul_(s0)
            if scheme == "euler":  # QE variances are non-negative by construction
                var.clamp_min_(0.0)
            yield slice(start, stop), HestonPaths(spot_paths.T, var.T)

    return chunks()


def sabr_chunks(
    n_paths: int,
    n_steps: int | None = None,
    *,
    forward: Scalar,
    alpha: Scalar,
    beta: float,
    rho: Scalar,
    nu: Scalar,
    maturity: float | None = None,
    shift: float = 0.0,
    time_grid: torch.Tensor | None = None,
    antithetic: bool = False,
    sobol: bool = False,
    dtype: torch.dtype = DEFAULT_DTYPE,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    reuse_buffers: bool = False,
) -> Iterator[tuple[slice, SabrPaths]]:
    """Yield :func:`sabr` paths chunk by chunk as ``(path_slice, SabrPaths)``.

    Arguments as :func:`sabr`, and ``reuse_buffers`` as in :func:`heston_chunks`.

    Shape:
        Output: each chunk's forward and vol (C, T+1).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> chunks = sabr_chunks(100, 3, forward=0.03, alpha=0.2, beta=0.5, rho=-0.3, nu=0.4,
        ...                      maturity=1.0, generator=g)
        >>> [(s.stop, tuple(k.vol.shape)) for s, k in chunks]
        [(100, (100, 4))]
    """
    check_paths(n_paths)
    check_chunk_size(chunk_size)
    grid = _grid(n_steps, maturity, time_grid, dtype, device)
    check_numbers(forward=forward, alpha=alpha, rho=rho, nu=nu)
    # one number each: a 1-element tensor shift failed in torch.full_like, a beta of several
    # values in float(), naming nothing
    beta, shift = real_number("beta", beta), real_number("shift", shift)
    check_sabr(forward, alpha, beta, rho, nu, shift)
    forward, alpha, rho, nu = _from_numpy(
        dtype, grid.device, forward=forward, alpha=alpha, rho=rho, nu=nu
    ).values()
    _check_one_value("sabr", forward=forward, alpha=alpha, rho=rho, nu=nu)
    source = _source(n_paths, grid, 2, antithetic, sobol, generator, dtype)
    dts = grid.diff().tolist()

    buffers = _Buffers(reuse_buffers, dtype, grid.device, count=2)

    def chunks() -> Iterator[tuple[slice, SabrPaths]]:
        for start, stop, slabs in drawn_slabs(source, chunk_size):
            fwd, vol = buffers.get((len(dts) + 1, stop - start))  # (T+1, C) each
            x = torch.full_like(fwd[0], float(forward) + shift)
            a = torch.full_like(fwd[0], float(alpha))
            fwd[0], vol[0] = x, a
            for i, (z1, z2) in enumerate(step_normals(slabs), start=1):
                x, a = sabr_step(x, a, z1, z2, dt=dts[i - 1], beta=beta, rho=rho, nu=nu)
                fwd[i], vol[i] = x, a
            yield slice(start, stop), SabrPaths((fwd.sub_(shift) if shift else fwd).T, vol.T)

    return chunks()


class _Buffers:
    """The ``count`` output tensors of each chunk: fresh ones, or with ``reuse`` those of the
    chunk before when the shape is the same (the last chunk may be shorter)."""

    def __init__(self, reuse: bool, dtype: torch.dtype, device: torch.device, count: int) -> None:
        self.reuse, self.dtype, self.device, self.count = reuse, dtype, device, count
        self.last: tuple[torch.Tensor, ...] | None = None

    def get(self, shape: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """``count`` uninitialised tensors of ``shape``."""
        if self.last is not None and self.last[0].shape == shape:
            return self.last
        kind = {"dtype": self.dtype, "device": self.device}
        out = tuple(hugepages.empty(shape, **kind) for _ in range(self.count))
        if self.reuse:
            self.last = out
        return out


def _fused_qe_paths(
    s0: torch.Tensor,
    v0: torch.Tensor,
    slabs: Iterator[torch.Tensor],
    constants: list[torch.Tensor],
    spot_paths: torch.Tensor,
    var: torch.Tensor,
) -> None:
    """QE paths of one chunk through the compiled step, written row by row into ``spot_paths``
    and ``var`` (no autograd).

    Shape:
        s0, v0: () or (C,). slabs: (S, 2, C) each. constants: T tensors (11,).
        spot_paths, var: (T+1, C), overwritten.
    """
    spot_paths[0], var[0] = s0, v0
    x = torch.zeros_like(spot_paths[0])
    step, i = compiled_qe_step_into(s0.device.type), 0
    for slab in slabs:
        for z in slab:
            x = step(x, var[i], z, constants[i], s0, spot_paths[i + 1], var[i + 1])
            i += 1


def _triton_qe_chunks(
    source: NormalSource,
    chunk_size: int | None,
    spot: Scalar,
    v0: Scalar,
    constants: torch.Tensor,
    buffers: _Buffers,
) -> Iterator[tuple[slice, HestonPaths]]:
    """QE chunks on CUDA by :func:`pricing._triton_paths.qe_paths`: one kernel per chunk, its
    normals drawn in the kernel (the counter-based ones the eager steps get on CUDA).

    Shape:
        constants: (T, 11). Output: each chunk's spot and variance (C, T+1).
    """
    kind = {"dtype": source.dtype, "device": source.device}
    for start, stop in source.chunk_bounds(chunk_size):
        size = stop - start
        s0 = torch.as_tensor(per_path(spot, start, stop, source.n_paths), **kind).expand(size)
        v0_c = torch.as_tensor(per_path(v0, start, stop, source.n_paths), **kind).expand(size)
        spot_paths, var = buffers.get((source.n_steps + 1, size))
        triton_qe_paths(s0, v0_c, constants, spot_paths, var, seed=source.seed, first_path=start,
                        antithetic=source.antithetic, psi_c=PSI_C)  # fmt: skip
        yield slice(start, stop), HestonPaths(spot_paths.T, var.T)


def _source(
    n_paths: int,
    grid: torch.Tensor,
    n_factors: int,
    antithetic: bool,
    sobol: bool,
    generator: torch.Generator | None,
    dtype: torch.dtype,
) -> NormalSource:
    return NormalSource(
        n_paths=n_paths,
        n_steps=grid.numel() - 1,
        n_factors=n_factors,
        seed=base_seed(generator),
        antithetic=antithetic,
        sobol=sobol,
        dtype=dtype,
        device=grid.device,
        times=tuple(grid.tolist()) if sobol else None,
    )


def _grid(
    n_steps: int | None,
    maturity: float | None,
    grid: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> torch.Tensor:
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    return time_grid(n_steps, maturity, grid=grid, dtype=dtype, device=device)


def _check_float_params(model: dict[str, Scalar]) -> None:
    """QE precomputes its step constants as floats: refuse per-path or differentiable parameters."""
    for name, value in model.items():
        if isinstance(value, torch.Tensor) and (value.numel() != 1 or value.requires_grad):
            raise ValueError(
                f"{name}: scheme='qe' takes one float value without autograd (its step constants "
                "are precomputed, and its branch switch biases pathwise parameter derivatives); "
                "use scheme='euler' for per-path or differentiable model parameters"
            )


def _from_numpy(dtype: torch.dtype, device: torch.device, **values: object) -> dict[str, Scalar]:
    """Numpy arrays and scalars, and lists, as the simulators take numbers: one value as a
    float (as :func:`pricing._typing.real_number` reads it), several as a tensor of ``dtype`` on
    ``device``, to be checked and sliced as a per-path tensor is; tensors and Python numbers as
    given. The steps mix these with tensors, which a numpy array does not (``mul_(): argument
    'other' must be Tensor, not numpy.ndarray``, or float()'s "only 0-dimensional arrays can be
    converted to Python scalars", naming nothing)."""
    out: dict[str, Scalar] = {}
    for name, value in values.items():
        if isinstance(value, torch.Tensor) and value.ndim > 1 and value.numel() == 1:
            out[name] = value.reshape(())  # as the number (a QE v0 of shape (1, 1) was an
            continue  # IndexError: the (C,) variance broadcast to (1, C))
        if isinstance(value, torch.Tensor | int | float):
            out[name] = value
            continue
        array = real_tensor(name, value)  # one conversion (numpy's float64 kept for one value)
        out[name] = float(array) if array.numel() == 1 else array.to(dtype=dtype, device=device)
    return out


def _check_one_value(simulator: str, **values: Scalar) -> None:
    """Refuse by name a tensor of several values for a parameter that ``simulator`` takes as one
    number, or none (``float()`` said only "only one element tensors can be converted to Python
    scalars")."""
    for name, value in values.items():
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            raise ValueError(
                f"{name}: {simulator} takes one value, got a tensor of shape {tuple(value.shape)}"
            )


def _as_floats(model: dict[str, Scalar]) -> dict[str, Scalar]:
    """Plain numbers and one-element tensors without a graph as floats; other tensors as given."""
    return {
        name: float(value)
        if not isinstance(value, torch.Tensor) or (value.numel() == 1 and not value.requires_grad)
        else value
        for name, value in model.items()
    }


def check_per_path(n_paths: int, **values: Scalar) -> None:
    """A (N,) tensor parameter must have one value per path; checked before any chunk is drawn.
    A tensor of several values and more dimensions is refused by name: it was not sliced per
    chunk, so it crashed in torch ("The size of tensor a (8) must match the size of tensor b
    (7)"), or a spot of shape (N, 1) was read as one per step when N was the steps plus one."""
    for name, value in values.items():
        if isinstance(value, torch.Tensor) and value.ndim > 1 and value.numel() > 1:
            raise ValueError(
                f"{name} must be a scalar or one value per path ({n_paths},), got a tensor of "
                f"shape {tuple(value.shape)}"
            )
        if (
            isinstance(value, torch.Tensor)
            and value.ndim == 1
            and value.numel() not in (1, n_paths)
        ):
            raise ValueError(
                f"{name} has {value.numel()} values for {n_paths} paths (give one per path or a scalar)"
            )


def per_path(value: Scalar, start: int, stop: int, n_paths: int) -> Scalar:
    """The chunk's slice of a per-path (N,) parameter (checked by :func:`check_per_path`)."""
    if isinstance(value, torch.Tensor) and value.ndim == 1 and value.numel() > 1:
        return value[start:stop]
    return value
