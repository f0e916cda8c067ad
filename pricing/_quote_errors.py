"""Errors of quote tables that name the row, file line and column, and the helpers that write them.

Shared by :mod:`pricing.quotes` (reading and checking a table) and :mod:`pricing._quote_dates`
(its dates); :class:`QuoteError`, :class:`QuoteWarning` and :func:`row_error` are public through
:mod:`pricing.quotes`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["QuoteError", "QuoteWarning", "row_error"]


class QuoteError(ValueError):
    """A malformed quote table; the message names the row (1-based data row, file line) and column.

    Attributes:
        row: 1-based data row, or ``None`` for table-level problems.
        line: line in the source file (CSV: header is line 1), or ``None``.
        column: canonical column name, or ``None``.

    Examples:
        >>> error = QuoteError("must be > 0", row=3, line=4, column="strike")
        >>> print(error)
        row 3 (file line 4), column 'strike': must be > 0
        >>> error.row, error.column
        (3, 'strike')
    """

    def __init__(
        self,
        reason: str,
        *,
        row: int | None = None,
        line: int | None = None,
        column: str | None = None,
        source: str | Path | None = None,
    ) -> None:
        self.row, self.line, self.column, self.reason = row, line, column, reason
        where = []
        if source is not None:
            where.append(str(source))
        if row is not None:
            where.append(f"row {row}" + (f" (file line {line})" if line is not None else ""))
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


class QuoteWarning(UserWarning):
    """What was assumed of a quote table that its vols depend on (a rate read as 0, a given
    discount its parity slope disagrees with, maturities in days read as years): the notes of
    :func:`pricing.quote_cleaning.forward_notes` and
    :func:`pricing.quote_cleaning.day_maturity_note`, warned where no report or command prints
    them (:func:`pricing.calibration.calibrate` on a table it prepares), and filtered by that
    category where one does.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warnings.warn("no rate column: ...", QuoteWarning)
        >>> caught[0].category.__name__, issubclass(QuoteWarning, UserWarning)
        ('QuoteWarning', True)
    """


# Named where it is public, as before the split: tracebacks print pricing.quotes.QuoteError.
QuoteError.__module__ = QuoteWarning.__module__ = "pricing.quotes"


def _show(value: object) -> str:
    """Format a cell for an error message (plain floats, not ``np.float64(...)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _years(value: float) -> str:
    """``value`` years in words: ``'1 year'``, ``'0.5014 years'``."""
    return f"{value:.4g} year" + ("" if f"{value:.4g}" == "1" else "s")


class _Locator:
    """Turns a positional row index into the (row, line) pair of an error message."""

    def __init__(self, lines: np.ndarray | None, source: str | None) -> None:
        self.lines, self.source = lines, source

    def error(self, position: int, column: str | None, reason: str) -> QuoteError:
        line = int(self.lines[position]) if self.lines is not None else None
        return QuoteError(reason, row=position + 1, line=line, column=column, source=self.source)


def row_error(quotes: pd.DataFrame, position: int, column: str | None, reason: str) -> QuoteError:
    """A :class:`QuoteError` naming the row at ``position`` (0-based) of ``quotes`` as
    :func:`_input_row` does, and ``column``: the errors found after reading, as those found
    while reading.

    Examples:
        >>> table = pd.DataFrame({"rho": [0.1, -1.5]})
        >>> table.attrs["file_lines"] = [2, 4]  # a blank line 3
        >>> print(row_error(table, 1, "rho", "must be in (-1, 1), got -1.5"))
        row 2 (file line 4), column 'rho': must be in (-1, 1), got -1.5
    """
    row, line = _input_row(quotes, position)
    return QuoteError(reason, row=row, line=line, column=column)


def _input_row(quotes: pd.DataFrame, position: int) -> tuple[int, int | None]:
    """The 1-based input row of the row at ``position`` (0-based) of ``quotes`` and its file
    line, or None: ``attrs["input_rows"]`` and ``attrs["file_lines"]`` (from
    :func:`pricing.quotes.read_quotes`) where they hold one entry per row of ``quotes`` (a table
    of some of the input's rows, as ``qfnet iv``'s unexpired ones, sets both: its rows counted
    among themselves named row 2 at the file line of row 3); else ``position + 1`` and no line
    (a table of other rows than the file's).

    Examples:
        >>> table = pd.DataFrame({"rho": [0.1, -1.5]})
        >>> table.attrs.update(input_rows=[2, 3], file_lines=[3, 4])  # row 1 left out
        >>> _input_row(table, 1)
        (3, 4)
    """
    rows, lines = quotes.attrs.get("input_rows"), quotes.attrs.get("file_lines")
    row = int(rows[position]) if rows is not None and len(rows) == len(quotes) else position + 1
    line = int(lines[position]) if lines is not None and len(lines) == len(quotes) else None
    return row, line
