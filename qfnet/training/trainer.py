"""The Trainer: an explicit five-step loop (zero grads, forward, loss, backward, step)."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from qfnet.training import checkpoint as ckpt
from qfnet.training.callbacks import (
    HOOKS,
    LossCurvePlot,
    LRMonitor,
    ModelCheckpoint,
    ProgressBar,
)
from qfnet.training.config import TrainerConfig
from qfnet.training.data import (
    DataSource,
    TrainLoader,
    check_indexable,
    eval_loader,
    known_length,
    off_cpu,
    tensor_backed,
)
from qfnet.training.device import (
    accumulation_dtype,
    check_float64_device,
    deterministic_algorithms,
    move_to_device,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from qfnet.training.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    any_rank,
    barrier,
    broadcast_from_zero,
    init_distributed,
)
from qfnet.training.loggers import CSVLogger, TensorBoardLogger
from qfnet.training.schedulers import build_optimizer, build_scheduler, warmup_factor
from qfnet.training.state import restore_trainer, trainer_state
from qfnet.training.step import (
    EpochLoss,
    ForwardFn,
    History,
    LossFn,
    NonFiniteLossError,
    StepModule,
    default_forward,
    global_norm,
    group_batches,
    sample_count,
    scale_gradients_,
    scaled_loss,
    step_mean,
    weighted_sum,
)

__all__ = ["History", "NonFiniteLossError", "Trainer"]

MetricFn = Callable[[torch.Tensor, Any], torch.Tensor]


class Trainer:
    """Train ``model`` on ``loss`` with the settings of ``config`` (see the package docstring).

    Args:
        model: Any ``nn.Module``; it is moved to the configured device.
        loss: ``loss(output, target)`` returning a scalar or per-sample values ``(N, ...)``.
        config: The run settings.
        callbacks: Duck-typed callback objects (see :data:`~qfnet.training.HOOKS`).
        metrics: ``{"name": fn(output, target)}`` computed on validation/test data (and on
            training batches with ``config.train_metrics``), reduced like the loss.
        forward: ``fn(model, batch) -> (output, target, weight or None)``; default
            ``(model(batch[0]), batch[1], batch[2] if present)``.

    Attributes:
        epoch: Current 0-based epoch.
        global_step: Optimizer steps done since the start of training.
        step_metrics: Last step's ``loss`` and ``grad_norm`` (tensors) and ``lr``; the loss is
            the step's weighted mean over all processes under DDP.
        step_weight: Last step's total sample weight over all processes (a tensor, or the
            sample count for unweighted data); 0 for a step whose samples all weigh 0: its
            loss is 0/0 (NaN), and without the NaN guard it makes no update.
        epoch_metrics: The current epoch's row.
        history: :class:`History` of all epoch rows.
        should_stop: Set by a callback to stop training: after the current optimizer step
            (at the epoch's last step, after its end), checkpointed there by ModelCheckpoint
            (``on_train_stop``). Not saved in checkpoints: ``fit`` clears it, and a callback
            that stops for a lasting reason sets it again from its state (EarlyStopping).
        device: The device in use; precision: the resolved mixed-precision mode.

    Examples:
        >>> torch.manual_seed(0) and None
        >>> x = torch.randn(64, 1, dtype=torch.float64); y = 2 * x
        >>> model = nn.Linear(1, 1).double()
        >>> cfg = TrainerConfig(max_epochs=30, batch_size=16, optimizer="sgd", lr=0.1)
        >>> history = Trainer(model, loss=nn.MSELoss(), config=cfg).fit(
        ...     torch.utils.data.TensorDataset(x, y))
        >>> round(model.weight.item(), 3)
        2.0
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss: LossFn,
        config: TrainerConfig | None = None,
        callbacks: Iterable[Any] = (),
        metrics: dict[str, MetricFn] | None = None,
        forward: ForwardFn | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if not callable(loss):
            raise TypeError(f"loss: expected a callable, got {type(loss).__name__}")
        self.model, self.loss = model, loss
        self.config = config or TrainerConfig()
        self.metrics = dict(metrics or {})
        clash = sorted(set(self.metrics) & {"loss", "grad_norm", "lr", "epoch"})
        if clash:
            raise ValueError(f"metrics: the name(s) {clash} are the Trainer's own; rename them")
        self.forward = forward or default_forward
        self.run_dir = Path(self.config.run_dir) if self.config.run_dir is not None else None
        callbacks = list(callbacks)
        _warn_unknown_hooks(callbacks)
        _warn_unused_checkpoint_settings(self.config, callbacks)
        self.callbacks = self._default_callbacks(callbacks)
        self.history = History()
        self.epoch = self.global_step = self.batch_in_epoch = self.step_in_epoch = 0
        self.should_stop = False
        self.at_epoch_end = self.has_validation = self.validated_this_epoch = False
        self.step_metrics: dict[str, Any] = {}
        self.step_weight: torch.Tensor | int = 0
        self.epoch_metrics: dict[str, float] = {}
        self.steps_per_epoch: int | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self._epoch_done = False
        self._runtime_ready = False
        # torch's RNG states at the loop position (the last completed optimizer step) while a
        # step under way may have drawn past it; None where the current states are the ones
        self._rng_at_position: tuple[torch.Tensor, torch.Tensor | None] | None = None
        # the NaN guard's error (raised on every rank at once), and an exception being handled
        # under DDP that may not have been raised on the other ranks (see save_checkpoint)
        self._lockstep_error: BaseException | None = None
        # steps in a row, up to the last completed one, whose non-finite gradients the fp16
        # scaler skipped (saved in checkpoints: a resume restarted the count)
        self._skipped = 0
        # optimizer steps the LR schedule (warmup and a per-step scheduler) has followed: all
        # but those the fp16 scaler skipped, whose overflows spent the warmup without an update
        self._schedule_steps = 0
        self._unsynced_error: BaseException | None = None
        # the current epoch's start on the clock (None between epochs), and the seconds a
        # checkpoint resumed mid-epoch had trained of it: the resumed epoch's row counted only
        # those since the resume
        self._epoch_start: float | None = None
        self._resumed_seconds = 0.0

    def _default_callbacks(self, callbacks: list[Any]) -> list[Any]:
        cfg = self.config

        def missing(kind: type) -> bool:
            return not any(isinstance(c, kind) for c in callbacks)

        if missing(LRMonitor):
            callbacks.insert(0, LRMonitor())
        if cfg.progress_bar and missing(ProgressBar):
            callbacks.append(ProgressBar())
        if self.run_dir is not None:
            if missing(CSVLogger):
                callbacks.append(CSVLogger())
            if cfg.tensorboard and missing(TensorBoardLogger):
                callbacks.append(TensorBoardLogger())
            if missing(LossCurvePlot):
                callbacks.append(LossCurvePlot())
            if missing(ModelCheckpoint):
                callbacks.append(
                    ModelCheckpoint(
                        monitor=cfg.monitor,
                        mode=cfg.monitor_mode,
                        every_n_steps=cfg.checkpoint_every_n_steps,
                    )
                )
        return callbacks

    @property
    def callbacks(self) -> list[Any]:
        """The callbacks, in call order (assigning a new list re-reads their hooks; those with
        ``runs_last``, the checkpoint writers, are put last, as ``fit`` does again for a list
        changed in place)."""
        return self._callbacks

    @callbacks.setter
    def callbacks(self, callbacks: list[Any]) -> None:
        self._callbacks = list(callbacks)
        self._reorder_callbacks()

    def _reorder_callbacks(self) -> None:
        """Checkpoint writers last (a stable sort), and the hooks read again: an EarlyStopping
        appended after the ModelCheckpoint ran after it, so the checkpoint of the epoch that
        stopped held the flag unset and the patience a check behind (a resume trained on)."""
        self._callbacks.sort(key=lambda c: bool(getattr(c, "runs_last", False)))
        self._hooks: dict[str, list[Callable[..., Any]]] = {}

    def call(self, hook: str, *args: Any) -> None:
        """Call ``hook(self, *args)`` on every callback that defines it, in order."""
        methods = self._hooks.get(hook)
        if methods is None:
            found = (getattr(c, hook, None) for c in self._callbacks)
            methods = self._hooks[hook] = [m for m in found if m is not None]
        for method in methods:
            method(self, *args)

    @property
    def is_global_zero(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.dist.is_global_zero if self._runtime_ready else True

    def _setup_runtime(self) -> None:
        """Device, process group, precision, model placement, DDP and compile (once)."""
        if self._runtime_ready:
            return
        cfg = self.config
        self.device = check_float64_device(
            resolve_device(cfg.device), cfg.device, self.model, self.loss
        )
        self.dist: DistInfo = init_distributed(cfg.distributed, self.device)
        self.precision = resolve_precision(cfg.precision, self.device, self.model)
        self.model.to(self.device)
        if isinstance(self.loss, nn.Module):
            self.loss.to(self.device)
        inner = (
            torch.compile(self.model, backend=cfg.compile_backend) if cfg.compile else self.model
        )
        self._module = StepModule(inner, self.loss, self.forward)
        self._train_module: nn.Module = self._module
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._train_module = DistributedDataParallel(self._module, device_ids=ids)
        # no hooks on the internal module: call forward directly, unless DDP needs its __call__
        self._train_call = self._train_module if self.dist.enabled else self._module.forward
        self._params = [p for p in self._module.parameters() if p.requires_grad]
        self._scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self._runtime_ready = True

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _loader_kwargs(self, data: DataSource) -> dict[str, Any]:
        """Pinned memory on CUDA; 2 workers there by default, except for tensor-backed data
        (fetched by one tensor index per batch, where workers only add start-up time). Tensor
        data already on a GPU is not pinned: ``pin_memory`` raises on a CUDA tensor."""
        cuda = self.device.type == "cuda"
        workers = self.config.num_workers
        if workers is None:
            workers = 2 if cuda and not tensor_backed(data) else 0
        pin = cuda and not off_cpu(data)
        return {"num_workers": workers, "pin_memory": pin, "persistent_workers": workers > 0}

    def _setup_fit(self, train_data: DataSource, val_data: DataSource | None) -> None:
        cfg = self.config
        check_indexable(train_data, "train_data")
        self._train = TrainLoader(
            train_data,
            batch_size=cfg.batch_size,
            shuffle=cfg.shuffle,
            drop_last=cfg.drop_last,
            seed=cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            loader_kwargs=self._loader_kwargs(train_data),
        )
        self._val = None if val_data is None else self._eval_loader(val_data, "val_data")
        self.has_validation = self._val is not None
        self._warn_about_loader("train_data", train_data, evaluation=False, stacklevel=4)
        self._warn_about_loader("val_data", val_data, evaluation=True, stacklevel=4)
        try:
            n_batches = len(self._train)
        except TypeError:  # an iterable-style loader
            self.steps_per_epoch = None
        else:
            if n_batches == 0:
                size = len(train_data) if hasattr(train_data, "__len__") else "?"
                raise ValueError(f"train_data: no training batch from {size} samples (batch_size="
                                 f"{cfg.batch_size}, drop_last={cfg.drop_last}: a dataset smaller "
                                 "than one batch is dropped whole)")  # fmt: skip
            self.steps_per_epoch = -(-n_batches // cfg.accumulate_grad_batches)
        named = self._module.named_parameters()
        self.optimizer = build_optimizer(
            ((n.removeprefix("model._orig_mod.").removeprefix("model."), p) for n, p in named), cfg
        )
        self.scheduler, self._interval = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self._train_sums, self._epoch_loss = self._zero_sums(), EpochLoss()
        self._non_blocking = self.device.type == "cuda"

    def _warn_about_loader(
        self, name: str, data: Any, *, evaluation: bool, stacklevel: int
    ) -> None:
        """Under DDP, warn once (rank 0) about a DataLoader that does not split its data exactly.

        ``stacklevel`` counts from here to the user's call (``fit``/``evaluate``).
        """
        if not self.dist.enabled or not self.is_global_zero:
            return
        whole = evaluation and not self.config.shard_eval
        message = _loader_warning(name, data, self.dist.world_size, evaluation=evaluation,
                                  whole=whole)  # fmt: skip
        if message is not None:
            warnings.warn(message, stacklevel=stacklevel)

    def _eval_loader(self, data: DataSource, name: str) -> Any:
        check_indexable(data, name)
        if known_length(data) == 0:
            raise ValueError(f"{name}: validation/test data is empty: pass None for no validation")
        size = self.config.eval_batch_size or self.config.batch_size
        # A generator of its own: DataLoader iterators seed their workers from the global RNG
        # otherwise, and a validation would shift the next epochs' dropout masks.
        kwargs = self._loader_kwargs(data) | {"generator": torch.Generator().manual_seed(0)}
        split = self.config.shard_eval  # else every rank reads all of it
        return eval_loader(data, batch_size=size, rank=self.dist.rank if split else 0,
                           world_size=self.dist.world_size if split else 1,
                           loader_kwargs=kwargs)  # fmt: skip

    def fit(
        self,
        train_data: DataSource,
        val_data: DataSource | None = None,
        *,
        resume: bool = False,
        ckpt_path: str | Path | None = None,
    ) -> History:
        """Train for ``config.max_epochs`` epochs (or until a callback stops it).

        Args:
            train_data: A Dataset, a tensor (one sample per row) or a DataLoader.
            val_data: Validation data, evaluated every ``val_every_n_epochs`` epochs.
            resume: Continue from ``last.pt`` in the ModelCheckpoint's folder
                (``run_dir/checkpoints`` by default) if it exists; without one, warn and start
                a new run.
            ckpt_path: Continue from this checkpoint (must exist).

        Returns:
            The :class:`History` of per-epoch metrics.

        Raises:
            NonFiniteLossError: On a NaN/Inf loss or gradient norm (``config.nan_guard``);
                checkpoints written before it are kept.
        """
        self._setup_runtime()
        self._setup_fit(train_data, val_data)
        self._reorder_callbacks()  # the list may have been changed in place
        path = self._resume_path(resume, ckpt_path)
        # Not restored either: a stop whose reason lasts is re-asserted by its callback from
        # its own state (EarlyStopping); one that does not (a time budget) lets a resume train on.
        self.should_stop = False
        self._rng_at_position = self._epoch_start = None
        self._resumed_seconds = 0.0  # restore_trainer sets a mid-epoch checkpoint's
        if path is None:
            seed_everything(self.config.seed)
            self.history = History()
            self.epoch = self.global_step = self.batch_in_epoch = self.step_in_epoch = 0
            self._skipped = self._schedule_steps = 0
        with deterministic_algorithms(self.config.deterministic):
            return self._fit_epochs(path)

    def _fit_epochs(self, path: Path | None) -> History:
        """The epoch loop of :meth:`fit` (resuming from ``path`` when given), with its hooks."""
        restored = path is None
        try:
            if path is not None:
                # MPS cannot hold the checkpoint's float64 tensors: read it to the CPU there
                where = "cpu" if self.device.type == "mps" else self.device
                restore_trainer(self, ckpt.load_checkpoint(path, map_location=where), path)
                restored = True
            # only once the checkpoint has loaded: a resume refused (a damaged last.pt, another
            # batch size) had replaced the run's config.json with the refused settings
            self._write_config()
            self.call("on_fit_start")
            while self.epoch < self.config.max_epochs and not self._stop_requested():
                if not self._run_epoch():
                    break
            if self._stop_requested():  # the checkpoint writers save a mid-epoch stop here
                self.call("on_train_stop")
            self.call("on_fit_end")
        except BaseException as exc:
            if not restored:  # a refused resume: no training ran, and a crash handler's
                raise  # checkpoint replaced the run's last.pt with the unrestored state
            # Under DDP, the NaN guard's error is the only one known to be raised on every rank
            # at the same step: after another, the other ranks may be waiting in a collective
            # (or gone), and a checkpoint written here (its collectives) waited for them until
            # the process group's timeout (30 minutes by default on gloo), then raised that.
            lockstep = exc is self._lockstep_error
            self._unsynced_error = exc if self.dist.enabled and not lockstep else None
            try:
                self.call("on_exception", exc)
            finally:
                self._unsynced_error = self._lockstep_error = None
            if self.dist.enabled and lockstep:  # rank 0 may still be writing a checkpoint
                barrier(self.dist, self.device)
            raise
        finally:
            self.call("on_teardown")
        # rank 0 may still be writing (checkpoints, loss.png): the other ranks returned before
        # it, and a resume or a load of best.pt right after fit found no file or an older one
        barrier(self.dist, self.device)
        return self.history

    def _resume_path(self, resume: bool, ckpt_path: str | Path | None) -> Path | None:
        if ckpt_path is not None:
            return Path(ckpt_path)
        if not resume:
            return None
        last = self._last_checkpoint()
        if last is None:
            raise ValueError("fit(resume=True) needs TrainerConfig.run_dir or a ModelCheckpoint "
                             "with a dirpath (or pass ckpt_path)")  # fmt: skip
        if last.exists():
            return last
        if self.is_global_zero:  # a new run started without a word where the run was expected
            warnings.warn(f"fit(resume=True): no checkpoint to resume in {last.parent} (no "
                          f"{last.name}); starting a new run", stacklevel=3)  # fmt: skip
        return None

    def _last_checkpoint(self) -> Path | None:
        """The ``last.pt`` of the ModelCheckpoint callbacks (the first that exists, else the
        first's): a given ``ModelCheckpoint(dirpath=...)`` writes it there, not in
        ``run_dir/checkpoints``, where ``resume=True`` looked and started afresh."""
        paths = [(c.dirpath if c.dirpath is not None else self.run_dir / "checkpoints") / "last.pt"
                 for c in self.callbacks if isinstance(c, ModelCheckpoint)
                 and (c.dirpath is not None or self.run_dir is not None)]  # fmt: skip
        return next((p for p in paths if p.exists()), paths[0] if paths else None)

    def _write_config(self) -> None:
        if self.run_dir is None or not self.is_global_zero:
            return
        runtime = {
            "device": str(self.device),
            "precision": self.precision,
            "world_size": self.dist.world_size,
            "torch": torch.__version__,
        }
        text = json.dumps({**self.config.to_dict(), "runtime": runtime}, indent=2, default=str)
        ckpt.write_text_atomically(text + "\n", self.run_dir / "config.json")

    def _folded_train_sums(self) -> torch.Tensor:
        """The epoch's ``[loss_sum, weight_sum, metric sums...]`` including the step losses."""
        sums = self._train_sums.clone()
        loss, weight = self._epoch_loss.sums(self.device)
        sums[0] += loss
        sums[1] += weight
        return sums

    def _zero_sums(self) -> torch.Tensor:
        dtype = accumulation_dtype(self.device)
        return torch.zeros(2 + 2 * len(self.metrics), dtype=dtype, device=self.device)

    def _run_epoch(self) -> bool:
        """One epoch: train, validate, schedule, hooks. False if stopped mid-epoch.

        A stop set at the epoch's last step (of a known number) ends the epoch first, as in
        Lightning: that epoch's validation, history row and ``last.pt`` are not skipped.
        """
        start = self._epoch_start = time.perf_counter() - self._resumed_seconds
        self._resumed_seconds = 0.0
        self._epoch_done = self.validated_this_epoch = False
        self._enter_train_mode()
        self._mark_position()
        self.call("on_train_epoch_start")
        iterator = self._train.epoch_iter(self.epoch, self.batch_in_epoch)
        for group in group_batches(iterator, self.config.accumulate_grad_batches):
            self._train_step(group)
            if not self.at_epoch_end and self._stop_requested():
                return False
        self._rng_at_position = None
        self.epoch_metrics = {"epoch": self.epoch, "step": self.global_step}
        self.epoch_metrics.update(self._reduce(self._folded_train_sums(), "train_", train=True))
        self.call("on_train_epoch_end")
        if self._val is not None and (self.epoch + 1) % self.config.val_every_n_epochs == 0:
            self.call("on_validation_start")
            val = self._evaluate(self._val, prefix="val_")
            self.validated_this_epoch = True
            self.epoch_metrics.update(val)
            self.call("on_validation_end", val)
        self._step_scheduler_epoch()
        self.epoch_metrics["seconds"] = time.perf_counter() - start
        self.history.records.append(dict(self.epoch_metrics))
        self._epoch_done = True
        self.call("on_epoch_end")
        # From here on the loop position is the start of the next epoch (trainer_state must not
        # add one again after fit() returns).
        self.epoch += 1
        self._epoch_done = False
        self.batch_in_epoch = self.step_in_epoch = 0
        self._train_sums, self._epoch_loss = self._zero_sums(), EpochLoss()
        self._epoch_start = None
        return True

    def _epoch_seconds(self) -> float:
        """Seconds the current epoch has trained so far, those before a resume included (what
        a mid-epoch checkpoint saves); 0 at an epoch's start."""
        if self._epoch_start is None or self.batch_in_epoch == 0:
            return self._resumed_seconds
        return time.perf_counter() - self._epoch_start

    def _enter_train_mode(self) -> None:
        """Train mode for a model wholly in eval mode (after ``model.eval()``, as loaded for
        inference, or left so by a callback); otherwise each module keeps its mode, so that a
        submodule put in eval mode (a frozen BatchNorm or dropout) stays there: a blanket
        ``.train()`` at every epoch's start undid it. Validation leaves the modes as it found
        them."""
        if not any(m.training for m in self.model.modules()):
            self._train_module.train()

    def _stop_requested(self) -> bool:
        """``should_stop`` of any rank, set on every rank, so that all leave the loop together.

        A callback may stop one rank only (a time budget read per process): a rank leaving
        alone would leave the others waiting in the next collective. One all-reduce of a single
        number per check under DDP (its read-back synchronises the GPU, as the NaN guard's does
        each step), none otherwise.
        """
        self.should_stop = any_rank(self.should_stop, self.dist, self.device)
        return self.should_stop

    def _step_scheduler_epoch(self) -> None:
        if self._interval == "epoch":
            self.scheduler.step()
        elif self._interval == "metric":
            name = self.config.scheduler_monitor
            value = self.epoch_metrics.get(name)
            if value is None and name.startswith("val_") and not self.has_validation:
                value = self.epoch_metrics.get("train_" + name[4:])
            if value is None and (self.validated_this_epoch or not self.has_validation):
                raise KeyError(
                    f"scheduler_monitor {name!r} not found; available: {sorted(self.epoch_metrics)}"
                )
            if value is not None:
                self.scheduler.step(value)

    def _train_step(self, group: list[Any]) -> None:
        """One optimizer step over ``group`` micro-batches (gradient accumulation)."""
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        self.step_metrics = {}
        # the step's metric sums and loss join the epoch's once it is done: a checkpoint written
        # on an exception inside it (at the last completed step) counted them, and the resumed
        # run counted them again
        step_sums = self._zero_sums() if cfg.train_metrics else None
        # Gradients of sum(w * loss) / nominal, rescaled by nominal / total weight below: the
        # exact weighted mean over the whole group (and over all ranks), partial groups too.
        nominal = cfg.batch_size * cfg.accumulate_grad_batches
        means: list[torch.Tensor] = []  # detached mean loss of each micro-batch
        weights: list[torch.Tensor | int] = []
        for i, raw in enumerate(group):
            self.call("on_train_batch_start", raw, self.batch_in_epoch + i)
            batch = move_to_device(raw, self.device, self._non_blocking)
            last = i == len(group) - 1
            sync = self._train_module.no_sync() if self.dist.enabled and not last else _NO_SYNC
            with sync:
                with self._autocast():
                    value, output, target, weight = self._train_call(batch)
                mean, w, scaled = scaled_loss(value, weight, sample_count(output, target), nominal)
                (self._scaler.scale(scaled) if self._scaler else scaled).backward()
            means.append(mean)
            weights.append(w)
            if step_sums is not None:
                self._accumulate_metrics(step_sums, output, target, weight)
            self.call("on_after_backward")
        step_loss, total = step_mean(means, weights)
        total_all, loss_all = self._reduce_step(total, step_loss)
        norm = self._finish_gradients(nominal, total_all)
        skipped = self._check_finite(step_loss, loss_all, norm, total_all, batch_losses=means,
                                     batch_weights=weights)  # fmt: skip
        # with the guard off (it stops on such a step), a step whose samples all weigh 0 adds
        # nothing, as a micro-batch or a process of weight 0 does: its gradients, divided by
        # the weight 0, were NaN and went into the weights. float() of a tensor weight
        # synchronises the GPU, only with the guard off (the guard's own check does otherwise)
        self._optimizer_step(update=cfg.nan_guard or float(total_all) != 0.0)
        self._skipped = skipped
        self._epoch_loss.add(step_loss, total)
        if step_sums is not None:
            self._train_sums += step_sums
        self.batch_in_epoch += len(group)
        self.step_in_epoch += 1
        self.global_step += 1
        self._rng_at_position = None
        self.at_epoch_end = self.step_in_epoch == self.steps_per_epoch
        self.step_metrics.update(loss=loss_all, grad_norm=norm)
        self.step_weight = total_all
        self.call("on_train_step_end")
        self._mark_position()

    def _mark_position(self) -> None:
        """Keep torch's RNG states here, where a resume from this loop position starts drawing
        (the next batches' fetch, dropout): a checkpoint written before the next step completes
        (from ``on_exception``) saves them, not states that count the interrupted step's draws
        (the resumed run replayed its micro-batches with other dropout masks). Python's and
        NumPy's states are not kept (costlier than a small step)."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        self._rng_at_position = (torch.get_rng_state(), cuda)

    def _rng_state(self) -> dict[str, Any]:
        """The global RNG states a checkpoint saves: the current ones, or torch's at the loop
        position if a step has started since (see :meth:`save_checkpoint`)."""
        state = ckpt.get_rng_state()
        if self._rng_at_position is not None:
            cpu, cuda = self._rng_at_position
            state["torch"] = cpu
            if cuda is not None:
                index = self.device.index
                state["cuda"][torch.cuda.current_device() if index is None else index] = cuda
        return state

    def _reduce_step(
        self, total: torch.Tensor | int, loss: torch.Tensor
    ) -> tuple[torch.Tensor | int, torch.Tensor]:
        """The step's total weight and weighted mean loss over all ranks.

        Under DDP both come from one all-reduce; the mean, the same on every rank, is the
        step's loss that is logged and the NaN/Inf guard's probe: non-finite on all ranks when
        the loss is on one (the gradients may still be finite). For one process:
        ``(total, loss)``.
        """
        if not self.dist.enabled:
            return total, loss
        local = torch.as_tensor(total, dtype=torch.float64, device=self.device)
        # a rank whose samples all weigh 0 has the mean 0/0: not a divergence while the
        # step has weight on other ranks (NaN once it has none, as for one process), nor the
        # step's loss (it was logged as NaN, and the progress bar's running loss with it)
        part = torch.where(local != 0, loss.detach().to(torch.float64) * local, 0.0)
        both = torch.stack([local, part])
        all_reduce_sum(both, self.dist)
        mean = torch.where(both[0] != 0, both[1] / both[0], math.nan)
        return both[0], mean.to(loss.dtype)

    def _finish_gradients(self, nominal: int, total: torch.Tensor | int) -> torch.Tensor:
        """Unscale, normalise by the total weight over all ranks, clip; returns the global norm
        before clipping."""
        if self._scaler is not None:
            self._scaler.unscale_(self.optimizer)
        # the gradients DDP averaged are sums over world_size ranks of sum(w * loss) / nominal
        factor = nominal * self.dist.world_size / total
        grads = [p.grad for p in self._params if p.grad is not None]
        scale_gradients_(grads, factor)
        norm = global_norm(grads)
        if self.config.clip_grad_norm is not None:
            # torch.nn.utils.clip_grad_norm_'s rule, reusing the norm computed above
            scale_gradients_(grads, (self.config.clip_grad_norm / (norm + 1e-6)).clamp(max=1.0))
        elif self.config.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(self._params, self.config.clip_grad_value)
        return norm

    def _check_finite(
        self,
        loss: torch.Tensor,
        loss_probe: torch.Tensor,
        norm: torch.Tensor,
        total: torch.Tensor | int = 1,
        *,
        batch_losses: list[torch.Tensor] | None = None,
        batch_weights: list[torch.Tensor | int] | None = None,
    ) -> int:
        """Raise :class:`NonFiniteLossError` on every rank when any rank's loss, or the gradient
        norm, is NaN/Inf (``loss_probe`` from :meth:`_reduce_step`); ``total`` is the step's
        weight over all ranks (0: its mean loss is 0/0, which the message says);
        ``batch_losses`` and ``batch_weights`` the step's micro-batch mean losses and weights,
        to name the batch at fault.

        Returns:
            The fp16 scaler's skipped steps in a row, this one included (0 without scaling),
            which the step keeps once it completes.
        """
        if not self.config.nan_guard:
            return 0
        skipped, skipping = 0, False
        if self._scaler is None:
            # .item() synchronises the GPU once per step: the price of stopping at the bad step
            if math.isfinite((loss_probe + norm).item()):
                return 0
        else:
            # with fp16 scaling, inf gradients only make the scaler skip the step; gradients that
            # stay non-finite at every scale (a NaN of the model's, not an overflow) made it skip
            # every step, without a word, while the scale fell to 0
            probe, grad_norm = torch.stack([loss_probe.double(), norm.double()]).tolist()
            skipped = 0 if math.isfinite(grad_norm) else self._skipped + 1
            skipping = skipped >= _MAX_SKIPPED_STEPS
            if math.isfinite(probe) and not skipping:
                return skipped
        losses = batch_losses or [loss]
        # this rank's weight: where it is 0 (DDP), its mean loss is 0/0, not the one at fault
        local = sum(float(w) for w in batch_weights) if batch_weights else 1.0
        if float(total) == 0.0:  # not a diverging model: a step of zero-weight samples only
            what = ("loss: the step's sample weights sum to 0, so its weighted mean is 0/0 "
                    "(drop zero-weight samples or use larger batches)")  # fmt: skip
        elif local != 0.0 and not math.isfinite(loss.item()):
            what = f"loss {loss.item()}"
        elif not math.isfinite(loss_probe.item()):
            what = "loss on another process"
        elif skipping:
            what = (f"gradient norm {norm.item()} at {skipped} steps in a row (fp16 loss "
                    "scaling skipped them all: not an overflow)")  # fmt: skip
        else:
            what = f"gradient norm {norm.item()}"
        last = self._last_checkpoint()
        kept = f"; last good checkpoint: {last}" if last is not None and last.exists() else ""
        where = _step_batches(self.batch_in_epoch, losses, batch_weights)
        self._lockstep_error = NonFiniteLossError(
            f"non-finite {what} at epoch {self.epoch}, step {self.step_in_epoch} of the epoch "
            f"({where}; global step {self.global_step}, 0-based); training stopped before the "
            f"update{kept}",
            epoch=self.epoch,
            step=self.step_in_epoch,
            global_step=self.global_step,
        )
        raise self._lockstep_error

    def _optimizer_step(self, update: bool = True) -> None:
        """Step the optimizer (not if ``update`` is false: the gradients are cleared, the hook,
        the scaler and the schedule go on) and, per step, the schedule.

        A step the fp16 scaler skips (non-finite gradients) leaves the schedule where it was,
        warmup included, as ``transformers`` and ``accelerate`` do: its overflows (common in the
        first steps, from the initial scale of 2**16) spent the warmup without an update, and
        torch warned of a scheduler stepped before the optimizer.
        """
        opt = self.optimizer
        factor = warmup_factor(self._schedule_steps, self.config.warmup_steps)
        saved = [g["lr"] for g in opt.param_groups] if factor != 1.0 else []
        if factor != 1.0:
            for g in opt.param_groups:
                g["lr"] = g["lr"] * factor
        overflow = False
        try:
            if not update:  # its gradients are 0/0: a hook reads none, as after no backward
                opt.zero_grad(set_to_none=True)  # (a skipped step in Lightning)
            self.call("on_before_optimizer_step", opt)
            if self._scaler is not None:
                if update:
                    overflow = not _scaler_step(self._scaler, opt)
                self._scaler.update()  # also after no step: it clears the step's unscale_
            elif update:
                opt.step()
        finally:  # also on an exception: a checkpoint written then saved the warmed-up rate
            if saved:  # as the base one, for the rest of the run
                for g, lr in zip(opt.param_groups, saved, strict=True):
                    g["lr"] = lr
        if overflow:
            return
        if self._interval == "step":
            self.scheduler.step()
        self._schedule_steps += 1

    def _accumulate_metrics(
        self, sums: torch.Tensor, output: Any, target: Any, weight: Any
    ) -> None:
        with torch.no_grad():
            count = sample_count(output, target)
            for j, (name, fn) in enumerate(self.metrics.items()):
                s, w = weighted_sum(fn(output.detach(), target), weight, count, name=name)
                sums[2 + 2 * j] += s.detach()
                sums[3 + 2 * j] += w

    def _reduce(self, sums: torch.Tensor, prefix: str, train: bool = False) -> dict[str, float]:
        """Weighted means from ``[loss_sum, loss_w, m1_sum, m1_w, ...]`` over all ranks.

        Evaluation with ``shard_eval=False`` (every rank saw all of the data): rank 0's, on every
        rank (values computed on each could differ in their last bits on different GPUs, and
        with them an early-stopping decision).
        """
        whole = not train and not self.config.shard_eval
        reduce = broadcast_from_zero if whole else all_reduce_sum
        values = reduce(sums.clone(), self.dist).tolist()  # one synchronisation
        out = {f"{prefix}loss": values[0] / values[1] if values[1] else float("nan")}
        if train and not self.config.train_metrics:
            return out
        for j, name in enumerate(self.metrics):
            w = values[3 + 2 * j]
            out[prefix + name] = values[2 + 2 * j] / w if w else float("nan")
        return out

    @torch.no_grad()
    def _evaluate(self, loader: Any, prefix: str = "") -> dict[str, float]:
        modes = [(module, module.training) for module in self._module.modules()]
        self._module.eval()
        sums = self._zero_sums()
        for raw in loader:
            batch = move_to_device(raw, self.device, non_blocking=self.device.type == "cuda")
            with self._autocast():
                value, output, target, weight = self._module(batch)
            s, w = weighted_sum(value, weight, sample_count(output, target))
            sums[0] += s
            sums[1] += w
            self._accumulate_metrics(sums, output, target, weight)
        for module, training in modes:  # as they were: evaluate() left an eval model training
            module.train(training)
        return self._reduce(sums, prefix)

    def evaluate(self, data: DataSource) -> dict[str, float]:
        """Loss and metrics over ``data`` (model in eval mode, no gradients).

        Returns:
            ``{"loss": ..., "<metric>": ...}`` as weighted means over all samples (all ranks;
            with ``shard_eval=False`` over all samples on every rank).
        """
        self._setup_runtime()
        self._warn_about_loader("data", data, evaluation=True, stacklevel=3)
        with deterministic_algorithms(self.config.deterministic):
            return self._evaluate(self._eval_loader(data, "data"))

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds (plain types and tensors only)."""
        return trainer_state(self)

    def save_checkpoint(self, path: str | Path) -> Path | None:
        """Write the full training state to ``path`` atomically (rank 0 writes).

        Under DDP every rank must call it (callbacks run on every rank): the epoch's partial
        training sums are reduced across ranks first, so a resumed run reports the same
        ``train_loss``. Written while a step is under way (from ``on_exception``), it holds the
        last completed optimizer step: the interrupted step's loss and metric sums are left
        out, its warmed-up rate is not saved as the base one, and torch's RNG states are those
        at that step's end, so a resume replays it with the same dropout masks. Not undone:
        Python's and NumPy's draws made in the interrupted step, and an update the optimizer
        had begun (an exception inside ``optimizer.step()``, or after it before the step was
        counted).

        Under DDP, from ``on_exception`` it is written after the NaN guard's error only (raised
        on every rank at the same step); after another exception it warns and writes nothing:
        the other ranks may not have raised it, and its collectives waited for them until the
        process group's timeout. The last checkpoint written before stays the resume point.
        """
        if self._unsynced_error is not None:
            last = self._last_checkpoint()
            kept = f"; the last one written is {last}" if last is not None and last.exists() else ""
            warnings.warn(f"save_checkpoint({str(path)!r}): not written: under DDP an exception "
                          f"({type(self._unsynced_error).__name__}) raised on this process may "
                          "not have been raised on the others, which would not join the writing"
                          f"{kept}", stacklevel=2)  # fmt: skip
            return None
        if self._runtime_ready and hasattr(self, "_epoch_loss") and not self._epoch_done:
            # Fold the step losses into the running sums here, as a resumed run will have them:
            # the uninterrupted run then adds the epoch's losses in the same order (bit-equal
            # train_loss, whatever order a vectorised sum would choose on this CPU).
            self._train_sums, self._epoch_loss = self._folded_train_sums(), EpochLoss()
        sums = rngs = None
        if self._runtime_ready and self.dist.enabled:
            # each rank's own RNG states: where the ranks drew different numbers of random
            # values (dropout on batches of unequal sizes; CUDA, where rank 0 sees its own
            # device's), rank 0's restored on every rank gave the others other draws
            rngs = all_gather_objects(self._rng_state(), self.dist, self.device)
        if self._runtime_ready and self.dist.enabled and hasattr(self, "_epoch_loss"):
            sums = all_reduce_sum(self._folded_train_sums(), self.dist)
        if not self.is_global_zero:
            return None
        state = self.state_dict()
        if rngs is not None:
            state["rng_ranks"] = rngs
        if sums is not None and not self._epoch_done:
            state["loop"]["train_sums"] = sums
        return ckpt.save_checkpoint(state, path)


_NO_SYNC = contextlib.nullcontext()
_MAX_SKIPPED_STEPS = 32
"""Steps in a row that fp16 loss scaling may skip for non-finite gradients before the NaN guard
stops training: each skip halves the scale, and from 2**16 a real overflow is gone within ~20
(past that the gradients are NaN or inf at any scale)."""


def _scaler_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """``scaler.step(optimizer)``; False if the scaler skipped the update for non-finite
    gradients. Read from whether ``optimizer.step`` ran (a step post-hook), which the scaler
    decides on the host: no extra GPU synchronisation, unlike comparing scales."""
    taken: list[bool] = []
    handle = optimizer.register_step_post_hook(lambda *_: taken.append(True))
    try:
        scaler.step(optimizer)
    finally:
        handle.remove()
    return bool(taken)


def _first_bad(losses: list[torch.Tensor], weights: list[Any] | None) -> int | None:
    """Index of the first micro-batch whose mean loss is non-finite, leaving out those of
    weight 0 (their mean is 0/0 and adds nothing to the step's); ``None`` if none."""
    for i, loss in enumerate(losses):
        # only on the way to an error: no per-step sync
        if (weights is None or float(weights[i]) != 0.0) and not math.isfinite(loss.item()):
            return i
    return None


def _step_batches(first: int, losses: list[torch.Tensor], weights: list[Any] | None) -> str:
    """The batch of the epoch (0-based) whose loss is non-finite, else the step's batches: with
    gradient accumulation a step spans several, and the step number alone did not say which
    data to look at."""
    bad = _first_bad(losses, weights)
    if bad is not None:
        return f"batch {first + bad} of the epoch"
    last = first + len(losses) - 1
    return (
        f"batch {first} of the epoch" if last == first else f"batches {first}-{last} of the epoch"
    )


def _warn_unknown_hooks(callbacks: Any) -> None:
    """Callbacks are duck-typed: a misspelled hook (``on_epoch_ending``) was never called, and
    nothing said so."""
    for callback in callbacks:
        names = {n for n in dir(callback) if n.startswith("on_") and callable(getattr(callback, n))}
        for name in sorted(names - set(HOOKS)):
            close = difflib.get_close_matches(name, list(HOOKS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warnings.warn(f"callback {type(callback).__name__}.{name} is not a Trainer hook and "
                          f"is never called{hint}; see qfnet.training.HOOKS", stacklevel=3)  # fmt: skip


_CHECKPOINT_SETTINGS = {"checkpoint_every_n_steps": "every_n_steps", "monitor": "monitor",
                        "monitor_mode": "mode"}  # fmt: skip
"""TrainerConfig fields that configure the default ModelCheckpoint -> its argument."""


def _warn_unused_checkpoint_settings(config: TrainerConfig, callbacks: list[Any]) -> None:
    """Warn about config checkpoint settings that configure nothing.

    They shape only the ModelCheckpoint the Trainer adds; a given one keeps its own arguments
    (as in Lightning). Set to other values than every given one's (``monitor`` and
    ``monitor_mode`` unless a ``plateau`` schedule watches that metric), or
    ``checkpoint_every_n_steps`` without a ``run_dir`` and no ModelCheckpoint, they were ignored
    without a word.
    """
    given = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    names = list(_CHECKPOINT_SETTINGS)
    if config.scheduler == "plateau" and config.scheduler_monitor == config.monitor:
        names = ["checkpoint_every_n_steps"]  # the schedule uses the other two
    defaults = {f.name: f.default for f in dataclasses.fields(TrainerConfig)}
    unused = []
    for name in names:
        value = getattr(config, name)
        if value != defaults[name] and all(getattr(c, _CHECKPOINT_SETTINGS[name]) != value
                                           for c in given):  # fmt: skip
            unused.append(f"{name}={value!r}")
    if unused and given:
        own = ", ".join(f"{a}={getattr(given[0], a)!r}" for a in _CHECKPOINT_SETTINGS.values())
        warnings.warn(f"TrainerConfig {', '.join(unused)}: these configure only the "
                      f"ModelCheckpoint the Trainer adds, and the given ModelCheckpoint ({own}) "
                      "keeps its own; pass them to ModelCheckpoint instead",
                      stacklevel=3)  # fmt: skip
    elif config.checkpoint_every_n_steps is not None and not given and config.run_dir is None:
        warnings.warn(f"TrainerConfig checkpoint_every_n_steps={config.checkpoint_every_n_steps}"
                      " writes nothing without run_dir (no ModelCheckpoint is added); set run_dir"
                      " or give ModelCheckpoint(dirpath=..., every_n_steps=...)",
                      stacklevel=3)  # fmt: skip


def _rank_aware(loader: torch.utils.data.DataLoader) -> bool:
    """True if the loader's sampler (or batch sampler) splits the data over ranks itself."""
    batch_sampler = loader.batch_sampler
    samplers = (loader.sampler, batch_sampler, getattr(batch_sampler, "sampler", None))
    return any(
        isinstance(s, DistributedSampler) or (hasattr(s, "num_replicas") and hasattr(s, "rank"))
        for s in samplers
    )


def _loader_warning(
    name: str, data: Any, world_size: int, *, evaluation: bool, whole: bool = False
) -> str | None:
    """Why a user DataLoader would not give each of ``world_size`` ranks its exact share, if so.

    A loader used as given is read whole on every rank; for evaluation, a ``DistributedSampler``
    repeats (or drops) samples to split them evenly, so the mean is not over the data. With
    ``whole`` (``shard_eval=False``) every rank must read all of it: only a loader that splits
    the data is wrong.
    """
    if not isinstance(data, torch.utils.data.DataLoader):
        return None
    if whole:
        if not _rank_aware(data):
            return None
        return (f"{name}: its sampler splits the data over the {world_size} processes, but "
                "shard_eval=False reports rank 0's value as that of all of it; pass the Dataset "
                "itself or a DataLoader that reads all of it")  # fmt: skip
    exact = "pass the Dataset itself (the Trainer splits it over the processes, each sample once)"
    if not _rank_aware(data):
        train = "pass a Dataset (sharded for you) or give it a DistributedSampler"
        advice = exact if evaluation else train
        return (f"{name}: a DataLoader is used as given on each of the {world_size} processes, "
                f"so each sees all of its data; {advice}")  # fmt: skip
    sampler = data.sampler
    if not evaluation or not isinstance(sampler, DistributedSampler):
        return None
    n, size = len(sampler.dataset), sampler.total_size
    if size == n:
        return None
    how = f"drops {n - size}" if size < n else f"repeats {size - n}"
    return (f"{name}: its DistributedSampler {how} of {n} samples to split them evenly over "
            f"{world_size} processes, which biases the mean loss and metrics; {exact}")  # fmt: skip
