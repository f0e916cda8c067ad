"""Closed-form lookback options under Black-Scholes (continuous monitoring, seasoned).

Floating strike (Goldman, Sosin and Gatto) and fixed strike (Conze and Viswanathan), each given
the extremum observed so far, so that a lookback can be priced, and its delta taken by autograd,
at any date of its life (the hedging baselines of :mod:`qfnet.hedging` do this on every path and
step).
"""

from __future__ import annotations

import math

import torch

from pricing import black_scholes
from pricing._special import log_ndtr, ndtr
from pricing._typing import (
    TensorLike,
    call_flag,
    common_dtype_device,
    named_tensors,
    real_number,
    real_scalar,
    rounding_tolerance,
)
from pricing._validation import check_finite, check_positive, check_where
from pricing.analytic_barrier import _BGK_BETA  # the discrete-monitoring shift's constant

__all__ = ["discrete_lookback_price", "lookback_price"]

_CARRY_SCALE = 1e-5
"""Where ``|r - q|`` is below ``_CARRY_SCALE * min(sigma / sqrt(T), 1 / T)``, the price is
interpolated linearly between carries of minus and plus that step: the formulas' ``sigma^2 / (2 b)``
terms are 0/0 at ``b = 0`` (smooth there, but steep). They depend on ``b`` through ``b sqrt(T) /
sigma`` and ``b T``, which the step keeps at 1e-5, so that the interpolation's second-order error
and the cancellation at the step are both about 1e-10 relative (3e-10 at most over maturities of
a day to 100 years and vols of 0.1% to 200%, against 80-digit arithmetic). A fixed step of 1e-6
was 1.7e-5 off for a 100-year lookback at 0.1% vol, 1.7e-6 at 10 years, and up to 1e-8 at a
day and 200% vol; moving ``b`` to 1e-7, before that, 4e-7 to 1e-5 off at ``r = q``."""
_SAME_TIME = 1e-9
"""A maturity within this fraction below the interval is the interval (a hedging grid's last
time to expiry rounds off its step), or within 8 machine epsilons of the coarser of
``maturity`` and ``interval`` (:func:`pricing._typing.rounding_tolerance`: a float32 maturity
of 0.7, 0.69999999, was refused against an interval of 0.7)."""


def lookback_price(
    *,
    spot: TensorLike,
    running_extremum: TensorLike,
    maturity: TensorLike,
    volatility: TensorLike,
    rate: float = 0.0,
    dividend: float = 0.0,
    kind: str = "floating",
    is_call: bool = True,
    strike: TensorLike | None = None,
) -> torch.Tensor:
    """Price of a continuously monitored lookback option, given the extremum so far.

    ``kind="floating"``: a call pays ``S_T - min S``, a put ``max S - S_T``; ``running_extremum``
    is the minimum (call) or maximum (put) so far. ``kind="fixed"``: a call pays ``(max S - K)^+``,
    a put ``(K - min S)^+``; ``running_extremum`` is the maximum (call) or minimum (put) so far.

    Args:
        spot: spot price, > 0.
        running_extremum: the extremum observed so far (the spot itself at inception).
        maturity: time to expiry in years, > 0.
        volatility: lognormal volatility, > 0.
        rate: continuously compounded rate.
        dividend: continuously compounded dividend yield.
        kind: ``"floating"`` or ``"fixed"``.
        is_call: call (True) or put (False).
        strike: the fixed strike (``kind="fixed"`` only).

    The formulas are evaluated in float64 whatever the inputs' dtype (the result has the first
    tensor argument's dtype): their ``sigma^2 / (2 b)`` terms cancel about as many digits as
    ``|r - q|`` is small, all of float32's near zero carry.

    Shape:
        Output: the broadcast shape of the tensor arguments.

    References:
        M. B. Goldman, H. B. Sosin, M. A. Gatto (1979), "Path dependent options: buy at the low,
        sell at the high", J. Finance 34(5); A. Conze, R. Viswanathan (1991), "Path dependent
        options: the case of lookback options", J. Finance 46(5); E. G. Haug (2007), The Complete
        Guide to Option Pricing Formulas, 2nd ed., sections 4.15.1-4.15.2 (Haug 1998, pp. 61-64).

    Examples:
        >>> p = lookback_price(spot=120.0, running_extremum=100.0, maturity=0.5, volatility=0.3,
        ...                    rate=0.1, dividend=0.06)
        >>> round(float(p), 3)  # Haug (1998), p. 62: 25.3533
        25.353
    """
    if kind not in ("floating", "fixed"):
        raise ValueError(f"kind must be 'floating' or 'fixed', got {kind!r}")
    if (strike is None) != (kind == "floating"):
        raise ValueError("strike is required for kind='fixed' and not taken for kind='floating'")
    is_call = call_flag(is_call)  # "False" was truthy: it priced a call
    # one number each, by name; one that requires grad keeps its graph (rho by autograd)
    rate, dividend = real_scalar("rate", rate), real_scalar("dividend", dividend)
    check_finite(rate=rate, dividend=dividend)
    optional = {} if strike is None else {"strike": strike}
    tensors = named_tensors(spot=spot, running_extremum=running_extremum, maturity=maturity,
                            volatility=volatility, **optional)  # fmt: skip
    dtype = tensors[0].dtype  # of the result; the formulas run in float64 (see the docstring)
    s, extremum, t, vol, *k = (v.to(torch.float64) for v in tensors)
    check_positive(spot=s, running_extremum=extremum, maturity=t, volatility=vol,
                   **({"strike": k[0]} if k else {}))  # fmt: skip
    phi = 1.0 if is_call else -1.0
    # the extremum is a minimum for floating calls and fixed puts, else a maximum
    below = (kind == "floating") == is_call
    if bool(((extremum > s * (1 + 1e-12)) if below else (extremum < s * (1 - 1e-12))).any()):
        side = "minimum (at most the spot)" if below else "maximum (at least the spot)"
        raise ValueError(f"running_extremum must be the {side} observed so far")
    carry = rate - dividend

    def at(b: float | torch.Tensor) -> torch.Tensor:
        if kind == "floating":
            return _floating(s, extremum, t, vol, rate, b, phi)
        # one side for a tie, extremum == strike (at inception of an at-the-money option):
        # maximum/minimum split its gradient while clamp_min passed all of it, a strike
        # sensitivity of -1.5 discount and an extremum one of 0.5 discount for -1 and 0
        beyond = phi * (extremum - k[0]) >= 0  # the extremum is at or beyond the strike
        level = torch.where(beyond, extremum, k[0])
        intrinsic = torch.exp(-rate * t) * torch.where(beyond, phi * (extremum - k[0]), 0.0)
        return intrinsic + _fixed(s, level, t, vol, rate, b, phi)

    step = _CARRY_SCALE * torch.minimum(vol / t.sqrt(), 1.0 / t)  # per option (see there)
    near = abs(carry) < step
    if not bool(near.any()):
        return at(carry).to(dtype)
    low, high = at(-step), at(step)
    interpolated = low + (high - low) * ((carry + step) / (2 * step))
    if bool(near.all()):
        return interpolated.to(dtype)
    # where |b| is at least the step, the formula itself (at the step elsewhere: no 0/0 there)
    return torch.where(near, interpolated, at(torch.where(near, step, carry))).to(dtype)


def discrete_lookback_price(
    *,
    spot: TensorLike,
    running_extremum: TensorLike,
    maturity: TensorLike,
    volatility: TensorLike,
    interval: float,
    rate: float = 0.0,
    dividend: float = 0.0,
    kind: str = "floating",
    is_call: bool = True,
    strike: TensorLike | None = None,
) -> torch.Tensor:
    """Lookback monitored every ``interval`` years (from now to expiry, expiry included; at most
    the maturity, to rounding), by the Broadie-Glasserman-Kou correction of
    :func:`lookback_price` (arguments as there).

    The discrete extremum is about the continuous one moved towards the spot by ``e =
    exp(-+0.5826 sigma sqrt(interval))`` (``e < 1`` for a maximum, ``> 1`` for a minimum), so with
    ``V`` the continuous price: a fixed-strike price is ``e V(K / e, extremum / e)``; a floating
    one ``e V(extremum / e) + s (e - 1) S exp(-q T)``, ``s = -1`` for calls and ``+1`` for puts
    (the payoff's ``S_T`` is not moved). Each is bounded below by its value with the expiry as
    the only date left (floating: the European struck at the extremum; fixed: the discounted
    ``(extremum - K)^+`` plus the European struck beyond both), which the correction can undercut,
    even below 0, where the drift outweighs a tiny volatility. ``running_extremum`` is over the
    dates monitored so far. The error is ``o(sqrt(interval))``.

    Shape:
        Output: the broadcast shape of the tensor arguments.

    References:
        M. Broadie, P. Glasserman, S. G. Kou (1999), "Connecting discrete and continuous
        path-dependent options", Finance Stoch. 3, 55-82 (lookbacks, section 3).

    Examples:
        >>> args = dict(spot=100.0, running_extremum=100.0, maturity=1.0, volatility=0.3)
        >>> bool(discrete_lookback_price(**args, interval=1 / 12) < lookback_price(**args))
        True
    """
    rounding = rounding_tolerance(maturity, interval, floor=_SAME_TIME)
    interval = real_number("interval", interval)
    if not interval > 0:
        raise ValueError(f"interval must be positive, got {interval}")
    is_call = call_flag(is_call)
    spot_t, extremum_t, vol_t = named_tensors(spot=spot, running_extremum=running_extremum,
                                              volatility=volatility)  # fmt: skip
    # checked before the shift: a NaN volatility was reported as a NaN running_extremum
    check_positive(volatility=vol_t)
    # an interval past the expiry moved the extremum as for dates that do not exist: a fixed
    # strike call at the money 6.6e-5 for 3.78 (its European floor) at 5 years for 0.1
    t_in = named_tensors(maturity=maturity)[0]
    # first: a maturity of 0 (or NaN, which passed the comparison) is no maturity at all, and it
    # was "must be >= interval"
    check_positive(maturity=t_in)
    # in float64: compared with a float32 maturity the interval was rounded to float32 as well
    check_where("maturity", t_in, t_in.to(torch.float64) * (1.0 + rounding) >= interval,
                f">= interval = {interval} (the expiry is the last monitored date)")  # fmt: skip
    strike_t = None if strike is None else named_tensors(strike=strike)[0]
    # on the inputs themselves, not moved: a strike of -2 was reported as -2.068, a running
    # extremum of -5 as -4.835 (lookback_price checks the moved ones, and their side of the spot);
    # a strike only for kind "fixed": a floating one's is refused there as not taken (it was
    # "strike must be finite and > 0" for a floating lookback given a strike of -1)
    fixed_strike = {"strike": strike_t} if strike_t is not None and kind == "fixed" else {}
    check_positive(running_extremum=extremum_t, **fixed_strike)
    maximum = (kind == "floating") != is_call
    sign = -1.0 if maximum else 1.0
    e = torch.exp(sign * _BGK_BETA * vol_t.to(torch.float64) * math.sqrt(interval))
    common = {"spot": spot_t, "maturity": maturity, "volatility": volatility, "rate": rate,
              "dividend": dividend, "kind": kind, "is_call": is_call}  # fmt: skip
    moved_strike = None if strike_t is None else strike_t / e
    moved = lookback_price(**common, running_extremum=extremum_t / e, strike=moved_strike)
    # of the result, as lookback_price's: the moved extremum, float64, made float32 inputs price
    # in float64
    dtype = common_dtype_device([spot, running_extremum, maturity, volatility, strike], None,
                                None)[0]  # fmt: skip
    t = t_in.to(torch.float64)
    # one number (a graph kept): a dividend of [0.01] or np.array([0.01]) failed in '-' or '*'
    q = real_scalar("dividend", dividend)
    if kind == "fixed":
        return torch.maximum(e * moved, _fixed_floor(spot_t, extremum_t, strike_t, t, vol_t, rate, q,
                                                     is_call)).to(dtype)  # fmt: skip
    forward_value = spot_t.to(torch.float64) * torch.exp(-q * t)
    out = e * moved - (1.0 if is_call else -1.0) * (e - 1.0) * forward_value
    # The correction is an approximation: where the drift outweighs a tiny volatility it went
    # below 0 (-0.0014 for a put at 0.33% vol and 4% drift). The payoff is at least the
    # European one struck at the running extremum, path by path, so that price bounds it.
    european = black_scholes.price(spot=spot_t, strike=extremum_t, maturity=t,
                                   volatility=vol_t, rate=real_scalar("rate", rate), dividend=q,
                                   is_call=is_call)  # fmt: skip
    return torch.maximum(out, european.to(out.dtype)).to(dtype)


def _fixed_floor(spot, extremum, strike, t, vol, rate, dividend, is_call) -> torch.Tensor:
    """The fixed-strike lookback with the expiry as the only date left, a lower bound of any
    monitoring: the call's ``(max(M, S_T) - K)^+ = (M - K)^+ + (S_T - max(K, M))^+``, the put's
    ``(K - min(m, S_T))^+ = (K - m)^+ + (min(K, m) - S_T)^+``. BGK's correction undercut it where
    the drift outweighs the volatility (a monthly call 26.08 for 26.15 at 0.5% vol, 8% rate)."""
    k, m = strike.to(torch.float64), extremum.to(torch.float64)
    sign = 1.0 if is_call else -1.0
    level = torch.maximum(k, m) if is_call else torch.minimum(k, m)
    rate = real_scalar("rate", rate)
    european = black_scholes.price(spot=spot, strike=level, maturity=t, volatility=vol,
                                   rate=rate, dividend=dividend, is_call=is_call)  # fmt: skip
    return torch.exp(-rate * t) * (sign * (m - k)).clamp(min=0.0) + european.to(torch.float64)


def _parts(s, level, t, vol, rate, carry):
    """``d1, d2``, the discounted forward, the discount, the log of the reflection
    ``(S/E)^(-2b/sigma^2)``, the shifted ``d1 - 2 b sqrt(T) / sigma`` and the ``sigma^2 / (2 b)``
    factor's term."""
    sd = vol * t.sqrt()
    d1 = (torch.log(s / level) + carry * t) / sd + 0.5 * sd
    discount = torch.exp(-rate * t)
    log_reflection = torch.log(s / level) * (-2.0 * carry / (vol * vol))
    shifted = d1 - 2.0 * carry * t.sqrt() / vol
    scale = s * discount * vol * vol / (2.0 * carry)
    return d1, d1 - sd, s * torch.exp((carry - rate) * t), discount, log_reflection, shifted, scale


def _reflected(log_reflection: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``(S/E)^(-2b/sigma^2) N(d)`` as one exponential: at low volatility the factor overflows
    (e^2000 at 1% vol and 10% carry) where ``N`` underflows, and the product was NaN."""
    return torch.exp(log_reflection + log_ndtr(d))  # exact gradients in the far tail


def _floating(s, extremum, t, vol, rate, carry, phi) -> torch.Tensor:
    """Goldman-Sosin-Gatto (Haug 2007, section 4.15.1)."""
    d1, d2, forward, discount, log_refl, shifted, scale = _parts(s, extremum, t, vol, rate, carry)
    n = ndtr
    vanilla = phi * (forward * n(phi * d1) - extremum * discount * n(phi * d2))
    exp_bt = torch.exp(carry * t)
    return vanilla + phi * scale * (_reflected(log_refl, -phi * shifted) - exp_bt * n(-phi * d1))


def _fixed(s, level, t, vol, rate, carry, phi) -> torch.Tensor:
    """Conze-Viswanathan beyond the intrinsic value (Haug 2007, section 4.15.2)."""
    d1, d2, forward, discount, log_refl, shifted, scale = _parts(s, level, t, vol, rate, carry)
    n = ndtr
    vanilla = phi * (forward * n(phi * d1) - level * discount * n(phi * d2))
    exp_bt = torch.exp(carry * t)
    return vanilla + phi * scale * (exp_bt * n(phi * d1) - _reflected(log_refl, phi * shifted))
