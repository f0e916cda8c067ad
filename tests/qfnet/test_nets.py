"""Networks and hedging policies: shapes, band semantics, custom backward."""

from __future__ import annotations

import pytest
import torch

from qfnet.nets import (
    MLP,
    GRUPolicy,
    MLPPolicy,
    NoTransactionBandNet,
    ResidualMLP,
    clamp_recursion,
)


def _naive_clamp(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    prev, out = torch.zeros_like(low[:, 0]), []
    for t in range(low.shape[1]):
        prev = torch.minimum(torch.maximum(prev, low[:, t]), high[:, t])
        out.append(prev)
    return torch.stack(out, dim=1)


def _bands(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(64, 9, 2, generator=g, dtype=torch.float64)
    w1 = 0.2 * torch.rand(64, 9, 2, generator=g, dtype=torch.float64)
    w2 = 0.2 * torch.rand(64, 9, 2, generator=g, dtype=torch.float64)
    return (ref - w1).requires_grad_(), (ref + w2).requires_grad_()


def test_clamp_recursion_matches_naive_loop_values_and_gradients() -> None:
    low, high = _bands()
    weights = torch.randn(64, 9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = clamp_recursion(low, high)
    ref = _naive_clamp(low, high)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    g1 = torch.autograd.grad((ours * weights).sum(), (low, high))
    g2 = torch.autograd.grad((ref * weights).sum(), (low, high))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


def test_clamp_recursion_passes_gradcheck() -> None:
    low, high = _bands(seed=2)
    assert torch.autograd.gradcheck(clamp_recursion, (low[:8], high[:8]))


def test_no_transaction_band_starts_with_the_requested_band_and_stays_inside_it() -> None:
    net = NoTransactionBandNet(3, 1, hidden=(8,), initial_width=0.05).double()
    features = torch.randn(200, 6, 3, dtype=torch.float64)
    reference = 0.2 + 0.8 * torch.rand(200, 6, 1, dtype=torch.float64)
    low, high = net.bands(features, reference)
    widths = torch.cat([reference - low, high - reference])
    assert widths.min().item() > 0.02
    assert widths.max().item() < 0.12  # initial band ~0.05 half-width, not degenerate
    positions = net(features, reference)
    assert bool(((positions >= low - 1e-15) & (positions <= high + 1e-15)).all())
    # from a flat book the first trade goes to the nearest edge (lower edge for a long delta)
    torch.testing.assert_close(positions[:, 0], low[:, 0], rtol=0, atol=1e-15)


def test_policies_output_one_position_per_step_and_instrument() -> None:
    features = torch.randn(5, 7, 4)
    reference = torch.rand(5, 7, 2)
    for policy in (
        NoTransactionBandNet(4, 2, hidden=(8,)),
        MLPPolicy(4, 2, hidden=(8,)),
        GRUPolicy(4, 2, hidden_size=8),
    ):
        assert policy(features, reference).shape == (5, 7, 2)
    assert MLP(4, 3, hidden=(8, 8))(torch.zeros(2, 4)).shape == (2, 3)
    assert ResidualMLP(4, 3, width=8, blocks=3)(torch.zeros(2, 4)).shape == (2, 3)


def test_policies_reject_wrong_feature_shapes_with_sizes_in_message() -> None:
    net = NoTransactionBandNet(4, 1, hidden=(8,))
    with pytest.raises(ValueError, match=r"features must have shape \(N, T, 4\)"):
        net(torch.zeros(5, 7, 3), torch.zeros(5, 7, 1))
    with pytest.raises(ValueError, match="reference must have shape"):
        net(torch.zeros(5, 7, 4), torch.zeros(5, 6, 1))
    with pytest.raises(ValueError, match="activation"):
        MLP(2, 1, activation="swish")
    with pytest.raises(ValueError, match="initial_width"):
        NoTransactionBandNet(2, 1, initial_width=0.0)


_POLICIES = [lambda: NoTransactionBandNet(3, 1, hidden=(8,)), lambda: MLPPolicy(3, 1, hidden=(8,)),
             lambda: GRUPolicy(3, 1, hidden_size=8)]  # fmt: skip


@pytest.mark.parametrize("make", _POLICIES)
def test_policies_refuse_a_reference_of_another_instrument_count(make):
    # the band net and the GRU broadcast one instrument's output over a reference of two
    with pytest.raises(ValueError, match=r"reference must have shape \(N, T, H\) = \(4, 5, 1\)"):
        make()(torch.zeros(4, 5, 3), torch.zeros(4, 5, 2))


def test_clamp_recursion_refuses_inverted_bands():
    with pytest.raises(ValueError, match="low <= high"):
        clamp_recursion(torch.ones(1, 2, 1), torch.zeros(1, 2, 1))


@pytest.mark.parametrize("make", _POLICIES)
def test_policies_refuse_zero_steps_naming_the_shape(make):
    # an IndexError (band net, MLP policy) or an error from inside the GRU before
    with pytest.raises(ValueError, match=r"with T >= 1, got \(4, 0, 3\)"):
        make()(torch.zeros(4, 0, 3), torch.zeros(4, 0, 1))


def test_band_net_initial_width_is_exact_when_large_and_refused_when_infinite():
    # log(expm1(w)) overflowed ("math range error") for w > 709; inf gave an inf bias
    net = NoTransactionBandNet(3, 1, hidden=(8,), initial_width=1000.0).double()
    with torch.no_grad():
        net.mlp.head.weight.zero_()  # the widths are then softplus(bias) alone
    low, high = net.bands(torch.randn(2, 4, 3, dtype=torch.float64), torch.zeros(2, 4, 1).double())
    torch.testing.assert_close(high, torch.full_like(high, 1000.0), rtol=1e-15, atol=0)
    torch.testing.assert_close(low, torch.full_like(low, -1000.0), rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match="initial_width must be finite and > 0"):
        NoTransactionBandNet(3, 1, initial_width=float("inf"))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MLP(3, 2, hidden=(8, 0)), r"hidden must be positive layer widths, got \[8, 0\]"),
        (lambda: MLP(3, 2, hidden=(-4,)), r"hidden must be positive layer widths, got \[-4\]"),
        (lambda: NoTransactionBandNet(3, 1, hidden=(0,)), r"hidden must be positive"),
        (lambda: ResidualMLP(3, 1, width=0), r"width must be >= 1, got 0"),
        (lambda: ResidualMLP(3, 1, blocks=-1), r"blocks must be >= 0, got -1"),
    ],
)
def test_networks_refuse_empty_or_negative_layers_naming_the_argument(make, match: str) -> None:
    # a hidden width of 0 built a network whose output was its last bias (0), constant in the
    # input and without a gradient to the layers before; -1 blocks built none, silently
    with pytest.raises(ValueError, match=match):
        make()
