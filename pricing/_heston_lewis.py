"""Heston surface pricing for calibration: one characteristic-function grid per expiry.

Lewis' (2001) formula prices every strike of an expiry from the same values of the characteristic
function, so a surface of M expiries and N quotes costs M * J characteristic-function evaluations
(J quadrature nodes) instead of N * J. With ``X = ln(S_T / F)``, ``phi(z) = E[exp(i z X)]`` and
``k = ln(K / F)``, the out-of-the-money price over ``D sqrt(F K)`` is

    b(k) = exp(-|k| / 2) - 1/pi int_0^inf Re[exp(-i u k) phi(u - i/2)] / (u^2 + 1/4) du,

integrated by Gauss-Legendre on ``[0, U]`` with ``U`` chosen per expiry (without gradient) where the
integrand has decayed below machine precision. The exact Jacobian with respect to the five Heston
parameters comes from two reverse-mode passes over the grid, each grid point holding its own copy of
the parameters (the grid values are elementwise in the parameters).

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

import torch
from scipy.special import roots_legendre

from pricing._complex import cexp
from pricing._heston_fourier import log_characteristic

__all__ = ["SurfaceGrid", "normalized_otm", "normalized_otm_and_jacobian", "upper_limits"]

_DECAY = 38.0  # integrate until the integrand is below exp(-38) ~ 3e-17 of its size at 0


@functools.lru_cache(maxsize=8)
def _legendre(n: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, w = roots_legendre(n)
    return torch.tensor(0.5 * (x + 1.0), dtype=dtype, device=device), torch.tensor(
        0.5 * w, dtype=dtype, device=device
    )


class SurfaceGrid:
    """Quotes of B surfaces laid out per expiry: ``maturity`` (B, M) and log-moneyness ``k``
    (B, M, Q), Q quotes per expiry (padded); J quadrature nodes per expiry."""

    def __init__(self, maturity: torch.Tensor, k: torch.Tensor, nodes: int) -> None:
        self.maturity, self.k, self.nodes = maturity, k, nodes

    def select(self, index: torch.Tensor) -> SurfaceGrid:
        """The surfaces ``index`` (B',)."""
        return SurfaceGrid(self.maturity[index], self.k[index], self.nodes)


def upper_limits(grid: SurfaceGrid, params: torch.Tensor) -> torch.Tensor:
    """Truncation ``U`` per expiry, shape (B, M), from detached params (B, 5).

    The integrand is about ``exp(-w u^2 / 2) / u^2`` near the origin (``w`` the expected total
    variance) and ``exp(-c u) / u^2`` far out (``c = (v0 + kappa theta T) sqrt(1 - rho^2) / sigma``,
    Andersen and Lake 2018, section 3.3); ``U`` is where the slower of the two reaches exp(-38).
    """
    v0, kappa, theta, sigma, rho = (p.unsqueeze(-1) for p in params.detach().unbind(-1))
    t = grid.maturity
    variance = theta * t + (v0 - theta) * (-torch.expm1(-kappa * t)) / kappa
    rate = ((v0 + kappa * theta * t) / sigma * torch.sqrt(1 - rho * rho)).clamp(min=1e-12)
    variance = variance.clamp(min=1e-12)
    gaussian, exponential = torch.sqrt(2 * _DECAY / variance), _DECAY / rate
    for _ in range(3):  # fixed point of w U^2 / 2 + 2 ln U = D and c U + 2 ln U = D
        gaussian = torch.sqrt(2 * (_DECAY - 2 * torch.log(gaussian).clamp(min=0)) / variance)
        exponential = (_DECAY - 2 * torch.log(exponential).clamp(min=0)).clamp(min=1) / rate
    return torch.maximum(gaussian, exponential).clamp(max=1e4)


def _phi_grid(grid: SurfaceGrid, params: torch.Tensor, u: torch.Tensor) -> tuple:
    """``phi(u - i/2)`` on the grid; params (B, 5) or per-node copies (B, M, J, 5)."""
    if params.dim() == 2:
        params = params[:, None, None, :]
    v0, kappa, theta, sigma, rho = params.unbind(-1)
    t = grid.maturity.unsqueeze(-1)
    log_phi = log_characteristic((u, torch.full_like(u, -0.5)), t, v0, kappa, theta, sigma, rho)
    return cexp(log_phi)


def _integrate(grid: SurfaceGrid, u: torch.Tensor, w: torch.Tensor, values: tuple) -> torch.Tensor:
    """``sum_j w_j Re[exp(-i u_j k) v_j]`` per quote: v (B, M, J) or (B, M, J, P) -> (B, M*Q[, P])."""
    phase = u.unsqueeze(2) * grid.k.unsqueeze(-1)  # (B, M, Q, J)
    cos, sin = w.unsqueeze(2) * torch.cos(phase), w.unsqueeze(2) * torch.sin(phase)
    re, im = values
    if re.dim() == 3:
        re, im = re.unsqueeze(-1), im.unsqueeze(-1)
    out = cos @ re + sin @ im  # (B, M, Q, P), broadcasting a shared grid (batch 1)
    out = out.reshape(out.shape[0], -1, out.shape[-1])
    return out if values[0].dim() == 4 else out.squeeze(-1)


def _nodes(
    grid: SurfaceGrid, params: torch.Tensor, upper: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``u`` and weights ``w / (u^2 + 1/4)`` per expiry, shape (B, M, J) (or (1, M, J)
    for a given ``upper``)."""
    x, w = _legendre(grid.nodes, grid.k.dtype, str(grid.k.device))
    upper = (upper_limits(grid, params) if upper is None else upper).unsqueeze(-1)
    u = x * upper
    return u, w * upper / (u * u + 0.25)


def normalized_otm(
    grid: SurfaceGrid, params: torch.Tensor, upper: torch.Tensor | None = None
) -> torch.Tensor:
    """Out-of-the-money prices over ``D sqrt(F K)``, shape (B, M*Q), for params (B, 5).

    With ``upper`` (truncation per expiry, shape (1, M)) and a grid of batch 1, all B parameter
    sets share the nodes and the ``exp(-i u k)`` factors (a cheap scan of many parameter sets;
    accurate only where ``upper`` suits them all).

    Examples:
        >>> grid = SurfaceGrid(torch.tensor([[1.0]], dtype=torch.float64),
        ...                    torch.tensor([[[0.0]]], dtype=torch.float64), 96)
        >>> params = torch.tensor([[0.04, 4.0, 0.25, 1.0, -0.5]], dtype=torch.float64)
        >>> b = normalized_otm(grid, params)
        >>> bool(0.0 < b[0, 0] < 0.5)
        True
    """
    u, w = _nodes(grid, params, upper)
    integral = _integrate(grid, u, w, _phi_grid(grid, params, u))
    return _base(grid) - integral / math.pi


def _base(grid: SurfaceGrid) -> torch.Tensor:
    """``exp(-|k| / 2)``, shape (B, M*Q)."""
    return torch.exp(-0.5 * grid.k.abs()).reshape(grid.k.shape[0], -1)


def normalized_otm_and_jacobian(
    grid: SurfaceGrid, params: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`normalized_otm` and its exact Jacobian, shapes (B, M*Q) and (B, M*Q, 5)."""
    u, w = _nodes(grid, params)
    copies = params.detach()[:, None, None, :].expand(*u.shape, params.shape[-1]).clone()
    with torch.enable_grad():
        copies.requires_grad_(True)
        re, im = _phi_grid(grid, copies, u)
        (d_re,) = torch.autograd.grad(re.sum(), copies, retain_graph=True)
        (d_im,) = torch.autograd.grad(im.sum(), copies)
    integral = _integrate(grid, u, w, (re.detach(), im.detach()))
    jacobian = -_integrate(grid, u, w, (d_re, d_im)) / math.pi
    return _base(grid) - integral / math.pi, jacobian
