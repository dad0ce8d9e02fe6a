"""Steps that pause between two layers for latency-critical work (`LLMEngine.request_pause`):
the work that arrives runs first, the paused step goes on after, and every output stays equal
to transformers'. On the decoder stack (`fused`) and layer by layer from Python."""

from __future__ import annotations

import asyncio
import ctypes
import random
import threading

import pytest
import torch

from server.engine import AsyncLLMEngine, LLMEngine, SamplingParams
from server.engine.loader import load_model
from server.kernels.cpu import decoder_stack
from tests.engine.reference import greedy_reference, load_reference
from tests.engine.test_models import PagedRunner
from tests.engine.test_speculation import _echo_prompts

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
BULK, URGENT = 2, 0  # priorities: background, latency-critical
NEEDS_STACK = pytest.mark.skipif(not decoder_stack.available(), reason="no C compiler")


@pytest.fixture(params=[pytest.param(True, marks=NEEDS_STACK), False], ids=["stack", "layers"])
def fused(request: pytest.FixtureRequest) -> bool:
    return request.param


def make_engine(path, fused: bool = True, **config) -> LLMEngine:
    return LLMEngine.from_pretrained(
        path,
        **{"block_size": 8, "latency_max_batched_tokens": 0, "fused_layers": fused,
           "packed_linear": fused or None, "pause_min_tokens": 0, **config},  # fmt: skip
    )


def test_a_layer_run_stopped_between_layers_equals_the_forward(tiny_mistral_path):
    """The Python path's run, stopped after every layer, gives the forward's logits."""
    model = load_model(tiny_mistral_path, fused_layers=False).model
    assert model.decoder_stack is None
    whole, stopped = PagedRunner(model, 64, seed=2), PagedRunner(model, 64, seed=2)
    chunks = {0: tokens(random.Random(4), 40), 1: [7, 8, 9]}
    want = whole.step_last(chunks)
    ids, positions, meta = stopped._batch(chunks)
    last = [end - 1 for end in meta.query_start[1:]]
    with torch.inference_mode():
        run = model.start_logits(ids, positions, stopped.caches, meta, last)
        stop = ctypes.c_int(1)
        assert not run.advance(stop) and run.next_layer == 1
        with pytest.raises(RuntimeError, match="layers left"):
            _ = run.logits
        while not run.advance(stop):
            pass
    for i, seq in enumerate(chunks):
        assert torch.equal(run.logits[i : i + 1], want[seq])


def tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(3, 500) for _ in range(n)]


def test_latency_work_runs_while_a_background_step_waits_paused(tiny_mistral_path, fused):
    """A background prefill pauses after its first layer; a latency-critical request that
    shares its leading blocks (half written: not served from the prefix cache) runs to its
    end, then the background step goes on. Both equal transformers."""
    engine = make_engine(tiny_mistral_path, fused)
    assert engine.model_config.num_layers == 3
    rng = random.Random(5)
    bulk_prompt = tokens(rng, 60)
    urgent_prompt = bulk_prompt[:40] + tokens(rng, 9)
    bulk = engine.add_request(bulk_prompt, GREEDY, priority=BULK)
    engine.request_pause()  # as if the urgent request came while the step ran
    assert engine.step() == [] and engine.stats.paused_steps == 1
    urgent = engine.add_request(urgent_prompt, GREEDY, priority=URGENT)
    engine.clear_pause_request()  # what the step loop does once it has taken the new work
    order: list[int] = []
    got: dict[int, list[int]] = {}
    while engine.has_work:
        for out in engine.step():
            order.append(out.job_id)
            if out.finished:
                got[out.job_id] = out.token_ids
    first_bulk = order.index(bulk)
    assert order[:first_bulk] == [urgent] * GREEDY.max_tokens  # all of it before bulk's first
    assert engine.stats.paused_steps == 1 and engine.stats.cached_tokens == 0
    ref = load_reference(tiny_mistral_path)
    assert got[urgent] == greedy_reference(ref, urgent_prompt, GREEDY.max_tokens)
    assert got[bulk] == greedy_reference(ref, bulk_prompt, GREEDY.max_tokens)
    assert engine.stats.free_blocks == engine.stats.total_blocks


@pytest.mark.parametrize("min_tokens", [0, 16])
def test_a_step_shorter_than_pause_min_tokens_runs_whole_and_its_decodes_ride_along(
    tiny_mistral_path, fused, min_tokens
):
    """A 30-token prefill pauses when asked (pause_min_tokens 0 or 16); a 2-row decode step
    pauses only with 0. Run whole, its rows ride along the latency-critical request's steps
    (2 riding rows allowed); paused, they stay frozen until that request is done. Outputs
    equal transformers' either way."""
    engine = make_engine(
        tiny_mistral_path, fused, pause_min_tokens=min_tokens, latency_other_decode_rows=2
    )
    rng = random.Random(7)
    sp = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    bulk_prompts = [tokens(rng, 15), tokens(rng, 15)]
    urgent_prompt = tokens(rng, 9)
    bulk = [engine.add_request(p, sp, priority=BULK) for p in bulk_prompts]
    got: dict[int, list[int]] = {}

    def take(outputs) -> set[int]:
        for out in outputs:
            got.setdefault(out.job_id, []).extend(out.new_token_ids)
        return {out.job_id for out in outputs}

    engine.request_pause()
    assert engine.step() == [] and engine.stats.paused_steps == 1  # the prefill: 30 tokens
    engine.clear_pause_request()
    take(engine.step())  # its end: each bulk request has its first token
    engine.request_pause()  # as if the urgent request came while the decode step ran
    progressed = take(engine.step())
    assert engine.stats.paused_steps == (2 if min_tokens == 0 else 1)
    assert progressed == (set() if min_tokens == 0 else set(bulk))
    urgent = engine.add_request(urgent_prompt, sp, priority=URGENT)
    engine.clear_pause_request()
    riding = 0  # bulk tokens made in the urgent request's steps
    while len(got.get(urgent, [])) < sp.max_tokens:
        progressed = take(engine.step())
        riding += len(progressed & set(bulk)) if urgent in progressed else 0
    assert riding == (0 if min_tokens == 0 else 2 * (sp.max_tokens - 2))  # all they had left
    take(engine.run_until_idle())
    ref = load_reference(tiny_mistral_path)
    for job, prompt in [*zip(bulk, bulk_prompts, strict=True), (urgent, urgent_prompt)]:
        assert got[job] == greedy_reference(ref, prompt, sp.max_tokens)
    assert engine.stats.free_blocks == engine.stats.total_blocks


def test_a_step_holding_drafts_pauses_and_its_drafts_wait_with_it(tiny_llama_path, fused):
    """Background decodes drafting (their prompts repeat their own greedy continuations)
    pause when asked; a latency-critical request runs beside it, drafting its own tokens and
    touching none of the paused step's drafts; then the paused step verifies them. Every
    output equals an engine without drafts."""
    engine = make_engine(tiny_llama_path, fused, ngram_speculation=4)
    plain = make_engine(tiny_llama_path, fused, pausable_steps=False)
    sp = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    bulk_prompts = _echo_prompts(plain)
    # and one whose constraint forces its text: drafts the step confirms
    choice = SamplingParams(max_tokens=24, temperature=0, choices=["The parrot is green and loud"])
    samplings = [sp] * len(bulk_prompts) + [choice]
    bulk_prompts.append(tokens(random.Random(4), 10))
    urgent_prompt = bulk_prompts.pop(2)  # drafts beside the paused step
    samplings.pop(2)
    bulk = [engine.add_request(p, s, priority=BULK)
            for p, s in zip(bulk_prompts, samplings, strict=True)]  # fmt: skip
    got: dict[int, list[int]] = {}
    for _ in range(60):  # prefill, then decode until a step that holds drafts pauses
        engine.request_pause()
        for out in engine.step():
            got.setdefault(out.job_id, []).extend(out.new_token_ids)
        paused = engine._paused
        if paused is not None and any(x.drafts for x in paused.batch.scheduled):
            break
    else:
        pytest.fail("no step with drafts paused")
    held, drafted = sum(x.drafts for x in paused.batch.scheduled), engine.stats.drafted_tokens
    urgent = engine.add_request(urgent_prompt, sp, priority=URGENT)
    engine.clear_pause_request()
    beside = 0  # drafted in the urgent request's steps
    while engine._paused is not None:  # the urgent request's steps, then the paused step's end
        before = engine.stats.drafted_tokens
        for out in engine.step():
            got.setdefault(out.job_id, []).extend(out.new_token_ids)
        if engine._paused is not None:
            beside += engine.stats.drafted_tokens - before
    assert len(got[urgent]) == sp.max_tokens
    assert beside > 0
    assert engine.stats.drafted_tokens == drafted + held + beside  # verified, not dropped
    for out in engine.run_until_idle():
        got.setdefault(out.job_id, []).extend(out.new_token_ids)
    want = plain.generate([*bulk_prompts, urgent_prompt], [*samplings, sp])
    assert [got[j] for j in [*bulk, urgent]] == [w.token_ids for w in want]
    assert engine.stats.accepted_tokens > 0
    assert engine.stats.free_blocks == engine.stats.total_blocks


def test_a_paused_step_goes_on_layer_by_layer_while_asked_to(tiny_mistral_path, fused):
    """Left set, the request pauses the step after every layer; it still ends, exact."""
    engine = make_engine(tiny_mistral_path, fused)
    prompt = tokens(random.Random(1), 30)
    job = engine.add_request(prompt, GREEDY, priority=BULK)
    engine.request_pause()
    results = [engine.step() for _ in range(3)]
    assert results[:2] == [[], []] and [o.job_id for o in results[2]] == [job]
    engine.clear_pause_request()
    out = engine.run_until_idle()
    assert engine.stats.paused_steps == 1
    ref = load_reference(tiny_mistral_path)
    assert [*results[2][0].new_token_ids, *(t for o in out for t in o.new_token_ids)] == (
        greedy_reference(ref, prompt, GREEDY.max_tokens)
    )


def test_steps_with_latency_work_or_pausing_off_never_pause(tiny_llama_path, fused):
    engine = make_engine(tiny_llama_path, fused, latency_max_batched_tokens=None)
    engine.add_request(list(range(3, 40)), GREEDY, priority=URGENT)
    engine.add_request(list(range(50, 90)), GREEDY, priority=BULK)
    engine.request_pause()
    assert len(engine.step()) == 2  # one step of both: it holds latency work
    engine.clear_pause_request()
    engine.run_until_idle()
    off = make_engine(tiny_llama_path, fused, pausable_steps=False)
    off.add_request(list(range(50, 90)), GREEDY, priority=BULK)
    off.request_pause()
    off.run_until_idle()
    assert engine.stats.paused_steps == 0 and off.stats.paused_steps == 0


def test_changing_a_paused_context_runs_its_step_to_the_end_first(tiny_llama_path, fused):
    """A fork, a free or an abort of a context that a paused step holds first finishes that
    step: the fork then shares fully written blocks, and nothing is lost or leaked."""
    engine = make_engine(tiny_llama_path, fused)
    ref = load_reference(tiny_llama_path)
    rng = random.Random(7)
    doc = tokens(rng, 50)
    parent = engine.create_context()
    engine.fill(parent, doc, priority=BULK)
    engine.request_pause()
    assert engine.step() == [] and engine.stats.paused_steps == 1
    engine.clear_pause_request()
    child = engine.create_context(parent=parent)  # settles the paused step
    assert engine.context_len(parent) == 50
    question = tokens(rng, 7)
    engine.fill(child, question, priority=URGENT)
    job = engine.add_generate(child, GREEDY, priority=URGENT)
    got = [o for o in engine.run_until_idle() if o.job_id == job and o.finished]
    assert got[0].token_ids == greedy_reference(ref, doc + question, GREEDY.max_tokens)
    # an abort of a paused generation, and a free of a paused fill
    gen = engine.add_request(tokens(rng, 40), GREEDY, priority=BULK)
    engine.request_pause()
    assert engine.step() == []
    engine.abort(gen)  # the paused step samples its first token, then it stops
    fill_ctx = engine.create_context()
    fill = engine.fill(fill_ctx, tokens(rng, 40), priority=BULK)
    outs = engine.step()  # pauses, and hands out what the settled step produced
    assert engine.stats.paused_steps == 3
    engine.free(fill_ctx)
    engine.clear_pause_request()
    outs += engine.run_until_idle()
    assert [(o.job_id, len(o.token_ids), o.finish_reason) for o in outs if o.finished] == [
        (gen, 1, "abort"), (fill, 0, "stop"),  # the free ran the fill's step to its end first
    ]
    for ctx in (parent, child):
        engine.free(ctx)
    assert engine.stats.free_blocks == engine.stats.total_blocks


@NEEDS_STACK
@pytest.mark.slow
async def test_through_the_async_engine_urgent_work_overtakes_a_long_step(smollm2_path):
    """A 600-token background prefill (a second or more of one step here) is in flight when a
    latency-critical request comes through `AsyncLLMEngine`: the step pauses, the request
    finishes before the background request's first token, and both outputs are what each
    gives alone."""
    # no prefix cache: the runs alone must not leave the prompts' KV behind; a pool of 64
    # blocks, not the 2 GB written at start by default. The urgent request comes within
    # milliseconds of the step's start: 600 tokens (not 1500, minutes on a loaded machine with
    # the run alone) leave it the whole step's seconds
    engine = LLMEngine.from_pretrained("smollm2-135m-instruct", max_num_batched_tokens=2048,
                                       latency_max_batched_tokens=0, enable_prefix_cache=False,
                                       num_kv_blocks=64)  # fmt: skip
    rng = random.Random(3)
    bulk_prompt, urgent_prompt = tokens(rng, 600), tokens(rng, 12)
    sp = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    alone = [o.token_ids for o in engine.generate([bulk_prompt, urgent_prompt], sp)]
    started = threading.Event()
    start = engine.runner.start

    def start_and_tell(batch):  # the engine thread is about to run the bulk prefill
        run = start(batch)
        if any(s.num_tokens > 500 for s in batch.scheduled):
            started.set()
        return run

    engine.runner.start = start_and_tell  # type: ignore[method-assign]
    aeng = AsyncLLMEngine(engine)
    await aeng.start()
    finished: list[tuple[str, list[int]]] = []
    firsts: list[str] = []

    async def run(name: str, prompt: list[int], priority: int) -> None:
        async for out in aeng.generate_request(prompt, sp, priority):
            if len(out.token_ids) == 1:
                firsts.append(name)
            if out.finished:
                finished.append((name, out.token_ids))

    try:
        bulk = asyncio.create_task(run("bulk", bulk_prompt, BULK))
        assert await asyncio.to_thread(started.wait, 60)
        await run("urgent", urgent_prompt, URGENT)
        await bulk
        stats = await aeng.call(lambda e: e.stats)
    finally:
        await aeng.stop()
    assert firsts == ["urgent", "bulk"] and [n for n, _ in finished] == ["urgent", "bulk"]
    assert dict(finished) == {"bulk": alone[0], "urgent": alone[1]}
    assert stats.paused_steps >= 1


def test_random_pauses_under_preemption_keep_every_output_exact(tiny_llama_path, fused):
    """Requests of three priorities arrive at random steps in a pool small enough to preempt,
    pauses are asked for at random, some jobs are aborted: every output equals its request run
    alone (aborted ones a prefix of it), and every block comes back."""
    engine = make_engine(tiny_llama_path, fused, num_kv_blocks=24, max_num_batched_tokens=48)
    alone = make_engine(tiny_llama_path, fused, pausable_steps=False)
    rng = random.Random(12)
    sp = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    prompts: dict[int, list[int]] = {}
    got: dict[int, tuple[list[int], str | None]] = {}
    for _ in range(120):
        if rng.random() < 0.3:
            prompt = tokens(rng, rng.randint(5, 70))
            job = engine.add_request(prompt, sp, priority=rng.choice([URGENT, 1, BULK]))
            prompts[job] = prompt
        if rng.random() < 0.4:
            engine.request_pause()
        elif rng.random() < 0.5:
            engine.clear_pause_request()
        if rng.random() < 0.05 and prompts:
            engine.abort(rng.choice(list(prompts)))
        for out in engine.step():
            if out.finished:
                got[out.job_id] = (out.token_ids, out.finish_reason)
    engine.clear_pause_request()
    for out in engine.run_until_idle():
        if out.finished:
            got[out.job_id] = (out.token_ids, out.finish_reason)
    assert set(got) == set(prompts) and engine.stats.paused_steps > 5
    assert engine.stats.preemptions > 0
    for job, (ids, reason) in got.items():
        want = alone.generate([prompts[job]], sp)[0].token_ids
        assert ids == want[: len(ids)] and (reason == "abort" or ids == want)
    assert engine.stats.free_blocks == engine.stats.total_blocks


def test_latency_work_short_of_blocks_beside_a_paused_step_ends_the_pause(
    tiny_llama_path, fused
):
    """A background prefill pauses holding 3 of the pool's 4 blocks; an urgent request of
    two blocks computes its first chunk in the last free one and is then short of a block
    that only the frozen step holds. It used to preempt itself and compute that chunk again
    at every step, the paused step never going on (a livelock); now the paused step ends, the
    urgent request preempts it and finishes first, and both equal transformers."""
    engine = make_engine(
        tiny_llama_path, fused, block_size=4, num_kv_blocks=4, max_num_batched_tokens=4,
        enable_prefix_cache=False,  # a cached first chunk would hide the loop
    )  # fmt: skip
    sp = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    bulk_prompt, urgent_prompt = list(range(10, 20)), list(range(30, 36))
    bulk = engine.add_request(bulk_prompt, sp, priority=BULK)
    engine.step(), engine.step()  # 8 of its 10 tokens, in 2 blocks
    engine.request_pause()
    assert engine.step() == [] and engine.stats.paused_steps == 1  # its third block
    engine.clear_pause_request()
    urgent = engine.add_request(urgent_prompt, sp, priority=URGENT)
    got: dict[int, list[int]] = {}
    for _ in range(20):  # a handful of steps do it
        for out in engine.step():
            if out.finished:
                got[out.job_id] = out.token_ids
        if not engine.has_work:
            break
    assert list(got) == [urgent, bulk], engine.stats
    ref = load_reference(tiny_llama_path)
    assert got[urgent] == greedy_reference(ref, urgent_prompt, sp.max_tokens)
    assert got[bulk] == greedy_reference(ref, bulk_prompt, sp.max_tokens)
    assert engine.stats.free_blocks == engine.stats.total_blocks
