"""``qfnet calibrate`` (mounted on a throwaway typer app): JSON, residuals CSV, smiles, errors."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from pricing.black_scholes import black_price
from pricing.calibration import calibrate
from pricing.sabr import lognormal_vol
from qfnet.calibrate_cli import calibrate_command

DATA_DIR = Path(__file__).parents[1] / "data"
JSON_KEYS = {"model", "method", "params", "rmse_iv_bp", "max_abs_iv_bp", "n_quotes", "n_dropped",
             "seconds", "converged", "iterations", "residuals_file"}  # fmt: skip
RESIDUAL_COLUMNS = ["maturity", "strike", "option_type", "forward", "discount", "market_iv",
                    "model_iv", "error_bp", "weight"]  # fmt: skip


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("calibrate")(calibrate_command)
    app.command("other")(lambda: None)  # two commands: typer keeps the subcommand name
    return app


@pytest.fixture
def smile_file(tmp_path: Path) -> Path:
    rows = []
    for t, forward in ((0.5, 100.0), (1.0, 101.0)):
        strike = forward * np.exp(np.linspace(-0.3, 0.3, 9))
        vol = lognormal_vol(forward=forward, strike=torch.tensor(strike), maturity=t, alpha=0.25,
                            beta=1.0, rho=-0.4, nu=0.7).numpy()  # fmt: skip
        rows.append(pd.DataFrame({"K": strike, "T": t, "fwd": forward, "df": 0.99, "IV": vol}))
    path = tmp_path / "smiles.csv"
    pd.concat(rows).to_csv(path, index=False)
    return path


def test_sabr_calibration_writes_json_residuals_and_plot(smile_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "fit.json"
    args = [
        "calibrate",
        "--model",
        "sabr",
        "--quotes",
        str(smile_file),
        "--out",
        str(out),
        "--plot",
    ]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert JSON_KEYS <= set(summary)
    assert summary["n_quotes"] == 18 and summary["n_dropped"] == 0
    assert summary["rmse_iv_bp"] < 1e-3
    np.testing.assert_allclose(summary["params"]["nu"], [0.7, 0.7], rtol=1e-6)
    assert summary["at_bounds"] == {}
    residuals = pd.read_csv(out.parent / summary["residuals_file"])
    assert list(residuals.columns) == RESIDUAL_COLUMNS
    assert len(residuals) == 18
    png = out.with_suffix(".png")
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_residuals_file_is_found_from_the_json_wherever_it_is_read(
    smile_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --out sub/fit.json wrote "sub/fit_residuals.csv" (relative to the working directory): read
    # from anywhere else, or after the folder moved, the reference led nowhere
    monkeypatch.chdir(tmp_path)
    args = ["calibrate", "--model", "sabr", "--quotes", str(smile_file), "--out", "sub/fit.json"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    moved = tmp_path / "moved"
    (tmp_path / "sub").rename(moved)
    summary = json.loads((moved / "fit.json").read_text())
    residuals = pd.read_csv(moved / summary["residuals_file"])
    assert list(residuals.columns) == RESIDUAL_COLUMNS and len(residuals) == 18


def test_heston_quantlib_calibration_of_the_dax_file(tmp_path: Path) -> None:
    source = Path(__file__).parents[2] / "data" / "dax_2002_sepp" / "implied_vols.csv"
    out = tmp_path / "heston.json"
    args = ["calibrate", "--model", "heston", "--quotes", str(source), "--out", str(out),
            "--method", "quantlib"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    # Cleaning removes the quotes behind the surface's butterfly violations before the fit.
    removed = summary["cleaning"]["removed"]["strike_arbitrage"]
    assert removed > 0
    assert summary["n_quotes"] == 104 - removed and summary["n_dropped"] == removed
    assert set(summary["params"]) == {"v0", "kappa", "theta", "sigma", "rho"}
    assert summary["iterations"] is None  # QuantLib does not report them


def test_bad_file_names_row_and_column(tmp_path: Path) -> None:
    out = tmp_path / "fit.json"
    args = ["calibrate", "--model", "sabr", "--quotes", str(DATA_DIR / "quotes_bad_nonnumeric.csv"),
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 1
    assert "row 3 (file line 5), column 'strike'" in result.output
    assert not out.exists()


def test_unknown_model_and_method_are_rejected(smile_file: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "fit.json")
    base = ["calibrate", "--quotes", str(smile_file), "--out", out]
    assert CliRunner().invoke(_app(), [*base, "--model", "bates"]).exit_code == 2
    # misused options are usage errors naming the option (the README's contract: exit 2)
    for args, message in ((["--method", "magic"], "sabr takes direct, quantlib"),
                          (["--weights", "heavy"], "use equal, vega or spread"),
                          (["--beta", "1.5"], "SABR beta lies in [0, 1]")):  # fmt: skip
        result = CliRunner().invoke(_app(), [*base, "--model", "sabr", *args])
        assert result.exit_code == 2 and args[0] in result.output, result.output
        assert message in " ".join(result.output.split()), result.output
    heston = CliRunner().invoke(_app(), [*base, "--model", "heston", "--method", "magic"])
    assert heston.exit_code == 2 and "surrogate" in heston.output  # it was left out of the list


def test_conflicting_options_and_unwritable_output_end_with_an_error(
    smile_file: Path, tmp_path: Path
) -> None:
    out = str(tmp_path / "fit.json")
    base = ["calibrate", "--quotes", str(smile_file), "--out", out]
    result = CliRunner().invoke(_app(), [*base, "--model", "heston", "--free-beta"])
    assert result.exit_code == 2 and "SABR options" in result.output
    # a usage error naming the option, before the file is read (it was exit 1, "error: QUOTES:")
    absent = ["calibrate", "--quotes", str(tmp_path / "absent.csv"), "--out", out]
    both = [*absent, "--model", "sabr", "--beta", "0.5", "--free-beta"]
    result = CliRunner().invoke(_app(), both)
    assert result.exit_code == 2 and "--free-beta" in result.output, result.output
    assert "pass one" in _words(result.output)
    inside_a_file = str(smile_file / "fit.json")
    blocked = ["calibrate", "--quotes", str(smile_file), "--model", "sabr", "--out", inside_a_file]
    result = CliRunner().invoke(_app(), blocked)
    assert result.exit_code == 1 and "cannot write" in result.output, result.output


def _sabr_fit_of(tmp_path: Path, name: str, text: str) -> tuple[Path, object]:
    """``qfnet calibrate --model sabr`` of a quote file written from ``text``."""
    quotes = tmp_path / name
    quotes.write_text(text)
    args = ["calibrate", "--model", "sabr", "--quotes", str(quotes), "--out",
            str(tmp_path / "o.json")]  # fmt: skip
    return quotes, CliRunner().invoke(_app(), args)


def test_a_file_that_cleaning_empties_ends_with_the_report(tmp_path: Path) -> None:
    text = "option_type,strike,maturity,spot,bid,ask\ncall,100,1,100,0,1\n"
    _, result = _sabr_fit_of(tmp_path, "zero_bids.csv", text)
    assert result.exit_code == 1
    assert "no quote is left after cleaning" in result.output and "1  zero_bid" in result.output


def test_a_file_without_prices_says_what_a_quote_needs(tmp_path: Path) -> None:
    # the report listed "no_price" and an empty "forwards per expiry:" line, and nothing more
    text = "option_type,strike,maturity,spot\ncall,100,1,100\ncall,110,1,100\n"
    _, result = _sabr_fit_of(tmp_path, "no_prices.csv", text)
    assert result.exit_code == 1
    assert "a quote needs bid and ask, or mid, price or implied_vol" in result.output
    assert "forwards per expiry" not in result.output


def test_a_missing_column_names_the_file(tmp_path: Path) -> None:
    text = "option_type,maturity,bid,ask\ncall,1,1,2\n"
    quotes, result = _sabr_fit_of(tmp_path, "no_strike.csv", text)
    assert result.exit_code == 1
    assert f"error: {quotes}: quote cleaning needs column(s) strike" in result.output


def test_heston_on_shifted_quotes_ends_with_an_error_naming_the_column(tmp_path: Path) -> None:
    # a strike below 0 with a shift ended in QuantLib's RuntimeError and a traceback
    text = "strike,maturity,forward,discount,implied_vol,shift\n-0.005,1,0.01,1,0.4,0.02\n"
    text += "0.0,1,0.01,1,0.35,0.02\n0.01,1,0.01,1,0.3,0.02\n0.02,1,0.01,1,0.28,0.02\n"
    quotes = tmp_path / "shifted.csv"
    quotes.write_text(text)
    args = ["calibrate", "--model", "heston", "--method", "quantlib", "--quotes", str(quotes),
            "--out", str(tmp_path / "fit.json")]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 1, result.output
    assert f"error: {quotes}: column 'shift': Heston fits lognormal vols" in result.output


def test_heston_direct_starts_from_the_calibration_network(tmp_path: Path) -> None:
    # The README's promise: qfnet calibrate races the network's answer beside the scan.
    import pricing.calibration as calibration

    calibration.register_start("heston", "network", None)  # as in a fresh process
    args = ["calibrate", "--model", "heston", "--quotes", str(DATA_DIR.parent.parent / "data" /
            "dax_2002_sepp" / "implied_vols.csv"), "--out", str(tmp_path / "fit.json")]  # fmt: skip
    assert CliRunner().invoke(_app(), args).exit_code == 0
    assert "network" in calibration._STARTS.get("heston", {})


@pytest.mark.parametrize("method", ["direct", "network"])
def test_a_damaged_calibration_network_is_named_first_not_the_quotes(
    tmp_path: Path, monkeypatch, method: str
) -> None:
    # "error: implied_vols.csv: .../network.pt is not a readable calibration network": the
    # quotes file's name led a message about the network file
    import qfnet.calibration_network_method as network_method
    from qfnet.calibration_network import default_path

    network = tmp_path / "network.pt"
    network.write_bytes(default_path().read_bytes()[:5000])  # cut short
    monkeypatch.setattr(network_method, "default_path", lambda: network)
    quotes = DATA_DIR.parent.parent / "data" / "dax_2002_sepp" / "implied_vols.csv"
    args = ["calibrate", "--model", "heston", "--method", method, "--quotes", str(quotes),
            "--out", str(tmp_path / "fit.json")]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 1
    assert f"error: {network} is not a readable calibration network" in result.output, result.output
    assert str(quotes) not in result.output


@pytest.mark.parametrize("method", ["direct", "network"])
def test_a_directory_in_the_place_of_the_calibration_network_is_named(
    tmp_path: Path, monkeypatch, method: str
) -> None:
    # 'direct' fitted without its network start and without a word (exit 0); 'network' said
    # "needs a trained network: no calibration network at .../network.pt", a folder that is there
    import qfnet.calibration_network_method as network_method

    network = tmp_path / "network.pt"
    network.mkdir()
    monkeypatch.setattr(network_method, "default_path", lambda: network)
    quotes = DATA_DIR.parent.parent / "data" / "dax_2002_sepp" / "implied_vols.csv"
    args = ["calibrate", "--model", "heston", "--method", method, "--quotes", str(quotes),
            "--out", str(tmp_path / "fit.json")]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 1, result.output
    assert f"error: {network} is a directory, not a calibration network file" in result.output
    assert str(quotes) not in result.output and not (tmp_path / "fit.json").exists()


def test_no_clean_leaves_out_a_row_without_vol_or_price_and_says_so(tmp_path: Path) -> None:
    # one empty implied_vol in a vol-only file blamed a missing option_type column
    dax = Path(__file__).parents[2] / "data" / "dax_2002_sepp" / "implied_vols.csv"
    table = pd.read_csv(dax).assign(implied_vol=lambda t: t["implied_vol"].mask(t.index == 5))
    table.to_csv(tmp_path / "q.csv", index=False)
    args = ["calibrate", "--model", "sabr", "--quotes", str(tmp_path / "q.csv"), "--out",
            str(tmp_path / "fit.json"), "--no-clean"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert f"over {len(table) - 1} quotes (1 row without a vol left out)" in result.output


def test_no_clean_prints_the_notes_on_forwards(tmp_path: Path) -> None:
    # calls only, no rate or dividend column: cleaning's report said the forward was the spot
    # carried at 0; with --no-clean (prepare_quotes, no report) nothing did
    strikes = [80.0, 90.0, 100.0, 110.0, 120.0]
    vols = lognormal_vol(forward=100.0, strike=strikes, maturity=1.0, alpha=0.2, beta=1.0,
                         rho=-0.3, nu=0.6).numpy()  # fmt: skip
    pd.DataFrame({"option_type": "call", "strike": strikes, "maturity": 1.0, "spot": 100.0,
                  "implied_vol": vols}).to_csv(tmp_path / "q.csv", index=False)  # fmt: skip
    args = ["calibrate", "--model", "sabr", "--quotes", str(tmp_path / "q.csv"), "--out",
            str(tmp_path / "fit.json")]  # fmt: skip
    note = "note: no rate or dividend column: 1 expiry without call/put pairs took its forward"
    for clean in ("--clean", "--no-clean"):
        result = CliRunner().invoke(_app(), [*args, clean])
        assert result.exit_code == 0, result.output
        assert note in result.output, (clean, result.output)


def test_no_clean_prints_the_note_on_maturities_in_days(tmp_path: Path) -> None:
    # maturities of 30 and 91 read as years: vols 19 times too small, noted with cleaning only
    rows = []
    for days in (30, 91):
        strikes = torch.tensor([90.0, 100.0, 110.0], dtype=torch.float64)
        price = black_price(forward=100.0, strike=strikes, maturity=days / 365, volatility=0.2)
        rows.append(pd.DataFrame({"option_type": "call", "strike": strikes.numpy(), "maturity":
                                  float(days), "forward": 100.0, "discount": 1.0,
                                  "price": price.numpy()}))  # fmt: skip
    pd.concat(rows).to_csv(tmp_path / "q.csv", index=False)
    args = ["calibrate", "--model", "sabr", "--quotes", str(tmp_path / "q.csv"), "--out",
            str(tmp_path / "fit.json"), "--no-clean"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "note: maturities are whole numbers (30 to 91)" in result.output, result.output


def test_no_clean_prints_a_note_once_where_calibrate_prepares_the_table_again(
    tmp_path: Path,
) -> None:
    # a row without a vol sends the prepared table through prepare_quotes again inside
    # calibrate, whose warning of the days read as years repeated the command's note
    rows = []
    for days in (30, 91):
        strikes = torch.tensor([90.0, 95.0, 100.0, 105.0, 110.0], dtype=torch.float64)
        price = black_price(forward=100.0, strike=strikes, maturity=days / 365, volatility=0.2)
        rows.append(pd.DataFrame({"option_type": "call", "strike": strikes.numpy(), "maturity":
                                  float(days), "forward": 100.0, "discount": 1.0,
                                  "price": price.numpy()}))  # fmt: skip
    table = pd.concat(rows, ignore_index=True)
    table.loc[0, "price"] = 5.0  # below the intrinsic value 10: no vol
    table.to_csv(tmp_path / "q.csv", index=False)
    args = ["calibrate", "--model", "sabr", "--quotes", str(tmp_path / "q.csv"), "--out",
            str(tmp_path / "fit.json"), "--no-clean"]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert result.output.count("maturities are whole numbers (30 to 91)") == 1, result.output
    assert "1 row without a vol left out" in result.output
    assert [str(w.message) for w in caught if "whole numbers" in str(w.message)] == []


def test_no_clean_counts_a_row_of_weight_0_as_dropped(tmp_path: Path) -> None:
    # with --no-clean the JSON's n_dropped counted only rows without a vol: a strike 30 times the
    # forward at a 20% vol, whose vega weight underflows to 0, was in neither n_quotes (5) nor
    # n_dropped (1, the row without a vol)
    strikes = [80.0, 90.0, 100.0, 110.0, 120.0, 3000.0, 130.0]
    vols = lognormal_vol(forward=100.0, strike=strikes, maturity=0.05, alpha=0.2, beta=1.0,
                         rho=-0.3, nu=0.6).numpy()  # fmt: skip
    vols[5], vols[6] = 0.2, np.nan  # and a row without a vol
    pd.DataFrame({"strike": strikes, "maturity": 0.05, "forward": 100.0, "discount": 1.0,
                  "implied_vol": vols}).to_csv(tmp_path / "q.csv", index=False)  # fmt: skip
    args = ["calibrate", "--model", "sabr", "--quotes", str(tmp_path / "q.csv"), "--out",
            str(tmp_path / "fit.json"), "--no-clean", "--weights", "vega"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "fit.json").read_text())
    residuals = pd.read_csv(tmp_path / summary["residuals_file"])
    assert residuals["weight"].tolist()[5] == 0.0
    assert summary["n_quotes"] == 5 and summary["n_dropped"] == 2
    assert "over 5 quotes (1 row without a vol left out; 1 of weight 0, not in the RMSE)" in (
        result.output
    )


DAX = Path(__file__).parents[2] / "data" / "dax_2002_sepp" / "implied_vols.csv"
DEVICE_MATCH_RTOL = 1e-7
"""Heston direct on a GPU against the CPU fit of the same file: the same optimum, reached through
float64 kernels that round differently (as in tests/pricing/test_calibration_device.py)."""
DEVICE_MATCH_RMSE_BP = 1e-4


def _words(output: str) -> str:
    """The output as one line of words, without the frame that rich draws around errors."""
    return " ".join(output.replace("│", " ").split())


def _fit(tmp_path: Path, name: str, *options: str) -> tuple[dict, pd.DataFrame]:
    out = tmp_path / f"{name}.json"
    args = ["calibrate", "--model", "heston", "--quotes", str(DAX), "--out", str(out), *options]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    return summary, pd.read_csv(out.parent / summary.pop("residuals_file"))


def test_device_cpu_gives_the_result_of_the_default(tmp_path: Path) -> None:
    default, default_residuals = _fit(tmp_path, "default")
    explicit, explicit_residuals = _fit(tmp_path, "cpu", "--device", "cpu")
    del default["seconds"], explicit["seconds"]
    assert explicit == default
    pd.testing.assert_frame_equal(explicit_residuals, default_residuals, check_exact=True)


def test_the_device_reaches_calibrate(monkeypatch, smile_file: Path, tmp_path: Path) -> None:
    import qfnet.calibrate_cli as cli

    seen = []
    monkeypatch.setattr(cli, "calibrate", lambda *a, **kw: seen.append(kw["device"]) or
                        calibrate(*a, **kw))  # fmt: skip
    args = ["calibrate", "--model", "sabr", "--quotes", str(smile_file), "--out",
            str(tmp_path / "fit.json"), "--device", "cpu:0"]  # fmt: skip
    assert CliRunner().invoke(_app(), args).exit_code == 0
    assert seen == ["cpu:0"]


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_a_missing_cuda_device_is_a_usage_error_before_the_file_is_read(
    monkeypatch, tmp_path: Path, device: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a CUDA machine
    out = tmp_path / "fit.json"
    args = ["calibrate", "--model", "heston", "--quotes", str(tmp_path / "absent.csv"),
            "--out", str(out), "--device", device]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2, result.output  # not exit 1 for the absent file
    assert f"--device: device '{device}' was asked for but CUDA is not available" in _words(
        result.output
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("device", "message"),
    [("nonsense", "device must be a torch device such as 'cpu' or 'cuda:0', got 'nonsense'"),
     ("meta", "calibration runs in float64 on 'cpu' or 'cuda', got 'meta'")],
)  # fmt: skip
def test_an_unusable_device_is_a_usage_error(tmp_path: Path, device: str, message: str) -> None:
    args = ["calibrate", "--model", "sabr", "--quotes", str(tmp_path / "absent.csv"), "--out",
            str(tmp_path / "fit.json"), "--device", device]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2 and "--device" in result.output, result.output
    assert message in _words(result.output)


@pytest.mark.parametrize(("model", "method"), [("heston", "quantlib"), ("heston", "network"),
                                               ("sabr", "direct")])  # fmt: skip
def test_a_gpu_with_a_cpu_only_method_is_a_usage_error(
    monkeypatch, tmp_path: Path, model: str, method: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the refusal is the method's
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    args = ["calibrate", "--model", model, "--method", method, "--quotes",
            str(tmp_path / "absent.csv"), "--out", str(tmp_path / "fit.json"),
            "--device", "cuda"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2, result.output
    assert (f"--device: device='cuda': method '{method}' for {model} runs on the CPU only"
            in _words(result.output))  # fmt: skip


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_heston_direct_on_cuda_matches_the_cpu_fit_of_the_dax_file(tmp_path: Path) -> None:
    on_cpu, _ = _fit(tmp_path, "cpu")
    torch.cuda.reset_peak_memory_stats()
    on_gpu, residuals = _fit(tmp_path, "cuda", "--device", "cuda")
    assert torch.cuda.max_memory_allocated() > 0  # the fit ran there
    assert on_gpu["params"].keys() == on_cpu["params"].keys()
    for name, value in on_cpu["params"].items():
        assert on_gpu["params"][name] == pytest.approx(value, rel=DEVICE_MATCH_RTOL), name
    assert on_gpu["rmse_iv_bp"] == pytest.approx(on_cpu["rmse_iv_bp"], abs=DEVICE_MATCH_RMSE_BP)
    assert on_gpu["n_quotes"] == on_cpu["n_quotes"] == len(residuals)


def test_an_output_that_would_overwrite_the_quotes_is_a_usage_error(
    smile_file: Path, tmp_path: Path
) -> None:
    # the residuals of a fit are a quote file: calibrating them again rewrote the input
    quotes = tmp_path / "fit_residuals.csv"
    quotes.write_bytes(smile_file.read_bytes())
    args = ["calibrate", "--model", "sabr", "--quotes", str(quotes), "--out",
            str(tmp_path / "fit.json")]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2 and "--out" in result.output, result.output
    assert "over the quotes" in _words(result.output)
    assert quotes.read_bytes() == smile_file.read_bytes()
    assert not (tmp_path / "fit.json").exists()


@pytest.mark.parametrize("folder", ["fit.json", "fit_residuals.csv", "fit.png"])
def test_a_folder_in_place_of_an_output_is_refused_before_the_fit(
    smile_file: Path, tmp_path: Path, folder: str
) -> None:
    (tmp_path / folder).mkdir()
    args = ["calibrate", "--model", "sabr", "--quotes", str(smile_file), "--out",
            str(tmp_path / "fit.json"), "--plot"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 1, result.output
    assert f"error: cannot write {tmp_path / folder}: it is a directory" in _words(result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({folder, smile_file.name})


def test_a_smile_plot_that_fails_to_save_closes_its_figure(
    smile_file: Path, tmp_path: Path, monkeypatch
) -> None:
    # pyplot kept the failed figure open: a long-lived process leaked one per failure
    import matplotlib.figure
    import matplotlib.pyplot as plt

    from pricing.quotes import read_quotes
    from pricing.smile_plot import plot_smiles

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    result = calibrate("sabr", read_quotes(smile_file))
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    before = len(plt.get_fignums())
    with pytest.raises(OSError, match="No space"):
        plot_smiles(result, tmp_path / "smiles.png")
    assert len(plt.get_fignums()) == before


def test_an_interrupted_smile_plot_leaves_the_previous_file_and_no_temporary(
    smile_file: Path, tmp_path: Path, fill_the_disk
) -> None:
    # the smiles were saved in place: a write cut short (a full disk) left half a PNG behind
    from pricing.quotes import read_quotes
    from pricing.smile_plot import plot_smiles

    result = calibrate("sabr", read_quotes(smile_file))
    png = plot_smiles(result, tmp_path / "out" / "smiles.png")
    before = png.read_bytes()

    fill_the_disk()
    with pytest.raises(OSError, match="No space"):
        plot_smiles(result, png)
    assert png.read_bytes() == before
    assert [p.name for p in png.parent.iterdir()] == ["smiles.png"]  # no temporary left


def test_a_smile_plot_that_cannot_be_written_ends_with_an_error(
    monkeypatch, smile_file: Path, tmp_path: Path
) -> None:
    import pricing.smile_plot

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pricing.smile_plot, "plot_smiles", full_disk)
    out = tmp_path / "fit.json"
    args = ["calibrate", "--model", "sabr", "--quotes", str(smile_file), "--out", str(out),
            "--plot"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # the error line, not a traceback
    assert f"error: cannot write {out.with_suffix('.png')}" in _words(result.output)
    assert out.exists()  # the fit is kept


def test_an_interrupted_write_keeps_the_previous_fit_whole(
    monkeypatch, smile_file: Path, tmp_path: Path
) -> None:
    # the JSON and residuals were written in place: a full disk cut the previous fit short
    out = tmp_path / "fit.json"
    args = ["calibrate", "--model", "sabr", "--quotes", str(smile_file), "--out", str(out)]
    assert CliRunner().invoke(_app(), args).exit_code == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    real_replace = os.replace

    def full_at_json(source: str, target: str | Path) -> None:  # the residuals went through
        if Path(target) == out:
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    def cut_csv(self: pd.DataFrame, target: BinaryIO, *args: object, **kwargs: object) -> None:
        target.write(b"maturity,str")
        raise OSError(28, "No space left on device")

    for target, name, writer in ((os, "replace", full_at_json), (pd.DataFrame, "to_csv", cut_csv)):
        with monkeypatch.context() as patch:
            patch.setattr(target, name, writer)
            result = CliRunner().invoke(_app(), args)
        assert result.exit_code == 1 and "No space left on device" in result.output, name
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_parameters_at_a_bound_are_in_the_json_and_the_report(tmp_path: Path) -> None:
    # a free SABR beta ends at 0 or 1 on most DAX expiries: RESULT.json and the printed report
    # said nothing of it (only a Python warning did)
    out = tmp_path / "fit.json"
    args = ["calibrate", "--model", "sabr", "--quotes", str(DAX), "--out", str(out),
            "--free-beta"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    beta = summary["at_bounds"]["beta"]
    assert len(beta) == len(summary["params"]["maturity"])
    assert {"lower", "upper"} & set(beta) and set(beta) <= {"lower", "upper", None}
    ends = [side for b, side in zip(summary["params"]["beta"], beta, strict=True)
            if min(b, 1.0 - b) <= 1e-6]  # fmt: skip
    assert None not in ends and len(ends) >= 2
    assert "at a bound of the parameter box" in result.output and "beta " in result.output


@pytest.mark.parametrize("clean", ["--clean", "--no-clean"])
def test_ambiguous_dates_are_refused_and_read_with_dayfirst_or_monthfirst(
    tmp_path: Path, clean: str
) -> None:
    # 03/01/2024 to 05/06/2024 reads either way (154 days day-first, 66 month-first): the file was
    # refused with a pointer to read_quotes(..., dayfirst=...), which the command could not pass
    strike = 100.0 * np.exp(np.linspace(-0.2, 0.2, 5))
    vol = lognormal_vol(forward=100.0, strike=torch.tensor(strike), maturity=0.3, alpha=0.25,
                        beta=1.0, rho=-0.4, nu=0.7).numpy()  # fmt: skip
    path, out = tmp_path / "q.csv", tmp_path / "fit.json"
    table = pd.DataFrame({"strike": strike, "quote_date": "03/01/2024", "expiry": "05/06/2024",
                          "forward": 100.0, "discount": 1.0, "implied_vol": vol})  # fmt: skip
    table.to_csv(path, index=False)
    args = ["calibrate", "--model", "sabr", "--quotes", str(path), "--out", str(out), clean]
    refused = CliRunner().invoke(_app(), args)
    assert refused.exit_code == 1 and not out.exists()
    assert "'05/06/2024' read as day/month or month/day alike" in refused.output
    assert "--dayfirst or --monthfirst" in refused.output and "read_quotes" not in refused.output
    for flag, days in (("--dayfirst", 154), ("--monthfirst", 66)):
        result = CliRunner().invoke(_app(), [*args, flag])
        assert result.exit_code == 0, result.output
        maturity = json.loads(out.read_text())["params"]["maturity"]
        np.testing.assert_allclose(maturity, [days / 365], rtol=1e-12)


def test_the_smile_plot_gets_the_bid_ask_of_the_quotes_fitted(monkeypatch, tmp_path: Path) -> None:
    # with --no-clean a quote without a vol (here a zero bid and ask) is left out of the fit:
    # the plot was given the table with it, and drew each bid/ask bar with the row above's vols
    import pricing.smile_plot

    strike = 100.0 * np.exp(np.linspace(-0.3, 0.3, 9))
    vol = lognormal_vol(forward=100.0, strike=torch.tensor(strike), maturity=0.5, alpha=0.25,
                        beta=1.0, rho=-0.4, nu=0.7)  # fmt: skip
    call = strike >= 100.0
    price = black_price(forward=100.0, strike=torch.tensor(strike), maturity=0.5,
                        volatility=vol, is_call=torch.tensor(call)).numpy()  # fmt: skip
    table = pd.DataFrame({"option_type": np.where(call, "call", "put"), "strike": strike,
                          "maturity": 0.5, "forward": 100.0, "discount": 1.0,
                          "bid": 0.98 * price, "ask": 1.02 * price})  # fmt: skip
    no_vol = pd.DataFrame({"option_type": ["put"], "strike": [40.0], "maturity": 0.5,
                           "forward": 100.0, "discount": 1.0, "bid": 0.0, "ask": 0.0})  # fmt: skip
    path = tmp_path / "q.csv"
    pd.concat([no_vol, table]).to_csv(path, index=False)
    plotted = {}

    def capture(result, png, *, quotes):
        plotted.update(result=result, quotes=quotes)
        return png

    monkeypatch.setattr(pricing.smile_plot, "plot_smiles", capture)
    args = ["calibrate", "--model", "sabr", "--quotes", str(path), "--out",
            str(tmp_path / "fit.json"), "--no-clean", "--plot"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    residuals, quotes = plotted["result"].residuals, plotted["quotes"]
    np.testing.assert_array_equal(quotes.loc[residuals.index, "strike"], residuals["strike"])
    assert (quotes.loc[residuals.index, "bid_iv"] < residuals["market_iv"]).all()
    assert (quotes.loc[residuals.index, "ask_iv"] > residuals["market_iv"]).all()


def test_the_summary_line_counts_quotes_without_a_model_vol_out_of_the_rmse(tmp_path: Path) -> None:
    # two 1-hour quotes 30% out of the money, which the network's fit prices at 0 (no model
    # vol): the RMSE leaves them out, but the line said "RMSE ... over 56 quotes" of the 54
    maturity = np.repeat([0.1, 0.25, 0.5, 1.0, 2.0, 3.0], 9)
    strike = 100.0 * np.exp(np.tile(np.linspace(-2.0, 2.0, 9), 6) * 0.2 * np.sqrt(maturity))
    vol = 0.2 - 0.05 * np.log(strike / 100.0)
    table = pd.DataFrame({"strike": [*strike, 70.0, 130.0],
                          "maturity": [*maturity, 1 / (365 * 24), 1 / (365 * 24)],
                          "forward": 100.0, "discount": 1.0, "implied_vol": [*vol, 0.3, 0.3]})  # fmt: skip
    table.to_csv(tmp_path / "q.csv", index=False)
    args = ["calibrate", "--model", "heston", "--method", "network", "--quotes",
            str(tmp_path / "q.csv"), "--out", str(tmp_path / "fit.json"), "--no-clean"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "over 56 quotes (2 without a model vol, not in the RMSE)" in result.output, result.output
