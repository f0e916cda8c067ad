"""Networks: MLP, residual MLP and the hedging policies (no-transaction band, MLP, GRU).

The hedging policies map observable features ``(N, T, F)`` and a reference hedge ``(N, T, H)``
(e.g. the Black-Scholes delta) to positions ``(N, T, H)`` held over each step. They are plain
modules: training happens in :mod:`qfnet.training` (models don't train themselves).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["MLP", "GRUPolicy", "MLPPolicy", "NoTransactionBandNet", "ResidualMLP"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
}


def _activation(name: str, inplace: bool = False) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    if inplace and name == "relu":  # safe after a Linear: its backward does not need its output
        return nn.ReLU(inplace=True)
    return _ACTIVATIONS[name]()


def _check_widths(name: str, widths: Sequence[int]) -> None:
    """A width of 0 made a network whose output was its last bias (0 at initialisation), with
    no gradient to the layers before it; a negative one failed inside torch."""
    if any(w < 1 for w in widths):
        raise ValueError(f"{name} must be positive layer widths, got {list(widths)}")


class MLP(nn.Sequential):
    """Fully connected network ``in -> hidden... -> out`` with one activation between layers.

    Args:
        in_features: input size F.
        out_features: output size.
        hidden: widths of the hidden layers.
        activation: ``relu``, ``silu``, ``tanh``, ``gelu`` or ``softplus``.

    Shape:
        - input: (..., F)
        - output: (..., out_features)

    Examples:
        >>> MLP(3, 2, hidden=(8, 8))(torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (32, 32),
        activation: str = "relu",
    ) -> None:
        _check_widths("hidden", hidden)
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), _activation(activation, inplace=True)]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)

    @property
    def head(self) -> nn.Linear:
        """The output layer."""
        return self[-1]


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(width, width), _activation(activation), nn.Linear(width, width)
        )
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class ResidualMLP(nn.Module):
    """MLP with residual blocks ``x <- act(x + W2 act(W1 x))`` of constant width.

    Shape:
        - input: (..., F)
        - output: (..., out_features)

    References:
        He, Zhang, Ren, Sun (2016), "Deep residual learning for image recognition", CVPR, eq. (1).

    Examples:
        >>> ResidualMLP(3, 1, width=8, blocks=2)(torch.zeros(4, 3)).shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: int = 64,
        blocks: int = 2,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        if width < 1:  # 0: a constant output, the head's bias (see _check_widths)
            raise ValueError(f"width must be >= 1, got {width}")
        if blocks < 0:  # range(-1) built no block, silently
            raise ValueError(f"blocks must be >= 0, got {blocks}")
        self.stem = nn.Sequential(nn.Linear(in_features, width), _activation(activation))
        self.blocks = nn.Sequential(*[_ResidualBlock(width, activation) for _ in range(blocks)])
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def _check_policy_inputs(
    features: torch.Tensor, reference: torch.Tensor, n_features: int, n_instruments: int
) -> None:
    # T = 0 failed with an IndexError (band net, MLP policy) or inside the GRU
    if features.dim() != 3 or features.shape[-1] != n_features or features.shape[1] == 0:
        raise ValueError(
            f"features must have shape (N, T, {n_features}) with T >= 1, "
            f"got {tuple(features.shape)}"
        )
    # H must be the net's: a reference of 2 instruments for a net of 1 broadcast its one band
    expected = (*features.shape[:2], n_instruments)
    if tuple(reference.shape) != expected:
        raise ValueError(
            f"reference must have shape (N, T, H) = {expected}, got {tuple(reference.shape)}"
        )


class NoTransactionBandNet(nn.Module):
    """No-transaction band around a reference hedge, with band widths from an MLP.

    The MLP maps features at each step to widths ``(lower, upper) >= 0`` per instrument; the
    position is the previous one clamped into ``[ref - lower, ref + upper]``, starting flat. The
    widths do not depend on the previous position, so the MLP runs once on all ``N * T`` rows and
    only the clamp is sequential. The output bias starts at ``softplus^-1(initial_width)`` with a
    small last layer, so training starts from a non-degenerate band of that half-width instead
    of from a (costly) delta hedge or a frozen, gradient-free position.

    Args:
        n_features: F, features per step.
        n_instruments: H, hedging instruments.
        hidden: MLP hidden widths.
        initial_width: initial half-width of every band.

    Shape:
        - features: (N, T, F)
        - reference: (N, T, H)
        - output: (N, T, H)

    References:
        Imaki, Imajo, Ito, Minami, Nakagawa (2021), "No-transaction band network", arXiv:2103.01775,
        Sec. 3; Davis, Panas, Zariphopoulou (1993), "European option pricing with transaction
        costs", SIAM J. Control Optim. 31(2).

    Examples:
        >>> net = NoTransactionBandNet(3, 1, hidden=(8,))
        >>> net(torch.zeros(4, 5, 3), torch.full((4, 5, 1), 0.5)).shape
        torch.Size([4, 5, 1])
    """

    def __init__(
        self,
        n_features: int,
        n_instruments: int = 1,
        hidden: Sequence[int] = (32, 32),
        initial_width: float = 0.05,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if not (math.isfinite(initial_width) and initial_width > 0.0):  # inf: an inf bias
            raise ValueError(f"initial_width must be finite and > 0, got {initial_width}")
        self.n_features = n_features
        self.n_instruments = n_instruments
        self.mlp = MLP(n_features, 2 * n_instruments, hidden, activation)
        with torch.no_grad():
            self.mlp.head.weight.mul_(0.1)
            self.mlp.head.bias.fill_(_inverse_softplus(initial_width))

    def bands(
        self, features: torch.Tensor, reference: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper band edges ``(N, T, H)`` each."""
        _check_policy_inputs(features, reference, self.n_features, self.n_instruments)
        widths = nn.functional.softplus(self.mlp(features))  # (N, T, 2H)
        lower, upper = widths.split(self.n_instruments, dim=-1)
        return reference - lower, reference + upper

    def forward(self, features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        low, high = self.bands(features, reference)
        return _ClampRecursion.apply(low, high)  # ordered by construction: no check, no sync


def _inverse_softplus(y: float) -> float:
    """``log(expm1(y))`` as ``y + log(-expm1(-y))``: expm1 overflowed for ``y > 709``."""
    return y + math.log(-math.expm1(-y))


def clamp_recursion(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Positions ``h_t = clamp(h_{t-1}, low_t, high_t)`` starting from ``h_{-1} = 0``.

    Needs ``low <= high``. Differentiable in ``low`` and ``high`` through a hand-written backward
    pass (two tensor operations per step instead of the dozens autograd would record for a
    chain of ``maximum``/``minimum``); ties count as "inside the band".

    Shape:
        - low, high: (N, T, H)
        - output: (N, T, H)

    Examples:
        >>> clamp_recursion(torch.tensor([[[0.2], [0.0]]]), torch.tensor([[[0.4], [0.1]]]))
        tensor([[[0.2000],
                 [0.1000]]])
    """
    if low.shape != high.shape or low.dim() != 3:
        raise ValueError(
            f"low and high must have the same shape (N, T, H), got {tuple(low.shape)} "
            f"and {tuple(high.shape)}"
        )
    if bool((low > high).any()):  # torch.clamp would return high, silently (a host sync)
        raise ValueError("clamp_recursion needs low <= high everywhere")
    return _ClampRecursion.apply(low, high)


def _clamp_forward(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    lo, hi = low.transpose(0, 1).contiguous(), high.transpose(0, 1).contiguous()  # (T, N, H)
    out = torch.empty_like(lo)
    prev = torch.zeros_like(lo[0])
    for t in range(lo.shape[0]):
        prev = torch.clamp(prev, lo[t], hi[t], out=out[t])
    return out.transpose(0, 1)  # (N, T, H)


class _ClampRecursion(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        out = _clamp_forward(low, high)
        ctx.save_for_backward(low, high, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high, out = ctx.saved_tensors
        prev = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)  # h_{t-1}
        at_low, at_high = prev < low, prev > high
        carry = (~(at_low | at_high)).to(grad.dtype).transpose(0, 1).contiguous()  # (T, N, H)
        g_in = grad.transpose(0, 1).contiguous()
        total = torch.empty_like(g_in)
        running = torch.zeros_like(g_in[0])
        for t in range(g_in.shape[0] - 1, -1, -1):
            torch.add(g_in[t], running, out=total[t])  # dLoss/dh_t, direct plus through h_{t+1}
            running = total[t] * carry[t]
        total = total.transpose(0, 1)
        return total * at_low, total * at_high


class MLPPolicy(nn.Module):
    """Position ``ref_t + MLP(features_t, h_{t-1} - ref_t)``: a feed-forward policy that sees the
    previous position (sequential over T, batched over paths).

    Shape:
        - features: (N, T, F)
        - reference: (N, T, H)
        - output: (N, T, H)

    References:
        Buehler, Gonon, Teichmann, Wood (2019), "Deep hedging", Quantitative Finance 19(8), Sec. 4.

    Examples:
        >>> MLPPolicy(3, 1, hidden=(8,))(torch.zeros(2, 4, 3), torch.zeros(2, 4, 1)).shape
        torch.Size([2, 4, 1])
    """

    def __init__(
        self,
        n_features: int,
        n_instruments: int = 1,
        hidden: Sequence[int] = (32, 32),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.n_features, self.n_instruments = n_features, n_instruments
        self.mlp = MLP(n_features + n_instruments, n_instruments, hidden, activation)
        with torch.no_grad():
            self.mlp.head.weight.mul_(0.1)
            self.mlp.head.bias.zero_()

    def forward(self, features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        _check_policy_inputs(features, reference, self.n_features, self.n_instruments)
        prev = torch.zeros_like(reference[:, 0])
        out = []
        for t in range(features.shape[1]):
            x = torch.cat([features[:, t], prev - reference[:, t]], dim=-1)  # (N, F+H)
            prev = reference[:, t] + self.mlp(x)
            out.append(prev)
        return torch.stack(out, dim=1)


class GRUPolicy(nn.Module):
    """Recurrent policy: a GRU reads the feature history and a linear head outputs the deviation
    from the reference hedge. The positions are a function of the whole observed path (which
    determines the previous positions), so the GRU runs over the sequence in one call.

    Shape:
        - features: (N, T, F)
        - reference: (N, T, H)
        - output: (N, T, H)

    References:
        Cho et al. (2014), "Learning phrase representations using RNN encoder-decoder", EMNLP,
        eqs. (5)-(8).

    Examples:
        >>> GRUPolicy(3, 1, hidden_size=8)(torch.zeros(2, 4, 3), torch.zeros(2, 4, 1)).shape
        torch.Size([2, 4, 1])
    """

    def __init__(self, n_features: int, n_instruments: int = 1, hidden_size: int = 32) -> None:
        super().__init__()
        self.n_features, self.n_instruments = n_features, n_instruments
        self.gru = nn.GRU(n_features, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, n_instruments)
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def forward(self, features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        _check_policy_inputs(features, reference, self.n_features, self.n_instruments)
        hidden, _ = self.gru(features)  # (N, T, hidden)
        return reference + self.head(hidden)
