"""calibrate_many's one-pass table work: the prepared-table check agrees with preparing each table,
and the residual tables cut from one table equal those of single fits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pricing._calibration_batch import already_prepared
from pricing.calibration import _NEEDED, _prepare, calibrate, calibrate_many
from pricing.quotes import DECIMAL_LIMITS
from pricing.sabr import lognormal_vol


def _smile(nu: float = 0.6, maturity: float = 1.0) -> pd.DataFrame:
    strike = 100.0 * np.exp(np.linspace(-0.3, 0.3, 7))
    vol = lognormal_vol(forward=100.0, strike=torch.tensor(strike), maturity=maturity, alpha=0.3,
                        beta=1.0, rho=-0.3, nu=nu).numpy()  # fmt: skip
    return pd.DataFrame({"strike": strike, "maturity": maturity, "forward": 100.0,
                         "discount": 1.0, "implied_vol": vol})  # fmt: skip


def _variants() -> dict[str, object]:
    """Prepared tables, and tables that _prepare changes or refuses."""
    good, _ = _prepare(_smile())
    other, _ = _prepare(_smile(0.4, maturity=2.0))
    edited = good.copy()
    edited.loc[2, "implied_vol"] = 0.5  # market_iv is refreshed from it
    missing = good.copy()
    missing.loc[1, ["market_iv", "implied_vol"]] = math.nan  # the row is dropped
    return {
        "prepared": good,
        "prepared, other expiry": other,
        "no implied_vol column": good.drop(columns="implied_vol"),
        "raw quotes": _smile(),
        "stale implied_vol": edited,
        "NaN market_iv": missing,
        "NaN forward": good.assign(forward=[math.nan] + [100.0] * 6),
        # values out of their domain, which read_quotes refuses
        "zero maturity": good.assign(maturity=[0.0] + [1.0] * 6),
        "negative discount": good.assign(discount=[1.0] * 6 + [-1.0]),
        "negative strike": good.assign(strike=[-5.0, *good["strike"].tolist()[1:]]),
        "infinite forward": good.assign(forward=[100.0] * 6 + [math.inf]),
        "vols in percent": good.assign(
            market_iv=good["market_iv"] * 100, implied_vol=good["implied_vol"] * 100
        ),
        "bad option type": good.assign(option_type=["call"] * 6 + ["straddle"]),
        "shuffled index": good.iloc[::-1],
        # pd.concat cannot align a repeated column name: calibrate_many failed on it
        "a repeated unrelated column": pd.concat(
            [good.assign(note="x"), good[[]].assign(note="y")], axis=1
        ),
        "integer strikes": good.assign(strike=np.arange(90, 97)),
        "no strike column": good.drop(columns="strike"),
        "empty": good.iloc[:0],
        "a file name": "quotes.csv",
    }


def test_already_prepared_flags_exactly_the_tables_prepare_leaves_unchanged() -> None:
    variants = _variants()
    flags = already_prepared(list(variants.values()), _NEEDED, DECIMAL_LIMITS["implied_vol"])
    for (name, table), flag in zip(variants.items(), flags, strict=True):
        try:
            unchanged = _prepare(table)[0] is table
        except (ValueError, OSError):  # refused (QuoteError is a ValueError) or no such file
            unchanged = False
        if name == "a repeated unrelated column":  # stacking cannot align it: _prepare's path
            assert not flag and unchanged
            continue
        assert flag == unchanged, name
    assert flags[:3] == [True, True, True]  # the check is no trivial "False"


def test_batched_results_equal_single_fits_row_for_row() -> None:
    variants = _variants()
    tables = [variants[k] for k in ("prepared", "raw quotes", "stale implied_vol", "NaN market_iv",
                                    "shuffled index", "prepared, other expiry",
                                    "a repeated unrelated column", "integer strikes")]  # fmt: skip
    many = calibrate_many("sabr", tables)
    for table, fit in zip(tables, many, strict=True):
        single = calibrate("sabr", table)
        pd.testing.assert_frame_equal(fit.residuals, single.residuals, check_exact=True)
        for field in ("rmse_iv_bp", "max_abs_iv_bp", "sse", "n_quotes", "n_dropped"):
            assert getattr(fit, field) == getattr(single, field), field
    assert many[3].n_dropped == 1 and len(many[3].residuals) == 6
    # a batch stacks the strikes of all its tables as floats: a single fit gives floats too
    assert many[7].residuals["strike"].dtype == np.float64


def test_a_table_without_a_strike_column_is_named() -> None:
    # it passed as prepared and failed in the pricer with "strike must be finite; got nan"
    good = _prepare(_smile())[0]
    with pytest.raises(ValueError, match=r"quote table 1: .*strike"):
        calibrate_many("sabr", [good, good.drop(columns="strike")])


def _noisy(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A smile off the SABR family (a few bp of noise): its weights move the fit."""
    noise = np.random.default_rng(seed).normal(0.0, 0.003, len(table))
    return table.assign(implied_vol=table["implied_vol"] + noise)


def test_calibrate_many_takes_one_weight_array_per_table_of_any_size() -> None:
    # one weight array served every table: tables of 7 and 5 quotes could not be weighted
    tables = [_noisy(_smile(), 1), _noisy(_smile(0.4).iloc[1:6].reset_index(drop=True), 2)]
    weights = [np.linspace(1.0, 3.0, 7), np.array([4.0, 1.0, 1.0, 1.0, 0.5])]
    many = calibrate_many("sabr", tables, weights=weights)
    for table, w, fit in zip(tables, weights, many, strict=True):
        single = calibrate("sabr", table, weights=w)
        pd.testing.assert_frame_equal(fit.residuals, single.residuals, check_exact=True)
        assert fit.params == single.params
        equal = calibrate("sabr", table)  # the weights did change the fit
        assert abs(fit.params["nu"][0] - equal.params["nu"][0]) > 1e-4
    mixed = calibrate_many("sabr", tables, weights=["vega", weights[1]])  # a name per table too
    vega = calibrate("sabr", tables[0], weights="vega")
    pd.testing.assert_frame_equal(mixed[0].residuals, vega.residuals, check_exact=True)


def test_calibrate_many_keeps_one_weighting_or_one_array_for_all_tables() -> None:
    tables = [_noisy(_smile(), 1), _noisy(_smile(0.4), 2)]
    w = np.linspace(1.0, 3.0, 7)
    for weights in ("vega", w, list(w)):
        for table, fit in zip(tables, calibrate_many("sabr", tables, weights=weights), strict=True):
            single = calibrate("sabr", table, weights=weights)
            pd.testing.assert_frame_equal(fit.residuals, single.residuals, check_exact=True)


def test_calibrate_many_per_row_weights_leave_with_their_dropped_row() -> None:
    # as in calibrate: one weight per input row, the row without a vol takes its weight along
    table = _smile()
    table.loc[2, "implied_vol"] = math.nan
    w = np.arange(1.0, 8.0)
    (fit,) = calibrate_many("sabr", [table], weights=[w])
    kept = np.delete(w, 2)
    np.testing.assert_allclose(fit.residuals["weight"], kept / kept.mean(), rtol=1e-15, atol=0.0)
    assert fit.n_dropped == 1


def test_calibrate_many_refuses_a_weight_list_of_another_length() -> None:
    tables = [_smile(), _smile(0.4)]
    with pytest.raises(ValueError, match=r"weights: 3 entries for 2 quote tables"):
        calibrate_many("sabr", tables, weights=["vega", "equal", "vega"])
    with pytest.raises(ValueError, match=r"quote table 1: weights must be 7 finite values"):
        calibrate_many("sabr", tables, weights=[np.ones(7), np.ones(5)])


@pytest.mark.parametrize("weights", [2.0, {"a": 1.0}])
def test_weights_that_are_no_weighting_are_a_named_error(weights) -> None:
    # a number raised "'float' object is not iterable"; a dict float()'s TypeError
    with pytest.raises(ValueError, match=r"quote table 0: weights must be 7 finite values >= 0"):
        calibrate_many("sabr", [_smile(), _smile(0.4)], weights=weights)
    with pytest.raises(ValueError, match=r"^weights must be 7 finite values >= 0"):
        calibrate("sabr", _smile(), weights=weights)


@pytest.mark.parametrize("single", ["quotes.csv", Path("quotes.csv")])
def test_calibrate_many_names_a_single_file_given_for_a_sequence(single) -> None:
    # a Path raised "object of type 'PosixPath' has no len()"
    with pytest.raises(TypeError, match="expected a sequence of quote tables or files"):
        calibrate_many("sabr", single)


def test_calibrate_many_warnings_of_a_table_fitted_alone_name_the_table() -> None:
    # SABR's per-table warnings (an expiry of too few weighted quotes) named no table: in a
    # history of 250 surfaces the day was unknown
    few = _smile().iloc[:2]  # two quotes for alpha, rho and nu
    with pytest.warns(UserWarning, match=r"^quote table 1: SABR expiries with fewer") as caught:
        calibrate_many("sabr", [_smile(), few, _smile(0.4)])
    assert [str(w.message).split(":")[0] for w in caught] == ["quote table 1"]
    assert caught[0].filename == __file__  # the caller's line, not the library's
