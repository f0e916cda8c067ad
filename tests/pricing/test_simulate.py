"""Path simulators: shapes, reproducibility, chunk invariance, moments within k standard errors."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from pricing import black_scholes, monte_carlo, payoffs, simulate
from pricing._mc_random import brownian_bridge
from pricing._simulate_steps import (
    PSI_C,
    HestonStep,
    _qe_quadratic_martingale,
    qe_exponential_branch,
    qe_is_martingale,
    qe_variance_step,
)
from pricing.analytic_exotics import geometric_asian_price

K_SE = 4.0  # moment checks: |estimate - exact| <= K_SE standard errors

GBM = {"spot": 100.0, "volatility": 0.3, "maturity": 1.0, "rate": 0.05, "dividend": 0.02}
HESTON = {"spot": 100.0, "v0": 0.04, "kappa": 1.5, "theta": 0.06, "sigma": 1.0, "rho": -0.7,
          "maturity": 1.0, "rate": 0.03, "dividend": 0.01}  # fmt: skip
SABR = {"forward": 0.05, "alpha": 0.3, "beta": 1.0, "rho": -0.4, "nu": 0.6, "maturity": 1.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _run(model: str, n_paths: int, n_steps: int, **kw: object) -> tuple[torch.Tensor, ...]:
    if model == "gbm":
        return (simulate.gbm(n_paths, n_steps, **GBM, **kw),)
    if model.startswith("heston"):
        return tuple(simulate.heston(n_paths, n_steps, **HESTON, scheme=model[7:], **kw))
    beta = 0.5 if model == "sabr_cev" else 1.0
    return tuple(simulate.sabr(n_paths, n_steps, **{**SABR, "beta": beta}, **kw))


MODELS = ["gbm", "heston_qe", "heston_euler", "sabr", "sabr_cev"]


@pytest.mark.parametrize("model", MODELS)
def test_shapes_dtype_device_and_initial_column(model: str, device: torch.device) -> None:
    out = _run(model, 10, 6, generator=_gen(), dtype=torch.float32, device=device)
    for tensor in out:
        assert tensor.shape == (10, 7)
        assert tensor.dtype == torch.float32 and tensor.device.type == device.type
        assert bool(torch.isfinite(tensor).all())
    start = {"gbm": 100.0, "heston_qe": 100.0, "heston_euler": 100.0}.get(model, 0.05)
    torch.testing.assert_close(out[0][:, 0], torch.full((10,), start, device=device))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variant", [{}, {"antithetic": True}, {"sobol": True}])
def test_chunked_run_is_identical_to_unchunked(model: str, variant: dict) -> None:
    whole = _run(model, 3000, 5, generator=_gen(7), **variant)
    chunked = _run(model, 3000, 5, generator=_gen(7), chunk_size=1024, **variant)
    for a, b in zip(whole, chunked, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("model", MODELS)
def test_same_seed_same_paths_and_other_seed_other_paths(model: str) -> None:
    first, again, other = (_run(model, 64, 4, generator=_gen(s))[0] for s in (3, 3, 4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_antithetic_pairs_mirror_log_increments_around_the_drift() -> None:
    paths = simulate.gbm(1024, 3, **GBM, antithetic=True, generator=_gen())
    increments = paths.log().diff(dim=1)  # (N, T)
    drift = (GBM["rate"] - GBM["dividend"] - 0.5 * GBM["volatility"] ** 2) / 3
    torch.testing.assert_close(
        increments[0::2] - drift, -(increments[1::2] - drift), rtol=0.0, atol=1e-12
    )


def test_gbm_on_non_uniform_grid_has_exact_mean_and_log_variance() -> None:
    grid = torch.tensor([0.0, 0.01, 0.1, 0.5, 2.0], dtype=torch.float64)
    n = 100_000
    paths = simulate.gbm(n, spot=100.0, volatility=0.3, rate=0.05, time_grid=grid, generator=_gen())
    log_var = paths.log().var(dim=0)[1:]
    exact_var = 0.09 * grid[1:]
    torch.testing.assert_close(log_var, exact_var, rtol=K_SE * math.sqrt(2.0 / n), atol=0.0)
    terminal = paths[:, -1]
    se = terminal.std() / math.sqrt(n)
    assert abs(terminal.mean() - 100.0 * math.exp(0.1)) <= K_SE * se


@pytest.mark.parametrize("scheme", ["qe", "euler"])
def test_heston_discounted_spot_is_a_martingale(scheme: str) -> None:
    # Feller condition violated (2 kappa theta < sigma^2): QE's exponential branch is exercised
    n = 40_000
    h = simulate.heston(n, 16, **HESTON, scheme=scheme, antithetic=True, generator=_gen(1))
    growth = math.exp((HESTON["rate"] - HESTON["dividend"]) * HESTON["maturity"])
    pair_means = h.spot[:, -1].view(-1, 2).mean(1)
    se = pair_means.std() / math.sqrt(n / 2)
    assert abs(pair_means.mean() - HESTON["spot"] * growth) <= K_SE * se
    assert bool((h.variance >= 0).all())


def test_heston_qe_variance_has_exact_conditional_mean() -> None:
    n, steps = 40_000, 8
    h = simulate.heston(n, steps, **HESTON, generator=_gen(2))
    times = simulate.time_grid(steps, HESTON["maturity"])
    kappa, theta, v0 = HESTON["kappa"], HESTON["theta"], HESTON["v0"]
    exact = theta + (v0 - theta) * torch.exp(-kappa * times)
    se = h.variance.std(dim=0) / math.sqrt(n)
    assert bool(((h.variance.mean(dim=0) - exact).abs() <= K_SE * se + 1e-15).all())
    assert (
        float((h.variance[:, 1:] == 0).double().mean()) > 0.0
    )  # mass at zero (exponential branch)


def test_heston_qe_on_non_uniform_grid_keeps_exact_means() -> None:
    grid = torch.tensor([0.0, 0.002, 0.05, 0.3, 1.0, 2.0], dtype=torch.float64)
    n = 40_000
    args = {k: v for k, v in HESTON.items() if k != "maturity"}
    h = simulate.heston(n, time_grid=grid, **args, antithetic=True, generator=_gen(6))
    kappa, theta, v0 = HESTON["kappa"], HESTON["theta"], HESTON["v0"]
    exact_v = theta + (v0 - theta) * torch.exp(-kappa * grid)
    se_v = h.variance.std(dim=0) / math.sqrt(n / 2)  # antithetic pairs are not independent
    assert bool(((h.variance.mean(dim=0) - exact_v).abs() <= K_SE * se_v + 1e-15).all())
    growth = torch.exp((HESTON["rate"] - HESTON["dividend"]) * grid)
    pairs = h.spot.view(-1, 2, grid.numel()).mean(1)  # (N/2, T+1)
    se_s = pairs.std(dim=0) / math.sqrt(n / 2)
    assert bool(((pairs.mean(dim=0) - 100.0 * growth).abs() <= K_SE * se_s + 1e-12).all())


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_sabr_forward_is_a_martingale_and_vol_is_exact_lognormal(beta: float) -> None:
    # beta < 1: absorbing Euler lifts the mean by O(dt), 3% of the forward in 20 steps here (a
    # third of the paths are absorbed), so that case takes 200 steps (about 0.3 SE of bias)
    n = 40_000
    k = simulate.sabr(n, 20 if beta == 1.0 else 200, **{**SABR, "beta": beta}, generator=_gen(3))
    forward = k.forward[:, -1]
    assert abs(forward.mean() - SABR["forward"]) <= K_SE * forward.std() / math.sqrt(n)
    log_vol = k.vol[:, -1].log()
    nu, t = SABR["nu"], SABR["maturity"]
    assert abs(log_vol.mean() - (math.log(SABR["alpha"]) - 0.5 * nu**2 * t)) <= K_SE * nu / n**0.5
    torch.testing.assert_close(log_vol.var(), torch.tensor(nu**2 * t, dtype=torch.float64),
                               rtol=K_SE * math.sqrt(2.0 / n), atol=0.0)  # fmt: skip


def test_sabr_absorbs_at_zero_and_respects_shift() -> None:
    k = simulate.sabr(4096, 50, forward=0.01, alpha=0.5, beta=0.3, rho=0.0, nu=1.0, maturity=5.0,
                      shift=0.02, generator=_gen(4))  # fmt: skip
    shifted = k.forward + 0.02
    assert bool((shifted >= 0).all())
    absorbed = shifted[:, :-1] == 0
    assert bool(absorbed.any())  # the parameters push some paths to the boundary
    assert bool((shifted[:, 1:][absorbed] == 0).all())  # and they stay there


def test_sobol_estimate_beats_pseudo_random_error() -> None:
    n, exact = 2**14, 100.0 * math.exp(0.03)
    args = {"spot": 100.0, "volatility": 0.3, "maturity": 1.0, "rate": 0.03}
    sobol = simulate.gbm(n, 1, **args, sobol=True, generator=_gen())[:, -1]
    plain = simulate.gbm(n, 1, **args, generator=_gen())[:, -1]
    plain_se = float(plain.std()) / math.sqrt(n)
    assert abs(float(sobol.mean()) - exact) < 0.1 * plain_se


def test_brownian_bridge_gives_independent_standard_increments() -> None:
    n = 100_000
    z = torch.randn(7, 2, n, dtype=torch.float64, generator=_gen(10))
    times = (0.0, 0.01, 0.05, 0.3, 0.31, 0.7, 0.9, 1.5)
    increments = brownian_bridge(z, times).reshape(14, n)
    cov = torch.cov(increments)
    torch.testing.assert_close(cov, torch.eye(14, dtype=torch.float64), rtol=0.0, atol=5 / n**0.5)


def test_sobol_bridge_prices_a_geometric_asian_far_inside_the_pseudo_random_error() -> None:
    fixings = [i / 12 for i in range(1, 13)]
    grid = torch.tensor([0.0, *fixings], dtype=torch.float64)
    args = {"spot": 100.0, "volatility": 0.3, "rate": 0.05, "time_grid": grid}
    exact = geometric_asian_price(spot=100.0, strike=100.0, maturity=1.0, volatility=0.3,
                                  rate=0.05, fixing_times=fixings).item()  # fmt: skip
    n, df = 4096, math.exp(-0.05)
    sobol = simulate.gbm(n, **args, sobol=True, generator=_gen(11))
    plain = simulate.gbm(n, **args, generator=_gen(11))
    sobol_value = payoffs.asian(sobol, strike=100.0, average="geometric").mean().item() * df
    plain_payoff = payoffs.asian(plain, strike=100.0, average="geometric") * df
    plain_se = plain_payoff.std().item() / math.sqrt(n)
    assert abs(sobol_value - exact) < 0.1 * plain_se


def test_pathwise_derivative_flows_to_per_path_spot() -> None:
    spot = torch.full((8,), 100.0, dtype=torch.float64, requires_grad=True)
    paths = simulate.gbm(8, 3, spot=spot, volatility=0.2, maturity=1.0, generator=_gen())
    (grad,) = torch.autograd.grad(paths[:, -1].sum(), spot)
    torch.testing.assert_close(grad, paths[:, -1].detach() / 100.0, rtol=1e-12, atol=0.0)


def test_per_path_parameter_of_the_wrong_length_is_named_before_any_draw() -> None:
    three = torch.full((3,), 0.04, dtype=torch.float64)
    with pytest.raises(ValueError, match="volatility has 3 values for 8 paths"):
        simulate.gbm_chunks(8, 2, spot=100.0, volatility=three, maturity=1.0)
    with pytest.raises(ValueError, match="v0 has 3 values for 8 paths"):
        simulate.heston_chunks(8, 2, **{**HESTON, "v0": three})


def test_heston_qe_pathwise_derivative_in_v0_matches_central_differences() -> None:
    # sigma = 1 violates Feller: many steps take QE's exponential branch and hit v = 0, where
    # the quadratic branch's overwritten values and sqrt(0) once turned gradients into NaN
    n, bump = 256, 1e-7
    v0 = torch.full((n,), HESTON["v0"], dtype=torch.float64, requires_grad=True)
    spot = torch.full((n,), HESTON["spot"], dtype=torch.float64, requires_grad=True)

    def terminal(v: torch.Tensor, s: torch.Tensor | float = HESTON["spot"]) -> torch.Tensor:
        args = {**HESTON, "v0": v, "spot": s}
        return simulate.heston(n, 16, **args, generator=_gen(), chunk_size=128).spot[:, -1]

    s_t = terminal(v0, spot)
    d_v0, d_spot = torch.autograd.grad(s_t.sum(), (v0, spot))
    with torch.no_grad():
        up, mid, down = (terminal(v0 + bump), terminal(v0), terminal(v0 - bump))
    central = (up - down) / (2 * bump)
    # a path whose QE branch or zero floor switches inside [v0 - bump, v0 + bump] has a kink
    # there and no derivative to compare with: its one-sided differences disagree
    smooth = ((up - mid) - (mid - down)).abs() <= 1e-3 * (up - down).abs()
    assert smooth.float().mean() > 0.95
    torch.testing.assert_close(d_v0[smooth], central[smooth], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_spot, mid / HESTON["spot"], rtol=1e-12, atol=0.0)


def test_euler_takes_per_path_model_parameters_chunk_by_chunk() -> None:
    # two kappas, one per half of the paths: each half equals its own scalar-kappa simulation
    n, args = 2048, {**HESTON, "scheme": "euler"}
    kappa = torch.cat([torch.full((1024,), 0.5), torch.full((1024,), 3.0)]).double()
    mixed = simulate.heston(n, 8, **{**args, "kappa": kappa}, generator=_gen(), chunk_size=1024)
    for half, value in ((slice(0, 1024), 0.5), (slice(1024, n), 3.0)):
        alone = simulate.heston(n, 8, **{**args, "kappa": value}, generator=_gen())
        torch.testing.assert_close(mixed.spot[half], alone.spot[half], rtol=0.0, atol=0.0)
        torch.testing.assert_close(mixed.variance[half], alone.variance[half], rtol=0.0, atol=0.0)


def test_euler_gradients_stay_finite_from_zero_variance() -> None:
    # sqrt(v dt) has an infinite slope at v = 0: without the floor every gradient here was inf
    v0 = torch.zeros(64, dtype=torch.float64, requires_grad=True)
    paths = simulate.heston(64, 4, **{**HESTON, "v0": v0}, scheme="euler", generator=_gen())
    (grad,) = torch.autograd.grad(paths.spot[:, -1].sum(), v0)
    assert bool(torch.isfinite(grad).all())


def test_qe_refuses_per_path_or_differentiable_model_parameters_by_name() -> None:
    kappa = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=r"kappa: scheme='qe'.*scheme='euler'"):
        simulate.heston(8, 2, **{**HESTON, "kappa": kappa})
    with pytest.raises(ValueError, match="rho: scheme='qe'"):
        simulate.heston(8, 2, **{**HESTON, "rho": torch.full((8,), -0.5)})
    with pytest.raises(ValueError, match="theta has 3 values for 8 paths"):
        simulate.heston(8, 2, **{**HESTON, "theta": torch.full((3,), 0.04)}, scheme="euler")


def test_heston_per_path_v0_sets_the_first_column_and_is_checked_elementwise() -> None:
    v0 = torch.linspace(0.01, 0.09, 4, dtype=torch.float64)
    paths = simulate.heston(4, 2, **{**HESTON, "v0": v0}, generator=_gen())
    torch.testing.assert_close(paths.variance[:, 0], v0, rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match="v0"):
        simulate.heston(4, 2, **{**HESTON, "v0": torch.tensor([0.04, -0.01, 0.04, 0.04])})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"spot": -1.0}, "spot"),
        ({"volatility": float("nan")}, "volatility"),
        ({"maturity": 0.0}, "maturity"),
        ({"n_paths": 0}, "n_paths"),
        ({"n_steps": 0}, "n_steps"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"n_paths": 5, "antithetic": True}, "n_paths"),
        ({"dtype": torch.int64}, "dtype"),
        ({"n_steps": 2, "time_grid": torch.tensor([0.0, 0.5, 0.75, 1.0])}, "n_steps"),
        ({"n_steps": None, "time_grid": torch.tensor([0.0, 0.5, 0.4, 1.0])}, "step 1"),
        ({"n_steps": None, "time_grid": torch.tensor([0.1, 0.5])}, "start at 0"),
        ({"n_steps": 30000, "sobol": True}, "Sobol"),
        ({"n_steps": None, "time_grid": torch.tensor([0.0, 0.5]), "maturity": 2.0}, "maturity"),
        ({"rate": float("nan")}, "rate must be finite"),
        ({"dividend": float("inf")}, "dividend must be finite"),
    ],
)
def test_gbm_bad_input_names_the_field(kwargs: dict, field: str) -> None:
    args = {"n_paths": 4, "n_steps": 2, **GBM, **kwargs}
    if "time_grid" in kwargs:
        args["maturity"] = None
    args["maturity"] = kwargs.get("maturity", args["maturity"])
    with pytest.raises(ValueError, match=field):
        simulate.gbm(**args)


@pytest.mark.parametrize(
    ("field", "value"),
    [("v0", -0.01), ("kappa", 0.0), ("theta", -1.0), ("sigma", 0.0), ("rho", 1.5), ("spot", 0.0),
     ("rate", float("nan")), ("dividend", float("-inf"))],
)  # fmt: skip
def test_heston_bad_parameter_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        simulate.heston(4, 2, **{**HESTON, field: value})


def test_heston_unknown_scheme_is_rejected() -> None:
    with pytest.raises(ValueError, match="scheme"):
        simulate.heston(4, 2, **HESTON, scheme="milstein")


@pytest.mark.parametrize(
    ("field", "value"),
    [("beta", 1.5), ("alpha", 0.0), ("nu", -0.1), ("rho", -2.0), ("forward", -1.0)],
)
def test_sabr_bad_parameter_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        simulate.sabr(4, 2, **{**SABR, field: value})


@pytest.mark.parametrize("model", ["gbm", "heston_qe", "sabr"])
def test_numpy_integer_chunk_size_is_a_count(model: str) -> None:
    # np.int64(1024) was refused as not "a positive integer" (n_paths takes it), and True as 1
    whole = _run(model, 3000, 2, generator=_gen(3))
    chunked = _run(model, 3000, 2, generator=_gen(3), chunk_size=np.int64(1024))
    for a, b in zip(whole, chunked, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, got True"):
        _run(model, 8, 2, chunk_size=True)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")  # fmt: skip
def test_compiled_qe_step_matches_eager_qe() -> None:
    eager = simulate.heston(2048, 12, **HESTON, generator=_gen(5))
    fused = simulate.heston(2048, 12, **HESTON, generator=_gen(5), compile=True)
    assert float((eager.variance == 0).double().mean()) > 0  # both QE branches are exercised
    torch.testing.assert_close(fused.spot, eager.spot, rtol=1e-10, atol=0.0)
    torch.testing.assert_close(fused.variance, eager.variance, rtol=1e-8, atol=1e-14)
    # float32, a spot per path, chunks with a last partial one (the kernel's dynamic shapes). Apart
    # from rounding (largest where log((1 - p) / (1 - U)) nearly cancels: about 3e-5 in variance
    # here) the fused 1 - U = Phi(-zv) is resolved to float32's eps / 2, the eager one exactly.
    spot = torch.linspace(80.0, 120.0, 3000)
    kw = {**HESTON, "spot": spot, "dtype": torch.float32, "chunk_size": 1024}
    eager = simulate.heston(3000, 12, **kw, generator=_gen(6))
    fused = simulate.heston(3000, 12, **kw, generator=_gen(6), compile=True)
    torch.testing.assert_close(fused.spot[:, 0], spot, rtol=0.0, atol=0.0)
    torch.testing.assert_close(fused.spot, eager.spot, rtol=2e-4, atol=0.0)
    torch.testing.assert_close(fused.variance, eager.variance, rtol=1e-3, atol=1e-4)
    # the pricer passes compile through: the same estimate up to rounding
    common = {"strike": torch.tensor([90.0, 110.0], dtype=torch.float64), "n_paths": 2048,
              "n_steps": 12, "antithetic": True, "control": True, "progress": False}  # fmt: skip
    eager_mc = monte_carlo.heston_european(**HESTON, **common, generator=_gen(7))
    fused_mc = monte_carlo.heston_european(**HESTON, **common, generator=_gen(7), compile=True)
    torch.testing.assert_close(fused_mc.price, eager_mc.price, rtol=1e-10, atol=0.0)
    torch.testing.assert_close(fused_mc.std_error, eager_mc.std_error, rtol=1e-8, atol=0.0)


def test_compile_is_refused_for_the_euler_scheme_and_for_autograd() -> None:
    with pytest.raises(ValueError, match="compile"):
        simulate.heston(4, 2, **HESTON, scheme="euler", compile=True)
    spot = torch.full((4,), 100.0, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="spot and v0 must not require grad"):
        simulate.heston(4, 2, **{**HESTON, "spot": spot}, compile=True)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_prefetching_with_two_threads_gives_the_same_paths(
    monkeypatch: pytest.MonkeyPatch, compile: bool
) -> None:
    # slabs of 2 steps; compiled: the next slab is drawn in the background while the kernel, which
    # releases the GIL, runs the steps of this one (eager: the threads go to each operation)
    monkeypatch.setattr("pricing._mc_random._SLAB_ELEMENTS", 2**12)
    kw = {"generator": _gen(9), "chunk_size": 1024, "compile": compile}
    single = simulate.heston(3000, 40, **HESTON, **kw)
    torch.set_num_threads(2)
    prefetched = simulate.heston(3000, 40, **HESTON, **{**kw, "generator": _gen(9)})
    # the same normals; compiled, the two runs may use different specialisations of the kernel
    # (static or dynamic shapes, depending on what was compiled before), which round apart
    tol = 1e-12 if compile else 0.0
    torch.testing.assert_close(prefetched.spot, single.spot, rtol=tol, atol=0.0)
    torch.testing.assert_close(prefetched.variance, single.variance, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "model", ["gbm", "heston_qe", "heston_euler", "heston_compiled", "sabr_shifted"]
)
def test_reused_chunk_buffers_hold_the_same_paths(model: str) -> None:
    # reuse_buffers writes each chunk into the memory of the one before (the pricers reduce a
    # chunk before drawing the next): the same numbers, chunk by chunk, in one buffer per tensor
    def chunks(reuse: bool) -> list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]]:
        kw = {"generator": _gen(11), "chunk_size": 1024, "reuse_buffers": reuse}
        if model == "gbm":
            it = simulate.gbm_chunks(2500, 6, **GBM, **kw)
            return [(p, (p.clone(),)) for _, p in it]  # keeps each chunk alive
        if model == "sabr_shifted":
            it = simulate.sabr_chunks(2500, 6, **{**SABR, "beta": 0.5, "shift": 0.01}, **kw)
        else:
            scheme = "euler" if model == "heston_euler" else "qe"
            it = simulate.heston_chunks(2500, 6, **HESTON, scheme=scheme,
                                        compile=model == "heston_compiled", **kw)  # fmt: skip
        return [(p[0], tuple(t.clone() for t in p)) for _, p in it]  # keeps each chunk alive

    fresh, reused = chunks(False), chunks(True)
    assert len(fresh) == len(reused) == 3  # two full chunks and a shorter last one
    for (_, a), (_, b) in zip(fresh, reused, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(y, x, rtol=0.0, atol=0.0)
    assert reused[0][0].data_ptr() == reused[1][0].data_ptr()
    assert fresh[0][0].data_ptr() != fresh[1][0].data_ptr()


def test_with_autograd_reused_chunk_buffers_are_fresh_and_gradients_flow() -> None:
    # the graph keeps the paths, so a reuse request gets fresh memory per chunk all the same
    v0 = torch.full((2048,), 0.04, dtype=torch.float64, requires_grad=True)
    kw = {"generator": _gen(12), "chunk_size": 1024, "reuse_buffers": True}
    chunks = list(simulate.heston_chunks(2048, 2, **{**HESTON, "v0": v0}, **kw))
    assert chunks[0][1].spot.data_ptr() != chunks[1][1].spot.data_ptr()
    (grad,) = torch.autograd.grad(sum(p.spot[:, -1].sum() for _, p in chunks), v0)
    assert bool(torch.isfinite(grad).all()) and bool((grad != 0).any())


def test_gbm_in_place_and_autograd_paths_agree() -> None:
    # without a graph the chunk is built in place (row-by-row running sum); with one, out of place
    plain = simulate.gbm(3000, 40, **GBM, generator=_gen(13), chunk_size=1024)
    spot = torch.full((3000,), GBM["spot"], dtype=torch.float64, requires_grad=True)
    graph = simulate.gbm(3000, 40, **{**GBM, "spot": spot}, generator=_gen(13), chunk_size=1024)
    torch.testing.assert_close(graph.detach(), plain, rtol=1e-13, atol=0.0)


def test_gbm_rate_with_a_graph_takes_the_autograd_path() -> None:
    rate = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    paths = simulate.gbm(64, 4, **{**GBM, "rate": rate}, generator=_gen(14))
    (grad,) = torch.autograd.grad(paths[:, -1].sum(), rate)  # dS_T/dr = T S_T
    torch.testing.assert_close(grad, paths[:, -1].detach().sum() * GBM["maturity"], rtol=1e-12,
                               atol=0.0)  # fmt: skip


def test_bad_per_path_values_are_shown_with_their_index_and_numpy_sizes_work():
    # the message showed the tensor's minimum (0.1), not the inf at index 2; np.int64 sizes
    # were refused while True passed as one path
    with pytest.raises(ValueError, match=r"volatility must be .* got inf at index 2"):
        simulate.gbm(4, 2, spot=100.0, maturity=1.0,
                     volatility=torch.tensor([0.1, 0.2, math.inf, 0.3]))  # fmt: skip
    assert simulate.gbm(np.int64(4), np.int64(2), spot=100.0, volatility=0.2,
                        maturity=1.0).shape == (4, 3)  # fmt: skip
    with pytest.raises(ValueError, match="n_paths must be a positive integer"):
        simulate.gbm(True, 2, spot=100.0, volatility=0.2, maturity=1.0)


def test_bad_scalar_values_are_shown_as_given_and_tiny_ones_pass():
    # floats were converted through float32: -0.04 showed as -0.03999999910593033, and a spot of
    # 1e-50 underflowed to 0 and was refused
    with pytest.raises(ValueError, match=r"v0 must be non-negative and finite, got -0\.04$"):
        simulate.heston(4, 2, spot=100.0, v0=-0.04, kappa=1.0, theta=0.04, sigma=0.3, rho=0.0,
                        maturity=1.0)  # fmt: skip
    paths = simulate.gbm(4, 2, spot=1e-50, volatility=0.2, maturity=1.0, generator=_gen(15))
    assert bool((paths > 0).all())


def test_qe_refuses_a_sigma_below_its_dtype_floor_by_name() -> None:
    # the conditional variance of the variance, of order sigma^2, underflows: the step was NaN
    # from sigma ~ 1e-20 in float32 and ~ 1e-160 in float64
    with pytest.raises(ValueError, match=r"sigma=1e-12 is too small for scheme='qe'.*euler"):
        simulate.heston(4, 2, **{**HESTON, "sigma": 1e-12}, dtype=torch.float32)
    with pytest.raises(ValueError, match="sigma=1e-100 is too small"):
        simulate.heston(4, 2, **{**HESTON, "sigma": 1e-100})


@pytest.mark.parametrize(
    "compile",
    [False, pytest.param(True, marks=pytest.mark.skipif(
        shutil.which("c++") is None and shutil.which("g++") is None,
        reason="torch.compile on CPU needs a C++ compiler"))],
    ids=["eager", "compiled"],
)  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_qe_with_a_tiny_sigma_prices_like_black_scholes_on_the_deterministic_variance(
    dtype: torch.dtype, compile: bool
) -> None:
    # K2 v' and log E[exp(A v')], each of order rho v / sigma, were rounded apart before they
    # cancelled: in float32 sigma = 1e-6 lifted the mean spot by 1.7% (26 SE), 1e-8 by 26% and
    # 1e-10 gave NaN, so sigma below sqrt(eps) was refused. As sigma -> 0 the variance follows
    # v(t) = theta + (v0 - theta) exp(-kappa t) and the spot is lognormal with its integral.
    n, args = 20_000, {**HESTON, "v0": 0.02}
    kappa, theta, t = args["kappa"], args["theta"], args["maturity"]
    variance = theta * t + (args["v0"] - theta) * (1.0 - math.exp(-kappa * t)) / kappa
    forward = args["spot"] * math.exp((args["rate"] - args["dividend"]) * t)
    strike = args["spot"]
    call = black_scholes.black_price(forward=forward, strike=strike, maturity=t,
                                     volatility=math.sqrt(variance / t), is_call=True)  # fmt: skip
    for i, sigma in enumerate([1e-8, 1e-6, 1e-4]):
        terminal = simulate.heston(n, 16, **{**args, "sigma": sigma}, dtype=dtype,
                                   generator=_gen(16 + i), compile=compile)  # fmt: skip
        terminal = terminal.spot[:, -1].double()
        assert bool(torch.isfinite(terminal).all()), sigma
        se = terminal.std() / math.sqrt(n)
        assert abs(terminal.mean() - forward) <= K_SE * se, sigma
        payoff = (terminal - strike).clamp_min(0.0)
        assert abs(payoff.mean() - call) <= K_SE * payoff.std() / math.sqrt(n), sigma


@pytest.mark.parametrize(
    ("simulator", "field", "value"),
    [("sabr", "beta", True), ("sabr", "rho", True), ("sabr", "shift", False),
     ("heston", "kappa", True), ("heston", "rho", np.True_), ("heston", "spot", torch.tensor(True)),
     ("gbm", "volatility", True), ("gbm", "rate", False), ("gbm", "maturity", True)],
)  # fmt: skip
def test_bool_model_parameters_are_refused_by_name(
    simulator: str, field: str, value: object
) -> None:
    # True is the integer 1 to Python: sabr(beta=True) simulated beta = 1 and rho=True a
    # correlation of 1 (SabrParams refuses a bool by name)
    base = {"gbm": GBM, "heston": HESTON, "sabr": SABR}[simulator]
    with pytest.raises(ValueError, match=rf"^{field} must be a real number, not a bool"):
        getattr(simulate, simulator)(4, 2, **{**base, field: value})


def test_time_grid_rounded_to_float32_still_matches_its_maturity() -> None:
    # the grid was cast to the dtype before the comparison with maturity (rel_tol 1e-9): a float64
    # grid ending at 0.9 ended at 0.89999998 in float32 and was refused
    grid = torch.tensor([0.0, 0.01, 0.5, 0.51, 0.9], dtype=torch.float64)
    paths = simulate.gbm(4, spot=100.0, volatility=0.2, maturity=0.9, time_grid=grid,
                         dtype=torch.float32, generator=_gen())  # fmt: skip
    assert paths.shape == (4, 5) and paths.dtype == torch.float32
    assert simulate.time_grid(maturity=0.9, grid=grid.float()).dtype == torch.float64
    with pytest.raises(ValueError, match="maturity"):
        simulate.time_grid(maturity=0.9001, grid=grid, dtype=torch.float32)


def test_gbm_per_path_rate_and_dividend_are_sliced_chunk_by_chunk() -> None:
    # a rate of shape (N,) worked in one chunk and broke in several (a 1024 against 2048 mismatch)
    n = 2048
    rate = torch.tensor([0.01, 0.08], dtype=torch.float64).repeat_interleave(1024)
    dividend = torch.tensor([0.0, 0.03], dtype=torch.float64).repeat_interleave(1024)
    kw = {"spot": 100.0, "volatility": 0.2, "maturity": 1.0}
    mixed = simulate.gbm(n, 4, **kw, rate=rate, dividend=dividend, chunk_size=1024,
                         generator=_gen(17))  # fmt: skip
    for half, r, q in ((slice(0, 1024), 0.01, 0.0), (slice(1024, n), 0.08, 0.03)):
        alone = simulate.gbm(n, 4, **kw, rate=r, dividend=q, generator=_gen(17))
        torch.testing.assert_close(mixed[half], alone[half], rtol=1e-14, atol=0.0)
    with pytest.raises(ValueError, match="rate has 3 values for 2048 paths"):
        simulate.gbm(n, 4, **kw, rate=torch.full((3,), 0.01))


@pytest.mark.parametrize("name", ["spot", "volatility", "rate", "dividend"])
def test_a_gbm_parameter_of_several_values_in_two_dimensions_is_named(name: str) -> None:
    # not sliced per chunk: torch's "The size of tensor a (8) must match the size of tensor b
    # (7)", or, for a spot of shape (N, 1) with N = T + 1 paths, one spot per step, silently
    value = torch.full((8, 1), GBM[name], dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"{name} must be a scalar or one value per path \(8,\)"):
        simulate.gbm(8, 7, **{**GBM, name: value})


@pytest.mark.parametrize("scheme", ["qe", "euler"])
def test_one_value_of_shape_1_1_is_the_number(scheme: str) -> None:
    # a QE v0 of shape (1, 1) failed with an IndexError (the variance broadcast to (1, C))
    def run(**one: object) -> simulate.HestonPaths:
        return simulate.heston(8, 3, **{**HESTON, **one}, scheme=scheme, generator=_gen(3))

    one = {"v0": torch.full((1, 1), 0.04, dtype=torch.float64),
           "spot": torch.full((1, 1), 100.0, dtype=torch.float64)}  # fmt: skip
    for got, want in zip(run(**one), run(v0=0.04, spot=100.0), strict=True):
        torch.testing.assert_close(got, want, rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match=r"v0 must be a scalar or one value per path"):
        simulate.heston(8, 3, **{**HESTON, "v0": torch.full((1, 8), 0.04)}, scheme=scheme)


@pytest.mark.parametrize(
    ("model", "field"),
    [("sabr", "forward"), ("sabr", "alpha"), ("sabr", "nu"), ("heston", "rate"),
     ("heston", "dividend")],
)  # fmt: skip
def test_parameter_taken_as_one_value_names_itself_when_given_per_path(
    model: str, field: str
) -> None:
    # float() of the tensor said only "only one element tensors can be converted to Python scalars"
    per_path = torch.full((4,), 0.3, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"{field}: {model} takes one value"):
        if model == "sabr":
            simulate.sabr(4, 2, **{**SABR, field: per_path})
        else:
            simulate.heston(4, 2, **{**HESTON, field: per_path})


def test_heston_qe_float32_finite_where_one_minus_p_is_below_epsilon() -> None:
    # sigma^2 / (2 kappa theta) = 2e7 at v = 0: p = (psi - 1) / (psi + 1) rounded to 1 in
    # float32, beta to 0, and every path's variance was NaN from the second step
    params = dict(spot=100.0, v0=1e-8, kappa=10.0, theta=1e-8, sigma=2.0, rho=-0.95,
                  maturity=0.01)  # fmt: skip
    paths = simulate.heston(20000, 8, **params, dtype=torch.float32,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert bool(torch.isfinite(paths.spot).all() and torch.isfinite(paths.variance).all())
    wide = simulate.heston(20000, 8, **params, generator=torch.Generator().manual_seed(1))
    k = 5.0  # standard errors
    mean32, mean64 = paths.variance[:, -1].double().mean(), wide.variance[:, -1].mean()
    se = (paths.variance[:, -1].double().var() / 20000 + wide.variance[:, -1].var() / 20000).sqrt()
    assert abs(mean32 - mean64) < k * se + 1e-12


def test_qe_step_constants_keep_their_digits_as_kappa_dt_vanishes() -> None:
    # 1 - exp(-kappa dt) lost its digits as kappa dt fell (the variance of v' 2% off at 2.5e-15)
    # and was 0 from 1.1e-16; expm1 keeps the limits theta kappa dt and sigma^2 dt of the
    # conditional mean's constant term and of the variance coefficient
    for kappa in (1e-14, 1e-17):
        c = HestonStep.build(0.25, kappa=kappa, theta=0.06, sigma=0.5, rho=-0.7, drift=0.0)
        torch.testing.assert_close(c.s2_v, 0.25 * 0.25, rtol=1e-12, atol=0.0)
        torch.testing.assert_close(c.s2_c, 0.06 * 0.25 * 0.25**2 * kappa / 2, rtol=1e-12, atol=0.0)
        torch.testing.assert_close(c.theta_term, 0.06 * kappa * 0.25, rtol=1e-12, atol=0.0)


def test_heston_qe_with_a_vanishing_kappa_keeps_the_driftless_cir_moments() -> None:
    # kappa dt = 2.5e-18: 1 - exp(-kappa dt) was 0, the conditional variance of v' too, and
    # every path NaN. As kappa -> 0 the variance is a martingale with Var v_t = v0 sigma^2 t.
    n, v0, sigma = 100_000, 0.04, 0.3
    params = {**HESTON, "v0": v0, "kappa": 1e-17, "sigma": sigma}
    h = simulate.heston(n, 4, **params, generator=_gen(15))
    assert bool(torch.isfinite(h.spot).all() and torch.isfinite(h.variance).all())
    times = simulate.time_grid(4, HESTON["maturity"])[1:]
    v = h.variance[:, 1:]  # (N, T)
    se_mean = v.std(dim=0) / math.sqrt(n)
    assert bool(((v.mean(dim=0) - v0).abs() <= K_SE * se_mean).all())
    centred = v - v.mean(dim=0)
    se_var = ((centred**4).mean(dim=0) - v.var(dim=0) ** 2).sqrt() / math.sqrt(n)
    assert bool(((v.var(dim=0) - v0 * sigma**2 * times).abs() <= K_SE * se_var).all())
    growth = math.exp((HESTON["rate"] - HESTON["dividend"]) * HESTON["maturity"])
    terminal = h.spot[:, -1]
    assert abs(terminal.mean() - HESTON["spot"] * growth) <= K_SE * terminal.std() / math.sqrt(n)


@pytest.mark.parametrize(
    "params",
    [
        {"kappa": 1.5, "theta": 0.04, "sigma": 1.0, "rho": -0.7, "maturity": 1.0},  # v = v' = 0
        {"kappa": 5.0, "theta": 0.04, "sigma": 2.0, "rho": 0.9, "maturity": 10.0},  # A >= beta
    ],
    ids=["zero_variance", "no_martingale_correction"],
)
def test_heston_qe_float32_pathwise_v0_derivative_is_finite_and_matches_float64(
    params: dict,
) -> None:
    # floors of 1e-300 (under sqrt, and under the exponential branch's beta - A) were 0 in
    # float32: 3,745 of 4,096 dS_T/dv0 were NaN in the first case, all of them in the second
    def derivative(dtype: torch.dtype) -> torch.Tensor:
        v0 = torch.full((4096,), 0.04, dtype=dtype, requires_grad=True)
        h = simulate.heston(4096, 20 if params["maturity"] == 1.0 else 2, spot=100.0, v0=v0,
                            **params, dtype=dtype, generator=_gen(16))  # fmt: skip
        return torch.autograd.grad(h.spot[:, -1].sum(), v0)[0]

    narrow, wide = derivative(torch.float32), derivative(torch.float64)
    assert bool(torch.isfinite(narrow).all())
    # the same normals; float32 rounding flips a few QE branches, so compare the means
    torch.testing.assert_close(narrow.double().mean(), wide.mean(), rtol=1e-2, atol=0.0)


def test_gbm_with_a_graph_returns_the_requested_dtype() -> None:
    # a float64 spot that requires grad promoted the float32 paths of the autograd path to float64
    spot = torch.full((8,), 100.0, dtype=torch.float64, requires_grad=True)
    paths = simulate.gbm(8, 3, **{**GBM, "spot": spot}, dtype=torch.float32, generator=_gen())
    plain = simulate.gbm(8, 3, **GBM, dtype=torch.float32, generator=_gen())
    assert paths.dtype == torch.float32
    torch.testing.assert_close(paths.detach(), plain, rtol=1e-6, atol=0.0)
    (grad,) = torch.autograd.grad(paths[:, -1].sum(), spot)
    torch.testing.assert_close(grad, plain[:, -1].double() / 100.0, rtol=1e-6, atol=0.0)


def _qe_corrects_on(c: HestonStep, v: torch.Tensor) -> torch.Tensor:
    """Where the QE step ``c`` keeps its martingale correction, per variance ``v``: the validity
    flags of its two branches, as :func:`pricing._simulate_steps.qe_variance_step` takes them."""
    m = v * c.decay + c.theta_term
    psi = (v * c.s2_v + c.s2_c) / (m * m)
    two_over_psi = 2.0 / psi.clamp_max(PSI_C)
    b2 = two_over_psi - 1.0 + (two_over_psi * (two_over_psi - 1.0)).sqrt()
    _, valid = _qe_quadratic_martingale(m, m / (1.0 + b2), b2.sqrt(), torch.zeros_like(v), c)
    exponential = psi > PSI_C
    valid[exponential] = qe_exponential_branch(v[exponential], v[exponential] * 0.0, c)[2]
    return valid | (c.a_coef <= 0.0)


@pytest.mark.parametrize(
    ("dt", "sigma", "rho", "exact"),
    [(4.28 / 64, 1.92, 0.45, True), (4.28 / 4, 1.92, 0.45, True), (2.14, 1.92, 0.45, False),
     (10.0 / 4, 1.92, 0.9, False), (1.0, 4.0, 0.9, False), (2.0, 1.0, -0.5, True),
     (8.0, 0.3, 0.3, True), (5.0, 6.0, 0.2, False)],
)  # fmt: skip
def test_qe_is_martingale_where_every_steps_correction_holds(dt, sigma, rho, exact) -> None:
    # where a step falls back to the uncorrected drift (A >= 1/(2a) or A >= beta), E[exp(A v')]
    # is infinite and so is E[S_T]: put-call parity is not exact there (heston_european prices
    # calls as puts where it is). Checked against the step's own flags on variances 0 to 1e12.
    c = HestonStep.build(dt, kappa=1.0, theta=0.04, sigma=sigma, rho=rho, drift=0.0)
    v = torch.cat([torch.zeros(1, dtype=torch.float64),
                   torch.logspace(-8, 12, 200_001, dtype=torch.float64)])  # fmt: skip
    assert bool(_qe_corrects_on(c, v).all()) == exact
    assert qe_is_martingale([c, c], v0=0.04) == exact
    assert qe_is_martingale([c, c], v0=None) == exact
    at_v0 = bool(_qe_corrects_on(c, torch.tensor([0.04], dtype=torch.float64)).all())
    assert qe_is_martingale([c], v0=0.04) == at_v0  # the first step only at v0


@pytest.mark.parametrize("dt", [4.28 / 64, 4.28 / 4, 4.28])
def test_qe_step_keeps_the_spots_conditional_mean_exactly(dt: float) -> None:
    # E[S' / S | v] = exp((r - q) dt) wherever the step keeps its martingale correction (at
    # these variances, for kappa 1, sigma 1.92, rho 0.45: E[S_T^2] infinite from 0.99 years), by
    # quadrature over the variance's normal (the spot's own normal integrated exactly): put-call
    # parity is then exact in the scheme, not only as dt -> 0
    c = HestonStep.build(dt, kappa=1.0, theta=0.04, sigma=1.92, rho=0.45, drift=0.02)
    z = torch.linspace(-38.0, 38.0, 400_001, dtype=torch.float64)
    for v0 in (0.0, 1e-4, 0.04, 1.0, 5.0):
        v = torch.full_like(z, v0)
        v_next, mean = qe_variance_step(v, z, c)
        density = torch.exp(mean + 0.5 * (c.k3 * v + c.k4 * v_next) - 0.5 * z * z)
        growth = torch.trapezoid(density, z).item() / math.sqrt(2.0 * math.pi)
        assert growth == pytest.approx(math.exp(c.drift), rel=1e-9), v0


def test_qe_is_martingale_where_the_exponential_branch_ends_at_zero_variance() -> None:
    # sigma^2 = 3 kappa theta puts psi at v = 0 on psi_c (the branches' switch): the bound of
    # the exponential branch's variances, a root of a quadratic whose discriminant is 0 there,
    # took the square root of a rounded -5e-20 ("math domain error")
    c = HestonStep.build(13.0 / 64, kappa=0.5, theta=0.06, sigma=0.3, rho=0.5, drift=0.0)
    v = torch.cat([torch.zeros(1, dtype=torch.float64),
                   torch.logspace(-8, 12, 200_001, dtype=torch.float64)])  # fmt: skip
    assert bool(_qe_corrects_on(c, v).all())
    assert qe_is_martingale([c, c], v0=0.06)
