"""Batched, box-constrained Levenberg-Marquardt in torch, with exact autograd Jacobians.

Many independent least-squares problems (several starting points, or many surfaces) are solved in
one loop: every iteration evaluates the residuals and Jacobians of all still-active problems in one
batched call. Bounds are handled by projection with an active set: a parameter at its bound whose
gradient points outward is held fixed for that step. Each parameter is damped in proportion to its
diagonal of ``J^T J`` (Marquardt), but never below a fraction of the largest that diagonal has been
in the run (after MINPACK's scaling by the largest column norms so far), so that a parameter whose
column has all but vanished (Heston's theta once kappa sits at its bound) does not leap across the
box.

References:
    K. Madsen, H. B. Nielsen, O. Tingleff (2004), "Methods for non-linear least squares problems",
    2nd ed., DTU, Algorithm 3.16 (damping update of Nielsen, 1999).
    J. J. More (1978), "The Levenberg-Marquardt algorithm: implementation and theory", Lecture
    Notes in Mathematics 630, Springer (scaling by the largest column norms so far).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = [
    "LeastSquaresResult",
    "elementwise_jacobian",
    "levenberg_marquardt",
    "value_and_jacobian",
]

_DAMPING_LIMIT = 1e20
"""A problem whose damping grows past this stops, unconverged: no step lowered its cost."""
_SCALE_MEMORY = 1e-2
"""A parameter's damping scale is at least this fraction of the largest ``diag(J^T J)`` it has had.

With Marquardt's scale alone, exact one-expiry Heston smiles fitted from QuantLib's start (v0 0.1,
kappa 1, theta 0.1, sigma 0.5, rho -0.5) could take a first step that clipped kappa to its bound,
where theta's diagonal fell (5e5-fold in one) and the next step threw theta to 0.8-2.5: 8 of 100
fits never came within 0.1 bp in 300 iterations (stuck 0.1 to 3.3 bp above, most with v0 at its
bound). With this floor all 8 came within 0.01 bp (in 29 to 196 iterations), and 86 of the other
92 needed the same counts. On 80 of the benchmark's noisy 6 x 11 surfaces the mean iterations per
surface moved by 0.3 at most (either way), and 4,000 SABR fits took the same iterations."""

ResidualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(params, index) -> residuals``: params ``(B, M, P)`` (M = 1 or N) for problems ``index`` (B,).

Output ``(B, N)``; output ``n`` may depend on ``params[:, n]`` only (row 0 when M = 1)."""

JacobianFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(x, index) -> (residuals (B, N), jacobian (B, N, P))`` for x of shape ``(B, P)``."""


class LeastSquaresResult(NamedTuple):
    """Solution of a batch of problems.

    Attributes:
        x: parameters, shape ``(B, P)``.
        cost: ``0.5 * sum(residuals**2)`` per problem, shape ``(B,)``.
        residuals: shape ``(B, N)``.
        iterations: Jacobian evaluations per problem, shape ``(B,)``.
        converged: whether a tolerance stopped the problem (not the iteration limit, nor the
            damping limit reached when no step lowers the cost), ``(B,)``.
        jacobian: of the residuals at ``x``, shape ``(B, N, P)``.

    Shape:
        ``B`` problems, ``P`` parameters, ``N`` residuals each (see the attributes).

    Examples:
        >>> t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
        >>> fn = elementwise_jacobian(lambda p, i: p[..., 0] - t, 5)  # best fit: the mean, 0.5
        >>> x0 = torch.zeros(3, 1, dtype=torch.float64)
        >>> res = levenberg_marquardt(fn, x0, lower=torch.tensor(-1.0), upper=torch.tensor(1.0))
        >>> res.x.shape, res.residuals.shape, res.converged.tolist()
        (torch.Size([3, 1]), torch.Size([3, 5]), [True, True, True])
        >>> [round(c, 6) for c in res.cost.tolist()]
        [0.3125, 0.3125, 0.3125]
    """

    x: torch.Tensor
    cost: torch.Tensor
    residuals: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    jacobian: torch.Tensor


def value_and_jacobian(
    fn: ResidualFn, x: torch.Tensor, index: torch.Tensor, n_outputs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and exact Jacobian of an elementwise function by one reverse-mode pass.

    Each output gets its own copy of the parameters (``(B, N, P)``), so that the gradient of the
    sum of the outputs with respect to the copies is the Jacobian. This needs outputs that are
    elementwise in the parameters (true of pricers that broadcast parameters against options),
    and costs one batched evaluation and one backward pass. (Torch's forward-mode AD would need
    no copies, but its binary ops between dual and plain tensors are about 100x slower.)

    Shape:
        ``x``: ``(B, P)``, ``index``: ``(B,)``; returns ``(B, N)`` and ``(B, N, P)``.

    Examples:
        >>> t = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> f = lambda p, i: p[..., 0] * torch.exp(p[..., 1] * t)
        >>> r, j = value_and_jacobian(f, torch.tensor([[2.0, 0.0]], dtype=torch.float64),
        ...                           torch.tensor([0]), 2)
        >>> j[0].tolist()
        [[1.0, 2.0], [1.0, 4.0]]
    """
    batch, n_params = x.shape
    with torch.enable_grad():
        copies = x.detach().unsqueeze(1).expand(batch, n_outputs, n_params).clone()
        copies.requires_grad_(True)
        out = fn(copies, index)
        if tuple(out.shape) != (batch, n_outputs):  # else the Jacobian sums over the outputs
            raise ValueError(f"the residual function returned shape {tuple(out.shape)}, not "
                             f"(B, n_outputs) = {(batch, n_outputs)}")  # fmt: skip
        (jacobian,) = torch.autograd.grad(out.sum(), copies)
    return out.detach(), jacobian


def elementwise_jacobian(residual: ResidualFn, n_outputs: int) -> JacobianFn:
    """Wrap an elementwise residual function (see :data:`ResidualFn`) for :func:`levenberg_marquardt`.

    Examples:
        >>> f = elementwise_jacobian(lambda p, i: p[..., 0] * p[..., 1], 1)
        >>> r, j = f(torch.tensor([[2.0, 3.0]], dtype=torch.float64), torch.tensor([0]))
        >>> r.tolist(), j.tolist()
        ([[6.0]], [[[3.0, 2.0]]])
    """

    def with_jacobian(x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return value_and_jacobian(residual, x, index, n_outputs)

    return with_jacobian


def _free_mask(x, gradient, lower, upper) -> torch.Tensor:
    """Parameters not pinned at a bound by a gradient pointing outward."""
    at_lower = (x <= lower) & (gradient > 0)
    at_upper = (x >= upper) & (gradient < 0)
    return ~(at_lower | at_upper)


def _gradient_cosine(jac, r, gradient, free) -> torch.Tensor:
    """MINPACK's gradient test ``(B,)``: the largest ``|J_j^T r| / (|J_j| |r|)`` over the free
    parameters ``j`` (0 where ``J_j`` or ``r`` is 0), the cosine of the angle between the
    residuals and a column of the Jacobian. Free of the residuals' and parameters' scales: an
    absolute test of ``|J^T r|`` stopped exact one-expiry Heston fits as converged at 0.002-0.04 bp
    (``J^T r`` ~3e-11 with the residuals ~4e-7 in vol), far from the smile's parameters."""
    scale = torch.linalg.vector_norm(jac, dim=-2) * torch.linalg.vector_norm(
        r, dim=-1, keepdim=True
    )
    zero = scale == 0  # not NaN: a NaN residual meets no tolerance
    cosine = gradient.abs() / torch.where(zero, 1.0, scale)
    return torch.where(free & ~zero, cosine, 0.0).amax(-1)


def _damped_step(hessian, gradient, damping, free, peak) -> torch.Tensor:
    """Solve ``(A + mu D) h = -g`` on the free parameters (pinned ones get h = 0), ``D`` diagonal
    with ``D = max(diag(A), c peak)``: ``peak`` ``(B, P)`` is the largest ``diag(A)`` each parameter
    has had, ``c`` :data:`_SCALE_MEMORY`."""
    diag = torch.maximum(torch.diagonal(hessian, dim1=-2, dim2=-1), _SCALE_MEMORY * peak)
    # floored after the product, at the dtype's smallest normal number: 1e-12 * max(amax, 1e-300)
    # was 0 in float32 where amax was below ~1e-33 (J all 0, at a flat start): a singular solve
    # (and the damped term too: a damping below 1e-8 took float32's smallest normal to 0)
    tiny = torch.finfo(diag.dtype).tiny
    floor = (1e-12 * diag.amax(-1, keepdim=True)).clamp(min=tiny)
    damped = (damping.unsqueeze(-1) * torch.maximum(diag, floor)).clamp(min=tiny)
    mask = free.to(hessian.dtype)
    a = hessian * mask.unsqueeze(-1) * mask.unsqueeze(-2)
    a = a + torch.diag_embed(damped * mask + (1 - mask))
    return torch.linalg.solve(a, -(gradient * mask).unsqueeze(-1)).squeeze(-1) * mask


def _check_problem(
    x0: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, damping: float, iterations: int
) -> None:
    """Refuse what the loop would report as converged: NaN starts or bounds, inverted bounds
    (x came out at the upper one), a damping that is not positive."""
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 must be finite")
    if bool((torch.isnan(lower) | torch.isnan(upper) | (lower > upper)).any()):
        raise ValueError("bounds must be numbers with lower <= upper")
    if not (math.isfinite(damping) and damping > 0):
        raise ValueError(f"damping must be finite and > 0, got {damping}")
    if iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {iterations}")


def levenberg_marquardt(
    fn: JacobianFn,
    x0: torch.Tensor,
    *,
    lower: torch.Tensor,
    upper: torch.Tensor,
    max_iterations: int = 100,
    ftol: float = 1e-12,
    xtol: float = 1e-10,
    gtol: float = 1e-12,
    damping: float = 1e-3,
    initial: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> LeastSquaresResult:
    """Minimise ``0.5 * |r(x)|^2`` for a batch of independent problems within a box.

    Args:
        fn: residuals and Jacobian of problems ``index`` at ``x`` (see :func:`elementwise_jacobian`).
        x0: starting points, shape ``(B, P)`` (clipped into the box).
        lower: lower bounds, broadcastable to ``(B, P)``.
        upper: upper bounds, broadcastable to ``(B, P)``.
        max_iterations: Jacobian evaluations per problem at most.
        ftol: stop when an accepted step lowers the cost by less than ``ftol`` relative.
        xtol: stop when the step is below ``xtol`` relative to ``|x|``, accepted or not (as
            MINPACK's test: a fit that no step can improve, at a minimum whose cost rounding
            hides, or, rarely, where the Jacobian is wrong or the residual NaN beside ``x``,
            both of which shrink every step to nothing; telling them apart by the predicted
            reduction reported exact float32 surrogate fits unconverged).
        gtol: stop when the cosine of the angle between the residuals and each free
            parameter's Jacobian column, ``|J_j^T r| / (|J_j| |r|)``, is at most ``gtol``
            (MINPACK's test, free of the residuals' and parameters' units; ``r = 0`` meets it).
        damping: initial damping relative to the Gauss-Newton matrix diagonal.
        initial: residuals ``(B, N)`` and Jacobian ``(B, N, P)`` at ``x0`` when already known
            (``x0`` inside the box), which saves the first evaluation (e.g. to continue a run).

    Returns:
        A :class:`LeastSquaresResult`; a problem whose cost turns NaN stops, unconverged, and
        so does one whose damping grows past ``1e20`` (no step lowered its cost).

    Raises:
        ValueError: a non-finite ``x0``, NaN or inverted bounds, a damping that is not positive,
            ``max_iterations`` below 1.

    Shape:
        ``x0``: ``(B, P)``; residuals ``(B, N)``.

    Examples:
        >>> t = torch.linspace(0.0, 1.0, 20, dtype=torch.float64)
        >>> y = 2.0 * torch.exp(-1.5 * t)
        >>> fn = elementwise_jacobian(lambda p, i: p[..., 0] * torch.exp(-p[..., 1] * t) - y, 20)
        >>> x0 = torch.tensor([[1.0, 0.1]], dtype=torch.float64)
        >>> res = levenberg_marquardt(fn, x0, lower=torch.tensor(0.0), upper=torch.tensor(10.0))
        >>> [round(v, 8) for v in res.x[0].tolist()], bool(res.converged[0])
        ([2.0, 1.5], True)
    """
    lower, upper = (torch.as_tensor(b, dtype=x0.dtype, device=x0.device) for b in (lower, upper))
    lower, upper = lower.expand_as(x0), upper.expand_as(x0)
    _check_problem(x0, lower, upper, damping, max_iterations)
    x = torch.minimum(torch.maximum(x0, lower), upper).clone()
    batch = x.shape[0]
    every = torch.arange(batch, device=x.device)
    r, jac = fn(x, every) if initial is None else (t.clone() for t in initial)
    mu = torch.full((batch,), damping, dtype=x.dtype, device=x.device)
    state = _State(
        x, r, jac, 0.5 * (r * r).sum(-1), mu, torch.full_like(mu, 2.0), torch.zeros_like(x)
    )
    iterations = torch.full((batch,), int(initial is None), dtype=torch.long, device=x.device)
    converged = torch.zeros(batch, dtype=torch.bool, device=x.device)
    active = torch.ones(batch, dtype=torch.bool, device=x.device)
    for _ in range(max_iterations - int(initial is None)):
        idx = every[active]
        if idx.numel() == 0:
            break
        if idx.numel() == batch:  # every problem still active: no gathers and scatters
            state, met, stalled = _iterate(fn, state, idx, lower, upper, ftol, xtol, gtol)
            iterations = iterations + 1
            converged = met & torch.isfinite(state.cost)  # a NaN cost stops, unconverged
            active = ~(met | stalled)
            continue
        new, met, stalled = _iterate(fn, state.take(idx), idx, lower[idx], upper[idx], ftol,
                                     xtol, gtol)  # fmt: skip
        state.put(idx, new)
        iterations[idx] += 1
        converged[idx] = met & torch.isfinite(new.cost)
        active[idx] = ~(met | stalled)
    return LeastSquaresResult(state.x, state.cost, state.r, iterations, converged, state.jac)


class _State(NamedTuple):
    """What :func:`levenberg_marquardt` carries per problem: params ``(B, P)``, residuals
    ``(B, N)``, their Jacobian ``(B, N, P)``, the cost, the damping ``mu`` and its growth factor
    ``nu`` ``(B,)``, and ``peak``, the largest diagonal of ``J^T J`` so far ``(B, P)``."""

    x: torch.Tensor
    r: torch.Tensor
    jac: torch.Tensor
    cost: torch.Tensor
    mu: torch.Tensor
    nu: torch.Tensor
    peak: torch.Tensor

    def take(self, idx: torch.Tensor) -> _State:
        """The problems ``idx`` ``(B',)``."""
        return _State(*(t[idx] for t in self))

    def put(self, idx: torch.Tensor, new: _State) -> None:
        """Overwrite the problems ``idx`` ``(B',)`` with ``new`` (in place)."""
        for t, value in zip(self, new, strict=True):
            t[idx] = value


def _iterate(
    fn: JacobianFn,
    s: _State,
    idx: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    ftol: float,
    xtol: float,
    gtol: float,
) -> tuple[_State, torch.Tensor, torch.Tensor]:
    """One damped Gauss-Newton trial of the problems ``idx`` ``(B,)`` in state ``s``, bounds
    ``(B, P)``: the state after it (the trial kept where it lowered the cost), whether a
    tolerance was met and whether the damping passed :data:`_DAMPING_LIMIT` ``(B,)``."""
    jt = s.jac.transpose(-1, -2)
    hessian = jt @ s.jac  # (B, P, P)
    gradient = (jt @ s.r.unsqueeze(-1)).squeeze(-1)  # (B, P)
    free = _free_mask(s.x, gradient, lower, upper)
    small_gradient = _gradient_cosine(s.jac, s.r, gradient, free) <= gtol
    peak = torch.maximum(s.peak, torch.diagonal(hessian, dim1=-2, dim2=-1))
    step = _damped_step(hessian, gradient, s.mu, free, peak)
    trial = torch.minimum(torch.maximum(s.x + step, lower), upper)
    step = trial - s.x
    r_new, j_new = fn(trial, idx)
    cost_new = 0.5 * (r_new * r_new).sum(-1)
    predicted = -(gradient * step).sum(-1) - 0.5 * (
        step * (hessian @ step.unsqueeze(-1)).squeeze(-1)
    ).sum(-1)
    ratio = (s.cost - cost_new) / predicted.clamp(min=1e-300)
    accept = torch.isfinite(cost_new) & (cost_new <= s.cost) & (predicted > 0)
    tiny_step = step.norm(dim=-1) <= xtol * (s.x.norm(dim=-1) + xtol)
    flat = accept & (s.cost - cost_new <= ftol * s.cost)
    # Nielsen's damping update: shrink smoothly on good steps, double the growth on failures.
    shrink = torch.clamp(1 - (2 * ratio - 1) ** 3, min=1 / 3)
    mu = torch.where(accept, s.mu * shrink, s.mu * s.nu)
    keep = accept.unsqueeze(-1)
    new = _State(torch.where(keep, trial, s.x), torch.where(keep, r_new, s.r),
                 torch.where(keep.unsqueeze(-1), j_new, s.jac),
                 torch.where(accept, cost_new, s.cost), mu,
                 torch.where(accept, 2.0, s.nu * 2), peak)  # fmt: skip
    # a damping past the limit means no step lowered the cost (a wrong Jacobian, a residual that
    # is NaN around x): it stops the problem, but no tolerance was met
    return new, small_gradient | flat | tiny_step, mu > _DAMPING_LIMIT
