"""Payoffs of hand-built paths, Brownian-bridge corrections, and input validation."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch

from pricing import payoffs, simulate

GRID2 = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _paths(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_european_calls_and_puts_for_scalar_and_vector_strikes() -> None:
    p = _paths([100.0, 120.0], [100.0, 80.0])
    assert payoffs.european(p, strike=100.0).tolist() == [20.0, 0.0]
    assert payoffs.european(p, strike=100.0, is_call=False).tolist() == [0.0, 20.0]
    both = payoffs.european(
        p, strike=torch.tensor([90.0, 110.0]), is_call=torch.tensor([True, False])
    )
    assert both.tolist() == [[30.0, 0.0], [0.0, 30.0]]


def test_asian_discrete_geometric_and_seasoned_averages() -> None:
    p = _paths([100.0, 100.0, 400.0])
    assert payoffs.asian(p, strike=0.0).item() == pytest.approx(250.0, rel=1e-15)
    assert payoffs.asian(p, strike=0.0, average="geometric").item() == pytest.approx(
        200.0, rel=1e-14
    )
    assert payoffs.asian(p, strike=0.0, fixings=[2]).item() == pytest.approx(400.0, rel=1e-15)
    seasoned = payoffs.asian(p, strike=0.0, past_average=50.0, past_weight=0.5)
    assert seasoned.item() == pytest.approx(0.5 * 50.0 + 0.5 * 250.0, rel=1e-15)
    geo_seasoned = payoffs.asian(
        p, strike=0.0, average="geometric", past_average=50.0, past_weight=0.5
    )
    assert geo_seasoned.item() == pytest.approx(math.sqrt(50.0 * 200.0), rel=1e-14)


def test_asian_continuous_average_is_the_trapezoidal_time_average() -> None:
    grid = torch.tensor([0.0, 0.1, 0.4, 1.0], dtype=torch.float64)
    p = (100.0 + 10.0 * grid)[None, :]  # linear path: the trapezoid rule is exact
    assert payoffs.asian(p, strike=0.0, time_grid=grid).item() == pytest.approx(105.0, rel=1e-14)


def test_barrier_discrete_monitoring_knock_outs_and_knock_ins() -> None:
    p = _paths([100.0, 80.0, 120.0], [100.0, 105.0, 120.0])
    out = payoffs.barrier(p, strike=100.0, barrier=90.0, barrier_type="down_out", time_grid=GRID2)
    knock_in = payoffs.barrier(
        p, strike=100.0, barrier=90.0, barrier_type="down_in", time_grid=GRID2
    )
    assert out.tolist() == [0.0, 20.0]
    assert knock_in.tolist() == [20.0, 0.0]
    up = payoffs.barrier(p, strike=100.0, barrier=110.0, barrier_type="up_out", time_grid=GRID2,
                         rebate=2.0)  # fmt: skip
    assert up.tolist() == [2.0, 2.0]


def test_knock_out_rebate_accrues_from_hit_and_knock_in_rebate_is_paid_at_expiry() -> None:
    rate = 0.1
    p = _paths([100.0, 80.0, 120.0], [80.0, 80.0, 80.0], [100.0, 100.0, 100.0])
    out = payoffs.barrier(p, strike=100.0, barrier=90.0, barrier_type="down_out", time_grid=GRID2,
                          rebate=3.0, rate=rate)  # fmt: skip
    # hit on the first monitoring date, t = 0.5, and at t = 0 for the second path
    expected = [3.0 * math.exp(rate * 0.5), 3.0 * math.exp(rate * 1.0), 0.0]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0)
    knock_in = payoffs.barrier(p, strike=100.0, barrier=90.0, barrier_type="down_in", time_grid=GRID2,
                               rebate=3.0, rate=rate)  # fmt: skip
    assert knock_in.tolist() == [20.0, 0.0, 3.0]


def test_steps_without_variance_cannot_cross_between_their_points() -> None:
    # Heston's sqrt(v) is often exactly 0 in a step (QE's exponential branch): such a step was
    # refused ("volatility must be positive"); its log price moves straight, so the bridge
    # crossing probability is 0 and the bridge extremum is the larger (smaller) end point
    p = _paths([100.0, 95.0, 92.0], [100.0, 95.0, 92.0])
    vol = torch.tensor([[0.0, 0.3], [0.3, 0.3]], dtype=torch.float64)  # (N, T)
    hit = payoffs.barrier_hit_probabilities(p, barrier=90.0, down=True, time_grid=GRID2,
                                            volatility=vol)  # fmt: skip
    a, b, c = (math.log(x / 90) for x in (100.0, 95.0, 92.0))
    first, second = math.exp(-2 * a * b / (0.09 * 0.5)), math.exp(-2 * b * c / (0.09 * 0.5))
    expected = [[0.0, second], [first, (1 - first) * second]]
    torch.testing.assert_close(hit, torch.tensor(expected, dtype=torch.float64), rtol=1e-13,
                               atol=0.0)  # fmt: skip
    low = payoffs.path_extremum(p, maximum=False, time_grid=GRID2, volatility=torch.zeros(2, 2))
    torch.testing.assert_close(low, p[:, -1], rtol=1e-14, atol=0.0)  # exp(log(92)) rounds


def test_one_dimensional_volatility_is_refused_when_paths_equal_steps() -> None:
    # a (T,) volatility per step was read as one per path when N == T (silently: the first
    # path got the first step's volatility on every step); (1, T) and (N, 1) say which
    p = _paths([100.0, 95.0, 92.0], [100.0, 95.0, 92.0])
    per_step = torch.tensor([0.0, 0.3], dtype=torch.float64)
    kw = {"barrier": 90.0, "down": True, "time_grid": GRID2}
    with pytest.raises(ValueError, match=r"shape \(2,\) is ambiguous.*\(2, 1\).*\(1, 2\)"):
        payoffs.barrier_hit_probabilities(p, **kw, volatility=per_step)
    with pytest.raises(ValueError, match="ambiguous"):
        payoffs.path_extremum(p, maximum=False, time_grid=GRID2, volatility=per_step)
    by_step = payoffs.barrier_hit_probabilities(p, **kw, volatility=per_step[None, :])
    full = payoffs.barrier_hit_probabilities(p, **kw, volatility=per_step.expand(2, 2))
    torch.testing.assert_close(by_step, full, rtol=0.0, atol=0.0)
    assert by_step[:, 0].tolist() == [0.0, 0.0]  # no variance in the first step: no crossing
    by_path = payoffs.barrier_hit_probabilities(p, **kw, volatility=per_step[:, None])
    flat = payoffs.barrier_hit_probabilities(p, **kw, volatility=0.3)
    torch.testing.assert_close(by_path[1], flat[1], rtol=0.0, atol=0.0)
    assert by_path[0].tolist() == [0.0, 0.0]  # the first path has no variance at all


def test_bridge_crossing_probability_matches_the_closed_form() -> None:
    p = _paths([100.0, 95.0])
    grid = torch.tensor([0.0, 0.25], dtype=torch.float64)
    hit = payoffs.barrier_hit_probabilities(p, barrier=90.0, down=True, time_grid=grid,
                                            volatility=0.3)  # fmt: skip
    a, b = math.log(100 / 90), math.log(95 / 90)
    assert hit.item() == pytest.approx(math.exp(-2 * a * b / (0.09 * 0.25)), rel=1e-13)


def test_in_plus_out_equals_vanilla_and_bridge_hits_at_least_grid_hits() -> None:
    g = torch.Generator().manual_seed(0)
    paths = simulate.gbm(512, 8, spot=100.0, volatility=0.3, maturity=1.0, generator=g)
    grid = simulate.time_grid(8, 1.0)
    vanilla = payoffs.european(paths, strike=100.0, is_call=False)
    for kind in ("down", "up"):
        level = 90.0 if kind == "down" else 110.0
        args = {"strike": 100.0, "barrier": level, "time_grid": grid, "is_call": False}
        out = payoffs.barrier(paths, barrier_type=f"{kind}_out", volatility=0.3, **args)
        knock_in = payoffs.barrier(paths, barrier_type=f"{kind}_in", volatility=0.3, **args)
        torch.testing.assert_close(out + knock_in, vanilla, rtol=1e-12, atol=1e-12)
        bridge = payoffs.barrier_hit_probabilities(
            paths, barrier=level, down=kind == "down", time_grid=grid, volatility=0.3
        ).sum(1)
        discrete = payoffs.barrier_hit_probabilities(paths, barrier=level, down=kind == "down",
                                                     time_grid=grid).sum(1)  # fmt: skip
        assert bool((bridge >= discrete - 1e-15).all()) and bool((bridge <= 1 + 1e-12).all())


def test_lookback_payoffs_with_running_extremum() -> None:
    p = _paths([100.0, 90.0, 110.0, 105.0])
    assert payoffs.lookback(p, kind="floating", is_call=True).item() == 15.0
    assert payoffs.lookback(p, kind="floating", is_call=False).item() == 5.0
    assert payoffs.lookback(p, kind="fixed", is_call=True, strike=100.0).item() == 10.0
    assert payoffs.lookback(p, kind="fixed", is_call=False, strike=100.0).item() == 10.0
    seasoned = payoffs.lookback(p, kind="fixed", is_call=True, strike=100.0, running_extremum=130.0)
    assert seasoned.item() == 30.0


def test_bridge_maximum_has_the_brownian_bridge_distribution() -> None:
    # one step of a driftless bridge from 0 to 0: P(max >= m) = exp(-2 m^2 / (sigma^2 dt))
    n, sigma, dt = 200_000, 0.4, 0.5
    paths = torch.ones(n, 2, dtype=torch.float64)
    grid = torch.tensor([0.0, dt], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    log_max = payoffs.path_extremum(paths, maximum=True, time_grid=grid, volatility=sigma,
                                    generator=g).log()  # fmt: skip
    for m in (0.05, 0.2, 0.4):
        exact = math.exp(-2 * m * m / (sigma**2 * dt))
        empirical = float((log_max >= m).double().mean())
        assert abs(empirical - exact) <= 4 * math.sqrt(exact * (1 - exact) / n)
    log_min = payoffs.path_extremum(paths, maximum=False, time_grid=grid, volatility=sigma,
                                    generator=g).log()  # fmt: skip
    assert bool((log_min <= 0).all()) and bool((log_max >= 0).all())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: payoffs.european(p[0], strike=1.0), "paths"),
        (lambda p: payoffs.european(p, strike=-1.0), "strike"),
        (lambda p: payoffs.asian(p, strike=1.0, average="harmonic"), "average"),
        (lambda p: payoffs.asian(p, strike=1.0, fixings=[5]), "fixings"),
        (lambda p: payoffs.asian(p, strike=1.0, past_weight=1.5), "past_weight"),
        (lambda p: payoffs.asian(p, strike=1.0, past_weight=0.5), "past_average"),
        # a past average without its weight was ignored (an unseasoned price); inf was reported
        # as "payoff samples contain NaN or inf" by the Monte Carlo pricer
        (lambda p: payoffs.asian(p, strike=1.0, past_average=1.5), r"past_average=1.5 needs "
         r"past_weight > 0"),
        (lambda p: payoffs.asian(p, strike=1.0, past_average=math.inf, past_weight=0.5),
         "past_average must be positive and finite"),
        (lambda p: payoffs.barrier(p, strike=1.0, barrier=1.0, barrier_type="knock", time_grid=GRID2),
         "barrier_type"),
        (lambda p: payoffs.barrier(p, strike=1.0, barrier=-1.0, barrier_type="up_in", time_grid=GRID2),
         "barrier"),
        (lambda p: payoffs.barrier(p, strike=1.0, barrier=1.0, barrier_type="up_in",
                                   time_grid=GRID2[:2]), "time_grid"),
        (lambda p: payoffs.barrier(p, strike=1.0, barrier=1.0, barrier_type="up_in",
                                   time_grid=GRID2, volatility=-0.1), "volatility"),
        (lambda p: payoffs.lookback(p, kind="floating", is_call=True, strike=1.0), "strike"),
        (lambda p: payoffs.lookback(p, kind="fixed", is_call=True), "strike"),
        (lambda p: payoffs.lookback(p, kind="partial", is_call=True), "kind"),
        (lambda p: payoffs.path_extremum(p, maximum=True, volatility=0.2), "time_grid"),
        # shapes that do not broadcast were torch's "size of tensor a (2) must match the size of
        # tensor b (3)", which named neither input
        (lambda p: payoffs.european(p, strike=[0.9, 1.0, 1.1], is_call=[True, False]),
         r"is_call of shape \(2,\) does not broadcast with strike of shape \(3,\)"),
        (lambda p: payoffs.barrier(p, strike=1.0, barrier=1.0, barrier_type="up_in",
                                   time_grid=GRID2, volatility=[0.1, 0.2, 0.3]),
         r"volatility must be a scalar, \(1,\) or \(1, 2\) .* got shape \(3,\)"),
        (lambda p: payoffs.path_extremum(p, maximum=True, time_grid=GRID2,
                                         volatility=torch.full((1, 3), 0.2)),
         r"volatility must be a scalar, \(1,\) or \(1, 2\) .* got shape \(1, 3\)"),
    ],
)  # fmt: skip
def test_bad_input_names_the_field(
    call: Callable[[torch.Tensor], torch.Tensor], match: str
) -> None:
    p = _paths([100.0, 90.0, 110.0])
    with pytest.raises(ValueError, match=match):
        call(p)


@pytest.mark.parametrize("vol_shape", ["scalar", "per_path", "per_step"])
def test_blocked_barrier_and_bridge_extremum_equal_the_whole_chunk(
    monkeypatch: pytest.MonkeyPatch, vol_shape: str
) -> None:
    # barriers and bridge extrema run over blocks of rows (their temporaries stay in reused
    # memory): the same values as one block, per-path volatilities sliced with the rows, and the
    # bridge uniforms of consecutive blocks continue one stream
    g = torch.Generator().manual_seed(4)
    grid = simulate.time_grid(12, 1.0)
    spot = torch.linspace(80.0, 120.0, 1000, dtype=torch.float64)  # some start beyond 90 or 110
    paths = simulate.gbm(1000, 12, spot=spot, volatility=0.3, maturity=1.0, generator=g)
    vol = {"scalar": 0.3, "per_path": torch.linspace(0.2, 0.4, 1000, dtype=torch.float64),
           "per_step": torch.full((1000, 12), 0.3, dtype=torch.float64)}[vol_shape]  # fmt: skip

    def run() -> tuple[torch.Tensor, ...]:
        kw = {"strike": 100.0, "time_grid": grid, "rebate": 2.0, "rate": 0.05}
        return (
            payoffs.barrier(paths, barrier=90.0, barrier_type="down_out", volatility=vol, **kw),
            payoffs.barrier(paths, barrier=110.0, barrier_type="up_out", **kw),
            payoffs.barrier(paths, barrier=110.0, barrier_type="up_in", **kw),
            payoffs.path_extremum(
                paths,
                maximum=True,
                time_grid=grid,
                volatility=vol,
                generator=torch.Generator().manual_seed(5),
            ),
        )

    monkeypatch.setattr(payoffs, "_BLOCK_ELEMENTS", 10**9)
    whole = run()
    monkeypatch.setattr(payoffs, "_BLOCK_ELEMENTS", 13 * 70)  # blocks of 70 rows, a shorter last
    for a, b in zip(whole, run(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-14, atol=1e-13)


def test_knock_out_rebate_accrues_from_the_hit_or_from_today() -> None:
    # a rebate paid at the hit accrues to expiry: from t_0 for a path that starts on the barrier
    # side (hit at once); a step without variance moves on a straight line in log price, so its
    # hit is where the line crosses the barrier; without a rate the accrual is 1 at any time
    grid = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    p = _paths([100.0, 80.0, 120.0], [85.0, 95.0, 120.0])
    vol = torch.tensor([[0.0, 0.3], [0.3, 0.3]], dtype=torch.float64)
    out = payoffs.barrier(p, strike=100.0, barrier=90.0, barrier_type="down_out", time_grid=grid,
                          rebate=1.0, rate=0.1, volatility=vol)  # fmt: skip
    line = math.log(100 / 90) / math.log(100 / 80)  # fraction of the first step
    expected = [math.exp(0.1 * (1.0 - 0.5 * line)), math.exp(0.1 * 1.0)]
    torch.testing.assert_close(
        out, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0.0
    )
    q = _paths([100.0, 92.0, 120.0], [100.0, 80.0, 120.0])
    no_rate = payoffs.barrier(q, strike=100.0, barrier=90.0, barrier_type="down_out",
                              time_grid=grid, rebate=1.0, volatility=0.3)  # fmt: skip
    hit = payoffs.barrier_hit_probabilities(q, barrier=90.0, down=True, time_grid=grid,
                                            volatility=0.3).sum(1)  # fmt: skip
    survive = 1.0 - hit
    torch.testing.assert_close(no_rate, hit + survive * torch.tensor([20.0, 20.0],
                               dtype=torch.float64), rtol=1e-14, atol=0.0)  # fmt: skip


@pytest.mark.parametrize(
    "fixings", [[0.25, 0.5, 0.75, 1.0], torch.tensor([False, True, True, True, True])]
)
def test_asian_fixings_given_as_times_or_a_mask_are_refused(fixings):
    # they were cast to integer columns: times [0.25, ..., 1.0] became columns [0, 0, 0, 1]
    paths = torch.ones(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="integer column indices"):
        payoffs.asian(paths, strike=1.0, fixings=fixings)


@pytest.mark.parametrize(("kind", "is_call", "extremum"), [("floating", True, 120.0),
                                                           ("floating", False, 80.0),
                                                           ("fixed", True, 80.0),
                                                           ("fixed", False, math.nan)])  # fmt: skip
def test_lookback_running_extremum_on_the_wrong_side_of_spot_is_refused(kind, is_call, extremum):
    # a running minimum of 120 above today's spot of 100 was priced (21.79) without a word
    paths = torch.full((4, 3), 100.0, dtype=torch.float64)
    strike = None if kind == "floating" else 100.0
    with pytest.raises(ValueError, match="running_extremum must be the"):
        payoffs.lookback(paths, kind=kind, is_call=is_call, strike=strike,
                         running_extremum=extremum)  # fmt: skip


def test_negative_barrier_rebate_is_refused():
    paths = torch.full((4, 3), 100.0, dtype=torch.float64)
    with pytest.raises(ValueError, match="rebate must be finite and >= 0"):
        payoffs.barrier(
            paths,
            strike=100.0,
            barrier=90.0,
            barrier_type="down_out",
            rebate=-5.0,
            time_grid=torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64),
        )


@pytest.mark.parametrize("grid", [[1.0, 0.5, 0.0], [1.0, 1.0, 1.0], [0.0, math.nan, 1.0]])
def test_time_grids_must_increase(grid):
    # a decreasing grid gave hit probabilities of 66 and -472571; equal times NaN averages
    paths = torch.tensor([[100.0, 95.0, 80.0]], dtype=torch.float64)
    grid = torch.tensor(grid, dtype=torch.float64)
    with pytest.raises(ValueError, match="strictly increasing"):
        payoffs.barrier_hit_probabilities(paths, barrier=90.0, down=True, time_grid=grid)
    with pytest.raises(ValueError, match="strictly increasing"):
        payoffs.asian(paths, strike=90.0, time_grid=grid)


@pytest.mark.parametrize("barrier", [-90.0, math.nan])
def test_a_barrier_that_is_not_positive_is_refused(barrier):
    paths = torch.tensor([[100.0, 95.0, 80.0]], dtype=torch.float64)
    grid = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="barrier must be positive"):
        payoffs.barrier_hit_probabilities(paths, barrier=barrier, down=True, time_grid=grid)


@pytest.mark.parametrize("is_call", [0.5, 2, "call"])
def test_vanilla_payoffs_take_flags_not_truthy_values(is_call):
    with pytest.raises((TypeError, ValueError), match="is_call"):
        payoffs.european(torch.ones(2, 3, dtype=torch.float64), strike=1.0, is_call=is_call)


def test_per_path_volatility_as_numpy_matches_a_tensor_on_many_paths():
    # a numpy array (or list) was given whole to each block of ~87k paths: a size error
    n = 100_000
    paths = torch.full((n, 4), 100.0, dtype=torch.float64)
    paths[:, 2] = 90.0
    grid = torch.tensor([0.0, 0.25, 0.5, 0.75], dtype=torch.float64)
    vol = np.full(n, 0.2)
    args = dict(strike=100.0, barrier=85.0, barrier_type="down_out", time_grid=grid)
    as_numpy = payoffs.barrier(paths, **args, volatility=vol)
    assert torch.equal(as_numpy, payoffs.barrier(paths, **args, volatility=torch.tensor(vol)))


def test_a_barrier_given_as_a_tensor_that_requires_grad_keeps_its_graph() -> None:
    # the bridge crossing probability is smooth in the barrier: its sensitivity by autograd was
    # lost when the barrier was checked into a float
    p = _paths([100.0, 95.0, 97.0], [100.0, 93.0, 91.0])
    kw = {"down": True, "time_grid": GRID2, "volatility": 0.2}

    def hit(level: torch.Tensor | float) -> torch.Tensor:
        return payoffs.barrier_hit_probabilities(p, barrier=level, **kw).sum()

    level = torch.tensor(90.0, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(hit(level), level)
    h = 1e-5
    central = (hit(90.0 + h) - hit(90.0 - h)) / (2 * h)
    torch.testing.assert_close(slope, central, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("volatility", [None, 0.2], ids=["discrete", "bridge"])
def test_a_zero_knock_out_rebate_that_requires_grad_has_its_sensitivity(volatility) -> None:
    # at 0 the knock-out's rebate term was skipped: its payoff did not require grad at all
    # ("element 0 of tensors does not require grad")
    p = _paths([100.0, 85.0, 120.0], [100.0, 92.0, 120.0])
    kw = {"strike": 100.0, "barrier": 90.0, "barrier_type": "down_out", "time_grid": GRID2,
          "rate": 0.05, "volatility": volatility}  # fmt: skip
    rebate = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(payoffs.barrier(p, **kw, rebate=rebate).sum(), rebate)
    expected = (payoffs.barrier(p, **kw, rebate=1.0) - payoffs.barrier(p, **kw)).sum()
    assert float(expected) > 1.0
    torch.testing.assert_close(slope, expected, rtol=1e-12, atol=0.0)


def test_a_past_weight_given_as_a_tensor_that_requires_grad_keeps_its_graph() -> None:
    # the scalar check turned it into a float: its sensitivity by autograd came back None
    p = _paths([100.0, 95.0, 97.0], [100.0, 103.0, 108.0])

    def seasoned(weight: torch.Tensor | float) -> torch.Tensor:
        return payoffs.asian(p, strike=100.0, past_average=104.0, past_weight=weight).sum()

    weight = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(seasoned(weight), weight)
    h = 1e-6
    central = (seasoned(0.25 + h) - seasoned(0.25 - h)) / (2 * h)
    torch.testing.assert_close(slope, central, rtol=1e-7, atol=1e-9)


def _gradients_match_central_differences(
    payoff: Callable[..., torch.Tensor],
    paths: torch.Tensor,
    scalars: dict[str, float],
    *,
    h: float,
    rtol: float,
    atol: float,
) -> None:
    """Autograd gradients of ``payoff(paths, **scalars).sum()`` are finite and equal central
    differences: each scalar bumped alone, each path column bumped in every row at once (a
    path's payoff depends on its own row only)."""
    leaves = {
        n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in scalars.items()
    }
    p = paths.clone().requires_grad_(True)
    grads = torch.autograd.grad(payoff(p, **leaves).sum(), [p, *leaves.values()])
    for name, grad in zip(["paths", *scalars], grads, strict=True):
        assert bool(torch.isfinite(grad).all()), f"{name}: {int((~grad.isfinite()).sum())} NaN"
    with torch.no_grad():
        for name, grad in zip(scalars, grads[1:], strict=True):
            up, down = (
                payoff(paths, **{**scalars, name: scalars[name] + d}).sum() for d in (h, -h)
            )
            torch.testing.assert_close(grad, (up - down) / (2 * h), rtol=rtol, atol=atol)
        columns = []
        for j in range(paths.shape[1]):
            bump = torch.zeros_like(paths)
            bump[:, j] = h
            columns.append(
                (payoff(paths + bump, **scalars) - payoff(paths - bump, **scalars)) / (2 * h)
            )
        torch.testing.assert_close(grads[0], torch.stack(columns, 1), rtol=rtol, atol=atol)


_MASKED = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
"""Per-step volatility factors of 8 steps: 0 leaves a step without variance."""


@pytest.mark.parametrize(
    ("barrier_type", "level", "spot", "volatility"),
    [
        ("down_out", 90.0, 100.0, 1.0),  # the review's case: 53 of the 64 x 9 path gradients NaN
        ("down_out", 90.0, 85.0, 1.0),  # paths that start beyond the barrier
        ("up_out", 110.0, 100.0, 1.0),
        ("up_out", 110.0, 115.0, 1.0),
        ("down_out", 90.0, 100.0, _MASKED),  # steps without variance: a straight-line hit
        ("up_out", 110.0, 100.0, _MASKED),
        ("down_out", 90.0, 100.0, 1.0 / 30.0),  # a bridge far tighter than the paths' moves
    ],
)
def test_knock_out_rebate_gradients_are_finite_and_match_central_differences(
    barrier_type: str, level: float, spot: float, volatility: float | torch.Tensor
) -> None:
    # the straight-line hit time a / (a - b) of the steps it is not used in (a - b clamped to
    # 1e-300) and the bridge's exp(-2 a b / s2) of steps that end beyond the barrier (it
    # overflows) were inf in a torch.where branch not selected: finite values, NaN gradients for
    # the paths, the barrier and the rate
    g = torch.Generator().manual_seed(1)
    paths = simulate.gbm(64, 8, spot=spot, volatility=0.3, maturity=1.0, rate=0.03, generator=g)
    grid = simulate.time_grid(8, 1.0).to(torch.float64)

    def payoff(p, barrier, rate, rebate, sigma):
        return payoffs.barrier(p, strike=100.0, barrier=barrier, barrier_type=barrier_type,
                               time_grid=grid, rebate=rebate, rate=rate,
                               volatility=sigma * volatility)  # fmt: skip

    scalars = {"barrier": level, "rate": 0.03, "rebate": 2.0, "sigma": 0.3}
    _gradients_match_central_differences(payoff, paths, scalars, h=1e-6, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("kind", "is_call"), [("floating", True), ("fixed", False)])
def test_bridge_lookback_gradients_are_finite_where_a_flat_step_has_no_variance(
    kind: str, is_call: bool
) -> None:
    # sqrt((b - a)^2 - 2 s2 ln U) of a step without variance and without a move is sqrt(0): its
    # infinite slope times the 0 of a step that is not the extremum made every gradient NaN
    g = torch.Generator().manual_seed(2)
    paths = simulate.gbm(64, 8, spot=100.0, volatility=0.3, maturity=1.0, generator=g)
    paths[:, 2] = paths[:, 1]  # flat over the steps the volatility leaves without variance
    paths[:, 6] = paths[:, 5] = paths[:, 4]
    grid = simulate.time_grid(8, 1.0).to(torch.float64)

    def payoff(p, sigma):
        return payoffs.lookback(p, kind=kind, is_call=is_call,
                                strike=100.0 if kind == "fixed" else None, time_grid=grid,
                                volatility=sigma * _MASKED,
                                generator=torch.Generator().manual_seed(3))  # fmt: skip

    _gradients_match_central_differences(
        payoff, paths, {"sigma": 0.3}, h=1e-6, rtol=1e-5, atol=1e-7
    )


@pytest.mark.usefixtures("torch_warns_always")
def test_scalars_that_require_grad_are_checked_without_a_scalar_conversion_warning() -> None:
    # math.isfinite of the rebate, rate and running extremum converted them to floats: torch's
    # "Converting a tensor with requires_grad=True to a scalar" UserWarning
    p = _paths([100.0, 95.0, 97.0], [100.0, 93.0, 91.0])
    rebate, rate, extremum = (torch.tensor(v, dtype=torch.float64, requires_grad=True)
                              for v in (2.0, 0.03, 101.0))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        payoffs.barrier(p, strike=100.0, barrier=90.0, barrier_type="down_out", time_grid=GRID2,
                        rebate=rebate, rate=rate, volatility=0.2)  # fmt: skip
        payoffs.lookback(p, kind="floating", is_call=False, running_extremum=extremum)
