"""Quote-table loading: column aliases, option types, year fractions, validation errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pricing.quotes import QuoteError, forward_and_discount, read_quotes, require_columns

DATA_DIR = Path(__file__).parents[1] / "data"
DAX_FILE = Path(__file__).parents[2] / "data" / "dax_2002_sepp" / "implied_vols.csv"


def _dax_file() -> Path:
    return DAX_FILE


def test_bundled_dax_surface_loads_with_canonical_columns() -> None:
    quotes = read_quotes(_dax_file())
    assert len(quotes) == 104
    assert "option_type" not in quotes  # the source gives implied vols only
    for column in ("strike", "maturity", "spot", "rate", "dividend", "implied_vol"):
        assert quotes[column].dtype == np.float64, column
    assert quotes["maturity"].nunique() == 8
    assert quotes["strike"].nunique() == 13
    raw = pd.read_csv(_dax_file())
    np.testing.assert_allclose(quotes["rate"], raw["zero_rate"], rtol=0, atol=0)
    np.testing.assert_allclose(quotes["maturity"], raw["expiry_days"] / 365.0, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("Type", "option_type"),
        (" CP ", "option_type"),
        ("call_put", "option_type"),
        ("T", "maturity"),
        ("tau", "maturity"),
        ("Zero Rate", "rate"),
        ("dividend_yield", "dividend"),
        ("div", "dividend"),
        ("IV", "implied_vol"),
        ("vol", "implied_vol"),
        ("K", "strike"),
        ("best_bid", "bid"),  # OptionMetrics' names: its prices were dropped as unknown columns
        ("best_offer", "ask"),
        ("Call/Put", "option_type"),  # a slash read as part of the name: the column was ignored
        ("Put/Call", "option_type"),
        ("C/P", "option_type"),
        ("Option Style", "exercise"),  # its 'American' was ignored
    ],
)
def test_column_aliases_are_case_insensitive(name: str, canonical: str) -> None:
    table = pd.DataFrame({"strike": [100.0], "maturity": [1.0], "spot": [100.0]})
    table = table.drop(columns=[canonical], errors="ignore")
    table[name] = ["C"] if canonical == "option_type" else [0.5]
    assert canonical in read_quotes(table).columns


def test_unrecognised_columns_keep_their_names_as_given(tmp_path: Path) -> None:
    # they came back lower-cased and underscored ('Open Interest' as 'open_interest'), though
    # documented as kept unchanged; two differing only in case were refused as one meaning
    path = tmp_path / "q.csv"
    path.write_text("Strike,T,Spot,Open Interest, Vendor ID ,vendor id,Exercise\n"
                    "100,1,100,5,x,y,European\n")  # fmt: skip
    quotes = read_quotes(path)
    assert list(quotes.columns)[:7] == ["strike", "maturity", "spot", "Open Interest",
                                        "Vendor ID", "vendor id", "exercise"]  # fmt: skip
    assert quotes["Open Interest"].tolist() == [5]
    # two unnamed columns (a MultiIndex written by to_csv) were "columns '' and '' both mean ''"
    path.write_text(",,strike,T,spot\n0,1,100,1,100\n")
    assert list(read_quotes(path).columns)[:2] == ["Unnamed: 0", "Unnamed: 1"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("C", "call"), ("p", "put"), ("Call", "call"), ("PUT", "put"), (" c ", "call")],
)
def test_option_type_spellings_map_to_call_or_put(raw: str, expected: str) -> None:
    table = pd.DataFrame({"option_type": [raw], "strike": [1.0], "maturity": [1.0], "spot": [1.0]})
    assert read_quotes(table)["option_type"].tolist() == [expected]


def test_an_integer_option_type_is_named_as_the_file_has_it() -> None:
    # a Parquet column of integers was reported as "unknown option type np.int64(1)"
    table = pd.DataFrame({"option_type": [1], "strike": [1.0], "maturity": [1.0], "spot": [1.0]})
    with pytest.raises(QuoteError, match=r"unknown option type 1 \(expected call/put"):
        read_quotes(table)


def test_a_semicolon_separated_file_is_named_as_such(tmp_path) -> None:
    # the message was "3 fields, but the header has 1 columns", with no hint of the separator
    path = tmp_path / "eu.csv"
    path.write_text("strike;maturity;implied_vol\n100;1,0;0,2\n")
    with pytest.raises(QuoteError, match="separated by semicolons"):
        read_quotes(path)


@pytest.mark.parametrize(("separator", "name"), [("\t", "tabs"), ("|", "pipes")])
def test_a_tab_or_pipe_separated_file_is_named_as_such(tmp_path, separator, name) -> None:
    # one column named after the whole header: "needs column(s) strike, maturity; the table
    # has strike_maturity_implied_vol"
    path = tmp_path / "export.csv"
    path.write_text(separator.join(["strike", "maturity", "implied_vol"]) + "\n100" + separator
                    + "1.0" + separator + "0.2\n")  # fmt: skip
    with pytest.raises(QuoteError, match=f"separated by {name}"):
        read_quotes(path)


def test_calls_and_puts_side_by_side_are_named_as_such(tmp_path) -> None:
    # an exchange's chain (calls left of the strike, puts right) was refused as "column 'Ask'
    # appears more than once", with no word of the layout it needs
    path = tmp_path / "chain.csv"
    path.write_text("Expiration Date,Calls,Bid,Ask,Strike,Puts,Bid,Ask\n"
                    "2024-06-21,SPXC5000,449.5,451.2,5000,SPXP5000,20,20.4\n")  # fmt: skip
    with pytest.raises(QuoteError, match=r"'Ask' appears more than once.*calls and puts side by "
                                         r"side.*one row per option"):  # fmt: skip
        read_quotes(path)


def test_maturity_from_expiry_and_quote_date_is_act_365f() -> None:
    table = pd.DataFrame(
        {
            "expiry": ["2025-06-20", "2026-03-20"],
            "quote_date": ["2025-03-21", "2025-03-21"],
            "strike": [100.0, 100.0],
            "spot": [100.0, 100.0],
        }
    )
    quotes = read_quotes(table)
    np.testing.assert_allclose(quotes["maturity"], [91 / 365, 364 / 365], rtol=1e-15, atol=0)


def test_rate_and_dividend_default_to_zero_and_input_is_not_modified() -> None:
    table = pd.DataFrame({"K": [100.0], "T": [1.0], "S": [100.0]})
    quotes = read_quotes(table)
    assert quotes["rate"].tolist() == [0.0]
    assert quotes["dividend"].tolist() == [0.0]
    assert list(table.columns) == ["K", "T", "S"]


def test_a_parquet_files_or_dataframes_own_columns_keep_their_values(tmp_path: Path) -> None:
    # text columns of numerals came back as numbers ('0700', a Hong Kong ticker, as 700; '001'
    # as 1) and durations as nanoseconds: pd.read_csv's inference, meant for CSV text only
    table = pd.DataFrame({"strike": [100.0, 95.0], "T": 0.5, "spot": 100.0,
                          "ticker": ["0700", "0005"], "settle": pd.to_timedelta([1, 2], "D")})  # fmt: skip
    table.to_parquet(tmp_path / "q.parquet", index=False)
    for source in (table, tmp_path / "q.parquet"):
        quotes = read_quotes(source)
        assert quotes["ticker"].tolist() == ["0700", "0005"]
        pd.testing.assert_series_equal(quotes["settle"], table["settle"])


def test_a_dataframes_vol_columns_in_text_are_read_as_numbers() -> None:
    # a DataFrame's bid_iv and ask_iv in text ("0.24") stayed text: clean_quotes failed on
    # "operation 'pow' not supported for dtype 'str'" and spread weights on 'sub'
    table = pd.DataFrame({"strike": [90.0, 110.0], "T": 1.0, "spot": 100.0, "iv": [0.25, 0.2],
                          "bid_iv": ["0.24", "0.19"], "ask_iv": ["0.26", "0.21"],
                          "market_iv": ["0.25", "0.2"], "ticker": ["0700", "0005"]})  # fmt: skip
    quotes = read_quotes(table)
    for column in ("bid_iv", "ask_iv", "market_iv"):
        assert quotes[column].dtype == np.float64, column
    np.testing.assert_allclose(quotes["bid_iv"], [0.24, 0.19], rtol=0, atol=0)
    assert quotes["ticker"].tolist() == ["0700", "0005"]


def test_parquet_and_csv_give_the_same_table(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {"cp": ["C", "P"], "strike": [90.0, 110.0], "T": [0.5, 1.0], "spot": [100.0, 100.0]}
    )
    table.to_csv(tmp_path / "q.csv", index=False)
    table.to_parquet(tmp_path / "q.parquet", index=False)
    from_csv = read_quotes(tmp_path / "q.csv")
    from_parquet = read_quotes(tmp_path / "q.parquet")
    pd.testing.assert_frame_equal(from_csv, from_parquet, check_dtype=False)


def test_non_numeric_cell_names_row_file_line_and_column() -> None:
    with pytest.raises(QuoteError, match=r"row 3 \(file line 5\), column 'strike'.*'1O5'") as info:
        read_quotes(DATA_DIR / "quotes_bad_nonnumeric.csv")
    assert (info.value.row, info.value.line, info.value.column) == (3, 5, "strike")


def test_unknown_option_type_names_row_and_value() -> None:
    with pytest.raises(QuoteError, match=r"row 3 \(file line 4\), column 'option_type'.*straddle"):
        read_quotes(DATA_DIR / "quotes_bad_option_type.csv")


def test_crossed_quote_raises_unless_allowed() -> None:
    path = DATA_DIR / "quotes_bad_crossed.csv"
    with pytest.raises(QuoteError, match=r"row 2 \(file line 3\), column 'bid'.*crossed"):
        read_quotes(path)
    quotes = read_quotes(path, allow_crossed=True)
    assert len(quotes) == 2


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("strike", -5.0, "must be > 0"),
        ("maturity", 0.0, "must be > 0"),
        ("spot", 0.0, "must be > 0"),
        ("implied_vol", -0.2, "must be > 0"),
        ("volatility", -0.2, "must be >= 0"),
        ("bid", -1.0, "must be >= 0"),
        ("strike", np.nan, "missing value"),
        ("rate", np.nan, "missing value"),
    ],
)
def test_invalid_values_name_the_row_and_column(column: str, value: float, message: str) -> None:
    table = pd.DataFrame(
        {
            "strike": [100.0, 100.0],
            "maturity": [1.0, 1.0],
            "spot": [100.0, 100.0],
            "rate": [0.01, 0.01],
            "implied_vol": [0.2, 0.2],
            "volatility": [0.2, 0.2],
            "bid": [1.0, 1.0],
        }
    )
    table.loc[1, column] = value
    with pytest.raises(QuoteError, match=rf"row 2, column '{column}': {message}"):
        read_quotes(table)


def test_a_zero_volatility_is_read_as_the_pricers_take_it() -> None:
    # black_price and QuantLib price volatility 0 (the discounted intrinsic value) and --params
    # took it, but the file's column was refused: "must be > 0"
    table = pd.DataFrame({"strike": [90.0, 110.0], "maturity": 1.0, "spot": 100.0,
                          "rate": 0.03, "volatility": [0.0, 0.2]})  # fmt: skip
    assert read_quotes(table)["volatility"].tolist() == [0.0, 0.2]


def test_shifted_strike_may_be_negative_when_strike_plus_shift_is_positive() -> None:
    table = pd.DataFrame(
        {"strike": [-0.005, -0.01], "maturity": [1.0, 1.0], "spot": [0.01, 0.01], "shift": 0.01}
    )
    with pytest.raises(QuoteError, match=r"row 2, column 'strike'.*shift"):
        read_quotes(table)
    assert len(read_quotes(table.iloc[:1])) == 1


def test_unparseable_expiry_names_row_and_column() -> None:
    table = pd.DataFrame(
        {
            "expiry": ["2025-06-20", "20/13/2025"],
            "quote_date": "2025-03-21",
            "strike": 1.0,
            "spot": 1.0,
        }
    )
    with pytest.raises(QuoteError, match=r"row 2, column 'expiry': not a date"):
        read_quotes(table)


def test_two_columns_with_the_same_meaning_are_rejected() -> None:
    table = pd.DataFrame({"iv": [0.2], "vol": [0.2], "strike": [1.0]})
    with pytest.raises(QuoteError, match=r"'iv' and 'vol' both mean 'implied_vol'"):
        read_quotes(table)


def test_unsupported_extension_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "q.xlsx").write_text("x")
    with pytest.raises(QuoteError, match="unsupported quote file type"):
        read_quotes(tmp_path / "q.xlsx")
    with pytest.raises(FileNotFoundError):
        read_quotes(tmp_path / "absent.csv")


def test_require_columns_lists_every_missing_column() -> None:
    quotes = read_quotes(pd.DataFrame({"strike": [1.0], "maturity": [1.0]}))
    with pytest.raises(QuoteError, match=r"heston pricing needs column\(s\) spot, v0"):
        require_columns(quotes, ["strike", "spot", "v0"], "heston pricing")
    require_columns(quotes, ["strike", "maturity"], "anything")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "q.csv"
    path.write_text(text)
    return path


def test_trailing_comma_on_every_data_line_keeps_the_columns_in_place(tmp_path: Path) -> None:
    # Spreadsheet exports: pandas alone would make 'strike' the index and shift every column.
    path = _write(tmp_path, "strike,maturity,spot,implied_vol\n90,1,100,0.22,\n110,2,100,0.2,\n")
    quotes = read_quotes(path)
    assert quotes["strike"].tolist() == [90.0, 110.0]
    assert quotes["maturity"].tolist() == [1.0, 2.0]
    assert quotes["implied_vol"].tolist() == [0.22, 0.2]


def test_extra_fields_and_repeated_header_names_are_errors(tmp_path: Path) -> None:
    with pytest.raises(QuoteError, match=r"row 2 \(file line 3\): 5 fields, but the header has 4"):
        read_quotes(_write(tmp_path, "strike,maturity,spot,iv\n90,1,100,0.2\n95,1,100,0.2,7\n"))
    with pytest.raises(QuoteError, match=r"column 'strike' appears more than once"):
        read_quotes(_write(tmp_path, "strike,maturity,strike\n90,1,91\n"))


def test_a_parquet_file_with_a_repeated_column_is_named(tmp_path: Path) -> None:
    # pyarrow's "Multiple matches for FieldRef.Name(strike) in strike: double ..." named neither
    # the file nor, plainly, the column (a multi-line schema dump as the CLI's error line)
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "q.parquet"
    columns = [pa.array([90.0]), pa.array([1.0]), pa.array([91.0])]
    pq.write_table(pa.table(columns, names=["strike", "maturity", "strike"]), path)
    with pytest.raises(QuoteError, match=r"q\.parquet, column 'strike': appears more than once$"):
        read_quotes(path)


@pytest.mark.parametrize("cell", ["inf", "-inf", "Infinity"])
def test_infinite_numbers_are_rejected_by_column(tmp_path: Path, cell: str) -> None:
    with pytest.raises(QuoteError, match=r"row 1 \(file line 2\), column 'rate': must be finite"):
        read_quotes(_write(tmp_path, f"strike,maturity,spot,rate\n90,1,100,{cell}\n"))


@pytest.mark.parametrize(
    ("expiry", "quote_date", "dayfirst", "days"),
    [
        (["21/06/2024", "01/07/2024"], "01/03/2024", None, [112, 122]),  # 21 > 12: day first
        (["06/21/2024", "07/01/2024"], "03/01/2024", None, [112, 122]),  # 21 > 12: month first
        (["21.06.2024"], "15.03.2024", None, [98]),
        (["01/06/2024"], "01/03/2024", True, [92]),
        (["01/06/2024"], "01/03/2024", False, [3]),
        (["2024-06-01", "01/07/2024"], "15/03/2024", None, [78, 108]),  # ISO never day-first
        (["20240621"], "20240315", None, [98]),
        # dashes too: 05-02-2024 was read as May 2 (month first) beside 13-01-2024 as January 13
        (["13-01-2024", "05-02-2024"], "01-01-2024", None, [12, 35]),
        (["21-6-2024"], "15-3-2024", None, [98]),
    ],
)
def test_numeric_dates_are_day_first_or_month_first_by_evidence(
    expiry: list[str], quote_date: str, dayfirst: bool | None, days: list[int]
) -> None:
    table = pd.DataFrame({"expiry": expiry, "quote_date": quote_date, "strike": 1.0, "spot": 1.0})
    quotes = read_quotes(table, dayfirst=dayfirst)
    np.testing.assert_allclose(quotes["maturity"] * 365, days, rtol=1e-12, atol=0)


def test_ambiguous_or_contradictory_numeric_dates_are_errors() -> None:
    table = pd.DataFrame({"expiry": ["01/06/2024"], "quote_date": "01/03/2024", "strike": 1.0,
                          "spot": 1.0})  # fmt: skip
    with pytest.raises(QuoteError, match=r"'01/06/2024' read as day/month or month/day alike"):
        read_quotes(table)
    mixed = table.assign(expiry=["21/06/2024"], quote_date="03/15/2024")
    with pytest.raises(QuoteError, match=r"mix day/month/year \('21/06/2024'\) and month/day"):
        read_quotes(mixed)


def test_ambiguous_dates_name_their_row_and_column_and_dashes_are_numeric_dates() -> None:
    # '05-01-2024' was read as May 1 without a word; the error named column 'expiry' (no row)
    # for an ambiguous quote_date
    table = pd.DataFrame({"expiry": ["2024-06-21", "2024-07-19"], "quote_date": "05-01-2024",
                          "strike": 1.0, "spot": 1.0})  # fmt: skip
    with pytest.raises(
        QuoteError,
        match=r"row 1, column 'quote_date': dates such as "
        r"'05-01-2024' read as day/month or month/day alike",
    ):
        read_quotes(table)
    days = read_quotes(table, dayfirst=True)["maturity"] * 365  # from 5 January 2024
    np.testing.assert_allclose(days, [168, 196], rtol=1e-12, atol=0)
    mixed = table.assign(expiry=["21/06/2024", "06/21/2024"], quote_date="2024-01-05")
    with pytest.raises(QuoteError, match=r"row 2, column 'expiry': dates mix day/month/year"):
        read_quotes(mixed)


@pytest.mark.parametrize("expiry", ["240621", 240621, "2024"])
def test_dates_in_digits_other_than_yyyymmdd_are_refused(expiry: object) -> None:
    # '240621' (yymmdd, as in OCC option symbols) was read as 24 June 2021, '2024' as January 1
    table = pd.DataFrame({"expiry": [expiry], "quote_date": "20240315", "strike": 1.0, "spot": 1.0})
    with pytest.raises(QuoteError, match=r"row 1, column 'expiry': not a date: .* \(a date in "
                                         r"digits is yyyymmdd\)"):  # fmt: skip
        read_quotes(table)


def test_dashed_dates_with_a_two_digit_year_are_refused() -> None:
    # '24-06-21' was read as 24 June 2021 (day-first by its 24): it is 2024-06-21 as yy-mm-dd
    table = pd.DataFrame({"expiry": ["24-06-21"], "quote_date": "20240315", "strike": 1.0,
                          "spot": 1.0})  # fmt: skip
    with pytest.raises(QuoteError, match=r"row 1, column 'expiry': not a date: .*reads as "
                                         r"dd-mm-yy and as yy-mm-dd"):  # fmt: skip
        read_quotes(table)
    slashed = table.assign(expiry="21/06/24", quote_date="15/03/24")  # d/m/yy stays readable
    np.testing.assert_allclose(read_quotes(slashed)["maturity"] * 365, [98], rtol=1e-12)


def test_time_zone_aware_dates_keep_their_local_calendar_date() -> None:
    strings = pd.DataFrame({"expiry": ["2024-06-21T16:00:00Z", "2024-06-21T20:00:00-05:00"],
                            "quote_date": "2024-03-15", "strike": 1.0, "spot": 1.0})  # fmt: skip
    np.testing.assert_allclose(read_quotes(strings)["maturity"] * 365, [98, 98], rtol=1e-12)
    aware = pd.to_datetime(["2024-06-21 23:00"]).tz_localize("America/New_York")
    stamps = pd.DataFrame({"expiry": aware, "quote_date": pd.to_datetime(["2024-03-15"]),
                           "strike": 1.0, "spot": 1.0})  # fmt: skip
    np.testing.assert_allclose(read_quotes(stamps)["maturity"] * 365, [98], rtol=1e-12)


def test_expiry_not_after_the_quote_date_names_both_dates() -> None:
    table = pd.DataFrame({"expiry": ["2024-06-21", "2024-01-21"], "quote_date": "2024-03-15",
                          "strike": 1.0, "spot": 1.0})  # fmt: skip
    with pytest.raises(QuoteError, match=r"row 2, column 'expiry': expiry 2024-01-21 is not after "
                                         r"quote_date 2024-03-15"):  # fmt: skip
        read_quotes(table)


def test_a_named_index_is_read_as_a_column(tmp_path: Path) -> None:
    table = pd.DataFrame({"strike": [90.0, 110.0], "maturity": 1.0, "spot": 100.0, "iv": 0.2})
    table.set_index("strike").to_parquet(tmp_path / "q.parquet")
    assert read_quotes(tmp_path / "q.parquet")["strike"].tolist() == [90.0, 110.0]
    assert read_quotes(table.set_index("strike"))["strike"].tolist() == [90.0, 110.0]
    assert "index" not in read_quotes(table.iloc[::-1])  # an unnamed index is dropped


@pytest.mark.parametrize(
    ("extra", "match"),
    [({"implied_vol": 26.5}, r"column 'implied_vol': 26.5 looks like a percentage.*0.2 for 20%"),
     ({"rate": 3.0}, r"column 'rate': 3.0 looks like a percentage.*\(0.02 for 2%\)"),
     # a euro rate of -0.5% in percent carried forwards by -50% a year (75 vol points off)
     ({"rate": -0.5}, r"column 'rate': -0.5 looks like a percentage.*\(-0.005 for -0.5%"),
     ({"exercise_style": "American"}, r"column 'exercise': 'American': European exercise only"),
     ({"style": "A"}, r"column 'exercise': 'A': European exercise only"),  # OptionMetrics' code
     ({"exercise": "Bermudan"}, r"column 'exercise': 'Bermudan': European exercise only"),
     # abbreviations were priced as European
     ({"exercise": "AMER"}, r"column 'exercise': 'AMER': European exercise only"),
     ({"exercise": "Amer."}, r"column 'exercise': 'Amer.': European exercise only"),
     ({"exercise": "Bermuda"}, r"column 'exercise': 'Bermuda': European exercise only"),
     ({"vol_type": "normal"}, r"normal \(Bachelier\) vols are not supported")],
)  # fmt: skip
def test_conventions_the_library_would_misread_are_refused(extra: dict, match: str) -> None:
    table = pd.DataFrame({"strike": [100.0], "maturity": [0.5], "spot": [100.0], "iv": [0.2]})
    if "implied_vol" in extra:
        table = table.drop(columns="iv")
    with pytest.raises(QuoteError, match=match):
        read_quotes(table.assign(**extra))


@pytest.mark.parametrize("style", ["European", "EURO", "E", " e ", "AM"])  # AM: its settlement
def test_european_exercise_spellings_are_read(style: str) -> None:
    table = pd.DataFrame({"strike": [100.0], "maturity": [0.5], "spot": [100.0], "iv": [0.2]})
    assert read_quotes(table.assign(exercise=style))["exercise"].tolist() == [style]


def test_negative_rates_in_decimals_are_read() -> None:
    table = pd.DataFrame({"strike": [100.0], "maturity": [0.5], "spot": [100.0], "iv": [0.2]})
    assert read_quotes(table.assign(rate=-0.0075))["rate"].tolist() == [-0.0075]


@pytest.mark.parametrize(
    ("reference", "column"),
    [("barrier_prices.csv", "barrier"), ("asian_prices.csv", "average"),
     ("lookback_prices.csv", "lookback")],
)  # fmt: skip
def test_path_dependent_rows_are_refused_naming_row_and_column(reference: str, column: str) -> None:
    # tests/data's barrier and Asian reference tables were read, priced and inverted as the
    # vanillas of their strikes (a down-and-out worth its 3.0 rebate came out 13.83)
    with pytest.raises(QuoteError, match=rf"row 1 \(file line 2\), column '{column}': .* names a"):
        read_quotes(DATA_DIR / reference)


def test_an_empty_path_dependent_column_leaves_the_vanillas_read() -> None:
    table = pd.DataFrame({"strike": [100.0, 110.0], "maturity": 0.5, "spot": 100.0,
                          "barrier": [np.nan, np.nan], "average": ["", "none"]})  # fmt: skip
    assert read_quotes(table)["strike"].tolist() == [100.0, 110.0]
    with pytest.raises(QuoteError, match=r"^row 2, column 'barrier': 80.0 names a barrier option"):
        read_quotes(table.assign(barrier=[np.nan, 80.0]))


def test_a_missing_expiry_in_a_dataframe_is_named_as_missing() -> None:
    # A NaN expiry read from a DataFrame was reported as "not a date: np.float64(nan)".
    table = pd.DataFrame({"strike": [100.0, 100.0], "expiry": [20240621.0, np.nan],
                          "quote_date": 20240614, "spot": 100.0})  # fmt: skip
    with pytest.raises(QuoteError, match=r"^row 2, column 'expiry': missing value$"):
        read_quotes(table)


def test_strikes_times_1000_are_refused_naming_row_and_column(tmp_path: Path) -> None:
    # OptionMetrics exports strike_price as the strike x 1000: read as-is, 4500 became 4,500,000.
    text = "strike_price,maturity,spot,cp_flag,mid\n4000000,0.25,4600,P,12.5\n4500000,0.25,4600,C,121\n"
    with pytest.raises(QuoteError, match=r"row 1 \(file line 2\), column 'strike': .*times 1000"):
        read_quotes(_write(tmp_path, text))
    shifted = pd.DataFrame({"K": [-0.004, 0.05], "T": 1.0, "forward": 0.001, "shift": 0.03})
    assert read_quotes(shifted)["strike"].tolist() == [-0.004, 0.05]  # ratio of shifted values
    rates = pd.DataFrame({"strike": [0.02, 0.03], "forward": 0.0001, "maturity": 1.0,
                          "implied_vol": 0.5})  # fmt: skip
    assert len(read_quotes(rates)) == 2  # a 1 bp rate forward: strikes 200x it are real quotes


@pytest.mark.parametrize("cell", ["", "NA", "N/A", "n/a", "#N/A", "NaN", "null", "NULL", "None",
                                  "-", " NA "])  # fmt: skip
def test_missing_value_spellings_of_vendor_exports_are_gaps(tmp_path: Path, cell: str) -> None:
    # every spelling but the empty cell was refused as "not a number: 'N/A'"
    text = f"strike,maturity,spot,bid,ask,iv\n90,1,100,{cell},2.5,{cell}\n110,1,100,1,1.5,0.2\n"
    quotes = read_quotes(_write(tmp_path, text))
    assert quotes["bid"].isna().tolist() == [True, False]
    assert quotes["implied_vol"].isna().tolist() == [True, False]
    with pytest.raises(QuoteError, match=r"row 1 \(file line 2\), column 'spot': missing value$"):
        read_quotes(_write(tmp_path, f"strike,maturity,spot\n90,1,{cell}\n"))
    table = pd.DataFrame({"strike": [90.0], "maturity": 1.0, "spot": 100.0, "ask": [cell]})
    assert read_quotes(table)["ask"].isna().all()  # a DataFrame or Parquet file alike


def test_other_text_in_a_numeric_column_is_still_not_a_number(tmp_path: Path) -> None:
    # only the spellings of pricing.quotes.MISSING_VALUES are gaps
    with pytest.raises(QuoteError, match=r"line 2\), column 'ask': not a number: 'n\.a\.'"):
        read_quotes(_write(tmp_path, "strike,maturity,spot,ask\n90,1,100,n.a.\n"))


def test_lines_and_cells_of_spaces_are_empty(tmp_path: Path) -> None:
    path = _write(tmp_path, "strike,maturity,spot,bid,ask\n90,1,100, ,2.5\n110,1,100,1,1.5\n   \n")
    quotes = read_quotes(path)
    assert quotes["strike"].tolist() == [90.0, 110.0]
    assert quotes["bid"].isna().tolist() == [True, False]


DATED = {"expiry": ["2024-12-20", "2025-06-20"], "quote_date": "2024-06-20", "strike": 100.0,
         "spot": 100.0}  # fmt: skip
"""183 and 365 days."""


@pytest.mark.parametrize(
    "maturity",
    [
        [183 / 365, 365 / 365],  # the dates' own ACT/365F
        [183 / 360, 365 / 360],  # ACT/360
        [183.6 / 365, 364.5 / 365],  # a time of day
    ],
)
def test_a_maturity_agreeing_with_expiry_and_quote_date_is_kept(maturity: list[float]) -> None:
    quotes = read_quotes(pd.DataFrame({**DATED, "maturity": maturity}))
    np.testing.assert_allclose(quotes["maturity"], maturity, rtol=0, atol=0)


def test_a_maturity_disagreeing_with_expiry_and_quote_date_names_the_row_and_both() -> None:
    # a maturity column beside the dates was used unchecked: 0.25 for a 365-day expiry priced it
    table = pd.DataFrame({**DATED, "maturity": [183 / 365, 0.25]})
    with pytest.raises(QuoteError, match=r"row 2, column 'maturity': 0.25 years disagrees with "
                                         r"expiry 2025-06-20 and quote_date 2024-06-20, 365 days "
                                         r"\(1 year\)"):  # fmt: skip
        read_quotes(table)


@pytest.mark.parametrize("name", ["maturity", "ttm", "T"])
def test_a_maturity_in_days_is_refused_naming_the_row(name: str) -> None:
    # 365 was read as 365 years (a ttm column in days)
    table = pd.DataFrame({name: [30.0, 365.0], "strike": 100.0, "spot": 100.0})
    with pytest.raises(QuoteError, match=r"row 2, column 'maturity': 365.0 years looks like "
                                         r"days \(365 days is 1 year\)"):  # fmt: skip
        read_quotes(table)
    long_dated = read_quotes(pd.DataFrame({name: [30.0, 50.0], "strike": 100.0, "spot": 100.0}))
    assert long_dated["maturity"].tolist() == [30.0, 50.0]


@pytest.mark.parametrize(("dayfirst", "date", "said", "other"), [
    (False, "13/06/2024", "month/day", "dayfirst=True"),
    (True, "06/13/2024", "day/month", "dayfirst=False"),
])  # fmt: skip
def test_a_date_the_dayfirst_option_contradicts_says_so(
    dayfirst: bool, date: str, said: str, other: str
) -> None:
    # it said only "not a date: '13/06/2024'"
    table = pd.DataFrame({"expiry": [date], "quote_date": "2024-06-03", "strike": 1.0, "spot": 1.0})
    with pytest.raises(QuoteError, match=rf"not a date: '{date}' \(it does not read {said}/year, "
                                         rf"as .* says: .*pass read_quotes\(\.\.\., {other}\)"):  # fmt: skip
        read_quotes(table, dayfirst=dayfirst)


@pytest.mark.parametrize("name", ["repo", "repo_rate"])
def test_a_repo_column_is_refused_unless_every_row_gives_its_forward(name: str) -> None:
    # it was ignored: the forward came from spot, rate and dividend alone
    table = pd.DataFrame({"strike": [100.0], "maturity": 1.0, "spot": 100.0, name: 0.01})
    with pytest.raises(QuoteError, match=r"column 'repo': 0.01: a repo rate is ambiguous"):
        read_quotes(table)
    assert "repo" in read_quotes(table.assign(forward=101.0))


def test_a_repo_beside_a_forward_column_with_gaps_names_the_row_without_one() -> None:
    # the first row with a repo was named, though its forward holds the repo, and a file with a
    # forward column was told to "give a 'forward' column"; a repo only on rows with a forward
    # was refused
    table = pd.DataFrame({"strike": [100.0, 100.0], "maturity": 1.0, "spot": 100.0,
                          "repo": 0.01, "forward": [101.0, None]})  # fmt: skip
    with pytest.raises(QuoteError, match=r"^row 2, column 'repo': 0.01: a repo rate is ambiguous "
                                         r".*or give its 'forward'$"):  # fmt: skip
        read_quotes(table)
    assert "repo" in read_quotes(table.assign(repo=[0.01, None]))


@pytest.mark.parametrize("shift", [np.nan, np.inf, True, "0.01"])
def test_a_shift_argument_that_is_no_finite_number_is_refused_by_name(shift: object) -> None:
    # shift=nan made a column of NaN, which shifts() reads as no shift: a strike of -0.001 was
    # refused as "must be > 0 after adding the shift", and positive strikes read unshifted
    table = pd.DataFrame({"strike": [0.01], "maturity": [1.0], "forward": [0.005]})
    with pytest.raises(ValueError, match=r"^shift must be (a )?finite"):
        read_quotes(table, shift=shift)


@pytest.mark.parametrize(
    ("column", "values"),
    [("strike", [True, True]), ("bid", [False, True]), ("strike", [1.0, True]),
     ("maturity", pd.to_timedelta(["365D", "365D"])),
     ("ask", pd.to_datetime(["2024-01-01", "2024-01-02"]))],
)  # fmt: skip
def test_bools_and_dates_in_a_numeric_column_are_refused(
    tmp_path: Path, column: str, values: object
) -> None:
    # pd.to_numeric read True as 1.0 (a boolean strike column priced strikes of 1) and dates
    # and durations as nanoseconds
    table = pd.DataFrame({"strike": [1.0, 1.1], "maturity": [1.0, 1.0], "spot": [1.0, 1.0],
                          "bid": [0.1, 0.1], "ask": [0.2, 0.2]})  # fmt: skip
    table[column] = values
    with pytest.raises(QuoteError, match=rf"row \d, column '{column}': not a number"):
        read_quotes(table)
    if table[column].dtype == object:  # pyarrow writes [1.0, True] as doubles
        return
    table.to_parquet(tmp_path / "q.parquet")
    with pytest.raises(QuoteError, match=rf"q\.parquet, row \d, column '{column}': not a number"):
        read_quotes(tmp_path / "q.parquet")


def test_a_parquet_folder_without_files_is_refused(tmp_path: Path) -> None:
    # pyarrow reads a folder as a dataset of its files: an empty one was a table without columns
    (tmp_path / "q.parquet" / "_temporary").mkdir(parents=True)
    (tmp_path / "q.parquet" / "_SUCCESS").touch()
    with pytest.raises(QuoteError, match=r"q\.parquet: a folder holding no Parquet file"):
        read_quotes(tmp_path / "q.parquet")
    table = pd.DataFrame({"strike": [1.0], "maturity": [1.0], "spot": [1.0]})
    table.to_parquet(tmp_path / "q.parquet" / "part-0.parquet")  # a folder of parts is read
    assert read_quotes(tmp_path / "q.parquet")["strike"].tolist() == [1.0]


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [("forward", np.inf, r"column 'forward': must be finite, got inf"),
     ("discount", np.inf, r"column 'discount': must be finite and > 0, got inf"),
     ("discount", 0.0, r"column 'discount': must be finite and > 0, got 0.0"),
     ("discount", -0.5, r"column 'discount': must be finite and > 0, got -0.5")],
)  # fmt: skip
def test_forward_and_discount_refuse_a_given_value_that_is_no_gap_nor_usable(
    column: str, value: float, message: str
) -> None:
    # an infinite forward or discount was read as a gap: the row was priced from its spot
    # without a word (surrogate_price_rows had refused it as "not a finite number"), and a
    # discount of 0 was "no forward: give a 'forward' value or a 'spot' column"
    table = pd.DataFrame({"strike": [100.0, 100.0], "maturity": [1.0, 1.0],
                          "spot": [100.0, 100.0], "rate": [0.05, 0.05]})  # fmt: skip
    table[column] = [np.nan, value]
    with pytest.raises(QuoteError, match=rf"^row 2, {message}$"):
        forward_and_discount(table)
    gaps = forward_and_discount(table.assign(**{column: np.nan}))  # a gap is still one
    np.testing.assert_allclose(gaps[0], 100.0 * np.exp(0.05), rtol=1e-15, atol=0.0)


@pytest.mark.parametrize(
    "start", [b"\xef\xbb\xbf\xef\xbb\xbf", b" \xef\xbb\xbf", b"\xef\xbb\xbf \xef\xbb\xbf"]
)
def test_a_header_with_a_second_byte_order_mark_is_read(tmp_path: Path, start: bytes) -> None:
    # a file saved twice with a BOM (or a space before one) kept '\ufeffstrike': an unknown
    # column, then "needs column(s) strike; the table has strike, ..."
    path = tmp_path / "bom.csv"
    path.write_bytes(start + b"strike,maturity,spot\n100,1,100\n")
    assert read_quotes(path).columns.tolist() == ["strike", "maturity", "spot", "rate", "dividend"]


def test_a_table_read_twice_keeps_its_defaulted_rate_and_dividend() -> None:
    # the zeros read_quotes fills in became given columns on a second reading (clean_quotes on a
    # read table): parity took the rate-0 discount, and the note on missing rates was lost
    once = read_quotes(pd.DataFrame({"strike": [100.0], "maturity": 1.0, "spot": 100.0}))
    assert read_quotes(once).attrs["defaulted"] == ["rate", "dividend"]
    assert read_quotes(once.assign(rate=0.02)).attrs["defaulted"] == ["dividend"]


def test_rows_after_a_quoted_line_break_name_their_own_file_line(tmp_path: Path) -> None:
    # a note field holding a line break made every later row's line one too small
    text = 'strike,maturity,spot,note\n90,1,100,"two\nlines"\n95,x,100,ok\n'
    with pytest.raises(QuoteError, match=r"row 2 \(file line 4\), column 'maturity'"):
        read_quotes(_write(tmp_path, text))
    text = 'strike,maturity,spot,note\n90,1,100,"two\nlines"\n95,1,100,ok\n'
    assert read_quotes(_write(tmp_path, text)).attrs["file_lines"] == [2, 4]


def test_rows_sorted_or_concatenated_after_reading_name_no_file_lines(tmp_path: Path) -> None:
    # attrs follow a table through sort_values and concat: errors named the file lines of the
    # rows once in those positions (the file's line 2 for its line 4)
    read = read_quotes(_write(tmp_path, "strike,maturity,spot\n90,1,100\n\n95,1,100\n"))
    for table in (read.iloc[::-1], pd.concat([read, read])):
        assert "file_lines" not in read_quotes(table).attrs
    assert read_quotes(read).attrs["file_lines"] == [2, 4]  # read again: the same rows


def test_extra_fields_after_a_blank_line_name_the_data_row(tmp_path: Path) -> None:
    # blank lines counted as rows here, not in every other error: 'row 2' for the first row
    with pytest.raises(QuoteError, match=r"row 1 \(file line 3\): 4 fields, but the header has 3"):
        read_quotes(_write(tmp_path, "strike,maturity,spot\n\n90,1,100,7\n"))


def test_a_byte_that_is_no_utf_8_names_its_file_line(tmp_path: Path) -> None:
    # a spreadsheet's Latin-1 export: "'utf-8' codec can't decode byte 0xe9 in position 3849",
    # a position within the block read, not the file
    path = tmp_path / "latin.csv"
    lines = b"90,1,100,ok\n" * 1000 + b"95,1,100,caf\xe9\n"
    path.write_bytes(b"\xef\xbb\xbfstrike,maturity,spot,note\n" + lines)  # after a BOM too
    with pytest.raises(QuoteError, match=r"latin\.csv: .*file line 1002 is not UTF-8 .*0xe9"):
        read_quotes(path)


def test_a_complex_entry_of_an_object_column_is_refused_naming_its_row() -> None:
    # only a complex dtype was refused: a complex among other objects lost its imaginary part
    # (with a warning) and 110 + 1j was read as a strike of 110
    table = pd.DataFrame({"strike": pd.Series([100.0, 110 + 1j], dtype=object), "maturity": 1.0,
                          "spot": 100.0})  # fmt: skip
    with pytest.raises(QuoteError, match=r"row 2, column 'strike': must be real, not complex"):
        read_quotes(table)
