"""Defects the soak driver (tests/server/soak.py) found, each reproduced deterministically."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from server.engine import LLMEngine, SamplingParams


def test_a_latency_hold_ending_between_schedule_and_step_does_not_fail_waiting_work(
    tiny_llama_path: Path,
) -> None:
    """A latency hold (kept after a latency-critical output that another latency-critical call
    reads) caps other work at 0 tokens. When it expired between the scheduler building an empty
    batch under it and the step deciding whether it was held, the step took the empty batch for
    a pool that cannot hold the waiting work and failed a request of a few blocks ("context N
    needs 214 tokens of KV; the pool cannot hold it": a 500 under load)."""
    engine = LLMEngine.from_pretrained(
        str(tiny_llama_path), block_size=16, num_kv_blocks=48, latency_max_batched_tokens=0
    )
    now = [100.0]
    sched = engine.scheduler
    sched.now = lambda: now[0]
    schedule = sched.schedule

    def schedule_then_time_passes():  # the hold ends while the step looks at the batch
        out = schedule()
        now[0] += 1.0
        return out

    sched.schedule = schedule_then_time_passes  # type: ignore[method-assign]
    sampling = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    job = engine.add_request(list(range(3, 40)), sampling, 1)
    sched.hold_latency(0.5)
    outputs = engine.step()  # held: nothing runs, nothing fails
    assert all(o.error is None for o in outputs), outputs
    done = {}
    while engine.has_work:
        for o in engine.step():
            done[o.job_id] = o
    assert done[job].error is None and len(done[job].token_ids) == 4


async def test_a_context_freed_while_its_generation_streams_is_forgotten(
    tiny_llama_path: Path,
) -> None:
    """The length kept for a context is dropped when it is freed; the outputs its generation
    still delivers afterwards (the abort, steps already run) must not bring it back: one dict
    entry per abandoned `n>1` request (see below), kept forever."""
    from server.engine import AsyncLLMEngine

    engine = AsyncLLMEngine(
        LLMEngine.from_pretrained(str(tiny_llama_path), block_size=16, num_kv_blocks=64)
    )
    await engine.start()
    try:
        ctx = engine.create_context()
        await engine.fill(ctx, list(range(3, 40)))
        sampling = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
        outputs = engine.generate(ctx, sampling)
        reasons = []
        async for out in outputs:
            if not reasons:
                engine.free(ctx)
            reasons.append(out.finish_reason)
        assert reasons[-1] == "abort" and len(reasons) < 200
        assert engine._lengths == {} and engine.context_len(ctx) == 0
    finally:
        await engine.stop()


async def test_samples_are_closed_before_their_forks_are_freed(
    tiny_llama_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`n` samples of one prompt whose reader leaves (a client hanging up on a streamed `n=3`
    completion): the forks were freed while the merge of their streams was left for the garbage
    collector to close, so it read on from contexts already gone (and left their lengths
    behind, one entry per fork: a leak the soak driver found)."""
    import server.engine_driver as engine_driver

    merges: list[dict[str, bool]] = []
    merge_streams = engine_driver.merge_streams

    async def watched(streams, **kwargs):  # type: ignore[no-untyped-def]
        state = {"closed": False}
        merges.append(state)
        try:
            async for item in merge_streams(streams, **kwargs):
                yield item
        finally:
            state["closed"] = True

    monkeypatch.setattr(engine_driver, "merge_streams", watched)
    driver = await engine_driver.EngineDriver.load(
        str(tiny_llama_path), "cpu", None, block_size=16, num_kv_blocks=64
    )
    freed_with_merge_open: list[int] = []
    free = driver.engine.free

    def free_and_check(context_id: int) -> None:
        if merges and not merges[-1]["closed"]:
            freed_with_merge_open.append(context_id)
        free(context_id)

    monkeypatch.setattr(driver.engine, "free", free_and_check)
    await driver.start()
    try:
        sampling = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
        outputs = driver.generate_samples(list(range(3, 40)), [sampling] * 3)
        async for _ in outputs:
            break
        await outputs.aclose()
        assert merges and merges[-1]["closed"]
        assert freed_with_merge_open == []
        for _ in range(50):  # the aborts come through
            if not driver.engine._listeners:
                break
            await asyncio.sleep(0.01)
        assert driver.engine._lengths == {} and driver.engine._listeners == {}
    finally:
        await driver.stop()


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["--no-engine-process", "--engine-process"])
def test_a_short_soak_leaves_nothing_behind(tiny_llama_path: Path, placement: str) -> None:
    """~20 s of the soak driver's mixed load with faults (tests/server/soak.py) against a server
    in this process with two engines short of KV blocks: every answer is the quiet greedy one,
    every failure a 4xx with a message, and once idle nothing is held: no block, session,
    stored prefix, engine context or job, listener or kept context length. (Engines in child
    processes show their blocks, contexts and jobs through /metrics; the server's own
    bookkeeping is read from its internals in both placements.)"""
    from tests.server.soak import FLAGS, InProcessServer, Reference, Soak, settle

    server = InProcessServer(tiny_llama_path, [*FLAGS, "--engines", "2", placement])
    try:
        soak = Soak(server.url, Reference(tiny_llama_path), seed=7)
        tally = soak.run(seconds=15, workers=8)
        soak.check_texts()
        assert tally.defects == []
        m = settle(server.url)
        assert m["parrot_kv_free_blocks"] == m["parrot_kv_total_blocks"]
        assert m["parrot_engine_contexts"] == 0 and m["parrot_engine_jobs"] == 0
        assert m["parrot_preemptions_total"] > 0
        left = {k: v for k, v in server.internals().items() if v and not k.endswith("tasks")}
        assert left == {}
    finally:
        server.close()


async def test_a_latency_critical_call_waiting_on_a_fill_ahead_of_need_boosts_it(
    tiny_llama_path: Path,
) -> None:
    """A fill ahead of need (the prefix of a call whose input is not set yet) runs at that
    call's priority, and with the latency cap at 0 other tokens it gets nothing while any
    latency-critical work runs. A latency-critical call sharing that prefix waited for it, so
    under steady latency load from other sessions it waited as long as that load lasted (a
    soak call not ready after 60 s). Now the waiter raises the fill to its own priority."""
    from server.engine_pool import EnginePool
    from server.metrics import Metrics
    from server.prefix_contexts import PrefixContexts
    from server.prefix_store import PrefixStoreConfig
    from server.scheduling.policy import LATENCY_PRIORITY, NORMAL_PRIORITY

    pool = await EnginePool.load(
        1, str(tiny_llama_path), "cpu", None, block_size=16, num_kv_blocks=128,
        latency_max_batched_tokens=0,
    )  # fmt: skip
    driver = pool.drivers[0]
    await driver.start()
    try:
        prefixes = PrefixContexts(pool, PrefixStoreConfig(), Metrics())
        # steady latency-critical load: another session's long generation
        busy = driver.new_context()
        await busy.fill_to(list(range(3, 30)), LATENCY_PRIORITY)
        load = busy.generate(
            SamplingParams(max_tokens=600, temperature=0, ignore_eos=True), LATENCY_PRIORITY
        )
        generated = 0

        async def run_load() -> None:
            nonlocal generated
            async for out in load:
                generated += len(out.new_token_ids)

        loading = asyncio.create_task(run_load())
        while generated < 5:  # the load runs
            await asyncio.sleep(0.01)
        prefix = list(range(40, 140))
        ahead = asyncio.create_task(
            prefixes.open(0, "doc", prefix, NORMAL_PRIORITY, pipelined=True, yield_tokens=8)
        )
        await asyncio.sleep(0.2)
        assert not ahead.done()  # starved by the latency load, as designed
        entry = await asyncio.wait_for(prefixes.open(0, "doc", prefix, LATENCY_PRIORITY), 30)
        assert entry is not None and entry.handle.ok
        assert not loading.done() and generated < 600  # long before the load ends
        prefixes.release(entry)
        released = await ahead
        assert released is entry
        prefixes.release(released)
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        prefixes.close()
    finally:
        await driver.stop()
