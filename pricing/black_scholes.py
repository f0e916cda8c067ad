"""Black-Scholes-Merton and Black-76: prices, greeks and implied volatility, batched over tensors.

Everything is keyword-only, broadcasts its arguments, runs on any device and defaults to float64.
Rates and dividend yields are continuously compounded; maturities are year fractions.

References:
    F. Black, M. Scholes (1973); R. Merton (1973); F. Black (1976).
    E. G. Haug (2007), "The Complete Guide to Option Pricing Formulas", 2nd ed., ch. 1 and 2 (greeks).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from pricing._implied_vol import IV_STATUS, solve_total_vol
from pricing._normalized_black import log_moneyness, normalized_call
from pricing._special import ndtr
from pricing._typing import (
    TensorLike,
    broadcast_shapes,
    is_call_tensor,
    named_tensors,
    real_tensor,
)
from pricing._validation import (
    carry_and_discount,
    check_finite,
    check_nonnegative,
    check_positive,
)

__all__ = [
    "IV_STATUS",
    "Greeks",
    "black_implied_vol",
    "black_price",
    "greeks",
    "implied_vol",
    "implied_vol_with_status",
    "price",
]


class Greeks(NamedTuple):
    """First-order sensitivities and gamma, per unit change (vega per 1.00 vol, theta per year).

    Shape:
        Every field has the broadcast shape of the inputs of :func:`greeks`.

    Examples:
        >>> g = greeks(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2)
        >>> g._fields
        ('delta', 'gamma', 'vega', 'theta', 'rho', 'dividend_rho')
        >>> round(float(g.delta), 4), round(float(g.vega), 3)  # N(0.1), 100 * phi(0.1)
        (0.5398, 39.695)
    """

    delta: torch.Tensor
    gamma: torch.Tensor
    vega: torch.Tensor
    theta: torch.Tensor
    rho: torch.Tensor
    dividend_rho: torch.Tensor


def black_price(
    *,
    forward: TensorLike,
    strike: TensorLike,
    maturity: TensorLike,
    volatility: TensorLike,
    discount: TensorLike = 1.0,
    is_call: bool | TensorLike = True,
) -> torch.Tensor:
    """Black-76 price ``D * (F N(d1) - K N(d2))`` (calls) of options on a forward.

    Accurate to near machine precision in relative terms even for tiny out-of-the-money prices: the
    out-of-the-money part is evaluated in normalised form (see :mod:`pricing._normalized_black`) and
    the intrinsic value is added exactly. Zero volatility gives the discounted intrinsic value.

    Args:
        forward: forward price F > 0.
        strike: strike K > 0.
        maturity: time to expiry in years, > 0.
        volatility: Black volatility, >= 0.
        discount: discount factor to expiry, > 0.
        is_call: True for calls, False for puts: a bool, or flags (booleans or 0/1) broadcast
            with the other inputs, as a tensor, array or list.

    Shape:
        All inputs broadcast; the output has the broadcast shape.

    Examples:
        >>> p = black_price(forward=100.0, strike=100.0, maturity=1.0, volatility=0.2)
        >>> round(float(p), 10)
        7.9655674554
    """
    f, k, t, vol, d = named_tensors(
        forward=forward, strike=strike, maturity=maturity, volatility=volatility, discount=discount
    )
    check_positive(forward=f, strike=k, maturity=t, discount=d)
    check_nonnegative(volatility=vol)
    call = is_call_tensor(is_call, f)
    sign = torch.where(call, 1.0, -1.0).to(f.dtype)
    s = vol * torch.sqrt(t)
    positive = s > 0
    s_safe = torch.where(positive, s, torch.ones_like(s))
    x = log_moneyness(f, k)  # ln(f / k) rounds by eps: eps / s relative near the money
    # In the money, add the intrinsic value to the OTM price of the other side (parity). At the money
    # the branch that keeps x itself (calls: x <= 0, puts: x >= 0) carries the gradient, so autograd
    # sees the smooth price (|x| and max(., 0) alone would drop half the delta at F = K).
    itm = torch.where(call, x > 0, x < 0)
    intrinsic = torch.where(itm, sign * (f - k), torch.zeros_like(f))
    x_otm = torch.where(itm, -sign * x, sign * x)
    otm = torch.sqrt(f) * torch.sqrt(k) * normalized_call(x_otm, s_safe)  # f * k over/underflowed
    return d * (intrinsic + torch.where(positive, otm, torch.zeros_like(otm)))


def price(
    *,
    spot: TensorLike,
    strike: TensorLike,
    maturity: TensorLike,
    volatility: TensorLike,
    rate: TensorLike = 0.0,
    dividend: TensorLike = 0.0,
    is_call: bool | TensorLike = True,
) -> torch.Tensor:
    """Black-Scholes-Merton price of European options on a spot with continuous dividend yield.

    Shape:
        All inputs broadcast; the output has the broadcast shape.

    Examples:
        >>> p = price(spot=60.0, strike=65.0, maturity=0.25, volatility=0.3, rate=0.08)
        >>> round(float(p), 4)  # Haug (2007), p. 3
        2.1334
    """
    s, k, t, vol, r, q = _spot_inputs(spot, strike, maturity, volatility, rate, dividend)
    check_positive(spot=s, maturity=t)
    check_finite(rate=r, dividend=q)
    forward, discount = carry_and_discount(s, r, q, t)
    return black_price(
        forward=forward, strike=k, maturity=t, volatility=vol, discount=discount, is_call=is_call
    )


def _spot_inputs(
    spot: TensorLike,
    strike: TensorLike,
    maturity: TensorLike,
    volatility: TensorLike,
    rate: TensorLike,
    dividend: TensorLike,
) -> tuple[torch.Tensor, ...]:
    """The inputs of :func:`price` and :func:`greeks` as tensors, each refused by name where it
    is not real numbers."""
    return named_tensors(spot=spot, strike=strike, maturity=maturity, volatility=volatility,
                         rate=rate, dividend=dividend)  # fmt: skip


def greeks(
    *,
    spot: TensorLike,
    strike: TensorLike,
    maturity: TensorLike,
    volatility: TensorLike,
    rate: TensorLike = 0.0,
    dividend: TensorLike = 0.0,
    is_call: bool | TensorLike = True,
) -> Greeks:
    """Closed-form Black-Scholes-Merton greeks.

    Conventions: vega, rho and dividend rho per 1.00 change (not per 1%), theta per year
    (``-dV/dT``; divide by 365 for a daily theta).

    Shape:
        All inputs broadcast; every field of the result has the broadcast shape.

    References:
        Haug (2007), section 2.1 (delta, gamma, vega, theta, rho, carry rho).

    Examples:
        >>> g = greeks(spot=105.0, strike=100.0, maturity=0.5, volatility=0.36, rate=0.1, dividend=0.1)
        >>> round(float(g.delta), 4)  # Haug (2007), p. 12
        0.5946
    """
    s, k, t, vol, r, q = _spot_inputs(spot, strike, maturity, volatility, rate, dividend)
    check_positive(spot=s, strike=k, maturity=t, volatility=vol)
    check_finite(rate=r, dividend=q)
    call = is_call_tensor(is_call, s)
    sqrt_t = torch.sqrt(t)
    d1 = (log_moneyness(s, k) + (r - q + 0.5 * vol * vol) * t) / (vol * sqrt_t)
    d2 = d1 - vol * sqrt_t
    pdf_d1 = torch.exp(-0.5 * d1 * d1) / math.sqrt(2.0 * math.pi)
    sign = torch.where(call, 1.0, -1.0).to(s.dtype)
    cdf1 = ndtr(sign * d1)
    cdf2 = ndtr(sign * d2)
    df_q, df_r = torch.exp(-q * t), torch.exp(-r * t)
    theta = (
        -s * df_q * pdf_d1 * vol / (2.0 * sqrt_t)
        - sign * r * k * df_r * cdf2
        + sign * q * s * df_q * cdf1
    )
    shape = broadcast_shapes(sign.shape, d1.shape)  # gamma, vega: no is_call, same shape
    return Greeks(
        delta=sign * df_q * cdf1,
        gamma=(df_q * pdf_d1 / (s * vol * sqrt_t)).expand(shape),
        vega=(s * df_q * pdf_d1 * sqrt_t).expand(shape),
        theta=theta,
        rho=sign * k * t * df_r * cdf2,
        dividend_rho=-sign * s * t * df_q * cdf1,
    )


def implied_vol_with_status(
    *,
    price: TensorLike,
    forward: TensorLike,
    strike: TensorLike,
    maturity: TensorLike,
    discount: TensorLike = 1.0,
    is_call: bool | TensorLike = True,
    initial_vol: TensorLike | None = None,
    compile: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Black implied volatility and a status code per option (see ``IV_STATUS`` for the reasons).

    Prices outside the no-arbitrage bounds ``D max(F-K, 0) <= C < D F`` (calls; puts:
    ``D max(K-F, 0) <= P < D K``) give NaN with status 1 (below intrinsic) or 2 (at or above the upper
    bound, or within rounding below it where no vol reproduces the price: total vols above ~16 all
    round to the bound); a price equal to the intrinsic value (within ``4 eps`` of it, its
    rounding, in the inputs' dtype) gives 0. The solver works on the normalised
    out-of-the-money price with Householder steps of order 4 on a log-transformed objective, safeguarded
    by bisection, to about machine precision. ``initial_vol`` (optional, broadcast like the
    inputs) starts the iteration where it is positive and finite instead of the closed-form guess:
    the same root, for fewer steps when it is close (a model price near a market quote).
    The solve runs in float64 whatever the inputs' dtype (the result has their common dtype,
    as :func:`pricing._typing.as_tensors` picks it): in float32 the normalised price of a deep
    out-of-the-money option underflowed to 0 and gave a volatility of 0 with status 0.
    ``compile=True`` fuses the normalisation, the start and the first two steps of every option
    with ``torch.compile`` (needs a C++ compiler on the CPU): the same vols to ~1e-15 relative,
    about 1.6x faster on a million options on one thread (2x on two), after a compilation of
    ~20 s on the first call in a process (less from inductor's disk cache); worth it for
    repeated large solves only. Below 4,096 options it is ignored (the eager solve is fast).

    Shape:
        All inputs broadcast; both outputs have the broadcast shape (status is int64).

    Examples:
        >>> vol, status = implied_vol_with_status(price=[7.9655674554, 200.0], forward=100.0,
        ...                                       strike=100.0, maturity=1.0)
        >>> round(float(vol[0]), 9), IV_STATUS[int(status[1])]
        (0.2, 'price at or above the upper bound')
    """
    values = named_tensors(
        price=price, forward=forward, strike=strike, maturity=maturity, discount=discount
    )
    dtype = values[0].dtype  # of the result; the solve runs in float64 (see the docstring)
    call = is_call_tensor(is_call, values[1])
    # the flags may have more elements than the prices: each input takes the flags' shape
    p, f, k, t, d = (v.to(torch.float64).expand(call.shape) if v.shape != call.shape
                     or v.dtype != torch.float64 else v for v in values)  # fmt: skip
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False, got {compile!r}")
    eps = torch.finfo(dtype).eps
    # small solves stay eager: a few ms at most, and torch.compile specialises sizes 0 and 1
    compile = compile and call.numel() >= _COMPILE_MIN_OPTIONS
    if compile and not any(v.requires_grad for v in (p, f, k, t, d)):
        # one fused kernel instead of ~40 passes; flat and contiguous: one graph for all shapes
        flat = (v.contiguous().reshape(-1) for v in (p, f, k, t, d, call))
        parts = _compiled_normalisation()(*flat, eps)
        x, beta, invalid, below, above = (v.reshape(call.shape) for v in parts)
    else:
        x, beta, invalid, below, above = _normalisation(p, f, k, t, d, call, eps)
    start = None
    if initial_vol is not None:
        vol0 = real_tensor("initial_vol", initial_vol, dtype=t.dtype, device=t.device)
        try:
            fits = broadcast_shapes(vol0.shape, x.shape) == x.shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"initial_vol of shape {tuple(vol0.shape)} does not broadcast to the "
                             f"options' shape {tuple(x.shape)}")  # fmt: skip
        start = (vol0 * torch.sqrt(t.clamp(min=0.0))).expand_as(x)
    s, status = solve_total_vol(
        x, beta, invalid=invalid, below=below, above=above, start=start, compile=compile
    )
    return (s / torch.sqrt(torch.where(t > 0, t, torch.ones_like(t)))).to(dtype), status


_COMPILE_MIN_OPTIONS = 4096


def _normalisation(
    p: torch.Tensor,
    f: torch.Tensor,
    k: torch.Tensor,
    t: torch.Tensor,
    d: torch.Tensor,
    call: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, ...]:
    """``x = -|ln(F/K)|``, the normalised OTM price ``beta`` (0 within ``4 eps`` of the intrinsic
    value) and the masks ``invalid``, ``below`` (intrinsic value, less ``4 eps`` of it) and
    ``above`` (the upper bound) of the solver.

    Shape:
        All inputs the same shape; outputs: that shape.
    """
    sign = torch.where(call, 1.0, -1.0).to(f.dtype)
    undiscounted = p / d
    intrinsic = torch.clamp(sign * (f - k), min=0.0)
    root_fk = torch.sqrt(f) * torch.sqrt(k)  # f * k overflowed (F = K = 1e155 gave vol 0)
    beta = (undiscounted - intrinsic) / root_fk
    bound = torch.where(call, f, k)
    x = -torch.abs(log_moneyness(f, k))  # ln(f / k) rounds: vols eps / s off near the money
    # an infinite forward, strike, maturity or discount passed as status 0 with a NaN or 0 vol
    positive = (f > 0) & (k > 0) & (t > 0) & (d > 0)
    invalid = ~(positive & torch.isfinite(p) & torch.isfinite(f + k + t + d))  # all > 0 here
    # p / d rounds: 5% of prices equal to d * intrinsic (black_price at vol 0) fell below it
    slack = 4.0 * eps * intrinsic  # the rounding of the inputs as given
    below = ~invalid & (undiscounted < intrinsic - slack)
    # and 5% above it: that rounding, read as a time value, gave vols up to 0.66 with status 0
    beta = torch.where(undiscounted - intrinsic <= slack, torch.zeros_like(beta), beta)
    above = ~invalid & ~below & (undiscounted >= bound)
    return x, beta, invalid, below, above


@functools.cache
def _compiled_normalisation() -> Callable[..., tuple[torch.Tensor, ...]]:
    """:func:`_normalisation` through ``torch.compile`` (compiled on first use; dynamic shapes)."""
    return torch.compile(_normalisation, dynamic=True)


def black_implied_vol(
    *,
    price: TensorLike,
    forward: TensorLike,
    strike: TensorLike,
    maturity: TensorLike,
    discount: TensorLike = 1.0,
    is_call: bool | TensorLike = True,
    initial_vol: TensorLike | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """Black implied volatility of options on a forward; NaN where no volatility reproduces the price.

    Use :func:`implied_vol_with_status` to learn why a value is NaN (and for ``initial_vol`` and
    ``compile``).

    Shape:
        All inputs broadcast; the output has the broadcast shape.

    Examples:
        >>> v = black_implied_vol(price=7.9655674554, forward=100.0, strike=100.0, maturity=1.0)
        >>> round(float(v), 9)
        0.2
    """
    vol, _ = implied_vol_with_status(
        price=price,
        forward=forward,
        strike=strike,
        maturity=maturity,
        discount=discount,
        is_call=is_call,
        initial_vol=initial_vol,
        compile=compile,
    )
    return vol


def implied_vol(
    *,
    price: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    maturity: TensorLike,
    rate: TensorLike = 0.0,
    dividend: TensorLike = 0.0,
    is_call: bool | TensorLike = True,
) -> torch.Tensor:
    """Black-Scholes-Merton implied volatility from spot, rate and dividend yield; NaN if unsolvable.

    Shape:
        All inputs broadcast; the output has the broadcast shape.

    Examples:
        >>> v = implied_vol(price=2.1334, spot=60.0, strike=65.0, maturity=0.25, rate=0.08)
        >>> round(float(v), 3)
        0.3
    """
    p, s, k, t, r, q = named_tensors(
        price=price, spot=spot, strike=strike, maturity=maturity, rate=rate, dividend=dividend
    )
    return black_implied_vol(
        price=p,
        forward=s * torch.exp((r - q) * t),
        strike=k,
        maturity=t,
        discount=torch.exp(-r * t),
        is_call=is_call,
    )
