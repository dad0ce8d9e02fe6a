"""The engine against transformers: greedy outputs token for token in one continuous batch,
with preemption, the prefix cache and forked contexts; sampling and stop rules."""

from __future__ import annotations

import asyncio
import random

import pytest

from server.engine import JobOutput, LLMEngine, SamplingParams
from server.engine.config import EngineConfig
from server.kernels.cpu import huge_pages
from tests.engine.reference import greedy_reference, load_reference
from tests.tiny_models import make_tiny_model

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


def random_prompts(n: int, vocab: int, seed: int, lo: int = 3, hi: int = 70) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


@pytest.fixture(scope="module", params=["llama", "mistral", "qwen2"])
def arch_path(request, tiny_llama_path, tiny_mistral_path, tiny_qwen2_path):
    return {"llama": tiny_llama_path, "mistral": tiny_mistral_path, "qwen2": tiny_qwen2_path}[
        request.param
    ]


def check_against_reference(engine: LLMEngine, ref, prompts: list[list[int]], sp=GREEDY) -> None:
    outs = engine.generate(prompts, sp)
    for prompt, out in zip(prompts, outs, strict=False):
        assert out.token_ids == greedy_reference(ref, prompt, sp.max_tokens), (
            f"prompt of {len(prompt)}"
        )


def test_continuous_batch_matches_transformers(arch_path):
    engine = LLMEngine.from_pretrained(arch_path, block_size=8, max_num_batched_tokens=96)
    ref = load_reference(arch_path)
    prompts = random_prompts(16, engine.model_config.vocab_size, seed=1)
    check_against_reference(engine, ref, prompts)
    assert engine.stats.steps > 2  # chunked: the budget cannot take all prompts at once
    assert engine.stats.free_blocks == engine.stats.total_blocks  # every block came back


def test_preemption_keeps_outputs_exact(tiny_llama_path):
    engine = LLMEngine.from_pretrained(
        tiny_llama_path,
        block_size=4,
        num_kv_blocks=40,
        max_num_batched_tokens=64,
        enable_prefix_cache=False,
    )
    ref = load_reference(tiny_llama_path)
    prompts = random_prompts(16, engine.model_config.vocab_size, seed=2, lo=5, hi=40)
    check_against_reference(engine, ref, prompts)
    assert engine.stats.preemptions > 0
    assert engine.blocks.num_free_blocks == 40


def test_prefix_cache_hits_keep_outputs_exact(tiny_qwen2_path):
    engine = LLMEngine.from_pretrained(tiny_qwen2_path, block_size=4, max_num_batched_tokens=256)
    ref = load_reference(tiny_qwen2_path)
    vocab = engine.model_config.vocab_size
    shared = random_prompts(1, vocab, seed=3, lo=37, hi=37)[0]
    tails = random_prompts(16, vocab, seed=4, lo=1, hi=12)
    prompts = [shared + t for t in tails]
    check_against_reference(engine, ref, prompts[:1])  # warms the cache
    before = engine.stats.cached_tokens
    check_against_reference(engine, ref, prompts[1:])
    assert engine.stats.cached_tokens - before >= 15 * 36


@pytest.mark.parametrize("backend", [None, "cpu-sdpa"])
def test_forked_contexts_match_transformers(tiny_llama_path, backend):
    # None: the default CPU backend (own decode KV through the paged kernel); cpu-sdpa: PyTorch
    engine = LLMEngine.from_pretrained(tiny_llama_path, block_size=8, attention_backend=backend)
    ref = load_reference(tiny_llama_path)
    vocab = engine.model_config.vocab_size
    doc = random_prompts(1, vocab, seed=5, lo=29, hi=29)[0]  # partial last block: copy-on-write
    parent = engine.create_context()
    engine.fill(parent, doc)
    engine.run_until_idle()
    computed = engine.stats.prefill_tokens
    tails = random_prompts(16, vocab, seed=6, lo=0, hi=9)
    jobs = {}
    for tail in tails:
        child = engine.create_context(parent=parent)
        if tail:
            engine.fill(child, tail)
        jobs[engine.add_generate(child, GREEDY)] = tail
    outs = {o.job_id: o for o in engine.run_until_idle() if o.finished and o.job_id in jobs}
    for job_id, tail in jobs.items():
        assert outs[job_id].token_ids == greedy_reference(ref, doc + tail, GREEDY.max_tokens)
    # the document was computed once; children computed only their tails (+1 token when empty)
    assert engine.stats.prefill_tokens - computed == sum(max(len(t), 1) for t in tails)
    # the parent is intact: a generation on it equals the reference too
    job = engine.add_generate(parent, GREEDY)
    (out,) = [o for o in engine.run_until_idle() if o.job_id == job and o.finished]
    assert out.token_ids == greedy_reference(ref, doc, GREEDY.max_tokens)


def test_cascade_rule_from_the_config_plans_levels(tiny_llama_path, monkeypatch):
    """EngineConfig.cascade_rule replaces the backend's measured rule: forks of a short document
    then decode with a shared-prefix level (in the decoder stack), and still equal transformers."""
    from server.engine import model_runner
    from server.kernels import CascadeConfig

    levels = []
    build = model_runner.build_attention_metadata

    def recording(*args, **kwargs):
        meta = build(*args, **kwargs)
        levels.append(len(meta.shared_prefixes))
        return meta

    monkeypatch.setattr(model_runner, "build_attention_metadata", recording)
    rule = CascadeConfig(min_prefix_tokens=16, min_group_size=2)
    engine = LLMEngine.from_pretrained(tiny_llama_path, block_size=8, cascade_rule=rule)
    ref = load_reference(tiny_llama_path)
    doc = random_prompts(1, engine.model_config.vocab_size, seed=7, lo=40, hi=40)[0]
    parent = engine.create_context()
    engine.fill(parent, doc)
    engine.run_until_idle()
    children = [engine.create_context(parent=parent) for _ in range(4)]
    jobs = [engine.add_generate(child, GREEDY) for child in children]
    outs = {o.job_id: o for o in engine.run_until_idle() if o.finished}
    assert max(levels) >= 1
    want = greedy_reference(ref, doc, GREEDY.max_tokens)
    assert all(outs[job].token_ids == want for job in jobs)


def test_the_cascade_rule_follows_the_kernels_the_steps_use(tiny_llama_path, tmp_path):
    """Without a configured rule, the cpu backend's rule is the one measured for the kernels
    the model's steps use: the paged kernels (in the decoder stack or layer by layer), or one
    PyTorch call per sequence for head sizes they lack; other backends keep theirs."""
    from server.kernels import CascadeConfig
    from server.kernels.cascade_config import CPU_RULE, CPU_SDPA_RULE
    from server.kernels.cpu import decoder_stack, paged_decode

    def rule(path, **config):
        return LLMEngine.from_pretrained(path, **config).runner.cascade_rule()

    if not (decoder_stack.available() and paged_decode.available()):
        pytest.skip("the CPU kernels could not be built here")
    assert rule(tiny_llama_path) == CPU_RULE
    assert rule(tiny_llama_path, fused_layers=False) == CPU_RULE
    assert rule(tiny_llama_path, attention_backend="cpu-sdpa") == CPU_SDPA_RULE
    odd_heads = make_tiny_model(tmp_path / "odd", head_dim=24)  # no kernel for 24-wide heads
    assert rule(odd_heads) == CPU_SDPA_RULE
    mine = CascadeConfig(min_prefix_tokens=16, min_group_size=3)
    assert rule(tiny_llama_path, cascade_rule=mine, fused_layers=False) == mine


def test_unknown_attention_backend_is_refused(tiny_llama_path):
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        LLMEngine.from_pretrained(tiny_llama_path, attention_backend="fast")


@pytest.mark.parametrize("gb", [0.0, -1.0, float("nan"), float("inf")])
def test_a_kv_pool_size_that_is_not_a_positive_number_is_refused(gb):
    with pytest.raises(ValueError, match="kv_cache_gb must be positive and finite"):
        EngineConfig(kv_cache_gb=gb)


def test_context_fill_generate_fill_generate(tiny_llama_path):
    engine = LLMEngine.from_pretrained(tiny_llama_path, block_size=4)
    ref = load_reference(tiny_llama_path)
    a, b = random_prompts(2, engine.model_config.vocab_size, seed=7, lo=6, hi=9)
    ctx = engine.create_context()
    engine.fill(ctx, a)
    j1 = engine.add_generate(ctx, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    engine.fill(ctx, b)
    j2 = engine.add_generate(ctx, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    outs = {o.job_id: o for o in engine.run_until_idle() if o.finished}
    first = greedy_reference(ref, a, 5)
    assert outs[j1].token_ids == first
    assert outs[j2].token_ids == greedy_reference(ref, a + first + b, 5)
    assert engine.context_token_ids(ctx) == a + first + b + outs[j2].token_ids
    engine.truncate(ctx, len(a))
    j3 = engine.add_generate(ctx, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    (o3,) = [o for o in engine.run_until_idle() if o.job_id == j3 and o.finished]
    assert o3.token_ids == first
    engine.free(ctx)
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_generate_keeps_other_work_outputs_for_the_next_step(tiny_llama_path):
    """generate() beside other work: an aborted job's output (a freed context) and a job that
    runs along are not generate()'s; they stay for the next step(), whole and in order."""
    engine = LLMEngine.from_pretrained(tiny_llama_path, block_size=4)
    ref = load_reference(tiny_llama_path)
    a, b, c = random_prompts(3, engine.model_config.vocab_size, seed=11, lo=6, hi=9)
    greedy = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    freed = engine.create_context()
    engine.fill(freed, a)
    aborted = engine.add_generate(freed, greedy)
    engine.step()
    engine.free(freed)
    along = engine.add_request(b, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    (out,) = engine.generate([c], greedy)
    assert out.token_ids == greedy_reference(ref, c, 6)
    later = engine.run_until_idle()
    assert [o.finish_reason for o in later if o.job_id == aborted] == ["abort"]
    tokens = [t for o in later if o.job_id == along for t in o.new_token_ids]
    assert tokens == greedy_reference(ref, b, 12)


def test_cpu_kv_pools_start_on_huge_page_boundaries(tiny_llama_path):
    """Each layer's K and V pool is a mapping of its own (server/kernels/cpu/huge_pages.py),
    still zeroed and written through by steps."""
    engine = LLMEngine.from_pretrained(tiny_llama_path, block_size=16, num_kv_blocks=4096)
    k_cache, v_cache = engine.runner.kv_caches[0]
    assert k_cache.numel() * 4 >= huge_pages.HUGE_PAGE_BYTES
    assert k_cache.data_ptr() % huge_pages.HUGE_PAGE_BYTES == 0
    assert v_cache.data_ptr() % huge_pages.HUGE_PAGE_BYTES == 0
    assert not k_cache.any()
    engine.generate([[1, 2, 3, 4, 5]], SamplingParams(max_tokens=2, temperature=0))
    assert k_cache.any() and v_cache.any()


@pytest.mark.parametrize("prefault", [True, False])
def test_cpu_kv_pools_are_written_at_start_unless_told_not_to(tiny_llama_path, prefault):
    """Prefaulted pools are in memory before the first step (the steps then pay no page
    faults); otherwise their pages are mapped as blocks are first used."""
    engine = LLMEngine.from_pretrained(
        tiny_llama_path, block_size=16, num_kv_blocks=4096, prefault_kv_cache=prefault
    )
    pools = [pool for pair in engine.runner.kv_caches for pool in pair]
    pool_bytes = pools[0].numel() * pools[0].element_size()
    if prefault:
        assert all(huge_pages.resident_bytes(p) >= pool_bytes for p in pools)
    else:
        # Writing them now brings their pages in, so they were not in before. (The kernel may
        # merge a pool's mapping with its neighbours', live pools of other engines among them,
        # so the mapping's size says nothing by itself; its growth does.)
        before = [huge_pages.resident_bytes(p) for p in pools]
        for pool in pools:
            pool.zero_()
        grown = [huge_pages.resident_bytes(p) - b for p, b in zip(pools, before, strict=True)]
        assert all(g >= pool_bytes // 2 for g in grown), (grown, pool_bytes)
    assert not any(p.any() for p in pools)
    out = engine.generate([[1, 2, 3, 4, 5]], SamplingParams(max_tokens=3, temperature=0))
    assert len(out[0].token_ids) == 3


def test_seeded_sampling_is_reproducible_whatever_the_batch(tiny_llama_path):
    engine = LLMEngine.from_pretrained(tiny_llama_path)
    prompt = random_prompts(1, engine.model_config.vocab_size, seed=8)[0]
    sp = SamplingParams(
        max_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=123, ignore_eos=True
    )
    alone = engine.generate([prompt], sp)[0].token_ids
    crowd = engine.generate(
        [prompt] + random_prompts(5, 300, seed=9),
        [sp] + [SamplingParams(max_tokens=10, temperature=1.0, ignore_eos=True)] * 5,
    )
    assert crowd[0].token_ids == alone
    other = engine.generate(
        [prompt], SamplingParams(max_tokens=10, temperature=1.0, seed=124, ignore_eos=True)
    )
    assert other[0].token_ids != alone
    top1 = engine.generate(
        [prompt], SamplingParams(max_tokens=10, temperature=0.7, top_k=1, ignore_eos=True)
    )
    assert top1[0].token_ids == engine.generate([prompt], GREEDY)[0].token_ids[:10]


def test_stop_rules(tiny_llama_path):
    engine = LLMEngine.from_pretrained(tiny_llama_path)
    prompt = random_prompts(1, engine.model_config.vocab_size, seed=10)[0]
    full = engine.generate([prompt], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))[
        0
    ]
    assert full.finish_reason == "length" and len(full.token_ids) == 20
    # a stop token id ends generation (the token is reported, as the finish cause)
    stop_tok = full.token_ids[5]
    first = full.token_ids.index(stop_tok)
    out = engine.generate(
        [prompt], SamplingParams(max_tokens=20, temperature=0, stop_token_ids=[stop_tok])
    )[0]
    assert out.token_ids == full.token_ids[: first + 1] and out.finish_reason == "stop"
    # a stop string is cut from the text
    text = full.text
    needle = text[len(text) // 2 : len(text) // 2 + 3]
    if needle.strip():
        out = engine.generate(
            [prompt], SamplingParams(max_tokens=20, temperature=0, stop=[needle], ignore_eos=True)
        )[0]
        assert out.finish_reason == "stop"
        assert out.text == text[: text.index(needle)]


def test_a_stop_names_the_stop_string_or_stop_id_that_ended_it(tiny_llama_path) -> None:
    """vLLM's stop_reason: the stop string or stop token id; None for EOS, even an EOS also
    given as a stop id, and for a length cut."""
    engine = LLMEngine.from_pretrained(tiny_llama_path)
    prompt = random_prompts(1, engine.model_config.vocab_size, seed=10)[0]
    greedy = {"max_tokens": 20, "temperature": 0, "ignore_eos": True}
    full = engine.generate([prompt], SamplingParams(**greedy))[0]
    assert full.stop_reason is None  # a length cut
    stop_id = full.token_ids[5]
    by_id = engine.generate([prompt], SamplingParams(**greedy, stop_token_ids=[stop_id]))[0]
    assert by_id.finish_reason == "stop" and by_id.stop_reason == stop_id
    text = full.text
    at = next(i for i in range(len(text) // 2, len(text) - 3)
              if text[i : i + 3].strip() and "\ufffd" not in text[i : i + 3])  # fmt: skip
    needle = text[at : at + 3]
    for kept in (False, True):
        out = engine.generate([prompt], SamplingParams(
            **greedy, stop=["\x00never", needle], include_stop_str_in_output=kept,
        ))[0]  # fmt: skip
        assert out.finish_reason == "stop" and out.stop_reason == needle
        assert out.text.endswith(needle) == kept
    eos = min(engine.eos_token_ids)
    forced = {"max_tokens": 4, "temperature": 0, "logit_bias": {eos: 100.0}}
    for stops in ([], [eos]):
        out = engine.generate([prompt], SamplingParams(**forced, stop_token_ids=stops))[0]
        assert out.token_ids == [eos] and out.finish_reason == "stop"
        assert out.stop_reason is None


def test_a_kept_stop_string_holds_no_text_back_while_streaming(tiny_llama_path) -> None:
    """Text that may begin a stop string is held back from the stream, since it is cut if the
    string completes; a stop string kept in the output (include_stop_str_in_output) cuts
    nothing before it, so each step streams all its text at once (as vLLM's)."""
    engine = LLMEngine.from_pretrained(tiny_llama_path)
    prompt = random_prompts(1, engine.model_config.vocab_size, seed=10)[0]
    never = "\x00 a stop string this model does not write \x00"
    for include, lag in ((True, 0), (False, len(never) - 1)):
        sp = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, stop=[never],
                            include_stop_str_in_output=include)  # fmt: skip
        job = engine.add_request(prompt, sp, 1)
        streamed = ""
        while engine.has_work:
            for out in engine.step():
                if out.job_id == job:
                    streamed += out.new_text
                    if not out.finished:
                        assert streamed == out.text[: max(0, len(out.text) - lag)]
        assert streamed == out.text and len(out.token_ids) == 12


def test_stop_strings_written_during_min_tokens_are_ignored_whatever_the_other_stops(
    tiny_llama_path,
):
    """As vLLM's: a stop string counts only once it ends in text of a token past min_tokens;
    one written before is ignored, also when a longer stop string is asked for beside it."""
    engine = LLMEngine.from_pretrained(tiny_llama_path)
    prompt = random_prompts(1, engine.model_config.vocab_size, seed=10)[0]
    letters = [engine.tokenizer.encode(c)[0] for c in "xyz"]  # one character a token
    sampling = dict(max_tokens=12, temperature=0, ignore_eos=True, allowed_token_ids=letters)
    text = engine.generate([prompt], SamplingParams(**sampling))[0].text
    assert len(text) == 12
    char = next(c for c in text[:3] if c in text[3:])  # in tokens 1-3, and again later
    want = text[: text.index(char, 3)]  # with min_tokens 3, the first from token 4 on
    for stops in ([char], [char, "a stop string never written"]):
        out = engine.generate([prompt], SamplingParams(**sampling, stop=stops, min_tokens=3))[0]
        assert (out.text, out.finish_reason) == (want, "stop"), stops


def test_a_stop_string_counts_only_when_it_ends_past_min_tokens(tiny_llama_path) -> None:
    """As vLLM's min_tokens: the first min_tokens tokens are generated whatever they write, and a
    stop string ending in the token after them stops there (as EOS or a stop id may come only
    then). A bias forces "A" at every step, the stop string: it used to stop on the
    min_tokens-th token, with min_tokens=1 on the first, leaving nothing."""
    engine = LLMEngine.from_pretrained(tiny_llama_path)
    (a,) = engine.tokenizer.encode("A")
    for min_tokens in (0, 1, 3):
        for include in (False, True):
            sp = SamplingParams(max_tokens=8, temperature=0, logit_bias={a: 100.0}, stop=["A"],
                                min_tokens=min_tokens, include_stop_str_in_output=include)  # fmt: skip
            out = engine.generate([engine.tokenizer.encode("The parrot")], sp)[0]
            assert out.token_ids == [a] * (min_tokens + 1), (min_tokens, include)
            assert out.text == "A" * (min_tokens + int(include)) and out.finish_reason == "stop"
    # a stop string begun within them and ended in the next token counts
    sp = SamplingParams(max_tokens=8, temperature=0, logit_bias={a: 100.0}, stop=["AA"],
                        min_tokens=2)  # fmt: skip
    out = engine.generate([engine.tokenizer.encode("The parrot")], sp)[0]
    assert (out.token_ids, out.text) == ([a] * 3, "A")


def test_bad_requests_raise_clear_errors(tiny_llama_path):
    engine = LLMEngine.from_pretrained(tiny_llama_path, num_kv_blocks=4, block_size=4)
    vocab = engine.model_config.vocab_size
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add_request([vocab + 5], GREEDY)
    assert engine.max_model_len == 16  # the pool holds 16 tokens: no context may need more
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request(list(range(3, 30)), GREEDY)
    with pytest.raises(ValueError, match="empty"):
        engine.add_request([], GREEDY)
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=0)
    # a generation stops where the pool (max_model_len) ends
    long = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    out = engine.generate([list(range(3, 10))], long)[0]
    assert (len(out.token_ids), out.finish_reason) == (16 - 7, "length")
    # nothing leaked, and the engine still serves
    assert engine.blocks.num_free_blocks == 4
    assert (
        len(engine.generate([[5, 6, 7]], SamplingParams(max_tokens=3, temperature=0))[0].token_ids)
        >= 1
    )


def test_token_ids_that_are_not_integers_are_refused_and_leak_nothing(tiny_llama_path):
    """A float, a string or None among a prompt's ids is a ValueError naming it (not a token
    id cut from 1.9 to 1, nor a TypeError past the cleanup that leaves the context behind)."""
    engine = LLMEngine.from_pretrained(tiny_llama_path)
    for bad in (1.9, "7", None):
        with pytest.raises(ValueError, match="token ids are integers"):
            engine.generate([[5, 6], [5, bad]], GREEDY)
        ctx = engine.create_context()
        with pytest.raises(ValueError, match="token ids are integers"):
            engine.fill(ctx, [5, bad])
        engine.free(ctx)
        assert (engine.stats.contexts, engine.stats.jobs, engine.has_work) == (0, 0, False)
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_a_step_that_raises_fails_its_jobs_and_the_engine_goes_on(tiny_llama_path, monkeypatch):
    engine = LLMEngine.from_pretrained(tiny_llama_path)
    ctx = engine.create_context()
    other = engine.fill(ctx, [5, 6, 7])  # work of another caller, in the same steps
    start = engine.runner.start
    calls = iter([None])  # the first step fails, then steps run again

    def broken(batch):
        run = next(calls, start)
        if run is None:
            raise RuntimeError("kernel fault")
        return run(batch)

    monkeypatch.setattr(engine.runner, "start", broken)
    with pytest.raises(RuntimeError, match="kernel fault"):
        engine.generate([[5, 6, 8, 9]] * 2, GREEDY)
    assert engine.stats.jobs == 0  # nothing left to fail every later step
    failed = [o for o in engine.step() if o.job_id == other]
    assert failed and failed[0].error and "kernel fault" in failed[0].error
    out = engine.generate([[5, 6, 8, 9]], GREEDY)[0]
    assert len(out.token_ids) == GREEDY.max_tokens
    engine.free(ctx)
    assert (engine.stats.contexts, engine.has_work) == (0, False)
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_generate_takes_one_prompt_and_submits_all_or_nothing(tiny_llama_path):
    engine = LLMEngine.from_pretrained(tiny_llama_path)
    free = engine.blocks.num_free_blocks
    (one,) = engine.generate("Hello world", GREEDY)  # one prompt, not one per character
    assert one.token_ids == engine.generate(["Hello world"], GREEDY)[0].token_ids
    assert [o.token_ids for o in engine.generate([5, 6, 7], GREEDY)] == [
        engine.generate([[5, 6, 7]], GREEDY)[0].token_ids
    ]
    vocab = engine.model_config.vocab_size
    for prompts, sampling, needle in (
        ([[5, 6], [7, 8], []], GREEDY, "prompt 2: prompt is empty"),
        ([[5, 6], [vocab + 1]], GREEDY, "prompt 1: .*outside the vocabulary"),
        ([[5, 6], [7, 8]], [GREEDY], "1 sampling params for 2 prompts"),
    ):
        with pytest.raises(ValueError, match=needle):
            engine.generate(prompts, sampling)
        # nothing of the call stays behind to run inside the next one
        assert not engine.has_work and engine.blocks.num_free_blocks == free
    assert len(engine.generate([[5, 6], [7, 8]], GREEDY)) == 2


async def test_async_engine_stop_ends_running_jobs_with_an_error(tiny_llama_path):
    from server.engine import AsyncLLMEngine, EngineError

    aeng = AsyncLLMEngine(LLMEngine.from_pretrained(tiny_llama_path))
    await aeng.start()
    endless = SamplingParams(max_tokens=10_000, temperature=0, ignore_eos=True)
    got: list[JobOutput] = []

    async def consume() -> None:
        async for out in aeng.generate_request([5, 6, 7], endless):
            got.append(out)

    task = asyncio.create_task(consume())
    while not got:
        await asyncio.sleep(0.01)
    await aeng.stop()
    with pytest.raises(EngineError, match="the engine stopped"):
        await asyncio.wait_for(task, timeout=10)
    with pytest.raises(EngineError, match="stopped"):
        await aeng.call(lambda e: e.stats)
    aeng.free(12345)  # cleanup after a stop is quiet


async def test_async_engine_streams_tokens(tiny_llama_path):
    from server.engine import AsyncLLMEngine

    engine = LLMEngine.from_pretrained(tiny_llama_path)
    expected = engine.generate([[5, 6, 7, 8]], GREEDY)[0].token_ids
    aeng = AsyncLLMEngine(engine)
    await aeng.start()
    try:
        ctx = aeng.create_context()
        await aeng.fill(ctx, [5, 6, 7])
        child = aeng.create_context(parent=ctx)
        await aeng.fill(child, [8])
        streamed = []
        async for out in aeng.generate(child, GREEDY):
            streamed.extend(out.new_token_ids)
        assert streamed == expected
        assert aeng.context_len(child) == 4 + len(expected)
        got = []
        async for out in aeng.generate_request([5, 6, 7, 8], GREEDY):
            got.extend(out.new_token_ids)
        assert got == expected
        aeng.free(child)
        aeng.free(ctx)
        stats = await aeng.call(lambda e: e.stats)
        assert stats.free_blocks == stats.total_blocks
    finally:
        await aeng.stop()


@pytest.mark.slow
def test_smollm2_continuous_batch_matches_transformers(smollm2_path):
    # 16 prompts (the engine issue's count) of 32-56 tokens under a 128-token budget: prefills
    # chunked across steps beside decodes; a pool of 128 blocks, not the 2 GB written at start
    # by default (each token goes through 30 layers here, and once more through transformers)
    engine = LLMEngine.from_pretrained("smollm2-135m-instruct", max_num_batched_tokens=128,
                                       num_kv_blocks=128)  # fmt: skip
    ref = load_reference(str(smollm2_path))
    tok = engine.tokenizer
    words = "the model reads a long paper about attention and writes a short summary of it".split()
    rng = random.Random(11)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 28))) for _ in range(16)]
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": t}])) for t in texts]
    sp = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    check_against_reference(engine, ref, prompts, sp)
    assert engine.stats.steps > 4 and engine.stats.preemptions == 0
    assert engine.stats.free_blocks == engine.stats.total_blocks


def test_failed_step_fails_its_jobs_and_the_engine_recovers(tiny_llama_path, monkeypatch):
    engine = LLMEngine.from_pretrained(tiny_llama_path, block_size=4)
    prompt = list(range(10, 30))
    expected = engine.generate([prompt], GREEDY)[0].token_ids
    runner_start = engine.runner.start

    def broken(batch):
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.runner, "start", broken)
    job = engine.add_request(list(range(50, 70)), GREEDY)
    with pytest.raises(RuntimeError):
        engine.step()
    (out,) = [o for o in engine.fail_all("device lost") if o.job_id == job]
    assert out.error == "device lost" and out.finished
    monkeypatch.setattr(engine.runner, "start", runner_start)
    # blocks registered for the failed step are not served from the prefix cache
    fresh = LLMEngine.from_pretrained(tiny_llama_path, block_size=4)
    other = list(range(50, 70))
    assert (
        engine.generate([other], GREEDY)[0].token_ids
        == fresh.generate([other], GREEDY)[0].token_ids
    )
    assert engine.generate([prompt], GREEDY)[0].token_ids == expected


def test_latency_hold_keeps_background_out_until_it_ends(tiny_llama_path):
    # A latency-critical generation that asks for a hold: when it ends, background work waits
    # (steps run nothing) until the hold is over or latency work arrives.
    engine = LLMEngine.from_pretrained(tiny_llama_path, latency_max_batched_tokens=0)
    clock = [0.0]
    engine.scheduler.now = lambda: clock[0]
    vocab = engine.model_config.vocab_size
    urgent, bulk = engine.create_context(), engine.create_context()
    engine.fill(urgent, random_prompts(1, vocab, seed=21, lo=9, hi=9)[0])
    engine.add_generate(
        urgent, SamplingParams(max_tokens=2, temperature=0, ignore_eos=True), hold_latency_s=0.5
    )
    engine.fill(bulk, random_prompts(1, vocab, seed=22, lo=30, hi=30)[0], priority=2)
    for _ in range(20):  # the urgent fill and its two tokens
        engine.step()
        if engine.idle_wait() > 0:
            break
    assert engine.idle_wait() > 0
    assert engine.scheduler.contexts[bulk].num_computed == 0  # capped out, then held
    assert engine.step() == [] and engine.idle_wait() == 0.5
    clock[0] += 0.5
    engine.run_until_idle()
    assert engine.scheduler.contexts[bulk].num_computed == 30


def test_logprobs_and_penalties_match_transformers(tiny_llama_path):
    """Greedy decoding with OpenAI's penalties, in one batch with plain requests: the tokens
    follow transformers' logits with the penalties applied by hand, and the reported log
    probabilities (top 3 too) are log_softmax of transformers' raw logits."""
    import torch

    engine = LLMEngine.from_pretrained(tiny_llama_path)
    ref = load_reference(tiny_llama_path)
    prompts = random_prompts(3, engine.model_config.vocab_size, seed=21)
    asked = SamplingParams(
        max_tokens=24, temperature=0, ignore_eos=True, logprobs=3,
        frequency_penalty=0.7, presence_penalty=1.5,
    )
    outs = engine.generate(prompts, [asked, GREEDY, asked])
    assert outs[1].logprobs is None
    assert outs[1].token_ids == greedy_reference(ref, prompts[1], GREEDY.max_tokens)
    for i in (0, 2):
        ids, generated = list(prompts[i]), []
        with torch.inference_mode():
            for _ in range(asked.max_tokens):
                logits = ref(torch.tensor([ids])).logits[0, -1].float()
                penalized = logits.clone()
                for token in set(generated):
                    penalized[token] -= 0.7 * generated.count(token) + 1.5
                token = int(penalized.argmax())
                logprob = outs[i].logprobs[len(generated)]
                want = logits.log_softmax(-1)
                assert logprob.token_id == token
                assert logprob.logprob == pytest.approx(float(want[token]), abs=1e-4)
                assert [t for t, _ in logprob.top] == want.topk(3).indices.tolist()
                generated.append(token)
                ids.append(token)
        assert outs[i].token_ids == generated
    # the penalties changed something: plain greedy repeats where the penalized runs do not
    assert any(
        outs[i].token_ids != greedy_reference(ref, prompts[i], asked.max_tokens) for i in (0, 2)
    )


@pytest.mark.parametrize(
    "config",
    [{}, {"max_num_batched_tokens": 24},
     {"block_size": 4, "num_kv_blocks": 24, "max_num_batched_tokens": 32}],
    ids=["one-chunk", "chunked", "preempted"],
)
def test_prompt_logprobs_match_transformers(tiny_llama_path, config):
    """prompt_logprobs: entry i scores prompt token i given those before it (top 2 too), as
    transformers' logits do, whether the prompt is computed in one chunk, in chunks or again
    after a preemption; a repeated prompt is computed again (no cached blocks), each token
    scored once."""
    import torch

    engine = LLMEngine.from_pretrained(tiny_llama_path, **{"block_size": 8, **config})
    ref = load_reference(tiny_llama_path)
    prompts = random_prompts(4, engine.model_config.vocab_size, seed=33, lo=30, hi=60)
    prompts[3] = list(prompts[0])  # the same prompt again
    scored = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, prompt_logprobs=2)
    outs = engine.generate(prompts, [scored, GREEDY, scored, scored])
    assert outs[1].prompt_logprobs is None
    for i in (0, 2, 3):
        entries = outs[i].prompt_logprobs
        assert len(entries) == len(prompts[i]) and entries[0] is None
        with torch.inference_mode():
            want = ref(torch.tensor([prompts[i]])).logits[0].float().log_softmax(-1)
        for pos, entry in enumerate(entries[1:], start=1):
            assert entry.token_id == prompts[i][pos]
            assert entry.logprob == pytest.approx(float(want[pos - 1, prompts[i][pos]]), abs=1e-4)
            assert [t for t, _ in entry.top] == want[pos - 1].topk(2).indices.tolist()
        assert outs[i].token_ids == greedy_reference(ref, prompts[i], scored.max_tokens)
    if "num_kv_blocks" in config:
        assert engine.stats.preemptions > 0
    # a context whose first tokens are computed already cannot score them
    parent = engine.create_context()
    engine.fill(parent, prompts[0])
    engine.run_until_idle()
    with pytest.raises(ValueError, match="prompt_logprobs needs a context with nothing computed"):
        engine.add_generate(engine.create_context(parent=parent), scored)


def test_aborting_a_generation_queued_behind_a_fill_leaves_the_fill_alone(tiny_llama_path):
    engine = LLMEngine.from_pretrained(tiny_llama_path)
    ctx = engine.create_context()
    engine.fill(ctx, [5, 6, 7])
    engine.abort(engine.add_generate(ctx, SamplingParams(max_tokens=2, temperature=0)))
    engine.run_until_idle()
    assert engine.context_token_ids(ctx) == [5, 6, 7]  # the fill's tokens once, not twice


def test_cached_blocks_a_waiting_prompt_matches_count_as_blocks_it_needs(tiny_llama_path):
    """Matching its cached prefix takes those free blocks out of the pool, and the chunk after
    them needs new ones: lower-ranked holders must give room for both. Before, the need was
    counted without the match: a false "pool cannot hold it" error, or, with the other work
    held back by the latency cap, empty steps forever."""
    prefix = list(range(10, 22))  # three full blocks, cached once freed
    greedy = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    for latency_cap in (None, 0):
        engine = LLMEngine.from_pretrained(tiny_llama_path, block_size=4, num_kv_blocks=8,
                                           max_num_batched_tokens=8,
                                           latency_max_batched_tokens=latency_cap)  # fmt: skip
        ctx = engine.create_context()
        engine.fill(ctx, prefix)
        engine.run_until_idle()
        engine.free(ctx)
        bulk = engine.add_request(list(range(100, 114)), greedy, priority=1)
        while not any(o.job_id == bulk and o.token_ids for o in engine.step()):
            pass  # the bulk request decodes, holding four blocks
        urgent = engine.add_request(prefix + list(range(200, 208)), greedy, priority=0)
        finished = {}
        for _ in range(200):
            finished |= {o.job_id: o for o in engine.step() if o.finished}
            if not engine.has_work:
                break
        assert set(finished) == {bulk, urgent}
        assert all(o.error is None and len(o.token_ids) == 4 for o in finished.values())


def test_a_boosted_generation_runs_at_its_new_priority(tiny_llama_path):
    # A call whose output the client awaits after it started (the server boosts its context):
    # only its fills were raised, so its generation stayed behind the bulk work.
    engine = LLMEngine.from_pretrained(tiny_llama_path, max_num_seqs=1)
    vocab = engine.model_config.vocab_size
    prompts = random_prompts(2, vocab, seed=31, lo=8, hi=8)
    greedy = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    contexts = [engine.create_context() for _ in prompts]
    for ctx, prompt in zip(contexts, prompts, strict=True):
        engine.fill(ctx, prompt, priority=2)
    engine.run_until_idle()
    jobs = {engine.add_generate(ctx, greedy, priority=2): (name, ctx)
            for name, ctx in zip(("first", "later"), contexts, strict=True)}  # fmt: skip
    engine.boost(contexts[1], 0)
    finished = [jobs[o.job_id][0] for o in engine.run_until_idle() if o.finished and o.job_id in jobs]
    assert finished == ["later", "first"]


def test_text_prompts_start_with_the_bos_that_transformers_tokenizes(tiny_bos_llama_path):
    # vLLM's LLM.generate tokenizes a text as Hugging Face does: Llama's and Mistral's BOS first
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_bos_llama_path))
    engine = LLMEngine.from_pretrained(str(tiny_bos_llama_path))
    ref = load_reference(str(tiny_bos_llama_path))
    texts = ["The model", "Results of the experiment show", "<s>A prompt that writes its BOS"]
    outs = engine.generate(texts, GREEDY)
    for text, out in zip(texts, outs, strict=True):
        ids = hf(text.removeprefix("<s>")).input_ids
        assert ids[0] == hf.bos_token_id
        assert out.token_ids == greedy_reference(ref, ids, GREEDY.max_tokens), text


def test_each_request_counts_the_prompt_tokens_it_took_from_the_cache(tiny_llama_path):
    """vLLM's num_cached_tokens: counted when the request is first admitted (full blocks found
    in the prefix cache), and kept through the request's outputs."""
    engine = LLMEngine.from_pretrained(str(tiny_llama_path), block_size=16)
    prompt = random_prompts(1, 500, seed=9, lo=40, hi=41)[0]
    sampling = SamplingParams(max_tokens=3, temperature=0)

    def cached_counts(ids: list[int]) -> set[int | None]:
        job = engine.add_request(ids, sampling)
        seen: set[int | None] = set()
        while engine.has_work:
            seen |= {o.cached_tokens for o in engine.step() if o.job_id == job}
        return seen

    assert cached_counts(prompt) == {0}
    assert cached_counts(prompt) == {32}  # 2 full blocks of 40 tokens (the last is computed)
    assert cached_counts(prompt[:20] + [1, 2, 3] + prompt[23:]) == {16}
