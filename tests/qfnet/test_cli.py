"""The qfnet command line: help texts, price/iv round trips, file formats and error paths."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pricing import black_scholes as bs
from qfnet._cli import write_atomically
from qfnet.cli import app

runner = CliRunner()


def _price(quotes, out, model, engine="analytic", params=None):
    """Run ``qfnet price`` and return the written table (failing the test on a non-zero exit)."""
    args = [
        "price",
        "--model",
        model,
        "--quotes",
        str(quotes),
        "--out",
        str(out),
        "--engine",
        engine,
    ]
    if params is not None:
        args += ["--params", json.dumps(params)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return pd.read_csv(out)


@pytest.fixture()
def bs_quotes(tmp_path):
    table = pd.DataFrame(
        {
            "option_type": ["C", "P", "call", "put"],
            "strike": [90.0, 95.0, 110.0, 120.0],
            "maturity": [0.5, 1.0, 2.0, 0.25],
            "spot": 100.0,
            "rate": 0.03,
            "dividend": 0.01,
            "volatility": [0.2, 0.25, 0.3, 0.35],
        }
    )
    path = tmp_path / "quotes.csv"
    table.to_csv(path, index=False)
    return path, table


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["price"],
        ["iv"],
        ["demo"],
        ["calibrate"],
        ["generate"],
        ["train"],
        ["train", "surrogate"],
        ["hedge"],
        ["hedge", "train"],
        ["hedge", "backtest"],
    ],
)
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert ">>>" not in result.output  # the docstrings' doctests stay out of the help
    # calibrate, generate and train surrogate printed three blank lines under their summary (the
    # blank lines before their docstring's \\f)
    lines = [line.strip() for line in result.output.splitlines()]
    assert not any(a == b == "" for a, b in itertools.pairwise(lines)), result.output


def _commands(command, path=()):
    """Every leaf command of the click tree under ``command``, with its path of names."""
    subcommands = getattr(command, "commands", {})
    if not subcommands:
        yield path, command
    for name, sub in subcommands.items():
        yield from _commands(sub, (*path, name))


def test_every_option_has_help():
    # generate --shard-size and train surrogate --epochs, --seed, --batch-size and --device had
    # no help text: their --help rows showed only a default ("--device  [default: auto]")
    import typer.main

    blank = [
        f"{' '.join(path)} {param.opts[0]}"
        for path, command in _commands(typer.main.get_command(app))
        for param in command.params
        if param.opts[0] != "--help" and not (getattr(param, "help", None) or "").strip()
    ]
    assert not blank, blank


def test_price_keeps_the_files_own_prices_and_vols_as_market_columns(bs_quotes, tmp_path):
    # a quote file's price and implied_vol (market values) were replaced by the model's in OUT
    path, table = bs_quotes
    market = table.assign(price=[11.0, 9.0, 15.0, 21.0], implied_vol=[0.21, 0.26, 0.31, 0.36])
    market.to_csv(path, index=False)
    out = tmp_path / "out.csv"
    result = runner.invoke(
        app, ["price", "--model", "bs", "--quotes", str(path), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "price kept as market_price, implied_vol kept as market_implied_vol" in result.output
    written = pd.read_csv(out)
    np.testing.assert_array_equal(written["market_price"], market["price"])
    np.testing.assert_array_equal(written["market_implied_vol"], market["implied_vol"])
    np.testing.assert_allclose(written["implied_vol"], market["volatility"], rtol=1e-9, atol=0)


def test_python_dash_m_qfnet_runs_the_command():
    # there was no qfnet/__main__.py: `python -m qfnet` failed where the console script is absent
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "qfnet", "price", "--help"], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0 and "Usage" in done.stdout, done.stderr


def test_warnings_read_as_one_warning_line(tmp_path):
    # Python's format: "/path/pricing/calibration.py:727: UserWarning: ..." and the source line
    import subprocess
    import sys
    from pathlib import Path

    dax = Path(__file__).parents[2] / "data" / "dax_2002_sepp" / "implied_vols.csv"
    args = ["calibrate", "--model", "heston", "--method", "network", "--quotes", str(dax)]
    done = subprocess.run([sys.executable, "-m", "qfnet", *args, "--out", str(tmp_path / "n.json")],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warning: the calibration network's answer is at the edge" in done.stderr, done.stderr
    assert "UserWarning" not in done.stderr and ".py:" not in done.stderr


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_price_bs_writes_prices_and_implied_vols(bs_quotes, tmp_path, suffix):
    path, table = bs_quotes
    if suffix == ".parquet":
        table.to_parquet(path.with_suffix(suffix), index=False)
        path = path.with_suffix(suffix)
    out = tmp_path / f"out{suffix}"
    result = runner.invoke(
        app, ["price", "--model", "bs", "--quotes", str(path), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    priced = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out)
    expected = bs.price(
        spot=100.0,
        strike=torch.tensor(table["strike"].to_numpy()),
        maturity=torch.tensor(table["maturity"].to_numpy()),
        volatility=torch.tensor(table["volatility"].to_numpy()),
        rate=0.03,
        dividend=0.01,
        is_call=torch.tensor([True, False, True, False]),
    )
    torch.testing.assert_close(
        torch.tensor(priced["price"].to_numpy()), expected, rtol=1e-12, atol=0
    )
    torch.testing.assert_close(
        torch.tensor(priced["implied_vol"].to_numpy()),
        torch.tensor(table["volatility"].to_numpy()),
        rtol=1e-10,
        atol=0,
    )
    assert list(priced.columns[: len(table.columns)]) == list(table.columns)


def test_price_quantlib_engine_agrees_with_analytic(bs_quotes, tmp_path):
    path, _ = bs_quotes
    a, q = (_price(path, tmp_path / f"{e}.csv", "bs", e)["price"] for e in ("analytic", "quantlib"))
    torch.testing.assert_close(
        torch.tensor(a.to_numpy()), torch.tensor(q.to_numpy()), rtol=1e-10, atol=1e-12
    )


def test_price_params_json_applies_to_every_row(bs_quotes, tmp_path):
    path, table = bs_quotes
    table.drop(columns=["volatility"]).to_csv(path, index=False)
    out = tmp_path / "out.csv"
    result = runner.invoke(
        app,
        [
            "price",
            "--model",
            "bs",
            "--quotes",
            str(path),
            "--out",
            str(out),
            "--params",
            json.dumps({"volatility": 0.2}),
        ],
    )
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(
        torch.tensor(pd.read_csv(out)["implied_vol"].to_numpy()),
        torch.full((4,), 0.2, dtype=torch.float64),
        rtol=1e-10,
        atol=0,
    )


@pytest.mark.parametrize("source", ["pretty JSON", "file"])
def test_price_params_pretty_json_inline_or_in_a_file(bs_quotes, tmp_path, source):
    # an object over 255 characters was looked up as a file name: OSError "File name too long"
    path, table = bs_quotes
    table.drop(columns=["volatility"]).to_csv(path, index=False)
    text = json.dumps({"volatility": 0.2}, indent=300)
    assert len(text) > 255
    if source == "file":
        (tmp_path / "params.json").write_text(text)
        text = str(tmp_path / "params.json")
    out = tmp_path / "out.csv"
    args = ["price", "--model", "bs", "--quotes", str(path), "--out", str(out), "--params", text]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    vols = pd.read_csv(out)["implied_vol"].to_numpy()
    np.testing.assert_allclose(vols, 0.2, rtol=1e-10, atol=0)


def _price_bs_file(tmp_path, text: str) -> tuple:
    """``qfnet price --model bs`` (vol 0.2) of a CSV ``text``: the result and the table written."""
    quotes, out = tmp_path / "q.csv", tmp_path / "out.csv"
    quotes.write_text(text)
    args = ["price", "--model", "bs", "--quotes", str(quotes), "--out", str(out), "--params",
            json.dumps({"volatility": 0.2})]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result, pd.read_csv(out)


def test_price_leaves_out_a_default_rate_the_given_discount_overrides(tmp_path):
    # rate=0.0 was written beside discount=0.95, which the price used
    text = "option_type,strike,maturity,forward,discount\ncall,100,1.0,100,0.95\n"
    result, written = _price_bs_file(tmp_path, text)
    assert "rate" not in written and "dividend" not in written
    assert written["discount"].tolist() == [0.95]
    assert "priced 1 option " in result.output


def test_price_keeps_a_default_rate_that_rows_without_a_discount_used(tmp_path):
    # the rate 0 a row without a discount was priced with was left out of OUT, without a word
    text = "option_type,strike,maturity,spot,discount\ncall,100,1.0,100,0.95\ncall,100,1.0,100,\n"
    result, written = _price_bs_file(tmp_path, text)
    assert written["rate"].tolist() == [0.0, 0.0]
    assert "note: 1 row without a discount took rate 0 (the file has no rate column)" in (
        result.output
    )


def test_price_missing_parameter_is_a_clear_error(bs_quotes, tmp_path):
    path, table = bs_quotes
    table.drop(columns=["volatility"]).to_csv(path, index=False)
    result = runner.invoke(
        app, ["price", "--model", "bs", "--quotes", str(path), "--out", str(tmp_path / "o.csv")]
    )
    assert result.exit_code == 1
    assert "volatility" in result.output


def test_price_negative_volatility_names_the_row(bs_quotes, tmp_path):
    path, table = bs_quotes
    table.loc[2, "volatility"] = -0.3
    table.to_csv(path, index=False)
    result = runner.invoke(
        app, ["price", "--model", "bs", "--quotes", str(path), "--out", str(tmp_path / "o.csv")]
    )
    assert result.exit_code == 1
    assert "row 3" in result.output and "volatility" in result.output


@pytest.mark.parametrize("engine", ["analytic", "quantlib"])
def test_price_a_zero_volatility_column_as_params_gives_the_discounted_intrinsic(
    bs_quotes, tmp_path, engine
):
    # --params '{"volatility": 0}' priced; the same 0 in the file's column was "must be > 0"
    path, table = bs_quotes
    table["volatility"] = 0.0
    table.to_csv(path, index=False)
    from_file = _price(path, tmp_path / "file.csv", "bs", engine)
    without = tmp_path / "without.csv"
    table.drop(columns="volatility").to_csv(without, index=False)
    from_params = _price(without, tmp_path / "params.csv", "bs", engine, {"volatility": 0.0})
    call = table["option_type"].str.lower().str.startswith("c").to_numpy()
    forward = 100.0 * np.exp((0.03 - 0.01) * table["maturity"].to_numpy())
    intrinsic = np.where(call, forward - table["strike"], table["strike"] - forward).clip(0.0)
    expected = np.exp(-0.03 * table["maturity"].to_numpy()) * intrinsic
    np.testing.assert_allclose(from_file["price"], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(from_params["price"], from_file["price"], rtol=0.0, atol=0.0)


def test_price_unknown_option_type_names_row_and_value(bs_quotes, tmp_path):
    path, table = bs_quotes
    table["option_type"] = table["option_type"].astype(object)
    table.loc[1, "option_type"] = "straddle"
    table.to_csv(path, index=False)
    result = runner.invoke(
        app, ["price", "--model", "bs", "--quotes", str(path), "--out", str(tmp_path / "o.csv")]
    )
    assert result.exit_code == 1
    assert "row 2" in result.output and "straddle" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "garch"], "choose bs, heston or sabr"),
        (["--engine", "fft"], "choose one of"),
        (["--params", "{not json"], "not valid JSON"),
        # a mistyped file name was "not valid JSON (Expecting value at character 0)"
        (["--params", "parms.json"], "parms.json: no such file"),
        # JSON true was taken as 1.0: priced a volatility of 100%
        (["--params", '{"volatility": true}'], "'volatility' must be a number, got true"),
    ],
)
def test_price_bad_options_are_clear_errors(bs_quotes, tmp_path, args, message):
    path, _ = bs_quotes
    base = {"--model": "bs", "--quotes": str(path), "--out": str(tmp_path / "o.csv")}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    result = runner.invoke(app, ["price", *[x for kv in base.items() for x in kv]])
    # a misused --model or --engine is a usage error naming it (exit 2, as the README says)
    assert result.exit_code == (1 if args[0] == "--params" else 2)
    assert message in result.output and args[0] in result.output


def test_price_missing_file_is_a_clear_error(tmp_path):
    result = runner.invoke(
        app,
        [
            "price",
            "--model",
            "bs",
            "--quotes",
            str(tmp_path / "nope.csv"),
            "--out",
            str(tmp_path / "o.csv"),
        ],
    )
    assert result.exit_code == 1
    assert "no such file" in result.output


@pytest.mark.parametrize("command", ["price", "iv", "calibrate"])
def test_a_folder_given_as_the_quote_file_is_a_clear_error(tmp_path, command):
    # IsADirectoryError's traceback
    (tmp_path / "quotes.csv").mkdir()
    extra = {"price": ["--model", "bs"], "iv": [], "calibrate": ["--model", "sabr"]}[command]
    out = tmp_path / ("fit.json" if command == "calibrate" else "o.csv")
    args = [command, *extra, "--quotes", str(tmp_path / "quotes.csv"), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"error: {tmp_path / 'quotes.csv'}: a folder, not a quote file" in result.output


def test_a_params_file_that_is_not_text_is_a_clear_error(bs_quotes, tmp_path):
    # bytes that are no UTF-8 were a UnicodeDecodeError traceback
    path, _ = bs_quotes
    (tmp_path / "params.json").write_bytes(b"\xff\xfe\x00binary")
    args = ["price", "--model", "bs", "--quotes", str(path), "--out", str(tmp_path / "o.csv"),
            "--params", str(tmp_path / "params.json")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "--params" in result.output and "params.json: cannot read it" in result.output


def test_iv_recovers_vols_and_explains_unsolvable_rows(tmp_path):
    prices = bs.black_price(
        forward=100.0,
        strike=torch.tensor([80.0, 100.0, 120.0], dtype=torch.float64),
        maturity=1.0,
        volatility=torch.tensor([0.3, 0.2, 0.25], dtype=torch.float64),
    )
    table = pd.DataFrame(
        {
            "option_type": "call",
            "strike": [80.0, 100.0, 120.0, 80.0],
            "maturity": 1.0,
            "forward": 100.0,
            "discount": 1.0,
            "price": [*prices.tolist(), 1.0],
        }
    )
    path, out = tmp_path / "q.csv", tmp_path / "iv.csv"
    table.to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ivs = pd.read_csv(out)
    torch.testing.assert_close(
        torch.tensor(ivs["implied_vol"][:3].to_numpy()),
        torch.tensor([0.3, 0.2, 0.25], dtype=torch.float64),
        rtol=1e-10,
        atol=0,
    )
    assert pd.isna(ivs["implied_vol"][3]) and ivs["status"][3] == "price below intrinsic value"


def test_iv_without_prices_is_a_clear_error(bs_quotes, tmp_path):
    path, _ = bs_quotes
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 1
    assert "iv needs a 'mid', 'bid'/'ask' or 'price' column" in result.output


def test_iv_of_a_file_without_rows_says_so(tmp_path):
    # a header line alone was "every row has expired (expiry on or before the quote date)"
    path = tmp_path / "q.csv"
    path.write_text("option_type,strike,maturity,spot,price\n")
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "no quotes (the file names its columns but has no rows)" in result.output
    assert "expired" not in result.output


def test_price_of_a_file_without_rows_says_so(tmp_path):
    # "priced 0 options", exit status 0, where iv and calibrate refuse the file
    path, out = tmp_path / "q.csv", tmp_path / "o.csv"
    path.write_text("option_type,strike,maturity,spot,volatility\n")
    result = runner.invoke(app, ["price", "--model", "bs", "--quotes", str(path), "--out",
                                 str(out)])  # fmt: skip
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"error: {path}: no quotes (the file names its columns but has no rows)" in (
        result.output
    )
    assert not out.exists()


@pytest.mark.parametrize("engine", ["analytic", "quantlib", "mc", "surrogate"])
def test_price_of_a_priced_file_gives_its_own_iv_status(tmp_path, engine):
    # pricing an earlier output again kept its iv_status where every vol was now solved: a
    # "deep in the money" reason stood beside a solved vol
    path = tmp_path / "q.csv"
    path.write_text("option_type,strike,maturity,spot,iv_status\n"
                    "call,100,0.5,100,time value below the price's rounding (deep in the money)\n"
                    "put,95,0.5,100,ok\n")  # fmt: skip
    params = {"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.3, "rho": -0.7}
    args = ["price", "--model", "heston", "--quotes", str(path), "--out",
            str(tmp_path / "o.csv"), "--engine", engine, "--params", json.dumps(params)]  # fmt: skip
    if engine == "mc":
        args += ["--paths", "2000", "--steps", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    priced = pd.read_csv(tmp_path / "o.csv")
    assert priced["implied_vol"].notna().all()
    assert "iv_status" not in priced


def test_demo_quick_writes_a_report_with_numbers(tmp_path):
    from qfnet.demo import summary

    out = tmp_path / "report"
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "DAX" in report and "report:" in result.output
    # counts are printed whole: the surrogate table's 4,096 points read 4.1e+03
    assert re.search(r"^\|\s+4096\s+\|", report, flags=re.MULTILINE), report
    prices = pd.read_csv(out / "dax_surface_prices.csv")
    assert len(prices) == 104 and (prices["price"] > 0).all()
    numbers = summary(out / "report.md")
    assert 0 < numbers["calibration"]["rmse_iv_bp"] < 500
    hedging = numbers["hedging"]
    assert {"learned", "delta", "no_hedge"} <= set(hedging["strategies"])
    assert all(hedging[name]["es95"] > 0 for name in hedging["strategies"])
    sabr = numbers["sabr"]
    assert sabr["points"] >= 10 and sabr["surrogate_mean_bp"] < sabr["hagan_mean_bp"]
    for png in (
        "smiles_heston.png",
        "smiles_sabr.png",
        "surrogate_run/loss.png",
        "surrogate_run/error_hist.png",
        "hedge_report/hedge_ratio_vs_spot.png",
    ):
        assert (out / png).stat().st_size > 1000, png
    _check_report_text(report, out, numbers)
    # a second run into the same folder (a second `make demo`) failed on the first's dataset;
    # it replaces the demo's folders, and leaves the user's files alone
    (out / "mine.txt").write_text("keep")
    again = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code == 0, again.output
    second = summary(out / "report.md")["calibration"]
    assert second["params"] == numbers["calibration"]["params"]
    assert (out / "mine.txt").read_text() == "keep"


def _check_report_text(report, out, numbers):
    """The report's text is what the run computed, and says why the rows differ."""
    import QuantLib as ql

    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(figures) >= 6 and all((out / f).is_file() for f in figures), figures
    assert "Settings: quick (n_data 4096," in report
    # the QuantLib reference is computed with the installed QuantLib (its version was fixed text)
    assert re.search(rf"QuantLib {re.escape(ql.__version__)}'s own calibration .* reaches "
                     r"177\.2\d here", report)  # fmt: skip
    # the network row (~320 bp on the DAX data, not converged: at its box's edge) is explained
    assert "`network` answers in one forward pass" in report
    assert "The `direct` optimum lies outside it (kappa" in report
    assert "- `network`: the calibration network's answer is at the edge" in report
    # the hedging setup is the one run (the quick run's sizes, not fixed text)
    n_paths = numbers["hedging"]["n_paths"]
    assert "(4000 training paths, at most 1 epoch)" in report
    assert f"on the same {n_paths} fresh test paths" in report


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("heston", {"v0": 0.04, "kappa": 1.5, "theta": 0.05, "sigma": 0.6, "rho": -0.7}),
        ("sabr", {"alpha": 0.25, "beta": 0.7, "rho": -0.3, "nu": 0.5}),
    ],
)
def test_price_heston_and_sabr_analytic_agree_with_quantlib(bs_quotes, tmp_path, model, params):
    path, table = bs_quotes
    table.drop(columns=["volatility"]).to_csv(path, index=False)
    prices = {}
    for engine in ("analytic", "quantlib"):
        out = tmp_path / f"{engine}.csv"
        prices[engine] = _price(path, out, model, engine, params)
    torch.testing.assert_close(
        torch.tensor(prices["analytic"]["implied_vol"].to_numpy()),
        torch.tensor(prices["quantlib"]["implied_vol"].to_numpy()),
        rtol=0,
        atol=1e-6,
    )
    assert (prices["analytic"]["price"] > 0).all()


def test_price_heston_invalid_rho_names_the_field(bs_quotes, tmp_path):
    path, table = bs_quotes
    table.drop(columns=["volatility"]).assign(
        v0=0.04, kappa=1.0, theta=0.04, sigma=0.5, rho=[-0.5, 1.5, 0.0, 0.2]
    ).to_csv(path, index=False)
    result = runner.invoke(
        app, ["price", "--model", "heston", "--quotes", str(path), "--out", str(tmp_path / "o.csv")]
    )
    assert result.exit_code == 1
    assert "rho" in result.output and "row 2" in result.output


def test_calibrate_sabr_on_the_bundled_surface_through_the_main_app(tmp_path):
    from qfnet.demo import DAX_SURFACE

    out = tmp_path / "sabr.json"
    result = runner.invoke(
        app, ["calibrate", "--model", "sabr", "--quotes", str(DAX_SURFACE), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    fit = json.loads(out.read_text())
    assert fit["model"] == "sabr" and fit["n_quotes"] > 90 and fit["rmse_iv_bp"] < 200


def test_calibrate_missing_file_is_a_clear_error(tmp_path):
    result = runner.invoke(
        app,
        [
            "calibrate",
            "--model",
            "heston",
            "--quotes",
            str(tmp_path / "nope.csv"),
            "--out",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code != 0
    assert "no such file" in result.output


def test_price_heston_surrogate_engine_matches_the_analytic_price(bs_quotes, tmp_path):
    path, table = bs_quotes
    params = {"v0": 0.04, "kappa": 1.5, "theta": 0.05, "sigma": 0.6, "rho": -0.7}
    table.drop(columns=["volatility"]).assign(maturity=[0.5, 1.0, 2.0, 0.25]).to_csv(
        path, index=False
    )
    vols = {}
    for engine in ("analytic", "surrogate"):
        out = tmp_path / f"{engine}.csv"
        vols[engine] = _price(path, out, "heston", engine, params)["implied_vol"].to_numpy()
    # The shipped surrogate's stated accuracy: mean 0.25 bp, max ~15 bp inside its domain.
    torch.testing.assert_close(
        torch.tensor(vols["surrogate"]), torch.tensor(vols["analytic"]), rtol=0, atol=15e-4
    )


def test_price_surrogate_outside_its_domain_is_refused(bs_quotes, tmp_path):
    path, table = bs_quotes
    params = {"v0": 0.9, "kappa": 1.5, "theta": 0.05, "sigma": 0.6, "rho": -0.7}
    table.drop(columns=["volatility"]).to_csv(path, index=False)
    result = runner.invoke(
        app,
        [
            "price",
            "--model",
            "heston",
            "--quotes",
            str(path),
            "--out",
            str(tmp_path / "o.csv"),
            "--engine",
            "surrogate",
            "--params",
            json.dumps(params),
        ],
    )
    assert result.exit_code == 1
    assert "v0" in result.output


def test_hedge_train_with_a_bad_config_names_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("market:\n  model: heston\n  spot: -1.0\n")
    result = runner.invoke(
        app, ["hedge", "train", "--config", str(config), "--out", str(tmp_path / "run")]
    )
    # a bad value in the file is bad input: an error line and exit 1 (it was a usage error)
    assert result.exit_code == 1 and result.output.startswith("error:")
    assert "market.spot" in result.output


def test_hedge_train_resume_from_a_corrupted_checkpoint_is_an_error_line(tmp_path):
    # a run killed while writing its checkpoint: --resume printed a CheckpointError traceback
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "seed: 1\nmarket: {n_steps: 4}\npaths: {train: 500, val: 200, test: 200}\n"
        "strategy: {type: ntb, hidden: [4]}\ntraining: {epochs: 1, batch_size: 250}\n"
    )
    run = tmp_path / "run"
    args = ["hedge", "train", "--config", str(config), "--out", str(run)]
    assert runner.invoke(app, args).exit_code == 0
    checkpoint = run / "checkpoints" / "last.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # truncated mid-write
    result = runner.invoke(app, [*args, "--resume", "--epochs", "2"])
    assert result.exit_code == 1 and result.output.startswith("error:"), result.output
    assert "last.pt" in result.output and "Traceback" not in result.output


def test_hedge_train_overwrite_stopped_early_leaves_no_old_run_to_resume(tmp_path, monkeypatch):
    # the replaced run's model.pt and checkpoints/last.pt stayed beside the new config: --resume
    # then "continued" the old run (its weights and history) and saved it under the new config
    from qfnet.hedging.train import HedgeModel

    tiny = ("market: {n_steps: 4}\npaths: {train: 500, val: 200, test: 200}\n"
            "strategy: {type: ntb, hidden: [4]}\ntraining: {epochs: 1, batch_size: 250}\n")  # fmt: skip
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text("seed: 1\n" + tiny)
    new.write_text("seed: 2\n" + tiny)
    run = tmp_path / "run"
    first = runner.invoke(app, ["hedge", "train", "--config", str(old), "--out", str(run)])
    assert first.exit_code == 0, first.output
    args = ["hedge", "train", "--config", str(new), "--out", str(run)]

    def interrupted(self, pnl, target=None):
        raise KeyboardInterrupt  # Ctrl-C in the new run's first step

    with monkeypatch.context() as patch:
        patch.setattr(HedgeModel, "risk_loss", interrupted)
        assert runner.invoke(app, [*args, "--overwrite"]).exit_code != 0
    assert not (run / "model.pt").exists()
    assert list((run / "checkpoints").glob("*.pt")) == []
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 1 and "no checkpoint to resume" in result.output, result.output


def test_generate_rejects_an_unknown_model(tmp_path):
    result = runner.invoke(
        app, ["generate", "--model", "garch", "--n", "16", "--out", str(tmp_path / "d")]
    )
    assert result.exit_code != 0
    assert "--model" in result.output or "model" in result.output


def test_hedge_backtest_of_a_missing_run_is_a_clear_error(tmp_path):
    result = runner.invoke(
        app,
        ["hedge", "backtest", "--run", str(tmp_path / "no_run"), "--out", str(tmp_path / "report")],
        env={"COLUMNS": "400"},  # a long tmp path must not be cut by the error box
    )
    assert result.exit_code == 1 and result.output.startswith("error:")
    assert "no_run" in result.output


def test_train_surrogate_without_a_dataset_is_a_clear_error(tmp_path):
    result = runner.invoke(
        app,
        ["train", "surrogate", "--data", str(tmp_path / "no_data"), "--out", str(tmp_path / "run")],
    )
    assert result.exit_code != 0
    assert "no_data" in result.output


def test_price_refuses_a_barrier_row_instead_of_pricing_its_vanilla(tmp_path):
    # the row's barrier was ignored: the down-and-out call got the vanilla's 7.97
    quotes = tmp_path / "q.csv"
    quotes.write_text("option_type,strike,maturity,spot,volatility,barrier,barrier_type\n"
                      "call,100,1,100,0.2,,\ncall,100,1,100,0.2,80,down-and-out\n")  # fmt: skip
    out = tmp_path / "out.csv"
    result = runner.invoke(
        app, ["price", "--model", "bs", "--quotes", str(quotes), "--out", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert "row 2 (file line 3), column 'barrier'" in result.output and not out.exists()


def test_demo_refuses_a_folder_holding_its_folder_names_without_its_marker(tmp_path):
    # a demo_report from before the marker (or another program's folder): the run wrote into it
    # (or, where it held a dataset, ended in a traceback after the calibration) and left the
    # marker, so the next run deleted the folder with the user's files
    out = tmp_path / "demo_report"
    (out / "heston_data").mkdir(parents=True)
    (out / "heston_data" / "mine.parquet").write_text("keep")
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and "heston_data" in result.output
    assert not (out / ".qfnet-demo").exists()
    assert (out / "heston_data" / "mine.parquet").read_text() == "keep"


def test_demo_into_a_file_path_is_a_clear_error(tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a directory")
    result = runner.invoke(app, ["demo", "--quick", "--out", str(target)])
    assert result.exit_code != 0
    assert "taken" in result.output


def test_demo_into_a_folder_below_a_file_is_an_error_line(tmp_path):
    # mkdir of taken/report raised NotADirectoryError: a traceback instead of an error line
    (tmp_path / "taken").write_text("not a directory")
    result = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "taken" / "report")])
    assert result.exit_code == 1 and result.output.startswith("error:"), result.output
    assert "taken" in result.output


def test_price_with_a_missing_surrogate_file_is_an_error_line(bs_quotes, tmp_path):
    path, table = bs_quotes
    params = {"v0": 0.04, "kappa": 1.5, "theta": 0.05, "sigma": 0.6, "rho": -0.7}
    table.drop(columns=["volatility"]).to_csv(path, index=False)
    args = ["price", "--model", "heston", "--quotes", str(path), "--out", str(tmp_path / "o.csv"),
            "--engine", "surrogate", "--params", json.dumps(params),
            "--surrogate", str(tmp_path / "nope.pt")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "error:" in result.output and "nope.pt" in result.output


def test_iv_takes_forwards_from_parity_and_flags_zero_prices(tmp_path):
    # No rate column: the vols must come from parity forwards and discounts, not from rate 0.
    forward, discount = 4650.0, 0.92
    strikes = torch.tensor([4000.0, 4500.0, 5000.0], dtype=torch.float64)
    rows = []
    for is_call in (True, False):
        price = bs.black_price(forward=forward, strike=strikes, maturity=2.0, volatility=0.2,
                               discount=discount, is_call=is_call)  # fmt: skip
        rows += [{"option_type": "call" if is_call else "put", "strike": float(k), "mid": float(p)}
                 for k, p in zip(strikes, price, strict=True)]  # fmt: skip
    rows.append({"option_type": "put", "strike": 2000.0, "mid": 0.0})  # a far wing at 0
    table = pd.DataFrame(rows).assign(maturity=2.0, spot=4500.0)
    path, out = tmp_path / "chain.csv", tmp_path / "iv.csv"
    table.to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ivs = pd.read_csv(out)
    np.testing.assert_allclose(ivs["implied_vol"][:6], 0.2, rtol=1e-9, atol=0)
    np.testing.assert_allclose(ivs["forward"][:6], forward, rtol=1e-10, atol=0)
    assert pd.isna(ivs["implied_vol"][6]) and ivs["status"][6].startswith(
        "price at its lower bound"
    )
    # the file had no rate or dividend: no column of zeros beside the parity forward and
    # discount the vols used (it read as a rate of 0)
    assert "rate" not in ivs and "dividend" not in ivs


def test_iv_notes_carry_forwards_made_with_a_missing_rate(tmp_path):
    # calls only and no rate column: the forward was the spot, a 2.6-year ATM vol 26.2% for
    # 20.6%, with the status ok and no word (calibrate's report said so; iv did not)
    table = pd.DataFrame({"option_type": "call", "strike": [90.0, 100.0], "maturity": 1.0,
                          "spot": 100.0, "mid": [14.0, 8.0]})  # fmt: skip
    path, out = tmp_path / "calls.csv", tmp_path / "iv.csv"
    table.to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "note: no rate or dividend column: 1 expiry without call/put pairs" in result.output
    table.assign(rate=0.03, dividend=0.01).to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0 and "note:" not in result.output, result.output
    # a discount column sets the carry's rate: "no rate column ... with it at 0" was false
    table.assign(discount=0.97, dividend=0.01).to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0 and "note:" not in result.output, result.output
    forward = pd.read_csv(out)["forward"]
    np.testing.assert_allclose(forward, 100.0 * np.exp(-0.01) / 0.97, rtol=1e-12, atol=0)


def test_iv_uses_one_discount_per_expiry_and_notes_a_slope_against_it(tmp_path):
    # prices of D = 0.95, the calls giving 0.97: the puts were written with the slope's 0.95 and
    # the calls with 0.97 in one expiry (a call and a put of a strike 2 vol points apart)
    strikes = torch.arange(90.0, 120.0, 5.0, dtype=torch.float64)
    rows = [pd.DataFrame({"option_type": "call" if is_call else "put", "strike": strikes.numpy(),
                          "maturity": 1.0, "discount": 0.97 if is_call else np.nan,
                          "mid": bs.black_price(forward=103.0, strike=strikes, maturity=1.0,
                                               volatility=0.2, discount=0.95,
                                               is_call=is_call).numpy()})
            for is_call in (True, False)]  # fmt: skip
    path, out = tmp_path / "q.csv", tmp_path / "iv.csv"
    pd.concat(rows).to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(pd.read_csv(out)["discount"], 0.97, rtol=1e-15, atol=0)
    assert re.search(r"note: expiry T=1: its call/put pairs' parity slope gives a discount of "
                     r"0\.95 .*the given one is used", result.output), result.output  # fmt: skip


def test_iv_notes_no_rate_0_discount_for_a_one_pair_expiry_that_gives_its_own(tmp_path):
    # the one-pair expiry gives its discount, the other expiry (full parity) none: the note said
    # the one-pair expiry took its discount at rate 0 (it took 0.95, its own)
    rows = []
    for t, discount, strikes, given in (
        (1.0, 0.95, [100.0], 0.95),
        (0.5, 0.97, [90.0, 100.0, 110.0], np.nan),
    ):
        for is_call in (True, False):
            k = torch.tensor(strikes, dtype=torch.float64)
            price = bs.black_price(forward=103.0, strike=k, maturity=t, volatility=0.2,
                                   discount=discount, is_call=is_call)  # fmt: skip
            rows.append(pd.DataFrame({"option_type": "call" if is_call else "put", "strike": strikes,
                                      "maturity": t, "price": price.numpy(), "discount": given}))  # fmt: skip
    path, out = tmp_path / "q.csv", tmp_path / "iv.csv"
    pd.concat(rows, ignore_index=True).to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0 and "note:" not in result.output, result.output
    np.testing.assert_allclose(pd.read_csv(out)["implied_vol"], 0.2, rtol=1e-9, atol=0)


def test_iv_takes_a_discount_given_on_some_rows_of_an_expiry_for_the_whole_expiry(tmp_path):
    # a call's discount 0.97 beside its put's gap: the put was written with discount 1 and both
    # with the parity forward of discount 1 (102.9), the call's vol solved with it and 0.97
    strike = torch.tensor([100.0], dtype=torch.float64)
    prices = [float(bs.black_price(forward=103.0, strike=strike, maturity=1.0, volatility=0.2,
                                   discount=0.97, is_call=is_call)[0])
              for is_call in (True, False)]  # fmt: skip
    table = pd.DataFrame({"option_type": ["call", "put"], "strike": 100.0, "maturity": 1.0,
                          "spot": 100.0, "dividend": 0.0, "price": prices,
                          "discount": [0.97, np.nan]})  # fmt: skip
    path, out = tmp_path / "q.csv", tmp_path / "iv.csv"
    table.to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0 and "note:" not in result.output, result.output
    ivs = pd.read_csv(out)
    np.testing.assert_allclose(ivs["discount"], 0.97, rtol=0, atol=0)
    np.testing.assert_allclose(ivs["forward"], 103.0, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ivs["implied_vol"], 0.2, rtol=1e-9, atol=0)
    # calls only (no pairs): the spot is carried at that discount on both rows, and no note
    # says the rate was taken as 0 (it was, on the row without one)
    table.assign(option_type="call", strike=[100.0, 110.0]).to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0 and "note:" not in result.output, result.output
    np.testing.assert_allclose(pd.read_csv(out)["forward"], 100.0 / 0.97, rtol=1e-12, atol=0)


def test_iv_notes_maturities_in_days_read_as_years(tmp_path):
    # a 30-day chain whose maturity column says 30: vols of 1.05% for 20%, status ok, no word
    strikes = torch.tensor([90.0, 100.0, 110.0], dtype=torch.float64)
    rows = [{"option_type": "call" if is_call else "put", "strike": float(k), "mid": float(p)}
            for is_call in (True, False)
            for k, p in zip(strikes, bs.black_price(forward=100.0, strike=strikes,
                                                    maturity=30 / 365, volatility=0.2,
                                                    is_call=is_call), strict=True)]  # fmt: skip
    path, out = tmp_path / "days.csv", tmp_path / "iv.csv"
    for maturity, noted in ((30.0, True), (30 / 365, False)):
        pd.DataFrame(rows).assign(maturity=maturity).to_csv(path, index=False)
        result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert ("note: maturities are whole numbers (30) and the median" in result.output) == noted
        expected = 0.2 / np.sqrt(365) if noted else 0.2
        np.testing.assert_allclose(pd.read_csv(out)["implied_vol"], expected, rtol=1e-6, atol=0)


def test_iv_gives_a_crossed_row_a_status_and_solves_the_others(tmp_path):
    table = pd.DataFrame({"option_type": "call", "strike": [90.0, 100.0], "maturity": 1.0,
                          "forward": 100.0, "discount": 1.0, "bid": [12.0, 9.0],
                          "ask": [12.5, 8.0]})  # fmt: skip
    path, out = tmp_path / "q.csv", tmp_path / "iv.csv"
    table.to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ivs = pd.read_csv(out)
    assert ivs["status"].tolist() == ["ok", "crossed quote (bid > ask)"]
    assert ivs["implied_vol"][0] > 0 and pd.isna(ivs["implied_vol"][1])


def test_iv_summary_counts_unsolved_rows_by_reason(tmp_path):
    # the summary's "(N unsolvable)" counted expired and crossed rows, never solved, with the
    # prices no vol reproduces
    table = pd.DataFrame({"option_type": "call", "strike": [90.0, 100.0, 100.0, 80.0, 110.0],
                          "maturity": [1.0, 1.0, 0.0, 1.0, 1.0], "forward": 100.0,
                          "discount": 1.0, "bid": [12.0, 9.0, 1.0, 1.0, 3.0],
                          "ask": [12.5, 8.0, 1.2, 1.2, None]})  # fmt: skip
    path, out = tmp_path / "q.csv", tmp_path / "iv.csv"
    table.to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out)["implied_vol"].isna().tolist() == [False, True, True, True, True]
    assert ("(4 unsolved: 1 expired, 1 crossed, 1 without a price, 1 without a solution)"
            in result.output)  # fmt: skip


def test_iv_leaves_a_crossed_quote_out_of_the_parity_forward(tmp_path):
    # one stale put (bid 8.15 > ask 8.05, its mid 3 above its value) made the parity forward:
    # every other vol of the expiry moved by up to 2.4 points, each with the status ok
    strikes = torch.tensor([90.0, 95.0, 100.0, 105.0, 110.0], dtype=torch.float64)
    rows = []
    for is_call in (True, False):
        price = bs.black_price(forward=100.0 * np.exp(0.01), strike=strikes, maturity=0.5,
                               volatility=0.2, discount=np.exp(-0.015), is_call=is_call)  # fmt: skip
        rows += [{"option_type": "call" if is_call else "put", "strike": float(k),
                  "bid": round(float(p) - 0.05, 2), "ask": round(float(p) + 0.05, 2)}
                 for k, p in zip(strikes, price, strict=True)]  # fmt: skip
    table = pd.DataFrame(rows).assign(maturity=0.5, spot=100.0, rate=0.03, dividend=0.01)
    crossed = (table["option_type"] == "put") & (table["strike"] == 100.0)
    ask = float(table.loc[crossed, "ask"].iloc[0])
    table.loc[crossed, ["bid", "ask"]] = [ask + 3.0, ask + 2.9]
    path, out, alone = tmp_path / "q.csv", tmp_path / "iv.csv", tmp_path / "alone.csv"
    table.to_csv(path, index=False)
    table[~crossed].to_csv(alone, index=False)
    for quotes, written in ((path, out), (alone, tmp_path / "iv_alone.csv")):
        result = runner.invoke(app, ["iv", "--quotes", str(quotes), "--out", str(written)])
        assert result.exit_code == 0, result.output
    ivs, expected = pd.read_csv(out), pd.read_csv(tmp_path / "iv_alone.csv")
    assert ivs.loc[crossed.to_numpy(), "status"].tolist() == ["crossed quote (bid > ask)"]
    for column in ("forward", "implied_vol"):
        np.testing.assert_allclose(ivs.loc[~crossed.to_numpy(), column], expected[column],
                                   rtol=1e-12, atol=0)  # fmt: skip
    np.testing.assert_allclose(expected["implied_vol"], 0.2, rtol=0, atol=2e-3)


def test_iv_keeps_a_crossed_pair_that_is_its_expirys_only_forward(tmp_path):
    # without a spot, an expiry whose only call/put pair had a crossed put refused the whole
    # file ("no call/put pairs to imply the forward"); an expiry with other pairs still leaves
    # its crossed quote out
    table = pd.DataFrame({"option_type": ["call", "put", "call", "put", "call", "put"],
                          "strike": [100.0, 100.0, 105.0, 105.0, 100.0, 100.0],
                          "maturity": [0.5, 0.5, 0.5, 0.5, 1.0, 1.0],
                          "bid": [5.5, 4.5, 3.0, 9.0, 8.0, 7.5],
                          "ask": [5.7, 4.7, 3.2, 8.9, 8.2, 7.4]})  # fmt: skip
    path, out = tmp_path / "q.csv", tmp_path / "iv.csv"
    table.to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ivs = pd.read_csv(out)
    ok, crossed = "ok", "crossed quote (bid > ask)"
    assert ivs["status"].tolist() == [ok, ok, ok, crossed, ok, crossed]
    # 0.5: the pair at 100 alone; 1.0: the crossed pair's mids, 8.1 - 7.45 at discount 1
    np.testing.assert_allclose(ivs["forward"], [101.0] * 4 + [100.65] * 2, rtol=1e-12, atol=0)
    assert np.isfinite(ivs["implied_vol"][[0, 1, 2, 4]]).all()


def test_iv_reads_a_forward_on_one_row_as_the_expirys_beside_crossed_pairs(tmp_path):
    # a forward on one row is the expiry's (parity_forwards): its crossed pairs are left out as
    # where every row gives it (they were kept for the forward and their slope made the discount)
    strikes = torch.tensor([95.0, 100.0, 105.0], dtype=torch.float64)
    rows = []
    for is_call in (True, False):
        price = bs.black_price(forward=100.0, strike=strikes, maturity=1.0, volatility=0.2,
                               discount=0.96, is_call=is_call).tolist()  # fmt: skip
        spread = 0.05 if is_call else -0.05  # the puts crossed
        rows += [{"option_type": "call" if is_call else "put", "strike": float(k),
                  "bid": round(p - spread, 2), "ask": round(p + spread, 2)}
                 for k, p in zip(strikes, price, strict=True)]  # fmt: skip
    table = pd.DataFrame(rows).assign(maturity=1.0, forward=100.0)
    written = {}
    for name, forward in (("every", table["forward"]), ("one", [100.0] + [None] * 5)):
        path, out = tmp_path / f"{name}.csv", tmp_path / f"iv_{name}.csv"
        table.assign(forward=forward).to_csv(path, index=False)
        result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
        assert result.exit_code == 0, result.output
        written[name] = pd.read_csv(out)
    for column in ("forward", "discount", "implied_vol"):
        np.testing.assert_allclose(written["one"][column], written["every"][column], rtol=1e-15,
                                   atol=0)  # fmt: skip


def test_iv_flags_a_zero_bid_whose_vol_is_the_mid_of_zero_and_the_ask(tmp_path):
    # the mid of (0, ask) was solved with the status ok: a far wing's vol from half its ask
    table = pd.DataFrame({"option_type": "call", "strike": [100.0, 150.0, 160.0], "maturity": 1.0,
                          "forward": 100.0, "discount": 1.0, "bid": [7.9, 0.0, 0.0],
                          "ask": [8.1, 0.2, 0.1], "mid": [None, None, 0.08]})  # fmt: skip
    path, out = tmp_path / "q.csv", tmp_path / "iv.csv"
    table.to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ivs = pd.read_csv(out)
    assert ivs["status"][0] == "ok" and ivs["status"][1].startswith("zero bid: the vol is the mid")
    assert ivs["status"][2] == "ok"  # the file's own mid is what was solved
    assert (ivs["implied_vol"] > 0).all()
    assert "(0 unsolved, 1 solved with a caveat in their status)" in result.output


def test_iv_gives_options_expiring_on_the_quote_date_a_status_and_solves_the_others(tmp_path):
    # an exchange download's 0DTE rows refused the whole file ("expiry ... is not after
    # quote_date"); the other expiries' vols must be those of the file without them
    strikes = torch.tensor([90.0, 100.0, 110.0], dtype=torch.float64)
    rows = []
    for expiry, t in (("2024-01-05", 0.0), ("2024-03-05", 60 / 365)):
        for is_call in (True, False):
            price = bs.black_price(forward=100.0, strike=strikes, maturity=max(t, 1e-9),
                                   volatility=0.25, is_call=is_call)  # fmt: skip
            rows += [{"quote_date": "2024-01-05", "expiry": expiry, "strike": float(k),
                      "option_type": "call" if is_call else "put", "mid": float(p)}
                     for k, p in zip(strikes, price, strict=True)]  # fmt: skip
    table = pd.DataFrame(rows).assign(spot=100.0)
    path, out, alone = tmp_path / "q.csv", tmp_path / "iv.csv", tmp_path / "alone.csv"
    table.to_csv(path, index=False)
    table[table["expiry"] != "2024-01-05"].to_csv(alone, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ivs = pd.read_csv(out)
    assert (ivs["status"][:6] == "expired: the expiry is on or before the quote date "
                                 "(maturity <= 0)").all()  # fmt: skip
    assert ivs["implied_vol"][:6].isna().all() and ivs["forward"][:6].isna().all()
    assert runner.invoke(app, ["iv", "--quotes", str(alone), "--out", str(out.with_stem("a"))]
                         ).exit_code == 0  # fmt: skip
    expected = pd.read_csv(out.with_stem("a"))
    np.testing.assert_allclose(ivs["implied_vol"][6:], expected["implied_vol"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(ivs["implied_vol"][6:], 0.25, rtol=1e-9, atol=0)
    assert (ivs["status"][6:] == "ok").all()


def test_iv_errors_after_expired_rows_name_the_input_rows(tmp_path):
    # an expired first row left out before the forwards: the rows after it were counted among
    # those left ("row 2 (file line 4)" for the file's row 3)
    path, out = tmp_path / "q.csv", tmp_path / "iv.csv"
    head = "option_type,strike,maturity,spot,quote_date,discount,price\ncall,100,0,100,2024-01-05,"
    path.write_text(f"{head}0.95,1\ncall,100,1,100,2024-01-05,0.95,10\n"
                    "put,100,1,100,2024-01-05,0.90,5\n")  # fmt: skip
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 1
    assert ("discount 0.9 at row 3 (file line 4) and 0.95 at row 2 (file line 3)"
            in result.output), result.output  # fmt: skip
    path.write_text(f"{head}0.95,1\ncall,100,1,100,2024-01-05,0.95,10\n"
                    "put,100,1,100,2024-01-08,0.95,5\n")  # fmt: skip
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 1
    assert ("row 3 (file line 4), column 'quote_date': a second quote date, 2024-01-08 "
            "(2024-01-05 in row 2)" in result.output), result.output  # fmt: skip


def test_iv_without_spot_or_pairs_names_the_row_without_a_forward(tmp_path):
    # a forward column with a gap at one expiry was told "give a spot (or forward) column"
    path, out = tmp_path / "q.csv", tmp_path / "iv.csv"
    path.write_text("option_type,strike,maturity,forward,price\ncall,100,0,100,10\n"
                    "call,100,2,100,10\ncall,110,1,,5\n")  # fmt: skip
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 1
    assert (
        "no spot: give a spot column, a forward on its rows, or calls and puts of "
        "the same strikes; row 3 (file line 4) gives no forward" in result.output
    ), result.output


def test_iv_names_a_one_sided_row_without_a_price(tmp_path):
    # a missing ask read as a gap, whose status said "invalid input (a non-finite value, ...)"
    path, out = tmp_path / "q.csv", tmp_path / "iv.csv"
    path.write_text("option_type,strike,maturity,forward,discount,bid,ask\n"
                    "call,90,1,100,1,12.0,12.5\ncall,100,1,100,1,7.5,N/A\n")  # fmt: skip
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ivs = pd.read_csv(out)
    assert ivs["status"].tolist() == ["ok", "no price: mid and price missing, and bid or ask "
                                      "missing (a one-sided quote)"]  # fmt: skip
    assert ivs["implied_vol"][0] > 0 and pd.isna(ivs["implied_vol"][1])


def test_price_shifted_sabr_reports_the_shifted_black_vol(tmp_path):
    # Negative rates: forward -0.2%, strikes from -0.5%, shift 2%. The implied vol of a shifted
    # SABR price is the shifted-lognormal vol, which is Hagan's (shifted) vol itself; before,
    # it was solved unshifted, NaN for every row of a negative forward.
    strikes = np.array([-0.005, -0.002, 0.0, 0.005, 0.01])
    table = pd.DataFrame({"option_type": ["put", "put", "call", "call", "call"],
                          "strike": strikes, "maturity": 2.0, "forward": -0.002,
                          "discount": 0.99, "shift": 0.02})  # fmt: skip
    path = tmp_path / "q.csv"
    table.to_csv(path, index=False)
    params = {"alpha": 0.01, "beta": 0.5, "rho": -0.2, "nu": 0.4}
    from pricing.sabr import lognormal_vol

    hagan = lognormal_vol(forward=-0.002, strike=torch.tensor(strikes), maturity=2.0, shift=0.02,
                          **params).numpy()  # fmt: skip
    for engine in ("analytic", "quantlib"):
        priced = _price(path, tmp_path / f"{engine}.csv", "sabr", engine, params)
        np.testing.assert_allclose(priced["implied_vol"], hagan, rtol=1e-9, atol=0)
    # the shift in --params instead of a column: negative strikes were refused by the file's
    # strike > 0 check
    table.drop(columns="shift").to_csv(path, index=False)
    priced = _price(path, tmp_path / "params.csv", "sabr", "analytic", params | {"shift": 0.02})
    np.testing.assert_allclose(priced["implied_vol"], hagan, rtol=1e-9, atol=0)


def test_iv_of_a_shifted_file_is_the_shifted_black_vol(tmp_path):
    strikes = torch.tensor([-0.004, 0.0, 0.004, 0.01], dtype=torch.float64)
    vols = torch.tensor([0.12, 0.1, 0.11, 0.13], dtype=torch.float64)
    call = strikes >= -0.001
    prices = bs.black_price(forward=-0.001 + 0.03, strike=strikes + 0.03, maturity=1.5,
                            volatility=vols, discount=0.98, is_call=call)  # fmt: skip
    table = pd.DataFrame({"option_type": np.where(call.numpy(), "call", "put"),
                          "strike": strikes.numpy(), "maturity": 1.5, "forward": -0.001,
                          "discount": 0.98, "shift": 0.03, "price": prices.numpy()})  # fmt: skip
    path, out = tmp_path / "q.csv", tmp_path / "iv.csv"
    table.to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ivs = pd.read_csv(out)
    assert (ivs["status"] == "ok").all(), ivs["status"].tolist()
    np.testing.assert_allclose(ivs["implied_vol"], vols.numpy(), rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    ("extra", "option"),
    [(["--model", "bs", "--engine", "surrogate"], "--engine"),
     (["--model", "heston", "--surrogate", "run"], "--surrogate")],
)  # fmt: skip
def test_price_surrogate_options_that_cannot_apply_are_usage_errors(bs_quotes, tmp_path, extra,
                                                                   option):  # fmt: skip
    # --surrogate without --engine surrogate was ignored (the rows priced analytically, exit 0);
    # --model bs --engine surrogate was an error line (exit 1), not a usage error
    path, _ = bs_quotes
    out = tmp_path / "o.csv"
    result = runner.invoke(app, ["price", *extra, "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 2 and option in result.output, result.output
    assert not out.exists()


def test_price_output_is_written_whole_or_not_at_all(bs_quotes, tmp_path, monkeypatch):
    # a failed write left a half-written table (and a folder as --out was a traceback)
    path, _ = bs_quotes
    args = ["price", "--model", "bs", "--quotes", str(path), "--out"]
    (tmp_path / "folder.csv").mkdir()
    result = runner.invoke(app, [*args, str(tmp_path / "folder.csv")])
    assert result.exit_code == 1 and "cannot write the output" in result.output, result.output
    out = tmp_path / "p.csv"
    out.write_text("previous,table\n")

    def full_disk(self, target, **kwargs):
        target.write(b"option_type,str")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    result = runner.invoke(app, [*args, str(out)])
    assert result.exit_code == 1 and "No space left on device" in result.output, result.output
    assert out.read_text() == "previous,table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.csv", "p.csv", "quotes.csv"]


def test_two_writers_of_one_output_never_share_a_temporary_file(tmp_path):
    # both wrote .fit.json.tmp: one that finished while the other was writing renamed the
    # other's file into place, which the slower one went on writing into (NUL bytes, its tail)
    out = tmp_path / "fit.json"

    def slow(handle):
        handle.write(b'{"writer": "slow", "rows": [1, 2, 3')
        handle.flush()
        write_atomically(out, lambda other: other.write(b'{"writer": "fast"}\n'))
        assert json.loads(out.read_text()) == {"writer": "fast"}
        handle.write(b"]}\n")

    write_atomically(out, slow)
    assert json.loads(out.read_text()) == {"writer": "slow", "rows": [1, 2, 3]}
    assert [p.name for p in tmp_path.iterdir()] == ["fit.json"]


@pytest.mark.parametrize(("command", "out"), [("price", "p.txt"), ("iv", "v.xlsx"),
                                              ("calibrate", "fit.csv")])  # fmt: skip
def test_an_output_name_of_another_format_is_a_usage_error(bs_quotes, tmp_path, command, out):
    # price --out x.txt wrote CSV, calibrate --out a.csv wrote JSON into it
    path, _ = bs_quotes
    extra = {"price": ["--model", "bs"], "iv": [], "calibrate": ["--model", "sabr"]}[command]
    result = runner.invoke(app, [command, *extra, "--quotes", str(path), "--out",
                                 str(tmp_path / out)])  # fmt: skip
    assert result.exit_code == 2 and "--out" in result.output, result.output
    assert not (tmp_path / out).exists()


def test_price_surrogate_reads_forward_and_discount_per_row_as_the_other_engines(tmp_path):
    # a forward/discount given on some rows only: spot and rate price the others (it was refused:
    # "column 'forward' is not a finite number at row 1")
    quotes = tmp_path / "q.csv"
    quotes.write_text("option_type,strike,maturity,spot,rate,forward,discount\n"
                      "call,100,1.0,100,0.02,,\nput,100,1.0,100,0.02,101,0.97\n")  # fmt: skip
    params = {"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.3, "rho": -0.7}
    vols = {e: _price(quotes, tmp_path / f"{e}.csv", "heston", e, params)["implied_vol"].to_numpy()
            for e in ("analytic", "surrogate")}  # fmt: skip
    # The shipped surrogate's stated accuracy: mean 0.25 bp, max ~15 bp inside its domain.
    np.testing.assert_allclose(vols["surrogate"], vols["analytic"], rtol=0, atol=15e-4)


def test_iv_keeps_the_files_own_implied_vols_as_market_implied_vol(tmp_path):
    # a quote file's vols (a vendor's) were overwritten in OUT by the solved ones
    price = bs.black_price(forward=100.0, strike=torch.tensor([90.0, 110.0], dtype=torch.float64),
                           maturity=1.0, volatility=0.2)  # fmt: skip
    table = pd.DataFrame({"option_type": "call", "strike": [90.0, 110.0], "maturity": 1.0,
                          "forward": 100.0, "discount": 1.0, "mid": price.numpy(),
                          "implied_vol": [0.21, 0.19]})  # fmt: skip
    path, out = tmp_path / "q.csv", tmp_path / "iv.csv"
    table.to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "the file's implied_vol kept as market_implied_vol" in result.output
    written = pd.read_csv(out)
    np.testing.assert_array_equal(written["market_implied_vol"], [0.21, 0.19])
    np.testing.assert_allclose(written["implied_vol"], 0.2, rtol=1e-9, atol=0)
    # a vendor's own status column (open, halted) was overwritten by the solver's
    table.assign(status=["open", "halted"]).to_csv(path, index=False)
    result = runner.invoke(app, ["iv", "--quotes", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "implied_vol kept as market_implied_vol, status kept as market_status" in result.output
    written = pd.read_csv(out)
    assert written["market_status"].tolist() == ["open", "halted"]
    assert written["status"].tolist() == ["ok", "ok"]


@pytest.mark.parametrize("engine", ["analytic", "quantlib", "surrogate"])
def test_price_a_bad_params_value_names_params_not_a_row(bs_quotes, tmp_path, engine):
    # rho -1.7 given in --params was reported at "row 1", which sent the reader to the file
    path, table = bs_quotes
    table.drop(columns=["volatility"]).to_csv(path, index=False)
    params = {"v0": 0.04, "kappa": 1.5, "theta": 0.05, "sigma": 0.6, "rho": -1.7}
    result = runner.invoke(app, ["price", "--model", "heston", "--quotes", str(path), "--out",
                                 str(tmp_path / "o.csv"), "--engine", engine, "--params",
                                 json.dumps(params)])  # fmt: skip
    assert result.exit_code == 1
    assert "error: --params: rho" in result.output and "row" not in result.output


@pytest.mark.parametrize("group", [[], ["train"], ["hedge"]])
def test_command_lists_show_one_line_summaries(group):
    # the command list prints a docstring's first paragraph with its line breaks (rich mode):
    # iv and the hedge commands showed ragged multi-line entries in `qfnet --help`
    import typer.main

    command = typer.main.get_command(app)
    for name in group:
        command = command.commands[name]
    for name, sub in command.commands.items():
        summary = (sub.help or "").split("\n\n")[0].strip()
        assert summary and "\n" not in summary, name


# 03/01/2024 to 05/06/2024: 154 days day-first (3 January to 5 June), 66 month-first (1 March to
# 6 May); neither date has a number above 12, so the file alone cannot tell
AMBIGUOUS_DATES = {"quote_date": "03/01/2024", "expiry": "05/06/2024"}
DAYS = {"--dayfirst": 154, "--monthfirst": 66}


@pytest.mark.parametrize("command", ["price", "iv"])
def test_ambiguous_dates_are_refused_and_read_with_dayfirst_or_monthfirst(tmp_path, command):
    # read_quotes(dayfirst=...) settled such a file, but the commands had no way to pass it: the
    # error sent the user to a Python argument
    table = pd.DataFrame({"option_type": "call", "strike": [90.0, 110.0], **AMBIGUOUS_DATES,
                          "spot": 100.0, "forward": 100.0, "discount": 1.0, "volatility": 0.2,
                          "price": [12.0, 3.0]})  # fmt: skip
    path, out = tmp_path / "q.csv", tmp_path / "o.csv"
    table.to_csv(path, index=False)
    args = [command, "--quotes", str(path), "--out", str(out)]
    args += ["--model", "bs"] if command == "price" else []
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and not out.exists()
    assert "'05/06/2024' read as day/month or month/day alike" in refused.output
    assert "--dayfirst or --monthfirst" in refused.output and "read_quotes" not in refused.output
    for flag, days in DAYS.items():
        result = runner.invoke(app, [*args, flag])
        assert result.exit_code == 0, result.output
        np.testing.assert_allclose(pd.read_csv(out)["maturity"], days / 365, rtol=1e-12)
    assert "--monthfirst" in runner.invoke(app, [command, "--help"]).output


def test_a_date_the_flag_contradicts_suggests_the_other_flag(tmp_path):
    # --monthfirst on 13/06/2024 said only "not a date"
    table = pd.DataFrame({"option_type": "call", "strike": [90.0], "quote_date": "03/06/2024",
                          "expiry": "13/06/2024", "spot": 100.0, "volatility": 0.2})  # fmt: skip
    path, out = tmp_path / "q.csv", tmp_path / "o.csv"
    table.to_csv(path, index=False)
    args = ["price", "--model", "bs", "--quotes", str(path), "--out", str(out)]
    refused = runner.invoke(app, [*args, "--monthfirst"])
    assert refused.exit_code == 1 and not out.exists()
    assert ("'13/06/2024' (it does not read month/day/year, as --monthfirst says: day/month/year? "
            "pass --dayfirst)") in refused.output  # fmt: skip
    assert runner.invoke(app, [*args, "--dayfirst"]).exit_code == 0


# a blank line 3: data row 2 is file line 4
HESTON_ROWS = ("option_type,strike,maturity,spot,v0,kappa,theta,sigma,rho\n"
               "call,100,1,100,0.04,1.5,0.04,0.5,-0.5\n\n"
               "put,100,1,100,0.04,1.5,0.04,0.5,{rho}\n")  # fmt: skip


@pytest.mark.parametrize("engine", ["analytic", "quantlib", "mc"])
@pytest.mark.parametrize(
    ("rho", "message"),
    [("-1.5", "column 'rho': must be in "), ("", "column 'rho': missing value")],
)
def test_price_row_errors_name_the_file_line_and_column(tmp_path, engine, rho, message):
    # "row 2: rho must be in (-1, 1)" named neither the file's line nor (for a gap) the problem
    path = tmp_path / "q.csv"
    path.write_text(HESTON_ROWS.format(rho=rho))
    result = runner.invoke(app, ["price", "--model", "heston", "--quotes", str(path), "--out",
                                 str(tmp_path / "o.csv"), "--engine", engine])  # fmt: skip
    assert result.exit_code == 1
    assert f"error: {path}, row 2 (file line 4), {message}" in result.output, result.output


@pytest.mark.parametrize(
    ("volatility", "message"), [("nan", "missing value"), ("inf", "must be finite, got 'inf'")]
)
def test_price_a_non_finite_volatility_names_the_file(tmp_path, volatility, message):
    # an inf, refused while reading, named the file; a NaN, refused while pricing, did not
    path = tmp_path / "q.csv"
    path.write_text(f"option_type,strike,maturity,spot,volatility\ncall,100,1,100,{volatility}\n")
    result = runner.invoke(app, ["price", "--model", "bs", "--quotes", str(path), "--out",
                                 str(tmp_path / "o.csv")])  # fmt: skip
    assert result.exit_code == 1
    expected = f"error: {path}, row 1 (file line 2), column 'volatility': {message}"
    assert expected in result.output, result.output


def test_price_surrogate_row_errors_name_the_file_line(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text(HESTON_ROWS.format(rho="-0.99"))  # outside the surrogate's [-0.95, 0]
    result = runner.invoke(app, ["price", "--model", "heston", "--quotes", str(path), "--out",
                                 str(tmp_path / "o.csv"), "--engine", "surrogate"])  # fmt: skip
    assert result.exit_code == 1
    assert "rho = -0.99 at row 2 (file line 4) is outside" in result.output, result.output


def test_price_a_row_without_a_forward_names_its_file_line(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("option_type,strike,maturity,forward,volatility\ncall,100,1,100,0.2\n\n"
                    "call,100,1,,0.2\n")  # fmt: skip
    result = runner.invoke(app, ["price", "--model", "bs", "--quotes", str(path), "--out",
                                 str(tmp_path / "o.csv")])  # fmt: skip
    assert result.exit_code == 1
    assert "row 2 (file line 4), column 'forward': no forward" in result.output, result.output


@pytest.mark.parametrize(
    ("model", "params", "message"),
    [
        # a SABR surrogate named the rescaled alpha (in range on its own) for a negative nu
        ("sabr", {"alpha": 0.2, "beta": 0.5, "rho": 0.0, "nu": -0.3},
         "--params: nu must be finite and >= 0; got -0.3"),
        ("heston", {"v0": 0.04, "kappa": 0.0, "theta": 0.04, "sigma": 0.5, "rho": -0.5},
         "--params: kappa must be finite and > 0; got 0.0"),
        # NaN was "given both as a column and in --params", inf "row 1, column 'shift'"
        ("sabr", {"alpha": 0.2, "beta": 0.5, "rho": 0.0, "nu": 0.3, "shift": float("nan")},
         "--params: shift must be finite; got nan"),
        ("sabr", {"alpha": 0.2, "beta": 0.5, "rho": 0.0, "nu": 0.3, "shift": float("inf")},
         "--params: shift must be finite; got inf"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("engine", ["analytic", "surrogate"])
def test_price_bad_params_are_checked_against_the_model_domain(
    bs_quotes, tmp_path, model, params, message, engine
):
    path, table = bs_quotes
    table.drop(columns=["volatility"]).to_csv(path, index=False)
    result = runner.invoke(app, ["price", "--model", model, "--quotes", str(path), "--out",
                                 str(tmp_path / "o.csv"), "--engine", engine, "--params",
                                 json.dumps(params)])  # fmt: skip
    assert result.exit_code == 1
    assert f"error: {message}" in result.output, result.output


@pytest.mark.parametrize(("model", "params"), [
    ("bs", '{"volatility": 0.2}'),
    ("heston", '{"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.3, "rho": -0.7}'),
])  # fmt: skip
@pytest.mark.parametrize("engine", ["analytic", "quantlib"])
def test_price_refuses_a_shift_for_unshifted_models_naming_the_row(tmp_path, model, params, engine):
    # priced unshifted beside a shift column, without a word: `iv` of the output then solved
    # shifted vols of those prices
    path, out = tmp_path / "q.csv", tmp_path / "p.csv"
    path.write_text("option_type,strike,maturity,forward,discount,shift\n"
                    "call,1.0,1.0,1.5,1.0,0\ncall,1.0,1.0,1.5,1.0,0.02\n")  # fmt: skip
    args = ["price", "--model", model, "--quotes", str(path), "--out", str(out), "--engine",
            engine, "--params", params]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert (f"row 2 (file line 3), column 'shift': model {model} prices unshifted (lognormal) "
            "options" in result.output), result.output  # fmt: skip
    assert not out.exists()
    path.write_text("option_type,strike,maturity,forward,discount,shift\ncall,1.0,1.0,1.5,1.0,0\n")
    assert runner.invoke(app, args).exit_code == 0  # a shift of 0 is no shift
