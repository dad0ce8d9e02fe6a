"""The 8-bit (Q8 panels) CPU linear kernel against a float64 reference, on fresh random inputs."""

from __future__ import annotations

import math

import pytest
import torch

from server.kernels.cpu import q8_linear as q8
from server.kernels.cpu.packed_linear import pack, packed_linear

pytestmark = pytest.mark.skipif(not q8.available(), reason="no C compiler for the CPU kernel")

ROWS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 40]
SHAPES = [(32, 1), (32, 17), (576, 100), (576, 4100), (32, 100), (576, 17)]


def _random_panels(k: int, n: int, gen: torch.Generator, block: int = 32) -> q8.Q8Panels:
    # scales spread over a few octaves, as a real layer's blocks are
    w = torch.randn(n, k, generator=gen) * torch.exp2(torch.randint(-3, 3, (n, 1), generator=gen))
    return q8.pack_q8(*q8.quantize_q8_0(w, block))


def _error_with_bias(panels: q8.Q8Panels, m: int, gen: torch.Generator) -> float:
    """The kernel's largest error against float64 on m fresh rows and a bias, relative to the
    reference's largest value."""
    x = torch.randn(m, panels.in_features, generator=gen)
    b = torch.randn(panels.out_features, generator=gen)
    ref = x.double() @ q8.dequantize(panels).double() + b.double()
    return float((q8.q8_linear(x, panels, b).double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_float64_reference(
    m: int, k: int, n: int, bias: bool, threads: int, lanes: int
) -> None:
    gen = torch.Generator().manual_seed(m * 1000 + k + n + bias + 7 * threads)
    panels = _random_panels(k, n, gen)
    x = torch.randn(m, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    ref = x.double() @ q8.dequantize(panels).double() + (b.double() if b is not None else 0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = q8.q8_linear(x, panels, b)
    finally:
        torch.set_num_threads(before)
    assert got.shape == (m, n) and got.dtype == torch.float32
    err = (got.double() - ref).abs().max() / ref.abs().max()
    assert err < 1e-5


@pytest.mark.parametrize("m", [1, 2, 3, 5, 7, 16, 40])
@pytest.mark.parametrize("k,n", [(32, 17), (576, 100)])
def test_blocks_of_16_match_float64_reference(m: int, k: int, n: int, lanes: int) -> None:
    """A scale per 16 inputs (Q6_K's blocks): every tile of both widths against float64."""
    gen = torch.Generator().manual_seed(m * 100 + k + n)
    panels = _random_panels(k, n, gen, block=16)
    assert panels.block == 16 and panels.scales.shape == (-(-n // 16), k // 16, 16)
    assert _error_with_bias(panels, m, gen) < 1e-5


@pytest.mark.parametrize("block", [32, 16])
@pytest.mark.parametrize("m", [1, 4, 8, 13])
def test_same_bits_as_the_float32_kernel(m: int, block: int) -> None:
    """The weights are exactly dequantize()'s (d * q, rounded once where it is not exact, as
    with Q6_K's scales) and each column is summed over k in order with one FMA a weight, as the
    packed float32 kernel does with them."""
    gen = torch.Generator().manual_seed(m)
    q, d = q8.quantize_q8_0(torch.randn(300, 576, generator=gen), block)
    if block == 16:
        d = d * 1.2345679  # longer mantissas, as Q6_K's d * sc have: d * q rounds
    panels = q8.pack_q8(q, d)
    x = torch.randn(m, 576, generator=gen)
    b = torch.randn(300, generator=gen)
    w = q8.dequantize(panels)
    assert torch.equal(q8.q8_linear(x, panels, b), packed_linear(x, pack(w), 300, b))


def test_thread_count_does_not_change_results() -> None:
    gen = torch.Generator().manual_seed(5)
    panels = _random_panels(96, 200, gen)
    x = torch.randn(9, 96, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = q8.q8_linear(x, panels)
        torch.set_num_threads(max(2, threads))
        many = q8.q8_linear(x, panels)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_pack_dequantize_round_trip_and_padding() -> None:
    gen = torch.Generator().manual_seed(3)
    n, k = 37, 64
    q = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    # float16 values of several octaves, the scales Q8_0 stores
    d = (torch.rand(n, k // 32, generator=gen) * 2.0 ** torch.randint(-20, 4, (n, k // 32),
                                                                         generator=gen))
    d = d.to(torch.float16).to(torch.float32)
    panels = q8.pack_q8(q, d)
    assert panels.qs.shape == (3, k, q8.PANEL) and panels.scales.shape == (3, k // 32, q8.PANEL)
    assert panels.out_features == n and panels.in_features == k
    assert panels.nbytes == 3 * k * q8.PANEL + 3 * (k // 32) * q8.PANEL * 4
    assert torch.equal(panels.qs[2, :, 5:], torch.zeros(k, q8.PANEL - 5, dtype=torch.int8))
    assert torch.equal(panels.scales[2, :, 5:], torch.zeros(k // 32, q8.PANEL - 5))
    assert panels.qs[1, 7, 3] == q[16 + 3, 7] and panels.scales[1, 1, 3] == d[16 + 3, 1]
    exact = (q.double() * d.double().repeat_interleave(32, dim=1)).t()
    assert torch.equal(q8.dequantize(panels).double(), exact)


@pytest.mark.parametrize("block", [32, 16])
@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch"])
def test_matches_says_whether_the_float32_panels_hold_the_same_weights(
    kernel: bool, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`matches` (the engine's load-time check of a tied head): true for the panels of the
    dequantized weight, false once any real weight differs by one ulp or a scale changes, and
    false for another shape; the kernel library and the torch fallback agree."""
    if not kernel:
        monkeypatch.setattr(q8, "_library", lambda: None)
    gen = torch.Generator().manual_seed(21)
    k, n = 64, 37
    panels = _random_panels(k, n, gen, block)
    floats = pack(q8.dequantize(panels))
    assert q8.matches(panels, floats)
    for p, row, col in [(0, 0, 0), (1, 40, 9), (2, 63, 4)]:
        nudged = floats.clone()
        nudged[p, row, col] = torch.nextafter(nudged[p, row, col], torch.tensor(float("-inf")))
        assert not q8.matches(panels, nudged), (p, row, col)
    padding = floats.clone()
    padding[2, :, 5:] = 1.0  # beyond the 37 real columns: not part of the weight
    assert q8.matches(panels, padding)
    scales = panels.scales.clone()
    scales[1, 1, 3] *= 2
    assert not q8.matches(q8.Q8Panels(panels.qs, scales, n), floats)
    assert not q8.matches(panels, pack(q8.dequantize(_random_panels(k + 32, n, gen, block))))


def test_quantize_q8_0() -> None:
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(5, 64, generator=gen)
    w[1, :32] = 0.0  # a zero block: d = 0, q = 0
    w[2, 32:] = (torch.arange(32) - 15.5) / 64  # d = 1/64 exactly, each w / d a tie:
    w[2, 32] = 127 / 64  # they round away from zero
    q, d = q8.quantize_q8_0(w)
    assert q.dtype == torch.int8 and d.dtype == torch.float32 and d.shape == (5, 2)
    assert d[1, 0] == 0 and torch.all(q[1, :32] == 0)
    assert torch.equal(d, d.to(torch.float16).to(torch.float32))
    assert q.abs().max() == 127 and q.min() >= -127
    assert d[2, 1] == 1 / 64 and q[2, 33:].tolist() == [*range(-15, 0), *range(1, 17)]
    back = q.float() * d.repeat_interleave(32, dim=1)
    assert torch.all((back - w).abs() <= d.repeat_interleave(32, dim=1) * 0.51 + 1e-3)
    # ggml's reference, element by element: roundf(w * (1 / (amax / 127)))
    for r in range(5):
        for b in range(2):
            block = w[r, 32 * b : 32 * (b + 1)]
            dd = block.abs().max() / 127
            inv = 1.0 / dd if dd != 0 else torch.tensor(0.0)
            for j in range(32):
                x = float(block[j] * inv)
                assert q[r, 32 * b + j] == int(math.copysign(math.floor(abs(x) + 0.5), x))
    with pytest.raises(ValueError, match="multiple of 32"):
        q8.quantize_q8_0(torch.randn(4, 33))


def test_non_contiguous_input_and_empty_batch() -> None:
    panels = _random_panels(32, 48, torch.Generator().manual_seed(6))
    x = torch.randn(32, 10).t()  # [10, 32], not contiguous
    ref = x.double() @ q8.dequantize(panels).double()
    assert torch.allclose(q8.q8_linear(x, panels).double(), ref, atol=1e-4)
    assert q8.q8_linear(torch.empty(0, 32), panels).shape == (0, 48)
    no_outputs = q8.pack_q8(torch.zeros(0, 32, dtype=torch.int8), torch.zeros(0, 1))
    assert q8.q8_linear(torch.randn(3, 32), no_outputs).shape == (3, 0)
    no_inputs = q8.pack_q8(torch.zeros(5, 0, dtype=torch.int8), torch.zeros(5, 0))
    assert torch.equal(q8.q8_linear(torch.randn(3, 0), no_inputs, torch.ones(5)), torch.ones(3, 5))


def test_rejects_bad_inputs() -> None:
    q, d = torch.zeros(48, 64, dtype=torch.int8), torch.zeros(48, 2)
    panels = q8.pack_q8(q, d)
    with pytest.raises(ValueError, match="does not match the panels"):
        q8.q8_linear(torch.randn(2, 63), panels)
    with pytest.raises(ValueError, match="does not match the panels"):
        q8.q8_linear(torch.randn(2, 64, dtype=torch.float64), panels)
    with pytest.raises(ValueError, match="does not match the panels"):
        q8.q8_linear(torch.randn(2, 64), q8.Q8Panels(panels.qs, panels.scales, 60))
    with pytest.raises(ValueError, match="bias must be"):
        q8.q8_linear(torch.randn(2, 64), panels, torch.zeros(47))
    with pytest.raises(ValueError, match="not a multiple of 32"):
        q8.pack_q8(torch.zeros(4, 40, dtype=torch.int8), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="2-D int8"):
        q8.pack_q8(torch.zeros(4, 64), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="scales must be"):
        q8.pack_q8(q, torch.zeros(48, 3))
    with pytest.raises(ValueError, match="scales must be"):
        q8.pack_q8(q, torch.zeros(48, 2, dtype=torch.float16))


def _affine_panels(k: int, n: int, gen: torch.Generator, block: int = 32) -> q8.Q8Panels:
    """5-bit values 0..31 with a scale and a min per block, as Q5_1 and Q5_K hold them: float16
    scales (Q5_K's d * sc has a few more bits, still exact times q) and mins that make
    d * q + m round."""
    q = torch.randint(0, 32, (n, k), generator=gen, dtype=torch.int8)
    d = (torch.rand(n, k // block, generator=gen) * 0.1).to(torch.float16).to(torch.float32)
    m = -(torch.rand(n, k // block, generator=gen) * 1.7)
    return q8.pack_q8(q, d, m)


@pytest.mark.parametrize("block", [32, 16])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 7, 16, 40])
@pytest.mark.parametrize("k,n", [(32, 17), (576, 100)])
def test_blocks_with_mins_match_float64_reference(m: int, k: int, n: int, block: int,
                                                  lanes: int) -> None:
    """A min per block (weight d * q + m): every tile of both widths and block sizes."""
    gen = torch.Generator().manual_seed(m * 100 + k + n + block)
    panels = _affine_panels(k, n, gen, block)
    assert panels.mins is not None and panels.mins.shape == panels.scales.shape
    assert _error_with_bias(panels, m, gen) < 1e-5


@pytest.mark.parametrize("block", [32, 16])
@pytest.mark.parametrize("m", [1, 4, 8, 13])
def test_mins_give_the_same_bits_as_the_float32_kernel(m: int, block: int) -> None:
    """fma(q, d, m) in the kernel is dequantize()'s d * q + m (d * q exact, one rounding), so
    the sums are the packed float32 kernel's over those weights, bit for bit; and `matches`
    tells them from weights one ulp off."""
    gen = torch.Generator().manual_seed(m + block)
    panels = _affine_panels(576, 300, gen, block)
    x = torch.randn(m, 576, generator=gen)
    b = torch.randn(300, generator=gen)
    w = q8.dequantize(panels)
    floats = pack(w)
    assert torch.equal(q8.q8_linear(x, panels, b), packed_linear(x, floats, 300, b))
    assert q8.matches(panels, floats)
    floats[3, 100, 7] = torch.nextafter(floats[3, 100, 7], torch.tensor(float("inf")))
    assert not q8.matches(panels, floats)
    assert panels.nbytes == 19 * 576 * 16 + 2 * 19 * (576 // block) * 16 * 4


def test_rejects_mins_of_another_shape() -> None:
    q, d = torch.zeros(48, 64, dtype=torch.int8), torch.zeros(48, 2)
    with pytest.raises(ValueError, match="mins must be"):
        q8.pack_q8(q, d, torch.zeros(48, 3))
    panels = q8.pack_q8(q, d, torch.zeros(48, 2))
    with pytest.raises(ValueError, match="does not match the panels"):
        q8.q8_linear(torch.randn(2, 64), q8.Q8Panels(panels.qs, panels.scales, 48,
                                                     panels.mins[:, :1]))  # fmt: skip


@pytest.mark.parametrize("block", [32, 16])
def test_matches_with_mins_in_torch_agrees_with_the_kernel(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the library `matches` compares `dequantize()` in torch: with mins (the affine
    types, and parts of 0 mins beside them whose d * q rounds, as a Q6_K v beside Q5_K q and k)
    it says what the kernel's check says, for the weights and for weights one ulp off."""
    gen = torch.Generator().manual_seed(block + 7)
    affine = _affine_panels(256, 40, gen, block)
    q, d = q8.quantize_q8_0(torch.randn(24, 256, generator=gen), block)
    rounding = q8.pack_q8(q, d * 1.2345679, torch.zeros_like(d))  # d * q rounds, min 0
    cases = []
    for panels in (affine, rounding):
        floats = pack(q8.dequantize(panels))
        off = floats.clone()
        off[1, 37, 5] = torch.nextafter(off[1, 37, 5], torch.tensor(float("inf")))
        cases += [(panels, floats, True), (panels, off, False)]
    assert [q8.matches(p, f) for p, f, _ in cases] == [want for _, _, want in cases]
    monkeypatch.setattr(q8, "_library", lambda: None)
    assert [q8.matches(p, f) for p, f, _ in cases] == [want for _, _, want in cases]
