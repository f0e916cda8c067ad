"""CUDA-only paths: fp16 autocast + GradScaler, bf16, pinned memory and loader workers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from qfnet.training import Trainer, TrainerConfig, load_checkpoint

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


def _data(n: int = 256) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)  # float32: mixed precision applies
    return TensorDataset(x, x @ torch.tensor([[1.0], [2.0], [-1.0]]))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 1))


def _recording_forward(dtypes: list):
    def forward(model, batch):
        x, y = batch
        out = model(x)
        dtypes.append((out.dtype, x.device.type))
        return out, y, None

    return forward


@pytest.mark.cuda
@cuda
def test_fp16_autocast_with_grad_scaler_trains_and_checkpoints_the_scaler(tmp_path):
    dtypes: list = []
    cfg = TrainerConfig(
        max_epochs=20,
        batch_size=32,
        lr=0.01,
        precision="fp16",
        device="cuda",
        num_workers=0,
        run_dir=tmp_path,
        progress_bar=False,
        tensorboard=False,
    )
    trainer = Trainer(_model(), loss=nn.MSELoss(), config=cfg, forward=_recording_forward(dtypes))
    history = trainer.fit(_data(), _data(64))
    assert isinstance(trainer._scaler, torch.amp.GradScaler)
    assert (torch.float16, "cuda") in dtypes  # the forward ran under fp16 autocast
    assert history["val_loss"][-1] < 0.1 * history["val_loss"][0]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["scaler"]["scale"] > 0


@pytest.mark.cuda
@cuda
def test_bf16_autocast_runs_without_a_scaler():
    dtypes: list = []
    cfg = TrainerConfig(
        max_epochs=2,
        batch_size=32,
        precision="bf16",
        device="cuda",
        num_workers=0,
        progress_bar=False,
    )
    trainer = Trainer(_model(), loss=nn.MSELoss(), config=cfg, forward=_recording_forward(dtypes))
    trainer.fit(_data())
    assert trainer._scaler is None
    assert (torch.bfloat16, "cuda") in dtypes


@pytest.mark.cuda
@cuda
def test_auto_precision_is_mixed_for_float32_and_full_for_float64_models():
    cfg = TrainerConfig(
        max_epochs=1, batch_size=64, device="cuda", num_workers=0, progress_bar=False
    )
    float32 = Trainer(_model(), loss=nn.MSELoss(), config=cfg)
    float32.fit(_data())
    assert float32.precision in {"bf16", "fp16"}
    float64 = Trainer(_model().double(), loss=nn.MSELoss(), config=cfg)
    data = TensorDataset(*(t.double() for t in _data().tensors))
    float64.fit(data)
    assert float64.precision == "32"


class _Rows(torch.utils.data.Dataset):
    """A generic dataset (per-sample fetching)."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data[i]


@pytest.mark.cuda
@cuda
def test_loaders_pin_memory_and_use_workers_on_cuda():
    dtypes: list = []
    cfg = TrainerConfig(
        max_epochs=1, batch_size=64, device="cuda", precision="32", progress_bar=False
    )
    trainer = Trainer(_model(), loss=nn.MSELoss(), config=cfg, forward=_recording_forward(dtypes))
    trainer.fit(_Rows(_data()))
    loader = trainer._train.loader
    assert loader.pin_memory and loader.num_workers == 2
    assert {device for _, device in dtypes} == {"cuda"}
    trainer.fit(_data())  # tensor-backed: pinned, fetched in the main process
    loader = trainer._train.loader
    assert loader.pin_memory and loader.num_workers == 0


@pytest.mark.cuda
@cuda
def test_tensor_data_already_on_the_gpu_trains_unpinned():
    # DataLoader(pin_memory=True) raised "cannot pin 'torch.cuda.FloatTensor'" on such batches
    cfg = TrainerConfig(
        max_epochs=3, batch_size=32, device="cuda", precision="32", progress_bar=False
    )
    train, val = (TensorDataset(*(t.cuda() for t in d.tensors)) for d in (_data(), _data(64)))
    trainer = Trainer(_model(), loss=nn.MSELoss(), config=cfg)
    history = trainer.fit(train, Subset(val, range(48)))
    assert not trainer._train.loader.pin_memory
    assert history["val_loss"][-1] < history["val_loss"][0]


def test_loader_pins_cpu_tensor_data_for_cuda_but_not_data_held_on_a_device():
    # A CUDA trainer is emulated by its device attribute, a GPU-resident dataset by meta
    # tensors: pin_memory=True raises on a CUDA tensor.
    trainer = Trainer(_model(), loss=nn.MSELoss(), config=TrainerConfig(device="cpu"))
    trainer.device = torch.device("cuda")
    on_device = TensorDataset(torch.zeros(8, 3, device="meta"), torch.zeros(8, 1, device="meta"))
    assert trainer._loader_kwargs(_data(8))["pin_memory"]
    assert not trainer._loader_kwargs(on_device)["pin_memory"]
    assert not trainer._loader_kwargs(Subset(on_device, [0, 2]))["pin_memory"]
    assert not trainer._loader_kwargs(torch.zeros(8, 3, device="meta"))["pin_memory"]


def test_fp16_is_refused_off_cuda():
    cfg = TrainerConfig(precision="fp16", device="cpu", progress_bar=False)
    with pytest.raises(ValueError, match=r"fp16.*CUDA"):
        Trainer(_model(), loss=nn.MSELoss(), config=cfg).evaluate(_data(8))


def test_auto_precision_stays_off_on_cpu():
    trainer = Trainer(_model(), loss=nn.MSELoss(), config=TrainerConfig(device="cpu"))
    trainer.evaluate(_data(8))
    assert trainer.precision == "32" and trainer._scaler is None


def test_bf16_autocast_plumbing_runs_on_cpu():
    dtypes: list = []
    cfg = TrainerConfig(
        max_epochs=2, batch_size=64, precision="bf16", device="cpu", progress_bar=False
    )
    trainer = Trainer(_model(), loss=nn.MSELoss(), config=cfg, forward=_recording_forward(dtypes))
    history = trainer.fit(_data())
    assert (torch.bfloat16, "cpu") in dtypes
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_grad_scaler_path_unscales_before_normalising_and_clipping(tmp_path):
    # The CPU GradScaler stands in for the CUDA one: scaling by a power of two is exact, so the
    # scaled run must equal the plain one (up to float rounding of the clipping coefficient).
    def run(scaler):
        cfg = TrainerConfig(
            max_epochs=2,
            batch_size=32,
            accumulate_grad_batches=2,
            clip_grad_norm=0.5,
            device="cpu",
            precision="32",
            run_dir=tmp_path / str(scaler is None),
            progress_bar=False,
            tensorboard=False,
        )
        model = _model().double()
        data = TensorDataset(*(t.double() for t in _data(200).tensors))
        trainer = Trainer(model, loss=nn.MSELoss(), config=cfg)
        trainer._setup_runtime()
        trainer._scaler = scaler
        trainer.fit(data)
        return model, trainer

    plain, _ = run(None)
    scaled, trainer = run(torch.amp.GradScaler("cpu", init_scale=2.0**10))
    for a, b in zip(plain.parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    state = load_checkpoint(trainer.run_dir / "checkpoints" / "last.pt")
    assert state["scaler"]["scale"] == 2.0**10
