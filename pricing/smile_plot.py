"""Smile plots of a calibration: one panel per expiry, market quotes and the model curve."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pricing._atomic import save_figure_atomically
from pricing.calibration import CalibrationResult, model_vols

__all__ = ["plot_smiles"]


def _panel(
    axis, rows: pd.DataFrame, result: CalibrationResult, quotes: pd.DataFrame | None
) -> None:
    maturity = float(rows["maturity"].iloc[0])
    forward = float(rows["forward"].mean())
    rows = rows.sort_values("strike")
    strike = rows["strike"].to_numpy()
    if quotes is not None and {"bid_iv", "ask_iv"} <= set(quotes.columns):
        bid, ask = quotes.loc[rows.index, "bid_iv"], quotes.loc[rows.index, "ask_iv"]
        both = (bid.notna() & ask.notna()).to_numpy()
        axis.vlines(strike[both], 100 * bid[both], 100 * ask[both], color="tab:gray",
                    label="market bid/ask")  # fmt: skip
    axis.plot(strike, 100 * rows["market_iv"], "o", ms=3, color="tab:blue", label="market")
    grid = np.linspace(strike.min(), strike.max(), 60)
    # an expiry of one strike: its curve, of length 0, was not drawn at all
    mark = {"marker": "_", "ms": 12} if strike.min() == strike.max() else {}
    try:
        curve = model_vols(result, strike=grid, maturity=maturity, forward=forward)
        axis.plot(grid, 100 * curve, "-", color="tab:red",
                  label=f"{result.model} ({result.method})", **mark)  # fmt: skip
    except ValueError:
        axis.plot(strike, 100 * rows["model_iv"], "-", color="tab:red", label=result.model,
                  **mark)  # fmt: skip
    axis.set_title(f"T = {maturity:.3f}y ({maturity * 365:.0f}d)", fontsize=9)
    axis.tick_params(labelsize=7)


def plot_smiles(
    result: CalibrationResult, path: str | Path, *, quotes: pd.DataFrame | None = None
) -> Path:
    """Write a PNG with one implied-vol smile panel per expiry.

    Args:
        result: a calibration result (its residual table gives strikes, market and model vols).
        path: the PNG to write.
        quotes: the quotes that were fitted, row-aligned with ``result.residuals``; when they have
            ``bid_iv``/``ask_iv`` the panels show bid-ask bars.

    Returns:
        The path written.

    Examples:
        >>> import tempfile
        >>> table = pd.DataFrame({"maturity": 1.0, "strike": [90.0, 100.0, 110.0],
        ...     "forward": 100.0, "market_iv": [0.22, 0.2, 0.19], "model_iv": [0.22, 0.2, 0.19]})
        >>> heston = {"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.5, "rho": -0.7}
        >>> result = CalibrationResult("heston", "direct", heston, table, 10.0, 20.0, 0.1, 3, 0,
        ...     0.1, True, 3)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     png = plot_smiles(result, f"{tmp}/smiles.png")
        ...     png.name, png.stat().st_size > 0
        ('smiles.png', True)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result.residuals
    expiries = sorted(table["maturity"].round(10).unique())
    cols = min(4, len(expiries))
    rows = math.ceil(len(expiries) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    try:  # closed even when drawing or saving fails (pyplot keeps open figures alive)
        for axis, expiry in zip(axes.flat, expiries, strict=False):
            _panel(axis, table[table["maturity"].round(10) == expiry], result, quotes)
        for axis in list(axes.flat)[len(expiries) :]:
            axis.set_visible(False)
        axes.flat[0].legend(fontsize=7)
        fig.supxlabel("strike", fontsize=9)
        fig.supylabel("implied vol (%)", fontsize=9)
        fig.suptitle(f"{result.model} {result.method}: RMSE {result.rmse_iv_bp:.1f} bp",
                     fontsize=10)  # fmt: skip
        fig.tight_layout()
        path = save_figure_atomically(fig, path, dpi=110)
    finally:
        plt.close(fig)
    return path
