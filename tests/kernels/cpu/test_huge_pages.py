"""Zeroed CPU tensors in mappings of their own, advised to huge pages."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from server.kernels.cpu import huge_pages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_on() -> bool:
    try:
        text = THP.read_text()
    except OSError:
        return False
    return "[always]" in text or "[madvise]" in text


@pytest.mark.parametrize("shape", [(3, 5), 7, (0, 4), (2, 1 << 20)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.bfloat16])
def test_zeros_are_zero_contiguous_and_writable(shape, dtype: torch.dtype) -> None:
    t = huge_pages.zeros(shape, dtype)
    want = (shape,) if isinstance(shape, int) else shape
    assert tuple(t.shape) == want and t.dtype == dtype and t.is_contiguous()
    assert t.device.type == "cpu" and not t.any()
    t.fill_(3)
    assert int(t.sum()) == 3 * t.numel()


def test_large_buffers_start_on_a_huge_page_boundary() -> None:
    t = huge_pages.zeros((3, 1 << 20))  # 12 MiB
    assert t.data_ptr() % huge_pages.HUGE_PAGE_BYTES == 0


def test_a_view_keeps_the_mapping_alive() -> None:
    t = huge_pages.zeros((4, 1 << 20))
    view = t[2, 100:110]
    del t
    gc.collect()
    view.add_(2)
    assert float(view.sum()) == 20.0


def test_rejects_negative_sizes() -> None:
    with pytest.raises(ValueError, match="negative size"):
        huge_pages.zeros((4, -1))


@pytest.mark.skipif(not _thp_on(), reason="transparent huge pages are off on this machine")
def test_written_memory_lands_on_huge_pages() -> None:
    t = huge_pages.zeros(8 << 20, torch.uint8)
    t.fill_(1)
    assert huge_pages.huge_page_bytes(t) >= huge_pages.HUGE_PAGE_BYTES


def test_resident_bytes_count_written_pages_only() -> None:
    """A fresh mapping is the kernel's zero page until written (the kernel may merge it with a
    neighbouring mapping, so the test compares before and after)."""
    t = huge_pages.zeros(16 << 20, torch.uint8)
    before = huge_pages.resident_bytes(t)
    assert not t.any()  # reading maps no page of its own
    assert huge_pages.resident_bytes(t) - before < 1 << 20
    t.fill_(1)
    assert huge_pages.resident_bytes(t) - before >= 15 << 20
