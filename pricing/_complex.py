"""Complex arithmetic on pairs of real tensors ``(re, im)``.

Torch's complex kernels are not vectorised on CPU (a complex ``log`` costs about 100x a real one there),
so the Heston integrand is written with real tensors. Each function takes and returns ``(re, im)``
tuples; all are differentiable by autograd and work on any device.
"""

from __future__ import annotations

import torch

__all__ = ["Cx", "cadd", "cdiv", "cexp", "cexpm1", "cinv", "clog1p", "cmul", "cscale", "csqrt"]

Cx = tuple[torch.Tensor, torch.Tensor]
"""A complex number as its real and imaginary parts."""


def cadd(a: Cx, b: Cx) -> Cx:
    """``a + b``."""
    return a[0] + b[0], a[1] + b[1]


def cscale(a: Cx, c: torch.Tensor | float) -> Cx:
    """``c * a`` for a real ``c``."""
    return a[0] * c, a[1] * c


def cmul(a: Cx, b: Cx) -> Cx:
    """``a * b``."""
    return a[0] * b[0] - a[1] * b[1], a[0] * b[1] + a[1] * b[0]


def cdiv(a: Cx, b: Cx) -> Cx:
    """``a / b`` by ``a conj(b) / |b|^2`` (callers keep ``|b|`` within about 1e+-150)."""
    inv = 1.0 / (b[0] * b[0] + b[1] * b[1])
    return (a[0] * b[0] + a[1] * b[1]) * inv, (a[1] * b[0] - a[0] * b[1]) * inv


def cinv(a: Cx) -> Cx:
    """``1 / a`` by ``conj(a) / |a|^2`` (callers keep ``|a|`` within about 1e+-150)."""
    inv = 1.0 / (a[0] * a[0] + a[1] * a[1])
    return a[0] * inv, -a[1] * inv


def csqrt(a: Cx) -> Cx:
    """Principal square root (real part >= 0) without cancellation; 0 at ``a = 0`` (whose
    gradient is not finite)."""
    modulus = torch.hypot(a[0], a[1])
    root = torch.sqrt(0.5 * (modulus + a[0].abs()))
    # root is 0 only at a = 0 (else at least ~1e-162 in float64), where 0 / 0 made the part NaN
    other = 0.5 * a[1] / root.clamp_min(torch.finfo(root.dtype).tiny)
    sign = torch.where(a[1] < 0, -1.0, 1.0).to(root.dtype)
    nonneg = a[0] >= 0
    return torch.where(nonneg, root, other * sign), torch.where(nonneg, other, root * sign)


def cexp(a: Cx) -> Cx:
    """``exp(a)``."""
    scale = torch.exp(a[0])
    return scale * torch.cos(a[1]), scale * torch.sin(a[1])


def cexpm1(a: Cx) -> Cx:
    """``exp(a) - 1``, accurate for small ``a``."""
    half_sin = torch.sin(0.5 * a[1])
    re = torch.expm1(a[0]) * torch.cos(a[1]) - 2.0 * half_sin * half_sin
    return re, torch.exp(a[0]) * torch.sin(a[1])


def clog1p(a: Cx) -> Cx:
    """Principal ``log(1 + a)``, accurate for small ``a``."""
    re = 0.5 * torch.log1p(a[0] * (2.0 + a[0]) + a[1] * a[1])
    return re, torch.atan2(a[1], 1.0 + a[0])
