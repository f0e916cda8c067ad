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


@pytest.mark.parametrize(("option", "value"), [("--paths", "1"), ("--steps", "0")])
def test_mc_bad_sizes_name_the_option(
    quotes: Path, tmp_path: Path, option: str, value: str
) -> None:
    args = ["price", "--model", "bs", "--quotes", str(quotes), "--out", str(tmp_path / "o.csv")]
    result = runner.invoke(app, [*args, "--engine", "mc", option, value])
    assert result.exit_code == 1
    assert option in result.output


def test_mc_bad_row_is_reported_by_row_number(quotes: Path, tmp_path: Path) -> None:
    table = pd.read_csv(quotes)
    table.loc[2, "volatility"] = -0.2
    table.to_csv(quotes, index=False)
    args = ["price", "--model", "bs", "--quotes", str(quotes), "--out", str(tmp_path / "o.csv")]
    result = runner.invoke(app, [*args, "--engine", "mc", "--paths", "1024", "--steps", "1"])
    assert result.exit_code == 1
    assert "row 3" in result.output and "volatility" in result.output
