"""Quote cleaning: forwards from put-call parity, market implied vols, filters with counts.

:func:`prepare_quotes` adds ``forward``, ``discount``, ``mid``, ``market_iv`` (and ``bid_iv``,
``ask_iv``) to a table from :func:`pricing.quotes.read_quotes` without removing anything;
:func:`clean_quotes` also applies the filters (crossed, one-sided, zero-bid quotes, maturity and
moneyness ranges, no implied vol, out-of-the-money selection, static arbitrage) and returns a
:class:`CleaningReport`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pricing._quote_errors import _input_row
from pricing._validation import check_positive_int
from pricing.black_scholes import black_implied_vol
from pricing.quote_arbitrage import calendar_violations, strike_violations
from pricing.quotes import (
    NUMERIC_COLUMNS,
    QuoteError,
    carry_yields,
    check_one_quote_date,
    check_one_underlying,
    read_quotes,
    require_columns,
    shifts,
)

__all__ = [
    "CleaningReport",
    "attach_forwards",
    "carry_note",
    "clean_quotes",
    "day_maturity_note",
    "forward_notes",
    "parity_forwards",
    "prepare_quotes",
    "prepared_notes",
]


@dataclass
class CleaningReport:
    """What :func:`clean_quotes` did: rows in and out, rows removed per reason (in filter order).

    Attributes:
        n_input: rows of the input table.
        n_kept: rows of the cleaned table.
        removed: reason -> number of rows removed by that filter (0 when the filter found
            nothing; printed only when it removed some).
        notes: warnings about what was assumed (e.g. rates taken as 0 for carry forwards).
        forward_sources: per expiry, where the forward came from: ``given``, ``parity`` (regression
            over near-the-money pairs), ``parity_one_pair`` (one pair, discount from ``rate``
            or ``discount``), ``parity_rate_discount`` (pairs whose regression was implausible,
            or within noise of the given rate's discount, or pairs of an expiry with a given
            ``discount``: discount from ``rate`` or ``discount``) or ``carry`` (spot, rate and
            dividend).

    Examples:
        >>> print(CleaningReport(5, 3, removed={"crossed": 2, "zero_bid": 0},
        ...                      forward_sources={"parity": 1}))
        quotes in: 5, kept: 3
          removed      2  crossed
          forwards per expiry: parity: 1
    """

    n_input: int
    n_kept: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    forward_sources: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"quotes in: {self.n_input}, kept: {self.n_kept}"]
        lines += [f"  removed {n:6d}  {reason}" for reason, n in self.removed.items() if n]
        sources = ", ".join(f"{k}: {v}" for k, v in self.forward_sources.items())
        lines += [f"  forwards per expiry: {sources}"] if sources else []
        return "\n".join([*lines, *(f"  note: {note}" for note in self.notes)])


def _tensor(column: pd.Series) -> torch.Tensor:
    return torch.tensor(column.to_numpy(dtype=float, copy=True))


def _mid(quotes: pd.DataFrame) -> pd.Series:
    """Market price per row: ``mid``, else the bid/ask midpoint, else ``price``; NaN if none."""
    mid = pd.Series(np.nan, index=quotes.index)
    if "price" in quotes:
        mid = quotes["price"].astype(float)
    if "bid" in quotes and "ask" in quotes:
        mid = ((quotes["bid"] + quotes["ask"]) / 2).fillna(mid)
    if "mid" in quotes:
        mid = quotes["mid"].fillna(mid)
    return mid


def _expiry_key(quotes: pd.DataFrame) -> pd.Series:
    """Group key per expiry (maturity rounded to about a minute, against float noise)."""
    return quotes["maturity"].round(6)


PARITY_RATES = (-0.5, 1.0)
"""Continuously compounded rates ``-ln(D) / T`` a parity regression's discount factor may imply;
outside them (a noisy fit) the discount comes from ``rate`` instead."""

PARITY_BAND = 0.2
"""Pairs whose (shifted) strike lies within this fraction of the at-the-money pair's join the
parity regression (besides the ``n_pairs`` nearest the money): the error that price rounding
leaves in the slope ``D`` falls like ``tick / (strike range * sqrt(pairs))``, and six adjacent
strikes 2.5 apart (a range of 12.5) left a 1y discount 0.005 off on 0.05 ticks, which made deep
in-the-money puts turned into calls 0.2 too dear; deep in-the-money quotes beyond the band, often
stale or wide, stay out."""


PARITY_RATE_ERRORS = 3.0
"""Standard errors (:func:`_line_fit`) within which a parity slope ``D`` agrees with the
discount of a given ``rate``: the slope then says nothing beyond noise, and the
rate's discount is taken (``parity_rate_discount``). 7-day slopes from quotes noisy inside their
spreads gave D = 0.9938 and 0.983 against 0.9994 (rates of 33% and 91%, inside
:data:`PARITY_RATES`), and in-the-money quotes turned by parity with them came out up to 0.06 too
dear (clean quotes removed as arbitrage); a slope further off keeps its own discount (the rate may
be stale, or miss a repo). A given ``discount`` is the expiry's whatever the slope: one beyond
these standard errors of it gets a note (:func:`parity_forwards`)."""


def _near_pairs(pairs: pd.DataFrame, n_pairs: int) -> pd.DataFrame:
    """The ``n_pairs`` pairs with the smallest ``|C - P|`` and every pair within
    :data:`PARITY_BAND` of the at-the-money (smallest ``|C - P|``) strike."""
    gap = (pairs["call"] - pairs["put"]).abs()
    order = gap.sort_values(kind="stable").index
    strike = pairs.index.to_numpy(float) + pairs["_shift"].to_numpy(float)
    atm = strike[pairs.index.get_loc(order[0])]
    in_band = np.abs(strike / atm - 1) <= PARITY_BAND if atm > 0 else np.zeros(len(pairs), bool)
    return pairs[pairs.index.isin(order[:n_pairs]) | in_band]


def _pair_weights(near: pd.DataFrame) -> np.ndarray:
    """Regression weights ``1 / sqrt(var(C - P))`` from the bid/ask spreads of both sides (a
    wide quote says less about the price), equal weights unless every pair has two spreads > 0."""
    if "call_spread" not in near:
        return np.ones(len(near))
    variance = (near["call_spread"] ** 2 + near["put_spread"] ** 2).to_numpy(float)
    if not (np.isfinite(variance).all() and (variance > 0).all()):
        return np.ones(len(near))
    return 1 / np.sqrt(variance)


PARITY_OUTLIER = 3.0
"""Half bid/ask widths of a pair's ``C - P`` (its call's and put's half spreads added) by which it
may miss the parity line of the other pairs: a pair further off (a stale or mistyped quote, its
mid 1.6 times its value) is left out of the regression. One such near-the-money put moved the
forward of its expiry by 0.05, and clean out-of-the-money quotes of it (puts become calls by
parity with the forward), and of the next expiry by the calendar check, were removed as
arbitrage beside or instead of it."""


def _consistent_pairs(near: pd.DataFrame) -> pd.DataFrame:
    """``near`` without the pairs that miss the weighted parity line of the other pairs kept by
    more than :data:`PARITY_OUTLIER` half bid/ask widths, the worst of those first (the one
    whose removal lowers the weighted squared misses most), the line fitted again after each,
    while more than three pairs are left; ``near`` itself unless every pair has a bid/ask width
    (no width to measure a miss by). The line of all the pairs, the pair's own among them, hid a
    stale pair quoted tighter than the others (its weight pulled the line onto it) and left out
    clean pairs in its place: a forward 0.4 off where keeping every pair left it 0.46 off."""
    if "call_spread" not in near:
        return near
    width = ((near["call_spread"] + near["put_spread"]) / 2).to_numpy(float)
    if not (np.isfinite(width).all() and (width > 0).all()):
        return near
    weights = _pair_weights(near)
    strikes, diff = near.index.to_numpy(float), (near["call"] - near["put"]).to_numpy()
    keep = np.ones(len(near), dtype=bool)
    while keep.sum() > 3 and np.ptp(strikes[keep]) > 0:
        rows = np.flatnonzero(keep)
        x = strikes[rows] - strikes[rows].mean()  # centred: strikes in the thousands
        design = np.stack([x, np.ones_like(x)], axis=1) * weights[rows, None]  # (n, 2)
        q, _ = np.linalg.qr(design)
        residual = diff[rows] - (q @ (q.T @ (diff[rows] * weights[rows]))) / weights[rows]
        free = np.maximum(1.0 - (q**2).sum(axis=1), 1e-12)  # 1 - leverage, each pair's
        # its miss of the line fitted without it; the worst among those beyond their widths (the
        # worst of all alone, within its own, stopped the loop beside a tight stale edge pair,
        # its leverage high: a forward 0.16 off and a discount of 1.011 for 0.99)
        outside = np.abs(residual) / free > PARITY_OUTLIER * width[rows]
        if not outside.any():
            break
        gain = np.where(outside, np.abs(residual) * weights[rows] / np.sqrt(free), -np.inf)
        keep[rows[int(np.argmax(gain))]] = False
    return near[keep]


UNIT_SCALES: dict[float, tuple[str | None, str, str]] = {
    1000.0: ("strike", "1/1000 of", "strikes times 1000 (OptionMetrics strike_price)? give the "
                                 "strike itself"),
    100.0: ("strike", "1/100 of", "strikes times 100 (an index in points, its prices in hundredths "
                               "of it; strikes in cents)? give strikes and prices in the same "
                               "units"),
    0.01: (None, "100 times", "prices times 100 (per contract of 100 units)? give prices per "
                                 "unit of the underlying"),
}  # fmt: skip
"""Factors ``s`` whose ``s D`` explains a parity slope ``D`` outside :data:`PARITY_RATES`, or, with
a given ``rate`` or ``discount``, one nearer its discount than ``D`` (:func:`_units_error`):
strikes (or prices) in other units than the prices (strikes), with the column to blame (None:
the prices, in whichever of their columns), the slope in words and the hint of the error."""


def _line_fit(strikes: np.ndarray, diff: np.ndarray, weights: np.ndarray) -> tuple:
    """The weighted least-squares line of ``diff`` on ``strikes`` (``w`` multiplies the residuals:
    1 / standard deviation): slope, intercept and the slope's standard error (from the residuals,
    ``np.polyfit``'s covariance; NaN for two pairs), in one fit."""
    if len(strikes) < 3:
        slope, intercept = np.polyfit(strikes, diff, 1, w=weights)
        return slope, intercept, math.nan
    (slope, intercept), cov = np.polyfit(strikes, diff, 1, w=weights, cov=True)
    return slope, intercept, float(np.sqrt(cov[0, 0]))


def _units_error(
    slope: float,
    intercept: float,
    maturity: float,
    carry_discount: float,
    error: float,
    rate_given: bool,
) -> QuoteError | None:
    """The error that refuses a parity slope ``D`` that a factor of :data:`UNIT_SCALES` makes a
    plausible discount factor, or None: strikes x 100 or x 1000, or prices x 100, with no spot
    or forward for :func:`pricing.quotes.read_quotes` to compare the strikes with. C - P then
    falls by ``D / 100`` a unit of strike (or ``100 D``), and the rate's discount gave a forward
    of about the strikes and vols of a few percent (or none), without a word. A slope outside
    :data:`PARITY_RATES` is refused where a factor brings it inside (the factor whose rate is
    nearest the file's). A factor of 100 moves the rate by ``ln(100) / T``, which stays inside
    them beyond about 4.6 years (strikes x 100) or 9 (prices x 100): such a slope is refused
    only with ``rate_given`` (``carry_discount`` from a ``rate`` or ``discount`` column), where
    a factor brings it nearer that discount; without, it is taken for the discount. A slope
    within 4 standard errors (``error``, from three pairs or more) of a plausible discount (the
    given one, inside them) is noise (stale or wide quotes a strike apart), not units. The units
    are the file's: :func:`parity_forwards` refuses only where no expiry's slope is taken for a
    discount that no factor would make one too."""
    if not (slope > 0 and intercept > 0):
        return None
    low, high = PARITY_RATES
    plausible = _plausible_rates(slope, maturity)
    if 1.0 in plausible:  # a factor 100 away in discount is ln(100) / T away in rate
        if not rate_given or abs(slope - carry_discount) <= 4 * error:
            return None
    else:  # outside them, by noise or by units
        edge = np.clip(slope, np.exp(-high * maturity), np.exp(-low * maturity))
        if abs(slope - edge) <= 4 * error:
            return None
    rate = -np.log(carry_discount) / maturity
    scale = min(plausible, key=lambda s: abs(plausible[s] - rate), default=1.0)
    if scale == 1.0:
        return None
    column, words, hint = UNIT_SCALES[scale]
    return QuoteError(f"expiry T={maturity:.6g}: call minus put falls by {slope:.3g} per unit of "
                      f"strike, {words} a discount factor: {hint}", column=column)  # fmt: skip


def _plausible_rates(slope: float, maturity: float) -> dict[float, float]:
    """The rates ``-ln(scale * slope) / T`` inside :data:`PARITY_RATES`, by scale (1 and those of
    :data:`UNIT_SCALES`), of a positive parity slope."""
    low, high = PARITY_RATES
    rates = {scale: -np.log(scale * slope) / maturity for scale in (1.0, *UNIT_SCALES)}
    return {scale: rate for scale, rate in rates.items() if low <= rate <= high}


def _either_units(discount: float, maturity: float) -> bool:
    """Whether a factor of :data:`UNIT_SCALES` also makes a parity slope ``discount`` one of a
    rate inside :data:`PARITY_RATES`: beyond about 4.6 years, a true discount and 1/100 of one
    both are, and the slope tells nothing of the file's units."""
    return any(scale != 1.0 for scale in _plausible_rates(discount, maturity))


def _pair_forward(
    pairs: pd.DataFrame,
    carry_discount: float,
    n_pairs: int,
    maturity: float,
    rate_given: bool,
    discount_given: bool = False,
) -> tuple[tuple | None, QuoteError | None, str | None]:
    """Forward and discount from call-minus-put prices of one expiry's pairs, or None; the
    error of a slope that strikes or prices in other units explain (:func:`_units_error`), or
    None; and the note of a given discount the slope disagrees with, or None. With
    ``rate_given`` (``carry_discount`` from a ``rate`` or ``discount`` column, not a defaulted
    rate of 0), a slope within :data:`PARITY_RATE_ERRORS` of it takes that discount; with
    ``discount_given`` (from a ``discount`` column) every slope does: the expiry's rows keep
    their discount, and a forward fitted with another one mixed two in one expiry."""
    near = _consistent_pairs(_near_pairs(pairs, n_pairs))
    # a (rate) forward below 0 is one whose shifted F + shift is > 0: parity refused it (D F <=
    # 0), and the expiry was "no call/put pairs", or took the rate's discount beside a forward
    shift = float(pairs["_shift"].iloc[0]) if "_shift" in pairs else 0.0
    strikes, diff = near.index.to_numpy(float), (near["call"] - near["put"]).to_numpy()
    weights, units, note = _pair_weights(near), None, None
    if len(near) >= 2 and np.ptp(strikes) > 0:
        # C - P = D F - D K: a straight line in K with slope -D and intercept D F
        slope, intercept, error = _line_fit(strikes, diff, weights)
        discount = -slope
        low, high = PARITY_RATES
        noise = rate_given and abs(discount - carry_discount) <= PARITY_RATE_ERRORS * error
        units = _units_error(discount, intercept, maturity, carry_discount, error, rate_given)
        plausible = units is None and discount > 0 and intercept + discount * shift > 0
        plausible = plausible and low <= -np.log(discount) / maturity <= high
        if plausible and not noise and discount_given and math.isfinite(error):
            note = (f"expiry T={maturity:.6g}: its call/put pairs' parity slope gives a discount "
                    f"of {discount:.6g} (standard error {error:.2g}), beyond "
                    f"{PARITY_RATE_ERRORS:g} standard errors of its given discount "
                    f"{carry_discount:.6g}: the given one is used for all its rows (a stale "
                    "discount column, or American or stale quotes?)")  # fmt: skip
        elif plausible and not noise and not discount_given:
            return (intercept / discount, discount, "parity"), None, None
    # the intercept with the slope fixed at -D: weighted least squares of D F = C - P + D K
    forward = float(np.average(strikes + diff / carry_discount, weights=weights**2))
    source = "parity_one_pair" if len(near) == 1 else "parity_rate_discount"
    return ((forward, carry_discount, source) if forward + shift > 0 else None), units, note


def _expiry_pairs(
    group: pd.DataFrame,
    carry_discount: float,
    n_pairs: int,
    maturity: float,
    rate_given: bool,
    discount_given: bool,
) -> tuple[tuple | None, QuoteError | None, str | None]:
    """Parity forward and discount of one expiry's quotes, or None without call/put pairs; and
    the units error and the note of :func:`_pair_forward`, or None."""
    if "option_type" not in group:
        return None, None, None
    valid = group.dropna(subset=["_mid"])
    table = valid.pivot_table(index="strike", columns="option_type", values="_mid")
    if not {"call", "put"} <= set(table.columns):
        return None, None, None
    pairs = table.dropna(subset=["call", "put"])[["call", "put"]]
    if {"bid", "ask"} <= set(valid.columns):
        spread = valid.assign(_spread=valid["ask"] - valid["bid"]).pivot_table(
            index="strike", columns="option_type", values="_spread"
        )
        spread = spread.reindex(index=pairs.index, columns=["call", "put"])
        pairs = pairs.assign(call_spread=spread["call"], put_spread=spread["put"])
    pairs = pairs.assign(_shift=float(shifts(group).iloc[0]))
    if not len(pairs):
        return None, None, None
    return _pair_forward(pairs, carry_discount, n_pairs, maturity, rate_given, discount_given)


def parity_forwards(quotes: pd.DataFrame, *, n_pairs: int = 6) -> pd.DataFrame:
    """Forward and discount factor per expiry, from put-call parity where calls and puts pair up.

    For each expiry, the strikes quoted as both call and put within :data:`PARITY_BAND` (20%) of
    the at-the-money one (smallest ``|C - P|``), and at least the ``n_pairs`` nearest the money,
    are fitted by least squares to ``C - P = D (F - K)``, each pair weighted by ``1 / spread``
    (its call's and put's bid/ask spreads in quadrature) where every pair has bid and ask; there
    a pair that misses the line of the others by more than :data:`PARITY_OUTLIER` half bid/ask
    widths of its ``C - P`` (a stale quote) is left out, while more than three are left.
    With one pair (``parity_one_pair``), or a fit whose ``D`` implies a rate outside
    :data:`PARITY_RATES` or, with a ``rate`` column, lies within :data:`PARITY_RATE_ERRORS`
    standard errors of its discount (``parity_rate_discount``: a short expiry's slope is mostly
    noise), or an expiry with a given ``discount`` (``parity_rate_discount`` too), ``D`` is the
    expiry's given ``discount`` (the mean of its rows that give one: a discount on some rows is
    the expiry's; rows further apart than :data:`DISCOUNT_ROUNDING` are refused), else
    ``exp(-r T)``, and ``F`` is the weighted mean of ``K + (C - P) / D`` over the pairs. A given
    discount is the expiry's whatever its slope (its rows keep it: a forward made with the
    slope's ``D`` beside them mixed two discounts in one expiry); a slope beyond
    :data:`PARITY_RATE_ERRORS` standard errors of it (three pairs or more) gets a note in the
    ``attrs["notes"]`` of the result.
    An expiry with a given ``forward`` takes it (``given``: the mean of its rows that give one:
    as a discount, a forward on some rows is the expiry's, on its rows without one too; rows
    further apart than :data:`FORWARD_ROUNDING` are refused), with that ``D`` (its pairs' where
    it has them and no given discount); expiries without pairs or a forward take
    ``F = S exp(-(q + b) T) / D`` (``carry``; ``b`` a ``borrow`` cost, 0 without one).

    Args:
        quotes: a table from :func:`pricing.quotes.read_quotes` (needs ``strike``, ``maturity``,
            ``spot``, ``rate``, ``dividend``; prices from ``mid``, ``bid``/``ask`` or ``price``).
        n_pairs: least number of near-the-money pairs in the regression (more where strikes
            within :data:`PARITY_BAND` of the money are denser).

    Returns:
        One row per expiry: ``maturity``, ``forward``, ``discount``, ``source`` (and ``_pairs``,
        the source its call/put pairs gave, None without: a given forward's discount may be
        theirs); ``attrs["notes"]`` the notes of given discounts their slope disagrees with.

    Raises:
        QuoteError: an expiry whose rows give discounts more than :data:`DISCOUNT_ROUNDING` apart,
            or forwards more than :data:`FORWARD_ROUNDING` (naming two of the rows), without
            pairs or spot, or whose slope says strikes or prices are in other units.

    Examples:
        >>> table = pd.DataFrame({"option_type": ["call", "put", "call", "put"],
        ...     "strike": [95.0, 95.0, 105.0, 105.0], "maturity": 1.0, "spot": 100.0,
        ...     "price": [9.0, 4.25, 3.5, 8.25]})
        >>> implied = parity_forwards(read_quotes(table))
        >>> implied[["forward", "discount"]].round(4).to_numpy().tolist()
        [[100.0, 0.95]]
    """
    require_columns(quotes, ["strike", "maturity", "rate", "dividend"], "parity forwards")
    check_one_quote_date(quotes)  # a key per maturity pools two days' quotes
    check_one_underlying(quotes)  # and two underlyings'
    rate_given = "rate" not in quotes.attrs.get("defaulted", [])  # not read as 0
    # _position: the rows' places, for errors naming them (labels may repeat: calls and puts
    # read apart and concatenated)
    quotes = quotes.assign(
        _mid=_mid(quotes), _key=_expiry_key(quotes), _position=range(len(quotes))
    )
    rows, units, notes = [], None, []
    for key, group in quotes.groupby("_key", sort=True):
        t = float(group["maturity"].iloc[0])
        rate, dividend = float(group["rate"].iloc[0]), float(carry_yields(group)[0])
        discount, known = np.exp(-rate * t), rate_given
        has_discount = "discount" in group and bool(group["discount"].notna().any())
        if has_discount:
            # a given discount is the expiry's rate, on its rows without one too: a call's 0.97
            # beside a put's gap made a parity forward at the defaulted rate's 1, used with 0.97
            discount, known = _expiry_discount(quotes, group, t), True
        forward = _expiry_forward(quotes, group, t)  # None where no row gives one
        # pairs: the source of the pairs' discount, kept beside a given forward: a parity slope
        # is evidence of the file's units, and a rate's discount owes its note (both were lost
        # to "given")
        pairs = None
        if has_discount and forward is not None:
            result = (forward, discount, "given")
        else:
            result, suspect, note = _expiry_pairs(group, discount, n_pairs, t, known, has_discount)
            units = units or suspect  # decided over the file's expiries, below
            notes += [note] if note else []
            pairs = None if result is None else result[2]
        if forward is not None:
            # a forward on some rows is the expiry's: the others took parity's beside it (two
            # forwards in one expiry); D is the pairs' where they gave one, else the rate's
            result = (forward, discount if result is None else result[1], "given")
        if result is None:
            if "spot" not in group:
                raise _no_forward(quotes, group, t)
            spot = float(group["spot"].iloc[0])
            result = (spot * np.exp(-dividend * t) / discount, discount, "carry")
        forward, discount, source = result
        rows.append({"_key": key, "maturity": t, "forward": forward, "discount": discount,
                     "source": source, "_pairs": pairs})  # fmt: skip
    # an expiry of stale pairs whose flat C - P looked like strikes x 100 refused a file whose
    # other expiries fit plausible discounts in its units; a long expiry's slope, plausible in
    # either unit, is no evidence (strikes x 100 of a 1y and a 10y expiry passed)
    if units is not None and not any(
        row["_pairs"] == "parity" and not _either_units(row["discount"], row["maturity"])
        for row in rows
    ):
        raise units
    columns = ["_key", "maturity", "forward", "discount", "source", "_pairs"]
    implied = pd.DataFrame(rows, columns=columns)
    implied.attrs["notes"] = notes
    return implied


DISCOUNT_ROUNDING = 5e-4
"""Largest difference between the ``discount`` values of one expiry's rows read as rounding
(half a unit in the third decimal: 0.951 beside 0.95123): their mean is the expiry's discount.
A discount is one number per expiry, and values further apart (0.95 beside 0.90) are a file
error, refused naming the rows: their mean was used without a word."""


def _expiry_discount(quotes: pd.DataFrame, group: pd.DataFrame, maturity: float) -> float:
    """The discount of one expiry's rows ``group`` of ``quotes`` that give one: their mean,
    unless two lie more than :data:`DISCOUNT_ROUNDING` apart (:func:`_one_value`)."""
    values = _one_value(quotes, group, "discount", maturity, DISCOUNT_ROUNDING,
                        what="discount factor", within=f"{DISCOUNT_ROUNDING:g}",
                        shown=".6g")  # fmt: skip
    return float(values.mean())


def _no_forward(quotes: pd.DataFrame, group: pd.DataFrame, maturity: float) -> QuoteError:
    """The error of an expiry (rows ``group`` of ``quotes``) without pairs, spot or a forward,
    naming its first row where the file has a ``forward`` column (it said "give a spot (or
    forward) column" to a file that gave one, with a gap at this expiry)."""
    gap = ""
    if "forward" in group:
        missing = group["_position"].to_numpy()[group["forward"].isna().to_numpy()]
        (name,) = _row_names(quotes, [int(missing[0])])
        gap = f"; {name} gives no forward"
    return QuoteError(f"expiry T={maturity:.6g}: no call/put pairs to imply the forward, and no "
                      "spot: give a spot column, a forward on its rows, or calls and puts "
                      f"of the same strikes{gap}", column="spot")  # fmt: skip


FORWARD_ROUNDING = 5e-4
"""Largest difference between the ``forward`` values of one expiry's rows read as rounding,
relative to the (shifted) forward: half a unit in the fourth significant digit (100.05 beside
100.0, 4512 beside 4512.37): their mean is the expiry's forward. A forward is one number per
expiry, and values further apart (100 beside 105) are a file error, refused naming the rows as
:data:`DISCOUNT_ROUNDING` refuses discounts: their mean was the expiry's forward without a
word."""


def _expiry_forward(quotes: pd.DataFrame, group: pd.DataFrame, maturity: float) -> float | None:
    """The forward of one expiry's rows ``group`` of ``quotes``: the mean of the ``forward``
    values they give (None where none does); refused where two lie more than
    :data:`FORWARD_ROUNDING` of the larger (shifted) forward apart (:func:`_one_value`)."""
    if "forward" not in group:
        return None
    shifted = np.abs(group["forward"].to_numpy(float) + shifts(group).to_numpy(float))
    scale = float(shifted[np.isfinite(shifted)].max(initial=0.0))  # of the given ones
    values = _one_value(quotes, group, "forward", maturity, FORWARD_ROUNDING * scale,
                        what="forward", within=f"{FORWARD_ROUNDING:.2%} of it",
                        shown=".10g")  # fmt: skip
    return float(values.mean()) if len(values) else None


def _one_value(
    quotes: pd.DataFrame,
    group: pd.DataFrame,
    column: str,
    maturity: float,
    tolerance: float,
    *,
    what: str,
    within: str,
    shown: str,
) -> np.ndarray:
    """The values of ``column`` that one expiry's rows ``group`` of ``quotes`` give ``(G,)``, G
    <= len(group); a :class:`QuoteError` naming the rows of the lowest and highest (by their
    ``_position`` in ``quotes``: labels may repeat) where they lie more than ``tolerance``
    apart: one expiry has one ``what``, and values ``within`` are read as rounding (each shown
    in the format ``shown``)."""
    kept = group[column].notna().to_numpy()
    values = group[column].to_numpy(float)[kept]
    if not values.size:
        return values
    low, high = int(values.argmin()), int(values.argmax())
    if values[high] - values[low] > tolerance * (1 + 1e-9):  # 0.9515 - 0.951 in floats
        first, second = _row_names(
            quotes, group["_position"].to_numpy()[kept][[low, high]].tolist()
        )
        raise QuoteError(f"expiry T={maturity:.6g}: {column} {values[low]:{shown}} at {first} "
                         f"and {values[high]:{shown}} at {second}: one expiry has one {what} "
                         f"(values within {within} are read as rounding)",
                         column=column)  # fmt: skip
    return values


def _row_names(quotes: pd.DataFrame, positions: list[int]) -> list[str]:
    """``row i (file line l)`` of each 0-based position: ``i`` the 1-based input row
    (``source_row`` of :func:`clean_quotes`, whose table keeps the file's lines; else the position
    in ``quotes`` as :func:`pricing.quotes.row_error` counts it), with its file line where known."""
    lines = quotes.attrs.get("file_lines")
    names = []
    for position in positions:
        if "source_row" in quotes:
            row = int(quotes["source_row"].iloc[position])
            line = lines[row - 1] if lines is not None and row <= len(lines) else None
        else:
            row, line = _input_row(quotes, position)
        names.append(f"row {row}" + (f" (file line {line})" if line is not None else ""))
    return names


def attach_forwards(
    quotes: pd.DataFrame, *, n_pairs: int = 6
) -> tuple[pd.DataFrame, dict[str, int]]:
    """A copy of ``quotes`` (from :func:`pricing.quotes.read_quotes`) with missing ``forward``
    and ``discount`` entries filled from :func:`parity_forwards` and a ``mid`` column (``mid``,
    else the bid/ask midpoint, else ``price``), and the per-expiry forward sources (source ->
    count): the part of :func:`prepare_quotes` before any implied vol. Its ``attrs`` say what
    :func:`forward_notes` needs: ``rate_discounted`` and ``rate_carried``, the expiries whose
    discount or carry forward came from the ``rate`` column (no ``discount`` on any of their
    rows), and ``discount_notes``, those of :func:`parity_forwards`.

    Examples:
        >>> table = read_quotes(pd.DataFrame({"option_type": ["call", "put"], "strike": 100.0,
        ...                                   "maturity": 1.0, "price": [9.0, 4.0]}))
        >>> out, sources = attach_forwards(table)
        >>> round(float(out["forward"].iloc[0]), 6), out["mid"].tolist(), sources
        (105.0, [9.0, 4.0], {'parity_one_pair': 1})
    """
    per_key = parity_forwards(quotes, n_pairs=n_pairs)
    lookup = per_key.set_index("_key")
    key = _expiry_key(quotes)
    out = quotes.copy()
    for column in ("forward", "discount"):
        implied = key.map(lookup[column])
        out[column] = quotes[column].fillna(implied) if column in quotes else implied
    source = key.map(lookup["source"])
    if "forward" in quotes:
        source = source.where(quotes["forward"].isna(), "given")
    per_expiry = source.groupby(key).agg(lambda s: s.mode().iloc[0])
    # an expiry's own discount column fixes its discount, whatever its pairs (carry_note); a
    # forward given beside pairs that could not fix the discount takes the rate's too, as does
    # one without pairs where its rows' prices are discounted by it (vols of D = 1 at rate 0)
    out["mid"] = _mid(out)
    given = _given_per_expiry(quotes, "discount")
    pairs = lookup["_pairs"].reindex(per_expiry.index)
    priced = out["mid"].notna().groupby(key).any().reindex(per_expiry.index)
    rated = pairs.isin(_RATE_DISCOUNTED) | ((per_expiry == "given") & pairs.isna() & priced)
    out.attrs["rate_discounted"] = int(((per_expiry.isin(_RATE_DISCOUNTED) | rated) & ~given).sum())
    out.attrs["rate_carried"] = int(((per_expiry == "carry") & ~given).sum())
    out.attrs["discount_notes"] = list(per_key.attrs.get("notes", []))
    return out, {str(k): int(v) for k, v in per_expiry.value_counts().items()}


def _black_iv(quotes: pd.DataFrame, prices: pd.Series) -> np.ndarray:
    """(Shifted) Black implied vols of ``prices``; NaN where none reproduces the price, and
    where the vol is 0 (a price at its lower bound, e.g. a zero far-wing settlement price, has
    no time value to read a vol from)."""
    is_call = torch.tensor((quotes["option_type"] == "call").to_numpy())
    shift = shifts(quotes)
    vol = black_implied_vol(
        price=_tensor(prices),
        forward=_tensor(quotes["forward"] + shift),
        strike=_tensor(quotes["strike"] + shift),
        maturity=_tensor(quotes["maturity"]),
        discount=_tensor(quotes["discount"]),
        is_call=is_call,
    ).numpy()
    return np.where(vol > 0, vol, np.nan)


def _is_canonical(quotes: object) -> bool:
    """Whether a table already went through :func:`pricing.quotes.read_quotes`: canonical
    ``strike``, float numeric columns and ``call``/``put`` option types (a raw table with ``C``/``P``
    would otherwise price its calls as puts)."""
    if not isinstance(quotes, pd.DataFrame) or not {"strike", "rate", "dividend"} <= set(quotes):
        return False  # read_quotes adds a rate and a dividend: parity forwards need them
    numeric = [c for c in NUMERIC_COLUMNS if c in quotes]
    if any(quotes[c].dtype != np.float64 for c in numeric):
        return False
    return "option_type" not in quotes or bool(quotes["option_type"].isin(["call", "put"]).all())


def prepare_quotes(quotes: pd.DataFrame, *, n_pairs: int = 6) -> tuple[pd.DataFrame, dict]:
    """Add ``forward``, ``discount``, ``mid``, ``market_iv`` (and ``bid_iv``, ``ask_iv``) columns.

    Given ``forward``/``discount`` entries are kept; missing ones come from :func:`parity_forwards`.
    ``market_iv`` is ``implied_vol`` where given, else the Black implied vol of the mid price (NaN
    where the price is outside the no-arbitrage bounds). Without ``option_type``, rows get the
    out-of-the-money type (call for ``K >= F``) when only implied vols are given.

    Returns:
        The new table (same index) and the per-expiry forward sources (source -> count).

    Raises:
        QuoteError: when a row has neither an implied vol nor a price, or prices lack option types.

    Examples:
        >>> table = read_quotes(pd.DataFrame({"strike": [90.0, 110.0], "maturity": 1.0,
        ...                                   "spot": 100.0, "rate": 0.02, "iv": [0.25, 0.2]}))
        >>> prepared, sources = prepare_quotes(table)
        >>> prepared["option_type"].tolist(), sources
        (['put', 'call'], {'carry': 1})
    """
    if not _is_canonical(quotes):
        quotes = read_quotes(quotes)
    require_columns(quotes, ["strike", "maturity"], "quote cleaning")
    out, sources = attach_forwards(quotes, n_pairs=n_pairs)
    given_iv = out["implied_vol"] if "implied_vol" in out else pd.Series(np.nan, index=out.index)
    needs_price = given_iv.isna()
    if "option_type" not in out:
        # a row with neither vol nor price just has no vol (as a price outside the bounds);
        # only prices need the option type (blaming it for a missing vol misled)
        priced = needs_price & out["mid"].notna()
        if priced.any():
            raise QuoteError(
                "prices without an option_type column cannot be turned into vols",
                column="option_type",
            )
        out["option_type"] = np.where(out["strike"] >= out["forward"], "call", "put")
    iv = given_iv.to_numpy(float).copy()
    if needs_price.any():
        iv[needs_price.to_numpy()] = _black_iv(out[needs_price], out.loc[needs_price, "mid"])
    out["market_iv"] = iv
    for side in ("bid", "ask"):
        if side in out:
            out[f"{side}_iv"] = _black_iv(out, out[side])
    return out, sources


def carry_note(
    defaulted: list[str],
    forward_sources: dict[str, int],
    quotes: pd.DataFrame | None = None,
    *,
    rate_discounted: int | None = None,
    rate_carried: int | None = None,
) -> str | None:
    """The warning owed when expiries took ``carry`` forwards from a spot whose ``rate`` or
    ``dividend`` column was absent and read as 0 (``defaulted``, from ``read_quotes``'
    ``attrs``), or took their discount from a ``rate`` so read (one call/put pair, or an
    implausible parity slope), else None: their vols are those of the spot's forward, a year's
    carry off, or of a discount of 1. A missing rate is no gap where ``quotes`` gives a
    ``discount`` in every expiry (on one of its rows at least): the carry is at its rate
    (:func:`parity_forwards`). ``rate_discounted``: the number of expiries whose discount came
    from the ``rate`` column (``attrs["rate_discounted"]`` of :func:`attach_forwards`; ``None``:
    those of ``forward_sources`` that parity could not fix, an expiry's given discount not
    excluded). ``rate_carried``: likewise the number of ``carry`` expiries without a given
    discount (``attrs["rate_carried"]``; ``None``: every ``carry`` expiry): with only the
    ``rate`` column missing, those are the ones counted (every ``carry`` expiry was, those
    carried at their own discount's rate among them).

    Examples:
        >>> print(carry_note(["rate"], {"carry": 2, "parity": 3}))  # doctest: +ELLIPSIS
        no rate column: 2 expiries without call/put pairs took their forwards from the spot ...
        >>> carry_note([], {"carry": 2}) is None
        True
        >>> carry_note(["rate"], {"carry": 2}, pd.DataFrame({"maturity": [1.0, 1.0, 2.0],
        ...                                                  "discount": [0.97, None, 0.95]})) is None
        True
        >>> print(carry_note(["rate"], {"carry": 2}, rate_carried=1))  # doctest: +ELLIPSIS
        no rate column: 1 expiry without call/put pairs took its forward from the spot ...
    """
    if quotes is not None and bool(_given_per_expiry(quotes, "discount").all()):
        # the spot was carried at the discount's rate: "with it at 0" was false
        defaulted = [column for column in defaulted if column != "rate"]
    n_carry = forward_sources.get("carry", 0)
    n_rate_carried = n_carry if rate_carried is None else rate_carried
    # an expiry with its own discount was carried at its rate, at a dividend of 0 where none
    at_zero = [column for column in defaulted if column != "rate" or n_rate_carried]
    n_carry = n_carry if "dividend" in at_zero else n_rate_carried
    notes = []
    if at_zero and n_carry:
        expiries = "expiry" if n_carry == 1 else "expiries"
        took = "took its forward" if n_carry == 1 else "took their forwards"
        notes.append(f"no {' or '.join(at_zero)} column: {n_carry} {expiries} without call/put "
                     f"pairs {took} from the spot with it at 0 (give it, or both calls and puts "
                     "for parity)")  # fmt: skip
    # a discount parity cannot fix is the rate's: at a rate read as 0, D = 1 (vols about r T
    # of themselves low, 1 point at 20% vol and 5% over a year, without a word)
    n_rate = rate_discounted
    if n_rate is None:
        n_rate = sum(forward_sources.get(source, 0) for source in _RATE_DISCOUNTED)
    if "rate" in defaulted and n_rate:
        expiries = "expiry" if n_rate == 1 else "expiries"
        notes.append(f"no rate column: {n_rate} {expiries} whose call/put pairs could not fix "
                     "the discount (none beside a given forward, one pair, or an implausible "
                     "slope) took it at rate 0 (give a rate or discount column)")  # fmt: skip
    return "; ".join(notes) or None


def forward_notes(
    prepared: pd.DataFrame, forward_sources: dict[str, int], defaulted: list[str] | None = None
) -> list[str]:
    """The notes owed about the forwards and discounts that :func:`attach_forwards` (or
    :func:`prepare_quotes`) gave a table: :func:`carry_note` and those of
    :func:`parity_forwards` (a given discount its parity slope disagrees with), read from
    ``prepared``'s ``attrs``; ``defaulted``: the columns :func:`pricing.quotes.read_quotes`
    defaulted (None: ``prepared.attrs["defaulted"]``). One list for the cleaning report, ``qfnet
    iv`` and ``qfnet calibrate --no-clean`` (which printed none of them).

    Examples:
        >>> table = read_quotes(pd.DataFrame({"strike": [90.0, 110.0], "maturity": 1.0,
        ...                                   "spot": 100.0, "iv": [0.25, 0.2]}))
        >>> prepared, sources = prepare_quotes(table)
        >>> print(forward_notes(prepared, sources)[0])  # doctest: +ELLIPSIS
        no rate or dividend column: 1 expiry without call/put pairs took its forward from the spot...
    """
    if defaulted is None:
        defaulted = prepared.attrs.get("defaulted", [])
    note = carry_note(defaulted, forward_sources,
                      rate_discounted=prepared.attrs.get("rate_discounted"),
                      rate_carried=prepared.attrs.get("rate_carried"))  # fmt: skip
    return [*([note] if note else []), *prepared.attrs.get("discount_notes", [])]


def prepared_notes(prepared: pd.DataFrame, forward_sources: dict[str, int]) -> list[str]:
    """Every note owed about a table :func:`prepare_quotes` prepared: :func:`forward_notes` and
    :func:`day_maturity_note` of the vols it solved from prices (NaN where ``implied_vol`` gave
    one). One list for ``qfnet calibrate --no-clean``, which prints them, and
    :func:`pricing.calibration.calibrate`, which warns them.

    Examples:
        >>> table = read_quotes(pd.DataFrame({"strike": [90.0, 110.0], "maturity": 1.0,
        ...                                   "spot": 100.0, "iv": [0.25, 0.2]}))
        >>> len(prepared_notes(*prepare_quotes(table)))  # the rate and dividend read as 0
        1
    """
    given = prepared["implied_vol"].notna().to_numpy() if "implied_vol" in prepared else False
    solved = np.where(given, np.nan, prepared["market_iv"].to_numpy(float))
    notes = [*forward_notes(prepared, forward_sources), day_maturity_note(prepared, solved)]
    return [note for note in notes if note]


_RATE_DISCOUNTED = ("parity_one_pair", "parity_rate_discount")
"""Forward sources whose discount is the ``rate`` column's (:func:`parity_forwards`)."""


def _given_per_expiry(quotes: pd.DataFrame, column: str) -> pd.Series:
    """Per expiry (:func:`_expiry_key`), whether ``column`` is given on one of its rows at
    least (all False where ``quotes`` has no such column)."""
    key = _expiry_key(quotes)
    given = quotes[column].notna() if column in quotes else pd.Series(False, quotes.index)
    return given.groupby(key).any()


DAY_MATURITY_VOL = 0.05
"""Median implied vol of the prices below which maturities that are all whole numbers are taken
for days read as years (:func:`day_maturity_note`): such a vol is the days' vol over
``sqrt(365)`` (19 times too small; the total variance is the prices'), and a vol of 5% is one
of 96% in days."""


def day_maturity_note(quotes: pd.DataFrame, vols: np.ndarray) -> str | None:
    """The warning owed when a table's given maturities (no ``expiry`` to check them by) are
    all whole numbers and the median implied vol solved from its prices, ``vols`` ``(N,)`` (NaN
    where unsolved, or where the vol was given), is below :data:`DAY_MATURITY_VOL`: a maturity
    of 7, 30 or 91 days read as years (beyond 100 years :func:`pricing.quotes.read_quotes`
    refuses it) gave vols 19 times too small, else None. Whole years of real vols (10, 20, 30
    at 20%) pass.

    Examples:
        >>> table = pd.DataFrame({"maturity": [7.0, 30.0, 91.0]})
        >>> print(day_maturity_note(table, np.array([0.0105, 0.0104, 0.0106])))  # doctest: +ELLIPSIS
        maturities are whole numbers (7 to 91) and the median implied vol of the prices is 1.05%...
        >>> day_maturity_note(table.assign(maturity=[10.0, 20.0, 30.0]), np.full(3, 0.2)) is None
        True
    """
    maturity = quotes["maturity"].to_numpy(float)
    solved = vols[np.isfinite(vols)]
    if "expiry" in quotes or not solved.size or not (maturity == np.round(maturity)).all():
        return None
    median = float(np.median(solved))
    if median >= DAY_MATURITY_VOL:
        return None
    low, high = f"{maturity.min():g}", f"{maturity.max():g}"
    span = low if low == high else f"{low} to {high}"
    return (f"maturities are whole numbers ({span}) and the "
            f"median implied vol of the prices is {median:.2%}: days read as years (vols 19 "
            "times too small)? give maturities in years (days / 365), or expiry and quote_date "
            "columns")  # fmt: skip


def _drop(frame: pd.DataFrame, mask: np.ndarray | pd.Series, reason: str, report: CleaningReport):
    mask = np.asarray(mask, dtype=bool)
    report.removed[reason] = report.removed.get(reason, 0) + int(mask.sum())
    return frame.loc[~mask]


def _pre_price_filters(frame: pd.DataFrame, report: CleaningReport, maturity_range) -> pd.DataFrame:
    low, high = maturity_range
    frame = _drop(frame, ~frame["maturity"].between(low, high), "maturity_out_of_range", report)
    frame = _spread_given(frame)
    bid = frame["bid"] if "bid" in frame else pd.Series(np.nan, index=frame.index)
    ask = frame["ask"] if "ask" in frame else pd.Series(np.nan, index=frame.index)
    frame = _drop(frame, (bid > ask).to_numpy(), "crossed", report)
    bid, ask = bid.loc[frame.index], ask.loc[frame.index]
    frame = _drop(frame, (bid == 0).to_numpy(), "zero_bid", report)
    bid, ask = bid.loc[frame.index], ask.loc[frame.index]
    other = pd.Series(False, index=frame.index)
    for column in ("mid", "price", "implied_vol"):
        if column in frame:
            other |= frame[column].notna()
    frame = _drop(frame, (bid.isna() ^ ask.isna()) & ~other, "one_sided", report)
    both = frame.index.isin(bid.dropna().index.intersection(ask.dropna().index))
    frame = _drop(frame, ~both & ~other.loc[frame.index], "no_price", report)
    if report.removed.get("no_price"):
        report.notes.append("no_price: a quote needs bid and ask, or mid, price or implied_vol")
    return _drop(frame, _duplicates(frame), "duplicate", report)


def _spread_given(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each expiry's given ``discount`` and ``forward`` (:func:`_expiry_discount`,
    :func:`_expiry_forward`: checked, naming the rows) on its rows without one, before the
    price filters: given on a crossed, zero-bid or one-sided row alone, it was dropped with it
    and the expiry took parity's or the spot's carry (or was refused without either)."""
    columns = [c for c in ("discount", "forward") if c in frame and frame[c].notna().any()]
    if not columns:
        return frame
    work = frame.assign(_key=_expiry_key(frame), _position=range(len(frame)))
    out = frame.copy()
    for _, group in work.groupby("_key", sort=False):
        t = float(group["maturity"].iloc[0])
        for column in columns:
            gaps = group["_position"].to_numpy()[group[column].isna().to_numpy()]
            if not gaps.size or gaps.size == len(group):
                continue
            given = (_expiry_discount if column == "discount" else _expiry_forward)(work, group, t)
            out.iloc[gaps, out.columns.get_loc(column)] = given
    return out


def _duplicates(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose (expiry, strike, option type) another row also quotes, except the one with the
    narrowest bid/ask spread (the first among equals): parity forwards and smiles need one quote
    per contract."""
    columns = ["strike"] + (["option_type"] if "option_type" in frame else [])
    key = frame[columns].assign(_expiry=_expiry_key(frame))
    if not key.duplicated().any():
        return np.zeros(len(frame), dtype=bool)
    spread = (frame["ask"] - frame["bid"]) if {"bid", "ask"} <= set(frame) else 0.0
    order = key.assign(_spread=spread, _row=np.arange(len(frame)))
    order = order.sort_values(["_spread", "_row"], na_position="last", kind="stable")
    keep = ~order.drop(columns=["_spread", "_row"]).duplicated()
    drop = np.ones(len(frame), dtype=bool)
    drop[order.loc[keep, "_row"].to_numpy()] = False
    return drop


def _otm_duplicates(frame: pd.DataFrame) -> np.ndarray:
    """Rows quoted in the money whose out-of-the-money counterpart (same expiry, strike) is
    kept, and in-the-money rows whose bid is below intrinsic (no bid vol: their mid's vol is
    mostly spread, 15 vol points off on a 30-day wing whose OTM twin had a zero bid)."""
    otm = np.where(frame["strike"] >= frame["forward"], "call", "put")
    key = pd.Series(list(zip(_expiry_key(frame), frame["strike"], strict=True)), index=frame.index)
    has_otm = key.isin(set(key[frame["option_type"].to_numpy() == otm]))
    itm = frame["option_type"].to_numpy() != otm
    unread = np.zeros(len(frame), dtype=bool)
    if "bid_iv" in frame and "bid" in frame:
        unread = (frame["bid"].notna() & frame["bid_iv"].isna()).to_numpy()
    return itm & (has_otm.to_numpy() | unread)


def _half_spread(frame: pd.DataFrame) -> np.ndarray:
    """Half the undiscounted bid/ask spread per row (the same for a put turned into a call by
    parity); 0 where bid or ask is missing."""
    if not {"bid", "ask"} <= set(frame):
        return np.zeros(len(frame))
    spread = (frame["ask"] - frame["bid"]) / (2 * frame["discount"])
    return spread.fillna(0.0).to_numpy(float)


def _strike_arbitrage(frame: pd.DataFrame, tolerance: float) -> np.ndarray:
    is_call = (frame["option_type"] == "call").to_numpy()
    undiscounted = frame["mid"].to_numpy(float) / frame["discount"].to_numpy(float)
    # Puts become calls by parity; rows with only an implied vol get a Black price.
    calls = np.where(is_call, undiscounted, undiscounted + frame["forward"] - frame["strike"])
    if frame["mid"].isna().any():
        from pricing.black_scholes import black_price

        shift = shifts(frame)
        model = black_price(
            forward=_tensor(frame["forward"] + shift),
            strike=_tensor(frame["strike"] + shift),
            maturity=_tensor(frame["maturity"]),
            volatility=_tensor(frame["market_iv"]),
        ).numpy()
        calls = np.where(frame["mid"].isna(), model, calls)
    half_spread = _half_spread(frame)
    drop = np.zeros(len(frame), dtype=bool)
    for _, rows in frame.groupby(_expiry_key(frame)).indices.items():
        # A strike quoted as call and put: check one curve preferring calls and one preferring
        # puts, so that every quote is checked (one curve alone skipped the other side's).
        by_type = frame.iloc[rows].sort_values("option_type", kind="stable")
        for keep in ("first", "last"):
            sub = by_type.drop_duplicates("strike", keep=keep)
            unique = np.asarray([frame.index.get_loc(i) for i in sub.index])
            shift = float(shifts(sub).iloc[0])  # call prices in K are the same, shifted or not
            bad = strike_violations(
                strike=sub["strike"].to_numpy(float) + shift,
                call=calls[unique],
                forward=float(sub["forward"].iloc[0]) + shift,
                tolerance=tolerance,
                half_spread=half_spread[unique],
            )
            drop[unique[bad]] = True
    return drop


def _calendar_arbitrage(frame: pd.DataFrame, tolerance: float) -> np.ndarray:
    """Calendar violations of the quotes' total variances, their bid and ask vols as bounds (a
    missing bid or ask, or an unreadable ask: the market vol; a bid at or below its price's
    lower bound, with no vol: 0)."""
    shift = shifts(frame)
    columns = {"bid": "bid_iv", "ask": "ask_iv", "mid": "market_iv"}
    vols = {name: frame[column] for name, column in columns.items() if column in frame}
    if "bid" in vols and "bid" in frame:
        # an in-the-money bid below intrinsic bounds the smile by nothing; the mid's vol in its
        # place (mostly spread on a wide quote) raised the earlier smile: 13 clean later quotes
        # of a Heston surface with both sides kept were removed
        vols["bid"] = vols["bid"].mask(frame["bid"].notna() & vols["bid"].isna(), 0.0)
    variance = {
        name: (vol.fillna(frame["market_iv"]) ** 2 * frame["maturity"]).to_numpy(float)
        for name, vol in vols.items()
    }
    return calendar_violations(
        # the expiries of the strike check and the forwards: rows of one expiry whose maturities
        # differ by 1e-7 (0.249315 and 91/365) were two here, and a later quote between the
        # last put and the first call strike of it was compared with neither side
        maturity=_expiry_key(frame).to_numpy(float),
        log_moneyness=np.log((frame["strike"] + shift) / (frame["forward"] + shift)).to_numpy(),
        total_variance=variance["mid"],
        rtol=tolerance * 100,
        atol=tolerance,
        total_variance_bid=variance.get("bid"),
        total_variance_ask=variance.get("ask"),
    )


def _arbitrage_filters(frame: pd.DataFrame, tolerance: float, report: CleaningReport):
    """The strike then the calendar check, and the strike check again after every calendar
    removal until neither removes a quote: a quote the calendar check removed could be what kept
    its neighbours' call spread within their bid/asks (95 ask 6.05, 105 bid 6.07 beside a 100
    below the earlier smile), and the cleaned table failed its own strike check."""
    frame = _drop(frame, _strike_arbitrage(frame, tolerance), "strike_arbitrage", report)
    while True:
        calendar = _calendar_arbitrage(frame, tolerance)
        frame = _drop(frame, calendar, "calendar_arbitrage", report)
        if not calendar.any():
            return frame
        strike = _strike_arbitrage(frame, tolerance)
        if not strike.any():
            return frame
        frame = _drop(frame, strike, "strike_arbitrage", report)


def _check_settings(maturity_range, moneyness_range, n_pairs: int, tolerance: float) -> None:
    """Cleaning settings that filtered everything or failed deep inside (a reversed range
    dropped every row, n_pairs=0 used carry forwards everywhere, a NaN tolerance an
    IndexError)."""
    for name, pair in (("maturity_range", maturity_range), ("moneyness_range", moneyness_range)):
        low, high = (float(v) for v in pair)
        if not 0 <= low <= high:  # NaN too
            raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {pair}")
    check_positive_int("n_pairs", n_pairs)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be finite and >= 0, got {tolerance}")


def clean_quotes(
    source: pd.DataFrame | str | Path,
    *,
    maturity_range: tuple[float, float] = (1 / 365, 30.0),
    moneyness_range: tuple[float, float] = (0.5, 2.0),
    otm_only: bool = True,
    arbitrage: bool = True,
    n_pairs: int = 6,
    tolerance: float = 1e-6,
    dayfirst: bool | None = None,
) -> tuple[pd.DataFrame, CleaningReport]:
    """Filter a quote table and add forwards, discount factors and market implied vols.

    Filters, in order, each counted in the report: expired quotes (maturity <= 0: an expiry on
    the quote date); maturity outside ``maturity_range``; crossed
    quotes (bid > ask); zero bids; one-sided quotes (bid or ask missing, no other price); rows
    without any price or vol; repeated quotes of one contract (expiry, strike, type: the
    narrowest bid/ask stays); strike/forward outside ``moneyness_range``; no implied vol (price
    outside the no-arbitrage bounds); in-the-money quotes whose out-of-the-money counterpart exists,
    or whose bid is below intrinsic (``otm_only``); quotes breaking monotonicity or convexity of
    call prices in strike; quotes below an earlier expiry's total variance (calendar; then the
    strike check again, until neither removes a quote). The arbitrage checks read mid prices
    and vols but count a violation only beyond what moving the prices within their bid/ask can
    absorb (see :func:`pricing.quote_arbitrage.strike_violations`
    for which quote of a violation goes). Forwards come from parity on the quotes that pass the
    first filters (see :func:`parity_forwards`); a forward or discount given on some rows of an
    expiry is the expiry's, given on a row those filters drop too. A table is one day's quotes
    of one underlying: a ``quote_date`` column with two dates is an error
    (:func:`pricing.quotes.check_one_quote_date`), as is an ``underlying`` column with two names
    (:func:`pricing.quotes.check_one_underlying`).

    Args:
        source: a table (any column spelling :func:`pricing.quotes.read_quotes` accepts) or a path.
        maturity_range: inclusive range of year fractions kept.
        moneyness_range: inclusive range of ``strike / forward`` kept.
        otm_only: keep only the out-of-the-money side where both sides are quoted.
        arbitrage: apply the static-arbitrage filters.
        n_pairs: least number of near-the-money pairs in the parity regression.
        tolerance: arbitrage tolerance, relative to the forward (prices) and, times 100, to total
            variance; for prices rounded to a tick without bid and ask, about tick / forward.
        dayfirst: numeric dates ``a/b/yyyy`` of ``expiry`` and ``quote_date`` are day/month
            (True) or month/day (False); None infers it from the dates and raises when they
            read either way (see :func:`pricing.quotes.read_quotes`).

    Returns:
        The cleaned table, sorted by maturity and strike (columns of the input plus
        ``source_row`` (1-based input row),
        ``forward``, ``discount``, ``mid``, ``market_iv``, ``bid_iv``/``ask_iv`` where bid/ask
        exist) and the :class:`CleaningReport`.

    Examples:
        >>> table = pd.DataFrame({"K": [80.0, 100.0, 120.0, 300.0], "T": 1.0, "S": 100.0,
        ...                       "iv": [0.25, 0.2, 0.18, 0.3]})
        >>> clean, report = clean_quotes(table)
        >>> len(clean), report.removed["moneyness_out_of_range"]
        (3, 1)
    """
    _check_settings(maturity_range, moneyness_range, n_pairs, tolerance)
    quotes = read_quotes(source, allow_crossed=True, allow_expired=True, dayfirst=dayfirst)
    if len(quotes.attrs.get("file_lines", [])) != len(quotes):
        # a table filtered since it was read keeps the file's lines: source_row named others'
        quotes.attrs.pop("file_lines", None)
    defaulted = quotes.attrs.get("defaulted", [])
    require_columns(quotes, ["strike", "maturity"], "quote cleaning")
    check_one_quote_date(quotes)  # before repeated contracts: two days' quotes are not repeats
    check_one_underlying(quotes)  # nor two underlyings'
    quotes["source_row"] = np.arange(1, len(quotes) + 1)
    report = CleaningReport(n_input=len(quotes))
    # an expiry on the quote date (0DTE options) made the whole file unreadable
    quotes = _drop(quotes, ~(quotes["maturity"] > 0).to_numpy(), "expired", report)
    live = quotes
    quotes = _pre_price_filters(quotes, report, maturity_range)
    frame, report.forward_sources = prepare_quotes(quotes, n_pairs=n_pairs)
    report.notes += forward_notes(frame, report.forward_sources, defaulted)
    shift = shifts(frame)
    ratio = (frame["strike"] + shift) / (frame["forward"] + shift)
    frame = _drop(frame, ~ratio.between(*moneyness_range), "moneyness_out_of_range", report)
    frame = _drop(frame, frame["market_iv"].isna(), "no_implied_vol", report)
    given = frame["implied_vol"].notna().to_numpy() if "implied_vol" in frame else False
    solved = np.where(given, np.nan, frame["market_iv"].to_numpy(float))  # vols of prices
    note = day_maturity_note(live, solved)
    report.notes += [note] if note else []
    if otm_only:
        frame = _drop(frame, _otm_duplicates(frame), "in_the_money", report)
    if arbitrage:
        frame = _arbitrage_filters(frame, tolerance, report)
    report.n_kept = len(frame)
    frame = frame.sort_values(["maturity", "strike"], kind="stable")
    return frame.reset_index(drop=True), report
