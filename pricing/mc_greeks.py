"""Pathwise Monte Carlo greeks by autograd under Heston (QE scheme).

The Heston counterpart of :func:`pricing.mc_exotics.bs_pathwise_greeks`: each path gets its own
copy of ``spot`` and ``v0`` as a leaf tensor, so one backward pass through the simulated paths gives
every path's derivative and hence a standard error.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pricing import payoffs, simulate
from pricing._mc_stats import MCResult, Moments, shape_samples
from pricing._simulate_checks import check_paths
from pricing._typing import DEFAULT_DTYPE

__all__ = ["HestonPathwiseGreeks", "heston_pathwise_greeks"]


class HestonPathwiseGreeks(NamedTuple):
    """Price, delta and initial-variance sensitivity estimated from the same Heston paths.

    Attributes:
        price: the option price.
        delta: ``dV/dspot`` with the variance held fixed (as :func:`pricing.heston.delta`).
        dv0: ``dV/dv0``, per unit of initial *variance*; the sensitivity to the initial
            volatility ``sqrt(v0)`` is ``2 sqrt(v0) dv0``.

    Shape:
        Each field is an ``MCResult`` whose tensors are scalars.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> r = heston_pathwise_greeks(spot=100.0, strike=100.0, maturity=1.0, v0=0.04,
        ...                            kappa=1.5, theta=0.04, sigma=0.3, rho=-0.7,
        ...                            n_paths=4096, n_steps=8, generator=g)
        >>> r._fields
        ('price', 'delta', 'dv0')
        >>> bool(r.dv0.price > 0)  # a call gains value when the initial variance rises
        True
    """

    price: MCResult
    delta: MCResult
    dv0: MCResult


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
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> HestonPathwiseGreeks:
    """Pathwise delta and ``dV/dv0`` of a European option under Heston, by autograd through QE.

    The paths come from :func:`pricing.simulate.heston` (Andersen's QE scheme, float64, eager).
    The estimates are the derivatives of the discretised model's price: the pathwise method is
    unbiased for payoffs Lipschitz in ``S_T`` (calls, puts), apart from the QE sampler's switch
    between its quadratic and exponential branches at ``psi = 1.5``, where ``v(t + dt)`` jumps
    with ``v0`` and the jump is not seen by the derivative; that bias, like the scheme's own,
    shrinks with the step. Autograd keeps each chunk's graph (about 30 float64 numbers per path
    and step); ``chunk_size`` bounds it.

    Args:
        spot: spot price, > 0.
        strike: strike.
        maturity: years.
        v0: initial variance, >= 0.
        kappa: mean-reversion speed, > 0.
        theta: long-run variance, > 0.
        sigma: volatility of variance, > 0.
        rho: spot/variance correlation in [-1, 1].
        rate: continuously compounded rate.
        dividend: continuously compounded dividend yield.
        is_call: call (True) or put (False).
        n_paths: number of paths (even with ``antithetic``).
        n_steps: QE time steps.
        antithetic: antithetic pairs.
        generator: random source.
        chunk_size: paths per chunk; the result does not depend on it.

    Returns:
        ``HestonPathwiseGreeks(price, delta, dv0)``.

    Raises:
        ValueError: naming the field of an invalid input.

    References:
        Broadie and Glasserman (1996), "Estimating security price derivatives using simulation",
        Management Science 42(2); Glasserman (2004), section 7.2 (pathwise estimates); Andersen
        (2008), J. Comput. Finance 11(3) (QE scheme).

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
    s0 = torch.full((n_paths,), float(spot), dtype=DEFAULT_DTYPE, requires_grad=True)
    var0 = torch.full((n_paths,), float(v0), dtype=DEFAULT_DTYPE, requires_grad=True)
    chunks = simulate.heston_chunks(
        n_paths, n_steps, spot=s0, v0=var0, kappa=kappa, theta=theta, sigma=sigma, rho=rho,
        maturity=maturity, rate=rate, dividend=dividend, antithetic=antithetic,
        generator=generator, chunk_size=chunk_size,
    )  # fmt: skip
    df = math.exp(-rate * maturity)
    moments = [Moments() for _ in HestonPathwiseGreeks._fields]
    with torch.enable_grad():  # the greeks need the graph even when called under no_grad
        for where, paths in chunks:
            y = payoffs.european(paths.spot, strike=strike, is_call=is_call) * df  # (C,)
            d_spot, d_v0 = torch.autograd.grad(y.sum(), (s0, var0))  # (N,) each
            for m, sample in zip(moments, (y, d_spot[where], d_v0[where]), strict=True):
                m.add(shape_samples(sample, None, antithetic)[0], None)
    return HestonPathwiseGreeks(*(_finish(m, n_paths) for m in moments))


def _finish(moments: Moments, n_paths: int) -> MCResult:
    return MCResult(*(f.squeeze(-1) for f in moments.result(None, 0.95, n_paths)[:4]), n_paths)
