"""Every CUDA backend against the float64 reference (skipped without a GPU).

benchmarks/gpu_check.sh runs these on a lent GPU.
"""

import importlib.util

import pytest
import torch

from server.kernels.backends import default_backend_name
from tests.kernels.paged_batch import Pool, forked_decodes, make_step, relative_error
from tests.kernels.test_attention_cpu import EXPLICIT_LEVELS, explicit_levels_step, mixed_step

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

BACKENDS = ["torch-cuda"]
if importlib.util.find_spec("triton") is not None:
    BACKENDS.append("triton")
if importlib.util.find_spec("flash_attn") is not None:
    BACKENDS.append("flash-attn")
FLOAT32_BACKENDS = [b for b in BACKENDS if b != "flash-attn"]  # flash-attn has no float32


@pytest.mark.parametrize("backend", FLOAT32_BACKENDS)
@pytest.mark.parametrize("group", [1, 3, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_float32_matches_reference(backend, group, head_dim):
    for cascade in (False, True):
        step = mixed_step(
            group, head_dim, scattered=True, cascade=cascade, seed=group, device="cuda"
        )
        assert relative_error(step, backend=backend) < 1e-5, (backend, cascade)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("group", "head_dim"), [(3, 64), (8, 128)])
def test_half_precision_matches_reference(backend, dtype, group, head_dim):
    for cascade in (False, True):
        step = mixed_step(
            group, head_dim, scattered=False, cascade=cascade, seed=7, dtype=dtype, device="cuda"
        )
        assert relative_error(step, backend=backend) < 1e-2, (backend, cascade)


@pytest.mark.parametrize("backend", FLOAT32_BACKENDS)
def test_empty_suffix_and_group_of_one(backend):
    step = explicit_levels_step(EXPLICIT_LEVELS, device="cuda")
    assert relative_error(step, backend=backend) < 1e-5


@pytest.mark.parametrize("backend", FLOAT32_BACKENDS)
def test_long_decode_and_long_prefill(backend):
    pool = Pool(600, 16, 0, scattered=True)
    long_ctx, chunked = pool.new(5000), pool.new(300)
    step = make_step(pool, [(long_ctx, 1), (chunked, 200)], 600, 2, 4, 128, device="cuda")
    assert relative_error(step, backend=backend) < 1e-5


def test_default_backend_is_a_cuda_kernel():
    assert default_backend_name(torch.device("cuda")) in BACKENDS
    step = mixed_step(3, 64, scattered=True, cascade=True, dtype=torch.bfloat16, device="cuda")
    assert relative_error(step) < 1e-2


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs Triton")
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 3, 8])
def test_triton_fused_and_unfused_decode_steps(fused, dtype, group):
    """Decodes only (the fused launch merges and writes the cache), then a mixed step (prefill
    rows: the cache written first), each over two layers: the counters must be reset."""
    from server.kernels.triton_backend import TritonBackend, TritonConfig

    kernel = TritonBackend(TritonConfig(fused=fused))
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    for cascade in (False, True):
        step = forked_decodes(group, 64, seed=group, dtype=dtype, cascade=cascade, device="cuda")
        for _layer in range(2):
            assert relative_error(step, run=kernel) < tolerance, (fused, cascade)
            step.q, step.k, step.v = (torch.randn_like(t) for t in (step.q, step.k, step.v))
        program = step.meta.compiled["triton"]
        assert program.stores_kv == fused and program.num_parts >= 2
        assert int(program.counts.abs().sum()) == 0
    mixed = mixed_step(group, 64, scattered=True, cascade=True, seed=2, dtype=dtype, device="cuda")
    assert relative_error(mixed, run=kernel) < tolerance
