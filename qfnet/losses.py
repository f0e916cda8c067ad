"""Thin :class:`torch.nn.Module` wrappers over the risk measures in :mod:`qfnet.functional`.

Each module stores and validates its hyperparameters and calls the function. They take
``(pnl, target=None)`` so that they plug into the shared Trainer as losses; ``target`` is ignored.
They call the functions with ``check_finite=False``: the Trainer's NaN guard stops at the step of
a NaN/inf loss (and the learning-rate finder treats one as divergence), without a host sync. Each
returns a non-finite loss for a P&L holding a NaN or an infinity of either sign (under the
expected shortfall and the entropic risk a +inf path added 0, so the loss was finite).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from qfnet import functional as F

__all__ = [
    "EntropicRisk",
    "ExpectedShortfall",
    "MeanVariance",
    "PnLVariance",
    "RiskMeasure",
    "make_risk_measure",
]


class RiskMeasure(nn.Module):
    """Base class: ``forward(pnl, target=None) -> scalar loss``; ``exact(pnl)`` evaluates it.

    Shape:
        - pnl: (N,); output: scalar

    Examples:
        >>> class ExpectedLoss(RiskMeasure):
        ...     def forward(self, pnl, target=None):
        ...         return -pnl.mean()
        >>> ExpectedLoss().exact(torch.tensor([1.0, 3.0]))
        tensor(-2.)
    """

    def exact(self, pnl: torch.Tensor) -> torch.Tensor:
        """The risk measure of a P&L sample (without auxiliary training variables)."""
        return self(pnl)


class PnLVariance(RiskMeasure):
    """P&L variance (see :func:`qfnet.functional.pnl_variance`).

    Examples:
        >>> PnLVariance()(torch.tensor([1.0, 3.0]))
        tensor(1.)
    """

    def forward(self, pnl: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return F.pnl_variance(pnl, check_finite=False)


class MeanVariance(RiskMeasure):
    """Mean-variance loss (see :func:`qfnet.functional.mean_variance`).

    Examples:
        >>> MeanVariance(2.0)(torch.tensor([1.0, 3.0]))
        tensor(-1.)
    """

    def __init__(self, risk_aversion: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(risk_aversion) and risk_aversion >= 0.0):
            raise ValueError(f"risk_aversion must be finite and >= 0, got {risk_aversion}")
        self.risk_aversion = float(risk_aversion)

    def forward(self, pnl: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return F.mean_variance(pnl, self.risk_aversion, check_finite=False)


class EntropicRisk(RiskMeasure):
    """Entropic risk with risk aversion per unit notional (see :func:`qfnet.functional.entropic_risk`).

    Examples:
        >>> EntropicRisk(5.0)(torch.zeros(3) + 2.0)
        tensor(-2.)
    """

    def __init__(self, risk_aversion: float = 1.0, notional: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(risk_aversion) and risk_aversion > 0.0):  # inf: a NaN loss
            raise ValueError(f"risk_aversion must be finite and > 0, got {risk_aversion}")
        if not (math.isfinite(notional) and notional > 0.0):
            raise ValueError(f"notional must be finite and > 0, got {notional}")
        self.risk_aversion = float(risk_aversion)
        self.notional = float(notional)

    def forward(self, pnl: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        risk = F.entropic_risk(pnl, self.risk_aversion, notional=self.notional, check_finite=False)
        return _nan_unless_finite(risk, pnl)


class ExpectedShortfall(RiskMeasure):
    """Expected shortfall in Rockafellar-Uryasev form with a learnable VaR level ``w``.

    ``forward`` returns ``w + E[(-pnl - w)^+] / (1 - alpha)``, whose minimum over ``w`` is the
    ES; train ``w`` jointly with the hedge. ``w`` starts unset and is initialised to the empirical
    VaR of the first P&L batch it sees in training mode (so the objective starts at the ES, not
    far above it); evaluated before that (eval mode), the loss is the sample's ES, and ``w``
    stays unset. ``exact`` returns the empirical ES of a sample.

    Under ``torch.distributed`` (DDP) that first batch is every rank's batch together,
    gathered, as ``SyncBatchNorm`` gathers its statistics (every rank must make the call): set
    from each rank's own (also by an evaluation before training, on each rank's share of the
    data), the ranks' levels differed for the whole run.

    Examples:
        >>> es = ExpectedShortfall(0.95)
        >>> es(torch.arange(100.0))
        tensor(-2., grad_fn=<WhereBackward0>)
    """

    def __init__(self, alpha: float = 0.95) -> None:
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.var_level = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self._ready = False

    def forward(self, pnl: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        if self.ready:
            level = self.var_level.to(pnl.dtype)
        elif not self.training:  # before training: the sample's ES, no level kept
            # not the objective at the interpolated VaR: with N (1 - alpha) fractional that
            # is above the minimum (2.78 for an ES of 2.27 on 10 normal paths at 0.95)
            es = F.expected_shortfall(pnl, self.alpha, check_finite=False)
            return _nan_unless_finite(es, pnl)
        else:  # host sync, only until the level is set
            with torch.no_grad():
                first = _all_ranks(pnl.detach())
                self.var_level.copy_(F.value_at_risk(first, self.alpha, check_finite=False))
                self.initialised.fill_(True)
            self._ready = True
            level = self.var_level.to(pnl.dtype)
        return _nan_unless_finite(
            F.expected_shortfall_ru(pnl, level, self.alpha, check_finite=False), pnl
        )

    def exact(self, pnl: torch.Tensor) -> torch.Tensor:
        return F.expected_shortfall(pnl, self.alpha)

    @property
    def ready(self) -> bool:
        """Whether the VaR level has been initialised (from a first batch or a checkpoint)."""
        if not self._ready and bool(self.initialised):
            self._ready = True
        return self._ready

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        # read ``initialised`` again: a state saved before the first batch (as ``lr_find``
        # restores after its sweep) left the level at 0, never set, and every checkpoint unset
        self._ready = False


def _nan_unless_finite(loss: torch.Tensor, pnl: torch.Tensor) -> torch.Tensor:
    """``loss``, or NaN where it is finite although ``pnl`` holds a NaN or an infinity, without
    a host sync: a +inf path is 0 in the ES tail term and in the entropic risk's exponential, so
    that loss stayed finite and the Trainer's NaN guard (it checks the loss) trained on.

    Shape:
        - loss: scalar; pnl: (N,); output: scalar
    """
    keep = torch.isfinite(pnl).all() | ~torch.isfinite(loss)  # -inf P&L: an inf loss, kept
    return torch.where(keep, loss, torch.full_like(loss, math.nan))


def _all_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` of every rank of the default process group, concatenated in rank order (the
    tensor itself without one). Ranks may hold different numbers of values.

    Shape:
        - values: (N_rank,); output: (sum of N_rank,)
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    world = dist.get_world_size()
    count = torch.tensor([values.numel()], device=values.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = values.new_zeros(max(sizes))  # all_gather needs equal sizes
    padded[: values.numel()] = values.reshape(-1)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


# name -> (class, the parameters it takes)
_MEASURES: dict[str, tuple[type[RiskMeasure], tuple[str, ...]]] = {
    "es": (ExpectedShortfall, ("alpha",)),
    "expected_shortfall": (ExpectedShortfall, ("alpha",)),
    "entropic": (EntropicRisk, ("risk_aversion", "notional")),
    "variance": (PnLVariance, ()),
    "mean_variance": (MeanVariance, ("risk_aversion",)),
}


def make_risk_measure(name: str, **params: float) -> RiskMeasure:
    """Build a risk measure by name: ``es``/``expected_shortfall``, ``entropic``, ``variance``,
    ``mean_variance``.

    Raises:
        ValueError: an unknown name, a parameter the measure does not take, or a bad value.

    Examples:
        >>> make_risk_measure("es", alpha=0.99).alpha
        0.99
    """
    key = name.lower()
    if key not in _MEASURES:
        raise ValueError(
            f"unknown risk measure {name!r}; expected one of es, entropic, variance, mean_variance"
        )
    cls, takes = _MEASURES[key]
    unknown = sorted(set(params) - set(takes))
    if unknown:  # was the constructor's bare TypeError ("unexpected keyword argument")
        raise ValueError(f"risk measure {name!r} takes no parameter(s) {unknown}; it takes "
                         f"{list(takes) or 'none'}")  # fmt: skip
    return cls(**params)
