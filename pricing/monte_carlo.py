"""Monte Carlo estimates with standard errors: streaming over path chunks, antithetic pairs,
control variates, and European pricers for the Black-Scholes, Heston and SABR simulators.

:func:`price_paths` reduces each chunk of paths to a few sums, so memory stays bounded for any
number of paths; :func:`estimate` does the same for samples already in memory. With control
variates the estimator is ``mean(Y - beta (C - E[C]))``, cross-fitted: each half of the samples
takes the ``beta`` fitted on the other half (unbiased; a ``beta`` fitted on the same samples biased
the price and understated its error at small n), and the standard error is the pooled within-half
standard deviation over ``sqrt(n)`` (Avramidis and Wilson 1993; Glasserman 2004, section 4.1).
Exotic payoffs live in :mod:`pricing.mc_exotics`.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pricing import payoffs, simulate
from pricing._heston_fourier import moment_explosion_time
from pricing._mc_random import sobol_replicates
from pricing._mc_stats import (
    MCResult,
    Moments,
    discount_factor,
    finish,
    forward_mean,
    shape_samples,
)
from pricing._simulate_checks import check_heston, check_nonnegative, check_positive
from pricing._simulate_steps import HestonStep, qe_is_martingale
from pricing._typing import DEFAULT_DTYPE, TensorLike, call_flags, real_number, real_tensor
from pricing._validation import check_positive_int, is_whole

__all__ = [
    "MCResult",
    "bs_european",
    "estimate",
    "heston_european",
    "price_european_rows",
    "price_paths",
    "sabr_european",
]

PayoffFn = Callable[[Any], torch.Tensor]

_SECOND_MOMENT_INFINITE = "E[S_T^2] is infinite"
"""How the warnings of a Heston payoff with infinite variance begin (:func:`price_european_rows`
gathers its groups' into one)."""

_PARITY_NOT_EXACT = (
    "calls go by put-call parity only where it is exact (scheme='euler', or QE steps short "
    "enough for their martingale correction to hold at every variance: more steps)"
)
"""Why a Heston call past the explosion was not priced as a put (the warnings' advice)."""

_NOT_A_MARTINGALE = "the simulated E[S_T] is infinite"
"""How the warnings of QE steps that lose their martingale correction before the explosion
begin (:func:`_warn_if_steps_lose_the_martingale`)."""

_SABR_SECOND_MOMENT_INFINITE = "E[F_T^2] is infinite for the simulated SABR forward"
"""How the warnings of a SABR payoff with infinite variance begin (see
:func:`_sabr_second_moment_explodes`)."""


def estimate(
    samples: torch.Tensor,
    *,
    controls: torch.Tensor | None = None,
    control_means: TensorLike | None = None,
    antithetic: bool = False,
    confidence: float = 0.95,
) -> MCResult:
    """Estimate ``E[Y]`` from samples, with optional control variates and antithetic pairs.

    Args:
        samples: discounted payoffs Y, one row per path.
        controls: control variates C with known means, per path (and per column of Y). A 2-D
            (N, K) array with as many columns as Y is one control per column; J controls shared
            by all columns are (N, J), or (N, 1, J) when J == K.
        control_means: ``E[C]``, shape broadcastable to (K, J), or (K,) for one control per
            column.
        antithetic: rows ``2i, 2i + 1`` are antithetic pairs; they are averaged before the
            standard error is computed.
        confidence: two-sided confidence level of the interval.

    Shape:
        samples: (N,) or (N, K). controls: (N,), (N, J), (N, K) or (N, K, J). Output fields: () or
        (K,).

    References:
        Glasserman (2004), Monte Carlo Methods in Financial Engineering, sections 4.1-4.2.

    Examples:
        >>> y = torch.tensor([1.0, 3.0, 2.0, 2.0])
        >>> r = estimate(y)
        >>> round(r.price.item(), 6), round(r.std_error.item(), 6), r.n_paths
        (2.0, 0.408248, 4)
    """
    moments = Moments()
    # numpy arrays too (an AttributeError on .ndim-less input named nothing)
    samples = torch.as_tensor(samples)
    controls = None if controls is None else torch.as_tensor(controls)
    y, c = shape_samples(samples, controls, antithetic)
    moments.add(y, c)
    return finish(moments, samples.ndim == 1, c, control_means, confidence, samples.shape[0])


def price_paths(
    chunks: Iterable[tuple[slice, Any]],
    payoff: PayoffFn,
    *,
    discount: TensorLike = 1.0,
    controls: PayoffFn | None = None,
    control_means: TensorLike | None = None,
    antithetic: bool = False,
    confidence: float = 0.95,
    progress: bool | None = None,
    total_chunks: int | None = None,
    replicates: Sequence[int] | None = None,
) -> MCResult:
    """Price ``discount * E[payoff(paths)]`` over a stream of path chunks (bounded memory).

    Args:
        chunks: ``(path_slice, paths)`` pairs, e.g. from :func:`pricing.simulate.gbm_chunks`.
        payoff: maps a chunk's paths to undiscounted payoffs, (C,) or (C, K).
        discount: discount factor applied to the payoffs (scalar or (K,)).
        controls: maps a chunk's paths to control variates (already discounted if their means
            are), shapes as in :func:`estimate`.
        control_means: known means of the controls.
        antithetic: the chunks hold antithetic pairs (adjacent paths).
        confidence: two-sided confidence level.
        progress: show a tqdm bar over chunks; None shows it only once a run passes 2 seconds.
        total_chunks: number of chunks, for the bar.
        replicates: for Sobol paths (``sobol=True``): where each independently scrambled
            replicate starts, in samples (antithetic pairs count once), and where the last ends
            (:func:`pricing._mc_random.sobol_replicates`). The standard error and interval then
            come from the spread of the replicates' estimates (see
            :data:`pricing._mc_random.SOBOL_REPLICATES`); None treats the samples as i.i.d.

    Shape:
        Output fields: () for (C,) payoffs, (K,) for (C, K) payoffs.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> chunks = simulate.gbm_chunks(2048, 1, spot=1.0, volatility=0.2, maturity=1.0,
        ...                              generator=g, antithetic=True)
        >>> r = price_paths(chunks, lambda s: s[:, -1], antithetic=True)
        >>> abs(r.price.item() - 1.0) < 4 * r.std_error.item()
        True
    """
    moments = Moments()
    # the replicates' coefficients are fitted on the other replicates: no halves needed
    parts = [Moments(cross_fit=False) for _ in range(len(replicates) - 1)] if replicates else []
    squeeze, c, n_paths = True, None, 0
    bar = tqdm(chunks, total=total_chunks, leave=False, **_bar_options(progress))
    for where, paths in bar:
        y = payoff(paths)
        y = y * torch.as_tensor(discount, dtype=y.dtype, device=y.device)
        extra = None if controls is None else controls(paths)
        squeeze = y.ndim == 1
        y2, c = shape_samples(y, extra, antithetic)
        n_paths += y.shape[0]
        if replicates is None:
            moments.add(y2, c)
            continue
        first = where.start // (2 if antithetic else 1)  # the chunk's first sample (unit)
        for part, start, end in zip(parts, replicates, replicates[1:], strict=False):
            rows = slice(max(start - first, 0), max(min(end - first, len(y2)), 0))
            if rows.stop > rows.start:
                part.add(y2[rows], None if c is None else c[rows])
    return finish(parts if replicates is not None else moments, squeeze, c, control_means,
                  confidence, n_paths)  # fmt: skip


def bs_european(
    *,
    spot: float,
    strike: TensorLike,
    maturity: float,
    volatility: float,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: TensorLike = True,
    n_paths: int,
    n_steps: int = 1,
    antithetic: bool = False,
    sobol: bool = False,
    control: bool = False,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype = DEFAULT_DTYPE,
    device: torch.device | str | None = None,
) -> MCResult:
    """Monte Carlo price of European options under Black-Scholes (exact GBM paths).

    Args:
        spot: spot price.
        strike: strike(s) >= 0, scalar or (K,) (a call struck at 0 pays the underlying).
        maturity: years.
        volatility: lognormal volatility.
        rate: continuously compounded rate.
        dividend: continuously compounded dividend yield.
        is_call: call flag(s).
        n_paths: number of paths.
        n_steps: time steps (the terminal value is exact for any number).
        antithetic: antithetic pairs.
        sobol: scrambled Sobol normals (randomised QMC: the standard error is that of
            :data:`pricing._mc_random.SOBOL_REPLICATES` independent scramblings).
        control: use the discounted terminal spot (mean ``spot e^{-qT}``) as control variate.
        generator: source of the seed; None draws fresh entropy (``torch.manual_seed`` does
            not fix it: pass a seeded generator to repeat a run).
        chunk_size: paths per chunk.
        dtype: simulation dtype.
        device: simulation device.

    Shape:
        Output fields: () for scalar strikes, (K,) for strikes (K,).

    Examples:
        >>> g = torch.Generator().manual_seed(1)
        >>> r = bs_european(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2, n_paths=20000,
        ...                 generator=g, control=True)
        >>> abs(r.price.item() - 7.9656) < 4 * r.std_error.item()
        True
    """
    chunks = simulate.gbm_chunks(
        n_paths, n_steps, spot=spot, volatility=volatility, maturity=maturity, rate=rate,
        dividend=dividend, antithetic=antithetic, sobol=sobol, dtype=dtype, device=device,
        generator=generator, chunk_size=chunk_size, reuse_buffers=True,
    )  # fmt: skip
    return _european(chunks, strike, is_call, rate, dividend, maturity, spot, control, antithetic,
                     replicates=_replicates(n_paths, antithetic, sobol))  # fmt: skip


def heston_european(
    *,
    spot: float,
    strike: TensorLike,
    maturity: float,
    v0: float,
    kappa: float,
    theta: float,
    sigma: float,
    rho: float,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: TensorLike = True,
    n_paths: int,
    n_steps: int,
    scheme: str = "qe",
    conditional: bool = False,
    antithetic: bool = False,
    sobol: bool = False,
    control: bool = False,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype = DEFAULT_DTYPE,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    compile: bool = False,
) -> MCResult:
    """Monte Carlo price of European options under Heston.

    ``conditional=True`` (QE only) simulates the variance alone and replaces the payoff by its
    expectation given the variance path: under the QE log-spot scheme the log spot is then normal
    with mean ``sum(drift_i + K2 v_{i+1})`` and variance ``sum(K3 v_i + K4 v_{i+1})``, so the
    payoff's conditional expectation is a Black price. Same discretisation, same mean, a fraction
    of the variance and one normal per step (conditional Monte Carlo, Willard 1997).

    Past the time from which the calls' payoffs have infinite variance (that of ``E[S_T^2]``,
    Andersen and Piterbarg's; with ``conditional``, the later one of ``E[F^2]``), their standard
    errors mean nothing: the calls are then priced as puts plus ``D (S_0 e^{(r - q) T} - K)``,
    with the put's standard error (per-path spots: each path's own ``S_0``, in its samples),
    where put-call parity is exact in the scheme, the simulated spot an exact martingale
    (:func:`_heston_spot_is_martingale`: always with ``scheme="euler"``; with QE, where every
    step's martingale correction holds, which it does for steps short enough), and get a warning
    elsewhere. The terminal spot as control gets a warning there too. QE steps too coarse to keep
    their martingale correction at every variance make the simulated ``E[S_T]`` infinite even
    before the explosion: calls and the control get a warning there
    (:func:`_warn_if_steps_lose_the_martingale`).

    Args:
        spot: spot price, one number or one per path (N,) (the price is then the mean of the
            paths' prices; not with ``control``).
        strike: strike(s) >= 0, scalar or (K,) (a call struck at 0 pays the underlying).
        maturity: years.
        v0: initial variance.
        kappa: mean-reversion speed.
        theta: long-run variance.
        sigma: volatility of variance.
        rho: correlation.
        rate: continuously compounded rate.
        dividend: continuously compounded dividend yield.
        is_call: call flag(s).
        n_paths: number of paths.
        n_steps: time steps.
        scheme: ``"qe"`` or ``"euler"``.
        conditional: conditional Monte Carlo (QE only).
        antithetic: antithetic pairs.
        sobol: scrambled Sobol normals (randomised QMC: the standard error is that of
            :data:`pricing._mc_random.SOBOL_REPLICATES` independent scramblings).
        control: use the discounted terminal spot as control variate (exact mean where the
            simulated spot is a martingale: see above).
        generator: source of the seed; None draws fresh entropy (``torch.manual_seed`` does
            not fix it: pass a seeded generator to repeat a run).
        chunk_size: paths per chunk.
        dtype: simulation dtype.
        device: simulation device.
        progress: progress bar (None: only for runs longer than 2 seconds).
        compile: simulate the QE paths with the compiled step of :func:`pricing.simulate.heston`
            (several times faster once compiled; not with ``conditional``).

    Shape:
        Output fields: () or (K,).

    References:
        Willard (1997), "Calculating prices and sensitivities for path-independent derivative
        securities in multifactor models", J. Derivatives 5(1). Andersen (2008), section 4.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> r = heston_european(spot=100.0, strike=100.0, maturity=1.0, v0=0.04, kappa=4.0,
        ...     theta=0.25, sigma=1.0, rho=-0.5, rate=0.01, dividend=0.02, is_call=False,
        ...     n_paths=4096, n_steps=16, conditional=True, generator=g)
        >>> abs(r.price.item() - 17.055271) < 4 * r.std_error.item()  # Lewis' reference value
        True
    """
    if conditional:
        from pricing._mc_heston import conditional_chunks

        if scheme != "qe":
            raise ValueError("conditional=True needs scheme='qe'")
        if compile:
            raise ValueError(
                "compile=True simulates spot paths: it does not apply to conditional=True"
            )
        model = {"v0": v0, "kappa": kappa, "theta": theta, "sigma": sigma, "rho": rho}
        explodes = _heston_explosion_time(kappa, sigma, rho, conditional=True)
        parity = _heston_calls_by_parity(maturity, model, n_steps, scheme, is_call, explodes)
        _warn_if_second_moment_explodes(maturity, explodes, is_call, control, conditional=True,
                                        parity=parity)  # fmt: skip
        _warn_if_steps_lose_the_martingale(maturity, explodes, model, n_steps, scheme, is_call,
                                           control, conditional=True)  # fmt: skip
        chunks = conditional_chunks(
            n_paths, n_steps, spot=spot, strike=strike, is_call=_puts(is_call) if parity else is_call,
            v0=v0, kappa=kappa,
            theta=theta, sigma=sigma, rho=rho, maturity=maturity, rate=rate, dividend=dividend,
            antithetic=antithetic, sobol=sobol, dtype=dtype, device=device, generator=generator,
            chunk_size=chunk_size,
        )  # fmt: skip
        if parity and _per_path(spot):
            gaps = _parity_gaps(strike, is_call, rate, dividend, maturity, dtype)
            chunks = ((where, p._replace(payoff=p.payoff + gaps(_spots(spot, where, p.payoff))))
                      for where, p in chunks)  # fmt: skip
        df = discount_factor(rate, maturity)
        ctrl = (lambda p: p.forward * df) if control else None
        mean = forward_mean(spot, dividend, maturity) if control else None
        result = price_paths(
            chunks, lambda p: p.payoff, discount=df, controls=ctrl, control_means=mean,
            antithetic=antithetic, progress=progress,
            replicates=_replicates(n_paths, antithetic, sobol),
        )  # fmt: skip
    else:
        chunks = simulate.heston_chunks(
            n_paths, n_steps, spot=spot, v0=v0, kappa=kappa, theta=theta, sigma=sigma, rho=rho,
            maturity=maturity, rate=rate, dividend=dividend, scheme=scheme, antithetic=antithetic,
            sobol=sobol, dtype=dtype, device=device, generator=generator, chunk_size=chunk_size,
            compile=compile, reuse_buffers=True,  # each chunk is reduced before the next is drawn
        )  # fmt: skip
        # after heston_chunks, which checks the parameters
        model = {"v0": v0, "kappa": kappa, "theta": theta, "sigma": sigma, "rho": rho}
        explodes = _heston_explosion_time(kappa, sigma, rho, conditional=False)
        parity = _heston_calls_by_parity(maturity, model, n_steps, scheme, is_call, explodes)
        _warn_if_second_moment_explodes(maturity, explodes, is_call, control, parity=parity)
        _warn_if_steps_lose_the_martingale(maturity, explodes, model, n_steps, scheme, is_call,
                                           control)  # fmt: skip
        spots = ((where, paths.spot) for where, paths in chunks)
        gaps = None
        if parity and _per_path(spot):
            gaps = _parity_gaps(strike, is_call, rate, dividend, maturity, dtype)
        result = _european(spots, strike, _puts(is_call) if parity else is_call, rate, dividend, maturity,
                           spot, control, antithetic, progress,
                           _replicates(n_paths, antithetic, sobol), gaps=gaps)  # fmt: skip
    if not parity or _per_path(spot):  # per-path spots: the gaps are in the samples
        return result
    # C = P + D (F - K), F = S_0 e^{(r - q) T}: at kappa 1, sigma 1.92, rho 0.45 and 4.28 years
    # (E[S_T^2] infinite from 0.99), 64 QE steps, 4,096 antithetic paths and 200 seeds, the 95%
    # intervals of calls struck at 80, 100, 130 held the Fourier price 62%, 62%, 59% of the time
    # (mean z -1.6 to -1.8), and by parity 94%, 96%, 96% (mean z 0.1 to 0.2, z spread 0.9 to
    # 1.0); conditional, 256 steps: 80%, 81%, 80% (mean z -0.8), and by parity 95%, 95%, 96%
    strikes = real_tensor("strike", strike, dtype=dtype).to(torch.float64)
    gap = forward_mean(spot, dividend, maturity) - strikes * discount_factor(rate, maturity)
    return _calls_from_puts(result, is_call, gap)


def _heston_calls_by_parity(
    maturity: float,
    model: Mapping[str, TensorLike],
    n_steps: int,
    scheme: str,
    is_call: TensorLike,
    explodes: float,
) -> bool:
    """Whether :func:`heston_european` prices its calls as puts and put-call parity: past the
    explosion time ``explodes`` of their payoffs' second moment
    (:func:`_heston_explosion_time`), where the simulated spot is an exact martingale (from one
    spot or one per path: :func:`_parity_gaps`)."""
    if not bool(call_flags(is_call).any()):
        return False
    if real_number("maturity", maturity) < explodes:
        return False
    return _heston_spot_is_martingale(scheme, maturity, n_steps, model)


def _heston_spot_is_martingale(
    scheme: str, maturity: float, n_steps: int, model: Mapping[str, TensorLike]
) -> bool:
    """Whether the simulated Heston spot (and QE's conditional forward) is an exact martingale,
    ``E[S_T] = S_0 e^{(r - q) T}`` for any number of steps, not only as ``dt -> 0``.

    Full-truncation Euler is: its log step ``-v^+ dt / 2 + sqrt(v^+ dt) Z`` with ``Z`` normal
    and independent of ``v^+`` has ``E[exp(.)] = 1``. QE is where every step's martingale
    correction holds (:func:`pricing._simulate_steps.qe_is_martingale`): then ``E[S_{t+dt} |
    S_t, v_t] = S_t e^{(r - q) dt}`` (checked to 1e-11 by quadrature at kappa 1, sigma 1.92, rho
    0.45, steps of 0.07 to 4.28 years and variances 0 to 5); where it falls back to the uncorrected drift,
    ``E[exp(A v')]`` is infinite, so is ``E[S_T]``, and parity is not exact (at those
    parameters, 4.28 years in 2 steps; 1 or 4 steps keep it).
    """
    if scheme == "euler":
        return True
    numbers = {name: real_tensor(name, value, dtype=torch.float64) for name, value in model.items()}
    v0 = numbers.pop("v0")
    params = {name: real_number(name, value) for name, value in numbers.items()}
    check_heston(v0, **params)
    grid = simulate.time_grid(n_steps, maturity)
    steps = [HestonStep.build(dt, **params, drift=0.0) for dt in grid.diff().tolist()]
    return qe_is_martingale(steps, float(v0.reshape(())) if v0.numel() == 1 else None)


def _heston_explosion_time(
    kappa: TensorLike, sigma: TensorLike, rho: TensorLike, conditional: bool
) -> float:
    """The time from which a call's payoff has infinite variance: Andersen and Piterbarg's of
    ``E[S_T^2]``, or with ``conditional`` that of ``E[F^2]``, ``F = E[S_T | variance path]``
    (:func:`pricing._mc_heston.conditional_forward_explosion_time`); the least of per-path
    parameters'."""
    named = {"kappa": kappa, "sigma": sigma, "rho": rho}
    values = [real_tensor(name, value, dtype=torch.float64) for name, value in named.items()]
    if not conditional:
        return float(_second_moment_time(*values).min())
    from pricing._mc_heston import conditional_forward_explosion_time

    return float(conditional_forward_explosion_time(*values).min())


def _per_path(spot: TensorLike) -> bool:
    """Whether ``spot`` holds one value per path rather than one number."""
    return real_tensor("spot", spot).numel() != 1


def _spots(spot: TensorLike, where: slice, like: torch.Tensor) -> torch.Tensor:
    """The per-path spots of the chunk ``where``, of ``like``'s dtype and device. Shape: (C,)."""
    return real_tensor("spot", spot)[where].to(like)


def _parity_gaps(
    strike: TensorLike,
    is_call: TensorLike,
    rate: float,
    dividend: float,
    maturity: float,
    dtype: torch.dtype,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per path, what a call's payoff adds to its put's in expectation, ``S_0 e^{(r - q) T} - K``
    (undiscounted) on the call columns, 0 on the put columns, from the paths' start spots.

    Calls from per-path spots go by parity path by path: each path's put payoff plus its own
    gap, so that the estimator weighs each gap as it weighs its path (a mean gap added afterwards
    would not, where Sobol replicates differ in size by one), and the samples spread across spots
    as the calls' own do.

    Shape:
        start spots: (C,); output: (C,) or (C, K), as the payoffs.
    """
    carry = real_number("rate", rate) - real_number("dividend", dividend)
    growth = math.exp(carry * real_number("maturity", maturity))
    k, calls = real_tensor("strike", strike, dtype=dtype), call_flags(is_call)
    vector = k.ndim == 1 or calls.ndim == 1

    def gaps(start: torch.Tensor) -> torch.Tensor:
        forward = start * growth
        gap = (forward[:, None] if vector else forward) - k.to(forward)
        return torch.where(calls.to(forward.device), gap, 0.0)

    return gaps


def _puts(is_call: TensorLike) -> torch.Tensor:
    """Put flags in place of ``is_call``, of its shape (a scalar ``False`` for ``is_call`` (K,)
    and one strike gave one price of shape () with (K,) calls: a standard error of shape ())."""
    return torch.zeros_like(call_flags(is_call))


def _calls_from_puts(result: MCResult, is_call: TensorLike, gap: torch.Tensor) -> MCResult:
    """Calls from the puts that ``result`` priced in their place: ``C = P + gap``, ``gap`` the
    discounted forward less the discounted strike, on the call columns (the standard error is
    the put's).

    Shape:
        gap: () or (K,), as the strikes; output fields: as ``result``'s.
    """
    calls = call_flags(is_call, device=result.price.device)
    offset = torch.where(calls, gap.to(result.price), 0.0)
    return result._replace(price=result.price + offset, ci_low=result.ci_low + offset,
                           ci_high=result.ci_high + offset)  # fmt: skip


def _warn_if_second_moment_explodes(
    maturity: float,
    explodes: float,
    is_call: TensorLike,
    control: bool,
    *,
    conditional: bool = False,
    parity: bool = False,
) -> None:
    """Warn where ``E[S_T^2]`` is infinite (past Andersen and Piterbarg's explosion time of the
    second moment, ``explodes``: :func:`_heston_explosion_time`) and a payoff of the paths grows
    like ``S_T``: a call's (or the terminal-spot control's) variance is then infinite, and the
    standard error, an estimate of it, means nothing (at kappa 1, sigma 1.92, rho 0.45 and 4.28
    years the price sat 4 to 7 reported errors from the Fourier value, without a word). Puts are
    bounded by their strike, and so are calls priced by ``parity`` as puts
    (:func:`_heston_calls_by_parity`): those go without.

    Conditional Monte Carlo averages functions of the conditional forward ``F``, whose second
    moment explodes later, and never for ``rho <= 0``
    (:func:`pricing._mc_heston.conditional_forward_explosion_time`): there the warning is about
    ``E[F^2]`` (at the parameters above, from 1.9 years; at 4.28 years and 256 steps, 200 seeds,
    95% intervals held the Fourier call price 82% of the time and the put's 94%: the calls
    priced by parity, 95%)."""
    calls = bool(call_flags(is_call).any()) and not parity
    if not (calls or control):
        return
    t = real_number("maturity", maturity)
    if t < explodes:
        return
    if conditional:
        head = "E[F^2] of the conditional forward F = E[S_T | variance path] is infinite"
        what = "the calls' conditional payoffs have" if calls else "the forward control has"
    else:
        head = _SECOND_MOMENT_INFINITE
        what = "the calls' payoffs have" if calls else "the terminal-spot control has"
    if calls:
        advice = f"price with pricing.heston.price: {_PARITY_NOT_EXACT}"
    else:
        advice = "price without it" + (" (the calls are priced as puts and put-call parity)"
                                       if parity else "")  # fmt: skip
    warnings.warn(
        f"{head} from T = {explodes:.4g} years (Andersen-Piterbarg; maturity {t:g}): {what} "
        f"infinite variance, so the standard error means nothing; {advice}",
        stacklevel=3,
    )


def _warn_if_steps_lose_the_martingale(
    maturity: float,
    explodes: float,
    model: Mapping[str, TensorLike],
    n_steps: int,
    scheme: str,
    is_call: TensorLike,
    control: bool,
    *,
    conditional: bool = False,
) -> None:
    """Warn where QE steps lose their martingale correction at some variance before the
    explosion time ``explodes`` (past it :func:`_warn_if_second_moment_explodes` speaks): the
    simulated ``E[S_T]`` is then infinite (:func:`_heston_spot_is_martingale`), and so are the
    calls' means and the terminal-spot control's. At kappa 5, sigma 1.5, rho 0.8, 10 years (the
    model's ``E[S_T^2]`` finite for ever) and 2 steps, at-the-money calls priced 119 +- 76 for
    25.2, and 73.5 +- 0.13 with the control, without a word. Puts are bounded by their strike."""
    calls = bool(call_flags(is_call).any())
    if scheme == "euler" or not (calls or control) or real_number("maturity", maturity) >= explodes:
        return
    if _heston_spot_is_martingale(scheme, maturity, n_steps, model):
        return
    controls = ["the forward control" if conditional else "the terminal-spot control"] * control
    what = " and ".join(["the calls' prices"] * calls + controls)
    warnings.warn(
        f"{_NOT_A_MARTINGALE}: QE steps of {maturity / n_steps:.4g} years lose their martingale "
        f"correction at some variances, so {what} mean nothing; use more steps (or "
        "scheme='euler')",
        stacklevel=3,
    )


def sabr_european(
    *,
    forward: float,
    strike: TensorLike,
    maturity: float,
    alpha: float,
    beta: float,
    rho: float,
    nu: float,
    shift: float = 0.0,
    discount: float = 1.0,
    is_call: TensorLike = True,
    n_paths: int,
    n_steps: int,
    antithetic: bool = False,
    sobol: bool = False,
    control: bool = False,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype = DEFAULT_DTYPE,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> MCResult:
    """Monte Carlo price of European options on a SABR forward, ``discount * E[payoff(F_T)]``.

    ``control=True`` uses the terminal forward (mean ``forward``) as control variate; it is
    exact for ``beta == 1`` only (the absorbed Euler scheme of ``beta < 1`` biases the mean, by
    O(dt): see :func:`pricing.simulate.sabr`), so it is refused otherwise. With ``beta == 1``,
    ``nu > 0`` and two steps or more, the calls' payoffs and this control have infinite variance,
    at any maturity (:func:`_sabr_second_moment_explodes`): calls are then priced as puts plus
    ``discount * (forward - strike)`` (put-call parity, exact: the simulated forward is a
    martingale), with the put's standard error, and the control gets a warning.

    Args:
        forward: initial forward.
        strike: strike(s) with ``strike + shift >= 0``, scalar or (K,).
        maturity: years.
        alpha: initial volatility.
        beta: CEV exponent in [0, 1].
        rho: correlation.
        nu: volatility of volatility.
        shift: shift of the shifted SABR model.
        discount: discount factor to expiry, > 0.
        is_call: call flag(s).
        n_paths: number of paths.
        n_steps: time steps.
        antithetic: antithetic pairs.
        sobol: scrambled Sobol normals (randomised QMC: the standard error is that of
            :data:`pricing._mc_random.SOBOL_REPLICATES` independent scramblings).
        control: terminal forward as control variate (``beta == 1`` only).
        generator: source of the seed; None draws fresh entropy (``torch.manual_seed`` does
            not fix it: pass a seeded generator to repeat a run).
        chunk_size: paths per chunk.
        dtype: simulation dtype.
        device: simulation device.
        progress: progress bar (None: only for runs longer than 2 seconds).

    Shape:
        Output fields: () or (K,).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> r = sabr_european(forward=100.0, strike=100.0, maturity=1.0, alpha=0.2, beta=1.0,
        ...                   rho=0.0, nu=0.0, n_paths=4096, n_steps=2, control=True, generator=g)
        >>> abs(r.price.item() - 7.9656) < 4 * r.std_error.item()  # nu = 0: Black's price
        True
    """
    # one number each, by name (a 1-element tensor shift failed in torch.full_like, a tensor
    # beta of several values in ``beta != 1.0``)
    beta, shift = real_number("beta", beta), real_number("shift", shift)
    if control and beta != 1.0:
        raise ValueError("control=True needs beta == 1 (exact martingale forward)")
    # one number: a tensor of several failed in torch ("The size of tensor a (4096) must match
    # the size of tensor b (3)"), NaN was "payoff samples contain NaN", 0 a price of 0
    discount = real_number("discount", discount)
    check_positive("discount", discount)
    # the payoff of F + shift at K + shift: a shifted model's strikes may be negative (> -shift)
    shifted_strike = real_tensor("strike", strike, dtype=dtype) + shift
    check_nonnegative("strike + shift", shifted_strike)
    chunks = simulate.sabr_chunks(
        n_paths, n_steps, forward=forward, alpha=alpha, beta=beta, rho=rho, nu=nu,
        maturity=maturity, shift=shift, antithetic=antithetic, sobol=sobol, dtype=dtype,
        device=device, generator=generator, chunk_size=chunk_size, reuse_buffers=True,
    )  # fmt: skip
    # calls by parity where their payoffs have infinite variance (a call's 95% interval held its
    # price 36% of the time at alpha 0.3, nu 1, 5 years): puts are bounded by their strike
    parity = _sabr_second_moment_explodes(beta, real_number("nu", nu), n_steps)
    if control and parity:
        warnings.warn(
            f"{_SABR_SECOND_MOMENT_INFINITE} with beta = 1, nu > 0 and two steps or more (any "
            "rho and maturity): the control (the terminal forward) has infinite variance, so "
            "the standard error understates the error, badly where nu^2 T is large; price "
            "without it (calls are priced as puts and put-call parity)",
            stacklevel=2,
        )
    result = price_paths(
        ((where, paths.forward) for where, paths in chunks),
        lambda f: payoffs.european(
            f + shift if shift else f,
            strike=shifted_strike,
            is_call=_puts(is_call) if parity else is_call,
        ),
        discount=discount,
        controls=(lambda f: f[:, -1] * discount) if control else None,
        control_means=real_number("forward", forward) * discount if control else None,
        antithetic=antithetic,
        progress=progress,
        replicates=_replicates(n_paths, antithetic, sobol),
    )
    if not parity:
        return result
    # C = P + D (F - K): the shift cancels, (F + s) - (K + s)
    gap = (real_number("forward", forward) - (shifted_strike - shift)) * discount
    return _calls_from_puts(result, is_call, gap)


def _sabr_second_moment_explodes(beta: float, nu: float, n_steps: int) -> bool:
    """Whether ``E[F_T^2]`` of the simulated SABR forward is infinite: for ``beta = 1``, ``nu >
    0`` and two steps or more, whatever ``rho`` and the maturity (there is no explosion time to
    wait for, unlike Heston's).

    The log-Euler step ``F' = F exp(a dW - a^2 dt / 2)`` at the step's starting volatility ``a``
    gives ``E[F'^2 | F, a] = F^2 exp(a^2 dt)``, and from the second step on ``a`` is lognormal:
    ``E[exp(c a^2)]`` is infinite for every ``c > 0``, and what ``rho`` adds to the exponent is
    linear in the normal increment that ``a`` is exponential in. Calls, and the terminal forward
    as a control, then have infinite variance; puts are bounded by their strike. The model itself
    is no better for ``rho^2 < 1/2``: given the volatility path, with ``int a dW2 = (a_T -
    alpha) / nu``, ``E[F_T^2] = F_0^2 E[exp(2 rho (a_T - alpha) / nu + (1 - 2 rho^2) int_0^T a_t^2
    dt)]``, and the integral of a lognormal squared has no exponential moment. The standard
    error does go wrong: with alpha 0.3, rho 0, nu 0.5, 5 years, 20 steps and 20,000 paths (100
    seeds) the at-the-money call's 95% interval held the scheme's price 78% of the time (nu 1:
    36%), the put's 95% (with the forward as control: 74%, calls and puts alike); at alpha 0.2,
    nu 0.4 and 1 year it held it 96% of the time, the divergence lying too far in the tail to
    show. For ``beta < 1`` the absorbed Euler forward's moments are finite.

    References:
        P.-L. Lions, M. Musiela (2007), "Correlations and bounds for stochastic volatility
        models", Ann. Inst. H. Poincare Anal. Non Lineaire 24(1), 1-16 (moments of lognormal
        stochastic volatility models); the scheme's bound is the step's formula above.
    """
    return beta == 1.0 and nu > 0.0 and n_steps >= 2


ROW_PARAMETERS: dict[str, tuple[str, ...]] = {
    "bs": ("volatility",),
    "heston": ("v0", "kappa", "theta", "sigma", "rho"),
    "sabr": ("alpha", "beta", "rho", "nu", "shift"),
}


def price_european_rows(
    *,
    model: str,
    forward: np.ndarray,
    discount: np.ndarray,
    strike: np.ndarray,
    maturity: np.ndarray,
    is_call: np.ndarray,
    params: Mapping[str, np.ndarray],
    n_paths: int,
    n_steps: int,
    seed: int = 0,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo prices and standard errors of European options, one per row.

    Rows with the same forward, discount, maturity and parameters share one simulation (all
    their strikes are priced on the same paths). Each row is simulated under its forward measure
    (spot = forward, zero rates) and discounted by its ``discount``. Antithetic pairs (when
    ``n_paths`` is even and at least 6) and the terminal forward as control variate (exact mean
    for GBM, SABR with beta = 1 and Heston QE where every step keeps its martingale correction,
    :func:`pricing._simulate_steps.qe_is_martingale`) reduce the error. Heston rows at or past the time
    from which ``E[S_T^2]`` is infinite go without the control, whose variance is infinite there
    (a put's error then means nothing: at kappa 1, sigma 1.92, rho 0.45 and 4.28 years, 95%
    intervals held the at-the-money put's price 88% of the time with it, 95% without), and their
    calls, whose own variance is infinite, are priced as puts and put-call parity
    (:func:`heston_european`), except where the QE steps of ``maturity / n_steps`` lose their
    martingale correction at some variance, which makes parity inexact: those get one warning
    for the whole table. Steps that lose it before the explosion (coarse ones: 2 steps of 5 years
    at kappa 5, sigma 1.5, rho 0.8) make the simulated ``E[S_T]`` infinite: those rows go without
    the control, and their calls get one warning. SABR rows with beta = 1 and nu > 0, whose
    simulated ``E[F_T^2]`` is infinite at any maturity (from two steps on,
    :func:`_sabr_second_moment_explodes`), go without the control too, their calls priced as
    puts and put-call parity (:func:`sabr_european`).

    Args:
        model: ``"bs"``, ``"heston"`` or ``"sabr"``.
        forward: forwards (N,).
        discount: discount factors (N,).
        strike: strikes (N,).
        maturity: year fractions (N,).
        is_call: call flags (N,).
        params: model parameters per row, each (N,): ``volatility`` (bs); ``v0, kappa, theta,
            sigma, rho`` (heston); ``alpha, beta, rho, nu`` and optionally ``shift`` (sabr).
        n_paths: paths per simulation.
        n_steps: time steps per simulation (over each row's maturity).
        seed: seed of the whole run (same seed, same numbers).
        progress: progress bar over groups (None: only once the run passes 2 seconds).

    Returns:
        ``(price, std_error)``, two arrays (N,) in row order.

    Raises:
        ValueError: naming the row (1-based) whose inputs are invalid, or the argument
            (``seed``, ``n_paths``, ``n_steps``, ``is_call`` other than 0/1) that is.
        TypeError: for call flags that are not booleans or numbers (text such as "put").

    Examples:
        >>> p, se = price_european_rows(model="bs", forward=np.array([100.0]),
        ...     discount=np.array([1.0]), strike=np.array([100.0]), maturity=np.array([1.0]),
        ...     is_call=np.array([True]), params={"volatility": np.array([0.2])}, n_paths=4096,
        ...     n_steps=1)
        >>> bool(abs(p[0] - 7.9656) < 4 * se[0])
        True
    """
    if model not in ROW_PARAMETERS:
        raise ValueError(f"model must be one of {sorted(ROW_PARAMETERS)}, got {model!r}")
    # torch's manual_seed named no argument: "expected a long, but got float" (1.5, None) or
    # "Overflow when unpacking long long" (2**64)
    if not is_whole(seed) or not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must be a whole number in [-2**63, 2**64), got {seed!r}")
    # here, for the whole table: Black-Scholes rows ignored n_steps (0 priced), and a bad
    # n_paths was blamed on "row 1"
    check_positive_int("n_paths", n_paths)
    check_positive_int("n_steps", n_steps)
    known, optional = set(ROW_PARAMETERS[model]), {"shift"}
    missing, unknown = sorted(known - optional - set(params)), sorted(set(params) - known)
    if missing or unknown:  # a missing one was a KeyError, an unknown one ignored
        raise ValueError(f"params for {model}: missing {missing}, unknown {unknown}")
    names = [n for n in ROW_PARAMETERS[model] if n in params]
    # by call_flags (a bool cast read "put", "False", 2 and 0.5 as calls, without a word), from
    # an array: torch reads a pandas Series by its index labels
    flags = call_flags(np.array(is_call)).numpy()  # a copy: a Series's array is read-only
    columns = {"forward": forward, "discount": discount, "maturity": maturity, "strike": strike,
               "is_call": flags, **{n: params[n] for n in names}}  # fmt: skip
    arrays = {n: np.asarray(v, dtype=bool if n == "is_call" else float).reshape(-1)
              for n, v in columns.items()}  # fmt: skip
    sizes = {n: len(a) for n, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"one value per row for every input, got lengths {sizes}")
    strike, is_call = arrays.pop("strike"), arrays.pop("is_call")
    bad = np.flatnonzero(~(np.isfinite(arrays["discount"]) & (arrays["discount"] > 0)))
    if bad.size:  # a discount of 0 gave a price and standard error of 0
        raise ValueError(f"row {bad[0] + 1}: discount must be finite and > 0, got "
                         f"{arrays['discount'][bad[0]]}")  # fmt: skip
    # here, by row: a group's pricer named the group's first row (and its own index within the
    # group), not the row of the bad strike. SABR's shifted strikes may be negative, to -shift
    shift = arrays.get("shift", np.zeros(len(strike)))
    shifted = strike + np.where(np.isfinite(shift), shift, 0.0)  # a bad shift: its own error
    bad = np.flatnonzero(~(np.isfinite(shifted) & (shifted >= 0.0)))
    if bad.size:
        name = "strike + shift" if "shift" in arrays else "strike"
        raise ValueError(f"row {bad[0] + 1}: {name} must be finite and non-negative, got "
                         f"{shifted[bad[0]]}")  # fmt: skip
    frame = pd.DataFrame(arrays)
    price, error = np.full(len(frame), np.nan), np.full(len(frame), np.nan)
    generator = torch.Generator().manual_seed(seed)
    groups = frame.groupby(list(frame.columns), sort=False, dropna=False).indices
    explodes = _second_moment_explosion_times(model, arrays, n_steps)
    past = arrays["maturity"] >= explodes
    inexact = np.zeros(len(frame), dtype=bool)  # Heston rows whose QE spot is no martingale
    with warnings.catch_warnings():
        # one warning for the table, after the loop: heston_european's came once per group of
        # rows, so once per maturity of a table (each message names its maturity)
        for message in (_SECOND_MOMENT_INFINITE, _NOT_A_MARTINGALE):
            warnings.filterwarnings("ignore", message=re.escape(message))
        for key, rows in tqdm(groups.items(), leave=False, **_bar_options(progress)):
            first = int(rows[0])
            try:
                if model == "heston":  # as _price_group's heston_european does
                    model_params = {n: arrays[n][first] for n in ROW_PARAMETERS["heston"]}
                    inexact[rows] = not _heston_spot_is_martingale(
                        "qe", arrays["maturity"][first], n_steps, model_params
                    )
                # the control's mean is exact only where the spot is a martingale
                res = _price_group(model, dict(zip(frame.columns, key, strict=True)),
                                   strike[rows], is_call[rows], n_paths, n_steps, generator,
                                   control=not (past[first] or inexact[first]))  # fmt: skip
            except ValueError as err:
                raise ValueError(f"row {first + 1}: {err}") from err
            price[rows], error[rows] = res.price.numpy(), res.std_error.numpy()
    # SABR's calls past it were priced by parity, Heston's where it is exact
    _warn_of_calls_past_the_explosion(np.flatnonzero(inexact & past & is_call),
                                      arrays["maturity"], explodes)  # fmt: skip
    _warn_of_calls_without_a_martingale(np.flatnonzero(inexact & ~past & is_call),
                                        arrays["maturity"], n_steps)  # fmt: skip
    return price, error


def _second_moment_explosion_times(
    model: str, rows: Mapping[str, np.ndarray], n_steps: int
) -> np.ndarray:
    """Per row, the maturity from which ``E[S_T^2]`` is infinite: under Heston Andersen and
    Piterbarg's time, for the simulated SABR forward 0 where :func:`_sabr_second_moment_explodes`,
    else ``inf``. Shape: (N,)."""
    if model == "sabr":
        explodes = [_sabr_second_moment_explodes(b, n, n_steps)
                    for b, n in zip(rows["beta"], rows["nu"], strict=True)]  # fmt: skip
        return np.where(explodes, 0.0, np.inf)
    if model != "heston":
        return np.full(len(rows["maturity"]), np.inf)
    kappa, sigma, rho = (torch.as_tensor(rows[n], dtype=torch.float64)
                         for n in ("kappa", "sigma", "rho"))  # fmt: skip
    return _second_moment_time(kappa, sigma, rho).numpy()


def _second_moment_time(
    kappa: torch.Tensor, sigma: torch.Tensor, rho: torch.Tensor
) -> torch.Tensor:
    """Andersen and Piterbarg's time from which ``E[S_T^2]`` is infinite, float64 inputs
    broadcast together."""
    return moment_explosion_time(torch.tensor(2.0, dtype=torch.float64), kappa, sigma, rho)


def _warn_of_calls_past_the_explosion(
    rows: np.ndarray, maturity: np.ndarray, explodes: np.ndarray
) -> None:
    """One warning for the call rows (0-based indices) priced past their explosion time
    without put-call parity."""
    if not rows.size:
        return
    first = int(rows[0])
    count = f"{rows.size} call row" + ("s" if rows.size > 1 else "")
    warnings.warn(
        f"{_SECOND_MOMENT_INFINITE} at the maturity of {count} (Andersen-Piterbarg; first row "
        f"{first + 1}: maturity {maturity[first]:g}, infinite from T = {explodes[first]:.4g} "
        "years): their payoffs have infinite variance, so their standard errors mean nothing; "
        "price them analytically (pricing.heston.price, qfnet price --engine analytic) or with "
        "more steps: put-call parity, by which calls past it are priced, is not exact for "
        "these steps, whose QE martingale correction fails at some variance",
        stacklevel=3,
    )


def _warn_of_calls_without_a_martingale(
    rows: np.ndarray, maturity: np.ndarray, n_steps: int
) -> None:
    """One warning for the call rows (0-based indices) whose QE steps lose their martingale
    correction before the explosion (:func:`_warn_if_steps_lose_the_martingale`)."""
    if not rows.size:
        return
    first = int(rows[0])
    count = f"{rows.size} call row" + ("s" if rows.size > 1 else "")
    warnings.warn(
        f"{_NOT_A_MARTINGALE} at the maturity of {count} (first row {first + 1}: maturity "
        f"{maturity[first]:g} in {n_steps} QE steps, which lose their martingale correction at "
        "some variances): their prices mean nothing; price with more steps",
        stacklevel=3,
    )


def _price_group(
    model: str,
    p: dict[str, float],
    strike: np.ndarray,
    is_call: np.ndarray,
    n_paths: int,
    n_steps: int,
    generator: torch.Generator,
    *,
    control: bool = True,
) -> MCResult:
    """One group's prices: ``control`` uses the terminal forward as control variate where its
    mean is exact (not for SABR with beta < 1)."""
    common = {"strike": torch.as_tensor(strike, dtype=DEFAULT_DTYPE), "maturity": p["maturity"],
              "is_call": torch.as_tensor(is_call, dtype=torch.bool), "n_paths": n_paths,
              # three pairs at least: the control's regression needs three samples (4 paths,
              # 2 pairs, were refused where 3 and 6 paths priced)
              "antithetic": n_paths % 2 == 0 and n_paths >= 6,
              "generator": generator}  # fmt: skip
    fwd, df = p["forward"], p["discount"]
    if model == "sabr":
        sabr = {n: p[n] for n in ("alpha", "beta", "rho", "nu")}
        return sabr_european(forward=fwd, **sabr, shift=p.get("shift", 0.0), discount=df,
                             n_steps=n_steps, control=control and sabr["beta"] == 1.0,
                             progress=False, **common)  # fmt: skip
    if model == "bs":
        res = bs_european(spot=fwd, volatility=p["volatility"], control=control, **common)
    else:
        model_params = {n: p[n] for n in ("v0", "kappa", "theta", "sigma", "rho")}
        res = heston_european(spot=fwd, **model_params, n_steps=n_steps, control=control,
                              progress=False, **common)  # fmt: skip
    return MCResult(res.price * df, res.std_error * df, res.ci_low * df, res.ci_high * df,
                    res.n_paths)  # fmt: skip


def _bar_options(progress: bool | None) -> dict[str, Any]:
    """tqdm options: True shows the bar at once (a delay of 2 s hid it from short runs), None
    after 2 seconds, False never."""
    return {"delay": 0.0 if progress else 2.0, "disable": progress is False}


def _replicates(n_paths: int, antithetic: bool, sobol: bool) -> list[int] | None:
    """Randomised-QMC replicate bounds for Sobol runs (None: i.i.d. pseudo-random)."""
    return sobol_replicates(n_paths, antithetic) if sobol else None


def _european(
    chunks: Iterable[tuple[slice, torch.Tensor]],
    strike: TensorLike,
    is_call: TensorLike,
    rate: float,
    dividend: float,
    maturity: float,
    spot: float,
    control: bool,
    antithetic: bool,
    progress: bool | None = None,
    replicates: Sequence[int] | None = None,
    *,
    gaps: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> MCResult:
    """European prices from spot paths; ``gaps`` adds to each path's payoffs a function of its
    start spot (:func:`_parity_gaps`)."""
    df = discount_factor(rate, maturity)

    def payoff(s: torch.Tensor) -> torch.Tensor:
        values = payoffs.european(s, strike=strike, is_call=is_call)
        return values if gaps is None else values + gaps(s[:, 0])

    return price_paths(
        chunks,
        payoff,
        discount=df,
        controls=(lambda s: s[:, -1] * df) if control else None,
        control_means=forward_mean(spot, dividend, maturity) if control else None,
        antithetic=antithetic,
        progress=progress,
        replicates=replicates,
    )
