"""The CPU backend against the float64 reference, on fresh random paged batches."""

import pytest
import torch

from server.kernels import CascadeConfig, SharedPrefix, attention, build_attention_metadata
from server.kernels.attend_ops import attend_cpu
from server.kernels.sdpa_backend import SdpaBackend, SdpaConfig
from tests.kernels.paged_batch import Pool, Step, make_step, relative_error

ANY = CascadeConfig(min_prefix_tokens=1, min_group_size=2)
NUM_BLOCKS = 160


def mixed_step(
    group: int,
    head_dim: int,
    scattered: bool,
    cascade: bool,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> Step:
    """Forks of a 100-token context (not a multiple of the block size), a nested fork group,
    a lone decode, a chunked prefill over cached context and a first prefill chunk, with the
    prefills between decodes."""
    pool = Pool(NUM_BLOCKS, 16, seed, scattered)
    root = pool.new(100)
    kids = [pool.fork(root) for _ in range(4)]
    for kid, extra in zip(kids, (0, 5, 17, 40), strict=True):
        pool.extend(kid, extra)
    grandkids = [pool.fork(kids[3]) for _ in range(2)]
    pool.extend(grandkids[1], 3)
    lone, chunked, fresh = pool.new(37), pool.new(50), pool.new(0)
    work = [
        (kids[0], 1),
        (kids[1], 1),
        (chunked, 20),
        (kids[2], 1),
        (fresh, 13),
        (kids[3], 1),
        (grandkids[0], 1),
        (grandkids[1], 1),
        (lone, 1),
    ]
    return make_step(
        pool,
        work,
        NUM_BLOCKS,
        2,
        group,
        head_dim,
        dtype=dtype,
        device=device,
        seed=seed,
        cascade=cascade,
        cascade_config=ANY,
    )


@pytest.mark.parametrize("group", [1, 3, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("scattered", [False, True])
@pytest.mark.parametrize("backend", ["cpu", "cpu-sdpa"])
def test_float32_cascade_and_per_sequence_match_reference(group, head_dim, scattered, backend):
    # cpu: each row's own decode KV through the paged kernel; cpu-sdpa: dense calls only
    seed = group * 1000 + head_dim + scattered
    step = mixed_step(group, head_dim, scattered, cascade=True, seed=seed)
    assert len(step.meta.shared_prefixes) == 2  # the fork group and the nested pair
    assert relative_error(step, backend=backend) < 1e-5
    per_sequence = mixed_step(group, head_dim, scattered, cascade=False, seed=seed)
    assert relative_error(per_sequence, backend=backend) < 1e-5


@pytest.mark.parametrize("scattered", [False, True])
@pytest.mark.parametrize("cascade", [False, True])
def test_in_place_runs_and_padded_tails(scattered, cascade):
    # Small runs go in place and tails of unequal length share padded calls.
    backend = SdpaBackend("cpu", attend_cpu, SdpaConfig(min_inplace_blocks=2, max_tail_padding=4.0))
    step = mixed_step(3, 64, scattered, cascade, seed=7)
    assert relative_error(step, run=backend) < 1e-5
    exact = SdpaBackend("cpu", attend_cpu, SdpaConfig(min_inplace_blocks=1, max_tail_padding=1.0))
    assert relative_error(mixed_step(3, 64, scattered, cascade, seed=8), run=exact) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_reference(dtype):
    for cascade in (False, True):
        assert relative_error(mixed_step(3, 64, True, cascade, seed=11, dtype=dtype)) < 1e-2


@pytest.mark.parametrize("scattered", [False, True])
def test_single_decode_and_equal_length_decodes(scattered):
    pool = Pool(NUM_BLOCKS, 16, 3, scattered)
    ctx = pool.new(300)
    assert relative_error(make_step(pool, [(ctx, 1)], NUM_BLOCKS, 3, 3, 64, seed=1)) < 1e-5
    ctxs = [pool.new(77) for _ in range(5)]
    step = make_step(pool, [(c, 1) for c in ctxs], NUM_BLOCKS, 3, 3, 64, seed=2)
    assert relative_error(step) < 1e-5


def test_two_fork_families_in_one_batch():
    pool = Pool(NUM_BLOCKS, 16, 4, scattered=True)
    first, second = pool.new(70), pool.new(45)
    kids = [pool.fork(first) for _ in range(3)] + [pool.fork(second) for _ in range(2)]
    for extra, kid in enumerate(kids):
        pool.extend(kid, extra)
    work = [(kid, 1) for kid in kids]
    step = make_step(pool, work, NUM_BLOCKS, 2, 4, 128, seed=9, cascade_config=ANY)
    assert [p.seqs for p in step.meta.shared_prefixes] == [(0, 1, 2), (3, 4)]
    assert relative_error(step) < 1e-5


def explicit_levels_step(levels: list[SharedPrefix], device: str = "cpu") -> Step:
    """Sequences 0 and 1 hold blocks 0-4; sequence 0 ends inside them (empty suffix)."""
    pool = Pool(NUM_BLOCKS, 16, 0, scattered=False)
    step = make_step(pool, [], NUM_BLOCKS, 2, 4, 64, device=device, seed=5)
    gen = torch.Generator().manual_seed(6)
    meta = build_attention_metadata(
        [1, 1, 1, 1],
        [80, 90, 40, 20],
        [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5], [6, 7, 8], [0, 9]],
        16,
        device,
        cascade=False,
    )
    meta.shared_prefixes = levels
    step.meta = meta
    step.q = torch.randn(4, 8, 64, generator=gen).to(device)
    step.k = torch.randn(4, 2, 64, generator=gen).to(device)
    step.v = torch.randn(4, 2, 64, generator=gen).to(device)
    return step


EXPLICIT_LEVELS = [
    SharedPrefix((0, 1, 3), 0, 16),
    SharedPrefix((0, 1), 16, 80),  # all of sequence 0, its new token included
    SharedPrefix((2,), 0, 32),  # a group of one
]


def test_empty_suffix_group_of_one_and_explicit_nested_levels():
    assert relative_error(explicit_levels_step(EXPLICIT_LEVELS)) < 1e-5


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ([SharedPrefix((0, 2), 0, 32)], "hold different blocks"),
        ([SharedPrefix((0, 1), 16, 48)], "without gaps"),
        ([SharedPrefix((0, 1), 0, 48), SharedPrefix((0, 1), 32, 64)], "without gaps"),
        ([SharedPrefix((0, 1), 0, 40)], "multiples of block size"),
        ([SharedPrefix((0, 7), 0, 16)], "not a decoding sequence"),
        ([SharedPrefix((2, 3), 0, 48)], "has only 40 tokens"),
    ],
)
def test_inconsistent_levels_are_refused(levels, message):
    step = explicit_levels_step(levels)
    with pytest.raises(ValueError, match=message):
        relative_error(step)


def test_shapes_are_checked_once_per_step():
    pool = Pool(NUM_BLOCKS, 16, 0, scattered=False)
    ctx = pool.new(20)
    step = make_step(pool, [(ctx, 1)], NUM_BLOCKS, 2, 3, 64)
    with pytest.raises(ValueError, match="query heads"):
        attention(step.q[:, :5], step.k, step.v, step.k_cache, step.v_cache, step.meta, 0.1)
    with pytest.raises(ValueError, match="1 tokens"):
        attention(step.q[:0], step.k[:0], step.v[:0], step.k_cache, step.v_cache, step.meta, 0.1)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(
            step.q, step.k, step.v, step.k_cache, step.v_cache, step.meta, 0.1, backend="nope"
        )


@pytest.mark.parametrize("backend", ["cpu", "cpu-sdpa"])
@pytest.mark.parametrize("bad_id", [NUM_BLOCKS, -1])
def test_block_ids_outside_the_caches_are_refused(backend, bad_id):
    """A block id past the caches in a sequence's older blocks (not one the step writes) was
    read by the paged decode kernel unchecked: garbage, or a crash for ids far out."""
    pool = Pool(NUM_BLOCKS, 16, 0, scattered=True)
    ctx = pool.new(40)
    step = make_step(pool, [(ctx, 1)], NUM_BLOCKS, 2, 3, 64)
    tables = [list(ctx.table)]
    tables[0][1] = bad_id
    meta = build_attention_metadata([1], [41], tables, 16, backend=backend)
    with pytest.raises(ValueError, match=f"sequence 0 reads block id {bad_id}"):
        attention(step.q, step.k, step.v, step.k_cache, step.v_cache, meta, 0.1)


def test_tables_shorter_than_a_sequence_are_refused():
    """Metadata built by hand (not by build_attention_metadata) is checked too."""
    pool = Pool(NUM_BLOCKS, 16, 0, scattered=True)
    ctx = pool.new(40)
    step = make_step(pool, [(ctx, 1)], NUM_BLOCKS, 2, 3, 64)
    meta = step.meta
    meta.block_tables = [ctx.table[:2]]
    with pytest.raises(ValueError, match="41 tokens but only 2 blocks"):
        attention(step.q, step.k, step.v, step.k_cache, step.v_cache, meta, 0.1)


def test_mixed_dtypes_are_refused():
    pool = Pool(NUM_BLOCKS, 16, 0, scattered=True)
    ctx = pool.new(40)
    step = make_step(pool, [(ctx, 1)], NUM_BLOCKS, 2, 3, 64)
    with pytest.raises(ValueError, match="share one dtype"):
        attention(step.q.double(), step.k, step.v, step.k_cache, step.v_cache, step.meta, 0.1)


def test_every_layer_reuses_the_step_plan():
    step = mixed_step(3, 64, True, cascade=True)
    relative_error(step)
    compiled = dict(step.meta.compiled)
    relative_error(step)
    assert step.meta.compiled.keys() == compiled.keys()
    assert all(step.meta.compiled[key] is value for key, value in compiled.items())


def test_cpu_backend_reads_decode_kv_through_the_paged_kernels():
    from server.kernels.cpu import paged_decode, paged_levels, suited

    if not (paged_decode.available() and paged_levels.available()):
        pytest.skip("no C compiler here")
    if not suited():
        pytest.skip("the paged kernels give way to PyTorch's on this CPU (no AVX2)")
    step = mixed_step(3, 64, True, cascade=True, seed=21)
    assert relative_error(step, backend="cpu") < 1e-5
    program = step.meta.compiled["sdpa:cpu"]
    assert program.own is not None and not program.tails and not program.runs
    # the shared prefixes: one call of the levels kernel, not an SDPA call each
    assert not program.levels and program.paged_levels.num_levels == 2
    dense = mixed_step(3, 64, True, cascade=True, seed=21)
    assert relative_error(dense, backend="cpu-sdpa") < 1e-5
    assert dense.meta.compiled["sdpa:cpu-sdpa"].own is None


def test_without_avx2_the_cpu_backend_attends_with_pytorch(monkeypatch: pytest.MonkeyPatch):
    """The kernels' 8-lane vectors have no register without AVX2 (x86) or on Arm, and run
    slower than PyTorch's kernel there: the `cpu` backend plans what `cpu-sdpa` plans."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    step = mixed_step(3, 64, True, cascade=True, seed=22)
    assert relative_error(step, backend="cpu") < 1e-5
    program = step.meta.compiled["sdpa:cpu"]
    assert program.own is None and program.paged_levels is None and program.levels
