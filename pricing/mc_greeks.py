"""Pathwise Monte Carlo greeks by autograd under Heston (QE or full-truncation Euler).

The Heston counterpart of :func:`pricing.mc_exotics.bs_pathwise_greeks`: each path gets its own
copy of ``spot`` and ``v0`` (and, under the Euler scheme, of ``kappa, theta, sigma, rho``) as a leaf
tensor, so one backward pass through the simulated paths gives every path's derivative and hence a
standard error.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pricing import payoffs, simulate
from pricing._mc_random import graph_chunk_size
from pricing._mc_stats import MCResult, Moments, discount_factor, shape_samples
from pricing._simulate_checks import check_paths, check_single
from pricing._simulate_steps import PSI_C
from pricing._typing import DEFAULT_DTYPE, call_flag, real_number

__all__ = ["HestonPathwiseGreeks", "heston_pathwise_greeks"]

MODEL_PARAMETERS = ("kappa", "theta", "sigma", "rho")
"""The parameters whose pathwise derivatives need the Euler scheme."""


class HestonPathwiseGreeks(NamedTuple):
    """Price and pathwise sensitivities estimated from the same Heston paths.

    Attributes:
        price: the option price.
        delta: ``dV/dspot`` with the variance held fixed (as :func:`pricing.heston.delta`).
        dv0: ``dV/dv0``, per unit of initial *variance*; the sensitivity to the initial
            volatility ``sqrt(v0)`` is ``2 sqrt(v0) dv0``.
        dkappa, dtheta, dsigma, drho: ``dV`` per unit of each model parameter (``scheme="euler"``;
            None under QE).

    Shape:
        Each field is an ``MCResult`` whose tensors are scalars (or None).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> r = heston_pathwise_greeks(spot=100.0, strike=100.0, maturity=1.0, v0=0.04,
        ...                            kappa=1.5, theta=0.04, sigma=0.3, rho=-0.7,
        ...                            n_paths=4096, n_steps=8, generator=g)
        >>> r._fields
        ('price', 'delta', 'dv0', 'dkappa', 'dtheta', 'dsigma', 'drho')
        >>> bool(r.dv0.price > 0), r.dtheta  # a call gains with the initial variance; QE: no dtheta
        (True, None)
    """

    price: MCResult
    delta: MCResult
    dv0: MCResult
    dkappa: MCResult | None = None
    dtheta: MCResult | None = None
    dsigma: MCResult | None = None
    drho: MCResult | None = None


# ordinary tensors inside an inference_mode block too, whose tensors autograd refuses (and which
# enable_grad does not lift): "element 0 of tensors does not require grad and does not have a
# grad_fn"
@torch.inference_mode(False)
def heston_pathwise_greeks(
    *,
    spot: float,
    strike: float,
    maturity: float,
    v0: float,
    kappa: float,
    theta: float,
    sigma: float,
    rho: float,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: bool = True,
    n_paths: int,
    n_steps: int,
    antithetic: bool = False,
    scheme: str = "qe",
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> HestonPathwiseGreeks:
    """Pathwise greeks of a European option under Heston, by autograd through the simulation.

    The paths come from :func:`pricing.simulate.heston` (float64, eager). The estimates are the
    derivatives of the discretised model's price; the pathwise method is unbiased for them when
    the payoff is Lipschitz in ``S_T`` (calls, puts) and the step is continuous in the inputs.

    - ``scheme="qe"`` (Andersen's QE): delta and ``dV/dv0``. The sampler switches between its
      quadratic and exponential branches at ``psi = 1.5``, where ``v(t + dt)`` jumps with the
      inputs and the jump is not seen by the derivative: a bias that shrinks with the step for
      ``v0``, but not for the model parameters, which move ``psi`` in every step (so QE gives
      none for them).
    - ``scheme="euler"`` (full truncation, continuous in everything): also ``dV/dkappa``,
      ``dV/dtheta``, ``dV/dsigma`` and ``dV/drho``; the scheme's own discretisation bias (first
      order in the step) applies to price and greeks alike (64 steps a year: about 0.6% on
      ``dV/dv0``, less on the others, in the tests' case). Where the variance often reaches zero
      (Feller condition ``2 kappa theta >= sigma^2`` violated) the slope of ``sqrt(v)`` near zero
      makes the per-path derivatives heavy-tailed: standard errors several times larger, and less
      reliable, than with the condition met.

    Autograd keeps each chunk's graph (about 30 float64 numbers per path and step); ``chunk_size``
    bounds it; by default :func:`pricing._mc_random.graph_chunk_size` (about 2^20 path-steps, a
    graph of about 250 MB: 65,536 paths took 1.5 s and 0.9 GB at 64 steps, 10.2 s and 1.1 GB at
    252, against 2.6 s and 2.0 GB, 17.2 s and 3.2 GB with the simulators' default chunk).

    Args:
        spot: spot price, > 0.
        strike: one strike (one backward pass per run: a call per strike).
        maturity: years.
        v0: initial variance, >= 0 (> 0 with ``scheme="euler"``, and with ``"qe"`` where
            ``sigma^2 <= 3 kappa theta``: the pathwise dv0 has no finite mean at 0 there).
        kappa: mean-reversion speed, > 0.
        theta: long-run variance, > 0.
        sigma: volatility of variance, > 0.
        rho: spot/variance correlation in [-1, 1] (``scheme="qe"``) or (-1, 1) (``euler``).
        rate: continuously compounded rate.
        dividend: continuously compounded dividend yield.
        is_call: call (True) or put (False).
        n_paths: number of paths (even with ``antithetic``).
        n_steps: time steps.
        antithetic: antithetic pairs.
        scheme: ``"qe"`` or ``"euler"`` (see above).
        generator: source of the seed; None draws fresh entropy (``torch.manual_seed`` does
            not fix it: pass a seeded generator to repeat a run).
        chunk_size: paths per chunk (None: see above); the paths do not depend on it, the
            estimates only through the rounding of their per-chunk sums (~1e-15 relative).

    Returns:
        ``HestonPathwiseGreeks``: price, delta, dv0, and with ``scheme="euler"`` dkappa, dtheta,
        dsigma, drho.

    Raises:
        ValueError: naming the field of an invalid input.

    References:
        Broadie and Glasserman (1996), "Estimating security price derivatives using simulation",
        Management Science 42(2); Glasserman (2004), section 7.2 (pathwise estimates); Andersen
        (2008), J. Comput. Finance 11(3) (QE scheme); Lord, Koekkoek and van Dijk (2010), Quant.
        Finance 10(2) (full-truncation Euler).

    Examples:
        >>> from pricing import heston
        >>> args = dict(spot=100.0, strike=100.0, maturity=1.0, v0=0.04, kappa=1.5, theta=0.04,
        ...             sigma=0.3, rho=-0.7)
        >>> r = heston_pathwise_greeks(**args, n_paths=8192, n_steps=8, antithetic=True,
        ...                            generator=torch.Generator().manual_seed(0))
        >>> exact = heston.delta(**args).item()
        >>> abs(r.delta.price.item() - exact) < 4 * r.delta.std_error.item()
        True
    """
    check_paths(n_paths)  # before the leaves below are allocated
    # one backward pass per run: with several strikes or flags it summed their greeks
    check_single("strike", strike, "for pathwise greeks (one call per strike)")
    is_call = call_flag(is_call)
    if chunk_size is None:
        chunk_size = graph_chunk_size(n_steps)
    if scheme not in ("qe", "euler"):
        raise ValueError(f"scheme must be 'qe' or 'euler', got {scheme!r}")
    # one number each, by name, before they are compared or copied into the leaves: float()
    # took spot="100" as 100 and named no input for None or several values, and text, None or
    # several values of rho failed in the comparison below ("'<' not supported ...")
    values = {"spot": spot, "v0": v0, "kappa": kappa, "theta": theta, "sigma": sigma, "rho": rho}
    values = {name: real_number(name, value) for name, value in values.items()}
    rho, v0 = values["rho"], values["v0"]
    if scheme == "euler" and not -1 < rho < 1:  # drho: d sqrt(1 - rho^2) / d rho is infinite
        raise ValueError(f"rho must be in (-1, 1) for the Euler greeks (drho is infinite at "
                         f"+-1), got {rho}")  # fmt: skip
    if scheme == "euler" and v0 == 0.0:
        # the step's sqrt(v0 dt) has an infinite slope at 0, so its pathwise dv0 loses the
        # diffusion's part: 47 +- 1.6 against the discretised price's 64 (QE: 64.1 +- 1.7)
        raise ValueError(
            "v0 must be > 0 for the Euler greeks (sqrt(v0) has an infinite slope "
            "at 0, which biases dv0); use scheme='qe' where sigma^2 > 3 kappa theta"
        )
    if scheme == "qe" and v0 == 0.0:
        _check_qe_start(values["kappa"], values["theta"], values["sigma"])
    # one leaf per path for each input differentiated (the model parameters only under Euler)
    names = ("spot", "v0", *(MODEL_PARAMETERS if scheme == "euler" else ()))
    leaves = {name: torch.full((n_paths,), values[name], dtype=DEFAULT_DTYPE,
                               requires_grad=True) for name in names}  # fmt: skip
    chunks = simulate.heston_chunks(
        n_paths, n_steps, **(values | leaves), maturity=maturity, rate=rate, dividend=dividend,
        scheme=scheme, antithetic=antithetic, generator=generator, chunk_size=chunk_size,
    )  # fmt: skip
    df = discount_factor(rate, maturity)
    moments = [Moments() for _ in range(1 + len(names))]
    with torch.enable_grad():  # the greeks need the graph even when called under no_grad
        for where, paths in chunks:
            y = payoffs.european(paths.spot, strike=strike, is_call=is_call) * df  # (C,)
            grads = torch.autograd.grad(y.sum(), tuple(leaves.values()))  # (N,) each
            for m, sample in zip(moments, (y, *(g[where] for g in grads)), strict=True):
                m.add(shape_samples(sample, None, antithetic)[0], None)
    return HestonPathwiseGreeks(*(_finish(m, n_paths) for m in moments))


def _check_qe_start(kappa: float, theta: float, sigma: float) -> None:
    """Refuse ``v0 = 0`` where QE's first step takes its quadratic branch (``psi = sigma^2 /
    (2 kappa theta) <= PSI_C`` at ``v = 0``). Its log-spot diffusion ``sqrt(K3 v0 + K4 v')`` then
    has the slope ``K3 / (2 sqrt(K4 v'))`` in ``v0``, with ``v' = a (b + Z)^2``: like ``1 /
    |b + Z|``, whose mean is infinite, so the samples of dv0 have no mean (Cauchy-like: 8 seeds
    of 8192 paths gave -7.5 +- 79 to 93 +- 36 for a semi-analytic 67.6). Where ``psi > PSI_C``
    the exponential branch's ``v'`` has a density at 0 and the samples a mean (the tests' case).
    A small positive ``v0`` bounds the slope (1e-6: 64 to 74 +- 5 over the same seeds)."""
    if sigma * sigma <= PSI_C * 2.0 * kappa * theta:
        raise ValueError(
            f"v0 must be > 0 for the QE greeks where sigma^2 <= 3 kappa theta (here "
            f"{sigma * sigma:.4g} <= {3.0 * kappa * theta:.4g}): the first step's diffusion has "
            "an infinite slope at v0 = 0 and dv0 no finite mean; use a small positive v0"
        )


def _finish(moments: Moments, n_paths: int) -> MCResult:
    return MCResult(*(f.squeeze(-1) for f in moments.result(None, 0.95, n_paths)[:4]), n_paths)
