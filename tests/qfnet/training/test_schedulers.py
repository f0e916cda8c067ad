"""Optimizers by name, parameter groups, LR schedules stepped at the right frequency, warmup."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from qfnet.training import LRMonitor, ParamGroup, Trainer, TrainerConfig
from qfnet.training.schedulers import build_scheduler


def _lrs(regression, mlp, sq_error, *, epochs=3, steps=4, val=False, metrics=None, **overrides):
    """Per-step learning rates (group 0) as a list of epochs, each a list of steps."""
    monitor = LRMonitor()
    cfg = TrainerConfig(
        max_epochs=epochs, batch_size=8, optimizer="sgd", lr=0.1, progress_bar=False, **overrides
    )
    data = regression(n=8 * steps)
    trainer = Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[monitor], metrics=metrics)
    trainer.fit(data, data if val else None)
    values = [lrs[0] for _, lrs in monitor.history]
    return [values[e * steps : (e + 1) * steps] for e in range(epochs)], trainer


def _torch_onecycle(*, total: int, n: int) -> list[float]:
    """The first ``n`` rates of torch's ``OneCycleLR`` (max_lr 0.1) over ``total`` steps."""
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    reference = lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total)
    rates = []
    for _ in range(n):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        reference.step()
    return rates


def test_onecycle_steps_every_optimizer_step_like_torch(regression, mlp, sq_error):
    lrs, _ = _lrs(regression, mlp, sq_error, scheduler="onecycle")
    flat = [lr for epoch in lrs for lr in epoch]
    assert flat == pytest.approx(_torch_onecycle(total=12, n=12), rel=1e-12)
    assert len(set(flat)) == len(flat)  # a new value at every step


def test_onecycle_counts_optimizer_steps_not_micro_batches(regression, mlp, sq_error):
    # 4 micro-batches per epoch, 2 per step: 2 optimizer steps per epoch, 6 in all
    _, trainer = _lrs(regression, mlp, sq_error, scheduler="onecycle", accumulate_grad_batches=2)
    assert trainer.scheduler.total_steps == 6
    assert trainer.global_step == 6


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("step", {"step_size": 1, "gamma": 0.5}, lambda e: 0.1 * 0.5**e),
        ("exponential", {"gamma": 0.8}, lambda e: 0.1 * 0.8**e),
        ("cosine", {}, lambda e: 0.1 * (1 + math.cos(math.pi * e / 3)) / 2),
        ("multistep", {"milestones": [2], "gamma": 0.1}, lambda e: 0.1 if e < 2 else 0.01),
    ],
)
def test_epoch_schedules_are_constant_within_an_epoch_and_step_per_epoch(
    regression, mlp, sq_error, name, kwargs, expected
):
    lrs, _ = _lrs(regression, mlp, sq_error, scheduler=name, scheduler_kwargs=kwargs)
    for epoch, values in enumerate(lrs):
        assert values == pytest.approx([expected(epoch)] * 4, rel=1e-12)


def test_plateau_reduces_on_the_monitored_metric_after_patience(regression, mlp, sq_error):
    # a metric that never improves: patience 1 -> the LR halves after every second bad epoch
    def flat(output, target):
        return torch.ones(output.shape[0], dtype=output.dtype)

    lrs, _ = _lrs(
        regression,
        mlp,
        sq_error,
        epochs=5,
        val=True,
        metrics={"flat": flat},
        scheduler="plateau",
        scheduler_monitor="val_flat",
        scheduler_kwargs={"patience": 1, "factor": 0.5},
    )
    per_epoch = [values[0] for values in lrs]
    for values in lrs:
        assert len(set(values)) == 1
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    reference = lr_scheduler.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    expected = []
    for _ in range(5):
        expected.append(opt.param_groups[0]["lr"])
        reference.step(1.0)
    assert per_epoch == pytest.approx(expected, rel=1e-12)
    assert per_epoch[-1] < per_epoch[0]


def test_linear_warmup_scales_the_lr_of_the_first_steps(regression, mlp, sq_error, recorder):
    lrs, _ = _lrs(regression, mlp, sq_error, epochs=2, warmup_steps=5)
    flat = [lr for epoch in lrs for lr in epoch]
    assert flat == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1, 0.1, 0.1], rel=1e-12)


def test_warmup_changes_the_actual_sgd_update(regression, mlp, sq_error, recorder):
    cfg = TrainerConfig(
        max_epochs=1, batch_size=8, optimizer="sgd", lr=0.1, warmup_steps=4, progress_bar=False
    )
    Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[recorder]).fit(regression(n=32))
    for step, (before, after, grads) in enumerate(
        zip(recorder.before, recorder.after, recorder.grads, strict=True)
    ):
        for b, a, g in zip(before, after, grads, strict=True):
            torch.testing.assert_close(a, b - 0.1 * (step + 1) / 4 * g, rtol=0, atol=1e-15)


def test_warmup_composes_with_an_epoch_schedule(regression, mlp, sq_error):
    lrs, _ = _lrs(
        regression,
        mlp,
        sq_error,
        epochs=2,
        warmup_steps=2,
        scheduler="step",
        scheduler_kwargs={"step_size": 1, "gamma": 0.5},
    )
    assert lrs == [pytest.approx([0.05, 0.1, 0.1, 0.1]), pytest.approx([0.05] * 4)]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("sgd", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_optimizers_by_name(regression, mlp, sq_error, name, kind):
    cfg = TrainerConfig(max_epochs=1, batch_size=16, optimizer=name, lr=0.01, progress_bar=False)
    trainer = Trainer(mlp(), loss=sq_error, config=cfg)
    trainer.fit(regression(n=32))
    assert type(trainer.optimizer) is kind


def test_param_groups_get_their_own_lr_in_the_update(regression, mlp, sq_error, recorder):
    groups = (ParamGroup(pattern=r"bias$", lr=0.01, weight_decay=0.0),)
    cfg = TrainerConfig(
        max_epochs=1,
        batch_size=32,
        optimizer="sgd",
        lr=0.1,
        weight_decay=0.0,
        param_groups=groups,
        progress_bar=False,
    )
    model = mlp()
    trainer = Trainer(model, loss=sq_error, config=cfg, callbacks=[recorder])
    trainer.fit(regression(n=32))
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.1, 0.01]
    biases = {id(p) for n, p in model.named_parameters() if n.endswith("bias")}
    assert {id(p) for p in trainer.optimizer.param_groups[1]["params"]} == biases
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    for p, b, a, g in zip(
        params, recorder.before[0], recorder.after[0], recorder.grads[0], strict=True
    ):
        lr = 0.01 if id(p) in biases else 0.1
        torch.testing.assert_close(a, b - lr * g, rtol=0, atol=1e-15)


def test_param_group_matching_nothing_is_an_error(regression, mlp, sq_error):
    cfg = TrainerConfig(
        param_groups=(ParamGroup(pattern="nonexistent", lr=0.1),), progress_bar=False
    )
    with pytest.raises(ValueError, match="nonexistent"):
        Trainer(mlp(), loss=sq_error, config=cfg).fit(regression(n=8))


@pytest.mark.parametrize("pattern", ["bias(", "[", ""])
def test_param_group_pattern_is_checked_when_the_group_is_made(pattern):
    # a bad regular expression surfaced only when fit built the optimizer
    with pytest.raises(ValueError, match=r"ParamGroup\.pattern"):
        ParamGroup(pattern=pattern, lr=0.1)


@pytest.mark.parametrize(
    ("field", "value"),
    [("warmup_steps", 0.5), ("warmup_steps", 2.5), ("num_workers", 1.5), ("lr", "0.1"),
     ("weight_decay", math.inf)],
)  # fmt: skip
def test_config_numbers_of_the_wrong_kind_name_the_field(field, value):
    # a warmup of 0.5 steps ran the first step at twice the learning rate; lr="0.1" was a
    # comparison error naming nothing; an infinite weight decay was accepted
    with pytest.raises(ValueError, match=f"TrainerConfig.{field} must be"):
        TrainerConfig(**{field: value})


@pytest.mark.parametrize(
    ("name", "kwargs", "key"),
    [
        ("cosine", {"T_max": 0}, "T_max"),  # integer modulo by zero inside torch
        ("cosine", {"T_max": -3}, "T_max"),  # a cosine running backwards
        ("cosine", {"eta_min": -0.5}, "eta_min"),  # negative LRs: gradient ascent
        ("step", {"step_size": 0}, "step_size"),  # modulo by zero
        ("step", {"step_size": -1}, "step_size"),  # decayed every epoch
        ("step", {"gamma": 0.0}, "gamma"),  # LR 0 after the first epoch
        ("step", {"gamma": math.nan}, "gamma"),  # NaN LRs
        ("exponential", {"gamma": -0.5}, "gamma"),  # LRs of alternating sign
        ("exponential", {"gamma": math.inf}, "gamma"),  # infinite LRs
        ("multistep", {"milestones": [0, 2]}, "milestones"),  # milestone 0 never reached
        ("multistep", {"milestones": [1.5]}, "milestones"),  # a float milestone never reached
        ("multistep", {"milestones": [1], "gamma": -1.0}, "gamma"),
        ("onecycle", {"div_factor": 0.0}, "div_factor"),  # ZeroDivisionError
        ("onecycle", {"total_steps": 5}, "total_steps"),  # ran out at step 6 of 12
        ("plateau", {"factor": 0.0}, "factor"),  # set the LR to 0
        ("plateau", {"patience": -1}, "patience"),  # reduced every epoch
    ],
)
def test_bad_scheduler_kwargs_are_refused_before_training_naming_the_key(
    regression, mlp, sq_error, recorder, name, kwargs, key
):
    cfg = TrainerConfig(max_epochs=3, batch_size=8, scheduler=name, scheduler_kwargs=kwargs,
                        progress_bar=False)  # fmt: skip
    trainer = Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[recorder])
    match = rf"TrainerConfig\.scheduler_kwargs\['{key}'\] .*'{name}'"
    with pytest.raises(ValueError, match=match):
        trainer.fit(regression(n=32))  # 4 steps per epoch, 12 in all
    assert recorder.steps == []  # refused before the first step


def test_a_warmup_longer_than_the_training_is_warned_about(regression, mlp, sq_error):
    cfg = TrainerConfig(max_epochs=2, batch_size=8, warmup_steps=9, progress_bar=False)
    with pytest.warns(UserWarning, match="warmup_steps=9 exceeds the 8 optimizer steps") as caught:
        Trainer(mlp(), loss=sq_error, config=cfg).fit(regression(n=32))
    assert caught[0].filename == __file__  # points at the fit call


def test_milestones_as_a_tuple_of_numpy_integers_are_taken():
    # torch takes any iterable of epochs: the check refuses bad values, not other containers
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    config = TrainerConfig(scheduler="multistep",
                           scheduler_kwargs={"milestones": (np.int64(2),), "gamma": 0.5})  # fmt: skip
    scheduler, _ = build_scheduler(opt, config, 10)
    for _ in range(2):
        opt.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05, rel=1e-12)


class _InfGradient(torch.autograd.Function):
    """The identity, whose gradient is infinite: an fp16 overflow in the backward pass."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


class _OverflowingLoss:
    """Squared error whose gradients overflow in the first ``overflows`` calls (steps)."""

    def __init__(self, overflows: int) -> None:
        self.calls, self.overflows = 0, overflows

    def __call__(self, output, target):
        self.calls += 1
        if self.calls <= self.overflows:
            output = _InfGradient.apply(output)
        return (output - target) ** 2


def _fp16_lrs(regression, mlp, *, overflows, epochs=2, callbacks=(), **overrides):
    """Per-step LRs (group 0) of a run whose first ``overflows`` steps the scaler skips.

    A CPU GradScaler keeps the CUDA one's books (fp16 itself needs CUDA)."""
    monitor = LRMonitor()
    cfg = TrainerConfig(max_epochs=epochs, batch_size=8, optimizer="sgd", lr=0.1,
                        progress_bar=False, **overrides)  # fmt: skip
    trainer = Trainer(mlp(), loss=_OverflowingLoss(overflows), config=cfg,
                      callbacks=[monitor, *callbacks])  # fmt: skip
    trainer._setup_runtime()
    trainer._scaler = torch.amp.GradScaler("cpu")
    trainer.fit(regression(n=32))  # 4 steps per epoch
    return [lrs[0] for _, lrs in monitor.history], trainer


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [({"warmup_steps": 4}, [0.025, 0.05, 0.075, 0.1, 0.1, 0.1]),
     ({"scheduler": "onecycle"}, None)],
)  # fmt: skip
def test_fp16_steps_the_scaler_skips_leave_the_schedule_where_it_was(
    regression, mlp, overrides, expected
):
    # the scaler's skipped steps (overflows, common at the start) advanced the schedule: the
    # first update was made at the warmup's third rate, or at the peak of a one-cycle schedule
    if expected is None:  # the one-cycle rates of torch over the 8 planned steps
        expected = _torch_onecycle(total=8, n=6)
    with warnings.catch_warnings():
        # torch's "Detected call of `lr_scheduler.step()` before `optimizer.step()`"
        warnings.simplefilter("error")
        lrs, trainer = _fp16_lrs(regression, mlp, overflows=2, **overrides)
    assert trainer.global_step == 8 and trainer._scaler.get_scale() == 2.0**14  # 2 skipped
    assert lrs[:3] == pytest.approx([expected[0]] * 3, rel=1e-12)  # held over the 2 skips
    assert lrs[2:] == pytest.approx(expected, rel=1e-12)


class _SaveAtEpochEnd:
    def __init__(self, path) -> None:
        self.path = path

    def on_epoch_end(self, trainer) -> None:
        if trainer.epoch == 0:
            trainer.save_checkpoint(self.path)


def test_fp16_skipped_steps_keep_the_warmup_where_it_was_across_a_resume(regression, mlp, tmp_path):
    # the steps the warmup counted were not in the checkpoint: a resume counted the skips too
    path = tmp_path / "ck.pt"
    lrs, _ = _fp16_lrs(regression, mlp, overflows=2, warmup_steps=8,
                       callbacks=[_SaveAtEpochEnd(path)])  # fmt: skip
    monitor = LRMonitor()
    cfg = TrainerConfig(max_epochs=2, batch_size=8, optimizer="sgd", lr=0.1, warmup_steps=8,
                        progress_bar=False)  # fmt: skip
    resumed = Trainer(mlp(), loss=_OverflowingLoss(0), config=cfg, callbacks=[monitor])
    resumed._setup_runtime()
    resumed._scaler = torch.amp.GradScaler("cpu")
    resumed.fit(regression(n=32), ckpt_path=path)
    assert [lr[0] for step, lr in monitor.history if step >= 4] == pytest.approx(lrs[4:],
                                                                                rel=1e-12)  # fmt: skip
    assert lrs[4:] == pytest.approx([0.3 / 8, 0.4 / 8, 0.5 / 8, 0.6 / 8], rel=1e-12)
