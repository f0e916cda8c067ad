"""Black-Scholes reference deltas of the hedged derivative, path by path and step by step.

The delta hedge of a path-dependent option needs the path so far: the running average of an Asian,
the running extremum of a lookback, whether a barrier has been reached. Each is priced at every
path and step by its closed form (:mod:`pricing.analytic_exotics`, :mod:`pricing.analytic_lookback`,
:mod:`pricing.analytic_barrier`) at the market's implied-vol proxy, and differentiated in the spot
by autograd, with the path's past held fixed. The derivatives of :mod:`qfnet.hedging.markets` are
monitored on the hedging grid, so:

- barriers are shifted away from the spot by Broadie, Glasserman and Kou's correction for a
  barrier monitored once a step, but at the last step, whose only date left is the expiry (the
  one step of a one-step grid), where the option is a European claim priced exactly; a path that
  has reached the barrier on a grid date holds the vanilla delta (knock-in) or nothing
  (knock-out);
- the Asian's average of the fixings ``t_1 .. t_T`` is priced by Turnbull and Wakeman's lognormal
  fit of the exact first two moments of the fixings left, seasoned with the fixings so far
  (:func:`pricing.analytic_exotics.discrete_asian_price`); at the last step, whose only fixing
  left is the expiry (the one step of a one-step grid), the fit is exact: the option is then a
  European claim on ``S_T``;
- the lookback's extremum over the grid dates is priced by the same authors' correction of the
  continuous formula (:func:`pricing.analytic_lookback.discrete_lookback_price`), but at the last
  step, where it is the European option struck at the extremum so far, priced exactly. At 30% vol
  the continuous formula overstated one-year lookbacks on 12 and 50 dates by 19-29% and 9-14%,
  and on 20 hedging dates its delta left a P&L spread 1.4-1.5 times as wide.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pricing import black_scholes
from pricing.analytic_barrier import barrier_price, discrete_barrier_shift
from pricing.analytic_exotics import discrete_asian_price
from pricing.analytic_lookback import discrete_lookback_price
from qfnet.hedging.config import DerivativeConfig

__all__ = ["PathGreeks", "path_dependent_delta", "path_dependent_greeks"]


class PathGreeks(NamedTuple):
    """Delta, gamma and vega (per 1.00 of vol) of a path-dependent option, per path and step.

    Shape:
        each field: (N, T).

    Examples:
        >>> from pricing import simulate
        >>> g = path_dependent_greeks(DerivativeConfig(type="asian"),
        ...                           torch.ones(3, 5, dtype=torch.float64), simulate.time_grid(4, 1.0),
        ...                           torch.full((3, 4), 0.2), rate=0.0, dividend=0.0)
        >>> g._fields, g.delta.shape
        (('delta', 'gamma', 'vega'), torch.Size([3, 4]))
    """

    delta: torch.Tensor
    gamma: torch.Tensor
    vega: torch.Tensor


# ordinary tensors inside an inference_mode block too, whose tensors autograd refuses (and which
# enable_grad does not lift): "element 0 of tensors does not require grad and does not have a
# grad_fn" (as pricing.heston.delta)
@torch.inference_mode(False)
def path_dependent_greeks(
    derivative: DerivativeConfig,
    spot: torch.Tensor,
    time_grid: torch.Tensor,
    vol: torch.Tensor,
    *,
    rate: float,
    dividend: float,
) -> PathGreeks:
    """:func:`path_dependent_delta` with the gamma (its derivative in the spot) and the vega
    (the price's derivative in the implied-vol proxy), by autograd through the same closed form.

    Shape:
        spot: (N, T+1). time_grid: (T+1,). vol: (N, T). Each output field: (N, T).

    Examples:
        A rising path is deep in the money at the last step, with one fixing of four left:
        its delta is 1/4.

        >>> from pricing import simulate
        >>> grid = simulate.time_grid(4, 1.0)
        >>> spot = torch.tensor([[1.0, 0.9, 0.95, 0.9, 0.85], [1.0, 1.2, 1.3, 1.4, 1.5]],
        ...                     dtype=torch.float64)
        >>> g = path_dependent_greeks(DerivativeConfig(type="asian"), spot, grid,
        ...                           torch.full((2, 4), 0.2), rate=0.0, dividend=0.0)
        >>> bool((g.gamma >= 0).all()), bool((g.vega >= 0).all()), float(g.delta[1, 3])
        (True, True, 0.25)
    """
    parts = []
    for s, v in _path_blocks(derivative, spot, vol):
        with torch.enable_grad():
            value, now, sigma = _value(derivative, s, time_grid, v, rate, dividend, vol_grad=True)
            delta, vega = torch.autograd.grad(value.sum(), (now, sigma), create_graph=True)
            (gamma,) = torch.autograd.grad(delta.sum(), now, allow_unused=True)
        gamma = torch.zeros_like(delta) if gamma is None else gamma
        parts.append((delta.detach(), gamma.detach(), vega.detach()))
    return PathGreeks(*(torch.cat(field) for field in zip(*parts, strict=True)))


@torch.inference_mode(False)  # as path_dependent_greeks
def path_dependent_delta(
    derivative: DerivativeConfig,
    spot: torch.Tensor,
    time_grid: torch.Tensor,
    vol: torch.Tensor,
    *,
    rate: float,
    dividend: float,
) -> torch.Tensor:
    """Black-Scholes delta of an Asian, barrier or lookback option at steps ``0 .. T-1``.

    Args:
        derivative: the derivative (``type`` asian, barrier or lookback).
        spot: spot paths.
        time_grid: the hedging grid ``t_0 = 0 < ... < t_T``.
        vol: implied-vol proxy per path and step.
        rate: continuously compounded rate.
        dividend: continuously compounded dividend yield.

    Shape:
        spot: (N, T+1). time_grid: (T+1,). vol: (N, T). Output: (N, T).

    Examples:
        >>> from pricing import simulate
        >>> grid = simulate.time_grid(4, 1.0)
        >>> spot = simulate.gbm(3, 4, spot=1.0, volatility=0.2, maturity=1.0,
        ...                     generator=torch.Generator().manual_seed(0))
        >>> d = path_dependent_delta(DerivativeConfig(type="asian"), spot, grid,
        ...                          torch.full((3, 4), 0.2), rate=0.0, dividend=0.0)
        >>> d.shape, bool(((d > 0) & (d < 1)).all())
        (torch.Size([3, 4]), True)
    """
    parts = []
    for s, v in _path_blocks(derivative, spot, vol):
        with torch.enable_grad():
            value, now, _ = _value(derivative, s, time_grid, v, rate, dividend, vol_grad=False)
            (delta,) = torch.autograd.grad(value.sum(), now)
        parts.append(delta)
    return torch.cat(parts)


_ASIAN_BLOCK_ELEMENTS = 2**22
"""Most paths x steps x fixings an Asian's greeks hold per block of paths: its variance term is
``(N, T, T)`` (16,384 paths of 100 steps took 7.7 GB at once; 252 daily steps would have taken
tens), and each path's greeks depend on its own path alone."""


def _path_blocks(
    derivative: DerivativeConfig, spot: torch.Tensor, vol: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(spot, vol)`` in blocks of paths: one block but for an Asian, whose blocks keep
    :data:`_ASIAN_BLOCK_ELEMENTS`.

    Shape:
        spot: (N, T+1). vol: (N, T). Each block: (N', T+1) and (N', T).
    """
    n_steps = spot.shape[-1] - 1
    rows = len(spot) or 1
    if derivative.type == "asian" and spot.dim() == 2 and vol.shape[:1] == spot.shape[:1]:
        # (other shapes go whole to _value, which names them)
        rows = max(1, _ASIAN_BLOCK_ELEMENTS // max(1, n_steps * n_steps))
    return (
        list(zip(spot.split(rows), vol.split(rows), strict=True))
        if rows < len(spot)
        else [(spot, vol)]
    )


def _value(
    derivative: DerivativeConfig,
    spot: torch.Tensor,
    time_grid: torch.Tensor,
    vol: torch.Tensor,
    rate: float,
    dividend: float,
    *,
    vol_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The derivative's value at steps ``0..T-1`` (N, T) from leaves ``now`` (today's spots,
    the path's past held fixed) and ``vol`` (a leaf too with ``vol_grad``); call with grad on."""
    if derivative.type not in _PRICERS:
        raise ValueError(f"no path-dependent delta for derivative type {derivative.type!r}")
    n_steps = time_grid.numel() - 1
    if spot.shape[1] != n_steps + 1 or vol.shape != (spot.shape[0], n_steps):
        raise ValueError(
            f"spot {tuple(spot.shape)} and vol {tuple(vol.shape)} do not match a grid of "
            f"{n_steps} steps: need (N, {n_steps + 1}) and (N, {n_steps})"
        )
    now = spot[:, :-1].detach().clone().requires_grad_(True)  # (N, T)
    sigma = vol.detach().clone().requires_grad_(vol_grad)
    value = _PRICERS[derivative.type](derivative, now, spot.detach(), time_grid, sigma, rate,
                                      dividend)  # fmt: skip
    return value, now, sigma


def _asian(d, now, spot, grid, vol, rate, dividend) -> torch.Tensor:
    """The fixings ``t_1 .. t_T`` by Turnbull-Wakeman's moment matching of the discrete average,
    seasoned with the fixings ``t_1 .. t_j`` at step ``j`` (none at step 0); exact at the last
    step, whose only fixing left is ``S_T``."""
    past = torch.cumsum(spot[:, 1:-1], dim=1)  # (N, T-1): sums of fixings 1..j for j >= 1
    running_sum = torch.cat([torch.zeros_like(spot[:, :1]), past], dim=1)  # (N, T)
    # Levy's continuous average over the time left set deltas 0.042 off the exact ones with two
    # fixings left on 4 steps (0.0016 on 20), 0.01 off QuantLib's TurnbullWakemanAsianEngine at
    # steps 0-17 of 20. Memory (N, T, T): :func:`_path_blocks` bounds N
    return discrete_asian_price(spot=now, strike=d.strike, volatility=vol, fixing_times=grid[1:],
                                time=grid[:-1], rate=rate, dividend=dividend, is_call=d.is_call,
                                running_sum=running_sum)  # fmt: skip


def _lookback(d, now, spot, grid, vol, rate, dividend) -> torch.Tensor:
    """Floating strike, with the running minimum (call) or maximum (put) of dates ``0 .. j``,
    monitored on the hedging dates (the payoff's extremum is the grid's): Broadie-Glasserman-Kou."""
    past = spot[:, :-1]
    extremum = torch.cummin(past, dim=1).values if d.is_call else torch.cummax(past, dim=1).values
    interval = float(grid[1] - grid[0])  # the hedging grid is uniform
    tau = grid[-1] - grid[:-1]
    # the steps before the last: the last one's tau, the interval to rounding, fell below it in
    # a float32 grid (0.00396824 for 0.00396825 on 252 steps), which the pricer refuses
    value = discrete_lookback_price(spot=now[:, :-1], running_extremum=extremum[:, :-1],
                                    maturity=tau[:-1], volatility=vol[:, :-1], rate=rate,
                                    dividend=dividend, interval=interval, kind="floating",
                                    is_call=d.is_call)  # fmt: skip
    # one date left, the expiry: the claim is the European struck at the extremum so far; BGK's
    # shift (an expansion in the number of dates) went above it where the carry outweighs the
    # volatility (a call's delta 0.684 for 0.786 at 2% vol, 10% rate, a step of 0.025 years)
    last = black_scholes.price(spot=now[:, -1], strike=extremum[:, -1], maturity=tau[-1],
                               volatility=vol[:, -1], rate=rate, dividend=dividend,
                               is_call=d.is_call)  # fmt: skip
    return torch.cat([value, last.unsqueeze(1).to(value.dtype)], dim=1)


def _barrier(d, now, spot, grid, vol, rate, dividend) -> torch.Tensor:
    """Reiner-Rubinstein with the shifted barrier while alive; vanilla (in) or 0 (out) once hit."""
    down = d.barrier_type.startswith("down")
    past = spot[:, :-1]
    reached = past <= d.barrier if down else past >= d.barrier
    hit = torch.cumsum(reached.to(torch.int32), dim=1) > 0  # (N, T): reached by date j
    interval = float(grid[1] - grid[0])  # the hedging grid is uniform
    shifted = discrete_barrier_shift(d.barrier, vol, interval, down=down)
    tau = grid[-1] - grid[:-1]
    # a path that has been hit is priced at a spot 2% inside the shifted barrier instead (its
    # value is replaced below, but the formula must stay finite for autograd)
    safe = torch.where(hit, shifted * (1.02 if down else 0.98), now)
    alive = barrier_price(spot=safe, strike=d.strike, barrier=shifted, barrier_type=d.barrier_type,
                          maturity=tau, volatility=vol, rate=rate, dividend=dividend,
                          is_call=d.is_call)  # fmt: skip
    # the last step has one date left, the expiry: there BGK's shift (an expansion in the number
    # of dates) was off by up to 0.1 in the delta, and the option is a European claim
    knock_out = _expiry_only_knock_out(d, now[:, -1], tau[-1], vol[:, -1], rate, dividend)  # (N,)
    if d.barrier_type.endswith("out"):
        alive = torch.cat([alive[:, :-1], knock_out.unsqueeze(1)], dim=1)
        return torch.where(hit, torch.zeros_like(alive), alive)
    vanilla = black_scholes.price(spot=now, strike=d.strike, maturity=tau, volatility=vol,
                                  rate=rate, dividend=dividend, is_call=d.is_call)  # fmt: skip
    alive = torch.cat([alive[:, :-1], (vanilla[:, -1] - knock_out).unsqueeze(1)], dim=1)
    return torch.where(hit, vanilla, alive)


def _expiry_only_knock_out(d, now, tau, vol, rate, dividend) -> torch.Tensor:
    """The knock-out not hit so far whose only monitoring date left is the expiry, ``tau``
    away: the vanilla payoff where ``S_T`` ends on the barrier's near side. With ``L`` the
    larger (call) or smaller (put) of strike and barrier, the payoff beyond ``L`` (above it for
    a call, below for a put) is the vanilla option struck at ``L`` plus ``|L - K|`` cash-or-nothing
    digitals at ``L``; the knock-out is that (down call, up put) or the vanilla option minus it.

    Shape:
        now, vol: (N,); tau: (); output: (N,).
    """
    up, call = d.barrier_type.startswith("up"), d.is_call
    level = max(d.strike, d.barrier) if call else min(d.strike, d.barrier)

    def vanilla(strike: float) -> torch.Tensor:
        return black_scholes.price(spot=now, strike=strike, maturity=tau, volatility=vol,
                                   rate=rate, dividend=dividend, is_call=call)  # fmt: skip

    d2 = (torch.log(now / level) + (rate - dividend - 0.5 * vol**2) * tau) / (vol * tau.sqrt())
    digital = torch.exp(-rate * tau) * torch.special.ndtr(d2 if call else -d2)
    beyond = vanilla(level) + abs(level - d.strike) * digital
    return vanilla(d.strike) - beyond if up == call else beyond


_PRICERS = {"asian": _asian, "barrier": _barrier, "lookback": _lookback}
