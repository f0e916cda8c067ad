"""Normalised Black call price and its derivatives, accurate from deep OTM to very high total vol.

All functions work with log-moneyness ``x = ln(F / K)`` and total volatility ``s = sigma * sqrt(T)``, for
the normalised out-of-the-money call price ``b(x, s) = C / (D * sqrt(F K))`` with ``x <= 0``:

    b(x, s) = exp(x/2) Phi(d1) - exp(-x/2) Phi(d2),  d1,2 = x / s +- s / 2.

Three evaluation regions keep the relative error of ``b`` near machine precision (the naive difference of
the two terms cancels catastrophically in the wings and for tiny ``s``):

* deep out of the money (``d1 <= -1``): the scaled complementary error function ``erfcx`` factors out the
  common Gaussian ``exp(-(x^2/s^2 + s^2/4)/2)``, which also gives ``ln b`` without underflow;
* near the money (``-1 < d1 <= 1``): ``b = exp(x/2) (Phi(d1) - Phi(d2)) + 2 sinh(x/2) Phi(d2)`` with the
  first difference taken through ``erf`` (no cancellation when d1 and d2 are small);
* high total vol (``d1 > 1``): the direct formula, whose two terms are well separated there.

References:
    P. Jaeckel (2015), "Let's be rational", Wilmott, pp. 40-53: the normalised price, the inflection point
    ``s_c = sqrt(2 |x|)`` and the use of ``erfcx`` in the lower wing.
"""

from __future__ import annotations

import math

import torch

__all__ = ["complement", "log_normalized_call", "log_vega", "normalized_call", "vega_ratios"]

_SQRT2 = math.sqrt(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _norm_cdf(z: torch.Tensor) -> torch.Tensor:
    """Standard normal CDF through erfc, accurate in the lower tail."""
    return 0.5 * torch.special.erfc(-z / _SQRT2)


def _gauss_exponent(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``-(x^2/s^2 + s^2/4) / 2``, the log of the Gaussian factor shared by both terms."""
    return -0.5 * ((x / s) ** 2 + 0.25 * s * s)


def log_normalized_call(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``ln b(x, s)`` for ``x <= 0`` and ``s > 0``, without underflow in the lower wing.

    Each element is evaluated only in its own region (boolean indexing rather than ``torch.where``),
    which halves the cost and keeps the unused formulas from producing inf/NaN gradients.

    Shape:
        x, s: any broadcastable shapes; output: their broadcast shape.

    Examples:
        >>> x, s = torch.tensor([-50.0]), torch.tensor([0.1])
        >>> bool(torch.isfinite(log_normalized_call(x, s)))
        True
    """
    x, s = torch.broadcast_tensors(x, s)
    d1 = x / s + 0.5 * s
    deep = d1 <= -1.0
    high = d1 > 1.0
    near = ~(deep | high)
    out = torch.empty_like(d1)
    out[deep] = _log_b_deep(x[deep], s[deep], d1[deep])
    out[near] = torch.log(_b_near(x[near], s[near], d1[near]))
    out[high] = torch.log(_b_high(x[high], s[high], d1[high]))
    return out


def _log_b_deep(x: torch.Tensor, s: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
    """Region A (``d1 <= -1``): ``ln(exp(g)/2 (erfcx(-d1/sqrt2) - erfcx(-d2/sqrt2)))``."""
    diff = torch.special.erfcx(-d1 / _SQRT2) - torch.special.erfcx((s - d1) / _SQRT2)
    return math.log(0.5) + _gauss_exponent(x, s) + torch.log(diff)


def _b_near(x: torch.Tensor, s: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
    """Region B (``-1 < d1 <= 1``): ``exp(x/2) (Phi(d1) - Phi(d2)) + 2 sinh(x/2) Phi(d2)``."""
    d2 = d1 - s
    half_x = 0.5 * x
    erf_diff = 0.5 * (torch.special.erf(d1 / _SQRT2) - torch.special.erf(d2 / _SQRT2))
    return torch.exp(half_x) * erf_diff + 2.0 * torch.sinh(half_x) * _norm_cdf(d2)


def _b_high(x: torch.Tensor, s: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
    """Region C (``d1 > 1``): the direct formula."""
    half_x = 0.5 * x
    return torch.exp(half_x) * _norm_cdf(d1) - torch.exp(-half_x) * _norm_cdf(d1 - s)


def normalized_call(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Normalised OTM call price ``b(x, s)`` for ``x <= 0``, ``s > 0``.

    Shape:
        x, s: broadcastable; output: their broadcast shape.

    Examples:
        >>> x, s = torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)
        >>> round(float(normalized_call(x, s)), 12)
        0.079655674554
    """
    return torch.exp(log_normalized_call(x, s))


def complement(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``exp(x/2) - b(x, s)``: the distance to the upper bound, a sum of positive terms.

    Shape:
        x, s: broadcastable; output: their broadcast shape.
    """
    d1 = x / s + 0.5 * s
    d2 = d1 - s
    return torch.exp(0.5 * x) * _norm_cdf(-d1) + torch.exp(-0.5 * x) * _norm_cdf(d2)


def log_vega(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``ln(db/ds)``: the log of the normalised vega ``exp(-(x^2/s^2 + s^2/4)/2) / sqrt(2 pi)``."""
    return _gauss_exponent(x, s) - _HALF_LOG_2PI


def vega_ratios(x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``b''/b'`` and ``b'''/b'`` (derivatives in ``s``), used by the Householder steps.

    Shape:
        x, s: broadcastable; outputs: their broadcast shape.
    """
    x2 = x * x
    q = x2 / s**3 - 0.25 * s
    r = q * q - 3.0 * x2 / s**4 - 0.25
    return q, r
