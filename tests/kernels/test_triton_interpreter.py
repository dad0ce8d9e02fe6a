"""Our Triton kernels run by Triton's CPU interpreter (TRITON_INTERPRET=1), small cases only.

On a GPU the same kernels are tested in test_attention_cuda.py.
"""

import importlib.util
import os

import pytest
import torch

from tests.kernels.paged_batch import Pool, forked_decodes, make_step, relative_error
from tests.kernels.test_attention_cpu import EXPLICIT_LEVELS, explicit_levels_step, mixed_step


def _interpreter_usable() -> bool:
    if importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import numpy

    # Triton's interpreter (3.3-3.6) turns 1-element arrays into loop bounds, which NumPy 2.4
    # refuses: run these in an environment with numpy < 2.4.
    return tuple(int(x) for x in numpy.__version__.split(".")[:2]) < (2, 4)


pytestmark = pytest.mark.skipif(
    not _interpreter_usable(), reason="needs Triton with TRITON_INTERPRET=1 and numpy < 2.4"
)


@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("cascade", [False, True])
def test_mixed_batch_matches_reference(group, cascade):
    step = mixed_step(group, 64, scattered=True, cascade=cascade, seed=group)
    assert relative_error(step, backend="triton") < 1e-5


def test_long_decode_is_split_along_its_kv_and_merged():
    pool = Pool(200, 16, 0, scattered=True)
    ctx = pool.new(700)
    step = make_step(pool, [(ctx, 1)], 200, 2, 4, 64, seed=3)
    assert relative_error(step, backend="triton") < 1e-5
    program = step.meta.compiled["triton"]
    assert program.num_parts == 2  # 701 keys in chunks of 512


def test_long_prefill_spans_several_query_tiles():
    pool = Pool(200, 16, 0, scattered=True)
    ctx = pool.new(45)
    step = make_step(pool, [(ctx, 90)], 200, 2, 4, 128, seed=4)
    assert relative_error(step, backend="triton") < 1e-5


def test_a_long_shared_level_is_split_even_among_many_short_suffixes():
    from server.kernels.triton_backend import NOT_CAUSAL, TritonConfig, _kv_chunk, _Task

    level = _Task(list(range(64)), (), 4096, NOT_CAUSAL, 64)
    suffixes = [_Task([i], (), 41, NOT_CAUSAL, 16) for i in range(64)]
    # 32 kv heads: the suffixes alone are 2048 programs, more than 2 per multiprocessor
    chunk = _kv_chunk([level, *suffixes], 1, 32, 132, TritonConfig())
    assert chunk is not None and 512 <= chunk < 4096
    # short tasks only: nothing to split
    assert _kv_chunk(suffixes, 1, 32, 132, TritonConfig()) is None


@pytest.mark.parametrize(("group", "head_dim"), [(3, 64), (8, 128)])
@pytest.mark.parametrize("cascade", [False, True])
def test_half_precision_takes_the_wide_tiles(group, head_dim, cascade):
    """float16 runs the tile heights and default dot precision that bfloat16 runs on a GPU
    (float32 uses the narrow tiles only). bfloat16 itself cannot be checked here: Triton's
    interpreter (3.6) multiplies bfloat16 tl.dot operands as raw 16-bit integers."""
    step = mixed_step(group, head_dim, scattered=True, cascade=cascade, seed=7, dtype=torch.float16)
    assert relative_error(step, backend="triton") < 1e-2
    program = step.meta.compiled["triton"]
    assert {launch.block_m for launch in program.launches} >= {64}


def _backend(fused: bool):
    from server.kernels.triton_backend import TritonBackend, TritonConfig

    return TritonBackend(TritonConfig(fused=fused))


@pytest.mark.parametrize("group", [1, 3, 4])
@pytest.mark.parametrize("cascade", [False, True])
def test_fused_decode_step_merges_and_writes_the_cache_in_the_attention_launch(group, cascade):
    step = forked_decodes(group, 64, seed=group, cascade=cascade)
    assert bool(step.meta.shared_prefixes) == cascade
    assert relative_error(step, run=_backend(fused=True)) < 1e-5  # checks the cache write too
    program = step.meta.compiled["triton"]
    assert program.stores_kv
    assert program.num_parts >= 2  # the 901-key decode is split: its parts merge in-kernel
    assert int(program.counts.abs().sum()) == 0  # every counter reset for the next layer


def test_fused_counters_are_ready_for_the_next_layer():
    step = forked_decodes(3, 64, seed=11)
    kernel = _backend(fused=True)
    first = kernel(step.q, step.k, step.v, step.k_cache, step.v_cache, step.meta, step.scale)
    # the next layer: new queries and keys, the same plan
    step.q, step.k, step.v = (
        torch.randn_like(step.q),
        torch.randn_like(step.k),
        torch.randn_like(step.v),
    )
    assert relative_error(step, run=kernel) < 1e-5
    assert not torch.equal(first, kernel(step.q, step.k, step.v, step.k_cache, step.v_cache,
                                         step.meta, step.scale))  # fmt: skip


@pytest.mark.parametrize("fused", [False, True])
def test_steps_that_read_their_own_new_keys_write_the_cache_first(fused):
    """Prefill rows read each other's new keys, and a decode whose own keys are all in a level
    finds its new key there: such steps write the cache in a launch of its own."""
    mixed = mixed_step(3, 64, scattered=True, cascade=True, seed=5)
    assert relative_error(mixed, run=_backend(fused)) < 1e-5
    assert not mixed.meta.compiled["triton"].stores_kv
    nested = explicit_levels_step(EXPLICIT_LEVELS)
    assert relative_error(nested, run=_backend(fused)) < 1e-5
    assert not nested.meta.compiled["triton"].stores_kv


@pytest.mark.parametrize("cascade", [False, True])
def test_fused_half_precision(cascade):
    step = forked_decodes(3, 64, seed=9, dtype=torch.float16, cascade=cascade)
    assert relative_error(step, run=_backend(fused=True)) < 1e-2
