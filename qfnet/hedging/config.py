"""Hedging experiment configuration: frozen dataclasses loaded from YAML with validation.

Every error names the offending key by its dotted path (e.g. ``market.volatility``), and unknown
keys are rejected with a suggestion, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from pricing.heston import PARAM_NAMES as HESTON_PARAMS
from qfnet.training.device import DEVICE_TYPES

__all__ = [
    "BaselineConfig",
    "ConfigError",
    "DerivativeConfig",
    "HedgeConfig",
    "MarketConfig",
    "ObjectiveConfig",
    "PathsConfig",
    "StrategyConfig",
    "TrainingConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range.

    Examples:
        >>> config_from_dict({"market": {"volatilty": 0.3}})
        Traceback (most recent call last):
        ...
        qfnet.hedging.config.ConfigError: unknown key 'market.volatilty' (did you mean 'volatility'?)
    """


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value}")
    if value == math.inf:  # set in Python (YAML's .inf is refused when read): it passed
        raise ConfigError(f"{key} must be a finite number, got {value}")


def _unused(config: Any, prefix: str, names: tuple[str, ...], why: str, fix: str) -> None:
    """Refuse each of ``names`` that ``config`` sets to another value than its default (the
    class attribute) where its choice of model, type or policy has no use for it: it was
    ignored, silently. The message: ``{prefix}.{name} {why}: {fix}, got {value}``."""
    for name in names:
        value = getattr(config, name)
        if value != getattr(type(config), name):
            raise ConfigError(f"{prefix}.{name} {why}: {fix}, got {value!r}")


_MAX_MATURITY = 100.0  # years: longer than any traded option's


@dataclass(frozen=True)
class MarketConfig:
    """Market model, hedging instruments and trading frictions.

    ``maturity`` is in years, at most 100. ``model`` is ``black_scholes`` (uses ``volatility``)
    or ``heston`` (uses ``v0, kappa, theta, sigma, rho``, or a calibration result JSON named by
    ``calibration`` whose ``params`` hold them); a parameter of the other model, set to another
    value than its default, is refused (it was ignored). ``cost`` is the proportional cost rate,
    one float or one per instrument. ``liquidate`` sells the final hedge at maturity (a last
    trade that pays its cost, :func:`qfnet.functional.trades`); false keeps the position, its
    value at maturity counted at the final price without a closing cost.

    Examples:
        >>> MarketConfig(model="heston", instruments=["underlying", "variance_swap"]).validate("market")
        >>> MarketConfig(instruments=["underlying", "variance_swap"]).validate("market")
        Traceback (most recent call last):
        ...
        qfnet.hedging.config.ConfigError: market.instruments: variance_swap needs model: heston
    """

    model: Literal["black_scholes", "heston"] = "black_scholes"
    spot: float = 1.0
    rate: float = 0.0
    dividend: float = 0.0
    maturity: float = 20 / 250
    n_steps: int = 20
    volatility: float = 0.2
    v0: float = 0.04
    kappa: float = 1.0
    theta: float = 0.04
    sigma: float = 0.2
    rho: float = -0.7
    calibration: str | None = None
    cost: float | list[float] = 1e-3
    liquidate: bool = True
    instruments: list[str] = field(default_factory=lambda: ["underlying"])

    def validate(self, prefix: str) -> None:
        for name in ("spot", "maturity", "n_steps", "volatility", "kappa", "theta", "sigma"):
            _positive(f"{prefix}.{name}", getattr(self, name))
        if self.maturity > _MAX_MATURITY:  # 1e6 failed in the delta on a spot of 0, naming no key
            raise ConfigError(f"{prefix}.maturity must be in (0, {_MAX_MATURITY:g}] (years), got "
                              f"{self.maturity}")  # fmt: skip
        if not self.v0 >= 0:  # NaN too
            raise ConfigError(f"{prefix}.v0 must be >= 0, got {self.v0}")
        if not -1 < self.rho < 1:
            raise ConfigError(f"{prefix}.rho must be in (-1, 1), got {self.rho}")
        # Heston's v0 under the default black_scholes trained a constant-vol market
        other = ("volatility",) if self.model == "heston" else tuple(HESTON_PARAMS)
        _unused(self, prefix, other, f"is not a parameter of model {self.model}",
                f"remove it or set {prefix}.model")  # fmt: skip
        allowed = {"underlying", "variance_swap"}
        if not self.instruments or self.instruments[0] != "underlying":
            raise ConfigError(f"{prefix}.instruments must start with 'underlying'")
        for i, name in enumerate(self.instruments):
            if name not in allowed:
                raise ConfigError(f"{prefix}.instruments[{i}] must be one of {sorted(allowed)}")
            if name in self.instruments[:i]:  # a second column was never built: training failed
                # on "packed paths must have shape (N, 43) for T=3, H=2, got (32, 33)"
                raise ConfigError(f"{prefix}.instruments[{i}] repeats {name!r}: list each once")
        if "variance_swap" in self.instruments and self.model != "heston":
            raise ConfigError(f"{prefix}.instruments: variance_swap needs model: heston")
        costs = self.cost if isinstance(self.cost, list) else [self.cost]
        if isinstance(self.cost, list) and len(costs) != len(self.instruments):
            raise ConfigError(
                f"{prefix}.cost needs one rate per instrument ({len(self.instruments)})"
            )
        for i, c in enumerate(costs):
            if c < 0:
                where = f"[{i}]" if isinstance(self.cost, list) else ""
                raise ConfigError(f"{prefix}.cost{where} must be >= 0, got {c}")


@dataclass(frozen=True)
class DerivativeConfig:
    """The derivative sold. ``type`` in european, asian (arithmetic, fixings every step),
    barrier (``barrier``, ``barrier_type`` in up_out, down_out, up_in, down_in) or lookback
    (floating strike: struck at the running extremum, so ``strike`` is refused for it);
    ``barrier`` and ``barrier_type`` are refused for another type (they were ignored).
    ``premium`` (>= 0) is received at time 0 for the option sold (0: report the P&L before
    premium); the hedger is always short the derivative.

    Examples:
        >>> DerivativeConfig(type="barrier").validate("derivative")
        Traceback (most recent call last):
        ...
        qfnet.hedging.config.ConfigError: derivative.barrier is required when derivative.type is barrier
    """

    type: Literal["european", "asian", "barrier", "lookback"] = "european"
    strike: float = 1.0
    is_call: bool = True
    barrier: float | None = None
    barrier_type: Literal["up_out", "down_out", "up_in", "down_in"] = "up_out"
    premium: float = 0.0

    def validate(self, prefix: str) -> None:
        _positive(f"{prefix}.strike", self.strike)
        if self.premium < 0:  # the seller paid to sell: a bought option is not what it meant
            raise ConfigError(f"{prefix}.premium must be >= 0 (received for the option sold), "
                              f"got {self.premium}")  # fmt: skip
        if self.type != "barrier":  # a barrier without type barrier sold a european
            _unused(self, prefix, ("barrier", "barrier_type"),
                    f"is for type barrier; the {self.type} option has none",
                    f"remove it or set {prefix}.type")  # fmt: skip
        if self.type == "lookback":  # it moved only the features' moneyness, read as a
            # fixed-strike lookback's strike; the payoff S_T - min S (max S - S_T) has none
            _unused(self, prefix, ("strike",),
                    "is not a term of the floating-strike lookback (struck at the running "
                    "extremum; its moneyness features are measured against market.spot)",
                    "remove it")  # fmt: skip
        if self.type == "barrier":
            if self.barrier is None:
                raise ConfigError(f"{prefix}.barrier is required when {prefix}.type is barrier")
            _positive(f"{prefix}.barrier", self.barrier)


@dataclass(frozen=True)
class PathsConfig:
    """Number of paths in the fixed train, validation and test sets.

    Examples:
        >>> PathsConfig(train=1000, val=0).validate("paths")
        Traceback (most recent call last):
        ...
        qfnet.hedging.config.ConfigError: paths.val must be > 0, got 0
    """

    train: int = 200_000
    val: int = 50_000
    test: int = 200_000

    def validate(self, prefix: str) -> None:
        for name in ("train", "val", "test"):
            _positive(f"{prefix}.{name}", getattr(self, name))
        if self.test < 2:  # the backtest failed later, naming no key
            raise ConfigError(f"{prefix}.test must be >= 2 (a std and bootstrap intervals), "
                              f"got {self.test}")  # fmt: skip


@dataclass(frozen=True)
class StrategyConfig:
    """The learned policy: ``ntb`` (no-transaction band net), ``mlp`` or ``gru``.

    ``reference: delta`` builds the policy around the Black-Scholes hedge (the band's centre;
    the offset origin of ``mlp``/``gru``); ``none`` learns positions from the features alone.

    ``hidden`` is the MLP's hidden widths for ``ntb`` and ``mlp``; ``gru`` has one GRU layer of
    width ``max(hidden)``. ``activation`` is the MLP's (``ntb``, ``mlp``): ``gru`` has none to
    choose (``torch.nn.GRU``'s gates are fixed sigmoid and tanh, and its head is linear).
    ``initial_width`` is the ``ntb`` band's initial half-width (``mlp`` and ``gru`` start at the
    reference hedge). A value set for a policy that has no use for it is refused (it was
    silently ignored).

    Examples:
        >>> StrategyConfig(type="mlp", reference="none").validate("strategy")
        >>> StrategyConfig(reference="none").validate("strategy")
        Traceback (most recent call last):
        ...
        qfnet.hedging.config.ConfigError: strategy.reference must be delta for the ntb policy
        >>> StrategyConfig(type="gru", activation="tanh").validate("strategy")
        Traceback (most recent call last):
        ...
        qfnet.hedging.config.ConfigError: strategy.activation is the MLP's: the gru policy has none ...
    """

    type: Literal["ntb", "mlp", "gru"] = "ntb"
    hidden: list[int] = field(default_factory=lambda: [16, 16])
    initial_width: float = 0.02
    activation: Literal["relu", "silu", "tanh", "gelu", "softplus"] = "relu"
    reference: Literal["delta", "none"] = "delta"

    def validate(self, prefix: str) -> None:
        _positive(f"{prefix}.initial_width", self.initial_width)
        if self.type == "ntb" and self.reference == "none":
            raise ConfigError(f"{prefix}.reference must be delta for the ntb policy")
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ConfigError(f"{prefix}.hidden must be a non-empty list of positive widths")
        # a setting that the chosen policy does not use trained the same network
        if self.type == "gru":
            _unused(self, prefix, ("activation",), "is the MLP's: the gru policy has none to "
                    "choose (torch.nn.GRU's gates are fixed sigmoid and tanh, its head linear)",
                    "remove it")  # fmt: skip
        if self.type != "ntb":
            _unused(self, prefix, ("initial_width",), "is the ntb band's initial half-width; "
                    f"the {self.type} policy starts at the reference hedge", "remove it")  # fmt: skip


@dataclass(frozen=True)
class ObjectiveConfig:
    """Risk measure minimised: ``es`` (with ``alpha``), ``entropic`` (``risk_aversion`` per
    unit of P&L, i.e. per unit notional at the default ``market.spot`` of 1, as in pfhedge: at
    another spot S the same aversion per notional is ``risk_aversion / S``), ``variance`` or
    ``mean_variance`` (``risk_aversion``). ``alpha`` is refused for another objective (it was
    ignored); ``risk_aversion`` is also the backtest's entropic risk aversion, for every objective.

    Examples:
        >>> ObjectiveConfig(alpha=1.0).validate("objective")
        Traceback (most recent call last):
        ...
        qfnet.hedging.config.ConfigError: objective.alpha must be in (0, 1), got 1.0
    """

    name: Literal["es", "entropic", "variance", "mean_variance"] = "es"
    alpha: float = 0.95
    risk_aversion: float = 1.0

    def validate(self, prefix: str) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"{prefix}.alpha must be in (0, 1), got {self.alpha}")
        _positive(f"{prefix}.risk_aversion", self.risk_aversion)
        if self.name != "es":
            _unused(self, prefix, ("alpha",), f"is the es objective's level; {self.name} has none",
                    "remove it")  # fmt: skip


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings passed to the shared Trainer (``threads``: sets torch's CPU
    threads for the process; ``dtype``: of the policy and the training paths; ``device``:
    where the Trainer trains, e.g. ``cpu``, ``cuda`` or ``auto``; paths are simulated on the
    CPU and moved per batch).

    Examples:
        >>> config_from_dict({"training": {"epochs": 2, "dtype": "float64"}}).training.epochs
        2
        >>> config_from_dict({"training": {"epochs": 2.5}})
        Traceback (most recent call last):
        ...
        qfnet.hedging.config.ConfigError: training.epochs must be an integer, got 2.5
    """

    epochs: int = 10
    batch_size: int = 20_000
    lr: float = 3e-3
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    scheduler: Literal["none", "cosine", "onecycle"] = "none"
    patience: int = 5
    threads: int | None = None
    dtype: Literal["float32", "float64"] = "float32"
    device: str = "cpu"

    def validate(self, prefix: str) -> None:
        for name in ("epochs", "batch_size", "lr", "patience"):
            _positive(f"{prefix}.{name}", getattr(self, name))
        if self.threads is not None:
            _positive(f"{prefix}.threads", self.threads)
        if self.device != "auto":
            try:
                kind = torch.device(self.device).type
            except RuntimeError:
                kind = None
            # torch names more device types than the Trainer runs on: meta or xpu passed here
            # and failed in training with a traceback ("Torch not compiled with XPU enabled")
            if kind not in DEVICE_TYPES:
                raise ConfigError(f"{prefix}.device must be auto, cpu, cuda[:N] or mps, got "
                                  f"{self.device!r}")  # fmt: skip


@dataclass(frozen=True)
class BaselineConfig:
    """Baselines: ``ww_risk_aversion`` of the Whalley-Wilmott band (``null``: chosen on the
    training paths from a grid, by the objective).

    Examples:
        >>> BaselineConfig().ww_risk_aversion is None
        True
        >>> BaselineConfig(ww_risk_aversion=-1.0).validate("baselines")
        Traceback (most recent call last):
        ...
        qfnet.hedging.config.ConfigError: baselines.ww_risk_aversion must be > 0, got -1.0
    """

    ww_risk_aversion: float | None = None

    def validate(self, prefix: str) -> None:
        if self.ww_risk_aversion is not None:
            _positive(f"{prefix}.ww_risk_aversion", self.ww_risk_aversion)


@dataclass(frozen=True)
class HedgeConfig:
    """A complete hedging experiment.

    Examples:
        >>> config = HedgeConfig(seed=1, paths=PathsConfig(train=1000, val=500, test=1000))
        >>> config.validate()
        >>> config.paths.train, config.strategy.type, config.objective.name
        (1000, 'ntb', 'es')
    """

    seed: int = 0
    market: MarketConfig = field(default_factory=MarketConfig)
    derivative: DerivativeConfig = field(default_factory=DerivativeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)

    def validate(self, prefix: str = "") -> None:
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"{prefix}seed must be in [0, 2**32), got {self.seed}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "validate"):
                value.validate(f"{prefix}{f.name}")
        derivative, spot = self.derivative, self.market.spot
        if derivative.type == "barrier" and derivative.barrier is not None:
            up = derivative.barrier_type.startswith("up")
            if (derivative.barrier <= spot) if up else (derivative.barrier >= spot):
                side = "above" if up else "below"
                raise ConfigError(f"{prefix}derivative.barrier {derivative.barrier} is hit at the "
                                  f"start ({prefix}market.spot {spot}): an {derivative.barrier_type} "
                                  f"barrier must lie {side} the spot")  # fmt: skip


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` coerced to ``annotation`` (int -> float only) or raise naming ``key``."""
    if isinstance(value, float) and not math.isfinite(value):  # YAML's .nan and .inf
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    origin = typing.get_origin(annotation)
    if origin is Literal:
        if value not in typing.get_args(annotation):
            raise ConfigError(
                f"{key} must be one of {list(typing.get_args(annotation))}, got {value!r}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(annotation):
            try:
                return _check_type(key, value, arm)
            except ConfigError as exc:
                errors.append((arm, exc))
        raise _union_error(value, errors)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{key} must be null, got {value!r}")
        return None
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        number = value
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            number = float(value)  # PyYAML (YAML 1.1) reads 3e-3, without a dot, as a string
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            number = float(number)
        except OverflowError:  # an int past 1e308 was a traceback
            number = math.inf
        if not math.isfinite(number):  # '1e400' became inf after the finite check above
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key)
    raise ConfigError(f"{key}: unsupported type {annotation!r}")  # pragma: no cover


def _union_error(value: Any, errors: list[tuple[Any, ConfigError]]) -> ConfigError:
    """The error of the union arm of ``value``'s kind (a list's for a list, which names the bad
    element, e.g. ``market.cost[1]``; a scalar's otherwise): not the null arm's."""
    arms = [(arm, exc) for arm, exc in errors if arm is not type(None)] or errors
    for arm, exc in arms:
        if (typing.get_origin(arm) is list) == isinstance(value, list):
            return exc
    return arms[0][1]


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; allowed: {names}"
            raise ConfigError(f"unknown key {_join(prefix, key)!r}{hint}")
    kwargs = {k: _check_type(_join(prefix, k), v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def config_from_dict(data: dict[str, Any], *, base_dir: Path | None = None) -> HedgeConfig:
    """Build and validate a :class:`HedgeConfig` from a nested mapping.

    A ``market.calibration`` JSON (relative paths resolve against ``base_dir``) supplies Heston
    parameters from its ``params`` mapping.

    Examples:
        >>> config_from_dict({"market": {"volatility": 0.3}}).market.volatility
        0.3
        >>> config_from_dict({"market": {"volatility": -1}})
        Traceback (most recent call last):
        ...
        qfnet.hedging.config.ConfigError: market.volatility must be > 0, got -1.0
    """
    config = _build(HedgeConfig, data, "")
    calibration = config.market.calibration
    if calibration is not None:  # the file's params silently replaced the config's own
        if config.market.model != "heston":
            raise ConfigError("market.calibration holds Heston params: it needs model: heston")
        given = sorted(set(data.get("market") or {}) & set(HESTON_PARAMS))
        if given:
            raise ConfigError(f"market.calibration and market.{given[0]} both set the Heston "
                              "params: give one of them")  # fmt: skip
        config = _apply_calibration(config, Path(base_dir or ".") / calibration)
    config.validate()
    return config


def _apply_calibration(config: HedgeConfig, path: Path) -> HedgeConfig:
    try:
        params = json.loads(path.read_text())["params"]
    # TypeError: a JSON list; UnicodeDecodeError: not a text file (it was a traceback)
    except (OSError, KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"market.calibration: cannot read params from {path}: {exc}") from exc
    if not isinstance(params, dict):  # a number or null was a TypeError; "v0" held v0
        raise ConfigError(f"market.calibration: {path}: params must be an object of Heston "
                          f"params, got {params!r}")  # fmt: skip
    keys = HESTON_PARAMS
    missing = [k for k in keys if k not in params]
    if missing:
        raise ConfigError(f"market.calibration: {path} lacks Heston params {missing}")
    values = {}
    for key in keys:  # "abc" was a bare ValueError; NaN passed the v0 >= 0 check
        try:  # a bool too: true read as v0 = 1.0
            values[key] = math.nan if isinstance(params[key], bool) else float(params[key])
        except (TypeError, ValueError):
            values[key] = math.nan
        if not math.isfinite(values[key]):
            raise ConfigError(f"market.calibration: {path}: params.{key} must be a finite "
                              f"number, got {params[key]!r}")  # fmt: skip
    market = dataclasses.replace(config.market, **values)
    return dataclasses.replace(config, market=market)


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
"""Exponent notation that YAML 1.1 leaves a string (``3e-3``, ``1E5``)."""


_YAML11_OCTAL = re.compile(r"[-+]?0[0-9_]+")
"""An integer with a leading zero, which YAML 1.1 reads as octal (``010`` is 8)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (YAML
    forbids it; PyYAML kept the last value, so ``seed: 1 ... seed: 2`` silently ran seed 2),
    and so is a number that YAML 1.1 reads other than as decimal: octal, with a leading zero
    (``n_steps: 010`` ran 8 steps), or base 60 (``epochs: 1:30`` ran 90)."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value, text = super().construct_yaml_int(node), self.construct_scalar(node)
        decimal = text.replace("_", "")
        if _YAML11_OCTAL.fullmatch(text) and value != int(decimal):  # 00 and 07 read alike
            self._refuse(node, f"{text} has a leading zero, which YAML 1.1 reads as octal "
                         f"({value}): write {int(decimal)} for the decimal number")  # fmt: skip
        return self._refuse_base_60(node, value)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        return self._refuse_base_60(node, super().construct_yaml_float(node))

    def _refuse_base_60(self, node: yaml.ScalarNode, value: Any) -> Any:
        text = self.construct_scalar(node)
        if ":" in text:
            self._refuse(node, f"{text} is a base-60 number in YAML 1.1 ({value}): write "
                         f"{value} if that is meant")  # fmt: skip
        return value

    def _refuse(self, node: yaml.ScalarNode, problem: str) -> None:
        raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # the base class reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark,
                )  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


for _tag in ("int", "float"):
    _UniqueKeyLoader.add_constructor(
        f"tag:yaml.org,2002:{_tag}", getattr(_UniqueKeyLoader, f"construct_yaml_{_tag}")
    )


def load_config(path: str | Path) -> HedgeConfig:
    """Load and validate a YAML (or JSON) hedging config; errors name the bad key.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "hedge.yaml"
        ...     _ = path.write_text("seed: 3\\nmarket:\\n  volatility: 0.25\\n")
        ...     config = load_config(path)
        >>> config.seed, config.market.volatility
        (3, 0.25)
    """
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:  # bytes: a traceback
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if data is None:  # an empty file ran 200k-path training on the defaults without a word
        raise ConfigError(f"config {path} is empty (write '{{}}' to take every default)")
    try:
        return config_from_dict(data, base_dir=path.parent)
    except ConfigError as exc:  # name the file beside the key (the key alone did not say where)
        raise ConfigError(f"{path}: {exc}") from None


def config_to_dict(config: HedgeConfig) -> dict[str, Any]:
    """Plain nested dict of a config (JSON/YAML serialisable).

    Examples:
        >>> config_to_dict(HedgeConfig())["market"]["n_steps"]
        20
    """
    return dataclasses.asdict(config)
