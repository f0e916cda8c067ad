"""Smile plots: one panel per expiry, market quotes and bid/ask bars, the model curve through the
model vols of the residual table (read from the figure's axes, not by eye)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import pricing.smile_plot
from pricing.calibration import CalibrationResult
from pricing.sabr import lognormal_vol
from pricing.smile_plot import plot_smiles

SABR = {"alpha": 0.25, "beta": 1.0, "rho": -0.4, "nu": 0.7, "shift": 0.0}


def _sabr_result(strikes: dict[float, list[float]]) -> tuple[CalibrationResult, pd.DataFrame]:
    """A SABR result of the smiles ``maturity -> strikes`` (forward 100), market vols 50 bp
    above the model's, and its quotes with a bid/ask of 1 vol point around the market."""
    rows = []
    for t, k in strikes.items():
        model = lognormal_vol(
            forward=100.0, strike=torch.tensor(k, dtype=torch.float64), maturity=t, **SABR
        ).numpy()
        rows.append(pd.DataFrame({"maturity": t, "strike": k, "option_type": "call",
                                  "forward": 100.0, "discount": 1.0, "market_iv": model + 0.005,
                                  "model_iv": model, "error_bp": -50.0, "weight": 1.0}))  # fmt: skip
    residuals = pd.concat(rows, ignore_index=True)
    params = {"maturity": list(strikes), "forward": [100.0] * len(strikes)}
    params |= {name: [value] * len(strikes) for name, value in SABR.items()}
    result = CalibrationResult("sabr", "direct", params, residuals, 50.0, 50.0, 0.0,
                               len(residuals), 0, 0.1, True, 5)  # fmt: skip
    quotes = residuals.assign(bid_iv=residuals["market_iv"] - 0.005,
                              ask_iv=residuals["market_iv"] + 0.005)  # fmt: skip
    return result, quotes


def _drawn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, result, quotes) -> list:
    """The visible axes of the figure that ``plot_smiles`` saved."""
    saved = {}
    save = pricing.smile_plot.save_figure_atomically

    def capture(fig, path, **kwargs):
        saved["fig"] = fig
        return save(fig, path, **kwargs)

    monkeypatch.setattr(pricing.smile_plot, "save_figure_atomically", capture)
    plot_smiles(result, tmp_path / "smiles.png", quotes=quotes)
    return [axis for axis in saved["fig"].axes if axis.get_visible()]


def _model_line(axis):
    return next(line for line in axis.get_lines() if line.get_label().startswith("sabr"))


def test_one_panel_per_expiry_with_the_model_curve_through_the_model_vols(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    strikes = {
        t: list(100.0 * np.exp(np.linspace(-0.3, 0.3, 7))) for t in (0.25, 0.5, 1.0, 2.0, 5.0)
    }
    result, quotes = _sabr_result(strikes)
    axes = _drawn(monkeypatch, tmp_path, result, quotes)
    assert len(axes) == 5
    for axis, (_, rows) in zip(axes, result.residuals.groupby("maturity"), strict=True):
        line = _model_line(axis)
        curve = np.interp(rows["strike"], line.get_xdata(), line.get_ydata())
        np.testing.assert_allclose(curve, 100 * rows["model_iv"], atol=0.02)  # vol points
        (bars,) = axis.collections
        lows, highs = (np.array([segment[:, 1].min() for segment in bars.get_segments()]),
                       np.array([segment[:, 1].max() for segment in bars.get_segments()]))  # fmt: skip
        np.testing.assert_allclose(lows, 100 * rows["market_iv"] - 0.5, atol=1e-9)
        np.testing.assert_allclose(highs, 100 * rows["market_iv"] + 0.5, atol=1e-9)


def test_an_expiry_of_one_strike_shows_its_model_vol(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # its curve, 60 points at one strike, was a line of length 0: the panel showed no model vol
    result, quotes = _sabr_result({0.5: [90.0, 100.0, 110.0], 1.0: [100.0]})
    line = _model_line(_drawn(monkeypatch, tmp_path, result, quotes)[1])
    assert line.get_marker() not in (None, "None", "", " ")
    np.testing.assert_allclose(line.get_ydata(), 100 * result.residuals["model_iv"].iloc[-1],
                               rtol=1e-12)  # fmt: skip
