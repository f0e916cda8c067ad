"""MPS-only paths (Apple GPUs, skipped elsewhere): MPS has no float64, so the trainer's sums,
logged step values and checkpoint reads must avoid it."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from qfnet.training import Trainer, TrainerConfig

mps = pytest.mark.skipif(
    not torch.backends.mps.is_available(), reason="MPS not available (Apple GPUs only)"
)


def _data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)  # float32: MPS has no float64
    return TensorDataset(x, x @ torch.tensor([[1.0], [2.0], [-1.0]]))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))


@mps
def test_float32_model_trains_logs_and_resumes_on_mps(tmp_path):
    # float64 sums (torch.zeros(..., dtype=float64, device="mps")) raised a TypeError at setup
    def config(epochs: int) -> TrainerConfig:
        return TrainerConfig(max_epochs=epochs, batch_size=32, lr=0.01, device="mps",
                             run_dir=tmp_path, progress_bar=False, log_every_n_steps=2)  # fmt: skip

    trainer = Trainer(_model(), loss=nn.MSELoss(), config=config(3))
    history = trainer.fit(_data(256), _data(64))
    assert trainer.device.type == "mps" and trainer.precision == "32"
    assert history["val_loss"][-1] < history["val_loss"][0]
    resumed = Trainer(_model(), loss=nn.MSELoss(), config=config(5))
    history = resumed.fit(_data(256), _data(64), resume=True)  # the checkpoint holds float64
    assert len(history) == 5 and history["val_loss"][-1] < history["val_loss"][2]
