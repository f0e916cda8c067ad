"""``qfnet demo``: the toolkit's three jobs end to end on bundled data, with a Markdown report.

1. Generate labelled Heston data and train a small surrogate through the shared Trainer; compare
   the shipped PDE-trained SABR surrogate and Hagan's formula with QuantLib's SABR PDE.
2. Calibrate Heston (every available method) and SABR (per expiry) to the bundled DAX surface.
3. Train a deep hedge under the calibrated Heston model and backtest it against delta hedging.

``quick=True`` shrinks every stage (the test suite runs it); the default settings take a few minutes
on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pricing._validation import json_safe
from pricing.quotes import read_quotes
from qfnet._paths import data_dir
from qfnet.calibration_notes import calibration_notes
from qfnet.price_rows import price_table
from qfnet.training.checkpoint import ModelFileError, write_text_atomically

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
                "test rows": test.get("n", 0),
                "test mean abs IV error (bp)": test.get("mae_bp", float("nan")),
                "test p99 (bp)": test.get("p99_bp", float("nan")),
                "test max (bp)": test.get("max_bp", float("nan")),
            }
        ]
    )
    hidden = "x".join(str(h) for h in summary["architecture"]["hidden"])
    shipped = _shipped_surrogate_test()
    return [
        "## 1. Heston surrogate",
        "",
        f"Labelled Heston data (scrambled Sobol points of the documented box, labelled by the "
        f"{summary['engine']} pricer) and a surrogate ({hidden} hidden units) trained through "
        f"the shared Trainer on {summary['rows']['train']} rows. A short run: the shipped default "
        "surrogate in `data/surrogates/heston_default` is the accurate one (on its test split of "
        f"{shipped['n']} rows: mean {shipped['mae_bp']:.2g} bp, p99 {shipped['p99_bp']:.2g} bp, "
        f"max {shipped['max_bp']:.2g} bp).",
        "",
        _markdown(rows, floatfmt=".3g"),
        "",
        "![loss](surrogate_run/loss.png) ![errors](surrogate_run/error_hist.png)",
        "",
        *_sabr_lines(out, settings, seed),
    ]


def _shipped_surrogate_test() -> dict[str, float]:
    """The test errors recorded in the shipped Heston surrogate (``n``, ``mae_bp``, ``p99_bp``,
    ``max_bp``)."""
    from qfnet.surrogate import load_surrogate

    return load_surrogate().training_summary["test"]


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
    from pricing.datasets import SABR_PDE_DOMAIN

    errors = sabr_beyond_hagan(settings.sabr_points, seed)
    write_text_atomically(json.dumps(json_safe(errors), indent=2, allow_nan=False) + "\n",
                          out / "sabr_beyond_hagan.json")  # fmt: skip
    low, high = SABR_PDE_DOMAIN.maturity
    return [
        "### SABR beyond Hagan",
        "",
        "The shipped SABR surrogate (`data/surrogates/sabr_pde`, trained on QuantLib's SABR PDE) "
        f"and Hagan's formula against the PDE on {errors['points']} fresh random points of its "
        f"domain ({_without_pde_vol(settings.sabr_points, errors['points'])}maturities {low:g} "
        f"to {high:g} years; absolute implied-vol errors; "
        "`benchmarks/bench_sabr_pde.py` runs the comparison on more points):",
        "",
        _markdown(pd.DataFrame([errors]), floatfmt=".3g"),
    ]


def _without_pde_vol(drawn: int, used: int) -> str:
    """The points drawn that the comparison left out, in words (empty when none).

    Examples:
        >>> _without_pde_vol(64, 61), _without_pde_vol(12, 11), _without_pde_vol(8, 8)
        ('3 of the 64 drawn have no PDE implied vol; ', '1 of the 12 drawn has no PDE implied vol; ', '')
    """
    missing = drawn - used
    verb = "has" if missing == 1 else "have"
    return f"{missing} of the {drawn} drawn {verb} no PDE implied vol; " if missing else ""


def _calibration_stage(out: Path, seed: int) -> tuple[list[str], dict[str, float]]:
    # Importing these registers the qfnet-side methods ("network", "surrogate").
    import qfnet.calibration_network_method
    import qfnet.calibration_surrogate  # noqa: F401
    from pricing.calibration import available_methods, calibrate
    from pricing.smile_plot import plot_smiles

    quotes = otm_surface()
    rows, results, warned = [], {}, []
    for method in available_methods("heston"):
        try:
            with _warnings_kept(warned, f"`{method}`"):
                results[method] = result = calibrate("heston", quotes, method=method, seed=seed)
        except ModelFileError:  # a damaged shipped model: named, not "not applicable" (then
            raise  # a KeyError on the missing direct fit)
        except ValueError as error:  # e.g. quotes outside the surrogate's domain
            rows.append(_calibration_row("heston", method, None, f"not applicable: {error}"))
            continue
        rows.append(_calibration_row("heston", method, result, result.converged))
    sabr = calibrate("sabr", quotes, method="direct", seed=seed)
    betas = sorted({float(b) for b in sabr.params["beta"]})
    model = f"sabr (beta={', '.join(f'{b:g}' for b in betas)}, per expiry)"
    rows.append(_calibration_row(model, "direct", sabr, sabr.converged))
    best = results["direct"]  # the direct Heston method is always registered
    write_text_atomically(json.dumps(json_safe(best.to_dict()), indent=2, allow_nan=False) + "\n",
                          out / "calibration_heston.json")  # fmt: skip
    plot_smiles(best, out / "smiles_heston.png")
    plot_smiles(sabr, out / "smiles_sabr.png")
    params = ", ".join(f"{k}={v:.4f}" for k, v in best.params.items())
    version, reference_sse = _quantlib_reference_sse()
    lines = [
        "## 2. Calibration to the DAX surface",
        "",
        f"Published reference: Heston SSE 177.2 (Sepp 2003, as QuantLib's test suite has it). "
        f"QuantLib {version}'s own calibration in that test's setup (maturities rounded to whole "
        f"weeks, as its helpers do) reaches {reference_sse:.2f} here. The fits below use the exact "
        f"maturities, whose optimum is another one (direct: SSE {best.sse:.2f}).",
        "",
        pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"),
        "",
        f"Heston (direct): {params}",
        "",
        *calibration_notes(results, warned),
        "![heston smiles](smiles_heston.png) ![sabr smiles](smiles_sabr.png)",
    ]
    return lines, dict(best.params)


def _calibration_row(model: str, method: str, result: Any, converged: Any) -> dict[str, Any]:
    """A row of the calibration table (NaN numbers where the method did not apply)."""
    nan = float("nan")
    return {
        "model": model,
        "method": method,
        "RMSE (bp)": nan if result is None else result.rmse_iv_bp,
        "SSE (QuantLib convention)": nan if result is None else result.sse,
        "seconds": nan if result is None else result.seconds,
        "iterations": "" if result is None or result.iterations is None else result.iterations,
        "converged": converged,
    }


@contextlib.contextmanager
def _warnings_kept(kept: list[str], source: str) -> Iterator[None]:
    """Append the messages of the warnings raised in the block to ``kept`` (prefixed with
    ``source``) for the report, and issue them again (they also go to the terminal).

    Examples:
        >>> kept = []
        >>> with warnings.catch_warnings(record=True) as shown:
        ...     warnings.simplefilter("always")
        ...     with _warnings_kept(kept, "`network`"):
        ...         warnings.warn("at the edge of its box")
        >>> kept, [str(w.message) for w in shown]
        (['`network`: at the edge of its box'], ['at the edge of its box'])
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        kept += [f"{source}: {w.message}" for w in caught]
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _quantlib_reference_sse() -> tuple[str, float]:
    """QuantLib's version and the SSE of its own DAX calibration in its test suite's setup
    (``testDAXCalibration``: helpers' maturities in whole weeks, TARGET calendar)."""
    from pricing.quantlib import QUANTLIB_VERSION, heston_calibrate

    vols = pd.read_csv(DAX_SURFACE)
    curve = pd.read_csv(DAX_SURFACE.parent / "zero_curve.csv")
    fit = heston_calibrate(
        spot=float(vols["spot"].iloc[0]),
        strike=vols["strike"].to_numpy(),
        period=vols["helper_maturity_weeks"].to_numpy(),
        market_vol=vols["implied_vol"].to_numpy(),
        curve_days=curve["days"].to_numpy(),
        zero_rate=curve["zero_rate"].to_numpy(),
        period_unit="weeks",
        calendar="target",
    )
    sse = float(np.sum((100 * (fit.model_vol - vols["implied_vol"].to_numpy())) ** 2))
    return QUANTLIB_VERSION, sse


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
        f"{_hedge_setup(config)}; every strategy evaluated on the same {report['n_paths']} "
        "fresh test paths. P&L with the underlying starting at "
        f"{config.market.spot:g}{_premium(config)}; VaR and ES are of the loss (-P&L).",
        "",
        table.to_markdown(index=False, floatfmt=".4g"),
        "",
        *_hedge_columns(config, report),
        "",
        plots,
    ]


def _hedge_columns(config: Any, report: dict[str, Any]) -> list[str]:
    """What the ``turnover`` and ``cost`` columns of the hedging table measure, one line each,
    with the ``learned`` and ``delta`` rows of ``report`` as examples.

    Examples:
        >>> from qfnet.hedging.config import load_config
        >>> rows = {"learned": {"turnover": 1.2, "cost": 0.0011},
        ...         "delta": {"turnover": 2.5, "cost": 0.0024}}
        >>> turnover, cost = _hedge_columns(load_config(HEDGE_CONFIG), rows)
        >>> turnover  # doctest: +NORMALIZE_WHITESPACE
        '- `turnover`: units traded per path (mean over the test paths), every trade counted:
        the first from a flat book and the liquidation at expiry included; `learned` 1.2,
        `delta` 2.5.'
        >>> cost  # doctest: +NORMALIZE_WHITESPACE
        "- `cost`: transaction costs paid per path (mean), 10 bp of each trade's value, in time-0
        money and already deducted from `mean`; `learned` 0.0011, `delta` 0.0024."
    """
    market = config.market
    close = "and the liquidation at expiry " if market.liquidate else "(no liquidation at expiry) "
    summed = " summed over the instruments," if len(market.instruments) > 1 else ""
    learned, delta = report["learned"], report["delta"]
    return [
        f"- `turnover`: units traded per path (mean over the test paths),{summed} every trade "
        f"counted: the first from a flat book {close}included; `learned` "
        f"{learned['turnover']:.3g}, `delta` {delta['turnover']:.3g}.",
        f"- `cost`: transaction costs paid per path (mean), {_cost_bp(market)} bp of each "
        "trade's value, in time-0 money and already deducted from `mean`; `learned` "
        f"{learned['cost']:.3g}, `delta` {delta['cost']:.3g}.",
    ]


def _cost_bp(market: Any) -> str:
    """The proportional cost rate(s) of a market config in basis points (``10`` or ``10/5``)."""
    costs = market.cost if isinstance(market.cost, list) else [market.cost]
    return "/".join(f"{c * 1e4:g}" for c in costs)


def _hedge_setup(config: Any) -> str:
    """The hedging problem of a :class:`~qfnet.hedging.config.HedgeConfig`, in words.

    Examples:
        >>> from qfnet.hedging.config import load_config
        >>> _hedge_setup(load_config(HEDGE_CONFIG))  # doctest: +NORMALIZE_WHITESPACE
        'Short at-the-money european call (strike 1), 20 rebalancing steps over 0.08 years,
        10 bp proportional costs; learned strategy: ntb network trained on ES95 (200000
        training paths, at most 10 epochs)'
    """
    market, option = config.market, config.derivative
    moneyness = "at-the-money " if option.strike == market.spot else ""
    kind = "call" if option.is_call else "put"
    bp = _cost_bp(market)
    objective = config.objective
    goal = f"ES{objective.alpha * 100:g}" if objective.name == "es" else objective.name
    epochs = config.training.epochs
    return (f"Short {moneyness}{option.type} {kind} (strike {option.strike:g}), "
            f"{market.n_steps} rebalancing steps over {market.maturity:g} years, {bp} bp "
            f"proportional costs; learned strategy: {config.strategy.type} network trained on "
            f"{goal} ({config.paths.train} training paths, at most {epochs} "
            f"epoch{'s' if epochs != 1 else ''})")  # fmt: skip


def _premium(config: Any) -> str:
    premium = config.derivative.premium
    return ", before the option's premium" if premium == 0 else f", premium {premium:g} received"


_OWN_DIRS = ("heston_data", "surrogate_run", "hedge_run", "hedge_report")
"""The demo's folders under ``out``: a rerun replaces them."""

_OWN_FILES = ("report.md", "dax_surface_prices.csv", "sabr_beyond_hagan.json",
              "calibration_heston.json", "smiles_heston.png", "smiles_sabr.png")  # fmt: skip
"""The demo's files directly under ``out``: a rerun removes them first (an interrupted one left
the earlier run's beside its own: a report of other numbers, of images it had removed)."""


_MARKER = ".qfnet-demo"
"""Written first into ``out``: marks the folders of :data:`_OWN_DIRS` as the demo's own."""


def _clear_previous_run(out: Path) -> None:
    """Remove what an earlier (or interrupted) demo left in ``out`` (a second ``make demo``
    failed on its dataset): its folders and files, and nothing else: only where the demo's
    marker is.

    Raises:
        FileExistsError: ``out`` has no marker but holds one of the demo's folders (another
            program's, or a demo's from before the marker): the run wrote into it (or failed on
            a dataset there, after the calibration) and marked it for the next run to delete.
    """
    if (out / _MARKER).is_file():
        for name in _OWN_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
        for name in _OWN_FILES:
            (out / name).unlink(missing_ok=True)
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
        The reduced run (12-15 s on 2 idle cores; ``qfnet demo --quick``; on busy ones set
        ``OMP_WAIT_POLICY=passive``, see the README):

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
    sizes = ", ".join(f"{f.name} {getattr(settings, f.name)}" for f in dataclasses.fields(settings))
    lines = ["# qfnet demo report", "",
             f"Settings: {'quick' if quick else 'full'} ({sizes}), seed {seed}.", ""]  # fmt: skip
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
