"""Callback hooks and the built-in callbacks (early stopping, checkpoints, LR monitor, progress).

Callbacks are duck-typed: the trainer calls ``callback.<hook>(trainer, ...)`` for each hook in
:data:`HOOKS` that the object defines, in list order (callbacks with ``runs_last = True``, the
checkpoint writers, after the others so that the states they save are up to date). A callback
stops training by setting ``trainer.should_stop = True``; the loop ends after the current
optimizer step (mid-epoch) or at the end of the epoch (also when set at its last step: its
validation, row and checkpoint are not skipped); under DDP a flag set on any process stops all
of them there. :class:`ModelCheckpoint` writes ``last.pt`` where a stop leaves an epoch
unfinished, so no step is lost. The flag is not checkpointed: ``fit(resume=True)`` trains on
from where the run stopped, unless a callback re-asserts its stop from its own state (as
:class:`EarlyStopping` does: a resumed early-stopped run stays stopped unless its patience
was raised). Stateful callbacks define ``state_dict()`` and ``load_state_dict(state)`` (plain
types and tensors only) and are saved in every checkpoint. :class:`EarlyStopping`,
:class:`ModelCheckpoint` and :class:`LRMonitor` start afresh when ``fit`` starts a new run (not
resumed), also when the same objects served an earlier ``fit``.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pricing._atomic import save_figure_atomically
from pricing._validation import check_positive_int
from qfnet.training.checkpoint import link_checkpoint

if TYPE_CHECKING:
    from qfnet.training.trainer import Trainer

__all__ = ["HOOKS", "EarlyStopping", "LRMonitor", "LossCurvePlot", "ModelCheckpoint", "ProgressBar"]

#: Hook name -> when it is called and with which arguments after ``trainer``.
HOOKS: dict[str, str] = {
    "on_fit_start": "once, after setup and resume, before the first epoch",
    "on_train_epoch_start": "at the start of each training epoch (also a resumed one)",
    "on_train_batch_start": "(batch, batch_idx): before the forward of each micro-batch",
    "on_after_backward": "after each micro-batch backward (gradients still accumulating)",
    "on_before_optimizer_step": "(optimizer): gradients final (unscaled, clipped), LR set; "
    "None on a step of zero total weight, which makes no update (nan_guard=False)",
    "on_train_step_end": "after each optimizer step; trainer.step_metrics holds loss, "
    "grad_norm (tensors) and lr",
    "on_train_epoch_end": "after the last step of an epoch; epoch_metrics has train_loss",
    "on_validation_start": "before validation",
    "on_validation_end": "(metrics): after validation, with the val_ metrics",
    "on_epoch_end": "after validation and the epoch schedule step; trainer.epoch_metrics is "
    "the complete row (also appended to trainer.history)",
    "on_train_stop": "once, when trainer.should_stop ended training (after the step or epoch "
    "end that set it, before on_fit_end); the loop position may be mid-epoch",
    "on_fit_end": "once, after the last epoch (not after an exception)",
    "on_exception": "(exception): training raised; the exception propagates afterwards (a "
    "checkpoint written here holds the last completed optimizer step; under DDP it is written "
    "only after the NaN guard's error, raised on every rank at once); not called when the "
    "checkpoint to resume from is refused (before on_fit_start)",
    "on_teardown": "always, last: close files",
}


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _new_run(trainer: Trainer) -> bool:
    """True when ``fit`` starts a new run (no checkpoint restored, ``global_step`` 0).

    A state left by an earlier ``fit`` of the same callback must go then: its best value
    stopped the new run at once, and ``restore_best_weights`` loaded the earlier run's weights.
    """
    return trainer.global_step == 0


def _monitored(trainer: Trainer, monitor: str) -> float | None:
    """The monitored value, ``None`` on an epoch without it (e.g. no validation that epoch)."""
    metrics = trainer.epoch_metrics
    if monitor in metrics:
        return float(metrics[monitor])
    if monitor.startswith("val_") and not trainer.has_validation:
        fallback = "train_" + monitor[4:]
        if fallback in metrics:
            return float(metrics[fallback])
    if trainer.has_validation and not trainer.validated_this_epoch:
        return None
    raise KeyError(f"monitored metric {monitor!r} not found; available: {sorted(metrics)}")


class EarlyStopping:
    """Stop when a monitored metric has not improved for ``patience`` checks in a row.

    A check is an epoch that has the metric: every epoch for ``train_*`` metrics (and for
    ``val_*`` ones without validation data, which fall back to ``train_*``), only the epochs
    that validate for ``val_*`` metrics. With ``TrainerConfig.val_every_n_epochs = k``,
    ``patience`` counts validations, as Lightning's does: ``k * patience`` epochs. Its state
    (``stopped_epoch`` included) is checkpointed: a run it stopped, resumed with the same
    settings, stays stopped (with a warning saying so); resumed with a larger ``patience`` (or
    ``check_finite=False`` after a non-finite stop) it trains on as a run with those settings
    from the start would have.

    Args:
        monitor: Epoch metric name (``val_loss``, ``val_<metric>``, ``train_loss``).
        mode: ``min`` or ``max``.
        patience: Checks (epochs with the metric; validations for ``val_*``) without
            improvement before stopping.
        min_delta: Smallest change that counts as an improvement.
        restore_best_weights: At the end of training, load the weights of the best epoch, and
            the parameters of a loss ``nn.Module`` trained with them (a copy is kept in memory
            and in every checkpoint, so that a resumed run restores them too).
        check_finite: Stop, with a warning naming the metric and the epoch, when it is NaN or
            infinite (as Lightning's ``check_finite``): it counted as one more check without
            improvement, and a run whose validation had gone NaN waited out its patience
            without a word. ``False``: wait, as before.

    Examples:
        >>> EarlyStopping(monitor="val_loss", patience=3).patience
        3
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        patience: int = 5,
        min_delta: float = 0.0,
        restore_best_weights: bool = False,
        check_finite: bool = True,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping.mode must be 'min' or 'max', got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(
                f"EarlyStopping.patience must be a whole number >= 0, got {patience!r}"
            )
        if not isinstance(check_finite, bool):  # "no" would be truthy
            raise ValueError(f"EarlyStopping.check_finite must be True or False, got "
                             f"{check_finite!r}")  # fmt: skip
        if not (math.isfinite(min_delta) and min_delta >= 0):  # NaN: no epoch ever improved
            raise ValueError(f"EarlyStopping.min_delta must be finite and >= 0, got {min_delta}")
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta, self.restore_best_weights = min_delta, restore_best_weights
        self.check_finite = check_finite
        self._reset()

    def _reset(self) -> None:
        self.best: float | None = None
        self.best_epoch = -1
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.stop_reason: str | None = None  # "patience" or "non-finite"
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_loss_state: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if _new_run(trainer):
            self._reset()
        elif self.stopped_epoch is not None:  # resumed from the checkpoint of the stop
            self._recheck_stop(trainer)

    def _recheck_stop(self, trainer: Trainer) -> None:
        """Decide a restored stop again with this callback's settings: it was re-asserted
        whatever they were, so a run resumed with a larger patience stopped at once, without a
        word. The decision is the one the stop epoch's check would have made with them."""
        if self.stop_reason == "non-finite" and not self.check_finite:
            self.wait += 1  # a check without improvement, as _improved counts a NaN
            self.stop_reason = "patience"
        if self.stop_reason == "patience" and self.wait < self.patience:
            self.stopped_epoch = self.stop_reason = None
            return
        trainer.should_stop = True
        if trainer.is_global_zero:
            if self.stop_reason == "unknown":  # a larger patience does not move it: say so
                warnings.warn(f"EarlyStopping: the resumed run stopped at epoch "
                              f"{self.stopped_epoch} and stays stopped: its checkpoint, written "
                              "before stop reasons were saved, cannot be decided again with "
                              "other settings (start a new run, e.g. from its weights)",
                              stacklevel=6)  # fmt: skip
                return
            why = ("was not finite" if self.stop_reason == "non-finite" else
                   f"did not improve in {self.wait} checks, patience {self.patience}")  # fmt: skip
            warnings.warn(f"EarlyStopping: the resumed run stopped at epoch {self.stopped_epoch}"
                          f" ({self.monitor} {why}) and stays stopped; resume with a larger "
                          "patience (check_finite=False after a non-finite value) to train on",
                          stacklevel=6)  # fmt: skip

    def on_epoch_end(self, trainer: Trainer) -> None:
        value = _monitored(trainer, self.monitor)
        if value is None:
            return
        if self.check_finite and not math.isfinite(value):
            self.stopped_epoch, self.stop_reason = trainer.epoch, "non-finite"
            trainer.should_stop = True
            warnings.warn(f"EarlyStopping: {self.monitor} is {value} at epoch {trainer.epoch}: "
                          "training stopped (check_finite=False waits out the patience)",
                          stacklevel=2)  # fmt: skip
            return
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = value, trainer.epoch, 0
            if self.restore_best_weights:
                self.best_state = _copy_state(trainer.model)
                # a loss with trained parameters (a learned ES level, a noise scale) belongs
                # to the best epoch too: the model alone gave another val_loss than the best
                if isinstance(trainer.loss, torch.nn.Module):
                    self.best_loss_state = _copy_state(trainer.loss)
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch, self.stop_reason = trainer.epoch, "patience"
            trainer.should_stop = True

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.restore_best_weights and self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)
            if self.best_loss_state is not None and isinstance(trainer.loss, torch.nn.Module):
                trainer.loss.load_state_dict(self.best_loss_state)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "stop_reason": self.stop_reason,
            "best_state": self.best_state,
            "best_loss_state": self.best_loss_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.stopped_epoch, self.best_state = state["stopped_epoch"], state["best_state"]
        self.best_loss_state = state.get("best_loss_state")  # absent in older checkpoints
        # an older checkpoint's stop has no reason: kept, whatever the settings now
        self.stop_reason = state.get(
            "stop_reason", "unknown" if self.stopped_epoch is not None else None
        )


def _copy_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class ModelCheckpoint:
    """Write ``last.pt`` (each epoch, and every N steps), ``best.pt`` and every-N-epochs files.

    A stop (``trainer.should_stop``) in the middle of an epoch writes ``last.pt`` at the step
    where training stopped (with ``save_last`` or ``every_n_steps``), so that
    ``fit(resume=True)`` continues from exactly there.

    A new run (``fit`` without a checkpoint to resume) removes the ``last.pt``, ``best.pt`` and
    ``epoch_XXXX.pt`` files of an earlier run in its folder when it starts, so that a resume
    never continues the run it replaced.

    Args:
        dirpath: Folder (``None``: ``run_dir/checkpoints``).
        monitor: Metric for ``best.pt`` (``None``: no best checkpoint).
        mode: ``min`` or ``max``.
        save_last: Write ``last.pt`` at the end of every epoch (and at a mid-epoch stop).
        every_n_epochs: Also keep ``epoch_XXXX.pt`` every N epochs.
        every_n_steps: Also write ``last.pt`` every N optimizer steps (mid-epoch resume point).

    Examples:
        >>> ModelCheckpoint(dirpath="ck", every_n_steps=100).every_n_steps
        100
    """

    runs_last = True

    def __init__(
        self,
        dirpath: str | Path | None = None,
        monitor: str | None = "val_loss",
        mode: str = "min",
        save_last: bool = True,
        every_n_epochs: int | None = None,
        every_n_steps: int | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"ModelCheckpoint.mode must be 'min' or 'max', got {mode!r}")
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None:
                check_positive_int(f"ModelCheckpoint.{name}", value)
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.monitor, self.mode, self.save_last = monitor, mode, save_last
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.best: float | None = None
        self.best_epoch = -1
        self._step_written: int | None = None  # global step of the last mid-epoch last.pt

    def on_fit_start(self, trainer: Trainer) -> None:
        self._step_written = None
        if _new_run(trainer):
            self.best, self.best_epoch = None, -1
            self._remove_replaced(trainer)

    def _remove_replaced(self, trainer: Trainer) -> None:
        """A new run's folder loses the ``last``, ``best`` and epoch files of the run it replaces:
        a new run stopped before its first checkpoint left them, and ``fit(resume=True)`` then
        continued the replaced run (its weights and history, under the new run's metrics.csv).
        So do the temporaries of writes killed midway (``.last.pt.*.tmp``): never loaded, each
        held a checkpoint's size of disk for good."""
        folder = self.dirpath
        if folder is None and trainer.run_dir is not None:
            folder = trainer.run_dir / "checkpoints"
        if folder is None or not trainer.is_global_zero:
            return
        stale = (*folder.glob("epoch_[0-9]*.pt"), *folder.glob(".*.pt.*.tmp"))
        for path in (folder / "last.pt", folder / "best.pt", *stale):
            path.unlink(missing_ok=True)

    def _dir(self, trainer: Trainer) -> Path:
        if self.dirpath is not None:
            return self.dirpath
        if trainer.run_dir is None:
            raise ValueError("ModelCheckpoint needs dirpath or TrainerConfig.run_dir")
        return trainer.run_dir / "checkpoints"

    def on_train_step_end(self, trainer: Trainer) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            if not trainer.at_epoch_end:
                trainer.save_checkpoint(self._dir(trainer) / "last.pt")
                self._step_written = trainer.global_step

    def on_train_stop(self, trainer: Trainer) -> None:
        # At an epoch boundary on_epoch_end has written it; mid-epoch nothing had: the steps
        # since the last checkpoint were lost, and a resume trained them again
        mid_epoch = trainer.batch_in_epoch > 0
        wanted = self.save_last or self.every_n_steps
        if mid_epoch and wanted and self._step_written != trainer.global_step:
            trainer.save_checkpoint(self._dir(trainer) / "last.pt")
            self._step_written = trainer.global_step

    def on_epoch_end(self, trainer: Trainer) -> None:
        folder = self._dir(trainer)
        improved = False
        if self.monitor is not None:
            value = _monitored(trainer, self.monitor)
            if value is not None and _improved(value, self.best, self.mode, 0.0):
                self.best, self.best_epoch, improved = value, trainer.epoch, True
        # the state is written once; the other names are atomic hard links (or copies) of it.
        # Every rank takes the same branches: saving involves a collective under DDP.
        written = None
        # a step checkpoint due at the epoch's last step is written here, with the epoch's end
        # (on_train_step_end leaves it to this): without save_last it was never written
        due = bool(self.every_n_steps) and trainer.global_step % self.every_n_steps == 0
        if self.save_last or due:
            trainer.save_checkpoint(folder / "last.pt")
            written = folder / "last.pt"
        if improved:
            written = _place(trainer, written, folder / "best.pt")
        if self.every_n_epochs and (trainer.epoch + 1) % self.every_n_epochs == 0:
            _place(trainer, written, folder / f"epoch_{trainer.epoch:04d}.pt")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]


def _place(trainer: Trainer, written: Path | None, path: Path) -> Path:
    """Put the checkpoint just written at ``path`` too (writing it if nothing was written)."""
    if written is None:
        trainer.save_checkpoint(path)
        return path
    if trainer.is_global_zero:
        link_checkpoint(written, path)
    return written


class LRMonitor:
    """Record the learning rate of every parameter group at every optimizer step.

    Puts ``lr`` (group 0) and ``lr/group{i}`` into ``trainer.step_metrics`` and the epoch's
    last ``lr`` into ``trainer.epoch_metrics``; keeps ``history`` as ``(step, [lr, ...])`` for
    the current run: a new run (``fit`` without resume) starts a new list, a resumed one the
    checkpoint's (saved with it: a resume in a new process lost the steps before it, and an
    epoch resumed at its end, with no step left, had no ``lr`` in its row).

    Examples:
        >>> LRMonitor().history
        []
    """

    def __init__(self) -> None:
        self.history: list[tuple[int, list[float]]] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        # A second fit restarts the steps at 0: appending gave two runs' rates under the same
        # step numbers. A new list, not clear(): a caller may hold the last run's.
        if _new_run(trainer):
            self.history = []
        else:  # the steps after the checkpoint are trained again
            self.history = [(s, lrs) for s, lrs in self.history if s < trainer.global_step]

    def on_before_optimizer_step(self, trainer: Trainer, optimizer: torch.optim.Optimizer) -> None:
        lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.history.append((trainer.global_step, lrs))
        trainer.step_metrics["lr"] = lrs[0]
        if len(lrs) > 1:
            for i, lr in enumerate(lrs):
                trainer.step_metrics[f"lr/group{i}"] = lr

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        if self.history:
            trainer.epoch_metrics["lr"] = self.history[-1][1][0]

    def state_dict(self) -> dict[str, Any]:
        # tensors, not a list of tuples: one per step, in every checkpoint
        groups = len(self.history[0][1]) if self.history else 0
        return {
            "steps": torch.tensor([s for s, _ in self.history], dtype=torch.int64),  # (N,)
            "lrs": torch.tensor([lrs for _, lrs in self.history], dtype=torch.float64).reshape(
                len(self.history), groups
            ),  # (N, G)
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        steps, lrs = state["steps"].tolist(), state["lrs"].tolist()
        self.history = list(zip(steps, lrs, strict=True))


class ProgressBar:
    """A tqdm bar per epoch with the running loss (mean of the epoch's steps so far, weighted by
    their samples as ``train_loss`` is, refreshed every ``refresh_every`` steps).

    Disabled automatically when stderr is not a terminal, and on ranks other than 0.

    Examples:
        >>> from torch import nn
        >>> from qfnet.training import Trainer, TrainerConfig
        >>> x = torch.linspace(-1.0, 1.0, 32, dtype=torch.float64).unsqueeze(1)
        >>> data = torch.utils.data.TensorDataset(x, 2 * x)
        >>> config = TrainerConfig(max_epochs=2, batch_size=16, optimizer="sgd", lr=0.1)
        >>> trainer = Trainer(nn.Linear(1, 1).double(), loss=nn.MSELoss(), config=config,
        ...                   callbacks=[ProgressBar(refresh_every=5, leave=False)])
        >>> len(trainer.fit(data).records)  # no bar here: stderr is not a terminal
        2
    """

    def __init__(self, refresh_every: int = 20, leave: bool = True) -> None:
        check_positive_int("ProgressBar.refresh_every", refresh_every)
        self.refresh_every, self.leave = refresh_every, leave
        self._bar: Any = None
        self._total: torch.Tensor | None = None
        self._weight: torch.Tensor | int = 0

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        if not trainer.is_global_zero or not sys.stderr.isatty():
            return
        from tqdm.auto import tqdm

        self._total, self._weight = None, 0
        self._bar = tqdm(
            total=trainer.steps_per_epoch,
            initial=trainer.step_in_epoch,
            desc=f"epoch {trainer.epoch}",
            leave=self.leave,
            dynamic_ncols=True,
        )

    def on_train_step_end(self, trainer: Trainer) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        loss, weight = trainer.step_metrics["loss"].detach(), trainer.step_weight
        # a step whose samples all weigh 0 adds nothing, as to train_loss: its loss is 0/0, and
        # an unweighted mean showed NaN for the rest of the epoch (nan_guard=False)
        if isinstance(weight, torch.Tensor):
            part = torch.where(weight != 0, loss * weight, 0.0)
        else:
            part = loss * weight
        self._total = part if self._total is None else self._total + part
        self._weight = self._weight + weight
        if trainer.global_step % self.refresh_every == 0:
            # .item() synchronises the GPU: only every refresh_every steps
            self._bar.set_postfix(loss=f"{(self._total / self._weight).item():.4g}")

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self._bar is not None:
            shown = {k: f"{v:.4g}" for k, v in trainer.epoch_metrics.items() if "loss" in k}
            self._bar.set_postfix(shown)
            self._bar.close()
            self._bar = None

    def on_teardown(self, trainer: Trainer) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class LossCurvePlot:
    """Write the train/validation loss curves per epoch as a PNG at the end of training.

    A new run (``fit`` without resume) removes the plot of the run it replaces when it starts,
    as it replaces ``metrics.csv`` and the checkpoints: a new run stopped before its end left
    the replaced run's curves beside its own metrics.

    Args:
        path: Output file (``None``: ``run_dir/loss.png``).

    Examples:
        >>> import tempfile
        >>> from torch import nn
        >>> from qfnet.training import Trainer, TrainerConfig
        >>> x = torch.linspace(-1.0, 1.0, 32, dtype=torch.float64).unsqueeze(1)
        >>> data = torch.utils.data.TensorDataset(x, 2 * x)
        >>> config = TrainerConfig(max_epochs=2, batch_size=16, optimizer="sgd", lr=0.1)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     plot = LossCurvePlot(Path(tmp) / "loss.png")
        ...     trainer = Trainer(nn.Linear(1, 1).double(), loss=nn.MSELoss(), config=config,
        ...                       callbacks=[plot])
        ...     _ = trainer.fit(data)
        ...     plot.path.is_file()
        True
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None

    def _target(self, trainer: Trainer) -> Path | None:
        if not trainer.is_global_zero:
            return None
        return self.path or (trainer.run_dir / "loss.png" if trainer.run_dir else None)

    def on_fit_start(self, trainer: Trainer) -> None:
        path = self._target(trainer)
        if path is not None and _new_run(trainer):
            path.unlink(missing_ok=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        path = self._target(trainer)
        if path is None or not trainer.history.records:
            return
        plot_loss_curves(trainer.history.records, path, ylabel=_loss_label(trainer.loss))


def _loss_label(loss: Any) -> str:
    """``loss (<name>)``: the loss function's name (its class for a module), or ``loss`` for
    an anonymous one. Every plot was labelled ``loss``, whatever it measured (``vol_loss_bp2``:
    squared implied-vol errors in bp^2)."""
    name = getattr(getattr(loss, "func", loss), "__name__", None)  # a partial's function
    if name is None or isinstance(loss, torch.nn.Module):
        name = type(loss).__name__
    return "loss" if name.startswith("<") else f"loss ({name})"  # not "<lambda>"


def plot_loss_curves(records: list[dict[str, float]], path: Path, *, ylabel: str = "loss") -> Path:
    """Plot every ``*loss`` column of per-epoch records against the epoch (log scale if > 0),
    with ``ylabel`` on the loss axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    keys = sorted({k for r in records for k in r if k.endswith("loss")})
    positive = True
    for key in keys:
        points = [(r["epoch"], r[key]) for r in records if key in r and math.isfinite(r[key])]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=key)
            positive = positive and all(v > 0 for _, v in points)
    if positive and keys:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure_atomically(fig, path)
