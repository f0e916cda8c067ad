"""Smoke tests of the benchmark scripts in ``benchmarks/``: their cheapest parts at tiny sizes, through
their Python functions (no timing is asserted: only that they run and report finite figures under
the keys the scripts' JSON lines and the README use)."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture()
def bench(monkeypatch, one_torch_thread):
    """Import a benchmark script by name, as ``python benchmarks/NAME.py`` sees its siblings."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load(name: str) -> ModuleType:
        return importlib.import_module(name)

    return load


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _assert_finite(values: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        assert math.isfinite(values[key]), (key, values[key])


def test_emit_ends_with_json_line_recording_machine(bench, capsys):
    bench("_common").emit("smoke", [{"engine": "ours", "rate": 1.5}], {"ratio": 2.0})
    summary = _last_json(capsys)
    assert summary["benchmark"] == "smoke" and summary["ratio"] == 2.0
    assert summary["machine"]["cpu"] and summary["machine"]["torch_threads"] == 1


def test_exotics_parts_report_finite_speedups(bench):
    exotics = bench("bench_exotics")
    for part in (exotics.bench_barrier(2048, 256, 1), exotics.bench_asian(2048, 256, 1)):
        _assert_finite(part, ("speedup_equal_se", "max_abs_z"))
        for row in part["rows"].values():
            _assert_finite(row, ("seconds", "price", "std_error", "work", "z_vs_reference"))


def test_calibration_sabr_part_reports_finite_figures(bench):
    sabr = bench("bench_calibration").bench_sabr(3, 2, 0)
    _assert_finite(
        sabr,
        ("scipy_quantlib_ms_per_smile", "direct_batched_ms_per_smile", "speedup_batched",
         "max_rmse_excess_batched_bp"),
    )  # fmt: skip


def test_heston_parts_report_finite_errors(bench):
    heston = bench("bench_heston")
    batch = heston.random_batch(16, seed=0)
    _, _, ours = heston.time_ours(batch, threads=1, repeats=1, compile=False)
    _, _, reference = heston.time_quantlib(batch, "reference", 1)
    error_bp, n_ok = heston.iv_errors_bp(ours, reference, batch)
    assert math.isfinite(error_bp) and 0 < n_ok <= 16


def test_heston_iv_errors_leave_out_zero_vol_without_warning(bench):
    """A reference price at intrinsic value (implied vol 0) has no vega: left out, no warning."""
    heston = bench("bench_heston")
    batch = {**heston.random_batch(3, seed=0), "strike": np.array([50.0, 100.0, 120.0]),
             "is_call": np.ones(3, dtype=bool)}  # fmt: skip
    t = batch["maturity"]
    forward = 100.0 * np.exp((batch["rate"] - batch["dividend"]) * t)
    price = np.exp(-batch["rate"] * t) * np.maximum(forward - batch["strike"], 0.0)
    price[1:] += 1.0
    with np.errstate(all="raise"):
        assert heston.iv_errors_bp(price, price, batch) == (0.0, 2)


def test_trainer_case_reports_finite_overheads(bench):
    trainer = bench("bench_trainer")
    case = trainer.Case("tiny", hidden=(8,), batch=64, samples=256, epochs=1)
    result = trainer.run_case(case, repeats=1)
    _assert_finite(result, ("bare_us_per_step", "trainer_us_per_step", "overhead", "overhead_cpu"))


def test_trainer_json_records_machine_and_threads(bench, capsys, monkeypatch):
    trainer = bench("bench_trainer")
    tiny = SimpleNamespace(bare_us_per_step=1.0, trainer_us_per_step=1.0, overhead=0.0,
                           overhead_cpu=0.0, overhead_paired_median=0.0,
                           overhead_cpu_paired_median=0.0, bare_cpu_us_per_step=1.0,
                           trainer_cpu_us_per_step=1.0)  # fmt: skip
    monkeypatch.setattr(trainer, "run_case", lambda case, repeats: vars(tiny))
    monkeypatch.setattr(sys, "argv", ["bench_trainer.py", "--quick", "--threads", "1"])
    trainer.main()
    summary = _last_json(capsys)
    assert summary["threads"] == 1
    assert summary["machine"]["cpu"] and summary["machine"]["torch_threads"] == 1


def test_hedging_train_timing_keeps_the_thread_setting(bench, monkeypatch):
    """``train`` sets the config's threads; the timing of 1 and 2 threads must not leave 2 behind
    for the rest of the run (and its JSON's machine record)."""
    hedging = bench("bench_hedging")

    def fake_train(config, run_dir):
        torch.set_num_threads(config.training.threads)
        return SimpleNamespace(history=[0.0], seconds=1.0, cpu_seconds=1.0)

    monkeypatch.setattr(hedging, "train", fake_train)
    hedging._train_timing(quick=True)
    assert torch.get_num_threads() == 1


def test_sabr_pde_speed_reports_finite_rates(bench):
    speed = bench("bench_sabr_pde").speed(str(bench("bench_sabr_pde").SABR_PDE_SURROGATE), 256)
    _assert_finite(speed, ("hagan_vols_per_s", "surrogate_vols_per_s", "surrogate_time_over_hagan"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit without CUDA")
def test_gpu_without_cuda_exits_with_json_line(bench, capsys, monkeypatch):
    gpu = bench("bench_gpu")
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py", "--quick"])
    gpu.main()
    out = capsys.readouterr().out
    assert "CUDA is not available" in out
    assert json.loads(out.strip().splitlines()[-1])["cuda"] is False


def test_gpu_refuses_unknown_part_before_any_work(bench, monkeypatch):
    gpu = bench("bench_gpu")
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py", "--device", "cpu", "--parts", "mc,bogus"])
    monkeypatch.setattr(gpu, "part_mc", lambda quick: pytest.fail("ran a part"))
    with pytest.raises(SystemExit) as exit_info:
        gpu.main()
    assert exit_info.value.code == 2


@pytest.mark.parametrize("script", sorted(BENCHMARKS.glob("bench_*.py")), ids=lambda p: p.stem)
def test_every_benchmark_option_has_help(script: Path) -> None:
    # --seed, --threads, --parts, ... of eight scripts showed in --help as bare names
    import ast

    bare = [
        call.args[0].value
        for call in ast.walk(ast.parse(script.read_text()))
        if isinstance(call, ast.Call)
        and getattr(call.func, "attr", None) == "add_argument"
        and not any(keyword.arg == "help" for keyword in call.keywords)
    ]
    assert bare == [], f"{script.name}: options without help: {bare}"
