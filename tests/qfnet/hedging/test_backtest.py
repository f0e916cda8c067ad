"""Backtest report and the `qfnet hedge` CLI on a tiny experiment."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from qfnet import functional as F
from qfnet.hedging.backtest import backtest, bootstrap_ci, run_backtest
from qfnet.hedging.cli import hedge_app
from qfnet.hedging.config import config_from_dict
from qfnet.hedging.markets import Market
from qfnet.hedging.train import load_run, make_paths, train

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


def test_report_json_is_strict_json_where_a_metric_is_nan(trained_run, monkeypatch) -> None:
    # delta's ES95 of 0 makes es95_vs_delta NaN (as documented): report.json held a bare NaN,
    # which strict JSON readers (JavaScript, jq, Go) refuse
    import importlib

    module = importlib.import_module("qfnet.hedging.backtest")  # the package's name is a function
    real = module.backtest

    def with_nan(*args, **kwargs):
        report, results = real(*args, **kwargs)
        report["es95_vs_delta"]["learned"]["relative"] = float("nan")
        report["learned"]["es95"] = float("nan")
        return report, results

    def strict(text: str) -> dict:
        def refuse(constant: str) -> None:
            raise ValueError(f"not strict JSON: {constant}")

        return json.loads(text, parse_constant=refuse)

    monkeypatch.setattr(module, "backtest", with_nan)
    out = trained_run / "nan_report"
    result = CliRunner().invoke(
        hedge_app,
        ["backtest", "--run", str(trained_run / "run"), "--out", str(out), "--bootstrap", "5"],
    )
    assert result.exit_code == 0, result.output
    report = strict((out / "report.json").read_text())
    assert report["es95_vs_delta"]["learned"]["relative"] is None
    assert strict(result.output.strip().splitlines()[-1])["es95"]["learned"] is None


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


def test_a_path_count_with_a_paths_file_is_refused_not_ignored(trained_run: Path) -> None:
    # --n-paths 10 with --paths backtested every path of the file without a word
    frame = pd.DataFrame({f"d{i}": [1.0 + 0.01 * i, 1.0 - 0.01 * i] for i in range(7)})
    frame.to_parquet(trained_run / "two.parquet")
    args = ["backtest", "--run", str(trained_run / "run"), "--out", str(trained_run / "n"),
            "--paths", str(trained_run / "two.parquet"), "--n-paths", "10"]  # fmt: skip
    result = CliRunner().invoke(hedge_app, args)
    assert result.exit_code == 2 and "--n-paths" in result.output, result.output
    with pytest.raises(ValueError, match=r"n_paths \(10\) sets the number of simulated test"):
        run_backtest(trained_run / "run", trained_run / "n",
                     paths_file=trained_run / "two.parquet", n_paths=10)  # fmt: skip


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


def test_bootstrap_interval_covers_the_closed_form_es(device) -> None:
    # a CPU generator with P&Ls on a GPU: torch.randint(device="cuda", generator=<cpu>) raised
    g = torch.Generator().manual_seed(1)
    pnl = torch.randn(20_000, generator=g, dtype=torch.float64).to(device)
    lo, hi = bootstrap_ci(pnl, lambda p: F.expected_shortfall(p, 0.95), generator=g)
    exact = 2.0627128  # phi(1.6449) / 0.05 for a standard normal
    assert lo < exact < hi
    assert hi - lo < 0.1


@pytest.mark.parametrize("size", [0, 1000])
def test_a_damaged_model_file_is_named_not_a_traceback(
    trained_run: Path, tmp_path: Path, size: int
) -> None:
    damaged = tmp_path / "run"
    damaged.mkdir()
    (damaged / "model.pt").write_bytes((trained_run / "run" / "model.pt").read_bytes()[:size])
    args = ["backtest", "--run", str(damaged), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(hedge_app, args)
    # bad input: an error line and exit 1, as the README says (empty files ended in click's
    # bare 'Aborted.', then in a usage error)
    assert result.exit_code == 1, result.output
    assert (
        result.output.startswith("error:")
        and "is not a readable trained hedging model" in result.output
    )


def test_long_path_files_with_a_bad_variance_name_the_path_and_step(trained_run: Path) -> None:
    from qfnet.hedging.backtest import read_paths
    from qfnet.hedging.markets import Market

    config = config_from_dict(TINY)
    rows = [{"path": p, "step": t, "spot": 50.0 + t, "variance": 0.04} for p in (7, 9)
            for t in range(7)]  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.loc[(frame["path"] == 9) & (frame["step"] == 3), "variance"] = -0.04
    frame.to_parquet(trained_run / "long.parquet")
    with pytest.raises(ValueError, match=r"path 9, step 3: column 'variance' is -0.04"):
        read_paths(trained_run / "long.parquet", Market(config))


def test_long_path_files_with_text_steps_are_refused_and_dates_kept_in_order(
    tmp_path: Path,
) -> None:
    # text steps were sorted as text ("0", "1", "10", "2", ...): prices out of time order,
    # silently
    from qfnet.hedging.backtest import read_paths

    market = Market(config_from_dict({"market": {"n_steps": 10}}))
    steps = {"text": [str(t) for t in range(11)], "dates": pd.date_range("2024-01-01", periods=11)}
    for name, labels in steps.items():
        frame = pd.DataFrame({"path": 0, "step": labels, "spot": [100.0 + t for t in range(11)]})
        frame.iloc[::-1].to_parquet(tmp_path / f"{name}.parquet")  # rows in any order
    with pytest.raises(ValueError, match=r"column 'step' must hold numbers or dates.*'10'"):
        read_paths(tmp_path / "text.parquet", market)
    spot = read_paths(tmp_path / "dates.parquet", market).spot
    torch.testing.assert_close(spot[0], torch.arange(100.0, 111.0, dtype=spot.dtype) / 100.0)


def test_long_path_files_of_dated_rolling_windows_read_each_path_by_its_own_dates(
    tmp_path: Path,
) -> None:
    # windows of one history that kept their dates were put on the union of all the dates and
    # refused: "expected 4 prices per path (market.n_steps + 1), got 7"
    from qfnet.hedging.backtest import read_paths

    market = Market(config_from_dict({"market": {"n_steps": 3}}))
    dates, history = pd.bdate_range("2024-01-01", periods=7), [100, 101, 99, 102, 104, 103, 105]
    frame = pd.DataFrame([{"path": p, "step": dates[p + j], "spot": float(history[p + j])}
                          for p in range(4) for j in range(4)])  # fmt: skip
    frame.iloc[::-1].to_parquet(tmp_path / "windows.parquet")  # rows in any order
    spot = read_paths(tmp_path / "windows.parquet", market).spot
    expected = [[history[p + j] / history[p] for j in range(4)] for p in range(4)]
    torch.testing.assert_close(spot, torch.tensor(expected, dtype=spot.dtype), rtol=1e-15, atol=0)
    frame.iloc[:-1].to_parquet(tmp_path / "short.parquet")  # path 3 lacks its last date
    with pytest.raises(ValueError, match=r"path 3 has 3 prices, expected 4 \(market\.n_steps"):
        read_paths(tmp_path / "short.parquet", market)


@pytest.mark.parametrize("column", ["step", "path"])
def test_long_path_files_refuse_a_row_without_its_step_or_path(tmp_path: Path, column: str) -> None:
    # numbered per path after sorting, a row whose step was missing (NaN, NaT) came last: path 0
    # was read as 1.0, 1.2, 1.3, 1.1 (its step 1 taken for its last), without a word
    from qfnet.hedging.backtest import read_paths

    market = Market(config_from_dict({"market": {"n_steps": 3}}))
    dates = pd.bdate_range("2024-01-01", periods=4)
    frame = pd.DataFrame([{"path": float(p), "step": dates[j], "spot": 100.0 + 10.0 * j}
                          for p in range(2) for j in range(4)])  # fmt: skip
    frame[column] = frame[column].where(frame.index != 1)  # row 2: path 0, step 1
    frame.to_parquet(tmp_path / "gap.parquet")
    with pytest.raises(ValueError, match=rf"gap\.parquet: row 2 has no {column}$"):
        read_paths(tmp_path / "gap.parquet", market)


def test_path_files_with_prices_as_text_name_the_file_and_column(tmp_path: Path) -> None:
    # long: numpy's "could not convert string to float: 'x'" named no file, column or row;
    # wide: the text columns were dropped and the error said "got 0" prices, without a why
    from qfnet.hedging.backtest import read_paths

    market = Market(config_from_dict({"market": {"n_steps": 2}}))
    long = pd.DataFrame({"path": 0, "step": [0, 1, 2], "spot": ["100", "x", "102"]})
    long.to_parquet(tmp_path / "long.parquet")
    with pytest.raises(ValueError, match=r"long\.parquet: row 2: column 'spot' holds 'x', not a"):
        read_paths(tmp_path / "long.parquet", market)
    pd.DataFrame({"0": ["100"], "1": ["101"], "2": ["102"]}).to_parquet(tmp_path / "wide.parquet")
    with pytest.raises(
        ValueError, match=r"got 0 \(not numeric, not read: columns \['0', '1', '2'\]"
    ):
        read_paths(tmp_path / "wide.parquet", market)
    long["spot"] = ["100", "101", "102"]  # numbers stored as text are read
    long.to_parquet(tmp_path / "numbers.parquet")
    spot = read_paths(tmp_path / "numbers.parquet", market).spot
    torch.testing.assert_close(spot[0], torch.tensor([1.0, 1.01, 1.02], dtype=spot.dtype))


def test_train_cli_refuses_a_file_as_run_directory_and_bad_seeds(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(TINY))
    (tmp_path / "taken").write_text("")
    base = ["train", "--config", str(tmp_path / "cfg.yaml")]
    result = CliRunner().invoke(hedge_app, [*base, "--out", str(tmp_path / "taken")])
    flat = " ".join(result.output.replace("│", " ").split())  # rich wraps the message in a box
    assert result.exit_code == 2 and "is a file, not a run directory" in flat
    result = CliRunner().invoke(hedge_app, [*base, "--out", str(tmp_path / "r"), "--seed", "-1"])
    assert result.exit_code == 2 and "--seed" in result.output
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "model.pt").write_bytes(b"a trained run")
    result = CliRunner().invoke(hedge_app, [*base, "--out", str(tmp_path / "done")])
    flat = " ".join(result.output.replace("│", " ").split())
    # a held OUT is an error line (exit 1), as in `train surrogate` and `generate`
    assert result.exit_code == 1 and "error:" in flat and "already holds a trained run" in flat
    assert (tmp_path / "done" / "model.pt").read_bytes() == b"a trained run"


def test_train_cli_resumes_an_unfinished_run_and_refuses_to_replace_it_silently(
    trained_run: Path, tmp_path: Path
) -> None:
    base = ["train", "--config", str(trained_run / "cfg.yaml")]
    (tmp_path / "cut" / "checkpoints").mkdir(parents=True)
    (tmp_path / "cut" / "checkpoints" / "last.pt").write_bytes(b"an unfinished run")
    result = CliRunner().invoke(hedge_app, [*base, "--out", str(tmp_path / "cut")])
    flat = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 1 and "already holds an unfinished run" in flat, flat
    run = tmp_path / "run"  # a copy: the module's other tests use the trained run as it is
    shutil.copytree(trained_run / "run", run)
    assert CliRunner().invoke(hedge_app, [*base, "--out", str(run), "--resume", "--overwrite"]
                              ).exit_code == 2  # fmt: skip
    before = load_run(run)[1].state_dict()
    result = CliRunner().invoke(hedge_app, [*base, "--out", str(run), "--resume"])
    assert result.exit_code == 0, result.output  # the finished run, resumed: nothing left to do
    assert json.loads(result.output.strip().splitlines()[-1])["epochs"] >= 1
    after = load_run(run)[1].state_dict()
    for name, weights in before.items():
        torch.testing.assert_close(after[name], weights, rtol=0, atol=0, msg=name)


def test_backtest_cli_refuses_a_file_as_out_directory(trained_run: Path, tmp_path: Path) -> None:
    # was a FileExistsError traceback (exit 1) after the whole backtest had run
    (tmp_path / "taken").write_text("")
    base = ["backtest", "--run", str(trained_run / "run"), "--n-paths", "10", "--bootstrap", "1"]
    result = CliRunner().invoke(hedge_app, [*base, "--out", str(tmp_path / "taken")])
    flat = " ".join(result.output.replace("│", " ").split())  # rich wraps the message in a box
    assert result.exit_code == 2 and "--out" in flat and "is a file, not a directory" in flat
    result = CliRunner().invoke(hedge_app, [*base, "--out", str(tmp_path / "taken" / "sub")])
    assert result.exit_code == 1 and result.output.startswith("error:"), result.output
    assert "Not a directory" in result.output


def test_a_backtest_of_one_path_is_refused(trained_run: Path, tmp_path: Path) -> None:
    # one path gave a NaN std in report.json and a degrees-of-freedom warning from torch
    base = ["backtest", "--run", str(trained_run / "run"), "--bootstrap", "1"]
    result = CliRunner().invoke(hedge_app, [*base, "--n-paths", "1", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--n-paths" in result.output, result.output
    config = config_from_dict({"market": {"n_steps": 5}})
    market = Market(config)
    data, _ = make_paths(market, 1, split="test", seed=0)
    with pytest.raises(ValueError, match="at least 2 paths"):
        backtest(config, data, market, n_resamples=10)


def test_es95_relative_to_delta_keeps_its_sign_when_delta_gains_in_the_tail() -> None:
    # A premium can make delta's ES95 negative (a gain even in the tail): a smaller ES must
    # still read as an improvement (< 0), and a delta ES of 0 gives NaN, not a crash.
    from qfnet.hedging.backtest import _bootstrap

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, generator=g, dtype=torch.float64)
    pnls = {"delta": 0.05 + 0.01 * noise, "learned": 0.06 + 0.01 * noise,
            "no_hedge": 0.0 + 0.05 * noise}  # fmt: skip
    _, ratios = _bootstrap(pnls, 1.0, 20, seed=0)
    es = {k: float(F.expected_shortfall(v, 0.95)) for k, v in pnls.items()}
    assert es["delta"] < 0 and es["learned"] < es["delta"] < es["no_hedge"]
    assert ratios["learned"]["relative"] < 0 < ratios["no_hedge"]["relative"]
    flat = {"delta": torch.zeros(100, dtype=torch.float64), "learned": 0.01 * noise[:100]}
    assert math.isnan(_bootstrap(flat, 1.0, 5, seed=0)[1]["learned"]["relative"])


def test_bootstrap_sizes_and_levels_are_checked_and_named() -> None:
    # backtest(n_resamples=0) wrote [nan, nan] intervals without a word; bootstrap_ci raised
    # numpy's IndexError (0 resamples) or "Quantiles must be in the range [0, 1]" (level 95)
    pnl = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"n_resamples must be a positive integer, got 0"):
        bootstrap_ci(pnl, torch.mean, n_resamples=0)
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\), got 95"):
        bootstrap_ci(pnl, torch.mean, level=95)
    with pytest.raises(ValueError, match=r"pnl must have shape \(N,\) with N >= 1, got \(0,\)"):
        bootstrap_ci(pnl[:0], torch.mean)
    config = config_from_dict({"market": {"n_steps": 5}})
    market = Market(config)
    data, _ = make_paths(market, 16, split="test", seed=0)
    with pytest.raises(ValueError, match=r"n_resamples must be a positive integer, got 0"):
        backtest(config, data, market, n_resamples=0)


def test_train_cli_reports_the_validation_loss_of_the_saved_model(tmp_path: Path) -> None:
    # the run keeps the best epoch's weights (early stopping restores them), but the summary
    # printed the last epoch's val_loss: here, where the P&L is 0 on every path (a call struck
    # at 5 times the spot, no costs) and the ES loss is that of the VaR level alone, 0.011
    # for a saved model whose validation loss is 0.0036
    config = {"seed": 0, "market": {"n_steps": 5, "cost": 0.0}, "derivative": {"strike": 5.0},
              "paths": {"train": 2000, "val": 1000, "test": 100},
              "training": {"epochs": 3, "batch_size": 500, "threads": 1},
              "baselines": {"ww_risk_aversion": 1.0}}  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    args = ["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(hedge_app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output.strip().splitlines()[-1])["val_loss"]
    from qfnet.hedging.markets import pack

    loaded, model, _ = load_run(tmp_path / "run")
    val, _ = make_paths(Market(loaded), loaded.paths.val, split="val", seed=loaded.seed)
    with torch.no_grad():
        saved = float(model.risk_loss(model(pack(val).float())))
    assert printed == pytest.approx(saved, rel=1e-5, abs=1e-9)


def test_path_files_starting_near_zero_are_rescaled_by_their_ratio_not_made_inf(
    tmp_path: Path,
) -> None:
    # each path was multiplied by spot / S_0: a start of 1e-320 made the factor inf and every
    # price inf, without a word (a NaN P&L later); now each price is divided by the start first
    from qfnet.hedging.backtest import read_paths

    market = Market(config_from_dict({"market": {"n_steps": 2, "spot": 100.0}}))
    pd.DataFrame({"0": [1e-320, 5.0], "1": [2e-320, 6.0], "2": [4e-320, 4.0]}).to_parquet(
        tmp_path / "tiny.parquet"
    )
    spot = read_paths(tmp_path / "tiny.parquet", market).spot
    expected = torch.tensor([[100.0, 200.0, 400.0], [100.0, 120.0, 80.0]], dtype=spot.dtype)
    torch.testing.assert_close(spot, expected, rtol=1e-3, atol=0.0)  # 1e-320 is subnormal
    pd.DataFrame({"0": [5.0, 1e-300], "1": [6.0, 1.0], "2": [4.0, 1e10]}).to_parquet(
        tmp_path / "huge.parquet"
    )
    with pytest.raises(
        ValueError, match=r"huge\.parquet: path 1, step 2: price 10000000000\.0 is inf times"
    ):
        read_paths(tmp_path / "huge.parquet", market)


def test_a_path_column_in_a_wide_file_names_the_paths_and_is_never_a_price(tmp_path: Path) -> None:
    # without step/spot the numeric ids were read as each path's first price: with one price
    # too few beside them the ids silently became S_0 (path 7 started at 7, not at 100)
    from qfnet.hedging.backtest import read_paths

    market = Market(config_from_dict({"market": {"n_steps": 2, "spot": 100.0}}))
    wide = pd.DataFrame({"path": [7, 8], "1": [110.0, 45.0], "2": [121.0, 40.0]})
    wide.to_parquet(tmp_path / "short.parquet")
    with pytest.raises(ValueError, match=r"short\.parquet: expected 3 prices per path .*got 2"):
        read_paths(tmp_path / "short.parquet", market)
    wide.insert(1, "0", [100.0, 50.0])
    wide.to_parquet(tmp_path / "ids.parquet")
    spot = read_paths(tmp_path / "ids.parquet", market).spot
    expected = torch.tensor([[100.0, 110.0, 121.0], [100.0, 90.0, 80.0]], dtype=spot.dtype)
    torch.testing.assert_close(spot, expected, rtol=1e-12, atol=0.0)
    wide.loc[1, "2"] = -1.0  # errors name a path by its id
    wide.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: path 8, step 2: price -1\.0 is not"):
        read_paths(tmp_path / "bad.parquet", market)
    wide.drop(columns="0").rename(columns={"1": "step"}).to_parquet(tmp_path / "long.parquet")
    with pytest.raises(ValueError, match=r"columns \['step'\] but no \['spot'\]: the long layout"):
        read_paths(tmp_path / "long.parquet", market)


def test_a_path_rising_1e300_times_gets_finite_intervals_and_an_overflow_is_named(
    tmp_path: Path,
) -> None:
    # a rise of 1e300 times passed read_paths, its std overflowed to inf (the squares of 1e302)
    # and the bootstrap interval of it was NaN, with numpy's "invalid value encountered in
    # subtract"; a rise to float64's largest value overflows the mean: an error naming it
    import warnings

    from qfnet.hedging.backtest import read_paths

    config = config_from_dict({"market": {"n_steps": 2, "spot": 100.0}})
    market = Market(config)
    for rise in (1e300, 1.7e306):
        pd.DataFrame({"0": [1.0, 1.0, 1.0], "1": [1.0, 1.1, 1.0], "2": [rise, 1.2, 0.9]}
                     ).to_parquet(tmp_path / f"{rise}.parquet")  # fmt: skip
    data = market.data(read_paths(tmp_path / "1e+300.parquet", market))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report, _ = backtest(config, data, market, n_resamples=20)
    # no_hedge owes about 1e302 on path 0, 20 and 0 on the others: deviations from the mean
    # of -2/3, 1/3 and 1/3 times 1e302, a sample std of 1e302 / sqrt(3)
    assert report["no_hedge"]["std"] == pytest.approx(1e302 / math.sqrt(3.0), rel=1e-9)
    for name in report["strategies"]:
        for low, high in report[name]["ci95"].values():
            assert math.isfinite(low) and math.isfinite(high), name
    data = market.data(read_paths(tmp_path / "1.7e+306.parquet", market))
    with pytest.raises(ValueError, match=r"P&L of strategy 'no_hedge': risk_metrics: mean is "
                                         r"-inf: the P&L, from -1\.7e\+308 .*overflows float64"):  # fmt: skip
        backtest(config, data, market, n_resamples=20)
