"""Option payoffs as functions of simulated paths.

Every payoff takes paths shaped (N, T+1) (column 0 is today's value) and returns the amount paid
at expiry, undiscounted, shaped (N,) for a scalar strike or (N, K) for strikes of shape (K,)
(``is_call`` broadcasts against the strikes). Amounts paid before expiry (a knock-out rebate at
the hit) are accrued to expiry at ``rate``, so that every payoff is discounted by the same factor.

Continuous monitoring: given the volatility, barriers use the Brownian-bridge probability that the
log price crossed the barrier between two grid points, and lookbacks sample the exact extremum of
the log-price bridge over each step, so a coarse grid prices continuously monitored contracts
without the O(sqrt(dt)) discretisation bias (exactly so for geometric Brownian motion).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch

from pricing._bridge_hit import discounted_first_passage
from pricing._simulate_checks import check_increasing
from pricing._typing import (
    TensorLike,
    broadcast_shapes,
    call_flag,
    call_flags,
    real_scalar,
    real_tensor,
)
from pricing._validation import check_seasoning

__all__ = [
    "BARRIER_TYPES",
    "asian",
    "average_weights",
    "barrier",
    "barrier_hit_probabilities",
    "european",
    "lookback",
    "path_extremum",
]

BARRIER_TYPES = ("down_out", "up_out", "down_in", "up_in")
_BLOCK_ELEMENTS = 2**18
"""Path values per block in the payoffs that work on whole paths (barriers, bridge extrema): a
block's temporaries fit memory the allocator reuses, where a whole chunk's are fresh memory, paid
for by a page fault per page (most of their time on a large chunk, measured here)."""


def european(
    paths: torch.Tensor, *, strike: TensorLike, is_call: TensorLike = True
) -> torch.Tensor:
    """Vanilla payoff ``max(S_T - K, 0)`` (call) or ``max(K - S_T, 0)`` (put).

    Args:
        paths: price paths; only the last column is used.
        strike: strike(s) >= 0, scalar or (K,) (a call struck at 0 pays the underlying).
        is_call: call flag(s), broadcast against ``strike``.

    Shape:
        paths: (N, T+1). Output: (N,) or (N, K).

    Examples:
        >>> european(torch.tensor([[100.0, 110.0], [100.0, 90.0]]), strike=100.0).tolist()
        [10.0, 0.0]
    """
    _check_paths(paths)
    return _vanilla(paths[:, -1], strike, is_call)


def asian(
    paths: torch.Tensor,
    *,
    strike: TensorLike,
    is_call: TensorLike = True,
    average: str = "arithmetic",
    fixings: Sequence[int] | torch.Tensor | None = None,
    time_grid: torch.Tensor | None = None,
    past_average: float | None = None,
    past_weight: float = 0.0,
) -> torch.Tensor:
    """Average-price option ``max(A - K, 0)`` (call) or ``max(K - A, 0)`` (put).

    The average over the future is the plain mean of the columns ``fixings`` (discrete fixings;
    default all columns but 0) or, when ``time_grid`` is given and ``fixings`` is None, the
    continuous time average over ``[t_0, t_T]`` by the trapezoidal rule. A seasoned option mixes in
    the average so far: ``A = past_weight * past_average + (1 - past_weight) * future_average``,
    where ``past_weight`` is ``n_past / (n_past + n_future)`` for discrete fixings or
    ``elapsed / (elapsed + remaining)`` for continuous averaging. Geometric averages are taken
    the same way on log prices.

    Args:
        paths: price paths.
        strike: strike(s) >= 0, scalar or (K,) (a call struck at 0 pays the underlying).
        is_call: call flag(s).
        average: ``"arithmetic"`` or ``"geometric"``.
        fixings: column indices of the future fixings.
        time_grid: grid of the paths, for continuous averaging.
        past_average: average of the past fixings (required when ``past_weight > 0``, refused
            when it is 0).
        past_weight: weight of the past in the final average, in [0, 1).

    Shape:
        paths: (N, T+1). Output: (N,) or (N, K).

    Examples:
        >>> p = torch.tensor([[100.0, 110.0, 120.0]], dtype=torch.float64)
        >>> [round(float(asian(p, strike=100.0, fixings=f)), 9) for f in (None, [0, 1, 2])]
        [15.0, 10.0]
    """
    _check_paths(paths)
    weights = average_weights(paths, fixings=fixings, time_grid=time_grid)  # (T+1,)
    if average == "arithmetic":
        future = paths @ weights
    elif average == "geometric":
        future = (paths.log() @ weights).exp()
    else:
        raise ValueError(f"average must be 'arithmetic' or 'geometric', got {average!r}")
    # named, and one number each: a tensor of several was "Boolean value of Tensor ... ambiguous"
    past_weight = real_scalar("past_weight", past_weight)  # a graph kept, as the past average's
    if past_average is not None:
        past_average = real_scalar("past_average", past_average)
    check_seasoning(past_average, past_weight)
    if past_weight > 0.0:
        past = torch.as_tensor(past_average, dtype=paths.dtype, device=paths.device)
        if average == "arithmetic":
            future = past_weight * past + (1.0 - past_weight) * future
        else:
            future = (past_weight * past.log() + (1.0 - past_weight) * future.log()).exp()
    return _vanilla(future, strike, is_call)


def barrier_hit_probabilities(
    paths: torch.Tensor,
    *,
    barrier: float,
    down: bool,
    time_grid: torch.Tensor,
    volatility: TensorLike | None = None,
) -> torch.Tensor:
    """Probability that the barrier is first reached during each step, given the grid values.

    Step ``i`` covers ``(t_i, t_{i+1}]``; a path that starts on or beyond the barrier is hit in step
    0. With ``volatility``, the log price between grid points is a Brownian bridge and crosses the
    barrier with probability ``exp(-2 d_i d_{i+1} / (sigma^2 dt))`` (``d`` = log distance to the
    barrier); without it only grid points count (discrete monitoring).

    Args:
        paths: price paths.
        barrier: barrier level.
        down: True for a down barrier (hit from above), False for an up barrier.
        time_grid: grid of the paths.
        volatility: lognormal volatility over each step: scalar, (N,) (per path), (1, T) (per
            step) or (N, T); None for discrete monitoring. A 1-D volatility is per path, and
            refused as ambiguous when N == T.

    Shape:
        paths: (N, T+1). time_grid: (T+1,). Output: (N, T), rows sum to at most 1.

    References:
        Glasserman (2004), Monte Carlo Methods in Financial Engineering, section 6.4, eq. (6.50).

    Examples:
        >>> p = torch.tensor([[100.0, 95.0, 80.0]])
        >>> barrier_hit_probabilities(p, barrier=90.0, down=True,
        ...                           time_grid=torch.tensor([0.0, 0.5, 1.0])).tolist()
        [[0.0, 1.0]]
    """
    _check_paths(paths)
    _check_grid_matches(paths, time_grid)
    barrier = real_scalar("barrier", barrier)  # "'>' not supported between 'str' and 'int'"
    if not barrier > 0:  # NaN too: a barrier of -90 or NaN was "never hit"
        raise ValueError(f"barrier must be positive, got {barrier}")
    vol = None if volatility is None else _checked_volatility(volatility, paths)
    return _hit_probabilities(paths, barrier, down, time_grid, vol)


def _hit_probabilities(
    paths: torch.Tensor,
    barrier: float,
    down: bool,
    time_grid: torch.Tensor,
    volatility: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`barrier_hit_probabilities` of checked inputs (``volatility`` a tensor or None)."""
    crossings = _crossings(paths, barrier, down, time_grid, volatility)
    return _survival_before(crossings.probability) * crossings.probability


class _Crossings(NamedTuple):
    """Per step (N, T): log distances to the barrier at its ends (positive on the near side),
    the crossing probability within it, and ``sigma^2 dt`` (None: grid points only)."""

    start: torch.Tensor
    end: torch.Tensor
    probability: torch.Tensor
    variance: torch.Tensor | None


def _crossings(
    paths: torch.Tensor,
    barrier: float,
    down: bool,
    time_grid: torch.Tensor,
    volatility: torch.Tensor | None,
) -> _Crossings:
    distance = (paths / barrier).log()  # (N, T+1)
    if not down:
        distance = -distance
    start, end = distance[:, :-1], distance[:, 1:]  # (N, T)
    crossed = (end <= 0) | (start <= 0)
    if volatility is None:
        return _Crossings(start, end, crossed.to(paths.dtype), None)
    variance = _step_variance(volatility, time_grid, paths)  # (N, T) or broadcastable
    # a step without variance moves straight between its points: no crossing in between
    moving = variance > 0
    exponent = start.clamp_min(0) * end.clamp_min(0) / torch.where(moving, variance, 1.0)
    bridge = torch.where(moving, torch.exp(-2.0 * exponent), 0.0)
    return _Crossings(start, end, torch.where(crossed, torch.ones_like(bridge), bridge), variance)


def _survival_before(step_prob: torch.Tensor) -> torch.Tensor:
    """Probability of no hit before each step, (N, T), from the steps' (N, T)."""
    survive = torch.cumprod(1.0 - step_prob, dim=1)
    return torch.cat((torch.ones_like(survive[:, :1]), survive[:, :-1]), 1)


def barrier(
    paths: torch.Tensor,
    *,
    strike: TensorLike,
    barrier: float,
    barrier_type: str,
    time_grid: torch.Tensor,
    is_call: TensorLike = True,
    rebate: float = 0.0,
    rate: float = 0.0,
    volatility: TensorLike | None = None,
) -> torch.Tensor:
    """Single-barrier option value at expiry, conditional on the grid values.

    Knock-outs pay the vanilla payoff if the barrier is never reached, else ``rebate`` at the hit
    (accrued to expiry at ``rate``; the hit time is the monitoring date that saw it, or with the
    bridge correction the bridge's first passage within the step, its expected accrual in closed
    form up to a quadrature (:mod:`pricing._bridge_hit`); ``t_0`` for a path that starts beyond
    the barrier). Knock-ins pay the vanilla payoff once the barrier has been reached, else
    ``rebate`` at expiry. The conditional expectation over the bridge replaces the hit
    indicator, which also lowers the variance.

    Args:
        paths: price paths.
        strike: strike(s) >= 0, scalar or (K,) (a call struck at 0 pays the underlying).
        barrier: barrier level, > 0.
        barrier_type: one of ``down_out, up_out, down_in, up_in``.
        time_grid: grid of the paths.
        is_call: call flag(s).
        rebate: cash rebate.
        rate: continuously compounded rate, to accrue a knock-out rebate from the hit to expiry.
        volatility: lognormal volatility per step (scalar, (N,) per path, (1, T) per step or
            (N, T); 1-D refused when N == T, see :func:`barrier_hit_probabilities`) for the
            Brownian-bridge correction (continuous monitoring); None monitors grid points only.

    Shape:
        paths: (N, T+1). Output: (N,) or (N, K).

    References:
        Glasserman (2004), section 6.4; Haug (1998), pp. 69-72 (rebate conventions).

    Examples:
        >>> grid = torch.tensor([0.0, 0.5, 1.0])
        >>> p = torch.tensor([[100.0, 80.0, 120.0], [100.0, 105.0, 120.0]])
        >>> barrier(p, strike=100.0, barrier=90.0, barrier_type="down_out", time_grid=grid,
        ...         rebate=1.0).tolist()
        [1.0, 20.0]
    """
    if barrier_type not in BARRIER_TYPES:
        raise ValueError(f"barrier_type must be one of {BARRIER_TYPES}, got {barrier_type!r}")
    # by name, one number each (a str or None failed in torch or in '>', a tensor of several
    # values was "Boolean value of Tensor ... is ambiguous")
    barrier, rebate, rate = (real_scalar(n, v) for n, v in
                             (("barrier", barrier), ("rebate", rebate), ("rate", rate)))  # fmt: skip
    if not barrier > 0:
        raise ValueError(f"barrier must be positive, got {barrier}")
    # torch.isfinite: math.isfinite of a tensor that requires grad warned "Converting a tensor
    # with requires_grad=True to a scalar"
    if not (bool(torch.isfinite(torch.as_tensor(rebate))) and rebate >= 0):
        raise ValueError(f"rebate must be finite and >= 0, got {rebate}")
    if not bool(torch.isfinite(torch.as_tensor(rate))):  # a NaN rate: a NaN rebate accrual
        raise ValueError(f"rate must be finite, got {rate}")
    _check_paths(paths)
    _check_grid_matches(paths, time_grid)  # once, not per block
    vol = None if volatility is None else _checked_volatility(volatility, paths)
    parts = [
        _barrier_block(
            block,
            strike=strike,
            barrier=barrier,
            barrier_type=barrier_type,
            time_grid=time_grid,
            is_call=is_call,
            rebate=rebate,
            rate=rate,
            volatility=vol,
        )
        for block, vol in _path_blocks(paths, vol)
    ]
    return torch.cat(parts)


def _barrier_block(
    paths: torch.Tensor,
    *,
    strike: TensorLike,
    barrier: float,
    barrier_type: str,
    time_grid: torch.Tensor,
    is_call: TensorLike,
    rebate: float,
    rate: float,
    volatility: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`barrier` of one block of checked paths (arguments as there)."""
    down = barrier_type.startswith("down")
    crossings = _crossings(paths, barrier, down, time_grid, volatility)
    survive_before = _survival_before(crossings.probability)  # (N, T)
    survive = 1.0 - (survive_before * crossings.probability).sum(1)  # (N,)
    vanilla = _vanilla(paths[:, -1], strike, is_call)
    extra = (slice(None),) + (None,) * (vanilla.ndim - 1)
    if barrier_type.endswith("_in"):
        return vanilla * (1.0 - survive)[extra] + rebate * survive[extra]
    if not isinstance(rebate, torch.Tensor) and rebate == 0.0:  # one that requires grad: kept
        return vanilla * survive[extra]
    grid = time_grid.to(paths.dtype)
    rate_dt = rate * grid.diff()  # (T,)
    if crossings.variance is None:  # a hit on the monitoring date at the step's end (t_0 at once)
        discount = torch.where(
            crossings.start <= 0, 1.0, crossings.probability * torch.exp(-rate_dt)
        )
    else:  # at the bridge's first passage within the step (see pricing._bridge_hit)
        discount = discounted_first_passage(crossings.start, crossings.end, crossings.variance,
                                            crossings.probability, rate_dt)  # fmt: skip
    accrued = (survive_before * discount) @ torch.exp(rate * (grid[-1] - grid[:-1]))  # (N,)
    return vanilla * survive[extra] + (rebate * accrued)[extra]


def path_extremum(
    paths: torch.Tensor,
    *,
    maximum: bool,
    time_grid: torch.Tensor | None = None,
    volatility: TensorLike | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Running maximum or minimum of each path over ``[t_0, t_T]``.

    With ``volatility`` (and ``time_grid``), the extremum of the log-price Brownian bridge over
    each step is sampled exactly, ``(a + b +/- sqrt((b - a)^2 - 2 sigma^2 dt ln U)) / 2``, so the
    result is distributed as the continuously monitored extremum; otherwise the grid extremum.

    Shape:
        paths: (N, T+1). Output: (N,).

    References:
        Glasserman (2004), section 6.4, eq. (6.49) (maximum of a Brownian bridge).

    Examples:
        >>> p = torch.tensor([[100.0, 90.0, 110.0]])
        >>> path_extremum(p, maximum=True).tolist(), path_extremum(p, maximum=False).tolist()
        ([110.0], [90.0])
    """
    _check_paths(paths)
    if volatility is None:
        return paths.amax(1) if maximum else paths.amin(1)
    if time_grid is None:
        raise ValueError("time_grid is required with volatility (continuous monitoring)")
    _check_grid_matches(paths, time_grid)
    vol = _checked_volatility(volatility, paths)
    # the uniforms of consecutive blocks of rows continue one stream: the numbers of one (N, T) draw
    parts = [_bridge_extremum(block, block_vol, time_grid, maximum, generator)
             for block, block_vol in _path_blocks(paths, vol)]  # fmt: skip
    return torch.cat(parts)


def _bridge_extremum(
    paths: torch.Tensor,
    volatility: torch.Tensor,
    time_grid: torch.Tensor,
    maximum: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """:func:`path_extremum` of one block of paths under continuous monitoring."""
    logs = paths.log()
    a, b = logs[:, :-1], logs[:, 1:]  # (N, T)
    variance = _step_variance(volatility, time_grid, paths)
    uniform = 1.0 - torch.rand(a.shape, generator=generator, dtype=paths.dtype, device=paths.device)
    spread = (b - a).square() - 2.0 * variance * uniform.log()
    # sqrt's infinite slope at 0 (a flat step without variance) times the 0 of a step that is not
    # the extremum was NaN in every gradient; such a step's spread is 0 either way
    spread = torch.where(spread > 0, torch.where(spread > 0, spread, 1.0).sqrt(), 0.0)
    if maximum:
        return (0.5 * (a + b + spread)).amax(1).exp()
    return (0.5 * (a + b - spread)).amin(1).exp()


def _path_blocks(
    paths: torch.Tensor, per_path: TensorLike | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Blocks of about :data:`_BLOCK_ELEMENTS` path values, row-major, each with its rows of
    ``per_path`` (a tensor whose first dimension is N; anything else is passed whole).

    Shape:
        paths: (N, T+1). Each block: (B, T+1), and (B, ...) of ``per_path``.
    """
    n = paths.shape[0]
    rows = max(1, _BLOCK_ELEMENTS // paths.shape[1])
    if per_path is not None and not isinstance(per_path, torch.Tensor):
        # a list or numpy array of per-path values was passed whole to every block
        per_path = torch.as_tensor(per_path, dtype=paths.dtype, device=paths.device)
    sliced = isinstance(per_path, torch.Tensor) and per_path.ndim >= 1 and per_path.shape[0] == n
    for start in range(0, n, rows):
        part = slice(start, start + rows)
        yield paths[part].contiguous(), per_path[part] if sliced else per_path


def lookback(
    paths: torch.Tensor,
    *,
    kind: str,
    is_call: bool,
    strike: TensorLike | None = None,
    running_extremum: float | None = None,
    time_grid: torch.Tensor | None = None,
    volatility: TensorLike | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Floating- or fixed-strike lookback payoff.

    Floating call ``S_T - min S``, floating put ``max S - S_T``; fixed call ``max(max S - K, 0)``,
    fixed put ``max(K - min S, 0)``. ``running_extremum`` is the extremum observed before ``t_0``
    (the min for floating calls and fixed puts, the max otherwise). Continuous monitoring as in
    :func:`path_extremum`.

    Args:
        paths: price paths.
        kind: ``"floating"`` or ``"fixed"``.
        is_call: call (True) or put (False).
        strike: strike(s) for fixed lookbacks, scalar or (K,).
        running_extremum: extremum so far.
        time_grid: grid of the paths (continuous monitoring).
        volatility: lognormal volatility per step for continuous monitoring (shapes as in
            :func:`barrier`).
        generator: random source for the bridge extremum.

    Shape:
        paths: (N, T+1). Output: (N,), or (N, K) for fixed strikes of shape (K,).

    References:
        Glasserman (2004), section 6.4; Haug (1998), pp. 61-64.

    Examples:
        >>> p = torch.tensor([[100.0, 90.0, 110.0]])
        >>> lookback(p, kind="floating", is_call=True).tolist()
        [20.0]
    """
    is_call = call_flag(is_call)  # "False" was truthy: it paid a call
    use_max = (kind == "floating") != is_call
    if kind not in ("floating", "fixed"):
        raise ValueError(f"kind must be 'floating' or 'fixed', got {kind!r}")
    ext = path_extremum(
        paths, maximum=use_max, time_grid=time_grid, volatility=volatility, generator=generator
    )
    if running_extremum is not None:
        running_extremum = real_scalar("running_extremum", running_extremum)
        start = paths[:, 0]
        if not bool(torch.isfinite(torch.as_tensor(running_extremum))) or bool(
            ((start > running_extremum) if use_max else (start < running_extremum)).any()
        ):
            side = "maximum" if use_max else "minimum"
            raise ValueError(f"running_extremum must be the {side} observed so far: "
                             f"{'>=' if use_max else '<='} the spot at t_0, got {running_extremum} "
                             f"against spot {float(start[0].detach())}")  # fmt: skip
        ext = ext.clamp_min(running_extremum) if use_max else ext.clamp_max(running_extremum)
    if kind == "floating":
        if strike is not None:
            raise ValueError("strike must be None for a floating lookback")
        return paths[:, -1] - ext if is_call else ext - paths[:, -1]
    if strike is None:
        raise ValueError("strike is required for a fixed lookback")
    return _vanilla(ext, strike, is_call)


def _vanilla(underlying: torch.Tensor, strike: TensorLike, is_call: TensorLike) -> torch.Tensor:
    k = real_tensor("strike", strike, dtype=underlying.dtype, device=underlying.device)
    if k.ndim > 1:
        raise ValueError(f"strike must be a scalar or 1-D, got shape {tuple(k.shape)}")
    if not bool(torch.isfinite(k).all()) or bool((k < 0).any()):
        raise ValueError("strike must be finite and non-negative")
    call = call_flags(is_call, device=underlying.device)  # 0.5 or 2 was a call
    try:
        broadcast_shapes(k.shape, call.shape)
        fits = call.ndim <= 1
    except ValueError:
        fits = False
    if not fits:  # torch's "size of tensor a (2) must match the size of tensor b (3)" named neither
        raise ValueError(f"is_call of shape {tuple(call.shape)} does not broadcast with strike "
                         f"of shape {tuple(k.shape)}")  # fmt: skip
    x = underlying[:, None] if k.ndim == 1 or call.ndim == 1 else underlying
    sign = torch.where(call, 1.0, -1.0).to(underlying.dtype)
    return (sign * (x - k)).clamp_min(0.0)


def average_weights(
    paths: torch.Tensor,
    *,
    fixings: Sequence[int] | torch.Tensor | None = None,
    time_grid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weights of the path columns in the average of :func:`asian` (they sum to 1).

    Discrete fixings weigh their columns equally (default: all columns but 0); with
    ``time_grid`` and no ``fixings``, the trapezoidal weights of the time average over the grid.

    Shape:
        paths: (N, T+1) (only its width, dtype and device are used). Output: (T+1,).

    Examples:
        >>> grid = torch.tensor([0.0, 0.5, 1.0])
        >>> average_weights(torch.ones(1, 3), time_grid=grid).tolist()
        [0.25, 0.5, 0.25]
    """
    n_cols = paths.shape[1]
    weights = paths.new_zeros(n_cols)
    if fixings is None and time_grid is not None:
        _check_grid_matches(paths, time_grid)
        dt = time_grid.diff().to(paths.dtype)
        weights[:-1] += 0.5 * dt
        weights[1:] += 0.5 * dt
        return weights / (time_grid[-1] - time_grid[0])
    idx = torch.arange(1, n_cols) if fixings is None else torch.as_tensor(fixings).flatten()
    # times or a mask, not indices (an empty list is float32 too: the message below says so)
    if idx.numel() and (idx.dtype == torch.bool or idx.is_floating_point()):
        raise ValueError(f"fixings must be integer column indices in [0, {n_cols - 1}] (not "
                         f"fixing times or a mask), got {idx.tolist()}")  # fmt: skip
    if idx.numel() == 0 or bool((idx < 0).any()) or bool((idx >= n_cols).any()):
        raise ValueError(f"fixings must be column indices in [0, {n_cols - 1}], got {idx.tolist()}")
    weights.index_add_(0, idx.to(weights.device), paths.new_ones(idx.numel()))
    return weights / idx.numel()


def _checked_volatility(volatility: TensorLike, paths: torch.Tensor) -> torch.Tensor:
    """``volatility`` as a tensor of the paths' dtype and device, non-negative and finite (a
    Heston step's ``sqrt(v)`` is often exactly 0: such a step was refused)."""
    vol = real_tensor("volatility", volatility, dtype=paths.dtype, device=paths.device)
    n, steps = paths.shape[0], paths.shape[1] - 1
    if vol.ndim == 1 and n == steps > 1:
        # a (T,) volatility per step was read as one per path whenever N == T (and refused by
        # shape otherwise): with as many paths as steps a 1-D volatility could be either
        raise ValueError(f"volatility of shape ({n},) is ambiguous for paths of shape "
                         f"{tuple(paths.shape)} (as many paths as steps): pass ({n}, 1) for one "
                         f"value per path or (1, {steps}) for one per step")  # fmt: skip
    if vol.ndim > 2 or any(
        size not in (1, full) for size, full in zip(vol.shape, (n, steps), strict=False)
    ):
        # torch's "size of tensor a (2) must match the size of tensor b (3)" named neither
        raise ValueError(f"volatility must be a scalar, ({n},) or ({n}, {steps}) (or (1, {steps}) "
                         f"per step) for paths of shape {tuple(paths.shape)}, got shape "
                         f"{tuple(vol.shape)}")  # fmt: skip
    if bool((vol < 0).any()) or not bool(torch.isfinite(vol).all()):
        raise ValueError("volatility must be non-negative and finite for continuous monitoring")
    return vol


def _step_variance(
    volatility: torch.Tensor, time_grid: torch.Tensor, paths: torch.Tensor
) -> torch.Tensor:
    """``sigma^2 dt`` per step from a checked volatility: scalar, (N,), (1, T) or (N, T)."""
    vol = volatility[:, None] if volatility.ndim == 1 else volatility  # (N, 1)
    return vol.square() * time_grid.diff().to(paths.dtype)  # (N, T) or (T,)


def _check_paths(paths: torch.Tensor) -> None:
    if not isinstance(paths, torch.Tensor) or paths.ndim != 2 or paths.shape[1] < 2:
        shape = tuple(paths.shape) if isinstance(paths, torch.Tensor) else type(paths).__name__
        raise ValueError(f"paths must be a tensor of shape (N, T+1) with T >= 1, got {shape}")


def _check_grid_matches(paths: torch.Tensor, time_grid: torch.Tensor) -> None:
    if time_grid.ndim != 1 or time_grid.numel() != paths.shape[1]:
        raise ValueError(
            f"time_grid has {time_grid.numel()} points but paths have {paths.shape[1]} columns"
        )
    # a decreasing grid gave hit probabilities of 66 and -472571, an all-equal one NaN averages
    check_increasing(time_grid)
