"""Closed-form single-barrier options under Black-Scholes (continuous monitoring).

Reiner and Rubinstein's formulas as tabulated by Haug: every standard barrier option is a sum of
the six terms ``A .. F`` below with signs ``eta`` (+1 for a down barrier, -1 for an up barrier) and
``phi`` (+1 call, -1 put). Torch throughout, so deltas and other greeks follow by autograd (the
hedging baselines of :mod:`qfnet.hedging` do this on every path and step). A discretely monitored
barrier is priced by shifting it away from the spot (:func:`discrete_barrier_shift`).
"""

from __future__ import annotations

import math

import torch

from pricing import black_scholes
from pricing._special import log_ndtr, ndtr
from pricing._typing import TensorLike, call_flag, named_tensors, real_number, real_scalar
from pricing._validation import check_finite, check_positive

__all__ = ["BARRIER_TYPES", "barrier_price", "discrete_barrier_shift"]

BARRIER_TYPES = ("down_in", "down_out", "up_in", "up_out")
_BGK_BETA = 0.5826  # -zeta(1/2) / sqrt(2 pi), Broadie, Glasserman and Kou (1997)

# Terms per (barrier type, is_call): (when strike >= barrier, when strike < barrier); Haug (2007),
# section 4.17.1. E is a knock-in's rebate (paid at expiry), F a knock-out's (paid at the hit).
_CASES = {
    ("down_in", True): ("C+E", "A-B+D+E"),
    ("up_in", True): ("A+E", "B-C+D+E"),
    ("down_in", False): ("B-C+D+E", "A+E"),
    ("up_in", False): ("A-B+D+E", "C+E"),
    ("down_out", True): ("A-C+F", "B-D+F"),
    ("up_out", True): ("F", "A-B+C-D+F"),
    ("down_out", False): ("A-B+C-D+F", "F"),
    ("up_out", False): ("B-D+F", "A-C+F"),
}


def barrier_price(
    *,
    spot: TensorLike,
    strike: TensorLike,
    barrier: TensorLike,
    barrier_type: str,
    maturity: TensorLike,
    volatility: TensorLike,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: bool = True,
    rebate: float = 0.0,
) -> torch.Tensor:
    """Price of a continuously monitored single-barrier call or put.

    A knock-out pays the vanilla payoff if the barrier is never reached, else ``rebate`` at the
    hit; a knock-in pays the vanilla payoff once the barrier has been reached, else ``rebate`` at
    expiry (Haug's conventions). A spot on or beyond the barrier has been hit: a knock-out is
    then worth the rebate, a knock-in the vanilla option.

    Args:
        spot: spot price, > 0.
        strike: strike, > 0.
        barrier: barrier level, > 0.
        barrier_type: one of :data:`BARRIER_TYPES`.
        maturity: time to expiry in years, > 0.
        volatility: lognormal volatility, > 0.
        rate: continuously compounded rate.
        dividend: continuously compounded dividend yield.
        is_call: call (True) or put (False).
        rebate: cash rebate, >= 0.

    Shape:
        Output: the broadcast shape of the tensor arguments.

    References:
        E. Reiner, M. Rubinstein (1991), "Breaking down the barriers", Risk 4(8); E. G. Haug (2007),
        The Complete Guide to Option Pricing Formulas, 2nd ed., section 4.17.1 (Haug 1998, p. 72).

    Examples:
        >>> p = barrier_price(spot=100.0, strike=90.0, barrier=95.0, barrier_type="down_out",
        ...                   maturity=0.5, volatility=0.25, rate=0.08, dividend=0.04, rebate=3.0)
        >>> round(float(p), 4)  # Haug (1998), p. 72
        9.0246
    """
    if barrier_type not in BARRIER_TYPES:
        raise ValueError(f"barrier_type must be one of {BARRIER_TYPES}, got {barrier_type!r}")
    # one number each, by name; a rate or dividend that requires grad keeps its graph (rho)
    rate, dividend = real_scalar("rate", rate), real_scalar("dividend", dividend)
    rebate = real_scalar("rebate", rebate)
    # torch.isfinite: math.isfinite of a tensor that requires grad warned "Converting a tensor
    # with requires_grad=True to a scalar"
    if not (rebate >= 0 and bool(torch.isfinite(torch.as_tensor(rebate)))):
        raise ValueError(f"rebate must be finite and >= 0, got {rebate}")
    is_call = call_flag(is_call)  # one flag for all options
    s, x, h, t, vol = named_tensors(spot=spot, strike=strike, barrier=barrier, maturity=maturity,
                                    volatility=volatility)  # fmt: skip
    check_positive(spot=s, strike=x, barrier=h, maturity=t, volatility=vol)
    check_finite(rate=torch.as_tensor(rate), dividend=torch.as_tensor(dividend))
    down = barrier_type.startswith("down")
    hit = (s <= h) if down else (s >= h)
    # The spot is moved onto the barrier where it has been hit (the price there is ``dead``):
    # beyond it the reflection factors overflow, and their NaN, though not selected by
    # torch.where, made the autograd greeks NaN.
    alive = _alive(_CASES[(barrier_type, is_call)], torch.where(hit, h, s), x, h, t, vol, rate,
                   dividend, eta=1.0 if down else -1.0, phi=1.0 if is_call else -1.0,
                   rebate=rebate)  # fmt: skip
    if barrier_type.endswith("out"):
        dead = torch.zeros_like(alive) + rebate  # a tensor rebate keeps its graph
    else:
        dead = black_scholes.price(spot=s, strike=x, maturity=t, volatility=vol, rate=rate,
                                   dividend=dividend, is_call=is_call)  # fmt: skip
    return torch.where(hit, dead, alive)


def discrete_barrier_shift(
    barrier: float, volatility: TensorLike, interval: float, down: bool
) -> torch.Tensor:
    """The continuous barrier that prices a barrier monitored every ``interval`` years: moved away
    from the spot by ``exp(0.5826 sigma sqrt(interval))`` (down barriers down, up barriers up).

    Shape:
        Output: the shape of ``volatility``.

    References:
        M. Broadie, P. Glasserman, S. Kou (1997), "A continuity correction for discrete barrier
        options", Mathematical Finance 7(4), 325-349, theorem 1.

    Examples:
        >>> round(float(discrete_barrier_shift(110.0, 0.2, 1 / 252, down=False)), 4)
        110.8104
    """
    # a barrier that requires grad keeps its graph (real_number's float lost its sensitivity)
    barrier, interval = real_scalar("barrier", barrier), real_number("interval", interval)
    if not interval > 0:  # a negative one was a math domain error, NaN a NaN barrier
        raise ValueError(f"interval must be positive, got {interval}")
    if not barrier > 0:
        raise ValueError(f"barrier must be positive, got {barrier}")
    (vol,) = named_tensors(volatility=volatility)
    check_positive(volatility=vol)
    sign = -1.0 if down else 1.0
    return barrier * torch.exp(sign * _BGK_BETA * vol * math.sqrt(interval))


def _alive(cases, s, x, h, t, vol, rate, dividend, **signs) -> torch.Tensor:
    """The price before a hit: ``cases[0]`` where the strike is at or above the barrier, else
    ``cases[1]``. Each case is evaluated only if some strike lies on its side, with the strikes
    moved onto that side: on the other, its reflection terms are inf - inf at low volatility (a
    NaN that torch.where hides in the price but not in the gradient)."""
    high = x >= h

    def case(expression: str, strike: torch.Tensor) -> torch.Tensor:
        terms = _terms(s, strike, h, t, vol, rate, dividend, at_hit="F" in expression, **signs)
        return _combine(expression, terms)

    if bool(high.all()):
        return case(cases[0], x)
    if not bool(high.any()):
        return case(cases[1], x)
    # torch.where, not maximum/minimum: those split a tie's gradient, strike == barrier, between
    # the two (a down-and-in call's strike sensitivity came out halved, -0.188 for -0.376)
    return torch.where(
        high, case(cases[0], torch.where(high, x, h)), case(cases[1], torch.where(high, h, x))
    )


def _terms(s, x, h, t, vol, rate, dividend, *, eta, phi, rebate, at_hit) -> dict[str, torch.Tensor]:
    """Haug's terms ``A .. E``, and ``F`` where ``at_hit`` (a knock-out: a knock-in's rebate,
    paid at expiry, is ``E``, and was refused with ``F``'s closed form at some negative rates);
    shapes broadcast."""
    carry = rate - dividend
    sd = vol * t.sqrt()
    mu = (carry - 0.5 * vol * vol) / (vol * vol)
    ratio = h / s
    drift = (1.0 + mu) * sd
    x1 = torch.log(s / x) / sd + drift
    x2 = torch.log(s / h) / sd + drift
    y1 = torch.log(h * h / (s * x)) / sd + drift
    y2 = torch.log(h / s) / sd + drift
    forward = s * torch.exp((carry - rate) * t)  # discounted forward
    discount = torch.exp(-rate * t)
    log_ratio = torch.log(ratio)
    # Reflection factors (H/S)^(2 mu) reach e^1000 at low volatility while their normal CDFs
    # underflow: each such product is formed as one exponential, exp(log factor + log N(d))
    # (log_ndtr, whose gradient stays finite where N underflows: torch's own went wrong, then
    # NaN, in the far tail). Terms without a factor take the CDF itself, at a third of the cost.

    def term(d: torch.Tensor, sign: float, log_s: torch.Tensor | None = None,
             log_x: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        if log_s is None or log_x is None:
            return phi * (forward * ndtr(sign * d) - x * discount * ndtr(sign * (d - sd)))
        return phi * (forward * torch.exp(log_s + log_ndtr(sign * d))
                      - x * discount * torch.exp(log_x + log_ndtr(sign * (d - sd))))  # fmt: skip

    mirrored = {"log_s": 2.0 * (mu + 1.0) * log_ratio, "log_x": 2.0 * mu * log_ratio}
    if _no_rebate(rebate):  # E and F are rebate times a probability: nothing to compute
        hit_later = _zero(log_ratio * sd)
    else:
        hit_later = ndtr(eta * (x2 - sd)) - torch.exp(
            2.0 * mu * log_ratio + log_ndtr(eta * (y2 - sd))
        )
    terms = {
        "A": term(x1, phi),
        "B": term(x2, phi),
        "C": term(y1, eta, **mirrored),
        "D": term(y2, eta, **mirrored),
        "E": rebate * discount * hit_later,
    }  # fmt: skip
    if at_hit:
        terms["F"] = _rebate_at_hit(log_ratio, sd, mu, vol, rate, eta, rebate)
    return terms


def _rebate_at_hit(log_ratio, sd, mu, vol, rate, eta, rebate) -> torch.Tensor:
    """Haug's ``F``: ``rebate`` paid when the barrier is hit, discounted from the hit. Its
    ``lambda = sqrt(mu^2 + 2 r / sigma^2)`` is imaginary for some negative rates, where the
    formula would need a complex normal CDF: refused there (with no rebate, ``F`` is 0)."""
    if _no_rebate(rebate):
        return _zero(log_ratio * sd)
    radicand = mu * mu + 2.0 * rate / (vol * vol)
    if bool((radicand < 0).any()):
        raise ValueError(f"a knock-out rebate paid at the hit has no closed form here for rate "
                         f"{rate} with these volatilities and dividend ((r - q - sigma^2/2)^2 "
                         "+ 2 r sigma^2 < 0); price it by Monte Carlo (pricing.mc_exotics)")  # fmt: skip
    lam = torch.sqrt(radicand)
    z = log_ratio / sd + lam * sd
    return rebate * (torch.exp((mu + lam) * log_ratio + log_ndtr(eta * z))
                     + torch.exp((mu - lam) * log_ratio + log_ndtr(eta * (z - 2.0 * lam * sd))))  # fmt: skip


def _no_rebate(rebate: float | torch.Tensor) -> bool:
    """Whether the rebate terms can be skipped: a rebate of 0 that is a number (from
    :func:`pricing._typing.real_scalar`). One that requires grad keeps them, 0 or not: its
    sensitivity is their probability (skipped, autograd gave 0 for the down-and-out's 0.54)."""
    return not isinstance(rebate, torch.Tensor) and rebate == 0


def _zero(like: torch.Tensor) -> torch.Tensor:
    """Zeros on ``like``'s graph: a price that is ``F`` alone (a knock-out put below a down
    barrier, without rebate) still has a gradient, as autograd greeks expect."""
    return like * 0.0


def _combine(expression: str, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """Evaluate a signed sum of terms such as ``"A-B+D+E"``."""
    total, sign = 0.0, 1.0
    for symbol in expression:
        if symbol in "+-":
            sign = 1.0 if symbol == "+" else -1.0
        else:
            total = total + sign * terms[symbol]
    return total
