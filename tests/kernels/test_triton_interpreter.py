"""Our Triton kernels run by Triton's CPU interpreter (TRITON_INTERPRET=1), small cases only.

On a GPU the same kernels are tested in test_attention_cuda.py.
"""

import importlib.util
import os

import pytest
import torch

from tests.kernels.paged_batch import Pool, make_step, relative_error
from tests.kernels.test_attention_cpu import mixed_step


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
