"""The paged CPU decode kernel against the float64 reference, on fresh random inputs."""

import pytest
import torch

from server.kernels.cpu import paged_decode as kernel
from server.kernels.reference import reference_partial

pytestmark = pytest.mark.skipif(not kernel.available(), reason="no C compiler here")

BLOCK = 16


def random_rows(
    lengths, num_kv_heads, group, head_dim, seed, scattered=True, block=BLOCK, spare=5
):
    """Caches holding each row's keys in its own (shuffled) blocks, and one query per row;
    `spare` unused blocks lie among them."""
    gen = torch.Generator().manual_seed(seed)
    need = sum(-(-n // block) for n in lengths)
    num_blocks = need + spare
    k_cache = torch.randn(num_blocks, block, num_kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(num_blocks, block, num_kv_heads, head_dim, generator=gen)
    order = torch.randperm(num_blocks, generator=gen) if scattered else torch.arange(num_blocks)
    blocks, offsets = [], [0]
    for n in lengths:
        blocks.extend(order[len(blocks) : len(blocks) + -(-n // block)].tolist())
        offsets.append(len(blocks))
    q = torch.randn(len(lengths), num_kv_heads * group, head_dim, generator=gen)
    index = (
        torch.tensor(blocks, dtype=torch.int64),
        torch.tensor(offsets, dtype=torch.int64),
        torch.tensor(lengths, dtype=torch.int64),
    )
    return q, k_cache, v_cache, index


def reference_rows(q, k_cache, v_cache, index, scale):
    blocks, offsets, lengths = index
    outs, lses = [], []
    _, _, hkv, d = k_cache.shape
    for r in range(q.shape[0]):
        own = blocks[offsets[r] : offsets[r + 1]]
        n = int(lengths[r])
        keys = k_cache[own].reshape(-1, hkv, d)[:n]
        values = v_cache[own].reshape(-1, hkv, d)[:n]
        o, lse = reference_partial(q[r : r + 1], keys, values, scale)
        outs.append(o[0])
        lses.append(lse[0])
    return torch.stack(outs), torch.stack(lses)


@pytest.mark.parametrize("group", [1, 3, 4, 8])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
@pytest.mark.parametrize("chunk", [0, 7, 64, 512])  # 0: the kernel picks
def test_matches_float64_reference(group, head_dim, chunk, lanes):
    seed = group * 10_000 + head_dim * 10 + chunk
    # lengths not multiples of the block (or of the 16-key tile), a one-token row, a long row
    lengths = [1, 15, 17, 100, 333, 1030]
    q, k_cache, v_cache, index = random_rows(lengths, 2, group, head_dim, seed)
    scale = head_dim**-0.5
    out, lse = kernel.paged_decode(q, k_cache, v_cache, *index, scale, chunk_tokens=chunk)
    ref_out, ref_lse = reference_rows(q, k_cache, v_cache, index, scale)
    err = (out.double() - ref_out).abs().max() / ref_out.abs().max()
    assert err < 1e-5
    assert torch.allclose(lse.double(), ref_lse, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("block", [1, 5, 16, 24, 64])
def test_blocks_far_apart_and_out_of_order(block, lanes):
    # the prefetch walk follows each row's blocks: runs that end mid-tile, blocks spread over a
    # cache mostly unused, tasks (chunk 48) that start mid-block
    lengths = [3, 47, 130, 401]
    q, k_cache, v_cache, index = random_rows(lengths, 3, 3, 64, seed=block, spare=2000 // block)
    scale = 0.125
    ref_out, ref_lse = reference_rows(q, k_cache, v_cache, index, scale)
    for chunk in (0, 48):
        out, lse = kernel.paged_decode(q, k_cache, v_cache, *index, scale, chunk_tokens=chunk)
        assert (out.double() - ref_out).abs().max() / ref_out.abs().max() < 1e-5
        assert torch.allclose(lse.double(), ref_lse, rtol=1e-6, atol=1e-5)


def test_large_scores_do_not_overflow(lanes):
    # scores in the hundreds: the online softmax must subtract its running maximum
    q, k_cache, v_cache, index = random_rows([40, 300], 3, 3, 64, seed=5)
    out, lse = kernel.paged_decode(q * 30, k_cache, v_cache, *index, 0.125, chunk_tokens=64)
    ref_out, ref_lse = reference_rows(q * 30, k_cache, v_cache, index, 0.125)
    assert torch.isfinite(out).all()
    assert (out.double() - ref_out).abs().max() / ref_out.abs().max() < 1e-5
    assert torch.allclose(lse.double(), ref_lse, rtol=1e-6)


def test_empty_rows_are_empty_parts():
    q, k_cache, v_cache, index = random_rows([0, 20, 0], 1, 4, 32, seed=3)
    out, lse = kernel.paged_decode(q, k_cache, v_cache, *index, 0.2)
    assert (out[0] == 0).all() and (out[2] == 0).all()
    assert torch.isneginf(lse[0]).all() and torch.isneginf(lse[2]).all()
    assert torch.isfinite(lse[1]).all()


def test_thread_count_does_not_change_results():
    q, k_cache, v_cache, index = random_rows([700, 50, 1200], 3, 3, 64, seed=11)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernel.paged_decode(q, k_cache, v_cache, *index, 0.125, chunk_tokens=128)
        torch.set_num_threads(2)
        two = kernel.paged_decode(q, k_cache, v_cache, *index, 0.125, chunk_tokens=128)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: {**a, "q": a["q"].double()}, "float32"),
        (lambda a: {**a, "q": a["q"][:, :5]}, "does not fit"),
        (
            lambda a: {**a, "q": torch.randn(2, 6, 48), "k_cache": torch.randn(9, 16, 2, 48),
                       "v_cache": torch.randn(9, 16, 2, 48)},
            "head dims",
        ),
        (lambda a: {**a, "offsets": a["offsets"][:-1]}, "offsets"),
        (lambda a: {**a, "num_tokens": a["num_tokens"] + 100}, "do not describe"),
        (lambda a: {**a, "blocks": a["blocks"] + 1000}, "block ids"),
        (lambda a: {**a, "blocks": a["blocks"].int()}, "int64"),
    ],
)
def test_bad_arguments_are_refused(mutate, message):
    q, k_cache, v_cache, (blocks, offsets, lengths) = random_rows([20, 40], 2, 3, 64, seed=1)
    args = {"q": q, "k_cache": k_cache, "v_cache": v_cache, "blocks": blocks,
            "offsets": offsets, "num_tokens": lengths}
    with pytest.raises(ValueError, match=message):
        kernel.paged_decode(**mutate(args), scale=0.1)


@pytest.mark.parametrize("group", [2, 5, 6, 7])
@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_output_head_blocks(group, head_dim, lanes):
    # the 8-lane output pass takes a KV head's query heads in blocks of 3 or 2 (2 + 2, 3 + 2,
    # 3 + 3, 3 + 2 + 2 here) and head dim 16 in blocks of 2 vectors, not 4
    lengths = [1, 17, 100, 333]
    q, k_cache, v_cache, index = random_rows(lengths, 2, group, head_dim, seed=group * 1000 + head_dim)
    scale = head_dim**-0.5
    out, lse = kernel.paged_decode(q, k_cache, v_cache, *index, scale, chunk_tokens=64)
    ref_out, ref_lse = reference_rows(q, k_cache, v_cache, index, scale)
    assert (out.double() - ref_out).abs().max() / ref_out.abs().max() < 1e-5
    assert torch.allclose(lse.double(), ref_lse, rtol=1e-6, atol=1e-5)
