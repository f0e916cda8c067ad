"""``qfnet demo``: the toolkit's main job end to end on the bundled DAX surface, with a report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pricing.quotes import read_quotes
from qfnet.price_rows import price_table

__all__ = ["DAX_SURFACE", "otm_surface", "run_demo"]

DAX_SURFACE = Path(__file__).resolve().parent.parent / "data" / "dax_2002_sepp" / "implied_vols.csv"


def otm_surface(path: Path = DAX_SURFACE) -> pd.DataFrame:
    """The bundled surface as a quote table of out-of-the-money options (puts below the forward).

    Shape:
        output: one row per (strike, maturity) point of the surface.
    """
    quotes = read_quotes(path)
    forward = quotes["spot"] * np.exp((quotes["rate"] - quotes["dividend"]) * quotes["maturity"])
    quotes["option_type"] = np.where(quotes["strike"] >= forward, "call", "put")
    return quotes


def _surface_prices(out: Path) -> pd.DataFrame:
    quotes = otm_surface()
    quotes["volatility"] = quotes["implied_vol"]
    priced = price_table(quotes.drop(columns=["implied_vol"]), model="bs")
    priced = priced.rename(columns={"implied_vol": "implied_vol_roundtrip"})
    priced["market_iv"] = quotes["implied_vol"]
    priced.to_csv(out / "dax_surface_prices.csv", index=False)
    return priced


def run_demo(out: Path, *, quick: bool = False, seed: int = 0) -> Path:
    """Run the demo pipeline and write ``out/report.md``; return the report path."""
    out.mkdir(parents=True, exist_ok=True)
    priced = _surface_prices(out)
    shortest = priced[priced["maturity"] == priced["maturity"].min()]
    table = shortest[["strike", "option_type", "market_iv", "price", "implied_vol_roundtrip"]]
    lines = [
        "# qfnet demo report",
        "",
        f"Bundled DAX surface: {len(priced)} options, {priced['maturity'].nunique()} maturities.",
        "",
        f"## Black-Scholes prices, shortest maturity ({shortest['maturity'].iloc[0]:.4f} y)",
        "",
        table.to_markdown(index=False, floatfmt=".6f"),
        "",
        "Max implied-vol round-trip error (price -> vol): "
        f"{np.abs(priced['implied_vol_roundtrip'] - priced['market_iv']).max():.2e}",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
