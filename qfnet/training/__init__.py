"""The shared training loop: one :class:`Trainer` for surrogates, calibration nets and deep hedging.

Quick start::

    from qfnet.training import EarlyStopping, Trainer, TrainerConfig

    trainer = Trainer(
        model,
        loss=loss_fn,                      # loss(output, target) -> scalar or per-sample values
        config=TrainerConfig(max_epochs=50, batch_size=256, optimizer="adam", lr=1e-3,
                             seed=0, run_dir="runs/surrogate"),
        callbacks=[EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)],
        metrics={"mae": lambda out, y: (out - y).abs()},
    )
    history = trainer.fit(train_data, val_data)    # Dataset, Tensor or DataLoader
    history["val_loss"][-1]; history[-1]           # a metric's values per epoch; last epoch's row
    results = trainer.evaluate(test_data)          # {"loss": ..., "mae": ...} as floats

Batches and losses
    A batch is ``(inputs, target)`` or ``(inputs, target, weight)``; the default forward is
    ``output = model(inputs)`` and the loss is ``loss(output, target)``. The loss (and each metric
    ``fn(output, target)``) returns a scalar or per-sample values of shape ``(N, ...)``;
    per-sample values are averaged over trailing dimensions and then reduced as a weighted mean
    with the sample weights ``(N,)`` (plain mean without weights). Scalars count as the mean over
    the batch. Over an epoch, losses and metrics are averaged with the same weights (a scalar
    value with its batch's total sample weight, or its size without weights), and reduced across
    processes under DDP.

Custom forward
    ``Trainer(..., forward=fn)`` with ``fn(model, batch) -> (output, target, weight_or_None)``
    serves models whose batch is not ``(inputs, target)``. Deep hedging, for instance: the batch
    is a tensor of price paths ``(N, T+1)``, the model is an ``nn.Module`` holding the policy and
    the learnable loss parameters, ``fn`` returns the per-path P&L ``(N,)`` and ``None`` as the
    target, and ``loss(pnl, None)`` computes e.g. the expected shortfall. If ``loss`` is an
    ``nn.Module`` with parameters, they are moved with the model and trained too.

Runs (``config.run_dir``)
    ``config.json``; ``metrics.csv`` (one row per epoch: ``epoch, step, train_loss, lr, val_loss,
    val_<metric>..., seconds``, the last the epoch's time, that before a resume included);
    TensorBoard events (per step: ``train/loss``, ``train/grad_norm``, ``lr``; per epoch, at its
    last global step: the columns of ``metrics.csv`` but ``epoch`` and ``step``; a NaN or
    infinite value, of a step or of an epoch, left out, where ``metrics.csv`` writes an epoch's);
    ``checkpoints/last.pt`` (every epoch, every
    ``checkpoint_every_n_steps`` and where a callback's stop ends training mid-epoch),
    ``checkpoints/best.pt`` (best ``monitor``, a hard link to the ``last.pt`` of that epoch);
    ``loss.png`` at the end (a new run removes the replaced run's when it starts). Only rank 0
    writes.

Data
    Tensor-backed data (a tensor, a ``TensorDataset``, ``Subset`` of them) are batched by one
    tensor index per batch, not sample by sample; other Datasets go through a DataLoader
    (with ``pin_memory`` and 2 workers on CUDA; tensor data already on the GPU is not pinned).
    Batches are moved to the device by the trainer.

Steps
    Each optimizer step: zero the gradients; forward and loss on each micro-batch (under
    autocast when mixed precision is on) and backward; unscale (fp16), normalise by the
    group's total weight, record the global gradient norm, clip; NaN/Inf check; optimizer
    step (with linear warmup); per-step schedule (neither advances on a step the fp16 scaler
    skips for non-finite gradients). Epoch schedules step after validation.
    Training runs in the train/eval mode each module has (a submodule put in eval mode, e.g.
    a frozen BatchNorm, stays in it; a model wholly in eval mode at an epoch's start is put in
    train mode); validation runs in eval mode and leaves every module's mode as it found it.

Resume
    ``trainer.fit(train, val, resume=True)`` continues from ``run_dir/checkpoints/last.pt``
    (or from ``last.pt`` in the ``dirpath`` of a given ``ModelCheckpoint``; starting fresh, with
    a warning naming the folder, when it does not exist); ``fit(..., ckpt_path=path)`` from a
    given file. A new run (``fit`` without a checkpoint to resume) removes the ``last.pt``,
    ``best.pt`` and ``epoch_XXXX.pt`` of the run it replaces in that folder when it starts, so
    a resume never continues that run. A resume is refused, naming the file, where the state
    restored would not fit or would keep the checkpoint's settings without a word: another
    optimizer or optimizer setting (``lr`` included), another learning-rate schedule or
    ``scheduler_kwargs``, or, mid-epoch, another batch size, data order or set of training
    metrics.
    Checkpoints hold the model, optimizer, scheduler, GradScaler, callback states, loop position
    (epoch, batch within the epoch, global step), history and every RNG state. They are written
    atomically and read with ``torch.load(weights_only=True)``; a truncated, corrupted or
    tampered file raises :class:`CheckpointError` naming it, and a pickled object is refused.
    The training order depends only on ``(seed, epoch)`` (``DistributedSampler``'s order, also
    for one process), so a run interrupted mid-epoch and resumed ends with bit-identical
    weights on CPU (random draws made inside DataLoader worker processes, as by a Dataset that
    simulates its samples with ``num_workers > 0``, are not part of the saved state). A
    user-built DataLoader is positioned by restoring its generator's state at the start of the
    epoch and skipping the batches already done: exact when its sampler (or batch sampler, or
    the batch sampler's sampler) has ``set_epoch``, which is called every epoch, or draws only
    from the loader's ``generator``.

Callbacks
    Duck-typed objects: the trainer calls ``cb.on_<hook>(trainer, ...)`` when present, in list
    order, for the hooks in :data:`HOOKS` (checkpointing callbacks always run last). A callback
    stops training by setting ``trainer.should_stop = True``: after the current step, or, set
    at an epoch's last step, after that epoch's end (validation, row, ``last.pt``), as in
    Lightning; a mid-epoch stop writes ``last.pt`` at that step, so no step is lost. The flag
    is not checkpointed: ``fit(resume=True)`` continues exactly where a stop for a passing
    reason (a time budget) left off, while a callback whose reason lasts re-asserts its stop
    from its own state (a run :class:`EarlyStopping` stopped stays stopped, with a warning,
    unless resumed with a larger ``patience``). Stateful callbacks implement ``state_dict()`` /
    ``load_state_dict(state)`` and are restored on resume. Built-in:
    :class:`EarlyStopping`, :class:`ModelCheckpoint`, :class:`LRMonitor`, :class:`ProgressBar`,
    :class:`CSVLogger`, :class:`TensorBoardLogger`, :class:`LossCurvePlot`. With a ``run_dir``,
    the trainer adds ``ModelCheckpoint``, ``CSVLogger``, ``TensorBoardLogger`` and
    ``LossCurvePlot`` unless one of that type is given (the config's ``monitor``,
    ``monitor_mode`` and ``checkpoint_every_n_steps`` configure that default checkpoint only:
    a given ``ModelCheckpoint`` keeps its own, with a warning where they differ);
    ``ProgressBar`` and ``LRMonitor`` are always added unless given. The NaN/Inf guard is built
    in (``config.nan_guard``).

Distributed
    The same script runs under ``torchrun --nproc_per_node=K``: the trainer joins the process
    group (gloo on CPU, nccl on CUDA), wraps the model in DDP, shards the data with
    ``DistributedSampler`` (``batch_size`` is per process) and all-reduces metrics. Validation
    and test Datasets are split without padding (each sample counted once); a DataLoader with
    a ``DistributedSampler`` would repeat samples there, so pass the Dataset itself. A stop
    flag or a NaN/Inf loss on one process stops every process at the same step.

Also: :func:`split_dataset` (train/val/test by fractions), :func:`lr_find` (LR range test),
:func:`seed_everything`, :func:`resolve_device`, :func:`save_checkpoint` /
:func:`load_checkpoint`.
"""

from qfnet.training.callbacks import (
    HOOKS,
    EarlyStopping,
    LossCurvePlot,
    LRMonitor,
    ModelCheckpoint,
    ProgressBar,
)
from qfnet.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from qfnet.training.config import ParamGroup, TrainerConfig
from qfnet.training.data import split_dataset
from qfnet.training.device import resolve_device, seed_everything
from qfnet.training.loggers import CSVLogger, TensorBoardLogger
from qfnet.training.lr_finder import LRFinderResult, lr_find
from qfnet.training.trainer import History, NonFiniteLossError, Trainer

__all__ = [
    "HOOKS",
    "CSVLogger",
    "CheckpointError",
    "EarlyStopping",
    "History",
    "LRFinderResult",
    "LRMonitor",
    "LossCurvePlot",
    "ModelCheckpoint",
    "NonFiniteLossError",
    "ParamGroup",
    "ProgressBar",
    "TensorBoardLogger",
    "Trainer",
    "TrainerConfig",
    "load_checkpoint",
    "lr_find",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
    "split_dataset",
]
