"""Counter-based normals (Philox-4x32-10 and Box-Muller) for accelerators, and the Triton kernels
that draw them (run on CUDA; on the CPU only under ``TRITON_INTERPRET=1`` with Triton installed)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from pricing import _philox, _triton_paths, simulate
from pricing._mc_random import NormalSource
from pricing._qe_fused import step_constants
from pricing._simulate_steps import PSI_C, HestonStep, heston_qe_step

CPU = torch.device("cpu")
K_SE = 4.0  # statistical checks: a false alarm every ~16,000 runs per check
HESTON = {"spot": 100.0, "v0": 0.04, "kappa": 1.5, "theta": 0.06, "sigma": 0.9, "rho": -0.7,
          "maturity": 1.0}  # fmt: skip


def test_philox_matches_the_published_known_answers(reference_table) -> None:
    for row in reference_table("philox_kat.csv").itertuples():
        word = lambda name, row=row: torch.tensor([int(getattr(row, name), 16)])  # noqa: E731
        counter = tuple(word(f"counter{i}") for i in range(4))
        key = (int(row.key0, 16), int(row.key1, 16))
        out = _philox.philox4x32(counter, key, rounds=row.rounds)
        assert [f"{int(w):08x}" for w in out] == [getattr(row, f"out{i}") for i in range(4)], (
            row.case_id
        )


def test_uniforms_are_inside_the_open_interval_and_use_23_bits() -> None:
    bits = torch.tensor([0, 511, 512, 2**31, 2**32 - 1])
    for dtype in (torch.float32, torch.float64):
        u = _philox.uniform_from_bits(bits, dtype)
        assert torch.all((u > 0) & (u < 1))
        assert u[0] == u[1] < u[2]  # the low 9 bits are dropped
        assert u[3].item() == 0.5 + 2.0**-24


def _normals(seed: int, start: int, units: int, steps: int = 9, factors: int = 2,
             dtype: torch.dtype = torch.float64) -> torch.Tensor:  # fmt: skip
    return _philox.counter_normals(seed, start, units, steps, factors, dtype=dtype, device=CPU)


def test_counter_normals_depend_on_the_unit_and_index_alone() -> None:
    whole = _normals(5, 0, 3000)
    parts = torch.cat([_normals(5, 0, 1024), _normals(5, 1024, 1000), _normals(5, 2024, 976)], -1)
    assert torch.equal(whole, parts)
    # more steps extend each unit's sequence: the first steps are the same numbers
    assert torch.equal(_normals(5, 0, 3000, steps=20)[:9], whole)
    assert not torch.equal(_normals(6, 0, 3000), whole)


def test_float32_and_float64_normals_agree_to_rounding() -> None:
    wide, narrow = _normals(8, 0, 4096), _normals(8, 0, 4096, dtype=torch.float32)
    torch.testing.assert_close(narrow.double(), wide, rtol=0, atol=5e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_normals_are_the_float32_ones_rounded(dtype: torch.dtype) -> None:
    # 2^24 overflowed float16 in the uniforms: every normal was NaN
    half = _normals(3, 0, 512, dtype=dtype)
    assert half.dtype == dtype
    assert torch.equal(half, _normals(3, 0, 512, dtype=torch.float32).to(dtype))


def test_the_qe_kernel_is_used_for_float32_and_float64_only() -> None:
    cuda = torch.device("cuda")
    installed = _triton_paths.INSTALLED
    assert _triton_paths.available(cuda, torch.float32) == installed
    assert _triton_paths.available(cuda, torch.float64) == installed
    assert not _triton_paths.available(cuda, torch.float16)
    assert not _triton_paths.available(CPU, torch.float32)


def test_counter_normals_are_standard_normal_and_uncorrelated() -> None:
    z = _normals(2024, 0, 200_000, steps=3, factors=2)  # (3, 2, U): lanes of 6 = 4 + 2 normals
    n = z.shape[-1]
    flat = z.reshape(6, n)
    assert torch.all(flat.mean(-1).abs() <= K_SE / math.sqrt(n))
    # the variance of z^2 is 2: the sample variance's standard error is sqrt(2 / n)
    assert torch.all((flat.var(-1) - 1).abs() <= K_SE * math.sqrt(2 / n))
    corr = torch.corrcoef(flat)
    off = corr[~torch.eye(6, dtype=torch.bool)]
    assert torch.all(off.abs() <= K_SE / math.sqrt(n)), corr
    # neighbouring units (consecutive counters) are independent too
    neighbours = torch.corrcoef(torch.stack([flat[0, :-1], flat[0, 1:]]))[0, 1]
    assert abs(neighbours) <= K_SE / math.sqrt(n)
    # the tails: P(|z| > 3) = 0.0027
    tail, p = (flat.abs() > 3).double().mean().item(), 2 * 0.5 * math.erfc(3 / math.sqrt(2))
    assert abs(tail - p) <= K_SE * math.sqrt(p * (1 - p) / flat.numel())


def _triton_device() -> torch.device:
    """CUDA where present; the CPU under Triton's interpreter; else the test is skipped."""
    if not _triton_paths.INSTALLED:
        pytest.skip("Triton is not installed")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return CPU
    pytest.skip("no CUDA (set TRITON_INTERPRET=1 to run the kernels on the CPU)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 2), (3, 1), (4, 2), (1, 1)])
def test_triton_normals_are_the_counter_normals(dtype: torch.dtype, shape: tuple) -> None:
    device = _triton_device()
    steps, factors = shape
    seed = 2**40 + 12345  # both key words in use
    got = _triton_paths.normals(seed, 1024, 300, steps, factors, dtype=dtype, device=device)
    expected = _philox.counter_normals(seed, 1024, 300, steps, factors, dtype=dtype, device=CPU)
    atol = 1e-5 if dtype == torch.float32 else 1e-12  # the GPU's log/sin/cos round differently
    torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=atol)


def test_triton_qe_paths_refuse_outputs_they_cannot_write_by_rows() -> None:
    device = _triton_device()
    kind = {"dtype": torch.float64, "device": device}
    steps = HestonStep.build(0.1, kappa=1.5, theta=0.04, sigma=0.9, rho=-0.7, drift=0.0)
    constants = step_constants(steps, **kind).expand(3, 11)
    s0, v0 = torch.full((8,), 100.0, **kind), torch.full((8,), 0.04, **kind)
    transposed = torch.empty(8, 4, **kind).T  # (4, 8), not contiguous
    with pytest.raises(ValueError, match="contiguous"):
        _triton_paths.qe_paths(s0, v0, constants, transposed, torch.empty(4, 8, **kind), seed=1,
                               first_path=0, antithetic=False, psi_c=PSI_C)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("n_steps", [7, 8])
@pytest.mark.parametrize("sigma", [0.9, 1e-6])
def test_triton_qe_paths_are_the_eager_steps_on_the_counter_normals(
    dtype: torch.dtype, antithetic: bool, n_steps: int, sigma: float
) -> None:
    # sigma 1e-6: terms of order rho v / sigma that cancel; rounded apart, the kernel's float32
    # spots and the eager step's differed by up to 3.3 (of 100)
    device = _triton_device()
    kind = {"dtype": dtype, "device": device}
    n_cols, first = 300, 2048
    steps = [HestonStep.build(0.1, kappa=1.5, theta=0.04, sigma=sigma, rho=-0.7, drift=0.02)
             for _ in range(n_steps)]  # fmt: skip
    constants = torch.stack([step_constants(c, **kind) for c in steps])  # (T, 11)
    s0, v0 = torch.full((n_cols,), 100.0, **kind), torch.full((n_cols,), 0.04, **kind)
    spot, var = torch.empty(n_steps + 1, n_cols, **kind), torch.empty(n_steps + 1, n_cols, **kind)
    _triton_paths.qe_paths(s0, v0, constants, spot, var, seed=99, first_path=first,
                           antithetic=antithetic, psi_c=PSI_C)  # fmt: skip
    scale = 2 if antithetic else 1
    z = _philox.counter_normals(99, first // scale, n_cols // scale, n_steps, 2, dtype=dtype,
                                device=CPU)  # fmt: skip
    if antithetic:
        z = torch.stack((z, -z), dim=-1).flatten(-2)
    x, v = torch.zeros(n_cols, dtype=dtype), v0.cpu()
    expected_spot, expected_var = [s0.cpu()], [v]
    for i, step in enumerate(steps):
        x, v = heston_qe_step(x, v, z[i, 0], z[i, 1], step)
        expected_spot.append(100.0 * x.exp())
        expected_var.append(v)
    # float32: the kernel's erf tail against the eager step's exact one moves variances near 0
    rtol, var_rtol, var_atol = (5e-5, 5e-4, 1e-7) if dtype == torch.float32 else (1e-12,) * 3
    torch.testing.assert_close(spot.cpu(), torch.stack(expected_spot), rtol=rtol, atol=0)
    torch.testing.assert_close(var.cpu(), torch.stack(expected_var), rtol=var_rtol, atol=var_atol)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("antithetic", [False, True])
def test_cuda_paths_use_counter_normals_and_do_not_depend_on_chunks(antithetic: bool) -> None:
    device = torch.device("cuda")
    source = NormalSource(n_paths=5000, n_steps=9, n_factors=2, seed=77, antithetic=antithetic,
                          sobol=False, dtype=torch.float64, device=device)  # fmt: skip
    scale = 2 if antithetic else 1
    expected = _philox.counter_normals(77, 1024 // scale, 3976 // scale, 9, 2,
                                       dtype=torch.float64, device=CPU)  # fmt: skip
    if antithetic:
        expected = torch.stack((expected, -expected), dim=-1).flatten(-2)
    torch.testing.assert_close(source.draw(1024, 5000).cpu(), expected, rtol=0, atol=1e-12)

    def paths(compile: bool, chunk_size: int | None, dtype: torch.dtype) -> simulate.HestonPaths:
        return simulate.heston(5000, 24, **HESTON, antithetic=antithetic, device=device,
                               dtype=dtype, chunk_size=chunk_size, compile=compile,
                               generator=torch.Generator(device=device).manual_seed(4))  # fmt: skip

    # float32 compiled against eager: the kernel's erf tail (see the test above), over 24 steps
    for dtype, rtol, var_rtol, var_atol in ((torch.float64, 1e-12, 1e-12, 1e-12),
                                            (torch.float32, 2e-4, 1e-3, 1e-7)):  # fmt: skip
        whole = paths(False, None, dtype)
        for compile, chunk in ((False, 1024), (True, None), (True, 2048)):
            other = paths(compile, chunk, dtype)
            torch.testing.assert_close(other.spot, whole.spot, rtol=rtol, atol=0)
            torch.testing.assert_close(other.variance, whole.variance, rtol=var_rtol,
                                       atol=var_atol)  # fmt: skip
