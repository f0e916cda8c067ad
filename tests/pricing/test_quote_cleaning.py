"""Quote cleaning: parity forwards, market implied vols, filters and their counts, arbitrage checks."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pricing import heston
from pricing.black_scholes import black_price
from pricing.quote_arbitrage import calendar_violations, strike_violations
from pricing.quote_cleaning import (
    attach_forwards,
    clean_quotes,
    forward_notes,
    parity_forwards,
    prepare_quotes,
)
from pricing.quotes import QuoteError, read_quotes

BUNDLED_DAX = Path(__file__).parents[2] / "data" / "dax_2002_sepp" / "implied_vols.csv"

DATA_DIR = Path(__file__).parents[1] / "data"
CLEANING_FILE = DATA_DIR / "quotes_cleaning.csv"


def _chain(forward: float, discount: float, maturity: float, strikes: np.ndarray) -> pd.DataFrame:
    """Calls and puts of one expiry at exact Black prices (smile 0.2 - 0.1 k)."""
    k = np.log(strikes / forward)
    rows = []
    for option_type in ("call", "put"):
        price = black_price(
            forward=forward,
            strike=torch.tensor(strikes),
            maturity=maturity,
            volatility=torch.tensor(0.2 - 0.1 * k),
            discount=discount,
            is_call=option_type == "call",
        ).numpy()
        rows.append(pd.DataFrame({"option_type": option_type, "strike": strikes, "price": price}))
    table = pd.concat(rows, ignore_index=True)
    table["maturity"], table["spot"] = maturity, 100.0
    return table


def test_parity_recovers_forward_and_discount_from_exact_prices() -> None:
    strikes = np.arange(70.0, 135.0, 5.0)
    table = pd.concat(
        [_chain(103.0, 0.97, 0.75, strikes), _chain(106.5, 0.94, 1.5, strikes)], ignore_index=True
    )
    implied = parity_forwards(read_quotes(table))
    np.testing.assert_allclose(implied["forward"], [103.0, 106.5], rtol=1e-10, atol=0)
    np.testing.assert_allclose(implied["discount"], [0.97, 0.94], rtol=1e-10, atol=0)
    assert implied["source"].tolist() == ["parity", "parity"]


def test_parity_with_one_pair_uses_the_rate_for_discounting() -> None:
    table = _chain(101.0, float(np.exp(-0.02)), 1.0, np.array([100.0]))
    table["rate"] = 0.02
    implied = parity_forwards(read_quotes(table))
    np.testing.assert_allclose(implied["forward"], [101.0], rtol=1e-12, atol=0)
    assert implied["source"].tolist() == ["parity_one_pair"]


def test_quotes_expiring_on_the_quote_date_are_dropped_and_counted() -> None:
    # an expiry on the quote date (0DTE options, common in exchange downloads) made the whole
    # file unreadable, though cleaning exists to drop such rows; read_quotes still refuses it
    table = pd.DataFrame({"quote_date": "2024-06-21",
                          "expiry": ["2024-06-21"] * 2 + ["2024-12-20"] * 4,
                          "option_type": ["call", "put"] * 3, "strike": [100, 100, 95, 95, 105, 105],
                          "spot": 100.0, "bid": [1.0, 1.0, 8.0, 3.0, 4.0, 8.5],
                          "ask": [1.2, 1.2, 8.4, 3.3, 4.3, 8.9]})  # fmt: skip
    clean, report = clean_quotes(table)
    assert report.removed["expired"] == 2
    assert (clean["maturity"] > 0.4).all() and len(clean) == 2
    with pytest.raises(QuoteError, match="is not after quote_date"):
        read_quotes(table)


def test_expiry_without_pairs_or_spot_is_an_error_naming_spot() -> None:
    table = _chain(101.0, 1.0, 1.0, np.array([90.0, 110.0])).query("option_type == 'call'")
    with pytest.raises(QuoteError, match=r"column 'spot'.*no call/put pairs"):
        parity_forwards(read_quotes(table.drop(columns="spot")))


def test_prepare_recovers_the_smile_from_prices() -> None:
    strikes = np.arange(80.0, 125.0, 5.0)
    prepared, sources = prepare_quotes(read_quotes(_chain(102.0, 0.98, 0.5, strikes)))
    k = np.log(prepared["strike"] / 102.0)
    np.testing.assert_allclose(prepared["market_iv"], 0.2 - 0.1 * k, rtol=0, atol=1e-10)
    assert sources == {"parity": 1}


def test_crafted_file_filters_are_counted_by_reason() -> None:
    clean, report = clean_quotes(CLEANING_FILE)
    expected = {
        "expired": 0,
        "maturity_out_of_range": 0,
        "crossed": 1,
        "zero_bid": 1,
        "one_sided": 1,
        "no_price": 0,
        "duplicate": 0,
        "moneyness_out_of_range": 1,
        "no_implied_vol": 0,
        # 9 in-the-money rows per expiry, minus the 3 defective 6m rows removed before.
        "in_the_money": 15,
        "strike_arbitrage": 1,
        # 1y quotes whose log-moneyness lies inside the 6m smile's range: strikes 85 to 115.
        "calendar_arbitrage": 7,
    }
    assert report.removed == expected
    assert (report.n_input, report.n_kept, len(clean)) == (37, 10, 10)
    assert not clean["note"].fillna("").str.contains("crossed|zero|one-sided|2.45").any()
    assert report.forward_sources == {"parity": 2}
    six_months = clean[clean["maturity"] < 0.6]
    np.testing.assert_allclose(six_months["forward"], 102.0, rtol=0, atol=0.05)
    np.testing.assert_allclose(six_months["discount"], 0.98, rtol=0, atol=1e-3)
    assert "cleaning" not in str(report) or "kept: 10" in str(report)


def test_clean_quotes_keeps_only_the_out_of_the_money_side() -> None:
    strikes = np.arange(80.0, 125.0, 5.0)
    clean, report = clean_quotes(_chain(102.0, 0.98, 0.5, strikes))
    otm = np.where(clean["strike"] >= clean["forward"], "call", "put")
    assert (clean["option_type"].to_numpy() == otm).all()
    assert report.removed["in_the_money"] == len(strikes)
    assert clean["strike"].tolist() == sorted(clean["strike"].tolist())


def test_maturity_and_moneyness_ranges_are_inclusive_filters() -> None:
    table = pd.DataFrame(
        {"strike": [100.0, 100.0, 50.0], "maturity": [0.5, 3.0, 0.5], "spot": 100.0,
         "implied_vol": 0.2}
    )  # fmt: skip
    clean, report = clean_quotes(table, maturity_range=(0.1, 2.0), moneyness_range=(0.6, 1.5))
    assert report.removed["maturity_out_of_range"] == 1
    assert report.removed["moneyness_out_of_range"] == 1
    assert len(clean) == 1


def test_bundled_dax_surface_has_butterfly_violations_that_the_filter_finds() -> None:
    quotes = read_quotes(BUNDLED_DAX)
    clean, report = clean_quotes(quotes)
    assert report.removed["strike_arbitrage"] > 0
    assert report.removed["calendar_arbitrage"] == 0
    # After removal, no expiry's call prices violate monotonicity or convexity.
    for _, group in clean.groupby("maturity"):
        calls = black_price(
            forward=torch.tensor(group["forward"].to_numpy()),
            strike=torch.tensor(group["strike"].to_numpy()),
            maturity=torch.tensor(group["maturity"].to_numpy()),
            volatility=torch.tensor(group["market_iv"].to_numpy()),
        ).numpy()
        drop = strike_violations(
            strike=group["strike"].to_numpy(), call=calls, forward=group["forward"].iloc[0]
        )
        assert not drop.any()


def test_strike_violations_accepts_black_prices_and_flags_a_concave_point() -> None:
    strikes = np.linspace(60.0, 140.0, 17)
    calls = black_price(forward=100.0, strike=torch.tensor(strikes), maturity=1.0, volatility=0.25)
    calls = calls.numpy()
    assert not strike_violations(strike=strikes, call=calls, forward=100.0).any()
    bumped = calls.copy()
    bumped[8] += 1.0  # the at-the-money call made too expensive: concave there
    assert np.flatnonzero(
        strike_violations(strike=strikes, call=bumped, forward=100.0)
    ).tolist() == [8]


def test_calendar_violations_flag_only_quotes_below_the_earlier_smile() -> None:
    k = np.tile(np.linspace(-0.2, 0.2, 5), 2)
    t = np.repeat([0.5, 1.0], 5)
    w = np.concatenate([np.full(5, 0.02), np.array([0.05, 0.03, 0.019, 0.04, 0.045])])
    drop = calendar_violations(maturity=t, log_moneyness=k, total_variance=w)
    assert np.flatnonzero(drop).tolist() == [7]


def test_parity_recovers_long_dated_high_rate_discounts_without_a_rate_column() -> None:
    # 15 years at 5%: D = 0.47, which a fixed (0.5, 1.5] window rejected; the file has no rate,
    # so the fallback discount would have been 1 and the forward off by a quarter.
    discount = float(np.exp(-0.05 * 15.0))
    table = _chain(211.7, discount, 15.0, np.arange(150.0, 280.0, 10.0))
    implied = parity_forwards(read_quotes(table))
    np.testing.assert_allclose(implied["forward"], [211.7], rtol=1e-10, atol=0)
    np.testing.assert_allclose(implied["discount"], [discount], rtol=1e-10, atol=0)
    assert implied["source"].tolist() == ["parity"]


def test_implausible_parity_discount_falls_back_to_the_rate_and_says_so() -> None:
    table = _chain(101.0, 0.99, 0.05, np.array([95.0, 100.0, 105.0]))
    calls = table["option_type"] == "call"
    table.loc[calls, "price"] += np.array([0.0, 0.0, 1.0])  # bends C - P: D ~ 0.89 in 18 days
    table["rate"] = -np.log(0.99) / 0.05
    implied = parity_forwards(read_quotes(table))
    assert implied["source"].tolist() == ["parity_rate_discount"]
    np.testing.assert_allclose(implied["discount"], [0.99], rtol=1e-12, atol=0)


def test_repeated_contracts_keep_the_narrowest_quote_and_are_counted() -> None:
    strikes = np.arange(80.0, 125.0, 5.0)
    table = _chain(102.0, 0.98, 0.5, strikes)
    table["bid"], table["ask"] = table["price"] - 0.05, table["price"] + 0.05
    table = table.drop(columns="price")
    stale = table[(table["strike"] == 100.0) & (table["option_type"] == "call")].copy()
    stale[["bid", "ask"]] = stale[["bid", "ask"]] * 1.5 + np.array([-0.5, 0.5])  # wider, off
    exact = table.iloc[[3]]
    clean, report = clean_quotes(pd.concat([stale, table, exact], ignore_index=True))
    alone, _ = clean_quotes(table)
    assert report.removed["duplicate"] == 2
    pd.testing.assert_frame_equal(clean.drop(columns="source_row"),
                                  alone.drop(columns="source_row"))  # fmt: skip


def test_prepare_reads_a_raw_table_with_call_put_letters() -> None:
    table = _chain(102.0, 0.98, 0.5, np.arange(80.0, 125.0, 5.0))
    raw = table.assign(option_type=table["option_type"].map({"call": "C", "put": "P"}))
    prepared, _ = prepare_quotes(raw)  # 'strike' is canonical, the letters are not
    expected, _ = prepare_quotes(read_quotes(table))
    np.testing.assert_allclose(prepared["market_iv"], expected["market_iv"], rtol=1e-12, atol=0)
    assert set(prepared["option_type"]) == {"call", "put"}


def test_cleaning_names_missing_columns_and_survives_an_empty_result(tmp_path: Path) -> None:
    (tmp_path / "no_maturity.csv").write_text(
        "option_type,strike,spot,implied_vol\ncall,100,100,0.2\n"
    )
    with pytest.raises(QuoteError, match=r"quote cleaning needs column\(s\) maturity"):
        clean_quotes(tmp_path / "no_maturity.csv")
    zero_bids = pd.DataFrame({"option_type": "call", "strike": [100.0, 110.0], "maturity": 1.0,
                              "spot": 100.0, "bid": 0.0, "ask": 1.0})  # fmt: skip
    clean, report = clean_quotes(zero_bids)
    assert len(clean) == 0 and report.removed["zero_bid"] == 2 and report.n_kept == 0


def test_zero_prices_and_unreadable_in_the_money_quotes_are_dropped() -> None:
    strikes = np.array([70.0, 90.0, 100.0, 110.0])
    table = _chain(100.0, 0.99, 30 / 365, strikes)
    table["bid"], table["ask"] = table["price"] - 0.05, table["price"] + 0.05
    table = table.drop(columns="price")
    far_put = (table["strike"] == 70.0) & (table["option_type"] == "put")
    table.loc[far_put, ["bid", "ask"]] = [0.0, 0.01]  # zero bid: dropped, leaving the ITM call
    itm_call = (table["strike"] == 70.0) & (table["option_type"] == "call")
    table.loc[itm_call, ["bid", "ask"]] = [29.0, 31.0]  # bid below the intrinsic 29.7, mid above
    clean, report = clean_quotes(table)
    assert not (clean["strike"] == 70.0).any()
    assert report.removed["zero_bid"] == 1 and report.removed["in_the_money"] == 4  # 3 twins + 1
    settled = _chain(100.0, 1.0, 0.5, np.array([55.0, 100.0])).query("option_type == 'put'")
    settled.loc[settled["strike"] == 55.0, "price"] = 0.0  # a far wing settled at 0
    clean, report = clean_quotes(settled.assign(rate=0.0))
    assert report.removed["no_implied_vol"] == 1 and clean["market_iv"].gt(0).all()


def test_shifted_rates_quotes_clean_and_solve_on_shifted_forwards() -> None:
    # Forwards around 0 with a 2% shift: vols and moneyness are of F + s and K + s.
    from pricing.sabr import lognormal_vol

    forward, shift = -0.002, 0.02
    strikes = forward + np.array([-0.006, -0.003, 0.0, 0.003, 0.006])
    vols = lognormal_vol(forward=forward, strike=torch.tensor(strikes), maturity=1.0, alpha=0.1,
                         beta=0.5, rho=-0.2, nu=0.4, shift=shift).numpy()  # fmt: skip
    price = black_price(forward=forward + shift, strike=torch.tensor(strikes + shift),
                        maturity=1.0, volatility=torch.tensor(vols),
                        is_call=torch.tensor(strikes >= forward)).numpy()  # fmt: skip
    table = pd.DataFrame({"strike": strikes, "maturity": 1.0, "forward": forward, "discount": 1.0,
                          "shift": shift, "price": price,
                          "option_type": np.where(strikes >= forward, "call", "put")})  # fmt: skip
    clean, report = clean_quotes(table)
    assert len(clean) == 5, report
    np.testing.assert_allclose(clean["market_iv"], vols, rtol=1e-9, atol=0)


def test_carry_forwards_without_rates_are_noted_in_the_report() -> None:
    calls = _chain(101.0, 0.98, 1.0, np.array([95.0, 105.0])).query("option_type == 'call'")
    _, report = clean_quotes(calls)  # no rate column, no pairs: forward = spot at rate 0
    assert report.forward_sources == {"carry": 1}
    assert report.notes and "no rate or dividend column" in report.notes[0]
    assert "note: no rate or dividend column" in str(report)
    _, with_rate = clean_quotes(calls.assign(rate=0.02))
    assert len(with_rate.notes) == 1 and with_rate.notes[0].startswith("no dividend column")
    # a discount column sets the carry's rate: "no rate ... with it at 0" was said of it too
    discounted, with_discount = clean_quotes(calls.assign(discount=0.98))
    assert len(with_discount.notes) == 1 and with_discount.notes[0].startswith("no dividend column")
    np.testing.assert_allclose(discounted["forward"], 100.0 / 0.98, rtol=1e-12, atol=0)


def test_a_one_pair_discount_at_a_missing_rate_is_noted_in_the_report() -> None:
    # one call/put pair fixes the forward, not the discount: with no rate column it was 1 (the
    # vols about r T of themselves low), without a word
    pair = _chain(101.0, 0.95, 1.0, np.array([100.0]))
    clean, report = clean_quotes(pair)
    assert report.forward_sources == {"parity_one_pair": 1}
    assert set(clean["discount"]) == {1.0}
    assert any("1 expiry whose call/put pairs could not fix the discount" in note
               for note in report.notes), report.notes  # fmt: skip
    _, with_rate = clean_quotes(pair.assign(rate=-np.log(0.95)))
    assert not any("could not fix the discount" in note for note in with_rate.notes)


def test_a_one_pair_expiry_with_its_own_discount_is_not_noted_as_at_rate_0() -> None:
    # a discount column on some expiries: the one-pair expiry's own 0.95 was used, yet the
    # note said it took the discount at rate 0 (counted from the sources alone)
    pair = _chain(101.0, 0.95, 1.0, np.array([100.0]))
    chain = _chain(103.0, 0.97, 0.5, np.arange(70.0, 135.0, 5.0))
    own = pd.concat([pair.assign(discount=0.95), chain.assign(discount=np.nan)], ignore_index=True)
    clean, report = clean_quotes(own)
    assert report.forward_sources == {"parity": 1, "parity_one_pair": 1}
    np.testing.assert_allclose(
        clean.loc[clean["maturity"] == 1.0, "discount"], 0.95, rtol=1e-12, atol=0
    )
    assert not any("could not fix the discount" in note for note in report.notes), report.notes
    # the other way round the one-pair expiry's discount is the missing rate's: noted
    other = pd.concat(
        [pair.assign(discount=np.nan), chain.assign(discount=0.97)], ignore_index=True
    )
    _, report = clean_quotes(other)
    assert any("1 expiry whose call/put pairs could not fix the discount" in note
               for note in report.notes), report.notes  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"maturity_range": (30.0, 0.1)}, "maturity_range"), ({"moneyness_range": (0.5, math.nan)},
      "moneyness_range"), ({"n_pairs": 0}, "n_pairs"), ({"tolerance": math.nan}, "tolerance")],
)  # fmt: skip
def test_cleaning_settings_are_checked(kwargs, message):
    # a reversed range dropped every row, n_pairs=0 fell back to carry forwards everywhere, a
    # NaN tolerance failed with an IndexError
    table = pd.DataFrame({"strike": [90.0, 110.0], "maturity": 1.0, "spot": 100.0,
                          "implied_vol": 0.2})  # fmt: skip
    with pytest.raises(ValueError, match=message):
        clean_quotes(table, **kwargs)


def test_arbitrage_checks_refuse_mismatched_or_missing_values():
    # lengths 2 and 3 gave a mask of 2; a NaN variance was never flagged; a NaN call price or
    # a repeated strike failed with a bare IndexError
    with pytest.raises(ValueError, match="one value per quote"):
        calendar_violations(maturity=np.array([0.5, 1.0]), log_moneyness=np.zeros(3),
                            total_variance=np.full(3, 0.02))  # fmt: skip
    with pytest.raises(ValueError, match="total_variance: not a finite number at index 1"):
        calendar_violations(maturity=np.array([0.5, 1.0]), log_moneyness=np.zeros(2),
                            total_variance=np.array([0.02, np.nan]))  # fmt: skip
    with pytest.raises(ValueError, match="call: not a finite number"):
        strike_violations(strike=np.array([90.0, 100.0]), call=np.array([11.0, np.nan]),
                          forward=100.0)  # fmt: skip
    with pytest.raises(ValueError, match="distinct"):
        strike_violations(strike=np.array([90.0, 90.0]), call=np.array([11.0, 11.0]),
                          forward=100.0)  # fmt: skip


def test_strike_arbitrage_in_puts_is_found_when_both_sides_are_kept() -> None:
    # Calls and puts at every strike: the check read one quote per strike (the call), so a put
    # breaking convexity passed whenever otm_only=False.
    strikes = np.linspace(80.0, 120.0, 9)
    table = _chain(forward=101.0, discount=0.97, maturity=1.0, strikes=strikes)
    bad_put = int(np.flatnonzero((table["option_type"] == "put") & (table["strike"] == 90.0))[0])
    table.loc[bad_put, "price"] += 0.5
    clean, report = clean_quotes(table, otm_only=False)
    assert report.removed["strike_arbitrage"] == 1
    assert bad_put + 1 not in set(clean["source_row"])


def test_a_call_spread_between_strikes_that_are_not_neighbours_is_arbitrage(
    tmp_path: Path,
) -> None:
    # The 150 call's bid 0.69 is above the 130's ask 0.51: buying the 130 and selling the 150
    # earns 0.18 now and can only pay more later. The 140 between them is quoted 0.30/0.90, so
    # each neighbour pair's call spread fitted within its bid/asks, and the file came out clean.
    path = tmp_path / "chain.csv"
    path.write_text("type,strike,T,spot,rate,bid,ask\n"
                    "C,100,0.5,100,0,5.60,5.62\n"
                    "C,120,0.5,100,0,0.99,1.01\n"
                    "C,130,0.5,100,0,0.49,0.51\n"
                    "C,140,0.5,100,0,0.30,0.90\n"
                    "C,150,0.5,100,0,0.69,0.71\n")  # fmt: skip
    clean, report = clean_quotes(path)
    assert report.removed["strike_arbitrage"] == 1
    assert not {3, 5} <= set(clean["source_row"])


def test_carry_forwards_use_a_given_discount_as_the_rate() -> None:
    # spot 100, dividend 2%, discount exp(-0.05), no pairs: F = 100 exp(0.03) (it was 100 exp(-0.02))
    table = read_quotes(pd.DataFrame({"option_type": ["call", "put"], "strike": [100.0, 110.0],
                                      "maturity": 1.0, "spot": 100.0, "dividend": 0.02,
                                      "discount": math.exp(-0.05), "price": [9.0, 10.0]}))  # fmt: skip
    implied = parity_forwards(table)
    np.testing.assert_allclose(implied["forward"], [100.0 * math.exp(0.03)], rtol=1e-14, atol=0)
    np.testing.assert_allclose(implied["discount"], [math.exp(-0.05)], rtol=0, atol=0)
    assert implied["source"].tolist() == ["carry"]


def test_a_discount_given_on_some_rows_of_an_expiry_is_the_expirys() -> None:
    # one pair, discount 0.97 on its call only, no rate column: the parity forward was made with
    # the defaulted rate's discount 1 (C - P = 0.97 (103 - 95), F = 95 + 7.76 = 102.76) and the
    # call kept 0.97 beside it, its put written with discount 1 (calibrate's path, as iv's)
    table = _chain(103.0, 0.97, 1.0, np.array([95.0]))
    table["discount"] = [0.97, np.nan]
    prepared, sources = prepare_quotes(read_quotes(table))
    assert sources == {"parity_one_pair": 1}
    np.testing.assert_allclose(prepared["discount"], 0.97, rtol=0, atol=0)
    np.testing.assert_allclose(prepared["forward"], 103.0, rtol=1e-12, atol=0)
    np.testing.assert_allclose(prepared["market_iv"], 0.2 - 0.1 * np.log(95.0 / 103.0),
                               rtol=1e-9, atol=0)  # fmt: skip


@pytest.mark.parametrize("on_rows", ["calls", "all"])
def test_a_given_discount_is_the_expirys_whatever_the_parity_slope(on_rows: str) -> None:
    # prices of D = 0.95 and a discount column of 0.97: the slope's 0.95 (beyond 3 standard errors)
    # made the forward and filled the rows without a discount, the calls kept their 0.97 (two
    # discounts in one expiry: calls and puts of a strike 3 vol points apart), without a word
    strikes = np.arange(90.0, 120.0, 5.0)  # all within PARITY_BAND of the money
    table = _chain(103.0, 0.95, 1.0, strikes)
    calls = (table["option_type"] == "call").to_numpy()
    table["discount"] = np.where(calls, 0.97, np.nan) if on_rows == "calls" else 0.97
    prepared, sources = prepare_quotes(read_quotes(table))
    assert sources == {"parity_rate_discount": 1}
    np.testing.assert_allclose(prepared["discount"], 0.97, rtol=1e-15, atol=0)  # a mean of 0.97s
    # the forward fitted with the slope at -0.97: the mean of K + (C - P) / 0.97
    expected = np.mean(strikes + 0.95 * (103.0 - strikes) / 0.97)
    np.testing.assert_allclose(prepared["forward"], expected, rtol=1e-12, atol=0)
    notes = parity_forwards(read_quotes(table)).attrs["notes"]
    assert len(notes) == 1 and notes[0].startswith("expiry T=1: its call/put pairs' parity slope")
    assert "discount of 0.95 (standard error" in notes[0]
    assert "beyond 3 standard errors of its given discount 0.97: the given one is used" in notes[0]
    _, report = clean_quotes(table)
    assert notes[0] in report.notes and f"note: {notes[0]}" in str(report)


def test_a_given_discount_the_slope_agrees_with_gets_no_note() -> None:
    table = _chain(103.0, 0.97, 1.0, np.arange(90.0, 120.0, 5.0)).assign(discount=0.97)
    implied = parity_forwards(read_quotes(table))
    np.testing.assert_allclose(implied["forward"], [103.0], rtol=1e-12, atol=0)
    assert implied.attrs["notes"] == []


def test_discounts_that_differ_within_an_expiry_are_refused_naming_the_rows() -> None:
    # 0.95 on the calls, 0.90 on the puts: their mean 0.925 was the expiry's, without a word
    table = _chain(103.0, 0.95, 1.0, np.arange(90.0, 120.0, 5.0))
    calls = (table["option_type"] == "call").to_numpy()
    table["discount"] = np.where(calls, 0.95, 0.90)
    with pytest.raises(
        QuoteError,
        match=r"column 'discount': expiry T=1: discount 0\.9 at row 7 "
        r"and 0\.95 at row 1: one expiry has one discount",
    ):
        prepare_quotes(read_quotes(table))
    with pytest.raises(QuoteError, match=r"discount 0\.9 at row 7 and 0\.95 at row 1"):
        clean_quotes(table)  # rows of the input, after its filters
    # rounding (0.951 beside 0.9512, within DISCOUNT_ROUNDING): their mean
    table["discount"] = np.where(calls, 0.951, 0.9512)
    implied = parity_forwards(read_quotes(table))
    np.testing.assert_allclose(implied["discount"], [0.9511], rtol=1e-12, atol=0)


def test_forwards_that_differ_within_an_expiry_are_refused_naming_the_rows() -> None:
    # forwards 103 on the calls, 100 on the puts: the expiry's forward was their mean, 101.5,
    # without a word (each row kept its own)
    table = _chain(103.0, 0.95, 1.0, np.arange(90.0, 120.0, 5.0)).assign(discount=0.95)
    calls = (table["option_type"] == "call").to_numpy()
    table["forward"] = np.where(calls, 103.0, 100.0)
    where = r"column 'forward': expiry T=1: forward 100 at row 7 and 103 at row 1: one expiry has"
    with pytest.raises(QuoteError, match=where):
        parity_forwards(read_quotes(table))
    with pytest.raises(QuoteError, match=where):
        parity_forwards(read_quotes(table.drop(columns="discount")))  # D from the rate
    with pytest.raises(QuoteError, match=r"forward 100 at row 7 and 103 at row 1"):
        clean_quotes(table)  # rows of the input, after its filters
    # given on some rows only: the others took parity's, beside two given ones
    table["forward"] = np.where(calls, 103.0, np.nan)
    table.loc[6, "forward"] = 100.0
    with pytest.raises(QuoteError, match=r"forward 100 at row 7 and 103 at row 1"):
        parity_forwards(read_quotes(table))
    # rounding (103.03 beside 103.0, within FORWARD_ROUNDING of it): their mean
    table["forward"] = np.where(calls, 103.0, 103.03)
    implied = parity_forwards(read_quotes(table))
    np.testing.assert_allclose(implied["forward"], [103.015], rtol=1e-12, atol=0)
    assert implied["source"].tolist() == ["given"]


def test_a_forward_given_on_some_rows_is_the_expirys() -> None:
    # forward 103 on the calls only, the pairs' parity saying 100: the puts took 100 beside the
    # calls' 103 (two forwards in one expiry; put and call vols 4 points apart at one strike)
    table = _chain(100.0, 0.95, 1.0, np.arange(90.0, 120.0, 5.0))
    calls = (table["option_type"] == "call").to_numpy()
    table["forward"] = np.where(calls, 103.0, np.nan)
    implied = parity_forwards(read_quotes(table))
    np.testing.assert_allclose(implied["forward"], [103.0], rtol=1e-15, atol=0)
    np.testing.assert_allclose(implied["discount"], [0.95], rtol=1e-9, atol=0)  # the pairs' D
    assert implied["source"].tolist() == ["given"]
    prepared, sources = prepare_quotes(read_quotes(table))
    np.testing.assert_allclose(prepared["forward"], 103.0, rtol=1e-15, atol=0)
    assert sources == {"given": 1}
    # without pairs or spot, the rows without one take it too (they were refused)
    single = read_quotes(table[calls].drop(columns="spot").assign(discount=0.95))
    single.loc[single.index[-1], "forward"] = np.nan
    out, sources = attach_forwards(single)
    np.testing.assert_allclose(out["forward"], 103.0, rtol=1e-15, atol=0)
    assert sources == {"given": 1}


def test_a_given_forward_keeps_its_pairs_evidence_of_units_and_of_a_rate_discount() -> None:
    # a forward given beside pairs made the expiry's source "given": its parity slope was no
    # longer evidence of the file's units (a file whose stale 2.5y pairs look like strikes x 100
    # was refused), and a discount its one pair took at a rate read as 0 lost its note
    near = [("call", k, 0.25, 5.1 + max(100.0 - k, 0.0)) for k in (90.0, 95.0, 100.0, 105.0)]
    near += [("put", k, 0.25, 5.1 + max(k - 100.0, 0.0)) for k in (90.0, 95.0, 100.0, 105.0)]
    stale = [("call", 100.0, 2.5, 20.0), ("put", 100.0, 2.5, 10.0), ("call", 105.0, 2.5, 19.0),
             ("put", 105.0, 2.5, 9.17)]  # fmt: skip
    table = pd.DataFrame(near + stale, columns=["option_type", "strike", "maturity", "price"])
    for forward in ([100.0] * 8, [100.0]):  # on every row of the 3-month expiry, on one
        given = table.assign(forward=forward + [np.nan] * (len(table) - len(forward)))
        implied = parity_forwards(read_quotes(given))
        assert implied["source"].tolist() == ["given", "parity_rate_discount"]
    chain = _chain(100.0, 0.95, 1.0, np.array([90.0, 100.0, 110.0])).drop(columns="spot")
    one_pair = chain[(chain["strike"] == 100.0) | ((chain["option_type"] == "call") ==
                                                   (chain["strike"] > 100.0))]  # fmt: skip
    for forward in (np.nan, 100.0):
        quotes = read_quotes(one_pair.assign(forward=[forward, *[np.nan] * 3]))
        out, sources = attach_forwards(quotes)
        np.testing.assert_allclose(out["discount"], 1.0, rtol=0, atol=0)  # the rate's, at 0
        (note,) = forward_notes(out, sources)
        assert note.startswith("no rate column: 1 expiry whose call/put pairs could not fix")


def test_parity_reads_the_negative_forward_of_shifted_quotes() -> None:
    # a rate forward of -0.002 (shift 0.02): parity refused its D F < 0, and the expiry was
    # "no call/put pairs" without spot, or, its forward given on one row, took the rate's
    # discount (1 at a rate read as 0, for 0.98): vols from 0.23 to 0.16 for a flat 0.3
    strikes = np.array([-0.008, -0.004, 0.0, 0.004, 0.008])
    rows = []
    for option_type in ("call", "put"):
        price = black_price(forward=0.018, strike=torch.tensor(strikes + 0.02), maturity=1.0,
                            volatility=0.3, discount=0.98,
                            is_call=option_type == "call").numpy()  # fmt: skip
        rows.append(pd.DataFrame({"option_type": option_type, "strike": strikes, "price": price}))
    table = pd.concat(rows, ignore_index=True).assign(maturity=1.0, shift=0.02)
    for forward, source in ((np.nan, "parity"), (-0.002, "given")):
        quotes = read_quotes(table.assign(forward=[forward, *[np.nan] * (len(table) - 1)]))
        prepared, sources = prepare_quotes(quotes)
        assert sources == {source: 1}
        np.testing.assert_allclose(prepared["forward"], -0.002, rtol=1e-9, atol=0)
        np.testing.assert_allclose(prepared["discount"], 0.98, rtol=1e-9, atol=0)
        np.testing.assert_allclose(prepared["market_iv"], 0.3, rtol=1e-6, atol=0)


def test_a_forward_or_discount_given_on_a_filtered_row_alone_stays_the_expirys() -> None:
    # given on a crossed row only, it left with that row: the expiry had no forward (no pairs,
    # no spot) and was refused, or took the rate's discount of 1
    table = _chain(103.0, 0.95, 1.0, np.arange(90.0, 120.0, 5.0))
    calls = table[table["option_type"] == "call"].drop(columns="spot").reset_index(drop=True)
    calls["bid"], calls["ask"] = calls["price"] - 0.05, calls["price"] + 0.05
    calls = calls.drop(columns="price")
    calls.loc[0, ["bid", "ask"]] = [calls.loc[0, "ask"], calls.loc[0, "bid"]]  # crossed
    calls["forward"], calls["discount"] = np.nan, 0.95
    calls.loc[0, "forward"] = 103.0
    clean, report = clean_quotes(calls)
    assert report.removed["crossed"] == 1
    np.testing.assert_allclose(clean["forward"], 103.0, rtol=1e-15, atol=0)
    np.testing.assert_allclose(clean["market_iv"], 0.2 - 0.1 * np.log(clean["strike"] / 103.0),
                               rtol=0, atol=1e-6)  # fmt: skip
    calls["forward"], calls["discount"] = 103.0, np.nan
    calls.loc[0, "discount"] = 0.95
    clean, _ = clean_quotes(calls)
    np.testing.assert_allclose(clean["discount"], 0.95, rtol=1e-15, atol=0)
    # their rows still agree, named as given (the crossed row's forward 100 beside 103)
    calls["forward"] = np.nan
    calls.loc[[0, 3], "forward"] = [100.0, 103.0]
    with pytest.raises(QuoteError, match=r"forward 100 at row 1 and 103 at row 4"):
        clean_quotes(calls)


def test_a_given_forward_without_pairs_or_rate_notes_its_discount_of_1() -> None:
    # prices discounted at the rate read as 0 (D = 1) gave vols without a word; given vols need
    # no discount
    table = pd.DataFrame({"option_type": "call", "strike": [90.0, 100.0, 110.0], "maturity": 1.0,
                          "forward": 100.0, "price": [14.0, 8.0, 4.0]})  # fmt: skip
    _, report = clean_quotes(table)
    assert any(note.startswith("no rate column: 1 expiry whose call/put pairs could not fix the "
                               "discount (none beside a given forward") for note in report.notes)  # fmt: skip
    _, report = clean_quotes(table.drop(columns="price").assign(iv=0.2))
    assert not any("could not fix the discount" in note for note in report.notes), report.notes
    _, report = clean_quotes(table.assign(rate=0.03))
    assert not any("could not fix the discount" in note for note in report.notes), report.notes


def test_quotes_of_two_underlyings_are_refused_naming_the_row() -> None:
    # a DAX and an ESTX chain in one file were pooled by expiry: one forward for both, the
    # ESTX quotes dropped as out of range or arbitrage, and a fit to neither, without a word
    dax = _chain(103.0, 0.95, 1.0, np.arange(90.0, 120.0, 5.0)).assign(underlying="DAX")
    estx = _chain(51.5, 0.95, 1.0, np.arange(45.0, 60.0, 2.5)).assign(underlying="ESTX", spot=50.0)
    both = pd.concat([dax, estx], ignore_index=True)
    where = r"row 13, column 'underlying': a second underlying, ESTX \(DAX in row 1\)"
    with pytest.raises(QuoteError, match=where):
        clean_quotes(both)
    with pytest.raises(QuoteError, match=where):
        parity_forwards(read_quotes(both))
    clean, _ = clean_quotes(dax.rename(columns={"underlying": "Underlying Symbol"}))
    np.testing.assert_allclose(clean["forward"], 103.0, rtol=1e-10, atol=0)
    # a Bloomberg chain's Ticker names each option, not the underlying: it was refused
    kinds, strikes = dax["option_type"].str[0].str.upper(), dax["strike"].map("{:g}".format)
    tickers = "DAX 12/20/02 " + kinds + strikes + " Index"
    clean, _ = clean_quotes(dax.drop(columns="underlying").assign(Ticker=tickers))
    np.testing.assert_allclose(clean["forward"], 103.0, rtol=1e-10, atol=0)


def test_given_discounts_of_calls_and_puts_read_apart_and_concatenated() -> None:
    # read_quotes of the calls and of the puts, concatenated: index labels 0..5 twice, on which
    # the expiry's discount check failed ("The truth value of a Series is ambiguous")
    table = _chain(103.0, 0.95, 1.0, np.arange(90.0, 120.0, 5.0)).assign(discount=0.95)
    calls = (table["option_type"] == "call").to_numpy()
    apart = pd.concat([read_quotes(table[calls]), read_quotes(table[~calls])])
    prepared, sources = prepare_quotes(apart)
    expected, _ = prepare_quotes(read_quotes(table))
    assert sources == {"parity_rate_discount": 1}
    np.testing.assert_allclose(prepared["forward"], expected["forward"], rtol=1e-15, atol=0)
    # rows differing beyond rounding are named by their places in the table
    apart.iloc[8, apart.columns.get_loc("discount")] = 0.90
    with pytest.raises(QuoteError, match=r"discount 0\.9 at row 9 and 0\.95 at row 1"):
        prepare_quotes(apart)
    # and so are forwards (looked up by label, they failed alike)
    apart["discount"] = 0.95
    apart["forward"] = [103.0] * 11 + [100.0]
    with pytest.raises(QuoteError, match=r"forward 100 at row 12 and 103 at row 1"):
        prepare_quotes(apart)


def test_differing_discounts_name_the_file_lines(tmp_path: Path) -> None:
    # a first row of 60 years, which cleaning drops before the forwards: rows and lines of the file
    table = _chain(103.0, 0.95, 1.0, np.array([95.0, 100.0]))
    table["discount"] = [0.95, 0.95, 0.95, 0.90]
    far = pd.DataFrame({"option_type": ["call"], "strike": 100.0, "price": 5.0, "maturity": 60.0,
                        "spot": 100.0, "discount": 0.9})  # fmt: skip
    path = tmp_path / "q.csv"
    pd.concat([far, table], ignore_index=True).to_csv(path, index=False)
    where = r"0\.9 at row 5 \(file line 6\) and 0\.95 at row 2 \(file line 3\)"
    with pytest.raises(QuoteError, match=where):
        prepare_quotes(read_quotes(path))
    with pytest.raises(QuoteError, match=where):
        clean_quotes(path)


def test_a_table_filtered_after_reading_names_no_other_rows_file_lines(tmp_path: Path) -> None:
    # a read file filtered (its attrs kept the file's lines): cleaning numbered its rows among
    # those left and named the file lines of the rows first in the file, 3 for the file's line 4
    table = _chain(103.0, 0.95, 1.0, np.array([95.0, 100.0]))
    table["discount"] = [0.95, 0.95, 0.95, 0.90]
    far = table.iloc[[0]].assign(maturity=0.5)
    pd.concat([far, table], ignore_index=True).to_csv(tmp_path / "q.csv", index=False)
    read = read_quotes(tmp_path / "q.csv")
    with pytest.raises(QuoteError, match=r"0\.9 at row 4 and 0\.95 at row 1: one expiry"):
        clean_quotes(read[read["maturity"] == 1.0])


def test_the_carry_note_counts_only_the_expiries_carried_at_rate_0() -> None:
    # two carry expiries, no rate column, one with its own discount: the note said 2 took their
    # forwards from the spot at a rate of 0 (the 1-year one was carried at its discount's rate)
    table = pd.DataFrame({"option_type": "call", "strike": [90.0, 100.0, 110.0] * 2,
                          "maturity": np.repeat([1.0, 2.0], 3), "spot": 100.0, "dividend": 0.0,
                          "implied_vol": 0.2, "discount": np.repeat([0.95, np.nan], 3)})  # fmt: skip
    clean, report = clean_quotes(table)
    assert report.forward_sources == {"carry": 2}
    assert report.notes == ["no rate column: 1 expiry without call/put pairs took its forward "
                            "from the spot with it at 0 (give it, or both calls and puts for "
                            "parity)"]  # fmt: skip
    np.testing.assert_allclose(clean.groupby("maturity")["forward"].first(), [100 / 0.95, 100.0],
                               rtol=1e-12, atol=0)  # fmt: skip
    # without a dividend column every carry expiry took its dividend at 0
    _, report = clean_quotes(table.drop(columns="dividend"))
    assert report.notes[0].startswith("no rate or dividend column: 2 expiries without call/put")


def test_carry_forwards_subtract_a_borrow_cost() -> None:
    # spot 100, rate 5%, dividend 1%, borrow 3%, no pairs: F = 100 exp(0.01) (borrow was ignored)
    table = read_quotes(pd.DataFrame({"option_type": ["call", "put"], "strike": [100.0, 110.0],
                                      "maturity": 1.0, "spot": 100.0, "rate": 0.05,
                                      "dividend": 0.01, "borrow": 0.03, "price": [9.0, 10.0]}))  # fmt: skip
    implied = parity_forwards(table)
    np.testing.assert_allclose(implied["forward"], [100.0 * math.exp(0.01)], rtol=1e-14, atol=0)
    assert implied["source"].tolist() == ["carry"]


def test_a_given_forward_without_pairs_or_spot_is_used_with_the_rate() -> None:
    table = read_quotes(pd.DataFrame({"option_type": ["call", "put"], "strike": [100.0, 110.0],
                                      "maturity": 1.0, "forward": 100.0, "rate": 0.05,
                                      "price": [7.6, 13.0]}))  # fmt: skip
    implied = parity_forwards(table)  # it raised: "no call/put pairs ..., and no spot"
    np.testing.assert_allclose(implied["forward"], [100.0], rtol=0, atol=0)
    np.testing.assert_allclose(implied["discount"], [math.exp(-0.05)], rtol=1e-15, atol=0)
    assert implied["source"].tolist() == ["given"]


def test_bids_and_asks_missing_as_vendor_exports_spell_them_are_one_sided(tmp_path: Path) -> None:
    # 'N/A' and '#N/A' cells made the whole file unreadable ("not a number") instead of two
    # one-sided quotes for the filter to drop
    table = _chain(102.0, 0.98, 0.5, np.arange(80.0, 125.0, 5.0))
    price = table.pop("price")
    table["bid"], table["ask"] = (price - 0.01).astype(object), (price + 0.01).astype(object)
    table.loc[3, "ask"], table.loc[12, "bid"] = "N/A", "#N/A"
    path = tmp_path / "q.csv"
    table.to_csv(path, index=False)
    clean, report = clean_quotes(path)
    assert report.removed["one_sided"] == 2 and report.n_input == 18
    assert not clean["source_row"].isin([4, 13]).any()


def _option_metrics(strike_scale: float, types: tuple[str, ...] = ("call", "put")) -> pd.DataFrame:
    """An OptionMetrics-style export of one expiry: no spot, forward or maturity columns."""
    maturity = 182 / 365  # 2024-01-02 to 2024-07-02
    table = _chain(4500.0, 0.975, maturity, np.arange(4000.0, 5001.0, 100.0))
    table = table[table["option_type"].isin(types)]
    return pd.DataFrame({"date": "2024-01-02", "exdate": "2024-07-02",
                         "cp_flag": table["option_type"].str[0].str.upper(),
                         "strike_price": table["strike"] * strike_scale,
                         "best_bid": table["price"] - 0.05, "best_offer": table["price"] + 0.05})  # fmt: skip


def test_option_metrics_columns_give_parity_forwards(tmp_path: Path) -> None:
    # exdate, best_bid and best_offer were unknown columns: "needs column(s) maturity", and with
    # an expiry the prices were dropped as no_price
    path = tmp_path / "om.csv"
    _option_metrics(1.0).to_csv(path, index=False)
    implied = parity_forwards(read_quotes(path))
    np.testing.assert_allclose(implied["forward"], [4500.0], rtol=1e-10, atol=0)
    np.testing.assert_allclose(implied["discount"], [0.975], rtol=1e-10, atol=0)
    assert implied["source"].tolist() == ["parity"]
    clean, report = clean_quotes(path)
    k = np.log(clean["strike"] / 4500.0)
    np.testing.assert_allclose(clean["market_iv"], 0.2 - 0.1 * k, rtol=0, atol=1e-8)
    assert report.n_kept == 11


def test_option_metrics_strikes_times_1000_without_spot_are_refused(tmp_path: Path) -> None:
    # with no spot or forward to compare them with, strikes x 1000 gave a forward of 4.55e6
    # (parity with the rate's discount) and vols of a few percent, without a word
    path = tmp_path / "om.csv"
    _option_metrics(1000.0).to_csv(path, index=False)
    with pytest.raises(QuoteError, match=r"column 'strike': expiry T=0\.49863.*strikes times 1000"):
        clean_quotes(path)


def _whole_maturities(days: tuple[int, ...], per_year: float) -> pd.DataFrame:
    """Chains priced at ``days / per_year`` years whose ``maturity`` column says ``days``."""
    strikes = np.arange(80.0, 121.0, 5.0)
    chains = [_chain(100.0, 0.99, d / per_year, strikes).assign(maturity=float(d)) for d in days]
    return pd.concat(chains, ignore_index=True)


def test_maturities_in_days_read_as_years_are_noted() -> None:
    # 7, 30 and 91 days were read as years without a word (only above 100 is one refused), and
    # the prices' vols came out 19 times too small: 1.05% for 20%
    _, report = clean_quotes(_whole_maturities((7, 30, 91), 365.0))
    assert any(re.match(r"maturities are whole numbers \(7 to 91\) and the median implied vol "
                        r"of the prices is 1\.0\d%: days read as years", note)
               for note in report.notes), report.notes  # fmt: skip
    # whole years of real vols are years; so are days given with their expiry and quote date
    _, report = clean_quotes(_whole_maturities((10, 20, 30), 1.0))
    assert not any("whole numbers" in note for note in report.notes), report.notes


@pytest.mark.parametrize(
    ("strike_scale", "price_scale", "match"),
    [
        (100.0, 1.0, r"column 'strike': .*1/100 of a discount factor: strikes times 100"),
        (1.0, 100.0, r"97\.5 per unit of strike, 100 times a discount factor: prices times 100"),
    ],
)
def test_strikes_or_prices_times_100_without_spot_are_refused(
    tmp_path: Path, strike_scale: float, price_scale: float, match: str
) -> None:
    # strikes x 100 (an index in points, prices in hundredths of it) or prices per contract of
    # 100: parity's slope was rejected and the rate's discount gave forwards of about the
    # strikes, with vols of a few percent or none, without a word
    table = _option_metrics(strike_scale)
    table[["best_bid", "best_offer"]] *= price_scale
    path = tmp_path / "om.csv"
    table.to_csv(path, index=False)
    with pytest.raises(QuoteError, match=match):
        clean_quotes(path)


def test_a_noisy_parity_slope_is_not_taken_for_strike_units() -> None:
    # three pairs a strike apart whose C - P scatter by 0.5 fit a slope of -0.005, about 1/100
    # of a discount factor: noise (4 standard errors cover it), not strikes times 100
    diff = np.array([0.5, 0.0, 0.49])
    table = pd.DataFrame({"option_type": ["call"] * 3 + ["put"] * 3,
                          "strike": [100.0, 101.0, 102.0] * 2, "maturity": 1.0,
                          "price": np.concatenate([5.0 + diff, [5.0] * 3])})  # fmt: skip
    implied = parity_forwards(read_quotes(table))
    assert implied["source"].tolist() == ["parity_rate_discount"]
    np.testing.assert_allclose(implied["forward"], [101.0 + diff.mean()], rtol=1e-12, atol=0)


def test_stale_pairs_of_one_expiry_do_not_refuse_a_file_whose_strikes_fit_parity() -> None:
    # the 2.5y pairs' C - P falls by 0.17 over 5 strikes (stale quotes): a slope of 1/100 of a
    # discount factor, which refused the whole file as strikes times 100, though the 3-month
    # expiry's pairs fit a discount of 1 in its units
    near = [("call", k, 0.25, 5.1 + max(100.0 - k, 0.0)) for k in (90.0, 95.0, 100.0, 105.0)]
    near += [("put", k, 0.25, 5.1 + max(k - 100.0, 0.0)) for k in (90.0, 95.0, 100.0, 105.0)]
    stale = [("call", 100.0, 2.5, 20.0), ("put", 100.0, 2.5, 10.0), ("call", 105.0, 2.5, 19.0),
             ("put", 105.0, 2.5, 9.17)]  # fmt: skip
    table = pd.DataFrame(near + stale, columns=["option_type", "strike", "maturity", "price"])
    implied = parity_forwards(read_quotes(table))
    assert implied["source"].tolist() == ["parity", "parity_rate_discount"]
    # alone, the stale expiry is what strikes times 100 look like: refused
    with pytest.raises(QuoteError, match=r"T=2\.5: .*1/100 of a discount factor"):
        parity_forwards(read_quotes(table.iloc[len(near) :]))


def test_option_metrics_calls_alone_without_spot_name_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "om.csv"
    _option_metrics(1.0, ("call",)).to_csv(path, index=False)
    with pytest.raises(QuoteError, match=r"column 'spot'.*no call/put pairs.*give a spot"):
        clean_quotes(path)


HESTON = {"v0": 0.04, "kappa": 1.5, "theta": 0.05, "sigma": 0.6, "rho": -0.7}


def _heston_surface(tick: float, both_sides: bool = False) -> pd.DataFrame:
    """Out-of-the-money Heston quotes (calls and puts at every strike with ``both_sides``;
    arbitrage-free; S = 100, r = 3%, q = 1%) at bid/ask one tick either side of the price rounded
    to the tick, with exact forwards and discount factors; zero bids left out."""
    strikes = np.arange(60.0, 162.5, 2.5)
    rows = []
    for maturity in (0.25, 0.5, 1.0, 2.0):
        forward, discount = 100.0 * math.exp(0.02 * maturity), math.exp(-0.03 * maturity)
        for is_call in (True, False) if both_sides else (strikes >= forward,):
            is_call = np.broadcast_to(is_call, strikes.shape)
            price = heston.price(strike=torch.tensor(strikes), maturity=maturity, spot=100.0,
                                 rate=0.03, dividend=0.01, is_call=torch.tensor(is_call),
                                 dtype=torch.float64, **HESTON).numpy()  # fmt: skip
            mid = np.round(price / tick) * tick
            rows.append(pd.DataFrame({"option_type": np.where(is_call, "call", "put"),
                                      "strike": strikes, "maturity": maturity, "spot": 100.0,
                                      "forward": forward, "discount": discount,
                                      "bid": (mid - tick).round(10),
                                      "ask": (mid + tick).round(10)}))  # fmt: skip
    table = pd.concat(rows, ignore_index=True)
    return table[table["bid"] > 0].reset_index(drop=True)


def test_tick_rounded_arbitrage_free_surface_loses_no_quote_to_the_arbitrage_filters() -> None:
    # Mids rounded to 0.05 broke convexity by up to a tick; the mid-only check removed 4 quotes
    # that the bid/ask (one tick either side) explains.
    table = _heston_surface(tick=0.05)
    clean, report = clean_quotes(table)
    assert (report.removed["strike_arbitrage"], report.removed["calendar_arbitrage"]) == (0, 0)
    assert len(clean) == len(table)


def test_injected_violations_on_a_tick_rounded_surface_are_exactly_the_ones_removed() -> None:
    table = _heston_surface(tick=0.05)
    dear = int(np.flatnonzero((table["maturity"] == 0.5) & (table["strike"] == 110.0))[0])
    cheap = int(np.flatnonzero((table["maturity"] == 1.0) & (table["strike"] == 85.0))[0])
    table.loc[dear, ["bid", "ask"]] += 0.5  # concave at 110
    table.loc[cheap, ["bid", "ask"]] *= 0.6  # far below its neighbours and the 6m smile
    clean, report = clean_quotes(table)
    assert (report.removed["strike_arbitrage"], report.removed["calendar_arbitrage"]) == (2, 0)
    assert set(range(1, len(table) + 1)) - set(clean["source_row"]) == {dear + 1, cheap + 1}


def test_prices_rounded_to_a_tick_pass_with_a_tolerance_of_a_tick_over_the_forward() -> None:
    # Without bid/ask, the tolerance must cover the rounding: it did for call prices in strike,
    # but the calendar check compared total variances only, and a rounded wing price is many
    # variance percent off (1 clean quote removed).
    table = _heston_surface(tick=0.05, both_sides=True)
    table = table.assign(price=(table["bid"] + table["ask"]) / 2).drop(columns=["bid", "ask"])
    _, report = clean_quotes(table, tolerance=0.05 / 100.0)
    assert (report.removed["strike_arbitrage"], report.removed["calendar_arbitrage"]) == (0, 0)


def _slope_sd(strikes: np.ndarray, tick: float) -> float:
    """Standard deviation of a least-squares slope through ``C - P`` at ``strikes`` when each
    price is rounded to ``tick`` (two independent uniform errors: variance tick^2 / 6)."""
    return tick / math.sqrt(6.0) / math.sqrt(float(np.sum((strikes - strikes.mean()) ** 2)))


def test_parity_discounts_from_tick_rounded_quotes_are_as_good_as_the_rounding_allows() -> None:
    # Six adjacent pairs 2.5 apart span 12.5: the 1y discount came out 0.9657 against 0.9704, and
    # deep in-the-money puts turned into calls by parity were 0.2 too dear (5 clean quotes removed
    # as strike or calendar arbitrage).
    tick, band, n_sd = 0.05, 0.2, 4.0
    table = _heston_surface(tick=tick, both_sides=True)
    exact = table.groupby("maturity")[["forward", "discount"]].first()
    quotes = table.drop(columns=["forward", "discount"])
    implied = parity_forwards(read_quotes(quotes)).set_index("maturity")
    assert (implied["source"] == "parity").all()
    for maturity, row in implied.iterrows():
        pairs = quotes[quotes["maturity"] == maturity].groupby("strike")["option_type"].nunique()
        strikes = pairs.index[pairs == 2].to_numpy(float)
        forward, discount = exact.loc[maturity]
        strikes = strikes[np.abs(strikes / forward - 1) <= band]  # the pairs near the money
        discount_atol = n_sd * _slope_sd(strikes, tick)
        # the intercept at the strikes' mean: a mean of len(strikes) rounded differences
        forward_atol = n_sd * tick / math.sqrt(6.0 * len(strikes)) / discount
        np.testing.assert_allclose(row["discount"], discount, rtol=0, atol=discount_atol)
        np.testing.assert_allclose(row["forward"], forward, rtol=0, atol=forward_atol)
    _, report = clean_quotes(quotes)
    assert (report.removed["strike_arbitrage"], report.removed["calendar_arbitrage"]) == (0, 0)


def test_parity_weights_pairs_by_their_bid_ask_spreads() -> None:
    # A wide quote whose mid sits well inside its spread (but off the price) pulled the
    # unweighted fit as hard as the tight quotes: D off by 0.01.
    table = _chain(102.0, 0.98, 0.5, np.arange(90.0, 120.0, 5.0))
    table["bid"], table["ask"] = table["price"] - 0.05, table["price"] + 0.05
    wide = (table["option_type"] == "call") & (table["strike"] == 110.0)
    table.loc[wide, "bid"] = table.loc[wide, "price"] - 0.5
    table.loc[wide, "ask"] = table.loc[wide, "price"] + 1.5  # mid 0.5 above the price
    implied = parity_forwards(read_quotes(table.drop(columns="price")))
    # weights 1 / spread: the wide pair counts 1/200 of a tight one, its 0.5 pulls D by < 1e-4
    np.testing.assert_allclose(implied["discount"], [0.98], rtol=0, atol=1e-4)
    np.testing.assert_allclose(implied["forward"], [102.0], rtol=0, atol=1e-2)


def test_a_put_file_concave_through_the_origin_loses_its_far_put(tmp_path: Path) -> None:
    # each put has a vol, and neighbours alone are monotone (no butterfly of quotes): 2 P(50) -
    # P(100) pays nothing positive yet costs 5, and the file was kept whole
    path = tmp_path / "puts.csv"
    pd.DataFrame({"option_type": "P", "strike": [50.0, 100.0, 110.0], "maturity": 1.0,
                  "price": [10.0, 15.0, 20.0], "forward": 100.0, "discount": 1.0}).to_csv(
        path, index=False)  # fmt: skip
    clean, report = clean_quotes(path, moneyness_range=(0.1, 10.0))
    assert report.removed["strike_arbitrage"] == 1
    assert clean["strike"].tolist() == [100.0, 110.0]


def test_quotes_of_two_quote_dates_are_refused_naming_the_row(tmp_path: Path) -> None:
    # two days' 30-day expiries (spots 100 and 120) were one expiry: one parity forward between
    # the two spots for both days, and the second day's strike 110 call dropped as a repeat
    days = []
    for quote_date, expiry, forward in (("2024-01-05", "2024-02-04", 100.0),
                                        ("2024-01-08", "2024-02-07", 120.0)):  # fmt: skip
        chain = _chain(forward, 1.0, 30 / 365, np.array([90.0, 110.0, 130.0]))
        days.append(chain.drop(columns="maturity").assign(date=quote_date, exdate=expiry))
    path = tmp_path / "two_days.csv"
    pd.concat(days, ignore_index=True).to_csv(path, index=False)
    message = (r"row 7 \(file line 8\), column 'quote_date': a second quote date, 2024-01-08 "
               r"\(2024-01-05 in row 1\)")  # fmt: skip
    with pytest.raises(QuoteError, match=message):
        clean_quotes(path)
    with pytest.raises(QuoteError, match=message):
        attach_forwards(read_quotes(path))  # qfnet iv
    with pytest.raises(QuoteError, match=message):
        prepare_quotes(read_quotes(path))  # qfnet calibrate --no-clean
    one_day = read_quotes(path).iloc[:6].assign(quote_date=["2024-01-05", "2024-01-05 15:30"] * 3)
    assert attach_forwards(one_day)[0]["forward"].to_numpy() == pytest.approx(100.0, rel=1e-9)
    # one day written two ways (day-first as read_quotes(dayfirst=True) read it, and ISO) is one
    # date: it was read month-first here alone, May 1 beside January 5
    mixed = one_day.assign(quote_date=["05/01/2024", "2024-01-05"] * 3)
    assert attach_forwards(mixed)[0]["forward"].to_numpy() == pytest.approx(100.0, rel=1e-9)


def test_clean_quotes_of_a_path_reads_ambiguous_dates_as_dayfirst_says(tmp_path: Path) -> None:
    # clean_quotes(path) read the file itself with no way to settle dates that read either way
    # (03/01/2024 to 05/06/2024: 154 days day-first, 66 month-first)
    table = _chain(100.0, 0.99, 0.5, np.linspace(80.0, 120.0, 9)).drop(columns="maturity")
    path = tmp_path / "q.csv"
    table.assign(quote_date="03/01/2024", expiry="05/06/2024").to_csv(path, index=False)
    with pytest.raises(QuoteError, match=r"or pass read_quotes\(\.\.\., dayfirst=True/False\)"):
        clean_quotes(path)
    for dayfirst, days in ((True, 154), (False, 66)):
        clean, _ = clean_quotes(path, dayfirst=dayfirst)
        np.testing.assert_allclose(clean["maturity"], days / 365, rtol=1e-12)


def _both_sides_chain(maturity: float, strikes: np.ndarray, forward: float) -> pd.DataFrame:
    """Calls (bid/ask 0.02 wide) and puts (0.04 wide) around exact Black prices of a curved
    smile (0.2 - 0.1 k + 0.5 k^2), discount 0.97."""
    k = np.log(strikes / forward)
    vol = torch.tensor(0.2 - 0.1 * k + 0.5 * k**2)
    rows = []
    for option_type, half in (("call", 0.01), ("put", 0.02)):
        price = black_price(forward=forward, strike=torch.tensor(strikes), maturity=maturity,
                            volatility=vol, discount=0.97,
                            is_call=option_type == "call").numpy()  # fmt: skip
        rows.append(pd.DataFrame({"option_type": option_type, "strike": strikes,
                                  "bid": price - half, "ask": price + half}))  # fmt: skip
    return pd.concat(rows).assign(maturity=maturity, forward=forward, discount=0.97)


def test_calendar_check_with_both_sides_kept_removes_no_clean_quote() -> None:
    # A call and a put at each coarse 1y strike (their bid vols a little apart) made two smile
    # nodes at one k: 30 of 50 clean quotes 1.02y out were removed as calendar arbitrage.
    table = pd.concat([_both_sides_chain(1.0, np.arange(70.0, 131.0, 15.0), 100.0),
                       _both_sides_chain(1.02, np.arange(70.0, 131.0, 2.5), 100.5)])  # fmt: skip
    _, report = clean_quotes(table, otm_only=False)
    assert (report.removed["strike_arbitrage"], report.removed["calendar_arbitrage"]) == (0, 0)


def test_in_the_money_bids_below_intrinsic_leave_the_calendar_check_alone() -> None:
    # Wide in-the-money quotes (bid below intrinsic, mid 0.3 above the price): the unreadable
    # bid's vol was taken as the mid's, which held later expiries to a smile 0.3 too dear and
    # removed 13 clean quotes.
    table = _heston_surface(tick=0.05, both_sides=True)
    is_call = table["option_type"] == "call"
    itm = (is_call & (table["strike"] < table["forward"])) | (
        ~is_call & (table["strike"] > table["forward"])
    )
    intrinsic = table["discount"] * (table["forward"] - table["strike"]).abs()
    mid = (table["bid"] + table["ask"]) / 2
    bid = (intrinsic - 0.05).where(itm, table["bid"])
    table["ask"] = (2 * (mid + 0.3) - bid).where(itm, table["ask"]).round(10)
    table["bid"] = bid.round(10)
    _, report = clean_quotes(table, otm_only=False)
    assert (report.removed["strike_arbitrage"], report.removed["calendar_arbitrage"]) == (0, 0)


def test_cleaning_a_cleaned_table_removes_nothing_more() -> None:
    # The 1y calls 95, 100, 105 rise by 0.06 a strike at mid, within bid/asks 0.1 wide; the
    # calendar check removed 100 (below the 6m quote) after the strike check, which left 95 (ask
    # 6.05) beside 105 (bid 6.07): a call spread paid to hold, which cleaning the output removed.
    table = pd.DataFrame({"strike": [100.0, 90.0, 95.0, 100.0, 105.0],
                          "maturity": [0.5, 1.0, 1.0, 1.0, 1.0],
                          "mid": [6.5, 10.5, 6.0, 6.06, 6.12]})  # fmt: skip
    table = table.assign(bid=table["mid"] - 0.05, ask=table["mid"] + 0.05, option_type="call",
                         forward=100.0, discount=1.0).drop(columns="mid")  # fmt: skip
    clean, report = clean_quotes(table)
    assert (report.removed["strike_arbitrage"], report.removed["calendar_arbitrage"]) == (1, 1)
    again, report = clean_quotes(clean.drop(columns="source_row"))
    assert sum(report.removed.values()) == 0
    assert len(again) == len(clean) == 3


def _noisy_heston_pairs(maturities: tuple[float, ...], spread: float, seed: int) -> pd.DataFrame:
    """Calls and puts at every strike of a Heston surface (S = 100, r = 3%, q = 1%, a ``rate``
    column) quoted ``spread`` wide with the price uniformly inside: mids off by up to half of
    it; zero bids left out."""
    rng = np.random.default_rng(seed)
    strikes, rows = np.arange(70.0, 132.5, 2.5), []
    for maturity in maturities:
        for is_call in (True, False):
            price = heston.price(strike=torch.tensor(strikes), maturity=maturity, spot=100.0,
                                 rate=0.03, dividend=0.01, is_call=is_call, dtype=torch.float64,
                                 **HESTON).numpy()  # fmt: skip
            below = rng.uniform(size=len(strikes)) * spread
            rows.append(pd.DataFrame({"option_type": "call" if is_call else "put",
                                      "strike": strikes, "maturity": maturity,
                                      "bid": price - below, "ask": price - below + spread}))  # fmt: skip
    table = pd.concat(rows, ignore_index=True).assign(spot=100.0, rate=0.03, dividend=0.01)
    return table[table["bid"] > 0].reset_index(drop=True)


def test_a_short_expiry_parity_slope_within_noise_of_the_rate_takes_the_rate_discount() -> None:
    # 7 days of quotes noisy inside a 0.2 spread fit D = 0.983 against 0.9994 (a rate inside
    # PARITY_RATES): in-the-money quotes turned into out-of-the-money ones by parity with it came
    # out up to 0.06 off, and 6 clean quotes were removed as strike or calendar arbitrage
    spread, n_sd = 0.2, 4.0
    table = _noisy_heston_pairs((7 / 365, 14 / 365, 0.25), spread, seed=0)
    implied = parity_forwards(read_quotes(table)).set_index("maturity")
    assert (implied["source"] == "parity_rate_discount").all()
    maturity = implied.index.to_numpy()
    np.testing.assert_allclose(implied["discount"], np.exp(-0.03 * maturity), rtol=1e-12, atol=0)
    for t, forward in implied["forward"].items():
        near = table[(table["maturity"] == t) & ((table["strike"] / 100.0 - 1).abs() <= 0.2)]
        n_pairs = int((near.groupby("strike")["option_type"].nunique() == 2).sum())
        # C - P of two mids uniform within the spread: variance spread^2 / 6
        atol = n_sd * spread / math.sqrt(6.0 * n_pairs) / math.exp(-0.03 * t)
        np.testing.assert_allclose(forward, 100.0 * math.exp(0.02 * t), rtol=0, atol=atol)
    _, report = clean_quotes(table)
    assert (report.removed["strike_arbitrage"], report.removed["calendar_arbitrage"]) == (0, 0)


def test_a_parity_slope_beyond_noise_of_a_stale_rate_keeps_its_own_discount() -> None:
    # a rate column of 0 where the pairs say 3% over 2 years: the rate is what is wrong
    table = _chain(104.0, math.exp(-0.06), 2.0, np.arange(70.0, 135.0, 5.0)).assign(rate=0.0)
    table["bid"], table["ask"] = table["price"] - 0.05, table["price"] + 0.05
    implied = parity_forwards(read_quotes(table.drop(columns="price")))
    assert implied["source"].tolist() == ["parity"]
    np.testing.assert_allclose(implied["discount"], [math.exp(-0.06)], rtol=1e-10, atol=0)


def test_a_defaulted_rate_does_not_replace_a_noisy_parity_discount() -> None:
    # without a rate column the rate of 0 is no information: the slope keeps its discount
    table = _noisy_heston_pairs((7 / 365,), 0.2, seed=0).drop(columns=["rate", "dividend"])
    implied = parity_forwards(read_quotes(table))
    assert implied["source"].tolist() == ["parity"]
    # through the cleaning too (its filters copy the table: the record of the defaulted rate stays)
    _, report = clean_quotes(table)
    assert report.forward_sources == {"parity": 1}


def test_cleaning_a_table_read_before_keeps_its_defaulted_rate() -> None:
    # read_quotes' zero rate was taken for a given one on the second reading: three pairs whose
    # slope is within noise of 1 took the rate-0 discount, 1.0 for parity's 0.985
    diff = np.array([1.0, 0.03, -0.97])
    table = pd.DataFrame({"option_type": ["call"] * 3 + ["put"] * 3,
                          "strike": [100.0, 101.0, 102.0] * 2, "maturity": 0.5, "spot": 101.0,
                          "price": np.concatenate([5.0 + diff, [5.0] * 3])})  # fmt: skip
    clean, report = clean_quotes(table)
    again, again_report = clean_quotes(read_quotes(table))
    np.testing.assert_allclose(again["discount"], clean["discount"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(clean["discount"], 0.985, rtol=1e-9, atol=0)
    assert again_report.forward_sources == report.forward_sources == {"parity": 1}
    # the note on spot forwards at a rate of 0 stays too
    calls = read_quotes(table[table["option_type"] == "call"])
    assert any(
        note.startswith("no rate or dividend column") for note in clean_quotes(calls)[1].notes
    )


def test_prepare_quotes_reads_a_table_of_canonical_names_without_a_rate() -> None:
    # taken for a read table (canonical names, floats), it failed in parity forwards with
    # "needs column(s) rate, dividend"
    table = pd.DataFrame({"option_type": ["call", "put"], "strike": 100.0, "maturity": 1.0,
                          "price": [9.0, 4.0]})  # fmt: skip
    prepared, sources = prepare_quotes(table)
    assert sources == {"parity_one_pair": 1}
    np.testing.assert_allclose(prepared["forward"], 105.0, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("strike_scale", "price_scale", "match"),
    [
        (
            100.0,
            1.0,
            r"column 'strike': expiry T=10: .*1/100 of a discount factor: strikes times 100",
        ),
        (1.0, 100.0, r"expiry T=10: .*100 times a discount factor: prices times 100"),
    ],
)
def test_strikes_or_prices_times_100_of_a_long_expiry_are_refused_by_its_rate(
    strike_scale: float, price_scale: float, match: str
) -> None:
    # beyond ln(100) / (1 - r) = 4.7 years, 1/100 of a discount factor is one of a rate inside
    # PARITY_RATES (100 times one beyond ln(100) / (0.5 + r) = 8.7 years): parity took a discount
    # of 0.0074 (forward 6.1e5) or 74, beside a rate of 3% whose discount is 0.74
    maturity, rate = 10.0, 0.03
    forward, discount = 4500.0 * math.exp(rate * maturity), math.exp(-rate * maturity)
    table = _chain(forward, discount, maturity, np.arange(4000.0, 5001.0, 100.0))
    table = table.drop(columns="spot").assign(rate=rate)
    implied = parity_forwards(read_quotes(table))
    np.testing.assert_allclose(implied["forward"], forward, rtol=1e-9, atol=0)
    table["strike"] *= strike_scale
    table["price"] *= price_scale
    with pytest.raises(QuoteError, match=match):
        parity_forwards(read_quotes(table))


@pytest.mark.parametrize(
    ("strike_scale", "price_scale", "match"),
    [
        (100.0, 1.0, r"column 'strike': expiry T=1: .*1/100 of a discount factor"),
        (1.0, 100.0, r"expiry T=1: .*100 times a discount factor: prices times 100"),
    ],
)
def test_strikes_or_prices_times_100_beside_a_long_expiry_without_a_rate_are_refused(
    strike_scale: float, price_scale: float, match: str
) -> None:
    # the 1y slope is 1/100 (100 times) a discount factor, but the 10y one, a discount of a
    # rate of 49% (-43%) in these units, counted as an expiry fitting parity: the file passed, its
    # 1y forward taken with a discount of 1 (450,133, where 463,705 fits its parity)
    rate, chains = 0.03, []
    for maturity in (1.0, 10.0):
        forward, discount = 4500.0 * math.exp(rate * maturity), math.exp(-rate * maturity)
        chains.append(_chain(forward, discount, maturity, np.arange(4000.0, 5001.0, 100.0)))
    table = pd.concat(chains, ignore_index=True).drop(columns="spot")
    assert parity_forwards(read_quotes(table))["source"].tolist() == ["parity", "parity"]
    table["strike"] *= strike_scale
    table["price"] *= price_scale
    with pytest.raises(QuoteError, match=match):
        parity_forwards(read_quotes(table))


def _otm_expiry(days: int, variance_days: int) -> pd.DataFrame:
    """Out-of-the-money quotes of ``days`` (S = 100, r = 3%, q = 1%; smile 0.2 - 0.1 k) priced
    with the total variance of ``variance_days``, bid/ask 0.01 either side of a cent-rounded
    mid."""
    maturity, strikes = days / 365, np.arange(80.0, 121.0, 2.5)
    forward, discount = 100.0 * math.exp(0.02 * maturity), math.exp(-0.03 * maturity)
    is_call = strikes >= forward
    k = np.log(strikes / forward)
    price = black_price(forward=forward, strike=torch.tensor(strikes), maturity=variance_days / 365,
                        volatility=torch.tensor(0.2 - 0.1 * k), discount=discount,
                        is_call=torch.tensor(is_call)).numpy()  # fmt: skip
    mid = np.round(price, 2)
    return pd.DataFrame({"option_type": np.where(is_call, "call", "put"), "strike": strikes,
                         "maturity": maturity, "forward": forward, "discount": discount,
                         "bid": (mid - 0.01).round(10), "ask": (mid + 0.01).round(10)})  # fmt: skip


def test_the_calendar_check_takes_an_expiry_as_the_strike_check_does() -> None:
    # the 91-day puts' maturity written as 0.249315 (1e-7 off 91/365): one expiry for the strike
    # check and the forwards, two for the calendar check, and the 120-day quote between the last
    # put and the first call strike of 91 days, compared with neither side's range, was kept
    early, late = _otm_expiry(91, 91), _otm_expiry(120, 80)  # 120 days below 91 days' smile
    early.loc[early["option_type"] == "put", "maturity"] = 0.249315
    table = pd.concat([early, late], ignore_index=True)
    exact = pd.concat([early.assign(maturity=91 / 365), late], ignore_index=True)
    clean, report = clean_quotes(table)
    expected, expected_report = clean_quotes(exact)
    assert report.removed["calendar_arbitrage"] == expected_report.removed["calendar_arbitrage"]
    assert clean["source_row"].tolist() == expected["source_row"].tolist()


def test_a_stale_near_the_money_pair_is_left_out_of_the_parity_regression() -> None:
    # A put at 1.6 times its value (bid and ask) took part in the parity regression: the forward
    # of its expiry moved by 0.05 (100.153 for 100.2), and a clean quote was removed as strike
    # arbitrage beside it.
    spread, maturity = 0.05, 0.1
    table = _noisy_heston_pairs((0.03, maturity), spread, seed=1)
    stale = table.index[(table["maturity"] == maturity) & (table["option_type"] == "put")
                        & (table["strike"] == 97.5)]  # fmt: skip
    table.loc[stale, ["bid", "ask"]] *= 1.6
    implied = parity_forwards(read_quotes(table)).set_index("maturity")
    forward = 100.0 * math.exp(0.02 * maturity)
    n_pairs = 17  # strikes 82.5 to 122.5 within PARITY_BAND, the stale one left out
    atol = 4.0 * spread / math.sqrt(6.0 * n_pairs) / math.exp(-0.03 * maturity)
    np.testing.assert_allclose(implied.loc[maturity, "forward"], forward, rtol=0, atol=atol)
    clean, report = clean_quotes(table)
    assert report.removed["strike_arbitrage"] + report.removed["calendar_arbitrage"] == 1
    assert stale[0] + 1 not in clean["source_row"].tolist()


def test_a_stale_pair_quoted_tighter_than_the_others_is_the_one_left_out() -> None:
    # Its weight pulled the line of all the pairs, its own among them, onto it: clean pairs
    # missed that line instead and were left out, and the forward came out 102.59 (D 0.907) for
    # 103 (0.95), further off than with every pair kept.
    table = _chain(103.0, 0.95, 1.0, np.arange(90.0, 120.0, 5.0))
    tight = table["strike"] == 100.0
    half = np.where(tight, 0.01, 0.1)
    table["bid"], table["ask"] = table["price"] - half, table["price"] + half
    stale = tight & (table["option_type"] == "put")
    table.loc[stale, ["bid", "ask"]] += 0.5
    table = table.drop(columns="price")
    implied = parity_forwards(read_quotes(table))
    np.testing.assert_allclose(implied["forward"], 103.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(implied["discount"], 0.95, rtol=0, atol=1e-12)
    clean, report = clean_quotes(table)
    assert report.removed["strike_arbitrage"] == 1  # the stale put, out of the money
    assert int(np.flatnonzero(stale)[0]) + 1 not in clean["source_row"].tolist()


def test_a_tight_stale_edge_pair_is_left_out_beside_noisy_clean_pairs() -> None:
    # The pair whose removal lowered the weighted squared misses most was a clean one within
    # its spread, and the loop stopped there: the 110 pair, quoted tight and 7 of its half
    # widths off the line of the others (its leverage high), stayed in, and the forward came
    # out 99.84 with a discount of 1.011 for 100 and 0.99.
    table = _chain(100.0, 0.99, 1.0, np.arange(90.0, 115.0, 5.0))
    put = table["option_type"] == "put"
    table.loc[put, "price"] += [0.07, -0.05, -0.02, 0.11, 0.38]  # within the spreads but 110's
    spread = np.r_[0.21, 0.08, 0.26, 0.29, 0.05, 0.08, 0.21, 0.29, 0.23, 0.05]
    table["bid"], table["ask"] = table["price"] - spread / 2, table["price"] + spread / 2
    implied = parity_forwards(read_quotes(table.drop(columns="price")))
    np.testing.assert_allclose(implied["forward"], 100.0, rtol=0, atol=0.03)
    np.testing.assert_allclose(implied["discount"], 0.99, rtol=0, atol=0.001)
