"""``qfnet calibrate``: fit Heston or SABR to a quote file, write JSON, residuals CSV and smiles.

Mounted by :mod:`qfnet.cli` as ``app.command("calibrate")(calibrate_command)``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from pricing._validation import json_safe
from pricing.calibration import CalibrationResult, calibrate
from pricing.quote_cleaning import CleaningReport, clean_quotes, prepare_quotes, prepared_notes
from pricing.quotes import QuoteError, QuoteWarning, read_quotes
from qfnet._cli import (
    DAYFIRST_FLAGS,
    DAYFIRST_HELP,
    fail,
    quote_message,
    seed_option,
    write_atomically,
    write_table,
)
from qfnet.training.checkpoint import ModelFileError

__all__ = ["bounds_line", "calibrate_command", "result_json"]


def result_json(
    result: CalibrationResult, residuals_file: Path, report: CleaningReport | None
) -> dict[str, Any]:
    """The machine-readable summary of a calibration (ARCHITECTURE.md, section 3).

    Non-finite numbers become ``null`` (``None``), so the summary is strict JSON.
    ``residuals_file`` is written as given: ``qfnet calibrate`` passes it relative to the JSON's
    folder (its file name), so that the JSON reads from any working directory and moves with
    its folder.

    Examples:
        >>> import pandas as pd
        >>> result = CalibrationResult("sabr", "direct", {"alpha": [0.2]}, pd.DataFrame(),
        ...     float("nan"), 12.0, 0.5, 5, 1, 0.01, True, 7)
        >>> report = CleaningReport(6, 5, removed={"crossed bid/ask": 1})
        >>> summary = result_json(result, Path("residuals.csv"), report)
        >>> summary["rmse_iv_bp"], summary["residuals_file"], summary["cleaning"]["removed"]
        (None, 'residuals.csv', {'crossed bid/ask': 1})
    """
    out = result.to_dict()
    out["residuals_file"] = str(residuals_file)
    # every input row the fit did not use, so that n_quotes + n_dropped counts the file's rows:
    # with --no-clean, rows of weight 0 too (CalibrationResult.n_dropped leaves them out; a vega
    # weight that underflows is 0), and with cleaning its removals
    out["n_dropped"] = result.n_dropped + len(result.residuals) - result.n_quotes
    if report is not None:
        out["n_dropped"] = report.n_input - result.n_quotes
        out["cleaning"] = {"n_input": report.n_input, "removed": report.removed,
                           "forward_sources": report.forward_sources}  # fmt: skip
    return json_safe(out)


def bounds_line(result: CalibrationResult) -> str:
    """The parameters at a bound of the box (``result.at_bounds``), for the fit report.

    Examples:
        >>> import pandas as pd
        >>> result = CalibrationResult("sabr", "direct", {"maturity": [0.25, 1.0]}, pd.DataFrame(),
        ...     1.0, 2.0, 0.1, 10, 0, 0.01, True, 7, {"nu": ["upper", None]})
        >>> bounds_line(result)
        'nu upper at T=0.25'
    """
    parts = []
    for name, where in (result.at_bounds or {}).items():
        if isinstance(where, str):  # one parameter set (Heston)
            parts.append(f"{name} {where}")
            continue
        for side in ("lower", "upper"):
            t = [f"{m:.4g}" for m, w in zip(result.params["maturity"], where, strict=True)
                 if w == side]  # fmt: skip
            if t:
                parts.append(f"{name} {side} at T={', '.join(t)}")
    return "; ".join(parts)


def _check_options(model: str, method: str, weights: str, beta: float | None) -> None:
    """Misused options are usage errors naming the option (exit 2), before any file is read."""
    from pricing.calibration import WEIGHTINGS, available_methods, methods_needing_import

    known = sorted(set(available_methods(model)) | set(methods_needing_import(model)))
    if method not in known:
        raise typer.BadParameter(f"{method!r}: {model} takes {', '.join(known)}",
                                 param_hint="--method")  # fmt: skip
    if weights not in WEIGHTINGS:
        raise typer.BadParameter(f"{weights!r}: use {', '.join(WEIGHTINGS[:-1])} or "
                                 f"{WEIGHTINGS[-1]}", param_hint="--weights")  # fmt: skip
    if beta is not None and not 0.0 <= beta <= 1.0:
        raise typer.BadParameter(f"{beta}: SABR beta lies in [0, 1]", param_hint="--beta")


def _check_device(model: str, method: str, device: str) -> None:
    """``--device``: one this machine has, and the CPU for the methods that run only there (a
    usage error naming the option, exit 2), before any file is read. Call it once the qfnet
    methods are registered: the registry says which methods take a device."""
    from pricing.calibration import check_method_device

    try:
        check_method_device(model, method, device)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--device") from None


def _output_files(out: Path, quotes: Path, plot: bool) -> tuple[Path, Path]:
    """The residuals CSV and smiles PNG written beside ``out``, checked before the fit: one that
    would overwrite the quotes (``--quotes fit_residuals.csv --out fit.json``) is a usage error
    naming ``--out``; a folder in the place of one is an error (it failed after the fit, leaving
    the other files written)."""
    residuals, png = out.with_name(f"{out.stem}_residuals.csv"), out.with_suffix(".png")
    written = (out, residuals, png) if plot else (out, residuals)
    for path in written:
        if path.exists() and quotes.exists() and path.samefile(quotes):
            raise typer.BadParameter(f"{out} would write {path} over the quotes",
                                     param_hint="--out")  # fmt: skip
    for path in written:
        if path.is_dir():
            raise fail(f"cannot write {path}: it is a directory")
    return residuals, png


def calibrate_command(
    model: Annotated[
        str, typer.Option("--model", help="heston (whole surface) or sabr (per expiry).")
    ],
    quotes: Annotated[Path, typer.Option("--quotes", help="Quote table (.csv or .parquet).")],
    out: Annotated[Path, typer.Option("--out", help="Result JSON to write.")],
    method: Annotated[
        str, typer.Option("--method", help="direct, quantlib, or (heston) surrogate or network.")
    ] = "direct",
    weights: Annotated[str, typer.Option("--weights", help="equal, vega or spread.")] = "equal",
    beta: Annotated[float | None, typer.Option("--beta", help="SABR beta (default 1).")] = None,
    free_beta: Annotated[bool, typer.Option("--free-beta", help="Fit SABR beta too.")] = False,
    clean: Annotated[
        bool, typer.Option("--clean/--no-clean", help="Filter bad and arbitrageable quotes first.")
    ] = True,
    plot: Annotated[bool, typer.Option("--plot", help="Also write smile plots (PNG).")] = False,
    seed: Annotated[int, seed_option("--seed", help="Seed of the global start.")] = 0,
    device: Annotated[
        str, typer.Option("--device", help="cpu, or cuda, cuda:1... for heston direct.")
    ] = "cpu",
    dayfirst: Annotated[bool | None, typer.Option(DAYFIRST_FLAGS, help=DAYFIRST_HELP)] = None,
) -> None:
    """Calibrate a model to market quotes; write RESULT.json, a residuals CSV and optional smiles.

    \f
    Examples:
        The function behind ``qfnet calibrate``, called directly on a SABR smile:

        >>> import tempfile
        >>> import pandas as pd
        >>> from pricing.sabr import lognormal_vol
        >>> strikes = [80.0, 90.0, 100.0, 110.0, 120.0]
        >>> vols = lognormal_vol(forward=100.0, strike=strikes, maturity=1.0, alpha=0.2,
        ...                      beta=1.0, rho=-0.3, nu=0.6)
        >>> table = pd.DataFrame({"strike": strikes, "maturity": 1.0, "forward": 100.0,
        ...                       "discount": 1.0, "implied_vol": vols.numpy()})
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     table.to_csv(Path(tmp) / "quotes.csv", index=False)
        ...     calibrate_command("sabr", Path(tmp) / "quotes.csv", Path(tmp) / "fit.json",
        ...                       clean=False)
        ...     fit = json.loads((Path(tmp) / "fit.json").read_text())
        sabr (direct): RMSE 0.00 bp over 5 quotes, ... s -> .../fit.json
        >>> [round(fit["params"][k][0], 6) for k in ("alpha", "rho", "nu")]
        [0.2, -0.3, 0.6]
    """
    if model not in ("heston", "sabr"):
        raise typer.BadParameter("must be heston or sabr", param_hint="--model")
    if out.suffix.lower() != ".json":  # a.csv got the JSON, next to a_residuals.csv
        raise typer.BadParameter(f"{out}: the result is JSON, name it .json", param_hint="--out")
    if model == "heston" and (beta is not None or free_beta):
        raise typer.BadParameter("--beta and --free-beta are SABR options", param_hint="--model")
    if beta is not None and free_beta:  # was exit 1 after reading the file, blamed on the quotes
        raise typer.BadParameter("--beta fixes SABR beta, --free-beta fits it: pass one",
                                 param_hint="--free-beta")  # fmt: skip
    _check_options(model, method, weights, beta)
    options: dict[str, Any] = {"free_beta": True} if free_beta else {}
    # The qfnet-side methods register themselves with pricing.calibration when imported; the
    # network method also registers the network as the global start of direct and surrogate.
    if model == "heston":
        from qfnet.calibration_network_method import register

        register()
    if method == "surrogate":
        import qfnet.calibration_surrogate  # noqa: F401
    _check_device(model, method, device)
    residuals_file, png = _output_files(out, quotes, plot)
    if not quotes.exists():
        raise fail(f"{quotes}: no such file")
    try:
        report, notes = None, []
        if clean:
            table, report = clean_quotes(quotes, dayfirst=dayfirst)
            if table.empty:
                raise QuoteError(f"no quote is left after cleaning\n{report}", source=str(quotes))
        else:
            table, sources = prepare_quotes(
                read_quotes(quotes, allow_crossed=True, dayfirst=dayfirst)
            )
            # the report's notes (a rate read as 0, a discount parity disagrees with, days
            # read as years) were printed with cleaning only
            notes = prepared_notes(table, sources)
        with warnings.catch_warnings():
            # the command prints the notes itself (the report's, or `notes`): a table with a
            # row without a vol is prepared again by calibrate, whose warnings repeated them
            warnings.simplefilter("ignore", QuoteWarning)
            result = calibrate(model, table, method=method, weights=weights, beta=beta,
                               seed=seed, device=device, **options)  # fmt: skip
    except (NotImplementedError, ModelFileError) as error:  # a damaged model file is named
        raise fail(str(error)) from error
    except ValueError as error:  # QuoteError too: name the file unless the message does
        message = quote_message(str(error))
        named = message.startswith(str(quotes))
        raise fail(message if named else f"{quotes}: {message}") from error
    # each through a temporary file: an interrupted write cut the previous fit's file short
    write_table(result.residuals, residuals_file)
    # relative to the JSON's folder: relative to the working directory (--out sub/fit.json
    # wrote "sub/fit_residuals.csv") it broke when the JSON was read from anywhere else
    text = json.dumps(result_json(result, Path(residuals_file.name), report), indent=2) + "\n"
    write_atomically(out, lambda f: f.write(text.encode("utf-8")))
    if report is not None:
        typer.echo(str(report))
    for note in notes:
        typer.echo(f"  note: {note}")
    rows = "row" if result.n_dropped == 1 else "rows"
    left = [f"{result.n_dropped} {rows} without a vol left out"] if result.n_dropped else []
    zero = len(result.residuals) - result.n_quotes  # fitted rows of weight 0 (e.g. a vega's)
    left += [f"{zero} of weight 0, not in the RMSE"] if zero > 0 else []
    # quotes whose model price no Black vol reproduces: the RMSE leaves them out (said "over 56
    # quotes" for the 54 it counts, beside a list of the quotes it leaves out)
    fitted = result.residuals[result.residuals["weight"] > 0]
    unsolved = int(fitted["error_bp"].isna().sum())
    left += [f"{unsolved} without a model vol, not in the RMSE"] if unsolved else []
    unused = f" ({'; '.join(left)})" if left else ""
    typer.echo(f"{model} ({method}): RMSE {result.rmse_iv_bp:.2f} bp over {result.n_quotes} quotes"
               f"{unused}, {result.seconds:.2f} s -> {out}")  # fmt: skip
    if result.at_bounds:
        typer.echo(f"at a bound of the parameter box (a sign of a poor fit, or of bounds too "
                   f"narrow): {bounds_line(result)}")  # fmt: skip
    if plot:
        from pricing.smile_plot import plot_smiles

        # the quotes fitted, row-aligned with the residuals (rows without a vol left out, as
        # calibrate does): with --no-clean such a row moved every later bid/ask bar by one row
        fitted = table[table["market_iv"].notna()].reset_index(drop=True)
        try:
            typer.echo(f"smiles -> {plot_smiles(result, png, quotes=fitted)}")
        except OSError as error:
            raise fail(f"cannot write {png}: {error}") from error
