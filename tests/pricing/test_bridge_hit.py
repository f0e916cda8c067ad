"""The expected discount at a Brownian bridge's first passage, against the passage-time density."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import quad

from pricing._bridge_hit import discounted_first_passage

F64 = torch.float64


def _by_density(a: float, b: float, s2: float, r_dt: float) -> float:
    """``E[exp(-r tau); tau <= dt]`` from the first-passage density of a bridge from ``a`` to
    ``b`` (variance ``s2`` over the step, time in step fractions): the Levy density of the
    passage at ``w`` times the free move from the barrier to ``b``, over the bridge's density."""

    def gauss(x: float, var: float) -> float:
        return math.exp(-x * x / (2 * var)) / math.sqrt(2 * math.pi * var)

    def density(w: float) -> float:
        levy = a / math.sqrt(2 * math.pi * s2 * w**3) * math.exp(-a * a / (2 * s2 * w))
        return levy * gauss(b, s2 * (1 - w)) / gauss(b - a, s2)

    value, _ = quad(lambda w: math.exp(-r_dt * w) * density(w), 0.0, 1.0, epsabs=1e-14,
                    epsrel=1e-12, limit=400, points=[1e-6, 1e-3, 0.5])  # fmt: skip
    return value


@pytest.mark.parametrize(
    ("a", "b", "s2", "r_dt"),
    [(0.1, 0.05, 0.04, 0.5), (0.1, -0.05, 0.04, 0.5), (0.02, 0.3, 0.09, 1.0),
     (0.3, -0.2, 0.01, 2.0), (0.15, 0.12, 0.0028, 0.003), (0.005, 0.01, 0.0028, 0.003)],
)  # fmt: skip
def test_expected_discount_matches_the_passage_time_density(a, b, s2, r_dt):
    p = math.exp(-2 * a * b / s2) if b > 0 else 1.0
    value = discounted_first_passage(*(torch.tensor([[v]], dtype=F64) for v in (a, b, s2, p)),
                                     torch.tensor(r_dt, dtype=F64))  # fmt: skip
    expected = _by_density(a, b, s2, r_dt)
    # the 16-node rule: within 3e-5 of the rebate, far closer away from the barrier
    assert float(value) == pytest.approx(expected, rel=0.0, abs=3e-5)
    assert float(value) <= p  # a discount below 1 on each crossing


def test_without_a_rate_it_is_the_crossing_probability_and_a_start_beyond_pays_at_once():
    a = torch.tensor([[0.1, -0.01, 0.2]], dtype=F64)
    b = torch.tensor([[0.05, 0.05, -0.1]], dtype=F64)
    s2 = torch.tensor(0.04, dtype=F64)
    p = torch.where(b > 0, torch.exp(-2 * a * b / s2), 1.0)
    torch.testing.assert_close(discounted_first_passage(a, b, s2, p, torch.tensor(0.0)),
                               torch.where(a <= 0, 1.0, p), rtol=1e-14, atol=0.0)  # fmt: skip
    assert float(discounted_first_passage(a, b, s2, p, torch.tensor(0.3))[0, 1]) == 1.0


def test_gradients_flow_after_a_first_call_in_inference_mode():
    # the node rule is cached: made first under inference_mode, its tensors were inference
    # tensors, and every later autograd through the rule failed ("Inference tensors cannot be
    # saved for backward")
    from pricing._bridge_hit import _rule

    _rule.cache_clear()
    args = [torch.tensor([[v]], dtype=F64) for v in (0.1, 0.05, 0.04, math.exp(-0.25))]
    with torch.inference_mode():
        discounted_first_passage(*args, torch.tensor(0.5, dtype=F64))
    rate = torch.tensor(0.5, dtype=F64, requires_grad=True)
    discounted_first_passage(*args, rate).sum().backward()
    assert rate.grad is not None and float(rate.grad) < 0  # a later passage discounts more
