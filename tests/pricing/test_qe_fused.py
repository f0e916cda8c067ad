"""The branch-free QE step of the compiled path: the same step as the eager QE scheme."""

from __future__ import annotations

import math

import pytest
import torch

from pricing._qe_fused import fused_qe_step, qe_step_into, step_constants
from pricing._simulate_steps import PSI_C, HestonStep, heston_qe_step


def _step(sigma: float = 1.0) -> HestonStep:
    return HestonStep.build(1 / 52, kappa=1.5, theta=0.06, sigma=sigma, rho=-0.7, drift=0.02)


def _grid(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Variances from 0 to 0.3 (both branches) crossed with normals from -5 to 5."""
    v = torch.cat((torch.zeros(1), torch.logspace(-7, math.log10(0.3), 60))).to(dtype)
    z = torch.linspace(-5.0, 5.0, 41, dtype=dtype)
    v, zv = torch.cartesian_prod(v, z).unbind(-1)
    return v, zv, zv.flip(0)


@pytest.mark.parametrize("sigma", [0.6, 1.0])
def test_branch_free_step_equals_the_eager_qe_step(sigma: float) -> None:
    c = _step(sigma)
    v, zv, zx = _grid(torch.float64)
    x = torch.full_like(v, 0.1)
    fused_x, fused_v = fused_qe_step(
        x, v, zv, zx, step_constants(c, dtype=v.dtype, device=v.device)
    )
    eager_x, eager_v = heston_qe_step(x, v, zv, zx, c)
    m = v * c.decay + c.theta * (1 - c.decay)
    psi = (v * c.s2_v + c.s2_c) / m**2
    assert bool((psi > PSI_C).any()) and bool((psi <= PSI_C).any())  # both branches
    # The eager step takes log(1 - U) from an erfc-based ndtr, the fused one from inductor's ndtr,
    # which loses ~1e-12 of (1 - U) by zv ~ 4 (and more further out): rtol 1e-11.
    torch.testing.assert_close(fused_v, eager_v, rtol=1e-11, atol=1e-300)
    torch.testing.assert_close(fused_x, eager_x, rtol=1e-11, atol=1e-12)


def test_branch_free_step_equals_the_eager_qe_step_where_p_is_near_one() -> None:
    # psi = sigma^2 / (2 kappa theta) = 2e5 at v = 0, 1 - p = 1e-5: the fused step clamped p to
    # 0.999, so that 1 - p = 1e-3 drew 100 times more, and smaller, jumps of the variance than
    # the eager step (another variance of v', whose mean alone the clamp kept)
    c = HestonStep.build(1 / 52, kappa=10.0, theta=1e-6, sigma=2.0, rho=-0.7, drift=0.02)
    v, zv, zx = _grid(torch.float64)
    x = torch.full_like(v, 0.1)
    fused_x, fused_v = fused_qe_step(
        x, v, zv, zx, step_constants(c, dtype=v.dtype, device=v.device)
    )
    eager_x, eager_v = heston_qe_step(x, v, zv, zx, c)
    psi = (v * c.s2_v + c.s2_c) / (v * c.decay + c.theta * (1 - c.decay)) ** 2
    assert float(psi.max()) > 1999.0  # 1 - p = 2 / (psi + 1) below 0.001
    # the ndtr difference of the test above (~1e-12 of 1 - U by zv ~ 4) is magnified where 1 - U
    # is near 1 - p ~ 1e-5 (v' the log of a ratio near 1): rtol 1e-9 (the clamp moved v' by 0.17)
    torch.testing.assert_close(fused_v, eager_v, rtol=1e-9, atol=1e-300)
    torch.testing.assert_close(fused_x, eager_x, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exponential_branch_beyond_the_dtype_floors_one_minus_u_at_half_eps(
    dtype: torch.dtype,
) -> None:
    c = _step()
    v = torch.zeros(1, dtype=dtype)  # psi > psi_c: the exponential branch
    zv = torch.full_like(v, 40.0)  # Phi(-40) underflows in either dtype
    _, v_next = fused_qe_step(v, v, zv, torch.zeros_like(v), step_constants(c, dtype=dtype,
                                                                          device=v.device))  # fmt: skip
    m = c.theta * (1 - c.decay)
    psi = c.s2_c / m**2
    one_minus_p = 2 / (psi + 1)
    expected = math.log(one_minus_p / (torch.finfo(dtype).eps / 2)) * m / one_minus_p
    assert math.isfinite(float(v_next))
    assert float(v_next) == pytest.approx(expected, rel=1e-5)


def test_step_into_writes_the_spot_and_variance_rows_in_place() -> None:
    c = _step()
    v, zv, zx = _grid(torch.float64)
    k = step_constants(c, dtype=v.dtype, device=v.device)
    x = torch.full_like(v, 0.1)
    rows = torch.full((2, v.numel()), math.nan, dtype=v.dtype)
    s0 = torch.tensor(95.0, dtype=v.dtype)
    x_next = qe_step_into(x, v, torch.stack((zv, zx)), k, s0, rows[0], rows[1])
    expected_x, expected_v = fused_qe_step(x, v, zv, zx, k)
    torch.testing.assert_close(x_next, expected_x, rtol=0.0, atol=0.0)
    torch.testing.assert_close(rows[0], s0 * expected_x.exp(), rtol=0.0, atol=0.0)
    torch.testing.assert_close(rows[1], expected_v, rtol=0.0, atol=0.0)


@pytest.mark.parametrize(
    ("dtype", "sigma", "atol"),
    [(torch.float32, 1e-8, 1e-5), (torch.float64, 1e-12, 1e-11)],
)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
def test_step_with_a_tiny_sigma_reaches_the_deterministic_variance_limit(
    dtype: torch.dtype, sigma: float, atol: float, fused: bool
) -> None:
    # K2 v' and log E[exp(A v')] are each of order rho v / sigma and were rounded apart before
    # they cancelled: in float32 at sigma 1e-8 the log spot of one step moved by up to 0.5. As
    # sigma -> 0, v' -> m and the increment tends to drift - (K3 v + K4 m) / 2 + c2 q zv -
    # (cA q)^2 / 2 + sqrt(K3 v + K4 m) zx, with c2 = sigma K2, cA = sigma A and q^2 the
    # conditional variance of v' over sigma^2 (the rest, about 0.2 sigma here, is below atol).
    c = _step(sigma)
    v = torch.cat((torch.zeros(1), torch.logspace(-4, math.log10(0.3), 30))).to(dtype)
    z = torch.linspace(-5.0, 5.0, 21, dtype=dtype)
    v, zv = torch.cartesian_prod(v, z).unbind(-1)
    zx = zv.flip(0)
    x = torch.full_like(v, 0.1)
    if fused:
        x_next, v_next = fused_qe_step(
            x, v, zv, zx, step_constants(c, dtype=dtype, device=v.device)
        )
    else:
        x_next, v_next = heston_qe_step(x, v, zv, zx, c)
    v64, zv64, zx64 = (t.double() for t in (v, zv, zx))
    m = v64 * c.decay + c.theta * (1 - c.decay)
    q = ((v64 * c.s2_v + c.s2_c) / sigma**2).sqrt()
    expected = (0.1 + c.drift - 0.5 * (c.k3 * v64 + c.k4 * m) + sigma * c.k2 * q * zv64
                - 0.5 * (sigma * c.a_coef * q) ** 2 + (c.k3 * v64 + c.k4 * m).sqrt() * zx64)  # fmt: skip
    torch.testing.assert_close(v_next.double(), m, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(x_next.double(), expected, rtol=0.0, atol=atol)
