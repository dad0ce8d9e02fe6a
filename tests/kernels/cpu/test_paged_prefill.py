"""The paged CPU prefill kernel against the float64 reference, on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from server.kernels.cpu import paged_prefill as kernel
from server.kernels.kv_store import store_kv
from server.kernels.reference import reference_attention, reference_partial
from tests.kernels.paged_batch import Pool, make_step

pytestmark = pytest.mark.skipif(not kernel.available(), reason="no C compiler here")


def run_and_compare(work_lengths, num_kv_heads, group, head_dim, seed, block_size=16):
    """Each (context tokens, new rows) pair becomes a sequence that appends its rows."""
    pool = Pool(256, block_size, seed, scattered=True)
    work = [(pool.new(before), rows) for before, rows in work_lengths]
    step = make_step(pool, work, 256, num_kv_heads, group, head_dim, seed=seed, cascade=False)
    expected = reference_attention(
        step.q, step.k, step.v, step.k_cache, step.v_cache, step.meta, step.scale
    )
    store_kv(step.k, step.v, step.k_cache, step.v_cache, step.meta.slot_mapping)
    out = kernel.paged_prefill(
        step.q, step.k_cache, step.v_cache, step.meta.query_lens, step.meta.seq_lens,
        step.meta.block_tables, step.scale,
    )
    assert out.shape == step.q.shape and out.dtype == torch.float32
    return float((out.double() - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("group", [1, 3, 4, 8])
@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_matches_float64_reference(group: int, head_dim: int, lanes: int) -> None:
    # fresh prompts, chunks after cached context, single rows, lengths off the block and tile
    # sizes (16 and 32), and a row count that leaves a partial task of query vectors; the
    # kernel built over 8-lane (AVX2) and 16-lane (AVX-512) vectors, whatever this CPU has
    work = [(0, 77), (45, 33), (0, 1), (130, 1), (300, 50), (0, 16)]
    assert run_and_compare(work, 2, group, head_dim, seed=group * 7 + head_dim) < 1e-5


def test_every_tile_length(lanes: int) -> None:
    """Single rows after 0..40 tokens: the last key tile holds 1..32 keys, so each way its
    scores split into register blocks (full blocks, pairs, a single key) is taken."""
    work = [(before, 1) for before in range(41)] + [(before, 5) for before in range(0, 40, 3)]
    assert run_and_compare(work, 2, 3, 64, seed=11) < 1e-5


@pytest.mark.parametrize("block_size", [1, 8, 32])
def test_block_sizes(block_size: int, lanes: int) -> None:
    work = [(17, 40), (0, 65)]
    assert run_and_compare(work, 3, 3, 64, seed=block_size, block_size=block_size) < 1e-5


def test_large_scores_stay_finite(lanes: int) -> None:
    """Scores far apart (big queries) still give a stable softmax."""
    pool = Pool(64, 16, 0, scattered=True)
    step = make_step(pool, [(pool.new(20), 40)], 64, 2, 2, 64, seed=3, cascade=False)
    step.q.mul_(40.0)
    expected = reference_attention(
        step.q, step.k, step.v, step.k_cache, step.v_cache, step.meta, step.scale
    )
    store_kv(step.k, step.v, step.k_cache, step.v_cache, step.meta.slot_mapping)
    out = kernel.paged_prefill(step.q, step.k_cache, step.v_cache, step.meta.query_lens,
                               step.meta.seq_lens, step.meta.block_tables, step.scale)
    assert torch.isfinite(out).all()
    assert float((out.double() - expected).abs().max() / expected.abs().max()) < 1e-5


def test_threads_do_not_change_the_result() -> None:
    pool = Pool(128, 16, 1, scattered=True)
    step = make_step(pool, [(pool.new(0), 200), (pool.new(31), 90)], 128, 3, 3, 64, seed=4,
                     cascade=False)
    store_kv(step.k, step.v, step.k_cache, step.v_cache, step.meta.slot_mapping)
    args = (step.q, step.k_cache, step.v_cache, step.meta.query_lens, step.meta.seq_lens,
            step.meta.block_tables, step.scale)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernel.paged_prefill(*args)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, kernel.paged_prefill(*args))


def test_bad_arguments_are_refused() -> None:
    k = torch.zeros(4, 16, 2, 64)
    q = torch.zeros(5, 4, 64)
    with pytest.raises(ValueError, match="query lengths summing to 4 for 5 rows"):
        kernel.paged_prefill(q, k, k, [4], [4], [[0]], 0.1)
    with pytest.raises(ValueError, match="sequence 0: 5 rows, 40 tokens, 1 blocks"):
        kernel.paged_prefill(q, k, k, [5], [40], [[0]], 0.1)
    with pytest.raises(ValueError, match="block ids must lie in"):
        kernel.paged_prefill(q, k, k, [5], [5], [[9]], 0.1)
    with pytest.raises(ValueError, match="does not fit caches"):
        kernel.paged_prefill(torch.zeros(5, 3, 64), k, k, [5], [5], [[0]], 0.1)
    odd = torch.zeros(4, 16, 2, 40)
    with pytest.raises(ValueError, match="head dims must be multiples of 16"):
        kernel.paged_prefill(torch.zeros(5, 4, 40), odd, odd, [5], [5], [[0]], 0.1)
    with pytest.raises(ValueError, match="must be float32"):
        kernel.paged_prefill(q.double(), k.double(), k.double(), [5], [5], [[0]], 0.1)


def test_sequences_without_rows_are_skipped() -> None:
    """A sequence with no query rows (the wrapper takes 0 <= rows) adds no task: it once added
    an uncounted one per KV head, written past the task list and run in place of the last
    real tasks, which left rows of later sequences unwritten."""
    gen = torch.Generator().manual_seed(5)
    k_cache = torch.randn(40, 16, 4, 64, generator=gen)
    v_cache = torch.randn(40, 16, 4, 64, generator=gen)
    query_lens, seq_lens = [0, 40, 0, 30], [20, 50, 16, 30]
    tables = [[0, 1], [2, 3, 4, 5], [6], [7, 8]]
    q = torch.randn(sum(query_lens), 8, 64, generator=gen)
    for threads in (1, 2):
        previous = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            out = kernel.paged_prefill(q, k_cache, v_cache, query_lens, seq_lens, tables, 0.125)
        finally:
            torch.set_num_threads(previous)
        row = 0
        for n, length, table in zip(query_lens, seq_lens, tables, strict=True):
            if n == 0:
                continue
            keys = k_cache[table].reshape(-1, 4, 64)[:length]
            values = v_cache[table].reshape(-1, 4, 64)[:length]
            expected, _ = reference_partial(
                q[row : row + n], keys, values, 0.125, first_query_pos=length - n
            )
            got = out[row : row + n].double()
            assert float((got - expected).abs().max()) < 1e-5
            row += n
