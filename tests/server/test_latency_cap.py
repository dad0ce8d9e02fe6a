"""The engine's latency token cap (set by the server's --latency-max-running-tokens): while
latency-critical work runs, steps stay small; bulk work alone uses the whole budget."""

import pytest

from server.engine.block_manager import BlockManager
from server.engine.config import EngineConfig
from server.engine.context import Context, Job, JobKind
from server.engine.sampling_params import SamplingParams
from server.engine.scheduler import Scheduler

BS = 4


def make(cap: int | None, other_rows: int = 0) -> Scheduler:
    cfg = EngineConfig(
        block_size=BS, num_kv_blocks=256, max_num_batched_tokens=200,
        latency_max_batched_tokens=cap, latency_other_decode_rows=other_rows,
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
    assert out.scheduled[0].ctx is chat and out.scheduled[0].num_tokens == 20
    assert out.scheduled[1].num_tokens == 32  # bulk only fills the step up to the cap
    assert out.num_tokens == 52


def test_latency_work_itself_is_not_chunked_by_the_cap() -> None:
    sched = make(cap=32)
    add(sched, 1, 150, priority=2)
    chat = add(sched, 2, 100, priority=0)
    out = sched.schedule()
    assert [(s.ctx.id, s.num_tokens) for s in out.scheduled] == [(chat.id, 100), (1, 32)]
    alone = make(cap=32)
    add(alone, 3, 150, priority=0)
    assert alone.schedule().num_tokens == 150


def test_running_bulk_decodes_share_only_the_cap() -> None:
    sched = make(cap=3)
    for i in range(5):
        add(sched, 10 + i, 2, priority=2)
    for s in sched.schedule().scheduled:  # prompts computed, one token sampled: now decodes
        s.ctx.num_computed += s.num_tokens
        s.ctx.token_ids.append(7)
    assert sched.schedule().num_tokens == 5  # (not advanced: the same five decodes again)
    add(sched, 20, 1, priority=0)
    out = sched.schedule()
    assert out.num_tokens == 4  # the latency token and three bulk decodes


def test_without_a_cap_latency_work_only_goes_first() -> None:
    sched = make(cap=None)
    add(sched, 1, 150, priority=2)
    chat = add(sched, 2, 20, priority=0)
    out = sched.schedule()
    assert out.scheduled[0].ctx is chat and out.num_tokens == 170


def test_a_zero_cap_runs_nothing_else_beside_latency_work() -> None:
    sched = make(cap=0)
    add(sched, 1, 150, priority=1)
    chat = add(sched, 2, 20, priority=0)
    assert [(s.ctx, s.num_tokens) for s in sched.schedule().scheduled] == [(chat, 20)]


def _decoding(sched: Scheduler, ids: range, priority: int) -> list[Context]:
    """Contexts whose prompts are computed and one token sampled: each now decodes."""
    ctxs = [add(sched, cid, 2, priority) for cid in ids]
    for s in sched.schedule().scheduled:
        s.ctx.num_computed += s.num_tokens
        s.ctx.token_ids.append(7)
    return ctxs


def test_other_decode_rows_ride_along_latency_work_beyond_the_cap() -> None:
    sched = make(cap=0, other_rows=2)
    bulk = _decoding(sched, range(10, 13), priority=2)
    prefill = add(sched, 15, 40, priority=2)
    chat = add(sched, 20, 6, priority=0)
    out = sched.schedule()
    # the latency prefill and two bulk decode rows; no bulk prefill, no third row
    scheduled = {(s.ctx.id, s.num_tokens) for s in out.scheduled}
    assert scheduled == {(chat.id, 6), (bulk[0].id, 1), (bulk[1].id, 1)}
    assert prefill.id not in {s.ctx.id for s in out.scheduled}


def test_ride_along_rows_come_on_top_of_the_token_cap() -> None:
    sched = make(cap=1, other_rows=1)
    _decoding(sched, range(10, 14), priority=2)
    add(sched, 20, 1, priority=0)
    assert sched.schedule().num_tokens == 3  # the latency token, one row in the cap, one riding


def test_without_latency_work_ride_along_rows_change_nothing() -> None:
    sched = make(cap=0, other_rows=1)
    _decoding(sched, range(10, 15), priority=2)
    add(sched, 15, 40, priority=2)
    assert sched.schedule().num_tokens == 45


def test_a_bad_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="latency_max_batched_tokens"):
        EngineConfig(latency_max_batched_tokens=-1)
    with pytest.raises(ValueError, match="latency_other_decode_rows"):
        EngineConfig(latency_other_decode_rows=-1)
