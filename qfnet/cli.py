"""The ``qfnet`` command line: price, iv, generate, train, calibrate, hedge, demo.

Every command has ``--help``; bad input ends with ``error: ...`` on stderr naming the row, column or
field, and exit status 1.
"""

from __future__ import annotations

import inspect
import json
import signal
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from pricing.datasets import Domain
from pricing.quotes import QuoteError, read_quotes, shifts
from qfnet._cli import (
    DAYFIRST_FLAGS,
    DAYFIRST_HELP,
    fail,
    quote_message,
    seed_option,
    write_table,
)
from qfnet.calibrate_cli import calibrate_command
from qfnet.hedging.cli import hedge_app
from qfnet.price_rows import (
    MC_ROW_DOMAINS,
    add_implied_vols,
    black_vols,
    forward_and_discount,
    model_parameters,
    price_table,
)
from qfnet.surrogate import SABR_PDE_SURROGATE, load_surrogate
from qfnet.surrogate_cli import generate_command, surrogate_price_rows, train_surrogate_command

__all__ = ["app", "main"]

app = typer.Typer(
    name="qfnet",
    help="Option-pricing surrogates, volatility calibration and deep hedging.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ENGINES = ("analytic", "quantlib", "mc", "surrogate")


def _help(command: object) -> str:
    """A command's ``--help`` text: its docstring up to the ``\\f`` that keeps the examples out
    (typer printed the blank lines before the ``\\f`` under the summary, three of them)."""
    return inspect.cleandoc(command.__doc__ or "").partition("\f")[0].strip()


app.command("calibrate", help=_help(calibrate_command))(calibrate_command)
app.command("generate", help=_help(generate_command))(generate_command)
app.add_typer(hedge_app, name="hedge")
train_app = typer.Typer(
    help="Train networks through the shared training loop.", no_args_is_help=True
)
train_app.command("surrogate", help=_help(train_surrogate_command))(train_surrogate_command)
app.add_typer(train_app, name="train")


def read_table(
    path: Path,
    *,
    allow_crossed: bool = False,
    allow_expired: bool = False,
    shift: float | None = None,
    dayfirst: bool | None = None,
) -> pd.DataFrame:
    """Read a quote table, turning a missing file, a file without rows or malformed content into
    a clean CLI error (``allow_expired``, ``shift``, ``dayfirst``: see
    :func:`pricing.quotes.read_quotes`)."""
    if not path.exists():
        raise fail(f"{path}: no such file")
    try:
        table = read_quotes(path, allow_crossed=allow_crossed, allow_expired=allow_expired,
                            shift=shift, dayfirst=dayfirst)  # fmt: skip
    except ValueError as error:
        raise fail(quote_message(str(error))) from error
    # price said "priced 0 options" (exit 0) and iv "every row has expired", where calibrate
    # refuses such a file
    if table.empty:
        raise fail(f"{path}: no quotes (the file names its columns but has no rows)")
    return table


TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def check_table_out(path: Path) -> None:
    """``--out`` must name a table format (x.txt was written as CSV): a usage error if not."""
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise typer.BadParameter(f"{path}: write .csv or .parquet", param_hint="--out")


def _load_params(params: str | None) -> dict[str, float]:
    """``--params``: a JSON object, or a file holding one. Text that is no object is a file name,
    and a missing file is named (it was "not valid JSON"); an object is never looked up as a file
    (one over 255 characters was a traceback: file name too long)."""
    if params is None:
        return {}
    text = params
    if not params.lstrip().startswith("{"):
        path = Path(params)
        if not path.is_file():
            raise fail(f"--params: {params}: no such file, and not a JSON object such as "
                       "'{\"volatility\": 0.2}'")  # fmt: skip
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:  # a binary file was a traceback
            raise fail(
                f"--params: {params}: cannot read it as a JSON text file ({error})"
            ) from error
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as error:
        raise fail(f"--params: not valid JSON ({error.msg} at character {error.pos})") from error
    if not isinstance(loaded, dict):
        raise fail("--params: expected a JSON object such as '{\"volatility\": 0.2}'")
    flags = [k for k, v in loaded.items() if isinstance(v, bool)]
    if flags:  # float(true) priced a volatility of 1
        raise fail(f"--params: {flags[0]!r} must be a number, got {str(loaded[flags[0]]).lower()}")
    try:
        return {str(k): float(v) for k, v in loaded.items()}
    except (TypeError, ValueError) as error:
        raise fail(f"--params: every value must be a number ({error})") from error


@app.command()
def price(
    ctx: typer.Context,
    model: str = typer.Option(..., help="bs, heston or sabr."),
    quotes: Path = typer.Option(..., help="Quote table, CSV or Parquet."),
    out: Path = typer.Option(..., help="Output table (.csv or .parquet)."),
    engine: str = typer.Option("analytic", help="analytic, quantlib, mc or surrogate."),
    params: str | None = typer.Option(
        None, help="JSON object (or file) of model parameters applied to every row."
    ),
    seed: int = seed_option(0, help="Random seed (Monte Carlo)."),
    paths: int = typer.Option(100_000, help="Monte Carlo paths (--engine mc only)."),
    steps: int = typer.Option(100, help="Monte Carlo time steps (--engine mc only)."),
    surrogate: Path | None = typer.Option(None, help="Surrogate run or model file."),
    dayfirst: bool | None = typer.Option(None, DAYFIRST_FLAGS, help=DAYFIRST_HELP),
) -> None:
    """Price every row of a quote table; writes its columns plus price and implied_vol."""
    # misused options are usage errors naming the option (exit 2), before the file is read
    if model not in ("bs", "heston", "sabr"):
        raise typer.BadParameter(f"{model!r}: choose bs, heston or sabr", param_hint="--model")
    if engine not in ENGINES:
        raise typer.BadParameter(f"{engine!r}: choose one of {', '.join(ENGINES)}",
                                 param_hint="--engine")  # fmt: skip
    if engine == "surrogate" and model == "bs":
        raise typer.BadParameter("surrogate prices --model heston or sabr", param_hint="--engine")
    if surrogate is not None and engine != "surrogate":  # it was ignored: priced analytically
        raise typer.BadParameter(f"needs --engine surrogate, not {engine}",
                                 param_hint="--surrogate")  # fmt: skip
    _refuse_mc_options(ctx, engine)
    if engine == "mc" and paths < _MIN_MC_PATHS:
        raise typer.BadParameter(f"{paths}: need at least {_MIN_MC_PATHS} paths (three "
                                 "antithetic pairs: the control-variate error estimate needs "
                                 "three samples)", param_hint="--paths")  # fmt: skip
    if engine == "mc" and steps < 1:
        raise typer.BadParameter(f"{steps}: need at least 1 time step", param_hint="--steps")
    check_table_out(out)
    values = _load_params(params)
    # a SABR shift in --params is the file's shift column where it has none: negative strikes
    # are then read (it was refused by the file's strike > 0 check)
    shift = values.pop("shift", None) if model == "sabr" else None
    if shift is not None and not np.isfinite(shift):  # NaN read as a second, different shift
        raise fail(f"--params: shift must be finite; got {shift}")
    table = read_table(quotes, shift=shift, dayfirst=dayfirst)
    if shift is not None and not np.allclose(table["shift"].to_numpy(float), shift):
        raise fail("parameter 'shift' is given both as a column and in --params")
    try:
        if engine in ("analytic", "quantlib"):
            result = price_table(table, model=model, engine=engine, params=values)
        elif engine == "surrogate":
            result = _price_surrogate(table, model, values, surrogate)
        elif engine == "mc":
            result = _price_mc(table, model, values, paths=paths, steps=steps, seed=seed)
        else:
            raise fail(f"--engine {engine} is not available yet")
    except (ValueError, FileNotFoundError) as error:
        raise fail(_in_file(quotes, error)) from error
    # a rate (dividend) the file lacked was written as 0 beside the discount (forward) it gave,
    # which the prices used: leave out the defaults those columns make meaningless, where they
    # give every row (rows of a gap were priced with the 0, and the column is what says so)
    given = {"rate": "discount", "dividend": "forward"}
    defaulted = [c for c in table.attrs.get("defaulted", []) if given[c] in table]
    unused = [c for c in defaulted if table[given[c]].notna().all()]
    result, kept = _keep_market_columns(
        table, result.drop(columns=[c for c in unused if c in result]), engine=engine
    )
    write_table(result, out)
    options = "option" if len(result) == 1 else "options"
    typer.echo(f"priced {len(result)} {options} ({model}, {engine}) -> {out}{kept}")
    for column in sorted(set(defaulted) - set(unused)):
        gaps = int(table[given[column]].isna().sum())
        rows = "row" if gaps == 1 else "rows"
        typer.echo(f"  note: {gaps} {rows} without a {given[column]} took {column} 0 (the file "
                   f"has no {column} column)")  # fmt: skip


def _in_file(quotes: Path, error: Exception) -> str:
    """The message of a pricing error, naming the file where it names one of its rows, as the
    errors found while reading do (a gap in a parameter column was "row 1 (file line 2), column
    'volatility': missing value", an inf in it "quotes.csv, row 1 (file line 2), ...")."""
    message = str(error)
    if isinstance(error, QuoteError) and error.row and not message.startswith(str(quotes)):
        return f"{quotes}, {message}"
    return message


def _refuse_mc_options(ctx: typer.Context, engine: str) -> None:
    """``--paths`` and ``--steps`` given without ``--engine mc`` are usage errors naming the
    option: they were ignored, and the row priced analytically read as a Monte Carlo price."""
    if engine == "mc":
        return
    for name in ("paths", "steps"):
        source = ctx.get_parameter_source(name)  # typer's own click: compare by name
        if source is not None and source.name != "DEFAULT":
            raise typer.BadParameter(f"applies to --engine mc only, not {engine}",
                                     param_hint=f"--{name}")  # fmt: skip


def _keep_market_columns(
    table: pd.DataFrame, result: pd.DataFrame, *, engine: str
) -> tuple[pd.DataFrame, str]:
    """The input's own ``price``, ``implied_vol`` and ``std_error`` (market values, or those of
    an earlier pricing, where a quote file has them) beside the model's, as ``market_price``,
    ``market_implied_vol`` and ``market_std_error``: the model's columns replaced them, and OUT
    lost them. A ``std_error`` no ``engine`` but ``mc`` writes: the file's stood beside another
    engine's price, as if its error. Returns the table and a note for the summary line."""
    renamed = {}
    for name in ("price", "implied_vol", "std_error"):
        keep = f"market_{name}"
        stale = name == "std_error" and engine != "mc" and name in result  # the file's own
        if name in table and keep not in table and table[name].notna().any():
            if stale:
                result = result.rename(columns={name: keep})
            else:
                result.insert(result.columns.get_loc(name), keep, table[name].to_numpy())
            renamed[name] = keep
        elif stale:  # kept before (or empty): not beside this price
            result = result.drop(columns=name)
    note = "; the file's " + ", ".join(f"{a} kept as {b}" for a, b in renamed.items())
    return result, note if renamed else ""


def _price_surrogate(
    table: pd.DataFrame, model: str, params: dict[str, float], surrogate: Path | None
) -> pd.DataFrame:
    if model not in ("heston", "sabr"):
        raise fail("--engine surrogate prices --model heston or sabr")
    if surrogate is None and model == "sabr":
        surrogate = SABR_PDE_SURROGATE  # the shipped PDE-labelled SABR surrogate
    columns = model_parameters(table, model, params)
    net = load_surrogate(surrogate)
    if net.domain.model == model:  # else surrogate_price_rows names the mismatch
        _check_surrogate_params(net.domain, params)
    shift = columns.pop("shift", None)  # (N,) for SABR
    if shift is not None and (shift != 0.0).any():
        raise fail("--engine surrogate: the SABR surrogate prices unshifted SABR (shift 0) only")
    rows = table.assign(**columns)  # forwards and discounts read per row, as the other engines
    # every row gets a vol: an iv_status of an earlier pricing would stand beside them
    result = table.drop(columns="iv_status", errors="ignore")
    result["price"], result["implied_vol"] = surrogate_price_rows(rows, net, model=model)
    return result


def _check_surrogate_params(domain: Domain, params: dict[str, float]) -> None:
    """Refuse a ``--params`` value outside the surrogate's box, naming ``--params``: every row
    holds it, and the surrogate's own check named row 1. SABR's ``alpha`` is read per row, at
    ``F = 1`` (:func:`qfnet.surrogate_cli.surrogate_price_rows`): left to that check."""
    for name, value in params.items():
        if name in domain.param_names and not (domain.model == "sabr" and name == "alpha"):
            if not domain.holds(name, value).all():
                low, high = domain.bounds(name)
                raise fail(f"--params: {name} = {value!r} is outside the {domain.model} "
                           f"surrogate domain [{low:g}, {high:g}]; the surrogate never "
                           "extrapolates")  # fmt: skip


# Monte Carlo engine (--engine mc): rows priced by pricing.monte_carlo.price_european_rows.
_MIN_MC_PATHS = 6


def _price_mc(
    table: pd.DataFrame, model: str, params: dict[str, float], *, paths: int, steps: int, seed: int
) -> pd.DataFrame:
    """Return ``table`` with ``price``, ``std_error`` and ``implied_vol`` from Monte Carlo."""
    from pricing.monte_carlo import price_european_rows
    from pricing.quotes import require_columns

    require_columns(table, ["option_type"], "pricing")
    f, d = forward_and_discount(table)
    k, t = table["strike"].to_numpy(float), table["maturity"].to_numpy(float)
    call = (table["option_type"] == "call").to_numpy()
    values = model_parameters(table, model, params, domains=MC_ROW_DOMAINS)
    prices, errors = price_european_rows(
        model=model, forward=f, discount=d, strike=k, maturity=t, is_call=call,
        params=values, n_paths=paths, n_steps=steps, seed=seed,
    )  # fmt: skip
    out = table.copy()
    out["price"], out["std_error"] = prices, errors
    return add_implied_vols(out, prices, forward=f, discount=d, strike=k, maturity=t, is_call=call,
                            shift=values.get("shift", 0.0))  # fmt: skip


CROSSED = "crossed quote (bid > ask)"
NO_PRICE = "no price: mid and price missing, and bid or ask missing (a one-sided quote)"
EXPIRED = "expired: the expiry is on or before the quote date (maturity <= 0)"
ZERO_BID = (
    "zero bid: the vol is the mid's (ask / 2), an upper bound's guess (calibrate drops these)"
)


@app.command()
def iv(
    quotes: Path = typer.Option(
        ..., help="Quote table with 'mid', 'bid'/'ask' or 'price' per row."
    ),
    out: Path = typer.Option(..., help="Output table (.csv or .parquet)."),
    dayfirst: bool | None = typer.Option(None, DAYFIRST_FLAGS, help=DAYFIRST_HELP),
) -> None:
    """Black implied vol of each row's mid (else bid/ask midpoint, else price).

    Forwards and discounts come from put-call parity where the file gives
    none; shifted-lognormal vols where the file has a 'shift' column;
    unsolvable rows get NaN and a status reason."""
    from pricing.quote_cleaning import attach_forwards, day_maturity_note, forward_notes

    check_table_out(out)
    # a crossed row gets a status, not an error; so does an expired one (an exchange download's
    # options expiring on the quote date refused the whole file)
    table = read_table(quotes, allow_crossed=True, allow_expired=True, dayfirst=dayfirst)
    if not {"price", "mid", "bid", "ask"} & set(table.columns):
        raise fail(f"{quotes}: iv needs a 'mid', 'bid'/'ask' or 'price' column")
    if "option_type" not in table:
        raise fail(f"{quotes}: iv needs an 'option_type' column (call/put)")
    expired = (table["maturity"] <= 0).to_numpy()
    if expired.all():
        raise fail(f"{quotes}: every row has expired (expiry on or before the quote date)")
    live = _rows(table, ~expired)
    try:  # the vols are solved once, below
        prepared, sources = attach_forwards(_without_crossed_prices(live))
    except ValueError as error:
        raise fail(f"{quotes}: {error}") from error
    live_vol, live_status = black_vols(
        prepared["mid"].to_numpy(float), forward=prepared["forward"].to_numpy(float),
        discount=prepared["discount"].to_numpy(float), strike=live["strike"].to_numpy(float),
        maturity=live["maturity"].to_numpy(float),
        is_call=(live["option_type"] == "call").to_numpy(), shift=shifts(live).to_numpy(float),
    )  # fmt: skip
    # a row with nothing to solve was "invalid input (a non-finite value, ...)": name the gap
    live_status = np.where(prepared["mid"].isna().to_numpy(), NO_PRICE, live_status)
    vol, status = _on_rows(~expired, live_vol, np.nan), _on_rows(~expired, live_status, EXPIRED)
    if {"bid", "ask"} <= set(table.columns):
        crossed = (table["bid"] > table["ask"]).to_numpy() & ~expired
        vol, status = np.where(crossed, np.nan, vol), np.where(crossed, CROSSED, status)
        # the mid of (0, ask) was solved and called ok: its vol says little about the option
        # (a file's own mid is solved as given; else the bid/ask midpoint is, before any price)
        from_quote = table["mid"].isna() if "mid" in table else True
        zero_bid = ((table["bid"] == 0) & table["ask"].notna() & from_quote).to_numpy()
        zero_bid = zero_bid & (status == "ok")
        status = np.where(zero_bid, ZERO_BID, status)
    # the forward and discount used are written: a rate or dividend the file lacked, defaulted to
    # 0 by reading, would stand beside them as if it had made them (price leaves them out too)
    result = table.drop(columns=[c for c in table.attrs.get("defaulted", []) if c in table])
    # the file's own vols (a vendor's `implied_vol` or `iv`) and `status` (e.g. open/halted)
    # were overwritten by the solved ones: kept beside them, as `price` keeps them
    renamed = {column: f"market_{column}" for column in ("implied_vol", "status")
               if column in table and table[column].notna().any()
               and f"market_{column}" not in table}  # fmt: skip
    result = result.rename(columns=renamed)
    kept = ", ".join(f"{old} kept as {new}" for old, new in renamed.items())
    kept = f"; the file's {kept}" if kept else ""
    for column in ("forward", "discount"):  # NaN on expired rows
        result[column] = _on_rows(~expired, prepared[column].to_numpy(float), np.nan)
    result["implied_vol"], result["status"] = vol, status
    write_table(result, out)
    n_flagged = int(((status != "ok") & ~np.isnan(vol)).sum())
    rows = "row" if len(result) == 1 else "rows"
    flagged = f", {n_flagged} solved with a caveat in their status" if n_flagged else ""
    typer.echo(f"implied vols for {len(result)} {rows} ({_unsolved(vol, status)}{flagged}) -> "
               f"{out}{kept}")  # fmt: skip
    # forwards of a spot carried at a rate read as 0 gave vols off by points, without a word
    notes = [*forward_notes(prepared, sources, table.attrs.get("defaulted", [])),
             day_maturity_note(live, live_vol)]  # fmt: skip
    for note in filter(None, notes):
        typer.echo(f"  note: {note}")


_UNSOLVED = {EXPIRED: "expired", CROSSED: "crossed", NO_PRICE: "without a price"}
"""The statuses of rows :func:`iv` does not solve, by the name its summary counts them under;
the other NaN vols are rows without a solution (a price outside the no-arbitrage bounds...)."""


def _unsolved(vol: np.ndarray, status: np.ndarray) -> str:
    """``N unsolved: a expired, b crossed, c without a price, d without a solution`` (the
    categories with rows only) of the NaN ``vol`` ``(R,)`` by their ``status`` ``(R,)``: all of
    them were "N unsolvable", expired and crossed rows, which were not solved, among them."""
    unsolved = np.isnan(vol)
    counts = {
        name: int((unsolved & (status == reason)).sum()) for reason, name in _UNSOLVED.items()
    }
    counts["without a solution"] = int(unsolved.sum()) - sum(counts.values())
    parts = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    return f"{int(unsolved.sum())} unsolved" + (f": {parts}" if parts else "")


def _without_crossed_prices(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the prices (``bid``, ``ask``, ``mid``, ``price``) of its crossed rows (bid >
    ask) blank, for the parity forwards: such a row gets no vol, yet its mid made the forward of
    its expiry (clean_quotes drops it first), and one stale put (bid 8.15 > ask 8.05, its mid 3
    above its value) moved every other vol of its expiry by up to 2.4 points, each "ok". An
    expiry with no other forward (no spot, no forward on any row, no uncrossed call and put of
    one strike) keeps them: blank, they refused the whole file ("no call/put pairs")."""
    if not {"bid", "ask"} <= set(table.columns):
        return table
    crossed = (table["bid"] > table["ask"]).to_numpy()
    if crossed.any() and "spot" not in table and "option_type" in table:
        crossed = crossed & _forward_without(table, crossed)
    if not crossed.any():
        return table
    out = table.copy()  # with its attrs: the defaulted rate and the file lines
    out.loc[crossed, [c for c in ("bid", "ask", "mid", "price") if c in out]] = np.nan
    return out


def _forward_without(table: pd.DataFrame, crossed: np.ndarray) -> np.ndarray:
    """Whether each row's expiry has a forward without the ``crossed`` rows ``(R,)``: a
    ``forward`` on one of its rows (the expiry's), or a call and a put of one strike priced
    uncrossed."""
    expiry = table["maturity"].round(6).to_numpy()  # attach_forwards' expiries
    priced = table["bid"].notna().to_numpy() & table["ask"].notna().to_numpy()
    for column in ("mid", "price"):
        if column in table:
            priced |= table[column].notna().to_numpy()
    priced &= ~crossed
    kinds = pd.DataFrame({"expiry": expiry[priced], "strike": table["strike"].to_numpy()[priced],
                          "type": table["option_type"].to_numpy()[priced]})  # fmt: skip
    pairs = kinds.groupby(["expiry", "strike"])["type"].nunique()
    ok = np.isin(expiry, pairs[pairs == 2].index.get_level_values("expiry"))
    if "forward" in table:
        given = pd.Series(table["forward"].notna().to_numpy()).groupby(expiry).transform("any")
        ok |= given.to_numpy()
    return ok


def _on_rows(keep: np.ndarray, values: np.ndarray, fill: object) -> np.ndarray:
    """``values`` of the rows ``keep`` ``(R,)`` (as many as it has True), ``fill`` elsewhere."""
    out = np.full(len(keep), fill, dtype=np.result_type(values, np.asarray(fill)))
    out[keep] = values
    return out


def _rows(table: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """The rows ``keep`` ``(R,)`` of a table from ``read_quotes``, their input rows and file
    lines with them (errors name the input's rows, as :func:`pricing.quotes.row_error` reads
    ``attrs``: counted among the rows kept, row 2 was the file line of row 3)."""
    if keep.all():
        return table
    part = table[keep]
    part.attrs = dict(table.attrs)
    part.attrs["input_rows"] = (np.flatnonzero(keep) + 1).tolist()
    if "file_lines" in table.attrs:
        part.attrs["file_lines"] = np.asarray(table.attrs["file_lines"])[keep].tolist()
    return part


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_report"), help="Report directory."),
    quick: bool = typer.Option(False, help="Smallest settings (used by the test suite)."),
    seed: int = seed_option(0, help="Random seed."),
) -> None:
    """Run the whole pipeline on the bundled DAX surface and write a report directory."""
    from qfnet.demo import run_demo
    from qfnet.training.checkpoint import ModelFileError

    if out.exists() and not out.is_dir():
        raise fail(f"--out {out}: exists and is not a directory")
    try:  # below a file or without permission: an error line before any work, not a traceback
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise fail(f"--out {out}: cannot create the report directory ({error})") from error
    try:
        report = run_demo(out, quick=quick, seed=seed)
    except (FileExistsError, ModelFileError) as error:  # a folder it did not write, a damaged
        raise fail(str(error)) from error  # shipped model (named by its path)
    typer.echo(report.read_text())
    typer.echo(f"report: {report.resolve()}")


def main() -> None:
    """Console-script entry point.

    Examples:
        ``main()`` reads the command line from ``sys.argv`` and exits with the command's status:

        >>> import sys, tempfile
        >>> from unittest import mock
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     argv = ["qfnet", "generate", "--out", f"{tmp}/ds", "--n", "8", "--model", "sabr"]
        ...     with mock.patch.object(sys, "argv", argv):
        ...         try:
        ...             main()
        ...         except SystemExit as done:
        ...             print("exit status", done.code)
        wrote 8 sabr options (hagan) in 1 shard to .../ds
        exit status 0
    """
    signal.signal(signal.SIGTERM, _terminated)
    previous, warnings.formatwarning = warnings.formatwarning, _warning_line
    try:
        app()
    finally:  # the process's own format again (main() may be called in-process, as above)
        warnings.formatwarning = previous


def _warning_line(message: Warning | str, category: type[Warning], *args: object) -> str:
    """A warning as the command's other messages read (``warning: ...``), not Python's
    ``file:line: UserWarning: ...`` followed by the line of library source that raised it."""
    return f"warning: {message}\n"


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM as an exception, so that ``finally`` blocks and context managers run (worker
    pools are terminated, temporary files removed) instead of the process vanishing mid-way."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    main()
