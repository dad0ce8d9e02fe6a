"""The Q4 CPU linear kernel against a float64 reference of its own dequantized weights, on fresh
random inputs; the packing's exact round trip; refusals."""

from __future__ import annotations

import pytest
import torch

from server.kernels.cpu import q4_linear as q4
from server.kernels.cpu.packed_linear import pack

pytestmark = pytest.mark.skipif(not q4.available(), reason="no C compiler for the CPU kernel")

SHAPES = [(32, 1), (32, 17), (576, 100), (576, 960), (1536, 17), (1536, 576)]
ROWS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 40]


def random_panels(n: int, k: int, seed: int) -> q4.Q4Panels:
    gen = torch.Generator().manual_seed(seed)
    return q4.pack_q4(*q4.quantize_q4_1(torch.randn(n, k, generator=gen)))


def check(m: int, k: int, n: int, bias: bool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    panels = random_panels(n, k, seed + 1)
    x = torch.randn(m, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    ref = x.double() @ q4.dequantize(panels).double() + (b.double() if b is not None else 0)
    got = q4.q4_linear(x, panels, b)
    assert got.shape == (m, n) and got.dtype == torch.float32
    err = (got.double() - ref).abs().max() / ref.abs().max()
    assert err < 1e-5, f"M {m} K {k} N {n} bias {bias}: relative error {err:.2e}"


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_float64_reference(m: int, k: int, n: int, bias: bool, lanes: int) -> None:
    if lanes == 16 and (k, n) not in ((576, 100), (1536, 17)):
        pytest.skip("16 lanes on an AVX2 host run through the stack: a subset of the shapes")
    check(m, k, n, bias, seed=m * 10_000 + k + n + bias)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m", [1, 4, 8, 11])
def test_thread_counts(threads: int, m: int) -> None:
    """Each thread count matches the reference, and every count gives the same bits (each
    column is summed in one order by one thread)."""
    saved = torch.get_num_threads()
    panels = random_panels(200, 96, seed=5)
    x = torch.randn(m, 96, generator=torch.Generator().manual_seed(m))
    try:
        torch.set_num_threads(threads)
        check(m, 576, 100, bias=True, seed=threads * 100 + m)
        got = q4.q4_linear(x, panels)
        torch.set_num_threads(1)
        one = q4.q4_linear(x, panels)
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(got, one)


def test_pack_round_trip_and_padding() -> None:
    """dequantize(pack_q4(q, d, m)) is exactly (q * d + m).T; padded columns are zero; the
    nibbles sit where the format says."""
    n, k = 37, 64  # 37 = 2 * 16 + 5
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=gen)
    d = torch.randn(n, k // 32, generator=gen).half().float()
    m = torch.randn(n, k // 32, generator=gen).half().float()
    panels = q4.pack_q4(q, d, m)
    assert panels.qs.shape == (3, k, 8) and panels.qs.dtype == torch.uint8
    assert panels.scales.shape == panels.mins.shape == (3, k // 32, 16)
    assert panels.in_features == k and panels.out_features == n
    assert panels.nbytes == 3 * k * 8 + 2 * 3 * (k // 32) * 16 * 4
    expected = (q.float() * d.repeat_interleave(32, 1) + m.repeat_interleave(32, 1)).T
    assert torch.equal(q4.dequantize(panels), expected)
    assert torch.all(panels.qs[2, :, 5:8] == 0) and torch.all(panels.qs[2] >> 4 == 0)
    assert torch.all(panels.scales[2, :, 5:] == 0) and torch.all(panels.mins[2, :, 5:] == 0)
    # byte j of (panel 1, k 7): column 16 + j low, column 24 + j high
    assert panels.qs[1, 7, 3] == q[19, 7] | (q[27, 7] << 4)
    assert panels.scales[1, 1, 10] == d[26, 1] and panels.mins[1, 1, 10] == m[26, 1]


def test_padded_columns_come_out_zero() -> None:
    """The kernel over the padded panel: with x = 1 the sums over the real columns only."""
    panels = random_panels(5, 32, seed=9)
    y = q4.q4_linear(torch.ones(1, 32), panels)
    assert y.shape == (1, 5)
    assert torch.allclose(y[0], q4.dequantize(panels).sum(dim=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch"])
def test_matches_says_whether_the_float32_panels_hold_the_same_weights(
    kernel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`matches` (the engine's load-time check): true for the panels of the dequantized
    weight, false once any real weight differs by one ulp (first, inner, last column of a
    padded panel) or a scale or min changes, and false for another shape; the kernel library
    and the torch fallback agree."""
    if not kernel:
        monkeypatch.setattr(q4, "_library", lambda: None)
    n, k = 37, 96
    panels = random_panels(n, k, seed=12)
    floats = pack(q4.dequantize(panels))
    assert q4.matches(panels, floats)
    for p, row, col in [(0, 0, 0), (1, 50, 9), (2, 95, 4)]:
        nudged = floats.clone()
        nudged[p, row, col] = torch.nextafter(nudged[p, row, col], torch.tensor(float("inf")))
        assert not q4.matches(panels, nudged), (p, row, col)
    padding = floats.clone()
    padding[2, :, 5:] = 1.0  # beyond the 37 real columns: not part of the weight
    assert q4.matches(panels, padding)
    for name in ("scales", "mins"):
        t = getattr(panels, name).clone()
        t[1, 2, 3] *= 2
        changed = q4.Q4Panels(**{**vars(panels), name: t})
        assert not q4.matches(changed, floats), name
    assert not q4.matches(panels, pack(q4.dequantize(random_panels(n, k + 32, seed=12))))


def test_quantize_q4_1() -> None:
    """GGUF's Q4_1 on blocks of 32: d = (max - min) / 15 and m = min through float16, q in
    0-15, the weights within half a step; a constant block gets d = 0 and q = 0."""
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(6, 96, generator=gen)
    w[2, 32:64] = 0.75
    q, d, m = q4.quantize_q4_1(w)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15
    assert q.shape == (6, 96) and d.shape == m.shape == (6, 3)
    blocks = w.view(6, 3, 32)
    assert torch.equal(m, blocks.amin(2).half().float())
    assert torch.equal(d, ((blocks.amax(2) - blocks.amin(2)) / 15).half().float())
    assert d[2, 1] == 0 and torch.all(q[2, 32:64] == 0)
    w_hat = q4.dequantize(q4.pack_q4(q, d, m)).T
    assert torch.all((w_hat - w).abs() <= 0.5 * d.repeat_interleave(32, 1) + 2e-3)


def test_non_contiguous_input_and_empty_batch() -> None:
    panels = random_panels(48, 32, seed=6)
    x = torch.randn(32, 10).t()  # [10, 32], not contiguous
    assert torch.allclose(q4.q4_linear(x, panels), x @ q4.dequantize(panels), atol=1e-4)
    assert q4.q4_linear(torch.empty(0, 32), panels).shape == (0, 48)


def test_rejects_bad_inputs() -> None:
    panels = random_panels(48, 64, seed=7)
    q = torch.zeros(48, 64, dtype=torch.uint8)
    d = torch.ones(48, 2)
    with pytest.raises(ValueError, match=r"x must be a float32 CPU tensor \[M, 64\]"):
        q4.q4_linear(torch.randn(2, 63), panels)
    with pytest.raises(ValueError, match="x must be a float32"):
        q4.q4_linear(torch.randn(2, 64, dtype=torch.float64), panels)
    with pytest.raises(ValueError, match="bias must be"):
        q4.q4_linear(torch.randn(2, 64), panels, torch.zeros(47))
    with pytest.raises(ValueError, match="positive multiple of 32"):
        q4.pack_q4(torch.zeros(48, 40, dtype=torch.uint8), d, d)
    with pytest.raises(ValueError, match="q must be a 2-D uint8"):
        q4.pack_q4(q.int(), d, d)
    with pytest.raises(ValueError, match="scales must be a float32 CPU tensor"):
        q4.pack_q4(q, torch.ones(48, 3), d)
    with pytest.raises(ValueError, match="mins must be a float32 CPU tensor"):
        q4.pack_q4(q, d, d.double())
    with pytest.raises(ValueError, match="q values must be 0-15"):
        q4.pack_q4(q + 16, d, d)
    with pytest.raises(ValueError, match="K a multiple of 32"):
        q4.quantize_q4_1(torch.randn(4, 33))
    with pytest.raises(ValueError, match="scales must be a contiguous torch.float32"):
        q4.Q4Panels(panels.qs, panels.scales[:, :1], panels.mins, 48)
    with pytest.raises(ValueError, match="qs must be a contiguous torch.uint8"):
        q4.Q4Panels(panels.qs, panels.scales, panels.mins, 49)  # 4 panels' worth of outputs
    with pytest.raises(ValueError, match="positive multiple of 32"):
        q4.Q4Panels(panels.qs[:, :40].contiguous(), panels.scales, panels.mins, 48)
