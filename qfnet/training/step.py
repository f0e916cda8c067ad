"""Building blocks of one training step: forward, loss reduction with weights, history."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from qfnet.training.device import accumulation_dtype

__all__ = [
    "EpochLoss",
    "ForwardFn",
    "History",
    "LossFn",
    "NonFiniteLossError",
    "StepModule",
    "default_forward",
    "global_norm",
    "group_batches",
    "scale_gradients_",
    "scaled_loss",
    "step_mean",
    "weighted_sum",
]

ForwardFn = Callable[[nn.Module, Any], tuple[torch.Tensor, Any, torch.Tensor | None]]
LossFn = Callable[[torch.Tensor, Any], torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a NaN/Inf loss or gradient norm; names the epoch and step.

    Attributes:
        epoch: 0-based epoch.
        step: 0-based optimizer step within the epoch.
        global_step: 0-based optimizer step since the start of training.

    Examples:
        >>> error = NonFiniteLossError("loss is nan", epoch=2, step=5, global_step=105)
        >>> str(error), error.epoch, error.global_step, isinstance(error, FloatingPointError)
        ('loss is nan', 2, 105, True)
    """

    def __init__(self, message: str, *, epoch: int, step: int, global_step: int) -> None:
        super().__init__(message)
        self.epoch, self.step, self.global_step = epoch, step, global_step


def default_forward(model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any, Any]:
    """``(inputs, target[, weight]) -> (model(inputs), target, weight or None)``.

    Examples:
        >>> out, y, w = default_forward(nn.Identity(), (torch.ones(2), torch.zeros(2)))
        >>> out.tolist(), w
        ([1.0, 1.0], None)
    """
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        kind = type(batch).__name__
        if isinstance(batch, torch.Tensor):
            kind += f" of shape {tuple(batch.shape)}"
        elif isinstance(batch, (tuple, list)):
            kind += f" of length {len(batch)}"
        raise ValueError(
            f"batch: expected (inputs, target) or (inputs, target, weight), got a {kind}; "
            "pass Trainer(..., forward=fn) for other batch layouts"
        )
    weight = batch[2] if len(batch) == 3 else None
    return model(batch[0]), batch[1], weight


class StepModule(nn.Module):
    """Forward and loss as one module, so that DDP sees the model and any loss parameters.

    ``forward(batch)`` returns ``(loss_value, output, target, weight)``.

    Examples:
        >>> step = StepModule(nn.Identity(), nn.MSELoss(), default_forward)
        >>> loss, output, target, weight = step((torch.tensor([1.0, 3.0]), torch.zeros(2)))
        >>> float(loss), weight, [name for name, _ in step.named_children()]
        (5.0, None, ['model', 'loss'])
    """

    def __init__(self, model: nn.Module, loss: LossFn, forward: ForwardFn) -> None:
        super().__init__()
        self.model = model
        if isinstance(loss, nn.Module):
            self.loss = loss
        # plain references too, so the hot path skips nn.Module.__getattr__
        object.__setattr__(self, "_fast", (model, loss, forward))

    def forward(self, batch: Any) -> tuple[torch.Tensor, Any, Any, Any]:
        model, loss, forward = self._fast
        output, target, weight = forward(model, batch)
        return loss(output, target), output, target, weight


def sample_count(output: Any, target: Any) -> int:
    """Batch size N from the target (else the output) first dimension, 1 for scalars."""
    for t in (target, output):
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            return t.shape[0]
    return 1


def weighted_sum(
    values: torch.Tensor, weight: torch.Tensor | None, count: int, name: str = "loss"
) -> tuple[torch.Tensor, torch.Tensor | int]:
    """Weighted sum of per-sample values and the total weight (a scalar counts ``count`` times).

    Per-sample values ``(N, ...)`` are averaged over trailing dimensions to ``(N,)``; the
    weighted mean is then ``sum / total``.

    Shape:
        - values: ``()`` or ``(N, ...)``
        - weight: ``(N,)`` or ``None``

    Examples:
        >>> s, w = weighted_sum(torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0]), 2)
        >>> float(s / w)
        1.5
    """
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(values).__name__}")
    if values.dtype in (torch.float16, torch.bfloat16, torch.bool):  # bool: e.g. an accuracy
        values = values.float()
    if values.ndim == 0:
        if weight is None:
            return values * count, count
        total = weight.sum()
        return values * total, total
    per_sample = values.reshape(values.shape[0], -1).mean(dim=1) if values.ndim > 1 else values
    if weight is None:
        return per_sample.sum(), per_sample.shape[0]
    weight = weight.reshape(-1).to(per_sample.dtype)
    if weight.shape[0] != per_sample.shape[0]:
        raise ValueError(
            f"{name}: {per_sample.shape[0]} per-sample values but {weight.shape[0]} sample weights"
        )
    return (per_sample * weight).sum(), weight.sum()


def group_batches(iterator: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive groups of ``size`` batches; the last group may be shorter.

    Examples:
        >>> [len(g) for g in group_batches(iter(range(7)), 3)]
        [3, 3, 1]
    """
    group: list[Any] = []
    for batch in iterator:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class History:
    """Per-epoch records; ``history["val_loss"]`` is a list, ``history[-1]`` a row.

    Examples:
        >>> h = History([{"epoch": 0, "train_loss": 1.0}, {"epoch": 1, "train_loss": 0.5}])
        >>> h["train_loss"], h[-1]["epoch"], len(h)
        ([1.0, 0.5], 1, 2)
    """

    def __init__(self, records: list[dict[str, float]] | None = None) -> None:
        self.records: list[dict[str, float]] = list(records or [])

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            if not any(key in r for r in self.records):
                known = sorted({k for r in self.records for k in r})
                raise KeyError(f"history has no metric {key!r}; available: {known}")
            return [r.get(key, float("nan")) for r in self.records]
        return self.records[key]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, float]]:
        return iter(self.records)

    def keys(self) -> list[str]:
        """Every metric name that occurs in some epoch."""
        return sorted({k for r in self.records for k in r})

    def to_frame(self) -> Any:
        """The records as a pandas DataFrame, one row per epoch."""
        import pandas as pd

        return pd.DataFrame(self.records)

    def __repr__(self) -> str:
        return f"History({len(self.records)} epochs, keys={self.keys()})"


def scale_gradients_(grads: list[torch.Tensor], factor: torch.Tensor | float) -> None:
    """Multiply every gradient by ``factor`` in place (skipped for the float 1.0).

    Examples:
        >>> grads = [torch.tensor([1.0, 2.0]), torch.tensor([4.0])]
        >>> scale_gradients_(grads, 0.5)
        >>> [g.tolist() for g in grads]
        [[0.5, 1.0], [2.0]]
    """
    if not grads or (not isinstance(factor, torch.Tensor) and factor == 1.0):
        return
    torch._foreach_mul_(grads, factor)


def global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients taken together (float64 when dtypes are mixed).

    Examples:
        >>> float(global_norm([torch.tensor([3.0]), torch.tensor([4.0])]))
        5.0
    """
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    try:
        return torch.linalg.vector_norm(torch.stack(norms))
    except RuntimeError:  # mixed dtypes or devices
        dtype = accumulation_dtype(norms[0].device)
        norms = [n.to(dtype=dtype, device=norms[0].device) for n in norms]
        return torch.linalg.vector_norm(torch.stack(norms))


class EpochLoss:
    """Per-step mean losses and weights of an epoch, summed once when asked (no per-step ops).

    Examples:
        >>> epoch = EpochLoss()
        >>> epoch.add(torch.tensor(1.0), 3)
        >>> epoch.add(torch.tensor(2.0), 1)
        >>> total, weight = epoch.sums(torch.device("cpu"))
        >>> float(total), float(weight), float(total / weight)  # weighted mean 1.25
        (5.0, 4.0, 1.25)
    """

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.weights: list[torch.Tensor | int] = []

    def add(self, loss: torch.Tensor, weight: torch.Tensor | int) -> None:
        self.losses.append(loss)
        self.weights.append(weight)

    def sums(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum of loss * weight, sum of weights)`` on ``device``, in float64 (float32 on MPS,
        which has no float64)."""
        dtype = accumulation_dtype(device)
        zero = torch.zeros((), dtype=dtype, device=device)
        if not self.losses:
            return zero, zero
        losses = torch.stack([x.to(dtype) for x in self.losses])  # (S,)
        if all(isinstance(w, int) for w in self.weights):
            weights = torch.tensor(self.weights, dtype=dtype, device=device)
            return (losses * weights).sum(), weights.sum()
        weights = torch.stack([torch.as_tensor(w, device=device) for w in self.weights])
        weights = weights.to(dtype)
        # a step of weight 0 (a process whose samples all weigh 0, under DDP) has the mean
        # 0/0: it adds nothing, where NaN * 0 made the epoch's loss NaN
        return torch.where(weights != 0, losses * weights, 0.0).sum(), weights.sum()


def step_mean(
    means: list[torch.Tensor], weights: list[torch.Tensor | int]
) -> tuple[torch.Tensor, torch.Tensor | int]:
    """The weighted mean of a step's micro-batch mean losses, and the step's total weight.

    A micro-batch whose weights sum to 0 adds nothing: its own mean is 0/0, and ``NaN * 0``
    made the step's loss NaN (the NaN guard stopped a run whose single large batch had a
    finite loss). A step whose weights all sum to 0 still has the mean 0/0.

    Examples:
        >>> means = [torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(4.0)]
        >>> weights = [torch.tensor(3.0), torch.tensor(0.0), torch.tensor(1.0)]
        >>> mean, total = step_mean(means, weights)
        >>> float(mean), float(total)  # (1 * 3 + 4 * 1) / 4
        (1.75, 4.0)
    """
    if len(means) == 1:
        return means[0], weights[0]
    total = sum(weights)
    parts = (m * w if isinstance(w, int) else torch.where(w != 0, m * w, 0.0)
             for m, w in zip(means, weights, strict=True))  # fmt: skip
    return sum(parts) / total, total


def scaled_loss(
    value: torch.Tensor, weight: torch.Tensor | None, count: int, nominal: int
) -> tuple[torch.Tensor, torch.Tensor | int, torch.Tensor]:
    """``(detached mean, total weight, loss to backpropagate)`` of one micro-batch.

    The loss to backpropagate is ``sum(w * loss) / nominal``; for the common scalar loss of a
    full batch it is the loss itself, without extra operations.

    Shape:
        - value: ``()`` or ``(N, ...)``; weight: ``(N,)`` or ``None``

    Examples:
        A scalar loss of a half-size micro-batch counts half in the accumulated gradient:

        >>> mean, weight, loss = scaled_loss(torch.tensor(2.0), None, count=16, nominal=32)
        >>> float(mean), weight, float(loss)
        (2.0, 16, 1.0)
        >>> mean, weight, loss = scaled_loss(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 3.0]),
        ...                                  count=2, nominal=4)
        >>> float(mean), float(weight), float(loss)  # (1 * 1 + 3 * 3) / 4
        (2.5, 4.0, 2.5)
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"loss: expected a tensor, got {type(value).__name__} (return the loss "
                        "as a tensor, per sample or reduced, to backpropagate it)")  # fmt: skip
    if value.ndim == 0 and weight is None:
        ratio = count / nominal
        return value.detach(), count, value * ratio if ratio != 1.0 else value
    s, w = weighted_sum(value, weight, count)
    mean = s.detach() / w
    return mean, (w.detach() if isinstance(w, torch.Tensor) else w), s / nominal
