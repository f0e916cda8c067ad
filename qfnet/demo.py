"""``qfnet demo``: the toolkit's three jobs end to end on bundled data, with a Markdown report.

1. Generate labelled Heston data and train a small surrogate through the shared Trainer; compare
   the shipped PDE-trained SABR surrogate and Hagan's formula with QuantLib's SABR PDE.
2. Calibrate Heston (every available method) and SABR (per expiry) to the bundled DAX surface.
3. Train a deep hedge under the calibrated Heston model and backtest it against delta hedging.

``quick=True`` shrinks every stage (the test suite runs it); the default settings take a few minutes
on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pricing.quotes import read_quotes
from qfnet._paths import data_dir
from qfnet.price_rows import price_table

__all__ = ["DAX_SURFACE", "DemoSettings", "otm_surface", "run_demo", "sabr_beyond_hagan"]

DAX_SURFACE = data_dir() / "dax_2002_sepp" / "implied_vols.csv"
HEDGE_CONFIG = data_dir() / "configs" / "hedge_heston_cost10bp.yaml"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of each stage.

    Examples:
        >>> QUICK.n_data, QUICK.hedge_epochs, FULL.surrogate_epochs
        (4096, 1, 40)
        >>> dataclasses.replace(QUICK, n_data=1024).n_data
        1024
    """

    n_data: int
    surrogate_epochs: int
    hedge_train_paths: int
    hedge_test_paths: int
    hedge_epochs: int
    sabr_points: int = 64


FULL = DemoSettings(
    n_data=131_072,
    surrogate_epochs=40,
    hedge_train_paths=200_000,
    hedge_test_paths=200_000,
    hedge_epochs=10,
)
QUICK = DemoSettings(
    n_data=4096,
    surrogate_epochs=2,
    hedge_train_paths=4000,
    hedge_test_paths=4000,
    hedge_epochs=1,
    sabr_points=12,
)


def otm_surface(path: Path = DAX_SURFACE) -> pd.DataFrame:
    """The bundled surface as a quote table of out-of-the-money options (puts below the forward).

    Shape:
        output: one row per (strike, maturity) point of the surface.

    Examples:
        >>> surface = otm_surface()
        >>> len(surface), surface["option_type"].value_counts().to_dict()
        (104, {'put': 57, 'call': 47})
    """
    quotes = read_quotes(path)
    forward = quotes["spot"] * np.exp((quotes["rate"] - quotes["dividend"]) * quotes["maturity"])
    quotes["option_type"] = np.where(quotes["strike"] >= forward, "call", "put")
    return quotes


def _surface_prices(out: Path) -> list[str]:
    quotes = otm_surface()
    quotes["volatility"] = quotes["implied_vol"]
    priced = price_table(quotes.drop(columns=["implied_vol"]), model="bs")
    priced.to_csv(out / "dax_surface_prices.csv", index=False)
    error = np.abs(priced["implied_vol"] - quotes["implied_vol"]).max()
    return [
        "## 0. The bundled surface",
        "",
        f"DAX (Sepp 2003): {len(priced)} options on {priced['maturity'].nunique()} maturities, "
        f"priced with Black-Scholes at their market vols and inverted back (max round-trip vol "
        f"error {error:.1e}): `dax_surface_prices.csv`.",
    ]


def _surrogate_stage(out: Path, settings: DemoSettings, seed: int) -> list[str]:
    from pricing.datasets import generate
    from qfnet.surrogate_training import train_surrogate

    start = time.perf_counter()
    data_dir = generate(out / "heston_data", model="heston", n=settings.n_data, seed=seed)
    gen_seconds = time.perf_counter() - start
    start = time.perf_counter()
    summary = train_surrogate(
        data_dir, out / "surrogate_run", epochs=settings.surrogate_epochs, seed=seed
    )
    train_seconds = time.perf_counter() - start
    test = summary.get("test", {})
    rows = pd.DataFrame(
        [
            {
                "points": settings.n_data,
                "generation s": gen_seconds,
                "epochs": settings.surrogate_epochs,
                "training s": train_seconds,
                "test mean abs IV error (bp)": test.get("mae_bp", float("nan")),
                "test p99 (bp)": test.get("p99_bp", float("nan")),
                "test max (bp)": test.get("max_bp", float("nan")),
            }
        ]
    )
    return [
        "## 1. Heston surrogate",
        "",
        "Labelled Heston data (Sobol over the documented box, analytic pricer) and a small "
        "surrogate trained through the shared Trainer (a short run: the shipped default surrogate "
        "in `data/surrogates/heston_default` is the accurate one).",
        "",
        _markdown(rows, floatfmt=".3g"),
        "",
        "![loss](surrogate_run/loss.png) ![errors](surrogate_run/error_hist.png)",
        "",
        *_sabr_lines(out, settings, seed),
    ]


def _markdown(frame: pd.DataFrame, *, floatfmt: str) -> str:
    """``frame`` as a Markdown table whose integer columns stay integers: a table of numbers
    alone reached tabulate as one float array, so ``floatfmt`` rounded its counts (131,072 points
    were printed as 1.31e+05)."""
    return frame.astype(object).to_markdown(index=False, floatfmt=floatfmt)


def sabr_beyond_hagan(n: int, seed: int) -> dict[str, float]:
    """Mean and max implied-vol errors (bp) of Hagan's formula and of the shipped PDE-trained SABR
    surrogate against QuantLib's SABR PDE on ``n`` fresh random points of the surrogate's domain
    (:func:`qfnet.sabr_pde.compare_with_pde`).

    Examples:
        >>> errors = sabr_beyond_hagan(4, seed=1)
        >>> sorted(errors)[:3], errors["points"] <= 4
        (['hagan_max_bp', 'hagan_mean_bp', 'pde_seconds'], True)
    """
    from qfnet.sabr_pde import compare_with_pde

    comparison = compare_with_pde(n, seed=seed)
    valid = comparison.points[comparison.points["valid"]]
    return {"points": len(valid), "pde_seconds": comparison.pde_seconds,
            "hagan_mean_bp": float(valid["hagan_bp"].mean()),
            "hagan_max_bp": float(valid["hagan_bp"].max()),
            "surrogate_mean_bp": float(valid["surrogate_bp"].mean()),
            "surrogate_max_bp": float(valid["surrogate_bp"].max())}  # fmt: skip


def _sabr_lines(out: Path, settings: DemoSettings, seed: int) -> list[str]:
    errors = sabr_beyond_hagan(settings.sabr_points, seed)
    (out / "sabr_beyond_hagan.json").write_text(json.dumps(errors, indent=2) + "\n")
    return [
        "### SABR beyond Hagan",
        "",
        "The shipped SABR surrogate (`data/surrogates/sabr_pde`, trained on QuantLib's SABR PDE) "
        "and Hagan's formula against the PDE on fresh random points of its domain (maturities "
        "up to 10 years; `benchmarks/bench_sabr_pde.py` uses 600 points):",
        "",
        _markdown(pd.DataFrame([errors]), floatfmt=".3g"),
    ]


def _calibration_stage(out: Path, seed: int) -> tuple[list[str], dict[str, float]]:
    # Importing these registers the qfnet-side methods ("network", "surrogate").
    import qfnet.calibration_network_method
    import qfnet.calibration_surrogate  # noqa: F401
    from pricing.calibration import available_methods, calibrate
    from pricing.smile_plot import plot_smiles

    quotes = otm_surface()
    rows, best = [], None
    for method in available_methods("heston"):
        try:
            result = calibrate("heston", quotes, method=method, seed=seed)
        except ValueError as error:  # e.g. quotes outside the surrogate's domain
            rows.append(
                {
                    "model": "heston",
                    "method": method,
                    "RMSE (bp)": float("nan"),
                    "SSE (QuantLib convention)": float("nan"),
                    "seconds": float("nan"),
                    "converged": f"not applicable: {error}",
                }
            )
            continue
        rows.append(
            {
                "model": "heston",
                "method": method,
                "RMSE (bp)": result.rmse_iv_bp,
                "SSE (QuantLib convention)": result.sse,
                "seconds": result.seconds,
                "converged": result.converged,
            }
        )
        if method == "direct":
            best = result
    sabr = calibrate("sabr", quotes, method="direct", seed=seed)
    rows.append(
        {
            "model": "sabr (beta=1, per expiry)",
            "method": "direct",
            "RMSE (bp)": sabr.rmse_iv_bp,
            "SSE (QuantLib convention)": sabr.sse,
            "seconds": sabr.seconds,
            "converged": sabr.converged,
        }
    )
    assert best is not None, "the direct Heston method is always registered"
    (out / "calibration_heston.json").write_text(json.dumps(best.to_dict(), indent=2))
    plot_smiles(best, out / "smiles_heston.png")
    plot_smiles(sabr, out / "smiles_sabr.png")
    params = ", ".join(f"{k}={v:.4f}" for k, v in best.params.items())
    lines = [
        "## 2. Calibration to the DAX surface",
        "",
        "Published reference: Heston SSE 177.2 (Sepp; QuantLib 1.44 reproduces 177.23 with "
        "maturities rounded to whole weeks, as its helpers do; the test suite checks that setup). "
        "Here the exact maturities are used, whose optimum is slightly different.",
        "",
        pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"),
        "",
        f"Heston (direct): {params}",
        "",
        "![heston smiles](smiles_heston.png) ![sabr smiles](smiles_sabr.png)",
    ]
    return lines, dict(best.params)


def _hedging_stage(
    out: Path, settings: DemoSettings, heston: dict[str, float], seed: int
) -> list[str]:
    from qfnet.hedging.backtest import run_backtest
    from qfnet.hedging.config import load_config
    from qfnet.hedging.train import train

    config = load_config(HEDGE_CONFIG)
    market = dataclasses.replace(
        config.market, **{k: float(heston[k]) for k in ("v0", "kappa", "theta", "sigma", "rho")}
    )
    config = dataclasses.replace(
        config,
        seed=seed,
        market=market,
        paths=dataclasses.replace(
            config.paths,
            train=settings.hedge_train_paths,
            val=max(settings.hedge_train_paths // 10, 1000),
            test=settings.hedge_test_paths,
        ),
        training=dataclasses.replace(config.training, epochs=settings.hedge_epochs),
    )
    run_dir = out / "hedge_run"
    train(config, run_dir, progress_bar=True)
    report = run_backtest(run_dir, out / "hedge_report", n_resamples=50, seed=seed + 1)
    keys = ("mean", "std", "var95", "es95", "es99", "turnover", "cost")
    table = pd.DataFrame(
        [{"strategy": name, **{k: report[name][k] for k in keys}} for name in report["strategies"]]
    )
    plots = " ".join(f"![{Path(p).stem}](hedge_report/{Path(p).name})" for p in report["plots"])
    return [
        "## 3. Deep hedging under the calibrated Heston model",
        "",
        "Short ATM call, 20 daily steps, 10 bp proportional costs, objective ES95; every strategy "
        f"evaluated on the same {report['n_paths']} fresh test paths.",
        "",
        table.to_markdown(index=False, floatfmt=".4g"),
        "",
        plots,
    ]


_OWN_DIRS = ("heston_data", "surrogate_run", "hedge_run", "hedge_report")
"""The demo's folders under ``out``: a rerun replaces them (its files it overwrites)."""


_MARKER = ".qfnet-demo"
"""Written first into ``out``: marks the folders of :data:`_OWN_DIRS` as the demo's own."""


def _clear_previous_run(out: Path) -> None:
    """Remove what an earlier (or interrupted) demo left in ``out`` (a second ``make demo``
    failed on its dataset), and nothing else: only where the demo's marker is.

    Raises:
        FileExistsError: ``out`` has no marker but holds one of the demo's folders (another
            program's, or a demo's from before the marker): the run wrote into it (or failed on
            a dataset there, after the calibration) and marked it for the next run to delete.
    """
    if (out / _MARKER).is_file():
        for name in _OWN_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
    else:
        taken = [name for name in _OWN_DIRS if (out / name).exists()]
        if taken:
            raise FileExistsError(
                f"--out {out}: holds {', '.join(taken)} without the {_MARKER} marker of a "
                "qfnet demo run; remove it or choose another --out"
            )
    (out / _MARKER).write_text("written by qfnet demo: reruns replace its folders here\n")


def run_demo(out: Path, *, quick: bool = False, seed: int = 0) -> Path:
    """Run the three jobs and write ``out/report.md`` (plus data, runs and plots); return its path.

    Examples:
        The reduced run (about 10 s on 2 cores; ``qfnet demo --quick``):

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     report = run_demo(Path(tmp) / "demo", quick=True)
        ...     text = report.read_text()
        ...     headline = summary(report)
        >>> "## 2. Calibration to the DAX surface" in text, sorted(headline)
        (True, ['calibration', 'hedging', 'sabr'])
    """
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous_run(out)
    settings = QUICK if quick else FULL
    calibration_lines, heston = _calibration_stage(out, seed)
    sections = [
        _surface_prices(out),
        _surrogate_stage(out, settings, seed),
        calibration_lines,
        _hedging_stage(out, settings, heston, seed),
    ]
    lines = ["# qfnet demo report", ""]
    for section in sections:
        lines += [*section, ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def summary(report: Path) -> dict[str, Any]:
    """The demo's headline numbers, read back from the files it wrote (for tests and scripts)."""
    out = report.parent
    return {
        "calibration": json.loads((out / "calibration_heston.json").read_text()),
        "hedging": json.loads((out / "hedge_report" / "report.json").read_text()),
        "sabr": json.loads((out / "sabr_beyond_hagan.json").read_text()),
    }
