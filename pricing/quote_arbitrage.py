"""Static-arbitrage checks on quoted smiles: call prices in strike, total variance in maturity.

Both checks return a boolean mask of the quotes to remove so that the rest is free of the
violations they test; removal is greedy (the quote whose removal leaves the least violation).

References:
    P. Carr, D. Madan (2005), "A note on sufficient conditions for no arbitrage", Finance Research
    Letters 2, pp. 125-130 (call prices decreasing and convex in strike, calendar spreads >= 0).
    J. Gatheral, A. Jacquier (2014), "Arbitrage-free SVI volatility surfaces", Quantitative Finance
    14(1), Lemma 2.1 (total implied variance non-decreasing in maturity at fixed log-moneyness).
"""

from __future__ import annotations

import numpy as np
import torch

from pricing.black_scholes import black_price

__all__ = ["calendar_violations", "strike_violations"]


def _violations(strikes: np.ndarray, calls: np.ndarray, tolerance: float) -> tuple:
    """Violation amounts beyond ``tolerance`` (strikes sorted, distinct): per neighbour pair of
    ``0 >= dC/dK >= -1``, and per inner point of the strike-weighted butterfly ``>= 0``."""
    if len(strikes) < 2:
        return np.zeros(0), np.zeros(0)
    dk = np.diff(strikes)
    slope = np.diff(calls) / dk
    pair = np.maximum(slope * dk - tolerance, 0) + np.maximum((-1 - slope) * dk - tolerance, 0)
    butterfly = (slope[1:] - slope[:-1]) * dk[:-1] * dk[1:] / (dk[:-1] + dk[1:])
    return pair, np.maximum(-butterfly - tolerance, 0)


def _involved(pair: np.ndarray, triple: np.ndarray, n: int) -> np.ndarray:
    """Points taking part in at least one violation."""
    hit = np.zeros(n, dtype=bool)
    hit[:-1] |= pair > 0
    hit[1:] |= pair > 0
    for offset in range(3):
        hit[offset : n - 2 + offset] |= triple > 0
    return hit


def _otm_prices(k: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Undiscounted out-of-the-money Black prices on a unit forward (puts below ``k = 0``)."""
    volatility = torch.tensor(np.sqrt(np.maximum(w, 0)))
    price = black_price(forward=1.0, strike=torch.tensor(np.exp(k)), maturity=1.0,
                        volatility=volatility, is_call=torch.tensor(k >= 0))  # fmt: skip
    return price.numpy()


def _price_floor(x: np.ndarray, y: np.ndarray, at: np.ndarray, calls: bool) -> np.ndarray:
    """The least price at ``at`` of any smile through the nodes ``(x, y)`` (strikes sorted,
    prices of one side) that is convex and monotone in strike: the nearest node on the cheap side
    and the chords beside the one holding ``at``, extended; capped by that chord, above a convex
    smile."""
    n = len(x)
    last = np.searchsorted(x, at, side="right") - 1  # the last node at or left of `at`
    first = np.searchsorted(x, at, side="left")  # the first node at or right of `at`
    if calls:  # calls fall in strike, puts rise
        floor = np.where(first < n, y[np.minimum(first, n - 1)], 0.0)
    else:
        floor = np.where(last >= 0, y[np.maximum(last, 0)], 0.0)
    i = np.clip(last, 0, max(n - 2, 0))
    for a in (i - 1, i + 1):  # chords (a, a + 1)
        ok = (a >= 0) & (a + 1 < n)
        a0, a1 = np.clip(a, 0, n - 1), np.clip(a + 1, 0, n - 1)
        slope = (y[a1] - y[a0]) / np.where(ok, x[a1] - x[a0], 1.0)
        floor = np.maximum(floor, np.where(ok, y[a0] + slope * (at - x[a0]), -np.inf))
    return np.minimum(floor, np.interp(at, x, y))


def _check_columns(**columns: np.ndarray) -> None:
    """One finite value per quote in every column (mismatched lengths were cut to the shortest
    or failed with a bare IndexError; NaN was never flagged)."""
    arrays = {name: np.asarray(a, dtype=float).reshape(-1) for name, a in columns.items()}
    sizes = {name: len(a) for name, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"one value per quote in each column, got lengths {sizes}")
    for name, a in arrays.items():
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise ValueError(f"{name}: not a finite number at index {bad[0]} ({a[bad[0]]})")


def strike_violations(
    *, strike: np.ndarray, call: np.ndarray, forward: float, tolerance: float = 1e-6
) -> np.ndarray:
    """Quotes of one expiry to drop so that undiscounted call prices are decreasing and convex.

    The conditions are ``0 >= dC/dK >= -1`` between neighbours and non-negative butterflies,
    each up to ``tolerance * forward`` in price.

    Args:
        strike: strikes, shape ``(K,)``, distinct.
        call: undiscounted call prices (puts converted by parity), shape ``(K,)``.
        forward: the expiry's forward (scale of the tolerance).
        tolerance: allowed violation relative to the forward.

    Returns:
        Boolean mask of shape ``(K,)``, True for quotes to remove.

    Examples:
        >>> k = np.array([80.0, 90.0, 100.0, 110.0, 120.0])
        >>> c = np.array([21.0, 12.5, 6.0, 7.0, 1.0])  # 110 is above 100: not decreasing
        >>> strike_violations(strike=k, call=c, forward=100.0).tolist()
        [False, False, False, True, False]
    """
    _check_columns(strike=strike, call=call)
    if len(np.unique(strike)) != len(strike):
        raise ValueError("strike: the strikes of one expiry must be distinct")
    order = np.argsort(strike)
    k, c = np.asarray(strike, float)[order], np.asarray(call, float)[order]
    keep = np.ones(len(k), dtype=bool)
    distance = np.abs(np.log(k / forward))
    tol = tolerance * forward
    while True:
        pair, triple = _violations(k[keep], c[keep], tol)
        if not (pair.any() or triple.any()):
            break
        # Remove the quote whose removal leaves the least total violation; ties: farthest out.
        candidates = np.flatnonzero(keep)[_involved(pair, triple, int(keep.sum()))]
        remaining = []
        for i in candidates:
            keep[i] = False
            remaining.append(sum(v.sum() for v in _violations(k[keep], c[keep], tol)))
            keep[i] = True
        worst = candidates[np.lexsort((-distance[candidates], np.asarray(remaining)))[0]]
        keep[worst] = False
    drop = np.empty(len(k), dtype=bool)
    drop[order] = ~keep
    return drop


def calendar_violations(
    *,
    maturity: np.ndarray,
    log_moneyness: np.ndarray,
    total_variance: np.ndarray,
    rtol: float = 1e-4,
) -> np.ndarray:
    """Quotes to drop so that total implied variance is non-decreasing in maturity.

    Expiries are visited in increasing order; a quote whose total variance ``sigma^2 T`` lies below
    the previous expiry's smile (linearly interpolated in ``k = ln(K/F)``, only inside its strike
    range) by more than ``rtol`` relative is removed.

    Args:
        maturity: year fractions, shape ``(N,)``.
        log_moneyness: ``ln(K / F)``, shape ``(N,)``.
        total_variance: ``implied_vol**2 * maturity``, shape ``(N,)``.
        rtol: relative tolerance on total variance.

    Returns:
        Boolean mask of shape ``(N,)``, True for quotes to remove.

    Examples:
        >>> t = np.array([0.5, 0.5, 1.0, 1.0])
        >>> k = np.array([-0.1, 0.1, -0.1, 0.1])
        >>> w = np.array([0.02, 0.02, 0.05, 0.015])  # the 1y quote at k = 0.1 is below the 6m smile
        >>> calendar_violations(maturity=t, log_moneyness=k, total_variance=w).tolist()
        [False, False, False, True]
    """
    _check_columns(maturity=maturity, log_moneyness=log_moneyness, total_variance=total_variance)
    maturity, k, w = (np.asarray(a, float) for a in (maturity, log_moneyness, total_variance))
    drop = np.zeros(len(maturity), dtype=bool)
    previous = None
    for t in np.unique(maturity.round(10)):
        rows = np.flatnonzero(np.isclose(maturity, t, rtol=0, atol=1e-10))
        if previous is not None:
            pk, pw = previous
            inside = (k[rows] >= pk[0]) & (k[rows] <= pk[-1])
            # Compare out-of-the-money prices (monotone in w at fixed k) with the least price of
            # any arbitrage-free smile through the earlier quotes: between strikes, linear
            # interpolation of w overstates a convex smile and flagged clean surfaces.
            below = np.zeros(len(rows), dtype=bool)
            for calls in (False, True):
                side = (pk >= 0) == calls
                mine = (k[rows] >= 0) == calls
                if side.sum() and mine.any():
                    floor = _price_floor(
                        np.exp(pk[side]),
                        _otm_prices(pk[side], pw[side]),
                        np.exp(k[rows][mine]),
                        calls,
                    )
                    below[mine] = _otm_prices(k[rows][mine], w[rows][mine] / (1 - rtol)) < floor
            drop[rows] = inside & below
        kept = rows[~drop[rows]]
        if len(kept):
            order = np.argsort(k[kept])
            previous = (k[kept][order], w[kept][order])
    return drop
