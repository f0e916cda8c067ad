"""Backtest report and the `qfnet hedge` CLI on a tiny experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from qfnet import functional as F
from qfnet.hedging.backtest import bootstrap_ci, run_backtest
from qfnet.hedging.cli import hedge_app
from qfnet.hedging.config import config_from_dict
from qfnet.hedging.train import train

TINY = {
    "seed": 2,
    "market": {"model": "heston", "n_steps": 6, "instruments": ["underlying", "variance_swap"]},
    "derivative": {"type": "asian"},
    "paths": {"train": 1500, "val": 500, "test": 1200},
    "strategy": {"type": "ntb", "hidden": [8]},
    "training": {"epochs": 2, "batch_size": 500, "threads": 1},
    "baselines": {"ww_risk_aversion": 50.0},
}
KEYS = {"mean", "std", "var95", "es95", "es99", "entropic", "turnover", "cost", "ci95"}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hedge")
    (root / "cfg.yaml").write_text(yaml.safe_dump(TINY))
    result = CliRunner().invoke(
        hedge_app, ["train", "--config", str(root / "cfg.yaml"), "--out", str(root / "run")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["epochs"] >= 1
    return root


def test_backtest_writes_report_with_every_strategy_and_plots(trained_run: Path) -> None:
    out = trained_run / "report"
    result = CliRunner().invoke(
        hedge_app,
        ["backtest", "--run", str(trained_run / "run"), "--out", str(out), "--bootstrap", "20"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["n_paths"] == 1200
    assert report["config"]["derivative"]["type"] == "asian"
    # no heston_delta: its table holds European deltas, and this derivative is an Asian
    names = {"learned", "delta", "no_hedge", "whalley_wilmott"}
    assert set(report["strategies"]) == names
    for name in names:
        assert KEYS <= set(report[name]), name
        lo, hi = report[name]["ci95"]["es95"]
        assert lo <= report[name]["es95"] <= hi
        assert (out / f"pnl_hist_{name}.png").stat().st_size > 1000
    assert report["no_hedge"]["turnover"] == 0.0
    assert report["delta"]["es95"] < report["no_hedge"]["es95"]
    assert (out / "hedge_ratio_vs_spot.png").stat().st_size > 1000
    rel = report["es95_vs_delta"]["learned"]
    assert rel["ci95"][0] <= rel["relative"] <= rel["ci95"][1]


def test_backtest_on_a_user_path_file(trained_run: Path) -> None:
    g = torch.Generator().manual_seed(0)
    steps = torch.exp(0.01 * torch.randn(300, 6, generator=g, dtype=torch.float64).cumsum(1))
    prices = 50.0 * torch.cat([torch.ones(300, 1, dtype=torch.float64), steps], dim=1)
    frame = pd.DataFrame(prices.numpy(), columns=[f"d{i}" for i in range(7)])
    frame.to_parquet(trained_run / "hist.parquet")
    out = trained_run / "hist_report"
    args = ["backtest", "--run", str(trained_run / "run"), "--out", str(out),
            "--paths", str(trained_run / "hist.parquet"), "--bootstrap", "5"]  # fmt: skip
    result = CliRunner().invoke(hedge_app, args)
    # the config hedges with a variance swap, which a price-only file cannot provide
    assert result.exit_code != 0
    assert "variance" in result.output
    # a Heston run hedging with the underlying only backtests on prices alone
    config = config_from_dict({**TINY, "market": {**TINY["market"], "instruments": ["underlying"]}})
    train(config, trained_run / "run_stock")
    report = run_backtest(trained_run / "run_stock", out, paths_file=trained_run / "hist.parquet",
                          n_resamples=5)  # fmt: skip
    assert report["n_paths"] == 300
    assert report["paths"].endswith("hist.parquet")
    assert report["learned"]["turnover"] > 0


def test_train_with_bad_config_names_the_key(tmp_path: Path) -> None:
    bad = {**TINY, "training": {"epochs": 2, "batchsize": 10}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = CliRunner().invoke(
        hedge_app, ["train", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code != 0
    assert "training.batchsize" in result.output
    missing = CliRunner().invoke(
        hedge_app, ["backtest", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]
    )
    assert missing.exit_code != 0
    assert "no trained hedging model" in missing.output


def test_bootstrap_interval_covers_the_closed_form_es() -> None:
    g = torch.Generator().manual_seed(1)
    pnl = torch.randn(20_000, generator=g, dtype=torch.float64)
    lo, hi = bootstrap_ci(pnl, lambda p: F.expected_shortfall(p, 0.95), generator=g)
    exact = 2.0627128  # phi(1.6449) / 0.05 for a standard normal
    assert lo < exact < hi
    assert hi - lo < 0.1
