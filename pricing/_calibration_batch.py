"""The per-table pandas work of :func:`pricing.calibration.calibrate_many`, done in one pass over
the rows of all the tables.

Each pandas call costs microseconds to tens of microseconds (a column read copies the table's
``attrs``), whatever the table's few dozen rows: checking 1,000 prepared surfaces one by one took
0.33 ms per surface and writing their residual tables 0.4 ms, beside a batched fit that the issue
wants done in 0.2 ms per surface on a GPU. Here the tables are stacked once (``pd.concat``, about
0.03 ms per table) and checked, or cut into residual tables, with whole-array operations.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["POSITIVE_COLUMNS", "already_prepared", "in_domain", "residual_tables", "sorted_groups",
           "stacked"]  # fmt: skip

POSITIVE_COLUMNS = ("strike", "forward", "maturity", "discount")
"""The columns of a prepared table that are finite and > 0 in every row (``strike`` and
``forward`` after adding the ``shift``, where there is one), as ``read_quotes`` requires."""

RESIDUAL_QUOTE_COLUMNS = ("maturity", "strike", "option_type", "forward", "discount", "market_iv")
"""The columns of a residual table taken from the quotes (the fit adds ``model_iv``,
``error_bp`` and ``weight``)."""


def stacked(tables: Sequence[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    """The rows of all ``tables``, in order, as one table holding at least ``columns`` (a single
    table as it is).

    Whole tables are concatenated (selecting the columns first costs ten times more); a table
    with a repeated column name, which ``pd.concat`` cannot align, has its ``columns`` gathered
    one by one instead.

    Raises:
        KeyError: a table lacks one of ``columns`` (naming the table and the column).

    Examples:
        >>> a = pd.DataFrame({"x": [1.0, 2.0]})
        >>> stacked([a, a], ["x"])["x"].tolist()
        [1.0, 2.0, 1.0, 2.0]
    """
    for i, table in enumerate(tables):
        missing = [c for c in columns if c not in table]
        if missing:
            raise KeyError(f"quote table {i}: missing column(s) {missing}")
    if len(tables) == 1:
        return tables[0]
    if all(t.columns.is_unique for t in tables):
        return pd.concat(tables, ignore_index=True)
    return pd.DataFrame({c: np.concatenate([_column(t, c) for t in tables]) for c in columns})


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    values = table[name]
    if isinstance(values, pd.DataFrame):  # the name is repeated: which one is meant is unknown
        raise ValueError(f"quote table has {values.shape[1]} columns named {name!r}")
    return values.to_numpy()


def _plain(table: object, needed: Sequence[str]) -> bool:
    """A DataFrame with rows, an index 0..N-1 and the ``needed`` columns."""
    if not isinstance(table, pd.DataFrame) or not len(table):
        return False
    index = table.index
    plain = isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1
    return plain and table.columns.is_unique and all(c in table for c in needed)


def in_domain(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Which rows hold a finite ``shift`` (an empty one is 0), where there is that column, and
    for each column of :data:`POSITIVE_COLUMNS` in ``rows``, which hold a finite value > 0
    there (strike and forward plus the row's shift).

    Shape:
        ``rows``: N rows; each flag array ``(N,)``.

    Examples:
        >>> rows = pd.DataFrame({"strike": [-0.01, -0.01], "maturity": [1.0, 0.0],
        ...                      "shift": [0.02, None]})
        >>> {c: ok.tolist() for c, ok in in_domain(rows).items()}
        {'shift': [True, True], 'strike': [True, False], 'maturity': [True, False]}
    """
    flags, shift = {}, 0.0
    if "shift" in rows:
        shift = rows["shift"].fillna(0.0).to_numpy(dtype=float)
        flags["shift"] = np.isfinite(shift)
    for column in (c for c in POSITIVE_COLUMNS if c in rows):
        values = rows[column].to_numpy(dtype=float)
        values = values + shift if column in ("strike", "forward") else values
        flags[column] = np.isfinite(values) & (values > 0)
    return flags


def already_prepared(
    tables: Sequence[object], needed: Sequence[str], vol_limit: float
) -> list[bool]:
    """Which ``tables`` :func:`pricing.calibration._prepare` would return unchanged, one flag per
    table: DataFrames with rows, an index 0..N-1 and the ``needed`` columns (``forward,
    discount, market_iv, option_type``) without a NaN, vols in ``(0, vol_limit]``, option types
    ``call`` or ``put``, strikes, forwards, maturities and discounts finite and > 0
    (:func:`in_domain`) and an ``implied_vol`` (where given) equal to ``market_iv``. The others
    (files, raw quotes, bad rows) go through ``_prepare`` one by one, which prepares them or
    names the bad row.

    Examples:
        >>> table = pd.DataFrame({"forward": 100.0, "discount": 1.0, "market_iv": [0.2, 0.3],
        ...                       "option_type": ["call", "put"]})
        >>> needed = ("forward", "discount", "market_iv", "option_type")
        >>> already_prepared([table, table.assign(market_iv=20.0), "quotes.csv"], needed, 5.0)
        [True, False, False]
    """
    ready = [_plain(t, needed) for t in tables]
    chosen = [t for t, r in zip(tables, ready, strict=True) if r]
    if not chosen:
        return ready
    rows = stacked(chosen, needed)
    try:
        forward, discount, vol = (rows[c].to_numpy(dtype=float)
                                  for c in ("forward", "discount", "market_iv"))  # fmt: skip
    except (TypeError, ValueError):  # a column that is not numbers: _prepare names it
        return [False] * len(tables)
    kinds = rows["option_type"].isin(("call", "put")).to_numpy()  # a hash lookup, not a sort
    ok = ~np.isnan(forward) & ~np.isnan(discount) & (vol > 0) & (vol <= vol_limit) & kinds
    try:
        for flags in in_domain(rows).values():  # a zero maturity was fitted, a -1 discount kept
            ok &= flags
    except (TypeError, ValueError):
        return [False] * len(tables)
    if "implied_vol" in rows:
        try:
            given = rows["implied_vol"].to_numpy(dtype=float)
        except (TypeError, ValueError):
            return [False] * len(tables)
        ok &= ~(np.isfinite(given) & (given != vol))  # _prepare refreshes market_iv from it
    owner = np.repeat(np.arange(len(chosen)), [len(t) for t in chosen])
    fine = np.bincount(owner[~ok], minlength=len(chosen)) == 0
    positions = itertools.compress(range(len(tables)), ready)
    for i, good in zip(list(positions), fine.tolist(), strict=True):
        ready[i] = good
    return ready


def residual_tables(
    quotes: Sequence[pd.DataFrame],
    model_iv: Sequence[np.ndarray],
    weights: Sequence[np.ndarray],
) -> tuple[list[pd.DataFrame], list[np.ndarray]]:
    """Each fit's residual table (the quote columns of :data:`RESIDUAL_QUOTE_COLUMNS`, then
    ``model_iv``, ``error_bp = 1e4 (model_iv - market_iv)`` and ``weight``) and its ``error_bp``
    values, cut from one table of all the rows.

    Shape:
        S tables of ``N_s`` rows, model vols and weights ``(N_s,)`` each -> S tables of ``N_s``
        rows (index 0..N_s-1) and S arrays ``(N_s,)``.

    Examples:
        >>> quotes = pd.DataFrame({"maturity": 1.0, "strike": [90.0, 110.0], "forward": 100.0,
        ...     "option_type": ["put", "call"], "discount": 1.0, "market_iv": [0.22, 0.18]})
        >>> tables, errors = residual_tables([quotes, quotes], [np.full(2, 0.2)] * 2, [np.ones(2)] * 2)
        >>> list(tables[1].index), [round(e, 6) for e in errors[1].tolist()]
        ([0, 1], [-200.0, 200.0])
    """
    rows = stacked(quotes, RESIDUAL_QUOTE_COLUMNS)
    # floats whatever the table's dtypes, so that a batch (whose stacked columns take the widest
    # dtype of its tables) and a single fit give the same table
    columns = {c: rows[c].to_numpy(dtype=object if c == "option_type" else float)
               for c in RESIDUAL_QUOTE_COLUMNS}  # fmt: skip
    columns["model_iv"] = np.concatenate(model_iv)
    columns["error_bp"] = (columns["model_iv"] - columns["market_iv"]) * 1e4
    columns["weight"] = np.concatenate(weights)
    frame = pd.DataFrame(columns)
    ends = np.cumsum([len(q) for q in quotes]).tolist()
    spans = list(itertools.pairwise([0, *ends]))
    errors = [columns["error_bp"][a:b] for a, b in spans]
    if len(quotes) == 1:
        return [frame], errors
    return [frame.iloc[a:b].reset_index(drop=True) for a, b in spans], errors


def sorted_groups(
    table: np.ndarray, key: np.ndarray, n_tables: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Groups of equal ``(table, key)`` (a surface's expiry) in rows sorted by ``(table, key)``:
    each row's group and slot within it, each group's first row, and each table's first group.

    Shape:
        table, key: (R,), sorted. Output: group, slot (R,); starts (G,); first (n_tables,).

    Examples:
        >>> group, slot, starts, first = sorted_groups(np.array([0, 0, 0, 1]),
        ...                                            np.array([0.5, 0.5, 1.0, 0.5]), 2)
        >>> group.tolist(), slot.tolist(), starts.tolist(), first.tolist()
        ([0, 0, 1, 2], [0, 1, 0, 0], [0, 2, 3], [0, 2])
    """
    new = np.ones(len(table), dtype=bool)
    new[1:] = (table[1:] != table[:-1]) | (key[1:] != key[:-1])
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    first = np.searchsorted(table[starts], np.arange(n_tables))
    return group, np.arange(len(table)) - starts[group], starts, first
