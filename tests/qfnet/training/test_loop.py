"""The loop itself: modes, no_grad validation, custom forward, metrics, splits, seeds, devices."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from qfnet.training import (
    LRMonitor,
    Trainer,
    TrainerConfig,
    resolve_device,
    seed_everything,
    split_dataset,
)


class _Probe(nn.Module):
    """Records (training flag, grad enabled) at every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1).double()
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.linear(x)


def test_train_mode_with_gradients_and_eval_mode_without_during_validation(regression, sq_error):
    data = regression(n=16)
    probe = _Probe()
    cfg = TrainerConfig(max_epochs=2, batch_size=8, eval_batch_size=16, progress_bar=False)
    Trainer(probe, loss=sq_error, config=cfg).fit(data, data)
    # per epoch: 2 training batches, then 1 validation batch
    assert probe.calls == [(True, True), (True, True), (False, False)] * 2


def test_a_submodule_put_in_eval_mode_stays_in_it_through_the_epochs(regression, sq_error):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5),
                          nn.Linear(8, 1)).double()  # fmt: skip
    model[1].eval()  # fine-tuning: the BatchNorm keeps its running statistics
    stats, weight = model[1].running_mean.clone(), model[0].weight.detach().clone()
    modes = [m.training for m in model.modules()]
    data = regression(n=32)
    cfg = TrainerConfig(max_epochs=2, batch_size=8, progress_bar=False)
    Trainer(model, loss=sq_error, config=cfg).fit(data, data)
    # a blanket .train() at every epoch's start put it back in train mode: its statistics moved
    assert torch.equal(model[1].running_mean, stats)
    assert [m.training for m in model.modules()] == modes
    assert not torch.equal(model[0].weight, weight)


def test_a_model_wholly_in_eval_mode_trains_in_train_mode(regression, sq_error):
    data = regression(n=16)
    probe = _Probe().eval()  # as loaded for inference
    cfg = TrainerConfig(max_epochs=1, batch_size=8, eval_batch_size=16, progress_bar=False)
    Trainer(probe, loss=sq_error, config=cfg).fit(data, data)
    assert probe.calls == [(True, True), (True, True), (False, False)]


def test_evaluate_leaves_each_module_in_the_mode_it_found_it(regression, mlp, sq_error):
    model = mlp(dropout=0.5)
    trainer = Trainer(model, loss=sq_error, config=TrainerConfig(progress_bar=False))
    x = regression(n=16).tensors[0]
    model.eval()
    before = model(x)
    trainer.evaluate(regression(n=16))
    assert not any(m.training for m in model.modules())
    assert torch.equal(model(x), before)  # no dropout at inference after an evaluation
    model.train()
    model[2].eval()  # a frozen dropout layer stays frozen
    trainer.evaluate(regression(n=16))
    assert [m.training for m in model.modules()] == [True, True, True, False, True]


def test_fit_learns_a_linear_map_on_any_device(regression, sq_error, device):
    data = regression(n=256)
    model = nn.Linear(3, 1).double()
    cfg = TrainerConfig(
        max_epochs=40, batch_size=32, lr=0.05, device=str(device), progress_bar=False
    )
    history = Trainer(model, loss=sq_error, config=cfg).fit(data)
    assert model.weight.device.type == device.type
    expected = torch.linspace(-1.0, 2.0, 3, dtype=torch.float64)
    torch.testing.assert_close(model.weight.detach().cpu().squeeze(0), expected, rtol=0, atol=0.05)
    assert history["train_loss"][-1] < 0.05 * history["train_loss"][0]


def test_evaluate_returns_weighted_means_of_loss_and_metrics(regression, mlp, sq_error):
    data = regression(n=20, weighted=True)
    model = mlp()
    trainer = Trainer(
        model,
        loss=sq_error,
        config=TrainerConfig(eval_batch_size=6, progress_bar=False),
        metrics={"mae": lambda out, y: (out - y).abs(), "bias": lambda out, y: (out - y).mean()},
    )
    results = trainer.evaluate(data)
    x, y, w = data.tensors
    with torch.no_grad():
        err = (model(x) - y).squeeze(-1)
    assert results["loss"] == pytest.approx(((err**2 * w).sum() / w.sum()).item(), rel=1e-12)
    assert results["mae"] == pytest.approx(((err.abs() * w).sum() / w.sum()).item(), rel=1e-12)
    # a scalar metric counts as the mean of its batch, weighted by the batch's total weight
    batch_means = [(err[i : i + 6].mean(), w[i : i + 6].sum()) for i in range(0, 20, 6)]
    expected_bias = sum(m * s for m, s in batch_means) / w.sum()
    assert results["bias"] == pytest.approx(expected_bias.item(), rel=1e-12)
    assert set(results) == {"loss", "mae", "bias"}


class _HedgeModel(nn.Module):
    """A toy hedging policy plus the learnable VaR level of the expected-shortfall loss."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = nn.Linear(1, 1).double()
        self.var = nn.Parameter(torch.zeros((), dtype=torch.float64))


def _hedge_forward(model: _HedgeModel, paths: torch.Tensor):
    """P&L of a short call hedged with the policy's holdings. Shape: (N, T+1) -> (N,)."""
    log_moneyness = torch.log(paths[:, :-1]).unsqueeze(-1)  # (N, T, 1)
    holdings = model.policy(log_moneyness).squeeze(-1)  # (N, T)
    gains = (holdings * paths.diff(dim=1)).sum(dim=1)  # (N,)
    payoff = (paths[:, -1] - 1.0).clamp(min=0.0)
    return gains - payoff, None, None


def _expected_shortfall(model: _HedgeModel):
    def loss(pnl: torch.Tensor, target: None) -> torch.Tensor:
        assert target is None
        return model.var + (-pnl - model.var).clamp(min=0).mean() / 0.05  # Rockafellar-Uryasev

    return loss


def test_custom_forward_trains_a_hedge_on_path_tensors_with_learnable_loss_parameters():
    g = torch.Generator().manual_seed(0)
    steps = torch.randn(512, 10, generator=g, dtype=torch.float64) * 0.2 / 10**0.5
    paths = torch.cat([torch.zeros(512, 1, dtype=torch.float64), steps.cumsum(1)], dim=1).exp()
    model = _HedgeModel()
    seen = []

    def forward(m, batch):
        seen.append((type(m), type(batch), batch.shape))
        return _hedge_forward(m, batch)

    cfg = TrainerConfig(
        max_epochs=15, batch_size=128, eval_batch_size=512, lr=0.02, progress_bar=False
    )
    trainer = Trainer(
        model,
        loss=_expected_shortfall(model),
        config=cfg,
        forward=forward,
        metrics={"mean_pnl": lambda pnl, target: pnl},
    )
    before = trainer.evaluate(paths)["loss"]
    history = trainer.fit(paths, paths)  # a plain tensor of paths is the dataset
    assert (_HedgeModel, torch.Tensor, (128, 11)) in seen  # raw model, training batches
    assert history["val_loss"][-1] < 0.7 * before
    assert model.var.item() != 0.0  # the loss parameter was trained too
    assert model.policy.weight.grad is not None


def test_user_dataloader_is_used_as_given(regression, mlp, sq_error):
    data = regression(n=24)
    loader = DataLoader(data, batch_size=6, shuffle=False)
    cfg = TrainerConfig(max_epochs=2, batch_size=999, progress_bar=False)
    trainer = Trainer(mlp(), loss=sq_error, config=cfg)
    trainer.fit(loader, loader)
    assert trainer.global_step == 8


class _Stream(IterableDataset):
    """The samples of ``data`` one by one, without a length (a streaming source)."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __iter__(self):
        return (self.data[i] for i in range(len(self.data)))


def test_a_dataloader_over_an_iterable_dataset_validates_and_evaluates(regression, mlp, sq_error):
    data = regression(n=24)
    stream = DataLoader(_Stream(data), batch_size=6)  # len(stream) raises TypeError
    cfg = TrainerConfig(max_epochs=2, batch_size=6, progress_bar=False)
    trainer = Trainer(mlp(), loss=sq_error, config=cfg)
    history = trainer.fit(stream, stream)
    expected = trainer.evaluate(data)["loss"]
    assert trainer.global_step == 8
    assert trainer.evaluate(stream)["loss"] == pytest.approx(expected, rel=1e-12)
    assert history["val_loss"][-1] == pytest.approx(expected, rel=1e-12)


def test_an_iterable_dataset_passed_itself_is_refused_naming_the_argument(
    regression, mlp, sq_error
):
    trainer = Trainer(mlp(), loss=sq_error, config=TrainerConfig(progress_bar=False))
    stream = _Stream(regression(n=8))
    with pytest.raises(TypeError, match=r"train_data: an IterableDataset \(_Stream\).*DataLoader"):
        trainer.fit(stream)
    with pytest.raises(TypeError, match=r"val_data: an IterableDataset"):
        trainer.fit(regression(n=8), stream)


def test_bad_batch_layout_names_the_fix(mlp, sq_error):
    data = TensorDataset(torch.ones(8, 3, dtype=torch.float64))  # inputs only
    trainer = Trainer(mlp(), loss=sq_error, config=TrainerConfig(batch_size=4, progress_bar=False))
    with pytest.raises(ValueError, match=r"\(inputs, target\).*forward=fn"):
        trainer.fit(data)


def test_weights_that_do_not_match_the_batch_are_reported(mlp, sq_error):
    x = torch.ones(8, 3, dtype=torch.float64)
    bad = TensorDataset(
        x, torch.ones(8, 1, dtype=torch.float64), torch.ones(8, 2, dtype=torch.float64)
    )
    trainer = Trainer(mlp(), loss=sq_error, config=TrainerConfig(batch_size=4, progress_bar=False))
    with pytest.raises(ValueError, match="4 per-sample values but 8 sample weights"):
        trainer.fit(bad)


def test_split_dataset_is_a_seeded_disjoint_cover():
    data = torch.arange(101.0)
    train, val, test = split_dataset(data, [0.7, 0.2, 0.1], seed=3)
    assert (len(train), len(val), len(test)) == (71, 20, 10)
    indices = train.indices + val.indices + test.indices
    assert sorted(indices) == list(range(101))
    assert split_dataset(data, [0.7, 0.2, 0.1], seed=3)[0].indices == train.indices
    assert split_dataset(data, [0.7, 0.2, 0.1], seed=4)[0].indices != train.indices
    with pytest.raises(ValueError, match="sum to 1"):
        split_dataset(data, [0.5, 0.2])
    with pytest.raises(ValueError, match="non-negative"):
        split_dataset(data, [1.2, -0.2])


def test_one_seed_makes_runs_identical_and_another_seed_changes_the_order(
    regression, mlp, sq_error
):
    data = regression(n=32)

    def run(seed):
        model = mlp(dropout=0.3)
        cfg = TrainerConfig(max_epochs=2, batch_size=8, seed=seed, progress_bar=False)
        Trainer(model, loss=sq_error, config=cfg).fit(data)
        return torch.cat([p.flatten() for p in model.parameters()])

    first, again, other = run(1), run(1), run(2)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other, rtol=0, atol=1e-6)


def test_seed_everything_seeds_python_numpy_and_torch():
    import random

    import numpy as np

    seed_everything(5)
    a = (random.random(), np.random.random(), torch.rand(1).item())  # noqa: NPY002
    seed_everything(5)
    assert a == (random.random(), np.random.random(), torch.rand(1).item())  # noqa: NPY002


def test_deterministic_mode_holds_during_fit_and_evaluate_only(regression, mlp, sq_error):
    seen: list[bool] = []

    class Probe:
        def on_train_step_end(self, trainer, *args):
            seen.append(torch.are_deterministic_algorithms_enabled())

    cfg = TrainerConfig(max_epochs=1, batch_size=8, deterministic=True, progress_bar=False)
    assert not torch.are_deterministic_algorithms_enabled()
    trainer = Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[Probe()])
    trainer.fit(regression(n=16))
    assert seen and all(seen)
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is back
    trainer.evaluate(regression(n=16))
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("before", [None, ":16:8"])
def test_deterministic_mode_restores_the_cublas_environment_variable(
    regression, mlp, sq_error, monkeypatch, before
):
    if before is None:
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    else:
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", before)
    seen: list[str | None] = []

    class Probe:
        def on_train_step_end(self, trainer, *args):
            seen.append(os.environ.get("CUBLAS_WORKSPACE_CONFIG"))

    cfg = TrainerConfig(max_epochs=1, batch_size=8, deterministic=True, progress_bar=False)
    trainer = Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[Probe()])
    trainer.fit(regression(n=16))
    assert set(seen) == {before or ":4096:8"}  # set for cuBLAS during fit
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == before  # it stayed set after fit
    trainer.evaluate(regression(n=16))
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == before


def test_compile_flag_wraps_the_model_and_still_trains(regression, mlp, sq_error):
    model = mlp()
    cfg = TrainerConfig(
        max_epochs=2, batch_size=16, compile=True, compile_backend="eager", progress_bar=False
    )
    trainer = Trainer(model, loss=sq_error, config=cfg)
    history = trainer.fit(regression(n=32))
    assert type(trainer._module.model).__name__ == "OptimizedModule"
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert "_orig_mod" not in "".join(trainer.state_dict()["model"])


def test_resolve_device_by_name_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    assert resolve_device("auto").type in {expected, "mps", "cpu"} - {None}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("name", ["meta", "xpu"])
def test_resolve_device_refuses_device_types_the_trainer_does_not_run_on(name):
    with pytest.raises(ValueError, match=f"'{name}' is not one the Trainer runs on"):
        resolve_device(name)


def test_auto_device_trains_a_float64_model_on_the_cpu_rather_than_mps(
    monkeypatch, regression, mlp, sq_error
):
    # MPS has no float64: on a Mac "auto" moved a float64 model there, and model.to raised
    import qfnet.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "resolve_device", lambda name="auto": torch.device("mps"))
    cfg = TrainerConfig(max_epochs=2, batch_size=16, progress_bar=False)
    trainer = Trainer(mlp(), loss=sq_error, config=cfg)
    history = trainer.fit(regression(n=32))
    assert trainer.device == torch.device("cpu") and len(history) == 2
    explicit = Trainer(mlp(), loss=sq_error, config=TrainerConfig(device="mps"))
    with pytest.raises(ValueError, match=r"'mps' has no float64.*tensor '0\.weight' is float64"):
        explicit.evaluate(regression(n=8))


def test_losses_and_metrics_are_summed_in_float64_except_on_mps():
    from qfnet.training.device import accumulation_dtype

    assert accumulation_dtype(torch.device("cpu")) == torch.float64
    assert accumulation_dtype(torch.device("cuda", 0)) == torch.float64
    assert accumulation_dtype(torch.device("mps")) == torch.float32  # MPS has no float64


def test_a_local_rank_beyond_the_visible_gpus_is_a_clear_error(monkeypatch):
    # torchrun --nproc-per-node 2 on a one-GPU machine: rank 1 must not get "invalid ordinal"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match=r"cuda:1 requested \(LOCAL_RANK=1\).*only 1 CUDA"):
        resolve_device("auto")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("auto") == torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("optimizer", "lbfgs"),
        ("scheduler", "cyclic"),
        ("lr", float("nan")),
        ("precision", "fp8"),
        ("accumulate_grad_batches", 0),
        ("clip_grad_norm", -1.0),
        ("clip_grad_norm", True),  # was a norm of 1.0
        ("clip_grad_value", "1.0"),  # was a TypeError from math.isfinite
        ("betas", (0.9,)),
        ("betas", (0.9, 1.5)),
        ("momentum", 2.0),  # was taken (torch refuses only < 0): the weights overflowed
        ("momentum", 1.0),
        ("momentum", "0.9"),
        ("seed", 1.5),
        ("seed", -1),
        ("seed", 2**32),
        ("shuffle", "false"),  # was true: any string shuffled
        ("nan_guard", "off"),  # was on
        ("progress_bar", None),
        ("betas", "ab"),  # was a float() error naming no field
        ("scheduler_kwargs", "step_size=2"),  # was dict()'s "dictionary update sequence"
        ("param_groups", "bias"),  # was one group per letter, an AttributeError in fit
        ("param_groups", ({"pattern": "bias", "rate": 0.1},)),
        ("scheduler_monitor", None),  # was an AttributeError inside fit
        ("run_dir", 5),  # was a TypeError from Path in Trainer()
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainerConfig.{field}"):
        TrainerConfig(**{field: value})


def test_config_takes_numpy_arrays_as_plain_lists():
    # .item() of a two-element array raised "can only convert an array of size 1"
    cfg = TrainerConfig(betas=np.array([0.9, 0.99]), scheduler="multistep",
                        scheduler_kwargs={"milestones": np.array([2, 4])})  # fmt: skip
    assert cfg.betas == (0.9, 0.99)
    assert cfg.scheduler_kwargs == {"milestones": [2, 4]}


_COUNTS = ("max_epochs", "batch_size", "accumulate_grad_batches", "log_every_n_steps",
           "val_every_n_epochs", "eval_batch_size", "checkpoint_every_n_steps", "warmup_steps",
           "seed", "num_workers")  # fmt: skip


@pytest.mark.parametrize("field", _COUNTS)
def test_config_counts_take_numpy_integers_as_python_ints(field):
    # pricing._validation.check_positive_int's rule: numpy integers are counts, bools and
    # floats are not (json.dumps of config.json fails on a numpy integer)
    cfg = TrainerConfig(**{field: np.int64(3)})
    assert getattr(cfg, field) == 3 and type(getattr(cfg, field)) is int
    for bad in (np.True_, np.float64(3.0), 3.0):
        with pytest.raises(ValueError, match=f"TrainerConfig.{field} must be"):
            TrainerConfig(**{field: bad})


@pytest.mark.parametrize(("field", "value"), [("lr", "0.1"), ("weight_decay", math.inf)])
def test_param_group_numbers_are_checked_naming_the_field(field, value):
    # lr="0.1" was a TypeError from math.isfinite naming nothing; an infinite decay was taken
    with pytest.raises(ValueError, match=f"ParamGroup.{field} must be"):
        TrainerConfig(param_groups=({"pattern": "bias", field: value},))


def test_config_round_trips_through_a_dict():
    cfg = TrainerConfig(max_epochs=3, param_groups=({"pattern": "bias", "lr": 0.1},), run_dir="r")
    assert TrainerConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="unknown field"):
        TrainerConfig.from_dict({"epochs": 3})


def test_config_is_read_back_from_a_run_config_json(regression, mlp, sq_error, tmp_path):
    cfg = TrainerConfig(max_epochs=1, batch_size=8, scheduler="multistep", run_dir=tmp_path,
                        scheduler_kwargs={"milestones": (1, 2)}, param_groups=({"pattern": "bias",
                        "lr": 0.1},), progress_bar=False, tensorboard=False)  # fmt: skip
    Trainer(mlp(), loss=sq_error, config=cfg).fit(regression(n=16))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["runtime"]["world_size"] == 1
    assert TrainerConfig.from_dict(saved).to_dict() == cfg.to_dict()


class _Rows(torch.utils.data.Dataset):
    """A generic (not tensor-backed) dataset: per-sample fetching and default collation."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data[i]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("generic", [True, False])
def test_training_batches_follow_distributed_sampler_order_and_resume_position(
    regression, shuffle, drop_last, generic
):
    from torch.utils.data import BatchSampler, DistributedSampler

    from qfnet.training.data import TrainLoader

    data = regression(n=23)
    source = _Rows(data) if generic else split_dataset(data, [1.0], seed=0)[0]
    loader = TrainLoader(
        source,
        batch_size=4,
        shuffle=shuffle,
        drop_last=drop_last,
        seed=9,
        rank=1,
        world_size=2,
        loader_kwargs={"num_workers": 0, "pin_memory": False},
    )
    sampler = DistributedSampler(source, num_replicas=2, rank=1, shuffle=shuffle, seed=9)
    sampler.set_epoch(3)
    reference = DataLoader(source, batch_sampler=BatchSampler(sampler, 4, drop_last))
    expected = list(reference)
    got = list(loader.epoch_iter(3))
    assert len(got) == len(expected) == len(loader)
    for a, b in zip(got, expected, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    resumed = list(loader.epoch_iter(3, start_batch=2))
    assert len(resumed) == len(expected) - 2
    assert torch.equal(resumed[0][0], expected[2][0])


def test_epoch_order_is_exactly_the_distributed_sampler_order():
    from torch.utils.data import DistributedSampler

    from qfnet.training.data import _epoch_order

    for n in (1, 5, 23):
        for world in (1, 2, 3, 8):
            for rank in range(world):
                for shuffle in (True, False):
                    for drop_last in (True, False):
                        sampler = DistributedSampler(
                            range(n),
                            num_replicas=world,
                            rank=rank,
                            shuffle=shuffle,
                            seed=3,
                            drop_last=drop_last,
                        )
                        sampler.set_epoch(2)
                        assert _epoch_order(sampler).tolist() == list(sampler)


def test_a_user_loader_with_a_distributed_batch_sampler_is_reshuffled_every_epoch(regression):
    # DataLoader(batch_sampler=BatchSampler(DistributedSampler(...))): only loader.sampler (a
    # default SequentialSampler here) got set_epoch, so every epoch repeated epoch 0's order.
    from torch.utils.data import BatchSampler, DistributedSampler

    from qfnet.training.data import TrainLoader

    data = regression(n=32)
    sampler = DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=4)
    user = DataLoader(data, batch_sampler=BatchSampler(sampler, 4, drop_last=False))
    loader = TrainLoader(user, batch_size=4, shuffle=True, drop_last=False, seed=0, rank=1,
                         world_size=2, loader_kwargs={})  # fmt: skip
    for epoch in (0, 1, 2):
        sampler.set_epoch(epoch)
        expected = [i for batch in BatchSampler(sampler, 4, drop_last=False) for i in batch]
        sampler.set_epoch(0)  # the loader, not this test, must set the epoch
        got = torch.cat([x for x, _ in loader.epoch_iter(epoch)])
        assert torch.equal(got, data.tensors[0][expected]), f"epoch {epoch}"


def test_empty_training_data_is_reported(mlp, sq_error):
    empty = TensorDataset(
        torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, 1, dtype=torch.float64)
    )
    trainer = Trainer(mlp(), loss=sq_error, config=TrainerConfig(progress_bar=False))
    with pytest.raises(ValueError, match="train_data: no training batch"):
        trainer.fit(empty)


class _LearnedScaleLoss(nn.Module):
    """Gaussian negative log-likelihood with a learnable log standard deviation."""

    def __init__(self) -> None:
        super().__init__()
        self.log_sigma = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (
            (output - target) ** 2 / (2 * torch.exp(2 * self.log_sigma)) + self.log_sigma
        ).mean()


def test_loss_module_parameters_are_trained_and_checkpointed(regression, mlp, tmp_path):
    from qfnet.training import load_checkpoint

    loss = _LearnedScaleLoss()
    cfg = TrainerConfig(
        max_epochs=3,
        batch_size=16,
        lr=0.05,
        run_dir=tmp_path,
        progress_bar=False,
        tensorboard=False,
    )
    Trainer(mlp(), loss=loss, config=cfg).fit(regression(n=64))
    assert loss.log_sigma.item() != 0.0
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["loss"]["log_sigma"]
    assert torch.equal(saved, loss.log_sigma.detach())


def test_state_after_fit_points_at_the_next_epoch_not_beyond():
    from qfnet.training.state import trainer_state

    x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    trainer = Trainer(
        torch.nn.Linear(3, 1).double(),
        loss=torch.nn.functional.mse_loss,
        config=TrainerConfig(
            max_epochs=2, batch_size=16, optimizer="sgd", lr=0.1, progress_bar=False
        ),
    )
    trainer.fit(TensorDataset(x, x.sum(1, keepdim=True)))
    assert trainer_state(trainer)["loop"]["epoch"] == 2


def test_misused_names_losses_and_data_are_clear_errors(regression, mlp, sq_error):
    cfg = TrainerConfig(max_epochs=1, batch_size=8, progress_bar=False)
    with pytest.raises(
        ValueError, match=r"metrics: the name\(s\) \['loss'\] are the Trainer's own"
    ):
        Trainer(mlp(), loss=sq_error, config=cfg, metrics={"loss": lambda o, y: (o - y).abs()})
    scalar = Trainer(mlp(), loss=lambda o, y: float(((o - y) ** 2).mean().detach()), config=cfg)
    with pytest.raises(TypeError, match="loss: expected a tensor, got float"):
        scalar.fit(regression(n=16))
    small = Trainer(mlp(), loss=sq_error, config=TrainerConfig(batch_size=32, drop_last=True,
                                                              progress_bar=False))  # fmt: skip
    with pytest.raises(ValueError, match=r"from 16 samples \(batch_size=32, drop_last=True"):
        small.fit(regression(n=16))
    empty = TensorDataset(
        torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, 1, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="validation/test data is empty"):
        Trainer(mlp(), loss=sq_error, config=cfg).fit(regression(n=16), empty)
    with pytest.raises(ValueError, match="the model has no float32 parameters"):
        Trainer(mlp(), loss=sq_error, config=TrainerConfig(precision="bf16", progress_bar=False)
                ).fit(regression(n=16))  # fmt: skip


def test_boolean_per_sample_metrics_average_as_fractions(regression, mlp, sq_error):
    data = regression(n=40)
    accuracy = {"hit": lambda o, y: (o > 0) == (y > 0)}  # bool, shape (N, 1)
    result = Trainer(mlp(), loss=sq_error, metrics=accuracy,
                     config=TrainerConfig(progress_bar=False)).evaluate(data)  # fmt: skip
    model = mlp()
    with torch.no_grad():
        expected = ((model(data.tensors[0]) > 0) == (data.tensors[1] > 0)).double().mean()
    assert result["hit"] == pytest.approx(float(expected), abs=1e-15)


class _MapStyle(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


def test_validation_leaves_the_training_randomness_alone(regression, mlp, sq_error):
    # A map-style validation set goes through a DataLoader; its iterator used to draw from the
    # global RNG and shift the dropout masks of every later epoch.
    train, val = regression(n=48), regression(n=24, seed=1)
    cfg = TrainerConfig(max_epochs=3, batch_size=8, progress_bar=False, seed=5)
    weights = []
    for validation in (val, _MapStyle(val)):
        model = mlp(dropout=0.3, seed=2)
        Trainer(model, loss=sq_error, config=cfg).fit(train, validation)
        weights.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*weights, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_plateau_watches_the_loss_in_min_mode_whatever_the_monitor_mode():
    from qfnet.training.schedulers import build_scheduler

    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    cfg = TrainerConfig(scheduler="plateau", monitor="val_acc", monitor_mode="max")
    assert build_scheduler(opt, cfg, 10)[0].mode == "min"  # scheduler_monitor is val_loss
    same = TrainerConfig(scheduler="plateau", monitor="val_acc", monitor_mode="max",
                         scheduler_monitor="val_acc")  # fmt: skip
    assert build_scheduler(opt, same, 10)[0].mode == "max"


def test_a_step_of_zero_weight_samples_is_named_as_such(mlp):
    # its weighted mean loss is 0/0: the error said "non-finite loss nan", as for a diverging
    # model, without the cause
    from qfnet.training import NonFiniteLossError

    x = torch.linspace(-1.0, 1.0, 16, dtype=torch.float64).unsqueeze(1).expand(16, 3)
    weight = torch.ones(16, dtype=torch.float64)
    weight[8:] = 0.0  # the second batch has no weight
    data = TensorDataset(x, x[:, :1], weight)
    cfg = TrainerConfig(max_epochs=1, batch_size=8, shuffle=False, progress_bar=False)
    per_sample = lambda output, target: ((output - target) ** 2).squeeze(-1)  # noqa: E731
    trainer = Trainer(mlp(), loss=per_sample, config=cfg)
    with pytest.raises(NonFiniteLossError, match=r"sample weights sum to 0.*step 1 of the epoch"):
        trainer.fit(data)


@pytest.mark.parametrize("loss_scaling", [False, True])
def test_a_step_of_zero_weight_samples_makes_no_update_without_the_nan_guard(
    regression, mlp, sq_error, loss_scaling
):
    # with nan_guard=False its gradients, divided by its weight 0, were NaN and went into the
    # weights (all NaN after it), where a micro-batch or a process of weight 0 adds nothing
    x, y, weight = regression(n=16, weighted=True).tensors
    weight = weight.clone()
    weight[:8] = 0.0  # the first of the two steps of each epoch has no weight

    def fit(data, nan_guard):
        cfg = TrainerConfig(max_epochs=3, batch_size=8, shuffle=False, nan_guard=nan_guard,
                            progress_bar=False)  # fmt: skip
        model = mlp()
        trainer = Trainer(model, loss=sq_error, config=cfg)
        if loss_scaling:  # a CPU GradScaler keeps the CUDA one's books (fp16 needs CUDA)
            trainer._setup_runtime()
            trainer._scaler = torch.amp.GradScaler("cpu")
        return model, trainer.fit(data)

    model, history = fit(TensorDataset(x, y, weight), nan_guard=False)
    alone, history_alone = fit(TensorDataset(x[8:], y[8:], weight[8:]), nan_guard=True)
    for got, want in zip(model.parameters(), alone.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0.0, atol=0.0)
    assert history["train_loss"] == pytest.approx(history_alone["train_loss"], rel=1e-15, abs=0.0)


def test_a_step_without_update_shows_no_nan_gradients_to_the_hook(regression, mlp, sq_error):
    # with nan_guard=False a step of zero-weight samples makes no update, but its NaN
    # gradients (divided by the weight 0) went to on_before_optimizer_step: now none, as for
    # a skipped step; the hook is still called (the learning rate is logged every step)
    x, y, weight = regression(n=16, weighted=True).tensors
    weight = weight.clone()
    weight[:8] = 0.0  # the first of the two steps of each epoch has no weight
    seen: list[list[torch.Tensor | None]] = []

    class Probe:
        def on_before_optimizer_step(self, trainer, optimizer) -> None:
            seen.append([p.grad for g in optimizer.param_groups for p in g["params"]])

    cfg = TrainerConfig(max_epochs=2, batch_size=8, shuffle=False, nan_guard=False,
                        progress_bar=False)  # fmt: skip
    monitor = LRMonitor()
    Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[Probe(), monitor]).fit(
        TensorDataset(x, y, weight)
    )
    assert len(seen) == 4
    for step, grads in enumerate(seen):
        if step % 2 == 0:
            assert all(g is None for g in grads)
        else:
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert [step for step, _ in monitor.history] == [0, 1, 2, 3]
