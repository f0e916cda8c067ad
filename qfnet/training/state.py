"""The training state in a checkpoint: what a Trainer saves and how it is restored."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import RandomSampler

from qfnet.training.checkpoint import CheckpointError, set_rng_state
from qfnet.training.device import accumulation_dtype
from qfnet.training.step import EpochLoss, History

if TYPE_CHECKING:
    from qfnet.training.trainer import Trainer

__all__ = ["restore_trainer", "trainer_state"]


def _callback_keys(trainer: Trainer) -> list[tuple[str, Any]]:
    """Stateful callbacks with unique keys (class name, then _1, _2 for repeats)."""
    keys, seen = [], {}
    for cb in trainer.callbacks:
        if hasattr(cb, "state_dict") and hasattr(cb, "load_state_dict"):
            name = type(cb).__name__
            seen[name] = seen.get(name, -1) + 1
            keys.append((f"{name}_{seen[name]}" if seen[name] else name, cb))
    return keys


def trainer_state(trainer: Trainer) -> dict[str, Any]:
    """Everything a checkpoint holds (plain types and tensors only).

    At the end of an epoch the loop position is the start of the next one. The stop flag is
    not saved (see ``Trainer.should_stop``).

    Examples:
        >>> import torch
        >>> from qfnet.training import Trainer, TrainerConfig
        >>> x = torch.linspace(-1.0, 1.0, 64, dtype=torch.float64).unsqueeze(1)
        >>> config = TrainerConfig(max_epochs=2, batch_size=16, optimizer="sgd", lr=0.1)
        >>> trainer = Trainer(nn.Linear(1, 1).double(), loss=nn.MSELoss(), config=config)
        >>> _ = trainer.fit(torch.utils.data.TensorDataset(x, 2 * x))
        >>> state = trainer_state(trainer)
        >>> sorted(state)[:5], state["loop"]["global_step"], len(state["history"])
        (['callbacks', 'config', 'history', 'loop', 'loss'], 8, 2)
    """
    done = trainer._epoch_done
    loop = {
        "epoch": trainer.epoch + 1 if done else trainer.epoch,
        "batch_in_epoch": 0 if done else trainer.batch_in_epoch,
        "step_in_epoch": 0 if done else trainer.step_in_epoch,
        "global_step": trainer.global_step,
        "train_sums": trainer._zero_sums() if done else trainer._folded_train_sums(),
        "metrics": list(trainer.metrics),  # the order of the metric sums in train_sums
        "batch_size": trainer.config.batch_size,
        "accumulate_grad_batches": trainer.config.accumulate_grad_batches,
        "world_size": trainer.dist.world_size,
        "skipped_steps": trainer._skipped,
        "schedule_steps": trainer._schedule_steps,
        "seconds": 0.0 if done else trainer._epoch_seconds(),
        "loader_generator": trainer._train.generator_state(done)
        if hasattr(trainer, "_train")
        else None,
    }
    return {
        "model": trainer.model.state_dict(),
        "loss": trainer.loss.state_dict() if isinstance(trainer.loss, nn.Module) else None,
        "optimizer": trainer.optimizer.state_dict() if trainer.optimizer else None,
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "scaler": trainer._scaler.state_dict() if trainer._scaler is not None else None,
        "callbacks": {key: cb.state_dict() for key, cb in _callback_keys(trainer)},
        "loop": loop,
        "history": [dict(r) for r in trainer.history.records],
        "rng": trainer._rng_state(),
        "config": trainer.config.to_dict(),
    }


_HORIZON_KEYS = {"cosine": "T_max", "onecycle": "total_steps"}
"""Schedules planned over ``max_epochs`` unless the key given here is set explicitly."""


def _check_horizon(config: Any, saved: dict[str, Any], path: Path) -> None:
    """Refuse to resume a schedule planned over a horizon (``max_epochs``, or the explicit
    ``T_max``/``total_steps``) other than the checkpoint's: the restored scheduler would keep the
    old one (a cosine would restart from its floor)."""
    key = _HORIZON_KEYS.get(config.scheduler)
    if key is None or "max_epochs" not in saved:
        return

    def horizon(settings: dict[str, Any]) -> tuple[str, Any]:
        explicit = dict(settings.get("scheduler_kwargs") or {})
        return (key, explicit[key]) if key in explicit else ("max_epochs", settings["max_epochs"])

    before = horizon(saved)
    now = horizon({"scheduler_kwargs": config.scheduler_kwargs, "max_epochs": config.max_epochs})
    if before != now:
        raise ValueError(
            f"checkpoint {path}: its '{config.scheduler}' learning-rate schedule was planned over "
            f"{before[0]}={before[1]}; resume with the same {before[0]}, or start a new run (e.g. "
            f"fine-tune from it) to train for {now[0]}={now[1]}"
        )


def _check_total_steps(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """Refuse to resume a schedule planned over a number of optimizer steps (``onecycle``:
    ``max_epochs`` times the steps of an epoch) other than this run's: with a smaller batch
    size the restored schedule ran out of steps in a later epoch (torch's "Tried to step"
    ValueError), with a larger one it never reached its floor."""
    before = (state.get("scheduler") or {}).get("total_steps")
    now = getattr(trainer.scheduler, "total_steps", None)
    if before is None or now is None or before == now:
        return
    loop = state["loop"]
    current = {"batch_size": trainer.config.batch_size, "world_size": trainer.dist.world_size,
               "accumulate_grad_batches": trainer.config.accumulate_grad_batches}  # fmt: skip
    changed = [f"{key}={loop[key]} (now {value})" for key, value in current.items()
               if key in loop and loop[key] != value]  # fmt: skip
    why = ", ".join(changed) if changed else "the training data's size"
    raise ValueError(
        f"checkpoint {path}: its '{trainer.config.scheduler}' learning-rate schedule was "
        f"planned over {before} optimizer steps, this run has {now} ({why}); resume with the "
        "settings it was written with, or start a new run (e.g. fine-tune from it)"
    )


def _check_order(trainer: Trainer, saved: dict[str, Any], path: Path) -> None:
    """Refuse a mid-epoch resume with another ``shuffle`` or ``seed`` (when shuffling) than the
    checkpoint's: the Trainer's order is a function of ``(seed, epoch)`` and the batches done
    are skipped by position, so the rest of the epoch saw another permutation's samples (some
    a second time, others not at all), without a word. A user DataLoader keeps its own order."""
    if getattr(trainer._train, "_sampler", None) is None:
        return
    keys = ("shuffle", "seed") if trainer.config.shuffle else ("shuffle",)
    for key in keys:
        now = getattr(trainer.config, key)
        if key in saved and saved[key] != now:
            raise ValueError(f"checkpoint {path}: cannot resume mid-epoch with {key}={now!r}, "
                             f"the checkpoint was written with {key}={saved[key]!r} (the rest "
                             "of the epoch would see another order)")  # fmt: skip


def _check_train_metrics(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """Refuse a mid-epoch resume with ``train_metrics`` whose metrics are not the checkpoint's
    (or that it did not compute): their partial sums are kept by position, so another set
    failed in the first step on a shape mismatch and a renamed one carried on the old
    metric's sums, and one not computed before reported part of the epoch."""
    now = list(trainer.metrics)
    if not trainer.config.train_metrics or not now:
        return
    loop, saved = state["loop"], state["loop"].get("metrics")
    if not (state.get("config") or {}).get("train_metrics", True):
        before = "train_metrics=False"
    elif saved is None:  # older checkpoints: only the sums' length says how many
        before = None if loop["train_sums"].shape[0] == 2 + 2 * len(now) else "other metrics"
    else:
        before = None if saved == now else f"the metrics {saved}"
    if before is not None:
        raise ValueError(f"checkpoint {path}: cannot resume mid-epoch with train_metrics for "
                         f"the metrics {now}, the checkpoint was written with {before} (the "
                         "sums of the epoch's train_ metrics so far are not this run's)")  # fmt: skip


def _restored_sums(trainer: Trainer, loop: dict[str, Any]) -> torch.Tensor:
    """The epoch's running ``[loss_sum, weight_sum, metric sums...]`` laid out for this run's
    metrics: the checkpoint's metric sums only where they are this run's training metrics
    (:func:`_check_train_metrics`), zeros otherwise (at an epoch's start they are zeros, and
    without ``train_metrics`` unused)."""
    # cast where they are (the CPU for MPS, which holds no float64), then moved
    saved = loop["train_sums"].to(accumulation_dtype(trainer.device)).to(trainer.device)
    if trainer.config.train_metrics and trainer.metrics and loop["batch_in_epoch"]:
        return saved
    sums = trainer._zero_sums()
    sums[:2] = saved[:2]
    return sums


_OPTIMIZER_KEYS = ("optimizer", "lr", "weight_decay", "momentum", "betas", "param_groups")


def _check_optimizer(config: Any, saved: dict[str, Any], path: Path) -> None:
    """Refuse to resume with another optimizer or optimizer setting than the checkpoint's: its
    state would not fit (a torch KeyError mid-step) or would silently keep the old settings
    (the rates of its parameter groups: another ``lr`` trained at the checkpoint's)."""
    now = config.to_dict()
    for key in _OPTIMIZER_KEYS:
        if key in saved and saved[key] != now[key]:
            raise ValueError(f"checkpoint {path}: written with {key}={saved[key]!r}, this run has "
                             f"{key}={now[key]!r}; resume with the same optimizer settings")  # fmt: skip


def _check_schedule(config: Any, saved: dict[str, Any], path: Path) -> None:
    """Refuse to resume with another ``scheduler`` or ``scheduler_kwargs`` than the checkpoint's:
    torch's ``load_state_dict`` puts the saved scheduler's attributes over the new one's, so
    another ``gamma`` kept the checkpoint's without a word, and another scheduler's state
    failed mid-step (``onecycle``: ``KeyError: 'max_lr'``) or went on from its position. A
    schedule's horizon is named as such (:func:`_check_horizon`)."""
    now = config.to_dict()
    for key in ("scheduler", "scheduler_kwargs"):
        if key in saved and saved[key] != now[key]:
            raise ValueError(f"checkpoint {path}: written with {key}={saved[key]!r}, this run "
                             f"has {key}={now[key]!r}; resume with the same learning-rate "
                             "schedule, or start a new run (e.g. fine-tune from it)")  # fmt: skip
        if key == "scheduler":
            _check_horizon(config, saved, path)


_STATE_FIELDS = ("model", "loss", "optimizer", "scheduler", "scaler", "callbacks", "loop",
                 "history", "rng")  # fmt: skip
_LOOP_FIELDS = ("epoch", "global_step", "batch_in_epoch", "step_in_epoch", "train_sums")


def _check_fields(state: dict[str, Any], path: Path) -> None:
    """A checkpoint of another writer (``save_checkpoint({...})`` of a script) failed with a
    bare ``KeyError: 'loop'``, naming neither the file nor what it lacked."""
    loop = state.get("loop")
    missing = [k for k in _STATE_FIELDS if k not in state]
    if isinstance(loop, dict):
        missing += [f"loop.{k}" for k in _LOOP_FIELDS if k not in loop]
    elif "loop" in state:
        missing.append("loop (not a mapping)")
    if missing:
        raise CheckpointError(f"checkpoint {path}: not a Trainer checkpoint, it lacks the "
                              f"field(s) {missing}")  # fmt: skip


def restore_trainer(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """Load a checkpoint's state into a trainer set up for ``fit`` (model, optimizer, ...).

    ``Trainer.fit(resume=True)`` (or ``ckpt_path=...``) calls it after its setup.

    Examples:
        >>> import tempfile
        >>> import torch
        >>> from qfnet.training import Trainer, TrainerConfig
        >>> x = torch.linspace(-1.0, 1.0, 32, dtype=torch.float64).unsqueeze(1)
        >>> data = torch.utils.data.TensorDataset(x, 2 * x)
        >>> first, again = nn.Linear(1, 1).double(), nn.Linear(1, 1).double()
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     config = TrainerConfig(max_epochs=1, batch_size=16, optimizer="sgd", run_dir=tmp)
        ...     _ = Trainer(first, loss=nn.MSELoss(), config=config).fit(data)
        ...     trainer = Trainer(again, loss=nn.MSELoss(), config=config)
        ...     history = trainer.fit(data, resume=True)  # restored at the end: nothing to do
        >>> torch.equal(again.weight, first.weight), trainer.global_step, len(history.records)
        (True, 2, 1)
    """
    _check_fields(state, path)
    loop = state["loop"]
    if loop["batch_in_epoch"]:
        for key in ("batch_size", "accumulate_grad_batches", "world_size"):
            now = trainer.dist.world_size if key == "world_size" else getattr(trainer.config, key)
            if loop[key] != now:
                raise ValueError(
                    f"checkpoint {path}: cannot resume mid-epoch with {key}={now}, "
                    f"the checkpoint was written with {key}={loop[key]}"
                )
        _check_order(trainer, state.get("config") or {}, path)
        _check_train_metrics(trainer, state, path)
    _check_optimizer(trainer.config, state.get("config") or {}, path)
    _check_schedule(trainer.config, state.get("config") or {}, path)
    try:
        trainer.model.load_state_dict(state["model"])
        if isinstance(trainer.loss, nn.Module) and state["loss"] is not None:
            trainer.loss.load_state_dict(state["loss"])
        trainer.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: does not match this model or optimizer ({exc})"
        ) from exc
    if trainer.scheduler is not None and state["scheduler"] is not None:
        _check_total_steps(trainer, state, path)
        trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer._scaler is not None and state["scaler"] is not None:
        trainer._scaler.load_state_dict(state["scaler"])
    saved = state["callbacks"]
    for key, cb in _callback_keys(trainer):
        if key in saved:
            cb.load_state_dict(saved[key])
    trainer.epoch, trainer.global_step = loop["epoch"], loop["global_step"]
    trainer.batch_in_epoch, trainer.step_in_epoch = loop["batch_in_epoch"], loop["step_in_epoch"]
    # the fp16 scaler's skipped steps in a row (the NaN guard stops at 32): a resume restarted
    # the count; checkpoints written before it was saved have none
    trainer._skipped = loop.get("skipped_steps", 0)
    # the steps the warmup has counted (all but the fp16 skipped ones); older checkpoints: all
    trainer._schedule_steps = loop.get("schedule_steps", loop["global_step"])
    # the seconds the epoch had trained before the checkpoint (older checkpoints: none), which
    # its row's ``seconds`` adds to those after the resume
    trainer._resumed_seconds = float(loop.get("seconds", 0.0)) if loop["batch_in_epoch"] else 0.0
    # An older checkpoint's loop.should_stop is ignored: restored, it made every resume of a run
    # stopped at a checkpoint (a time budget) a no-op, while others trained on from the previous
    # checkpoint. EarlyStopping re-asserts its own stop from its state.
    trainer._train_sums = _restored_sums(trainer, loop)
    if not trainer.dist.is_global_zero:  # the saved sums are already reduced over ranks
        trainer._train_sums.zero_()
    trainer._epoch_loss = EpochLoss()
    if loop.get("loader_generator") is not None:
        trainer._train.pending_generator_state = loop["loader_generator"].cpu()
    elif (loop["batch_in_epoch"] and trainer.is_global_zero  # once, not on every rank
          and isinstance(getattr(getattr(trainer._train, "loader", None), "sampler", None),
                         RandomSampler)):  # fmt: skip
        warnings.warn(f"checkpoint {path}: resuming mid-epoch with a shuffling DataLoader that "
                      "has no generator: the rest of the epoch sees another order than the "
                      "uninterrupted run (give the DataLoader a generator)", stacklevel=4)  # fmt: skip
    trainer.history = History(state["history"])
    # every rank's own states when written under DDP with as many ranks (rank 0's otherwise)
    ranks = state.get("rng_ranks")
    own = ranks is not None and len(ranks) == trainer.dist.world_size
    set_rng_state(ranks[trainer.dist.rank] if own else state["rng"])
