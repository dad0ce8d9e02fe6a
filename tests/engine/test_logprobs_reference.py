"""Logprobs of sampled generations against transformers' log_softmax of its own logits on the
same weights, and seeded draws that do not depend on what else runs: each request alone, in a
batch with others, again with its prompt in the prefix cache, and on an engine that drafts by
n-grams (whose confirmed drafts are scored by the verifying step, not one token a step)."""

from __future__ import annotations

import random

import pytest
import torch

from server.engine import CompletionOutput, LLMEngine, SamplingParams
from tests.engine.reference import load_reference

TOP = 3


def _settings(rng: random.Random) -> SamplingParams:
    """Sampled settings of all kinds (and a greedy one), each asking for logprobs."""
    return SamplingParams(
        max_tokens=rng.choice([10, 16]),
        temperature=rng.choice([0.0, 0.5, 0.9, 1.3]),
        top_k=rng.choice([-1, 5, 40]),
        top_p=rng.choice([1.0, 0.9]),
        min_p=rng.choice([0.0, 0.05]),
        repetition_penalty=rng.choice([1.0, 1.2]),
        frequency_penalty=rng.choice([0.0, 0.4]),
        seed=rng.randrange(2**31),
        ignore_eos=True,
        logprobs=TOP,
    )


def _check(ref: torch.nn.Module, prompt: list[int], out: CompletionOutput, case: object) -> None:
    """Each token's logprob and top alternatives are transformers' at its position."""
    with torch.inference_mode():
        logits = ref(torch.tensor([prompt + out.token_ids])).logits[0, len(prompt) - 1 : -1]
    want = logits.double().log_softmax(-1)
    assert out.logprobs is not None and len(out.logprobs) == len(out.token_ids), case
    for pos, (token, entry) in enumerate(zip(out.token_ids, out.logprobs, strict=True)):
        assert entry.token_id == token, (case, pos)
        assert entry.logprob == pytest.approx(float(want[pos, token]), abs=1e-4), (case, pos)
        top = want[pos].topk(TOP)
        assert [t for t, _ in entry.top] == top.indices.tolist(), (case, pos)
        assert [v for _, v in entry.top] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_sampled_logprobs_are_transformers_alone_batched_cached_and_drafted(tiny_llama_path):
    seed = random.randrange(2**31)
    rng = random.Random(seed)
    off = LLMEngine.from_pretrained(str(tiny_llama_path), num_kv_blocks=64)
    on = LLMEngine.from_pretrained(str(tiny_llama_path), num_kv_blocks=64, ngram_speculation=4)
    ref = load_reference(str(tiny_llama_path))
    vocab = off.model_config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(18, 40))]
               for _ in range(5)]  # fmt: skip (a block long at least: cached when run again)
    settings = [_settings(rng) for _ in prompts]
    # rows whose drafts are confirmed (this random model seldom repeats itself): one token
    # forced by a bias, and a draw among three allowed tokens; their logprobs stay the model's
    loop = rng.sample(range(3, vocab), 3)
    settings[0] = SamplingParams(max_tokens=16, temperature=0, logit_bias={loop[0]: 100.0},
                                 ignore_eos=True, logprobs=TOP)  # fmt: skip
    settings[1] = SamplingParams(max_tokens=16, temperature=1.0, allowed_token_ids=loop,
                                 seed=seed, ignore_eos=True, logprobs=TOP)  # fmt: skip
    alone = [off.generate([p], s)[0] for p, s in zip(prompts, settings, strict=True)]
    for prompt, out, sp in zip(prompts, alone, settings, strict=True):
        _check(ref, prompt, out, (seed, sp))
    runs = {
        "batched": off.generate(prompts, settings),
        "cached": off.generate(prompts, settings),
        "drafted batched": on.generate(prompts, settings),
    }
    assert all(o.cached_tokens > 0 for o in runs["cached"])
    assert on.stats.accepted_tokens > 0, on.stats
    for name, outs in runs.items():
        for prompt, want, got, sp in zip(prompts, alone, outs, settings, strict=True):
            case = (seed, name, sp)
            assert got.token_ids == want.token_ids, case  # the same seed draws the same
            _check(ref, prompt, got, case)


@pytest.mark.parametrize("backend", [None, "cpu-sdpa"])
def test_forks_decoding_over_a_shared_prefix_level_score_as_transformers(tiny_llama_path, backend):
    """Forks of one document, each with a tail, sampled with logprobs: their decode steps
    attend the document once for the group (a cascade level, merged by log-sum-exp), and the
    logprobs are still transformers' (a merge slightly off would keep most tokens, not these)."""
    from server.kernels import CascadeConfig

    seed = random.randrange(2**31)
    rng = random.Random(seed)
    rule = CascadeConfig(min_prefix_tokens=16, min_group_size=2)
    engine = LLMEngine.from_pretrained(str(tiny_llama_path), block_size=8, num_kv_blocks=64,
                                       cascade_rule=rule,
                                       attention_backend=backend)  # fmt: skip
    ref = load_reference(str(tiny_llama_path))
    vocab = engine.model_config.vocab_size
    doc = [rng.randrange(3, vocab) for _ in range(rng.randint(30, 60))]
    parent = engine.create_context()
    engine.fill(parent, doc)
    engine.run_until_idle()
    jobs = {}
    for _ in range(4):
        tail = [rng.randrange(3, vocab) for _ in range(rng.randint(0, 6))]
        child = engine.create_context(parent=parent)
        if tail:
            engine.fill(child, tail)
        sp = _settings(rng)
        jobs[engine.add_generate(child, sp)] = (doc + tail, sp)
    outputs = [o for o in engine.run_until_idle() if o.job_id in jobs]
    assert engine.stats.cascade_saved_tokens > 0, engine.stats
    for job_id, (prompt, sp) in jobs.items():
        mine = [o for o in outputs if o.job_id == job_id]
        final = mine[-1]
        assert final.finished, (seed, sp)
        done = CompletionOutput(prompt, final.token_ids, final.text, final.finish_reason,
                                logprobs=[e for o in mine for e in o.new_logprobs])  # fmt: skip
        _check(ref, prompt, done, (seed, sp))


@pytest.mark.parametrize("seed", range(2))
def test_engine_draws_follow_transformers_processed_distribution(tiny_llama_path, seed: int):
    """1000 one-token generations of one prompt, each with its own seed, through the engine
    (prefix cache, batches of many rows): their frequencies follow the reference processing
    of transformers' logits for the prompt (fixed seeds, 5 standard deviations plus a draw),
    so the settings reach the sampler as meant and the right row is sampled."""
    from tests.engine.test_sampler_reference import Ambiguous, reference

    rng = random.Random(seed)
    engine = LLMEngine.from_pretrained(str(tiny_llama_path), num_kv_blocks=64)
    ref = load_reference(str(tiny_llama_path))
    vocab = engine.model_config.vocab_size
    while True:  # a prompt and settings whose thresholds float32 cannot blur
        # whole blocks and one token: the prefix cache leaves each generation one to compute
        prompt = [rng.randrange(3, vocab) for _ in range(rng.choice([17, 33]))]
        settings = dict(temperature=rng.choice([0.7, 1.0, 1.5]), top_k=rng.choice([-1, 30]),
                        top_p=rng.choice([1.0, 0.9]), min_p=rng.choice([0.0, 0.02]),
                        repetition_penalty=rng.choice([1.0, 1.3]), max_tokens=1)  # fmt: skip
        with torch.inference_mode():
            logits = ref(torch.tensor([prompt])).logits[0, -1]
        try:
            want = reference(logits, SamplingParams(**settings), [], prompt)
            break
        except Ambiguous:
            continue
    draws = 1000
    outs = engine.generate([prompt] * draws,
                           [SamplingParams(**settings, seed=1000 * seed + i) for i in range(draws)])
    tokens = [o.token_ids[0] for o in outs]
    freq = torch.bincount(torch.tensor(tokens), minlength=vocab).double() / draws
    case = (seed, settings)
    assert not freq[want == 0].any(), case
    sigma = (want * (1 - want) / draws).sqrt()
    assert ((freq - want).abs() <= 5 * sigma + 1 / draws).all(), case
