"""Normal CDF helpers: log_ndtr's value and derivatives far in the lower tail; piecewise evaluation."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

from pricing._special import log_ndtr, piecewise


def _mp_log_ndtr_and_slope(x: float) -> tuple[float, float]:
    """``ln Phi(x)`` and ``phi(x) / Phi(x)`` at 60 digits."""
    with mpmath.workdps(60):
        x = mpmath.mpf(x)
        return float(mpmath.log(mpmath.ncdf(x))), float(mpmath.npdf(x) / mpmath.ncdf(x))


@pytest.mark.parametrize(
    ("dtype", "rtol_value", "rtol_slope"),
    [(torch.float64, 1e-14, 1e-13), (torch.float32, 1e-6, 2e-5)],
    ids=["float64", "float32"],
)
def test_log_ndtr_and_its_gradient_match_mpmath_far_into_the_lower_tail(
    dtype: torch.dtype, rtol_value: float, rtol_slope: float
) -> None:
    # torch.special.log_ndtr's gradient was 4.5% off at -1000 and 0.4 for 1e5 at -1e5 in float32,
    # 2x at -1e8 and inf at -1e10 in float64 (and inf times a zero upstream gradient is NaN).
    x = -torch.logspace(-2, 12, 60, dtype=dtype)
    x = torch.cat([x, torch.linspace(-12.0, 6.0, 37, dtype=dtype)]).requires_grad_(True)
    value = log_ndtr(x)
    (slope,) = torch.autograd.grad(value.sum(), x)
    ref = torch.tensor([_mp_log_ndtr_and_slope(float(v)) for v in x.detach().double()],
                       dtype=torch.float64)  # fmt: skip
    torch.testing.assert_close(value.detach().double(), ref[:, 0], rtol=rtol_value, atol=1e-12)
    torch.testing.assert_close(slope.double(), ref[:, 1], rtol=rtol_slope, atol=0.0)


@pytest.mark.parametrize(
    ("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"]
)
def test_log_ndtr_second_derivative_is_right_in_the_lower_tail(
    dtype: torch.dtype, rtol: float
) -> None:
    # d2/dx2 ln Phi(x) = -r (x + r), r = phi(x) / Phi(x): -1 + 1/x^2 + ... as x -> -oo (the
    # gammas of barrier prices differentiate log_ndtr twice)
    points = [-20.0, -1e3, -1e6, -1e12]
    x = torch.tensor(points, dtype=dtype, requires_grad=True)
    (slope,) = torch.autograd.grad(log_ndtr(x).sum(), x, create_graph=True)
    (curvature,) = torch.autograd.grad(slope.sum(), x)
    with mpmath.workdps(100):
        r = [mpmath.npdf(v) / mpmath.ncdf(v) for v in map(mpmath.mpf, points)]
        expected = [float(-q * (v + q)) for v, q in zip(map(mpmath.mpf, points), r, strict=True)]
    torch.testing.assert_close(curvature.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=rtol, atol=0.0)  # fmt: skip


def test_piecewise_keeps_the_other_formula_out_of_the_gradient() -> None:
    # torch.where(x > 0, sqrt(x), -x) has a NaN gradient at x < 0 (sqrt's 0 * inf); piecewise not
    x = torch.tensor([-4.0, 0.0, 9.0], dtype=torch.float64, requires_grad=True)
    y = piecewise((x > 0).long(), (torch.neg, torch.sqrt), x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y.detach(), torch.tensor([4.0, 0.0, 3.0], dtype=torch.float64),
                               rtol=0.0, atol=0.0)  # fmt: skip
    torch.testing.assert_close(grad, torch.tensor([-1.0, -1.0, 1 / 6], dtype=torch.float64),
                               rtol=1e-15, atol=0.0)  # fmt: skip


@pytest.mark.parametrize("shape", [(), (0,), (2, 3)])
def test_piecewise_keeps_the_shape(shape: tuple[int, ...]) -> None:
    x = torch.linspace(-1.0, 1.0, math.prod(shape)).reshape(shape)
    y = piecewise((x > 0).long(), (torch.neg, torch.exp), x)
    torch.testing.assert_close(y, torch.where(x > 0, torch.exp(x), -x), rtol=0.0, atol=0.0)


def test_piecewise_refuses_a_code_without_a_formula() -> None:
    # the elements of such a code were left as uninitialised memory in the output
    x = torch.tensor([1.0, 4.0])
    with pytest.raises(ValueError, match="code 2 has no formula"):
        piecewise(torch.tensor([0, 2]), (torch.neg, torch.sqrt), x)
