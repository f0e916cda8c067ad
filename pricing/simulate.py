"""Pure path simulators: geometric Brownian motion, Heston (QE or Euler) and SABR.

Every simulator takes sizes, model parameters, ``dtype``, ``device`` and a ``torch.Generator`` and
returns tensors shaped (N, T+1) whose column 0 is the initial state. A model parameter may be a
numpy number, 0-d or one-element array (read as that number), and where a tensor of one value per
path is taken, a numpy array of N values is too. Options shared by all of them:

* ``time_grid``: a 1-D tensor ``0 = t_0 < ... < t_T`` that replaces ``n_steps``/``maturity``.
* ``antithetic``: adjacent paths ``(2i, 2i + 1)`` use opposite normals (``n_paths`` must be even).
* ``sobol``: scrambled Sobol points (``torch.quasirandom.SobolEngine``, dimension = steps times
  factors, at most 21201) mapped through the inverse normal CDF and then to each factor's
  Brownian path by Brownian-bridge construction, so that the first Sobol dimensions fix the
  terminal value and the coarse shape of the path.
* ``chunk_size``: paths simulated at a time (rounded up to a multiple of 1024). The result does not
  depend on it: the random numbers of a path depend only on the seed drawn from ``generator`` and
  the path's index, so a chunked run returns exactly the unchunked numbers.

The ``*_chunks`` variants yield ``(slice, paths)`` pairs instead of one tensor, so that Monte Carlo
estimators can reduce each chunk and keep memory bounded for any number of paths (the normals of
one chunk, about 2**23 numbers by default, plus its paths).

Speed: ``heston(..., compile=True)`` fuses the QE step with ``torch.compile`` into one
single-threaded kernel that releases the GIL; on CPU with ``torch.get_num_threads() >= 2`` the
next normals are then drawn in a background thread while the kernel runs (so do ``gbm``'s, chunk
by chunk). The eager step-by-step simulators use the threads inside each operation instead (a
drawing thread beside them stalls their OpenMP barriers). On CUDA, ``compile=True`` (pseudo-random
normals) runs each chunk's whole QE simulation in one Triton kernel that draws its normals in
place (:mod:`pricing._triton_paths`). None of this changes the numbers (beyond rounding for
``compile``).

Random numbers: on the CPU, torch's generator per block of 1,024 paths; on accelerators,
counter-based Philox normals (:mod:`pricing._philox`). Either way a path's normals depend on the
seed and the path's index alone, so chunking does not change them; a CPU and a GPU run of one
seed differ.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pricing import _hugepages as hugepages
from pricing._simulate_chunks import (
    HestonPaths,
    SabrPaths,
    gbm_chunks,
    heston_chunks,
    sabr_chunks,
    time_grid,
)
from pricing._typing import DEFAULT_DTYPE

__all__ = [
    "HestonPaths",
    "SabrPaths",
    "gbm",
    "gbm_chunks",
    "heston",
    "heston_chunks",
    "sabr",
    "sabr_chunks",
    "time_grid",
]

Scalar = float | torch.Tensor


def gbm(
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
) -> torch.Tensor:
    """Simulate geometric Brownian motion exactly on the grid (log-Euler is exact for GBM).

    ``dS = (rate - dividend) S dt + volatility S dW``. ``spot``, ``volatility``, ``rate`` and
    ``dividend`` may be scalars or tensors of shape (N,) (one value per path, e.g. to get per-path
    pathwise derivatives by autograd); gradients flow to them.

    Args:
        n_paths: number of paths N.
        n_steps: number of time steps T (or give ``time_grid``).
        spot: initial price, > 0.
        volatility: lognormal volatility, >= 0.
        maturity: horizon in years, > 0 (or give ``time_grid``).
        rate: continuously compounded risk-free rate.
        dividend: continuously compounded dividend yield.
        time_grid: explicit grid ``0 = t_0 < ... < t_T`` replacing ``n_steps``/``maturity``.
        antithetic: adjacent paths use opposite normals (N must be even).
        sobol: scrambled Sobol points with Brownian-bridge construction.
        dtype: floating dtype (float64 by default).
        device: device of the paths.
        generator: source of the seed; None draws fresh entropy.
        chunk_size: paths per chunk (memory bound); the result does not depend on it.

    Returns:
        Spot paths; column 0 equals ``spot``.

    Shape:
        Output: (N, T+1).

    References:
        Glasserman (2004), Monte Carlo Methods in Financial Engineering, section 3.2.1.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> paths = gbm(4, 3, spot=100.0, volatility=0.2, maturity=1.0, generator=g)
        >>> paths.shape, paths[:, 0].tolist()
        (torch.Size([4, 4]), [100.0, 100.0, 100.0, 100.0])
    """
    chunks = gbm_chunks(
        n_paths, n_steps, spot=spot, volatility=volatility, maturity=maturity, rate=rate,
        dividend=dividend, time_grid=time_grid, antithetic=antithetic, sobol=sobol, dtype=dtype,
        device=device, generator=generator, chunk_size=chunk_size,
        reuse_buffers=True,  # the chunks are copied out
    )  # fmt: skip
    return _collect(n_paths, chunks)[0]


def heston(
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
) -> HestonPaths:
    """Simulate the Heston model with Andersen's QE scheme (default) or full-truncation Euler.

    ``dS = (rate - dividend) S dt + sqrt(v) S dW1``, ``dv = kappa (theta - v) dt + sigma sqrt(v) dW2``,
    ``d<W1, W2> = rho dt``. ``scheme="qe"``: quadratic-exponential variance step with switching level
    psi_c = 1.5, central discretisation of the integrated variance (gamma1 = gamma2 = 0.5) and the
    martingale correction of the log-spot drift, so that ``E[S_t] = S_0 exp((r - q) t)`` exactly
    (where the correction's condition ``A < 1/(2a)`` resp. ``A < beta`` fails, typically for rho > 0
    and long steps, the uncorrected drift is used, and ``E[S_t]`` is infinite:
    :func:`pricing._simulate_steps.qe_is_martingale` tells; more steps restore it).
    ``scheme="euler"``: full-truncation Euler in log spot (Lord, Koekkoek and van Dijk), an
    exact martingale too. Two normals per step; the exponential branch of QE uses
    ``U = Phi(Z_v)``. The returned variance is non-negative (``max(v, 0)`` for Euler). ``spot`` and
    ``v0`` may be scalars or tensors of shape (N,) (one value per path, e.g. to get per-path
    pathwise derivatives by autograd, as :func:`pricing.mc_greeks.heston_pathwise_greeks` does);
    gradients flow to them through the eager steps (``compile=True`` is not meant for autograd).
    With ``scheme="euler"`` so may ``kappa, theta, sigma, rho``; QE takes them as plain numbers (its
    step constants are precomputed, and its branch switch would bias their pathwise derivatives),
    and refuses per-path or differentiable ones by name.

    Args:
        n_paths: number of paths N.
        n_steps: number of time steps T (or give ``time_grid``).
        spot: initial price, > 0, scalar or (N,).
        v0: initial variance, >= 0, scalar or (N,).
        kappa: mean-reversion speed, > 0 (Euler: scalar or (N,)).
        theta: long-run variance, > 0 (Euler: scalar or (N,)).
        sigma: volatility of variance, > 0 (Euler: scalar or (N,); QE: at least the fourth root
            of ``dtype``'s smallest normal number, 3.3e-10 in float32 and 1.2e-77 in float64;
            as sigma falls, QE tends to the deterministic-variance limit).
        rho: spot/variance correlation in [-1, 1] (Euler: scalar or (N,)).
        maturity: horizon in years (or give ``time_grid``).
        rate: continuously compounded risk-free rate.
        dividend: continuously compounded dividend yield.
        scheme: ``"qe"`` or ``"euler"``.
        time_grid: explicit grid ``0 = t_0 < ... < t_T`` replacing ``n_steps``/``maturity``.
        antithetic: adjacent paths use opposite normals (N must be even).
        sobol: scrambled Sobol points with Brownian-bridge construction.
        dtype: floating dtype (float64 by default).
        device: device of the paths.
        generator: source of the seed; None draws fresh entropy.
        chunk_size: paths per chunk (memory bound); the result does not depend on it.
        compile: QE only, without autograd: each step (both branches, the martingale
            correction and the spot) is one ``torch.compile`` kernel that writes its row of the
            paths (about twice as fast as eager on CPU; the first call compiles for 10-30 s and
            needs a C++ compiler); on CUDA with Triton (float32 or float64, without Sobol
            points), one Triton kernel per chunk for all steps, its normals drawn inside.
            Same numbers up to floating-point rounding, except that the exponential branch
            resolves ``1 - U`` to half the dtype's epsilon (as a uniform drawn with the dtype's
            mantissa would).

    Returns:
        ``HestonPaths(spot, variance)``.

    Shape:
        Output: spot (N, T+1), variance (N, T+1).

    References:
        Andersen (2008), "Simple and efficient simulation of the Heston stochastic volatility
        model", J. Comput. Finance 11(3): eqs. (23), (26)-(27) (QE), (33) (log spot), section 4.2
        (martingale correction). Lord, Koekkoek and van Dijk (2010), "A comparison of biased
        simulation schemes for stochastic volatility models", Quant. Finance 10(2) (full truncation).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> h = heston(8, 5, spot=100.0, v0=0.04, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7,
        ...            maturity=1.0, generator=g)
        >>> h.spot.shape, bool((h.variance >= 0).all())
        (torch.Size([8, 6]), True)
    """
    chunks = heston_chunks(
        n_paths, n_steps, spot=spot, v0=v0, kappa=kappa, theta=theta, sigma=sigma, rho=rho,
        maturity=maturity, rate=rate, dividend=dividend, scheme=scheme, time_grid=time_grid,
        antithetic=antithetic, sobol=sobol, dtype=dtype, device=device, generator=generator,
        chunk_size=chunk_size, compile=compile, reuse_buffers=True,  # the chunks are copied out
    )  # fmt: skip
    return HestonPaths(*_collect(n_paths, chunks))


def sabr(
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
) -> SabrPaths:
    """Simulate the (shifted) SABR model under the forward measure.

    ``dF = alpha_t (F + shift)^beta dW1``, ``d alpha_t = nu alpha_t dW2``, ``d<W1, W2> = rho dt``.
    The volatility is sampled exactly (a lognormal martingale). The forward uses
    * ``beta == 1``: log-Euler, ``ln F' = ln F - alpha_t^2 dt / 2 + alpha_t dW1``: positive and a
      martingale step by step;
    * ``beta < 1``: Euler on ``X = F + shift`` with an absorbing boundary at 0: ``X' = max(X + alpha_t
      X^beta dW1, 0)`` and a path that reaches 0 stays there (the absorbing SABR convention; the
      truncation biases the mean up, at first order in ``dt``: with forward 0.05, alpha 0.3, beta
      0.5, nu 0.6 and a third of the paths absorbed in a year, by 3% of the forward with 20
      steps, 0.8% with 80, and by less than the 0.2% standard error of 400,000 paths with 320).

    Args:
        n_paths: number of paths N.
        n_steps: number of time steps T (or give ``time_grid``).
        forward: initial forward, with ``forward + shift > 0``.
        alpha: initial volatility, > 0.
        beta: CEV exponent in [0, 1].
        rho: correlation in [-1, 1].
        nu: volatility of volatility, >= 0.
        maturity: horizon in years (or give ``time_grid``).
        shift: displacement of the shifted SABR model.
        time_grid: explicit grid ``0 = t_0 < ... < t_T`` replacing ``n_steps``/``maturity``.
        antithetic: adjacent paths use opposite normals (N must be even).
        sobol: scrambled Sobol points with Brownian-bridge construction.
        dtype: floating dtype (float64 by default).
        device: device of the paths.
        generator: source of the seed; None draws fresh entropy.
        chunk_size: paths per chunk (memory bound); the result does not depend on it.

    Returns:
        ``SabrPaths(forward, vol)``.

    Shape:
        Output: forward (N, T+1), vol (N, T+1).

    References:
        Hagan, Kumar, Lesniewski and Woodward (2002), "Managing smile risk", Wilmott Magazine
        (model). Glasserman (2004), section 3.4 (exact lognormal sampling); Andersen (2008) notes
        the absorbing-boundary treatment for CEV-type forwards.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> k = sabr(6, 4, forward=0.03, alpha=0.2, beta=1.0, rho=-0.3, nu=0.4, maturity=1.0,
        ...          generator=g)
        >>> k.forward.shape, k.vol[:, 0].tolist()[0]
        (torch.Size([6, 5]), 0.2)
    """
    chunks = sabr_chunks(
        n_paths, n_steps, forward=forward, alpha=alpha, beta=beta, rho=rho, nu=nu,
        maturity=maturity, shift=shift, time_grid=time_grid, antithetic=antithetic, sobol=sobol,
        dtype=dtype, device=device, generator=generator, chunk_size=chunk_size,
        reuse_buffers=True,  # the chunks are copied out
    )  # fmt: skip
    return SabrPaths(*_collect(n_paths, chunks))


def _collect(
    n_paths: int, chunks: Iterator[tuple[slice, torch.Tensor | tuple[torch.Tensor, ...]]]
) -> tuple[torch.Tensor, ...]:
    outs: list[torch.Tensor] = []
    for where, value in chunks:
        parts = (value,) if isinstance(value, torch.Tensor) else tuple(value)
        if not outs:
            outs = [
                hugepages.empty((n_paths, p.shape[1]), dtype=p.dtype, device=p.device)
                for p in parts
            ]
        for out, part in zip(outs, parts, strict=True):
            out[where] = part
    return tuple(outs)
