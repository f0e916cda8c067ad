"""Chunk-invariant normal draws for the path simulators.

Paths are grouped in fixed blocks of :data:`BLOCK_SIZE`. On the CPU, pseudo-random normals of block
``b`` come from their own ``torch.Generator`` seeded with a SplitMix64 hash of (base seed, ``b``).
On accelerators they are counter-based (:mod:`pricing._philox`: Philox-4x32-10 at counter (unit,
index), drawn by one Triton kernel on CUDA): a thousand small generators' draws, one launch each,
had left a GPU idle (1% of its ``torch.randn`` rate). Sobol
points come from :data:`SOBOL_REPLICATES` independently scrambled sequences (randomised QMC), each
serving a contiguous range of paths (:func:`sobol_replicate_size`); path ``i`` of replicate ``r``
is point ``i`` of sequence ``r``. Either way the normals of a path depend only on the base seed and
the path index, so simulating in chunks gives exactly the numbers of simulating all paths at once.
Antithetic pairs are adjacent paths ``(2i, 2i + 1)`` with opposite normals.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from pricing._philox import counter_normals
from pricing._triton_paths import available as triton_available
from pricing._triton_paths import normals as triton_normals
from pricing._validation import check_positive_int

__all__ = [
    "BLOCK_SIZE",
    "GRAPH_PATH_STEPS",
    "SOBOL_REPLICATES",
    "NormalSource",
    "base_seed",
    "brownian_bridge",
    "chunk_bounds",
    "derive_seed",
    "drawn_chunks",
    "drawn_slabs",
    "graph_chunk_size",
    "sobol_replicates",
    "step_normals",
]

BLOCK_SIZE = 1024
"""Paths per random block; chunk sizes are rounded up to a multiple of it."""

_AUTO_CHUNK_ELEMENTS = 2**23
"""Normals per chunk when ``chunk_size`` is None (64 MiB in float64)."""

_AUTO_CHUNK_ELEMENTS_ACCELERATOR = 2**26
"""The same on accelerators (512 MiB in float64): a chunk of the CPU's size fills a GPU's
multiprocessors for too short a time to pay for its launches."""

GRAPH_PATH_STEPS = 2**20
"""Path-steps per chunk for runs that keep an autograd graph (:func:`graph_chunk_size`)."""

_SLAB_ELEMENTS = 2**20
"""Normals per slab in :func:`drawn_slabs` (4 MiB in float32): small enough to stay in cache."""

SOBOL_REPLICATES = 16
"""Independently scrambled Sobol sequences per simulation. The points of one scrambled sequence
are not independent, so the i.i.d. standard error is meaningless for them (10 to 180 times too
large here); the spread of the replicates' estimates gives an honest one
(:func:`pricing.monte_carlo.price_paths`), at the cost of sequences of ``n / 16`` points."""

_SOBOL_MAX_DIMENSION = 21201
_MASK64 = (1 << 64) - 1


def sobol_replicates(n_paths: int, antithetic: bool) -> list[int]:
    """Where each Sobol replicate starts, in units (paths, or antithetic pairs), and where the
    last ends: :data:`SOBOL_REPLICATES` + 1 numbers; the sizes differ by at most one.

    Examples:
        >>> sobol_replicates(4096, False)[:3], sobol_replicates(4096, True)[-1]
        ([0, 256, 512], 2048)
        >>> sizes = np.diff(sobol_replicates(241, False))
        >>> int(sizes.min()), int(sizes.max())
        (15, 16)
    """
    units = -(-n_paths // (2 if antithetic else 1))
    size, extra = divmod(units, SOBOL_REPLICATES)
    sizes = [size + 1] * extra + [size] * (SOBOL_REPLICATES - extra)
    return [0, *np.cumsum(sizes).tolist()]


def derive_seed(base: int, index: int) -> int:
    """SplitMix64 hash of ``base + index``: independent-looking 63-bit seeds for blocks.

    References:
        Steele, Lea and Flood (2014), "Fast splittable pseudorandom number generators", OOPSLA.
    """
    z = (base + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def base_seed(generator: torch.Generator | None) -> int:
    """Draw one 62-bit seed from ``generator`` (fresh OS entropy when None); no global RNG state."""
    if generator is None:
        return secrets.randbits(62)
    draw = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
    return int(draw.item())


def graph_chunk_size(n_steps: int) -> int:
    """Paths per chunk for a run that keeps each chunk's autograd graph (pathwise greeks): about
    :data:`GRAPH_PATH_STEPS` path-steps, at least 4,096 paths.

    The simulators' default (four times as many path-steps) made graphs of fresh memory that
    took 1.7-3 times the time and 1.9-3 times the memory here (Heston at 64 and 252 steps, GBM
    Asians at 64; 16,384 and 4,096 paths per chunk ran fastest).

    Examples:
        >>> graph_chunk_size(64), graph_chunk_size(252), graph_chunk_size(1000)
        (16384, 4161, 4096)
    """
    return max(4096, GRAPH_PATH_STEPS // max(int(n_steps), 1))


def chunk_bounds(
    n_paths: int, chunk_size: int | None, per_path: int, *, accelerator: bool = False
) -> list[tuple[int, int]]:
    """Split ``range(n_paths)`` into block-aligned ``(start, stop)`` chunks.

    Args:
        n_paths: number of paths.
        chunk_size: paths per chunk, rounded up to a multiple of :data:`BLOCK_SIZE`; None picks a
            size that keeps about 2**23 normals per chunk (2**26 on an ``accelerator``).
        per_path: normals per path (steps times factors), used for the automatic size.

    Examples:
        >>> chunk_bounds(5000, None, 504), chunk_bounds(5000, 1000, 504)[:2]
        ([(0, 5000)], [(0, 1024), (1024, 2048)])
        >>> len(chunk_bounds(10**6, None, 504)), len(chunk_bounds(10**6, None, 504, accelerator=True))
        (58, 8)
    """
    if chunk_size is None:
        elements = _AUTO_CHUNK_ELEMENTS_ACCELERATOR if accelerator else _AUTO_CHUNK_ELEMENTS
        chunk_size = max(elements // max(per_path, 1), 1)
    else:  # by name: 2.5 or "1024" failed in range() or '<', naming nothing
        check_positive_int("chunk_size", chunk_size)
    size = -(-chunk_size // BLOCK_SIZE) * BLOCK_SIZE
    return [(start, min(start + size, n_paths)) for start in range(0, n_paths, size)]


@dataclass(frozen=True)
class NormalSource:
    """Standard normals for paths ``[start, stop)`` of one simulation, independent of chunking.

    Attributes:
        n_paths: total number of paths of the simulation.
        n_steps: time steps T.
        n_factors: normals per step F.
        seed: base seed.
        antithetic: adjacent paths ``2i, 2i + 1`` get opposite normals.
        sobol: scrambled Sobol points mapped by the inverse normal CDF instead of pseudo-random ones.
        dtype: floating dtype of the normals.
        device: device of the normals.
        times: the time grid (T+1,); with ``sobol``, the points are mapped to the Brownian
            increments by Brownian-bridge construction (the first Sobol dimensions fix the
            coarsest features of the path). None keeps the step-major order.
    """

    n_paths: int
    n_steps: int
    n_factors: int
    seed: int
    antithetic: bool
    sobol: bool
    dtype: torch.dtype
    device: torch.device
    times: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for flag in ("antithetic", "sobol"):  # "no" was a true string: antithetic paths
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise TypeError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.antithetic and self.n_paths % 2:
            raise ValueError(f"n_paths must be even with antithetic=True, got {self.n_paths}")
        dim = self.n_steps * self.n_factors
        if self.sobol and dim > _SOBOL_MAX_DIMENSION:
            raise ValueError(
                f"n_steps={self.n_steps} needs {dim} Sobol dimensions, more than the "
                f"{_SOBOL_MAX_DIMENSION} torch supports; use sobol=False or fewer steps"
            )

    def chunk_bounds(self, chunk_size: int | None) -> list[tuple[int, int]]:
        """:func:`chunk_bounds` of this simulation's paths on its device."""
        return chunk_bounds(self.n_paths, chunk_size, self.n_steps * self.n_factors,
                            accelerator=self.device.type != "cpu")  # fmt: skip

    @property
    def draw_dtype(self) -> torch.dtype:
        """The dtype pseudo-random normals are drawn in before they are widened to ``dtype``.

        float32 for float64 on the CPU: torch's CPU generator draws float64 normals five times
        slower than float32 ones (a scalar Box-Muller against a vectorised one), and the float32
        normals come from 24-bit uniforms, in the class of QuantLib's Mersenne-Twister normals
        (32-bit uniforms); their tails end at 5.8 standard deviations instead of 8.6 (a
        probability of 8e-9 per draw). float32 and float64 runs of one seed share the normals.
        """
        if self.device.type == "cpu" and self.dtype == torch.float64:
            return torch.float32
        return self.dtype

    def draw(self, start: int, stop: int) -> torch.Tensor:
        """Normals for paths ``[start, stop)``; ``start`` must be block-aligned.

        Shape:
            Output: (T, F, stop - start), time-major so that each step's slice is contiguous.
        """
        if start % BLOCK_SIZE:
            raise ValueError(f"chunk start {start} is not a multiple of {BLOCK_SIZE}")
        scale = 2 if self.antithetic else 1
        base = self._draw_units(start // scale, -(-stop // scale))
        if self.antithetic:
            base = torch.stack((base, -base), dim=-1).flatten(-2)  # (T, F, 2U)
        return base[..., : stop - start]

    def _draw_units(self, start: int, stop: int) -> torch.Tensor:
        if self.sobol:
            return self._sobol(start, stop)
        if self.device.type != "cpu":
            draw = triton_normals if triton_available(self.device) else counter_normals
            return draw(self.seed, start, stop - start, self.n_steps, self.n_factors,
                        dtype=self.dtype, device=self.device)  # fmt: skip
        out = torch.empty(
            (self.n_steps, self.n_factors, stop - start), dtype=self.dtype, device=self.device
        )
        self._fill_units(out, self._block_generators(start, stop))
        return out

    def _block_generators(self, start: int, stop: int) -> list[torch.Generator]:
        """One freshly seeded generator per random block of units ``[start, stop)``."""
        units_per_block = BLOCK_SIZE // (2 if self.antithetic else 1)
        first = start // units_per_block
        gens = []
        for block in range(first, -(-stop // units_per_block)):
            gen = torch.Generator(device=self.device)
            gens.append(gen.manual_seed(derive_seed(self.seed, block)))
        return gens

    def _fill_units(
        self, out: torch.Tensor, gens: list[torch.Generator], stage: torch.Tensor | None = None
    ) -> None:
        """Fill ``out`` (S, F, U) with the next S steps of each block's generator.

        Each whole block is drawn into its contiguous slice of ``stage`` (B, S', F, U / B) with
        S' >= S, then all blocks are moved into ``out`` by one strided copy; without ``stage``
        (or for a last, partial block) each block is drawn into a temporary. A partial block is
        drawn whole and cut: torch's CPU ``normal_`` redraws the last 16 values of a call whose
        size is not a multiple of 16, so a partial block's numbers depended on how its steps
        were split into slabs (that is, on the chunk size).
        """
        units_per_block = BLOCK_SIZE // (2 if self.antithetic else 1)
        n_steps, n_factors, n_units = out.shape
        whole = 0
        if stage is not None:
            whole = n_units // units_per_block
            blocks = stage[:, :n_steps] if n_steps < stage.shape[1] else stage
            for block, gen in zip(blocks.unbind(0), gens, strict=False):  # whole blocks only
                block.normal_(generator=gen)
            split = out[..., : whole * units_per_block].view(
                n_steps, n_factors, whole, units_per_block
            )
            split.copy_(stage[:, :n_steps].permute(1, 2, 0, 3))
        for j in range(whole, len(gens)):
            lo, hi = j * units_per_block, min((j + 1) * units_per_block, n_units)
            out[..., lo:hi] = torch.randn(
                (n_steps, n_factors, units_per_block),
                generator=gens[j],
                dtype=self.draw_dtype,
                device=self.device,
            )[..., : hi - lo]

    def slabs(self, start: int, stop: int, *, prefetch: bool = False) -> Iterator[torch.Tensor]:
        """Normals for paths ``[start, stop)``, a few steps at a time (the slabs of :func:`drawn_slabs`).

        The numbers are those of :meth:`draw` split along the step axis (each block's CPU
        generator continues where the previous slab stopped). On the CPU with pseudo-random
        numbers each slab is written into a reused buffer of about 2**20 normals, which stays
        in cache and spares the page faults of a fresh (T, F, C) tensor; a yielded slab is valid
        until the next one is requested. Sobol points and accelerators yield one slab of all
        steps. ``prefetch`` draws the next slab in a background thread while the caller uses
        the current one.

        Shape:
            Each slab: (S, F, stop - start), consecutive steps from 0 to T.
        """
        if self.sobol or self.device.type != "cpu":
            yield self.draw(start, stop)
            return
        if start % BLOCK_SIZE:
            raise ValueError(f"chunk start {start} is not a multiple of {BLOCK_SIZE}")
        scale = 2 if self.antithetic else 1
        unit_start, unit_stop = start // scale, -(-stop // scale)
        gens = self._block_generators(unit_start, unit_stop)
        units = unit_stop - unit_start
        per_slab = max(1, min(self.n_steps, _SLAB_ELEMENTS // (self.n_factors * units * scale)))
        shape = (per_slab, self.n_factors, units)
        buffers = [torch.empty(shape, dtype=self.dtype) for _ in range(2 if prefetch else 1)]
        units_per_block = BLOCK_SIZE // scale
        stage_shape = (units // units_per_block, per_slab, self.n_factors, units_per_block)
        stages = [torch.empty(stage_shape, dtype=self.draw_dtype) for _ in buffers]
        bounds = [(t, min(t + per_slab, self.n_steps)) for t in range(0, self.n_steps, per_slab)]

        def fill(k: int) -> torch.Tensor:
            t0, t1 = bounds[k]
            out = buffers[k % len(buffers)][: t1 - t0]
            self._fill_units(out, gens, stages[k % len(buffers)])
            return out

        def expand(base: torch.Tensor) -> torch.Tensor:
            if not self.antithetic:
                return base
            return torch.stack((base, -base), dim=-1).flatten(-2)[..., : stop - start]

        if not prefetch:
            for k in range(len(bounds)):
                yield expand(fill(k))
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(fill, 0)
            for k in range(len(bounds)):
                base = pending.result()
                if k + 1 < len(bounds):
                    pending = pool.submit(fill, k + 1)
                yield expand(base)

    def _sobol(self, start: int, stop: int) -> torch.Tensor:
        """Points of units ``[start, stop)``, from the scrambled sequence of each one's replicate."""
        bounds = sobol_replicates(self.n_paths, self.antithetic)
        parts = []
        for replicate, (first, end) in enumerate(itertools.pairwise(bounds)):
            lo, hi = max(start, first), min(stop, end)
            if lo >= hi:
                continue
            engine = torch.quasirandom.SobolEngine(
                self.n_steps * self.n_factors, scramble=True,
                seed=derive_seed(self.seed, replicate) % (2**31),
            )  # fmt: skip
            if lo > first:
                engine.fast_forward(lo - first)
            parts.append(engine.draw(hi - lo, dtype=torch.float64))
        points = torch.cat(parts)  # (U, T*F)
        eps = torch.finfo(torch.float64).eps
        normals = torch.special.ndtri(points.clamp(eps, 1.0 - eps))
        normals = normals.T.reshape(self.n_steps, self.n_factors, stop - start)  # (T, F, U)
        if self.times is not None:
            normals = brownian_bridge(normals, self.times)
        return normals.to(dtype=self.dtype, device=self.device)


def drawn_chunks(
    source: NormalSource, chunk_size: int | None
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(start, stop, normals)`` per chunk, drawing the next chunk's normals ahead.

    On CPU with ``torch.get_num_threads() >= 2`` the next chunk is drawn in a background thread
    while the caller simulates the current one (random-number generation is single-threaded, so
    this hides the simulation behind it); the numbers are the same either way.

    Shape:
        normals: (T, F, stop - start).
    """
    bounds = source.chunk_bounds(chunk_size)
    if len(bounds) < 2 or source.device.type != "cpu" or torch.get_num_threads() < 2:
        for start, stop in bounds:
            yield start, stop, source.draw(start, stop)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(source.draw, *bounds[0])
        for i, (start, stop) in enumerate(bounds):
            normals = pending.result()
            if i + 1 < len(bounds):
                pending = pool.submit(source.draw, *bounds[i + 1])
            yield start, stop, normals


def drawn_slabs(
    source: NormalSource, chunk_size: int | None, *, prefetch: bool = False
) -> Iterator[tuple[int, int, Iterator[torch.Tensor]]]:
    """Yield ``(start, stop, slabs)`` per chunk, ``slabs`` iterating over :meth:`NormalSource.slabs`.

    For step-by-step simulators: the normals of a chunk are never materialised at once. With
    ``prefetch``, on CPU with ``torch.get_num_threads() >= 2``, the next slab is drawn in a
    background thread while the caller simulates the current one; the numbers are the same either
    way. Only for callers whose steps are single-threaded kernels that release the GIL (the
    compiled QE step): eager steps are many small multi-threaded operations, whose OpenMP
    barriers the drawing thread stalls (eager Heston at 2 threads: 45M path-steps/s without,
    14M with).

    Shape:
        each slab: (S, F, stop - start), S consecutive steps.
    """
    prefetch = prefetch and source.device.type == "cpu" and torch.get_num_threads() >= 2
    for start, stop in source.chunk_bounds(chunk_size):
        yield start, stop, source.slabs(start, stop, prefetch=prefetch)


def step_normals(slabs: Iterator[torch.Tensor], *, copy: bool = False) -> Iterator[torch.Tensor]:
    """Each step's normals, in order, from the slabs of :meth:`NormalSource.slabs`.

    ``copy`` takes each slab out of the reused buffer first: needed when the caller's autograd
    graph keeps the normals beyond the next slab.

    Shape:
        each item: (F, C).
    """
    for slab in slabs:
        yield from (slab.clone() if copy else slab).unbind(0)


def _bridge_order(n_steps: int) -> list[tuple[int, int, int]]:
    """``(point, left, right)`` grid indices in Brownian-bridge order after the end point."""
    order, intervals = [], [(0, n_steps)]
    while intervals:
        nxt = []
        for left, right in intervals:
            if right - left > 1:
                mid = (left + right) // 2
                order.append((mid, left, right))
                nxt += [(left, mid), (mid, right)]
        intervals = nxt
    return order


def brownian_bridge(normals: torch.Tensor, times: tuple[float, ...]) -> torch.Tensor:
    """Map i.i.d. normals to standardised Brownian increments by Brownian-bridge construction.

    Normal ``k`` of each factor fixes the ``k``-th point in bridge order (the end point first,
    then midpoints of ever finer intervals), which concentrates the variance of the path in the
    first (best-distributed) Sobol dimensions. The output has the same law as the input.

    Shape:
        normals: (T, F, U). times: T+1 values. Output: (T, F, U), the increments
        ``(W(t_{i+1}) - W(t_i)) / sqrt(t_{i+1} - t_i)``.

    References:
        Glasserman (2004), Monte Carlo Methods in Financial Engineering, section 3.1.2 and
        section 5.5 (with quasi-random sequences).

    Examples:
        >>> z = torch.randn(4, 1, 3, dtype=torch.float64)
        >>> brownian_bridge(z, (0.0, 0.25, 0.5, 0.75, 1.0)).shape
        torch.Size([4, 1, 3])
    """
    n_steps = normals.shape[0]
    t = torch.tensor(times, dtype=normals.dtype, device=normals.device)
    w = normals.new_zeros((n_steps + 1, *normals.shape[1:]))  # (T+1, F, U)
    w[n_steps] = t[n_steps].sqrt() * normals[0]
    for k, (mid, left, right) in enumerate(_bridge_order(n_steps), start=1):
        span = float(t[right] - t[left])
        a, b = float(t[mid] - t[left]) / span, float(t[right] - t[mid]) / span
        w[mid] = b * w[left] + a * w[right] + (a * b * span) ** 0.5 * normals[k]
    return w.diff(dim=0) / t.diff().sqrt()[:, None, None]
