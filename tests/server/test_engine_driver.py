"""EngineDriver's samples of one prompt (`n` > 1), on an engine in process and in a child."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from server.engine import SamplingParams
from server.engine_driver import EngineDriver, TokenContext
from server.engine_process import EngineProcess

PROMPT = list(range(3, 40))


@pytest.mark.parametrize("processes", [False, True], ids=["thread", "process"])
async def test_the_samples_of_a_prompt_decode_in_the_same_steps_from_the_first(
    tiny_llama_path: Path, monkeypatch: pytest.MonkeyPatch, processes: bool
) -> None:
    """Each fork's generation was posted on its own, so under load the step loop could take
    a step between two posts: the forks then decoded steps apart, and no shared-prefix level
    (cascade) was planned for them. Posts are slowed here so that the engine steps between any
    two: the forks must still be submitted together, so the whole run takes one step for the
    prompt and one per token."""
    driver = await load(tiny_llama_path, processes)
    slow_posts(driver, monkeypatch)
    await driver.start()
    try:
        sampling = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
        before = (await driver.stats()).steps
        tokens: dict[int, list[int]] = {i: [] for i in range(4)}
        async for index, out in driver.generate_samples(PROMPT, [sampling] * 4):
            tokens[index].extend(out.new_token_ids)
        steps = (await driver.stats()).steps - before
        assert all(len(t) == 6 and t == tokens[0] for t in tokens.values())
        assert steps == 1 + 6
    finally:
        await driver.stop()


@pytest.mark.parametrize("processes", [False, True], ids=["thread", "process"])
async def test_work_set_going_together_joins_the_same_step(
    tiny_llama_path: Path, monkeypatch: pytest.MonkeyPatch, processes: bool
) -> None:
    """Generations set going just before `together` (as the executor starts the calls of a
    task group) reach the engine as one command: with posts slowed so that the engine would
    step between any two, they still decode in the same steps from the first."""
    driver = await load(tiny_llama_path, processes)
    await driver.start()
    try:
        contexts = [driver.new_context() for _ in range(3)]
        for i, ctx in enumerate(contexts):
            await ctx.fill_to(PROMPT[i:])
        slow_posts(driver, monkeypatch)
        sampling = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
        before = (await driver.stats()).steps

        async def run(ctx: TokenContext) -> int:
            return sum([len(out.new_token_ids) async for out in ctx.generate(sampling)])

        runs = [asyncio.ensure_future(run(ctx)) for ctx in contexts]
        await driver.together()
        assert await asyncio.gather(*runs) == [6, 6, 6]
        assert (await driver.stats()).steps - before == 6
    finally:
        await driver.stop()


async def load(model: Path, processes: bool) -> EngineDriver:
    """An engine on a thread of this process, or in a child process."""
    (driver,) = await EngineDriver.load_many(
        1, str(model), "cpu", None, processes=processes, num_kv_blocks=64
    )
    return driver


def slow_posts(driver: EngineDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each post (a command, or a message to the child) is followed by 30 ms, in which the
    engine can run a step: work posted in parts then lands in different steps."""
    name = "_send" if isinstance(driver.engine, EngineProcess) else "_post"
    post = getattr(driver.engine, name)

    def slow_post(*args: object) -> None:
        post(*args)
        time.sleep(0.03)

    monkeypatch.setattr(driver.engine, name, slow_post)
