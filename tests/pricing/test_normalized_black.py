"""The normalised Black price deep out of the money: log price and its gradient against mpmath."""

from __future__ import annotations

import itertools
import math

import mpmath
import pytest
import torch

from pricing import _normalized_black as nb


def _mp_log_price_and_slopes(x: float, s: float) -> tuple[float, float, float]:
    """``ln b``, ``d ln b / dx`` and ``d ln b / ds`` at 80 digits, with ``db/dx = (exp(x/2) N(d1)
    + exp(-x/2) N(d2)) / 2`` and ``db/ds = exp(x/2) phi(d1)``."""
    with mpmath.workdps(80):
        x, s = mpmath.mpf(x), mpmath.mpf(s)
        d1 = x / s + s / 2
        up, down = mpmath.exp(x / 2), mpmath.exp(-x / 2)
        b = up * mpmath.ncdf(d1) - down * mpmath.ncdf(d1 - s)
        b_x = (up * mpmath.ncdf(d1) + down * mpmath.ncdf(d1 - s)) / 2
        return float(mpmath.log(b)), float(b_x / b), float(up * mpmath.npdf(d1) / b)


# (x, s) deep out of the money (d1 <= -1): the erfcx difference as it reads, for a small s
# (Taylor series) and far out (asymptotic series, and where the difference rounded to 0)
_DEEP = [(x, s) for x, s in itertools.product([-1e-4, -1e-2, -0.7, -5.0],
                                              [1e-8, 1e-6, 1e-4, 1e-3, 5e-3, 0.05, 0.5])
         if x / s + s / 2 <= -1.0]  # fmt: skip


@pytest.mark.parametrize(
    ("dtype", "rtol_value", "rtol_slope"),
    [(torch.float64, 1e-13, 1e-11), (torch.float32, 2e-6, 1e-4)],
    ids=["float64", "float32"],
)
def test_deep_log_price_and_its_gradient_match_mpmath_down_to_tiny_total_vol(
    dtype: torch.dtype, rtol_value: float, rtol_slope: float
) -> None:
    # Regression: the difference erfcx(-d1/sqrt2) - erfcx(-d2/sqrt2) cancelled to 0 where s^2/|x|
    # fell below eps (from s ~ 1e-8 in float64, 3e-4 in float32): ln b = -inf, gradients NaN.
    x = torch.tensor([c[0] for c in _DEEP], dtype=dtype, requires_grad=True)
    s = torch.tensor([c[1] for c in _DEEP], dtype=dtype, requires_grad=True)
    ln_b = nb.log_normalized_call(x, s)
    slope_x, slope_s = torch.autograd.grad(ln_b.sum(), (x, s))
    # the reference at the inputs as rounded to dtype
    ref = torch.tensor([_mp_log_price_and_slopes(float(a), float(b))
                        for a, b in zip(x.detach().double(), s.detach().double(), strict=True)],
                       dtype=torch.float64)  # fmt: skip
    representable = ref.abs() < torch.finfo(dtype).max  # d ln b / ds ~ x^2/s^3 overflows float32
    for ours, expected, rtol in (
        (ln_b, ref[:, 0], rtol_value),
        (slope_x, ref[:, 1], rtol_slope),
        (slope_s, ref[:, 2], rtol_slope),
    ):
        keep = representable[:, 0] & representable[:, 1] & representable[:, 2]
        torch.testing.assert_close(
            ours.detach().double()[keep], expected[keep], rtol=rtol, atol=0.0
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_price_gradients_are_finite_where_the_price_underflows(dtype: torch.dtype) -> None:
    # b = exp(ln b) underflows to 0 here: its gradients are 0, not 0 * inf = NaN
    x = torch.tensor([-0.7, -5.0, -1e-3, -0.7], dtype=dtype, requires_grad=True)
    s = torch.tensor([1e-9, 1e-12, 1e-9, 2.6e-4], dtype=dtype, requires_grad=True)
    b = nb.normalized_call(x, s)
    grads = torch.autograd.grad(b.sum(), (x, s))
    assert bool((b == 0).all())
    for g in grads:
        torch.testing.assert_close(g, torch.zeros_like(g), rtol=0.0, atol=0.0)


@pytest.mark.parametrize(
    ("dtype", "s"),
    [(torch.float32, 0.005 / 365**0.5), (torch.float64, 1e-8)],
    ids=["float32", "float64"],
)
def test_a_single_underflowing_price_has_zero_gradients(dtype: torch.dtype, s: float) -> None:
    # 0-d inputs take the formula without indexing: S/K = 0.1 (at 0.5% vol for a day in float32)
    x = torch.tensor(-2.302585092994046, dtype=dtype, requires_grad=True)
    total_vol = torch.tensor(s, dtype=dtype, requires_grad=True)
    b = nb.normalized_call(x, total_vol)
    grads = torch.autograd.grad(b, (x, total_vol))
    assert b.shape == () and float(b.detach()) == 0.0
    assert all(float(g) == 0.0 for g in grads)


# (x, s) near the money (-1 < d1 <= 1) at small total vols, where erf(d1/sqrt2) - erf(d2/sqrt2)
# cancels, and a few above the series' range
_NEAR = [(k * s, s) for k, s in itertools.product([-0.999, -0.7, -0.3, -1e-3, 0.0],
                                                  [1e-8, 1e-6, 1e-4, 1e-3, 0.05, 0.1, 0.5])]  # fmt: skip


def test_near_money_log_price_and_its_gradient_match_mpmath_at_tiny_total_vol() -> None:
    # Regression: the erf difference lost ~log10(1/s) digits: b 7e-12 off in relative terms at
    # s = 1e-4, 1e-7 at s = 1e-8 (and its autograd gradients as much).
    x = torch.tensor([c[0] for c in _NEAR], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([c[1] for c in _NEAR], dtype=torch.float64, requires_grad=True)
    assert bool((nb.region_of(x / s + 0.5 * s) == 1).all())
    ln_b = nb.log_normalized_call(x, s)
    slope_x, slope_s = torch.autograd.grad(ln_b.sum(), (x, s))
    ref = torch.tensor([_mp_log_price_and_slopes(float(a), float(b)) for a, b in _NEAR],
                       dtype=torch.float64)  # fmt: skip
    # ln b is ~ln s: compare b itself, in relative terms
    torch.testing.assert_close(torch.exp(ln_b.detach() - ref[:, 0]), torch.ones_like(ln_b),
                               rtol=1e-14, atol=0.0)  # fmt: skip
    torch.testing.assert_close(slope_x, ref[:, 1], rtol=1e-14, atol=0.0)
    torch.testing.assert_close(slope_s, ref[:, 2], rtol=1e-14, atol=0.0)


def test_log_moneyness_is_accurate_near_the_money() -> None:
    # ln(F / K) rounds F / K: an absolute error eps in x, eps / s relative in a price at total vol s
    forward = torch.tensor([100.0, 100.0, 1.0, 3.0, 1e-200], dtype=torch.float64)
    strike = torch.tensor([100.0 + 1e-9, 100.0 - 3e-7, 0.7, 1.0, 1e100], dtype=torch.float64)
    with mpmath.workdps(50):
        ref = [float(mpmath.log(mpmath.mpf(float(f)) / mpmath.mpf(float(k))))
               for f, k in zip(forward, strike, strict=True)]  # fmt: skip
    torch.testing.assert_close(nb.log_moneyness(forward, strike), torch.tensor(ref,
                               dtype=torch.float64), rtol=2 * torch.finfo(torch.float64).eps,
                               atol=0.0)  # fmt: skip


def test_erf_difference_takes_the_series_on_its_small_steps_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the series, ~15x the plain difference's cost, ran on every element once any step was
    # small: black_price 1.4x and the eager implied-vol solve 1.2x slower on a million options
    t1 = torch.tensor([[0.3, -0.2, 0.5], [0.1, 0.6, -0.4]], dtype=torch.float64,
                      requires_grad=True)  # fmt: skip
    delta = torch.tensor([1e-9, 0.5], dtype=torch.float64).unsqueeze(-1)  # broadcast (2, 1)
    sizes = []
    series = nb._erf_difference_series
    monkeypatch.setattr(nb, "_erf_difference_series",
                        lambda m, h: sizes.append(m.numel()) or series(m, h))  # fmt: skip
    d = nb.erf_difference(t1, delta)
    assert sizes == [3] and d.shape == (2, 3)
    with mpmath.workdps(40):
        mp = mpmath.mpf
        ref = [[float(mpmath.erf(mp(a)) - mpmath.erf(mp(a) - mp(b))) for a in row]
               for row, b in zip(t1.tolist(), delta.flatten().tolist(), strict=True)]  # fmt: skip
    torch.testing.assert_close(d, torch.tensor(ref, dtype=torch.float64), rtol=1e-14, atol=0.0)
    # d/dt1 = 2/sqrt(pi) (exp(-t1^2) - exp(-(t1 - delta)^2)), through both formulas
    (grad,) = torch.autograd.grad(d.sum(), t1)
    x = t1.detach()
    expected = 2 / math.sqrt(math.pi) * (torch.exp(-x * x) - torch.exp(-((x - delta) ** 2)))
    torch.testing.assert_close(grad, expected, rtol=1e-7, atol=0.0)


def test_erf_difference_keeps_the_plain_difference_where_it_loses_under_two_digits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the series ran below delta = 0.061 (where its truncation meets the plain difference's
    # rounding): a sixth of bench_implied_vol's options, the eager solve 1.27x slower, for
    # errors the plain difference keeps within ~100 ulps there
    t1 = torch.linspace(-1.0, 1.0, 41, dtype=torch.float64)
    delta = torch.tensor([0.011, 0.03, 0.06], dtype=torch.float64).unsqueeze(-1)
    sizes = []
    series = nb._erf_difference_series
    monkeypatch.setattr(nb, "_erf_difference_series",
                        lambda m, h: sizes.append(m.numel()) or series(m, h))  # fmt: skip
    d = nb.erf_difference(t1, delta)
    assert sizes == []
    with mpmath.workdps(40):
        mp = mpmath.mpf
        ref = [[float(mpmath.erf(mp(a)) - mpmath.erf(mp(a) - mp(b))) for a in t1.tolist()]
               for b in delta.flatten().tolist()]  # fmt: skip
    eps = torch.finfo(torch.float64).eps
    torch.testing.assert_close(d, torch.tensor(ref, dtype=torch.float64), rtol=100 * eps, atol=0.0)
