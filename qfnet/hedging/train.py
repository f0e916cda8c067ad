"""Train a hedging policy through the shared Trainer on fixed train/validation path sets.

The Trainer's batch is a tensor of packed paths (see :func:`qfnet.hedging.markets.pack`); the
model is :class:`HedgeModel`, whose forward returns the per-path P&L and which holds the risk
measure (its learnable parameters, e.g. the ES VaR level, are trained with the policy); the
loss is ``model.risk_loss``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import Dataset

from qfnet import functional as F
from qfnet.hedging.config import (
    ConfigError,
    DerivativeConfig,
    HedgeConfig,
    MarketConfig,
    config_from_dict,
    config_to_dict,
)
from qfnet.hedging.markets import HedgeData, Market, pack, unpack
from qfnet.hedging.pnl import run_strategy
from qfnet.hedging.strategies import LearnedStrategy, WhalleyWilmott, build_policy, ww_grid
from qfnet.losses import ExpectedShortfall, RiskMeasure, make_risk_measure
from qfnet.training import EarlyStopping, Trainer, TrainerConfig, resolve_device
from qfnet.training.checkpoint import (
    ModelFileError,
    damage_summary,
    load_checkpoint,
    load_verified,
    save_atomically,
    write_text_atomically,
)
from qfnet.training.distributed import barrier, init_distributed
from qfnet.training.state import _HORIZON_KEYS  # the schedules the Trainer plans over max_epochs

__all__ = [
    "HedgeModel",
    "PathSet",
    "TrainResult",
    "build_model",
    "hedge_forward",
    "load_run",
    "make_paths",
    "train",
]

_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class HedgeModel(nn.Module):
    """Policy, market constants and the risk measure (with its learnable parameters, e.g. the
    ES VaR level); ``forward(packed paths) -> per-path P&L``, ``risk_loss(pnl, None)`` the loss.

    Training with expected shortfall only needs gradients through the tail paths (where
    ``-pnl > w``; elsewhere ``(-pnl - w)^+`` is flat): the forward then evaluates all paths
    without a graph, and re-evaluates only the tail paths (about ``1 - alpha`` of them) with
    one. Values and gradients equal those of the full evaluation, at about half the cost.

    With expected shortfall the loss (``val_loss`` too, as ``qfnet hedge train`` prints it) is
    the Rockafellar-Uryasev value at the learned level ``w``: an upper bound of the sample's ES,
    equal where ``w`` minimises it (a VaR of the sample: with ``N (1 - alpha)`` whole, any level
    between the two order statistics around it; otherwise the order statistic itself, not an
    interpolated quantile). Where the level is off it differs: with a P&L of 0 on every
    path it is ``w`` (``w > 0``) or ``-w alpha / (1 - alpha)``, where the ES (what
    :func:`~qfnet.hedging.backtest.backtest` reports) is 0.

    Shape:
        - packed: (N, L) (or (1, N, L) as collated by a loader)
        - output: (N,)

    Examples:
        >>> config = config_from_dict({"market": {"n_steps": 5}})
        >>> market = Market(config)
        >>> model = build_model(config, market)
        >>> data, _ = make_paths(market, 8, split="train", seed=0)
        >>> pnl = model(pack(data).float())
        >>> pnl.shape, model.risk_loss(pnl).shape
        (torch.Size([8]), torch.Size([]))
    """

    def __init__(
        self,
        strategy: LearnedStrategy,
        risk: RiskMeasure,
        *,
        n_steps: int,
        cost: torch.Tensor,
        premium: float = 0.0,
        liquidate: bool = True,
    ) -> None:
        super().__init__()
        self.strategy, self.risk = strategy, risk
        self.n_steps, self.premium, self.liquidate = n_steps, float(premium), liquidate
        self.register_buffer("cost", cost.detach().clone())
        self.tail_only = True

    def unpack(self, packed: torch.Tensor) -> HedgeData:
        """Packed paths to :class:`HedgeData` views."""
        if packed.dim() == 3 and packed.shape[0] == 1:  # one pre-collated batch
            packed = packed[0]
        return unpack(packed, self.n_steps, self.cost.numel())

    def pnl(self, data: HedgeData) -> torch.Tensor:
        """Per-path P&L of the policy on ``data``."""
        positions = self.strategy(data)
        return F.hedge_pnl(
            positions, data.prices, data.payoff, cost=self.cost.to(data.prices.dtype),
            premium=self.premium, liquidate=self.liquidate, income=data.income,
        )  # fmt: skip

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        data = self.unpack(packed)
        es = isinstance(self.risk, ExpectedShortfall) and self.risk.ready
        if not (self.tail_only and es and self.training and torch.is_grad_enabled()):
            return self.pnl(data)
        with torch.no_grad():
            pnl = self.pnl(data)
            tail = torch.nonzero(-pnl >= self.risk.var_level.to(pnl.dtype)).squeeze(1)
        sub = HedgeData(*(x.index_select(0, tail) for x in data))
        return pnl.index_put((tail,), self.pnl(sub))

    def risk_loss(self, pnl: torch.Tensor, target: object = None) -> torch.Tensor:
        """The training loss: the risk measure of the P&L (``target`` is ignored)."""
        return self.risk(pnl)


def hedge_forward(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, None, None]:
    """Trainer forward: the P&L is the output, there is no target and no sample weight.

    Examples:
        >>> config = config_from_dict({"market": {"n_steps": 5}})
        >>> market = Market(config)
        >>> data, _ = make_paths(market, 8, split="train", seed=0)
        >>> pnl, target, weight = hedge_forward(build_model(config, market), pack(data).float())
        >>> pnl.shape, target, weight
        (torch.Size([8]), None, None)
    """
    return model(batch), None, None


class PathSet(Dataset):
    """Rows of a packed path tensor; ``__getitems__`` slices a whole batch at once.

    The batch comes back as a one-element list, which the default collate turns into a
    ``(1, B, L)`` tensor (one copy) instead of stacking ``B`` rows one by one.

    Examples:
        >>> paths = PathSet(torch.zeros(10, 53))
        >>> len(paths), paths[0].shape, paths.__getitems__([0, 3, 5])[0].shape
        (10, torch.Size([53]), torch.Size([3, 53]))
    """

    def __init__(self, packed: torch.Tensor) -> None:
        self.packed = packed

    def __len__(self) -> int:
        return self.packed.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.packed[index]

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        return [self.packed[torch.as_tensor(indices)]]


def make_paths(market: Market, n_paths: int, *, split: str, seed: int) -> tuple[HedgeData, Any]:
    """Simulate the fixed ``split`` (train, val or test) path set of an experiment seed.

    Each split has its own generator (seed ``3 * seed + offset``), so sets never share paths.
    Returns the data and the raw paths.

    Examples:
        >>> config = config_from_dict({"market": {"n_steps": 5}})
        >>> market = Market(config)
        >>> val, raw = make_paths(market, 8, split="val", seed=0)
        >>> val.spot.shape, torch.equal(val.spot, make_paths(market, 8, split="val", seed=0)[0].spot)
        (torch.Size([8, 6]), True)
        >>> torch.equal(val.spot, make_paths(market, 8, split="test", seed=0)[0].spot)
        False
    """
    if split not in _SPLIT_OFFSET:
        raise ValueError(f"split must be one of {sorted(_SPLIT_OFFSET)}, got {split!r}")
    generator = torch.Generator(device=market.device or "cpu").manual_seed(
        3 * seed + _SPLIT_OFFSET[split]
    )
    raw = market.simulate(n_paths, generator=generator)
    return market.data(raw), raw


def build_model(config: HedgeConfig, market: Market) -> HedgeModel:
    """The learnable hedge model (policy and risk measure) described by ``config``.

    Examples:
        >>> config = config_from_dict({"objective": {"name": "entropic"}})
        >>> model = build_model(config, Market(config))
        >>> type(model.risk).__name__, type(model.strategy.policy).__name__, model.n_steps
        ('EntropicRisk', 'NoTransactionBandNet', 20)
    """
    s, o = config.strategy, config.objective
    policy = build_policy(s.type, market.n_instruments, s.hidden, s.initial_width, s.activation)
    dtype = _DTYPES[config.training.dtype]
    params = {"alpha": o.alpha} if o.name == "es" else {}
    if o.name in ("entropic", "mean_variance"):
        params = {"risk_aversion": o.risk_aversion}
    return HedgeModel(
        LearnedStrategy(policy.to(dtype), use_reference=s.reference == "delta"),
        make_risk_measure(o.name, **params),
        n_steps=market.n_steps,
        cost=market.cost.to(dtype),
        premium=config.derivative.premium,
        liquidate=config.market.liquidate,
    )


class TrainResult(NamedTuple):
    """Outcome of :func:`train`.

    Examples:
        >>> config = config_from_dict({"market": {"n_steps": 5},
        ...     "paths": {"train": 64, "val": 32, "test": 32},
        ...     "training": {"epochs": 1, "batch_size": 32}, "baselines": {"ww_risk_aversion": 1.0}})
        >>> result = train(config)
        >>> type(result.model).__name__, result.ww_risk_aversion, result.seconds > 0
        ('HedgeModel', 1.0, True)
    """

    model: HedgeModel
    history: Any
    seconds: float
    ww_risk_aversion: float
    cpu_seconds: float


def train(
    config: HedgeConfig,
    run_dir: str | Path | None = None,
    *,
    progress_bar: bool = False,
    resume: bool = False,
) -> TrainResult:
    """Simulate the fixed path sets, train the policy with early stopping and checkpoints, and
    write ``hedge_config.json`` (at the start) and ``model.pt`` (weights plus metadata, at the
    end) to ``run_dir``. A new run (not ``resume``) replaces the one in ``run_dir``: its
    ``model.pt`` and checkpoints are removed at the start.

    With ``resume``, training continues from ``run_dir``'s last checkpoint: the path sets are
    simulated again from the seed (the same paths), and the config must be the run's, but for
    ``training.epochs`` (a run may be extended, except under a ``cosine`` or ``onecycle``
    scheduler, planned over the epochs it was started with) and ``training.patience`` (a run
    that early stopping ended trains on with a larger one).

    ``val_loss`` is the risk measure of the whole validation set: it is evaluated as one batch
    (without a graph), as the entropic risk and the variance of a set are not the mean of
    those of its batches; under ``torchrun`` every process evaluates all of it (the Trainer's
    ``shard_eval=False``), and only rank 0 writes files. Training under ``torchrun`` minimises
    the mean over processes of each one's batch risk: for the entropic, variance and
    mean-variance objectives that is not the risk of the processes' batches together (the ES
    objective at its level is a mean, and the same either way).

    ``seconds`` is the wall time of the Trainer's ``fit`` (simulation excluded) and
    ``cpu_seconds`` its process CPU time (all threads), those of the run before a resume (up to
    its checkpoint) included.

    Raises:
        ValueError: ``resume`` without a checkpoint in ``run_dir``, with another config, or
            with fewer ``training.epochs`` than the run has trained.

    Examples:
        >>> import tempfile
        >>> config = config_from_dict({"market": {"n_steps": 5},
        ...     "paths": {"train": 64, "val": 32, "test": 32},
        ...     "training": {"epochs": 1, "batch_size": 32}, "baselines": {"ww_risk_aversion": 1.0}})
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     result = train(config, tmp)
        ...     written = sorted(p.name for p in Path(tmp).glob("*.*"))
        >>> "model.pt" in written and "hedge_config.json" in written
        True
    """
    t = config.training
    # under torchrun: join the group now (the Trainer reuses it), so that only rank 0 writes
    # (ranks writing model.pt.tmp at once could lose its rename: FileNotFoundError)
    device = resolve_device(t.device)
    group = init_distributed("auto", device)
    writer = group.is_global_zero
    if resume:
        _check_resume(config, run_dir)
    elif run_dir is not None and writer:
        # the replaced run's model goes now (its checkpoints when the Trainer starts): a new
        # run stopped before its end left it beside the new config, as the run's model
        (Path(run_dir) / "model.pt").unlink(missing_ok=True)
        _write_config(Path(run_dir), config)
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    dtype = _DTYPES[t.dtype]
    market = Market(config)
    train_data, _ = make_paths(market, config.paths.train, split="train", seed=config.seed)
    val_data, _ = make_paths(market, config.paths.val, split="val", seed=config.seed)
    ww = _choose_ww(config, market, train_data)
    torch.manual_seed(config.seed)
    model = build_model(config, market)
    trainer = Trainer(
        model,
        loss=model.risk_loss,
        forward=hedge_forward,
        config=TrainerConfig(
            max_epochs=t.epochs, batch_size=t.batch_size, optimizer=t.optimizer, lr=t.lr,
            scheduler=t.scheduler,
            # the validation set in one batch (no graph) and whole on every DDP rank: the
            # Trainer averages the losses of batches and ranks, and the entropic risk or the
            # variance of a set is not the mean of those of its parts (the ES objective at a
            # fixed level is, being a mean)
            eval_batch_size=config.paths.val, shard_eval=False,
            seed=config.seed, run_dir=run_dir, progress_bar=progress_bar, device=t.device,
            tensorboard=run_dir is not None, precision="32",
        ),
        callbacks=[EarlyStopping(monitor="val_loss", patience=t.patience, restore_best_weights=True),
                   clock := _TrainClock()],
    )  # fmt: skip
    train_set, val_set = PathSet(pack(train_data).to(dtype)), PathSet(pack(val_data).to(dtype))
    clock.start()
    history = trainer.fit(train_set, val_set, resume=resume)
    seconds, cpu = clock.elapsed()
    model.cpu()
    if run_dir is not None and writer:
        _save(Path(run_dir), config, model, ww, seconds)
    barrier(group, device)  # the other ranks returned before rank 0 had written model.pt
    return TrainResult(model, history, seconds, ww, cpu)


class _TrainClock:
    """Wall and process CPU seconds the run has trained, those before a resume included: a
    stateful callback, so each checkpoint holds the time up to it (a resumed run reported only
    the seconds since the resume, as its model.pt's ``train_seconds``, while its ``epochs``
    counted the whole run's)."""

    def __init__(self) -> None:
        self.before = (0.0, 0.0)
        self.start()

    def start(self) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def elapsed(self) -> tuple[float, float]:
        """``(seconds, cpu_seconds)`` since the run's start."""
        wall, cpu = time.perf_counter() - self._start[0], time.process_time() - self._start[1]
        return self.before[0] + wall, self.before[1] + cpu

    def state_dict(self) -> dict[str, float]:
        seconds, cpu = self.elapsed()
        return {"seconds": seconds, "cpu_seconds": cpu}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.before = (float(state["seconds"]), float(state["cpu_seconds"]))


def _choose_ww(config: HedgeConfig, market: Market, data: HedgeData) -> float:
    """Whalley-Wilmott risk aversion: from the config, else the grid value with the lowest
    objective on (a subset of) the training paths."""
    if config.baselines.ww_risk_aversion is not None:
        return config.baselines.ww_risk_aversion
    subset = HedgeData(*(x[:50_000] for x in data))
    o = config.objective
    best, best_value = ww_grid()[0], float("inf")
    for gamma in ww_grid():
        pnl = run_strategy(WhalleyWilmott(market, gamma), subset, market).pnl
        value = _objective_value(o.name, pnl, o.alpha, o.risk_aversion)
        if value < best_value:
            best, best_value = gamma, value
    return best


def _objective_value(name: str, pnl: torch.Tensor, alpha: float, risk_aversion: float) -> float:
    if name == "es":
        return float(F.expected_shortfall(pnl, alpha))
    if name == "entropic":
        return float(F.entropic_risk(pnl, risk_aversion))
    if name == "variance":
        return float(F.pnl_variance(pnl))
    return float(F.mean_variance(pnl, risk_aversion))


def _plain_config(config: HedgeConfig) -> dict[str, Any]:
    plain = config_to_dict(config)
    plain["market"]["calibration"] = None  # its parameters are already in the market section
    return plain


def _write_config(run_dir: Path, config: HedgeConfig) -> None:
    text = json.dumps(_plain_config(config), indent=2) + "\n"
    write_text_atomically(text, run_dir / "hedge_config.json")


_RESUME_MAY_CHANGE = ("epochs", "patience")
"""The ``training`` keys a resumed run may change: neither moves its paths or its steps so far."""


def _check_resume(config: HedgeConfig, run_dir: str | Path | None) -> None:
    """A run to resume: its last checkpoint and its config, equal to ``config`` but for the
    number of epochs (only where no ``cosine`` or ``onecycle`` schedule was planned over them,
    and no fewer than the checkpoint has trained) and the early-stopping patience (another seed
    or market would train on other paths)."""
    run = Path(run_dir) if run_dir is not None else None
    if run is None or not (run / "checkpoints" / "last.pt").is_file():
        raise ValueError(f"{run_dir}: no checkpoint to resume (checkpoints/last.pt)")
    try:
        saved = json.loads((run / "hedge_config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{run}: cannot read the run's hedge_config.json to resume: {exc}"
        ) from exc
    if not isinstance(saved, dict):  # a JSON list failed on its .get
        raise ValueError(f"{run}: the run's hedge_config.json is not a config (a JSON object)")
    default = DerivativeConfig.strike  # only an earlier qfnet wrote another for a lookback
    derivative = saved.get("derivative")  # not an object: named below as another derivative
    if isinstance(derivative, dict) and derivative.get("strike", default) != default:
        try:
            saved = _lookback_strike_read(saved, version=1)
        except ConfigError as exc:  # it said "resume it with its own config", which is refused
            raise ValueError(f"{run}: the run's hedge_config.json: {exc}: train a new "
                             "run") from exc  # fmt: skip
    given = _plain_config(config)
    epochs = saved.get("training", {}).get("epochs")
    # the patience too: EarlyStopping decides a restored stop again with the resumed one's (its
    # warning on a stopped run says to resume with a larger patience, which was refused here)
    for plain in (saved, given):
        for key in _RESUME_MAY_CHANGE:
            plain.get("training", {}).pop(key, None)
    if saved != given:
        key = _first_difference(saved, given)
        raise ValueError(f"{run} was trained with another {key} than this config's: resume it "
                         "with its own config (only training.epochs and training.patience may "
                         "change)")  # fmt: skip
    # the Trainer's own refusal named its max_epochs, which neither the config nor the CLI has
    scheduler, now = config.training.scheduler, config.training.epochs
    if scheduler in _HORIZON_KEYS and epochs is not None and epochs != now:
        raise ValueError(f"{run} was started with training.epochs {epochs}, over which its "
                         f"'{scheduler}' learning-rate schedule is planned, not {now}: resume it "
                         f"with the same (--epochs {epochs}), or train a new run")  # fmt: skip
    # before the Trainer starts: a resume past its epochs trained none, and saved the run's
    # model and config as one of the fewer epochs, without a word; refused after the fit, it
    # had rewritten the run's config.json (max_epochs the fewer), metrics.csv and loss.png
    # (a checkpoint without a list of rows is left to the Trainer, which names what it lacks:
    # here it was a bare KeyError 'history')
    history = load_checkpoint(run / "checkpoints" / "last.pt").get("history")
    trained = len(history) if isinstance(history, list) else 0
    if trained > now:
        raise ValueError(f"{run} has trained {trained} epochs, more than training.epochs {now}: "
                         "nothing was trained (resume with more epochs to train on)")  # fmt: skip


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    """The dotted key of the first difference between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "value"


RUN_FORMAT = "qfnet-hedge-run"
RUN_FORMAT_VERSION = 2
"""Version of ``model.pt``'s layout and of the policy's features: a later qfnet that changes
either bumps it, so its runs are refused here instead of loading weights for other inputs.
Version 2 measures a floating-strike lookback's moneyness features against ``market.spot``;
version 1 against ``derivative.strike`` (1 unless set), read where the two are equal."""
_READ_VERSIONS = (1, 2)


def _read_payload(path: Path) -> dict[str, Any]:
    """``model.pt``'s contents, its archive checked and its format version one this qfnet
    reads (a file without the fields, from before they were written, is version 1)."""
    # its CRCs checked: a damaged byte in a weight loaded without a word
    payload = load_verified(path, "trained hedging model")
    if not isinstance(payload, dict):
        raise ModelFileError(path, f"{path} is not a readable trained hedging model: not a mapping")
    fmt, version = payload.get("format", RUN_FORMAT), payload.get("format_version", 1)
    if fmt != RUN_FORMAT or type(version) is not int or version not in _READ_VERSIONS:
        raise ModelFileError(path, f"{path} is {fmt!r} version {version!r}; this qfnet reads "
                             f"{RUN_FORMAT!r} version {' or '.join(map(str, _READ_VERSIONS))} "
                             "(train it again)")  # fmt: skip
    return payload


def _lookback_strike_read(plain: Any, *, version: int) -> Any:
    """A saved plain config of a floating-strike lookback written by an earlier qfnet (format
    version 1), which measured the policy's moneyness features against ``derivative.strike``:
    read at the default strike (the type has none) where that strike is ``market.spot`` (the
    features are this qfnet's), refused otherwise. Loaded as it was, the weights saw other
    inputs without a word (spot 100 at the default strike 1: the first feature 81, now 0, and
    ``d1`` 6, now 0.03)."""
    derivative, market = (plain.get(k) if isinstance(plain, dict) else None
                          for k in ("derivative", "market"))  # fmt: skip
    if version >= 2 or not isinstance(derivative, dict) or derivative.get("type") != "lookback":
        return plain
    strike = derivative.get("strike", DerivativeConfig.strike)
    spot = market.get("spot", MarketConfig.spot) if isinstance(market, dict) else MarketConfig.spot
    if strike != spot:
        raise ConfigError(f"derivative.strike {strike} of a floating-strike lookback: an "
                          "earlier qfnet measured the policy's moneyness features against it, "
                          f"this one against market.spot {spot}")  # fmt: skip
    return plain | {"derivative": derivative | {"strike": DerivativeConfig.strike}}


def _save(run_dir: Path, config: HedgeConfig, model: HedgeModel, ww: float, sec: float) -> None:
    _write_config(run_dir, config)
    plain = _plain_config(config)
    payload = {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "model": model.state_dict(),
        "config": json.dumps(plain),
        "ww_risk_aversion": ww,
        "train_seconds": sec,
    }
    save_atomically(payload, run_dir / "model.pt")


def load_run(run_dir: str | Path) -> tuple[HedgeConfig, HedgeModel, dict[str, Any]]:
    """Load ``run_dir/model.pt`` (``weights_only``): the config, the trained model, metadata.

    Examples:
        >>> import tempfile
        >>> config = config_from_dict({"market": {"n_steps": 5},
        ...     "paths": {"train": 64, "val": 32, "test": 32},
        ...     "training": {"epochs": 1, "batch_size": 32}, "baselines": {"ww_risk_aversion": 1.0}})
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = train(config, tmp)
        ...     loaded, model, meta = load_run(tmp)
        >>> loaded == config, model.training, meta["ww_risk_aversion"]
        (True, False, 1.0)
    """
    path = Path(run_dir) / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"no trained hedging model at {path} (run `qfnet hedge train`)")
    payload = _read_payload(path)
    try:
        plain = json.loads(payload["config"])
        version = payload.get("format_version", 1)
        config = config_from_dict(_lookback_strike_read(plain, version=version))
        model = build_model(config, Market(config))
        cost = model.cost.clone()  # the config's
        model.load_state_dict(payload["model"])
        meta = {k: payload[k] for k in ("ww_risk_aversion", "train_seconds")}
    except ConfigError as exc:  # it named a config key, not the file that held it
        raise ConfigError(f"{path}: the saved config: {exc} (a run of another qfnet version, or "
                          "an edited file: train it again)") from exc  # fmt: skip
    except Exception as exc:  # not a hedging run (a KeyError: another writer), another network
        reason = f"{path} is not a readable trained hedging model: {damage_summary(exc)}"
        raise ModelFileError(path, reason) from exc
    for key, value in meta.items():  # a text value failed later, in the backtest's baselines
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModelFileError(path, f"{path}: field {key!r} must be a number, got {value!r}")
    ww = meta["ww_risk_aversion"]
    if not (math.isfinite(ww) and ww > 0.0):  # failed later in the backtest, naming no file
        raise ModelFileError(path, f"{path}: field 'ww_risk_aversion' must be finite and > 0 "
                             f"(as baselines.ww_risk_aversion), got {ww!r}")  # fmt: skip
    if not torch.equal(model.cost, cost):  # weights trained at other costs than the backtest's
        found, saved = (", ".join(f"{c:g}" for c in x.tolist()) for x in (model.cost, cost))
        raise ModelFileError(path, f"{path}: the weights' cost [{found}] is not the saved "
                             f"config's market.cost [{saved}]")  # fmt: skip
    model.eval()
    return config, model, meta
