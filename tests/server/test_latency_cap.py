"""The engine's latency token cap (set by the server's --latency-max-running-tokens): while
latency-critical work runs, steps stay small; bulk work alone uses the whole budget."""

import pytest

from server.engine.block_manager import BlockManager
from server.engine.config import EngineConfig
from server.engine.context import Context, Job, JobKind
from server.engine.sampling_params import SamplingParams
from server.engine.scheduler import Scheduler

BS = 4


def make(cap: int | None) -> Scheduler:
    cfg = EngineConfig(
        block_size=BS, num_kv_blocks=256, max_num_batched_tokens=200,
        latency_max_batched_tokens=cap,
    )  # fmt: skip
    return Scheduler(cfg, BlockManager(256, BS, True))


def add(sched: Scheduler, cid: int, tokens: int, priority: int) -> Context:
    ctx = Context(cid, token_ids=[(cid * 7 + i) % 50 + 10 for i in range(tokens)])
    sched.add_context(ctx)
    sampling = SamplingParams(max_tokens=8, temperature=0)
    ctx.jobs.append(Job(cid, JobKind.GENERATE, priority, arrival=cid, sampling=sampling))
    sched.wake(ctx)
    return ctx


def test_bulk_work_alone_uses_the_whole_budget() -> None:
    sched = make(cap=32)
    add(sched, 1, 150, priority=2)
    assert sched.schedule().num_tokens == 150


def test_latency_work_caps_the_step_and_goes_first() -> None:
    sched = make(cap=32)
    add(sched, 1, 150, priority=2)
    chat = add(sched, 2, 20, priority=0)
    out = sched.schedule()
    assert out.num_tokens == 32
    assert out.scheduled[0].ctx is chat and out.scheduled[0].num_tokens == 20
    assert out.scheduled[1].num_tokens == 12


def test_without_a_cap_latency_work_only_goes_first() -> None:
    sched = make(cap=None)
    add(sched, 1, 150, priority=2)
    chat = add(sched, 2, 20, priority=0)
    out = sched.schedule()
    assert out.scheduled[0].ctx is chat and out.num_tokens == 170


def test_a_bad_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="latency_max_batched_tokens"):
        EngineConfig(latency_max_batched_tokens=0)
