"""The normalised implied-vol solver: guess quality, two-step convergence, kernels, extreme inputs."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

from pricing import _implied_vol as iv
from pricing import _normalized_black as nb

F64 = torch.float64


def _realistic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, s)`` of the benchmark's quotes: 1 week..3 years, vols 5-100%, strikes within 3 sd."""
    rng = np.random.default_rng(seed)
    maturity = np.exp(rng.uniform(math.log(7 / 365), math.log(3.0), n))
    s = rng.uniform(0.05, 1.0, n) * np.sqrt(maturity)
    x = -np.abs(rng.uniform(-3.0, 3.0, n) * s)
    return torch.as_tensor(x), torch.as_tensor(s)


def _wide_grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """|x| and s log-spaced over 1e-8..50, keeping prices that still resolve ``s``."""
    axis = torch.logspace(-8, math.log10(50.0), 120, dtype=F64)
    a, s = (v.reshape(-1) for v in torch.meshgrid(axis, axis, indexing="ij"))
    x = -a
    beta = nb.normalized_call(x, s)
    keep = (beta > 1e-300) & (nb.complement(x, s) > 1e-12 * torch.exp(0.5 * x))
    return x[keep], s[keep], beta[keep]


def _objective(x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The upper-half mask and the solver's log target for the prices of ``(x, s)``."""
    beta = nb.normalized_call(x, s)
    b_max = torch.exp(0.5 * x)
    upper = beta > 0.5 * b_max
    return upper, torch.log(torch.where(upper, b_max - beta, beta))


def _solve(x: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    false = torch.zeros_like(x, dtype=torch.bool)
    return iv.solve_total_vol(x, beta, invalid=false, below=false, above=false)


def test_initial_guess_is_close_on_realistic_quotes():
    x, s = _realistic(50_000, seed=11)
    rel = ((iv.initial_guess(x, nb.normalized_call(x, s)) - s) / s).abs()
    assert float(rel.median()) < 0.06
    assert float(rel.quantile(0.99)) < 0.25
    assert float(rel.max()) < 0.5


def test_initial_guess_is_finite_and_within_a_factor_50_everywhere():
    x, s, beta = _wide_grid()
    guess = iv.initial_guess(x, beta)
    assert bool((torch.isfinite(guess) & (guess > 0)).all())
    assert float((guess / s).log().abs().max()) < math.log(50.0)


def test_two_fixed_steps_converge_for_nearly_all_realistic_quotes():
    x, s = _realistic(50_000, seed=12)
    beta = nb.normalized_call(x, s)
    b_max = torch.exp(0.5 * x)
    upper = beta > 0.5 * b_max
    target = torch.log(torch.where(upper, b_max - beta, beta))
    s2, done = iv._fast_phase(x, iv.initial_guess(x, beta), target, upper, 2)
    assert float(done.double().mean()) > 0.98
    rel = ((s2 - s) / s).abs()[done]
    assert float(rel.max()) < 1e-12


def test_solver_round_trips_over_a_wide_grid_including_extremes():
    x, s, beta = _wide_grid()
    s_hat, status = _solve(x, beta)
    assert bool((status == 0).all())
    # What the price resolves: its relative error over the elasticity s b'/b. Besides rounding
    # (~1e-13 with slack), near the money the two terms of b cancel to ~16 eps / s relative for
    # tiny s (a limit of the price formulas, not of the solver).
    ln_b = nb.log_normalized_call(x, s)
    elasticity = torch.exp(nb.log_vega(x, s) - ln_b) * s
    eps = torch.finfo(F64).eps
    allowed = (1e-13 + 16.0 * eps / s) / torch.clamp(elasticity, max=1.0)
    rel = ((s_hat - s) / s).abs()
    assert bool((rel <= allowed).all()), float((rel / allowed).max())


@pytest.mark.parametrize(
    ("x", "s"),
    [
        (0.0, 1e-8),
        (0.0, 0.2),
        (0.0, 10.0),
        (-50.0, 2.0),
        (-50.0, 12.0),
        (-1e-8, 1e-8),
        (-3.0, 0.1),
    ],
)
def test_solver_handles_extreme_single_inputs_as_0d_tensors(x, s):
    x_t, s_t = torch.tensor(x, dtype=F64), torch.tensor(s, dtype=F64)
    beta = nb.normalized_call(x_t, s_t)
    assert 0.0 < float(beta) < math.exp(0.5 * x)  # the price resolves s
    s_hat, status = _solve(x_t, beta)
    assert s_hat.shape == () and int(status) == 0
    assert float(s_hat) == pytest.approx(s, rel=1e-9)


def test_no_false_convergence_on_a_short_dated_near_the_money_quote():
    # Regression: the old stopping test (a tiny Householder step only) accepted s ~ 3e-8 here,
    # where the rational step saturates although f is ~ -1e11.
    x = torch.tensor([-math.log(101.68878068022356 / 100.0), -math.log(100.0 / 98.92562004473494)])
    s = torch.tensor([0.07384299981283683 * math.sqrt(0.019783636100723465), 0.0156043], dtype=F64)
    x = x.to(F64)
    s_hat, status = _solve(x, nb.normalized_call(x, s))
    assert bool((status == 0).all())
    torch.testing.assert_close(s_hat, s, rtol=1e-13, atol=0.0)


def test_statuses_nan_and_zero_price_are_kept():
    x = torch.tensor([-0.1, -0.1, -0.1, -0.1, -0.1], dtype=F64)
    beta = torch.tensor([0.01, -0.01, 2.0, float("nan"), 0.0], dtype=F64)
    invalid = torch.tensor([False, False, False, True, False])
    below = torch.tensor([False, True, False, False, False])
    above = torch.tensor([False, False, True, False, False])
    s_hat, status = iv.solve_total_vol(x, beta, invalid=invalid, below=below, above=above)
    assert status.tolist() == [0, 1, 2, 3, 0]
    assert bool(torch.isnan(s_hat[1:4]).all())
    assert float(s_hat[4]) == 0.0
    assert float(nb.normalized_call(x[:1], s_hat[:1])) == pytest.approx(0.01, rel=1e-14)


@pytest.mark.parametrize("start", [1e-9, 1e-3, 30.0, 1e4])
def test_safeguarded_iteration_converges_from_bad_starting_points(start):
    x, s = _realistic(200, seed=13)
    upper, target = _objective(x, s)
    s_hat, solved = iv._safeguarded(x, torch.full_like(s, start), target, upper)
    assert bool(solved.all())
    torch.testing.assert_close(s_hat, s, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("precise", [True, False])
def test_fast_erfcx_matches_mpmath(precise):
    mpmath.mp.dps = 30
    y = torch.cat(
        [torch.linspace(-3.0, 25.9, 400, dtype=F64), torch.tensor([30.0, 1e3], dtype=F64)]
    )
    mp_y = [mpmath.mpf(v) for v in y.tolist()]
    exact = torch.tensor([float(mpmath.erfc(v) * mpmath.exp(v * v)) for v in mp_y], dtype=F64)
    head, tail = (
        nb._fast_erfcx(y[:-2].clone(), precise=precise),
        nb._fast_erfcx(y[-2:].clone(), precise=precise),
    )
    torch.testing.assert_close(head, exact[:-2], rtol=1e-15 if precise else 1e-13, atol=0.0)
    torch.testing.assert_close(tail, exact[-2:], rtol=1e-15, atol=0.0)  # library erfcx beyond 26


@pytest.mark.parametrize("region", [0, 1, 2, nb.REGION_UPPER])
def test_region_kernels_agree_with_the_reference_formulas(region):
    x, s, _ = _wide_grid()
    d1 = x / s + 0.5 * s
    # Below s ~ 1e-3 both near-the-money formulas lose ~eps/s to cancellation (in different ways).
    inside = s > 1e-3
    if region != nb.REGION_UPPER:
        lo, hi = iv._REGION_BOUNDS[region]
        inside &= (d1 > lo) & (d1 <= hi)
    x, s, d1 = x[inside], s[inside], d1[inside]
    g = -0.5 * ((x / s) ** 2 + 0.25 * s * s)
    ln_v, ratio = nb.log_value_and_ratio(s, d1, g, nb.x_constants(x, region), region)
    if region == nb.REGION_UPPER:
        ref = torch.log(nb.complement(x, s))
    else:
        ref = nb.log_normalized_call(x, s)
    finite = torch.isfinite(ref) & (ref > -700)
    torch.testing.assert_close(ln_v[finite], ref[finite], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(
        ratio[finite], torch.exp(nb.log_vega(x, s) - ref)[finite], rtol=1e-11, atol=0.0
    )


def test_gradient_is_the_implicit_function_derivative():
    x = torch.tensor([-0.3, -0.02, 0.0, -2.0], dtype=F64, requires_grad=True)
    s = torch.tensor([0.2, 0.05, 1.5, 0.4], dtype=F64)
    beta = nb.normalized_call(x.detach(), s).requires_grad_()
    s_hat, _ = _solve(x, beta)
    grad_x, grad_beta = torch.autograd.grad(s_hat.sum(), (x, beta))
    # Implicit function theorem for b(x, s) = beta: ds/dbeta = 1/b_s, ds/dx = -b_x / b_s.
    x_req, s_req = x.detach().requires_grad_(), s.clone().requires_grad_()
    b_x, b_s = torch.autograd.grad(nb.normalized_call(x_req, s_req).sum(), (x_req, s_req))
    torch.testing.assert_close(grad_beta, 1.0 / b_s, rtol=1e-10, atol=0.0)
    torch.testing.assert_close(grad_x, -b_x / b_s, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s_hat.detach(), s, rtol=1e-14, atol=0.0)


def test_worker_threads_give_the_serial_result():
    # Several torch threads: chunks of the solve run on worker threads (see _solve_chunks).
    x, s = _realistic(3 * iv._SERIAL_CHUNK + 123, seed=14)
    beta = nb.normalized_call(x, s)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial, status_serial = _solve(x, beta)
        torch.set_num_threads(2)
        threaded, status_threaded = _solve(x, beta)
    finally:
        torch.set_num_threads(threads)
    assert bool((status_serial == 0).all()) and torch.equal(status_serial, status_threaded)
    # Equal up to rounding: vectorised kernels round a few tail elements differently.
    torch.testing.assert_close(threaded, serial, rtol=1e-14, atol=0.0)
    torch.testing.assert_close(threaded, s, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("factor", [0.9, 1.0, 1.1])
def test_steps_from_a_near_start_converge_on_every_lower_half_element(factor):
    # The ungrouped path for starts near the root (a model price near a market quote): two steps
    # with the formula picked per element solve every lower-half quote (to 1e-13, as the grouped
    # steps) and mark it done; upper-half elements are left to the grouped path, never done here.
    x, s = _realistic(4000, seed=21)
    upper, target = _objective(x, s)
    s_hat, done = iv._near_start(x, s * factor, target, upper, 2)
    assert bool(upper.any()) and not bool(done[upper].any())
    assert bool(done[~upper].all())
    torch.testing.assert_close(s_hat[done], s[done], rtol=1e-13, atol=0.0)


def test_near_start_steps_of_each_element_alone_equal_those_of_the_batch():
    # Only the regions some element is in are evaluated: an element alone (its region only)
    # steps exactly as in a batch where every region is present.
    x, s = _realistic(60, seed=23)
    x = torch.cat([x, torch.tensor([-0.1, -3.0], dtype=F64)])  # and two with d1 > 1
    s = torch.cat([s, torch.tensor([2.5, 4.0], dtype=F64)])
    upper, target = _objective(x, s)
    start = s * 1.05
    d1 = x / start + 0.5 * start
    assert bool((d1 <= -1).any() and ((d1 > -1) & (d1 <= 1)).any() and (d1 > 1).any())
    s_all, done_all = iv._near_start(x, start, target, upper, 2)
    for i in range(len(x)):
        s_one, done_one = iv._near_start(x[i : i + 1], start[i : i + 1], target[i : i + 1],
                                         upper[i : i + 1], 2)  # fmt: skip
        # to an ulp or two: torch's vectorised sinh (the weights) and its scalar loop for the
        # tail of a tensor differ in the last bit on ~25% of inputs
        torch.testing.assert_close(s_one, s_all[i : i + 1], rtol=4 * torch.finfo(F64).eps, atol=0.0)
        assert torch.equal(done_one, done_all[i : i + 1])


def test_a_far_start_is_not_marked_done_by_the_near_start_steps():
    x, s = _realistic(2000, seed=22)
    upper, target = _objective(x, s)
    s_hat, done = iv._near_start(x, s * 20.0, target, upper, 2)
    assert not bool(done.all())  # the grouped and safeguarded paths take these
    rel = ((s_hat - s).abs() / s)[done]
    assert bool((rel <= 1e-13).all())  # whatever is marked done is solved


def test_a_price_within_rounding_of_the_upper_bound_is_status_2_when_unsolved():
    # Black prices of total vols 30-60 (forward 1): a call at F - 1 ulp, a put 1 ulp below K,
    # which the normalisation leaves a rounding error below the normalised bound; no root was
    # found there and the status said "no convergence" (4)
    from pricing.black_scholes import implied_vol_with_status

    strike = torch.tensor([1.1531673298816538, 2.97925751693273, 0.1438185500903038], dtype=F64)
    price = torch.tensor([0.9999999999999999, 0.9999999999999999, 0.14381855009030378], dtype=F64)
    is_call = torch.tensor([True, True, False])
    vol, status = implied_vol_with_status(price=price, forward=1.0, strike=strike, maturity=1.0,
                                          is_call=is_call)  # fmt: skip
    assert status.tolist() == [2, 2, 2] and bool(torch.isnan(vol).all())
    far = implied_vol_with_status(price=price * 0.999, forward=1.0, strike=strike, maturity=1.0,
                                  is_call=is_call)[1]  # fmt: skip
    assert far.tolist() == [0, 0, 0]  # 0.1% below the bound: solved


def test_fused_guess_and_steps_converge_for_nearly_all_realistic_quotes():
    # The branch-free kernel of compile=True (run eagerly here): the grouped steps' convergence.
    x, s = _realistic(50_000, seed=16)
    s2, done, *_ = iv._guess_and_steps(x, nb.normalized_call(x, s), None)
    assert float(done.double().mean()) > 0.98
    torch.testing.assert_close(s2[done], s[done], rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("start_factor", [None, 1.05])
def test_fused_guess_and_steps_mark_only_true_roots_done_on_a_wide_grid(start_factor):
    # Single-precision first step, underflowing erfc, far wings: none may end in a false "done".
    x, s, beta = _wide_grid()
    start = None if start_factor is None else s * start_factor
    s2, done, *_ = iv._guess_and_steps(x, beta, start)
    assert float(done.double().mean()) > 0.5
    ln_b = nb.log_normalized_call(x, s)
    elasticity = torch.exp(nb.log_vega(x, s) - ln_b) * s
    allowed = (1e-13 + 16.0 * torch.finfo(F64).eps / s) / torch.clamp(elasticity, max=1.0)
    rel = ((s2 - s) / s).abs()
    assert bool((rel <= allowed)[done].all()), float((rel / allowed)[done].max())
