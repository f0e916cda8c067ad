"""Batched Levenberg-Marquardt, exact Jacobians, and the Lewis surface pricer used by calibration."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pricing import _heston_lewis
from pricing._heston_lewis import (
    SurfaceGrid,
    gaussian_limit,
    node_counts,
    normalized_otm,
    normalized_otm_and_jacobian,
    upper_limits,
)
from pricing.black_scholes import black_implied_vol
from pricing.calibration_heston import (
    _TOLERANCES,
    DEFAULT_NODES,
    _box,
    _Residuals,
    surfaces_from_quotes,
)
from pricing.heston import otm_implied_vol
from pricing.heston import price as heston_price
from pricing.least_squares import elementwise_jacobian, levenberg_marquardt, value_and_jacobian
from pricing.quantlib import heston_price as ql_heston_price

F64 = torch.float64


def test_batched_problems_are_solved_independently() -> None:
    t = torch.linspace(0.0, 2.0, 30, dtype=F64)
    truth = torch.tensor([[2.0, 1.5], [0.5, 0.2], [3.0, 4.0]], dtype=F64)
    data = truth[:, :1] * torch.exp(-truth[:, 1:] * t)  # (3, 30)

    def residual(p: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return p[..., 0] * torch.exp(-p[..., 1] * t) - data[index]

    x0 = torch.ones(3, 2, dtype=F64)
    result = levenberg_marquardt(elementwise_jacobian(residual, 30), x0, lower=torch.tensor(0.0),
                                 upper=torch.tensor(10.0))  # fmt: skip
    torch.testing.assert_close(result.x, truth, rtol=1e-9, atol=1e-12)
    assert bool(result.converged.all())
    assert float(result.cost.max()) < 1e-20


def test_problems_that_stop_early_leave_the_others_as_if_alone() -> None:
    # Problems stopping at 2, 4 and 7 iterations: the loop carries the still active ones on (the
    # full batch while every problem is active, gathered subsets after); each comes out as solved
    # alone, state included.
    t = torch.linspace(0.0, 2.0, 30, dtype=F64)
    truth = torch.tensor([[2.0, 1.5], [0.5, 0.2], [3.0, 4.0], [1.0, 0.5]], dtype=F64)
    data = truth[:, :1] * torch.exp(-truth[:, 1:] * t)  # (4, 30)

    def solve(x0: torch.Tensor, first: int):
        def residual(p: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return p[..., 0] * torch.exp(-p[..., 1] * t) - data[index + first]

        return levenberg_marquardt(elementwise_jacobian(residual, 30), x0,
                                   lower=torch.tensor(0.0), upper=torch.tensor(10.0))  # fmt: skip

    x0 = torch.tensor([[1.0, 1.0], [0.5, 0.2], [6.0, 9.0], [1.0, 0.5 + 1e-6]], dtype=F64)
    together = solve(x0, 0)
    assert len(set(together.iterations.tolist())) == 3
    for i in range(len(x0)):
        alone = solve(x0[i : i + 1], i)
        for field in alone._fields:
            torch.testing.assert_close(getattr(together, field)[i], getattr(alone, field)[0],
                                       rtol=1e-14, atol=0.0)  # fmt: skip


def _copy(p: torch.Tensor, n: int) -> torch.Tensor:
    """The parameter copy of output n: params are (B, M, P) with M = 1 or one copy per output."""
    return p[:, n if p.shape[1] > 1 else 0]


def test_rosenbrock_valley_is_followed_to_the_minimum() -> None:
    def residual(p: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        first, second = _copy(p, 0), _copy(p, 1)
        return torch.stack([10 * (first[:, 1] - first[:, 0] ** 2), 1 - second[:, 0]], dim=-1)

    x0 = torch.tensor([[-1.2, 1.0]], dtype=F64)
    result = levenberg_marquardt(elementwise_jacobian(residual, 2), x0, lower=torch.tensor(-5.0),
                                 upper=torch.tensor(5.0), max_iterations=200)  # fmt: skip
    torch.testing.assert_close(result.x[0], torch.tensor([1.0, 1.0], dtype=F64), rtol=0, atol=1e-8)


def test_a_minimum_outside_the_box_stops_on_the_bound() -> None:
    target = torch.tensor([3.0, -1.0], dtype=F64)

    def residual(p: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.stack([_copy(p, 0)[:, 0], _copy(p, 1)[:, 1]], dim=-1) - target

    result = levenberg_marquardt(elementwise_jacobian(residual, 2), torch.zeros(1, 2, dtype=F64),
                                 lower=torch.tensor([-2.0, -2.0], dtype=F64),
                                 upper=torch.tensor([2.0, 2.0], dtype=F64))  # fmt: skip
    torch.testing.assert_close(
        result.x[0], torch.tensor([2.0, -1.0], dtype=F64), rtol=0, atol=1e-10
    )
    assert bool(result.converged[0])


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_a_start_on_a_flat_stretch_stays_put_in_either_dtype(dtype: torch.dtype) -> None:
    # Problem 0 starts where the hinge is flat (a zero Jacobian): its damping scale, floored at
    # 1e-12 * max(amax, 1e-300), was 0 in float32 and the batch's solve failed on a singular
    # matrix; float64 converged at once. Problem 1 finds the hinge's minimum, p = 1 + mean(t).
    t = torch.linspace(0.0, 1.0, 5, dtype=dtype)

    def residual(p: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.relu(p[..., 0] - 1.0) - t

    x0 = torch.tensor([[0.0], [3.0]], dtype=dtype)
    result = levenberg_marquardt(elementwise_jacobian(residual, 5), x0, lower=torch.tensor(-5.0),
                                 upper=torch.tensor(5.0))  # fmt: skip
    expected = torch.tensor([[0.0], [1.5]], dtype=dtype)
    torch.testing.assert_close(result.x, expected, rtol=0, atol=1e-6)
    assert result.converged.tolist() == [True, True]
    # a small initial damping times float32's smallest normal underflowed to 0: singular again
    result = levenberg_marquardt(elementwise_jacobian(residual, 5), x0, lower=torch.tensor(-5.0),
                                 upper=torch.tensor(5.0), damping=1e-30)  # fmt: skip
    torch.testing.assert_close(result.x, expected, rtol=0, atol=1e-6)


def test_a_vanished_column_does_not_throw_its_parameter_across_the_box() -> None:
    # One exact Heston smile (T = 0.5, K/F 0.8..1.2) fitted as calibration does, from QuantLib's
    # start: the first step clips kappa to its bound 1e-3, where theta's diagonal of J^T J falls
    # 5e5-fold. Damped by that diagonal alone, the next step threw theta to 0.76 and the fit stalled
    # 1 bp above the smile with v0 at its bound (unconverged after 100 iterations); damped at least
    # by 1e-2 of its largest diagonal so far, it converges to the truth in under 60.
    truth = {"v0": 0.107, "kappa": 2.0, "theta": 0.0925, "sigma": 0.94, "rho": -0.75}
    ratio = torch.linspace(0.8, 1.2, 11, dtype=F64)
    iv = otm_implied_vol(ratio=ratio, maturity=torch.full_like(ratio, 0.5), **truth)
    table = pd.DataFrame({"strike": 100.0 * ratio.numpy(), "forward": 100.0, "maturity": 0.5,
                          "market_iv": iv.numpy()})  # fmt: skip
    residuals = _Residuals(surfaces_from_quotes([table], [np.ones(11)]), torch.tensor([0]))
    lower, upper = _box(None)
    x0 = torch.tensor([[0.1, 1.0, 0.1, 0.5, -0.5]], dtype=F64)
    with torch.inference_mode():
        fit = levenberg_marquardt(residuals, x0, lower=lower, upper=upper, max_iterations=100,
                                  **_TOLERANCES)  # fmt: skip
    assert bool(fit.converged[0])
    assert int(fit.iterations[0]) < 60
    torch.testing.assert_close(fit.x[0], torch.tensor(list(truth.values()), dtype=F64),
                               rtol=1e-6, atol=0.0)  # fmt: skip


@pytest.mark.parametrize("scale", [1e-4, 1e-7, 1e5])
def test_the_fit_and_its_verdict_are_free_of_the_residuals_units(scale: float) -> None:
    # The same decay fit with residuals in units `scale` times smaller or larger takes the same
    # steps. The gradient test was absolute, |J^T r| <= gtol: at scale 1e-7 it stopped after 2
    # iterations at (1.82, 1.57), reported converged (1e-4: 5 iterations, 2e-9 off).
    t = torch.linspace(0.0, 1.0, 20, dtype=F64)

    def solve(units: float):
        y = units * 2.0 * torch.exp(-1.5 * t)
        fn = elementwise_jacobian(
            lambda p, i: units * p[..., 0] * torch.exp(-p[..., 1] * t) - y, 20
        )
        return levenberg_marquardt(fn, torch.tensor([[1.0, 0.1]], dtype=F64),
                                   lower=torch.tensor(0.0), upper=torch.tensor(10.0))  # fmt: skip

    scaled, unit = solve(scale), solve(1.0)
    torch.testing.assert_close(
        scaled.x, torch.tensor([[2.0, 1.5]], dtype=F64), rtol=1e-12, atol=0.0
    )
    assert scaled.iterations.tolist() == unit.iterations.tolist()
    assert scaled.converged.tolist() == [True]


def test_value_and_jacobian_match_finite_differences() -> None:
    k = torch.tensor([0.8, 1.0, 1.3], dtype=F64)

    def fn(p: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return p[..., 0] * torch.log1p(p[..., 1] * k) + torch.sin(p[..., 0] * p[..., 1] * k)

    x = torch.tensor([[0.7, 1.9]], dtype=F64)
    _, jacobian = value_and_jacobian(fn, x, torch.tensor([0]), 3)
    h = 1e-6
    for j in range(2):
        step = torch.zeros_like(x)
        step[0, j] = h
        up, down = fn((x + step).unsqueeze(1), None), fn((x - step).unsqueeze(1), None)
        torch.testing.assert_close(
            jacobian[0, :, j], ((up - down) / (2 * h))[0], rtol=1e-8, atol=1e-9
        )


MATURITIES = torch.tensor([[14 / 365, 91 / 365, 1.0, 3.0]], dtype=F64)
RATIOS = torch.tensor([0.7, 0.85, 1.0, 1.15, 1.4], dtype=F64)
SHORT_RATIOS = torch.tensor([0.9, 0.95, 1.0, 1.05, 1.1], dtype=F64)


def _max_error_vs_quantlib_bp(
    price: torch.Tensor,
    params: tuple[float, ...],
    maturities: torch.Tensor,
    ratios: torch.Tensor,
    floor: float,
) -> float:
    """Largest implied-vol gap (bp) between OTM prices over F ``price`` (M, Q) at strikes ``ratios``
    (Q,) and maturities (M,) and QuantLib's adaptive engine, over quotes worth more than ``floor``."""
    m, q = price.shape
    ratio, t = ratios.expand(m, q), maturities.unsqueeze(-1).expand(m, q)
    reference = torch.tensor(ql_heston_price(
        forward=1.0, strike=ratio.numpy(), maturity=t.numpy(), is_call=(ratio >= 1).numpy(),
        **dict(zip(("v0", "kappa", "theta", "sigma", "rho"), params, strict=True)),
        engine="reference"))  # fmt: skip
    vols = [black_implied_vol(price=p, forward=1.0, strike=ratio, maturity=t, is_call=ratio >= 1)
            for p in (price, reference)]  # fmt: skip
    meaningful = reference > floor
    assert bool(meaningful[0].any())  # the first (shortest) expiry is tested
    return float(((vols[0] - vols[1]).abs() * 1e4)[meaningful].max())


@pytest.mark.parametrize(
    "params",
    [(0.04, 1.5, 0.04, 0.5, -0.7), (0.2, 15.7, 0.075, 3.4, -0.5), (0.01, 0.5, 0.09, 0.3, 0.3)],
)
@pytest.mark.parametrize("floor_nodes", [DEFAULT_NODES, 256])
def test_lewis_surface_prices_match_quantlib_adaptive(
    params: tuple[float, ...], floor_nodes: int
) -> None:
    # the calibration's default floor: node_counts adds what the oscillation needs
    grid = SurfaceGrid(MATURITIES, torch.log(RATIOS).expand(1, 4, 5).clone(), floor_nodes)
    b = normalized_otm(grid, torch.tensor([params], dtype=F64)).reshape(4, 5)
    price = torch.sqrt(RATIOS) * b
    assert _max_error_vs_quantlib_bp(price, params, MATURITIES[0], RATIOS, 1e-7) < 1e-2


@pytest.mark.parametrize(
    "params",
    [(0.005, 3.0, 0.01, 1.0, -0.9), (0.01, 5.0, 0.01, 0.2, -0.9), (0.02, 0.5, 0.1, 1.0, -0.6)],
)
@pytest.mark.parametrize("floor_nodes", [DEFAULT_NODES, 256])
def test_short_low_variance_expiries_match_quantlib(
    params: tuple[float, ...], floor_nodes: int
) -> None:
    # U runs to thousands: without the Black-Scholes control variate, 256 nodes gave negative
    # 7-day ATM prices and errors of hundreds of bp (the peak of 1 / (u^2 + 1/4) at u = 0)
    maturities = torch.tensor([[7 / 365, 14 / 365, 30 / 365]], dtype=F64)
    grid = SurfaceGrid(maturities, torch.log(SHORT_RATIOS).expand(1, 3, 5).clone(), floor_nodes)
    b = normalized_otm(grid, torch.tensor([params], dtype=F64)).reshape(3, 5)
    price = torch.sqrt(SHORT_RATIOS) * b
    assert _max_error_vs_quantlib_bp(price, params, maturities[0], SHORT_RATIOS, 1e-6) < 2e-2


@pytest.mark.parametrize("grouped", [True, False])
def test_each_surface_gets_its_own_node_count(
    monkeypatch: pytest.MonkeyPatch, grouped: bool
) -> None:
    # long expiries keep 256 nodes; in a batch with a short, low-variance surface, the batch's
    # prices and Jacobian are those of the surfaces one by one: exactly when the surfaces are
    # grouped by node count (large grids), to quadrature accuracy when all take the largest count
    monkeypatch.setattr(_heston_lewis, "_GROUP_ABOVE", 0 if grouped else 2**30)
    long = (
        torch.tensor([[91 / 365, 1.0, 3.0]], dtype=F64),
        torch.tensor([0.04, 1.5, 0.04, 0.5, -0.7]),
    )
    short = (
        torch.tensor([[7 / 365, 30 / 365, 1.0]], dtype=F64),
        torch.tensor([0.005, 3.0, 0.01, 1.0, -0.9]),
    )
    k = torch.log(RATIOS).expand(1, 3, 5)
    grid = SurfaceGrid(torch.cat([long[0], short[0], long[0]]), k.expand(3, 3, 5).clone(), 256)
    x = torch.stack([long[1], short[1], long[1] * 1.1]).to(F64)
    counts = node_counts(grid, x, upper_limits(grid, x))
    assert counts[0] == 256 and counts[1] > 256  # the short surface's wide smile oscillates
    b, jacobian = normalized_otm_and_jacobian(grid, x)
    price = torch.sqrt(RATIOS) * b[1].reshape(3, 5)
    assert (
        _max_error_vs_quantlib_bp(price, tuple(short[1].tolist()), short[0][0], RATIOS, 1e-6) < 2e-2
    )
    torch.testing.assert_close(b, normalized_otm(grid, x), rtol=1e-13, atol=1e-16)
    for i in range(3):
        one = grid.select(torch.tensor([i]))
        b_i, j_i = normalized_otm_and_jacobian(one, x[i : i + 1])
        tol = {"rtol": 0.0, "atol": 0.0} if grouped else {"rtol": 1e-9, "atol": 1e-11}
        torch.testing.assert_close(b[i : i + 1], b_i, **tol)
        torch.testing.assert_close(jacobian[i : i + 1], j_i, **tol)


@pytest.mark.parametrize(
    "params",
    [
        [(0.05, 2.0, 0.06, 0.7, -0.6)],
        [(0.2, 15.7, 0.075, 3.4, -0.5), (0.01, 0.5, 0.09, 0.3, 0.3)],  # Feller fails; rho > 0
        [(0.04, 1e-3, 0.04, 0.05, -0.999), (1.0, 50.0, 1e-5, 10.0, 0.999)],  # at the bounds
    ],
)
def test_closed_form_lewis_jacobian_matches_autograd(params: list[tuple[float, ...]]) -> None:
    # The Jacobian is written out by the chain rule; autograd through the same grid checks it.
    x = torch.tensor(params, dtype=F64)
    grid = SurfaceGrid(MATURITIES.expand(len(x), -1), torch.log(RATIOS).expand(len(x), 4, 5), 256)
    b, jacobian = normalized_otm_and_jacobian(grid, x)
    torch.testing.assert_close(b, normalized_otm(grid, x), rtol=1e-13, atol=1e-16)
    full = torch.autograd.functional.jacobian(lambda p: normalized_otm(grid, p).sum(0), x)
    torch.testing.assert_close(jacobian, full.permute(1, 0, 2), rtol=1e-10, atol=1e-13)


def test_gaussian_limit_solves_its_truncation_equation() -> None:
    variance = torch.tensor([1e-6, 1e-3, 0.04, 1.0, 10.0], dtype=F64)
    u = gaussian_limit(variance)
    torch.testing.assert_close(0.5 * variance * u * u + 2.0 * torch.log(u),
                               torch.full_like(u, 38.0), rtol=1e-3, atol=0.0)  # fmt: skip


def test_lewis_jacobian_matches_finite_differences() -> None:
    grid = SurfaceGrid(MATURITIES, torch.log(RATIOS).expand(1, 4, 5).clone(), 256)
    x = torch.tensor([[0.05, 2.0, 0.06, 0.7, -0.6]], dtype=F64)
    _, jacobian = normalized_otm_and_jacobian(grid, x)
    _assert_central_differences(grid, x, jacobian)


def _assert_central_differences(grid: SurfaceGrid, x: torch.Tensor, jacobian: torch.Tensor) -> None:
    """The first surface's Jacobian ``(N, 5)`` against central differences of its prices."""
    for j in range(5):
        h = 1e-4 * float(x[0, j].abs())
        step = torch.zeros_like(x)
        step[0, j] = h
        numeric = (normalized_otm(grid, x + step) - normalized_otm(grid, x - step)) / (2 * h)
        # Central differences: O(h^2) truncation plus the quadrature's ~1e-12 noise over h.
        np.testing.assert_allclose(jacobian[0, :, j], numeric[0], rtol=1e-5, atol=1e-7)


def test_a_run_continued_from_known_residuals_equals_one_run() -> None:
    # Continuing with the residuals and Jacobian at hand (initial=) skips one evaluation and
    # counts only the new ones; the iterates are those of restarting at the same point.
    t = torch.linspace(0.0, 1.0, 20, dtype=F64)
    y = 2.0 * torch.exp(-1.5 * t)
    calls = []

    def residual(p: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        calls.append(len(index))
        return p[..., 0] * torch.exp(-p[..., 1] * t) - y

    fn = elementwise_jacobian(residual, 20)
    box = {"lower": torch.tensor(0.0), "upper": torch.tensor(10.0)}
    first = levenberg_marquardt(fn, torch.tensor([[1.0, 0.1]], dtype=F64), max_iterations=3, **box)
    calls.clear()
    restarted = levenberg_marquardt(fn, first.x, **box)
    n_restarted = len(calls)
    calls.clear()
    continued = levenberg_marquardt(fn, first.x, initial=(first.residuals, first.jacobian), **box)
    assert len(calls) == n_restarted - 1
    assert int(continued.iterations[0]) == int(restarted.iterations[0]) - 1
    torch.testing.assert_close(continued.x, restarted.x, rtol=0.0, atol=0.0)
    torch.testing.assert_close(
        continued.x, torch.tensor([[2.0, 1.5]], dtype=F64), rtol=1e-8, atol=0.0
    )


def _line_fit() -> object:
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    return elementwise_jacobian(lambda p, i: p[..., 0] - t, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x0": torch.tensor([[math.nan]], dtype=torch.float64)}, "x0 must be finite"),
        ({"lower": torch.tensor(5.0), "upper": torch.tensor(1.0)}, "lower <= upper"),
        ({"lower": torch.tensor(math.nan)}, "lower <= upper"),
        ({"damping": -1.0}, "damping must be finite and > 0"),
        ({"max_iterations": 0}, "max_iterations must be at least 1"),
    ],
)
def test_bad_problems_are_refused_not_reported_converged(kwargs, message):
    # each came back converged=True (at the upper bound, at x0, or with a NaN cost)
    args = {"x0": torch.zeros(1, 1, dtype=torch.float64), "lower": torch.tensor(-1.0),
            "upper": torch.tensor(1.0)} | kwargs  # fmt: skip
    with pytest.raises(ValueError, match=message):
        levenberg_marquardt(_line_fit(), args.pop("x0"), **args)


def test_a_nan_cost_stops_the_problem_unconverged():
    fn = elementwise_jacobian(lambda p, i: p[..., 0] * torch.tensor([math.nan, 1.0]), 2)
    res = levenberg_marquardt(fn, torch.ones(1, 1, dtype=torch.float64),
                              lower=torch.tensor(-2.0), upper=torch.tensor(2.0))  # fmt: skip
    assert not bool(res.converged[0])


def test_a_residual_function_of_another_width_is_an_error():
    # with n_outputs 1 for 5 outputs the Jacobian summed the 5 rows silently
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"returned shape \(1, 5\), not \(B, n_outputs\) = \(1, 1\)"
    ):
        value_and_jacobian(lambda p, i: p[..., 0] - t, torch.zeros(1, 1, dtype=torch.float64),
                           torch.tensor([0]), 1)  # fmt: skip


def test_a_stop_at_the_damping_limit_is_not_reported_converged():
    # r(x) = 1 + 1e-11 x, undefined (NaN) below x = 1 for problem 1, which starts there: every
    # step downhill is refused, the damping doubles its growth until it passes its limit (13
    # iterations), and that stop came back converged=True at the untouched start
    def residual(p: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        x = p[..., 0]
        defined = (x >= 1.0) | (index == 0).unsqueeze(-1)
        return torch.where(defined, 1 + 1e-11 * x, math.nan)

    res = levenberg_marquardt(elementwise_jacobian(residual, 1), torch.ones(2, 1, dtype=F64),
                              lower=torch.tensor(-1e15), upper=torch.tensor(1e15))  # fmt: skip
    assert res.converged.tolist() == [True, False]
    assert int(res.iterations[1]) < 100  # stopped by the damping limit, not the iteration limit
    assert float(res.x[1, 0]) == 1.0  # no step was accepted
    assert float(res.cost[0]) < 1e-10  # the problem defined everywhere is solved (from 0.5)


def test_a_fit_at_a_minimum_that_rounding_hides_is_reported_converged():
    # Data 1e-8 off an exact decay (quotes rounded to 8 digits): at the least-squares minimum
    # (cost ~1e-15) the model promises 1e-9 of the cost, which the rounded cost cannot resolve.
    # The first step refused there is below xtol on its own, not shrunk by refusals: 4 of these
    # 60 fits stopped there, at their minimum, reported unconverged as stalls (SABR's tolerances)
    t = torch.linspace(0.0, 3.0, 40, dtype=F64)
    truth = torch.stack(torch.meshgrid(torch.linspace(1.0, 3.0, 6, dtype=F64),
                                       torch.linspace(0.5, 1.5, 10, dtype=F64),
                                       indexing="ij"), -1).reshape(-1, 2)  # fmt: skip
    wiggle = 1e-8 * torch.sin(7.0 * t + 13.0 * torch.arange(60, dtype=F64).unsqueeze(-1))
    data = truth[:, :1] * torch.exp(-truth[:, 1:] * t) + wiggle  # (60, 40)
    fn = elementwise_jacobian(lambda p, i: p[..., 0] * torch.exp(-p[..., 1] * t) - data[i], 40)
    x0 = torch.tensor([[1.0, 0.1]], dtype=F64).expand(60, 2)
    res = levenberg_marquardt(fn, x0, lower=torch.tensor(0.0), upper=torch.tensor(10.0),
                              ftol=1e-10, xtol=1e-10, gtol=1e-12)  # fmt: skip
    torch.testing.assert_close(res.x, truth, rtol=0.0, atol=1e-7)
    assert res.converged.all(), (~res.converged).nonzero().flatten().tolist()
    assert int(res.iterations.max()) < 20


TINY_VARIANCE = [
    (1e-5, 10.0, 1e-5, 2.0, 0.0),
    (1e-4, 10.0, 1e-4, 2.0, -0.7),
    (1e-6, 10.0, 1e-6, 2.0, -0.95),
    (1e-5, 1.0, 1e-5, 10.0, -0.9),
    (1e-5, 50.0, 1e-5, 10.0, 0.999),
]
TINY_MATURITIES = torch.tensor([[7 / 365, 0.05, 0.25, 1.0]], dtype=F64)
NARROW_RATIOS = torch.tensor([0.9, 0.98, 0.995, 1.0, 1.005, 1.02, 1.1], dtype=F64)


@pytest.mark.parametrize("params", TINY_VARIANCE)
def test_tiny_variance_large_vol_of_vol_matches_the_reference_pricer(
    params: tuple[float, ...],
) -> None:
    # The integrand lasts past the core's largest U (1e4) like 1 / u^2: with U capped there and no
    # tail, the at-the-money price was 38% off (v0 = theta = 1e-5, sigma 2, 3 months), 10x off
    # (v0 = theta = 1e-6, rho -0.95), and the wings by 1e-7 of the forward.
    m, q = TINY_MATURITIES.shape[-1], len(NARROW_RATIOS)
    grid = SurfaceGrid(TINY_MATURITIES, torch.log(NARROW_RATIOS).expand(1, m, q).clone(), 64)
    b = normalized_otm(grid, torch.tensor([params], dtype=F64)).reshape(m, q)
    ratio, t = NARROW_RATIOS.expand(m, q), TINY_MATURITIES[0].unsqueeze(-1).expand(m, q)
    named = dict(zip(("v0", "kappa", "theta", "sigma", "rho"), params, strict=True))
    reference = heston_price(forward=1.0, strike=ratio, maturity=t, is_call=ratio >= 1,
                             discount=1.0, dtype=F64, **named)  # fmt: skip
    torch.testing.assert_close(torch.sqrt(ratio) * b, reference, rtol=1e-8, atol=1e-14)


def test_tiny_variance_jacobian_matches_autograd_and_finite_differences() -> None:
    # the tail panels' Filon weights depend only on the detached limits: the chain rule stays exact
    x = torch.tensor(TINY_VARIANCE[1:4], dtype=F64)
    m, q = TINY_MATURITIES.shape[-1], len(NARROW_RATIOS)
    k = torch.log(NARROW_RATIOS).expand(len(x), m, q).clone()
    grid = SurfaceGrid(TINY_MATURITIES.expand(len(x), -1), k, 64)
    b, jacobian = normalized_otm_and_jacobian(grid, x)
    torch.testing.assert_close(b, normalized_otm(grid, x), rtol=1e-13, atol=1e-18)
    full = torch.autograd.functional.jacobian(lambda p: normalized_otm(grid, p).sum(0), x)
    torch.testing.assert_close(jacobian, full.permute(1, 0, 2), rtol=1e-10, atol=1e-13)
    _assert_central_differences(grid, x, jacobian)


def test_a_negligible_remainder_past_the_core_takes_no_tail() -> None:
    # rho at -0.999 (a start racing to the box's edge) pushed U past the cap with a remainder of
    # 1e-12 of the forward there: the tail's per-strike weights made such fits 20% slower, for
    # prices that were already right
    params = torch.tensor([[0.0798, 0.001, 0.0771, 2.5077, -0.999]], dtype=F64)
    ratios = torch.linspace(0.8, 1.2, 11, dtype=F64)
    maturity = torch.tensor([[30 / 365, 91 / 365, 1.0, 3.0]], dtype=F64)
    m, q = maturity.shape[-1], len(ratios)
    grid = SurfaceGrid(maturity, torch.log(ratios).expand(1, m, q).clone(), 64)
    assert bool((_heston_lewis._decay_limits(grid, params) <= _heston_lewis.CORE_LIMIT).all())
    b = normalized_otm(grid, params).reshape(m, q)
    ratio, t = ratios.expand(m, q), maturity[0].unsqueeze(-1).expand(m, q)
    named = dict(zip(("v0", "kappa", "theta", "sigma", "rho"), params[0].tolist(), strict=True))
    reference = heston_price(forward=1.0, strike=ratio, maturity=t, is_call=ratio >= 1,
                             discount=1.0, dtype=F64, **named)  # fmt: skip
    torch.testing.assert_close(torch.sqrt(ratio) * b, reference, rtol=0.0, atol=1e-10)
