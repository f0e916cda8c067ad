"""Optimizers by name with parameter groups, LR schedules and the frequency they step at."""

from __future__ import annotations

import math
import numbers
import re
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from qfnet.training.config import TrainerConfig

__all__ = ["SCHEDULER_INTERVALS", "build_optimizer", "build_scheduler", "warmup_factor"]

#: When each schedule steps: per optimizer step, per epoch, or per epoch on a monitored metric.
SCHEDULER_INTERVALS = {
    "none": None,
    "onecycle": "step",
    "step": "epoch",
    "multistep": "epoch",
    "exponential": "epoch",
    "cosine": "epoch",
    "plateau": "metric",
}


def build_optimizer(
    named_parameters: Iterable[tuple[str, nn.Parameter]], config: TrainerConfig
) -> torch.optim.Optimizer:
    """The optimizer named in ``config`` over parameter groups chosen by name patterns.

    Args:
        named_parameters: ``(name, parameter)`` pairs; frozen parameters are left out.
        config: Supplies ``optimizer``, ``lr``, ``weight_decay``, ``momentum``, ``betas`` and
            ``param_groups``.

    Examples:
        >>> from qfnet.training.config import ParamGroup
        >>> cfg = TrainerConfig(optimizer="sgd", lr=0.1, momentum=0.9,
        ...                     param_groups=(ParamGroup(pattern="bias", lr=0.01),))
        >>> opt = build_optimizer(nn.Linear(2, 1).named_parameters(), cfg)
        >>> [g["lr"] for g in opt.param_groups]
        [0.1, 0.01]
    """
    default: list[nn.Parameter] = []
    groups: list[list[nn.Parameter]] = [[] for _ in config.param_groups]
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        for i, spec in enumerate(config.param_groups):
            if re.search(spec.pattern, name):
                groups[i].append(param)
                break
        else:
            default.append(param)
    param_groups: list[dict[str, Any]] = [
        {"params": default, "lr": config.lr, "weight_decay": config.weight_decay}
    ]
    for spec, params in zip(config.param_groups, groups, strict=True):
        if not params:
            raise ValueError(f"ParamGroup pattern {spec.pattern!r} matches no trainable parameter")
        param_groups.append(
            {
                "params": params,
                "lr": config.lr if spec.lr is None else spec.lr,
                "weight_decay": config.weight_decay
                if spec.weight_decay is None
                else spec.weight_decay,
            }
        )
    param_groups = [g for g in param_groups if g["params"]]
    if not param_groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    name = config.optimizer
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum)
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=config.lr, betas=config.betas)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=config.lr, betas=config.betas)
    return torch.optim.RMSprop(param_groups, lr=config.lr, momentum=config.momentum)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainerConfig, steps_per_epoch: int | None
) -> tuple[Any, str | None]:
    """The LR schedule named in ``config`` and the interval it steps at.

    Defaults: ``onecycle`` peaks at each group's ``lr`` over ``max_epochs * steps_per_epoch``
    optimizer steps; ``cosine`` anneals over ``max_epochs``; ``step`` uses ``step_size=1``
    (torch's ``gamma=0.1``); ``exponential`` uses ``gamma=0.9``; ``plateau`` follows
    ``config.monitor_mode`` when its ``scheduler_monitor`` is ``config.monitor``, else ``min``.
    Everything can be overridden through ``config.scheduler_kwargs``.

    Returns:
        ``(scheduler or None, interval)`` with interval in ``step``, ``epoch``, ``metric``.

    Raises:
        ValueError: A ``scheduler_kwargs`` value that torch would take silently or fail on
            without naming it (e.g. ``T_max=0``, ``gamma <= 0``, a ``onecycle`` ``total_steps``
            shorter than the training), naming the key.

    Warns:
        UserWarning: ``warmup_steps`` exceeds the optimizer steps of the training (the LR
            never reaches ``lr``).

    Examples:
        >>> opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
        >>> build_scheduler(opt, TrainerConfig(scheduler="cosine"), 10)[1]
        'epoch'
    """
    name, kwargs = config.scheduler, dict(config.scheduler_kwargs)
    interval = SCHEDULER_INTERVALS[name]
    trained = None if steps_per_epoch is None else config.max_epochs * steps_per_epoch
    _check_warmup(config.warmup_steps, trained)
    if name == "none":
        return None, None
    _check_kwargs(name, kwargs)
    if name == "onecycle":
        if "total_steps" not in kwargs:
            if trained is None:
                raise ValueError(
                    "scheduler 'onecycle' needs scheduler_kwargs['total_steps'] when the "
                    "training loader has no length"
                )
            kwargs["total_steps"] = trained
        elif trained is not None and kwargs["total_steps"] < trained:
            # torch raised only once the schedule ran out, mid-training
            raise ValueError(
                f"TrainerConfig.scheduler_kwargs['total_steps'] for scheduler 'onecycle' is "
                f"{kwargs['total_steps']}, fewer than the {trained} optimizer steps of training "
                f"(max_epochs={config.max_epochs} x {steps_per_epoch} per epoch)"
            )
        kwargs.setdefault("max_lr", [g["lr"] for g in optimizer.param_groups])
        return lr_scheduler.OneCycleLR(optimizer, **kwargs), interval
    if name == "step":
        kwargs.setdefault("step_size", 1)
        return lr_scheduler.StepLR(optimizer, **kwargs), interval
    if name == "multistep":
        if "milestones" not in kwargs:
            raise ValueError("scheduler 'multistep' needs scheduler_kwargs['milestones']")
        return lr_scheduler.MultiStepLR(optimizer, **kwargs), interval
    if name == "exponential":
        kwargs.setdefault("gamma", 0.9)
        return lr_scheduler.ExponentialLR(optimizer, **kwargs), interval
    if name == "cosine":
        kwargs.setdefault("T_max", config.max_epochs)
        return lr_scheduler.CosineAnnealingLR(optimizer, **kwargs), interval
    # monitor_mode describes config.monitor: it applies only when plateau watches that metric
    same = config.scheduler_monitor == config.monitor
    kwargs.setdefault("mode", config.monitor_mode if same else "min")
    return lr_scheduler.ReduceLROnPlateau(optimizer, **kwargs), interval


#: Per scheduler, the ``scheduler_kwargs`` torch takes without a check of its own (or fails on
#: without naming): ``T_max=0`` or ``step_size=0`` divided by zero, a ``gamma`` of 0, below 0
#: or NaN gave LRs of 0, of alternating sign or NaN, ``step_size=-1`` decayed every epoch, a
#: ``factor`` of 0 set the LR to 0, a negative ``eta_min`` turned descent into ascent.
_POSITIVE_INTS = {"step": ("step_size",), "cosine": ("T_max",), "onecycle": ("total_steps",)}
_NONNEGATIVE_INTS = {"plateau": ("patience", "cooldown")}
_POSITIVE_NUMBERS = {
    "step": ("gamma",),
    "multistep": ("gamma",),
    "exponential": ("gamma",),
    "onecycle": ("div_factor", "final_div_factor"),
}
_NONNEGATIVE_NUMBERS = {"cosine": ("eta_min",)}


def _check_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Raise a ``ValueError`` naming the first bad ``scheduler_kwargs`` value of ``name``."""

    def bad(key: str, rule: str) -> ValueError:
        return ValueError(f"TrainerConfig.scheduler_kwargs[{key!r}] must be {rule} for "
                          f"scheduler {name!r}, got {kwargs[key]!r}")  # fmt: skip

    for key in _POSITIVE_INTS.get(name, ()):
        if key in kwargs and not (_is_int(kwargs[key]) and kwargs[key] >= 1):
            raise bad(key, "a whole number >= 1")
    for key in _NONNEGATIVE_INTS.get(name, ()):
        if key in kwargs and not (_is_int(kwargs[key]) and kwargs[key] >= 0):
            raise bad(key, "a whole number >= 0")
    for key in _POSITIVE_NUMBERS.get(name, ()):
        if key in kwargs and not (_is_finite(kwargs[key]) and kwargs[key] > 0):
            raise bad(key, "a finite number > 0")
    for key in _NONNEGATIVE_NUMBERS.get(name, ()):
        if key in kwargs and not (_is_finite(kwargs[key]) and kwargs[key] >= 0):
            raise bad(key, "a finite number >= 0")
    if name == "plateau" and "factor" in kwargs:
        if not (_is_finite(kwargs["factor"]) and 0 < kwargs["factor"] < 1):
            raise bad("factor", "a number in (0, 1)")
    if name == "multistep" and "milestones" in kwargs:
        milestones = kwargs["milestones"]
        # a milestone below 1 or a float one is never reached: torch ignored it
        if not (
            isinstance(milestones, list | tuple) and all(_is_int(m) and m >= 1 for m in milestones)
        ):
            raise bad("milestones", "a list of epoch numbers >= 1")


def _check_warmup(warmup_steps: int, trained: int | None) -> None:
    if trained is not None and warmup_steps > trained:
        # four levels up: build_scheduler, Trainer._setup_fit, fit (or lr_find), the caller
        warnings.warn(f"TrainerConfig.warmup_steps={warmup_steps} exceeds the {trained} "
                      "optimizer steps of training: the LR never reaches TrainerConfig.lr",
                      stacklevel=5)  # fmt: skip


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return number and math.isfinite(value)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup multiplier ``(step + 1) / warmup_steps`` for 0-based ``step``, then 1.

    Examples:
        >>> [warmup_factor(s, 4) for s in range(5)]
        [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps
