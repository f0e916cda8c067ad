"""Backtest every strategy on the same test paths and write ``report.json`` with bootstrap CIs.

The report has one entry per strategy (``learned``, ``delta``, ``no_hedge``, ``whalley_wilmott``
and, under Heston with a European option, ``heston_delta``; their names listed under
``strategies``) with ``mean, std, var95, es95, es99, entropic`` of the P&L (VaR/ES of the loss
``-pnl``), the mean ``turnover`` and ``cost`` per path, and ``ci95``: percentile bootstrap
intervals of each risk metric. Also
``n_paths``, ``config`` and ``es95_vs_delta``: each strategy's ES95 relative to the delta hedge,
``(ES - ES_delta) / |ES_delta|`` (below 0: a smaller tail loss, also when a premium makes delta's
ES negative; NaN, null in report.json, when delta's is 0), with a paired bootstrap interval.

Units: the P&L metrics and ``cost`` are time-0 (discounted) money per option sold on one unit
of the underlying, which starts at ``market.spot`` (they scale with it); ``turnover`` counts
units of the instruments traded; ``entropic`` uses ``objective.risk_aversion`` per unit of that
money.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pricing._validation import check_positive_int, json_safe
from qfnet import functional as F
from qfnet.hedging.config import HedgeConfig, config_to_dict
from qfnet.hedging.markets import HedgeData, Market, RawPaths
from qfnet.hedging.pnl import HedgeResult, risk_metrics, run_strategy
from qfnet.hedging.strategies import (
    BlackScholesDelta,
    HestonDelta,
    LearnedStrategy,
    NoHedge,
    WhalleyWilmott,
)
from qfnet.hedging.train import load_run, make_paths
from qfnet.training.checkpoint import write_text_atomically

__all__ = ["backtest", "bootstrap_ci", "read_paths", "run_backtest"]

_CI_METRICS = ("mean", "std", "var95", "es95", "es99", "entropic")


def read_paths(path: str | Path, market: Market) -> RawPaths:
    """Read user price paths from Parquet (a file, or the folder of a dataset partitioned with
    pandas' ``partition_cols``) and rescale each to start at ``market.spot``.

    Two layouts: *wide* (one row per path, ``T + 1`` numeric columns in time order, and
    optionally a ``path`` column of names, never read as a price) or *long*
    (columns ``path``, ``step`` (numbers or dates), ``spot`` and optionally ``variance``; each
    path its ``T + 1`` rows, in the order of its own steps: windows of one history may keep
    their dates). Each path is divided by its first price ``S_0`` and multiplied by ``spot``
    so the option (struck relative to ``spot``) is hedged on every window alike; a price that
    then leaves the market dtype's range is refused. ``variance`` is refused for a Black-Scholes
    market (its hedges use the constant ``market.volatility``). Without it a Heston market's
    implied-vol proxy stays at its time-0 level on every path and step
    (:meth:`Market.vol_proxy`; the deltas, the band and the learned policy's features see no
    change of volatility).

    Shape:
        - output spot (and variance, when given): (N, T + 1)

    Examples:
        >>> import tempfile
        >>> from qfnet.hedging.config import config_from_dict
        >>> market = Market(config_from_dict({"market": {"n_steps": 5}}))
        >>> wide = pd.DataFrame({str(t): [100.0 + t, 50.0 - t] for t in range(6)})  # 2 paths
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     wide.to_parquet(Path(tmp) / "paths.parquet")
        ...     raw = read_paths(Path(tmp) / "paths.parquet", market)
        >>> raw.spot.shape, raw.spot[:, :2].tolist(), raw.variance
        (torch.Size([2, 6]), [[1.0, 1.01], [1.0, 0.98]], None)
    """
    if not Path(path).exists():  # a folder: a partitioned dataset (pandas' partition_cols)
        raise FileNotFoundError(f"paths file {path}: no such file")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"paths file {path}: not a readable Parquet file ({error})") from None
    if len(frame) == 0:
        raise ValueError(f"paths file {path}: no paths (0 rows)")
    steps = market.n_steps
    variance, skipped = None, []
    if {"path", "step", "spot"} <= set(frame.columns):
        wide, variance = _long_to_wide(frame, path, steps)
        if variance is not None and not market.is_heston:  # it was ignored without a word
            raise ValueError(f"{path}: column 'variance' is read under market.model heston only; "
                             f"this {market.market.model} run hedges at its constant "
                             f"market.volatility {market.market.volatility}: drop the "
                             "column")  # fmt: skip
    else:
        wide = _wide_prices(frame, path)
        skipped = [str(c) for c in frame.columns if c not in wide.columns and c != "path"]
    values = wide.to_numpy(dtype=np.float64, copy=True)
    if values.ndim != 2 or values.shape[1] != steps + 1:
        # prices stored as text were "got 0" (or one price short), without a why
        note = f" (not numeric, not read: columns {skipped})" if skipped else ""
        raise ValueError(
            f"{path}: expected {steps + 1} prices per path (market.n_steps + 1), "
            f"got {values.shape[1] if values.ndim == 2 else values.shape}{note}"
        )
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        row, step = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{path}: path {wide.index.tolist()[row]!r}, step {step}: price "
                         f"{values[row, step]} is not a positive number")  # fmt: skip
    if variance is not None:
        bad = ~np.isfinite(variance) | (variance < 0)
        if bad.any():
            row, step = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{path}: path {wide.index.tolist()[row]!r}, step {step}: column 'variance' "
                             f"is {variance[row, step]}, not a number >= 0")  # fmt: skip
    spot = _rescaled(values, market, path, wide.index)
    var_t = None if variance is None else torch.as_tensor(variance, dtype=market.dtype)
    if var_t is None and "variance_swap" in market.market.instruments:
        raise ValueError(f"{path}: the variance_swap instrument needs a 'variance' column")
    return RawPaths(spot, var_t)


def _wide_prices(frame: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """The wide layout's numeric columns, a ``path`` column as the paths' names (its numbers
    were read as every path's first price, the ids as ``S_0``, where the column count allowed).
    """
    partial = {"step", "spot"} & set(frame.columns)
    if partial:  # a long layout short of a column, whose steps were read as prices
        missing = sorted({"path", "step", "spot"} - set(frame.columns))
        raise ValueError(f"paths file {path}: columns {sorted(partial)} but no {missing}: the "
                         "long layout has path, step and spot")  # fmt: skip
    if "path" in frame.columns:
        frame = frame.set_index("path")
    return frame.select_dtypes("number")  # text columns (labels) are not read


def _rescaled(
    values: np.ndarray, market: Market, path: str | Path, names: pd.Index
) -> torch.Tensor:
    """Each path divided by its first price, then times ``market.spot``, in the market's dtype:
    multiplying by ``spot / S_0`` first made a start of 1e-320 an inf factor (every price inf,
    a NaN P&L later). A path that still leaves the dtype's range once rescaled (a rise of
    1e307 times its start at a ``spot`` of 100, or 1e37 in float32) is refused, naming it.

    Shape:
        - values, output: (N, T + 1)
    """
    spot = market.market.spot
    with np.errstate(over="ignore", under="ignore"):
        relative = values / values[:, :1]
    out = torch.as_tensor(relative * spot, dtype=market.dtype)
    bad = (~torch.isfinite(out) | (out <= 0)).numpy()
    if bad.any():
        row, step = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{path}: path {names.tolist()[row]!r}, step {step}: price "
                         f"{values[row, step]} is {relative[row, step]:.3g} times the path's "
                         f"first ({values[row, 0]}); rescaled to start at market.spot {spot} "
                         f"it is {float(out[row, step])}, out of {market.dtype}'s "
                         "range")  # fmt: skip
    return out


def _partition_keys(keys: pd.Index) -> pd.Index:
    """The text keys of a folder partitioned on ``step`` as numbers, else as dates, where every
    one reads so (else as they are): pyarrow reads the keys ``step=0.25`` and ``step=2024-01-02``
    as text, and such a folder was refused as text steps."""
    for parse in (pd.to_numeric, lambda k: pd.to_datetime(k, format="ISO8601")):
        try:
            parsed = pd.Index(parse(keys))
        except (TypeError, ValueError):
            continue
        if parsed.is_unique and not parsed.hasnans:  # "1" and "1.0": one step, twice
            return parsed
    return keys


def _long_to_wide(
    frame: pd.DataFrame, path: str | Path, steps: int
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The long layout's spots (and variances) one row per path, each path's own ``steps + 1``
    rows in time order: paths over other dates (rolling windows of one history, dated) were
    put on the union of every path's dates, and refused as "expected 4 prices per path, got 7".

    Shape:
        - output: (N, T + 1) each
    """
    gaps = frame[["path", "step"]].isna().to_numpy()  # (R, 2)
    if gaps.any():  # a row without its step was sorted last, and its price read as the last one
        i, j = (int(x[0]) for x in np.nonzero(gaps))
        raise ValueError(f"paths file {path}: row {i + 1} has no {('path', 'step')[j]}")
    repeated = frame.duplicated(["path", "step"])
    if repeated.any():  # pandas' pivot said only "Index contains duplicate entries"
        i = int(np.flatnonzero(repeated.to_numpy())[0])
        raise ValueError(f"paths file {path}: row {i + 1} repeats path "
                         f"{frame['path'].iloc[i]}, step {frame['step'].iloc[i]}")  # fmt: skip
    for column in ("path", "step"):  # a folder partitioned on it reads it as a category
        if isinstance(frame[column].dtype, pd.CategoricalDtype):  # of the keys' type, in the
            # order of the folders found: step=10 before step=2
            keys = frame[column].cat.categories
            if column == "step" and not pd.api.types.is_numeric_dtype(keys):
                keys = _partition_keys(keys)
            values = frame[column].cat.rename_categories(keys).astype(keys.dtype)
            frame = frame.assign(**{column: values})
    step = frame["step"]
    if not (pd.api.types.is_numeric_dtype(step) or pd.api.types.is_datetime64_any_dtype(step)):
        # text steps sorted as text: "10" came before "2", and the prices out of time order
        raise ValueError(f"paths file {path}: column 'step' must hold numbers or dates (in "
                         f"time order), got {step.dtype} values such as "
                         f"{step.iloc[0]!r}")  # fmt: skip
    for column in ("spot", "variance"):
        if column in frame.columns:  # a text price was numpy's "could not convert string to
            # float: 'x'", naming neither the file, the column nor the row
            numbers = pd.to_numeric(frame[column], errors="coerce")
            text = numbers.isna().to_numpy() & frame[column].notna().to_numpy()
            if text.any():
                i = int(np.flatnonzero(text)[0])
                raise ValueError(f"paths file {path}: row {i + 1}: column {column!r} holds "
                                 f"{frame[column].iloc[i]!r}, not a number")  # fmt: skip
            frame = frame.assign(**{column: numbers})
    frame = frame.sort_values(["path", "step"])
    counts = frame.groupby("path", sort=False).size()
    wrong = counts[counts != steps + 1]
    if len(wrong):  # a path with a missing step was read as a NaN price
        name, count = wrong.index.tolist()[0], int(wrong.iloc[0])
        raise ValueError(f"paths file {path}: path {name!r} has {count} prices, expected "
                         f"{steps + 1} (market.n_steps + 1)")  # fmt: skip
    frame = frame.assign(step=frame.groupby("path", sort=False).cumcount())  # 0..T per path
    wide = frame.pivot(index="path", columns="step", values="spot")
    if "variance" not in frame.columns:
        return wide, None
    variance = frame.pivot(index="path", columns="step", values="variance")
    return wide, variance.to_numpy(dtype=np.float64, copy=True)


def bootstrap_ci(
    pnl: torch.Tensor,
    metric: Any,
    *,
    n_resamples: int = 200,
    level: float = 0.95,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(pnl)``.

    Shape:
        - pnl: (N,)

    References:
        Efron, Tibshirani (1993), "An Introduction to the Bootstrap", Sec. 13.3.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> lo, hi = bootstrap_ci(torch.randn(2000, generator=g), torch.mean, generator=g)
        >>> lo < 0.0 < hi
        True
    """
    # n_resamples 0 was an IndexError from numpy, level 95 numpy's "Quantiles must be in the
    # range [0, 1]", an empty sample torch's "random_ expects 'from' to be less than 'to'"
    check_positive_int("n_resamples", n_resamples)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if pnl.dim() != 1 or pnl.shape[0] == 0:
        raise ValueError(f"pnl must have shape (N,) with N >= 1, got {tuple(pnl.shape)}")
    n = pnl.shape[0]
    where = generator.device if generator is not None else pnl.device
    stats = []
    for _ in range(n_resamples):
        # drawn where the generator lives (a CPU generator cannot draw on a GPU)
        idx = torch.randint(n, (n,), generator=generator, device=where).to(pnl.device)
        stats.append(float(metric(pnl[idx])))
    q = np.quantile(np.asarray(stats), [(1 - level) / 2, (1 + level) / 2])
    return float(q[0]), float(q[1])


def _strategies(
    market: Market, learned: LearnedStrategy | None, ww_risk_aversion: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if learned is not None:
        out["learned"] = learned
    out["delta"] = BlackScholesDelta()
    out["no_hedge"] = NoHedge()
    out["whalley_wilmott"] = WhalleyWilmott(market, ww_risk_aversion)
    if market.is_heston and market.config.derivative.type == "european":
        out["heston_delta"] = HestonDelta(market)  # European deltas only
    return out


def backtest(
    config: HedgeConfig,
    data: HedgeData,
    market: Market,
    *,
    learned: LearnedStrategy | None = None,
    ww_risk_aversion: float = 100.0,
    n_resamples: int = 100,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, HedgeResult]]:
    """Evaluate every strategy on ``data``; return the report dict and the per-path results.

    Bootstrap resamples are shared by all strategies (paired), so the intervals of the ES95
    ratio against the delta hedge reflect the difference, not two independent noises.

    Examples:
        >>> from qfnet.hedging.config import config_from_dict
        >>> config = config_from_dict({"market": {"n_steps": 5}})
        >>> market = Market(config)
        >>> data, _ = make_paths(market, 64, split="test", seed=0)
        >>> report, results = backtest(config, data, market, n_resamples=10)
        >>> report["strategies"], report["n_paths"]
        (['delta', 'no_hedge', 'whalley_wilmott'], 64)
        >>> sorted(report["es95_vs_delta"]), len(report["delta"]["ci95"]["es95"])
        (['no_hedge', 'whalley_wilmott'], 2)
    """
    check_positive_int("n_resamples", n_resamples)  # 0 wrote NaN intervals without a word
    n_paths = int(data.payoff.shape[0])
    if n_paths < 2:  # one path's std came out NaN (torch warned of zero degrees of freedom)
        raise ValueError(f"a backtest needs at least 2 paths (a std and bootstrap intervals), "
                         f"got {n_paths}")  # fmt: skip
    risk_aversion = config.objective.risk_aversion
    results: dict[str, HedgeResult] = {}
    report: dict[str, Any] = {"n_paths": n_paths}
    for name, strategy in _strategies(market, learned, ww_risk_aversion).items():
        start = time.perf_counter()
        res = run_strategy(strategy, data, market)
        seconds = time.perf_counter() - start
        results[name] = res
        entry = _metrics(name, res.pnl, risk_aversion)
        entry.update(turnover=float(res.turnover.mean()), cost=float(res.cost.mean()))
        entry["seconds"] = seconds
        report[name] = entry
    report["strategies"] = list(results)
    pnls = {name: res.pnl.to(torch.float64) for name, res in results.items()}
    cis, ratios = _bootstrap(pnls, risk_aversion, n_resamples, seed)
    for name in results:
        report[name]["ci95"] = cis[name]
    report["es95_vs_delta"] = ratios
    report["bootstrap_resamples"] = n_resamples
    report["entropic_risk_aversion"] = risk_aversion
    report["ww_risk_aversion"] = ww_risk_aversion
    report["config"] = config_to_dict(config)
    return report, results


def _bootstrap(
    pnls: dict[str, torch.Tensor], risk_aversion: float, n_resamples: int, seed: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, Any]]]:
    """Percentile intervals of every metric and of ES95 relative to ``delta`` (paired)."""
    generator = torch.Generator().manual_seed(seed)
    n = next(iter(pnls.values())).shape[0]
    draws: dict[str, dict[str, list[float]]] = {k: {m: [] for m in _CI_METRICS} for k in pnls}
    for _ in range(n_resamples):
        idx = torch.randint(n, (n,), generator=generator)
        for name, pnl in pnls.items():
            metrics = _metrics(name, pnl[idx], risk_aversion, "a bootstrap resample of ")
            for metric, value in metrics.items():
                draws[name][metric].append(value)
    cis = {
        name: {m: _percentile_interval(v) for m, v in metrics.items()}
        for name, metrics in draws.items()
    }
    ratios = {}
    if "delta" in pnls:
        base = np.asarray(draws["delta"]["es95"])
        point = float(F.expected_shortfall(pnls["delta"], 0.95))
        for name in pnls:
            if name != "delta":
                rel = _relative(np.asarray(draws[name]["es95"]), base)
                value = float(_relative(float(F.expected_shortfall(pnls[name], 0.95)), point))
                ratios[name] = {"relative": value, "ci95": _percentile_interval(list(rel))}
    return cis, ratios


def _metrics(
    name: str, pnl: torch.Tensor, risk_aversion: float, sample: str = ""
) -> dict[str, float]:
    """:func:`risk_metrics` of one strategy's P&L, its errors naming the strategy.

    Shape:
        - pnl: (N,)
    """
    try:
        return risk_metrics(pnl, entropic_risk_aversion=risk_aversion)
    except ValueError as error:
        raise ValueError(f"{sample}the P&L of strategy {name!r}: {error}") from None


def _relative(value, base):
    """``(value - base) / |base|``: below 0 means a lower (better) ES95 than delta's, whatever
    the sign of delta's (a premium can make it negative); NaN where delta's is 0.

    Examples:
        >>> round(float(_relative(-0.011, -0.010)), 12), round(float(_relative(0.0096, 0.010)), 12)
        (-0.1, -0.04)
    """
    base = np.asarray(base, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base != 0, (np.asarray(value) - base) / np.abs(base), np.nan)


def _percentile_interval(values: list[float], level: float = 0.95) -> list[float]:
    if not values:
        return [float("nan"), float("nan")]
    q = np.quantile(np.asarray(values), [(1 - level) / 2, (1 + level) / 2])
    return [float(q[0]), float(q[1])]


def run_backtest(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    paths_file: str | Path | None = None,
    n_paths: int | None = None,
    n_resamples: int = 100,
    seed: int | None = None,
) -> dict[str, Any]:
    """Backtest a trained run on fresh test paths (or a user's Parquet paths) and write
    ``report.json``, one P&L histogram per strategy and the hedge-ratio-vs-spot plot.

    Examples:
        >>> import tempfile
        >>> from qfnet.hedging.config import config_from_dict
        >>> from qfnet.hedging.train import train
        >>> config = config_from_dict({"market": {"n_steps": 5},
        ...     "paths": {"train": 64, "val": 32, "test": 32},
        ...     "training": {"epochs": 1, "batch_size": 32}, "baselines": {"ww_risk_aversion": 1.0}})
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = train(config, f"{tmp}/run")
        ...     report = run_backtest(f"{tmp}/run", f"{tmp}/report", n_resamples=10)
        ...     written = (Path(tmp) / "report" / "report.json").is_file()
        >>> written, {"learned", "delta"} <= set(report["strategies"])
        (True, True)
    """
    from qfnet.hedging.report import plot_hedge_ratio, plot_histograms

    # n_paths=0 fell back to the config's count, n_resamples=0 wrote NaN intervals
    for name, value in (("n_paths", n_paths), ("n_resamples", n_resamples)):
        if value is not None:
            check_positive_int(name, value)
    if paths_file is not None and n_paths is not None:  # n_paths was ignored without a word
        raise ValueError(f"n_paths ({n_paths}) sets the number of simulated test paths: a paths "
                         f"file ({paths_file}) is backtested on all of its paths")  # fmt: skip
    config, model, meta = load_run(run_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)  # before the backtest: a bad OUT fails at once
    market = Market(config)
    seed = config.seed if seed is None else seed
    if paths_file is not None:
        data = market.data(read_paths(paths_file, market))
        source = str(paths_file)
    else:
        count = config.paths.test if n_paths is None else n_paths
        data, _ = make_paths(market, count, split="test", seed=seed)
        source = f"simulated test set, seed {seed}"
    report, results = backtest(
        config, data, market, learned=model.strategy, ww_risk_aversion=meta["ww_risk_aversion"],
        n_resamples=n_resamples, seed=seed,
    )  # fmt: skip
    report["paths"] = source
    report["train_seconds"] = meta["train_seconds"]
    report["plots"] = [*plot_histograms(results, out), plot_hedge_ratio(results, data, market, out)]
    # strict JSON: delta's ES95 of 0 made es95_vs_delta a bare NaN, which JSON readers refuse
    text = json.dumps(json_safe(report), indent=2, allow_nan=False)
    write_text_atomically(text + "\n", out / "report.json")
    return report
