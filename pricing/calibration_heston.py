"""Heston calibration to a whole surface: ``direct`` (ours) and ``quantlib`` (the reference).

``direct``: a Sobol scan of the parameter box priced in one batched call ranks starting points; the
best few are refined together by a box-constrained Levenberg-Marquardt on implied-vol residuals
with the exact Jacobian (autograd through a Lewis-formula surface pricer that shares the
characteristic function across the strikes of an expiry, :mod:`pricing._heston_lewis`); the
result is checked, and if needed polished, with the reference pricer :func:`pricing.heston.price`
(a few steps; to convergence where a quote is priced below the fast pricer's rounding, see
:data:`_DEEP_POLISH_ITERATIONS`), whose implied vols are the ones reported. Many surfaces
calibrate in one batch (:func:`calibrate_surfaces`), on the device the surfaces are packed on
(:func:`surfaces_from_quotes`, option ``device`` of :func:`pricing.calibration.calibrate`): every
tensor of the fit is made there; the Sobol points and the global starts come from the CPU once,
and the results go back to it.

Implied-vol residuals: with ``b`` the model's out-of-the-money price over ``D sqrt(F K)``, the
residual is ``IV(b) - IV_market`` and its Jacobian ``sqrt(K/F) db/dtheta / vega`` (implicit
function theorem; undiscounted Black vega at the model vol, forward 1).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pricing._calibration_batch import sorted_groups, stacked
from pricing._heston_lewis import (
    SurfaceGrid,
    gaussian_limit,
    normalized_otm,
    normalized_otm_and_jacobian,
    scan_otm,
)
from pricing._implied_vol import solve_total_vol
from pricing._validation import check_bounds_in_domain
from pricing.black_scholes import black_price
from pricing.calibration import (
    MODEL_PARAMETERS,
    CalibrationProblem,
    FitOutput,
    bounds_reached,
    check_start_in_box,
    proposed_starts_many,
    register_batch_method,
    register_method,
)
from pricing.heston import price as heston_price
from pricing.least_squares import LeastSquaresResult, elementwise_jacobian, levenberg_marquardt

__all__ = [
    "DEFAULT_BOUNDS",
    "NAMES",
    "HestonSurfaces",
    "calibrate_surfaces",
    "global_starts",
    "global_starts_many",
    "surfaces_from_quotes",
]

NAMES = MODEL_PARAMETERS["heston"]
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "v0": (1e-5, 4.0),
    "kappa": (1e-3, 50.0),
    "theta": (1e-5, 4.0),
    "sigma": (1e-3, 10.0),
    "rho": (-0.999, 0.999),
}
# Scan box of the global start: log-uniform in v0, kappa, theta, sigma; uniform in rho.
_SCAN_LOW = (math.log(1e-3), math.log(0.1), math.log(1e-3), math.log(0.05), -0.95)
_SCAN_HIGH = (math.log(1.0), math.log(20.0), math.log(1.0), math.log(4.0), 0.5)
_POLISH_TOLERANCE_BP = 0.01
_POLISH_ITERATIONS = 4  # reference-pricer steps from the fast fit's optimum
_DEEP_POLISH_ITERATIONS = 40
"""Reference-pricer steps at most where a surface has a quote below :data:`_FAST_FLOOR`: the fast
stage cannot see such a quote where the model prices it below the floor too, so its optimum can
be far from the reference pricer's (a 3-day put at K/F 0.8 quoted at 15% beside the tests' 6 x 11
surface: 183.2 bp, unconverged after 4 steps, for the reference's 160.3, reached in 12 steps);
those surfaces are polished to convergence, in a batch of their own (the others keep their 4).
The cost falls on them alone: 12 and 14 reference steps on the tests' two such surfaces, 0.12 s
and 0.23 s of CPU (one thread) for the polish where its 4 steps took 0.08 s."""
_RACE_ITERATIONS = 6
_RUNNER_UP_RATIO = 1.5  # a runner-up this close (in cost) to the leader also finishes
_SCAN_NODES = 64
_FAST_FLOOR = 1e-12
"""OTM price over F below which the fast pricer's vols are noise: its prices are accurate to
~1e-16 absolute on most surfaces (:mod:`pricing._heston_lewis`), so in a deep wing of a short
expiry (a 3-day quote 50% out of the money is worth 1e-96) it priced 1e-17 or -1e-17 and solved
vols of 1.0 for 0.4 (see :class:`_Residuals`); its error there reaches ~1.5e-14 (a 3-day put at
K/F 0.8 at v0 0.053: 1.55e-14 for 5.6e-19), hence the margin. The benchmark's surfaces (1.2e-7)
and DAX (3.3e-5) quote nothing below that: none of theirs is floored."""
_SMALL_VEGA = 1e-200  # a vega below this divides in logs (:func:`_over_vega`)
_SCAN_ELEMENTS = 2**16
"""Grid points (surfaces x expiries x nodes x scan points) priced per call of the scan (CPU)."""
_SCAN_ELEMENTS_GPU = 2**23
"""The same on a GPU, where each call's fixed cost (kernel launches) is what counts: 1,000
surfaces of 6 expiries scan 64 points in 3 calls (about 3 GB of temporaries), not 500."""
DEFAULT_NODES = 64
"""Least Gauss-Legendre nodes per expiry of the fitted surfaces; :func:`pricing._heston_lewis.node_counts`
adds more where the integrand oscillates (128 for the benchmark's 30-day to 3-year surfaces). A
floor of 256 gave the same optima (RMSE within 1e-12 bp on the benchmark's 20 surfaces) at 1.3-1.6
times the batched time."""
SCAN_WITH_PROPOSALS = 64
"""Sobol scan points kept beside a start provider's proposal (256 without one)."""
# A step lowering the cost by under 1e-8 relative ends the fit (QuantLib's test uses 1e-8): in a
# flat valley the steps left might lower the RMSE by ~1e-6 relative, 5e-5 bp at 50 bp.
_TOLERANCES = {"ftol": 1e-8, "xtol": 1e-8, "gtol": 1e-10}


@dataclass(frozen=True)
class HestonSurfaces:
    """S surfaces laid out per expiry: M expiries of Q quotes each (padded), N = M * Q flat.

    Padding entries are at the money (``k = 0``) with weight 0.

    Attributes:
        grid: expiries ``(S, M)`` and log-moneyness ``(S, M, Q)`` (see
            :class:`pricing._heston_lewis.SurfaceGrid`).
        market_iv, weight, maturity: per flat quote, ``(S, N)``; ``weight`` is the square root of
            the quote weight.
        positions: per surface, the flat position of each row of its quote table.

    Shape:
        ``S`` surfaces, ``M`` expiries, ``Q`` quotes per expiry, ``N = M * Q``.

    Examples:
        >>> table = pd.DataFrame({"strike": [90.0, 100.0, 110.0], "forward": 100.0,
        ...                       "maturity": 1.0, "market_iv": 0.2})
        >>> packed = surfaces_from_quotes([table], [np.ones(3)])
        >>> tuple(packed.market_iv.shape), [round(r, 2) for r in packed.ratio[0].tolist()]
        ((1, 3), [0.9, 1.0, 1.1])
    """

    grid: SurfaceGrid
    market_iv: torch.Tensor
    weight: torch.Tensor
    maturity: torch.Tensor
    positions: list[np.ndarray]

    @property
    def ratio(self) -> torch.Tensor:
        """``K / F`` per flat quote, ``(S, N)``."""
        return torch.exp(self.grid.k).reshape(self.grid.k.shape[0], -1)


def surfaces_from_quotes(
    tables: list[pd.DataFrame],
    weights: list[np.ndarray],
    nodes: int = DEFAULT_NODES,
    *,
    device: torch.device | str | None = None,
) -> HestonSurfaces:
    """Pack prepared quote tables (``strike, forward, maturity, market_iv``) into padded tensors
    on ``device`` (default the CPU).

    Shape:
        S tables, at most M expiries of at most Q quotes -> ``(S, M)``, ``(S, M, Q)``, ``(S, M*Q)``.

    Examples:
        >>> table = pd.DataFrame({"strike": [90.0, 100.0, 100.0], "forward": 100.0,
        ...                       "maturity": [0.5, 0.5, 1.0], "market_iv": 0.2})
        >>> packed = surfaces_from_quotes([table], [np.ones(3)])
        >>> tuple(packed.grid.k.shape), packed.positions[0].tolist()
        ((1, 2, 2), [0, 1, 2])
    """
    # All tables in one pass (per-table pandas work cost more than the packing itself): each
    # quote gets its surface s, expiry slot e (by rank of its rounded maturity within s) and its
    # slot within (s, e) in table order.
    sizes = np.array([len(t) for t in tables])
    quotes = stacked(tables, ("strike", "forward", "maturity", "market_iv"))
    strike, forward, maturity, market_iv = (
        quotes[c].to_numpy(float) for c in ("strike", "forward", "maturity", "market_iv")
    )
    w = _check_packing(weights, sizes, market_iv)
    _check_vegas((strike, forward, maturity, market_iv), w, sizes)
    surface = np.repeat(np.arange(len(tables)), sizes)
    e, slot, pairs, first = _expiry_slots(surface, maturity.round(10), len(tables))
    m, q = int(e.max()) + 1, int(slot.max()) + 1
    shape = (len(tables), m, q)
    k, iv, root_w = np.zeros(shape), np.full(shape, 0.2), np.zeros(shape)
    maturities = np.ones((len(tables), m))
    owner = pairs[:, 0].astype(int)
    maturities[owner, np.arange(len(pairs)) - first[owner]] = pairs[:, 1]
    k[surface, e, slot] = np.log(strike / forward)
    iv[surface, e, slot] = market_iv
    root_w[surface, e, slot] = np.sqrt(w)
    positions = np.split(e * q + slot, np.cumsum(sizes)[:-1])
    t = lambda array: torch.tensor(array, device=device)  # noqa: E731
    grid = SurfaceGrid(t(maturities), t(k), nodes)
    flat_t = t(np.repeat(maturities, q, axis=1))
    return HestonSurfaces(grid, t(iv.reshape(len(tables), -1)),
                          t(root_w.reshape(len(tables), -1)), flat_t, positions)  # fmt: skip


def _expiry_slots(
    surface: np.ndarray, key: np.ndarray, n_surfaces: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each quote's expiry slot ``e`` (rank of its maturity ``key`` within its surface) and slot
    within (surface, expiry) in table order, ``(R,)`` each; the distinct (surface, key) pairs in
    order ``(P, 2)`` and the first pair of each surface ``(S,)``. One stable sort by (surface,
    key) (``np.unique`` of the pairs sorted a structured view, several times slower)."""
    order = np.lexsort((key, surface))  # stable: a pair's quotes stay in table order
    s_sorted, k_sorted = surface[order], key[order]
    pair_sorted, slot_sorted, starts, first = sorted_groups(s_sorted, k_sorted, n_surfaces)
    pairs = np.stack([s_sorted[starts], k_sorted[starts]], axis=1)
    e, slot = np.empty_like(order), np.empty_like(order)
    e[order] = pair_sorted - first[s_sorted]
    slot[order] = slot_sorted
    return e, slot, pairs, first


def _check_packing(weights: list[np.ndarray], sizes: np.ndarray, vol: np.ndarray) -> np.ndarray:
    """One finite weight >= 0 per quote and positive finite vols (one weight was broadcast over
    a table, a negative one became NaN, NaN vols were packed), the first bad table named; the
    weights of all tables, concatenated ``(R,)``."""
    if len(weights) != len(sizes):
        raise ValueError(f"{len(weights)} weight arrays for {len(sizes)} quote tables")
    arrays = [np.asarray(w, dtype=float) for w in weights]
    for i, w in enumerate(arrays):
        if w.shape != (sizes[i],):
            raise ValueError(f"table {i}: weights must be {sizes[i]} finite values >= 0")
    w = np.concatenate(arrays)
    ends = np.cumsum(sizes)
    checks = {"weights": (np.isfinite(w) & (w >= 0), "must be {n} finite values >= 0"),
              "market_iv": (np.isfinite(vol) & (vol > 0), "must be finite and > 0")}  # fmt: skip
    for name, (ok, what) in checks.items():
        if not ok.all():
            i = int(np.searchsorted(ends, np.argmin(ok), side="right"))  # the table of that row
            raise ValueError(f"table {i}: {name} {what.format(n=sizes[i])}")
    return w


def _check_vegas(quotes: tuple[np.ndarray, ...], w: np.ndarray, sizes: np.ndarray) -> None:
    """Refuse weighted quotes ``(strike, forward, maturity, vol)`` ``(R,)`` each whose market
    Black vega underflows (more than ~37.5 standard deviations out of the money: a vol of 0.5%
    30% out of the money at 3 months, a 1-hour expiry at K/F 0.7 at 30%), naming the first table
    that has them (where there are several) and its quotes: their price is 0 in float64, so no
    pricer sees them, and the polish's residual of a model price without a vol, ``price / vega``,
    was 0 / 0 (the fit died of "v0 must be finite; got nan at index (0, 0)")."""
    strike, forward, t, vol = quotes
    s = vol * np.sqrt(t)
    d1 = -np.log(strike / forward) / s + 0.5 * s
    log_vega = 0.5 * np.log(t) - 0.5 * d1 * d1 - 0.5 * math.log(2 * math.pi)
    bad = (log_vega < math.log(np.finfo(float).tiny)) & (w > 0)
    if not bad.any():
        return
    i = int(np.searchsorted(np.cumsum(sizes), np.argmax(bad), side="right"))  # the first table
    rows = np.flatnonzero(bad & (np.repeat(np.arange(len(sizes)), sizes) == i))
    listed = ", ".join(f"strike {strike[r]:g} at maturity {t[r]:.4g} with vol {vol[r]:g} "
                       f"({abs(d1[r]):.0f} standard deviations)" for r in rows[:3])  # fmt: skip
    # one table is the caller's only one (calibrate said "table 0: ", and calibrate_many's
    # surrogate polish "quote table 1: table 0: ")
    where = f"quote table {i}: " if len(sizes) > 1 else ""
    raise ValueError(
        f"{where}{len(rows)} quote(s) too far out of the money for float64 ({listed}"
        f"{', ...' if len(rows) > 3 else ''}): their Black vega underflows, so no fit can "
        "measure their vol error; drop them or weight them 0"
    )


def _box(
    bounds: Mapping[str, tuple[float, float]] | None, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds ``(5,)`` each, on ``device``."""
    box = DEFAULT_BOUNDS | dict(bounds or {})
    unknown = set(box) - set(NAMES)
    if unknown:
        raise ValueError(f"unknown Heston parameter(s) in bounds: {sorted(unknown)}")
    for name in bounds or {}:  # a direct calibrate_surfaces call fitted rho in (-1.5, 0)
        check_bounds_in_domain(name, *(float(b) for b in box[name]))
    both = torch.tensor([[box[n][i] for n in NAMES] for i in (0, 1)], dtype=torch.float64)
    lower, upper = both.to(device).unbind(0)
    return lower, upper


@functools.lru_cache(maxsize=16)
def _scan_points(n: int, seed: int) -> torch.Tensor:
    """Sobol points of the scan box, shape ``(n, 5)``, on the CPU (torch's Sobol engine runs
    there only). Cached (scrambling and drawing cost ~0.15 ms a fit): not to be modified."""
    with torch.inference_mode(False):  # an ordinary tensor: the cache outlives an inference mode
        if n == 0:
            return torch.zeros(0, 5, dtype=torch.float64)
        engine = torch.quasirandom.SobolEngine(5, scramble=True, seed=seed)
        unit = engine.draw(n, dtype=torch.float64)
        low, high = torch.tensor(_SCAN_LOW), torch.tensor(_SCAN_HIGH)
        x = low + (high - low) * unit
        return torch.cat([torch.exp(x[:, :4]), x[:, 4:]], dim=-1)


def _market_otm(surfaces: HestonSurfaces) -> tuple[torch.Tensor, torch.Tensor]:
    """Market out-of-the-money price over ``F`` and its undiscounted Black vega, ``(S, N)``."""
    ratio, t, vol = surfaces.ratio, surfaces.maturity, surfaces.market_iv
    price = black_price(forward=1.0, strike=ratio, maturity=t, volatility=vol, is_call=ratio >= 1)
    return price, _vega(torch.log(ratio), torch.sqrt(t), vol)


def _vega(log_ratio: torch.Tensor, root_t: torch.Tensor, vol: torch.Tensor) -> torch.Tensor:
    """Undiscounted Black vega ``phi(d1) sqrt(T)`` with forward 1, strike ``K/F`` of log
    ``log_ratio``, ``root_t = sqrt(T)``."""
    s = vol * root_t
    d1 = -log_ratio / s + 0.5 * s
    return torch.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi) * root_t


def _over_vega(
    derivative: torch.Tensor,
    factor: torch.Tensor,
    log_ratio: torch.Tensor,
    root_t: torch.Tensor,
    vol: torch.Tensor,
) -> torch.Tensor:
    """``derivative * factor / vega`` (``vega`` of :func:`_vega` at ``vol``), taken in logs where
    the vega is below :data:`_SMALL_VEGA`: in a deep wing of a short expiry the price's
    derivatives and the vega both underflow (a 3-day quote 80% out of the money: derivatives
    ~1e-312, vega 0), and their quotient, an implied vol's derivative of order 1, came out
    infinite (then 1.8e308, and the step NaN).

    Shape:
        ``derivative``: ``(..., N, P)``; the others: ``(..., N)``; output: ``(..., N, P)``.
    """
    vega = _vega(log_ratio, root_t, vol)
    out = derivative * (factor / vega).unsqueeze(-1)
    small = vega < _SMALL_VEGA
    if bool(small.any()):  # rare: deep wings of short expiries (synchronises a GPU)
        s = vol * root_t
        d1 = -log_ratio / s + 0.5 * s
        log_vega = torch.log(root_t) - 0.5 * d1 * d1 - 0.5 * math.log(2 * math.pi)
        log_scale = (torch.log(factor) - log_vega).unsqueeze(-1)
        logs = torch.sign(derivative) * torch.exp(torch.log(derivative.abs()) + log_scale)
        out = torch.where(small.unsqueeze(-1), logs, out)
    return out


def _total_vols(x: torch.Tensor, beta: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Total Black vols ``sigma sqrt(T)`` of OTM prices over ``sqrt(F K)`` ``beta`` at OTM
    log-moneyness ``x = -|ln(K/F)|``, from ``start`` (where positive and finite): the solve of
    :func:`pricing.black_scholes.black_implied_vol` without its input checks and conversions.
    NaN where no vol reproduces the price.

    Shape:
        all the same shape; output: that shape.
    """
    total, _ = solve_total_vol(x, beta, invalid=~torch.isfinite(beta), below=beta < 0,
                               above=beta >= torch.exp(0.5 * x), start=start)  # fmt: skip
    return total


class _Residuals:
    """Implied-vol residuals of problems and their Jacobian (problem ``i`` fits surface
    ``owner[i]``).

    Each problem's model vols of its last evaluation are kept, as total vols ``total`` ``(B, N)``
    (NaN where no vol reproduced the price) with the params ``at`` ``(B, 5)`` they were priced at:
    the next solve starts from them (near the root once the fit settles, where the market's vols
    often needed more than the two fixed steps), and the fit's vols are read back there
    (:meth:`model_vols`) instead of being solved again.

    A pricer accurate to ``floor`` (absolute, in OTM price over F) cannot tell prices below it
    apart: where the market's price is below it (``deep`` ``(S, N)``), prices are raised to the
    floor, so the residual is the floor's vol error (Jacobian 0) for any price below the floor
    and the true vol error above it; the targets' price and vega (the fallback's and the scan's)
    are the floor's. (Measured against the floor's vol, a quote the model priced above the floor
    steered the fit by its floor's error: 159.21 bp reported converged for the reference
    pricer's 158.06, the polish not run since both pricers agreed there.) (With the fast pricer's
    rounding as prices, the deep wings of a 3-day expiry had vols of 1.0 for 0.4, and a price of
    -1e-17 an error of -1e41 through a vega of 1e-58; the fit then stopped at a cost of 3e49,
    called converged.) The reference pricer's residuals (``floor`` 0) are the true ones.
    """

    def __init__(
        self,
        surfaces: HestonSurfaces,
        owner: torch.Tensor,
        market: tuple[torch.Tensor, torch.Tensor] | None = None,
        floor: float = 0.0,
    ) -> None:
        self.surfaces, self.owner = surfaces, owner
        # the market's OTM prices and vegas (S, N): given, they are not priced again
        self.market_price, self.market_vega = (
            market if market is not None else _market_otm(surfaces)
        )
        # the targets (S, N): the market's, or the floor's where the market's price is below it
        self.floor, self.deep = floor, self.market_price < floor
        self.target = (self.market_price, surfaces.market_iv, self.market_vega)
        if not bool(self.deep.any()):
            self.deep = None
        # the pieces of the residuals that depend on the quotes alone, (S, N)
        self.log_ratio = torch.log(surfaces.ratio)
        self.x = -torch.abs(self.log_ratio)  # OTM log-moneyness
        self.root_ratio, self.root_t = torch.sqrt(surfaces.ratio), torch.sqrt(surfaces.maturity)
        self.total = (surfaces.market_iv * self.root_t)[owner]  # (B, N), from the market's vols
        self.at = torch.full((len(owner), 5), math.nan, dtype=self.total.dtype,
                             device=self.total.device)  # fmt: skip
        if self.deep is not None:
            self.target = self._floored_targets()

    def _floored_targets(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The targets' price, vol and vega ``(S, N)`` each: the floor's where ``deep``."""
        root_t = self.root_t
        floor_vol = _total_vols(self.x, self.floor / self.root_ratio,
                                self.surfaces.market_iv * root_t) / root_t  # fmt: skip
        floored = (torch.full_like(floor_vol, self.floor), floor_vol,
                   _vega(self.log_ratio, root_t, floor_vol))  # fmt: skip
        return tuple(
            torch.where(self.deep, f, t) for f, t in zip(floored, self.target, strict=True)
        )

    def implied_vols(self, index: torch.Tensor, price: torch.Tensor) -> torch.Tensor:
        """Black vols of OTM prices over F ``(B', N)`` of problems ``index`` ``(B',)``, from
        their last ones: what :func:`pricing.black_scholes.black_implied_vol` returns, without
        its input checks and conversions (the quotes were checked once), which are most of its
        cost on a surface's few dozen quotes (:func:`_total_vols`). NaN where no vol reproduces
        the price."""
        s = self.owner[index]
        total = _total_vols(self.x[s], price / self.root_ratio[s], self.total[index])
        self.total[index] = total  # where NaN, the next solve starts from the closed-form guess
        return total / self.root_t[s]

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.owner[index]
        b, db = normalized_otm_and_jacobian(self.surfaces.grid.select(s), x)
        residual, jacobian = self.from_prices(index, self.root_ratio[s] * b, db)
        self.at[index] = x
        return residual, jacobian

    def model_vols(self, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The fast pricer's vols ``(B', N)`` of problems ``index`` ``(B',)`` at params ``x``
        ``(B', 5)``: those of their last evaluation where it was at ``x``, else solved anew."""
        stale = ~(self.at[index] == x).all(-1)
        if bool(stale.any()):
            rows, s = index[stale], self.owner[index[stale]]
            price = self.root_ratio[s] * normalized_otm(self.surfaces.grid.select(s), x[stale])
            self.implied_vols(rows, price)
            self.at[rows] = x[stale]
        return self.total[index] / self.root_t[self.owner[index]]

    def from_prices(
        self, index: torch.Tensor, price: torch.Tensor, dnormalized: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Residuals of problems ``index`` ``(B,)`` from OTM prices over F, ``(B, N)``, and their
        Jacobian from ``dnormalized``, the Jacobian of ``price / sqrt(K/F)`` ``(B, N, 5)`` (None:
        no Jacobian)."""
        s = self.owner[index]
        weight = self.surfaces.weight[s]
        market_price, target_iv, market_vega = (t[s] for t in self.target)
        market_iv = self.surfaces.market_iv[s]
        flat = None  # below the floor where the market is (see the class docstring)
        if self.deep is not None:
            flat = self.deep[s] & ~(price >= self.floor)
            price = torch.where(flat, self.floor, price)
        vol = self.implied_vols(index, price)
        solved = torch.isfinite(vol) & (vol > 1e-8)
        # No vol for the price: linear in it, through the true error -IV_market at price 0 when
        # below the market's (through the market's price, a wing's error was capped at its
        # price / vega, far below IV_market, and fits sank wings to price 0 at 5,000 bp).
        # Above a floored target, through the floor's vol error (target_iv - market_iv, 0 where
        # the target is the market's).
        above = (price - market_price) / market_vega + (target_iv - market_iv)
        fallback = torch.where(price < market_price, price / market_vega - market_iv, above)
        residual = weight * torch.where(solved, vol - market_iv, fallback)
        residual = torch.where(weight > 0, residual, 0.0)
        if dnormalized is None:
            return residual, None
        vol_at = torch.where(solved, vol, target_iv)
        # 1 / the vega at the model's vol; the fallback's slope 1 / market_vega (vega of target_iv)
        jacobian = _over_vega(dnormalized, weight * self.root_ratio[s], self.log_ratio[s],
                              self.root_t[s], vol_at)  # fmt: skip
        if flat is not None:
            jacobian = torch.where(flat.unsqueeze(-1), 0.0, jacobian)
        return residual, torch.nan_to_num(jacobian)


def _scan(
    residuals: _Residuals,
    n_surfaces: int,
    n_scan: int,
    n_best: int,
    seed: int,
    extra: torch.Tensor | None,
    lower: torch.Tensor,
    upper: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Starts per surface: the ``extra`` points ((K, 5) shared or (S, K, 5) per surface), then the
    best ``n_best`` scan points (by approximate vol errors); the extra points alone on a surface
    where one of them has a lower approximate error than every scan point, unless it has one
    expiry (see :func:`_one_expiry`): the scan points would only slow its race. Returns the
    starts ``(R, 5)``, surface-major, and their number per surface ``(S,)`` (K or K + n_best).

    The scan points of a surface share one quadrature per expiry, truncated where a Black-Scholes
    integrand of the market's lowest total variance at that expiry has decayed (points far from
    the market get rough prices, but they are far from the market all the same), so the
    ``exp(-i u k)`` factors are computed once per surface; surfaces are priced together, about
    :data:`_SCAN_ELEMENTS` grid points per call (:data:`_SCAN_ELEMENTS_GPU` off the CPU).
    """
    clamp = lambda x: torch.minimum(torch.maximum(x, lower), upper)  # noqa: E731
    device = lower.device
    if extra is None:
        extra = torch.empty(n_surfaces, 0, 5, dtype=torch.float64, device=device)
    extra = clamp(extra.expand(n_surfaces, *extra.shape[-2:]))  # (S, K, 5)
    points = clamp(_scan_points(n_scan, seed).to(device))  # (P, 5), one copy
    if not (n_best and len(points)):
        return extra.reshape(-1, 5), torch.full((n_surfaces,), extra.shape[1], device=device)
    surf = residuals.surfaces
    grid = SurfaceGrid(surf.grid.maturity, surf.grid.k, _SCAN_NODES)
    variance = surf.market_iv**2 * surf.maturity  # (S, N)
    floor = torch.where(surf.weight > 0, variance, math.inf).reshape(grid.k.shape)
    shared = gaussian_limit(floor.amin(-1).nan_to_num(posinf=1.0))  # (S, M)
    per_surface = grid.k.shape[1] * _SCAN_NODES * (len(points) + extra.shape[1])
    budget = _SCAN_ELEMENTS if device.type == "cpu" else _SCAN_ELEMENTS_GPU
    costs = []
    for rows in torch.arange(n_surfaces, device=device).split(max(1, budget // per_surface)):
        mine = torch.cat([extra[rows], points.expand(len(rows), -1, -1)], dim=1)
        b = scan_otm(grid.select(rows), mine, shared[rows])  # (s, N, K + P)
        price = surf.ratio[rows].sqrt().unsqueeze(-1) * b
        market, _, vega = (t[rows] for t in residuals.target)
        if residuals.deep is not None:  # prices below the floor are all alike (see _Residuals)
            floored = price.clamp(min=residuals.floor)
            price = torch.where(residuals.deep[rows].unsqueeze(-1), floored, price)
        error = (
            (price - market.unsqueeze(-1)) / vega.unsqueeze(-1) * surf.weight[rows].unsqueeze(-1)
        )
        costs.append(torch.nan_to_num((error * error).sum(1), nan=math.inf))
    cost = torch.cat(costs)  # (S, K + P)
    k = extra.shape[1]
    best = points[torch.argsort(cost[:, k:], dim=-1)[:, :n_best]]  # (S, n_best, 5)
    starts = torch.cat([extra, best], dim=1)  # (S, K + n_best, 5)
    race = torch.ones(starts.shape[:2], dtype=torch.bool, device=device)
    if k:
        # the scan's points race only where one of them beats every extra start on the scan's
        # cost (on 100 surfaces of the benchmark's box, half of them noisy, no fit moved by
        # 1e-7 bp against racing the best scan point beside the network's start always, and a
        # fit took 13% less time: 34.0 -> 29.6 ms on the benchmark's 20 surfaces)
        scan = _one_expiry(surf) | (cost[:, k:].amin(-1) < cost[:, :k].amin(-1))  # (S,)
        race[:, k:] = scan.unsqueeze(-1)
    return starts[race], race.sum(-1)


def _select(surfaces: HestonSurfaces, rows: torch.Tensor) -> HestonSurfaces:
    """The surfaces ``rows`` ``(B,)`` (a batch of B)."""
    g = surfaces.grid
    return HestonSurfaces(SurfaceGrid(g.maturity[rows], g.k[rows], g.nodes),
                          surfaces.market_iv[rows], surfaces.weight[rows], surfaces.maturity[rows],
                          [surfaces.positions[s] for s in rows.tolist()])  # fmt: skip


def _quote_index(surfaces: HestonSurfaces) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Surface and flat position of every table row, surfaces one after another (table order),
    shapes ``(R,)`` on the surfaces' device, and the number of rows per surface."""
    sizes = [len(p) for p in surfaces.positions]
    device = surfaces.market_iv.device
    owner = torch.arange(len(sizes), device=device).repeat_interleave(
        torch.tensor(sizes, device=device)
    )
    return owner, torch.as_tensor(np.concatenate(surfaces.positions), device=device), sizes


def _reference_vols(
    surfaces: HestonSurfaces,
    x: torch.Tensor,
    index: tuple[torch.Tensor, torch.Tensor] | None = None,
    near: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference pricer's vols (:func:`pricing.heston.otm_implied_vol`) of every table row
    (:func:`_quote_index` order), or of the rows ``index`` (surface and flat position, ``(R,)``
    each), at params ``x`` ``(S, 5)``, priced in one call for all surfaces; shape ``(R,)``. The
    vol solve starts from ``near`` ``(S, N)`` (e.g. the fast pricer's vols; default the
    market's)."""
    owner, at = index if index is not None else _quote_index(surfaces)[:2]
    ratio, t = surfaces.ratio[owner, at], surfaces.maturity[owner, at]
    price = heston_price(forward=1.0, strike=ratio, maturity=t, is_call=ratio >= 1,
                         **dict(zip(NAMES, x[owner].unbind(-1), strict=True)))  # fmt: skip
    root_t = torch.sqrt(t)
    start = (surfaces.market_iv if near is None else near)[owner, at] * root_t
    return _total_vols(-torch.abs(torch.log(ratio)), price / torch.sqrt(ratio), start) / root_t


def _polish(
    surfaces: HestonSurfaces,
    x: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    iterations: int,
) -> LeastSquaresResult:
    """A few Levenberg-Marquardt steps with the reference pricer, each surface of ``surfaces``
    from its row of ``x`` ``(B, 5)``, all in one batch; the result's ``x`` is ``(B, 5)``."""
    ratio, t = surfaces.ratio, surfaces.maturity  # (B, N)
    residuals = _Residuals(surfaces, torch.arange(len(x), device=x.device))

    def otm(params: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        fields = dict(zip(NAMES, params.unbind(-1), strict=True))  # (B', N) each
        r = ratio[index]
        return heston_price(forward=1.0, strike=r, maturity=t[index], is_call=r >= 1, **fields)

    price_jacobian = elementwise_jacobian(otm, ratio.shape[1])

    def fn(params: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        price, dprice = price_jacobian(params, index)
        dnormalized = dprice / torch.sqrt(ratio[index]).unsqueeze(-1)
        return residuals.from_prices(index, price, dnormalized)

    # the fit's own tolerances: the defaults (ftol 1e-12) are out of reach in a few steps, so an
    # exact fit (cost 1e-24 at the 4th step) was reported unconverged
    return levenberg_marquardt(fn, x, lower=lower, upper=upper, max_iterations=iterations,
                               **_TOLERANCES)  # fmt: skip


def _padded(
    values: torch.Tensor, counts: torch.Tensor, width: int, fill: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-racer ``values`` ``(R,)`` (surface-major, ``counts`` ``(S,)`` racers per surface, at
    most ``width``) as rows ``(S, width)``, padded with ``fill``, and where the racers are
    ``(S, width)``."""
    valid = torch.arange(width, device=values.device) < counts.unsqueeze(-1)
    padded = torch.full(valid.shape, fill, dtype=values.dtype, device=values.device)
    padded[valid] = values
    return padded, valid


def _finalists(
    cost: torch.Tensor,
    counts: torch.Tensor,
    n_per: int,
    n_extra: int,
    everyone: torch.Tensor | None = None,
) -> torch.Tensor:
    """Positions (in the surface-major starts, ``counts`` ``(S,)`` per surface, at most
    ``n_per``) of the racers that finish: per surface the best, the runner-up when its cost is
    within ``_RUNNER_UP_RATIO`` of the best, and every x0 start (a proposal is never dropped on
    its early cost); all of them on the surfaces where ``everyone`` ``(S,)`` is True (see
    :func:`_one_expiry`)."""
    cost, valid = _padded(torch.nan_to_num(cost, nan=math.inf), counts, n_per, math.inf)
    n_surf = len(counts)
    order = torch.argsort(cost, dim=-1)[:, : min(2, n_per)]  # (S, <=2)
    ranked = cost.gather(1, order)
    finish = torch.zeros(n_surf, n_per, dtype=torch.bool, device=cost.device)
    finish[:, :n_extra] = True
    if everyone is not None:
        finish |= everyone.unsqueeze(-1)
    finish.scatter_(1, order[:, :1], True)
    if n_per > 1:
        close = ranked[:, 1] <= _RUNNER_UP_RATIO * ranked[:, 0]
        finish.scatter_(1, order[:, 1:], close.unsqueeze(-1) | finish.gather(1, order[:, 1:]))
    # a surface racing its x0 starts alone finishes them all (padding never ranks above them)
    return torch.nonzero(finish[valid]).squeeze(-1)


def calibrate_surfaces(
    surfaces: HestonSurfaces,
    *,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    x0: torch.Tensor | None = None,
    seed: int = 0,
    n_scan: int = 256,
    n_starts: int = 4,
    max_iterations: int = 100,
    polish: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Calibrate Heston to S surfaces at once (see the module docstring).

    Args:
        surfaces: from :func:`surfaces_from_quotes`; the fit runs on their device.
        bounds: parameter name -> (lower, upper), over :data:`DEFAULT_BOUNDS`.
        x0: extra starting points, shape ``(K, 5)`` (tried on every surface) or ``(S, K, 5)``
            (per surface), on any device, clipped into the box (a start provider's proposal
            knows no bounds; :func:`pricing.calibration.calibrate` refuses a caller's start
            outside them): they always race and always finish (besides the race's leader).
        seed: Sobol scrambling seed of the scan.
        n_scan: scan points; n_starts: refined starts per surface (x0 rows included; the x0
            rows alone on a surface where they beat every scan point, see :func:`_scan`).
        max_iterations: Levenberg-Marquardt iterations.
        polish: check each fit with :func:`pricing.heston.price` and refine with it when the fast
            pricer's vols differ by more than 0.01 bp.

    Returns:
        ``params (S, 5)``, model vols per surface (reference pricer), converged ``(S,)`` and
        iterations ``(S,)``, on the CPU.

    Shape:
        ``params``: ``(S, 5)`` in the order ``v0, kappa, theta, sigma, rho``.

    Examples:
        >>> from pricing.black_scholes import black_implied_vol
        >>> from pricing.heston import price
        >>> strike = torch.tensor([80.0, 90.0, 100.0, 110.0, 120.0] * 2, dtype=torch.float64)
        >>> maturity = torch.tensor([0.5] * 5 + [1.0] * 5, dtype=torch.float64)
        >>> premium = price(spot=100.0, strike=strike, maturity=maturity, v0=0.04, kappa=1.5,
        ...                 theta=0.05, sigma=0.5, rho=-0.7)
        >>> iv = black_implied_vol(price=premium, forward=100.0, strike=strike, maturity=maturity)
        >>> table = pd.DataFrame({"strike": strike.numpy(), "forward": 100.0,
        ...                       "maturity": maturity.numpy(), "market_iv": iv.numpy()})
        >>> surfaces = surfaces_from_quotes([table], [np.ones(10)])
        >>> params, vols, converged, _ = calibrate_surfaces(surfaces, n_scan=32, n_starts=1,
        ...                                                 polish=False)
        >>> [round(p, 3) for p in params[0].tolist()], bool(converged[0])
        ([0.04, 1.5, 0.05, 0.5, -0.7], True)
    """
    device = surfaces.market_iv.device
    lower, upper = _box(bounds, device)
    n_surf = len(surfaces.positions)
    n_extra = 0 if x0 is None else x0.shape[-2]
    n_best = min(max(n_starts - n_extra, 0), n_scan)
    n_per = n_extra + n_best  # most starts per surface: the x0 rows, then the best scan points
    if n_per == 0:
        raise ValueError("calibrate_surfaces needs n_scan > 0 and n_starts > 0, or x0 starts")
    owner, at, sizes = _quote_index(surfaces)
    # Nothing here needs autograd (the Jacobians are exact): in inference mode each of the fit's
    # many small operations costs less (~15% of the fit).
    with torch.inference_mode():
        problems = torch.arange(n_surf, device=device).repeat_interleave(n_per)  # their surfaces
        residuals = _Residuals(surfaces, problems, floor=_FAST_FLOOR)
        extra = None if x0 is None else x0.to(device)
        starts, counts = _scan(residuals, n_surf, n_scan, n_best, seed, extra, lower, upper)
        if len(starts) < len(problems):  # the extra starts alone race on some surfaces (_scan)
            problems = torch.arange(n_surf, device=device).repeat_interleave(
                counts, output_size=len(starts)
            )
            residuals = _Residuals(surfaces, problems,
                                   (residuals.market_price, residuals.market_vega),
                                   _FAST_FLOOR)  # fmt: skip
        x, cost, converged, iterations, finalists = _race(
            residuals, starts, counts, n_per, n_extra, lower, upper, max_iterations
        )
        keep = torch.full_like(cost, math.inf)
        keep[finalists] = cost[finalists]
        best = _padded(keep, counts, n_per, math.inf)[0].argmin(-1) + (counts.cumsum(0) - counts)
        params = x[best]
        fast = residuals.model_vols(best, params) if polish else None
        vols = _reference_vols(surfaces, params, (owner, at), fast)
    # ordinary tensors out of inference mode (the polish's autograd and the caller may need them)
    params, vols, converged, iterations = (
        t.clone() for t in (params, vols, converged[best], iterations[best])
    )
    if fast is not None:
        fit = (params, vols, converged, iterations)
        deep = None if residuals.deep is None else residuals.deep & (surfaces.weight > 0)
        params, vols, converged, iterations = _polished(surfaces, fit, fast, (owner, at), lower,
                                                        upper, deep)  # fmt: skip
    return params.cpu(), list(vols.cpu().split(sizes)), converged.cpu(), iterations.cpu()


def _race(
    residuals: _Residuals,
    starts: torch.Tensor,
    counts: torch.Tensor,
    n_per: int,
    n_extra: int,
    lower: torch.Tensor,
    upper: torch.Tensor,
    max_iterations: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Race all starts ``(R, 5)`` (surface-major, ``counts`` ``(S,)`` per surface, at most
    ``n_per``) for a few iterations; the finalists (:func:`_finalists`) that have not converged
    yet finish in a second batch. Returns params ``(R, 5)``, cost (NaN as inf), converged and
    iterations ``(R,)`` of every start and the finalists' positions."""
    race = levenberg_marquardt(residuals, starts, lower=lower, upper=upper,
                               max_iterations=min(_RACE_ITERATIONS, max_iterations),
                               **_TOLERANCES)  # fmt: skip
    finalists = _finalists(race.cost, counts, n_per, n_extra, _one_expiry(residuals.surfaces))
    x, cost = race.x.clone(), torch.nan_to_num(race.cost, nan=math.inf)
    converged, iterations = race.converged.clone(), race.iterations.clone()
    todo = finalists[~race.converged[finalists]]
    if len(todo) and max_iterations > _RACE_ITERATIONS:
        # the same residuals (and remembered vols), for problems todo[i]
        final = levenberg_marquardt(lambda p, i: residuals(p, todo[i]), race.x[todo],
                                    lower=lower, upper=upper,
                                    max_iterations=max_iterations - _RACE_ITERATIONS,
                                    initial=(race.residuals[todo], race.jacobian[todo]),
                                    **_TOLERANCES)  # fmt: skip
        x[todo], cost[todo] = final.x, torch.nan_to_num(final.cost, nan=math.inf)
        converged[todo], iterations[todo] = final.converged, iterations[todo] + final.iterations
    return x, cost, converged, iterations, finalists


def _one_expiry(surfaces: HestonSurfaces) -> torch.Tensor:
    """Surfaces whose weighted quotes lie on one expiry, ``(S,)``: every racer finishes there.

    One smile leaves a curved valley in ``(v0, kappa, theta)`` that the fit crawls along; which
    side of it a start ends on is not told by its cost after the race (on 200 exact one-expiry
    smiles of the benchmark's box, 25 leaders of the race ended 0.1 to 1.8 bp above the true
    parameters, unconverged, many with v0 or theta at its bound; finishing all four starts left
    3, for 1.35 times the time). Two expiries already pin the valley (none of 60 stuck): the
    race still picks there.
    """
    weighted = surfaces.weight.reshape(surfaces.grid.k.shape) > 0  # (S, M, Q)
    return weighted.any(-1).sum(-1) <= 1


def _polished(
    surfaces: HestonSurfaces,
    fit: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    fast: torch.Tensor,
    index: tuple[torch.Tensor, torch.Tensor],
    lower: torch.Tensor,
    upper: torch.Tensor,
    deep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fit ``(params (S, 5), vols (R,), converged (S,), iterations (S,))``, ``vols`` the
    reference pricer's at ``params`` of the table rows ``index`` (surface and flat position of
    each, :func:`_quote_index`) ``(R,)``, after polishing the surfaces where the fast pricer's
    vols at ``params`` ``fast`` ``(S, N)`` are off the reference's by more than
    :data:`_POLISH_TOLERANCE_BP` (:func:`_polish`, batched; in place). A
    polished surface reports the polish's convergence and counts its iterations too (they were
    the fast fit's alone). Surfaces with a weighted quote in ``deep`` ``(S, N)`` (market price
    below :data:`_FAST_FLOOR`; None: none) polish for up to :data:`_DEEP_POLISH_ITERATIONS`
    steps, in a second batch."""
    params, vols, converged, iterations = fit
    owner, at = index
    off = ~((vols - fast[owner, at]).abs() * 1e4 <= _POLISH_TOLERANCE_BP)
    rows = torch.unique(owner[off])  # (B,)
    if len(rows):
        batches = [(rows, _POLISH_ITERATIONS)]
        if deep is not None:  # surfaces with a quote below the floor polish to convergence
            far = deep[rows].any(-1)
            batches = [(rows[~far], _POLISH_ITERATIONS), (rows[far], _DEEP_POLISH_ITERATIONS)]
        for batch, steps in batches:
            if len(batch):
                polish = _polish(_select(surfaces, batch), params[batch], lower, upper, steps)
                params[batch] = polish.x
                converged[batch] = polish.converged.to(converged.device)
                iterations[batch] += polish.iterations.to(iterations.device)
        redo = torch.isin(owner, rows)
        vols[redo] = _reference_vols(surfaces, params, (owner[redo], at[redo]))
    return params, vols, converged, iterations


def global_starts(
    problem: CalibrationProblem, options: dict, scan: int = SCAN_WITH_PROPOSALS
) -> torch.Tensor | None:
    """The caller's ``x0`` and, with option ``global_start="auto"`` (the default), the registered
    start providers' proposals (:func:`pricing.calibration.register_start`; ``qfnet`` registers
    its calibration network), as extra starts ``(K, 5)`` or None.

    With proposals the Sobol scan shrinks to ``scan`` points and at most two starts race (unless
    the options say otherwise): the scan stays as the safety net for surfaces outside the
    provider's domain, and its best point races beside the proposal only where it beats it
    (:func:`_scan`). ``global_start="scan"`` ignores the providers. Pops ``global_start`` from
    ``options``.

    Examples:
        >>> quotes = pd.DataFrame({"strike": [90.0, 110.0], "maturity": 1.0, "market_iv": 0.2})
        >>> x0 = {"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.5, "rho": -0.7}
        >>> options = {"global_start": "scan"}
        >>> starts = global_starts(CalibrationProblem(quotes, np.ones(2), x0=x0), options)
        >>> starts.tolist(), options  # the caller's start only; the option is consumed
        ([[0.04, 1.5, 0.04, 0.5, -0.7]], {})
    """
    return global_starts_many([problem], options, scan)[0]


def global_starts_many(
    problems: Sequence[CalibrationProblem], options: dict, scan: int = SCAN_WITH_PROPOSALS
) -> list[torch.Tensor | None]:
    """:func:`global_starts` of each problem, the providers asked once for all of them
    (:func:`pricing.calibration.proposed_starts_many`). The scan shrinks only when every
    problem got a proposal: the scan is shared, so a table without one keeps the full scan.

    Examples:
        >>> quotes = pd.DataFrame({"strike": [90.0, 110.0], "maturity": 1.0, "market_iv": 0.2})
        >>> x0 = {"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.5, "rho": -0.7}
        >>> problems = [CalibrationProblem(quotes, np.ones(2), x0=x0),
        ...             CalibrationProblem(quotes, np.ones(2))]
        >>> starts = global_starts_many(problems, {"global_start": "scan"})
        >>> starts[0].tolist(), starts[1]  # the second table has no start of its own
        ([[0.04, 1.5, 0.04, 0.5, -0.7]], None)
    """
    mode = options.pop("global_start", "auto")
    if mode not in ("auto", "scan"):
        raise ValueError(f"global_start must be 'auto' or 'scan', got {mode!r}")
    if mode == "auto":
        proposals = proposed_starts_many("heston", problems)
    else:
        proposals = [[] for _ in problems]
    if all(proposals):
        options.setdefault("n_scan", scan)
        options.setdefault("n_starts", 2)
    out = []
    for problem, found in zip(problems, proposals, strict=True):
        starts = ([dict(problem.x0)] if problem.x0 else []) + found
        out.append(torch.tensor([[float(s[n]) for n in NAMES] for s in starts],
                                dtype=torch.float64) if starts else None)  # fmt: skip
    return out


def _check_start(problem: CalibrationProblem) -> None:
    """The caller's start lies in ``direct``'s box: :data:`DEFAULT_BOUNDS` over which the
    problem's bounds apply (:func:`pricing.calibration.check_start_in_box`)."""
    box = DEFAULT_BOUNDS | dict(problem.bounds or {})
    check_start_in_box(problem.x0, box, method="heston 'direct'")


def _fit_direct(problem: CalibrationProblem) -> FitOutput:
    """Our calibration of one surface (options: ``nodes``, ``device``, ``global_start`` (see
    :func:`global_starts`) and those of :func:`calibrate_surfaces`)."""
    _check_start(problem)
    options = dict(problem.options)
    surfaces = surfaces_from_quotes([problem.quotes], [problem.weights],
                                    nodes=options.pop("nodes", DEFAULT_NODES),
                                    device=options.pop("device", None))  # fmt: skip
    x0 = global_starts(problem, options)
    params, vols, converged, iterations = calibrate_surfaces(
        surfaces, bounds=problem.bounds, x0=x0, seed=problem.seed, **options
    )
    values = dict(zip(NAMES, params[0].tolist(), strict=True))
    return FitOutput(values, vols[0].numpy(), bool(converged[0]), int(iterations[0]),
                     bounds_reached(NAMES, params[0].numpy(), *_box(problem.bounds)))  # fmt: skip


def _fit_direct_batch(problems: list[CalibrationProblem]) -> list[FitOutput]:
    """``direct`` on many surfaces in one :func:`calibrate_surfaces` call (per-surface starts
    from :func:`global_starts_many`; the options of the first problem apply to all)."""
    for problem in problems:
        _check_start(problem)
    options = dict(problems[0].options)
    nodes, device = options.pop("nodes", DEFAULT_NODES), options.pop("device", None)
    starts = global_starts_many(problems, options)
    x0 = None
    if any(x is not None for x in starts):
        k = max(len(x) for x in starts if x is not None)
        centre = torch.tensor([math.exp(0.5 * (lo + hi)) if i < 4 else 0.5 * (lo + hi)
                               for i, (lo, hi) in enumerate(zip(_SCAN_LOW, _SCAN_HIGH,
                                                                strict=True))],
                              dtype=torch.float64)  # fmt: skip
        # Pad to K rows per surface by repeating a start (the scan box centre if none).
        x0 = torch.stack([
            torch.cat([x, x[-1:].expand(k - len(x), 5)]) if x is not None and len(x)
            else centre.expand(k, 5) for x in starts
        ])  # fmt: skip
    surfaces = surfaces_from_quotes([p.quotes for p in problems], [p.weights for p in problems],
                                    nodes=nodes, device=device)  # fmt: skip
    params, vols, converged, iterations = calibrate_surfaces(
        surfaces, bounds=problems[0].bounds, x0=x0, seed=problems[0].seed, **options
    )
    # Python values of all surfaces at once (per-element float() and bool() cost microseconds)
    rows, flags, counts = params.tolist(), converged.tolist(), iterations.tolist()
    edges = [bounds_reached(NAMES, row, *_box(problems[0].bounds)) for row in params.numpy()]
    return [
        FitOutput(dict(zip(NAMES, row, strict=True)), v.numpy(), flag, count, edge)
        for row, v, flag, count, edge in zip(rows, vols, flags, counts, edges, strict=True)
    ]


def _fit_quantlib(problem: CalibrationProblem) -> FitOutput:
    """QuantLib's HestonModelHelper calibration (see :func:`pricing.quantlib.heston_calibrate`).

    QuantLib counts whole days: maturities are rounded to ``round(365 T)`` days, with zero curves
    through each expiry's rate ``-ln(D)/T`` and dividend yield ``rate - ln(F/S)/T`` (averaged
    over the expiry's rows, whose discounts and forwards agree to their rounding: the fit does
    not depend on the rows' order); the start is QuantLib's test-suite start unless ``x0`` is
    given.
    """
    from pricing.quantlib import heston_calibrate

    if problem.bounds:
        raise ValueError("method 'quantlib' takes no bounds (QuantLib's Heston calibration keeps "
                         "its own constraint); use method 'direct'")  # fmt: skip
    quotes = problem.quotes
    t, d, f = (quotes[c].to_numpy(float) for c in ("maturity", "discount", "forward"))
    spot = float(quotes["spot"].iloc[0]) if "spot" in quotes else float(f[0] * d[0])
    days = np.maximum(np.rint(t * 365.0).astype(int), 1)
    rate = -np.log(d) / t
    dividend = rate - np.log(f / spot) / t
    pillars, pillar, count = np.unique(days, return_inverse=True, return_counts=True)
    rate, dividend = (np.bincount(pillar, weights=x) / count for x in (rate, dividend))
    x0 = tuple(problem.x0[n] for n in NAMES) if problem.x0 else (0.1, 1.0, 0.1, 0.5, -0.5)
    fit = heston_calibrate(
        spot=spot, strike=quotes["strike"].to_numpy(float), period=days,
        market_vol=quotes["market_iv"].to_numpy(float), curve_days=pillars,
        zero_rate=rate, dividend_yield=dividend, x0=x0, weights=problem.weights,
        **dict(problem.options),
    )  # fmt: skip
    edges = bounds_reached(NAMES, np.array(fit.params), *_QUANTLIB_CONSTRAINT)
    return FitOutput(dict(zip(NAMES, fit.params, strict=True)), fit.model_vol, fit.converged, None,
                     edges)  # fmt: skip


_QUANTLIB_CONSTRAINT = (np.array([0.0, 0.0, 0.0, 0.0, -1.0]), np.array([np.inf] * 4 + [1.0]))
"""QuantLib's own constraint on the Heston parameters (``HestonModel``: v0, kappa, theta, sigma
positive; rho in [-1, 1]), the box of method ``quantlib``'s :attr:`FitOutput.at_bounds`."""


register_method("heston", "direct", _fit_direct, devices=True,
                options=("global_start", "max_iterations", "n_scan", "n_starts", "nodes",
                         "polish"))  # fmt: skip
register_batch_method("heston", "direct", _fit_direct_batch)
# not period_unit or calendar: the fit counts whole days, without holidays
register_method("heston", "quantlib", _fit_quantlib,
                options=("integration_order", "max_iterations", "tolerance"))  # fmt: skip
# Provided by qfnet (pricing cannot import it); importing qfnet.calibration_surrogate replaces it.
register_method(
    "heston",
    "surrogate",
    None,
    "import qfnet.calibration_surrogate first (it needs qfnet's trained surrogate)",
)
register_method(
    "heston",
    "network",
    None,
    "import qfnet.calibration_network_method first (it needs qfnet's trained network)",
)
