"""The engine on a CUDA device: the same code path, checked against transformers on the CPU.
Skipped where torch sees no GPU (run by benchmarks/gpu_check.sh on a lent machine)."""

from __future__ import annotations

import pytest
import torch

from server.engine import LLMEngine, SamplingParams
from tests.engine.reference import greedy_reference, load_reference
from tests.engine.test_engine import random_prompts

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("cascade", [False, True])
def test_cuda_engine_matches_transformers(tiny_llama_path, cascade):
    engine = LLMEngine.from_pretrained(
        tiny_llama_path, device="cuda", dtype=torch.float32, block_size=16, enable_cascade=cascade
    )
    ref = load_reference(tiny_llama_path)
    prompts = random_prompts(16, engine.model_config.vocab_size, seed=21)
    outs = engine.generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == greedy_reference(ref, prompt, GREEDY.max_tokens)


def test_cuda_forks_with_cascade_equal_without(tiny_llama_path):
    results = []
    for cascade in (False, True):
        engine = LLMEngine.from_pretrained(
            tiny_llama_path, device="cuda", dtype=torch.float32, enable_cascade=cascade
        )
        doc = random_prompts(1, engine.model_config.vocab_size, seed=22, lo=300, hi=300)[0]
        parent = engine.create_context()
        engine.fill(parent, doc)
        engine.run_until_idle()
        jobs = []
        for tail in random_prompts(16, engine.model_config.vocab_size, seed=23, lo=1, hi=5):
            child = engine.create_context(parent=parent)
            engine.fill(child, tail)
            jobs.append(engine.add_generate(child, GREEDY))
        outs = {o.job_id: o.token_ids for o in engine.run_until_idle() if o.finished}
        results.append([outs[j] for j in jobs])
    assert results[0] == results[1]


def test_cuda_bf16_engine_runs_and_agrees_mostly(tiny_llama_path):
    engine = LLMEngine.from_pretrained(tiny_llama_path, device="cuda", dtype=torch.bfloat16)
    ref = load_reference(tiny_llama_path)
    prompts = random_prompts(8, engine.model_config.vocab_size, seed=24)
    outs = engine.generate(prompts, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    # bf16 rounding may flip a near-tie later on; the first token must agree for most prompts
    agree = sum(
        o.token_ids[0] == greedy_reference(ref, p, 1)[0] for p, o in zip(prompts, outs, strict=True)
    )
    assert agree >= 6


def test_cuda_step_pauses_for_latency_work_and_stays_exact(tiny_mistral_path):
    """A background prefill on the GPU pauses between layers (kernels queued before it run);
    a latency-critical request runs to its end first; both equal transformers."""
    engine = LLMEngine.from_pretrained(
        tiny_mistral_path, device="cuda", dtype=torch.float32, latency_max_batched_tokens=0,
        pause_min_tokens=0,
    )  # fmt: skip
    bulk_prompt, urgent_prompt = random_prompts(2, engine.model_config.vocab_size, seed=25)
    bulk = engine.add_request(bulk_prompt, GREEDY, priority=2)
    engine.request_pause()
    assert engine.step() == [] and engine.stats.paused_steps == 1
    urgent = engine.add_request(urgent_prompt, GREEDY, priority=0)
    engine.clear_pause_request()
    finished = [o for o in engine.run_until_idle() if o.finished]
    assert [o.job_id for o in finished] == [urgent, bulk]
    ref = load_reference(tiny_mistral_path)
    prompts = {bulk: bulk_prompt, urgent: urgent_prompt}
    for out in finished:
        assert out.token_ids == greedy_reference(ref, prompts[out.job_id], GREEDY.max_tokens)
