"""Early stopping, checkpoint callback, loggers, progress bar, loss plot and the LR finder."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from qfnet.training import (
    HOOKS,
    EarlyStopping,
    LRMonitor,
    ModelCheckpoint,
    NonFiniteLossError,
    ProgressBar,
    TensorBoardLogger,
    Trainer,
    TrainerConfig,
    load_checkpoint,
    lr_find,
    save_checkpoint,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Scripted:
    """A validation metric that returns a scripted value per epoch (one val batch per epoch)."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def __call__(self, output, target):
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return torch.full((output.shape[0],), value, dtype=output.dtype)


class _Snapshots:
    def __init__(self):
        self.weights = []

    def on_epoch_end(self, trainer):
        self.weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})


def _fit(regression, mlp, sq_error, *, callbacks, metric_values, epochs=10, **overrides):
    data = regression(n=32)
    cfg = TrainerConfig(
        max_epochs=epochs,
        batch_size=8,
        eval_batch_size=32,
        optimizer="sgd",
        lr=0.05,
        progress_bar=False,
        **overrides,
    )
    model = mlp()
    trainer = Trainer(
        model,
        loss=sq_error,
        config=cfg,
        callbacks=callbacks,
        metrics={"score": _Scripted(metric_values)},
    )
    return model, trainer, trainer.fit(data, data)


def test_early_stopping_stops_after_patience_and_restores_best_weights(regression, mlp, sq_error):
    snapshots = _Snapshots()
    stopper = EarlyStopping(monitor="val_score", patience=2, restore_best_weights=True)
    model, _, history = _fit(
        regression,
        mlp,
        sq_error,
        callbacks=[stopper, snapshots],
        metric_values=[5.0, 4.0, 3.0, 3.5, 3.6, 1.0, 0.5],
    )
    assert len(history) == 5  # best at epoch 2, two epochs without improvement
    assert stopper.best_epoch == 2 and stopper.stopped_epoch == 4
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots.weights[2][key])
    assert not torch.equal(snapshots.weights[2]["0.weight"], snapshots.weights[4]["0.weight"])


class _LearnedNoiseNLL(torch.nn.Module):
    """Gaussian negative log-likelihood per sample with a trained log-variance."""

    def __init__(self):
        super().__init__()
        self.log_var = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, output, target):
        return 0.5 * (self.log_var + (output - target) ** 2 / self.log_var.exp())


def test_restore_best_weights_restores_the_loss_parameters_of_the_best_epoch(regression, mlp):
    snapshots = _Snapshots()
    stopper = EarlyStopping(monitor="val_score", patience=2, restore_best_weights=True)
    loss = _LearnedNoiseNLL()
    cfg = TrainerConfig(max_epochs=10, batch_size=8, eval_batch_size=32, optimizer="sgd",
                        lr=0.05, progress_bar=False)  # fmt: skip
    trainer = Trainer(mlp(), loss=loss, config=cfg, callbacks=[stopper, snapshots],
                      metrics={"score": _Scripted([5.0, 4.0, 3.0, 3.5, 3.6])})  # fmt: skip
    log_vars = []
    snapshots.on_epoch_end = lambda t: log_vars.append(loss.log_var.detach().clone())
    trainer.fit(regression(n=32), regression(n=32, seed=1))
    assert stopper.best_epoch == 2 and len(log_vars) == 5
    assert not torch.equal(log_vars[2], log_vars[4])
    # the best epoch's loss parameter, not the last one's beside the best epoch's model
    assert torch.equal(loss.log_var.detach(), log_vars[2])


def test_early_stopping_min_delta_and_max_mode(regression, mlp, sq_error):
    stopper = EarlyStopping(monitor="val_score", mode="max", patience=1, min_delta=0.5)
    _, _, history = _fit(
        regression, mlp, sq_error, callbacks=[stopper], metric_values=[1.0, 2.0, 2.4, 5.0]
    )
    assert len(history) == 3  # +0.4 at epoch 2 is below min_delta
    assert stopper.best == 2.0


def test_a_non_finite_monitored_metric_stops_early_stopping_at_once_and_says_so(
    regression, mlp, sq_error
):
    # a NaN counted as one more epoch without improvement: the run waited out its patience
    # (5 epochs here) without a word
    stopper = EarlyStopping(monitor="val_score", patience=5)
    with pytest.warns(UserWarning, match="val_score is nan at epoch 2: training stopped"):
        _, _, history = _fit(regression, mlp, sq_error, callbacks=[stopper],
                             metric_values=[3.0, 2.0, math.nan, 1.0])  # fmt: skip
    assert len(history) == 3 and stopper.stopped_epoch == 2 and stopper.best == 2.0
    waiting = EarlyStopping(monitor="val_score", patience=2, check_finite=False)
    _, _, history = _fit(regression, mlp, sq_error, callbacks=[waiting],
                         metric_values=[3.0, math.nan, math.nan, math.nan])  # fmt: skip
    assert len(history) == 3 and waiting.stopped_epoch == 2


def test_early_stopping_unknown_metric_names_the_available_ones(regression, mlp, sq_error):
    with pytest.raises(KeyError, match=r"val_nope.*available"):
        _fit(
            regression,
            mlp,
            sq_error,
            callbacks=[EarlyStopping(monitor="val_nope")],
            metric_values=[1.0],
        )


def test_early_stopping_patience_counts_validations_not_epochs(regression, mlp, sq_error):
    stopper = EarlyStopping(monitor="val_score", patience=2)
    _, _, history = _fit(
        regression,
        mlp,
        sq_error,
        callbacks=[stopper],
        metric_values=[3.0, 2.0, 2.5, 2.6, 1.0],  # one value per validation: epochs 1, 3, 5, 7
        val_every_n_epochs=2,
    )
    # best at epoch 3, then two validations without improvement (epochs 5 and 7): four epochs
    assert stopper.best_epoch == 3 and stopper.stopped_epoch == 7
    assert len(history) == 8


@pytest.mark.parametrize(
    ("argument", "value"),
    [("patience", -1), ("patience", 1.5), ("min_delta", math.nan), ("check_finite", "no")],
)
def test_early_stopping_names_a_bad_argument(argument, value):
    with pytest.raises(ValueError, match=f"EarlyStopping.{argument}"):
        EarlyStopping(**{argument: value})


def test_model_checkpoint_writes_last_best_and_every_n_epochs(regression, mlp, sq_error, tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_score", every_n_epochs=2)
    _fit(
        regression,
        mlp,
        sq_error,
        callbacks=[checkpoint],
        epochs=5,
        metric_values=[3.0, 1.0, 2.0, 4.0, 5.0],
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pt", "epoch_0001.pt", "epoch_0003.pt", "last.pt"]
    assert load_checkpoint(tmp_path / "best.pt")["loop"]["epoch"] == 2  # after epoch 1
    assert load_checkpoint(tmp_path / "last.pt")["loop"]["epoch"] == 5


@pytest.mark.parametrize("every", [2, 4])  # a step checkpoint due at an epoch's end: 4 and 8
def test_every_n_steps_without_save_last_writes_the_steps_that_end_an_epoch(
    regression, mlp, sq_error, tmp_path, every
):
    # 32 samples in batches of 8: 4 steps per epoch. Left to on_epoch_end, which writes last.pt
    # only with save_last, the step checkpoints due at an epoch's last step were never written
    # (every_n_steps=4: no checkpoint at all, and a resume started the run afresh)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor=None, save_last=False,
                                 every_n_steps=every)  # fmt: skip
    _fit(regression, mlp, sq_error, callbacks=[checkpoint], epochs=2, metric_values=[1.0])
    state = load_checkpoint(tmp_path / "last.pt")  # every=2 ended at step 6, every=4 had none
    assert (state["loop"]["global_step"], state["loop"]["epoch"]) == (8, 2)


def test_a_new_run_stopped_before_its_first_checkpoint_leaves_none_of_the_replaced_run(
    regression, mlp, sq_error, tmp_path
):
    # the replaced run's last.pt stayed: fit(resume=True) continued it (its weights, its
    # history) in the folder whose metrics.csv and events the new run had already replaced
    class Crash(Exception):
        pass

    class CrashAtFirstStep:
        def on_train_step_end(self, trainer):
            raise Crash

    data = regression(n=32)

    def trainer(seed, *extra):
        config = _lr_config(run_dir=tmp_path / "run", seed=seed)
        checkpoints = ModelCheckpoint(dirpath=tmp_path / "run" / "checkpoints", every_n_epochs=1)
        return Trainer(mlp(seed=seed), loss=sq_error, config=config,
                       callbacks=[checkpoints, *extra])  # fmt: skip

    trainer(0).fit(data, data)
    assert (tmp_path / "run" / "checkpoints" / "epoch_0002.pt").is_file()
    killed = tmp_path / "run" / "checkpoints" / ".last.pt.k2j4x8.tmp"  # a write killed midway
    killed.write_bytes(b"PK\x03\x04")
    with pytest.raises(Crash):
        trainer(1, CrashAtFirstStep()).fit(data, data)
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []
    resumed = trainer(1)
    with pytest.warns(UserWarning, match="no checkpoint to resume"):
        history = resumed.fit(data, data, resume=True)  # nothing to resume: the new run afresh
    straight = trainer(1)
    expected = straight.fit(data, data)
    assert history.records[-1]["train_loss"] == expected.records[-1]["train_loss"]
    assert resumed.global_step == straight.global_step == 12


def test_a_new_run_stopped_before_its_end_leaves_no_loss_plot_of_the_replaced_run(
    regression, mlp, sq_error, tmp_path
):
    # loss.png is drawn at the end: a new run that crashed kept the replaced run's curves
    # beside its own metrics.csv, as if they were its own
    class Crash(Exception):
        pass

    class CrashInSecondEpoch:
        def on_train_step_end(self, trainer):
            if trainer.epoch == 1:
                raise Crash

    data = regression(n=32)
    config = _lr_config(run_dir=tmp_path, max_epochs=2)
    Trainer(mlp(), loss=sq_error, config=config).fit(data, data)
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(Crash):
        Trainer(mlp(), loss=sq_error, config=config, callbacks=[CrashInSecondEpoch()]).fit(data)
    assert not (tmp_path / "loss.png").exists()
    resumed = Trainer(mlp(), loss=sq_error, config=config)
    resumed.fit(data, resume=True)  # a resumed run draws the whole run at its end
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG_MAGIC


def test_an_interrupted_loss_plot_write_keeps_the_previous_plot(
    regression, mlp, sq_error, tmp_path, fill_the_disk
):
    # loss.png was written in place: a failure midway (a full disk) left it cut short
    data = regression(n=32)
    config = _lr_config(run_dir=tmp_path, max_epochs=2)
    Trainer(mlp(), loss=sq_error, config=config).fit(data)
    before = (tmp_path / "loss.png").read_bytes()

    fill_the_disk()
    with pytest.raises(OSError, match="No space left"):
        Trainer(mlp(), loss=sq_error, config=config).fit(data, resume=True)  # redraws at its end
    assert (tmp_path / "loss.png").read_bytes() == before
    assert not list(tmp_path.glob(".loss.png.*"))  # no temporary left


@pytest.mark.parametrize(
    ("loss", "label"),
    [(torch.nn.MSELoss(), "loss (MSELoss)"), (None, "loss (per_sample_mse)"),
     (lambda o, y: (o - y) ** 2, "loss")],
)  # fmt: skip
def test_the_loss_plot_names_the_loss_function(
    regression, mlp, sq_error, tmp_path, monkeypatch, loss, label
):
    # every plot's axis read "loss", whatever the loss measured
    from matplotlib.figure import Figure

    labels = []
    real = Figure.savefig

    def record(self, target, **kwargs):
        labels.append(self.axes[0].get_ylabel())
        return real(self, target, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    config = _lr_config(run_dir=tmp_path, max_epochs=1)
    Trainer(mlp(), loss=loss or sq_error, config=config).fit(regression(n=16))
    assert labels == [label]


def test_run_dir_gets_config_metrics_csv_tensorboard_checkpoints_and_plot(
    regression, mlp, sq_error, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = regression(n=32)
    cfg = TrainerConfig(
        max_epochs=3,
        batch_size=8,
        lr=0.01,
        run_dir=tmp_path,
        progress_bar=False,
        log_every_n_steps=5,
    )
    trainer = Trainer(mlp(), loss=sq_error, config=cfg, metrics={"mae": lambda o, y: (o - y).abs()})
    history = trainer.fit(data, data)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["batch_size"] == 8 and config["runtime"]["device"] == "cpu"
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert {"train_loss", "val_loss", "val_mae", "lr"} <= set(rows[0])
    assert float(rows[-1]["val_loss"]) == pytest.approx(history["val_loss"][-1], rel=1e-12)
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG_MAGIC
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"best.pt", "last.pt"}
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert len(events.Scalars("train/grad_norm")) == 12  # every step, not only every 5th
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 13))
    assert {"lr", "epoch/val_loss", "epoch/train_loss"} <= set(scalars)


class _HookSpy:
    """A callback that records the name of every hook called on it, in order (``calls``)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name):
        if name in HOOKS:
            return lambda trainer, *args: self.calls.append(name)
        raise AttributeError(name)


def test_hooks_are_called_in_the_documented_order(regression, mlp, sq_error):
    data = regression(n=16)
    cfg = TrainerConfig(max_epochs=1, batch_size=8, accumulate_grad_batches=2, progress_bar=False)
    spy = _HookSpy()
    Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[spy]).fit(data, data)
    assert spy.calls == [
        "on_fit_start",
        "on_train_epoch_start",
        "on_train_batch_start",
        "on_after_backward",
        "on_train_batch_start",
        "on_after_backward",
        "on_before_optimizer_step",
        "on_train_step_end",
        "on_train_epoch_end",
        "on_validation_start",
        "on_validation_end",
        "on_epoch_end",
        "on_fit_end",
        "on_teardown",
    ]


def test_callback_stops_training_with_the_flag(regression, mlp, sq_error):
    class StopAtStep3:
        def on_train_step_end(self, trainer):
            if trainer.global_step == 3:
                trainer.should_stop = True

    cfg = TrainerConfig(max_epochs=5, batch_size=8, progress_bar=False)
    trainer = Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[StopAtStep3()])
    trainer.fit(regression(n=32))
    assert trainer.global_step == 3


@pytest.mark.parametrize("stop_step", [3, 4])  # mid-epoch, the epoch's last of 4 steps
def test_a_stop_at_an_epochs_last_step_still_runs_that_epochs_end(
    regression, mlp, sq_error, stop_step
):
    class SpyStoppingAt(_HookSpy):
        def on_train_step_end(self, trainer):
            self.calls.append("on_train_step_end")
            trainer.should_stop = trainer.global_step == stop_step

    data = regression(n=32)
    cfg = TrainerConfig(max_epochs=3, batch_size=8, progress_bar=False)
    spy = SpyStoppingAt()
    trainer = Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[spy])
    history = trainer.fit(data, data)
    epoch_end = ["on_train_epoch_end", "on_validation_start", "on_validation_end", "on_epoch_end"]
    ended = epoch_end if stop_step == 4 else []
    assert spy.calls[-4 - len(ended) :] == [
        "on_train_step_end",
        *ended,
        "on_train_stop",
        "on_fit_end",
        "on_teardown",
    ]
    assert trainer.global_step == stop_step
    assert [r["epoch"] for r in history.records] == ([0] if stop_step == 4 else [])
    assert all("val_loss" in r for r in history.records)


def test_an_early_stopping_appended_to_the_callbacks_runs_before_the_checkpoint(
    regression, mlp, sq_error, tmp_path
):
    cfg = TrainerConfig(max_epochs=10, batch_size=8, eval_batch_size=32, optimizer="sgd",
                        lr=0.05, progress_bar=False, tensorboard=False, run_dir=tmp_path)  # fmt: skip
    metrics = {"score": _Scripted([5.0, 4.0, 3.0, 3.5, 3.6])}
    trainer = Trainer(mlp(), loss=sq_error, config=cfg, metrics=metrics)
    stopper = EarlyStopping(monitor="val_score", patience=2)
    trainer.callbacks.append(stopper)  # after the ModelCheckpoint the Trainer added
    data = regression(n=32)
    trainer.fit(data, data)
    assert stopper.stopped_epoch == 4 and trainer.callbacks[-1] is not stopper
    # the checkpoint of the epoch that stopped holds the stop and the used-up patience
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["callbacks"]["EarlyStopping"]
    assert saved["stopped_epoch"] == 4 and saved["wait"] == 2
    resumed = Trainer(mlp(), loss=sq_error, config=cfg, metrics=metrics,
                      callbacks=[EarlyStopping(monitor="val_score", patience=2)])  # fmt: skip
    with pytest.warns(UserWarning, match="stopped at epoch 4 .* and stays stopped"):
        resumed.fit(data, data, resume=True)
    assert resumed.global_step == trainer.global_step  # not one epoch more


def test_progress_bar_shows_the_running_loss(regression, mlp, sq_error, monkeypatch, capsys):
    import re

    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    cfg = TrainerConfig(max_epochs=1, batch_size=8)
    trainer = Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[ProgressBar(refresh_every=1)])
    history = trainer.fit(regression(n=32))
    err = capsys.readouterr().err
    assert "epoch 0" in err and "4/4" in err
    running = [float(v) for v in re.findall(r"[ ,]loss=([-+.\deE]+)", err)]
    # after the 4th of 4 equal batches the running mean is the epoch's training loss
    assert running[-1] == pytest.approx(history["train_loss"][-1], rel=1e-3)


def test_progress_bar_running_loss_leaves_out_a_step_of_zero_weight(
    regression, mlp, sq_error, monkeypatch, capsys
):
    # without the NaN guard a step whose samples all weigh 0 (its loss 0/0) makes no update,
    # and the bar's running loss was NaN for the rest of the epoch
    import re

    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    data = regression(n=32, weighted=True)
    data.tensors[2][8:16] = 0.0  # the second of four batches
    cfg = TrainerConfig(max_epochs=1, batch_size=8, shuffle=False, nan_guard=False)
    trainer = Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[ProgressBar(refresh_every=1)])
    history = trainer.fit(data)
    running = re.findall(r"[ ,]loss=([^,\]\s]+)", capsys.readouterr().err)
    assert len(running) == 4 and "nan" not in running
    # weighted by the steps' samples, as the epoch's training loss
    assert float(running[-1]) == pytest.approx(history["train_loss"][-1], rel=1e-3)


def test_lr_finder_suggests_a_rate_below_divergence_and_plots(regression, mlp, sq_error, tmp_path):
    data = regression(n=256)
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainerConfig(batch_size=16, optimizer="sgd", lr=0.1, progress_bar=False)
    trainer = Trainer(model, loss=sq_error, config=cfg)
    result = lr_find(
        trainer, data, min_lr=1e-5, max_lr=10.0, num_steps=80, plot_path=tmp_path / "lr.png"
    )
    assert (tmp_path / "lr.png").read_bytes()[:8] == PNG_MAGIC
    assert result.suggestion is not None
    assert result.lrs[0] == pytest.approx(1e-5) and result.lrs == sorted(result.lrs)
    # the suggestion lies where the loss falls, below the LR where it is lowest
    lowest = result.lrs[result.losses.index(min(result.losses))]
    assert 1e-4 < result.suggestion < lowest
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])  # the model is left as it was
    assert trainer.fit(data).records  # and the trainer still trains


def test_a_fit_after_lr_find_on_a_shuffling_dataloader_trains_as_one_without_it(
    regression, mlp, sq_error
):
    data = regression(n=64)
    cfg = TrainerConfig(max_epochs=2, batch_size=16, optimizer="sgd", lr=0.05,
                        progress_bar=False)  # fmt: skip
    weights = []
    for find_first in (True, False):
        loader = torch.utils.data.DataLoader(
            data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(5)
        )
        model = mlp()
        trainer = Trainer(model, loss=sq_error, config=cfg)
        if find_first:  # the sweep drew 3 epochs of orders from the loader's generator
            lr_find(trainer, loader, num_steps=10)
        trainer.fit(loader)
        weights.append(model.state_dict())
    for key, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][key], rtol=0, atol=0, msg=key)


def test_lr_find_after_a_fit_leaves_its_optimizer_scheduler_and_model_modes(
    regression, mlp, sq_error
):
    data = regression(n=64)
    cfg = TrainerConfig(max_epochs=2, batch_size=16, optimizer="adam", lr=0.01,
                        scheduler="cosine", progress_bar=False)  # fmt: skip
    model = mlp(dropout=0.1)
    trainer = Trainer(model, loss=sq_error, config=cfg)
    trainer.fit(data)
    optimizer, scheduler = trainer.optimizer, trainer.scheduler
    state = {k: v.clone() for k, v in optimizer.state[next(model.parameters())].items()}
    model.eval()
    lr_find(trainer, data, num_steps=10, max_lr=1.0)
    # the sweep's optimizer (its LR at the sweep's last rate) was left as trainer.optimizer
    assert trainer.optimizer is optimizer and trainer.scheduler is scheduler
    assert [g["lr"] for g in optimizer.param_groups] == [scheduler.get_last_lr()[0]]
    for key, value in optimizer.state[next(model.parameters())].items():
        assert torch.equal(value, state[key]), key
    assert not any(module.training for module in model.modules())  # left training before


def test_lr_find_restores_the_grad_scaler(regression, mlp, sq_error):
    # fp16 training holds a CUDA GradScaler; a CPU one keeps the same books (scale, growth)
    cfg = TrainerConfig(batch_size=16, optimizer="sgd", lr=0.01, progress_bar=False)
    trainer = Trainer(mlp(), loss=sq_error, config=cfg)
    trainer._setup_runtime()
    trainer._scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    before = trainer._scaler.state_dict()
    lr_find(trainer, regression(n=64), min_lr=1e-5, max_lr=1e-2, num_steps=20)
    assert trainer._scaler.state_dict() == before  # the sweep grew the scale to 2**16


def _breaks_down(output, target):
    """Mean squared error that turns NaN once it is large (as a log-likelihood can)."""
    mse = ((output - target) ** 2).mean()
    return mse if mse < 1e3 else mse * math.nan


def test_lr_finder_ends_at_a_nan_loss_the_same_with_or_without_the_nan_guard(regression, mlp):
    data = regression(n=256)
    results = []
    for guard in (True, False):
        cfg = TrainerConfig(batch_size=16, optimizer="sgd", lr=0.1, progress_bar=False,
                            nan_guard=guard)  # fmt: skip
        trainer = Trainer(mlp(), loss=_breaks_down, config=cfg)
        results.append(lr_find(trainer, data, min_lr=1e-4, max_lr=1e3, num_steps=60,
                               divergence=1e9))  # fmt: skip
    guarded, unguarded = results
    assert len(guarded.lrs) < 60  # the NaN ended the test
    assert guarded.suggestion is not None
    assert unguarded == guarded


@pytest.mark.parametrize("guard", [True, False])
def test_lr_finder_names_a_non_finite_loss_before_any_update(regression, mlp, sq_error, guard):
    x, y = regression(n=64).tensors
    y = y.clone()
    y[0] = math.nan  # in the first batch: no learning rate is at fault
    cfg = TrainerConfig(batch_size=16, shuffle=False, progress_bar=False, nan_guard=guard)
    trainer = Trainer(mlp(), loss=sq_error, config=cfg)
    # the test ended with no point, and the suggestion failed on numpy's empty argmin
    with pytest.raises(NonFiniteLossError, match="lr_find: non-finite loss at the first step"):
        lr_find(trainer, TensorDataset(x, y), num_steps=10)


@pytest.mark.parametrize(
    ("argument", "value"),
    [("smoothing", 1.0), ("divergence", 1.0), ("max_lr", math.inf), ("num_steps", 4)],
)
def test_lr_finder_names_a_bad_argument(regression, mlp, sq_error, argument, value):
    trainer = Trainer(mlp(), loss=sq_error, config=TrainerConfig(progress_bar=False))
    with pytest.raises(ValueError, match=f"lr_find: .*{argument}"):
        lr_find(trainer, regression(n=32), **{argument: value})


def test_tensorboard_keeps_every_step_across_a_resume_and_a_rerun_replaces_the_events(
    regression, mlp, sq_error, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class Crash(Exception):
        pass

    class CrashAt:
        def on_train_step_end(self, trainer):
            if trainer.global_step == 6:
                raise Crash

    data = regression(n=32)  # 4 steps per epoch
    cfg = TrainerConfig(max_epochs=3, batch_size=8, run_dir=tmp_path, progress_bar=False,
                        checkpoint_every_n_steps=2)  # fmt: skip

    def steps() -> list[int]:
        events = EventAccumulator(str(tmp_path))
        events.Reload()
        return [e.step for e in events.Scalars("train/loss")]

    with pytest.raises(Crash):
        Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[CrashAt()]).fit(data)
    Trainer(mlp(), loss=sq_error, config=cfg).fit(data, resume=True)
    assert steps() == list(range(1, 13))  # the checkpoint's step 6 was purged and lost before
    Trainer(mlp(), loss=sq_error, config=cfg).fit(data)  # a fresh run into the same folder
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    assert steps() == list(range(1, 13))


def test_a_fresh_run_into_a_given_tensorboard_log_dir_with_events_warns_and_keeps_them(
    regression, mlp, sq_error, tmp_path
):
    from qfnet.training import TensorBoardLogger

    data = regression(n=32)  # 4 steps per epoch
    cfg = TrainerConfig(max_epochs=2, batch_size=8, progress_bar=False)
    # the same folder twice, without resume: the second run's steps mixed with the first's
    # without a word (a folder of the caller's may hold other runs: not emptied)
    first = TensorBoardLogger(tmp_path / "tb", log_every_n_steps=1)
    Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[first]).fit(data)
    second = TensorBoardLogger(tmp_path / "tb", log_every_n_steps=1)
    with pytest.warns(UserWarning, match=r"already holds 1 event file\(s\) of an earlier run"):
        Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[second]).fit(data)
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 2


def test_tensorboard_epoch_metrics_appear_once_after_resuming_from_an_earlier_checkpoint(
    regression, mlp, sq_error, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = regression(n=32)  # 4 steps per epoch
    cfg = TrainerConfig(max_epochs=4, batch_size=8, run_dir=tmp_path, progress_bar=False)

    def fit(**kwargs):
        checkpoints = ModelCheckpoint(every_n_epochs=1)
        Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[checkpoints]).fit(data, data, **kwargs)

    fit()
    fit(ckpt_path=tmp_path / "checkpoints" / "epoch_0001.pt")  # epochs 2 and 3 trained again
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 17))
    # each epoch once, at its last step: epochs 2 and 3 were listed twice before
    assert [e.step for e in events.Scalars("epoch/val_loss")] == [4, 8, 12, 16]


def test_tensorboard_writes_a_step_metric_that_only_some_steps_have(
    regression, mlp, sq_error, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from qfnet.training import TensorBoardLogger

    class EverySecondStep:
        def on_train_step_end(self, trainer):
            if trainer.global_step % 2 == 0:
                trainer.step_metrics["probe"] = float(trainer.global_step)

    data = regression(n=32)  # 4 steps per epoch
    cfg = TrainerConfig(max_epochs=2, batch_size=8, progress_bar=False)
    logger = TensorBoardLogger(tmp_path, log_every_n_steps=4)
    Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[EverySecondStep(), logger]).fit(data)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    # a flush window with a step without it dropped the metric from the whole window
    assert [(e.step, e.value) for e in events.Scalars("train/probe")] == [
        (s, float(s)) for s in (2, 4, 6, 8)
    ]
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))


def test_tensorboard_leaves_out_a_steps_nan_loss_as_it_does_an_epochs(
    regression, mlp, sq_error, tmp_path
):
    # a step whose samples all weigh 0 (nan_guard off: no update) was logged as a NaN loss and
    # gradient norm, while the epoch values leave NaN out (the epoch's train_loss is finite)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from qfnet.training import TensorBoardLogger

    x, y, w = regression(n=16, weighted=True).tensors
    w = w.clone()
    w[4:8] = 0.0  # the second batch of 4
    cfg = TrainerConfig(max_epochs=1, batch_size=4, shuffle=False, nan_guard=False,
                        progress_bar=False)  # fmt: skip
    logger = TensorBoardLogger(tmp_path, log_every_n_steps=4)
    history = Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[logger]).fit(
        TensorDataset(x, y, w)
    )
    assert math.isfinite(history["train_loss"][0])
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    for tag in ("train/loss", "train/grad_norm"):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in logged] == [1, 3, 4], tag
        assert all(math.isfinite(v) for _, v in logged), tag
    assert [e.step for e in events.Scalars("lr")] == [1, 2, 3, 4]


def _lr_config(**overrides):
    settings = {"max_epochs": 3, "batch_size": 8, "optimizer": "sgd", "lr": 0.1,
                "scheduler": "cosine", "progress_bar": False, "tensorboard": False}  # fmt: skip
    return TrainerConfig(**settings | overrides)


def test_lr_monitor_history_restarts_with_a_new_fit(regression, mlp, sq_error):
    data = regression(n=32)  # 4 steps per epoch
    monitor = LRMonitor()
    trainer = Trainer(mlp(), loss=sq_error, config=_lr_config(), callbacks=[monitor])
    trainer.fit(data)
    first = monitor.history
    trainer.fit(data)
    fresh = LRMonitor()
    Trainer(mlp(), loss=sq_error, config=_lr_config(), callbacks=[fresh]).fit(data)
    # the second run's 12 steps only, not 24 entries with steps 0..11 twice
    assert monitor.history == fresh.history
    assert [step for step, _ in monitor.history] == list(range(12))
    assert len(first) == 12  # the first run's list is left to whoever kept it


def test_lr_monitor_history_of_a_resumed_run_has_each_step_once(
    regression, mlp, sq_error, tmp_path
):
    class Crash(Exception):
        pass

    class CrashAt:
        def on_train_step_end(self, trainer):
            if trainer.global_step == 7:  # after the epoch-end checkpoint at step 4
                raise Crash

    data = regression(n=32)
    monitor = LRMonitor()
    config = _lr_config(run_dir=tmp_path)
    with pytest.raises(Crash):
        Trainer(mlp(), loss=sq_error, config=config, callbacks=[monitor, CrashAt()]).fit(data)
    Trainer(mlp(), loss=sq_error, config=config, callbacks=[monitor]).fit(data, resume=True)
    straight = LRMonitor()
    Trainer(mlp(), loss=sq_error, config=_lr_config(), callbacks=[straight]).fit(data)
    # steps 4..6 were trained again after the resume: recorded once, at their resumed rates
    assert [step for step, _ in monitor.history] == list(range(12))
    assert monitor.history == straight.history


class _StreamOf(torch.utils.data.IterableDataset):
    """The samples of ``data`` one by one, without a length (a streaming source)."""

    def __init__(self, data):
        self.data = data

    def __iter__(self):
        return (self.data[i] for i in range(len(self.data)))


def test_lr_monitor_history_is_restored_from_the_checkpoint(regression, mlp, sq_error, tmp_path):
    class StopAtStep8:  # the last step of epoch 1, unknown as such with a stream: mid-epoch
        def on_train_step_end(self, trainer):
            trainer.should_stop = trainer.global_step == 8

    data = regression(n=32)

    def fit(callbacks, run_dir, resume=False):
        stream = torch.utils.data.DataLoader(_StreamOf(data), batch_size=8)
        config = _lr_config(run_dir=run_dir)
        return Trainer(mlp(), loss=sq_error, config=config, callbacks=callbacks).fit(
            stream, resume=resume
        )

    fit([StopAtStep8()], tmp_path / "stopped")
    resumed = LRMonitor()  # a new process: its own monitor knew nothing of steps 0..7
    history = fit([resumed], tmp_path / "stopped", resume=True)
    straight = LRMonitor()
    expected = fit([straight], tmp_path / "straight")
    assert resumed.history == straight.history
    # epoch 1 was resumed at its end, with no step left: its row had no lr
    assert history["lr"] == expected["lr"]


def test_a_run_early_stopping_stopped_trains_on_when_resumed_with_a_larger_patience(
    regression, mlp, sq_error, tmp_path
):
    data = regression(n=32)

    def fit(patience, run_dir, resume=False):
        # train_loss falls every epoch: in "max" mode only epoch 0 improves
        stopper = EarlyStopping(monitor="train_loss", mode="max", patience=patience)
        config = TrainerConfig(max_epochs=10, batch_size=8, optimizer="sgd", lr=0.05,
                               progress_bar=False, tensorboard=False, run_dir=run_dir)  # fmt: skip
        model = mlp()
        trainer = Trainer(model, loss=sq_error, config=config, callbacks=[stopper])
        return model, trainer.fit(data, resume=resume)

    assert len(fit(1, tmp_path / "b")[1]) == 2
    model, history = fit(3, tmp_path / "b", resume=True)  # it stopped at once, without a word
    straight_model, straight = fit(3, tmp_path / "a")
    assert len(straight) == 4
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in straight]
    for key, value in straight_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # the same settings again: stopped, and said so
    with pytest.warns(UserWarning, match=r"stopped at epoch 3 \(train_loss did not improve in "
                                         r"3 checks, patience 3\) and stays stopped"):  # fmt: skip
        assert len(fit(3, tmp_path / "b", resume=True)[1]) == 4


def test_an_older_checkpoints_early_stop_is_kept_without_asking_for_a_larger_patience(
    regression, mlp, sq_error, tmp_path
):
    # a stop saved without its reason stays stopped whatever the patience: the warning asked
    # for a larger one ("did not improve in 1 checks, patience 3 ... resume with a larger
    # patience"), which changed nothing
    data = regression(n=32)

    def fit(patience, resume=False):
        stopper = EarlyStopping(monitor="train_loss", mode="max", patience=patience)
        config = TrainerConfig(max_epochs=10, batch_size=8, optimizer="sgd", lr=0.05,
                               progress_bar=False, tensorboard=False, run_dir=tmp_path)  # fmt: skip
        return Trainer(mlp(), loss=sq_error, config=config, callbacks=[stopper]).fit(
            data, resume=resume
        )

    assert len(fit(1)) == 2
    path = tmp_path / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    del state["callbacks"]["EarlyStopping"]["stop_reason"]  # as written before it was saved
    save_checkpoint(state, path)
    with pytest.warns(UserWarning, match="stopped at epoch 1 and stays stopped: its checkpoint, "
                                         "written before stop reasons were saved") as caught:  # fmt: skip
        assert len(fit(3, resume=True)) == 2
    assert not any("larger patience" in str(w.message) for w in caught)


@pytest.mark.parametrize(("patience", "epochs"), [(1, 3), (5, 4)])
def test_a_non_finite_stop_resumed_with_check_finite_false_decides_with_the_patience(
    regression, mlp, sq_error, tmp_path, patience, epochs
):
    data = regression(n=32)

    def fit(stopper, values, resume=False):
        cfg = TrainerConfig(max_epochs=4, batch_size=8, eval_batch_size=32, optimizer="sgd",
                            lr=0.05, progress_bar=False, tensorboard=False, run_dir=tmp_path)  # fmt: skip
        trainer = Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[stopper],
                          metrics={"score": _Scripted(values)})  # fmt: skip
        return trainer.fit(data, data, resume=resume)

    with pytest.warns(UserWarning, match="val_score is nan at epoch 2"):
        fit(EarlyStopping(monitor="val_score", patience=5), [3.0, 2.0, math.nan])
    # the NaN counts as a check without improvement, as in a run with check_finite=False
    waiting = EarlyStopping(monitor="val_score", patience=patience, check_finite=False)
    stays = epochs == 3  # patience 1 used up by the NaN: stopped, as the straight run is
    with pytest.warns(UserWarning, match="stays stopped") if stays else contextlib.nullcontext():
        history = fit(waiting, [1.0], resume=True)
    assert len(history) == epochs and waiting.stop_reason == ("patience" if stays else None)


def test_a_misspelled_hook_is_warned_about():
    # callbacks are duck-typed: on_epoch_ending was simply never called
    class Typo:
        def on_epoch_ending(self, trainer):
            pass

    with pytest.warns(UserWarning, match=r"Typo.on_epoch_ending is not a Trainer hook .*"
                                         r"did you mean on_epoch_end"):  # fmt: skip
        Trainer(torch.nn.Linear(1, 1), loss=torch.nn.functional.mse_loss, callbacks=[Typo()],
                config=TrainerConfig(progress_bar=False, tensorboard=False))  # fmt: skip


def _trainer_with(config, callbacks=()):
    return Trainer(torch.nn.Linear(1, 1), loss=torch.nn.functional.mse_loss,
                   config=config, callbacks=callbacks)  # fmt: skip


def test_config_checkpoint_settings_a_given_model_checkpoint_ignores_are_warned_about(tmp_path):
    config = TrainerConfig(run_dir=tmp_path, progress_bar=False, tensorboard=False,
                           checkpoint_every_n_steps=5, monitor="val_mae", monitor_mode="max")  # fmt: skip
    with pytest.warns(UserWarning, match=r"checkpoint_every_n_steps=5, monitor='val_mae', "
                      r"monitor_mode='max': these configure only .* the given ModelCheckpoint "
                      r"\(every_n_steps=None, monitor='val_loss', mode='min'\)"):  # fmt: skip
        _trainer_with(config, [ModelCheckpoint(dirpath=tmp_path / "ck")])
    with pytest.warns(UserWarning, match=r"TrainerConfig monitor_mode='max': these"):
        _trainer_with(config, [ModelCheckpoint(monitor="val_mae", every_n_steps=5)])
    # checkpoint_every_n_steps did nothing without run_dir either
    no_dir = TrainerConfig(progress_bar=False, checkpoint_every_n_steps=5)
    with pytest.warns(UserWarning, match=r"checkpoint_every_n_steps=5 writes nothing without"):
        _trainer_with(no_dir)


def test_config_checkpoint_settings_that_apply_are_not_warned_about(tmp_path, recwarn):
    config = TrainerConfig(run_dir=tmp_path, progress_bar=False, tensorboard=False,
                           checkpoint_every_n_steps=5, monitor="val_mae", monitor_mode="max")  # fmt: skip
    _trainer_with(config)  # the Trainer's own checkpoint takes them
    same = ModelCheckpoint(monitor="val_mae", mode="max", every_n_steps=5)
    _trainer_with(config, [same])
    _trainer_with(TrainerConfig(progress_bar=False), [ModelCheckpoint(dirpath=tmp_path)])
    plateau = dataclasses.replace(config, checkpoint_every_n_steps=None, scheduler="plateau",
                                  scheduler_monitor="val_mae")  # fmt: skip
    _trainer_with(plateau, [ModelCheckpoint(dirpath=tmp_path)])  # the schedule uses the monitor
    assert not [w for w in recwarn if "ModelCheckpoint" in str(w.message)]


def test_a_new_fit_starts_early_stopping_and_best_checkpoint_afresh(
    regression, mlp, sq_error, tmp_path
):
    train, val = regression(n=40, seed=1), regression(n=12, seed=2)

    def trainer_for(model, run_dir):
        cfg = TrainerConfig(max_epochs=30, batch_size=8, optimizer="sgd", lr=0.05,
                            progress_bar=False, tensorboard=False, run_dir=run_dir)  # fmt: skip
        stopper = EarlyStopping(patience=2, restore_best_weights=True)
        return Trainer(model, loss=sq_error, config=cfg, callbacks=[stopper])

    model = mlp(seed=3)
    trainer = trainer_for(model, tmp_path / "again")
    first = trainer.fit(train, val)
    assert len(first) < 30  # stopped early, with a best the next run does not reach at once
    model.load_state_dict(mlp(seed=4).state_dict())  # start over from other weights
    again = trainer.fit(train, val)

    fresh_model = mlp(seed=4)
    fresh = trainer_for(fresh_model, tmp_path / "fresh").fit(train, val)
    assert [r["val_loss"] for r in again] == [r["val_loss"] for r in fresh]
    for key, value in fresh_model.state_dict().items():  # the new run's best, not the old one's
        assert torch.equal(model.state_dict()[key], value), key
    best = [
        load_checkpoint(tmp_path / run / "checkpoints" / "best.pt") for run in ("again", "fresh")
    ]
    assert best[0]["loop"]["epoch"] == best[1]["loop"]["epoch"]


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "5"])
@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("ProgressBar.refresh_every", lambda v: ProgressBar(refresh_every=v)),
        ("TensorBoardLogger.log_every_n_steps", lambda v: TensorBoardLogger(log_every_n_steps=v)),
        ("ModelCheckpoint.every_n_steps", lambda v: ModelCheckpoint(every_n_steps=v)),
        ("ModelCheckpoint.every_n_epochs", lambda v: ModelCheckpoint(every_n_epochs=v)),
    ],
)
def test_callback_periods_must_be_positive_integers(name, build, value):
    # refresh_every=0 divided by zero at the first step on a terminal; log_every_n_steps=0
    # fell back silently to the config's period; 2.5 never matched a step
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        build(value)
    build(np.int64(3))  # numpy's integers are integers
