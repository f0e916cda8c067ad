"""``qfnet price --engine mc``: prices with standard errors, reproducible by seed, checked errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from qfnet.cli import app

runner = CliRunner()
K_SE = 4.0  # MC price within K_SE standard errors of the analytic price

HESTON = {"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.5, "rho": -0.7}
SABR = {"alpha": 0.25, "beta": 1.0, "rho": -0.3, "nu": 0.4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def quotes(tmp_path: Path) -> Path:
    table = pd.DataFrame(
        {
            "option_type": ["call", "put", "call", "put", "call"],
            "strike": [90.0, 95.0, 100.0, 110.0, 120.0],
            "maturity": [0.5, 0.5, 1.0, 1.0, 1.0],
            "spot": 100.0,
            "rate": 0.03,
            "dividend": 0.01,
            "volatility": [0.2, 0.2, 0.25, 0.25, 0.3],
        }
    )
    path = tmp_path / "quotes.csv"
    table.to_csv(path, index=False)
    return path


def _price(quotes: Path, out: Path, model: str, engine: str, *extra: str) -> pd.DataFrame:
    args = ["price", "--model", model, "--quotes", str(quotes), "--out", str(out)]
    result = runner.invoke(app, [*args, "--engine", engine, *extra])
    assert result.exit_code == 0, result.output
    return pd.read_csv(out)


@pytest.mark.parametrize(
    ("model", "params"),
    [("bs", None), ("heston", HESTON), ("sabr", SABR)],
)
def test_mc_prices_agree_with_analytic_within_standard_errors(
    quotes: Path, tmp_path: Path, model: str, params: dict | None
) -> None:
    extra = [] if params is None else ["--params", json.dumps(params)]
    if model != "bs":
        table = pd.read_csv(quotes).drop(columns="volatility")
        table.to_csv(quotes, index=False)
    analytic = _price(quotes, tmp_path / "a.csv", model, "analytic", *extra)
    mc = _price(quotes, tmp_path / "m.csv", model, "mc", "--paths", "8192", "--steps", "32",
                "--seed", "3", *extra)  # fmt: skip
    assert (mc["std_error"] > 0).all()
    gap = (mc["price"] - analytic["price"]).abs()
    # SABR's analytic engine is Hagan's expansion: allow its error on top of the MC error
    allowance = 0.05 if model == "sabr" else 0.0
    assert (gap <= K_SE * mc["std_error"] + allowance).all(), (mc["price"], analytic["price"])
    assert mc["implied_vol"].notna().all()


def test_mc_same_seed_same_output_and_other_seed_differs(quotes: Path, tmp_path: Path) -> None:
    run = ("--paths", "2048", "--steps", "4")
    first = _price(quotes, tmp_path / "1.csv", "bs", "mc", *run, "--seed", "7")
    again = _price(quotes, tmp_path / "2.csv", "bs", "mc", *run, "--seed", "7")
    other = _price(quotes, tmp_path / "3.csv", "bs", "mc", *run, "--seed", "8")
    pd.testing.assert_frame_equal(first, again)
    assert not first["price"].equals(other["price"])


@pytest.mark.parametrize("engine", ["analytic", "quantlib", "mc"])
def test_a_priced_files_std_error_is_kept_as_market_std_error(
    quotes: Path, tmp_path: Path, engine: str
) -> None:
    # an mc file priced again analytically kept its std_error beside the new price, which read
    # as that price's error; priced by mc again, the file's errors were lost
    run = ("--paths", "1024", "--steps", "1")
    first = _price(quotes, tmp_path / "m.csv", "bs", "mc", *run)
    extra = (*run, "--seed", "1") if engine == "mc" else ()
    args = ["price", "--model", "bs", "--quotes", str(tmp_path / "m.csv")]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "again.csv"), "--engine", engine,
                                 *extra])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "std_error kept as market_std_error" in result.output
    again = pd.read_csv(tmp_path / "again.csv")
    pd.testing.assert_series_equal(again["market_std_error"], first["std_error"],
                                   check_names=False)  # fmt: skip
    assert ("std_error" in again) == (engine == "mc")
    # priced once more analytically: the market column stays, no std_error comes back
    twice = _price(tmp_path / "again.csv", tmp_path / "twice.csv", "bs", "analytic")
    assert "std_error" not in twice
    pd.testing.assert_series_equal(twice["market_std_error"], first["std_error"],
                                   check_names=False)  # fmt: skip


@pytest.mark.parametrize(
    ("option", "value"), [("--paths", "1"), ("--paths", "5"), ("--steps", "0")]
)
def test_mc_bad_sizes_name_the_option(
    quotes: Path, tmp_path: Path, option: str, value: str
) -> None:
    args = ["price", "--model", "bs", "--quotes", str(quotes), "--out", str(tmp_path / "o.csv")]
    result = runner.invoke(app, [*args, "--engine", "mc", option, value])
    assert result.exit_code == 2  # a usage error, as the README says
    assert option in result.output


def test_mc_bad_row_is_reported_by_row_number(quotes: Path, tmp_path: Path) -> None:
    table = pd.read_csv(quotes)
    table.loc[2, "volatility"] = -0.2
    table.to_csv(quotes, index=False)
    args = ["price", "--model", "bs", "--quotes", str(quotes), "--out", str(tmp_path / "o.csv")]
    result = runner.invoke(app, [*args, "--engine", "mc", "--paths", "1024", "--steps", "1"])
    assert result.exit_code == 1
    assert "row 3" in result.output and "volatility" in result.output


def test_deep_in_the_money_rows_get_the_out_of_the_money_vol_or_a_reason(tmp_path: Path) -> None:
    # Solved directly, a deep in-the-money price lost its time value to rounding (vol 0, or
    # a vol several times too high); through parity the vol is the input one, and where even
    # that is below rounding, the row says so.
    table = pd.DataFrame({"option_type": ["call", "put", "call"], "strike": [80.0, 120.0, 50.0],
                          "maturity": [1.0, 1.0, 0.05], "spot": 100.0, "volatility": 0.1})  # fmt: skip
    table.to_csv(tmp_path / "itm.csv", index=False)
    analytic = _price(tmp_path / "itm.csv", tmp_path / "a.csv", "bs", "analytic")
    assert analytic["implied_vol"].iloc[:2].tolist() == pytest.approx([0.1, 0.1], rel=1e-9)
    assert pd.isna(analytic["implied_vol"].iloc[2])
    assert analytic["iv_status"].tolist()[2].startswith("time value below the price's rounding")
    mc = _price(tmp_path / "itm.csv", tmp_path / "m.csv", "bs", "mc", "--paths", "4096",
                "--steps", "1")  # fmt: skip
    assert mc["implied_vol"].iloc[:2].tolist() == pytest.approx([0.1, 0.1], abs=0.01)


def test_seeds_outside_the_generator_range_are_usage_errors(quotes: Path, tmp_path: Path) -> None:
    args = ["price", "--model", "bs", "--quotes", str(quotes), "--out", str(tmp_path / "o.csv")]
    # 2**32 too, as every other command: price took up to 2**63 - 1
    for seed in ("-1", str(2**32), str(2**64)):
        result = runner.invoke(app, [*args, "--engine", "mc", "--seed", seed])
        assert result.exit_code == 2 and "--seed" in result.output


def test_every_seed_option_takes_the_same_range() -> None:
    import typer.main

    from qfnet._cli import SEED_MAX

    def seeds(command):
        for sub in getattr(command, "commands", {}).values():
            yield from seeds(sub)
        yield from (p for p in getattr(command, "params", []) if "--seed" in p.opts)

    found = list(seeds(typer.main.get_command(app)))
    assert len(found) >= 6  # price, demo, calibrate, generate, train surrogate, hedge x2
    assert {(p.min, p.max) for p in found} == {(0, SEED_MAX)}


def test_mc_takes_a_correlation_of_minus_one_in_params(quotes: Path, tmp_path: Path) -> None:
    # its simulations take |rho| = 1 (the analytic engines refuse it): checking --params against
    # the model's domain must not refuse it for Monte Carlo
    pd.read_csv(quotes).drop(columns="volatility").to_csv(quotes, index=False)
    params = json.dumps({**HESTON, "rho": -1.0})
    out = _price(quotes, tmp_path / "m.csv", "heston", "mc", "--paths", "512", "--steps", "4",
                 "--params", params)  # fmt: skip
    assert out["price"].notna().all()


@pytest.mark.parametrize("engine", ["analytic", "quantlib"])
@pytest.mark.parametrize("option", ["--paths", "--steps"])
def test_simulation_sizes_without_the_mc_engine_are_usage_errors(
    quotes: Path, tmp_path: Path, engine: str, option: str
) -> None:
    # they were ignored: the analytic price was written, exit 0, read as a Monte Carlo price
    out = tmp_path / "o.csv"
    args = ["price", "--model", "bs", "--quotes", str(quotes), "--out", str(out)]
    result = runner.invoke(app, [*args, "--engine", engine, option, "5000"])
    assert result.exit_code == 2 and option in result.output and "mc" in result.output
    assert not out.exists()
