"""A seeded randomized differential test of drafting: batches of generations with random
sampling settings (greedy and sampled, top-k/top-p/min-p, penalties, logit bias, logprobs,
stop strings and ids, min_tokens, constraints) on an engine that drafts and on one that does not
must give the same tokens, texts, finish reasons and logprobs (the same seeds draw the same)."""

from __future__ import annotations

import random

import pytest

from server.engine import LLMEngine, SamplingParams
from tests.engine.test_speculation import assert_same_output

SEEDS = range(50)
RAN: set[int] = set()  # the seeds whose case ran
REGEX = r'\{"name": "[a-z]{1,12}", "colour": "(green|grey)"\}'
SCHEMA = {
    "type": "object",
    "properties": {"colour": {"enum": ["green", "grey"]}, "loud": {"type": "boolean"}},
    "required": ["colour", "loud"],
}


@pytest.fixture(scope="module")
def engines(tiny_llama_path) -> tuple[LLMEngine, LLMEngine, list[list[int]], list[str]]:
    """The engines without and with drafts, prompts that repeat their own greedy continuation
    (so drafts are found and some confirmed), and those continuations' texts."""
    off = LLMEngine.from_pretrained(str(tiny_llama_path))
    on = LLMEngine.from_pretrained(str(tiny_llama_path), ngram_speculation=4)
    base = [off.tokenizer.encode(t) for t in
            ("The parrot said", "a b c", "one two three four", "Graphs of calls", "JSON: {")]  # fmt: skip
    outs = off.generate(base, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    return off, on, [p + o.token_ids + p for p, o in zip(base, outs, strict=True)], [
        o.text for o in outs]  # fmt: skip


def _sampling(rng: random.Random, said: str) -> SamplingParams:
    constraint = rng.choice([{}, {}, {}, {"regex": REGEX}, {"choices": [said, "a b c"]},
                             {"json_object": True, "json_schema": SCHEMA}])  # fmt: skip
    start = rng.randrange(max(1, len(said) - 3))
    max_tokens = rng.choice([1, 5, 17, 40])
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=rng.choice([0, 0, 0.5, 1.0]),
        top_k=rng.choice([-1, -1, 1, 3]),
        top_p=rng.choice([1.0, 0.8]),
        min_p=rng.choice([0.0, 0.0, 0.1]),
        seed=rng.randrange(1 << 30),
        presence_penalty=rng.choice([0.0, 0.0, 0.4]),
        frequency_penalty=rng.choice([0.0, 0.0, 0.3]),
        repetition_penalty=rng.choice([1.0, 1.0, 1.2]),
        logit_bias=rng.choice([{}, {}, {rng.randrange(200): rng.choice([-5.0, 5.0])}]),
        logprobs=rng.choice([None, None, 0, 2]),
        stop=rng.choice([[], [], [said[start : start + 3]]]),
        stop_token_ids=rng.choice([[], [], [rng.randrange(200)]]),
        min_tokens=0 if constraint else min(max_tokens, rng.choice([0, 0, 4])),
        ignore_eos=not constraint and rng.random() < 0.5,
        include_stop_str_in_output=rng.random() < 0.3,
        **constraint,
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_drafting_engines_answer_as_plain_ones(engines, seed: int):
    off, on, prompts, said = engines
    RAN.add(seed)
    rng = random.Random(seed)
    picks = [rng.randrange(len(prompts)) for _ in range(rng.choice([1, 1, 2, 4]))]
    batch = [prompts[i] for i in picks]
    samplings = [_sampling(rng, said[i]) for i in picks]
    for a, b, sp in zip(off.generate(batch, samplings), on.generate(batch, samplings), samplings,
                        strict=True):  # fmt: skip
        assert_same_output(a, b, sp)


def test_the_fuzz_drafts_and_confirms(engines):
    """The cases above do exercise drafting (run after them in file order)."""
    if len(RAN) < len(SEEDS):
        pytest.skip("needs every seed above to have run")
    on = engines[1]
    assert on.stats.drafted_tokens > 250 and on.stats.accepted_tokens > 75, on.stats
