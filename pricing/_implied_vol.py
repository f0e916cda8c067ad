"""Total implied volatility from a normalised OTM Black price: closed-form guess, then Householder steps.

Given ``x = -|ln(F/K)| <= 0`` and the normalised out-of-the-money price ``beta``, find ``s = sigma sqrt(T)``
with ``b(x, s) = beta`` (see :mod:`pricing._normalized_black`). Two objectives keep Newton-type steps
well conditioned:

* lower half (``beta <= exp(x/2) / 2``): ``f(s) = ln b(s) - ln beta``, nearly linear in ``1/s^2`` deep in
  the wing where ``b`` itself spans hundreds of orders of magnitude;
* upper half: ``f(s) = ln c* - ln c(s)`` with ``c = exp(x/2) - b`` the distance to the upper bound.

**Initial guess** (closed forms, vectorised, no iteration). At the inflection point ``s_c = sqrt(2|x|)``
of ``b`` in ``s`` (Jaeckel 2015) everything is known in closed form: ``d1 = 0``,
``b_c = exp(x/2) (1 - erfcx(sqrt|x|)) / 2``, ``b' = exp(x/2) / sqrt(2 pi)``, ``b'' = 0``, ``b''' = -b'``.

* Near ``s_c`` (``d1 > -1.75`` below it, ``d1 < 1/2`` above it): one fourth-order Householder step for
  ``ln b`` as a function of ``ln s``, taken from ``s_c`` with those exact derivatives. It is exact to
  third order in ``ln(s / s_c)`` and slightly underestimates ``s``.
* Deep lower wing: Jaeckel's (2015) lower map ``f_l(s) = 2 pi |x| / (3 sqrt 3) Phi(-|x| / (sqrt 3 s))^3``,
  which shares the leading asymptotics ``s^3 exp(-x^2 / 2 s^2) / (x^2 sqrt(2 pi))`` of ``b`` as
  ``s -> 0`` and inverts in closed form; it slightly overestimates ``s``.
* Upper tail: ``exp(x/2) - b ~ 2 cosh(x/2) Phi(-s/2)`` as ``s -> oo`` (exact for ``x = 0``).

The inverse normal comes from Abramowitz & Stegun 26.2.23 (4.5e-4 absolute), ample for a guess. On
the benchmark's quotes (maturities 1 week..3 years, vols 5-100%, strikes within 3 standard deviations)
the guess is within 4% of the root (median), 15% (99th percentile), 31% (worst); for ``|x|`` and ``s``
anywhere in 1e-8..50, within a factor 40 (tested).

**Iterations.** Elements are grouped once, by objective and by the price formula that suits the guess
(``erfcx`` for ``d1 <= -1``, ``erf`` differences near the money, the direct formula for ``d1 > 1``; one
sort of a small code makes the groups contiguous). Each group takes two fourth-order Householder
steps (closed-form derivative ratios): a fixed sequence of in-place elementwise operations, without
masks or compaction. The first step may use the cheaper ``exp(y^2) erfc(y)`` for ``erfcx`` (~1e-13);
the last one recovers the rounding of ``y^2`` exactly (Dekker), see ``_normalized_black._fast_erfcx``.
When a step's Householder and Newton sizes are both below ``1e-4 s`` the error left is ~1e-16
relative (fourth-order convergence), and the element is done if its root lies in the region of the
formula used, as in :func:`~pricing._normalized_black.log_normalized_call`. That is ~98.6% of the
benchmark's quotes; the others continue on a compacted subset: two more such steps, then a fully
safeguarded iteration (formula re-chosen every step, bracket with bisection in ``ln s``, at most
``_MAX_ITER`` steps) that converges from any start. Inputs are processed in chunks of ``_CHUNK``
elements (``_GPU_CHUNK`` off the CPU), which keeps the temporaries small; with several torch
threads on the CPU, chunks of ``_SERIAL_CHUNK`` go to worker threads instead of every operation
being split between threads.

**Compiled path** (``compile=True``, opt-in): the start and the first two steps of every element
run as one ``torch.compile``-fused loop (:func:`_guess_and_steps`), branch-free: each step
evaluates the shared special functions of all formulas and picks per element, the first step in
single precision (the second, in float64, makes up for it, and its size check is what marks an
element done). The others continue as above. On a million quotes, one thread: ~100 ms for the
fused part against ~170 ms for the eager guess and grouped steps.
The solve runs without autograd; where ``x`` or ``beta`` require gradients, the result carries the
implicit-function gradient.

References:
    P. Jaeckel (2015), "Let's be rational", Wilmott, pp. 40-53 (objective transforms, the inflection
    point, the lower map, Householder steps).
    A. S. Householder (1970), "The Numerical Treatment of a Single Nonlinear Equation".
    M. Abramowitz and I. A. Stegun (1964), "Handbook of Mathematical Functions", eq. 26.2.23.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from pricing._normalized_black import (
    REGION_UPPER,
    XConstants,
    _small_step,
    erf_difference,
    gauss_terms,
    log_value_and_ratio,
    log_vega,
    normalized_call,
    region_of,
    x_constants,
)

__all__ = ["IV_STATUS", "initial_guess", "solve_total_vol"]

IV_STATUS: dict[int, str] = {
    0: "ok",
    1: "price below intrinsic value",
    2: "price at or above the upper bound",
    3: "invalid input (a non-finite value, or a non-positive forward, strike, maturity or discount)",
    4: "no convergence",
}

_CHUNK = 1 << 17
_SERIAL_CHUNK = 1 << 15  # at most torch's grain size: each operation runs on one thread
_GPU_CHUNK = 1 << 22  # a GPU pays per launch: a calibration's 2,000 starts x 66 quotes in one
_MAX_ITER = 40
_STEP_TOL = 1e-9  # a 4th-order step this small leaves an error far below eps
_FAST_TOL = 1e-4  # after a 4th-order step of relative size <= 1e-4, the error is ~1e-16
_REGION_BOUNDS = ((-math.inf, -1.0), (-1.0, 1.0), (1.0, math.inf))
_BRACKET_TOL = 4.0 * torch.finfo(torch.float64).eps
_EPS = torch.finfo(torch.float64).eps
_AT_BOUND_ULPS = 16.0  # the normalised price's own rounding, a few ulps of the bound
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT3 = math.sqrt(3.0)
_SMALL_S = math.sqrt(2.0) * _small_step(torch.float64)  # where the deep difference cancels


def initial_guess(x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Closed-form starting point for ``s`` with ``b(x, s) = beta`` (see the module docstring).

    Shape:
        x, beta: the same shape, ``x <= 0`` and ``0 < beta < exp(x/2)``; output: that shape.

    Examples:
        >>> x, beta = torch.tensor([-0.5, 0.0]), torch.tensor([0.01, 0.3])
        >>> s = initial_guess(x.double(), beta.double())
        >>> bool(((s > 0) & torch.isfinite(s)).all())
        True
    """
    return _guess(x, beta, torch.exp(0.5 * x))


def _guess(x, beta, b_max) -> torch.Tensor:
    """:func:`initial_guess` given ``b_max = exp(x/2)``."""
    sqrt_a = torch.sqrt(-x)
    s_c = sqrt_a * math.sqrt(2.0)
    b_c = _erfcx(sqrt_a).neg_().add_(1.0).mul_(b_max).mul_(0.5)
    lower = beta <= b_c
    s_near = _inflection_step(x, s_c, b_c, b_max, beta)
    # One inverse normal serves both maps: the lower map's argument below b_c, the upper map's above.
    # The quantile caps p below 1/2, so z < 0 and both maps give s > 0.
    lower_arg = torch.div(beta, x).mul_(-3.0 * _SQRT3 / (2.0 * math.pi))
    upper_arg = torch.sub(b_max, beta).div_(torch.reciprocal(b_max).add_(b_max))
    ln_p = torch.log(torch.where(lower, lower_arg, upper_arg))
    z = _norm_quantile(torch.where(lower, ln_p / 3.0, ln_p))  # ln of the cube root below b_c
    s_wing = torch.where(lower, x / (_SQRT3 * z), -2.0 * z)
    # d1 at the lower map's estimate is sqrt(3) z + s/2; a NaN s_near (x = 0) picks the upper map.
    deep = torch.add(s_wing, z, alpha=2.0 * _SQRT3) <= -3.5
    high = ~(torch.div(x, s_near).add_(s_near, alpha=0.5) < 0.5)
    return torch.where(torch.where(lower, deep, high), s_wing, s_near)


def _norm_quantile(ln_p: torch.Tensor) -> torch.Tensor:
    """``Phi^-1(p) < 0`` from ``ln p`` (``p`` capped below 1/2) to ~4.5e-4 absolute, enough for a guess.

    Abramowitz & Stegun (1964), eq. 26.2.23: with ``t = sqrt(-2 ln p)``, ``-Phi^-1(p) ~ t -
    (c0 + c1 t + c2 t^2) / (1 + d1 t + d2 t^2 + d3 t^3)``. Cheaper than ``ndtri`` and needs no ``p``.
    """
    t = ln_p.clamp_(max=math.log(0.4999)).mul_(-2.0).sqrt_()
    num = torch.addcmul(torch.mul(t, 0.802853).add_(2.515517), t, t, value=0.010328)
    den = torch.mul(t, 0.001308).add_(0.189269).mul_(t).add_(1.432788).mul_(t).add_(1.0)
    return num.div_(den).sub_(t)


def _erfcx(y: torch.Tensor) -> torch.Tensor:
    """``erfcx(y)`` for ``y >= 0`` to ~1e-6 relative (enough for a guess), avoiding the slow kernel."""
    small = y.clamp(max=5.0)
    out = torch.special.erfc(small).mul_(torch.exp(small * small))
    big = y > 5.0
    if torch.compiler.is_compiling():  # no data-dependent branch inside a fused kernel
        inv = 0.5 / (y * y)
        asym = (1.0 - inv * (1.0 - 3.0 * inv * (1.0 - 5.0 * inv))) / (math.sqrt(math.pi) * y)
        return torch.where(big, asym, out)
    if bool(big.any()):  # asymptotic series (Abramowitz & Stegun 7.1.23), rare: |x| > 25
        inv = 0.5 / y[big] ** 2
        out[big] = (1.0 - inv * (1.0 - 3.0 * inv * (1.0 - 5.0 * inv))) / (
            math.sqrt(math.pi) * y[big]
        )
    return out


def _inflection_step(x, s_c, b_c, b_max, beta) -> torch.Tensor:
    """Householder step for ``ln b`` in ``v = ln s`` from ``s_c`` (derivatives known in closed form)."""
    # In s: (ln b)' = u, (ln b)'' = -u^2, (ln b)''' = 2u^3 - u, as b'' = 0 and b''' = -b' at s_c;
    # the chain rule for s = exp(v) gives, with l1 = u s_c: h2 = 1 - l1, h3 = 2 l1^2 - 3 l1 + 1 - s_c^2.
    l1 = torch.div(b_max, b_c).mul_(s_c).mul_(_INV_SQRT_2PI)
    h3 = torch.addcmul(torch.mul(x, 2.0).add_(1.0), l1, torch.mul(l1, 2.0).sub_(3.0))
    nu = torch.div(beta, b_c).log_().div_(l1)
    return torch.exp(_householder(nu, 1.0 - l1, h3)).mul_(s_c)


def _householder(nu, h2, h3) -> torch.Tensor:
    """Order-4 Householder step from the Newton step ``nu = -f/f'`` and ``f''/f'``, ``f'''/f'``."""
    hn = h2 * nu  # nu (1 + h2 nu / 2) / (1 + h2 nu + h3 nu^2 / 6); h3 is overwritten
    den = h3.mul_(nu).mul_(nu).mul_(1.0 / 6.0).add_(hn).add_(1.0)
    return hn.mul_(0.5).add_(1.0).mul_(nu).div_(den)


def _step(
    x, s, target, c: XConstants | None, group: int, *, precise: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Householder step and Newton step ``-f/f'`` for one objective/formula group."""
    # In-place operations on fresh temporaries: this runs twice on every element.
    inv_s, k2, d1, g = gauss_terms(x, s)
    ln_value, u = log_value_and_ratio(s, d1, g, c, group, precise=precise)
    if group == REGION_UPPER:  # f = target - ln c, f' = b'/c = u; the ratios below take u = -b'/c
        nu = ln_value.sub_(target).div_(u)
        u = u.neg_()
    else:  # f = ln b - target, f' = b'/b = u
        nu = ln_value.neg_().add_(target).div_(u)
    t = k2.mul_(inv_s)  # x^2 / s^3
    q = torch.add(t, s, alpha=-0.25)  # b''/b'
    r = t.mul_(inv_s).mul_(-3.0).addcmul_(q, q).sub_(0.25)  # b'''/b' = q^2 - 3 x^2 / s^4 - 1/4
    h2 = torch.sub(q, u)
    h3 = r.addcmul_(u, q.mul_(-1.5).add_(u), value=2.0)  # r - 3 q u + 2 u^2
    return _householder(nu, h2, h3), nu


def _size(step, nu) -> torch.Tensor:
    """Convergence measure: far from the root the rational step saturates at ``3 h2 / h3`` however
    large ``f`` is, so only a small Newton step as well proves convergence."""
    return torch.maximum(step.abs(), nu.abs())


def _fixed_steps(x, s, target, group: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` unsafeguarded steps; returns the iterate and a mask of elements proven converged."""
    c = x_constants(x, group)
    step = nu = s
    for i in range(n):
        # Only the last step needs the objective to the last digit (its error is the final one).
        step, nu = _step(x, s, target, c, group, precise=i == n - 1)
        s = s + step  # a wild step ends in NaN or a failed check below, never in a false "done"
    done = _size(step, nu) <= _FAST_TOL * s  # False for NaN
    if group != REGION_UPPER:
        d1 = x / s + 0.5 * s
        lo, hi = _REGION_BOUNDS[group]
        done &= (d1 > lo) & (d1 <= hi)  # the formula log_normalized_call uses at the root
    return s, done


def _by_group(fn, x, s, target, upper) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``fn(x, s, target, group)`` (returning two tensors) to each objective/formula group.

    The groups (the formula chosen from ``s``) are made contiguous by one stable sort of a small
    integer code, so each group is a slice: three gathers and two scatters in all.
    """
    d1 = torch.div(x, s).add_(s, alpha=0.5)
    code = (d1 > -1.0).to(torch.uint8).add_((d1 > 1.0).to(torch.uint8))  # the split of region_of
    code.masked_fill_(upper, REGION_UPPER)
    order = torch.argsort(code, stable=True)
    counts = torch.bincount(code, minlength=REGION_UPPER + 1).tolist()
    parts = zip(*(v.index_select(0, order).split(counts) for v in (x, s, target)), strict=True)
    outs = [fn(xg, sg, tg, g) for g, (xg, sg, tg) in enumerate(parts) if counts[g]]
    first, second = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
    return (
        torch.empty_like(first).index_copy_(0, order, first),
        torch.empty_like(second).index_copy_(0, order, second),
    )


def _fast_phase(x, s, target, upper, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` grouped fixed steps for every element; returns the iterates and the converged mask."""
    return _by_group(lambda xg, sg, tg, g: _fixed_steps(xg, sg, tg, g, n), x, s, target, upper)


def _near_start(x, s, target, upper, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fixed steps on the lower objective from a start near the root, every element at once.

    The formula of each element is picked by ``torch.where`` from the values of every region
    some element is in (:func:`_region_values`) instead of sorting the elements into groups: more
    arithmetic, far fewer operations, which is what counts on small inputs (a calibration's few
    dozen quotes, solved at every iteration from its last vols). Upper-half elements are never
    done here; the grouped path takes them.
    """
    weights: dict[int, XConstants | None] = {}
    step = nu = s
    for i in range(n):
        inv_s, k2, d1, g = gauss_terms(x, s)
        ln_value, u = _region_values(x, s, d1, g, weights, precise=i == n - 1)
        nu = (target - ln_value) / u
        t = k2.mul_(inv_s)  # x^2 / s^3, as in _step
        q = torch.add(t, s, alpha=-0.25)
        r = t.mul_(inv_s).mul_(-3.0).addcmul_(q, q).sub_(0.25)
        h2 = torch.sub(q, u)
        h3 = r.addcmul_(u, q.mul_(-1.5).add_(u), value=2.0)
        step = _householder(nu, h2, h3)
        s = s + step
    return s, (_size(step, nu) <= _FAST_TOL * s) & ~upper


def _region_values(
    x: torch.Tensor,
    s: torch.Tensor,
    d1: torch.Tensor,
    g: torch.Tensor,
    weights: dict[int, XConstants | None],
    *,
    precise: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~pricing._normalized_black.log_value_and_ratio` of each element with the formula of
    its region (:func:`~pricing._normalized_black.region_of`), evaluated for the regions some
    element is in only (above the money, ``d1 > 1``, takes a total vol above 2: rare in a
    calibration); ``weights`` caches their :func:`~pricing._normalized_black.x_constants`.

    Shape:
        all tensors the same shape; outputs: that shape.
    """
    region = region_of(d1)
    counts = torch.bincount(region, minlength=3).tolist()
    present = [code for code in range(3) if counts[code]] or [1]  # [1]: no element at all
    for code in present:
        if code not in weights:
            weights[code] = x_constants(x, code)
    parts = [log_value_and_ratio(s, d1, g, weights[code], code, precise=precise)
             for code in present]  # fmt: skip
    ln_value, u = parts[-1]  # every element, then the other regions' where they are
    for code, (ln_code, u_code) in zip(present[-2::-1], parts[-2::-1], strict=True):
        at_code = region == code
        ln_value, u = torch.where(at_code, ln_code, ln_value), torch.where(at_code, u_code, u)
    return ln_value, u


def _guess_and_steps(
    x: torch.Tensor, beta: torch.Tensor, start: torch.Tensor | None, n: int = 2
) -> tuple[torch.Tensor, ...]:
    """Objective, start and ``n`` fixed steps of every element in one pass, for ``torch.compile``.

    What :func:`_solve_positive` does before its fallback, written branch-free so that inductor
    fuses it into one loop: each step evaluates every formula of :func:`_step` and picks one per
    element by ``torch.where`` (the formula re-chosen from ``s`` every step, as in
    :func:`_near_start`). The formulas share their special functions: ``erfc(-t1)`` and
    ``erfc(-t2)`` serve the deep region (times ``exp(t^2)``, as in ``_fast_erfcx`` with the
    Dekker correction) and the regions above it, ``erfc(t1)`` replaces ``erfc(-t1)`` for the
    upper objective. Deep elements with ``-t2 > 26`` (where ``erfc`` underflows) or a tiny ``s``
    (where the difference cancels) are not done.

    Returns:
        ``s``, the converged mask, the start ``s0``, the objective's ``target`` and ``upper``.

    Shape:
        x, beta, start: (N,); outputs: (N,).
    """
    b_max = torch.exp(0.5 * x)
    upper = beta > 0.5 * b_max
    target = torch.log(torch.where(upper, b_max - beta, beta))
    s0 = _guess(x, beta, b_max)
    if start is not None:
        s0 = torch.where(torch.isfinite(start) & (start > 0), start, s0)
    w1, w2 = 0.5 * b_max, 0.5 * torch.exp(-0.5 * x)
    sinh_half_x = torch.sinh(0.5 * x)  # w1 - w2, which cancels near the money (eps / |x|)
    s, step, nu, region, ok = s0, s0, s0, upper.int(), torch.ones_like(upper)
    for i in range(n):
        # Only the last step needs the objective to the last digit: the others take erf and erfc
        # in single precision (~4x cheaper; an underflow there ends in a failed check).
        erf, erfc = (
            (_single(torch.special.erf), _single(torch.special.erfc))
            if i < n - 1
            else (torch.special.erf, torch.special.erfc)
        )
        inv_s, k2, d1, g = gauss_terms(x, s)
        region = torch.where(upper, REGION_UPPER, region_of(d1).int())
        deep = region == 0
        t1 = d1 * (1.0 / math.sqrt(2.0))
        t2 = t1 - s * (1.0 / math.sqrt(2.0))
        e1 = erfc(torch.where(upper, t1, -t1))
        e2 = erfc(-t2)
        p1 = t1 * t1
        exp1 = torch.exp(torch.where(deep, p1, -p1))  # off the deep region, exp(g) = b_max exp1
        diff = _dekker(e1 * exp1, -t1, p1) - _dekker(e2 * torch.exp(t2 * t2), -t2, t2 * t2)
        # a tiny s: the difference cancels (see log_value_and_ratio); the eager steps take it
        ok = ~deep | ((t2 >= -26.0) & (s >= _SMALL_S))
        # the last step's erf difference without cancellation at a tiny s, as the pricer's
        near = erf(t1) - erf(t2) if i < n - 1 else erf_difference(t1, s * (1.0 / math.sqrt(2.0)))
        value = torch.where(
            region == 1,
            near * w1 + sinh_half_x * e2,
            e1 * w1 + torch.where(region == 2, -w2, w2) * e2,
        )
        ln_value = torch.log(torch.where(deep, diff, value))
        ln_value = torch.where(deep, ln_value + g + math.log(0.5), ln_value)
        u = torch.where(deep, math.sqrt(2.0 / math.pi) / diff, b_max * exp1 * _INV_SQRT_2PI / value)
        nu = torch.where(upper, ln_value - target, target - ln_value) / u
        u = torch.where(upper, -u, u)  # the ratios below take u = -b'/c, as in _step
        t = k2 * inv_s
        q = t - 0.25 * s
        r = q * q - 3.0 * t * inv_s - 0.25
        step = _householder(nu, q - u, r + 2.0 * u * (u - 1.5 * q))
        s = s + step
    d1 = x / s + 0.5 * s
    inside = torch.where(
        region == 0, d1 <= -1.0, torch.where(region == 1, (d1 > -1.0) & (d1 <= 1.0), d1 > 1.0)
    )
    done = (_size(step, nu) <= _FAST_TOL * s) & (upper | inside) & ok
    return s, done, s0, target, upper


def _single(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` evaluated in float32, result in float64."""
    return lambda y: fn(y.float()).double()


def _dekker(out: torch.Tensor, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``out = f exp(p)`` with ``p = y^2`` rounded, corrected to ``f exp(y^2)`` (see ``_fast_erfcx``)."""
    split = y * 134217729.0  # 2^27 + 1
    hi = split - (split - y)
    lo = y - hi
    return out + (((hi * hi - p) + 2.0 * hi * lo) + lo * lo) * out


@functools.cache
def _compiled_guess_and_steps(device_type: str) -> Callable[..., tuple[torch.Tensor, ...]]:
    """:func:`_guess_and_steps` through ``torch.compile``, one per device type (compiled on first
    call, once per process and per ``start`` given or not; dynamic shapes, so any number of
    options above one reuses it)."""
    return torch.compile(_guess_and_steps, dynamic=True)


def _mixed_step(x, s, target, upper) -> tuple[torch.Tensor, torch.Tensor]:
    """Householder and Newton steps with the formula re-chosen from ``s`` (used on few elements)."""
    return _by_group(
        lambda xg, sg, tg, g: _step(xg, sg, tg, x_constants(xg, g), g), x, s, target, upper
    )


def _safeguarded(x, s, target, upper) -> tuple[torch.Tensor, torch.Tensor]:
    """Householder steps kept inside a bracket, else bisection; converged elements leave the set.

    A step is taken only if it stays inside the bracket and is not saturated (far from the root the
    rational step stalls at ``3 h2 / h3`` while the Newton step is large); otherwise the bracket is
    bisected in ``ln s`` while it spans more than a factor 4, and arithmetically after that. So
    ``s`` spans 1e-9..1e4 in a few dozen steps at most, from any start.
    """
    s = torch.where(torch.isfinite(s) & (s > 0), s, 1.0)
    lo, hi = torch.zeros_like(s), torch.full_like(s, math.inf)
    solved = torch.zeros_like(upper)
    active = torch.arange(s.numel(), device=s.device)
    for _ in range(_MAX_ITER):
        sa, la, ha = s[active], lo[active], hi[active]
        ua = upper[active]
        step, nu = _mixed_step(x[active], sa, target[active], ua)
        # Both objectives increase with s, so the Newton step points to the root. A NaN one means
        # the value under the log underflowed: b for tiny s (root above), c for huge s (below).
        la = torch.where((nu > 0) | (torch.isnan(nu) & ~ua), sa, la)
        ha = torch.where((nu < 0) | (torch.isnan(nu) & ua), sa, ha)
        new = sa + step
        small = _size(step, nu) <= _STEP_TOL * sa
        useful = (new > la) & (new < ha) & (step.abs() >= 0.5 * nu.abs())  # False for NaN
        lo[active], hi[active] = la, ha
        s[active] = torch.where(small | useful, new, _bisect(sa, la, ha))
        done = (nu == 0) | small | (ha - la <= _BRACKET_TOL * la)
        solved[active] = done
        active = active[~done]
        if active.numel() == 0:
            break
    return s, solved


def _bisect(s, lo, hi) -> torch.Tensor:
    """Next point in ``(lo, hi)``: x4 or /4 on a half-open bracket, geometric or arithmetic mean."""
    wide = hi > 4.0 * lo
    mid = torch.where(wide, torch.sqrt(lo * hi), 0.5 * (lo + hi))
    return torch.where(torch.isinf(hi), 4.0 * s, torch.where(lo == 0, 0.25 * hi, mid))


def _solve_positive(x, beta, start=None, compiled=False) -> tuple[torch.Tensor, torch.Tensor]:
    """Root ``s`` and a converged mask for ``0 < beta < exp(x/2)`` (flat tensors), from ``start``
    where it is positive and finite, else from the closed-form guess; ``compiled``: the guess and
    the first two steps by the fused :func:`_guess_and_steps`."""
    if compiled:
        fused = _compiled_guess_and_steps(x.device.type)
        s, done, s0, target, upper = fused(x, beta, start)
    else:
        b_max = torch.exp(0.5 * x)
        upper = beta > 0.5 * b_max
        target = torch.log(torch.where(upper, b_max - beta, beta))
        if start is None:
            s0 = _guess(x, beta, b_max)
            s, done = _fast_phase(x, s0, target, upper, 2)
        else:
            usable = torch.isfinite(start) & (start > 0)
            s0 = start if bool(usable.all()) else torch.where(usable, start, _guess(x, beta, b_max))
            s, done = _near_start(x, s0, target, upper, 2)
    if bool(done.all()):
        return s, done
    # The few others: two more fixed steps from there, then the safeguarded iteration from s0.
    rest = torch.nonzero(~done, as_tuple=True)[0]
    xr, tr, ur, s0r = (v.index_select(0, rest) for v in (x, target, upper, s0))
    s_r = s.index_select(0, rest)
    s_r, done_r = _fast_phase(xr, torch.where(torch.isfinite(s_r), s_r, s0r), tr, ur, 2)
    if not bool(done_r.all()):
        again = torch.nonzero(~done_r, as_tuple=True)[0]
        s_r[again], done_r[again] = _safeguarded(xr[again], s0r[again], tr[again], ur[again])
    s.index_copy_(0, rest, s_r)
    done.index_copy_(0, rest, done_r)
    return s, done


def solve_total_vol(
    x: torch.Tensor,
    beta: torch.Tensor,
    *,
    invalid: torch.Tensor,
    below: torch.Tensor,
    above: torch.Tensor,
    start: torch.Tensor | None = None,
    compile: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``b(x, s) = beta`` for ``s`` where the inputs are valid; NaN and a status elsewhere.

    ``start``: a starting ``s`` per element (e.g. the market's when ``beta`` is a model price near
    it), used where positive and finite instead of the closed-form guess; the result is the same
    root, usually for fewer steps. ``compile``: the start and the first two steps of every element
    in one ``torch.compile``-fused kernel (:func:`_guess_and_steps`; the first call per process
    compiles it, ~15 s on the CPU, and needs a C++ compiler there; a size-1 input compiles again);
    the same root to ~1e-15.

    Shape:
        x, beta, masks, start: the same shape (any, including 0-d); outputs: that shape.
    """
    with torch.no_grad():  # the iteration runs in place; the gradient is attached below
        s, status = _solve_flat(
            x.reshape(-1),
            beta.reshape(-1),
            invalid.reshape(-1),
            below.reshape(-1),
            above.reshape(-1),
            None if start is None else start.detach().reshape(-1),
            compile,
        )
    s, status = s.reshape(x.shape), status.reshape(x.shape)
    if torch.is_grad_enabled() and (x.requires_grad or beta.requires_grad):
        s = _with_implicit_gradient(x, beta, s, status)
    return s, status


def _with_implicit_gradient(x, beta, s, status) -> torch.Tensor:
    """``s`` (values unchanged) carrying the implicit-function gradient of ``b(x, s) = beta``.

    One Newton correction ``(beta - b(x, s)) / b'`` has value ~0 and the gradients ``ds/dbeta =
    1/b'`` and ``ds/dx = -(db/dx)/b'``; only its gradient is kept (its value would add rounding).
    """
    ok = (status == 0) & (s > 0)
    s_safe = torch.where(ok, s, 1.0)
    x_safe = torch.where(ok, x, torch.zeros_like(x))
    vega = torch.exp(log_vega(x_safe.detach(), s_safe))
    correction = (torch.where(ok, beta, 0.0) - normalized_call(x_safe, s_safe)) / vega
    return s + torch.where(ok, correction - correction.detach(), 0.0)


def _solve_flat(
    x, beta, invalid, below, above, start, compiled=False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`solve_total_vol` on flat tensors."""
    todo = ~(invalid | below | above) & (beta > 0)
    if bool(todo.all()):  # the usual case: no masks, gathers or scatters
        return _solve_chunks(x, beta, start, compiled)
    status = torch.where(invalid, 3, torch.where(above, 2, below.long()))
    s_out = torch.where((status == 0) & (beta <= 0), 0.0, math.nan).to(x.dtype)
    todo = torch.nonzero(todo, as_tuple=True)[0]
    start = None if start is None else start.index_select(0, todo)
    x, beta = x.index_select(0, todo), beta.index_select(0, todo)
    s, status_todo = _solve_chunks(x, beta, start, compiled)
    s_out.index_copy_(0, todo, s)
    status.index_copy_(0, todo, status_todo)
    return s_out, status


def _solve_chunks(x, beta, s0=None, compiled=False) -> tuple[torch.Tensor, torch.Tensor]:
    """Roots (NaN where not converged) and statuses (0 or 4) of valid inputs, chunk by chunk
    (from the starting points ``s0``, if given).

    ``compiled``: chunks of ``_GPU_CHUNK`` in turn (the fused kernel has no temporaries to keep
    small, and runs on all of torch's threads itself).

    With several torch threads on the CPU, chunks small enough to run each operation on one thread
    are handed to as many worker threads (torch releases the GIL inside operations). One parallel
    region per elementwise operation would otherwise synchronise the threads a few hundred times
    per chunk, which costs more than it saves on a loaded machine.
    """
    s_all = torch.empty_like(x)
    status = torch.empty(x.shape, dtype=torch.int64, device=x.device)
    workers = torch.get_num_threads() if x.device.type == "cpu" and not compiled else 1
    size = _CHUNK if workers == 1 else _SERIAL_CHUNK
    if x.device.type != "cpu" or compiled:
        size = _GPU_CHUNK

    def solve(first: int) -> None:
        part = slice(first, first + size)
        with torch.no_grad():  # grad mode is per thread
            start = None if s0 is None else s0[part]
            s, solved = _solve_positive(x[part], beta[part], start, compiled)
        s_all[part] = torch.where(solved, s, math.nan)
        # unsolved within rounding of the upper bound: every large s gives that price
        at_bound = beta[part] >= torch.exp(0.5 * x[part]) * (1.0 - _AT_BOUND_ULPS * _EPS)
        status[part] = torch.where(solved, 0, torch.where(at_bound, 2, 4))

    firsts = range(0, x.numel(), size)
    if workers == 1 or len(firsts) == 1:
        for first in firsts:
            solve(first)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(solve, firsts))
    return s_all, status
