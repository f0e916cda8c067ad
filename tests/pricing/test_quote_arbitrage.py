"""Static-arbitrage checks: calendar spreads in total variance, on smiles quoted on different grids."""

from __future__ import annotations

import numpy as np

from pricing.quote_arbitrage import calendar_violations


def _smile_variance(k: np.ndarray, maturity: float) -> np.ndarray:
    """Total variance of a skewed, strongly curved smile (vol 0.2 - 0.1 k + 0.5 k^2)."""
    return (0.2 - 0.1 * k + 0.5 * k**2) ** 2 * maturity


def test_calendar_check_flags_only_planted_quotes_between_coarse_earlier_strikes() -> None:
    # A coarse earlier expiry and a fine later one, 2% more total variance everywhere: linear
    # interpolation of the coarse (convex) smile overstates it between strikes by more than 2%,
    # which flagged clean later quotes.
    coarse, fine = np.linspace(-0.4, 0.4, 5), np.linspace(-0.4, 0.4, 41)
    maturity = np.concatenate([np.full(5, 1.0), np.full(41, 1.02)])
    k = np.concatenate([coarse, fine])
    w = np.concatenate([_smile_variance(coarse, 1.0), _smile_variance(fine, 1.02)])
    planted = {5 + 10: 0.8, 5 + 25: 0.5}  # at an earlier strike (k = -0.2), between two (k = 0.1)
    for row, factor in planted.items():
        w[row] = factor * _smile_variance(k[row : row + 1], 1.0)[0]
    drop = calendar_violations(maturity=maturity, log_moneyness=k, total_variance=w)
    assert np.flatnonzero(drop).tolist() == sorted(planted)
