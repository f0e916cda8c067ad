"""Heston surface pricing for calibration: one characteristic-function grid per expiry.

Lewis' (2001) formula prices every strike of an expiry from the same values of the characteristic
function, so a surface of M expiries and N quotes costs M * J characteristic-function evaluations
(J quadrature nodes) instead of N * J. With ``X = ln(S_T / F)``, ``phi(z) = E[exp(i z X)]`` and
``k = ln(K / F)``, the out-of-the-money price over ``D sqrt(F K)`` is

    b(k) = exp(-|k| / 2) - 1/pi int_0^inf Re[exp(-i u k) phi(u - i/2)] / (u^2 + 1/4) du,

integrated by Gauss-Legendre on ``[0, U]`` with ``U`` chosen per expiry (without gradient) where the
integrand has decayed below machine precision, with as many nodes as the oscillation of the integrand
asks for (:func:`node_counts`: 128 for most surfaces, up to 2048 for wide smiles of short, low-variance
expiries). Where ``U`` would exceed :data:`CORE_LIMIT` (at the money, tiny variance, large vol of
vol: the integrand is ``~ 1 / u^2`` for decades), the core ends at :data:`TAIL_START` and panels
that double in length, shared by the expiry's strikes, integrate the rest with Filon weights per
strike (:func:`_tail`; capped at 1e4 without them, the at-the-money price was 38% off at ``v0 =
theta = 1e-5``, ``sigma = 2``). A Black-Scholes control variate of Heston's expected total
variance ``w`` is subtracted under the integral and its price added back in closed form, which
removes the peak of ``1 / (u^2 + 1/4)`` at ``u = 0`` (too narrow for the nodes when ``U`` runs to
thousands: 256 nodes then gave prices off by hundreds of bp, or negative) and the cancellation in
``exp(-|k|/2) - integral / pi``.
Checked against :func:`pricing.heston.price` on 2-day to 5-year smiles over 324 parameter sets: within
0.011 bp on 7-day to 1-year smiles of moneyness 0.8-1.2 (prices above 1e-6 of the forward); off by
more only at extremes such as vol-of-vol 2 on a long-run variance of 0.005. The exact Jacobian with
respect to the five Heston parameters is written out by the chain rule on the same grid
(:func:`_phi_and_tangent`): about twice the cost of the prices, a third of what reverse-mode autograd
took; the control, of detached parameters, has none.

References:
    A. Lewis (2001), "A simple option formula for general jump-diffusion and other exponential Levy
    processes", eq. (2.10) (the ``u - i/2`` contour).
    Y. Cui, S. del Bano Rollin, G. Germano (2017), "Full and fast calibration of the Heston stochastic
    volatility model", Eur. J. Oper. Res. 263(2): calibration with exact gradients of a quadrature
    shared across strikes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.special import eval_legendre, roots_legendre, spherical_jn

from pricing._complex import cadd, cexp, cinv, cmul, cscale
from pricing._heston_fourier import (
    _square_plus_iz,
    expected_total_variance,
    little_trap_terms,
    log_characteristic,
)
from pricing._special import ndtr

__all__ = [
    "MAX_NODES",
    "SurfaceGrid",
    "gaussian_limit",
    "node_counts",
    "normalized_otm",
    "normalized_otm_and_jacobian",
    "scan_otm",
    "upper_limits",
]

_DECAY = 38.0  # integrate until the integrand is below exp(-38) ~ 3e-17 of its size at 0
CORE_LIMIT = 1e4
"""Largest ``U`` of the Gauss-Legendre core. Where the integrand lasts longer (at the money, tiny
variance, large vol of vol), the core ends at :data:`TAIL_START` and the panels of :func:`_tail`
take over: its uniform nodes would miss both the structure near the origin and the ``~ 1 / u^2``
tail (whose integral, ``~ 1 / U``, exceeds the at-the-money price)."""
TAIL_REMAINDER = 1e-11
"""What the integral past :data:`CORE_LIMIT` may be (of ``D sqrt(F K)``) for the core to stop
there without a tail: 0.01 bp of vol needs 1e-9 on a normalised vega of 1e-3."""
TAIL_START = 64.0
"""End of the core where the tail panels take over."""
TAIL_NODES = 16
"""Gauss-Legendre nodes per tail panel."""
TAIL_STEP = 4.0
"""Largest change of the exponent of ``phi`` (``|W| h``, ``W`` its asymptotic rate) or of the
control's (``w u h``) over a tail panel of length ``h``: 16 nodes interpolate that to ~1e-13."""
MAX_TAIL_PANELS = 512
"""Most tail panels per expiry (``rho`` near +-1 on a tiny variance needs a few hundred)."""
MAX_NODES = 2048
"""Most Gauss-Legendre nodes per expiry (:func:`node_counts`); more only add rounding."""
_GROUP_ABOVE = 2**14
"""Grid points (surfaces x expiries x nodes) above which surfaces are priced in groups of one node
count; below, one evaluation with the largest count costs less than several small ones."""


@functools.lru_cache(maxsize=8)
def _legendre(n: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, w = roots_legendre(n)
    with torch.inference_mode(False):  # ordinary tensors: the cache outlives an inference mode
        return (torch.tensor(0.5 * (x + 1.0), dtype=dtype, device=device),
                torch.tensor(0.5 * w, dtype=dtype, device=device))  # fmt: skip


class SurfaceGrid:
    """Quotes of B surfaces laid out per expiry: ``maturity`` (B, M) and log-moneyness ``k``
    (B, M, Q), Q quotes per expiry (padded); at least J quadrature nodes per expiry."""

    def __init__(self, maturity: torch.Tensor, k: torch.Tensor, nodes: int) -> None:
        self.maturity, self.k, self.nodes = maturity, k, nodes

    def select(self, index: torch.Tensor) -> SurfaceGrid:
        """The surfaces ``index`` (B',)."""
        return SurfaceGrid(self.maturity[index], self.k[index], self.nodes)


def upper_limits(grid: SurfaceGrid, params: torch.Tensor) -> torch.Tensor:
    """Truncation ``U`` of the Gauss-Legendre core per expiry, shape (B, M), from detached params
    (B, 5): :func:`_decay_limits`, or :data:`TAIL_START` where that exceeds :data:`CORE_LIMIT`
    (:func:`_tail` integrates the rest)."""
    return _core_limits(_decay_limits(grid, params))


def _core_limits(limit: torch.Tensor) -> torch.Tensor:
    """:func:`upper_limits` from :func:`_decay_limits` (any shape)."""
    return torch.where(limit > CORE_LIMIT, TAIL_START, limit)


def _decay_limits(grid: SurfaceGrid, params: torch.Tensor, *, tail: bool = False) -> torch.Tensor:
    """Where the integrand has decayed, per expiry, shape (B, M), from detached params (B, 5).

    The integrand is about ``exp(-w u^2 / 2) / u^2`` near the origin (``w`` the expected total
    variance) and ``exp(-c u) / u^2`` far out (``c = (v0 + kappa theta T) sqrt(1 - rho^2) / sigma``,
    Andersen and Lake 2018, section 3.3); ``U`` is where the slower of the two reaches exp(-38).
    With ``tail``, where what lies past ``U`` (``exp(-c U) / (c U^2)``, ``c`` below 1; about
    ``exp(-w U^2 / 2) / (w U^3)``) does: the end of the tail panels, which reach it cheaply (a
    ``c`` of 5e-7 left 4e-6 of a 3e-6 price past the first ``U``).
    """
    v0, kappa, theta, sigma, rho = (p.unsqueeze(-1) for p in params.detach().unbind(-1))
    t = grid.maturity
    variance = expected_total_variance(t, v0, kappa, theta)
    rate = ((v0 + kappa * theta * t) / sigma * torch.sqrt(1 - rho * rho)).clamp(min=1e-12)
    decay = _DECAY - torch.log(rate.clamp(max=1)) if tail else _DECAY
    exponential = decay / rate
    for _ in range(3):  # fixed point of c U + 2 ln U = D
        exponential = (decay - 2 * torch.log(exponential).clamp(min=0)).clamp(min=1) / rate
    limit = torch.maximum(gaussian_limit(variance / 2 if tail else variance), exponential)
    if tail:
        return limit
    # Past CORE_LIMIT the integral is below exp(-c U) / (c U^2) and about exp(-w U^2 / 2) /
    # (w U^3): where both are negligible the core stops there and no tail is needed (rho near
    # -+1 pushed U past the cap with a remainder of 1e-12 of the forward, and the tail's
    # per-strike weights made a fit racing such starts 20% slower)
    u, w = CORE_LIMIT, variance.clamp(min=1e-300)
    remainder = torch.maximum(-rate * u - torch.log(rate) - 2 * math.log(u),
                              -0.5 * w * u * u - torch.log(w) - 3 * math.log(u))  # fmt: skip
    return torch.where(remainder < math.log(TAIL_REMAINDER), limit.clamp(max=CORE_LIMIT), limit)


def gaussian_limit(variance: torch.Tensor) -> torch.Tensor:
    """Truncation ``U`` of an integrand ``exp(-w u^2 / 2) / u^2`` of total variance ``w``
    (any shape): the fixed point of ``w U^2 / 2 + 2 ln U = 38``."""
    variance = variance.clamp(min=1e-12)
    gaussian = torch.sqrt(2 * _DECAY / variance)
    for _ in range(3):
        gaussian = torch.sqrt(2 * (_DECAY - 2 * torch.log(gaussian).clamp(min=0)) / variance)
    return gaussian


def _phi_grid(grid: SurfaceGrid, params: torch.Tensor, u: torch.Tensor) -> tuple:
    """``phi(u - i/2)`` on the grid ``(B, M, J)``; params (B, 5)."""
    v0, kappa, theta, sigma, rho = params[:, None, None, :].unbind(-1)
    t = grid.maturity.unsqueeze(-1)
    log_phi = log_characteristic((u, torch.full_like(u, -0.5)), t, v0, kappa, theta, sigma, rho)
    return cexp(log_phi)


def _integrate(grid: SurfaceGrid, u: torch.Tensor, w: torch.Tensor, values: tuple) -> torch.Tensor:
    """``sum_j w_j Re[exp(-i u_j k) v_j]`` per quote: v (B, M, J) or (B, M, J, P) -> (B, M*Q[, P])."""
    phase = u.unsqueeze(2) * grid.k.unsqueeze(-1)  # (B, M, Q, J)
    re, im = values
    if re.dim() == 3:
        re, im = re.unsqueeze(-1), im.unsqueeze(-1)
    # the weights go on the values (B, M, J, P), smaller than the phase factors (B, M, Q, J)
    weight = w.unsqueeze(-1)
    out = torch.cos(phase) @ (weight * re) + torch.sin(phase) @ (weight * im)  # (B, M, Q, P)
    out = out.reshape(out.shape[0], -1, out.shape[-1])
    return out if values[0].dim() == 4 else out.squeeze(-1)


def node_counts(grid: SurfaceGrid, params: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Gauss-Legendre nodes per surface for params (B, 5) with truncations ``upper`` (B, M): powers
    of two from ``grid.nodes`` to :data:`MAX_NODES` (one for all expiries of a surface), shape (B,).

    The integrand ``exp(-i u k) (phi - phi_BS)(u - i/2) / (u^2 + 1/4)`` oscillates with a phase
    that grows like ``u (|k| + (v0 + kappa theta T) |rho| / sigma)``; 64 nodes and 0.3 per radian
    over ``[0, U]`` resolve it (0.15 per radian loses accuracy; 0.6 gains none). Short expiries of
    low variance have ``U`` in the thousands.
    """
    v0, kappa, theta, sigma, rho = (p.unsqueeze(-1) for p in params.detach().unbind(-1))
    phase = (v0 + kappa * theta * grid.maturity) * rho.abs() / sigma  # (B, M)
    k_max = grid.k.abs().amax(-1)
    need = 64.0 + 0.3 * upper * (k_max + phase)
    need = need.nan_to_num(0.0).amax(-1).clamp(min=grid.nodes, max=max(grid.nodes, MAX_NODES))
    return (2.0 ** torch.log2(need).ceil()).long().clamp(max=max(grid.nodes, MAX_NODES))


def _nodes(grid: SurfaceGrid, upper: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` nodes ``u`` and weights ``w / (u^2 + 1/4)`` per expiry on ``[0, upper]``, shape
    (B, M, J) for ``upper`` (B, M) (or (1, M, J) for (1, M))."""
    x, w = _legendre(count, grid.k.dtype, str(grid.k.device))
    upper = upper.unsqueeze(-1)
    u = x * upper
    return u, w * upper / (u * u + 0.25)


def _per_node_count(
    fn: Callable[..., tuple[torch.Tensor, ...]], grid: SurfaceGrid, params: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """``fn(grid, params, u, w, tail)`` (tensors with leading dim B) with each surface's nodes
    and tail (:func:`_tail`): surfaces with a tail are evaluated apart from the others (its
    per-strike weights cost ~30 ms for a race of 16 starts, most of which had none), and on
    large grids, surfaces of one node count together; the groups are put back in order."""
    limit = _decay_limits(grid, params)
    upper = _core_limits(limit)
    counts = node_counts(grid, params, upper)
    tailed = (limit > upper).any(-1)  # (B,)
    if not bool(tailed.any()):  # a host sync, as the node counts'
        return _per_count(fn, grid, params, upper, counts, None)
    parts = []
    for flag, with_tail in ((~tailed, False), (tailed, True)):
        rows = torch.nonzero(flag).squeeze(-1)
        if len(rows):
            tails = limit[rows] if with_tail else None  # the others take no tail at all
            sub, limits = grid.select(rows), (upper[rows], counts[rows], tails)
            parts.append((rows, _per_count(fn, sub, params[rows], *limits)))
    return _in_order(parts)


def _per_count(
    fn: Callable[..., tuple[torch.Tensor, ...]],
    grid: SurfaceGrid,
    params: torch.Tensor,
    upper: torch.Tensor,
    counts: torch.Tensor,
    limit: torch.Tensor | None,
) -> tuple[torch.Tensor, ...]:
    """:func:`_per_node_count` of surfaces with core limits ``upper`` (B, M) and node counts
    ``counts`` (B,), with tails to ``limit`` (B, M) (None: no tail)."""

    def tail(rows: torch.Tensor) -> Tail | None:
        if limit is None:
            return None
        return _tail(grid.select(rows), params[rows], upper[rows], limit[rows])

    distinct = torch.unique(counts).tolist()
    if len(distinct) == 1 or counts.numel() * upper.shape[-1] * distinct[-1] <= _GROUP_ABOVE:
        nodes = _nodes(grid, upper, distinct[-1])  # the largest for all
        return fn(grid, params, *nodes, tail(torch.arange(len(params), device=params.device)))
    parts = []
    for count in distinct:
        rows = torch.nonzero(counts == count).squeeze(-1)
        sub = grid.select(rows)
        parts.append((rows, fn(sub, params[rows], *_nodes(sub, upper[rows], count), tail(rows))))
    return _in_order(parts)


def _in_order(parts: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]]) -> tuple:
    """Outputs of groups of surfaces ``(rows (B',), outputs)`` put back in surface order."""
    inverse = torch.argsort(torch.cat([rows for rows, _ in parts]))
    outputs = [out for _, out in parts]
    return tuple(torch.cat(group)[inverse] for group in zip(*outputs, strict=True))


Tail = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Tail nodes ``u`` (B, M, T) and the real and imaginary parts' weights (B, M, Q, T)."""


def _tail(
    grid: SurfaceGrid, params: torch.Tensor, upper: torch.Tensor, limit: torch.Tensor
) -> Tail:
    """Nodes and per-quote weights of the integral past ``upper`` (B, M) (:func:`upper_limits`)
    where ``limit`` (:func:`_decay_limits`) lies beyond it, to the tail's own decay limit
    (surfaces with at least one such expiry: :func:`_per_node_count` groups them; zero-length
    panels elsewhere).

    Past the core, the integrand of a tiny variance and a large vol of vol is still ``~ 1 /
    u^2`` (its integral, ``~ 1 / CORE_LIMIT``, exceeds the at-the-money price) and ``exp(-i u k)``
    turns too often for shared nodes. On panels of :func:`_tail_panels` (``TAIL_NODES``
    Gauss-Legendre nodes each, shared by the expiry's strikes) Filon's rule integrates that factor
    exactly against the polynomial through the rest of the integrand: with ``u = m + h x``, ``int
    exp(-i u k) l_j(u) du = h exp(-i m k) w_j sum_n (2n + 1) (-i)^n j_n(h k) P_n(x_j)`` for the
    Lagrange polynomial ``l_j`` of node ``x_j`` (weight ``w_j``; ``j_n`` spherical Bessel). The
    weights depend only on the detached limits, so the Jacobian stays exact.

    References:
        L. N. G. Filon (1928), "On a quadrature formula for trigonometric integrals", Proc. R.
        Soc. Edinburgh 49. DLMF 10.60.7 (``exp(i z x) = sum (2n + 1) i^n j_n(z) P_n(x)``).
    """
    v0, kappa, theta, sigma, _ = (p.unsqueeze(-1) for p in params.detach().unbind(-1))
    rate = (v0 + kappa * theta * grid.maturity) / sigma  # |W| of phi ~ exp(-W u)
    variance = _control_variance(grid, params)
    end = torch.where(limit > upper, _decay_limits(grid, params, tail=True), upper)
    start, length = _tail_panels(*(x.cpu().numpy() for x in (upper, end, rate, variance)))
    x, w = roots_legendre(TAIL_NODES)
    degree = np.arange(TAIL_NODES)
    basis = ((2 * degree + 1) * (-1j) ** degree)[:, None] * eval_legendre(degree[:, None], x) * w
    half, centre = 0.5 * length[:, :, None, :], (start + 0.5 * length)[:, :, None, :]
    k = grid.k.detach().cpu().numpy()[..., None]  # (B, M, Q, 1)
    bessel = spherical_jn(degree, (half * k)[..., None])  # (B, M, Q, P, N)
    weight = (half * np.exp(-1j * centre * k))[..., None] * (bessel @ basis)  # (B, M, Q, P, N)
    u = (centre[:, :, 0, :, None] + half[:, :, 0, :, None] * x).reshape(*limit.shape, -1)
    weight = weight.reshape(*k.shape[:-1], -1) / (u * u + 0.25)[:, :, None, :]
    as_tensor = functools.partial(torch.as_tensor, dtype=grid.k.dtype, device=grid.k.device)
    return as_tensor(u), as_tensor(weight.real), as_tensor(-weight.imag)


def _tail_panels(
    upper: np.ndarray, limit: np.ndarray, rate: np.ndarray, variance: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the tail panels from ``upper`` to ``limit``, shapes (B, M, P),
    for expiries (B, M) whose ``phi`` decays like ``exp(-W u)``, ``|W| = rate``, and whose
    control has total variance ``variance``: doubling ``u`` on each while ``|W| h`` and, where
    the control lives, ``w u h`` stay below ``TAIL_STEP`` (zero lengths past ``limit``)."""
    gaussian = gaussian_limit(torch.as_tensor(variance)).numpy()
    at = upper
    starts, lengths = [], []
    while (at < limit).any() and len(starts) < MAX_TAIL_PANELS:
        step = np.minimum(at, TAIL_STEP / rate)
        step = np.where(at < gaussian, np.minimum(step, 0.5 * TAIL_STEP / (variance * at)), step)
        step = np.where(at < limit, step, 0.0)
        starts.append(at)
        lengths.append(step)
        at = at + step
    return np.stack(starts, -1), np.stack(lengths, -1)


def _quadrature(
    grid: SurfaceGrid, u: torch.Tensor, w: torch.Tensor, tail: Tail | None, values: tuple
) -> torch.Tensor:
    """The core's :func:`_integrate` of ``values`` on the nodes ``u`` and then the tail's
    (B, M, J + T[, P]) plus the tail's Filon sums, (B, M*Q[, P])."""
    n = u.shape[-1]
    out = _integrate(grid, u, w, tuple(v[:, :, :n] for v in values))
    if tail is None:
        return out
    re, im = (v[:, :, n:] for v in values)
    if re.dim() == 3:
        re, im = re.unsqueeze(-1), im.unsqueeze(-1)
    extra = tail[1] @ re + tail[2] @ im  # (B, M, Q, P)
    return out + extra.reshape(out.shape)


def normalized_otm(grid: SurfaceGrid, params: torch.Tensor) -> torch.Tensor:
    """Out-of-the-money prices over ``D sqrt(F K)``, shape (B, M*Q), for params (B, 5).

    Examples:
        >>> grid = SurfaceGrid(torch.tensor([[1.0]], dtype=torch.float64),
        ...                    torch.tensor([[[0.0]]], dtype=torch.float64), 96)
        >>> params = torch.tensor([[0.04, 4.0, 0.25, 1.0, -0.5]], dtype=torch.float64)
        >>> b = normalized_otm(grid, params)
        >>> bool(0.0 < b[0, 0] < 0.5)
        True
    """
    return _per_node_count(_prices, grid, params)[0]


def scan_otm(grid: SurfaceGrid, points: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """:func:`normalized_otm` of P parameter sets on each of S surfaces, shape (S, M*Q, P), for
    points (P, 5) (the same on every surface) or (S, P, 5): the sets of a surface share its nodes
    (``grid.nodes`` per expiry on ``[0, upper]``, ``upper`` (S, M)) and their ``exp(-i u k)``
    factors, a cheap scan accurate only where ``upper`` suits the set.

    Examples:
        >>> grid = SurfaceGrid(torch.tensor([[1.0]], dtype=torch.float64),
        ...                    torch.tensor([[[0.0]]], dtype=torch.float64), 96)
        >>> points = torch.tensor([[0.04, 4.0, 0.25, 1.0, -0.5]], dtype=torch.float64)
        >>> upper = upper_limits(grid, points)
        >>> bool(torch.allclose(scan_otm(grid, points, upper)[..., 0], normalized_otm(grid, points)))
        True
    """
    u, w = _nodes(grid, upper, grid.nodes)  # (S, M, J)
    if points.dim() == 3:  # per surface: (S, 1, 1, P) each
        points = points[:, None, None]
    v0, kappa, theta, sigma, rho = points.unbind(-1)  # (P,) each, against (S, M, J, 1) below
    t = grid.maturity[:, :, None, None]
    u_p = u.unsqueeze(-1)
    re, im = cexp(log_characteristic((u_p, torch.full_like(u_p, -0.5)), t, v0, kappa, theta,
                                     sigma, rho))  # fmt: skip
    variance = expected_total_variance(t, v0, kappa, theta).clamp(min=1e-12)  # (S, M, 1, P)
    control = torch.exp(-0.5 * variance * (u_p * u_p + 0.25))
    integral = _integrate(grid, u, w, (re - control, im))  # (S, M*Q, P)
    price = _black_otm(-grid.k.abs().unsqueeze(-1), variance.sqrt())  # (S, M, Q, P)
    return price.reshape(integral.shape) - integral / math.pi


def _prices(
    grid: SurfaceGrid, params: torch.Tensor, u: torch.Tensor, w: torch.Tensor, tail: Tail | None
) -> tuple:
    variance = _control_variance(grid, params)
    nodes = _with_tail(u, tail)
    re, im = _phi_grid(grid, params, nodes)
    integral = _quadrature(grid, u, w, tail, (re - _control_phi(variance, nodes), im))
    return (_control_price(grid, variance) - integral / math.pi,)


def _with_tail(u: torch.Tensor, tail: Tail | None) -> torch.Tensor:
    """The core's nodes (B, M, J) and the tail's after them, (B, M, J + T)."""
    return u if tail is None else torch.cat([u, tail[0]], dim=-1)


def _control_variance(grid: SurfaceGrid, params: torch.Tensor) -> torch.Tensor:
    """Total variance ``w`` of the Black-Scholes control: Heston's expected total variance to
    expiry, ``theta T + (v0 - theta) (1 - exp(-kappa T)) / kappa`` (detached), shape (B, M)."""
    v0, kappa, theta, _, _ = (p.unsqueeze(-1) for p in params.detach().unbind(-1))
    return expected_total_variance(grid.maturity, v0, kappa, theta).clamp(min=1e-12)


def _control_phi(variance: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Black-Scholes ``phi(u - i/2) = exp(-w (u^2 + 1/4) / 2)`` (real), shape of ``u``."""
    return torch.exp(-0.5 * variance.unsqueeze(-1) * (u * u + 0.25))


def _control_price(grid: SurfaceGrid, variance: torch.Tensor) -> torch.Tensor:
    """The control's normalised OTM Black price ``exp(x/2) N(d1) - exp(-x/2) N(d2)``, ``x =
    -|k|``, ``d1,2 = x / s +- s / 2``, ``s = sqrt(w)``, shape (B, M*Q). The direct formula: the
    surface's price is the sum of this and the quadrature, both accurate to about 1e-16 absolute."""
    b = _black_otm(-grid.k.abs(), variance.sqrt().unsqueeze(-1))
    return b.reshape(b.shape[0], -1)


def _black_otm(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Normalised OTM Black price ``exp(x/2) N(d1) - exp(-x/2) N(d2)`` at ``x = -|k| <= 0``,
    total vol ``s``, ``d1,2 = x / s +- s / 2`` (shapes broadcast)."""
    d1 = x / s + 0.5 * s
    half = torch.exp(0.5 * x)
    return half * ndtr(d1) - ndtr(d1 - s) / half


def _phi_and_tangent(
    grid: SurfaceGrid, params: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``phi(u - i/2)`` on the grid and its derivatives with respect to ``(v0, kappa, theta,
    sigma, rho)`` in closed form, as real and imaginary parts, each ``(B, M, J, 6)`` (``phi``
    first).

    On Lewis' line ``z = u - i/2``, ``z^2 + i z = u^2 + 1/4 =: zz`` is real and ``beta = kappa -
    rho sigma h``, ``h = 1/2 + i u``; with ``d = sqrt(beta^2 + sigma^2 zz)``, ``r = beta - d``,
    ``y = (exp(-d T) - 1) / (2 d)``, ``q = -r y`` and ``c = kappa theta / sigma^2`` (as in
    :func:`pricing._heston_fourier.log_characteristic`, whose values it reuses)

        log phi = c B + v0 b,   B = r T - 2 log(1 + q),   b = zz y / (1 + q).

    Its partial derivatives in ``beta`` (at fixed ``d``) and ``d``, with ``y' = dy/dd = -(T/2 +
    y (1 + d T)) / d``, are ``F_beta = c T + X_beta`` and ``F_d = -c T + X_d``:
    ``X_beta = y (2 c + v0 b) / (1 + q)``, ``X_d = (-2 c (y - r y') + v0 (zz y' - b (y - r y')))
    / (1 + q)``. Since ``dd = (beta dbeta + sigma zz dsigma) / d``, every parameter moves
    ``log phi`` through ``G = F_beta + F_d beta / d``, written without the cancellation of
    ``beta ~ d`` as ``G = y' (2 c r + v0 zz + v0 b r) / (1 + q) - c T r / d + r X_d / d``:

        d/dv0 = b,  d/dkappa = G + B theta / sigma^2,  d/dtheta = B kappa / sigma^2,
        d/dsigma = -rho h G + F_d sigma zz / d - 2 c B / sigma,  d/drho = -sigma h G.

    All of this is elementwise on the grid, on real pairs (see :mod:`pricing._complex`: torch's
    complex kernels are not vectorised on the CPU, and real pairs were a third faster on a batch
    of 40 surfaces); only the result has the trailing parameter axis.
    """
    v0, kappa, theta, sigma, rho = (p[:, None, None] for p in params.unbind(-1))
    t = grid.maturity.unsqueeze(-1)
    z = (u, torch.full_like(u, -0.5))
    zz_pair = _square_plus_iz(z)  # (u^2 + 1/4, 0)
    d, r, y, q, bracket, b = little_trap_terms(z, zz_pair, t, kappa, sigma, rho)
    sigma2 = sigma * sigma
    c = kappa * theta / sigma2
    phi = cexp(cadd(cscale(bracket, c), cscale(b, v0)))
    zz = zz_pair[0]
    inv_d, inv_1q = cinv(d), cinv((1.0 + q[0], q[1]))
    y_dt = cmul(y, (1.0 + d[0] * t, d[1] * t))
    dy = cscale(cmul((0.5 * t + y_dt[0], y_dt[1]), inv_d), -1.0)
    r_dy = cmul(r, dy)
    y_minus_rdy = (y[0] - r_dy[0], y[1] - r_dy[1])
    b_y = cmul(b, y_minus_rdy)
    x_d = cmul((v0 * (zz * dy[0] - b_y[0]) - 2.0 * c * y_minus_rdy[0],
                v0 * (zz * dy[1] - b_y[1]) - 2.0 * c * y_minus_rdy[1]), inv_1q)  # fmt: skip
    b_r = cmul(b, r)
    inner = (2.0 * c * r[0] + v0 * zz + v0 * b_r[0], 2.0 * c * r[1] + v0 * b_r[1])
    f_d = (x_d[0] - c * t, x_d[1])
    g = cadd(cmul(cmul(dy, inner), inv_1q), cmul(cmul(f_d, r), inv_d))
    h_g = cmul((torch.full_like(g[0], 0.5), u.expand_as(g[0])), g)  # h = 1/2 + i u
    f_d_over_d = cmul(f_d, inv_d)
    dlog_phi = [
        b,
        cadd(g, cscale(bracket, theta / sigma2)),
        cscale(bracket, kappa / sigma2),
        cadd(cadd(cscale(h_g, -rho), cscale(f_d_over_d, sigma * zz)),
             cscale(bracket, -2.0 * c / sigma)),
        cscale(h_g, -sigma),
    ]  # fmt: skip
    parts = [phi] + [cmul(phi, term) for term in dlog_phi]
    return torch.stack([p[0] for p in parts], dim=-1), torch.stack([p[1] for p in parts], dim=-1)


def normalized_otm_and_jacobian(
    grid: SurfaceGrid, params: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`normalized_otm` and its exact Jacobian, shapes (B, M*Q) and (B, M*Q, 5)."""
    return _per_node_count(_prices_and_jacobian, grid, params.detach())


def _prices_and_jacobian(
    grid: SurfaceGrid, params: torch.Tensor, u: torch.Tensor, w: torch.Tensor, tail: Tail | None
) -> tuple[torch.Tensor, torch.Tensor]:
    variance = _control_variance(grid, params)
    nodes = _with_tail(u, tail)
    re, im = _phi_and_tangent(grid, params, nodes)  # (B, M, J + T, 6) each
    control = _control_phi(variance, nodes).unsqueeze(-1)
    re = torch.cat([re[..., :1] - control, re[..., 1:]], dim=-1)
    out = -_quadrature(grid, u, w, tail, (re, im)) / math.pi
    return _control_price(grid, variance) + out[..., 0], out[..., 1:]
