"""Chunk-invariant normal draws: slabs of steps give exactly the numbers of one whole draw."""

from __future__ import annotations

import pytest
import torch

from pricing import _mc_random, simulate
from pricing._mc_random import NormalSource

HESTON = {"spot": 100.0, "v0": 0.04, "kappa": 1.5, "theta": 0.06, "sigma": 1.0, "rho": -0.7,
          "maturity": 1.0}  # fmt: skip


def _source(antithetic: bool, dtype: torch.dtype, n_paths: int = 3072) -> NormalSource:
    return NormalSource(n_paths=n_paths, n_steps=37, n_factors=2, seed=11, antithetic=antithetic,
                        sobol=False, dtype=dtype, device=torch.device("cpu"))  # fmt: skip


@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# whole blocks; a last, partial block whose slabs hold a multiple of 16 normals (2900), and one
# whose slabs do not (2901: torch's normal_ then redraws the last 16, so the stream depended on
# the slab size until partial blocks were drawn whole)
@pytest.mark.parametrize("stop", [3072, 2900, 2901])
def test_slabs_concatenate_to_the_whole_draw(
    monkeypatch: pytest.MonkeyPatch, antithetic: bool, prefetch: bool, dtype: torch.dtype, stop: int
) -> None:
    monkeypatch.setattr(_mc_random, "_SLAB_ELEMENTS", 2**14)  # 2 or 4 steps per slab here
    source = _source(antithetic, dtype)
    slabs = [s.clone() for s in source.slabs(1024, stop, prefetch=prefetch)]  # reused buffers
    assert len(slabs) > 5
    assert torch.equal(torch.cat(slabs), source.draw(1024, stop))


def test_slab_start_must_be_block_aligned() -> None:
    with pytest.raises(ValueError, match="multiple of 1024"):
        next(_source(False, torch.float64).slabs(100, 3072))


def test_heston_paths_do_not_depend_on_the_slab_size(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator
    whole = simulate.heston(2048, 24, **HESTON, antithetic=True, generator=gen().manual_seed(3))
    monkeypatch.setattr(_mc_random, "_SLAB_ELEMENTS", 2**13)
    sliced = simulate.heston(2048, 24, **HESTON, antithetic=True, generator=gen().manual_seed(3))
    assert torch.equal(whole.spot, sliced.spot)
    assert torch.equal(whole.variance, sliced.variance)


def test_float64_normals_are_the_float32_draws_widened() -> None:
    # torch's CPU float64 normals are five times slower: float64 runs draw float32 and widen them
    wide, narrow = _source(False, torch.float64), _source(False, torch.float32)
    assert wide.draw_dtype == torch.float32
    assert torch.equal(wide.draw(1024, 2900), narrow.draw(1024, 2900).double())
    slabs = torch.cat([s.clone() for s in wide.slabs(0, 3072)])
    assert slabs.dtype == torch.float64 and torch.equal(slabs, narrow.draw(0, 3072).double())


@pytest.mark.parametrize("antithetic", [False, True])
def test_chunked_paths_equal_unchunked_ones_with_a_partial_last_block(antithetic: bool) -> None:
    # 1,500 paths of 400 steps: the last block is partial, and a chunk of 1,024 paths splits its
    # steps into other slabs than one chunk of all 1,500 (rows from 1,024 on used to differ)
    gen = torch.Generator
    kwargs = dict(**HESTON, antithetic=antithetic)
    whole = simulate.heston(1500, 400, **kwargs, generator=gen().manual_seed(1))
    chunked = simulate.heston(1500, 400, **kwargs, generator=gen().manual_seed(1), chunk_size=1024)
    assert torch.equal(whole.spot, chunked.spot)
    gbm = [simulate.gbm(3000, 1000, spot=100.0, volatility=0.2, maturity=1.0, chunk_size=size,
                        generator=gen().manual_seed(1)) for size in (None, 2048)]  # fmt: skip
    assert torch.equal(gbm[0], gbm[1])


@pytest.mark.parametrize("flag", ["antithetic", "sobol"])
@pytest.mark.parametrize("value", ["no", 1, None])
def test_the_path_flags_must_be_booleans(flag, value) -> None:
    # antithetic="no" is a true string: it simulated antithetic paths without a word
    from pricing import monte_carlo

    with pytest.raises(TypeError, match=f"{flag} must be True or False, got {value!r}"):
        monte_carlo.bs_european(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2,
                                n_paths=64, **{flag: value})  # fmt: skip
