"""Trainer configuration: one frozen, validated dataclass serialised to ``config.json``."""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from pricing._validation import check_positive_int, is_whole

__all__ = ["OPTIMIZERS", "PRECISIONS", "SCHEDULERS", "ParamGroup", "TrainerConfig"]

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULERS = ("none", "onecycle", "step", "multistep", "exponential", "cosine", "plateau")
PRECISIONS = ("auto", "32", "fp16", "bf16")


@dataclass(frozen=True)
class ParamGroup:
    """An optimizer parameter group selected by a regular expression on parameter names.

    Parameters whose qualified name (``model.named_parameters()``) matches ``pattern``
    (``re.search``) go into this group; the first matching group wins, unmatched
    parameters form the default group that uses the config's ``lr`` and ``weight_decay``.

    Args:
        pattern: Regular expression searched in each parameter name.
        lr: Learning rate of the group (``None``: the config's ``lr``).
        weight_decay: Weight decay of the group (``None``: the config's ``weight_decay``).

    Examples:
        >>> ParamGroup(pattern=r"bias$", weight_decay=0.0).weight_decay
        0.0
    """

    pattern: str
    lr: float | None = None
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError("ParamGroup.pattern must be a non-empty regular expression")
        try:  # a bad pattern surfaced only when fit built the optimizer
            re.compile(self.pattern)
        except re.error as error:
            raise ValueError(f"ParamGroup.pattern {self.pattern!r} is not a regular expression: "
                             f"{error}") from None  # fmt: skip
        # lr="0.1" was a TypeError naming nothing; an infinite weight decay was taken
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if value is not None and not (_is_real(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"ParamGroup.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class TrainerConfig:
    """Everything that controls a training run; saved as ``config.json`` in ``run_dir``.

    Args:
        max_epochs: Number of passes over the training data.
        batch_size: Samples per micro-batch (per process under DDP).
        eval_batch_size: Samples per validation/test batch (``None``: ``batch_size``).
        shard_eval: Under DDP, split validation/test Datasets over the processes, each sample
            once (the loss and metrics are weighted means over all of them). ``False``: every
            process evaluates all of the data and rank 0's values are reported on every rank,
            for a loss that is not a mean over samples (the risk measure of a whole set, in one
            batch), of which the mean over the processes' parts is another number.
        shuffle: Shuffle the training data; the order is a function of ``(seed, epoch)``.
        drop_last: Drop the last incomplete training batch.
        num_workers: DataLoader workers (``None``: 2 on CUDA, 0 otherwise).
        optimizer: One of ``sgd``, ``adam``, ``adamw``, ``rmsprop``.
        lr: Base learning rate.
        weight_decay: Weight decay of the default parameter group.
        momentum: Momentum for SGD and RMSprop, in ``[0, 1)``.
        betas: Adam/AdamW betas, each in ``[0, 1)``.
        param_groups: Extra parameter groups, see :class:`ParamGroup`.
        scheduler: One of ``none``, ``onecycle`` (per optimizer step), ``step``, ``multistep``,
            ``exponential``, ``cosine`` (per epoch), ``plateau`` (on ``scheduler_monitor``).
        scheduler_kwargs: Extra keyword arguments of the torch scheduler (e.g. ``step_size``);
            values torch takes silently (``gamma <= 0``, ``T_max=0``...) are refused, naming
            the key, when ``fit`` builds the scheduler.
        scheduler_monitor: Metric that drives ``plateau`` (e.g. ``val_loss``).
        warmup_steps: Linear LR warmup over this many optimizer steps (0: off); it scales the
            learning rate of every group by ``(step + 1) / warmup_steps`` and composes with
            any scheduler. A warmup longer than the training is warned about. Steps the fp16
            scaler skips (non-finite gradients) advance neither the warmup nor ``onecycle``.
        accumulate_grad_batches: Micro-batches per optimizer step; the update equals that of one
            batch this many times larger (also for the last, partial group) for a loss that is
            a mean over samples (per-sample values, or a scalar mean such as ``MSELoss``). A
            loss of the batch as a whole (a P&L variance, an entropic risk) is averaged over
            the micro-batches instead: the risk of smaller batches, not of the large one.
        clip_grad_norm: Clip the global gradient 2-norm to this value.
        clip_grad_value: Clip every gradient element to ``[-v, v]``.
        precision: ``auto`` (mixed precision on CUDA for float32 models: bf16 where supported,
            else fp16; off on CPU/MPS), ``32`` (off), ``fp16`` (CUDA autocast + GradScaler) or
            ``bf16`` (autocast to bfloat16).
        device: ``auto`` (CUDA, then MPS, then CPU; not MPS for a model holding float64
            tensors, which MPS cannot) or a torch device name.
        seed: One seed for python, numpy, torch and the data order.
        deterministic: Ask torch for deterministic algorithms during fit and evaluate (slower;
            errors on ops without one); the previous setting is restored after each call.
        compile: Wrap the model in ``torch.compile``.
        compile_backend: Backend passed to ``torch.compile``.
        run_dir: Where ``config.json``, ``metrics.csv``, TensorBoard events,
            ``checkpoints/{last,best}.pt`` and ``loss.png`` go (``None``: nothing written).
        monitor: Metric used by the default best checkpoint (``val_loss`` falls back to
            ``train_loss`` without validation data).
        monitor_mode: ``min`` or ``max``.
        checkpoint_every_n_steps: Also write ``last.pt`` every N optimizer steps (mid-epoch
            resume points). This and the two above configure the ``ModelCheckpoint`` the
            Trainer adds with a ``run_dir``; a given ``ModelCheckpoint`` keeps its own
            arguments, and the Trainer warns about values of these that do not apply to it.
        log_every_n_steps: Write buffered step metrics to TensorBoard every N steps (every step
            is recorded; this only sets the flush period).
        val_every_n_epochs: Validate every N epochs (the patience of ``EarlyStopping`` and of
            ``plateau`` on a ``val_*`` metric then counts validations, not epochs).
        train_metrics: Also compute ``metrics`` on the training batches.
        progress_bar: Show a tqdm bar (auto-disabled when stderr is not a terminal).
        tensorboard: Write TensorBoard events in ``run_dir``.
        nan_guard: Stop with :class:`~qfnet.training.NonFiniteLossError` on a NaN/Inf loss or
            gradient norm (under fp16 loss scaling, whose skipped steps are overflows: a
            gradient norm non-finite at 32 steps in a row). Off, a step whose sample weights
            sum to 0 (its mean loss 0/0, which the guard stops on) makes no update.
        distributed: ``auto`` (join the process group when launched by ``torchrun``) or ``off``.

    Examples:
        >>> TrainerConfig(max_epochs=3, batch_size=32, lr=1e-3).optimizer
        'adam'
    """

    max_epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int | None = None
    shard_eval: bool = True
    shuffle: bool = True
    drop_last: bool = False
    num_workers: int | None = None
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    param_groups: tuple[ParamGroup, ...] = ()
    scheduler: str = "none"
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    scheduler_monitor: str = "val_loss"
    warmup_steps: int = 0
    accumulate_grad_batches: int = 1
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    run_dir: str | Path | None = None
    monitor: str = "val_loss"
    monitor_mode: str = "min"
    checkpoint_every_n_steps: int | None = None
    log_every_n_steps: int = 50
    val_every_n_epochs: int = 1
    train_metrics: bool = False
    progress_bar: bool = True
    tensorboard: bool = True
    nan_guard: bool = True
    distributed: str = "auto"

    def __post_init__(self) -> None:
        # numpy/torch scalars would end up in optimizer and scheduler states, which the
        # weights_only checkpoint loader refuses: keep plain Python numbers (and lists) only
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "tolist") and hasattr(value, "dtype"):  # .item() failed on arrays
                object.__setattr__(self, f.name, value.tolist())
        _check_positive_int(self, "max_epochs", "batch_size", "accumulate_grad_batches")
        _check_positive_int(self, "log_every_n_steps", "val_every_n_epochs")
        _check_optional_positive_int(self, "eval_batch_size", "checkpoint_every_n_steps")
        _check_choice(self, "optimizer", OPTIMIZERS)
        _check_choice(self, "scheduler", SCHEDULERS)
        _check_choice(self, "precision", PRECISIONS)
        _check_choice(self, "monitor_mode", ("min", "max"))
        _check_choice(self, "distributed", ("auto", "off"))
        _check_flags(self)
        _check_names(self, "monitor", "scheduler_monitor")
        if self.run_dir is not None and not isinstance(self.run_dir, str | PathLike):
            raise ValueError(f"TrainerConfig.run_dir must be a path or None, got {self.run_dir!r}")
        for name in ("lr", "weight_decay"):  # a string or inf named nothing
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"TrainerConfig.{name} must be a finite number >= 0, "
                                 f"got {value!r}")  # fmt: skip
        # as the betas: torch refuses only < 0, and a momentum of 1 or more never forgets a
        # gradient (at 2.0 the velocity doubles every step: a quadratic's weight was inf in 130 SGD steps)
        if not (_is_number(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise ValueError(f"TrainerConfig.momentum must be a number in [0, 1), "
                             f"got {self.momentum!r}")  # fmt: skip
        # whole numbers: a warmup of 0.5 steps ran the first step at twice the learning rate
        _check_nonnegative_int(self, "warmup_steps", "seed")
        if self.seed >= 2**32:  # numpy's global seed is 32 bits; a float failed deep in fit
            raise ValueError(f"TrainerConfig.seed must be below 2**32, got {self.seed}")
        if self.num_workers is not None:
            _check_nonnegative_int(self, "num_workers")
        for name in ("clip_grad_norm", "clip_grad_value"):
            value = getattr(self, name)
            # True was taken as a norm of 1.0, a string failed inside math.isfinite
            if value is not None and not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"TrainerConfig.{name} must be a finite number > 0, "
                                 f"got {value!r}")  # fmt: skip
        if self.clip_grad_norm is not None and self.clip_grad_value is not None:
            raise ValueError("TrainerConfig: set clip_grad_norm or clip_grad_value, not both")
        betas = tuple(self.betas) if isinstance(self.betas, Iterable) else ()
        if len(betas) != 2 or not all(_is_real(b) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"TrainerConfig.betas must be two numbers in [0, 1), got {self.betas!r}"
            )
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        object.__setattr__(self, "param_groups", _param_groups(self.param_groups))
        if not isinstance(self.scheduler_kwargs, Mapping):
            raise ValueError("TrainerConfig.scheduler_kwargs must be a mapping of keyword "
                             f"arguments, got {self.scheduler_kwargs!r}")  # fmt: skip
        object.__setattr__(self, "scheduler_kwargs", _plain(dict(self.scheduler_kwargs)))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dictionary (paths as strings, tuples as lists).

        Examples:
            >>> TrainerConfig(batch_size=8).to_dict()["batch_size"]
            8
        """
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``ValueError`` naming them.

        Also reads a run's ``config.json``: the ``runtime`` section the Trainer adds there
        (device, precision, world size, torch version) is left out.

        Examples:
            >>> c = TrainerConfig(max_epochs=2)
            >>> TrainerConfig.from_dict(c.to_dict()) == c
            True
            >>> TrainerConfig.from_dict(c.to_dict() | {"runtime": {"device": "cpu"}}) == c
            True
        """
        data = {k: v for k, v in data.items() if k != "runtime"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TrainerConfig: unknown field(s) {unknown}")
        return cls(**data)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy or torch scalars, arrays
        return value.tolist()
    return value


_FLAGS = ("shard_eval", "shuffle", "drop_last", "deterministic", "compile", "train_metrics",
          "progress_bar", "tensorboard", "nan_guard")  # fmt: skip


def _check_flags(config: TrainerConfig) -> None:
    """Switches are bools: ``shuffle="false"`` (a string from a config file) was true."""
    for name in _FLAGS:
        value = getattr(config, name)
        if not isinstance(value, bool):
            raise ValueError(f"TrainerConfig.{name} must be True or False, got {value!r}")


def _check_names(config: TrainerConfig, *names: str) -> None:
    for name in names:  # None failed inside fit (scheduler_monitor.startswith) naming nothing
        value = getattr(config, name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"TrainerConfig.{name} must be a non-empty string, got {value!r}")


def _param_groups(groups: Any) -> tuple[ParamGroup, ...]:
    """``ParamGroup``s from groups or mappings (a string was split into one group per letter)."""
    if isinstance(groups, str | Mapping) or not isinstance(groups, Iterable):
        raise ValueError("TrainerConfig.param_groups must be a sequence of ParamGroup (or of "
                         f"mappings of their fields), got {groups!r}")  # fmt: skip
    out = []
    for group in groups:
        if isinstance(group, Mapping):
            unknown = sorted(set(group) - {f.name for f in dataclasses.fields(ParamGroup)})
            if unknown:
                raise ValueError(f"TrainerConfig.param_groups: unknown ParamGroup field(s) "
                                 f"{unknown}")  # fmt: skip
            group = ParamGroup(**group)
        if not isinstance(group, ParamGroup):
            raise ValueError("TrainerConfig.param_groups: expected a ParamGroup or a mapping, "
                             f"got {group!r}")  # fmt: skip
        out.append(group)
    return tuple(out)


def _check_positive_int(config: TrainerConfig, *names: str) -> None:
    """The project's one rule for counts (Python and numpy integers, not bools)."""
    for name in names:
        check_positive_int(f"TrainerConfig.{name}", getattr(config, name))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    """A real number of any kind (numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_nonnegative_int(config: TrainerConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not is_whole(value) or value < 0:
            raise ValueError(f"TrainerConfig.{name} must be a whole number >= 0, got {value!r}")


def _check_optional_positive_int(config: TrainerConfig, *names: str) -> None:
    for name in names:
        if getattr(config, name) is not None:
            _check_positive_int(config, name)


def _check_choice(config: TrainerConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"TrainerConfig.{name} must be one of {choices}, got {value!r}")
