"""`python -m benchmarks.memory_layout` runs end to end on a tiny model and writes its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import memory_layout
from server.kernels.cpu import huge_pages

pytestmark = pytest.mark.slow


def test_quick_run_times_every_variant_each_round(
    tiny_llama_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory_layout, "RESULTS", tmp_path)
    memory_layout.main(["--quick", "--rounds", "2", "--model", str(tiny_llama_path)])
    out = tmp_path / "memory_layout_cpu_quick.json"  # the full run's file stays as it was
    report = json.loads(out.read_text())
    steps = report["batch1_step_ms"]
    assert set(steps) == {"one allocation each", "one buffer, 4 KiB pages",
                          "one buffer, huge pages (engine)", "sum_gbs"}  # fmt: skip
    assert all(len(v) == 2 and min(v) > 0 for v in steps.values())
    kv = report["decode_attention_us"]
    cases = [f"{r}x{t}" for r, t in memory_layout.QUICK_KV_CASES]
    assert sorted(kv) == sorted(
        [f"{c} {n}" for c in cases for n in ("torch.zeros", "huge pages (engine)")] + ["sum_gbs"]
    )
    assert all(min(v) > 0 for v in kv.values())


@pytest.mark.parametrize("huge", [False, True])
def test_one_buffer_copies_back_to_back(huge: bool) -> None:
    tensors = [torch.randn(3, 5), torch.randn(7), torch.randn(1 << 20)]  # 4 MiB in all
    copies = memory_layout._one_buffer(tensors, huge=huge)
    for a, b in zip(tensors, copies, strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    for a, b in zip(copies, copies[1:], strict=False):
        assert a.data_ptr() + a.numel() * 4 == b.data_ptr()
    if huge:  # the buffer is huge_pages.zeros: it starts on a huge-page boundary
        assert copies[0].data_ptr() % huge_pages.HUGE_PAGE_BYTES == 0
