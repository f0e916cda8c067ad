"""Hedging markets: simulated paths, hedging instruments, the derivative, observable features.

A market turns raw paths (spot, and variance under Heston) into :class:`HedgeData`: discounted
instrument prices, the discounted payoff, the observable features a policy sees and the
Black-Scholes reference hedge. Everything a policy does not change is computed once here, so
training only evaluates the policy and the P&L.

The reference hedge is the Black-Scholes delta at the implied-vol proxy: of the European option, or
of the path-dependent one given the path so far (:mod:`qfnet.hedging.deltas`). The band feature
and the variance-swap hedge ratio use the same derivative's gamma and vega (:meth:`Market.greeks`),
so a knocked-out barrier has neither; ``d1`` is the European moneyness for every derivative.

Observable features per step (F = 5): ``log(S/K) / (sigma0 sqrt(T))`` (``K`` the strike; for
the floating-strike lookback, which has none, ``market.spot``), ``tau / T``,
``sigma_hat / sigma0 - 1`` (implied-vol proxy), ``d1`` clipped to [-6, 6] (moneyness in
standard deviations), and the Whalley-Wilmott band scale ``(cost S Gamma^2)^(1/3)`` scaled by 10,
at most 1e6 (a spot fallen to 1e-300 of its start gave a floating-strike lookback a gamma of
1e299, an inf band and a NaN policy; no sensible path comes near, and a Whalley-Wilmott band of
that scale trades no more than an infinite one).
``sigma_hat`` is the model's implied-vol proxy: the constant volatility under Black-Scholes, and
the square root of the expected average variance to maturity (the rate of a continuously sampled
variance swap, a market quote) under Heston. The hidden Heston variance itself is not a feature.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pricing import black_scholes, payoffs, simulate
from qfnet.hedging.config import ConfigError, HedgeConfig, MarketConfig
from qfnet.hedging.deltas import PathGreeks, path_dependent_greeks

__all__ = ["N_FEATURES", "HedgeData", "Market", "RawPaths", "expected_variance", "pack", "unpack"]

N_FEATURES = 5
_BAND = 4  # the column of the Whalley-Wilmott band feature, (cost S Gamma^2)^(1/3) * _BAND_SCALE
_BAND_SCALE = 10.0
_BAND_MAX = 1e6  # the band feature's cap (legitimate ones stay below ~1e3: a barrier near expiry)
DATA_BLOCK = 16384
"""Paths per block in :meth:`Market.data` (the result does not depend on it beyond rounding:
vectorised special functions round an element by its place in a block, 3e-14 relative at most
in a barrier delta)."""


class RawPaths(NamedTuple):
    """Simulated (undiscounted) spot paths and, under Heston, variance paths.

    Shape:
        - spot, variance: (N, T + 1)

    Examples:
        >>> raw = Market(HedgeConfig()).simulate(3, generator=torch.Generator().manual_seed(0))
        >>> raw.spot.shape, raw.spot[:, 0].tolist(), raw.variance is None  # Black-Scholes
        (torch.Size([3, 21]), [1.0, 1.0, 1.0], True)
    """

    spot: torch.Tensor
    variance: torch.Tensor | None


class HedgeData(NamedTuple):
    """Everything needed to evaluate hedging strategies on a set of paths.

    Shape:
        - spot: (N, T + 1), undiscounted
        - prices: (N, T + 1, H), discounted instrument prices (column 0: the underlying)
        - income: (N, T, H), discounted carry per unit held over each step (dividends)
        - payoff: (N,), discounted
        - features: (N, T, F), observable
        - reference: (N, T, H), Black-Scholes reference hedge (delta; vega ratio for a
          variance swap)
        - vol: (N, T), implied-vol proxy

    Examples:
        >>> m = Market(HedgeConfig())
        >>> data = m.data(m.simulate(3, generator=torch.Generator().manual_seed(0)))
        >>> data.prices.shape, data.features.shape, data.payoff.shape
        (torch.Size([3, 21, 1]), torch.Size([3, 20, 5]), torch.Size([3]))
    """

    spot: torch.Tensor
    prices: torch.Tensor
    income: torch.Tensor
    payoff: torch.Tensor
    features: torch.Tensor
    reference: torch.Tensor
    vol: torch.Tensor


def pack(data: HedgeData) -> torch.Tensor:
    """Flatten :class:`HedgeData` into one tensor ``(N, L)`` (one row per path) for data loaders.

    Shape:
        - output: (N, L), ``L = (T + 1)(1 + H) + T (2H + F + 1) + 1``, fields in order

    Examples:
        >>> m = Market(HedgeConfig())
        >>> data = m.data(m.simulate(3, generator=torch.Generator().manual_seed(0)))
        >>> packed = pack(data)
        >>> packed.shape, bool((unpack(packed, 20, 1).payoff == data.payoff).all())
        (torch.Size([3, 203]), True)
    """
    n = data.spot.shape[0]
    parts = [t.reshape(n, -1) for t in data[:3]] + [data.payoff.reshape(n, 1)]
    parts += [t.reshape(n, -1) for t in data[4:]]
    return torch.cat(parts, dim=1)


def unpack(packed: torch.Tensor, n_steps: int, n_instruments: int) -> HedgeData:
    """Inverse of :func:`pack` (views into ``packed``).

    Shape:
        - packed: (N, L)

    Examples:
        >>> m = Market(HedgeConfig())
        >>> data = m.data(m.simulate(3, generator=torch.Generator().manual_seed(0)))
        >>> back = unpack(pack(data), n_steps=20, n_instruments=1)
        >>> all(torch.equal(a, b) for a, b in zip(back, data))
        True
        >>> unpack(torch.zeros(3, 10), n_steps=20, n_instruments=1)
        Traceback (most recent call last):
        ...
        ValueError: packed paths must have shape (N, 203) for T=20, H=1, got (3, 10)
    """
    t, h, f = n_steps, n_instruments, N_FEATURES
    sizes = [t + 1, (t + 1) * h, t * h, 1, t * f, t * h, t]
    if packed.dim() != 2 or packed.shape[1] != sum(sizes):
        raise ValueError(
            f"packed paths must have shape (N, {sum(sizes)}) for T={t}, H={h}, "
            f"got {tuple(packed.shape)}"
        )
    spot, prices, income, payoff, features, reference, vol = packed.split(sizes, dim=1)
    n = packed.shape[0]
    return HedgeData(
        spot=spot,
        prices=prices.reshape(n, t + 1, h),
        income=income.reshape(n, t, h),
        payoff=payoff.reshape(n),
        features=features.reshape(n, t, f),
        reference=reference.reshape(n, t, h),
        vol=vol,
    )


def _representable(spot: torch.Tensor, m: MarketConfig) -> torch.Tensor:
    """``spot``, or a :class:`ConfigError` naming the market's keys where a path left the
    floating-point range (0 or inf): the delta failed on it with "spot must be finite and > 0",
    naming no key (one host sync per simulation).

    Shape:
        - spot: (N, T + 1)
    """
    bad = ~(torch.isfinite(spot) & (spot > 0))
    if bool(bad.any()):
        path, step = (int(i) for i in torch.nonzero(bad)[0])
        names = ("volatility",) if m.model == "black_scholes" else ("v0", "theta", "sigma")
        vol = ", ".join(f"market.{k} {getattr(m, k)}" for k in names)
        raise ConfigError(
            f"market: a simulated spot is {float(spot[path, step])} (path {path}, step {step}), "
            f"out of {spot.dtype}'s range: market.maturity {m.maturity} is too long for the "
            f"volatility ({vol}) and drift (market.rate {m.rate}, market.dividend "
            f"{m.dividend}); shorten it or lower them"
        )
    return spot


class Market:
    """Black-Scholes or Heston market with the derivative and instruments of a config.

    Args:
        config: the experiment config (market and derivative sections are used).
        dtype: floating dtype of the generated tensors.
        device: device of the generated tensors.

    Examples:
        >>> m = Market(HedgeConfig())
        >>> data = m.data(m.simulate(8, generator=torch.Generator().manual_seed(0)))
        >>> data.prices.shape, data.features.shape
        (torch.Size([8, 21, 1]), torch.Size([8, 20, 5]))
    """

    def __init__(
        self,
        config: HedgeConfig,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        self.config = config
        self.market = config.market
        self.dtype, self.device = dtype, device
        self.n_steps = config.market.n_steps
        self.n_instruments = len(config.market.instruments)
        self.time_grid = simulate.time_grid(
            self.n_steps, config.market.maturity, dtype=dtype, device=device
        )
        costs = config.market.cost
        self.cost = torch.as_tensor(costs, dtype=dtype, device=device).expand(self.n_instruments)

    @property
    def is_heston(self) -> bool:
        """Whether the market follows the Heston model."""
        return self.market.model == "heston"

    @property
    def initial_vol(self) -> float:
        """Implied-vol proxy at time 0 (used to scale features)."""
        if not self.is_heston:
            return self.market.volatility
        m = self.market
        v0 = torch.tensor(
            m.v0, dtype=torch.float64
        )  # not the default dtype: the feature is 0 at t = 0
        return math.sqrt(float(expected_variance(v0, m.maturity, m)))

    def simulate(self, n_paths: int, *, generator: torch.Generator) -> RawPaths:
        """Simulate ``n_paths`` paths (the market's ``dtype``/``device``).

        Shape:
            - output: spot and variance (N, T + 1)
        """
        m = self.market
        common = dict(
            spot=m.spot, maturity=m.maturity, rate=m.rate, dividend=m.dividend,
            dtype=self.dtype, device=self.device, generator=generator,
        )  # fmt: skip
        if not self.is_heston:
            spot = simulate.gbm(n_paths, self.n_steps, volatility=m.volatility, **common)
            return RawPaths(_representable(spot, m), None)
        paths = simulate.heston(
            n_paths, self.n_steps, v0=m.v0, kappa=m.kappa, theta=m.theta, sigma=m.sigma,
            rho=m.rho, **common,
        )  # fmt: skip
        return RawPaths(_representable(paths.spot, m), paths.variance)

    def vol_proxy(self, raw: RawPaths) -> torch.Tensor:
        """Implied-vol proxy at steps ``0..T-1`` (see the module docstring); for Heston paths
        without variance (e.g. historical prices) the time-0 level throughout.

        Shape:
            - output: (N, T)
        """
        n = raw.spot.shape[0]
        if not self.is_heston or raw.variance is None:  # no variance observed: initial level
            return raw.spot.new_full((n, self.n_steps), self.initial_vol)
        tau = self.time_grid[-1] - self.time_grid[:-1]  # (T,)
        return expected_variance(raw.variance[:, :-1], tau, self.market).sqrt()

    def data(self, raw: RawPaths) -> HedgeData:
        """Instrument prices, payoff, features and reference hedge for ``raw`` paths.

        Computed :data:`DATA_BLOCK` paths at a time: the temporaries of a block stay in memory
        the allocator reuses, where those of millions of paths are fresh memory, paid for by a
        page fault per page (most of the time of 200,000 paths here).
        """
        n = raw.spot.shape[0]
        if n <= DATA_BLOCK:
            return self._data(raw)
        parts = [
            self._data(RawPaths(*(None if x is None else x[i : i + DATA_BLOCK] for x in raw)))
            for i in range(0, n, DATA_BLOCK)
        ]
        return HedgeData(*(torch.cat(field) for field in zip(*parts, strict=True)))

    def _data(self, raw: RawPaths) -> HedgeData:
        m, grid = self.market, self.time_grid
        spot = raw.spot
        tau = (grid[-1] - grid[:-1]).expand(spot.shape[0], -1)  # (N, T)
        vol = self.vol_proxy(raw)
        discount = torch.exp(-m.rate * grid)  # (T+1,)
        stock = spot * discount
        carry = stock[:, 1:] * torch.expm1(m.dividend * (grid[1:] - grid[:-1]))  # (N, T)
        prices, income = [stock], [carry]
        g = self.greeks(spot, vol)
        reference = [g.delta]
        if "variance_swap" in m.instruments:
            swap, ratio = self._variance_swap(raw, g.vega, vol, tau)
            prices.append(swap)
            income.append(torch.zeros_like(carry))
            reference.append(ratio)
        features = self._features(spot, tau, vol, g.gamma)
        payoff = self.payoff(spot) * math.exp(-m.rate * m.maturity)
        return HedgeData(
            spot=spot,
            prices=torch.stack(prices, dim=-1),
            income=torch.stack(income, dim=-1),
            payoff=payoff,
            features=features,
            reference=torch.stack(reference, dim=-1),
            vol=vol,
        )

    def greeks(self, spot: torch.Tensor, vol: torch.Tensor) -> PathGreeks:
        """Delta, gamma and vega of the derivative at steps ``0..T-1`` at the implied-vol proxy
        ``vol``: Black-Scholes for a European, else the path-dependent option's own, given the
        path so far (:func:`qfnet.hedging.deltas.path_dependent_greeks`).

        Shape:
            - spot: (N, T + 1); vol: (N, T); each output field: (N, T)
        """
        m, grid, d = self.market, self.time_grid, self.config.derivative
        if d.type != "european":  # the running average, extremum or barrier status matters
            return path_dependent_greeks(d, spot, grid, vol, rate=m.rate, dividend=m.dividend)
        tau = (grid[-1] - grid[:-1]).expand(spot.shape[0], -1)  # (N, T)
        g = black_scholes.greeks(spot=spot[:, :-1], strike=d.strike, maturity=tau, volatility=vol,
                                 rate=m.rate, dividend=m.dividend, is_call=d.is_call)  # fmt: skip
        return PathGreeks(g.delta, g.gamma, g.vega)

    def cost_gamma_term(self, data: HedgeData) -> torch.Tensor:
        """``cost S Gamma^2`` of the derivative at steps ``0..T-1``, recovered from the band
        feature (computed once in :meth:`data`, with the derivative's own gamma), for the
        Whalley-Wilmott band (up to the feature's cap: ``1e15``, a band that never trades).

        Shape:
            - output: (N, T)
        """
        return (data.features[..., _BAND] / _BAND_SCALE) ** 3

    def _features(
        self, spot: torch.Tensor, tau: torch.Tensor, vol: torch.Tensor, gamma: torch.Tensor
    ) -> torch.Tensor:
        m, d = self.market, self.config.derivative
        # a floating-strike lookback has no strike: its moneyness is against the time-0 spot
        strike = m.spot if d.type == "lookback" else d.strike
        sigma0 = self.initial_vol
        s = spot[:, :-1]
        log_m = torch.log(s / strike)
        d1 = (log_m + (m.rate - m.dividend + 0.5 * vol**2) * tau) / (vol * tau.sqrt())
        cost = float(self.cost[0])
        # capped: a gamma of 1e299 made gamma**2 inf, and the policy's positions NaN (at zero
        # cost 0 * inf was NaN: that band is 0 whatever the gamma)
        band = (cost * s * gamma**2).pow(1.0 / 3.0) * _BAND_SCALE
        band = band.clamp(max=_BAND_MAX) if cost else torch.zeros_like(band)
        cols = [  # the band is column _BAND
            log_m / (sigma0 * math.sqrt(m.maturity)),
            tau / m.maturity,
            vol / sigma0 - 1.0,
            d1.clamp(-6.0, 6.0),
            band,
        ]
        return torch.stack(cols, dim=-1)  # (N, T, F)

    def _variance_swap(
        self, raw: RawPaths, vega: torch.Tensor, vol: torch.Tensor, tau: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Discounted variance-swap price ``e^{-rT} E_t[(1/T) sum_j (v_j + v_{j+1}) dt_j / 2]``
        (the payoff: the variance sampled on the grid, trapezoid rule) and the BS vega hedge
        ratio ``vega * T / (2 sigma_hat tau) * e^{r tau}`` (sensitivities to ``v`` matched in
        continuous time, both in time-0 money)."""
        m, grid = self.market, self.time_grid
        v = raw.variance
        dt = grid[1:] - grid[:-1]
        realised = torch.cumsum(0.5 * (v[:, 1:] + v[:, :-1]) * dt, dim=1)  # (N, T)
        realised = torch.cat([torch.zeros_like(v[:, :1]), realised], dim=1)  # (N, T+1)
        # E_t of the payoff, not of the integral: a price that is a martingale on any grid
        weight = _sampled_variance_weights(grid, m.kappa)  # (T+1,)
        future = m.theta * (grid[-1] - grid) + (v - m.theta) * weight
        price = (realised + future) / m.maturity * math.exp(-m.rate * m.maturity)
        ratio = vega * m.maturity / (2.0 * vol * tau) * torch.exp(m.rate * tau)
        return price, ratio

    def payoff(self, spot: torch.Tensor) -> torch.Tensor:
        """Undiscounted payoff of the derivative on spot paths.

        Shape:
            - spot: (N, T + 1)
            - output: (N,)
        """
        d, grid = self.config.derivative, self.time_grid
        if d.type == "european":
            return payoffs.european(spot, strike=d.strike, is_call=d.is_call)
        if d.type == "asian":
            return payoffs.asian(spot, strike=d.strike, is_call=d.is_call)
        if d.type == "barrier":
            return payoffs.barrier(
                spot, strike=d.strike, barrier=d.barrier, barrier_type=d.barrier_type,
                time_grid=grid, is_call=d.is_call, rate=self.market.rate,
            )  # fmt: skip
        return payoffs.lookback(spot, kind="floating", is_call=d.is_call)


def _sampled_variance_weights(grid: torch.Tensor, kappa: float) -> torch.Tensor:
    """``W_i`` with ``E[sum_{j >= i} (v_j + v_{j+1}) dt_j / 2 | v_i] = theta (T - t_i) +
    (v_i - theta) W_i`` under Heston (``E[v_j | v_i] = theta + (v_i - theta) e^{-kappa (t_j -
    t_i)}``), by the recursion ``W_i = dt_i (1 + e^{-kappa dt_i}) / 2 + e^{-kappa dt_i} W_{i+1}``.

    Shape:
        grid: (T+1,); output: (T+1,), ``W_T = 0``.
    """
    dt = grid[1:] - grid[:-1]
    decay = torch.exp(-kappa * dt)
    own = 0.5 * dt * (1.0 + decay)
    weights = [torch.zeros_like(grid[-1])]
    for i in range(dt.numel() - 1, -1, -1):
        weights.append(own[i] + decay[i] * weights[-1])
    return torch.stack(weights[::-1])


def expected_variance(v: torch.Tensor, tau: torch.Tensor | float, m: MarketConfig) -> torch.Tensor:
    """Heston ``E[(1/tau) int_t^{t+tau} v ds | v_t = v] = theta + (v - theta)(1 - e^{-k tau})/(k tau)``
    (the limit ``v`` at ``tau = 0``), for market parameters ``m`` (``kappa``, ``theta``).

    Shape:
        v and tau broadcast; output: their broadcast shape.

    Examples:
        >>> m = MarketConfig(model="heston", v0=0.09, kappa=1.0, theta=0.04)
        >>> v = torch.tensor([0.09, 0.09, 0.09], dtype=torch.float64)
        >>> tau = torch.tensor([0.0, 1.0, 1e6], dtype=torch.float64)  # v, then towards theta
        >>> [round(x, 6) for x in expected_variance(v, tau, m).tolist()]
        [0.09, 0.071606, 0.04]
    """
    tau = torch.as_tensor(tau, dtype=v.dtype, device=v.device)
    kt = m.kappa * tau
    safe = torch.where(kt > 0, kt, torch.ones_like(kt))
    weight = torch.where(kt > 0, -torch.expm1(-safe) / safe, torch.ones_like(kt))
    return m.theta + (v - m.theta) * weight
