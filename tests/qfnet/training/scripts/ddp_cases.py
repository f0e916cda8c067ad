"""Two-process cases for the DDP tests: ``torchrun --nproc_per_node=2 ddp_cases.py CASE OUT``.

Each rank writes what it saw to ``OUT/rank<r>.json``; the test compares the ranks. The gloo
group is created here with a short timeout, so that ranks out of step fail in seconds instead
of hanging (the Trainer uses the group it finds).
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from qfnet.training import NonFiniteLossError, Trainer, TrainerConfig, lr_find


def _data(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)  # (N, 4)
    y = torch.sin(3 * x.sum(dim=1, keepdim=True)) + 0.3 * torch.randn(n, 1, generator=g)  # (N, 1)
    return TensorDataset(x, y.double())


def _trainer(callbacks: Sequence[Any] = (), loss: Any = None, **config: Any) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    settings = {"max_epochs": 2, "batch_size": 8, "progress_bar": False, "device": "cpu"}
    return Trainer(
        model,
        loss=loss or nn.MSELoss(),
        config=TrainerConfig(**(settings | config)),
        callbacks=list(callbacks),
    )


def lr_find_case(rank: int, out: Path) -> dict[str, Any]:
    """The ranks' losses differ; the test diverges and stops early (at 50 of 60 steps)."""
    trainer = _trainer(optimizer="adam", lr=1e-3, batch_size=16)
    result = lr_find(trainer, _data(512, seed=1), min_lr=1e-5, max_lr=50.0, num_steps=60)
    return {"lrs": result.lrs, "losses": result.losses, "suggestion": result.suggestion}


class _StopOn:
    """Sets ``should_stop`` on one rank only, after step ``step`` or at the end of ``epoch``."""

    def __init__(self, rank: int, *, step: int | None = None, epoch: int | None = None) -> None:
        self.rank, self.step, self.epoch = rank, step, epoch

    def on_train_step_end(self, trainer: Trainer) -> None:
        if dist.get_rank() == self.rank and trainer.global_step == self.step:
            trainer.should_stop = True

    def on_epoch_end(self, trainer: Trainer) -> None:
        if dist.get_rank() == self.rank and trainer.epoch == self.epoch:
            trainer.should_stop = True


def stop_case(rank: int, out: Path) -> dict[str, Any]:
    """One rank stops at an epoch end, then (another run) after a step mid-epoch."""
    data = _data(64)
    at_epoch = _trainer([_StopOn(1, epoch=0)], max_epochs=3, run_dir=str(out / "stop_run"),
                        tensorboard=False)  # fmt: skip
    at_epoch.fit(data)
    saved = None
    if rank == 0:  # the checkpoint of that epoch must carry the stop (rank 0's flag was False)
        last = torch.load(out / "stop_run" / "checkpoints" / "last.pt", weights_only=True)
        saved = last["loop"]["should_stop"]
    at_step = _trainer([_StopOn(0, step=3)], max_epochs=3)
    at_step.fit(data)
    return {
        "saved_stop": saved,
        "epoch_run": [at_epoch.global_step, len(at_epoch.history)],
        "step_run": [at_step.global_step, at_step.evaluate(data)["loss"]],
    }


def nan_case(rank: int, out: Path) -> dict[str, Any]:
    """Rank 1's loss value is NaN at its third step; its gradients stay finite."""
    calls = {"n": 0}

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = ((output - target) ** 2).mean()
        calls["n"] += 1
        if dist.get_rank() == 1 and calls["n"] == 3:
            value = value + torch.tensor(float("nan"), dtype=value.dtype)
        return value

    trainer = _trainer(loss=loss)
    try:
        trainer.fit(_data(64))
    except NonFiniteLossError as error:
        return {"raised_at": error.global_step, "message": str(error)}
    return {"raised_at": None}


def _caught(action: Any) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def loader_warnings_case(rank: int, out: Path) -> dict[str, Any]:
    """A padded DistributedSampler for validation, an unsharded training DataLoader."""
    val = _data(11, seed=2)
    padded = DataLoader(val, batch_size=4, sampler=DistributedSampler(val, shuffle=False))
    trainer = _trainer(max_epochs=1)
    fit = _caught(lambda: trainer.fit(DataLoader(_data(32), batch_size=8), padded))
    sharded = DataLoader(_data(32), sampler=DistributedSampler(_data(32)), batch_size=8)
    evaluate = _caught(lambda: trainer.evaluate(padded))
    quiet = _caught(lambda: _trainer(max_epochs=1).fit(sharded, val))
    return {"fit": fit, "evaluate": evaluate, "quiet": quiet}


def surrogate_case(rank: int, out: Path) -> dict[str, Any]:
    """A surrogate run whose validation split has an odd number of rows (3 of 64)."""
    from pricing.datasets import generate
    from qfnet.surrogate_training import train_surrogate

    data = out / "data"
    if rank == 0:
        generate(data, model="heston", n=64, progress=False)
    dist.barrier()
    run = out / "run"
    caught = _caught(lambda: train_surrogate(data, run, epochs=1, batch_size=16, hidden=(4,),
                                             val_fraction=0.05, progress=False, device="cpu"))  # fmt: skip
    return {"warnings": caught, "backend": dist.get_backend()}


CASES = {
    "lr_find": lr_find_case,
    "stop": stop_case,
    "nan": nan_case,
    "loader_warnings": loader_warnings_case,
    "surrogate": surrogate_case,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=15))
    rank = dist.get_rank()
    result = CASES[args.case](rank, args.out)
    (args.out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
