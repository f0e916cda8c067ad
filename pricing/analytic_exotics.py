"""Closed forms for Asian options under Black-Scholes: geometric averages exactly, arithmetic
averages by lognormal approximations (Levy's continuous average; Turnbull and Wakeman's discrete
fixings).

The geometric prices are the control variates of :mod:`pricing.mc_exotics` (with exactly the
fixings and weights of the simulated average, so that the control's mean is exact) and test
references; the discrete one is the seasoned arithmetic Asian behind the hedging baselines of
:mod:`qfnet.hedging`. Torch throughout, so greeks follow by autograd.
"""

from __future__ import annotations

import math

import torch
from scipy.special import roots_legendre

from pricing import black_scholes
from pricing._special import ndtr
from pricing._typing import (
    DEFAULT_DTYPE,
    TensorLike,
    call_flag,
    common_dtype_device,
    named_tensors,
    real_scalar,
    real_tensor,
    rounding_tolerance,
)
from pricing._validation import (
    check_finite,
    check_nonnegative,
    check_positive,
    check_seasoning,
    check_where,
)

__all__ = ["discrete_asian_price", "geometric_asian_price", "levy_asian_price"]


def geometric_asian_price(
    *,
    spot: TensorLike,
    strike: TensorLike,
    maturity: float,
    volatility: TensorLike,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: TensorLike = True,
    fixing_times: TensorLike | None = None,
    weights: TensorLike | None = None,
    past_average: float | None = None,
    past_weight: float = 0.0,
) -> torch.Tensor:
    """Price of an option on ``G = exp(w_p ln A_p + (1 - w_p) sum_i w_i ln S(t_i))``, paid at maturity.

    ``ln G`` is normal: mean ``w_p ln A_p + (1 - w_p) sum_i w_i (ln S_0 + (r - q - sigma^2/2) t_i)``
    and variance ``(1 - w_p)^2 sigma^2 sum_ij w_i w_j min(t_i, t_j)``, so the price is Black's
    formula on ``F = exp(mean + var / 2)``. Without ``fixing_times`` the average is continuous over
    ``[0, maturity]`` (mean time ``T/2``, variance ``sigma^2 T / 3``).

    Args:
        spot: spot price.
        strike: strike(s).
        maturity: payment time in years.
        volatility: lognormal volatility.
        rate: continuously compounded rate.
        dividend: continuously compounded dividend yield.
        is_call: call flag(s).
        fixing_times: fixing times (M,), in [0, maturity] (a fixing at 0 is today's spot, known);
            None for continuous averaging.
        weights: weights of the fixings (M,), summing to 1; default equal weights.
        past_average: geometric average so far (seasoned options).
        past_weight: weight ``w_p`` of the past in the final average, in [0, 1).

    Evaluated in float64; the result has the common dtype of ``spot``, ``strike`` and
    ``volatility`` (as :func:`pricing._typing.as_tensors` picks it).

    Shape:
        Output: the broadcast shape of ``spot``, ``strike``, ``volatility`` and ``is_call``.

    References:
        Kemna and Vorst (1990), J. Banking Finance 14; Haug (1998), pp. 96-97;
        Clewlow and Strickland (1998), Implementing Derivatives Models, pp. 118-123.

    Examples:
        >>> p = geometric_asian_price(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2,
        ...     rate=0.06, dividend=0.03, fixing_times=[0.1 * i for i in range(1, 11)])
        >>> round(float(p), 6)  # Clewlow & Strickland
        5.342561
    """
    # of the result, as the other pricers': float32 inputs were priced in float64
    dtype = common_dtype_device([spot, strike, volatility], None, None)[0]
    s, vol = named_tensors(spot=spot, volatility=volatility, dtype=DEFAULT_DTYPE)
    # one number each, by name; one that requires grad keeps its graph (rho, theta and the
    # past weight's sensitivity by autograd: real_number's float lost them)
    numbers = dict(maturity=maturity, rate=rate, dividend=dividend, past_weight=past_weight)
    maturity, rate, dividend, past_weight = (real_scalar(n, v) for n, v in numbers.items())
    # a past average that requires grad keeps its graph too (real_number's float lost it: None)
    past_average = None if past_average is None else real_scalar("past_average", past_average)
    check_positive(spot=s, volatility=vol, maturity=maturity)
    check_finite(rate=rate, dividend=dividend)
    check_seasoning(past_average, past_weight)  # a past average without weight was ignored
    nu = rate - dividend - 0.5 * vol * vol
    if fixing_times is None:
        if weights is not None:  # ignored: the equally weighted continuous average was priced
            raise ValueError("weights are those of fixing_times, which were not given")
        mean_time, var_time = 0.5 * maturity, maturity / 3.0
    else:
        t = torch.as_tensor(fixing_times, dtype=DEFAULT_DTYPE).flatten()
        if t.numel() == 0:
            raise ValueError("fixing_times must lie in [0, maturity]; got none")
        # NaN passed "not < 0 and not > maturity" and surfaced as a NaN 'forward'
        check_where("fixing_times", t, (t >= 0) & (t <= maturity * (1 + 1e-12)),
                    f"in [0, maturity = {maturity}]")  # fmt: skip
        w = torch.full_like(t, 1.0 / t.numel()) if weights is None else torch.as_tensor(weights)
        w = w.to(DEFAULT_DTYPE)
        if w.shape != t.shape or not math.isclose(float(w.sum()), 1.0, rel_tol=1e-9):
            raise ValueError("weights must match fixing_times and sum to 1")
        mean_time = float((w * t).sum())
        var_time = float(w @ torch.minimum(t[:, None], t[None, :]) @ w)
    live = 1.0 - past_weight
    mean = live * (s.log() + nu * mean_time)
    if past_weight > 0.0:
        log_past = torch.log if torch.is_tensor(past_average) else math.log
        mean = mean + past_weight * log_past(past_average)
    var = live * live * vol * vol * var_time
    # through torch where the rate or maturity has a graph: math.exp dropped the discount's share
    # of rho and theta
    discount = -rate * maturity
    discount = torch.exp(discount) if torch.is_tensor(discount) else math.exp(discount)
    return black_scholes.black_price(
        forward=torch.exp(mean + 0.5 * var),
        strike=named_tensors(strike=strike, dtype=DEFAULT_DTYPE)[0],
        maturity=1.0,
        volatility=var.sqrt(),
        discount=discount,
        is_call=is_call,  # black_price checks the flags
    ).to(dtype)


def levy_asian_price(
    *,
    spot: TensorLike,
    strike: TensorLike,
    maturity: TensorLike,
    volatility: TensorLike,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: bool = True,
    running_average: TensorLike = 0.0,
    elapsed: TensorLike = 0.0,
) -> torch.Tensor:
    """Levy's approximation of a continuously averaged arithmetic Asian option, seasoned.

    The average runs over ``[0, elapsed + maturity]``; ``running_average`` is the average over the
    ``elapsed`` part. The remaining part's average is replaced by a lognormal variable with its
    first two moments, and the seasoned strike ``K - running_average * elapsed / (elapsed +
    maturity)`` by zero or less makes the option a forward (the call is worth the discounted
    expected payoff, the put nothing).

    Args:
        spot: spot price, > 0.
        strike: strike, > 0.
        maturity: time to expiry in years, > 0.
        volatility: lognormal volatility, > 0.
        rate: continuously compounded rate.
        dividend: continuously compounded dividend yield.
        is_call: call (True) or put (False).
        running_average: average of the elapsed part of the period, >= 0.
        elapsed: years of the averaging period already past, >= 0.

    The formula is evaluated in float64 whatever the inputs' dtype (the result has the first
    tensor argument's dtype): the second moment subtracts two numbers about ``2 / (sigma^2 T)``
    times larger than their difference, and float32 then gave negative variances (NaN).

    Shape:
        Output: the broadcast shape of the tensor arguments.

    References:
        E. Levy (1992), "Pricing European average rate currency options", J. Int. Money Finance
        11(5); E. G. Haug (2007), The Complete Guide to Option Pricing Formulas, 2nd ed., section
        4.20.2 (Haug 1998, pp. 99-100).

    Examples:
        >>> p = levy_asian_price(spot=6.8, strike=6.9, maturity=0.5, volatility=0.14, rate=0.07,
        ...                      dividend=0.09)
        >>> round(float(p), 4)  # Haug (1998), p. 100
        0.0944
    """
    is_call = call_flag(is_call)  # "False" was truthy: it priced a call
    # one number each, by name; one that requires grad keeps its graph (rho by autograd)
    rate, dividend = real_scalar("rate", rate), real_scalar("dividend", dividend)
    check_finite(rate=rate, dividend=dividend)
    tensors = named_tensors(spot=spot, strike=strike, maturity=maturity, volatility=volatility,
                            running_average=running_average, elapsed=elapsed)  # fmt: skip
    dtype = tensors[0].dtype  # of the result; the formula runs in float64 (see the docstring)
    s, k, t2, vol, average, past = (v.to(torch.float64) for v in tensors)
    check_positive(spot=s, strike=k, maturity=t2, volatility=vol)
    check_nonnegative(running_average=average, elapsed=past)
    total = t2 + past  # the whole averaging period
    carry = rate - dividend
    discount = torch.exp(-rate * t2)
    growth = _expm1_ratio(carry, t2)  # (e^{bT2} - 1) / b
    forward = s * discount * growth / total  # S_E: the discounted expected remaining average
    variance = _log_moment_ratio(carry, vol, t2)
    seasoned = k - average * past / total
    positive = seasoned > 0
    safe = torch.where(positive, seasoned, torch.ones_like(seasoned))
    d1 = (torch.log(forward / (discount * safe)) + 0.5 * variance) / variance.sqrt()
    n = ndtr
    call = forward * n(d1) - safe * discount * n(d1 - variance.sqrt())
    forward_value = forward - seasoned * discount  # the call when the seasoned strike is <= 0
    call = torch.where(positive, call, forward_value)
    if is_call:
        return call.to(dtype)
    return torch.where(positive, call - forward_value, torch.zeros_like(call)).to(dtype)


def discrete_asian_price(
    *,
    spot: TensorLike,
    strike: TensorLike,
    volatility: TensorLike,
    fixing_times: TensorLike,
    time: TensorLike = 0.0,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: bool = True,
    running_sum: TensorLike = 0.0,
) -> torch.Tensor:
    """Arithmetic Asian on equally weighted discrete fixings, seasoned, by moment matching.

    The option pays ``(A - K)^+`` (call) at the last fixing time, ``A`` the average of the spot at
    the ``M`` ``fixing_times``. At ``time`` the fixings at or before it are known (their sum is
    ``running_sum``; a fixing within rounding of ``time`` is at it (within ``1e-12`` of the last
    fixing time, relative, in float64: a grid's 0.30000000000000004 against a fixing at 0.3; 8
    epsilons of a coarser ``time`` or ``fixing_times``: float32's 0.69999999 against 0.7); the
    sum ``R`` of those after it, at ``u_i = t_i - time``, is replaced by the lognormal variable
    with its exact first two moments: ``E[R] = S sum_i w_i`` with ``w_i = e^{(r - q) u_i}``, and
    ``Var(R) / E[R]^2 = sum_i w_i (e^{sigma^2 u_i} - 1) (2 C_i - w_i) / (sum_i w_i)^2`` with
    ``C_i = sum_{k >= i} w_k`` (a sum of positive terms: no cancellation at low volatility).
    The option is ``1 / M`` of Black's on ``R`` struck at ``K' = M K - running_sum``; for
    ``K' <= 0`` the call is ``1 / M`` of a forward, the put worthless. With one fixing left the
    fit is exact: ``1 / M`` of the European struck at ``K'``.

    Args:
        spot: spot price at ``time``, > 0.
        strike: strike, > 0.
        volatility: lognormal volatility, > 0.
        fixing_times: the whole schedule, past fixings included, in years, increasing, >= 0.
        time: the valuation time, before the last fixing (by more than rounding), >= 0.
        rate: continuously compounded rate.
        dividend: continuously compounded dividend yield.
        is_call: call (True) or put (False).
        running_sum: sum of the fixings at or before ``time``, >= 0 (0 where there are none).

    Evaluated in float64 (the result has the first tensor argument's dtype); its memory is the
    broadcast shape times ``M``.

    Shape:
        fixing_times: (M,). Output: the broadcast shape of the other tensor arguments.

    References:
        S. M. Turnbull and L. M. Wakeman (1991), "A quick algorithm for pricing European average
        options", J. Financial and Quantitative Analysis 26(3), with the discrete average's exact
        moments from ``E[S(t_i) S(t_k)] = S^2 w_i w_k e^{sigma^2 min(u_i, u_k)}``, as QuantLib's
        ``TurnbullWakemanAsianEngine`` (``turnbullwakemanengine.cpp``) takes them.

    Examples:
        >>> fixings = [0.25, 0.5, 0.75, 1.0]
        >>> one_left = discrete_asian_price(spot=100.0, strike=100.0, volatility=0.2,
        ...                                 fixing_times=fixings, time=0.75, running_sum=300.0)
        >>> european = black_scholes.price(spot=100.0, strike=100.0, maturity=0.25,
        ...                                volatility=0.2)
        >>> abs(float(one_left) - float(european) / 4) < 1e-12
        True
    """
    is_call = call_flag(is_call)
    rate, dividend = real_scalar("rate", rate), real_scalar("dividend", dividend)
    check_finite(rate=rate, dividend=dividend)
    tensors = named_tensors(spot=spot, strike=strike, volatility=volatility, time=time,
                            running_sum=running_sum)  # fmt: skip
    dtype = tensors[0].dtype  # of the result; the formula runs in float64, as Levy's
    s, k, vol, now, past = (v.to(torch.float64) for v in tensors)
    t = real_tensor("fixing_times", fixing_times, dtype=torch.float64, device=s.device).flatten()
    # a fixing an ulp after time was a fixing to come, its value in running_sum counted again
    # (25.19 for 2.50) or, left out of it, fitted into the lognormal (2.509); a float32 time's
    # rounding (0.69999999 for a fixing at 0.7) is some 1e-8 of it, past float64's 1e-12
    same = _check_schedule(t, now, rounding_tolerance(time, fixing_times, floor=_SAME_TIME))
    check_positive(spot=s, strike=k, volatility=vol)
    check_nonnegative(running_sum=past)
    # the schedule's terms on time's own shape (a grid's (T,) stays (T, M), not (N, T, M))
    own = real_tensor("time", time, dtype=torch.float64, device=s.device)
    # a sum where no fixing is known yet was added to the average all the same
    known = (t <= own.unsqueeze(-1) + same).any(-1)  # (*,) of time's own shape
    sums, ok = torch.broadcast_tensors(past, (past == 0) | known)
    check_where("running_sum", sums, ok, "0 where no fixing is at or before time")
    u, mean, weight = _discrete_moments(t, own, rate - dividend, same)
    variance = _log1p_relative(vol.unsqueeze(-1) ** 2 * u, weight, mean)
    n = t.numel()
    discount = torch.exp(-rate * (t[-1] - now))
    forward, struck = s * mean, n * k - past  # of the remaining sum R
    positive = struck > 0
    safe = torch.where(positive, struck, forward.detach())  # finite; its gradient unused
    call = black_scholes.black_price(forward=forward, strike=safe, maturity=1.0,
                                     volatility=variance.sqrt(), discount=discount)  # fmt: skip
    forward_value = discount * (forward - struck)  # the call where K' <= 0
    call = torch.where(positive, call, forward_value)
    if is_call:
        return (call / n).to(dtype)
    return (torch.where(positive, call - forward_value, torch.zeros_like(call)) / n).to(dtype)


def _discrete_moments(
    t: torch.Tensor, now: torch.Tensor, carry: float | torch.Tensor, same: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Years ``u_i`` to the fixings after ``now`` by more than ``same`` (0 for the others, known),
    ``sum_i w_i`` and the
    weights ``w_i (2 C_i - w_i)`` of ``e^{sigma^2 u_i} - 1`` in ``Var(R) / S^2``
    (:func:`discrete_asian_price`).

    Shape:
        t: (M,). now: (*). Outputs: (*, M), (*), (*, M).
    """
    u = t - now.unsqueeze(-1)  # (*, M)
    future = u > same
    u = torch.where(future, u, 0.0)
    w = torch.where(future, torch.exp(carry * u), 0.0)  # E[S(t_i)] / S, 0 for a past fixing
    tail = w.flip(-1).cumsum(-1).flip(-1)  # C_i = sum_{k >= i} w_k
    return u, w.sum(-1), w * (2.0 * tail - w)


def _log1p_relative(
    exponent: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor
) -> torch.Tensor:
    """``ln(1 + sum_i weight_i (e^{exponent_i} - 1) / mean^2)``, the lognormal's variance in
    :func:`discrete_asian_price`; past :data:`_FAR` in the largest exponent, factored by its
    exponential: ``e^{sigma^2 u}`` overflowed beyond 709 (sigma 5 over 50 years), and the inf
    variance was refused as an invalid ``volatility``.

    Shape:
        exponent, weight: (*, M). mean: (*). Output: (*).
    """
    top = exponent.max(-1).values
    far = top > _FAR
    if not bool(far.any()):
        return torch.log1p((torch.expm1(exponent) * weight).sum(-1) / mean**2)
    # each branch finite where unused: an inf there made the gradient (vega) NaN
    near = torch.where(far.unsqueeze(-1), 0.0, exponent)
    relative = (torch.expm1(near) * weight).sum(-1) / mean**2
    m = torch.where(far, top, 0.0).unsqueeze(-1)
    scaled = ((torch.exp(exponent - m) - torch.exp(-m)) * weight).sum(-1)  # e^{-m} of the sum
    scaled = torch.where(far, scaled, 1.0)
    log_relative = m.squeeze(-1) + torch.log(scaled) - 2.0 * torch.log(mean)
    return torch.where(far, torch.logaddexp(torch.zeros_like(log_relative), log_relative),
                       torch.log1p(relative))  # fmt: skip


def _check_schedule(t: torch.Tensor, now: torch.Tensor, rounding: float) -> float:
    """Fixing times finite, >= 0 and increasing; every valuation time >= 0 and before the last
    by more than ``same = rounding * last``, the years returned."""
    if t.numel() == 0:
        raise ValueError("fixing_times must hold at least one fixing; got none")
    check_nonnegative(fixing_times=t)
    check_where("fixing_times", t[1:], t[1:] > t[:-1], "increasing")
    last = float(t[-1])
    same = rounding * last
    check_where("time", now, (now >= 0) & (now < last - same),
                f"in [0, last fixing = {last})")  # fmt: skip
    return same


_SAME_TIME = 1e-12
"""A fixing within this fraction of the last fixing time of ``time`` is at ``time`` (known): the
rounding of a time grid built another way than the schedule; in float64, and 8 machine
epsilons of a coarser ``time`` or ``fixing_times`` (:func:`pricing._typing.rounding_tolerance`:
float32's 9.5e-7, where a float32 ``time`` of 0.7, 0.69999999, left the fixing at 0.7 to come
and counted it twice, once in ``running_sum``: 20.00 for 0.71)."""


_QUADRATURE_NODES = 32
_QUADRATURE_MAX_GAMMA, _QUADRATURE_MAX_BETA = 1.0, 10.0
"""Where ``sigma^2 T <= 1`` and ``|b T| <= 10``, :func:`_log_moment_ratio` integrates the
relative variance of the average by Gauss-Legendre (to ~1e-16 there; the integrand is entire,
of exponential rate at most 21); elsewhere the closed form loses at most ~1e-14."""


def _log_moment_ratio(b: float, vol: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Levy's variance ``ln(E[A^2] / E[A]^2)`` of the lognormal that replaces the average ``A`` of
    the spot over ``[0, t]``.

    The closed form ``ln M - 2 ln E[A]`` is a difference of two logarithms of order ``ln S``
    whose result is about ``sigma^2 t / 3``: at a total vol of 1e-3 it kept 3e-4 of the price's
    digits, at 1e-4 5% (a 1-day option at 1.5% vol, 1 hour at 10%), and below about 1e-5 it
    rounded to a negative variance (NaN prices). Where :data:`_QUADRATURE_MAX_GAMMA` allows,
    ``log1p`` of the relative variance, a sum of positive terms, replaces it.
    """
    c = vol * vol + b
    # Past (2 b + sigma^2) t of about 709 the second moment's exponential overflowed: inf - inf,
    # a NaN price (sigma = 5 over 50 years). There ``c t`` is large, and the log of the divided
    # difference is ``ln E(b + c) + ln(1 - E(b) / E(b + c)) - ln c``, ``E`` increasing.
    far = c * t > _FAR
    # each branch finite where unused: an inf there made the gradient (vega) NaN
    cn = torch.where(far, 0.0, c)
    closed = torch.log(2.0 * _divided_difference(b, cn, t)) - 2.0 * torch.log(_expm1_ratio(b, t))
    if bool(far.any()):
        cf = torch.where(far, c, _FAR / t)
        log_high, log_low = _log_expm1_ratio(b + cf, t), _log_expm1_ratio(b, t)
        log_divided = log_high + torch.log(-torch.expm1(log_low - log_high)) - torch.log(cf)
        closed = torch.where(far, math.log(2.0) + log_divided - 2.0 * log_low, closed)
    beta, gamma = b * t, vol * vol * t
    inside = (gamma <= _QUADRATURE_MAX_GAMMA) & (
        torch.as_tensor(beta).abs() <= _QUADRATURE_MAX_BETA
    )
    if not bool(inside.any()):
        return closed
    beta = torch.as_tensor(beta, dtype=t.dtype).clamp(-_QUADRATURE_MAX_BETA, _QUADRATURE_MAX_BETA)
    relative = _relative_variance(beta, gamma.clamp(max=_QUADRATURE_MAX_GAMMA))
    return torch.where(inside, torch.log1p(relative), closed)


def _relative_variance(beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``Var(A) / E[A]^2`` for the average ``A`` of a geometric Brownian motion over ``[0, t]``,
    in ``beta = b t`` and ``gamma = sigma^2 t``: with ``G(a) = (e^a - 1) / a``, ``2 / G(beta)^2``
    times ``int_0^1 e^(beta x) (e^(gamma x) - 1) int_x^1 e^(beta y) dy dx``, the covariance
    ``E[S_x] E[S_y] (e^(gamma x) - 1)`` integrated over ``x < y``.

    Shape:
        beta, gamma: broadcastable; output: their broadcast shape.
    """
    nodes, weights = roots_legendre(_QUADRATURE_NODES)
    x = torch.as_tensor(0.5 * (nodes + 1.0), dtype=gamma.dtype, device=gamma.device)
    w = torch.as_tensor(0.5 * weights, dtype=gamma.dtype, device=gamma.device)
    b, g = beta.unsqueeze(-1), gamma.unsqueeze(-1)  # (*, 1) against the nodes (n,)
    # int_x^1 e^(beta y) dy = e^(beta x) (e^(beta (1 - x)) - 1) / beta
    integrand = torch.exp(2.0 * b * x) * torch.expm1(g * x) * _expm1_ratio(b, 1.0 - x)
    return 2.0 * (integrand * w).sum(-1) / _expm1_ratio(beta, torch.ones_like(beta)) ** 2


_FAR = 30.0
"""Where ``(sigma^2 + b) t`` (Levy) or the largest ``sigma^2 u_i`` (discrete fixings) exceeds
this, the second moment is taken by its logarithm, not itself, which overflowed past 709:
:func:`_log_moment_ratio`, :func:`_log1p_relative`. At ``e^30`` both forms are exact to
rounding, far from overflow."""


def _log_expm1_ratio(x: torch.Tensor | float, t: torch.Tensor) -> torch.Tensor:
    """``ln((exp(x t) - 1) / x)`` without overflow: ``x t + ln(1 - exp(-x t)) - ln x`` where ``x t >
    _FAR``, else the logarithm of :func:`_expm1_ratio`."""
    x = torch.as_tensor(x, dtype=t.dtype)
    big = x * t > _FAR
    xb = torch.where(big, x, _FAR / t)  # each branch finite where unused (no NaN gradients)
    xs = torch.where(big, 0.0, x)
    large = xb * t + torch.log(-torch.expm1(-xb * t)) - torch.log(xb)
    return torch.where(big, large, torch.log(_expm1_ratio(xs, t)))


_MIN_STEP = 1e-5
"""Where ``|c| t`` is below this, :func:`_divided_difference` interpolates linearly between
``c t = -+_MIN_STEP``: its cancellation there costs about ``2 eps / _MIN_STEP = 4e-11`` relative,
the interpolation ``(_MIN_STEP)^2 / 12``."""


def _divided_difference(b: float, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``(E(b + c) - E(b)) / c`` with ``E(x) = (exp(x t) - 1) / x``, and its limit ``E'(b)`` at
    ``c = 0`` (Levy's ``r - q = -sigma^2``, where the formula's ``2 S^2 / (b + sigma^2)`` was
    a division by zero: NaN)."""

    def direct(step: torch.Tensor) -> torch.Tensor:
        return (_expm1_ratio(b + step, t) - _expm1_ratio(b, t)) / step

    delta = _MIN_STEP / t
    near = (c * t).abs() < _MIN_STEP
    low, high = direct(-delta), direct(delta)
    interpolated = low + (high - low) * ((c + delta) / (2.0 * delta))
    return torch.where(near, interpolated, direct(torch.where(near, delta, c)))


_SERIES_BELOW = 1e-2
"""Where ``|x t|`` is below this, :func:`_expm1_ratio` sums its Taylor series to ``(x t)^6``
(truncation 3e-19 relative, 2e-16 in the derivative); the closed form's derivative in ``x``
loses about ``eps / (x t)^2``, 2e-12 at this bound."""


def _expm1_ratio(x: torch.Tensor | float, t: torch.Tensor) -> torch.Tensor:
    """``(exp(x t) - 1) / x``, and its limit ``t`` at ``x = 0`` (``expm1`` keeps small ``x``
    accurate: moving ``x`` off 0 instead would break the cancellation in Levy's second moment).

    Near ``x = 0`` by its series (:data:`_SERIES_BELOW`), whose derivative in ``x`` is right at 0
    too: the limit ``t`` selected there had none, and at ``r = q`` Levy's rho and dividend
    sensitivity lost the carry's share (-18.4 and -1.28 for 24.1 and -43.8, a one-year call
    struck at 80).
    """
    x = torch.as_tensor(x, dtype=t.dtype)
    y = x * t
    small = y.abs() < _SERIES_BELOW
    ys = torch.where(small, y, 0.0)
    series = 1 + ys * (
        1 / 2 + ys * (1 / 6 + ys * (1 / 24 + ys * (1 / 120 + ys * (1 / 720 + ys / 5040))))
    )
    yl = torch.where(small, 1.0, y)  # the unused branch stays finite (no 0/0 in the gradient)
    return t * torch.where(small, series, torch.expm1(yl) / yl)
