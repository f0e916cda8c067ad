"""Streaming sums behind the Monte Carlo estimators of :mod:`pricing.monte_carlo`."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import torch

from pricing._typing import TensorLike, real_number

__all__ = ["MCResult", "Moments", "discount_factor", "finish", "forward_mean", "shape_samples"]


class MCResult(NamedTuple):
    """A Monte Carlo estimate.

    Attributes:
        price: the estimate (scalar, or one per strike).
        std_error: its standard error.
        ci_low: lower end of the confidence interval ``price - z std_error`` (a Student t
            quantile for randomised-QMC replicates).
        ci_high: upper end of the confidence interval.
        n_paths: number of simulated paths (antithetic pairs count as two).

    Examples:
        >>> from pricing.monte_carlo import estimate
        >>> r = estimate(torch.tensor([1.0, 3.0, 2.0, 2.0], dtype=torch.float64))
        >>> r.price.item(), round(r.std_error.item(), 6), r.n_paths
        (2.0, 0.408248, 4)
        >>> round(r.ci_low.item(), 4), round(r.ci_high.item(), 4)  # price -/+ 1.96 std_error
        (1.1998, 2.8002)
    """

    price: torch.Tensor
    std_error: torch.Tensor
    ci_low: torch.Tensor
    ci_high: torch.Tensor
    n_paths: int


class Moments:
    """Shifted running sums of samples Y (n, K) and controls C (n, K, J) for the CV estimator.

    With controls and ``cross_fit`` (the default), the sums of Y and C are kept per half of the
    samples (even and odd sample numbers), for the cross-fitted estimator of :meth:`result`, and
    those of all the samples for Y alone; the randomised-QMC replicates, whose coefficients are
    fitted across replicates, keep their own sums whole (``cross_fit=False``).
    """

    def __init__(self, cross_fit: bool = True) -> None:
        self.n = 0
        self.shift_y: torch.Tensor | None = None
        self.shift_c: torch.Tensor | None = None
        self.halves: tuple[Moments, Moments] | None = None
        self.cross_fit = cross_fit

    def add(self, y: torch.Tensor, c: torch.Tensor | None) -> None:
        y = y.detach().to(torch.float64)
        _check_finite("payoff samples", y, self.n)
        if c is not None:
            c = c.detach().to(torch.float64)
            _check_finite("control samples", c, self.n)
            if self.cross_fit:  # the estimate needs the control sums of the halves alone
                if self.halves is None:
                    self.halves = (Moments(cross_fit=False), Moments(cross_fit=False))
                for half, first in zip(self.halves, (self.n % 2, (self.n + 1) % 2), strict=True):
                    if y.shape[0] > first:  # the rows of even (odd) sample number
                        half.accumulate(y[first::2], c[first::2])
                c = None
        self.accumulate(y, c)

    def accumulate(self, y: torch.Tensor, c: torch.Tensor | None) -> None:
        """Add float64 samples (n, K) and controls (n, K, J) to the sums, unchecked."""
        if self.shift_y is None:
            self.shift_y = y.mean(0)
            self.sy = torch.zeros_like(self.shift_y)
            self.syy = torch.zeros_like(self.shift_y)
            if c is not None:
                self.shift_c = c.mean(0)  # (K, J)
                self.sc = torch.zeros_like(self.shift_c)
                self.scc = torch.zeros(
                    c.shape[1:] + c.shape[-1:], dtype=torch.float64, device=c.device
                )
                self.syc = torch.zeros_like(self.shift_c)
        dy = y - self.shift_y
        self.n += y.shape[0]
        self.sy += dy.sum(0)
        self.syy += dy.square().sum(0)
        if c is not None and self.shift_c is not None:
            dc = c - self.shift_c
            self.sc += dc.sum(0)
            self.scc += torch.einsum("nki,nkj->kij", dc, dc)
            self.syc += torch.einsum("nk,nkj->kj", dy, dc)

    def centred(self) -> _Centred:
        """Means and centred sums of squares and cross products of the samples so far."""
        n = self.n
        mean_dy = self.sy / n
        centred_yy = self.syy - n * mean_dy.square()
        if self.shift_c is None:
            return _Centred(self.shift_y + mean_dy, centred_yy, None, None, None)
        mean_dc = self.sc / n  # (K, J)
        centred_cc = self.scc - n * mean_dc[..., :, None] * mean_dc[..., None, :]
        centred_yc = self.syc - n * mean_dy[..., None] * mean_dc
        return _Centred(self.shift_y + mean_dy, centred_yy, self.shift_c + mean_dc, centred_cc,
                        centred_yc)  # fmt: skip

    def result(
        self, control_means: torch.Tensor | None, confidence: float, n_paths: int
    ) -> MCResult:
        """The estimate; with control means, cross-fitted (see :func:`_cross_fitted`)."""
        if self.n < 2 or self.shift_y is None:
            raise ValueError(f"need at least 2 independent samples, got {self.n}")
        n, sums = self.n, self.centred()
        price, var_y = sums.mean_y, sums.yy / (n - 1)
        if control_means is not None:
            if self.halves is None or self.halves[0].shift_c is None:
                raise ValueError("control means need the control sums of Moments(cross_fit=True)")
            controls = self.halves[0].shift_c.shape[-1]
            if n < controls + 2:  # the regression must leave a residual to estimate the error
                raise ValueError(f"need at least {controls + 2} independent samples with "
                                 f"{controls} control variate(s), got {n}")  # fmt: skip
            price, var_y = _cross_fitted(self.halves, control_means)
        std_error = (var_y / n).sqrt()
        z = NormalDist().inv_cdf(0.5 + 0.5 * confidence)
        return MCResult(price, std_error, price - z * std_error, price + z * std_error, n_paths)


class _Centred(NamedTuple):
    """Means of Y (K,) and C (K, J), centred sums of squares of Y (K,), cross products of C
    (K, J, J) and of Y with C (K, J); the control fields are None without controls."""

    mean_y: torch.Tensor
    yy: torch.Tensor
    mean_c: torch.Tensor | None
    cc: torch.Tensor | None
    yc: torch.Tensor | None


def discount_factor(rate: object, maturity: object) -> float:
    """``e^{-rate maturity}``, the one discount of a Monte Carlo price: one number each, by name
    (a per-path rate, which the simulators take, cannot discount one price).

    Examples:
        >>> round(discount_factor(0.05, 2.0), 6)
        0.904837
    """
    return math.exp(-real_number("rate", rate) * real_number("maturity", maturity))


def forward_mean(spot: object, dividend: object, maturity: object) -> float:
    """``spot e^{-dividend maturity}``, the mean of the discounted terminal spot used as control
    variate: one number, so a per-path spot or dividend (which the simulators take) is refused
    by name (a per-path spot gave a mean per path, and a price of -147 for 7.97; a dividend,
    "only one element tensors can be converted to Python scalars").

    Examples:
        >>> round(forward_mean(100.0, 0.02, 1.0), 6)
        98.019867
    """
    q, t = real_number("dividend", dividend), real_number("maturity", maturity)
    return real_number("spot", spot) * math.exp(-q * t)


def _control_coefficient(cc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
    """Least-squares coefficient of Y on C from centred cross products, (K, J)."""
    # pseudo-inverse: a control that is constant on these samples gets no weight
    return (torch.linalg.pinv(cc, hermitian=True) @ yc[..., None])[..., 0]


def shape_samples(
    y: torch.Tensor, c: torch.Tensor | None, antithetic: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bring samples to (n, K) and controls to (n, K, J); average antithetic pairs."""
    # as the simulators' (NormalSource): "no", a true string, averaged pairs of independent
    # samples (estimate, price_paths), a standard error of another estimator without a word
    if not isinstance(antithetic, bool | np.bool_):
        raise TypeError(f"antithetic must be True or False, got {antithetic!r}")
    y2 = y[:, None] if y.ndim == 1 else y
    if y2.ndim != 2:
        raise ValueError(f"samples must have shape (N,) or (N, K), got {tuple(y.shape)}")
    c3 = None
    if c is not None:
        if c.shape[0] != y.shape[0]:
            raise ValueError(f"controls have {c.shape[0]} rows for {y.shape[0]} samples")
        c3 = c[:, None, None] if c.ndim == 1 else c
        if c3.ndim == 2:
            c3 = c3[:, :, None] if y.ndim == 2 and c.shape[1] == y.shape[1] else c3[:, None, :]
        c3 = c3.expand(y2.shape[0], y2.shape[1], c3.shape[-1])
    if antithetic:
        if y2.shape[0] % 2:
            raise ValueError(f"antithetic samples must come in pairs, got {y2.shape[0]} rows")
        y2 = 0.5 * (y2[0::2] + y2[1::2])
        c3 = None if c3 is None else 0.5 * (c3[0::2] + c3[1::2])
    return y2, c3


def finish(
    moments: Moments | list[Moments],
    squeeze: bool,
    c: torch.Tensor | None,
    control_means: TensorLike | None,
    confidence: float,
    n_paths: int,
) -> MCResult:
    """The estimate of one set of sums, or of independent randomised-QMC replicates (a list:
    see :func:`_replicate_estimate`)."""
    confidence = real_number("confidence", confidence)  # a str failed in '<', naming nothing
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if (c is None) != (control_means is None):
        raise ValueError("give both controls and control_means, or neither")
    means = None
    if c is not None and control_means is not None:
        means = torch.as_tensor(control_means, dtype=torch.float64, device=c.device)
        # (K,) means of one control per column; (J,) means of J controls shared by the columns
        # broadcast as they are (checking K alone read them as per-column means when J == K)
        per_column = means.ndim == 1 and c.shape[-1] == 1 and c.shape[1] == means.shape[0]
        means = means[..., None] if per_column else means
        expected = tuple(c.shape[1:])  # (K, J)
        try:  # a torch broadcasting error (or a wrong price) named no argument
            fits = torch.broadcast_shapes(means.shape, expected) == expected
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"control_means of shape {tuple(means.shape)} do not broadcast to "
                             f"the controls' (K, J) = {expected}")  # fmt: skip
    if isinstance(moments, list):
        res = _replicate_estimate(moments, c, means, confidence, n_paths)
    else:
        res = moments.result(means, confidence, n_paths)
    if squeeze:
        res = MCResult(*(f.squeeze(-1) for f in res[:4]), n_paths)
    return res


def _replicate_estimate(
    replicates: list[Moments],
    c: torch.Tensor | None,
    means: torch.Tensor | None,
    confidence: float,
    n_paths: int,
) -> MCResult:
    """Combine independent randomised-QMC replicates: the price is the mean of their estimates
    (with control variates, each with a coefficient fitted on the other replicates), the
    standard error their standard deviation over ``sqrt(R)``, the interval a Student t one with
    ``R - 1`` degrees of freedom.

    References:
        Owen (1997), "Monte Carlo variance of scrambled net quadrature", SIAM J. Numer. Anal. 34;
        L'Ecuyer and Lemieux (2002), "Recent advances in randomized quasi-Monte Carlo methods".
    """
    from scipy.stats import t as student_t

    if len(replicates) < 2:
        raise ValueError(f"need at least 2 Sobol replicates, got {len(replicates)}")
    least = 2 + (0 if c is None else c.shape[-1])
    if min(m.n for m in replicates) < least:
        r = len(replicates)
        raise ValueError(f"sobol=True splits the samples into {r} independently scrambled "
                         f"replicates, and each needs at least {least} (antithetic pairs count "
                         f"once): at least {r * least} samples, got {sum(m.n for m in replicates)}"
                         "; simulate more paths")  # fmt: skip
    if means is None:
        estimates = torch.stack([m.result(None, confidence, n_paths).price for m in replicates])
    else:
        estimates = _controlled_replicates([m.centred() for m in replicates], means)
    price = estimates.mean(0)  # (K,) over (R, K)
    std_error = estimates.std(0) / len(replicates) ** 0.5
    q = float(student_t.ppf(0.5 + 0.5 * confidence, len(replicates) - 1))
    return MCResult(price, std_error, price - q * std_error, price + q * std_error, n_paths)


def _controlled_replicates(sums: list[_Centred], means: torch.Tensor) -> torch.Tensor:
    """Control-variate estimates of each replicate, (R, K), each with the coefficient fitted on
    the other replicates' pooled cross products (independent of its own samples, so unbiased).

    A coefficient fitted on the replicate's own n / R samples biased its estimate by O(R / n),
    which averaging over replicates does not remove and which exceeded the randomised-QMC error
    (1.6 and 1.2 times the spread of the price over seeds at 512 and 1,024 antithetic paths).
    """
    betas = _coefficients_from_the_others(sums)
    return torch.stack([
        s.mean_y - (beta * (s.mean_c - means)).sum(-1) for s, beta in zip(sums, betas, strict=True)
    ])  # fmt: skip


def _coefficients_from_the_others(sums: list[_Centred]) -> list[torch.Tensor]:
    """Each group's control coefficient (K, J), fitted on the pooled within-group cross products
    of the other groups."""
    cc, yc = sum(s.cc for s in sums), sum(s.yc for s in sums)  # (K, J, J), (K, J)
    return [_control_coefficient(cc - s.cc, yc - s.yc) for s in sums]


def _cross_fitted(
    halves: tuple[Moments, Moments], means: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-fitted control-variate estimate of i.i.d. samples split in two halves, (K,), and
    the variance of one sample of it, (K,).

    Each half's samples ``Z = Y - beta (C - E[C])`` take the coefficient fitted on the other
    half, so the estimate (the mean of all Z) is unbiased, and given the other half a half's Z
    are i.i.d.: their pooled within-half variance (``n - 2`` degrees of freedom) estimates the
    error without the optimism of residuals from a coefficient fitted on themselves.

    The regression estimator, with ``beta`` fitted on all the samples and the residual variance
    with ``n - 1 - J`` degrees of freedom, understated the error of an at-the-money call with the
    terminal spot as control: the spread of the price over 20,000 runs was 1.23, 1.07 and 1.02
    times the root-mean-square reported error at 32, 128 and 512 antithetic pairs (the payoff's
    residual is largest where the control is far from its mean, and a fit on the same samples
    absorbs part of it: a heteroscedasticity that no degrees-of-freedom correction covers), and
    the price was biased by 0.35, 0.17 and 0.08 times that spread (95% intervals held the price
    83%, 91% and 94% of the time). Cross-fitted: 1.09, 1.03 and 1.00, no bias (87%, 93%, 94%).
    What the error still misses is the covariance of the two halves' errors, each coefficient
    being fitted on the other half, O(1 / n^2). The price of fitting on half the samples is a
    larger error at small n: 1.6, 1.14 and 1.03 times the mean squared error of the biased
    estimator at 32, 128 and 512 pairs, the same at 4,096.

    References:
        Avramidis and Wilson (1993), "A splitting scheme for control variates", Oper. Res.
        Letters 14(4); Glasserman (2004), section 4.1.3 (small-sample issues).
    """
    sums = [h.centred() for h in halves]
    total, squares = 0.0, 0.0
    for half, s, beta in zip(halves, sums, _coefficients_from_the_others(sums), strict=True):
        total = total + half.n * (s.mean_y - (beta * (s.mean_c - means)).sum(-1))
        # within-half sum of squares of Z: yy - 2 beta yc + beta cc beta
        quadratic = (beta[..., None, :] @ s.cc @ beta[..., :, None])[..., 0, 0]
        squares = squares + s.yy - 2.0 * (beta * s.yc).sum(-1) + quadratic
    n = sum(h.n for h in halves)
    return total / n, (squares / (n - len(halves))).clamp_min(0.0)


def _check_finite(name: str, values: torch.Tensor, offset: int) -> None:
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        row = int(bad.reshape(values.shape[0], -1).any(1).nonzero()[0, 0]) + offset
        raise ValueError(f"{name} contain NaN or inf (first at sample {row})")
