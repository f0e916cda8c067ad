"""Deep hedging: markets, strategies, P&L with transaction costs, training and backtests.

Typical use::

    from qfnet.hedging import load_config, run_backtest
    from qfnet.hedging.train import train

    result = train(load_config("data/configs/hedge_bs_cost10bp.yaml"), "runs/hedge_bs")
    report = run_backtest("runs/hedge_bs", "runs/hedge_bs/report")

(``train`` is not re-exported here, so that ``qfnet.hedging.train`` always names the module.)
"""

from qfnet.hedging.backtest import backtest, bootstrap_ci, read_paths, run_backtest
from qfnet.hedging.config import ConfigError, HedgeConfig, config_from_dict, load_config
from qfnet.hedging.markets import HedgeData, Market, RawPaths
from qfnet.hedging.pnl import HedgeResult, risk_metrics, run_strategy
from qfnet.hedging.strategies import (
    BlackScholesDelta,
    HestonDelta,
    LearnedStrategy,
    NoHedge,
    WhalleyWilmott,
    build_policy,
)
from qfnet.hedging.train import HedgeModel, load_run, make_paths

__all__ = [
    "BlackScholesDelta",
    "ConfigError",
    "HedgeConfig",
    "HedgeData",
    "HedgeModel",
    "HedgeResult",
    "HestonDelta",
    "LearnedStrategy",
    "Market",
    "NoHedge",
    "RawPaths",
    "WhalleyWilmott",
    "backtest",
    "bootstrap_ci",
    "build_policy",
    "config_from_dict",
    "load_config",
    "load_run",
    "make_paths",
    "read_paths",
    "risk_metrics",
    "run_backtest",
    "run_strategy",
]
