"""Learning-rate range test: raise the LR geometrically each step and watch the loss.

References:
    L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017, section 3.3
    ("LR range test").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pricing._atomic import save_figure_atomically
from qfnet.training.checkpoint import get_rng_state, set_rng_state
from qfnet.training.data import DataSource
from qfnet.training.step import EpochLoss, NonFiniteLossError, group_batches

if TYPE_CHECKING:
    from qfnet.training.trainer import Trainer

__all__ = ["LRFinderResult", "lr_find"]


@dataclass(frozen=True)
class LRFinderResult:
    """Learning rates tried, the smoothed losses, and the suggested learning rate.

    ``suggestion`` is the LR where the smoothed loss falls fastest against ``log(lr)``, before
    its minimum (``None`` when the loss never decreased).

    Examples:
        >>> import tempfile
        >>> result = LRFinderResult(lrs=[1e-3, 1e-2, 1e-1], losses=[1.0, 0.5, 2.0], suggestion=1e-2)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     result.plot(Path(tmp) / "lr_find.png").name
        'lr_find.png'
    """

    lrs: list[float]
    losses: list[float]
    suggestion: float | None

    def plot(self, path: str | Path) -> Path:
        """Save loss against LR (log axis) with the suggestion marked, as a PNG."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), dpi=100)
        ax = fig.add_subplot()
        ax.plot(self.lrs, self.losses, label="smoothed loss")
        if self.suggestion is not None:
            ax.axvline(self.suggestion, color="red", linestyle="--", label=f"{self.suggestion:.2e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.set_title("LR range test")
        ax.legend()
        fig.tight_layout()
        return save_figure_atomically(fig, path)


def lr_find(
    trainer: Trainer,
    train_data: DataSource,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.9,
    divergence: float = 4.0,
    plot_path: str | Path | None = None,
) -> LRFinderResult:
    """Run an LR range test with the trainer's model, loss, optimizer and data settings.

    The LR of every parameter group grows geometrically from ``min_lr`` to ``max_lr`` over
    ``num_steps`` optimizer steps (relative group LRs are kept); the test stops early when the
    smoothed loss exceeds ``divergence`` times its minimum or becomes non-finite. Under DDP
    the loss is the step's weighted mean over the processes, so that all of them take the same
    steps and return the same suggestion. Afterwards everything is as before: the model
    (weights and train/eval modes), the trainer's optimizer, scheduler and loop position, its
    GradScaler (fp16), the global RNG states and the generators of a DataLoader given as
    ``train_data`` (a ``fit`` after the test sees the same batches as one without it);
    callbacks are not called.

    Args:
        trainer: A configured trainer (``fit`` may be called afterwards as usual).
        train_data: Training data (Dataset, tensor or DataLoader); cycled if too short.
        min_lr: First learning rate.
        max_lr: Last learning rate.
        num_steps: Number of optimizer steps (>= 5).
        smoothing: Exponential moving-average factor of the loss (bias-corrected).
        divergence: Stop when the smoothed loss exceeds this multiple of its minimum.
        plot_path: Write the plot there (default ``run_dir/lr_find.png`` when a run_dir is set).

    Returns:
        The :class:`LRFinderResult`.

    Raises:
        NonFiniteLossError: If the loss of the first step (before any update) is NaN/Inf.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from qfnet.training import Trainer, TrainerConfig
        >>> x = torch.linspace(-1.0, 1.0, 64, dtype=torch.float64).unsqueeze(1)
        >>> data = torch.utils.data.TensorDataset(x, 2 * x)
        >>> config = TrainerConfig(max_epochs=1, batch_size=16, optimizer="sgd", lr=0.1)
        >>> trainer = Trainer(nn.Linear(1, 1).double(), loss=nn.MSELoss(), config=config)
        >>> result = lr_find(trainer, data, min_lr=1e-4, max_lr=10.0, num_steps=20)
        >>> len(result.lrs), result.lrs[0], round(result.lrs[-1], 9)
        (20, 0.0001, 10.0)
        >>> result.suggestion is not None and 1e-4 <= result.suggestion <= 10.0
        True
    """
    _check_arguments(min_lr, max_lr, num_steps, smoothing, divergence)
    trainer._setup_runtime()
    # before _setup_fit, which replaces the optimizer, scheduler and loaders of an earlier fit
    saved_attrs = {k: getattr(trainer, k) for k in _TRAINER_ATTRS if hasattr(trainer, k)}
    trainer._setup_fit(train_data, None)
    saved_model = {k: v.detach().clone() for k, v in trainer._module.state_dict().items()}
    modes = [(module, module.training) for module in trainer._module.modules()]
    # the sweep's steps grow the loss scale and its overflows shrink it: the next fit started
    # from that scale
    scaler = trainer._scaler.state_dict() if trainer._scaler is not None else None
    generators = [(g, g.get_state()) for g in _loader_generators(train_data)]
    rng = get_rng_state()
    try:
        lrs, losses = _range_test(trainer, min_lr, max_lr, num_steps, smoothing, divergence)
    finally:
        trainer.optimizer.zero_grad(set_to_none=True)  # the sweep's optimizer
        trainer._module.load_state_dict(saved_model)
        for module, training in modes:
            module.train(training)
        for key, value in saved_attrs.items():
            setattr(trainer, key, value)
        if scaler is not None:
            trainer._scaler.load_state_dict(scaler)
        for generator, state in generators:
            generator.set_state(state)
        set_rng_state(rng)
    result = LRFinderResult(lrs=lrs, losses=losses, suggestion=_suggest(lrs, losses))
    if plot_path is None and trainer.run_dir is not None:
        plot_path = trainer.run_dir / "lr_find.png"
    if plot_path is not None and trainer.is_global_zero:
        result.plot(plot_path)
    return result


def _check_arguments(
    min_lr: float, max_lr: float, num_steps: int, smoothing: float, divergence: float
) -> None:
    """Name a bad argument (``smoothing=1`` divided by zero, ``divergence <= 1`` stopped the
    test at its first step, an infinite ``max_lr`` tried infinite rates)."""
    if not (0 < min_lr < max_lr < math.inf):
        raise ValueError(f"lr_find: need 0 < min_lr < max_lr, both finite; got min_lr={min_lr}, "
                         f"max_lr={max_lr}")  # fmt: skip
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 5:
        raise ValueError(f"lr_find: num_steps must be an integer >= 5, got {num_steps!r}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"lr_find: smoothing must be in [0, 1), got {smoothing}")
    if not divergence > 1:
        raise ValueError(f"lr_find: divergence must be > 1 (a multiple of the least loss), "
                         f"got {divergence}")  # fmt: skip


_TRAINER_ATTRS = (
    "callbacks",
    "optimizer",
    "scheduler",
    "_interval",
    "_train",
    "_val",
    "has_validation",
    "steps_per_epoch",
    "_non_blocking",
    "epoch",
    "global_step",
    "_schedule_steps",
    "batch_in_epoch",
    "step_in_epoch",
    "step_metrics",
    "step_weight",
    "_train_sums",
    "_epoch_loss",
    "at_epoch_end",
    "_rng_at_position",
)


def _loader_generators(data: DataSource) -> list[torch.Generator]:
    """The generators a user DataLoader draws its order from (its own, its sampler's): the
    sweep advanced them, and a ``fit`` after it shuffled otherwise than one without it."""
    if not isinstance(data, torch.utils.data.DataLoader):
        return []  # the Trainer's own loaders are seeded by (seed, epoch)
    batch_sampler = getattr(data, "batch_sampler", None)
    owners = (data, data.sampler, batch_sampler, getattr(batch_sampler, "sampler", None))
    found: dict[int, torch.Generator] = {}
    for owner in owners:
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator):
            found.setdefault(id(generator), generator)
    return list(found.values())


def _range_test(
    trainer: Trainer, min_lr: float, max_lr: float, num_steps: int, beta: float, divergence: float
) -> tuple[list[float], list[float]]:
    trainer.callbacks, trainer._interval = [], None
    trainer._train_sums, trainer._epoch_loss = trainer._zero_sums(), EpochLoss()
    # no warmup during the test
    trainer.global_step = trainer._schedule_steps = trainer.config.warmup_steps
    base = [g["lr"] for g in trainer.optimizer.param_groups]
    ref = base[0] if base[0] > 0 else 1.0
    lrs: list[float] = []
    losses: list[float] = []
    average, best, epoch = 0.0, math.inf, 0
    trainer._enter_train_mode()
    while len(lrs) < num_steps:
        iterator = trainer._train.epoch_iter(epoch, 0)
        for group in group_batches(iterator, trainer.config.accumulate_grad_batches):
            lr = min_lr * (max_lr / min_lr) ** (len(lrs) / (num_steps - 1))
            for g, b in zip(trainer.optimizer.param_groups, base, strict=True):
                g["lr"] = lr * b / ref
            try:
                trainer._train_step(group)
            except NonFiniteLossError as exc:
                if not lrs:
                    raise _first_step_error(str(exc)) from exc
                return lrs, losses
            loss = _mean_loss(trainer)
            if not math.isfinite(loss):  # as the NaN guard would stop (nan_guard=False): a NaN
                if not lrs:  # kept in the curve hid its minimum from _suggest
                    raise _first_step_error(f"loss {loss}")
                return lrs, losses
            average = beta * average + (1 - beta) * loss
            smoothed = average / (1 - beta ** (len(lrs) + 1))
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            if not math.isfinite(smoothed) or smoothed > divergence * best or len(lrs) >= num_steps:
                return lrs, losses
        epoch += 1
    return lrs, losses


def _first_step_error(what: str) -> NonFiniteLossError:
    """A non-finite loss at the first step, taken before any update: no learning rate is at
    fault (the test ended there with no point, and ``_suggest`` failed on the empty curve with
    numpy's "attempt to get argmin of an empty sequence")."""
    return NonFiniteLossError(f"lr_find: non-finite loss at the first step, before any update, "
                              f"so not the learning rate's doing: check the data and the model "
                              f"({what})", epoch=0, step=0, global_step=0)  # fmt: skip


def _mean_loss(trainer: Trainer) -> float:
    """The step's loss: under DDP its weighted mean over all ranks, the same on every rank, so
    that every rank stops at the same step and suggests the same LR (a rank stopping alone
    would hang the others). The plain mean of the ranks' losses was NaN where one rank's
    samples all weigh 0, which ended the test at its first step."""
    # .item() once per step: the test needs each loss on the host
    return trainer.step_metrics["loss"].item()


def _suggest(lrs: list[float], losses: list[float]) -> float | None:
    """LR of the steepest descent of the loss against log(lr), before the minimum.

    The first 10% of the points (where the moving average is still settling) are skipped and
    the slope is a central difference over ``n // 20`` points on each side, to damp noise.
    """
    loss, log_lr = np.asarray(losses), np.log(np.asarray(lrs))
    stop = int(np.argmin(loss))
    start, k = max(1, len(loss) // 10), max(1, len(loss) // 20)
    idx = np.arange(max(start, k), stop - k + 1)
    if idx.size == 0:
        return None
    slope = (loss[idx + k] - loss[idx - k]) / (log_lr[idx + k] - log_lr[idx - k])
    best = int(idx[np.argmin(slope)])
    return float(lrs[best]) if slope.min() < 0 else None
