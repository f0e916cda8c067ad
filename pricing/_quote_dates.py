"""Dates of quote tables: ``maturity`` from ``expiry`` and ``quote_date``, and their checks.

Numeric dates (``a/b/yyyy``) are read day-first or month-first as told or as the dates show; a
given ``maturity`` must agree with the dates; a table holds one quote date
(:func:`check_one_quote_date`). :func:`pricing.quotes.read_quotes` calls these, and
:mod:`pricing.quotes` re-exports the public names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from pricing._quote_errors import QuoteError, _input_row, _Locator, _show, _years, row_error

__all__ = ["DAYFIRST_HINT", "DAYFIRST_OPTIONS", "MATURITY_DATE_TOLERANCE", "check_one_quote_date"]

_NUMERIC_DATE = re.compile(r"^(\d{1,2})([/.-])(\d{1,2})\2(\d{4}|(?<![-])\d{2})(?:[ T].*)?$")
"""``a/b/yyyy``, ``a-b-yyyy`` or ``a.b.yy`` (optionally followed by a time): day-first or
month-first (``05-01-2024`` was read as May 1 and ``13-01-2024`` as January 13 in one file).
Dashed dates take a four-digit year: ``24-01-05`` reads as yy-mm-dd as well as dd-mm-yy."""
_DASHED_SHORT_YEAR = re.compile(r"^\d{1,2}-\d{1,2}-\d{2}(?:[ T].*)?$")


class _DateFormError(ValueError):
    """A text that reads as a date in more than one way, or in none: the message says which."""


def _date_texts(frame: pd.DataFrame, columns: Sequence[str]) -> list[tuple[str, str, int]]:
    """Each distinct text date of ``columns`` with its column and first row (0-based)."""
    seen: dict[tuple[str, str], int] = {}
    for column in columns:
        # first rows of the distinct values by pandas' hashing (a Python loop over the rows
        # cost seconds on vendor files of millions of rows), then the few texts among them
        firsts = frame[column].reset_index(drop=True).drop_duplicates()
        for i, value in firsts.items():
            if isinstance(value, str):
                seen.setdefault((value.strip(), column), int(i))
    return [(text, column, i) for (text, column), i in seen.items()]


# The way to settle ambiguous numeric dates that the error names; the qfnet commands put their
# --dayfirst/--monthfirst options in its place (qfnet._cli.quote_message).
DAYFIRST_HINT = "read_quotes(..., dayfirst=True/False)"
DAYFIRST_OPTIONS = {
    True: "read_quotes(..., dayfirst=True)",
    False: "read_quotes(..., dayfirst=False)",
}


def _day_first(texts: list[tuple[str, str, int]], dayfirst: bool | None, locate: _Locator) -> bool:
    """Whether numeric dates ``a/b/y`` are day/month (True) or month/day, from ``dayfirst`` or,
    when None, from the dates themselves (``texts``: text, column, row); raises naming the row
    and column of a date when they disagree or cannot tell."""
    dated = [(t, c, i, int(m[1]), int(m[3])) for t, c, i in texts if (m := _NUMERIC_DATE.match(t))]
    if not dated or dayfirst is not None:
        return bool(dayfirst)
    # Evidence: a first number above 12 is a day, a second one too (both: not a date at all).
    first = [d for d in dated if d[3] > 12 >= d[4]]
    second = [d for d in dated if d[4] > 12 >= d[3]]
    if first and second:
        text, column, i = second[0][:3]
        raise locate.error(i, column, f"dates mix day/month/year ({first[0][0]!r}) and "
                                      f"month/day/year ({text!r})")  # fmt: skip
    ambiguous = [d for d in dated if d[3] <= 12 and d[4] <= 12]
    if not (first or second) and ambiguous:
        text, column, i = ambiguous[0][:3]
        raise locate.error(i, column, f"dates such as {text!r} read as day/month or month/day "
                                      "alike: write them as YYYY-MM-DD (or pass "
                                      f"{DAYFIRST_HINT})")  # fmt: skip
    return bool(first)


def _parse_date(value: object, day_first: bool) -> pd.Timestamp:
    """One date as a time-zone-naive midnight (a time zone's wall-clock date is kept, a time of
    day dropped); raises ValueError when it is not a date."""
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer()):
        value = str(int(value))  # yyyymmdd stored as a number
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) != 8:
        # only yyyymmdd: '240119' (yymmdd) was read as 24 January 2019, '2024' as 1 January
        raise _DateFormError("a date in digits is yyyymmdd")
    if isinstance(value, str) and _DASHED_SHORT_YEAR.match(value.strip()):
        # '24-01-05' read as 24 January 2005: it is 2024-01-05 in yy-mm-dd as well
        raise _DateFormError("a-b-yy reads as dd-mm-yy and as yy-mm-dd: write YYYY-MM-DD")
    match = _NUMERIC_DATE.match(value.strip()) if isinstance(value, str) else None
    if match:
        a, b, year = int(match[1]), int(match[3]), int(match[4])
        day, month = (a, b) if day_first else (b, a)
        stamp = pd.Timestamp(year=year + 2000 if year < 100 else year, month=month, day=day)
    else:
        stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        raise ValueError("not a date")
    return (stamp.tz_localize(None) if stamp.tzinfo is not None else stamp).normalize()


def _date_reason(value: object, day_first: bool, error: Exception) -> str:
    """Why ``value`` is no date as ``day_first`` reads numeric dates, for an error message."""
    if pd.isna(value):
        return "missing value"
    if isinstance(error, _DateFormError):
        return f"not a date: {_show(value)} ({error})"
    try:  # a date of the other reading: the day-first option contradicts the file
        _parse_date(value, not day_first)
    except (ValueError, TypeError, OverflowError):
        return f"not a date: {_show(value)}"
    said, other = ("day/month", "month/day") if day_first else ("month/day", "day/month")
    return (f"not a date: {_show(value)} (it does not read {said}/year, as "
            f"{DAYFIRST_OPTIONS[day_first]} says: {other}/year? pass "
            f"{DAYFIRST_OPTIONS[not day_first]})")  # fmt: skip


def _column_dates(
    frame: pd.DataFrame, column: str, day_first: bool, locate: _Locator | None
) -> pd.DatetimeIndex:
    """The dates of ``column``; an entry that is no date raises naming its row, or is NaT
    where ``locate`` is None."""
    parsed: dict[object, pd.Timestamp] = {}
    dates = []
    for i, value in enumerate(frame[column].to_numpy()):
        if value not in parsed:
            try:
                parsed[value] = _parse_date(value, day_first)
            except (ValueError, TypeError, OverflowError) as error:
                if locate is not None:
                    raise locate.error(i, column, _date_reason(value, day_first, error)) from None
                parsed[value] = pd.NaT
        dates.append(parsed[value])
    return pd.DatetimeIndex(dates)


def _year_fractions(
    frame: pd.DataFrame, locate: _Locator, dayfirst: bool | None, allow_expired: bool = False
) -> None:
    """Fill ``maturity`` from ``expiry`` and ``quote_date`` (ACT/365F) when it is absent; an
    expiry not after the quote date is an error, or with ``allow_expired`` a maturity <= 0."""
    if "maturity" in frame or "expiry" not in frame:
        return
    if "quote_date" not in frame:
        raise QuoteError(
            "'expiry' needs a 'quote_date' column to compute maturity", column="expiry"
        )
    day_first = _day_first(_date_texts(frame, ("expiry", "quote_date")), dayfirst, locate)
    expiry, quote_date = (
        _column_dates(frame, c, day_first, locate) for c in ("expiry", "quote_date")
    )
    days = (expiry - quote_date).days
    early = np.flatnonzero(days.to_numpy() <= 0)
    if early.size and not allow_expired:
        i = int(early[0])
        raise locate.error(i, "expiry", f"expiry {expiry[i].date()} is not after "
                                        f"quote_date {quote_date[i].date()}")  # fmt: skip
    frame["maturity"] = days.to_numpy(dtype="float64") / 365.0


MATURITY_DATE_TOLERANCE = (2.0, 0.02)
"""Days, and fraction of the term, by which a given ``maturity`` may differ from its ``expiry``
and ``quote_date`` (calendar days / 365): a time of day, a weekend in trading-day time, ACT/360
or ACT/365.25 year fractions; beyond it the two disagree, an error."""


def _check_maturity_dates(frame: pd.DataFrame, locate: _Locator, dayfirst: bool | None) -> None:
    """A ``maturity`` column beside ``expiry`` and ``quote_date`` must agree with them (it was
    used unchecked): the first row off by more than :data:`MATURITY_DATE_TOLERANCE` is an error
    naming both. Entries that are not dates are not checked (the maturity is what is read)."""
    if not {"maturity", "expiry", "quote_date"} <= set(frame):
        return
    try:
        readings = [_day_first(_date_texts(frame, ("expiry", "quote_date")), dayfirst, locate)]
    except QuoteError:  # dates that read either way: the maturity may agree with one reading
        readings = [True, False]
    maturity = frame["maturity"].to_numpy(float)
    found = []
    for day_first in readings:
        expiry, quote_date = (
            _column_dates(frame, c, day_first, None) for c in ("expiry", "quote_date")
        )
        days = (expiry - quote_date).days.to_numpy(dtype="float64")  # NaN where one is no date
        absolute, relative = MATURITY_DATE_TOLERANCE
        bad = np.flatnonzero(np.abs(maturity * 365 - days) > absolute + relative * np.abs(days))
        if not bad.size:
            return
        found.append((bad, expiry, quote_date, days))
    bad, expiry, quote_date, days = min(found, key=lambda f: len(f[0]))
    i = int(bad[0])
    raise locate.error(i, "maturity", f"{_show(frame['maturity'].iloc[i])} years disagrees with "
                                      f"expiry {expiry[i].date()} and quote_date "
                                      f"{quote_date[i].date()}, {days[i]:.0f} days "
                                      f"({_years(days[i] / 365)}): give the maturity or the "
                                      "dates, or correct one")  # fmt: skip


def check_one_quote_date(quotes: pd.DataFrame) -> None:
    """Raise :class:`QuoteError` when the ``quote_date`` column holds more than one date (times
    of day aside), naming the first row of the second one: wherever quotes are grouped by
    expiry (parity forwards, repeated contracts, smiles, calendar arbitrage), a table is one
    day's surface, and two days' quotes of the same maturity were pooled into one expiry (one
    forward between the two days' spots, one day's quotes dropped as repeats of the other's).
    Entries that are not dates are left to :func:`pricing.quotes.read_quotes`.

    Args:
        quotes: a table from :func:`pricing.quotes.read_quotes` (its rows, and file lines where
            it has them, are the ones named).

    Examples:
        >>> table = pd.DataFrame({"quote_date": ["2024-01-05", "2024-01-05 15:30", "2024-01-08"]})
        >>> try:
        ...     check_one_quote_date(table)
        ... except QuoteError as error:
        ...     print(error)  # doctest: +ELLIPSIS
        row 3, column 'quote_date': a second quote date, 2024-01-08 (2024-01-05 in row 1): ...
    """
    if "quote_date" not in quotes or quotes.empty:
        return
    column = quotes["quote_date"]
    uniques = column.dropna().unique()  # in the order of their first rows
    # read a/b/y both ways (read_quotes may have been told which, or the expiries decided):
    # the dates are one when either reading makes them one
    readings = [_readable_dates(uniques, day_first) for day_first in (True, False)]
    dates = min(readings, key=lambda found: len({date for date, _ in found}))
    other = [(date, value) for date, value in dates if date != dates[0][0]] if dates else []
    if other:
        (first, first_value), (date, value) = dates[0], other[0]
        rows = [int(np.argmax((column == v).to_numpy())) for v in (first_value, value)]
        row = _input_row(quotes, rows[0])[0]  # of the input, as row_error's
        raise row_error(
            quotes, rows[1], "quote_date", f"a second quote date, {date.date()} ({first.date()} "
            f"in row {row}): forwards, repeated contracts and smiles are per day; give "
            "one quote date's quotes at a time"
        )  # fmt: skip


def _readable_dates(values: Sequence[object], day_first: bool) -> list[tuple[pd.Timestamp, object]]:
    """``(date, value)`` of each of ``values`` that reads as a date (day-first or not)."""
    dates = []
    for value in values:
        try:
            dates.append((_parse_date(value, day_first), value))
        except (ValueError, TypeError, OverflowError):
            continue
    return dates
