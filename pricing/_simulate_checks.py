"""Input checks of the path simulators; each error names the offending field."""

from __future__ import annotations

import numpy as np
import torch

from pricing._typing import real_tensor
from pricing._validation import check_positive_int

__all__ = [
    "check_chunk_size",
    "check_correlation",
    "check_grid",
    "check_heston",
    "check_increasing",
    "check_nonnegative",
    "check_paths",
    "check_positive",
    "check_qe_sigma",
    "check_sabr",
    "check_single",
    "check_steps",
]

Scalar = float | torch.Tensor


def _values(name: str, value: Scalar) -> torch.Tensor:
    """``value`` in float64 (a float went through float32 first: v0=-0.04 was shown as
    -0.03999999910593033, and a spot of 1e-50 (or 1e39) was refused as 0.0 (inf)); a string,
    None or complex is refused by ``name`` (torch's message named no input)."""
    return real_tensor(name, value, dtype=torch.float64).detach()


def check_positive(name: str, value: Scalar) -> None:
    """Require ``value`` (scalar or tensor) finite and > 0; the error names ``name``."""
    v = _values(name, value)
    bad = ~torch.isfinite(v) | (v <= 0)
    if bool(bad.any()):
        raise ValueError(f"{name} must be positive and finite, got {_show(v, bad)}")


def check_nonnegative(name: str, value: Scalar) -> None:
    """Require ``value`` finite and >= 0; the error names ``name``."""
    v = _values(name, value)
    bad = ~torch.isfinite(v) | (v < 0)
    if bool(bad.any()):
        raise ValueError(f"{name} must be non-negative and finite, got {_show(v, bad)}")


def check_single(name: str, value: object, why: str) -> None:
    """Require ``value`` to hold one number (a scalar or one element); the error names ``name``
    and says ``why``."""
    shape = tuple(real_tensor(name, value).shape)  # text, None, bools refused by name
    if int(np.prod(shape)) != 1:
        raise ValueError(f"{name} must be a single value {why}, got shape {shape}")


def check_correlation(value: Scalar) -> None:
    """Require ``rho`` in [-1, 1]."""
    v = _values("rho", value)
    bad = ~torch.isfinite(v) | (v.abs() > 1)
    if bool(bad.any()):
        raise ValueError(f"rho must lie in [-1, 1], got {_show(v, bad)}")


def _show(v: torch.Tensor, bad: torch.Tensor) -> str:
    """The first offending value, with its index for a tensor (the minimum was shown, which
    for an inf among positive values was not the culprit)."""
    if v.numel() == 1:
        return str(v.item())
    index = tuple(int(i) for i in torch.nonzero(bad)[0])
    where = index[0] if len(index) == 1 else index
    return f"{v[index].item()} at index {where}"


def check_paths(n_paths: int) -> None:
    """Require a positive integer ``n_paths`` (numpy integers too; not a bool)."""
    check_positive_int("n_paths", n_paths)


def check_steps(n_steps: int) -> None:
    """Require a positive integer ``n_steps`` (numpy integers too; not a bool)."""
    check_positive_int("n_steps", n_steps)


def check_grid(grid: torch.Tensor) -> None:
    """Require a 1-D, finite, strictly increasing grid starting at 0 (names the bad step)."""
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(
            f"time_grid must be 1-D with at least 2 points, got shape {tuple(grid.shape)}"
        )
    check_increasing(grid)
    if float(grid[0]) != 0.0:
        raise ValueError("time_grid must start at 0")


def check_increasing(grid: torch.Tensor) -> None:
    """Require a finite, strictly increasing grid; the error names the first bad step."""
    if not bool(torch.isfinite(grid).all()):
        raise ValueError("time_grid must be finite and strictly increasing (it has NaN or inf)")
    bad = (grid.diff() <= 0).nonzero()
    if bad.numel():
        raise ValueError(f"time_grid must be finite and strictly increasing; step "
                         f"{int(bad[0, 0])} is not")  # fmt: skip


def check_heston(v0: Scalar, kappa: Scalar, theta: Scalar, sigma: Scalar, rho: Scalar) -> None:
    """Check the Heston parameters: v0 >= 0; kappa, theta, sigma > 0; rho in [-1, 1]."""
    check_nonnegative("v0", v0)
    for name, value in (("kappa", kappa), ("theta", theta), ("sigma", sigma)):
        check_positive(name, value)
    check_correlation(rho)


def check_qe_sigma(sigma: float, dtype: torch.dtype) -> None:
    """Require ``sigma >= tiny ** (1/4)`` of ``dtype`` for the QE scheme (3.3e-10 in float32,
    1.2e-77 in float64).

    The QE step writes its terms of order ``rho v / sigma`` so that they do not cancel (it tends
    to the deterministic-variance limit as sigma falls), but the conditional variance of the
    variance, of order ``sigma^2 v dt``, underflows to 0 and makes the step NaN (float32 from
    sigma ~ 1e-20, float64 from ~ 1e-160). At the floor ``sigma^2 = sqrt(tiny)``, which keeps it
    normal unless ``v dt`` is below ``sqrt(tiny)`` too (1e-19 in float32). Full-truncation Euler
    has no such term.
    """
    floor = torch.finfo(dtype).tiny ** 0.25
    if float(sigma) < floor:
        raise ValueError(
            f"sigma={float(sigma)} is too small for scheme='qe' in {dtype} (the conditional "
            f"variance of its variance step, of order sigma^2, underflows): use sigma >= "
            f"{floor:.2g}, float64 or scheme='euler'"
        )


def check_sabr(
    forward: Scalar, alpha: Scalar, beta: float, rho: Scalar, nu: Scalar, shift: float
) -> None:
    """Check the SABR parameters: beta in [0, 1], forward + shift > 0, alpha > 0, nu >= 0, rho."""
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    check_positive("forward + shift", _values("forward", forward) + shift)
    check_positive("alpha", alpha)
    check_nonnegative("nu", nu)
    check_correlation(rho)


def check_chunk_size(chunk_size: int | None) -> None:
    """Require None or a positive integer ``chunk_size`` (numpy integers too, as every count;
    not a bool: ``np.int64(2048)`` was refused as not "a positive integer", and True taken as 1)."""
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
