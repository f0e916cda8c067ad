"""Heston Fourier machinery behind :func:`pricing.heston.price`: log characteristic function, the
per-option integration contour and the quadrature along it.

Notation: ``X = ln(S_T / F)``, ``k = ln(K / F)``, ``phi(z) = E[exp(i z X)]``. For a contour through
``-i alpha`` with ``alpha > 0`` (calls) or ``alpha < -1`` (puts), the out-of-the-money price over
``D F`` is ``-1/pi Re int exp(-i z k) phi(z - i) / (z (z - i)) dz`` over the right half of the contour
(no residue terms: the poles at ``z = 0`` and ``z = i`` stay on the far side). On Lewis' line
``alpha = -1/2``, between the poles, the residue and the Black-Scholes control variate combine into the
Black-Scholes OTM price, and the integrand is Heston's minus Black-Scholes'.

References:
    R. Lord, C. Kahl (2007), J. Comput. Finance 10(4), eq. (11)-(12) and section 4 (optimal alpha).
    L. Andersen, V. Piterbarg (2007), Finance Stoch. 11, prop. 3.1 (moment explosion time) and
    section 6 (control variate).
    A. Lewis (2000), "Option Valuation under Stochastic Volatility", ch. 2 (the ``alpha = -1/2`` line).
    L. Andersen, M. Lake (2018), SSRN 3231626, sections 3-4 (contour deformation).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.special import roots_laguerre, roots_legendre

from pricing._complex import Cx, cadd, cdiv, cexp, cexpm1, clog1p, cmul, cscale, csqrt
from pricing._normalized_black import normalized_call
from pricing._special import piecewise

__all__ = [
    "Contour",
    "choose_contour",
    "expected_total_variance",
    "little_trap_terms",
    "log_characteristic",
    "otm_integral",
]

CORE_WIDTHS = 10.0
"""Length of the Gauss-Legendre panel in saddle-point widths (the core has decayed by ~exp(-50))."""

_ALPHA_GRID = (math.log(1e-3), math.log(1e4), 12, 7)
"""Saddle search over the log distance of alpha from its pole: bounds, coarse and fine grid sizes."""

LEWIS_CANCELLATION = 100.0
"""Lewis' line ``alpha = -1/2`` is used when its integrand at the origin exceeds the saddle's by less than
this factor: the residue then cancels at most two of the sixteen digits."""


def log_characteristic(
    z: Cx,
    maturity: torch.Tensor,
    v0: torch.Tensor,
    kappa: torch.Tensor,
    theta: torch.Tensor,
    sigma: torch.Tensor,
    rho: torch.Tensor,
) -> Cx:
    """``log E[exp(i z X)]``, ``X = ln(S_T / F)``, as a real pair, in the "little trap" form.

    With ``beta = kappa - i rho sigma z`` and ``d = sqrt(beta^2 + sigma^2 (z^2 + i z))`` (principal root),
    ``log phi = kappa theta / sigma^2 ((beta - d) T - 2 log(1 - r y)) + v0 (z^2 + i z) y / (1 - r y)``
    where ``r = beta - d`` and ``y = (exp(-d T) - 1) / (2 d)``; ``1 - r y`` equals Albrecher et al.'s
    ``(1 - g exp(-dT)) / (1 - g)``, ``g = (beta - d) / (beta + d)``, so the log never crosses its
    branch cut.
    ``beta - d`` is taken as ``-sigma^2 (z^2 + i z) / (beta + d)`` where that avoids cancellation.

    Shape:
        z (a pair of real tensors) and the parameters broadcast together; output: their shape.

    References:
        Albrecher et al. (2007), eq. (2)-(4); Andersen and Lake (2018), section 3.1, for ``r`` and ``y``.
    """
    return _log_characteristic(z, _square_plus_iz(z), maturity, v0, kappa, theta, sigma, rho)


def _square_plus_iz(z: Cx) -> Cx:
    """``z^2 + i z``. Shape: that of ``z``."""
    return z[0] * z[0] - z[1] * z[1] - z[1], z[0] * (2.0 * z[1] + 1.0)


def _log_characteristic(
    z: Cx,
    zz: Cx,
    maturity: torch.Tensor,
    v0: torch.Tensor,
    kappa: torch.Tensor,
    theta: torch.Tensor,
    sigma: torch.Tensor,
    rho: torch.Tensor,
) -> Cx:
    """:func:`log_characteristic` given ``zz = z^2 + i z`` (which the integrand shares). Shape: the
    broadcast of the inputs."""
    *_, bracket, b = little_trap_terms(z, zz, maturity, kappa, sigma, rho)
    return cadd(cscale(bracket, kappa * theta / (sigma * sigma)), cscale(b, v0))


def little_trap_terms(
    z: Cx,
    zz: Cx,
    maturity: torch.Tensor,
    kappa: torch.Tensor,
    sigma: torch.Tensor,
    rho: torch.Tensor,
) -> tuple[Cx, Cx, Cx, Cx, Cx, Cx]:
    """The terms of :func:`log_characteristic`, ``log phi = kappa theta / sigma^2 B + v0 b``:
    ``(d, r, y, q, B, b)`` with ``r = beta - d``, ``y = (exp(-d T) - 1) / (2 d)``, ``q = -r y``,
    ``B = r T - 2 log(1 + q)`` and ``b = zz y / (1 + q)``, given ``zz = z^2 + i z`` (the
    calibration's closed-form Jacobian reuses them).

    Shape:
        the broadcast of the inputs, each term.
    """
    beta = (kappa + rho * sigma * z[1], -rho * sigma * z[0])
    sigma2 = sigma * sigma
    d = csqrt(cadd(cmul(beta, beta), cscale(zz, sigma2)))
    r = _beta_minus_d(beta, d, zz, sigma2)
    y = _half_expm1_ratio(d, maturity)
    q = cscale(cmul(r, y), -1.0)
    bracket = cadd(cscale(r, maturity), cscale(clog1p(q), -2.0))
    b = cdiv(cmul(zz, y), (1.0 + q[0], q[1]))
    return d, r, y, q, bracket, b


def _beta_minus_d(beta: Cx, d: Cx, zz: Cx, sigma2: torch.Tensor) -> Cx:
    """``beta - d``, through ``-sigma^2 (z^2 + i z) / (beta + d)`` when ``beta`` and ``d`` align."""
    aligned = beta[0] * d[0] + beta[1] * d[1] > 0
    one = torch.ones_like(d[0])
    denom = (torch.where(aligned, beta[0] + d[0], one), torch.where(aligned, beta[1] + d[1], one))
    alt = cscale(cdiv(zz, denom), -sigma2)
    return (
        torch.where(aligned, alt[0], beta[0] - d[0]),
        torch.where(aligned, alt[1], beta[1] - d[1]),
    )


def _half_expm1_ratio(d: Cx, maturity: torch.Tensor) -> Cx:
    """``(exp(-d T) - 1) / (2 d)``; a nudge of ``Re d`` by the fourth root of the dtype's smallest
    normal number gives the limit ``-T / 2`` at ``d = 0`` (1e-300 did not: :func:`cdiv` squares
    the divisor's modulus, 4e-600 was 0 and the ratio NaN)."""
    safe = (d[0] + torch.finfo(d[0].dtype).tiny ** 0.25, d[1])
    return cdiv(cexpm1(cscale(safe, -maturity)), cscale(safe, 2.0))


def moment_explosion_time(
    p: torch.Tensor, kappa: torch.Tensor, sigma: torch.Tensor, rho: torch.Tensor
) -> torch.Tensor:
    """Time at which ``E[(S_T/F)^p]`` becomes infinite (``inf`` if never), real ``p``.

    References:
        Andersen and Piterbarg (2007), prop. 3.1.
    """
    beta = kappa - rho * sigma * p
    d2 = beta * beta - sigma * sigma * p * (p - 1.0)
    root = torch.sqrt(d2.abs()).clamp_min(1e-300)
    # ln((-beta + root) / (-beta - root)) / root as 2 atanh(x) / root, x = root / -beta, with the
    # limit 2 / -beta at d^2 = 0: there the ratio rounded to 1 and the time to 0 (a spurious
    # "explodes from T = 0" warning of the Monte Carlo pricers)
    x = root / -beta
    real_case = 2.0 / -beta * torch.where(x > 0, torch.atanh(x) / x, 1.0)
    real_case = torch.where(beta < 0, real_case, torch.full_like(beta, math.inf))
    complex_case = 2.0 / root * (0.5 * math.pi + torch.atan(beta / root))
    finite_always = p * (p - 1.0) <= 0
    out = torch.where(d2 >= 0, real_case, complex_case)
    return torch.where(finite_always, torch.full_like(out, math.inf), out)


class Contour(NamedTuple):
    """Integration contour of each option (no gradient): the core panel along ``Im z = -alpha``, then a
    ray ``z_1 + v (1 + i tan_angle)``, ``v >= 0`` (Gauss-Laguerre with rate ``tail_rate``)."""

    alpha: torch.Tensor
    core_length: torch.Tensor
    tan_angle: torch.Tensor
    tail_rate: torch.Tensor
    use_tail: torch.Tensor
    cv_variance: torch.Tensor
    """Total variance of the Black-Scholes control variate on Lewis' line (``alpha = -1/2``), else 0."""
    log_tail: torch.Tensor
    """Whether the tail is the geometric panels of :data:`LOG_TAIL_PANELS` (the integrand decays
    algebraically far past the core: see :data:`ALGEBRAIC_TAIL`), not Gauss-Laguerre."""


EXPLOSION_MARGIN = 1.0001
"""Damping values whose moment explodes before ``EXPLOSION_MARGIN * T`` are excluded from the saddle
search: their integrand at the origin is huge or infinite anyway."""


def log_moment(
    p: torch.Tensor,
    maturity: torch.Tensor,
    v0: torch.Tensor,
    kappa: torch.Tensor,
    theta: torch.Tensor,
    sigma: torch.Tensor,
    rho: torch.Tensor,
) -> torch.Tensor:
    """``ln E[(S_T/F)^p]`` for real ``p``, in real arithmetic: :func:`log_characteristic` at ``z = -i p``;
    ``inf`` where the moment explodes before about ``EXPLOSION_MARGIN * T``.

    ``beta = kappa - rho sigma p`` and ``d^2 = beta^2 - sigma^2 q``, ``q = p (p - 1)``, are real, and
    ``ln E = kappa theta / sigma^2 (c T - 2 ln G) + v0 q s / G`` with, where ``d^2 >= 0``, the little-trap
    terms ``c = beta - d``, ``s = -y = (1 - exp(-d T)) / (2 d)``, ``G = 1 - c y``; where ``d^2 < 0``,
    ``d = i w``, and the same terms rotated by ``exp(i w T / 2)`` are real: ``c = beta``,
    ``s = sin(w T / 2) / w``, ``G = cos(w T / 2) + beta s``. The moment explodes where ``G`` first
    reaches 0 (Andersen and Piterbarg's explosion time, :func:`moment_explosion_time`), within
    ``w T / 2 < pi`` where ``d = i w``; ``G`` at ``EXPLOSION_MARGIN * T`` is extrapolated linearly from
    ``T``, which moves the margin by ``O((EXPLOSION_MARGIN - 1)^2)``.

    Shape:
        all inputs broadcast together; output: their shape.
    """
    beta = kappa - rho * sigma * p
    q = p * (p - 1.0)
    sigma2 = sigma * sigma
    d2 = beta * beta - sigma2 * q
    real = d2 >= 0
    root = torch.sqrt(d2.abs())
    terms_real = _moment_terms_real(beta, root, q, sigma2, maturity)
    terms_circular = _moment_terms_circular(beta, root, maturity)
    c, s, g_minus_1, slope = (
        torch.where(real, a, b) for a, b in zip(terms_real, terms_circular, strict=True)
    )
    log_g = torch.log1p(g_minus_1)
    value = kappa * theta / sigma2 * (c * maturity - 2.0 * log_g) + v0 * q * s / (1.0 + g_minus_1)
    g_later = 1.0 + g_minus_1 + (EXPLOSION_MARGIN - 1.0) * maturity * slope
    first_arch = real | (EXPLOSION_MARGIN * 0.5 * root * maturity < math.pi)
    finite = (q <= 0) | ((g_minus_1 > -1.0) & (g_later > 0) & first_arch)
    return torch.where(finite, value, torch.full_like(value, math.inf))


def _moment_terms_real(
    beta: torch.Tensor,
    d: torch.Tensor,
    q: torch.Tensor,
    sigma2: torch.Tensor,
    maturity: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c, s, G - 1, dG/dT)`` of :func:`log_moment` for real ``d >= 0``. Shape: broadcast of the
    inputs."""
    # beta - d = sigma^2 q / (beta + d) without cancellation where beta > 0
    c = torch.where(beta > 0, sigma2 * q / (beta.abs() + d), beta - d)
    safe = d + 1e-300  # limit s = T / 2 at d = 0
    expm1 = torch.expm1(-safe * maturity)
    s = -expm1 / (2.0 * safe)
    return c, s, c * s, 0.5 * c * (1.0 + expm1)


def _moment_terms_circular(
    beta: torch.Tensor, w: torch.Tensor, maturity: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c, s, G - 1, dG/dT)`` of :func:`log_moment` for ``d = i w``, ``w > 0`` (finite, and unused,
    for the real ``d`` of the other elements). Shape: broadcast of the inputs."""
    half_angle = 0.5 * w * maturity
    sin, cos = torch.sin(half_angle), torch.cos(half_angle)
    s = sin / (w + 1e-300)
    return beta, s, (cos - 1.0) + beta * s, 0.5 * (beta * cos - w * sin)


def _log_integrand_at_origin(
    alpha: torch.Tensor, k: torch.Tensor, *params: torch.Tensor
) -> torch.Tensor:
    """``psi = ln |integrand(-i alpha)| = -alpha k + ln E[e^{(alpha+1) X}] - ln|alpha (alpha+1)|``,
    ``inf`` where the moment explodes (see :func:`log_moment`). Shape: broadcast of the inputs."""
    p = alpha + 1.0
    value = -alpha * k + log_moment(p, *params) - torch.log(torch.abs(alpha * p))
    return torch.where(torch.isfinite(value), value, torch.full_like(value, math.inf))


def _saddle(
    k: torch.Tensor,
    maturity: torch.Tensor,
    v0: torch.Tensor,
    kappa: torch.Tensor,
    theta: torch.Tensor,
    sigma: torch.Tensor,
    rho: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``psi``, the log integrand at the origin (:func:`_log_integrand_at_origin`), over alpha
    on a coarse then a fine grid of ``y``, the log distance of alpha from its pole, or take Lewis'
    ``alpha = -1/2`` when its ``psi`` is within ``ln LEWIS_CANCELLATION`` of the saddle's (near the
    money, where the saddle may hug a pole). Return alpha and the width ``1 / sqrt(d^2 psi / dalpha^2)``
    (central difference).

    Grids run along the first dimension, (n, B), so that the elementwise kernels vectorise over the
    options.

    Shape:
        inputs (B,); outputs (B,).
    """
    params = (maturity, v0, kappa, theta, sigma, rho)
    lo, hi, n_coarse, n_fine = _ALPHA_GRID
    call = k >= 0

    def alpha_of(y: torch.Tensor) -> torch.Tensor:
        return torch.where(call, torch.exp(y), -1.0 - torch.exp(y))

    def psi(alpha: torch.Tensor) -> torch.Tensor:
        return _log_integrand_at_origin(alpha, k, *params)

    def best(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values = psi(alpha_of(y))
        index = values.argmin(0, keepdim=True)
        return y.gather(0, index), values.gather(0, index)

    def offsets(low: float, high: float, n: int) -> torch.Tensor:
        return torch.linspace(low, high, n, dtype=k.dtype, device=k.device)[:, None]

    step = (hi - lo) / (n_coarse - 1)
    y, _ = best(offsets(lo, hi, n_coarse) + torch.zeros_like(k))
    y, psi_saddle = best(y + offsets(-step, step, n_fine))  # (1, B) each
    psi_lewis = psi(torch.full_like(y, -0.5))
    lewis = psi_lewis - psi_saddle < math.log(LEWIS_CANCELLATION)
    alpha = torch.where(lewis, -0.5, alpha_of(y))
    h = 1e-3 * torch.where(lewis, 0.5, torch.exp(y))
    sides = psi(
        alpha + h * torch.tensor([[-2.0], [-1.0], [1.0], [2.0]], dtype=k.dtype, device=k.device)
    )
    centre = torch.where(lewis, psi_lewis, psi_saddle)
    curvature = ((sides[1:2] - 2.0 * centre + sides[2:3]) / (h * h))[0]
    # a grid minimum within h of the moment's explosion (psi infinite one side) took an infinite
    # curvature, a core of 1e-149 and a price of 1e-139 for 2.2e-5: a one-sided difference there
    backward = ((sides[0:1] - 2.0 * sides[1:2] + centre) / (h * h))[0]
    forward = ((centre - 2.0 * sides[2:3] + sides[3:4]) / (h * h))[0]
    curvature = torch.where(torch.isinf(sides[2]) & torch.isfinite(sides[0]), backward, curvature)
    curvature = torch.where(torch.isinf(sides[1]) & torch.isfinite(sides[3]), forward, curvature)
    # On Lewis' line the poles' curvature 1/alpha^2 + 1/(alpha+1)^2 = 8 says nothing about the extent
    # of the integrand: keep only the characteristic function's part there.
    curvature = torch.where(lewis[0], curvature - 8.0, curvature)
    curvature = torch.nan_to_num(curvature, nan=1.0, posinf=1e300).clamp_min(1e-300)
    return alpha[0], 1.0 / torch.sqrt(curvature)


def expected_total_variance(
    maturity: torch.Tensor, v0: torch.Tensor, kappa: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    """``E[int_0^T v dt] = theta T + (v0 - theta) (1 - exp(-kappa T)) / kappa``, the total variance
    of the Black-Scholes model nearest to Heston. Shape: broadcast of the inputs."""
    return theta * maturity + (v0 - theta) * (-torch.expm1(-kappa * maturity)) / kappa


def choose_contour(k: torch.Tensor, *params: torch.Tensor, compiled: bool = False) -> Contour:
    """The contour of each option from detached inputs. ``params = (T, v0, kappa, theta, sigma, rho)``;
    ``compiled`` fuses the whole choice with ``torch.compile`` (see :func:`_call`).

    The tail ray turns by the angle that makes the asymptotic integrand ``exp(-W z)``,
    ``W = c (sqrt(1 - rho^2) + i rho) + i k``, ``c = (v0 + kappa theta T) / sigma``, non-oscillating,
    limited so that the Gaussian part ``exp(-w z^2 / 2)`` cannot grow by more than ``e^5`` on it.

    Shape:
        k and params: (B,); each contour field: (B,).
    """
    with torch.no_grad():
        detached = (p.detach() for p in params)
        return Contour(*_call("contour", compiled, k.detach(), *detached))


def _contour_fields(
    k: torch.Tensor,
    maturity: torch.Tensor,
    v0: torch.Tensor,
    kappa: torch.Tensor,
    theta: torch.Tensor,
    sigma: torch.Tensor,
    rho: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The fields of :class:`Contour`, in order (see :func:`choose_contour`). Shape: all (B,)."""
    params = (maturity, v0, kappa, theta, sigma, rho)
    alpha, width = _saddle(k, *params)
    c_inf = (v0 + kappa * theta * maturity) / sigma
    decay = c_inf * torch.sqrt(1.0 - rho * rho)
    phase = c_inf * rho + k
    variance = expected_total_variance(maturity, v0, kappa, theta)
    gaussian_growth = 2.0 * decay * decay / variance
    limit = 0.5 * torch.acos(torch.clamp(-5.0 / gaussian_growth, -1.0, 1.0)).clamp(max=1.3)
    angle = torch.maximum(torch.minimum(-torch.atan(phase / decay), limit), -limit)
    tan_angle = torch.tan(angle)
    asymptotic = decay - tan_angle * phase
    return (
        alpha,
        CORE_WIDTHS * width,
        tan_angle,
        _tail_rate(asymptotic, width),
        gaussian_growth < 36.0,
        _control_variance(alpha, params),
        asymptotic * (CORE_WIDTHS * width) < ALGEBRAIC_TAIL,
    )


ALGEBRAIC_TAIL = 1.0
"""Options whose integrand's asymptotic decay rate on the tail ray, times the core's length ``L``,
is below this get the geometric tail panels (:data:`LOG_TAIL_PANELS`): past the core the integrand
is then ``~ 1 / z^2`` for decades of ``|z|`` before ``exp(-W z)`` cuts it off, which no
Gauss-Laguerre rate integrates. At the money with a tiny variance and a large vol of vol (``v0 =
theta = 1e-6``, ``sigma = 2``, ``kappa = 10``, 3 months: ``W L ~ 1e-4``), the Laguerre tail gave
0.111 for 6.4e-4 (spot 100), or negative prices, unchanged as its nodes doubled."""
LOG_TAIL_PANELS = 48
"""Gauss-Legendre panels of the algebraic tail, ``|z|`` doubling on each (``L`` to ``2^48 L``):
uniform in ``ln |z|``, on which ``integrand * |z|`` is smooth and ``~ 1 / |z|``; what lies past
the last is below ``2^-48`` of the tail."""

TAIL_MIX = 0.25
"""Weight of the local decay rate at the core's end in the (log) Gauss-Laguerre rate of the tail ray."""


def _tail_rate(asymptotic: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Gauss-Laguerre rate of the tail ray: the asymptotic decay rate of the integrand, pulled towards
    the faster local rate ``CORE_WIDTHS / width`` at the core's end (heavy-tailed, small-``v0`` cases
    decay fast there and slowly only far out)."""
    local = torch.maximum(CORE_WIDTHS / width, asymptotic)
    return asymptotic ** (1.0 - TAIL_MIX) * local**TAIL_MIX


def _control_variance(alpha: torch.Tensor, params: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Andersen-Piterbarg's optimal control-variate variance ``w = -8 ln phi(-i/2)``, for which the
    Black-Scholes integrand equals Heston's at the origin of Lewis' line; 0 off that line."""
    half = torch.full_like(alpha, -0.5)
    variance = -8.0 * log_characteristic((torch.zeros_like(alpha), half), *params)[0]
    return torch.where(alpha == -0.5, variance.clamp_min(1e-300), torch.zeros_like(alpha))


@functools.lru_cache(maxsize=16)
def _nodes(
    kind: str, n: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "legendre":
        x, w = roots_legendre(n)
        x, w = 0.5 * (x + 1.0), 0.5 * w
    elif kind == "geometric":
        x, w = _geometric_panels(n)
    else:
        x, w = roots_laguerre(n)
        # integrate f directly: sum w e^x f(x). Past ~180 nodes the largest x exceed 709, where
        # e^x overflows while w underflows to 0: such a node weighs nothing (its f ~ e^-x).
        with np.errstate(divide="ignore"):
            w = np.exp(np.log(w) + x)
    # ordinary tensors even when first asked for in inference mode: the cache outlives it, and
    # autograd (greeks) refuses inference tensors
    with torch.inference_mode(False):
        return (torch.tensor(x, dtype=dtype, device=device),
                torch.tensor(w, dtype=dtype, device=device))  # fmt: skip


def _geometric_panels(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``x`` and weights of :data:`LOG_TAIL_PANELS` Gauss-Legendre panels in ``s = ln(1 +
    x)`` of ``s``-length ``ln 2`` each, ``max(4, n // 4)`` nodes on each (``n`` the Gauss-Laguerre
    count it replaces), for ``int_0^inf f(x) dx ~ sum w f(x)``."""
    per_panel = max(4, n // 4)
    s, w = roots_legendre(per_panel)
    step = math.log(2.0)
    s = (0.5 * (s + 1.0) + np.arange(LOG_TAIL_PANELS)[:, None]) * step  # (panels, per_panel)
    w = np.broadcast_to(0.5 * step * w, s.shape)
    return np.expm1(s).ravel(), (w * np.exp(s)).ravel()


def _integrand(
    z: Cx, k: torch.Tensor, params: tuple[torch.Tensor, ...], cv_variance: torch.Tensor | None
) -> Cx:
    """``exp(-i z k) (phi(z - i) - phi_BS(z - i)) / (z (z - i))``; ``phi_BS = 0`` where the control
    variate is off (``cv_variance = 0``, or ``None`` for all: its exponential is then skipped).

    Shape:
        broadcast of the inputs.
    """
    shifted = (z[0], z[1] - 1.0)
    zz = _square_plus_iz(shifted)
    log_phi = _log_characteristic(shifted, zz, *params)
    phase = (z[1] * k, -z[0] * k)
    value = cexp(cadd(log_phi, phase))
    if cv_variance is not None:
        exponent = cadd(cscale(zz, -0.5 * cv_variance), phase)
        # off (cv_variance = 0): exp(-inf) = 0, not 0 * exp(phase), which far tail nodes
        # overflow to 0 * inf = NaN when options with and without the control share a pass
        off = torch.full_like(exponent[0], -math.inf)
        black = cexp((torch.where(cv_variance > 0, exponent[0], off), exponent[1]))
        value = (value[0] - black[0], value[1] - black[1])
    return cdiv(value, cmul(z, shifted))


def _panel_sum(
    k: torch.Tensor,
    maturity: torch.Tensor,
    v0: torch.Tensor,
    kappa: torch.Tensor,
    theta: torch.Tensor,
    sigma: torch.Tensor,
    rho: torch.Tensor,
    cv_variance: torch.Tensor,
    start: torch.Tensor,
    alpha: torch.Tensor,
    tan_angle: torch.Tensor,
    scale: torch.Tensor,
    divisor: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
) -> torch.Tensor:
    """One panel's unscaled quadrature sum ``sum_j w_j Re[(1 + i tan_angle) f(z_j)]`` on the ray
    ``z_j = start - i alpha + v_j (1 + i tan_angle)``, ``v_j = x_j scale / divisor``; ``f`` is
    :func:`_integrand`. The compiled kernel of :func:`otm_integral`: the nodes are formed inside it
    (``scale, divisor`` are ``length, 1`` on the core and ``1, rate`` on the tail, rounded as
    ``x length`` and ``x / rate``), and both panels share its one compilation.

    Shape:
        the per-option inputs (B, 1); nodes and weights (N,); output (B,).
    """
    v = x * scale / divisor
    f = _integrand(
        (start + v, v * tan_angle - alpha), k, (maturity, v0, kappa, theta, sigma, rho), cv_variance
    )
    return ((f[0] - tan_angle * f[1]) * w).sum(-1)


def _contour_sums(
    k: torch.Tensor,
    maturity: torch.Tensor,
    v0: torch.Tensor,
    kappa: torch.Tensor,
    theta: torch.Tensor,
    sigma: torch.Tensor,
    rho: torch.Tensor,
    cv_variance: torch.Tensor,
    alpha: torch.Tensor,
    length: torch.Tensor,
    tan_angle: torch.Tensor,
    rate: torch.Tensor,
    core_x: torch.Tensor,
    core_w: torch.Tensor,
    tail_x: torch.Tensor,
    tail_w: torch.Tensor,
    control: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscaled quadrature sums of the core panel, ``sum_j core_w_j Re f(u_j - i alpha)`` with
    ``u_j = length core_x_j``, and of the tail ray, ``sum_j tail_w_j Re[(1 + i tan_angle) f(z_j)]``
    with ``z_j = length - i alpha + v_j (1 + i tan_angle)``, ``v_j = tail_x_j / rate``, from one
    eager evaluation of :func:`_integrand` on all nodes (half the kernel launches of one per panel,
    which dominate small batches); without the control variate where ``control`` is false (no option
    on Lewis' line).

    Shape:
        the per-option inputs (B, 1); nodes and weights (N1,) and (N2,); outputs (B,) each.
    """
    u = core_x * length
    v = tail_x / rate
    zr = torch.cat((u, length + v), -1)
    zi = torch.cat(((-alpha).expand_as(u), v * tan_angle - alpha), -1)  # (B, N1 + N2)
    params = (maturity, v0, kappa, theta, sigma, rho)
    f = _integrand((zr, zi), k, params, cv_variance if control else None)
    n = len(core_x)
    core = (f[0][:, :n] * core_w).sum(-1)
    tail = ((f[0][:, n:] - tan_angle * f[1][:, n:]) * tail_w).sum(-1)
    return core, tail


_EAGER: dict[str, Callable[..., Any]] = {
    "panel": _panel_sum,
    "contour": _contour_fields,
}
_COMPILED: dict[str, Callable[..., Any]] = {}


def _call(name: str, compiled: bool, *args: torch.Tensor) -> Any:
    """Run the kernel ``name`` (a quadrature panel or the contour choice) eagerly or, with
    ``compiled``, fused by ``torch.compile`` (several times faster on CPU once compiled; the first
    call compiles: about a minute with a cold inductor cache, a few seconds with a warm one). Falls
    back to the eager kernel, with a warning, where compilation fails (e.g. no C++ compiler)."""
    if compiled and "failed" not in _COMPILED:
        try:
            if name not in _COMPILED:
                _COMPILED[name] = torch.compile(_EAGER[name], dynamic=True)
            return _COMPILED[name](*args)
        except RuntimeError as error:  # torch._dynamo's backend errors derive from RuntimeError
            warnings.warn(f"torch.compile failed, using eager kernels: {error}", stacklevel=3)
            _COMPILED["failed"] = _EAGER[name]
    return _EAGER[name](*args)


EAGER_CHUNK = 512
"""Options per eager pass of the quadrature on CPU: keeps its (options, nodes) temporaries small and
in cache (1.1-2x faster than 8192 options at once, whose large temporaries the allocator often maps
and page-faults afresh)."""


def otm_integral(
    k: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    contour: Contour,
    core_nodes: int,
    tail_nodes: int,
    compiled: bool = False,
) -> torch.Tensor:
    """Out-of-the-money price over ``D F`` (call if ``k >= 0``, else put) by quadrature on ``contour``;
    ``compiled`` runs the integrand through ``torch.compile`` (see :func:`_call`).

    Where the contour has no tail (``use_tail`` false), the tail's nodes collapse onto the end of the
    core (a finite integrand) with zero weight.

    Shape:
        k, params, contour fields: (B,); output: (B,).
    """
    return in_two_passes(
        contour.log_tail, k, params, contour,
        lambda k, p, c, geometric: _otm_integral(k, p, c, core_nodes, tail_nodes, compiled,
                                                 "geometric" if geometric else "laguerre"),
    )  # fmt: skip


def in_two_passes(
    flagged: torch.Tensor,
    k: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    contour: Contour,
    integral: Callable[[torch.Tensor, tuple[torch.Tensor, ...], Contour, bool], torch.Tensor],
) -> torch.Tensor:
    """``integral(k, params, contour, flag)`` of the options not ``flagged`` (``flag`` False)
    and of the flagged ones (True), a pass each, put back in order
    (:func:`pricing._special.piecewise`; one call where all are alike).

    Shape:
        flagged, k, params, contour fields: (B,); output: (B,).
    """
    n = len(params)

    def one_pass(flag: bool) -> Callable[..., torch.Tensor]:
        return lambda k, *fields: integral(k, fields[:n], Contour(*fields[n:]), flag)

    return piecewise(flagged.long(), (one_pass(False), one_pass(True)), k, *params, *contour)


def _otm_integral(
    k: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    contour: Contour,
    core_nodes: int,
    tail_nodes: int,
    compiled: bool,
    tail: str,
) -> torch.Tensor:
    """:func:`otm_integral` with one kind of ``tail`` nodes for all options: ``"laguerre"``, ray
    parameter ``v = x / tail_rate``, or ``"geometric"`` (:func:`_geometric_panels`), ``v = x L``,
    ``L`` the core's length (a rate of ``1 / L``).

    Shape:
        k, params, contour fields: (B,); output: (B,).
    """
    nodes = (
        *_nodes("legendre", core_nodes, k.dtype, k.device),
        *_nodes(tail, tail_nodes, k.dtype, k.device),
    )
    cv, length = contour.cv_variance, contour.core_length
    rate = 1.0 / length if tail == "geometric" else contour.tail_rate
    rate = torch.where(contour.use_tail, rate, math.inf)
    fields = (k, *params, cv, contour.alpha, length, contour.tan_angle, rate)
    if compiled:
        sums = _compiled_sums(fields, nodes)
    else:
        sums = _eager_sums(fields, nodes, cv > 0)
    integral = sums[0] * length + sums[1] / rate
    return _control_price(k, cv) - integral / math.pi


def _compiled_sums(
    fields: tuple[torch.Tensor, ...], nodes: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sums of :func:`_contour_sums` by the compiled :func:`_panel_sum`, one call per panel.

    Shape:
        fields: the per-option arguments of :func:`_contour_sums`, (B,) each; outputs: (B,) each.
    """
    *head, alpha, length, tan_angle, rate = fields
    origin, flat, one = torch.zeros_like(length), torch.zeros_like(length), torch.ones_like(length)
    # all arguments distinct (B, 1) views: aliased ones, or a view where the other call has a plain
    # tensor, would compile a second graph
    core = (*head, origin, alpha, flat, length, one)
    tail = (*head, length, alpha, tan_angle, one, rate)
    return (
        _call("panel", True, *(f[:, None] for f in core), *nodes[:2]),
        _call("panel", True, *(f[:, None] for f in tail), *nodes[2:]),
    )


def _eager_sums(
    fields: tuple[torch.Tensor, ...], nodes: tuple[torch.Tensor, ...], on: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_contour_sums` run eagerly, on CPU in passes of ``EAGER_CHUNK`` options with those on
    Lewis' line (``on``) first, so that passes without any skip the control variate.

    Shape:
        fields: the per-option arguments of :func:`_contour_sums`, (B,) each; on: (B,); outputs:
        (B,) each.
    """
    cpu = on.device.type == "cpu"
    step = EAGER_CHUNK if cpu else max(len(on), 1)
    order = torch.argsort(~on, stable=True) if len(on) > step else None
    if order is not None:
        fields = tuple(f[order] for f in fields)
    n_on = int(on.sum()) if cpu else len(on)  # no host sync on accelerators
    pieces = []
    for start in range(0, max(len(on), 1), step):
        columns = tuple(f[start : start + step, None] for f in fields)
        pieces.append(_contour_sums(*columns, *nodes, control=start < n_on))
    sums = tuple(torch.cat(s) for s in zip(*pieces, strict=True))
    if order is not None:
        inverse = torch.argsort(order)
        sums = tuple(s[inverse] for s in sums)
    return sums[0], sums[1]


def _control_price(k: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """Black-Scholes OTM price over ``D F`` with total variance ``variance`` (0 where it is 0): the
    residue of Lewis' line plus the control variate's integral, in closed form."""
    on = variance > 0
    total_vol = torch.sqrt(torch.where(on, variance, torch.ones_like(variance)))
    # -|k|, with the call side's slope at k = 0 (where the caller prices the call as OTM):
    # abs() has a zero gradient there, which made the at-the-money delta wrong by 0.5.
    value = normalized_call(torch.where(k >= 0, -k, k), total_vol) * torch.exp(0.5 * k)
    return torch.where(on, value, torch.zeros_like(value))
