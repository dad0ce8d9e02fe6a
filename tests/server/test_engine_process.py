"""An engine in a child process (`EngineProcess`), driven as the server drives it, against the
same model in process; and what happens when the child dies."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.engine import EngineError, LLMEngine, SamplingParams
from server.engine_driver import EngineDriver
from server.engine_process import EngineDied, EngineProcess

GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def reference(tiny_llama_path: Path) -> LLMEngine:
    return LLMEngine.from_pretrained(str(tiny_llama_path))


@pytest.fixture
async def process(tiny_llama_path: Path) -> AsyncIterator[EngineProcess]:
    engine = await EngineProcess.spawn(str(tiny_llama_path), "cpu", None, num_kv_blocks=512)
    await engine.start()
    yield engine
    await engine.stop()


def prompt(reference: LLMEngine, text: str) -> list[int]:
    return reference.tokenizer.encode(text, add_special_tokens=False)


async def tokens_of(stream: AsyncIterator) -> list[int]:
    out: list[int] = []
    async for item in stream:
        out.extend(item.new_token_ids)
    return out


async def test_requests_fills_and_forks_give_what_the_engine_gives_in_process(
    process: EngineProcess, reference: LLMEngine
) -> None:
    texts = ["The parrot said", "Once upon a time, in a land far away", "1 2 3"]
    ids = [prompt(reference, t) for t in texts]
    want = [o.token_ids for o in reference.generate(ids, GREEDY)]
    # plain requests, concurrently
    got = await asyncio.gather(*(tokens_of(process.generate_request(x, GREEDY)) for x in ids))
    assert got == want
    # a context filled, forked, the fork finishing the prompt in its generate
    parent = process.create_context()
    await process.fill(parent, ids[1][:-1])
    child = process.create_context(parent)
    assert await tokens_of(process.generate(child, GREEDY, fill_token_ids=ids[1][-1:])) == want[1]
    # truncated back and refilled with another prompt: the context computes the new tail only
    process.truncate(parent, 0)
    await process.fill(parent, ids[2][:-1])
    assert await tokens_of(process.generate(parent, GREEDY, fill_token_ids=ids[2][-1:])) == want[2]
    process.free(child)
    process.free(parent)
    stats = await process.stats()
    assert stats.generated_tokens == 5 * GREEDY.max_tokens
    assert stats.total_blocks == 512
    assert (process.max_model_len, process.vocab_size) == (
        reference.max_model_len,
        reference.model_config.vocab_size,
    )
    assert process.tokenizer.encode("The parrot said") == reference.tokenizer.encode(
        "The parrot said"
    )


async def test_contexts_and_plain_requests_never_share_an_id_in_the_engine(
    process: EngineProcess, reference: LLMEngine
) -> None:
    """Plain requests take context ids inside the child; the server's contexts must not land on
    them (a plain request ending would free the server's context)."""
    ids = [prompt(reference, t) for t in ("A parrot", "Two parrots and a cat")]
    want = [o.token_ids for o in reference.generate(ids, GREEDY)]
    contexts = []
    for _ in range(3):
        ctx = process.create_context()
        await process.fill(ctx, ids[1][:-1])
        contexts.append(ctx)
        assert await tokens_of(process.generate_request(ids[0], GREEDY)) == want[0]
    for ctx in contexts:
        child = process.create_context(ctx)
        assert await tokens_of(process.generate(child, GREEDY, fill_token_ids=ids[1][-1:])) == (
            want[1]
        )
        process.free(child)
        process.free(ctx)


async def test_the_driver_runs_on_it_as_on_the_engine_in_process(
    process: EngineProcess, reference: LLMEngine
) -> None:
    driver = EngineDriver(process, process.info.name)
    ids = prompt(reference, "Tell me about parrots")
    want = reference.generate([ids], GREEDY)[0].token_ids
    ctx = driver.new_context()
    assert await tokens_of(ctx.generate(GREEDY, fill_to=ids)) == want
    assert ctx.tokens == ids + want
    samples = [GREEDY, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)]
    outs: dict[int, list[int]] = {0: [], 1: []}
    async for index, out in driver.generate_samples(ids, samples):
        outs[index].extend(out.new_token_ids)
    assert outs == {0: want, 1: want[:4]}
    ctx.close()


async def test_leaving_a_stream_early_stops_its_generation(
    process: EngineProcess, reference: LLMEngine
) -> None:
    long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
    stream = process.generate_request(prompt(reference, "Count with me:"), long)
    async for _ in stream:
        break
    await stream.aclose()
    # the engine goes on serving, and the abandoned job stopped far short of its bound
    assert len(await tokens_of(process.generate_request([5, 6, 7], GREEDY))) == 8
    assert (await process.stats()).generated_tokens < 100


async def test_ctrl_c_is_left_to_the_server(process: EngineProcess) -> None:
    """SIGINT goes to the terminal's whole process group; the engine leaves stopping to the
    server, which finishes or fails its calls in order."""
    assert process.pid is not None
    os.kill(process.pid, signal.SIGINT)
    await asyncio.sleep(0.3)
    assert process.process.is_alive()
    assert len(await tokens_of(process.generate_request([5, 6, 7], GREEDY))) == 8


async def test_a_stopped_engine_is_not_taken_for_a_dead_one(tiny_llama_path: Path) -> None:
    engine = await EngineProcess.spawn(str(tiny_llama_path), "cpu", None, num_kv_blocks=64)
    await engine.start()
    await engine.stop()
    assert not engine.alive and not engine.exited.is_set()  # nobody restarts it


async def test_a_job_the_engine_refuses_fails_alone(process: EngineProcess) -> None:
    with pytest.raises(EngineError):
        await process.fill(12345, [1, 2, 3])  # no such context
    assert len(await tokens_of(process.generate_request([5, 6, 7], GREEDY))) == 8


async def test_a_killed_engine_process_fails_its_calls_and_refuses_new_work(
    process: EngineProcess, reference: LLMEngine
) -> None:
    long = SamplingParams(max_tokens=2000, temperature=0, ignore_eos=True)
    stream = process.generate_request(prompt(reference, "Count with me:"), long)
    await anext(stream)
    assert process.alive and not process.exited.is_set()
    process.process.kill()
    with pytest.raises(EngineError, match="exited unexpectedly"):
        async for _ in stream:
            pass
    # what the server's watcher waits on to restart it
    await asyncio.wait_for(process.exited.wait(), 10)
    assert not process.alive and process.exit_code == -signal.SIGKILL
    with pytest.raises(EngineError, match="exited unexpectedly"):
        process.create_context()
    with pytest.raises(EngineError, match="exited unexpectedly"):
        await process.stats()
    process.free(1)  # what the server's cleanup does: nothing to free any more, no error


async def test_an_engine_a_send_finds_gone_takes_no_more_work(process: EngineProcess) -> None:
    """A send that finds the child gone before its exit is seen (killed a moment ago) marks the
    engine as not taking work: work placed on it meanwhile only failed again (a graph call's
    redo, placed at once, spent itself on an engine already dead)."""
    process.process.kill()
    time.sleep(0.5)  # the child is dead; its exit is seen on the event loop, which waits
    assert process.alive
    with pytest.raises(EngineDied, match="is gone"):
        process.create_context()
    assert not process.alive and not process.exited.is_set()
    # its exit is still seen, and says why (what the watcher waits on to restart it)
    await asyncio.wait_for(process.exited.wait(), 10)
    with pytest.raises(EngineError, match="exited unexpectedly"):
        process.create_context()


async def test_freeing_or_boosting_a_context_of_a_dead_engine_is_no_error(
    process: EngineProcess,
) -> None:
    """Freeing a context is cleanup (a call's `finally`), and a boost only a hint: on an engine
    whose child died they have nothing to do. A free whose send found the child gone before
    its exit was seen raised EngineDied out of the `finally` of a graph call (the call that
    saw the death first); the batch's other calls, on the same engine and not told yet, were
    cancelled and stayed running for good. A boost raised once the exit was seen too (a
    client's await raising the priority of a call still on the dead engine)."""
    ctx = process.create_context()
    await process.fill(ctx, [5, 6, 7])
    process.process.kill()
    time.sleep(0.5)  # the child is dead; its exit is seen on the event loop, which waits
    process.boost(ctx, 0)
    process.free(ctx)
    assert not process.exited.is_set()
    await asyncio.wait_for(process.exited.wait(), 10)
    process.boost(ctx, 0)
    process.free(ctx)


async def test_a_model_that_cannot_load_is_reported_with_the_childs_reason(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError) as caught:
        await EngineProcess.spawn(str(tmp_path), "cpu", None)
    # the loader's own message, as an in-process load would raise it
    assert str(caught.value) == f"{tmp_path / 'config.json'}: missing required field " + (
        "'num_attention_heads'"
    )
