"""Speculative decoding by n-gram drafts: the lookup itself, and engines with it on that give
token for token what engines without it give (greedy), whatever cuts the drafts short: stop
strings, EOS, max_tokens, a small step budget, a small KV pool, forks over a shared level."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.engine import CompletionOutput, LLMEngine, SamplingParams
from server.engine.ngram_drafts import ngram_drafts
from server.kernels import CascadeConfig

GREEDY = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)


def test_drafts_follow_the_latest_longest_match():
    assert ngram_drafts([1, 2, 3, 4, 5, 9, 9, 1, 2, 3], 3) == [4, 5, 9]
    # the longest tail that occurs wins over a later shorter one
    assert ngram_drafts([7, 1, 2, 3, 8, 9, 2, 3, 6, 5, 1, 2, 3], 2) == [8, 9]
    assert ngram_drafts([5, 6, 1, 5, 6, 2, 5, 6], 4) == [2, 5, 6]  # the latest occurrence
    assert ngram_drafts([1, 2, 3, 4, 1, 2], 9) == [3, 4, 1, 2]
    assert ngram_drafts([1, 2, 3], 4) == [] and ngram_drafts([1, 2, 1, 2], 0) == []
    # a byte pattern that matches across token boundaries is no match
    assert ngram_drafts([256, 0, 0, 5, 1, 0], 2) == []


def assert_same_output(want: CompletionOutput, got: CompletionOutput, case: object) -> None:
    """Tokens, text and finish reason equal; logprobs' tokens equal, values within 1e-4."""
    assert (got.token_ids, got.text, got.finish_reason) == (
        want.token_ids, want.text, want.finish_reason), case  # fmt: skip
    wanted, gotten = want.logprobs or [], got.logprobs or []
    assert [(x.token_id, [t for t, _ in x.top]) for x in gotten] == [
        (x.token_id, [t for t, _ in x.top]) for x in wanted], case  # fmt: skip
    for x, y in zip(wanted, gotten, strict=True):
        assert y.logprob == pytest.approx(x.logprob, abs=1e-4), case


def _engines(path: Path, **config) -> tuple[LLMEngine, LLMEngine]:
    return (LLMEngine.from_pretrained(str(path), **config),
            LLMEngine.from_pretrained(str(path), ngram_speculation=4, **config))  # fmt: skip


def _echo_prompts(engine: LLMEngine) -> list[list[int]]:
    """Prompts that repeat their own start after its greedy continuation, so that drafts are
    found (and the tiny random model confirms some of them)."""
    base = [engine.tokenizer.encode(t) for t in
            ("The parrot said", "a b c", "one two three four", "Graphs of calls")]  # fmt: skip
    outs = engine.generate(base, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    return [p + o.token_ids + p for p, o in zip(base, outs, strict=True)]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_outputs_equal_those_without_drafts(arch: str, tiny_llama_path, tiny_qwen2_path):
    path = tiny_llama_path if arch == "llama" else tiny_qwen2_path
    off, on = _engines(path)
    prompts = _echo_prompts(off)
    for batch in (prompts[:1], prompts[:2], prompts):
        want = off.generate(batch, GREEDY)
        got = on.generate(batch, GREEDY)
        assert [o.token_ids for o in got] == [o.token_ids for o in want]
        assert [o.text for o in got] == [o.text for o in want]
    assert on.stats.accepted_tokens > 0 and on.stats.drafted_tokens > on.stats.accepted_tokens
    assert on.stats.steps <= off.stats.steps - 24  # (off also ran the prompts' continuations)
    # stop strings, EOS and max_tokens end a generation inside a step's confirmed drafts too;
    # a sampled row beside them is left alone
    text = want[0].text
    mixed = [SamplingParams(max_tokens=40, temperature=0, stop=[text[12:15]]),
             SamplingParams(max_tokens=7, temperature=0, ignore_eos=True),
             SamplingParams(max_tokens=30, temperature=1.0, seed=3),
             SamplingParams(max_tokens=40, temperature=0)]  # fmt: skip
    for a, b in zip(off.generate(prompts, mixed), on.generate(prompts, mixed), strict=True):
        assert (b.token_ids, b.text, b.finish_reason) == (a.token_ids, a.text, a.finish_reason)


def test_sampled_scored_penalized_and_constrained_rows_draft_exactly(tiny_llama_path):
    """Rows that are not plain greedy draft too: each place's token is chosen as a plain step
    would choose it, with the state the drafts before it made, so a seeded sampled row draws
    the same tokens, and logprobs, penalties and constraints come out the same."""
    off, on = _engines(tiny_llama_path)
    prompts = _echo_prompts(off)
    said = off.generate(prompts[:1], SamplingParams(max_tokens=24, temperature=0,
                                                    ignore_eos=True))[0].text  # fmt: skip
    kinds = {
        # sampled, but top_k=1 makes it as sure as greedy: drafts are confirmed
        "top_k 1": SamplingParams(max_tokens=40, temperature=1.0, top_k=1, seed=1, ignore_eos=True),
        "top_k 3": SamplingParams(max_tokens=40, temperature=0.8, top_k=3, seed=2, ignore_eos=True),
        "top_p, min_p, logprobs": SamplingParams(
            max_tokens=40, temperature=0.6, top_p=0.8, min_p=0.05, seed=3, logprobs=2,
            ignore_eos=True),  # fmt: skip
        "greedy, logprobs": SamplingParams(max_tokens=40, temperature=0, logprobs=3, ignore_eos=True),
        "penalties, bias": SamplingParams(
            max_tokens=40, temperature=0, presence_penalty=0.2, frequency_penalty=0.1,
            logit_bias={7: -1.0}, ignore_eos=True),  # fmt: skip
        "repetition, min_tokens": SamplingParams(max_tokens=40, temperature=0,
                                                 repetition_penalty=1.1, min_tokens=30),  # fmt: skip
        "choice": SamplingParams(max_tokens=40, temperature=0, choices=[said, "a b c"]),
        "choice, sampled": SamplingParams(max_tokens=40, temperature=0.7, top_k=1, seed=4,
                                          choices=[said, "a b c"]),  # fmt: skip
    }
    confirmed = {}
    for name, sampling in kinds.items():
        before = on.stats.accepted_tokens
        for batch in (prompts[:1], prompts):
            for a, b in zip(off.generate(batch, sampling), on.generate(batch, sampling), strict=True):
                assert_same_output(a, b, name)
        confirmed[name] = on.stats.accepted_tokens - before
    assert confirmed["top_k 1"] and confirmed["greedy, logprobs"], confirmed
    assert confirmed["choice"] and confirmed["choice, sampled"], confirmed


def test_a_constraint_drafts_the_text_it_forces(tiny_llama_path):
    """Where a constraint leaves one way on (a regex's literal parts, the rest of a choice),
    that text is drafted whole, so a step takes it at once; outputs stay those without drafts."""
    off, on = _engines(tiny_llama_path)
    prompt = off.tokenizer.encode("Describe the parrot as JSON.")
    regex = r'\{"name": "[a-z]{1,12}", "colour": "(green|grey)", "age": [0-9]{1,2}\}'
    for sampling in (
        SamplingParams(max_tokens=60, temperature=0, regex=regex),
        SamplingParams(max_tokens=60, temperature=0.8, seed=3, regex=regex),
        SamplingParams(max_tokens=60, temperature=0, choices=["The parrot is green and loud",
                                                              "The parrot is grey and quiet"]),
    ):  # fmt: skip
        steps = (off.stats.steps, on.stats.steps)
        want, got = off.generate([prompt], sampling)[0], on.generate([prompt], sampling)[0]
        assert (got.token_ids, got.text) == (want.token_ids, want.text)
        assert got.finish_reason == want.finish_reason == "stop"
        assert on.stats.steps - steps[1] <= (off.stats.steps - steps[0]) / 2


def test_cut_drafts_small_pools_and_forks_change_nothing(tiny_llama_path):
    """A step budget below a drafted row (the drafts are cut, the row runs plain next), a pool
    that preempts, and greedy forks decoding over a shared-prefix level."""
    for config in ({"max_num_batched_tokens": 3}, {"num_kv_blocks": 24, "block_size": 8}):
        off, on = _engines(tiny_llama_path, **config)
        prompts = _echo_prompts(off)
        want = off.generate(prompts, GREEDY)
        assert [o.token_ids for o in on.generate(prompts, GREEDY)] == [o.token_ids for o in want]
    rule = CascadeConfig(min_prefix_tokens=16, min_group_size=2)
    off, on = _engines(tiny_llama_path, block_size=8, cascade_rule=rule)
    doc = _echo_prompts(off)[0]
    results = []
    for engine in (off, on):
        parent = engine.create_context()
        engine.fill(parent, doc)
        engine.run_until_idle()
        children = [engine.create_context(parent=parent) for _ in range(3)]
        jobs = [engine.add_generate(child, GREEDY) for child in children]
        outs = {o.job_id: o for o in engine.run_until_idle() if o.finished}
        results.append([outs[j].token_ids for j in jobs])
    assert results[0] == results[1] and on.stats.drafted_tokens > 0


def test_drafts_a_latency_cap_cuts_are_dropped_and_the_row_goes_on_plain(tiny_llama_path):
    """With latency-critical work running, other work's rows are capped at one token: a drafted
    row of another context is cut, its drafts dropped (computed in part, not verified), and the
    next step runs it plain; the outputs stay those of an engine without drafts."""
    config = {"latency_max_batched_tokens": 1}
    off, on = _engines(tiny_llama_path, **config)
    prompts = _echo_prompts(off)
    outputs = []
    for engine in (off, on):
        jobs = [engine.add_request(prompts[0], GREEDY, priority=0),
                engine.add_request(prompts[1], GREEDY, priority=1)]  # fmt: skip
        done = {o.job_id: o for o in engine.run_until_idle() if o.finished}
        outputs.append([done[j].token_ids for j in jobs])
    assert outputs[0] == outputs[1]
    assert on.stats.drafted_tokens > 0
