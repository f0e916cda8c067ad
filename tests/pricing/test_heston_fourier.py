"""The real-arithmetic moment behind the saddle search equals the complex characteristic function."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pricing import _heston_fourier as fourier

PARAM_BOX = {
    "maturity": (1 / 365, 10.0),
    "v0": (0.005, 0.5),
    "kappa": (0.2, 8.0),
    "theta": (0.005, 0.5),
    "sigma": (0.05, 1.5),
    "rho": (-0.95, 0.5),
}
MOMENT_RTOL = 1e-12
"""Relative agreement of :func:`log_moment` with the complex :func:`log_characteristic` at ``-i p``
(the worst of 4e5 draws, 7e-13, is a ``d^2 < 0`` moment just inside the explosion margin)."""


def _params(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(rng.uniform(lo, hi, n)) for lo, hi in PARAM_BOX.values())


def _complex_log_moment(p: torch.Tensor, params: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The reference: ``Re log phi(-i p)``, ``inf`` past ``EXPLOSION_MARGIN`` times the explosion time."""
    maturity, _, kappa, _, sigma, rho = params
    value = fourier.log_characteristic((torch.zeros_like(p), -p), *params)[0]
    explosion = fourier.moment_explosion_time(p, kappa, sigma, rho)
    return torch.where(explosion > fourier.EXPLOSION_MARGIN * maturity, value, math.inf)


def test_real_log_moment_equals_complex_characteristic_function():
    rng = np.random.default_rng(7)
    n = 40_000
    params = _params(n, rng)
    _, _, kappa, _, sigma, rho = params
    distance = torch.tensor(np.exp(rng.uniform(math.log(1e-3), math.log(1e4), n)))
    alpha = torch.where(torch.tensor(rng.random(n) < 0.5), distance, -1.0 - distance)
    p = alpha + 1.0  # calls (alpha > 0) and puts (alpha < -1), as in the saddle search
    ours, reference = fourier.log_moment(p, *params), _complex_log_moment(p, params)
    finite = torch.isfinite(reference)
    beta = kappa - rho * sigma * p
    circular = beta * beta < sigma * sigma * p * (p - 1.0)  # d^2 < 0
    for name, part in {"d^2 >= 0": ~circular, "d^2 < 0": circular}.items():
        for side, mask in {"call": alpha > 0, "put": alpha < -1}.items():
            assert (finite & part & mask).sum() > 200, f"too few finite {side} cases with {name}"
    torch.testing.assert_close(torch.isfinite(ours), finite, rtol=0, atol=0)
    torch.testing.assert_close(ours[finite], reference[finite], rtol=MOMENT_RTOL, atol=1e-14)


@pytest.mark.parametrize(
    ("branch", "box"),
    [
        (
            "d^2 < 0",
            {"kappa": (0.2, 8.0), "sigma": (0.05, 1.5), "rho": (-0.95, 0.5), "p": (-20, 20)},
        ),
        # a real d with beta < 0 needs rho > 0, kappa << sigma and p just above 1
        (
            "d^2 >= 0",
            {"kappa": (0.01, 0.3), "sigma": (1.0, 2.0), "rho": (0.3, 0.9), "p": (1.01, 1.5)},
        ),
    ],
)
def test_log_moment_is_infinite_just_past_the_explosion_margin(branch, box):
    rng = np.random.default_rng(8)
    n = 4000
    kappa, sigma, rho, p = (torch.tensor(rng.uniform(*box[name], n)) for name in box)
    v0, theta = (torch.tensor(rng.uniform(0.005, 0.5, n)) for _ in range(2))
    beta = kappa - rho * sigma * p
    circular = beta * beta < sigma * sigma * p * (p - 1.0)
    explosion = fourier.moment_explosion_time(p, kappa, sigma, rho)
    explodes = torch.isfinite(explosion) & (explosion < 50.0) & (circular == (branch == "d^2 < 0"))
    assert explodes.sum() > 500
    for factor, finite in ((1.0 - 1e-6, True), (1.0 + 1e-6, False)):
        maturity = explosion / fourier.EXPLOSION_MARGIN * factor
        value = fourier.log_moment(p, maturity, v0, kappa, theta, sigma, rho)
        assert bool((torch.isfinite(value)[explodes] == finite).all()), factor


def test_moment_explosion_time_where_d_vanishes_is_its_limit():
    # d^2 = beta^2 - 2 sigma^2 is exactly 0 at p = 2 here (beta < 0): the time is the limit
    # 2 / -beta of both branches; ln((-beta + 1e-300) / (-beta - 1e-300)) / 1e-300 rounded to 0
    sigma = torch.tensor([0.6, 0.3, 0.65], dtype=torch.float64)
    rho = torch.tensor([0.9, 0.9, 0.85], dtype=torch.float64)
    p = torch.tensor(2.0, dtype=torch.float64)
    kappa = 2.0 * rho * sigma - sigma * math.sqrt(2.0)
    beta = kappa - rho * sigma * p
    assert bool((beta * beta - sigma * sigma * p * (p - 1.0) == 0.0).all())
    got = fourier.moment_explosion_time(p, kappa, sigma, rho)
    torch.testing.assert_close(got, 2.0 / -beta, rtol=1e-12, atol=0.0)
    for nudge in (1.0 - 1e-9, 1.0 + 1e-9):  # either side: d^2 > 0, then d^2 < 0
        near = fourier.moment_explosion_time(p, kappa, sigma * nudge, rho)
        torch.testing.assert_close(near, got, rtol=1e-6, atol=0.0)


def _priced_inputs(
    n: int, seed: int
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], fourier.Contour]:
    """Log-moneyness, parameters and contours of ``n`` options, about half on Lewis' line."""
    rng = np.random.default_rng(seed)
    params = _params(n, rng)
    maturity, v0, _, theta, _, _ = params
    k = torch.tensor(rng.uniform(-3.0, 3.0, n)) * torch.sqrt(0.5 * (v0 + theta) * maturity)
    return k, params, fourier.choose_contour(k, *params)


def test_eager_passes_skip_the_control_variate_without_changing_prices(monkeypatch):
    k, params, contour = _priced_inputs(300, 9)
    on = contour.cv_variance > 0
    assert 30 < on.sum() < 270
    whole = fourier.otm_integral(k, params, contour, 32, 24)
    monkeypatch.setattr(fourier, "EAGER_CHUNK", 16)  # Lewis' line first, then passes without it
    passes = fourier.otm_integral(k, params, contour, 32, 24)
    torch.testing.assert_close(passes, whole, rtol=0, atol=0)


def test_a_contour_without_tail_ignores_the_tail_integrand():
    k, params, contour = _priced_inputs(200, 10)
    no_tail = contour._replace(use_tail=torch.zeros_like(contour.use_tail))
    reference = fourier.otm_integral(k, params, no_tail, 32, 24)
    far = no_tail._replace(tail_rate=torch.full_like(contour.tail_rate, 1e-12))  # overflows there
    torch.testing.assert_close(
        fourier.otm_integral(k, params, far, 32, 24), reference, rtol=0, atol=0
    )
    assert torch.isfinite(reference).all()


def test_greeks_work_after_pricing_in_inference_mode():
    # The quadrature nodes are cached: first made inside inference mode they were inference
    # tensors, and every later autograd greek raised "Inference tensors cannot be saved for
    # backward".
    from pricing import heston

    fields = {"spot": 100.0, "strike": 100.0, "maturity": 1.0, "v0": 0.04, "kappa": 1.5,
              "theta": 0.04, "sigma": 0.5, "rho": -0.7}  # fmt: skip
    fourier._nodes.cache_clear()
    with torch.inference_mode():
        inside = heston.price(**fields)
    delta = heston.delta(**fields)
    torch.testing.assert_close(heston.price(**fields), inside.clone(), rtol=0.0, atol=0.0)
    assert 0.5 < float(delta) < 0.7
