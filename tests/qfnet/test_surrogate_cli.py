"""`qfnet generate` and the surrogate row pricer behind `qfnet price --engine surrogate`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from pricing.datasets import DomainError
from qfnet.surrogate import build_surrogate, load_surrogate, price, save_surrogate
from qfnet.surrogate_cli import generate_command, surrogate_price_rows

HESTON = {"v0": 0.04, "kappa": 1.5, "theta": 0.05, "sigma": 0.5, "rho": -0.6}


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so that the command is invoked by name as in qfnet
    app.command("generate")(generate_command)
    return app


@pytest.fixture
def quotes() -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "option_type": ["call", "P", "put"],
            "strike": [105.0, 95.0, 100.0],
            "maturity": [0.5, 1.0, 2.0],
            "spot": [100.0, 100.0, 100.0],
            "rate": [0.01, 0.02, 0.0],
            "dividend": [0.0, 0.01, 0.02],
        }
    )
    return frame.assign(**HESTON)


@pytest.fixture
def untrained(tmp_path):
    torch.manual_seed(0)
    return save_surrogate(build_surrogate("heston", hidden=(8,)), tmp_path / "model.pt")


def test_generate_command_writes_a_dataset_and_rejects_unknown_engines(app, tmp_path):
    runner = CliRunner()
    out = tmp_path / "data"
    args = ["generate", "--model", "sabr", "--n", "300", "--out", str(out), "--seed", "2"]
    result = runner.invoke(app, [*args, "--shard-size", "128"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "metadata.json").read_text())
    assert (meta["n"], meta["n_shards"], meta["seed"], meta["engine"]) == (300, 3, 2, "hagan")
    bad = runner.invoke(
        app, ["generate", "--n", "10", "--out", str(tmp_path / "x"), "--engine", "fft"]
    )
    assert bad.exit_code != 0 and "--engine" in bad.output
    bad = runner.invoke(
        app, ["generate", "--n", "10", "--out", str(tmp_path / "y"), "--device", "gpu"]
    )
    assert bad.exit_code != 0 and "--device" in bad.output and "'gpu'" in bad.output
    bad = runner.invoke(app, [*args[:-2], "--compile"])  # SABR labels have no compiled pricer
    assert bad.exit_code != 0 and "--compile" in bad.output


def test_price_rows_use_spot_rate_dividend_or_forward_discount(quotes, untrained):
    value, iv = surrogate_price_rows(quotes, untrained)
    net = load_surrogate(untrained)
    with torch.no_grad():
        expected = price(
            net,
            spot=torch.tensor(quotes["spot"].to_numpy()),
            strike=torch.tensor(quotes["strike"].to_numpy()),
            maturity=torch.tensor(quotes["maturity"].to_numpy()),
            rate=torch.tensor(quotes["rate"].to_numpy()),
            dividend=torch.tensor(quotes["dividend"].to_numpy()),
            is_call=torch.tensor([True, False, False]),
            **HESTON,
        )
    np.testing.assert_allclose(value, expected.numpy(), rtol=1e-13, atol=0)
    assert np.all((iv > 0.05) & (iv < 1.0))
    forward = quotes["spot"] * np.exp((quotes["rate"] - quotes["dividend"]) * quotes["maturity"])
    discount = np.exp(-quotes["rate"] * quotes["maturity"])
    by_forward = quotes.drop(columns=["spot", "rate", "dividend"])
    by_forward = by_forward.assign(forward=forward, discount=discount)
    value_f, iv_f = surrogate_price_rows(by_forward, untrained)
    np.testing.assert_allclose(value_f, value, rtol=1e-12, atol=0)
    np.testing.assert_allclose(iv_f, iv, rtol=1e-12, atol=0)


def test_price_rows_carry_the_spot_at_a_given_discounts_rate(quotes, untrained):
    # a spot with a discount column and no rate was carried at 0% while discounted at 5%: the
    # shipped surrogate priced the 1-year at-the-money call 7.17 for Heston's 10.36
    from qfnet.price_rows import forward_and_discount

    by_discount = quotes.drop(columns=["rate"]).assign(
        discount=np.exp(-quotes["rate"] * quotes["maturity"])
    )
    forward, discount = forward_and_discount(by_discount)
    by_forward = by_discount.assign(forward=forward, discount=discount)
    value_d, iv_d = surrogate_price_rows(by_discount, untrained)
    np.testing.assert_allclose(value_d, surrogate_price_rows(quotes, untrained)[0], rtol=1e-12,
                               atol=0)  # fmt: skip
    np.testing.assert_allclose(iv_d, surrogate_price_rows(by_forward, untrained)[1], rtol=1e-12,
                               atol=0)  # fmt: skip


def test_price_rows_carry_a_borrow_cost_like_a_dividend(quotes, untrained):
    # a borrow column was ignored in the forward spot exp((rate - dividend) T)
    borrowed = quotes.assign(borrow=0.02)
    moved = quotes.assign(dividend=quotes["dividend"] + 0.02)
    np.testing.assert_allclose(surrogate_price_rows(borrowed, untrained)[0],
                               surrogate_price_rows(moved, untrained)[0], rtol=1e-13, atol=0)  # fmt: skip


def test_price_rows_name_the_bad_column_row_or_domain_field(quotes, untrained):
    with pytest.raises(ValueError, match="'kappa'"):
        surrogate_price_rows(quotes.drop(columns=["kappa"]), untrained)
    # rows are the table's, counted from 1 as every other quote error (they were 0-based)
    bad_type = quotes.assign(option_type=["call", "straddle", "put"])
    with pytest.raises(ValueError, match="at row 2"):
        surrogate_price_rows(bad_type, untrained)
    bad_number = quotes.assign(strike=[105.0, "x", 100.0])
    with pytest.raises(ValueError, match="'strike' is not a finite number at row 2"):
        surrogate_price_rows(bad_number, untrained)
    far = quotes.assign(strike=[105.0, 95.0, 400.0])
    with pytest.raises(DomainError, match=r"log_moneyness .* at row 3 is outside"):
        surrogate_price_rows(far, untrained)


def test_price_rows_name_a_strike_or_forward_at_or_below_0_and_the_file_line(quotes, untrained):
    # a strike of 0 or below, or a negative spot, was "log_moneyness = nan (or -inf) at row 2
    # is outside the heston surrogate domain", and a gap in a column named no file line
    for bad, message in [
        (quotes.assign(strike=[105.0, 0.0, 100.0]), r"strike must be > 0, got 0\.0 at row 2"),
        (quotes.assign(strike=[105.0, -5.0, 100.0]), r"strike must be > 0, got -5\.0 at row 2"),
        (
            quotes.assign(spot=[100.0, -100.0, 100.0]),
            r"forward must be > 0, got -1\d+\.\d* at row 2",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            surrogate_price_rows(bad, untrained)
    gap = quotes.assign(kappa=[1.5, None, 1.5])
    gap.attrs["file_lines"] = [2, 4, 5]
    with pytest.raises(
        ValueError, match=r"'kappa' is not a finite number at row 2 \(file line 4\)"
    ):
        surrogate_price_rows(gap, untrained)


def test_price_rows_take_float32_columns_at_the_moneyness_edge_as_the_python_api(untrained):
    # float32 strikes at z = +-2.5 (a log-moneyness 3e-8 past the edge in float64) were refused
    # (37 of 80 rows), where price() takes them to their own precision
    maturity = np.linspace(0.1, 3.0, 40)
    root = np.sqrt(np.concatenate([maturity, maturity]))
    rows = pd.DataFrame({"option_type": "call",
                         "strike": (100.0 * np.exp(0.5 * root * np.repeat([1, -1], 40))),
                         "maturity": root**2, "spot": 100.0}).assign(**HESTON)  # fmt: skip
    rows = rows.astype({name: np.float32 for name in rows.columns if name != "option_type"})
    value, _ = surrogate_price_rows(rows, untrained)
    expected = price(load_surrogate(untrained), spot=rows["spot"].to_numpy(),
                     strike=rows["strike"].to_numpy(), maturity=rows["maturity"].to_numpy(),
                     **{name: rows[name].to_numpy() for name in HESTON})  # fmt: skip
    np.testing.assert_allclose(value, expected.numpy(), rtol=1e-12, atol=0)
    with pytest.raises(DomainError, match=r"log_moneyness .* at row \d+ is outside"):
        surrogate_price_rows(rows.astype({name: np.float64 for name in rows.columns
                                          if name != "option_type"}), untrained)  # fmt: skip


def test_price_rows_out_of_box_sabr_alpha_names_the_given_alpha_and_its_rescaling():
    # the error named alpha = 0.0045 for a row that gave 0.3 (rescaled to F = 1 at F = 4500)
    from qfnet.surrogate import SABR_PDE_SURROGATE

    rows = pd.DataFrame({"option_type": ["call"], "strike": [4500.0], "maturity": [1.0],
                         "forward": [4500.0], "discount": [1.0], "alpha": [0.3], "beta": [0.5],
                         "rho": [-0.3], "nu": [0.5]})  # fmt: skip
    with pytest.raises(DomainError) as raised:
        surrogate_price_rows(rows, SABR_PDE_SURROGATE)
    message = str(raised.value)
    assert re.search(r"alpha = 0\.00447\d* at row 1 is outside", message)
    assert "alpha F^(beta - 1) = 0.3 * 4500^(0.5 - 1) there" in message


def test_price_rows_refuse_a_shifted_sabr_row():
    # a shift column was ignored: a call at K = 0.025 priced 0.00778, the unshifted model's price,
    # where the shifted model's (Hagan) is 0.00923; an empty shift is 0, as the quote reader's
    from qfnet.surrogate import SABR_PDE_SURROGATE

    rows = pd.DataFrame({"option_type": "call", "strike": [0.03, 0.025], "maturity": 2.0,
                         "forward": 0.03, "discount": 1.0, "alpha": 0.05, "beta": 0.5,
                         "rho": -0.3, "nu": 0.4, "shift": [None, 0.02]})  # fmt: skip
    with pytest.raises(ValueError, match=r"'shift' is 0\.02 at row 2: .* unshifted SABR"):
        surrogate_price_rows(rows, SABR_PDE_SURROGATE)
    price, _ = surrogate_price_rows(rows.assign(shift=[None, 0.0]), SABR_PDE_SURROGATE)
    assert np.isfinite(price).all()


def test_price_rows_name_a_text_shift_as_given_and_read_an_empty_one_as_0():
    # a raw table's shift of 'abc' was "is nan", and its '' (an empty cell, 0 as the quote
    # reader reads it) was refused as "is nan" too
    from qfnet.surrogate import SABR_PDE_SURROGATE

    rows = pd.DataFrame({"option_type": "call", "strike": [0.03, 0.025], "maturity": 2.0,
                         "forward": 0.03, "discount": 1.0, "alpha": 0.05, "beta": 0.5,
                         "rho": -0.3, "nu": 0.4, "shift": ["", "abc"]})  # fmt: skip
    with pytest.raises(ValueError, match=r"'shift' is 'abc' at row 2: .* unshifted SABR"):
        surrogate_price_rows(rows, SABR_PDE_SURROGATE)
    price, _ = surrogate_price_rows(rows.assign(shift=["", " NA "]), SABR_PDE_SURROGATE)
    assert np.isfinite(price).all()


def test_train_command_rejects_empty_layers_and_reports_a_damaged_checkpoint(tmp_path):
    from pricing.datasets import generate
    from qfnet.surrogate_cli import train_surrogate_command

    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("train")(train_surrogate_command)
    data = generate(tmp_path / "ds", model="sabr", n=64, progress=False)
    base = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
            "--batch-size", "32", "--device", "cpu"]  # fmt: skip
    for hidden in ("0", "16,0", "", "8,x"):
        result = CliRunner().invoke(app, [*base, "--hidden", hidden])
        assert result.exit_code == 2 and "--hidden" in result.output, hidden
    for device in ("gpu", "cuda:99"):  # an error line (exit 1) before, as the Trainer's
        result = CliRunner().invoke(app, [*base, "--hidden", "8", "--device", device])
        assert result.exit_code == 2 and "--device" in result.output, result.output
    # inf ended as a NaN-loss error line; 0 trained nothing; nan was "Input should be greater
    # than or equal to 0"
    for lr in ("inf", "0.0", "nan"):
        result = CliRunner().invoke(app, [*base, "--hidden", "8", "--lr", lr])
        flat = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and f"--lr: {lr}: the learning rate must be finite" in flat, (
            flat
        )
    result = CliRunner().invoke(app, [*base, "--hidden", "8", "--resume", "--overwrite"])
    assert result.exit_code == 2 and "--resume" in result.output, result.output  # as hedge train
    assert not (tmp_path / "run").exists()
    assert CliRunner().invoke(app, [*base, "--hidden", "8"]).exit_code == 0
    longer = [*base, "--hidden", "8", "--resume", "--epochs", "2"]  # the last --epochs counts
    result = CliRunner().invoke(app, longer)
    assert result.exit_code == 1 and "started with --epochs 1, not 2" in result.output
    wider = [*base, "--hidden", "16", "--resume"]  # was resumed with the run's own widths
    result = CliRunner().invoke(app, wider)
    assert result.exit_code == 1 and "started with --hidden 8, not 16" in result.output
    result = CliRunner().invoke(app, [*base, "--hidden", "8"])  # the run is there: refused
    assert (
        result.exit_code == 1 and "--resume continues it, --overwrite replaces it" in result.output
    )
    result = CliRunner().invoke(app, [*base, "--hidden", "8", "--overwrite", "--lr", "1e30"])
    assert result.exit_code == 1 and result.output.startswith("error:") and "step" in result.output
    assert "Traceback" not in result.output
    assert CliRunner().invoke(app, [*base, "--hidden", "8", "--overwrite"]).exit_code == 0
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    result = CliRunner().invoke(app, [*base, "--hidden", "8", "--resume"])
    assert result.exit_code == 1
    assert "error: checkpoint" in result.output and "truncated or corrupted" in result.output


def test_generate_into_an_existing_dataset_is_an_error_line(app, tmp_path):
    args = ["generate", "--model", "sabr", "--n", "64", "--out", str(tmp_path / "ds")]
    assert CliRunner().invoke(app, args).exit_code == 0
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "error:" in again.output and "already holds" in again.output


def test_generate_resume_continues_an_interrupted_generation(app, tmp_path, monkeypatch):
    import pricing.datasets as datasets

    args = ["generate", "--model", "sabr", "--n", "24", "--shard-size", "8", "--out",
            str(tmp_path / "ds")]  # fmt: skip
    real = datasets._make_shard

    def dies(task):  # killed while making the last shard
        if task.index == 2:
            raise OSError("worker lost")
        return real(task)

    monkeypatch.setattr(datasets, "_make_shard", dies)
    assert CliRunner().invoke(app, args).exit_code == 1
    monkeypatch.setattr(datasets, "_make_shard", real)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "unfinished generation: --resume continues it" in result.output
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0 and "wrote 24 sabr options (hagan) in 3 shards" in result.output
    assert not (tmp_path / "ds" / "generation.json").exists()


def _interrupted_generation(app, tmp_path, monkeypatch, model: str) -> list[str]:
    """The arguments of a 16-option generation into ``tmp_path / "ds"``, run once and killed
    while making its last shard (the plan and shard 0 stay), for a ``--resume`` to follow."""
    import pricing.datasets as datasets

    args = ["generate", "--model", model, "--n", "16", "--shard-size", "8", "--out",
            str(tmp_path / "ds")]  # fmt: skip
    real = datasets._make_shard

    def dies(task):
        if task.index == 1:
            raise OSError("worker lost")
        return real(task)

    monkeypatch.setattr(datasets, "_make_shard", dies)
    assert CliRunner().invoke(app, args).exit_code == 1
    return args


def test_generate_resume_with_other_options_names_them_as_options(app, tmp_path, monkeypatch):
    # another --margin printed both sampling domains whole, naming neither the option nor the
    # field; another --shard-size was named shard_size
    args = _interrupted_generation(app, tmp_path, monkeypatch, "sabr")
    cases = {
        ("--margin", "0.1"): "started with --margin 0, not 0.1: ",
        ("--shard-size", "4", "--seed", "1"): "started with --seed 0, not 1; --shard-size 8, not 4: ",
        ("--domain", "sabr-pde"): "started with --domain maturity [0.25, 30], not maturity [0.25, 10]: ",
    }  # fmt: skip
    for options, message in cases.items():
        result = CliRunner().invoke(app, [*args, "--resume", *options])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "{" not in result.output and "sampling_domain" not in result.output


def test_generate_resume_names_a_changed_compile_as_a_flag(app, tmp_path, monkeypatch):
    # it read "started with --compile False, not True": a flag has no value on the command line
    args = _interrupted_generation(app, tmp_path, monkeypatch, "heston")
    result = CliRunner().invoke(app, [*args, "--resume", "--compile", "--seed", "1"])
    assert result.exit_code == 1, result.output
    assert ("started with --seed 0, not 1; without --compile, not with it: resume with the "
            "values it was started with") in result.output, result.output  # fmt: skip
    assert "False" not in result.output


def test_generate_reports_a_bad_out_or_margin_without_leaving_a_folder(app, tmp_path):
    (tmp_path / "afile").write_text("")
    args = ["generate", "--model", "sabr", "--n", "4"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "afile" / "ds")])
    assert result.exit_code == 1 and "error:" in result.output
    # nan was "Input should be greater than or equal to 0" (click's range check)
    for margin in ("inf", "nan", "-1.0"):
        result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "m"), "--margin", margin])
        flat = " ".join(result.output.replace("│", " ").split())  # a misused option: exit 2
        says = f"--margin: {margin}: the margin must be finite and >= 0"
        assert result.exit_code == 2 and says in flat, flat
    assert not (tmp_path / "m").exists()


def test_generate_and_train_name_out_when_it_is_a_file(app, tmp_path):
    # a file as --out was "error: [Errno 17] File exists: ..." (hedge train and demo name --out)
    from qfnet.surrogate_cli import train_surrogate_command

    afile = tmp_path / "quotes.csv"
    afile.write_text("strike\n100\n")
    train = typer.Typer()
    train.callback()(lambda: None)
    train.command("train")(train_surrogate_command)
    for command, args in ((app, ["generate", "--model", "sabr", "--n", "4"]),
                          (train, ["train", "--data", str(tmp_path), "--hidden", "8"])):  # fmt: skip
        result = CliRunner().invoke(command, [*args, "--out", str(afile)])
        flat = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and "--out" in flat and "is a file" in flat, flat
    assert afile.read_text() == "strike\n100\n"


def test_float32_queries_at_the_domain_edge_and_the_calibration_grid_are_inside():
    from qfnet.calibration_network import GRID_LOG_MONEYNESS, GRID_MATURITY
    from qfnet.surrogate import implied_vol

    net = load_surrogate()
    params = {"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.5, "rho": -0.7}
    t = torch.tensor(30 / 365, dtype=torch.float32)  # the shortest maturity, lowest strike
    edge = implied_vol(net, maturity=t, log_moneyness=-2.5 * 0.2 * torch.sqrt(t), **params)
    assert torch.isfinite(edge)
    grid = implied_vol(net, maturity=GRID_MATURITY, log_moneyness=GRID_LOG_MONEYNESS, **params)
    assert grid.shape == (66,) and bool(torch.isfinite(grid).all())
    with pytest.raises(DomainError, match="maturity"):  # float32 rounding, not a free margin
        implied_vol(net, maturity=t * 0.999, log_moneyness=0.0, **params)


def _children(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigterm_stops_generate_and_its_worker_processes(tmp_path):
    # SIGTERM killed the parent at once and left its spawned workers waiting forever; the entry
    # point now turns it into an exit that terminates the pool.
    command = [sys.executable, "-c", "from qfnet.cli import main; main()", "generate", "--n",
               "4000000", "--workers", "2", "--shard-size", "65536", "--out",
               str(tmp_path / "ds")]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers := _children(process.pid)) < 2 and time.monotonic() < deadline:
            assert process.poll() is None, "generate ended before its workers started"
            time.sleep(0.2)
        assert len(workers) >= 2, "the worker processes never started"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "worker processes outlived generate"
    finally:
        process.kill()
        for w in filter(_alive, workers):
            os.kill(w, signal.SIGKILL)


def test_generate_counts_the_options_left_without_a_label(app, tmp_path):
    # QuantLib's SABR labels of 13-30 year options are NaN for 6 of these 64 points: the command
    # said "wrote 64 sabr options" and the metadata had no count
    out = tmp_path / "ds"
    args = ["generate", "--model", "sabr", "--engine", "quantlib", "--n", "64", "--shard-size",
            "32", "--out", str(out), "--seed", "5"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    from pricing.datasets import load_dataset

    frame, meta = load_dataset(out)
    missing = int(frame["implied_vol"].isna().sum())
    assert missing > 0 and meta["unlabelled"] == missing
    assert f"{missing} without a label" in result.output
