"""Monte Carlo prices of exotic options under Black-Scholes, and pathwise greeks by autograd.

Asians (arithmetic or geometric, discrete or continuous averaging, seasoned) with the geometric
Asian as control variate; single barriers with rebate and lookbacks, continuously monitored via
the Brownian-bridge corrections of :mod:`pricing.payoffs` (exact for GBM, so few steps suffice);
pathwise delta and vega of Europeans and Asians.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from pricing import black_scholes, payoffs, simulate
from pricing._mc_random import BLOCK_SIZE, base_seed, derive_seed, graph_chunk_size
from pricing._mc_stats import MCResult, Moments, discount_factor, forward_mean, shape_samples
from pricing._simulate_checks import check_nonnegative, check_paths, check_single
from pricing._simulate_chunks import per_path
from pricing._typing import (
    DEFAULT_DTYPE,
    TensorLike,
    call_flag,
    call_flags,
    real_number,
    real_tensor,
    rounding_tolerance,
)
from pricing.analytic_exotics import geometric_asian_price
from pricing.monte_carlo import price_paths

__all__ = ["PathwiseGreeks", "bs_asian", "bs_barrier", "bs_lookback", "bs_pathwise_greeks"]

ASIAN_STEPS = 64
"""Default steps of a continuous Asian average (trapezoidal rule): over a year at 30%
volatility, the price, delta and vega of the 64-step average are within 1e-4 of the continuous
average's, relative."""


class PathwiseGreeks(NamedTuple):
    """Price, delta and vega estimates from the same paths (vega per 1.00 of volatility).

    Shape:
        Each field is an ``MCResult`` whose tensors are scalars (one strike per run).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> r = bs_pathwise_greeks(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2,
        ...                        n_paths=4096, generator=g)
        >>> r._fields
        ('price', 'delta', 'vega')
        >>> abs(r.vega.price.item() - 39.695) < 4 * r.vega.std_error.item()  # Black-Scholes vega
        True
    """

    price: MCResult
    delta: MCResult
    vega: MCResult


def bs_asian(
    *,
    spot: float,
    strike: TensorLike,
    maturity: float,
    volatility: float,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: TensorLike = True,
    average: str = "arithmetic",
    fixing_times: Sequence[float] | None = None,
    past_average: float | None = None,
    past_weight: float = 0.0,
    n_paths: int,
    n_steps: int = ASIAN_STEPS,
    antithetic: bool = False,
    control: bool = False,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> MCResult:
    """Monte Carlo price of an average-price Asian option under Black-Scholes.

    With ``fixing_times`` the paths are simulated exactly at the fixings (``n_steps`` is
    ignored); otherwise the average is continuous over ``[0, maturity]``, by the trapezoidal rule
    on ``n_steps`` steps. ``control=True`` uses the geometric Asian with the same fixings and
    weights as control variate (its closed form is exact for the simulated average).

    Args:
        spot: spot price.
        strike: strike(s) >= 0, scalar or (K,) (a call struck at 0 pays the underlying).
        maturity: years.
        volatility: lognormal volatility.
        rate: continuously compounded rate.
        dividend: continuously compounded dividend yield.
        is_call: call flag(s).
        average: ``"arithmetic"`` or ``"geometric"``.
        fixing_times: future fixing times in (0, maturity], the last at maturity (the payment
            date); None for continuous averaging.
        past_average: average so far (seasoned options).
        past_weight: weight of the past in the final average (see :func:`pricing.payoffs.asian`).
        n_paths: number of paths.
        n_steps: steps for continuous averaging.
        antithetic: antithetic pairs.
        control: geometric-Asian control variate.
        generator: source of the seed; None draws fresh entropy (``torch.manual_seed`` does
            not fix it: pass a seeded generator to repeat a run).
        chunk_size: paths per chunk.

    Shape:
        Output fields: () or (K,).

    References:
        Kemna and Vorst (1990), J. Banking Finance 14 (geometric control variate).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> r = bs_asian(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2, rate=0.06,
        ...              dividend=0.03, average="geometric", n_paths=4096, generator=g,
        ...              fixing_times=[0.1 * i for i in range(1, 11)])
        >>> abs(r.price.item() - 5.3426) < 4 * r.std_error.item()  # Clewlow & Strickland
        True
    """
    grid = _asian_grid(fixing_times, maturity, n_steps)
    kwargs = {"past_average": past_average, "past_weight": past_weight}
    fixings = None if fixing_times is None else list(range(1, grid.numel()))
    chunks = simulate.gbm_chunks(
        n_paths, time_grid=grid, spot=spot, volatility=volatility, rate=rate, dividend=dividend,
        antithetic=antithetic, generator=generator, chunk_size=chunk_size, reuse_buffers=True,
    )  # fmt: skip
    df = discount_factor(rate, grid[-1].item())

    def payoff(p: torch.Tensor, kind: str = average) -> torch.Tensor:
        average_grid = None if fixings is not None else grid
        return payoffs.asian(
            p, strike=strike, is_call=is_call, average=kind, fixings=fixings,
            time_grid=average_grid, **kwargs,
        )  # fmt: skip

    mean = None
    if control:
        spot, volatility, dividend = _one_each(spot=spot, volatility=volatility, dividend=dividend)
        weights = payoffs.average_weights(grid[None, :], fixings=fixings, time_grid=grid)
        mean = _mean_with_zero_strikes(
            lambda k, call: geometric_asian_price(
                spot=spot, strike=k, maturity=grid[-1].item(), volatility=volatility, rate=rate,
                dividend=dividend, is_call=call, fixing_times=grid, weights=weights, **kwargs,
            ),
            strike, is_call, reference=spot, discount=df,
        )  # fmt: skip
    return price_paths(
        chunks,
        payoff,
        discount=df,
        controls=(lambda p: payoff(p, "geometric") * df) if control else None,
        control_means=mean,
        antithetic=antithetic,
    )


def bs_barrier(
    *,
    spot: float,
    strike: TensorLike,
    barrier: float,
    barrier_type: str,
    maturity: float,
    volatility: float,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: TensorLike = True,
    rebate: float = 0.0,
    continuous: bool = True,
    n_paths: int,
    n_steps: int = 32,
    antithetic: bool = False,
    control: bool = False,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> MCResult:
    """Monte Carlo price of a single-barrier option with rebate under Black-Scholes.

    ``continuous=True`` applies the Brownian-bridge crossing probability between grid points
    (exact for GBM, the knock-out rebate's expected discount at the first passage included),
    else the barrier is monitored on the ``n_steps`` grid dates only (a knock-out rebate is then
    paid on the date of the hit). A spot on or beyond the barrier has been hit: a knock-out is
    worth its rebate, a knock-in the vanilla option (as in
    :func:`pricing.analytic_barrier.barrier_price`). ``control=True`` uses the European option
    on the same paths (Black-Scholes mean) as control variate.

    Args:
        spot: spot price.
        strike: strike(s) >= 0, scalar or (K,) (a call struck at 0 pays the underlying).
        barrier: barrier level.
        barrier_type: ``down_out, up_out, down_in, up_in``.
        maturity: years.
        volatility: lognormal volatility: a number, or (N,) one per path (not with
            ``control``, whose closed-form mean takes one).
        rate: continuously compounded rate.
        dividend: continuously compounded dividend yield.
        is_call: call flag(s).
        rebate: cash rebate (at the hit for knock-outs, at expiry for knock-ins).
        continuous: continuous (bridge-corrected) or discrete monitoring.
        n_paths: number of paths.
        n_steps: time steps (monitoring dates when discrete).
        antithetic: antithetic pairs.
        control: European control variate.
        generator: source of the seed; None draws fresh entropy (``torch.manual_seed`` does
            not fix it: pass a seeded generator to repeat a run).
        chunk_size: paths per chunk.

    Shape:
        Output fields: () or (K,).

    References:
        Glasserman (2004), section 6.4; Haug (1998), pp. 69-72.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> r = bs_barrier(spot=100.0, strike=100.0, barrier=95.0, barrier_type="down_out",
        ...                maturity=0.5, volatility=0.25, rate=0.08, dividend=0.04, rebate=3.0,
        ...                n_paths=4096, control=True, generator=g)
        >>> abs(r.price.item() - 6.7924) < 4 * r.std_error.item()  # Haug (1998), p. 72
        True
    """
    grid = simulate.time_grid(n_steps, maturity)
    chunks = simulate.gbm_chunks(
        n_paths, time_grid=grid, spot=spot, volatility=volatility, rate=rate, dividend=dividend,
        antithetic=antithetic, generator=generator, chunk_size=chunk_size, reuse_buffers=True,
    )  # fmt: skip
    df = discount_factor(rate, maturity)
    vol = _bridge_volatility(volatility) if continuous else None

    def payoff(item: tuple[slice, torch.Tensor]) -> torch.Tensor:
        where, p = item
        return payoffs.barrier(
            p, strike=strike, barrier=barrier, barrier_type=barrier_type, time_grid=grid,
            is_call=is_call, rebate=rebate, rate=rate,
            volatility=per_path(vol, where.start, where.stop, n_paths),
        )  # fmt: skip

    def european(item: tuple[slice, torch.Tensor]) -> torch.Tensor:
        return payoffs.european(item[1], strike=strike, is_call=is_call) * df

    mean = None
    if control:
        spot, volatility, dividend = _one_each(spot=spot, volatility=volatility, dividend=dividend)
        mean = _mean_with_zero_strikes(
            lambda k, call: _bs_mean(spot, k, maturity, volatility, rate, dividend, call),
            strike, is_call, reference=spot, discount=df,
        )  # fmt: skip
    return price_paths(
        ((where, (where, p)) for where, p in chunks),  # the chunk's rows of a per-path vol
        payoff,
        discount=df,
        controls=european if control else None,
        control_means=mean,
        antithetic=antithetic,
    )


def bs_lookback(
    *,
    spot: float,
    kind: str,
    is_call: bool,
    maturity: float,
    volatility: float,
    rate: float = 0.0,
    dividend: float = 0.0,
    strike: TensorLike | None = None,
    running_extremum: float | None = None,
    continuous: bool = True,
    n_paths: int,
    n_steps: int = 16,
    antithetic: bool = False,
    control: bool = False,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> MCResult:
    """Monte Carlo price of a floating- or fixed-strike lookback under Black-Scholes.

    ``continuous=True`` samples the exact extremum of the log-price bridge over every step (so
    the estimate is unbiased for continuous monitoring with any ``n_steps``; the bridge draws of
    each block of :data:`pricing._mc_random.BLOCK_SIZE` paths come from a generator seeded by the
    run's seed and the block, so, like the paths, they do not depend on ``chunk_size``).
    ``control=True`` uses the discounted terminal spot as control variate.

    Args:
        spot: spot price.
        kind: ``"floating"`` or ``"fixed"``.
        is_call: call (True) or put (False).
        maturity: years.
        volatility: lognormal volatility: a number, or (N,) one per path.
        rate: continuously compounded rate.
        dividend: continuously compounded dividend yield.
        strike: strike(s) >= 0 of a fixed lookback, scalar or (K,).
        running_extremum: extremum so far (min for floating calls and fixed puts, else max).
        continuous: continuous (exact bridge extremum) or discrete monitoring on the grid.
        n_paths: number of paths.
        n_steps: time steps.
        antithetic: antithetic pairs.
        control: terminal-spot control variate.
        generator: source of the seed; None draws fresh entropy (``torch.manual_seed`` does
            not fix it: pass a seeded generator to repeat a run).
        chunk_size: paths per chunk.

    Shape:
        Output fields: () or (K,).

    References:
        Glasserman (2004), section 6.4; Haug (1998), pp. 61-64.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> r = bs_lookback(spot=120.0, kind="floating", is_call=True, running_extremum=100.0,
        ...                 maturity=0.5, volatility=0.3, rate=0.1, dividend=0.06, n_paths=4096,
        ...                 generator=g)
        >>> abs(r.price.item() - 25.3533) < 4 * r.std_error.item()  # Haug (1998), p. 62
        True
    """
    grid = simulate.time_grid(n_steps, maturity)
    chunks = simulate.gbm_chunks(
        n_paths, time_grid=grid, spot=spot, volatility=volatility, rate=rate, dividend=dividend,
        antithetic=antithetic, generator=generator, chunk_size=chunk_size, reuse_buffers=True,
    )  # fmt: skip
    bridge_seed = base_seed(generator)
    df = discount_factor(rate, maturity)
    vol = _bridge_volatility(volatility) if continuous else None

    def block_payoff(p: torch.Tensor, first: int) -> torch.Tensor:
        block = first // BLOCK_SIZE
        gen = torch.Generator(device=p.device).manual_seed(derive_seed(bridge_seed, block))
        return payoffs.lookback(
            p, kind=kind, is_call=is_call, strike=strike, running_extremum=running_extremum,
            time_grid=grid, volatility=per_path(vol, first, first + len(p), n_paths),
            generator=gen,
        )  # fmt: skip

    def payoff(item: tuple[slice, torch.Tensor]) -> torch.Tensor:
        # one generator per block of paths, as the paths' normals: a generator per chunk made
        # the estimate depend on chunk_size (chunks start on block boundaries)
        where, p = item
        return torch.cat([block_payoff(p[lo : lo + BLOCK_SIZE], where.start + lo)
                          for lo in range(0, p.shape[0], BLOCK_SIZE)])  # fmt: skip

    return price_paths(
        ((where, (where, p)) for where, p in chunks),
        payoff,
        discount=df,
        controls=(lambda item: item[1][:, -1] * df) if control else None,
        control_means=forward_mean(spot, dividend, maturity) if control else None,
        antithetic=antithetic,
    )


# ordinary tensors inside an inference_mode block too (see mc_greeks.heston_pathwise_greeks)
@torch.inference_mode(False)
def bs_pathwise_greeks(
    *,
    spot: float,
    strike: float,
    maturity: float,
    volatility: float,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: bool = True,
    payoff: str = "european",
    average: str = "arithmetic",
    fixing_times: Sequence[float] | None = None,
    n_paths: int,
    n_steps: int | None = None,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> PathwiseGreeks:
    """Pathwise delta and vega by autograd, for European or Asian options under Black-Scholes.

    Each path gets its own copy of ``spot`` and ``volatility`` as a leaf tensor, so one backward
    pass gives every path's derivative and hence a standard error. Pathwise derivatives are
    unbiased for payoffs that are Lipschitz in the path (calls, puts, Asians), not for digitals
    or barriers.

    Args:
        spot: spot price.
        strike: one strike (one backward pass per run: a call per strike).
        maturity: years.
        volatility: lognormal volatility, >= 0 (refused where no path moves off a strike at
            the forward, or at the average: every path is then on the payoff's kink).
        rate: continuously compounded rate.
        dividend: continuously compounded dividend yield.
        is_call: call (True) or put (False).
        payoff: ``"european"`` or ``"asian"``.
        average: Asian average, ``"arithmetic"`` or ``"geometric"``.
        fixing_times: Asian fixing times; None averages continuously over ``n_steps`` steps.
        n_paths: number of paths.
        n_steps: time steps (ignored with ``fixing_times``); None: one for a European (its
            terminal value is exact), :data:`ASIAN_STEPS` for a continuous Asian average (as
            :func:`bs_asian`).
        antithetic: antithetic pairs.
        generator: source of the seed; None draws fresh entropy (``torch.manual_seed`` does
            not fix it: pass a seeded generator to repeat a run).
        chunk_size: paths per chunk (None: :func:`pricing._mc_random.graph_chunk_size`, which
            bounds each chunk's autograd graph).

    Returns:
        ``PathwiseGreeks(price, delta, vega)``.

    References:
        Glasserman (2004), section 7.2 (pathwise derivative estimates).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> r = bs_pathwise_greeks(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2,
        ...                        n_paths=20000, generator=g)
        >>> abs(r.delta.price.item() - 0.5398) < 4 * r.delta.std_error.item()
        True
    """
    if payoff not in ("european", "asian"):
        raise ValueError(f"payoff must be 'european' or 'asian', got {payoff!r}")
    check_paths(n_paths)  # before the leaves below are allocated
    # one backward pass per run: with several strikes or flags it summed their greeks
    check_single("strike", strike, "for pathwise greeks (one call per strike)")
    is_call = call_flag(is_call)
    if n_steps is None:  # one step averaged S_0 and S_T alone: a continuous Asian's vega 22% low
        n_steps = ASIAN_STEPS if payoff == "asian" and fixing_times is None else 1
    grid = _asian_grid(fixing_times, maturity, n_steps)
    fixings = None if fixing_times is None else list(range(1, grid.numel()))
    # by name: float() took spot="100" as 100, and a tensor of several values named nothing
    s0 = torch.full((n_paths,), real_number("spot", spot), dtype=DEFAULT_DTYPE, requires_grad=True)
    vol = torch.full((n_paths,), real_number("volatility", volatility), dtype=DEFAULT_DTYPE,
                     requires_grad=True)  # fmt: skip
    df = discount_factor(rate, maturity)
    chunks = simulate.gbm_chunks(
        n_paths, time_grid=grid, spot=s0, volatility=vol, rate=rate, dividend=dividend,
        antithetic=antithetic, generator=generator,
        chunk_size=graph_chunk_size(len(grid) - 1) if chunk_size is None else chunk_size,
    )  # fmt: skip
    moments = [Moments() for _ in range(3)]
    time_avg = None if fixings is not None else grid

    def pay(paths: torch.Tensor, k: object, call: bool) -> torch.Tensor:
        if payoff == "european":
            return payoffs.european(paths, strike=k, is_call=call)
        return payoffs.asian(paths, strike=k, is_call=call, average=average, fixings=fixings,
                             time_grid=time_avg)  # fmt: skip

    with torch.enable_grad():  # the greeks need the graph even when called under no_grad
        for i, (where, paths) in enumerate(chunks):
            if i == 0:  # a call struck at 0 pays the underlying (S_T, or the average)
                _check_off_the_kink(pay(paths.detach(), 0.0, True), strike, payoff)
            y = pay(paths, strike, is_call) * df
            d_spot, d_vol = torch.autograd.grad(y.sum(), (s0, vol))
            for m, sample in zip(moments, (y, d_spot[where], d_vol[where]), strict=True):
                m.add(shape_samples(sample, None, antithetic)[0], None)
    res = [MCResult(*(f.squeeze(-1) for f in m.result(None, 0.95, n_paths)[:4]), n_paths)
           for m in moments]  # fmt: skip
    return PathwiseGreeks(*res)


def _check_off_the_kink(underlying: torch.Tensor, strike: object, payoff: str) -> None:
    """Refuse a run whose paths all end on the payoff's kink, the underlying (``(N,)``, a chunk's
    ``S_T`` or average) at the strike to rounding: a volatility of 0 (or one too small to move a
    path) with the strike at the forward gave a call delta of 1 and a vega of noise around 0,
    where the closed form's limits as the volatility falls to 0 are ``e^(-qT) / 2`` and
    ``sqrt(T) phi(0) F e^(-rT)`` (39.9 at F = 100, T = 1): the sign of each path's move decides
    its side of the kink, and no path moves. An average of equal fixings is a few ulps off the
    strike, all on one side (99.99999999999999 for three fixings of 100): exact equality let
    its delta of 0 or +-1 through."""
    k = real_tensor("strike", strike, dtype=underlying.dtype).item()
    rounding = 1e3 * torch.finfo(underlying.dtype).eps * abs(k)
    if bool(((underlying - k).abs() <= rounding).all()):
        what = "S_T" if payoff == "european" else "average"
        raise ValueError(f"every path's {what} is the strike {k:g} (volatility 0, or too "
                         "small to move a path): on the payoff's kink pathwise greeks are "
                         "undefined (they came out as delta +-1 and vega noise around 0, where "
                         "the Black-Scholes vega tends to sqrt(T) phi(0) F e^(-rT) > 0 as "
                         "volatility falls to 0); use a volatility > 0")  # fmt: skip


def _one_each(**named: object) -> list[float]:
    """The arguments of a control variate's closed-form mean, one number each, by name: the
    simulators take a spot, volatility or dividend per path, whose mean per path was taken for
    one per strike (bs_asian with a per-path spot of 100 priced 69.2 for about 8)."""
    return [real_number(name, value) for name, value in named.items()]


def _bridge_volatility(volatility: object) -> torch.Tensor:
    """The simulation's volatility as the bridge corrections of :mod:`pricing.payoffs` take it,
    to be sliced per chunk with :func:`pricing._simulate_chunks.per_path`: a per-path one was
    passed whole to each chunk's payoff, refused with any chunk but the whole run's ("volatility
    must be a scalar, (1024,) ... got shape (5000,)")."""
    return real_tensor("volatility", volatility, dtype=DEFAULT_DTYPE)


def _asian_grid(
    fixing_times: Sequence[float] | None, maturity: float, n_steps: int
) -> torch.Tensor:
    if fixing_times is None:
        return simulate.time_grid(n_steps, maturity)
    times = torch.as_tensor(list(fixing_times), dtype=DEFAULT_DTYPE)
    # times (or a maturity) given in float32 end within its rounding (as simulate.time_grid's): a
    # float32 0.7 (0.69999999) was refused as not ending at maturity=0.7
    tol = rounding_tolerance(fixing_times, maturity, floor=1e-9)
    if times.numel() == 0 or not math.isclose(float(times[-1]), maturity, rel_tol=tol):
        raise ValueError("fixing_times must end at maturity (the payment date)")
    if not bool((times > 0).all()) or not bool((times.diff() > 0).all()):  # NaN too
        # the error named the simulation's time_grid, which the caller never gave
        raise ValueError(f"fixing_times must increase strictly within (0, maturity], got "
                         f"{times.tolist()}")  # fmt: skip
    return simulate.time_grid(grid=torch.cat((times.new_zeros(1), times)))


def _mean_with_zero_strikes(
    mean: Callable[[TensorLike, TensorLike], torch.Tensor],
    strike: TensorLike,
    is_call: TensorLike,
    *,
    reference: float,
    discount: float,
) -> torch.Tensor:
    """A control's closed-form mean ``mean(strike, is_call)``, zero strikes included.

    The payoffs take a strike of 0 (a call on the underlying, a put worth 0) where the closed
    forms refuse it, so ``control=True`` refused what ``control=False`` priced. At ``K = 0`` the
    call is the discounted mean of the underlying, by parity ``C(K') - P(K') + discount K'`` at
    any ``K' > 0`` (here ``reference``, about the spot, so that nothing cancels).
    """
    k = real_tensor("strike", strike, dtype=DEFAULT_DTYPE)
    # here: the closed forms said "strike must be finite and > 0", yet a zero strike is legal
    check_nonnegative("strike", k)
    zero = k == 0
    if not bool(zero.any()):
        return mean(strike, is_call)
    call = call_flags(is_call)
    forward = mean(reference, True) - mean(reference, False) + discount * reference
    value = mean(torch.where(zero, 1.0, k), call)
    return torch.where(zero, torch.where(call, forward, 0.0), value)


def _bs_mean(
    spot: float,
    strike: TensorLike,
    maturity: float,
    volatility: float,
    rate: float,
    dividend: float,
    is_call: TensorLike,
) -> torch.Tensor:
    return black_scholes.price(
        spot=spot, strike=strike, maturity=maturity, volatility=volatility, rate=rate,
        dividend=dividend, is_call=torch.as_tensor(is_call),
    )  # fmt: skip
