"""SABR beyond Hagan: Hagan's formula and the PDE-trained SABR surrogate against QuantLib's PDE.

One comparison serves the demo report, ``benchmarks/bench_sabr_pde.py`` and the tests: fresh
independent random points of :data:`pricing.datasets.SABR_PDE_DOMAIN` (``F = 1``), priced by the
PDE label engine (``engine="quantlib"`` of :mod:`pricing.datasets`), by Hagan's lognormal
formula and by the surrogate.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from pricing import sabr
from pricing.datasets import SABR_PDE_DOMAIN, label, sample
from qfnet.surrogate import SABR_PDE_SURROGATE, SurrogateNet, implied_vol, load_surrogate

__all__ = ["PdeComparison", "compare_with_pde", "hagan_vols", "surrogate_vols"]


def _column(points: pd.DataFrame, name: str) -> torch.Tensor:
    return torch.tensor(points[name].to_numpy(dtype=float))


def hagan_vols(points: pd.DataFrame) -> torch.Tensor:
    """Hagan's lognormal SABR vols of sampled points (``F = 1``). Shape: ``(N,)``.

    Examples:
        >>> points = sample(SABR_PDE_DOMAIN, 3, seed=0, method="random")
        >>> hagan_vols(points).shape
        torch.Size([3])
    """
    params = {n: _column(points, n) for n in ("alpha", "beta", "rho", "nu")}
    return sabr.lognormal_vol(forward=1.0, strike=_column(points, "strike"),
                              maturity=_column(points, "maturity"), **params)  # fmt: skip


def surrogate_vols(net: SurrogateNet, points: pd.DataFrame) -> torch.Tensor:
    """The surrogate's vols of sampled points (``F = 1``). Shape: ``(N,)``.

    Examples:
        >>> points = sample(SABR_PDE_DOMAIN, 3, seed=0, method="random")
        >>> surrogate_vols(load_surrogate(SABR_PDE_SURROGATE), points).shape
        torch.Size([3])
    """
    with torch.no_grad():
        return implied_vol(net, **{n: _column(points, n) for n in SABR_PDE_DOMAIN.input_names})


class PdeComparison(NamedTuple):
    """Per-point vols and absolute errors against the PDE, and the PDE's pricing time.

    Attributes:
        points: the sampled points plus ``pde_iv``, ``hagan_iv``, ``surrogate_iv``, ``valid``
            (the PDE price has an implied vol: not NaN, not 0 for a strike beyond its mesh),
            ``hagan_bp`` and ``surrogate_bp`` (NaN where not valid).
        pde_seconds: wall time of the PDE labels.

    Examples:
        A point whose PDE price has no implied vol has no errors (:func:`compare_with_pde` makes
        these):

        >>> points = pd.DataFrame({"valid": [True, False], "hagan_bp": [40.0, np.nan],
        ...                        "surrogate_bp": [2.0, np.nan]})
        >>> comparison = PdeComparison(points, pde_seconds=0.2)
        >>> comparison.points.loc[comparison.points["valid"], "surrogate_bp"].tolist()
        [2.0]
    """

    points: pd.DataFrame
    pde_seconds: float


def compare_with_pde(
    n: int, *, seed: int, surrogate: str | os.PathLike[str] = SABR_PDE_SURROGATE
) -> PdeComparison:
    """Price ``n`` fresh random points by the PDE, Hagan's formula and the surrogate (~0.1 s of
    PDE per point).

    Examples:
        >>> comparison = compare_with_pde(4, seed=1)
        >>> frame = comparison.points[comparison.points["valid"]]
        >>> bool(frame["surrogate_bp"].mean() < frame["hagan_bp"].mean())
        True
    """
    points = sample(SABR_PDE_DOMAIN, n, seed=seed, method="random")
    start = time.perf_counter()
    pde = label(points, model="sabr", engine="quantlib")["implied_vol"].to_numpy()
    pde_seconds = time.perf_counter() - start
    valid = np.isfinite(pde) & (pde > 0)
    out = points.assign(pde_iv=pde, hagan_iv=hagan_vols(points).numpy(),
                        surrogate_iv=surrogate_vols(load_surrogate(surrogate), points).numpy(),
                        valid=valid)  # fmt: skip
    for name in ("hagan", "surrogate"):
        out[f"{name}_bp"] = np.where(valid, np.abs(out[f"{name}_iv"] - pde) * 1e4, np.nan)
    return PdeComparison(out, pde_seconds)
