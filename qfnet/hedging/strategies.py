"""Hedging strategies: baselines (no hedge, Black-Scholes delta, Whalley-Wilmott band, Heston
model delta) and learned policies. Each maps :class:`~qfnet.hedging.markets.HedgeData` to the
positions ``(N, T, H)`` held over each step.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from pricing import heston
from qfnet.hedging.markets import DATA_BLOCK, N_FEATURES, HedgeData, Market, expected_variance
from qfnet.nets import GRUPolicy, MLPPolicy, NoTransactionBandNet, clamp_recursion

__all__ = [
    "BlackScholesDelta",
    "HestonDelta",
    "LearnedStrategy",
    "NoHedge",
    "Strategy",
    "WhalleyWilmott",
]


class Strategy(Protocol):
    """Anything with ``positions(data) -> (N, T, H)``.

    Shape:
        - output: (N, T, H): N paths, T steps, H hedging instruments.

    Examples:
        >>> from qfnet.hedging.config import HedgeConfig
        >>> market = Market(HedgeConfig())
        >>> data = market.data(market.simulate(4, generator=torch.Generator().manual_seed(0)))
        >>> strategy: Strategy = BlackScholesDelta()
        >>> strategy.positions(data).shape
        torch.Size([4, 20, 1])
    """

    def positions(self, data: HedgeData) -> torch.Tensor: ...


def _underlying_only(data: HedgeData, hedge: torch.Tensor) -> torch.Tensor:
    """Positions ``(N, T, H)`` holding ``hedge (N, T)`` in the underlying and nothing else."""
    out = torch.zeros_like(data.reference)
    out[..., 0] = hedge
    return out


class NoHedge:
    """Hold nothing: the P&L is the (discounted) premium minus the payoff.

    Shape:
        - output: (N, T, H), all zeros.

    Examples:
        >>> from qfnet.hedging.config import HedgeConfig
        >>> market = Market(HedgeConfig())
        >>> data = market.data(market.simulate(4, generator=torch.Generator().manual_seed(0)))
        >>> positions = NoHedge().positions(data)
        >>> positions.shape, bool((positions == 0).all())
        (torch.Size([4, 20, 1]), True)
    """

    def positions(self, data: HedgeData) -> torch.Tensor:
        return torch.zeros_like(data.reference)


class BlackScholesDelta:
    """Black-Scholes delta at the implied-vol proxy, rebalanced every step, underlying only.

    References:
        Black, Scholes (1973), "The pricing of options and corporate liabilities", JPE 81(3).

    Shape:
        - output: (N, T, H); the underlying's column is the reference delta.

    Examples:
        >>> from qfnet.hedging.config import HedgeConfig
        >>> market = Market(HedgeConfig())
        >>> data = market.data(market.simulate(4, generator=torch.Generator().manual_seed(0)))
        >>> positions = BlackScholesDelta().positions(data)
        >>> positions.shape, bool(torch.equal(positions[..., 0], data.reference[..., 0]))
        (torch.Size([4, 20, 1]), True)
    """

    def positions(self, data: HedgeData) -> torch.Tensor:
        return _underlying_only(data, data.reference[..., 0])


class WhalleyWilmott:
    """Whalley-Wilmott no-transaction band around the Black-Scholes delta.

    Rebalance to the nearest band edge when the position leaves
    ``delta +/- (3 e^{-r tau} cost S Gamma^2 / (2 risk_aversion))^(1/3)``, the paper's
    ``(3/2 e^{-r(T-t)} lambda S Gamma^2 / gamma)^(1/3)``: ``tau = T - t``, ``cost`` its
    ``lambda`` (trading ``nu`` units costs ``lambda |nu| S``), ``S`` the undiscounted spot and
    ``Gamma`` the Black-Scholes gamma of the derivative sold.

    Args:
        market: the market (time grid, strike, rate, cost of the underlying).
        risk_aversion: the paper's ``gamma``: risk aversion of the exponential utility of
            terminal wealth (time-``T`` money, hence ``e^{-r tau}``), per unit of P&L
            (currency): per unit notional with the configs' spot of 1; a market quoted at spot
            S needs it divided by S for the same band relative to the position. A risk aversion
            ``g`` of the discounted (time-0) P&L that the report measures is
            ``g e^{-r T}`` here.

    References:
        Whalley, Wilmott (1997), "An asymptotic analysis of an optimal hedging model for option
        pricing with transaction costs", Mathematical Finance 7(3), 307-324 (the leading-order
        band half-width).

    Shape:
        - output: (N, T, H); :meth:`half_width`: (N, T).

    Examples:
        >>> from qfnet.hedging.config import HedgeConfig
        >>> market = Market(HedgeConfig())
        >>> data = market.data(market.simulate(4, generator=torch.Generator().manual_seed(0)))
        >>> ww = WhalleyWilmott(market, risk_aversion=1.0)
        >>> hedge, width = ww.positions(data)[..., 0], ww.half_width(data)
        >>> hedge.shape, bool(((hedge - data.reference[..., 0]).abs() <= width + 1e-12).all())
        (torch.Size([4, 20]), True)
    """

    def __init__(self, market: Market, risk_aversion: float) -> None:
        # inf was taken: a band of width 0, the delta hedge reported as Whalley-Wilmott's
        if not (risk_aversion > 0 and math.isfinite(risk_aversion)):
            raise ValueError(f"risk_aversion must be finite and > 0, got {risk_aversion}")
        self.market, self.risk_aversion = market, float(risk_aversion)

    def half_width(self, data: HedgeData) -> torch.Tensor:
        """Band half-width ``(N, T)``."""
        m = self.market
        tau = m.time_grid[-1] - m.time_grid[:-1]  # (T,)
        # cost S Gamma^2 with the gamma of the derivative sold (exotics included), from the data
        scale = 1.5 * torch.exp(-m.market.rate * tau) * m.cost_gamma_term(data)
        return (scale / self.risk_aversion).pow(1.0 / 3.0)

    def positions(self, data: HedgeData) -> torch.Tensor:
        delta = data.reference[..., :1]
        width = self.half_width(data).unsqueeze(-1)
        hedge = clamp_recursion(delta - width, delta + width)[..., 0]
        return _underlying_only(data, hedge)


_X_EDGE = 10.0  # moneyness nodes on [-_X_EDGE, _X_EDGE]
_ROOT_FLOOR = 1e-3**0.5  # lowest variance node: a volatility of 1e-3


class HestonDelta:
    """Heston model delta ``dV/dS`` of a European option at the current (model) variance,
    underlying only.

    The variance is recovered from the implied-vol proxy (an invertible function of it). Deltas
    come from the semi-analytic pricer (:func:`pricing.heston.delta`) on a per-step table in
    standardised moneyness ``log(S/K) / sqrt(w)`` (121 nodes on [-10, 10]; ``w`` the expected
    total variance to expiry given ``v``) and ``v^(1/4)``, the square root of the volatility
    (13 nodes over the observed range, denser at low variance, where the delta bends fastest
    in it), interpolated by monotone cubics along each axis: the table costs ``T * 1573``
    pricer calls whatever the number of paths. Against the pricer at every path point (100,000
    points a case, paths near zero variance included) the error was 1.5e-5 to 6e-5 on average
    and at most 1.4e-3: 1.5e-5 and at most 4e-5 for the configs' parameters (v0 = theta 0.04,
    kappa 1, sigma 0.2, rho -0.7); 6e-5 and 1.4e-3 under the DAX fit of ``qfnet demo`` (kappa
    15.6, sigma 3.3, volatility 0 to 1.5 over 20 steps of 0.004 years; calls and puts); at most
    8e-4 for v0 0.05, kappa 1.5, theta 0.04, sigma 0.4, rho -0.6, strike 1.05 over 3 months
    (20 steps) and 9.5e-4 for strike 1.05 over 6 months at rate 5%, dividend 2%, 8 steps. The
    bilinear table in the volatility this replaced (141 x 13 nodes on [-7, 7]) was 1e-4 to
    4e-4 off on average and up to 1.5e-2, 7.9e-3 and 6.7e-3 in the last three cases, at
    volatilities below 0.25 late in the paths. Parameters outside the pricer's validated box
    (kappa above 8, vol of vol above 1.5, ...) make each call about 5 times as costly (wider
    and refined quadrature nodes, :func:`pricing.heston.price`).

    On price-only paths (a paths file without a ``variance`` column,
    :func:`~qfnet.hedging.backtest.read_paths`) the variance is not observed and not filtered
    from the prices: the implied-vol proxy stays at its time-0 level ``sigma_hat_0``
    (:meth:`~qfnet.hedging.markets.Market.vol_proxy`), and the variance recovered from it is the
    same on every path, moving from ``v0`` at step 0 to ``sigma_hat_0**2`` at expiry. The
    ``delta`` and ``whalley_wilmott`` baselines and the learned policy's features hold the same
    level. On 20,000 Heston paths (v0 0.09, theta 0.04, kappa 1.5, sigma 0.6, rho -0.7, 6 months,
    25 steps, no costs) this hedge's ES95 was 0.147 from the prices alone, 0.142 with the
    variance.

    Shape:
        - output: (N, T, H); :meth:`variance`: (N, T).

    Examples:
        >>> from qfnet.hedging.config import config_from_dict
        >>> market = Market(config_from_dict({"market": {"model": "heston", "n_steps": 2}}))
        >>> data = market.data(market.simulate(4, generator=torch.Generator().manual_seed(0)))
        >>> hedge = HestonDelta(market, n_moneyness=15, n_variance=3).positions(data)[..., 0]
        >>> hedge.shape, bool(((hedge > 0) & (hedge < 1)).all())  # a call's delta
        (torch.Size([4, 2]), True)
    """

    def __init__(self, market: Market, n_moneyness: int = 121, n_variance: int = 13) -> None:
        if not market.is_heston:
            raise ValueError("HestonDelta needs a market with model: heston")
        if market.config.derivative.type != "european":
            raise ValueError(
                "HestonDelta hedges European options only; derivative.type is "
                f"{market.config.derivative.type!r} (its Black-Scholes delta is the 'delta' baseline)"
            )
        for name, count in (("n_moneyness", n_moneyness), ("n_variance", n_variance)):
            # one node was an IndexError from the interpolation, at the first positions()
            if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 2:
                raise ValueError(f"{name} must be an integer >= 2 (nodes of the delta table), "
                                 f"got {count!r}")  # fmt: skip
        self.market, self.nx, self.nv = market, int(n_moneyness), int(n_variance)

    def variance(self, data: HedgeData) -> torch.Tensor:
        """Model variance ``(N, T)`` from the implied-vol proxy."""
        m, grid = self.market.market, self.market.time_grid
        kt = m.kappa * (grid[-1] - grid[:-1])
        weight = -torch.expm1(-kt) / kt  # (T,)
        return (m.theta + (data.vol**2 - m.theta) / weight).clamp_min(1e-8)

    def positions(self, data: HedgeData) -> torch.Tensor:
        m = self.market
        tau = (m.time_grid[-1] - m.time_grid[:-1]).to(torch.float64)  # (T,)
        v = self.variance(data).to(torch.float64)
        strike = m.config.derivative.strike
        x = torch.log(data.spot[:, :-1].to(torch.float64) / strike) / self._scale(v, tau)
        xg = torch.linspace(-_X_EDGE, _X_EDGE, self.nx, dtype=torch.float64, device=v.device)
        # variance nodes uniform in v^(1/4), the square root of the volatility: the delta bends
        # fastest in the variance where it is small (nodes uniform in the volatility left
        # errors of 1e-2 at volatilities below 0.25 under a vol of vol of 3.3)
        root = v.pow(0.25)
        lo = root.amin(0).clamp_min(_ROOT_FLOOR)
        hi = torch.maximum(root.amax(0), lo * (1 + 1e-6))
        steps = torch.linspace(0.0, 1.0, self.nv, dtype=torch.float64, device=v.device)
        rg = lo[:, None] + (hi - lo)[:, None] * steps  # (T, nv)
        table = self._table(xg, rg**4, tau, strike)  # (T, nx, nv)
        # DATA_BLOCK paths at a time: the interpolation's temporaries stay in reused memory
        hedge = torch.cat([
            _monotone_bicubic(table, xg, rg, x[i : i + DATA_BLOCK], root[i : i + DATA_BLOCK])
            for i in range(0, x.shape[0], DATA_BLOCK)
        ])  # fmt: skip
        return _underlying_only(data, hedge.to(data.reference.dtype))

    def _scale(self, v: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """Square root of the expected total variance to expiry, ``E[int_t^T v_s ds | v_t = v]``:
        the moneyness scale of the delta (``sqrt(v tau)`` would blow up where ``v`` is near 0
        while the variance reverts to ``theta`` before expiry)."""
        return (expected_variance(v, tau, self.market.market) * tau).sqrt()

    def _table(
        self, xg: torch.Tensor, vg: torch.Tensor, tau: torch.Tensor, strike: float
    ) -> torch.Tensor:
        m = self.market.market
        t = tau[:, None, None]
        v = vg[:, None, :]
        spot = strike * torch.exp(xg[None, :, None] * self._scale(v, t))  # (T, nx, nv)
        return heston.delta(
            spot=spot, strike=strike, maturity=t, v0=v, kappa=m.kappa, theta=m.theta,
            sigma=m.sigma, rho=m.rho, rate=m.rate, dividend=m.dividend,
            is_call=self.market.config.derivative.is_call,
        )  # fmt: skip


def _monotone_bicubic(
    table: torch.Tensor, xg: torch.Tensor, vg: torch.Tensor, x: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Interpolate ``table (T, nx, nv)`` at ``x, v (N, T)`` (``v`` in the table's variance
    coordinate) on uniform grids ``xg`` (shared) and ``vg (T, nv)`` (one per step) by monotone
    cubics: along ``v`` on the four rows of ``x`` nodes around ``x``, then along ``x`` through
    those four values (slope 0 at the table's edges in ``x``, where the delta is flat). Each
    value lies between those of the four nodes around it (Catmull-Rom's cubics overshoot
    beside flat stretches).

    References:
        Fritsch, Carlson (1980), "Monotone piecewise cubic interpolation", SIAM J. Numer. Anal.
        17(2), 238-246; Fritsch, Butland (1984), "A method for constructing local monotone
        piecewise cubic interpolants", SIAM J. Sci. Stat. Comput. 5(2), 300-304 (the slopes).
    """
    nt, nx, nv = table.shape
    fx = ((x - xg[0]) / (xg[1] - xg[0])).clamp(0.0, nx - 1 - 1e-9)
    fv = ((v - vg[:, 0]) / (vg[:, 1] - vg[:, 0])).clamp(0.0, nv - 1 - 1e-9)
    ix, iv = fx.floor().long(), fv.floor().long()
    d = table.diff(dim=2)  # (T, nx, nv - 1)
    # slopes along v per node spacing: the one secant at either end
    slope = torch.cat([d[..., :1], _monotone_slope(d[..., :-1], d[..., 1:]), d[..., -1:]], 2)
    values, slopes = table.flatten(), slope.flatten()
    base = torch.arange(nt, device=table.device) * (nx * nv) + iv  # (N, T) flat index of iv
    h = _hermite_basis(fv - iv)  # shared by the four rows

    def along_v(k: int) -> torch.Tensor:
        at = base + (ix + k).clamp(0, nx - 1) * nv
        return h[0] * values[at] + h[1] * slopes[at] + h[2] * values[at + 1] + h[3] * slopes[at + 1]

    p0, p1, p2, p3 = (along_v(k) for k in (-1, 0, 1, 2))
    m1, m2 = _monotone_slope(p1 - p0, p2 - p1), _monotone_slope(p2 - p1, p3 - p2)
    g = _hermite_basis(fx - ix)
    return g[0] * p1 + g[1] * m1 + g[2] * p2 + g[3] * m2


def _monotone_slope(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Fritsch-Butland slope at a node from the secants on either side (uniform nodes): their
    harmonic mean, 0 at a local extremum."""
    return torch.where(left * right > 0, 2 * left * right / (left + right), 0.0)


def _hermite_basis(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Weights at ``t`` in [0, 1] of the values and slopes (per unit ``t``) at 0 and 1 in the
    cubic Hermite interpolant: ``y(t) = h00 y0 + h10 m0 + h01 y1 + h11 m1``."""
    s = 1 - t
    return s * s * (1 + 2 * t), s * s * t, t * t * (3 - 2 * t), -t * t * s


def build_policy(
    kind: str,
    n_instruments: int,
    hidden: Sequence[int] = (16, 16),
    initial_width: float = 0.02,
    activation: str = "relu",
) -> nn.Module:
    """A policy network by name: ``ntb``, ``mlp`` or ``gru``.

    Examples:
        >>> type(build_policy("ntb", 1)).__name__
        'NoTransactionBandNet'
    """
    if kind == "ntb":
        return NoTransactionBandNet(N_FEATURES, n_instruments, hidden, initial_width, activation)
    if kind == "mlp":
        return MLPPolicy(N_FEATURES, n_instruments, hidden, activation)
    if kind == "gru":
        return GRUPolicy(N_FEATURES, n_instruments, hidden_size=max(hidden))
    raise ValueError(f"unknown policy {kind!r}; expected ntb, mlp or gru")


class LearnedStrategy(nn.Module):
    """A policy network applied to a market's features and reference hedge.

    Args:
        policy: a module ``(features (N, T, F), reference (N, T, H)) -> (N, T, H)``.
        use_reference: pass the market's reference hedge (else zeros: learn from scratch).

    Shape:
        - output: (N, T, H)

    Examples:
        >>> from qfnet.hedging.config import HedgeConfig
        >>> market = Market(HedgeConfig())
        >>> data = market.data(market.simulate(4, generator=torch.Generator().manual_seed(0)))
        >>> LearnedStrategy(build_policy("ntb", 1)).positions(data).shape
        torch.Size([4, 20, 1])
    """

    def __init__(self, policy: nn.Module, use_reference: bool = True) -> None:
        super().__init__()
        self.policy = policy
        self.use_reference = use_reference

    def forward(self, data: HedgeData) -> torch.Tensor:
        dtype = next(self.policy.parameters()).dtype
        reference = data.reference.to(dtype)
        if not self.use_reference:
            reference = torch.zeros_like(reference)
        out = self.policy(data.features.to(dtype), reference)
        return out.to(data.prices.dtype)

    def positions(self, data: HedgeData, chunk_size: int = 16384) -> torch.Tensor:
        """Positions without gradients, ``chunk_size`` paths at a time (bounded memory)."""
        n = data.spot.shape[0]
        with torch.no_grad():
            parts = [
                self(HedgeData(*(x[i : i + chunk_size] for x in data)))
                for i in range(0, n, chunk_size)
            ]
        return torch.cat(parts, dim=0)


def ww_grid() -> list[float]:
    """Risk aversions tried when the Whalley-Wilmott risk aversion is chosen on training paths."""
    return [10.0 ** (k / 2) for k in range(0, 9)]
