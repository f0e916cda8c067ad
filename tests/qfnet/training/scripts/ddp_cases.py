"""Two-process cases for the DDP tests: ``torchrun --nproc_per_node=2 ddp_cases.py CASE OUT``.

Each rank writes what it saw to ``OUT/rank<r>.json``; the test compares the ranks. The gloo
group is created here with a short timeout, so that ranks out of step fail in seconds instead
of hanging (the Trainer uses the group it finds).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

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


def _saved_step(run: Path) -> int | None:
    """The global step of the run's ``last.pt`` (rank 0, which writes it)."""
    if dist.get_rank() != 0:
        return None
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["loop"]["global_step"]


def stop_case(rank: int, out: Path) -> dict[str, Any]:
    """One rank stops at an epoch end, then (another run) after a step mid-epoch, where every
    rank joins the writing of ``last.pt`` at that step (its collectives)."""
    data = _data(64)
    at_epoch = _trainer([_StopOn(1, epoch=0)], max_epochs=3, run_dir=str(out / "stop_run"),
                        tensorboard=False)  # fmt: skip
    at_epoch.fit(data)
    at_step = _trainer([_StopOn(0, step=3)], max_epochs=3, run_dir=str(out / "step_run"),
                       tensorboard=False)  # fmt: skip
    at_step.fit(data)
    return {
        "saved_steps": [_saved_step(out / "stop_run"), _saved_step(out / "step_run")],
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

    path = out / "nan.pt"
    trainer = _trainer([_CheckpointOnException(path, rank=1, step=None)], loss=loss)
    try:
        trainer.fit(_data(64))
    except NonFiniteLossError as error:
        # rank 0 writes it slowly: every rank finds it once fit has raised
        step = torch.load(path, weights_only=True)["loop"]["global_step"]
        return {"raised_at": error.global_step, "message": str(error), "saved_step": step}
    return {"raised_at": None}


class _Crash(Exception):
    pass


class _CheckpointOnException:
    """Raises in rank ``rank``'s backward of step ``step`` (``None``: never); on any exception,
    writes a checkpoint, as a user's crash handler would (rank 0 writes it slowly)."""

    def __init__(self, path: Path, *, rank: int, step: int | None) -> None:
        self.path, self.rank, self.step = path, rank, step

    def on_after_backward(self, trainer: Trainer) -> None:
        if dist.get_rank() == self.rank and trainer.global_step == self.step:
            raise _Crash

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        if dist.get_rank() == 0:
            time.sleep(0.5)
        trainer.save_checkpoint(self.path)


def one_rank_crash_case(rank: int, out: Path) -> dict[str, Any]:
    """Rank 1 raises in step 3 (rank 0 waits in that step's gradient all-reduce), then rank 1's
    loss is NaN at step 2 of another run; both write a checkpoint from ``on_exception``."""
    crash = _CheckpointOnException(out / "crash.pt", rank=1, step=3)
    result: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _trainer([crash]).fit(_data(64))
        except Exception as error:  # rank 0: the lost peer's error
            result["raised"] = type(error).__name__
    if rank == 1:  # rank 0's group is broken: it leaves here
        result["warnings"] = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return result


def es_evaluate_first_case(rank: int, out: Path) -> dict[str, Any]:
    """An expected-shortfall loss evaluated (each rank on its share) before training; the
    learned VaR level of each rank after one epoch."""
    from qfnet.losses import ExpectedShortfall

    def pnl(model: nn.Module, batch: Any) -> tuple[torch.Tensor, None, None]:
        return model(batch[0]).squeeze(1) - batch[1].squeeze(1), None, None  # (N,)

    trainer = _trainer(loss=ExpectedShortfall(0.9), max_epochs=1)
    trainer.forward = pnl
    trainer.evaluate(_data(64, seed=1))
    trainer.fit(_data(64))
    return {"level": trainer.loss.var_level.item()}


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


def whole_eval_case(rank: int, out: Path) -> dict[str, Any]:
    """``shard_eval=False`` with a loss that is not a mean over samples (a batch's variance)."""
    val = _data(11, seed=2)
    padded = DataLoader(val, batch_size=4, sampler=DistributedSampler(val, shuffle=False))

    def spread(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output - target).var()

    trainer = _trainer(loss=spread, shard_eval=False, eval_batch_size=len(val))
    whole: dict[str, Any] = {}
    whole["warnings"] = _caught(lambda: whole.update(value=trainer.evaluate(val)["loss"]))
    whole["loader_warnings"] = _caught(lambda: trainer.evaluate(DataLoader(val, batch_size=11)))
    whole["split_warnings"] = _caught(lambda: trainer.evaluate(padded))
    with torch.no_grad():
        whole["expected"] = spread(trainer.model(val.tensors[0]), val.tensors[1]).item()
    return whole


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


def hedge_case(rank: int, out: Path) -> dict[str, Any]:
    """Hedging runs with a variance and an ES objective, 33 validation paths (odd: unequal
    shares); what each rank holds after training, and whether it wrote ``model.pt``."""
    import qfnet.hedging.train as hedging
    from qfnet.hedging.config import config_from_dict

    saved = []
    real_save = hedging._save
    # rank 0 writes slowly (a network file system): the others must not return before it has
    hedging._save = lambda *args: saved.append(args[0].name) or time.sleep(0.3) or real_save(*args)
    result = {}
    for objective in ("variance", "es"):
        config = config_from_dict({"market": {"n_steps": 5}, "objective": {"name": objective},
            "paths": {"train": 64, "val": 33, "test": 8}, "baselines": {"ww_risk_aversion": 1.0},
            "training": {"epochs": 2, "batch_size": 8, "dtype": "float64"}})  # fmt: skip
        trained = hedging.train(config, out / objective)
        result[objective] = {
            "model_written": (out / objective / "model.pt").is_file(),
            "val_loss": trained.history["val_loss"],
            "weights": {k: v.tolist() for k, v in trained.model.state_dict().items()},
        }
    return result | {"saved": saved, "cli_lines": _hedge_cli_lines(out)}


def _hedge_cli_lines(out: Path) -> list[str]:
    """What ``qfnet hedge train`` prints on this rank (a one-epoch run)."""
    from typer.testing import CliRunner

    from qfnet.cli import app

    config = out / "cli.json"
    config.write_text(json.dumps({"market": {"n_steps": 3}, "paths": {"train": 32, "val": 8,
        "test": 8}, "baselines": {"ww_risk_aversion": 1.0}, "training": {"epochs": 1,
        "batch_size": 8}}))  # fmt: skip
    done = CliRunner().invoke(app, ["hedge", "train", "--config", str(config), "--out",
                                    str(out / "cli_run"), "--no-progress"])  # fmt: skip
    assert done.exit_code == 0, done.output
    return done.stdout.splitlines()


def resume_rng_case(rank: int, out: Path) -> dict[str, Any]:
    """Dropout on uneven shares (36 and 28 rows in 4 batches): the ranks' RNGs drift apart.
    Weights after 2 epochs, uninterrupted and resumed after the first."""
    data = _data(64)
    share = range(36) if rank == 0 else range(36, 64)
    loader = DataLoader(Subset(data, list(share)), batch_size=9 if rank == 0 else 7)

    def trainer(run: str, epochs: int) -> Trainer:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 1))
        config = TrainerConfig(max_epochs=epochs, batch_size=8, progress_bar=False, device="cpu",
                               run_dir=str(out / run), tensorboard=False)  # fmt: skip
        return Trainer(model.double(), loss=nn.MSELoss(), config=config)

    weights = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loaders are used as given, on purpose
        full = trainer("full", 2)
        full.fit(loader)
        trainer("resumed", 1).fit(loader)
        resumed = trainer("resumed", 2)
        resumed.fit(loader, resume=True)
    for name, run in (("full", full), ("resumed", resumed)):
        weights[name] = [p.detach().flatten().tolist() for p in run.model.parameters()]
    return weights


def _zero_weight_data(n: int) -> TensorDataset:
    """``_data(n)`` with sample weights: 1 on the even rows, 0 on the odd ones."""
    x, y = _data(n).tensors
    weight = torch.ones(n, dtype=torch.float64)  # (N,)
    weight[1::2] = 0.0
    return TensorDataset(x, y, weight)


class _StepLosses:
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_step_end(self, trainer: Trainer) -> None:
        self.losses.append(trainer.step_metrics["loss"].item())


def zero_weight_rank_case(rank: int, out: Path) -> dict[str, Any]:
    """Unshuffled, rank 1 takes the odd rows: all of its samples weigh 0 (rank 0's do not).
    Also one process (``distributed="off"``) on the ranks' batches together; and the LR range
    test of each."""
    data, runs = _zero_weight_data(32), {}
    for name, settings in (("ddp", {}), ("single", {"batch_size": 16, "distributed": "off"})):
        steps = _StepLosses()
        settings |= {"loss": lambda output, target: (output - target) ** 2, "shuffle": False,
                     "optimizer": "sgd", "lr": 0.1}  # fmt: skip
        trainer = _trainer([steps], **settings)
        history = trainer.fit(data)
        weights = [p.detach().flatten().tolist() for p in trainer.model.parameters()]
        found = lr_find(_trainer(**settings), data, min_lr=1e-3, max_lr=1.0, num_steps=6)
        runs[name] = {"train_loss": history["train_loss"], "weights": weights,
                      "step_losses": steps.losses, "lr_find": found.losses}  # fmt: skip
    return runs


def written_case(rank: int, out: Path) -> dict[str, Any]:
    """Rank 0 writes its checkpoints slowly (a network file system): which of them each rank
    finds when ``fit`` returns."""
    from qfnet.training import checkpoint

    real_save = checkpoint.save_checkpoint

    def slow_save(state: dict[str, Any], path: Path) -> Path:
        time.sleep(0.5)
        return real_save(state, path)

    checkpoint.save_checkpoint = slow_save
    run = out / "run"
    _trainer(max_epochs=1, run_dir=str(run), tensorboard=False).fit(_data(32), _data(8, seed=1))
    return {"found": sorted(p.name for p in (run / "checkpoints").glob("*.pt"))}


CASES = {
    "lr_find": lr_find_case,
    "stop": stop_case,
    "nan": nan_case,
    "es_evaluate_first": es_evaluate_first_case,
    "one_rank_crash": one_rank_crash_case,
    "loader_warnings": loader_warnings_case,
    "surrogate": surrogate_case,
    "hedge": hedge_case,
    "whole_eval": whole_eval_case,
    "resume_rng": resume_rng_case,
    "written": written_case,
    "zero_weight_rank": zero_weight_rank_case,
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
