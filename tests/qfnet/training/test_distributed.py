"""DDP: ranks stay in step (stop flags, NaN guard, lr_find, RNG states on resume), validation
counts each row once (or, unsharded, is the whole set's on every rank), and rank 0's files are
written when ``fit`` returns.

The two-process cases run under ``torchrun`` on gloo (``scripts/ddp_cases.py``); ranks that fall
out of step there fail within the group's 15 s timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import qfnet.training.distributed as distributed
from qfnet.surrogate_training import _BatchSampler
from qfnet.training.distributed import DistInfo, any_rank

SCRIPT = Path(__file__).parent / "scripts" / "ddp_cases.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
needs_dist = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")


def _torchrun(case: str, out: Path) -> list[dict]:
    """Run ``case`` on two processes; the per-rank results."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(SCRIPT), case, str(out)]  # fmt: skip
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@needs_dist
def test_lr_find_takes_the_same_steps_and_suggests_the_same_lr_on_every_rank(tmp_path):
    first, second = _torchrun("lr_find", tmp_path)
    assert 5 < len(first["lrs"]) < 60  # it diverged and stopped early: the decision under test
    assert first == second


@needs_dist
def test_a_stop_set_on_one_rank_stops_every_rank_at_the_same_point(tmp_path):
    first, second = _torchrun("stop", tmp_path)
    assert first["epoch_run"] == second["epoch_run"] == [4, 1]  # 64 / 2 ranks / batch 8: 4 steps
    assert first["saved_steps"] == [4, 3]  # last.pt where each run stopped (mid-epoch at 3)
    assert first["step_run"] == second["step_run"]
    assert first["step_run"][0] == 3


@needs_dist
def test_a_non_finite_loss_on_one_rank_raises_on_every_rank_at_the_same_step(tmp_path):
    first, second = _torchrun("nan", tmp_path)
    assert first["raised_at"] == second["raised_at"] == 2
    assert "loss on another process" in first["message"]
    assert "loss nan" in second["message"]
    # written from on_exception at the last completed step, found by every rank once fit raised
    assert first["saved_step"] == second["saved_step"] == 2


@needs_dist
def test_an_exception_on_one_rank_propagates_without_waiting_for_a_checkpoint(tmp_path):
    first, second = _torchrun("one_rank_crash", tmp_path)
    # the crash handler's checkpoint waited in its collectives for rank 0, which was waiting in
    # the step's gradient all-reduce: the group's timeout was raised instead of the crash
    assert second["raised"] == "_Crash"
    (warning,) = second["warnings"]
    assert warning.startswith("save_checkpoint(") and "not written" in warning
    assert first["raised"] == "RuntimeError"  # gloo: the connection to rank 1 closed
    assert not (tmp_path / "crash.pt").exists()


@needs_dist
def test_an_expected_shortfall_evaluated_before_training_gets_one_level_on_every_rank(tmp_path):
    first, second = _torchrun("es_evaluate_first", tmp_path)
    # set by the evaluation from each rank's own half of the data, the levels differed for the
    # whole run (a learned parameter: DDP syncs its gradients, not its value)
    assert first["level"] == second["level"]


@needs_dist
def test_a_resumed_run_restores_each_ranks_own_rng_state(tmp_path):
    first, second = _torchrun("resume_rng", tmp_path)
    # each rank's dropout masks go on as in the uninterrupted run (rank 0's state on rank 1
    # gave it other masks, hence other averaged gradients on both)
    for rank in (first, second):
        assert rank["resumed"] == rank["full"]


@needs_dist
def test_every_rank_finds_the_checkpoints_of_rank_zero_when_fit_returns(tmp_path):
    first, second = _torchrun("written", tmp_path)
    assert first == second == {"found": ["best.pt", "last.pt"]}


@needs_dist
def test_a_rank_whose_samples_all_weigh_zero_trains_as_one_process_on_the_whole_batch(tmp_path):
    first, second = _torchrun("zero_weight_rank", tmp_path)
    # rank 1's mean loss is 0/0: it stopped both ranks as a NaN loss (and made train_loss NaN
    # with nan_guard=False), where one process on the ranks' batches together trains on
    assert first["ddp"] == second["ddp"]
    ddp, single = first["ddp"], first["single"]
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], rel=1e-12, abs=0.0)
    for got, want in zip(ddp["weights"], single["weights"], strict=True):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    # the logged step loss is the step's over both ranks: rank 1's own is 0/0, which was
    # logged as NaN there and ended its LR range test at the first step
    assert ddp["step_losses"] == pytest.approx(single["step_losses"], rel=1e-12, abs=0.0)
    assert len(ddp["lr_find"]) == len(single["lr_find"]) == 6
    assert ddp["lr_find"] == pytest.approx(single["lr_find"], rel=1e-12, abs=0.0)


@needs_dist
def test_loader_warnings_come_from_rank_zero_and_name_a_padding_sampler(tmp_path):
    first, second = _torchrun("loader_warnings", tmp_path)
    assert second == {"fit": [], "evaluate": [], "quiet": []}
    train, val = first["fit"]
    assert train.startswith("train_data: a DataLoader is used as given")
    assert val.startswith("val_data: its DistributedSampler repeats 1 of 11 samples")
    assert "pass the Dataset itself" in val
    assert first["evaluate"] == [val.replace("val_data", "data", 1)]
    assert first["quiet"] == []


@needs_dist
def test_unsharded_evaluation_gives_every_rank_the_whole_sets_value_and_warns_on_a_split(tmp_path):
    first, second = _torchrun("whole_eval", tmp_path)
    # every rank evaluates all 11 samples: a loader read whole by each is what is asked for
    assert first["warnings"] == first["loader_warnings"] == []
    assert second == {**first, "split_warnings": []}
    assert first["value"] == pytest.approx(first["expected"], rel=1e-12, abs=0.0)
    (split,) = first["split_warnings"]
    assert split.startswith("data: its sampler splits the data over the 2 processes")


@needs_dist
def test_surrogate_under_torchrun_validates_every_row_once_without_loader_warnings(tmp_path):
    from qfnet.surrogate import load_surrogate
    from qfnet.surrogate_training import _split, load_training_tensors, vol_loss_bp2

    first, second = _torchrun("surrogate", tmp_path)
    assert first["warnings"] == second["warnings"] == []
    assert first["backend"] == "gloo"
    x, iv, _, _ = load_training_tensors(tmp_path / "data")
    val = _split(len(iv), 0.05, 0.02, 0)[1]
    assert len(val) == 3  # odd: equal shares over 2 ranks would leave one row out
    net = load_surrogate(tmp_path / "run" / "model.pt").double().eval()
    with torch.no_grad():
        expected = vol_loss_bp2(net(x[val]), iv[val]).mean().item()
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    assert float(last[header.index("val_loss")]) == pytest.approx(expected, rel=1e-6, abs=0.0)


@needs_dist
def test_hedging_under_torchrun_reports_the_whole_validation_sets_risk_and_ranks_agree(tmp_path):
    from qfnet.hedging.markets import Market, pack
    from qfnet.hedging.train import load_run, make_paths

    first, second = _torchrun("hedge", tmp_path)
    # only rank 0 writes
    assert first["saved"] == ["variance", "es", "cli_run"] and second["saved"] == []
    # and only rank 0 prints the CLI's summary line (each rank printed one)
    assert len(first["cli_lines"]) == 1 and second["cli_lines"] == []
    for objective in ("variance", "es"):
        # every rank returns after rank 0 has written model.pt (rank 1 returned before it)
        assert first[objective]["model_written"] and second[objective]["model_written"]
        # the ES level is set from the first batch: from each rank's own, it differed
        assert first[objective] == second[objective]
        config, model, _ = load_run(tmp_path / objective)
        val, _ = make_paths(Market(config), 33, split="val", seed=config.seed)
        with torch.no_grad():
            whole = model.risk_loss(model(pack(val).to(torch.float64))).item()
        # restore_best_weights: model.pt holds the best epoch's weights, so its val_loss
        best = min(first[objective]["val_loss"])
        assert best == pytest.approx(whole, rel=1e-12, abs=0.0)


@pytest.mark.parametrize("n", [7, 8, 41])
def test_surrogate_validation_shares_cover_every_row_once(n):
    def share(rank: int) -> list[int]:
        sampler = _BatchSampler(n, 3, shuffle=False, seed=0, rank=rank, num_replicas=2,
                                equal_shares=False)  # fmt: skip
        return torch.cat(list(sampler)).tolist() if len(sampler) else []

    assert sorted(share(0) + share(1)) == list(range(n))


def test_surrogate_training_shares_are_equal_for_ddp_step_sync():
    sizes = [
        sum(len(b) for b in _BatchSampler(41, 4, shuffle=True, seed=0, rank=r, num_replicas=2))
        for r in (0, 1)
    ]
    assert sizes == [20, 20]


def test_surrogate_joins_the_process_group_with_the_training_device(tmp_path, monkeypatch):
    # The Trainer reuses a group that exists: created without the device it would be gloo
    # even for a CUDA run (nccl is chosen from the device).
    from pricing.datasets import generate
    from qfnet.surrogate_training import train_surrogate

    devices = []

    def spy(mode: str = "auto", device: torch.device | None = None) -> DistInfo:
        devices.append(device)
        return DistInfo()

    monkeypatch.setattr(distributed, "init_distributed", spy)
    data = generate(tmp_path / "data", model="sabr", n=32, progress=False)
    train_surrogate(data, tmp_path / "run", epochs=1, batch_size=16, hidden=(4,),
                    progress=False, device="cpu")  # fmt: skip
    assert devices and all(d == torch.device("cpu") for d in devices)


def test_any_rank_is_the_flag_itself_for_one_process():
    assert any_rank(True, DistInfo(), torch.device("cpu")) is True
    assert any_rank(False, DistInfo(), torch.device("cpu")) is False
