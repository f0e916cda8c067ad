"""CSV and TensorBoard loggers (callbacks; they write on rank 0 only)."""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pricing._validation import check_positive_int
from qfnet.training.checkpoint import write_text_atomically

if TYPE_CHECKING:
    from qfnet.training.trainer import Trainer

__all__ = ["CSVLogger", "TensorBoardLogger"]


class CSVLogger:
    """One row per epoch in ``metrics.csv``: ``epoch, step``, the losses, metrics and ``lr``.

    The file is rewritten from ``trainer.history`` when training starts, so a resumed run
    continues it without duplicated or orphaned rows; a new column rewrites the header.

    Args:
        path: Output file (``None``: ``run_dir/metrics.csv``).

    Examples:
        >>> CSVLogger("m.csv").path.name
        'm.csv'
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._columns: list[str] = []

    def _target(self, trainer: Trainer) -> Path | None:
        if not trainer.is_global_zero:
            return None
        if self.path is not None:
            return self.path
        return trainer.run_dir / "metrics.csv" if trainer.run_dir is not None else None

    def on_fit_start(self, trainer: Trainer) -> None:
        path = self._target(trainer)
        if path is not None:
            self._rewrite(path, trainer.history.records)

    def on_epoch_end(self, trainer: Trainer) -> None:
        path = self._target(trainer)
        if path is None:
            return
        row = trainer.history.records[-1]
        if any(k not in self._columns for k in row):
            self._rewrite(path, trainer.history.records)
            return
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._columns).writerow(row)

    def _rewrite(self, path: Path, records: list[dict[str, float]]) -> None:
        columns = ["epoch", "step"]
        for record in records:
            columns += [k for k in record if k not in columns]
        self._columns = columns
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)
        # through a temporary file: a failed rewrite left the earlier rows cut short
        write_text_atomically(text.getvalue(), path)


class TensorBoardLogger:
    """TensorBoard events: ``train/loss``, ``train/grad_norm`` and ``lr`` at every step, and every
    finite epoch metric under ``epoch/<name>`` at the global step that ends the epoch (a NaN
    value, e.g. a mean over samples that all weigh 0, is left out, of a step as of an epoch;
    ``metrics.csv`` has the epoch's).

    Step values stay on the device in a buffer and are written every ``log_every_n_steps``
    steps (``None``: ``config.log_every_n_steps``) and at the end of each epoch, with one
    synchronisation per flush. A resumed run purges events past the resume step; a new run
    (``fit`` without resume) replaces the event files of ``run_dir``, and warns where a given
    ``log_dir`` already holds some (a folder of the caller's, which may hold other runs, is
    not emptied): give each run its own folder.

    Args:
        log_dir: Event folder (``None``: ``run_dir``).
        log_every_n_steps: Flush period in optimizer steps.

    Examples:
        >>> import tempfile
        >>> from torch import nn
        >>> from qfnet.training import Trainer, TrainerConfig
        >>> x = torch.linspace(-1.0, 1.0, 32, dtype=torch.float64).unsqueeze(1)
        >>> data = torch.utils.data.TensorDataset(x, 2 * x)
        >>> config = TrainerConfig(max_epochs=2, batch_size=16, optimizer="sgd", lr=0.1)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     trainer = Trainer(nn.Linear(1, 1).double(), loss=nn.MSELoss(), config=config,
        ...                       callbacks=[TensorBoardLogger(tmp, log_every_n_steps=1)])
        ...     _ = trainer.fit(data)
        ...     [p.name.split(".")[0] for p in Path(tmp).iterdir()]
        ['events']
    """

    def __init__(self, log_dir: str | Path | None = None, log_every_n_steps: int | None = None):
        self.log_dir = Path(log_dir) if log_dir is not None else None
        if log_every_n_steps is not None:
            check_positive_int("TensorBoardLogger.log_every_n_steps", log_every_n_steps)
        self.log_every_n_steps = log_every_n_steps
        self._writer: Any = None
        self._steps: list[int] = []
        # key -> (buffer rows that have it, values): a metric set on some steps only (by a
        # callback) was dropped from every flush window that had a step without it
        self._values: dict[str, tuple[list[int], list[Any]]] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        log_dir = self.log_dir or trainer.run_dir
        if log_dir is None or not trainer.is_global_zero:
            return
        from torch.utils.tensorboard import SummaryWriter

        # steps up to global_step were logged before the checkpoint: purge only those after it
        purge = trainer.global_step + 1 if trainer.global_step > 0 else None
        old = sorted(Path(log_dir).glob("events.out.tfevents.*")) if purge is None else []
        if old and self.log_dir is None:  # a fresh run replaces the run folder's events, as
            for path in old:  # it does metrics.csv
                path.unlink(missing_ok=True)
        elif old:  # a folder of the caller's may hold other runs: kept, but said
            warnings.warn(f"TensorBoardLogger: {log_dir} already holds {len(old)} event file(s) "
                          "of an earlier run; TensorBoard will show their steps mixed with this "
                          "run's (give each run its own log_dir)", stacklevel=2)  # fmt: skip
        self._writer = SummaryWriter(str(log_dir), purge_step=purge)
        self._every = self.log_every_n_steps or trainer.config.log_every_n_steps

    def on_train_step_end(self, trainer: Trainer) -> None:
        if self._writer is None:
            return
        row = len(self._steps)
        self._steps.append(trainer.global_step)
        for key, value in trainer.step_metrics.items():
            rows, values = self._values.setdefault(key, ([], []))
            rows.append(row)
            values.append(value)
        if len(self._steps) >= self._every:
            self._flush()

    def _flush(self) -> None:
        if not self._steps:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        per_step: list[list[Any]] = [[] for _ in self._steps]
        for key, (rows, values) in self._values.items():
            tag = key if key.startswith("lr") else f"train/{key}"
            for row, value in zip(rows, _floats(values), strict=True):
                # left out where not finite, as the epoch values are: a step whose samples all
                # weigh 0 (its mean loss 0/0, no update) was drawn as a NaN, its epoch's not
                if math.isfinite(value):
                    per_step[row].append(Summary.Value(tag=tag, simple_value=value))
        writer = self._writer._get_file_writer()
        for step, values in zip(self._steps, per_step, strict=True):
            if values:  # one event per step, all its tags
                writer.add_summary(Summary(value=values), step)
        self._steps, self._values = [], {}

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self._writer is None:
            return
        self._flush()
        for key, value in trainer.epoch_metrics.items():
            # at the global step, not the epoch number: a resume purges the events past the
            # checkpoint's step, and epoch-numbered events past it stayed, duplicated
            if key not in ("epoch", "step") and math.isfinite(value):
                self._writer.add_scalar(f"epoch/{key}", value, trainer.global_step)
        self._writer.flush()

    def on_teardown(self, trainer: Trainer) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None


def _floats(values: list[Any]) -> list[float]:
    """Host floats of a buffered column; tensors are stacked first (one synchronisation)."""
    if not isinstance(values[0], torch.Tensor):
        return [float(v) for v in values]
    try:
        # to the CPU first: MPS has no float64 (its .double() raises a TypeError)
        return torch.stack(values).detach().cpu().double().tolist()
    except RuntimeError:  # mixed dtypes or devices
        return [float(v) for v in values]
