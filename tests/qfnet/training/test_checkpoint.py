"""Checkpoint integrity and safety, RNG round trips, in-process resume and the NaN guard."""

from __future__ import annotations

import math
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from qfnet.training import (
    CheckpointError,
    EarlyStopping,
    ModelCheckpoint,
    NonFiniteLossError,
    Trainer,
    TrainerConfig,
    load_checkpoint,
    save_checkpoint,
)
from qfnet.training.checkpoint import (
    FORMAT,
    get_rng_state,
    set_rng_state,
    write_text_atomically,
)
from qfnet.training.loggers import CSVLogger


def _valid_checkpoint(path: Path) -> Path:
    marker = torch.full((64,), 1234.5678, dtype=torch.float64)
    return save_checkpoint({"model": {"w": marker}, "loop": {"epoch": 1}}, path)


def test_round_trip_keeps_tensors_and_plain_values(tmp_path):
    path = _valid_checkpoint(tmp_path / "ck.pt")
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.full((64,), 1234.5678, dtype=torch.float64))
    assert state["loop"] == {"epoch": 1}


def test_truncated_checkpoint_raises_an_error_naming_the_file(tmp_path):
    path = _valid_checkpoint(tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt.*(truncated|corrupted)"):
        load_checkpoint(path)


def test_tampered_tensor_bytes_are_detected(tmp_path):
    path = _valid_checkpoint(tmp_path / "last.pt")
    data = bytearray(path.read_bytes())
    pattern = torch.full((64,), 1234.5678, dtype=torch.float64).numpy().tobytes()
    offset = bytes(data).index(pattern)
    data[offset + 3] ^= 0xFF  # one changed byte inside the stored tensor
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"last\.pt.*CRC mismatch"):
        load_checkpoint(path)


def test_empty_and_missing_files_are_reported(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match=r"missing\.pt.*not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "checkpoints").mkdir()  # a run's checkpoint folder, there: not "not found"
    with pytest.raises(CheckpointError, match=r"checkpoints: a folder, not a checkpoint file"):
        load_checkpoint(tmp_path / "checkpoints")


class _Payload:
    """An arbitrary object: unpickling it would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_carrying_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": 1, "model": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*refused"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("version", [True, 1.0, 2])
def test_checkpoint_of_another_format_version_is_refused(tmp_path, version):
    # True == 1 and 1.0 == 1: a bool or float version passed the != check and loaded
    torch.save({"format": FORMAT, "version": version, "loop": {"epoch": 1}}, tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match=rf"v\.pt: format version {version!r} is not 1"):
        load_checkpoint(tmp_path / "v.pt")


def test_foreign_torch_file_is_not_taken_for_a_checkpoint(tmp_path):
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a qfnet training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = _valid_checkpoint(tmp_path / "last.pt")
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_rng_state_round_trip_covers_python_numpy_and_torch(tmp_path):
    state = get_rng_state()
    save_checkpoint({"rng": state}, tmp_path / "rng.pt")
    first = (random.random(), np.random.random(), torch.rand(3))  # noqa: NPY002
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    second = (random.random(), np.random.random(), torch.rand(3))  # noqa: NPY002
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2])


class _Crash(Exception):
    pass


class _CrashAtStep:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_step_end(self, trainer) -> None:
        if trainer.global_step == self.step:
            raise _Crash


class _StopAtStep:
    """Stops training at ``step`` for a reason that does not last (a time budget, say)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_step_end(self, trainer) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def _resumable_run(mlp, run_dir, callbacks=(), resume=False, **overrides):
    settings = {
        "max_epochs": 3,
        "batch_size": 4,
        "accumulate_grad_batches": 2,
        "optimizer": "adam",
        "lr": 0.02,
        "scheduler": "onecycle",
        "seed": 3,
        "run_dir": run_dir,
        "checkpoint_every_n_steps": 2,
        "progress_bar": False,
        "tensorboard": False,
    } | overrides
    model = mlp(dropout=0.2, seed=11)
    stopper = EarlyStopping(monitor="val_loss", patience=10)
    trainer = Trainer(
        model,
        loss=torch.nn.MSELoss(),
        config=TrainerConfig(**settings),
        callbacks=[stopper, *callbacks],
    )
    return model, trainer, stopper, resume


@pytest.mark.parametrize("crash_step", [7, 8])  # mid-epoch (after the step-6 checkpoint), end
def test_resume_after_a_crash_reproduces_the_uninterrupted_run_exactly(
    regression, mlp, tmp_path, crash_step, device
):
    train, val = regression(n=40, seed=1), regression(n=12, seed=2)  # 10 micro-batches, 5 steps
    on = {"device": str(device)}  # CUDA: checkpoints load onto the GPU, RNG states to the CPU
    model_a, trainer_a, stopper_a, _ = _resumable_run(mlp, tmp_path / "a", **on)
    history_a = trainer_a.fit(train, val)

    _, trainer_b, _, _ = _resumable_run(
        mlp, tmp_path / "b", callbacks=[_CrashAtStep(crash_step)], **on
    )
    with pytest.raises(_Crash):
        trainer_b.fit(train, val)
    model_c, trainer_c, stopper_c, _ = _resumable_run(mlp, tmp_path / "b", **on)
    history_c = trainer_c.fit(train, val, resume=True)

    for key, value in model_a.state_dict().items():
        assert torch.equal(value, model_c.state_dict()[key]), key
    assert history_c.records == [
        {k: v for k, v in r.items() if k != "seconds"} | {"seconds": c["seconds"]}
        for r, c in zip(history_a.records, history_c.records, strict=True)
    ]
    assert stopper_c.best == stopper_a.best
    rows = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # header + one row per epoch, no duplicate after resume


# 5 steps per epoch, last.pt every 2 steps: a stop with a step checkpoint, at an epoch's last
# step, between two checkpoints
@pytest.mark.parametrize("stop_step", [4, 5, 7])
def test_a_run_stopped_by_a_callback_is_checkpointed_there_and_resumes_exactly(
    regression, mlp, tmp_path, stop_step
):
    train, val = regression(n=40, seed=1), regression(n=12, seed=2)
    model_a, trainer_a, stopper_a, _ = _resumable_run(mlp, tmp_path / "a")
    history_a = trainer_a.fit(train, val)

    _, trainer_b, _, _ = _resumable_run(mlp, tmp_path / "b", callbacks=[_StopAtStep(stop_step)])
    history_b = trainer_b.fit(train, val)
    last = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert last["loop"]["global_step"] == stop_step  # no trained step lost
    assert len(history_b.records) == stop_step // 5  # an epoch stopped at its last step ended
    assert all("val_loss" in r for r in history_b.records)
    model_c, trainer_c, stopper_c, _ = _resumable_run(mlp, tmp_path / "b")
    history_c = trainer_c.fit(train, val, resume=True)

    assert trainer_c.global_step == trainer_a.global_step == 15
    for key, value in model_a.state_dict().items():
        assert torch.equal(value, model_c.state_dict()[key]), key
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in history_c.records] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in history_a.records
    ]
    assert stopper_c.best == stopper_a.best


class _CrashInStep:
    """Raises in ``hook`` of step ``step`` (the first call there); on the exception, writes a
    checkpoint, as a user's crash handler would."""

    def __init__(self, hook: str, step: int, path) -> None:
        self.step, self.path = step, path
        setattr(self, hook, self._crash)

    def _crash(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise _Crash

    def on_exception(self, trainer, exception) -> None:
        trainer.save_checkpoint(self.path)


# the first micro-batch of step 3's window of 2 done; the whole window done, before the update
@pytest.mark.parametrize("hook", ["on_after_backward", "on_before_optimizer_step"])
def test_a_checkpoint_written_on_an_exception_inside_a_step_resumes_exactly(
    regression, mlp, sq_error, tmp_path, hook
):
    train = regression(n=40, seed=1)  # 10 micro-batches, 5 steps per epoch

    def run(callbacks=(), ckpt_path=None):
        # dropout: the interrupted step's masks were drawn; warmup: its rate scaled in place
        config = TrainerConfig(max_epochs=2, batch_size=4, accumulate_grad_batches=2, lr=0.05,
                               optimizer="sgd", warmup_steps=6, train_metrics=True, seed=3,
                               progress_bar=False)  # fmt: skip
        model = mlp(dropout=0.2, seed=11)
        trainer = Trainer(model, loss=sq_error, config=config, callbacks=callbacks,
                          metrics={"mae": lambda output, target: (output - target).abs()})  # fmt: skip
        return model, trainer.fit(train, ckpt_path=ckpt_path)

    model_a, history_a = run()
    path = tmp_path / "crash.pt"
    with pytest.raises(_Crash):
        run([_CrashInStep(hook, 3, path)])
    assert load_checkpoint(path)["loop"]["global_step"] == 3  # the last completed step
    model_c, history_c = run(ckpt_path=path)

    for key, value in model_a.state_dict().items():
        assert torch.equal(value, model_c.state_dict()[key]), key
    for key in ("train_loss", "train_mae", "lr"):  # the step's loss and sums counted once
        assert history_c[key] == pytest.approx(history_a[key], rel=1e-12, abs=0.0), key


def test_the_same_trainer_resumes_after_a_stop(regression, mlp, tmp_path):
    train, val = regression(n=40, seed=1), regression(n=12, seed=2)
    model_a, trainer_a, _, _ = _resumable_run(mlp, tmp_path / "a")
    trainer_a.fit(train, val)
    model_b, trainer_b, _, _ = _resumable_run(mlp, tmp_path / "b", callbacks=[_StopAtStep(7)])
    trainer_b.fit(train, val)
    trainer_b.fit(train, val, resume=True)  # its flag from the first fit does not stop it
    assert trainer_b.global_step == 15
    for key, value in model_a.state_dict().items():
        assert torch.equal(value, model_b.state_dict()[key]), key


def test_an_older_checkpoints_saved_stop_flag_is_ignored_on_resume(regression, mlp, tmp_path):
    train, val = regression(n=40, seed=1), regression(n=12, seed=2)
    model_a, trainer_a, _, _ = _resumable_run(mlp, tmp_path / "a")
    trainer_a.fit(train, val)
    _, trainer_b, _, _ = _resumable_run(mlp, tmp_path / "b", callbacks=[_CrashAtStep(7)])
    with pytest.raises(_Crash):
        trainer_b.fit(train, val)
    path = tmp_path / "b" / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    state["loop"]["should_stop"] = True  # as written before the flag left the checkpoint
    save_checkpoint(state, path)
    model_c, trainer_c, _, _ = _resumable_run(mlp, tmp_path / "b")
    trainer_c.fit(train, val, resume=True)
    assert trainer_c.global_step == 15  # it trained on (a time budget's stop does not last)
    for key, value in model_a.state_dict().items():
        assert torch.equal(value, model_c.state_dict()[key]), key


@pytest.mark.parametrize("with_run_dir", [True, False])
def test_resume_continues_from_the_folder_of_a_given_model_checkpoint(
    regression, mlp, tmp_path, with_run_dir
):
    train, val = regression(n=40, seed=1), regression(n=12, seed=2)  # 5 steps per epoch
    run_dir = tmp_path / "run" if with_run_dir else None
    folder = tmp_path / "elsewhere"

    def run(*callbacks):
        checkpoints = ModelCheckpoint(dirpath=folder, every_n_steps=2)
        return _resumable_run(mlp, run_dir, callbacks=[checkpoints, *callbacks],
                              checkpoint_every_n_steps=None)  # fmt: skip

    model_a, trainer_a, _, _ = _resumable_run(mlp, tmp_path / "a")
    trainer_a.fit(train, val)
    _, crashing, _, _ = run(_CrashAtStep(7))
    with pytest.raises(_Crash):
        crashing.fit(train, val)
    starts = []

    class Start:
        def on_fit_start(self, trainer):
            starts.append(trainer.global_step)

    model_c, resumed, _, _ = run(Start())
    # the checkpoint of step 6 was not looked for there: a fresh run (with run_dir), or a
    # ValueError asking for a run_dir (without)
    resumed.fit(train, val, resume=True)
    assert starts == [6]
    for key, value in model_a.state_dict().items():
        assert torch.equal(value, model_c.state_dict()[key]), key


def test_resume_mid_epoch_with_a_different_batch_size_is_refused(regression, mlp, tmp_path):
    train = regression(n=40)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, callbacks=[_CrashAtStep(3)])
    with pytest.raises(_Crash):
        trainer.fit(train)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, batch_size=8)
    with pytest.raises(ValueError, match=r"batch_size=8.*batch_size=4"):
        trainer.fit(train, resume=True)


@pytest.mark.parametrize(("changes", "message"), [({"seed": 1}, r"seed=1.*seed=3"),
                                                  ({"shuffle": False}, r"shuffle=False")])  # fmt: skip
def test_resume_mid_epoch_with_another_data_order_is_refused(
    regression, mlp, tmp_path, changes, message
):
    # the batches done are skipped by position: another permutation gave the rest of the epoch
    # some samples twice and others never
    train = regression(n=40)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, callbacks=[_CrashAtStep(3)])
    with pytest.raises(_Crash):
        trainer.fit(train)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        trainer.fit(train, resume=True)


def _metrics_run(mlp, run_dir, metrics, callbacks=()):
    """5 steps an epoch of 40 rows, last.pt every 2 steps, training metrics on."""
    config = TrainerConfig(max_epochs=2, batch_size=4, accumulate_grad_batches=2, seed=3,
                           run_dir=run_dir, checkpoint_every_n_steps=2, train_metrics=True,
                           progress_bar=False, tensorboard=False)  # fmt: skip
    return Trainer(mlp(), loss=torch.nn.MSELoss(), config=config, metrics=metrics,
                   callbacks=callbacks)  # fmt: skip


def _abs_error(output, target):
    return (output - target).abs()


def test_resume_mid_epoch_with_other_training_metrics_is_refused(regression, mlp, tmp_path):
    # the epoch's metric sums are kept by position: another set of metrics failed in the first
    # step on a shape mismatch (a renamed one would carry on the old metric's sums)
    train = regression(n=40)
    with pytest.raises(_Crash):
        _metrics_run(mlp, tmp_path, {"mae": _abs_error}, [_CrashAtStep(3)]).fit(train)
    trainer = _metrics_run(mlp, tmp_path, {"mae": _abs_error, "mae2": _abs_error})
    message = r"last\.pt: cannot resume mid-epoch with train_metrics .* the metrics \['mae'\]"
    with pytest.raises(ValueError, match=message):
        trainer.fit(train, resume=True)


def test_resume_at_an_epoch_end_with_another_training_metric_computes_it(regression, mlp, tmp_path):
    train = regression(n=40)
    with pytest.raises(_Crash):
        _metrics_run(mlp, tmp_path, {}, [_CrashAtStep(6)]).fit(train)  # last.pt: epoch 0's end
    history = _metrics_run(mlp, tmp_path, {"mae": _abs_error}).fit(train, resume=True)
    assert len(history.records) == 2 and math.isfinite(history.records[-1]["train_mae"])


@pytest.mark.parametrize(("batch_size", "steps"), [(2, 30), (8, 9)])
def test_resume_at_an_epoch_end_is_refused_when_a_onecycle_schedule_would_get_other_steps(
    regression, mlp, tmp_path, batch_size, steps
):
    # 40 rows, batch 4, 2 micro-batches a step: 5 steps an epoch, 15 planned. Another batch size
    # ran out of steps mid-training (torch's "Tried to step 16 times") or never ended the cycle.
    train = regression(n=40)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, callbacks=[_CrashAtStep(6)])
    with pytest.raises(_Crash):
        trainer.fit(train)  # last.pt: the end of epoch 0
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, batch_size=batch_size)
    message = rf"planned over 15 optimizer steps, this run has {steps} \(batch_size=4 \(now "
    with pytest.raises(ValueError, match=message):
        trainer.fit(train, resume=True)
    flat = tmp_path / "flat"
    _, trainer, _, _ = _resumable_run(mlp, flat, callbacks=[_CrashAtStep(6)], scheduler="none")
    with pytest.raises(_Crash):
        trainer.fit(train)
    _, trainer, _, _ = _resumable_run(mlp, flat, batch_size=batch_size, scheduler="none")
    assert len(trainer.fit(train, resume=True).records) == 3  # no step horizon: it goes on


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(
    regression, mlp, tmp_path
):
    calls = {"n": 0}

    def loss(output, target):
        calls["n"] += 1
        value = ((output - target) ** 2).mean()
        return value * math.nan if calls["n"] == 11 else value  # global step 10 (0-based)

    class Snapshot:
        def on_epoch_end(self, trainer):
            self.weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    snapshot = Snapshot()
    model = mlp()
    cfg = TrainerConfig(
        max_epochs=5, batch_size=8, lr=0.01, run_dir=tmp_path, progress_bar=False, tensorboard=False
    )
    trainer = Trainer(model, loss=loss, config=cfg, callbacks=[snapshot])
    with pytest.raises(NonFiniteLossError, match=r"nan.*epoch 2, step 2 .*global step 10") as info:
        trainer.fit(regression(n=32))  # 4 steps per epoch
    assert (info.value.epoch, info.value.step, info.value.global_step) == (2, 2, 10)
    assert "last.pt" in str(info.value)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["loop"]["epoch"] == 2 and state["loop"]["global_step"] == 8
    for key, value in state["model"].items():
        assert torch.equal(value, snapshot.weights[key])
        assert torch.isfinite(value).all()
    for value in model.state_dict().values():
        assert torch.isfinite(value).all()  # stopped before the update


def test_nan_loss_with_accumulation_names_the_batch_of_the_bad_sample(regression, mlp, sq_error):
    x, y = regression(n=40).tensors
    y = y.clone()
    y[25] = math.nan  # batch 6 of 4 samples, in the step of batches 6 and 7
    cfg = TrainerConfig(max_epochs=1, batch_size=4, accumulate_grad_batches=2, shuffle=False,
                        progress_bar=False)  # fmt: skip
    trainer = Trainer(mlp(), loss=sq_error, config=cfg)
    with pytest.raises(NonFiniteLossError, match=r"step 3 of the epoch \(batch 6 of the epoch;"):
        trainer.fit(torch.utils.data.TensorDataset(x, y))


def test_nan_loss_with_accumulation_names_the_bad_batch_after_one_of_zero_weight(
    regression, mlp, sq_error
):
    x, y, weight = regression(n=12, weighted=True).tensors
    y, weight = y.clone(), weight.clone()
    weight[4:8] = 0.0  # batch 1 weighs 0: its mean is 0/0, taken for the batch at fault
    y[9] = math.nan  # batch 2, in the one step of batches 0-2
    cfg = TrainerConfig(max_epochs=1, batch_size=4, accumulate_grad_batches=3, shuffle=False,
                        progress_bar=False)  # fmt: skip
    trainer = Trainer(mlp(), loss=sq_error, config=cfg)
    with pytest.raises(NonFiniteLossError, match=r"loss nan .* \(batch 2 of the epoch;"):
        trainer.fit(torch.utils.data.TensorDataset(x, y, weight))


def test_nan_guard_catches_a_non_finite_gradient(regression, mlp):
    def loss(output, target):
        # a finite loss with a NaN gradient whatever the initial weights: sqrt'(0) * 0
        return (output - target).pow(2).mean() + (0.0 * output).sqrt().sum()

    cfg = TrainerConfig(max_epochs=1, batch_size=8, progress_bar=False)
    with pytest.raises(NonFiniteLossError, match="epoch 0, step 0"):
        Trainer(mlp(), loss=loss, config=cfg).fit(regression(n=16))


def test_fp16_scaling_that_skips_every_step_for_nan_gradients_stops(regression, mlp):
    # fp16 training skipped each step whose gradients were non-finite (an overflow, expected) and
    # never stopped when they were NaN at every scale: no update, no word, the scale falling to 0.
    # A CPU GradScaler keeps the CUDA one's books (fp16 itself needs CUDA).
    def loss(output, target):
        return (output - target).pow(2).mean() + (0.0 * output).sqrt().sum()  # NaN gradients

    cfg = TrainerConfig(max_epochs=50, batch_size=8, progress_bar=False)
    trainer = Trainer(mlp(), loss=loss, config=cfg)
    trainer._setup_runtime()
    trainer._scaler = torch.amp.GradScaler("cpu")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(NonFiniteLossError, match=r"gradient norm nan at 32 steps in a row \(fp16 "
                       r"loss scaling skipped them all"):  # fmt: skip
        trainer.fit(regression(n=16))
    assert trainer.global_step == 31  # the 32nd skip is refused before its update
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


class _SaveOnException:
    def __init__(self, path) -> None:
        self.path = path

    def on_exception(self, trainer, exception) -> None:
        trainer.save_checkpoint(self.path)


def test_fp16_skipped_steps_in_a_row_are_counted_across_a_resume(regression, mlp, tmp_path):
    # the count was not in the checkpoint: a run resumed after 20 skipped steps skipped 31 more
    # before the guard stopped it (51 in a row), one resumed from the guard's own stop 31 more
    def loss(output, target):
        return (output - target).pow(2).mean() + (0.0 * output).sqrt().sum()  # NaN gradients

    def trainer(max_epochs, callbacks=()):
        cfg = TrainerConfig(max_epochs=max_epochs, batch_size=8, progress_bar=False)
        trainer = Trainer(mlp(), loss=loss, config=cfg, callbacks=callbacks)
        trainer._setup_runtime()
        trainer._scaler = torch.amp.GradScaler("cpu")  # as above: a CUDA one's books
        return trainer

    data, interrupted, stopped = regression(n=16), tmp_path / "ck.pt", tmp_path / "stopped.pt"
    first = trainer(max_epochs=10)  # 2 steps per epoch, all skipped
    first.fit(data)
    first.save_checkpoint(interrupted)
    assert load_checkpoint(interrupted)["loop"]["skipped_steps"] == 20
    resumed = trainer(max_epochs=50, callbacks=[_SaveOnException(stopped)])
    with pytest.raises(NonFiniteLossError, match="at 32 steps in a row"):
        resumed.fit(data, ckpt_path=interrupted)
    assert resumed.global_step == 31  # as the uninterrupted run
    # written at the guard's stop, the checkpoint counts the completed steps only: its resume
    # stops at the same step, with the same count
    assert load_checkpoint(stopped)["loop"]["skipped_steps"] == 31
    again = trainer(max_epochs=50)
    with pytest.raises(NonFiniteLossError, match="at 32 steps in a row"):
        again.fit(data, ckpt_path=stopped)
    assert again.global_step == 31


def test_a_checkpoint_without_the_skipped_step_count_resumes(regression, mlp, tmp_path):
    cfg = TrainerConfig(max_epochs=1, batch_size=8, progress_bar=False)
    first = Trainer(mlp(), loss=torch.nn.MSELoss(), config=cfg)
    first.fit(regression(n=16))
    state = load_checkpoint(first.save_checkpoint(tmp_path / "ck.pt"))
    del state["loop"]["skipped_steps"]  # as written before the count was saved
    save_checkpoint(state, tmp_path / "ck.pt")
    cfg = TrainerConfig(max_epochs=2, batch_size=8, progress_bar=False)
    trainer = Trainer(mlp(), loss=torch.nn.MSELoss(), config=cfg)
    trainer.fit(regression(n=16), ckpt_path=tmp_path / "ck.pt")
    assert trainer.global_step == 4 and trainer._skipped == 0


def test_resuming_into_a_different_model_names_the_checkpoint(regression, mlp, tmp_path):
    cfg = TrainerConfig(
        max_epochs=1, batch_size=8, run_dir=tmp_path, progress_bar=False, tensorboard=False
    )
    Trainer(mlp(hidden=8), loss=torch.nn.MSELoss(), config=cfg).fit(regression(n=16))
    other = Trainer(mlp(hidden=5), loss=torch.nn.MSELoss(), config=cfg)
    with pytest.raises(CheckpointError, match=r"last\.pt: does not match this model"):
        other.fit(regression(n=16), resume=True)


@pytest.mark.parametrize("damage", ["truncated", "batch_size"])
def test_a_refused_resume_leaves_the_runs_config_json_as_it_was(regression, mlp, tmp_path, damage):
    # config.json was rewritten before the checkpoint was read: a resume refused (a cut
    # last.pt, another batch size mid-epoch) left the run described by the refused settings
    settings = {"max_epochs": 1, "batch_size": 4, "checkpoint_every_n_steps": 1,
                "run_dir": tmp_path, "progress_bar": False, "tensorboard": False}  # fmt: skip
    trainer = Trainer(mlp(), loss=torch.nn.MSELoss(), config=TrainerConfig(**settings),
                      callbacks=[_StopAtStep(2)])  # fmt: skip
    trainer.fit(regression(n=16))  # stopped mid-epoch: last.pt at step 2
    before = (tmp_path / "config.json").read_text()
    if damage == "truncated":
        last = tmp_path / "checkpoints" / "last.pt"
        last.write_bytes(last.read_bytes()[:100])
    again = Trainer(mlp(), loss=torch.nn.MSELoss(),
                    config=TrainerConfig(**(settings | {"batch_size": 8, "lr": 0.5})))  # fmt: skip
    with pytest.raises((CheckpointError, ValueError), match=r"last\.pt"):
        again.fit(regression(n=16), resume=True)
    assert (tmp_path / "config.json").read_text() == before


def test_a_refused_resume_calls_no_crash_handler_that_would_replace_last_pt(
    regression, mlp, tmp_path
):
    # on_exception ran for the refusal: a crash handler's checkpoint (as save_checkpoint's
    # docstring suggests) replaced the run's last.pt with the unrestored step-0 state
    class SaveOnException:
        def on_exception(self, trainer, exception) -> None:
            trainer.save_checkpoint(tmp_path / "checkpoints" / "last.pt")

    settings = {"max_epochs": 1, "batch_size": 8, "optimizer": "adam", "run_dir": tmp_path,
                "progress_bar": False, "tensorboard": False}  # fmt: skip
    Trainer(mlp(), loss=torch.nn.MSELoss(), config=TrainerConfig(**settings)).fit(regression(n=16))
    again = Trainer(mlp(), loss=torch.nn.MSELoss(), callbacks=[SaveOnException()],
                    config=TrainerConfig(**(settings | {"optimizer": "sgd"})))  # fmt: skip
    with pytest.raises(ValueError, match="resume with the same optimizer settings"):
        again.fit(regression(n=16), resume=True)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["loop"]["global_step"] == 2


def test_resume_without_a_checkpoint_warns_naming_the_folder_and_starts_a_new_run(
    regression, mlp, tmp_path
):
    # it started a new run without a word, where the user expected the run to continue
    cfg = TrainerConfig(max_epochs=1, batch_size=8, run_dir=tmp_path, progress_bar=False,
                        tensorboard=False)  # fmt: skip
    trainer = Trainer(mlp(), loss=torch.nn.MSELoss(), config=cfg)
    folder = str(tmp_path / "checkpoints")
    with pytest.warns(UserWarning, match=rf"no checkpoint to resume in {re.escape(folder)} "):
        history = trainer.fit(regression(n=16), resume=True)
    assert len(history.records) == 1 and (tmp_path / "checkpoints" / "last.pt").is_file()


class _Clock:
    """A clock that advances one second per optimizer step (no wall-clock reading)."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def on_train_step_end(self, trainer) -> None:
        self.now += 1.0


def test_an_epoch_resumed_mid_way_reports_the_seconds_of_both_parts(
    regression, mlp, tmp_path, monkeypatch
):
    # the resumed epoch's row counted only the seconds since the resume (here 2 of its 4 steps)
    import qfnet.training.trainer as trainer_module

    clock = _Clock()
    monkeypatch.setattr(trainer_module, "time", clock)
    settings = {"max_epochs": 2, "batch_size": 4, "run_dir": tmp_path, "progress_bar": False,
                "tensorboard": False}  # fmt: skip
    data = regression(n=16)  # 4 steps per epoch, one second each
    stopped = Trainer(mlp(), loss=torch.nn.MSELoss(), config=TrainerConfig(**settings),
                      callbacks=[clock, _StopAtStep(2)])  # fmt: skip
    stopped.fit(data)  # last.pt at step 2 of epoch 0
    clock.now = 1000.0  # the time between the stop and the resume is not the epoch's
    resumed = Trainer(mlp(), loss=torch.nn.MSELoss(), config=TrainerConfig(**settings),
                      callbacks=[clock])  # fmt: skip
    history = resumed.fit(data, resume=True)
    assert history["seconds"] == pytest.approx([4.0, 4.0], abs=1e-9)


def test_resuming_from_a_checkpoint_of_another_writer_names_the_file_and_fields(
    regression, mlp, tmp_path
):
    # a save_checkpoint({...}) of a script in the run's place failed with a bare KeyError: 'loop'
    cfg = TrainerConfig(
        max_epochs=1, batch_size=8, run_dir=tmp_path, progress_bar=False, tensorboard=False
    )
    Trainer(mlp(hidden=8), loss=torch.nn.MSELoss(), config=cfg).fit(regression(n=16))
    _valid_checkpoint(tmp_path / "checkpoints" / "last.pt")  # model and loop.epoch only
    trainer = Trainer(mlp(hidden=8), loss=torch.nn.MSELoss(), config=cfg)
    with pytest.raises(
        CheckpointError,
        match=r"last\.pt: not a Trainer checkpoint, it lacks .*'optimizer'.*"
        r"'loop\.global_step'",
    ):
        trainer.fit(regression(n=16), resume=True)


def test_numpy_scalars_in_the_config_still_give_a_loadable_checkpoint(regression, mlp, tmp_path):
    cfg = TrainerConfig(
        max_epochs=1,
        batch_size=8,
        run_dir=tmp_path,
        scheduler="step",
        progress_bar=False,
        scheduler_kwargs={"gamma": np.float64(0.5)},
        tensorboard=False,
    )
    Trainer(mlp(), loss=torch.nn.MSELoss(), config=cfg).fit(regression(n=16))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["config"]["scheduler_kwargs"] == {
        "gamma": 0.5
    }


def test_resume_mid_epoch_with_a_user_dataloader_and_generator_is_exact(regression, mlp, tmp_path):
    from torch.utils.data import DataLoader

    data = regression(n=40, seed=1)

    def loader():
        return DataLoader(
            data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5)
        )

    _assert_a_crash_at_step_7_resumes_exactly(mlp, tmp_path, loader)


def _assert_a_crash_at_step_7_resumes_exactly(mlp, tmp_path, loader):
    """An uninterrupted run and one crashed at step 7 then resumed end with equal weights."""
    model_a, trainer_a, _, _ = _resumable_run(mlp, tmp_path / "a")
    trainer_a.fit(loader())
    _, trainer_b, _, _ = _resumable_run(mlp, tmp_path / "b", callbacks=[_CrashAtStep(7)])
    with pytest.raises(_Crash):
        trainer_b.fit(loader())
    model_c, trainer_c, _, _ = _resumable_run(mlp, tmp_path / "b")
    trainer_c.fit(loader(), resume=True)
    for key, value in model_a.state_dict().items():
        assert torch.equal(value, model_c.state_dict()[key]), key


class _NoisyInputs(torch.utils.data.Dataset):
    """Inputs with noise drawn from the global torch RNG at each fetch (an augmentation)."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return x + 0.1 * torch.randn(x.shape, dtype=x.dtype), y


@pytest.mark.parametrize("noisy", [False, True])
def test_resume_mid_epoch_with_a_sequential_user_dataloader_without_generator_is_exact(
    regression, mlp, tmp_path, noisy
):
    # iter() of a loader without a generator draws its base seed from the global RNG, and the
    # skipped batches' fetches drew again: the resumed run's dropout masks were shifted
    data = _NoisyInputs(regression(n=40, seed=1)) if noisy else regression(n=40, seed=1)

    def loader():
        return torch.utils.data.DataLoader(data, batch_size=4)

    _assert_a_crash_at_step_7_resumes_exactly(mlp, tmp_path, loader)


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_resume_with_more_epochs_is_refused_for_schedules_planned_over_them(
    regression, mlp, tmp_path, scheduler
):
    train = regression(n=40)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, scheduler=scheduler)
    trainer.fit(train)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, scheduler=scheduler, max_epochs=5)
    message = rf"'{scheduler}' learning-rate schedule was planned over max_epochs=3; resume with"
    with pytest.raises(ValueError, match=message):
        trainer.fit(train, resume=True)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path / "flat", scheduler="none")
    trainer.fit(train)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path / "flat", scheduler="none", max_epochs=5)
    assert len(trainer.fit(train, resume=True).records) == 5  # no horizon: training goes on


def test_resume_with_another_explicit_cosine_horizon_is_refused(regression, mlp, tmp_path):
    train = regression(n=40)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, scheduler="cosine",
                                      scheduler_kwargs={"T_max": 3})  # fmt: skip
    trainer.fit(train)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, scheduler="cosine", max_epochs=5,
                                      scheduler_kwargs={"T_max": 5})  # fmt: skip
    with pytest.raises(ValueError, match=r"planned over T_max=3; resume with the same T_max"):
        trainer.fit(train, resume=True)


@pytest.mark.parametrize(
    ("changes", "key"),
    [({"optimizer": "sgd"}, "optimizer"), ({"optimizer": "adamw", "weight_decay": 0.5}, "optimizer"),
     ({"weight_decay": 0.1}, "weight_decay"), ({"lr": 0.05}, "lr")],
)  # fmt: skip
def test_resume_with_other_optimizer_settings_is_refused(regression, mlp, tmp_path, changes, key):
    train = regression(n=40)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, scheduler="none")
    trainer.fit(train)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, scheduler="none", **changes)
    with pytest.raises(ValueError, match=rf"written with {key}=.*resume with the same optimizer"):
        trainer.fit(train, resume=True)


@pytest.mark.parametrize(
    ("changes", "key"),
    [({"scheduler": "onecycle", "scheduler_kwargs": {}}, "scheduler"),  # mis-named horizon
     ({"scheduler_kwargs": {"step_size": 1, "gamma": 0.9}}, "scheduler_kwargs")],  # kept 0.5
)  # fmt: skip
def test_resume_with_another_learning_rate_schedule_is_refused(
    regression, mlp, tmp_path, changes, key
):
    train = regression(n=40)
    step = {"scheduler": "step", "scheduler_kwargs": {"step_size": 1, "gamma": 0.5}}
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, max_epochs=1, **step)
    trainer.fit(train)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, **(step | changes))
    message = rf"last\.pt: written with {key}=.*resume with the same learning-rate schedule"
    with pytest.raises(ValueError, match=message):
        trainer.fit(train, resume=True)


def test_numpy_values_in_callback_state_are_saved_loadably_and_files_are_readable(tmp_path):
    import stat

    state = {"callbacks": {"probe": {"best": np.float64(0.5), "seen": np.arange(3)}}}
    path = save_checkpoint(state, tmp_path / "ck.pt")
    loaded = load_checkpoint(path)["callbacks"]["probe"]
    assert loaded["best"] == 0.5 and torch.equal(loaded["seen"], torch.arange(3))
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600


def test_mid_epoch_resume_of_a_shuffling_loader_without_generator_warns(regression, mlp, tmp_path):
    loader = torch.utils.data.DataLoader(regression(n=40), batch_size=4, shuffle=True)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, callbacks=[_CrashAtStep(3)], scheduler="none")
    with pytest.raises(_Crash):
        trainer.fit(loader)
    _, trainer, _, _ = _resumable_run(mlp, tmp_path, scheduler="none")
    with pytest.warns(UserWarning, match="shuffling DataLoader that has no generator"):
        trainer.fit(loader, resume=True)


def test_an_interrupted_text_write_keeps_the_previous_file(tmp_path, monkeypatch) -> None:
    path = write_text_atomically("old\n", tmp_path / "report.json")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomically("new\n" * 1000, path)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left


def test_a_failed_metrics_rewrite_keeps_the_earlier_rows(tmp_path, monkeypatch) -> None:
    # the rewrite opened metrics.csv for writing first: a failure after the header left it
    # without the earlier epochs' rows
    import csv

    path = tmp_path / "metrics.csv"
    logger, rows = CSVLogger(path), [{"epoch": 0, "step": 4, "train_loss": 1.5}]
    logger._rewrite(path, rows)
    before = path.read_text()

    def fail(self, records) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", fail)
    with pytest.raises(OSError):
        logger._rewrite(path, [*rows, {"epoch": 1, "step": 8, "train_loss": 1.2}])
    assert path.read_text() == before
