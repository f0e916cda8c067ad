"""Tiny models, data and a recording callback for the Trainer tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset


def _regression(
    n: int = 64, features: int = 3, seed: int = 0, weighted: bool = False
) -> TensorDataset:
    """y = x @ beta + noise in float64; with ``weighted`` a third column of positive weights."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)  # (N, F)
    beta = torch.linspace(-1.0, 2.0, features, dtype=torch.float64)
    y = (x @ beta).unsqueeze(-1) + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    if weighted:
        w = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)  # (N,)
        return TensorDataset(x, y, w)
    return TensorDataset(x, y)


def _mlp(features: int = 3, hidden: int = 8, seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(features, hidden), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, 1))
    return nn.Sequential(*layers).double()


class Recorder:
    """Records the step metrics, and the parameters before and after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.before: list[list[torch.Tensor]] = []
        self.after: list[list[torch.Tensor]] = []
        self.grads: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, optimizer) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.before.append([p.detach().clone() for p in params])
        self.grads.append([p.grad.detach().clone() for p in params])

    def on_train_step_end(self, trainer) -> None:
        params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
        self.after.append([p.detach().clone() for p in params])
        self.steps.append(
            {
                k: (v.item() if isinstance(v, torch.Tensor) else v)
                for k, v in trainer.step_metrics.items()
            }
            | {"epoch": trainer.epoch, "global_step": trainer.global_step}
        )


@pytest.fixture
def regression() -> Callable[..., TensorDataset]:
    return _regression


@pytest.fixture
def mlp() -> Callable[..., nn.Module]:
    return _mlp


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def per_sample_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error per sample. Shape: (N, 1) -> (N, 1), averaged by the trainer."""
    return (output - target) ** 2


@pytest.fixture
def sq_error() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return per_sample_mse


@pytest.fixture(autouse=True)
def _auto_device_is_the_cpu(request, monkeypatch):
    """These tests check the loop's arithmetic against CPU float64 references, so ``device="auto"``
    means the CPU here even on a CUDA machine; the CUDA paths have their own tests (marked
    ``cuda``), and tests that name a device get it."""
    if request.node.get_closest_marker("cuda") is not None:
        return
    import qfnet.training.trainer as trainer_module

    real = trainer_module.resolve_device

    def resolve(name="auto"):
        return real("cpu" if str(name) == "auto" else name)

    monkeypatch.setattr(trainer_module, "resolve_device", resolve)
