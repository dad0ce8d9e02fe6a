"""The packed CPU linear kernel against a float64 reference, on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from server.kernels import cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason="no C compiler for the CPU kernel")

SHAPES = [(64, 16), (33, 17), (576, 960), (128, 1000), (1536, 576)]


@pytest.mark.parametrize("m", [1, 2, 5, 6, 7, 13, 64])
@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_float64_reference(m: int, k: int, n: int, bias: bool, lanes: int) -> None:
    gen = torch.Generator().manual_seed(m * 1000 + k + n + bias)
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(k, n, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    ref = x.double() @ w.double() + (b.double() if b is not None else 0)
    got = cpu.packed_linear(x, cpu.pack(w), n, b)
    assert got.shape == (m, n) and got.dtype == torch.float32
    err = (got.double() - ref).abs().max() / ref.abs().max()
    assert err < 1e-5


def test_pack_round_trip_and_padding() -> None:
    w = torch.randn(20, 37)
    panels = cpu.pack(w)
    assert panels.shape == (3, 20, cpu.PANEL)
    assert torch.equal(panels[2, :, 5:], torch.zeros(20, cpu.PANEL - 5))  # 37 = 2 * 16 + 5
    assert torch.equal(cpu.unpack(panels, 37), w)


def test_pack_into_a_given_buffer() -> None:
    """`out` (a view of a larger buffer, with stale values) gets the same panels, padding
    zeroed; a buffer of the wrong shape is refused."""
    w = torch.randn(20, 37)
    shape = cpu.packed_shape(20, 37)
    assert shape == (3, 20, cpu.PANEL)
    arena = torch.full((5 + 3 * 20 * cpu.PANEL,), 7.0)
    out = arena[5:].view(shape)
    panels = cpu.pack(w, out)
    assert panels.data_ptr() == out.data_ptr()
    assert torch.equal(panels, cpu.pack(w))
    assert torch.all(arena[:5] == 7.0)
    with pytest.raises(ValueError, match="out must be"):
        cpu.pack(w, torch.zeros(3, 20, cpu.PANEL + 1))
    with pytest.raises(ValueError, match="out must be"):
        cpu.pack(w, torch.zeros(3, cpu.PANEL, 20).transpose(1, 2))


def test_thread_count_does_not_change_results() -> None:
    x, w = torch.randn(9, 96), torch.randn(96, 200)
    panels = cpu.pack(w)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu.packed_linear(x, panels, 200)
        torch.set_num_threads(max(2, threads))
        many = cpu.packed_linear(x, panels, 200)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)  # each column is summed in the same order by one thread


def test_non_contiguous_input_and_empty_batch() -> None:
    w = torch.randn(32, 48)
    panels = cpu.pack(w)
    x = torch.randn(32, 10).t()  # [10, 32], not contiguous
    assert torch.allclose(cpu.packed_linear(x, panels, 48), x @ w, atol=1e-5)
    assert cpu.packed_linear(torch.empty(0, 32), panels, 48).shape == (0, 48)


def test_rejects_mismatched_inputs() -> None:
    panels = cpu.pack(torch.randn(32, 48))
    with pytest.raises(ValueError, match="does not match panels"):
        cpu.packed_linear(torch.randn(2, 31), panels, 48)
    with pytest.raises(ValueError, match="2-D float32 CPU tensor"):
        cpu.pack(torch.randn(4, 4, dtype=torch.bfloat16))
