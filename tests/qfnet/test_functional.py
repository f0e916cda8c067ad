"""Losses and P&L arithmetic against hand computations and closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from qfnet import functional as F
from qfnet import losses

DT = torch.float64


def _hand_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    positions = torch.tensor([[0.5, 0.8, 0.3]], dtype=DT)
    prices = torch.tensor([[1.0, 1.1, 0.9, 1.2]], dtype=DT)
    payoff = torch.tensor([0.2], dtype=DT)
    return positions, prices, payoff


def test_trades_include_first_purchase_and_final_liquidation() -> None:
    positions, _, _ = _hand_example()
    expected = torch.tensor([[0.5, 0.3, -0.5, -0.3]], dtype=DT)
    torch.testing.assert_close(F.trades(positions), expected, rtol=0, atol=1e-15)
    no_liq = F.trades(positions, liquidate=False)
    assert no_liq[0, -1] == 0.0
    assert F.turnover(positions).item() == pytest.approx(1.6, abs=1e-15)


def test_hedge_pnl_matches_hand_computation_with_costs_on_every_trade() -> None:
    positions, prices, payoff = _hand_example()
    cost = 0.01
    gains = 0.5 * 0.1 + 0.8 * (-0.2) + 0.3 * 0.3
    costs = cost * (0.5 * 1.0 + 0.3 * 1.1 + 0.5 * 0.9 + 0.3 * 1.2)
    pnl = F.hedge_pnl(positions, prices, payoff, cost=cost, premium=0.05)
    assert pnl.item() == pytest.approx(0.05 + gains - costs - 0.2, abs=1e-14)
    costs_no_liq = cost * (0.5 * 1.0 + 0.3 * 1.1 + 0.5 * 0.9)
    pnl2 = F.hedge_pnl(positions, prices, payoff, cost=cost, premium=0.05, liquidate=False)
    assert pnl2.item() == pytest.approx(0.05 + gains - costs_no_liq - 0.2, abs=1e-14)


def test_hedge_pnl_two_instruments_with_own_costs_and_income() -> None:
    positions = torch.tensor([[[1.0, -2.0], [0.0, -1.0]]], dtype=DT)  # (1, 2, 2)
    prices = torch.tensor([[[10.0, 1.0], [11.0, 1.5], [9.0, 2.0]]], dtype=DT)
    income = torch.tensor([[[0.1, 0.0], [0.2, 0.0]]], dtype=DT)
    cost = torch.tensor([0.01, 0.1], dtype=DT)
    gains = 1.0 * (1.0 + 0.1) + (-2.0) * 0.5 + 0.0 * (-2.0 + 0.2) + (-1.0) * 0.5
    costs = 0.01 * (1 * 10 + 1 * 11 + 0) + 0.1 * (2 * 1.0 + 1 * 1.5 + 1 * 2.0)
    pnl = F.hedge_pnl(positions, prices, torch.tensor([0.0], dtype=DT), cost=cost, income=income)
    assert pnl.item() == pytest.approx(gains - costs, abs=1e-13)


def test_hedge_pnl_rejects_mismatched_shapes_naming_them() -> None:
    positions, prices, payoff = _hand_example()
    with pytest.raises(ValueError, match=r"prices must have shape"):
        F.hedge_pnl(positions, prices[:, :-1], payoff)
    with pytest.raises(ValueError, match=r"payoff must have shape"):
        F.hedge_pnl(positions, prices, payoff.repeat(2))


def _normal_sample(n: int = 400_000, seed: int = 0) -> tuple[torch.Tensor, float, float]:
    g = torch.Generator().manual_seed(seed)
    mean, std = 0.3, 2.0
    return mean + std * torch.randn(n, generator=g, dtype=DT), mean, std


def test_expected_shortfall_of_normal_matches_closed_form_within_sampling_error() -> None:
    pnl, mean, std = _normal_sample()
    alpha = 0.95
    exact = -mean + std * norm.pdf(norm.ppf(alpha)) / (1 - alpha)
    loss = -pnl
    var = F.value_at_risk(pnl, alpha)
    tail = loss[loss >= var]
    # asymptotic s.e. of the ES estimator (Yamai & Yoshiba 2002 / Brazauskas et al. 2008)
    se = math.sqrt((tail.var() + alpha * (tail.mean() - var) ** 2) / (len(pnl) * (1 - alpha)))
    assert abs(F.expected_shortfall(pnl, alpha).item() - exact) < 4 * se
    exact_var = -mean + std * norm.ppf(alpha)
    assert var.item() == pytest.approx(exact_var, abs=0.02)


def test_expected_shortfall_equals_mean_of_worst_fraction_on_a_grid() -> None:
    pnl = torch.arange(1000, dtype=DT)
    assert F.expected_shortfall(pnl, 0.99).item() == pytest.approx(-4.5, abs=1e-12)
    # fractional tail: 0.1% of 1500 = 1.5 paths -> (1 * 0 + 0.5 * 1) / 1.5
    assert F.expected_shortfall(torch.arange(1500, dtype=DT), 0.999).item() == pytest.approx(
        -1.0 / 3.0, abs=1e-12
    )


def test_rockafellar_uryasev_objective_is_minimised_at_var_with_value_es() -> None:
    pnl, _, _ = _normal_sample(50_000, seed=1)
    es = F.expected_shortfall(pnl, 0.95)
    var = F.value_at_risk(pnl, 0.95)
    grid = torch.linspace(var.item() - 1.0, var.item() + 1.0, 41, dtype=DT)
    values = torch.stack([F.expected_shortfall_ru(pnl, w, 0.95) for w in grid])
    assert values.min().item() >= es.item() - 1e-9
    assert F.expected_shortfall_ru(pnl, var, 0.95).item() == pytest.approx(es.item(), rel=1e-4)


def test_expected_shortfall_module_learns_var_level_by_gradient_descent() -> None:
    pnl, _, _ = _normal_sample(10_000, seed=2)
    module = losses.ExpectedShortfall(0.95)
    module(pnl)  # initialises w at the sample VaR
    with torch.no_grad():
        module.var_level.add_(1.0)  # move it away, then learn it back
    opt = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        module(pnl).backward()
        opt.step()
    assert module.var_level.item() == pytest.approx(F.value_at_risk(pnl).item(), abs=0.05)
    assert module(pnl).item() == pytest.approx(module.exact(pnl).item(), rel=1e-3)


def test_expected_shortfall_level_is_set_again_after_loading_a_state_saved_unset() -> None:
    # lr_find restores the state from before its sweep: the level came back unset (w = 0) but
    # was never set from a batch again, and every later checkpoint recorded it unset
    module = losses.ExpectedShortfall(0.9)
    unset = {k: v.clone() for k, v in module.state_dict().items()}
    first, _, _ = _normal_sample(1_000, seed=3)
    module(first)
    module.load_state_dict(unset)
    assert not module.ready
    second = first + 5.0
    module(second)
    torch.testing.assert_close(module.var_level.detach(), F.value_at_risk(second, 0.9),
                               rtol=0, atol=0)  # fmt: skip
    assert bool(module.initialised)
    restored = losses.ExpectedShortfall(0.9)
    restored.load_state_dict(module.state_dict())  # a set level is kept, not set again
    restored(first)
    torch.testing.assert_close(restored.var_level, module.var_level, rtol=0, atol=0)


def test_expected_shortfall_evaluated_before_training_leaves_the_level_unset() -> None:
    # under DDP an evaluation before fit set each rank's level from its own share of the data,
    # and the ranks trained with different levels for the whole run
    module = losses.ExpectedShortfall(0.9).eval()
    sample, _, _ = _normal_sample(1_000, seed=4)
    value = module(sample)
    assert not module.ready
    assert value.item() == pytest.approx(F.expected_shortfall(sample, 0.9).item(), rel=1e-12)
    first = sample + 5.0
    module.train()(first)  # the first training batch sets it
    torch.testing.assert_close(module.var_level.detach(), F.value_at_risk(first, 0.9),
                               rtol=0, atol=0)  # fmt: skip


@pytest.mark.parametrize(("n", "alpha"), [(10, 0.95), (30, 0.95), (64, 0.99), (7, 0.6)])
def test_expected_shortfall_evaluated_before_training_is_the_es_of_a_fractional_tail(
    n: int, alpha: float
) -> None:
    # the objective at the interpolated VaR lies above its minimum where N (1 - alpha) is not
    # an integer: 2.78 for an ES of 2.27 on 10 normal paths at 0.95 (0.45 for 0 on 0..9)
    sample, _, _ = _normal_sample(n, seed=9)
    module = losses.ExpectedShortfall(alpha).eval()
    expected = F.expected_shortfall(sample, alpha)
    torch.testing.assert_close(module(sample), expected, rtol=1e-12, atol=1e-12)
    assert not module.ready


def test_entropic_risk_of_normal_matches_closed_form() -> None:
    pnl, mean, std = _normal_sample(400_000, seed=3)
    gamma = 0.5
    exact = -mean + gamma * std**2 / 2  # (1/g) log E exp(-g X) for X ~ N(m, s^2)
    w = torch.exp(-gamma * (pnl - pnl.mean()))
    se = (w.std() / w.mean()).item() / gamma / math.sqrt(len(pnl))
    assert abs(F.entropic_risk(pnl, gamma).item() - exact) < 4 * se


def test_entropic_risk_is_homogeneous_with_risk_aversion_per_unit_notional() -> None:
    pnl, _, _ = _normal_sample(10_000, seed=4)
    one = F.entropic_risk(pnl, 0.7)
    scaled = F.entropic_risk(100.0 * pnl, 0.7, notional=100.0)
    assert scaled.item() == pytest.approx(100.0 * one.item(), rel=1e-12)


def test_entropic_risk_does_not_overflow_for_large_losses() -> None:
    pnl = torch.tensor([-1000.0, 0.0], dtype=DT)
    value = F.entropic_risk(pnl, 10.0)
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(1000.0 - math.log(2) / 10.0, rel=1e-12)


def test_indifference_price_increases_with_risk_aversion() -> None:
    pnl, _, _ = _normal_sample(20_000, seed=5)
    pnl = pnl - torch.relu(pnl - 1.0) * 3.0  # skewed, non-normal
    gammas = np.geomspace(1e-3, 5.0, 12)
    prices = [F.indifference_price(pnl, float(g)).item() for g in gammas]
    assert all(b > a for a, b in itertools.pairwise(prices))
    assert prices[0] == pytest.approx(-pnl.mean().item(), abs=1e-2)  # risk-neutral limit


def test_variance_and_mean_variance_match_definitions() -> None:
    pnl = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=DT)
    var = np.var(pnl.numpy())
    assert F.pnl_variance(pnl).item() == pytest.approx(var, abs=1e-14)
    assert F.mean_variance(pnl, 2.0).item() == pytest.approx(-3.5 + var, abs=1e-14)
    assert losses.MeanVariance(2.0)(pnl).item() == pytest.approx(-3.5 + var, abs=1e-14)
    assert losses.PnLVariance()(pnl).item() == pytest.approx(var, abs=1e-14)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: F.expected_shortfall(p, 1.0), "alpha"),
        (lambda p: F.value_at_risk(p, 0.0), "alpha"),
        (lambda p: F.entropic_risk(p, 0.0), "risk_aversion"),
        (lambda p: F.entropic_risk(p, 1.0, notional=-1.0), "notional"),
        (lambda p: F.mean_variance(p, -1.0), "risk_aversion"),
        (lambda p: losses.make_risk_measure("cvar"), "unknown risk measure"),
        (
            lambda p: losses.make_risk_measure("variance", risk_aversion=1.0),
            r"risk measure 'variance' takes no parameter\(s\) \['risk_aversion'\]; it takes none",
        ),
        (
            lambda p: losses.make_risk_measure("es", risk_aversion=1.0),
            r"'es' takes no parameter\(s\) \['risk_aversion'\]; it takes \['alpha'\]",
        ),
    ],
)
def test_bad_risk_parameters_raise_naming_the_parameter(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(10, dtype=DT))


def test_shapes_that_would_broadcast_wrongly_are_refused():
    # each of these broadcast silently: two cost rates for one instrument were both charged, an
    # (N, 1) premium or target made (N, N) results, an (N, K) P&L was flattened into one sample
    positions, prices = torch.zeros(4, 3), torch.ones(4, 4)
    payoff = torch.zeros(4)
    with pytest.raises(ValueError, match="cost must be one rate or one per instrument"):
        F.hedge_pnl(positions, prices, payoff, cost=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="cost must be finite and >= 0"):
        F.hedge_pnl(positions, prices, payoff, cost=-0.01)
    with pytest.raises(ValueError, match=r"premium must be a number or have shape \(N,\)"):
        F.hedge_pnl(positions, prices, payoff, premium=torch.zeros(4, 1))
    with pytest.raises(ValueError, match="one shape"):
        F.iv_error_bp(torch.zeros(4, 1), torch.zeros(4))
    for measure in (F.value_at_risk, F.expected_shortfall, F.entropic_risk, F.pnl_variance):
        with pytest.raises(ValueError, match=r"pnl must have shape \(N,\)"):
            measure(torch.zeros(4, 2))
        with pytest.raises(ValueError, match=r"pnl must have shape \(N,\) with N >= 1"):
            measure(torch.zeros(0))


def test_hedge_pnl_refuses_an_income_of_another_shape_than_the_positions():
    # an (N, T) income broadcast to every instrument (the underlying's dividends paid on the
    # variance swap too: 0.6 for 0.3 here), a (5, T, H) one made five P&Ls from one path
    positions, prices, payoff = torch.ones(1, 2, 2), torch.ones(1, 3, 2), torch.zeros(1)
    pnl = F.hedge_pnl(positions, prices, payoff, income=torch.tensor([[[0.1, 0.0], [0.2, 0.0]]]))
    assert pnl.item() == pytest.approx(0.3, abs=1e-7)
    with pytest.raises(ValueError, match=r"income must have the shape of positions \(1, 2, 2\), "
                                         r"got \(1, 2\)"):  # fmt: skip
        F.hedge_pnl(positions, prices, payoff, income=torch.tensor([[0.1, 0.2]]))
    with pytest.raises(ValueError, match=r"got \(5, 2, 2\)"):
        F.hedge_pnl(positions, prices, payoff, income=torch.ones(5, 2, 2))


@pytest.mark.parametrize("measure", [F.value_at_risk, F.expected_shortfall, F.entropic_risk,
                                     F.pnl_variance])  # fmt: skip
def test_risk_measures_refuse_an_integer_pnl(measure) -> None:
    # the expected shortfall of an integer P&L truncated its fractional tail weight: 0 for the
    # worst loss -1 of 1..10 at alpha 0.9 (VaR and the variance failed inside torch): one rule
    pnl = torch.tensor([5, 1, 2, 3, 4, 6, 7, 8, 9, 10])
    assert F.expected_shortfall(pnl.double(), 0.9).item() == pytest.approx(-1.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"pnl must be a floating-point tensor, got torch.int64"):
        measure(pnl)


_MEASURES = {
    "value_at_risk": lambda p: F.value_at_risk(p, 0.9),
    "expected_shortfall": lambda p: F.expected_shortfall(p, 0.9),
    "expected_shortfall_ru": lambda p: F.expected_shortfall_ru(p, 0.0, 0.9),
    "entropic_risk": lambda p: F.entropic_risk(p, 2.0),
    "pnl_variance": F.pnl_variance,
    "mean_variance": lambda p: F.mean_variance(p, 2.0),
}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", sorted(_MEASURES))
def test_risk_measures_refuse_non_finite_pnl_naming_measure_and_path(name: str, bad: float):
    # NaN came back as a NaN risk, +inf as a finite one (ES and entropic dropped the path)
    pnl = torch.tensor([0.1, -0.2, bad, 0.3], dtype=DT)
    measure = "pnl_variance" if name == "mean_variance" else name
    with pytest.raises(ValueError, match=rf"{measure}: pnl has 1 non-finite value\(s\), the "
                                         rf"first on path 2 \({bad}\)"):  # fmt: skip
        _MEASURES[name](pnl)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_training_losses_leave_non_finite_pnl_to_the_trainer_nan_guard(bad: float):
    # the modules skip the check (no host sync per step): the non-finite loss stops the Trainer
    # at its step, and the learning-rate finder reads it as divergence; a +inf path was 0 in the
    # ES tail and the entropic exponential, and their loss finite: training went on
    pnl = torch.tensor([0.1, bad, 0.3], dtype=DT)
    for module in (losses.ExpectedShortfall(0.9), losses.ExpectedShortfall(0.9).eval(),
                   losses.EntropicRisk(2.0), losses.PnLVariance(),
                   losses.MeanVariance(2.0)):  # fmt: skip
        assert not torch.isfinite(module(pnl)), type(module).__name__


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: F.entropic_risk(p, math.inf), "risk_aversion must be finite and > 0"),
        (lambda p: F.entropic_risk(p, 1.0, notional=math.inf), "notional must be finite"),
        (lambda p: F.entropic_risk(p, 1e-300, notional=1e300), r"risk_aversion / notional"),
        (lambda p: F.mean_variance(p, math.inf), "risk_aversion must be finite and >= 0"),
        (lambda p: losses.EntropicRisk(math.inf), "risk_aversion must be finite and > 0"),
        (lambda p: losses.EntropicRisk(1.0, math.inf), "notional must be finite"),
        (lambda p: losses.MeanVariance(math.inf), "risk_aversion must be finite and >= 0"),
    ],
)
def test_infinite_or_vanishing_risk_aversion_is_refused(call, match: str) -> None:
    # each gave a NaN (entropic: g = inf or g = 0) or an inf (mean-variance) risk
    with pytest.raises(ValueError, match=match):
        call(torch.ones(4, dtype=DT))


@pytest.mark.parametrize("gamma", [1e-3, 0.1, 10.0])
def test_entropic_risk_in_float32_keeps_the_digits_of_a_small_risk_aversion(gamma: float):
    g = torch.Generator().manual_seed(6)
    pnl32 = (0.001 + 0.02 * torch.randn(10_000, generator=g, dtype=DT)).float()
    exact = F.entropic_risk(pnl32.double(), gamma)  # the same sample, in float64
    # logsumexp(x) - log(N) rounds at eps32 log(N) / g: 0.0 for a risk of 2.5e-4 at g = 1e-3;
    # shifted by max(x) the rounding is a few eps32 max|pnl|
    atol = 8 * torch.finfo(torch.float32).eps * pnl32.abs().max().item()
    torch.testing.assert_close(F.entropic_risk(pnl32, gamma).double(), exact, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, DT])
def test_entropic_risk_of_a_large_loss_is_finite_in_every_dtype(dtype: torch.dtype) -> None:
    pnl = torch.tensor([-1000.0, 0.0], dtype=dtype, requires_grad=True)
    value = F.entropic_risk(pnl, 10.0)
    assert value.item() == pytest.approx(1000.0 - math.log(2) / 10.0, rel=1e-6)
    value.backward()
    torch.testing.assert_close(pnl.grad, torch.tensor([-1.0, 0.0], dtype=dtype), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("dtype", "gamma"), [(DT, 1e308), (torch.float32, 3e38), (torch.float32, 1e39)]
)
def test_entropic_risk_at_a_risk_aversion_past_the_dtype_range_is_the_worst_loss(
    dtype: torch.dtype, gamma: float
) -> None:
    # -g pnl overflowed to inf where g |pnl| passed the dtype's largest value, and the shift by
    # its maximum made inf - inf: a NaN risk; it is the worst loss, 2, less log(3) / g
    pnl = torch.tensor([-2.0, 0.0, 1.0], dtype=dtype, requires_grad=True)
    value = F.entropic_risk(pnl, gamma)
    assert value.item() == pytest.approx(2.0, rel=1e-15)
    value.backward()  # the softmax of -g pnl: all on the worst path
    torch.testing.assert_close(pnl.grad, torch.tensor([-1.0, 0.0, 0.0], dtype=dtype), rtol=0,
                               atol=1e-6)  # fmt: skip


@pytest.mark.parametrize(
    "measure",
    [
        lambda p: F.entropic_risk(p, 3.0),  # small g |pnl|: the log1p branch
        lambda p: F.entropic_risk(p, 1e3),  # large g |pnl|: the log branch
        lambda p: F.expected_shortfall(p, 0.93),  # fractional boundary weight
        lambda p: F.expected_shortfall_ru(p, torch.tensor(0.01, dtype=DT), 0.9),
        lambda p: F.value_at_risk(p, 0.93),
        lambda p: F.mean_variance(p, 2.0),
    ],
)
def test_risk_measure_gradients_match_finite_differences(measure) -> None:
    g = torch.Generator().manual_seed(7)
    pnl = (0.01 * torch.randn(50, generator=g, dtype=DT)).requires_grad_()
    assert torch.autograd.gradcheck(measure, (pnl,), eps=1e-7, atol=1e-6)


def test_one_path_or_a_tail_under_one_path_gives_the_worst_loss() -> None:
    one = torch.tensor([0.3], dtype=DT)
    for value in (F.value_at_risk(one, 0.95), F.expected_shortfall(one, 0.95),
                  F.entropic_risk(one, 5.0)):  # fmt: skip
        assert value.item() == pytest.approx(-0.3, abs=1e-15)
    assert F.pnl_variance(one).item() == 0.0
    # (1 - alpha) N = 0.5 < 1: the ES is the worst loss, not a mean with a neighbour
    assert F.expected_shortfall(torch.arange(50, dtype=DT), 0.99).item() == 0.0


def test_value_at_risk_beyond_the_torch_quantile_limit_of_2_pow_24_paths() -> None:
    n = 2**24 + 3  # torch.quantile raised "input tensor is too large"
    loss = torch.arange(n, dtype=DT)  # the alpha-quantile is alpha (n - 1), interpolated
    assert F.value_at_risk(-loss, 0.5).item() == pytest.approx(0.5 * (n - 1), rel=1e-15)


def test_value_at_risk_of_a_sorted_pnl_is_that_of_the_shuffled_pnl() -> None:
    # kthvalue's CPU quickselect was quadratic on a descending loss (a P&L sorted ascending):
    # (sorting instead): the order of the paths changes nothing
    pnl = torch.randn(50_000, generator=torch.Generator().manual_seed(3), dtype=DT)
    ordered = pnl.sort().values
    assert F.value_at_risk(ordered, 0.95).item() == F.value_at_risk(pnl, 0.95).item()
    assert F.value_at_risk(ordered.flip(0), 0.95).item() == F.value_at_risk(pnl, 0.95).item()


def test_value_at_risk_interpolates_as_torch_quantile() -> None:
    g = torch.Generator().manual_seed(8)
    for n, alpha in itertools.product((1, 2, 7, 1001), (0.01, 0.5, 0.95, 0.999)):
        pnl = torch.randn(n, generator=g, dtype=DT)
        torch.testing.assert_close(
            F.value_at_risk(pnl, alpha), torch.quantile(-pnl, alpha), rtol=1e-15, atol=1e-15
        )


@pytest.mark.parametrize("shape", [(1,), (4,)])
def test_expected_shortfall_ru_refuses_a_level_that_is_not_one_number(shape):
    # a (1,) or (N,) level broadcast into a loss of that shape, not the objective's one number
    pnl = torch.arange(4.0, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"var_level must be one number \(shape \(\)\)"):
        F.expected_shortfall_ru(pnl, torch.zeros(shape, dtype=torch.float64), 0.9)
