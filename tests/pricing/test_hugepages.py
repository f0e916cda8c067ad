"""Huge-page buffers behave as torch.empty and outlive their first tensor through views."""

from __future__ import annotations

import gc
import mmap

import pytest
import torch

from pricing import _hugepages


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("numel", [12, _hugepages.MIN_BYTES // 4 + 5])  # below, above the cut
def test_empty_has_the_shape_dtype_and_memory_of_torch_empty(
    dtype: torch.dtype, numel: int
) -> None:
    rows = 3
    out = _hugepages.empty((rows, -(-numel // rows)), dtype=dtype)
    assert out.shape == (rows, -(-numel // rows)) and out.dtype == dtype and out.is_contiguous()
    out.copy_(torch.arange(out.numel(), dtype=dtype).view(out.shape))
    assert float(out[-1, -1]) == out.numel() - 1


def test_a_view_keeps_the_mapping_alive() -> None:
    base = _hugepages.empty((_hugepages.MIN_BYTES // 8,), dtype=torch.float64)
    base.fill_(2.5)
    view = base[-10:]
    del base
    gc.collect()
    view.add_(1.0)
    assert torch.equal(view, torch.full((10,), 3.5, dtype=torch.float64))


def test_accelerator_and_small_requests_are_plain_torch_empty() -> None:
    small = _hugepages.empty((4,), dtype=torch.float32, device="cpu")
    assert small.untyped_storage().resizable()  # the caching allocator's storage, not a mapping
    large = _hugepages.empty((_hugepages.MIN_BYTES,), dtype=torch.uint8)
    assert large.untyped_storage().resizable() != hasattr(mmap, "MADV_HUGEPAGE")  # Linux maps
    if torch.cuda.is_available():
        gpu = _hugepages.empty((_hugepages.MIN_BYTES,), dtype=torch.uint8, device="cuda")
        assert gpu.device.type == "cuda"
