"""Quote tables: load CSV or Parquet, normalise column names and option types, validate.

The canonical table (see ARCHITECTURE.md, section 2) has one row per option with the columns
``option_type, strike, maturity, spot, rate, dividend, forward, discount, bid, ask, mid, price,
implied_vol`` (and model-parameter columns), any of which may be absent except where a consumer
requires them (:func:`require_columns`). Cleaning (forwards from parity, implied vols, arbitrage
filters) lives in :mod:`pricing.quote_cleaning`, the dates (``maturity`` from ``expiry`` and
``quote_date``) in :mod:`pricing._quote_dates`.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pricing._quote_dates import DAYFIRST_HINT as DAYFIRST_HINT
from pricing._quote_dates import DAYFIRST_OPTIONS as DAYFIRST_OPTIONS
from pricing._quote_dates import (
    MATURITY_DATE_TOLERANCE,
    _check_maturity_dates,
    _year_fractions,
    check_one_quote_date,
)
from pricing._quote_errors import (
    QuoteError,
    QuoteWarning,
    _input_row,
    _Locator,
    _show,
    _years,
    row_error,
)

__all__ = [
    "COLUMN_ALIASES",
    "DECIMAL_LIMITS",
    "MATURITY_DATE_TOLERANCE",
    "MATURITY_LIMIT",
    "MISSING_VALUES",
    "NEGATIVE_RATE_LIMIT",
    "NUMERIC_COLUMNS",
    "PATH_DEPENDENT_COLUMNS",
    "STRIKE_RATIO_LIMIT",
    "UNDERLYING_COLUMNS",
    "QuoteError",
    "QuoteWarning",
    "call_flags",
    "carry_yields",
    "check_one_quote_date",
    "check_one_underlying",
    "forward_and_discount",
    "read_quotes",
    "require_columns",
    "row_error",
    "shifts",
    "short_call_flags",
]

COLUMN_ALIASES: dict[str, str] = {
    # option type
    "type": "option_type",
    "cp": "option_type",
    "call_put": "option_type",
    "callput": "option_type",
    "put_call": "option_type",
    "c_p": "option_type",  # 'C/P', 'Call/Put', 'Put/Call': a slash separates like a space
    "p_c": "option_type",
    "cp_flag": "option_type",
    "right": "option_type",
    "optiontype": "option_type",
    # contract
    "k": "strike",
    "strike_price": "strike",
    "t": "maturity",
    "tau": "maturity",
    "ttm": "maturity",
    "maturity_years": "maturity",
    "time_to_maturity": "maturity",
    "time_to_expiry": "maturity",
    "expiration": "expiry",
    "expiry_date": "expiry",
    "expiration_date": "expiry",
    "maturity_date": "expiry",
    "exdate": "expiry",
    "date": "quote_date",
    "trade_date": "quote_date",
    "valuation_date": "quote_date",
    "as_of": "quote_date",
    # market
    "s": "spot",
    "s0": "spot",
    "spot_price": "spot",
    "underlying_price": "spot",
    "r": "rate",
    "zero_rate": "rate",
    "risk_free_rate": "rate",
    "interest_rate": "rate",
    "borrow_rate": "borrow",
    "borrow_cost": "borrow",
    "borrow_fee": "borrow",
    "q": "dividend",
    "div": "dividend",
    "dividend_yield": "dividend",
    "div_yield": "dividend",
    "fwd": "forward",
    "forward_price": "forward",
    "df": "discount",
    "discount_factor": "discount",
    "bid_price": "bid",
    "ask_price": "ask",
    "offer": "ask",
    "best_bid": "bid",
    "best_offer": "ask",
    "mid_price": "mid",
    "iv": "implied_vol",
    "vol": "implied_vol",
    "impliedvol": "implied_vol",
    "implied_volatility": "implied_vol",
    # conventions that must be checked, not ignored
    "exercise_style": "exercise",
    "exercise_type": "exercise",
    "style": "exercise",
    "option_style": "exercise",
    "exercisestyle": "exercise",
    "volatility_type": "vol_type",
    "vol_convention": "vol_type",
    "repo_rate": "repo",
    "repo_spread": "repo",
}
"""Alias -> canonical column name (keys lower-cased, spaces, dashes and slashes turned into
``_``)."""

NUMERIC_COLUMNS: tuple[str, ...] = (
    "strike",
    "maturity",
    "spot",
    "rate",
    "dividend",
    "borrow",
    "forward",
    "discount",
    "bid",
    "ask",
    "mid",
    "price",
    "implied_vol",
    "volatility",
    "v0",
    "kappa",
    "theta",
    "sigma",
    "rho",
    "alpha",
    "beta",
    "nu",
    "shift",
)
"""Canonical columns coerced to float64 (a non-numeric entry, other than a spelling of
:data:`MISSING_VALUES`, is a :class:`QuoteError`)."""

MISSING_VALUES: frozenset[str] = frozenset(
    # pandas' default na_values, lower-cased, and the dash of vendor screens and exports
    ["", "#n/a", "#n/a n/a", "#na", "-1.#ind", "-1.#qnan", "-nan", "1.#ind", "1.#qnan", "<na>",
     "n/a", "na", "null", "nan", "none", "-"]
)  # fmt: skip
"""Texts of a numeric cell read as a missing value (NaN), in any case and with spaces around:
vendor exports write a missing bid, ask or vol as ``NA``, ``N/A``, ``#N/A``, ``NaN``, ``null``
or ``-``."""

_OPTION_TYPES = {
    "c": "call",
    "call": "call",
    "calls": "call",
    "p": "put",
    "put": "put",
    "puts": "put",
}
# Columns whose entries must all be present once the column exists (others may have gaps).
_REQUIRED_VALUES = ("strike", "maturity", "spot", "rate", "dividend", "borrow")
_POSITIVE = ("strike", "maturity", "spot", "forward", "discount", "implied_vol")
# a Black-Scholes volatility of 0 prices the discounted intrinsic value, as --params takes it
_NON_NEGATIVE = ("bid", "ask", "mid", "price", "volatility")


def _stripped(name: object) -> str:
    """A header name without spaces and byte-order marks around it: a file saved twice with a BOM
    (or with a space before it) kept one after the first, and its column was unknown."""
    return str(name).replace("\ufeff", "").strip()


def _normalise_name(name: object) -> str:
    key = re.sub(r"[\s\-/]+", "_", _stripped(name).lower())
    return COLUMN_ALIASES.get(key, key)


def _column_name(name: object) -> str:
    """The canonical name of a column the library reads, else ``name`` as given (stripped): a
    user's own column (``Open Interest``) comes back under its own name, not ``open_interest``."""
    key = _normalise_name(name)
    return key if key in _recognised_names() else _stripped(name)


def _recognised_names() -> frozenset[str]:
    """Every canonical column name something reads from a quote table."""
    return frozenset(
        [*COLUMN_ALIASES.values(), *NUMERIC_COLUMNS, *PATH_DEPENDENT_COLUMNS, "option_type",
         "expiry", "quote_date", "market_iv", "bid_iv", "ask_iv"]
    )  # fmt: skip


def _parquet_error(error: ValueError, path: Path) -> ValueError:
    """pyarrow's error on a Parquet file, naming it: a repeated column was a multi-line schema
    dump naming neither the file nor, plainly, the column."""
    repeated = re.match(r"Multiple matches for FieldRef\.Name\((.+?)\)", str(error))
    if repeated:
        name = repeated.group(1)
        return QuoteError("appears more than once", column=_column_name(name), source=path)
    if str(path) in str(error):  # a cut or foreign file: pyarrow names it
        return error
    return QuoteError(f"cannot read the file: {str(error).splitlines()[0]}", source=path)


def _read_file(path: Path) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Read a CSV (returning file line numbers of data rows) or Parquet file."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError(f"quote file not found: {path}")
    if suffix in (".parquet", ".pq"):
        try:  # pyarrow's errors on a cut or foreign file are ValueErrors naming it
            frame = pd.read_parquet(path)
        except OSError as error:  # e.g. no permission to read it: a traceback
            raise QuoteError(f"cannot read the file: {error}", source=path) from error
        except ValueError as error:
            raise _parquet_error(error, path) from error
        if path.is_dir() and frame.columns.empty:  # a folder is read as a dataset of its files
            raise QuoteError("a folder holding no Parquet file, not a quote file", source=path)
        return frame, None
    if suffix not in (".csv", ".txt"):
        raise QuoteError(
            f"unsupported quote file type '{suffix}' (use .csv or .parquet)", source=path
        )
    if path.is_dir():  # IsADirectoryError's traceback on the command line
        raise QuoteError("a folder, not a quote file", source=path)
    records, starts = _csv_records(path)
    if not records:
        raise QuoteError("the file is empty (no header line)", source=path)
    header = [_stripped(name) for name in records[0]]
    while header and not header[-1]:  # a trailing comma on the header line too
        header.pop()
    separator = next((s for s in (";", "\t", "|") if len(header) == 1 and s in header[0]), None)
    if separator:  # a European or tab-separated export: "n fields, but 1 column"
        name = {";": "semicolons", "\t": "tabs", "|": "pipes"}[separator]
        raise QuoteError(f"the header {header[0]!r} is one column: separated by {name}? "
                         "quote files use commas between fields and points in numbers",
                         line=1, source=path)  # fmt: skip
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:  # pandas would rename the second one 'name.1' and keep the first silently
        side_by_side = {"calls", "puts"} <= {name.lower() for name in header}  # an exchange's chain
        hint = (": calls and puts side by side? give one row per option, with an option_type "
                "column") if side_by_side else ""  # fmt: skip
        raise QuoteError(f"column '{repeated[0]}' appears more than once in the header{hint}",
                         column=_column_name(repeated[0]), source=path)  # fmt: skip
    row = 0  # data rows so far: blank lines are none
    for record, line in zip(records[1:], starts[1:], strict=True):
        row += any(field.strip() for field in record)
        if any(field.strip() for field in record[len(header) :]):
            raise QuoteError(f"{len(record)} fields, but the header has {len(header)} columns",
                             row=row, line=line, source=path)  # fmt: skip
    # Blank lines stay as empty rows until the line numbers are taken. Short rows are padded;
    # empty trailing fields (a trailing comma on data lines, as spreadsheets export) are dropped.
    width = len(header)
    rows = [record[:width] + [""] * (width - len(record)) for record in records[1:]]
    frame = pd.DataFrame(rows, columns=records[0][:width], dtype=str)
    lines = np.asarray(starts[1:], dtype=int)
    frame = frame.replace(r"^\s*$", np.nan, regex=True)  # a cell of spaces is empty too
    blank = frame.isna().all(axis=1).to_numpy()
    frame = frame.loc[~blank]
    return frame, lines[~blank]


def _csv_records(path: Path) -> tuple[list[list[str]], list[int]]:
    """The records of a CSV file and the file line each starts on: a quoted field holding a
    line break shifted every later row's line by one, and a byte that is no UTF-8 (a
    spreadsheet's Latin-1 export) or a field past the csv module's limit (a quote left open)
    named no line."""
    try:
        data = path.read_bytes()
    except OSError as error:  # e.g. no permission to read it: a traceback
        raise QuoteError(f"cannot read the file: {error.strerror or error}", source=path) from error
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:  # error.object: the bytes after a BOM
        line = error.object.count(b"\n", 0, error.start) + 1
        raise QuoteError(f"cannot parse CSV: file line {line} is not UTF-8 text (byte "
                         f"{error.object[error.start]:#04x}): save the file as UTF-8",
                         source=path) from error  # fmt: skip
    reader = csv.reader(io.StringIO(text, newline=""))
    records, starts, start = [], [], 1
    try:
        for record in reader:
            records.append(record)
            starts.append(start)
            start = reader.line_num + 1  # lines read so far, the quoted line breaks among them
    except csv.Error as error:
        raise QuoteError(f"cannot parse CSV: file line {reader.line_num}: {error}",
                         source=path) from error  # fmt: skip
    return records, starts


def _normalise_columns(frame: pd.DataFrame, source: str | None) -> pd.DataFrame:
    # a header without a name (an index written by to_csv) is named as pandas names it: two
    # such (a MultiIndex) were refused as "columns '' and '' both mean ''"
    names = [_column_name(c) if _stripped(c) else f"Unnamed: {i}"
             for i, c in enumerate(frame.columns)]  # fmt: skip
    seen: dict[str, object] = {}
    for original, name in zip(frame.columns, names, strict=True):
        if name in seen:
            raise QuoteError(
                f"columns '{seen[name]}' and '{original}' both mean '{name}'",
                column=name,
                source=source,
            )
        seen[name] = original
    return frame.set_axis(names, axis=1)


def _coerce_numeric(frame: pd.DataFrame, locate: _Locator) -> None:
    for column in NUMERIC_COLUMNS:
        if column not in frame:
            continue
        raw = frame[column]
        imaginary = np.flatnonzero(_complex_entries(raw))
        if imaginary.size:
            i = int(imaginary[0])
            raise locate.error(i, column, f"must be real, not complex, got {raw.iloc[i]!r}")
        flags = np.flatnonzero(_bools_and_dates(raw))
        if flags.size:
            i = int(flags[0])
            raise locate.error(i, column, f"not a number: {_show(raw.iloc[i])}")
        if raw.dtype.kind not in "biufc":  # 'N/A' is a gap ('not a number' named it an error)
            raw = raw.mask(raw.astype(str).str.strip().str.lower().isin(MISSING_VALUES))
        values = pd.to_numeric(raw, errors="coerce").astype("float64")
        bad = np.flatnonzero(values.isna().to_numpy() & raw.notna().to_numpy())
        if bad.size:
            i = int(bad[0])
            raise locate.error(i, column, f"not a number: {raw.iloc[i]!r}")
        infinite = np.flatnonzero(np.isinf(values.to_numpy()))
        if infinite.size:
            i = int(infinite[0])
            raise locate.error(i, column, f"must be finite, got {raw.iloc[i]!r}")
        frame[column] = values


def _complex_entries(raw: pd.Series) -> np.ndarray:
    """Where a column holds a complex number, shape (N,): casting to float dropped the
    imaginary part with a warning, a complex dtype's and a DataFrame's object column's alike
    (``100 + 1j`` was read as a strike of 100)."""
    if raw.dtype.kind == "c":
        return np.ones(len(raw), dtype=bool)
    if raw.dtype.kind == "O":
        return raw.map(lambda value: isinstance(value, complex | np.complexfloating)).to_numpy(bool)
    return np.zeros(len(raw), dtype=bool)


def _bools_and_dates(raw: pd.Series) -> np.ndarray:
    """Where a column of a DataFrame or Parquet file holds a bool, a date or a duration, shape
    (N,): ``pd.to_numeric`` read True as 1.0 (a boolean ``strike`` column priced strikes of 1)
    and dates and durations as nanoseconds."""
    if raw.dtype.kind in "bmM":
        return raw.notna().to_numpy()
    if raw.dtype.kind == "O":  # to_numeric refuses dates among other objects, not bools
        return raw.map(lambda value: isinstance(value, bool | np.bool_)).to_numpy(bool)
    return np.zeros(len(raw), dtype=bool)


_VOL_COLUMNS = ("market_iv", "bid_iv", "ask_iv")
"""Columns of a prepared table, outside :data:`NUMERIC_COLUMNS`, that are read as numbers."""


def _infer_other_columns(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> None:
    """Give all-numeric columns outside :data:`NUMERIC_COLUMNS` (those of ``columns``; None:
    every one, as a CSV file's) a numeric dtype, as ``pd.read_csv`` would."""
    for column in frame.columns if columns is None else [c for c in columns if c in frame]:
        if column in NUMERIC_COLUMNS or frame[column].dtype.kind in "biufcM":
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.notna().sum() == frame[column].notna().sum():
            frame[column] = values


def _normalise_option_type(frame: pd.DataFrame, locate: _Locator) -> None:
    if "option_type" not in frame:
        return
    raw = frame["option_type"]
    mapped = raw.astype(str).str.strip().str.lower().map(_OPTION_TYPES)
    bad = np.flatnonzero(mapped.isna().to_numpy())
    if bad.size:
        i = int(bad[0])
        value = raw.iloc[i]
        reason = "missing option type" if pd.isna(value) else f"unknown option type {_show(value)}"
        raise locate.error(i, "option_type", f"{reason} (expected call/put or C/P)")
    frame["option_type"] = mapped


def call_flags(option_type: pd.Series | np.ndarray | Sequence[object]) -> np.ndarray:
    """Calls (True) per row of an ``option_type`` column as :func:`read_quotes` leaves it,
    ``'call'`` or ``'put'``, shape (N,); anything else (a raw ``C``, a gap) is a
    :class:`QuoteError` naming the row, not a put.

    Examples:
        >>> call_flags(["call", "put"]).tolist()
        [True, False]
    """
    kind = _plain_list(option_type)
    if not set(kind) <= {"call", "put"}:  # a set: np.isin on objects sorts them (0.2 ms a fit)
        i = next(j for j, v in enumerate(kind) if v not in ("call", "put"))
        raise QuoteError(f"must be 'call' or 'put', got {kind[i]!r} (read_quotes turns C/P into "
                         "these)", row=i + 1, column="option_type")  # fmt: skip
    return np.asarray(kind, dtype=object) == "call"


def _plain_list(values: pd.Series | np.ndarray | Sequence[object]) -> list[object]:
    """Python values (not numpy scalars, whose repr in messages is ``np.str_('C')``)."""
    return values.tolist() if isinstance(values, pd.Series | np.ndarray) else list(values)


def short_call_flags(option_type: pd.Series | np.ndarray | Sequence[object]) -> np.ndarray:
    """Calls (True) per row of an ``option_type`` column not read by :func:`read_quotes`:
    ``call``/``put`` or ``C``/``P`` in any case and spacing, shape (N,); anything else is a
    ``ValueError`` naming the value and the row.

    Examples:
        >>> short_call_flags([" Call", "p"]).tolist()
        [True, False]
    """
    raw = _plain_list(option_type)
    kind = [str(v).strip().lower() for v in raw]
    bad = [j for j, v in enumerate(kind) if v not in ("call", "c", "put", "p")]
    if bad:
        raise ValueError(
            f"option_type must be call or put, got {raw[bad[0]]!r} at row {bad[0] + 1}"
        )
    return np.isin(kind, ("call", "c"))


def _validate(frame: pd.DataFrame, locate: _Locator, allow_expired: bool = False) -> None:
    for column in _REQUIRED_VALUES:
        if column in frame:
            missing = np.flatnonzero(frame[column].isna().to_numpy())
            if missing.size:
                raise locate.error(int(missing[0]), column, "missing value")
    shift = shifts(frame)
    checks = [(c, frame[c], "> 0") for c in _POSITIVE if c in frame]
    checks += [(c, frame[c], ">= 0") for c in _NON_NEGATIVE if c in frame]
    if allow_expired:  # expired rows (maturity <= 0) are kept for the caller to drop and count
        checks = [(c, v, op) for c, v, op in checks if c != "maturity"]
    if "shift" in frame:
        shifted = [c for c in ("strike", "forward") if c in frame]
        checks = [(c, v, op) for c, v, op in checks if c not in shifted]
        checks += [(c, frame[c] + shift, "> 0 after adding the shift") for c in shifted]
    for column, values, op in checks:
        array = values.to_numpy(dtype="float64")
        bad_mask = ~(array >= 0) if op == ">= 0" else ~(array > 0)
        bad = np.flatnonzero(bad_mask & ~np.isnan(array))
        if bad.size:
            i = int(bad[0])
            raise locate.error(i, column, f"must be {op}, got {_show(frame[column].iloc[i])}")


DECIMAL_LIMITS = {
    "implied_vol": 5.0,
    "volatility": 5.0,
    "rate": 1.0,
    "dividend": 1.0,
    "borrow": 1.0,
}
"""Magnitudes beyond which a vol or rate is taken for a percentage (20 for 20%), an error."""

NEGATIVE_RATE_LIMIT = -0.02
"""A ``rate`` below which it is taken for a percentage (-0.5 for -0.5%), an error: no market's
rate has gone much below -1%, and a percentage read as a decimal carried forwards by -50% a
year."""

STRIKE_RATIO_LIMIT = 100.0
"""Strike / forward (else spot) beyond which strikes are taken for thousandths (OptionMetrics'
``strike_price`` is the strike times 1000), an error, for underlyings quoted at 1 or more (a
rate's forward of 1 bp may have a strike 200 times larger)."""


def _check_strike_scale(frame: pd.DataFrame, locate: _Locator) -> None:
    reference = frame["forward"] if "forward" in frame else pd.Series(np.nan, index=frame.index)
    if "spot" in frame:
        reference = reference.fillna(frame["spot"])
    if "strike" not in frame or reference.isna().all():
        return
    shift = shifts(frame)
    ratio = ((frame["strike"] + shift) / (reference + shift)).to_numpy()
    # underlyings quoted at 1 or more only: a rate forward of 1 bp may have strikes of 2%
    bad = np.flatnonzero((ratio > STRIKE_RATIO_LIMIT) & (reference >= 1.0).to_numpy())
    if bad.size:
        i = int(bad[0])
        raise locate.error(i, "strike", f"{_show(frame['strike'].iloc[i])} is {ratio[i]:.0f} times "
                                        f"the forward or spot {_show(reference.iloc[i])}: strikes "
                                        "times 1000 (OptionMetrics strike_price)? give the "
                                        "strike itself")  # fmt: skip


MATURITY_LIMIT = 100.0
"""Years beyond which a given ``maturity`` is taken for days (a ``ttm`` of 365), an error."""


def _check_maturity_scale(frame: pd.DataFrame, locate: _Locator) -> None:
    """Refuse a given ``maturity`` beyond :data:`MATURITY_LIMIT` years: days read as years."""
    bad = np.flatnonzero((frame["maturity"] > MATURITY_LIMIT).to_numpy())
    if bad.size:
        i = int(bad[0])
        value = frame["maturity"].iloc[i]
        raise locate.error(i, "maturity", f"{_show(value)} years looks like days ({value:g} "
                                          f"days is {_years(value / 365)}): give year "
                                          "fractions")  # fmt: skip


def _check_repo(frame: pd.DataFrame, locate: _Locator) -> None:
    """Refuse a ``repo`` column where a forward is to be made from the spot: a repo rate replaces
    ``rate`` in the forward by one convention and is a spread subtracted from the carry by
    another (it was ignored). A row that gives its ``forward`` has the repo in it: the first
    row with a repo and no forward is named (it was the first with a repo, forward or not, told
    to "give a 'forward' column" where the file gave one with a gap)."""
    if "repo" not in frame:
        return
    text = frame["repo"].astype(str).str.strip().str.lower()
    used = frame["repo"].notna() & ~text.isin(MISSING_VALUES)
    if "forward" in frame:
        used &= frame["forward"].isna()
    given = np.flatnonzero(used.to_numpy())
    if given.size:
        hint = "its 'forward'" if "forward" in frame else "a 'forward' column"
        raise locate.error(int(given[0]), "repo", f"{_show(frame['repo'].iloc[int(given[0])])}: a "
                                                  "repo rate is ambiguous (the forward's rate, or "
                                                  "a borrow spread); name a borrow spread "
                                                  "'borrow' (forward = spot exp((rate - dividend "
                                                  f"- borrow) T)), or give {hint}")  # fmt: skip


def _check_conventions(frame: pd.DataFrame, locate: _Locator) -> None:
    """Refuse what the library would otherwise misread: American exercise, normal vols, vols
    and rates in percent, strikes in thousandths."""
    _check_strike_scale(frame, locate)
    for column, limit in DECIMAL_LIMITS.items():
        if column in frame:
            bad = np.flatnonzero((frame[column].abs() > limit).to_numpy())
            if bad.size:
                i = int(bad[0])
                example = (
                    "0.2 for 20%" if column in ("implied_vol", "volatility") else "0.02 for 2%"
                )
                raise locate.error(i, column, f"{_show(frame[column].iloc[i])} looks like a "
                                              f"percentage: give decimals ({example})")  # fmt: skip
    if "rate" in frame:
        bad = np.flatnonzero((frame["rate"] < NEGATIVE_RATE_LIMIT).to_numpy())
        if bad.size:
            i = int(bad[0])
            raise locate.error(i, "rate", f"{_show(frame['rate'].iloc[i])} looks like a "
                                          "percentage: give decimals (-0.005 for -0.5%; no "
                                          f"rate below {NEGATIVE_RATE_LIMIT:g} is read)")  # fmt: skip
    # abbreviations too: "AMER" and "Bermuda" were priced as European (not "AM": a settlement)
    checks = {"exercise": (r"americ|bermud|^\s*(?:a|amer|berm)\.?\s*$",
                           "European exercise only (American and Bermudan prices carry an "
                           "early-exercise premium the Black and Heston formulas lack)"),
              "vol_type": ("normal|bachelier", "lognormal (Black) vols only; normal (Bachelier) "
                                               "vols are not supported")}  # fmt: skip
    for column, (pattern, reason) in checks.items():
        if column in frame:
            text = frame[column].astype(str).str.lower()
            bad = np.flatnonzero(text.str.contains(pattern).to_numpy())
            if bad.size:
                i = int(bad[0])
                raise locate.error(i, column, f"{frame[column].iloc[i]!r}: {reason}")


PATH_DEPENDENT_COLUMNS: dict[str, str] = {
    "barrier": "a barrier option",
    "barrier_type": "a barrier option",
    "average": "an average-rate (Asian) option",
    "average_type": "an average-rate (Asian) option",
    "averaging": "an average-rate (Asian) option",
    "lookback": "a lookback option",
    "lookback_type": "a lookback option",
}
"""Columns whose entry makes a row a path-dependent contract: such a row is refused (it was priced,
calibrated to and inverted as the European vanilla of its strike)."""


def _check_path_dependent(frame: pd.DataFrame, locate: _Locator) -> None:
    """Refuse rows that name a barrier, an average or a lookback: the tables hold European
    vanillas (:mod:`pricing.analytic_barrier`, :mod:`pricing.mc_exotics` price those)."""
    for column, product in PATH_DEPENDENT_COLUMNS.items():
        if column in frame:
            text = frame[column].astype(str).str.strip().str.lower()
            given = frame[column].notna() & ~text.isin(MISSING_VALUES)
            bad = np.flatnonzero(given.to_numpy())
            if bad.size:
                i = int(bad[0])
                raise locate.error(i, column, f"{_show(frame[column].iloc[i])} names {product}: "
                                              "European vanillas only (it was read as the "
                                              "vanilla of its strike)")  # fmt: skip


def _check_crossed(frame: pd.DataFrame, locate: _Locator) -> None:
    if "bid" in frame and "ask" in frame:
        crossed = np.flatnonzero((frame["bid"] > frame["ask"]).to_numpy())
        if crossed.size:
            i = int(crossed[0])
            raise locate.error(
                i,
                "bid",
                f"bid {_show(frame['bid'].iloc[i])} > ask {_show(frame['ask'].iloc[i])}"
                " (crossed quote)",
            )


def read_quotes(
    source: str | Path | pd.DataFrame,
    *,
    allow_crossed: bool = False,
    allow_expired: bool = False,
    dayfirst: bool | None = None,
    shift: float | None = None,
) -> pd.DataFrame:
    """Read and validate a quote table from a CSV/Parquet file or a DataFrame.

    Column names are matched case-insensitively after stripping, with aliases
    (``type``/``cp`` -> ``option_type``, ``T``/``tau`` -> ``maturity``, ``zero_rate`` -> ``rate``,
    ``div`` -> ``dividend``, ``iv``/``vol`` -> ``implied_vol``, ...; see :data:`COLUMN_ALIASES`).
    Option types ``C``/``P``/``call``/``put`` become ``call``/``put``. ``maturity`` is computed
    from ``expiry`` and ``quote_date`` when absent, row by row, as calendar days / 365 (ACT/365F;
    a time of day is dropped, so an expiry on the quote date is a maturity of 0); a ``maturity``
    given beside them must agree within :data:`MATURITY_DATE_TOLERANCE`, and one above
    :data:`MATURITY_LIMIT` years is refused as days. ``rate`` and ``dividend`` default to 0 (and
    stay defaults, ``attrs["defaulted"]``, when a table read before is read again); a
    ``borrow`` cost (``borrow_rate``, ``borrow_cost``) carries the spot like a dividend
    (:func:`carry_yields`), and a ``repo`` column, ambiguous, is refused unless every row gives
    its ``forward``. Unrecognised columns are kept, under their names as given (stripped of
    spaces around them), with their values (a CSV file's all-numeric ones read as numbers, as
    ``pd.read_csv`` reads them; a Parquet file's or DataFrame's as typed: a text ``0700`` stays
    text). ``option_type`` may be
    absent (the consumer decides). In numeric columns, an empty cell and the usual spellings of
    a missing value (:data:`MISSING_VALUES`: ``NA``, ``N/A``, ``#N/A``, ``NaN``, ``null``,
    ``None``, ``-``, in any case) are missing: an error in ``strike``, ``maturity``, ``spot``,
    ``rate`` and ``dividend``, a gap elsewhere (a missing bid or ask makes a one-sided quote,
    which :func:`pricing.quote_cleaning.clean_quotes` drops and counts); any other text is an
    error. An ``exercise`` column (``exercise_style``, ``style``, ``option_style``) naming American
    or Bermudan exercise is refused; without one, American quotes (most single-stock and ETF
    options) pass undetected, their early-exercise premium read as implied vol: no price bound
    tells them apart (an American put exceeds a European one's bound ``D K`` only with the spot
    near ``(1 - D) K`` or below).

    Args:
        source: path to a ``.csv`` or ``.parquet`` file, or a DataFrame (not modified).
        allow_crossed: keep rows with bid > ask (for :func:`pricing.quote_cleaning.clean_quotes`,
            which filters and counts them) instead of raising.
        allow_expired: keep rows whose maturity is not positive (an expiry on the quote date, as
            in many exchange downloads) instead of raising (for
            :func:`pricing.quote_cleaning.clean_quotes`, which drops and counts them).
        dayfirst: read numeric dates ``a/b/yyyy`` (or ``a-b-yyyy``, ``a.b.yyyy``, ``a/b/yy``)
            of ``expiry`` and ``quote_date`` as day/month (True) or month/day (False); None
            infers it from the dates (a number above 12) and raises when they cannot tell. ISO
            dates (``YYYY-MM-DD``), ``yyyymmdd`` and named months are never ambiguous; other
            dates in digits (``yymmdd``, a year alone, spreadsheet serials) are errors.
            Time-zone-aware dates keep their local calendar date.
        shift: a ``shift`` for every row, where the table has no such column (shifted SABR,
            e.g. from ``qfnet price --params``): strikes and forwards are then checked after
            adding it, so that negative ones can be read.

    Returns:
        A new DataFrame with canonical names, float64 numeric columns and a fresh 0-based index.

    Raises:
        QuoteError: for a malformed table; the message names the row (1-based data row and, for CSV,
            the file line) and the column.

    Examples:
        >>> table = pd.DataFrame({"K": [90, 110], "T": [0.5, 0.5], "S": 100, "cp": ["P", "c"]})
        >>> quotes = read_quotes(table)
        >>> list(quotes.columns), quotes["option_type"].tolist()
        (['strike', 'maturity', 'spot', 'option_type', 'rate', 'dividend'], ['put', 'call'])
    """
    if shift is not None:
        shift = _checked_shift(shift)
    lines, name = None, None
    if isinstance(source, pd.DataFrame):
        frame = source.copy()
        if not (source.index.is_unique and source.index.is_monotonic_increasing):
            # rows sorted or concatenated since they were read keep the attrs of the rows read:
            # errors named the file lines of other rows
            for key in ("file_lines", "input_rows"):
                frame.attrs.pop(key, None)
    else:
        path = Path(source)
        frame, lines = _read_file(path)
        name = str(path)
    # A named index (e.g. a Parquet file written after set_index("strike")) holds a column.
    named = any(level is not None for level in frame.index.names)
    frame = _normalise_columns(frame.reset_index(drop=not named), name)
    locate = _Locator(lines, name)
    _check_path_dependent(frame, locate)
    _normalise_option_type(frame, locate)
    given_maturity = "maturity" in frame
    _year_fractions(frame, locate, dayfirst, allow_expired)
    _coerce_numeric(frame, locate)
    if given_maturity:
        _check_maturity_scale(frame, locate)
        _check_maturity_dates(frame, locate, dayfirst)
    # a CSV file's; a Parquet file's or DataFrame's have their dtypes, but for the vols that
    # prepare_quotes and calibrate read (text "0.24" in bid_iv failed there as 'sub' on 'str')
    _infer_other_columns(frame, None if lines is not None else _VOL_COLUMNS)
    # a table read before keeps its defaulted columns' zeros as defaults: clean_quotes on it took
    # them for given rates (parity's discount became the rate-0 one, the carry note was lost)
    earlier = source.attrs.get("defaulted", []) if isinstance(source, pd.DataFrame) else []
    defaulted = [column for column in ("rate", "dividend") if column not in frame
                 or (column in earlier and bool((frame[column] == 0).all()))]  # fmt: skip
    for column in defaulted:
        frame[column] = 0.0
    if shift is not None and "shift" not in frame:
        frame["shift"] = shift
    _validate(frame, locate, allow_expired)
    _check_conventions(frame, locate)
    _check_repo(frame, locate)
    if not allow_crossed:
        _check_crossed(frame, locate)
    if lines is not None:
        frame.attrs["file_lines"] = lines.tolist()
    frame.attrs["defaulted"] = defaulted
    return frame


def _checked_shift(shift: object) -> float:
    """``read_quotes``'s ``shift`` as a float; anything but a finite real number is a ValueError
    naming it (NaN was read as no shift, :func:`shifts` filling gaps with 0, and an infinite
    one passed every strike check)."""
    if isinstance(shift, bool | np.bool_) or not isinstance(shift, numbers.Real):
        raise ValueError(f"shift must be a finite real number, got {_show(shift)}")
    if not math.isfinite(shift):
        raise ValueError(f"shift must be finite, got {_show(shift)}")
    return float(shift)


def carry_yields(quotes: pd.DataFrame) -> np.ndarray:
    """The yield a spot is carried at besides the rate, per row, shape (N,): ``dividend`` plus
    ``borrow`` (a stock-borrow cost; 0 where a column is absent), so that the forward made from
    a spot is ``spot * exp((rate - dividend - borrow) T)``.

    Examples:
        >>> carry_yields(pd.DataFrame({"dividend": [0.01, 0.02], "borrow": [0.005, 0.0]})).tolist()
        [0.015, 0.02]
    """
    zero = pd.Series(0.0, quotes.index)
    return (quotes.get("dividend", zero) + quotes.get("borrow", zero)).to_numpy(float)


def shifts(quotes: pd.DataFrame) -> pd.Series:
    """The ``shift`` of each row (shifted-lognormal quotes, rates near zero); 0 where the
    column is absent or empty.

    Examples:
        >>> shifts(pd.DataFrame({"shift": [0.02, None]})).tolist(), shifts(pd.DataFrame({"x": [1]})).tolist()
        ([0.02, 0.0], [0.0])
    """
    return quotes["shift"].fillna(0.0) if "shift" in quotes else pd.Series(0.0, quotes.index)


def require_columns(df: pd.DataFrame, columns: list[str] | tuple[str, ...], what: str) -> None:
    """Raise :class:`QuoteError` listing the columns of ``columns`` that ``df`` lacks.

    Args:
        df: a quote table (canonical names, as returned by :func:`read_quotes`).
        columns: required canonical column names.
        what: what needs them, for the message (e.g. ``"price --model heston"``).

    Examples:
        >>> try:
        ...     require_columns(pd.DataFrame({"strike": [1.0]}), ["strike", "spot"], "pricing")
        ... except QuoteError as error:
        ...     print(error)
        pricing needs column(s) spot; the table has strike
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        have = ", ".join(map(str, df.columns)) or "no columns"
        raise QuoteError(f"{what} needs column(s) {', '.join(missing)}; the table has {have}")


UNDERLYING_COLUMNS = ("underlying", "underlying_symbol", "secid")
"""Column names (any case, spaces read as ``_``) that name a quote's underlying: CBOE's
``underlying_symbol``, OptionMetrics' ``secid``. Not ``symbol`` or ``root``: an option's own
symbol differs per contract, and one index has several roots (SPX, SPXW); nor ``ticker``,
OptionMetrics' underlying but Bloomberg's option (``DAX 12/20/02 C4500 Index``): a chain
exported with it was refused as a second underlying on its second row."""


def check_one_underlying(quotes: pd.DataFrame) -> None:
    """Raise :class:`QuoteError` when a column of :data:`UNDERLYING_COLUMNS` names two
    underlyings, naming the first row of the second one: a table is one underlying's surface,
    and two underlyings' quotes of one maturity were pooled into one expiry (one forward for
    both, the other's quotes dropped as out of range or as arbitrage, a fit to neither).

    Examples:
        >>> table = pd.DataFrame({"Underlying Symbol": ["DAX", "DAX", "ESTX"], "strike": 1.0})
        >>> try:
        ...     check_one_underlying(table)
        ... except QuoteError as error:
        ...     print(error)  # doctest: +ELLIPSIS
        row 3, column 'Underlying Symbol': a second underlying, ESTX (DAX in row 1): ...
    """
    for column in quotes.columns:
        if _normalise_name(column) not in UNDERLYING_COLUMNS:
            continue
        values = quotes[column]
        present = values.notna().to_numpy()
        if not present.any():
            continue
        first = int(np.argmax(present))
        other = present & (values != values.iloc[first]).to_numpy()
        if other.any():
            row = int(np.argmax(other))
            raise row_error(quotes, row, str(column),
                            f"a second underlying, {values.iloc[row]} ({values.iloc[first]} in "
                            f"row {_input_row(quotes, first)[0]}): forwards, smiles and "
                            "arbitrage checks are per underlying; give one underlying's quotes "
                            "at a time")  # fmt: skip


def forward_and_discount(quotes: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Forward and discount factor per row: the ``forward``/``discount`` columns where present,
    else ``spot * exp((rate - dividend - borrow) T)`` and ``exp(-rate T)`` (a ``borrow`` cost
    carries like a dividend, :func:`carry_yields`); a row with a ``discount`` but
    no ``forward`` carries its spot at the discount's rate,
    ``spot * exp(-(dividend + borrow) T) / discount``.

    Shape:
        quotes: N rows; outputs: (N,) each.

    Examples:
        >>> table = pd.DataFrame({"strike": [90.0], "spot": [100.0], "maturity": [1.0], "rate": [0.05]})
        >>> f, d = forward_and_discount(table)
        >>> round(float(f[0]), 4), round(float(d[0]), 4)
        (105.1271, 0.9512)
    """
    require_columns(quotes, ["strike", "maturity"], "pricing")
    t = quotes["maturity"].to_numpy(float)
    rate = quotes["rate"].to_numpy(float) if "rate" in quotes else np.zeros_like(t)
    dividend = carry_yields(quotes)  # with a borrow cost (it was ignored)
    discount = np.exp(-rate * t)
    forward = np.full_like(t, np.nan)
    if "spot" in quotes:
        forward = quotes["spot"].to_numpy(float) * np.exp((rate - dividend) * t)
    if "discount" in quotes:
        given = _given(quotes, "discount", positive=True)
        discount = np.where(np.isnan(given), discount, given)
        if "spot" in quotes:  # a given discount is the row's rate, in its carry too
            carried = quotes["spot"].to_numpy(float) * np.exp(-dividend * t) / given
            forward = np.where(np.isnan(given), forward, carried)
    if "forward" in quotes:
        given = _given(quotes, "forward", positive=False)
        forward = np.where(np.isnan(given), forward, given)
    missing = np.flatnonzero(~np.isfinite(forward))
    if missing.size:
        raise row_error(quotes, int(missing[0]), "forward", "no forward: give a 'forward' "
                        "value or a 'spot' column (with 'rate', 'dividend')")  # fmt: skip
    return forward, discount


def _given(quotes: pd.DataFrame, column: str, *, positive: bool) -> np.ndarray:
    """A ``forward`` or ``discount`` column as floats, NaN where it has a gap; an infinite entry
    (or, with ``positive``, one <= 0) is a QuoteError naming its row: it was read as a gap and
    the row priced from its spot without a word (a discount of 0 was "no forward")."""
    values = quotes[column].to_numpy(float)
    ok = np.isfinite(values) & ((values > 0) if positive else True)
    bad = np.flatnonzero(~np.isnan(values) & ~ok)
    if bad.size:
        i = int(bad[0])
        need = "finite and > 0" if positive else "finite"
        raise row_error(quotes, i, column, f"must be {need}, got {values[i]}")
    return values
