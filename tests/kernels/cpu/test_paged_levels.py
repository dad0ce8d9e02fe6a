"""The CPU shared-prefix levels kernel (with the decode kernel for the rows' own keys) against
the float64 reference, on fresh random inputs."""

import pytest
import torch

from server.kernels.cpu import paged_decode, paged_levels
from server.kernels.reference import reference_partial

pytestmark = pytest.mark.skipif(
    not (paged_levels.available() and paged_decode.available()), reason="no C compiler here"
)

BLOCK = 16


class Pool:
    """Shuffled blocks of random K/V handed out in order."""

    def __init__(self, num_blocks, num_kv_heads, head_dim, gen):
        self.k = torch.randn(num_blocks, BLOCK, num_kv_heads, head_dim, generator=gen)
        self.v = torch.randn(num_blocks, BLOCK, num_kv_heads, head_dim, generator=gen)
        self.order = torch.randperm(num_blocks, generator=gen).tolist()

    def take(self, tokens):
        n = -(-tokens // BLOCK)
        taken, self.order = self.order[:n], self.order[n:]
        return taken


def run_case(rows, levels, own_tokens, group, head_dim, seed, num_kv_heads=2, scale_q=1.0):
    """`levels`: (member rows, span tokens); every row attends its levels' spans and then
    `own_tokens[r]` tokens of its own. Returns the kernels' (out, lse) and the reference's."""
    gen = torch.Generator().manual_seed(seed)
    need = sum(-(-n // BLOCK) for _, n in levels) + sum(-(-n // BLOCK) for n in own_tokens)
    pool = Pool(need + 3, num_kv_heads, head_dim, gen)
    spans = [(members, pool.take(n), n) for members, n in levels]
    own = [pool.take(n) for n in own_tokens]
    q = torch.randn(rows, num_kv_heads * group, head_dim, generator=gen) * scale_q
    scale = head_dim**-0.5
    offsets = [0]
    for blocks in own:
        offsets.append(offsets[-1] + len(blocks))
    out, lse = paged_decode.paged_decode(
        q, pool.k, pool.v, torch.tensor([b for x in own for b in x], dtype=torch.int64),
        torch.tensor(offsets, dtype=torch.int64), torch.tensor(own_tokens, dtype=torch.int64),
        scale,
    )
    paged_levels.paged_levels(q, pool.k, pool.v, paged_levels.level_index(spans), scale, out, lse)
    ref_out, ref_lse = [], []
    for r in range(rows):
        keys, values = [], []
        for members, span, n in spans:
            if r in members:
                keys.append(pool.k[span].reshape(-1, num_kv_heads, head_dim)[:n])
                values.append(pool.v[span].reshape(-1, num_kv_heads, head_dim)[:n])
        keys.append(pool.k[own[r]].reshape(-1, num_kv_heads, head_dim)[: own_tokens[r]])
        values.append(pool.v[own[r]].reshape(-1, num_kv_heads, head_dim)[: own_tokens[r]])
        o, s = reference_partial(q[r : r + 1], torch.cat(keys), torch.cat(values), scale)
        ref_out.append(o[0])
        ref_lse.append(s[0])
    return out, lse, torch.stack(ref_out), torch.stack(ref_lse)


def assert_close(out, lse, ref_out, ref_lse):
    err = (out.double() - ref_out).abs().max() / ref_out.abs().max()
    assert err < 1e-5, err
    assert torch.allclose(lse.double(), ref_lse, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("group", [1, 3, 4, 8])
@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_matches_float64_reference(group, head_dim, lanes):
    # a level of 22 rows (several query blocks), one of 5, one of a single row; spans that are
    # not block multiples and long enough to be cut into key chunks; an empty own part
    rows = 30
    levels = [(list(range(22)), 1000), (list(range(22, 27)), 300), ([27], 37)]
    own = [(r * 7) % 40 for r in range(rows)]
    own[3] = 0
    got = run_case(rows, levels, own, group, head_dim, seed=group * 1000 + head_dim)
    assert_close(*got)


def test_nested_levels_and_rows_outside_any_level():
    # rows 0-15 share 512 tokens; inside them 0-3 share 64 more and 4-5 another 128; 16-17 none
    levels = [(list(range(16)), 512), ([0, 1, 2, 3], 64), ([4, 5], 128)]
    own = [5] * 16 + [70, 1]
    got = run_case(18, levels, own, group=3, head_dim=64, seed=7, num_kv_heads=3)
    assert_close(*got)


@pytest.mark.parametrize("members", [1, 2, 5, 7, 9, 12, 16, 17, 21, 43, 64])
def test_every_query_block_width(members, lanes):
    # members x 3 query heads: 3 .. 192 vectors, i.e. 1-4 vectors of 16 lanes or 1-8 of 8
    # (7, 9, 12 and 17 members: 3, 4, 5 and 7) and several blocks
    levels = [(list(range(members)), 2048 if members == 16 else 200)]
    got = run_case(members, levels, [9] * members, group=3, head_dim=64, seed=members,
                   num_kv_heads=3)
    assert_close(*got)


def test_large_scores_stay_finite():
    levels = [(list(range(6)), 400)]
    out, lse, ref_out, ref_lse = run_case(6, levels, [3] * 6, 4, 64, seed=2, scale_q=30.0)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert_close(out, lse, ref_out, ref_lse)


def test_thread_counts_agree_with_the_reference():
    levels = [(list(range(4)), 3000)]
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert_close(*run_case(4, levels, [20] * 4, 3, 64, seed=11, num_kv_heads=3))
    finally:
        torch.set_num_threads(before)


def _args():
    q = torch.randn(3, 6, 64)
    k = torch.randn(10, BLOCK, 2, 64)
    index = paged_levels.level_index([([0, 1], [2, 3], 20)])
    return {"q": q, "k_cache": k, "v_cache": k.clone(), "levels": index,
            "out": torch.zeros(3, 6, 64), "lse": torch.zeros(3, 6)}


def _replace(index, **changes):
    fields = {name: getattr(index, name) for name in paged_levels.LevelIndex.__slots__}
    return paged_levels.LevelIndex(**{**fields, **changes})


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: {**a, "q": a["q"].double()}, "float32"),
        (lambda a: {**a, "lse": a["lse"][:2]}, "lse"),
        (lambda a: {**a, "levels": _replace(a["levels"], rows=torch.tensor([0, 9]))}, "member rows"),
        (lambda a: {**a, "levels": _replace(a["levels"], rows=torch.tensor([1, 1]))}, "twice"),
        (lambda a: {**a, "levels": _replace(a["levels"], tokens=torch.tensor([40]))}, "do not describe"),
        (lambda a: {**a, "levels": _replace(a["levels"], blocks=torch.tensor([2, 30]))}, "block ids"),
        (lambda a: {**a, "levels": _replace(a["levels"], blocks=torch.tensor([2, 3]).int())}, "int64"),
    ],
)
def test_bad_arguments_are_refused(mutate, message):
    with pytest.raises(ValueError, match=message):
        paged_levels.paged_levels(scale=0.1, **mutate(_args()))
