"""Subprocess runs: SIGKILL mid-epoch then resume is bit-exact; torchrun DDP equals one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _start(*args: object) -> subprocess.Popen:
    command = [sys.executable, str(SCRIPT), *map(str, args)]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen, timeout: float = 120) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output.decode()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_bit_identical_weights(tmp_path):
    # 48 samples / batch 4 = 12 steps per epoch; checkpoints every 3 steps; the victim is
    # killed after step 17 (epoch 1), so steps 16-17 are lost and redone from the step-15 file.
    full = _start("--run-dir", tmp_path / "full", "--out", tmp_path / "full.pt")
    ready = tmp_path / "ready"
    victim = _start(
        "--run-dir",
        tmp_path / "victim",
        "--out",
        tmp_path / "victim.pt",
        "--hang-after-step",
        17,
        "--ready-file",
        ready,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert victim.poll() is None, victim.communicate()[0].decode()
        assert time.monotonic() < deadline, "victim never reached step 17"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "victim.pt").exists()
    resumed = _start("--run-dir", tmp_path / "victim", "--out", tmp_path / "victim.pt", "--resume")
    _finish(full)
    _finish(resumed)

    expected, actual = _weights(tmp_path / "full.pt"), _weights(tmp_path / "victim.pt")
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key
    history_full = json.loads((tmp_path / "full.json").read_text())
    history_resumed = json.loads((tmp_path / "victim.json").read_text())
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in history_full]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in history_resumed]
    rows = (tmp_path / "victim" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_torchrun_two_processes_equal_one_process_on_the_combined_batch(tmp_path):
    common = ("--dropout", 0.0, "--samples", 64, "--epochs", 2)
    single = _start(
        "--run-dir",
        tmp_path / "single",
        "--out",
        tmp_path / "single.pt",
        "--batch-size",
        16,
        *common,
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(SCRIPT),
        "--run-dir",
        str(tmp_path / "ddp"),
        "--out",
        str(tmp_path / "ddp.pt"),
        "--batch-size",
        "8",
        *map(str, common),
    ]
    ddp = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _finish(single)
    _finish(ddp, timeout=180)

    expected, actual = _weights(tmp_path / "single.pt"), _weights(tmp_path / "ddp.pt")
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0.0, atol=1e-12)
    h_single = json.loads((tmp_path / "single.json").read_text())
    h_ddp = json.loads((tmp_path / "ddp.json").read_text())
    for a, b in zip(h_single, h_ddp, strict=True):
        assert a["step"] == b["step"]  # 4 steps per epoch in both runs
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-10)  # reduced over ranks
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-10)
    # only rank 0 wrote: one events file, one config, the usual checkpoints
    assert len(list((tmp_path / "ddp").glob("events.out.tfevents.*"))) == 1
    assert {p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
