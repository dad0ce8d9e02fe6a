"""vLLM's `cache_salt`: a context reuses prefix-cached KV blocks only from contexts of the same
salt (the unsalted ones share among themselves), on every path a plain request takes: one
request, a filled prompt forked for `n` samples, and a preempted context computed again."""

from __future__ import annotations

import pytest

from server.engine import LLMEngine, SamplingParams
from server.engine.context import JobKind
from tests.engine.reference import greedy_reference, load_reference
from tests.engine.test_engine import random_prompts
from tests.engine.test_scheduler import BS, advance, make, new_ctx

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def reference(tiny_llama_path):
    return load_reference(tiny_llama_path)


def run_request(engine: LLMEngine, prompt: list[int], salt: str | None) -> tuple[list[int], int]:
    """(generated tokens, prompt tokens taken from the cache) of one plain request."""
    before = engine.stats.cached_tokens
    job = engine.add_request(prompt, GREEDY, cache_salt=salt)
    final = [o for o in engine.run_until_idle() if o.job_id == job and o.finished]
    return final[0].token_ids, engine.stats.cached_tokens - before


def test_plain_requests_share_cached_blocks_only_within_their_salt(tiny_llama_path, reference):
    engine = LLMEngine.from_pretrained(tiny_llama_path, block_size=4)
    prompt = random_prompts(1, engine.model_config.vocab_size, seed=11, lo=21, hi=21)[0]
    want = greedy_reference(reference, prompt, GREEDY.max_tokens)
    full = 20  # five full blocks; the last prompt token is always computed
    steps = [
        (None, 0), ("tenant-a", 0), ("tenant-a", full), ("tenant-b", 0), (None, full),
        ("tenant-b", full), ("tenant-a", full),
    ]  # fmt: skip
    for salt, cached in steps:
        tokens, got = run_request(engine, prompt, salt)
        assert (tokens, got) == (want, cached), salt
    assert engine.stats.free_blocks == engine.stats.total_blocks


def test_a_salted_prompt_forked_for_samples_shares_only_within_its_salt(
    tiny_llama_path, reference
):
    """The `n` samples path: the prompt filled in a salted context, then forked; its blocks
    and those the forks fill carry the salt."""
    engine = LLMEngine.from_pretrained(tiny_llama_path, block_size=4)
    prompt = random_prompts(1, engine.model_config.vocab_size, seed=12, lo=22, hi=22)[0]
    want = greedy_reference(reference, prompt, GREEDY.max_tokens)
    parent = engine.create_context(cache_salt="tenant-a")
    engine.fill(parent, prompt[:-1])
    engine.run_until_idle()
    assert engine.stats.cached_tokens == 0
    forks = [engine.create_context(parent) for _ in range(2)]
    engine.free(parent)
    with pytest.raises(ValueError, match="keeps its parent's cache_salt"):
        engine.create_context(forks[0], cache_salt="tenant-b")
    jobs = []
    for fork in forks:
        engine.fill(fork, prompt[-1:])
        jobs.append(engine.add_generate(fork, GREEDY, free_on_finish=True))
    finals = {o.job_id: o.token_ids for o in engine.run_until_idle() if o.finished}
    assert [finals[j] for j in jobs] == [want, want]
    for salt, cached in ((None, 0), ("tenant-b", 0), ("tenant-a", 20)):
        assert run_request(engine, prompt, salt) == (want, cached), salt
    # a fork of a salted context still short of a block: the blocks it fills are salted too
    short = engine.create_context(cache_salt="tenant-c")
    engine.fill(short, prompt[:2])
    fork = engine.create_context(short)
    engine.fill(fork, prompt[2:-1])
    engine.run_until_idle()
    for salt, cached in ((None, 20), ("tenant-b", 20), ("tenant-c", 20), ("tenant-d", 0)):
        assert run_request(engine, prompt, salt) == (want, cached), salt


@pytest.mark.parametrize("salt", ["", 7, b"x"])
def test_a_salt_is_a_non_empty_string(tiny_llama_path, salt):
    engine = LLMEngine.from_pretrained(tiny_llama_path, block_size=4)
    with pytest.raises(ValueError, match="cache_salt must be a non-empty string"):
        engine.add_request([5, 6, 7], GREEDY, cache_salt=salt)  # type: ignore[arg-type]
    assert not engine.scheduler.contexts


def test_preempted_salted_context_recomputed_matches_no_unsalted_blocks():
    """Preemption drops a context's blocks and hashes; computed again, its first block is
    still hashed from its salt, so unsalted blocks of the same tokens (filled in that very
    step) are not attached, and salted ones are."""
    sched, bm = make(num_blocks=6, budget=64)
    hi = new_ctx(sched, range(8), priority=0)  # 2 blocks
    lo = new_ctx(sched, range(50, 58), priority=1)
    lo.cache_salt = "tenant-a"
    advance(sched, sched.schedule())
    for _ in range(8):  # both decode; hi's growth eventually takes lo's blocks
        out = sched.schedule()
        advance(sched, out)
        if out.preempted:
            break
    assert out.preempted == [lo] and lo.num_computed == 0 and lo.cache_salt == "tenant-a"
    sched.remove_context(hi)
    tokens = lo.token_ids[: 2 * BS]  # the pool holds these twice and lo's rest
    plain = new_ctx(sched, tokens, kind=JobKind.FILL, priority=0)  # ahead of lo in the queue
    out = sched.schedule()
    assert [s.ctx for s in out.scheduled] == [plain, lo]
    # (lo may take back its own salted first block, still cached since its preemption)
    assert set(plain.block_table).isdisjoint(lo.block_table)
    advance(sched, out)
    sched.remove_context(plain)
    salted = new_ctx(sched, tokens, kind=JobKind.FILL)
    salted.cache_salt = "tenant-a"
    out = sched.schedule()
    assert out.num_cached_tokens == 2 * BS and salted.block_table == lo.block_table[:2]


def test_generate_salts_its_prompts_and_counts_what_each_found_cached(tiny_llama_path):
    engine = LLMEngine.from_pretrained(tiny_llama_path, block_size=4)
    prompt = random_prompts(1, engine.model_config.vocab_size, seed=12, lo=21, hi=21)[0]
    steps = [(None, 0), ("tenant-a", 0), ("tenant-a", 20), ("tenant-b", 0), (None, 20)]
    for salt, cached in steps:
        (out,) = engine.generate([prompt], GREEDY, cache_salt=salt)
        assert out.cached_tokens == cached, salt
