"""Registers ``calibrate("heston", quotes, method="network")``: the calibration network's answer.

The quotes are interpolated onto the network's grid (:func:`qfnet.calibration_network.
surface_from_quotes`), the network returns the parameters in one forward pass, and the model vols
at the quotes are computed with the exact pricer so that :func:`pricing.calibration.calibrate`
reports residuals as for the other methods. No optimisation: ``iterations`` is 0. Option
``network=PATH`` selects another network file. ``pricing`` cannot import ``qfnet``, so importing
this module is what registers the method.

Examples:
    >>> from pricing.calibration import available_methods
    >>> "network" in available_methods("heston")
    True
"""

from __future__ import annotations

import numpy as np
import torch

from pricing.black_scholes import black_implied_vol
from pricing.calibration import CalibrationProblem, FitOutput, register_method
from pricing.heston import price as heston_price
from qfnet.calibration_network import NAMES, load_network, predict, surface_from_quotes

__all__ = ["fit_with_network"]


def _clip(params: dict[str, float], bounds: dict[str, tuple[float, float]] | None) -> None:
    for name, (low, high) in (bounds or {}).items():
        if name not in params:
            raise ValueError(f"unknown Heston parameter in bounds: {name!r}")
        params[name] = min(max(params[name], low), high)


def _model_vols(quotes: object, params: dict[str, float]) -> np.ndarray:
    ratio = torch.tensor((quotes["strike"] / quotes["forward"]).to_numpy(dtype=float))
    t = torch.tensor(quotes["maturity"].to_numpy(dtype=float))
    is_call = ratio >= 1.0
    prices = heston_price(forward=1.0, strike=ratio, maturity=t, is_call=is_call, **params)
    vols = black_implied_vol(price=prices, forward=1.0, strike=ratio, maturity=t, is_call=is_call)
    return vols.numpy()


def fit_with_network(problem: CalibrationProblem) -> FitOutput:
    """The ``network`` method: parameters from the calibration network, exact model vols.

    Raises:
        NotImplementedError: no network file (the message names the path).
    """
    options = dict(problem.options)
    try:
        net = load_network(options.pop("network", None))
    except FileNotFoundError as error:
        raise NotImplementedError(f"method 'network' needs a trained network: {error}") from error
    surface = surface_from_quotes(problem.quotes)
    values = {name: float(v[0]) for name, v in predict(net, surface.unsqueeze(0)).items()}
    _clip(values, problem.bounds)
    values = {name: values[name] for name in NAMES}
    return FitOutput(values, _model_vols(problem.quotes, values), converged=True, iterations=0)


register_method("heston", "network", fit_with_network)
