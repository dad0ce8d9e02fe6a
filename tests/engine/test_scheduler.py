"""Batch building, prefix reuse, fork copy-on-write, preemption and swapping. No model: a
tiny driver advances contexts the way the engine does after a step."""

from server.engine.block_manager import BlockManager
from server.engine.config import EngineConfig
from server.engine.context import Context, ContextState, Job, JobKind
from server.engine.sampling_params import SamplingParams
from server.engine.scheduler import Scheduler, SchedulerOutput

BS = 4


def make(num_blocks=32, budget=64, max_seqs=16, prefix_cache=True):
    cfg = EngineConfig(
        block_size=BS,
        num_kv_blocks=num_blocks,
        max_num_batched_tokens=budget,
        max_num_seqs=max_seqs,
        enable_prefix_cache=prefix_cache,
    )
    bm = BlockManager(num_blocks, BS, prefix_cache)
    return Scheduler(cfg, bm), bm


_ids = iter(range(1, 10_000))


def new_ctx(sched, tokens, kind=JobKind.GENERATE, priority=0):
    ctx = Context(next(_ids), token_ids=list(tokens))
    sched.add_context(ctx)
    add_job(sched, ctx, kind, priority)
    return ctx


def add_job(sched, ctx, kind, priority=0):
    job = Job(
        next(_ids),
        kind,
        priority=priority,
        arrival=next(_ids),
        sampling=SamplingParams(max_tokens=100, temperature=0)
        if kind is JobKind.GENERATE
        else None,
    )
    ctx.jobs.append(job)
    sched.wake(ctx)
    return job


def advance(sched: Scheduler, out: SchedulerOutput, token=7):
    """What the engine does after the model ran: tokens computed, samples appended, fills done."""
    for s in out.scheduled:
        s.ctx.num_computed += s.num_tokens
        if s.sample:
            s.ctx.token_ids.append(token)
        job = s.ctx.job
        if job is not None and job.kind is JobKind.FILL and s.ctx.num_pending == 0:
            s.ctx.jobs.popleft()
            sched.sleep(s.ctx)


def test_decodes_first_then_chunked_prefill_under_budget():
    sched, _ = make(budget=10)
    a = new_ctx(sched, range(3))
    advance(sched, sched.schedule())  # a prefilled, sampled
    b = new_ctx(sched, range(100, 125))
    out = sched.schedule()
    got = {s.ctx.id: (s.num_tokens, s.sample) for s in out.scheduled}
    assert got[a.id] == (1, True)  # decode
    assert got[b.id] == (9, False)  # prefill chunk within the remaining budget
    assert out.num_tokens == 10
    advance(sched, out)
    out = sched.schedule()
    assert {s.ctx.id: s.num_tokens for s in out.scheduled} == {a.id: 1, b.id: 9}


def test_prefix_cache_reuses_full_blocks_and_keeps_last_token_for_generation():
    sched, bm = make()
    prompt = list(range(10))  # two full blocks + 2
    a = new_ctx(sched, prompt, kind=JobKind.FILL)
    advance(sched, sched.schedule())
    b = new_ctx(sched, prompt + [99])
    out = sched.schedule()
    (sb,) = out.scheduled
    assert out.num_cached_tokens == 8 and sb.num_tokens == 3 and sb.sample
    assert b.block_table[:2] == a.block_table[:2]
    # an exact-multiple prompt for a generation leaves its last token to compute
    c = new_ctx(sched, prompt[:8])
    out = sched.schedule()
    sc = next(s for s in out.scheduled if s.ctx is c)
    assert out.num_cached_tokens == 4 and sc.num_tokens == 4


def test_same_batch_requests_share_blocks_registered_in_that_step():
    sched, bm = make()
    prompt = list(range(20, 33))
    a = new_ctx(sched, prompt)
    b = new_ctx(sched, prompt)
    out = sched.schedule()
    counts = {s.ctx.id: s.num_tokens for s in out.scheduled}
    assert counts == {a.id: 13, b.id: 1}
    assert a.block_table[:3] == b.block_table[:3]
    assert out.num_cached_tokens == 12


def test_prefix_cache_off():
    sched, _ = make(prefix_cache=False)
    a = new_ctx(sched, range(9))
    b = new_ctx(sched, range(9))
    out = sched.schedule()
    assert out.num_cached_tokens == 0
    assert set(a.block_table).isdisjoint(b.block_table)


def test_fork_shares_blocks_and_copies_partial_last_block_on_write():
    sched, bm = make()
    parent = new_ctx(sched, range(6), kind=JobKind.FILL)
    advance(sched, sched.schedule())
    assert parent.state is ContextState.IDLE and parent.num_computed == 6
    child = sched.fork(parent, 1000)
    assert child.block_table == parent.block_table
    assert [bm.ref_counts[b] for b in parent.block_table] == [2, 2]
    child.token_ids.append(42)
    add_job(sched, child, JobKind.GENERATE)
    out = sched.schedule()
    (s,) = out.scheduled
    assert s.num_tokens == 1
    assert out.block_copies == [(parent.block_table[1], child.block_table[1])]
    assert child.block_table[0] == parent.block_table[0]
    assert bm.ref_counts[parent.block_table[1]] == 1
    # the parent writes into its own partial block now without a copy
    parent.token_ids.append(43)
    add_job(sched, parent, JobKind.FILL)
    out = sched.schedule()
    assert out.block_copies == []


def test_full_blocks_from_fork_are_not_copied():
    sched, bm = make()
    parent = new_ctx(sched, range(8), kind=JobKind.FILL)
    advance(sched, sched.schedule())
    child = sched.fork(parent, 2000)
    child.token_ids.extend([1, 2, 3])
    add_job(sched, child, JobKind.GENERATE)
    out = sched.schedule()
    assert out.block_copies == []
    assert child.block_table[:2] == parent.block_table
    assert len(child.block_table) == 3


def test_preempts_lowest_priority_when_blocks_run_out_and_recomputes_later():
    sched, bm = make(num_blocks=6, budget=64)
    hi = new_ctx(sched, range(8), priority=0)  # 2 blocks
    lo = new_ctx(sched, range(50, 58), priority=1)  # 2 blocks
    advance(sched, sched.schedule())
    for _ in range(8):  # both decode; hi's growth eventually needs lo's blocks
        out = sched.schedule()
        advance(sched, out)
        if out.preempted:
            break
    assert out.preempted == [lo]
    assert lo.state is ContextState.WAITING and lo.num_computed == 0 and lo.block_table == []
    assert bm.num_free_blocks + sum(len(set(c.block_table)) for c in (hi,)) == 6
    assert len(lo.token_ids) > 8  # what it generated is kept and will be recomputed
    assert hi in sched.running


def test_swaps_out_idle_context_before_preempting():
    sched, bm = make(num_blocks=4)
    idle = new_ctx(sched, range(12), kind=JobKind.FILL)  # 3 blocks, then idle
    advance(sched, sched.schedule())
    assert idle.state is ContextState.IDLE and len(idle.block_table) == 3
    busy = new_ctx(sched, range(100, 108))
    out = sched.schedule()
    assert [s.ctx for s in out.scheduled] == [busy]
    assert idle.block_table == [] and idle.num_computed == 0


class _CountingDict(dict):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scans = 0

    def values(self):
        self.scans += 1
        return super().values()


def test_a_step_lists_idle_contexts_once_however_many_it_swaps_out():
    # A step short of many blocks swaps out idle contexts one by one; finding each one by a
    # scan of all contexts cost O(swapped * contexts) per step.
    sched, bm = make(num_blocks=72, budget=512, max_seqs=16)
    idle = [new_ctx(sched, range(i * 4, i * 4 + 4), kind=JobKind.FILL) for i in range(64)]
    while sched.has_work:
        advance(sched, sched.schedule())
    assert all(c.state is ContextState.IDLE and len(c.block_table) == 1 for c in idle)
    sched.contexts = _CountingDict(sched.contexts)
    busy = [new_ctx(sched, range(1000 + i * 16, 1016 + i * 16)) for i in range(8)]
    out = sched.schedule()
    assert {s.ctx for s in out.scheduled} == set(busy)
    swapped = [c for c in idle if not c.block_table]
    assert len(swapped) >= 20
    assert swapped == idle[: len(swapped)]  # least recently used first
    assert sched.contexts.scans <= 3


def test_max_num_seqs_caps_running():
    sched, _ = make(max_seqs=2)
    ctxs = [new_ctx(sched, range(i * 10, i * 10 + 3)) for i in range(3)]
    out = sched.schedule()
    assert [s.ctx for s in out.scheduled] == ctxs[:2]


def test_priority_orders_admission():
    sched, _ = make(budget=4)
    lo = new_ctx(sched, range(4), priority=5)
    hi = new_ctx(sched, range(10, 14), priority=0)
    out = sched.schedule()
    assert [s.ctx for s in out.scheduled] == [hi]
    assert lo.state is ContextState.WAITING


def test_a_rank_that_changes_while_waiting_moves_the_context_in_the_queue() -> None:
    """A waiting job raised in priority (a boost), or a head job that ends and leaves a later
    one, changes a context's rank without it joining the queue again: `rerank` moves it."""
    sched, _ = make(budget=4, max_seqs=1)
    first = new_ctx(sched, range(4), priority=1)
    out = sched.schedule()
    assert [s.ctx for s in out.scheduled] == [first]
    a = new_ctx(sched, range(10, 14), priority=2)
    b = new_ctx(sched, range(20, 24), priority=3)
    sched.schedule()  # the slot stays taken; both wait, sorted: a before b
    b.job.priority = 0  # boosted while waiting (as `LLMEngine.boost` does, then tells it)
    sched.rerank(b)
    first.jobs.clear()
    sched.sleep(first)  # its job ended: the slot is free
    out = sched.schedule()
    assert [s.ctx for s in out.scheduled] == [b]
    assert a.state is ContextState.WAITING


def test_many_waiting_are_admitted_in_rank_order_with_latency_work_first() -> None:
    sched, _ = make(num_blocks=4096, budget=10_000, max_seqs=64)
    ranks = [(p, i) for i in range(300) for p in (2, 0, 1)]
    made = [new_ctx(sched, range(i * 8, i * 8 + 3), priority=p) for p, i in ranks]
    out = sched.schedule()
    expected = sorted(made, key=lambda c: c.sort_key)[:64]
    assert [s.ctx for s in out.scheduled] == expected
    assert all(s.ctx.job.priority == 0 for s in out.scheduled)


def test_fill_entirely_cached_completes_without_compute():
    sched, _ = make()
    a = new_ctx(sched, range(8), kind=JobKind.FILL)
    advance(sched, sched.schedule())
    b = new_ctx(sched, range(8), kind=JobKind.FILL)
    out = sched.schedule()
    (s,) = out.scheduled
    assert s.ctx is b and s.num_tokens == 0 and b.num_computed == 8
    assert b.block_table == a.block_table


def test_rollback_frees_blocks_and_hashes():
    sched, bm = make()
    a = new_ctx(sched, range(9), kind=JobKind.FILL)
    advance(sched, sched.schedule())
    assert len(a.block_table) == 3 and len(a.block_hashes) == 2
    sched.set_num_computed(a, 7)
    assert len(a.block_table) == 2 and len(a.block_hashes) == 1


def test_sibling_forks_filling_the_same_text_share_blocks_past_a_partial_one():
    """Forks of a context whose last block is partial: the first fork's fill registers the
    completed block and the next ones, so a sibling filling the same text reuses them."""
    sched, bm = make()
    parent = new_ctx(sched, range(6), kind=JobKind.FILL)  # blocks: [0..3], [4, 5, _, _]
    advance(sched, sched.schedule())
    a, b = sched.fork(parent, 3000), sched.fork(parent, 3001)
    shared_text = [50, 51, 52, 53, 54, 55]  # completes block 1, fills block 2
    for child, tail in ((a, [60, 61]), (b, [70, 71])):
        child.token_ids.extend(shared_text + tail)
        add_job(sched, child, JobKind.GENERATE)
    out = sched.schedule()
    counts = {s.ctx.id: s.num_tokens for s in out.scheduled}
    assert counts == {a.id: 8, b.id: 2}  # b computes only its own tail
    assert out.num_cached_tokens == 6
    assert b.block_table[:3] == a.block_table[:3]
    assert b.block_table[0] == parent.block_table[0]
    assert b.block_table[1] != parent.block_table[1]  # a's completed copy, not the partial one
    assert bm.ref_counts[parent.block_table[1]] == 1  # only the parent holds its partial block
    assert out.block_copies == [(parent.block_table[1], a.block_table[1])]


def test_background_prefill_is_chunked_small_at_all_times():
    """Work of background priority prefills at most `background_max_prefill_tokens` per step
    (all such contexts together); other work and background decodes are not limited."""
    cfg = EngineConfig(
        block_size=BS, num_kv_blocks=64, max_num_batched_tokens=64,
        background_max_prefill_tokens=8, background_priority=2,
    )  # fmt: skip
    sched = Scheduler(cfg, BlockManager(64, BS, True))
    bulk = [new_ctx(sched, range(100, 120), priority=2), new_ctx(sched, range(200, 220), priority=2)]
    normal = new_ctx(sched, range(300, 320), priority=1)
    first = True
    while any(c.num_computed < 20 for c in bulk):
        out = sched.schedule()
        counts = {s.ctx.id: s.num_tokens for s in out.scheduled}
        if first:
            assert counts[normal.id] == 20  # not background: the whole prompt at once
            first = False
        prefill = [counts.get(c.id, 0) for c in bulk if c.num_computed < 20]
        assert sum(prefill) <= 8
        decodes = [counts[c.id] for c in bulk if c.num_computed >= 20 and c.id in counts]
        assert all(n == 1 for n in decodes)
        advance(sched, out)


def test_latency_hold_keeps_other_work_to_the_cap_until_it_ends():
    """After hold_latency(s), steps run other work only up to the latency cap, as if latency
    work were queued, until the hold ends (a clock is passed in, so no sleeping)."""
    cfg = EngineConfig(
        block_size=BS, num_kv_blocks=64, max_num_batched_tokens=64, latency_max_batched_tokens=0
    )
    now = [100.0]
    sched = Scheduler(cfg, BlockManager(64, BS, True), now=lambda: now[0])
    assert sched.latency_hold_left() == 0
    bulk = new_ctx(sched, range(100, 120), priority=2)
    sched.hold_latency(0.05)
    assert abs(sched.latency_hold_left() - 0.05) < 1e-9
    assert sched.schedule().scheduled == []  # held: cap 0 lets no other work in
    now[0] += 0.02
    sched.hold_latency(0.01)  # a shorter hold never shortens the current one
    assert abs(sched.latency_hold_left() - 0.03) < 1e-9
    urgent = new_ctx(sched, range(300, 310), priority=0)
    out = sched.schedule()
    assert [s.ctx.id for s in out.scheduled] == [urgent.id]  # latency work runs during a hold
    advance(sched, out)
    urgent.jobs.clear()  # its job done: no latency work left, only the hold
    sched.sleep(urgent)
    assert sched.schedule().scheduled == []
    now[0] += 0.05
    assert sched.latency_hold_left() == 0
    assert [s.ctx.id for s in sched.schedule().scheduled] == [bulk.id]


def test_a_fill_ahead_of_need_rides_along_latency_decodes_in_small_pieces():
    """A fill with yield_tokens takes at most that many tokens a step while another
    latency-critical context generates, and its whole pending rest once none does."""
    sched, _ = make(num_blocks=64, budget=64)
    chat = new_ctx(sched, range(10, 14), priority=0)  # generating: latency-critical
    ahead = new_ctx(sched, range(100, 140), kind=JobKind.FILL, priority=0)
    ahead.jobs[0].yield_tokens = 8
    out = sched.schedule()
    assert {s.ctx.id: s.num_tokens for s in out.scheduled} == {chat.id: 4, ahead.id: 8}
    advance(sched, out)
    chat.jobs.clear()
    sched.sleep(chat)  # the generation ended
    counts = {s.ctx.id: s.num_tokens for s in sched.schedule().scheduled}
    assert counts == {ahead.id: 40 - 8}


def _capped(num_blocks: int, max_seqs: int = 16) -> Scheduler:
    """Latency cap 0: while latency-critical work is queued, other work computes nothing."""
    cfg = EngineConfig(
        block_size=BS, num_kv_blocks=num_blocks, max_num_batched_tokens=64, max_num_seqs=max_seqs,
        latency_max_batched_tokens=0,
    )  # fmt: skip
    return Scheduler(cfg, BlockManager(num_blocks, BS, True))


def test_latency_work_short_of_blocks_preempts_capped_work_instead_of_waiting_on_it():
    """Capped work holding the blocks cannot finish while latency work waits, and the latency
    work cannot start without its blocks: the lower-ranked holder must give them up."""
    sched = _capped(num_blocks=6)
    bulk = new_ctx(sched, range(100, 116), priority=2)  # 4 of the 6 blocks
    advance(sched, sched.schedule())
    urgent = new_ctx(sched, range(200, 212), priority=0)  # needs 3 blocks
    out = sched.schedule()
    assert [s.ctx for s in out.scheduled] == [urgent] and out.preempted == [bulk]
    assert bulk.state is ContextState.WAITING and bulk.block_table == []
    advance(sched, out)
    urgent.jobs.clear()
    sched.sleep(urgent)
    assert [s.ctx for s in sched.schedule().scheduled] == [bulk]  # it recomputes afterwards


def test_latency_work_short_of_a_running_slot_takes_one_from_capped_work():
    sched = _capped(num_blocks=32, max_seqs=2)
    bulk = [new_ctx(sched, range(100 + 10 * i, 104 + 10 * i), priority=2) for i in range(2)]
    advance(sched, sched.schedule())
    urgent = new_ctx(sched, range(200, 204), priority=0)
    out = sched.schedule()
    assert [s.ctx for s in out.scheduled] == [urgent] and out.preempted == []
    # the later-ranked one made way and kept its blocks: it goes on without recomputing
    assert bulk[1].state is ContextState.WAITING and bulk[1].num_computed == 4
    assert len(bulk[1].block_table) == 1
    assert bulk[0] in sched.running


def test_work_that_outranks_nothing_waits_its_turn():
    sched = _capped(num_blocks=6)
    first = new_ctx(sched, range(100, 116), priority=0)  # latency work, 4 blocks
    advance(sched, sched.schedule())
    second = new_ctx(sched, range(200, 212), priority=0)  # the same rank: no preemption
    out = sched.schedule()
    assert [s.ctx for s in out.scheduled] == [first] and out.preempted == []
    assert second.state is ContextState.WAITING


def test_no_preemption_when_the_freed_blocks_could_not_fit_the_waiting_context():
    sched = _capped(num_blocks=6)
    bulk = new_ctx(sched, range(100, 108), priority=2)  # 2 blocks
    advance(sched, sched.schedule())
    huge = new_ctx(sched, range(200, 232), priority=0)  # 8 blocks: more than the pool
    out = sched.schedule()
    assert out.preempted == [] and bulk.block_table and huge.state is ContextState.WAITING


def test_waiting_work_ranked_later_gives_up_its_blocks_to_the_head_of_the_queue():
    """Nothing runs and the blocks sit with a later-ranked waiting context: it is preempted,
    instead of the head of the queue being failed as too large for the pool."""
    sched, _ = make(num_blocks=6, budget=64)
    later = new_ctx(sched, range(100, 116), kind=JobKind.FILL)  # 4 of the 6 blocks, then idle
    advance(sched, sched.schedule())
    head = new_ctx(sched, range(200, 212))  # 3 blocks, ranked first
    add_job(sched, later, JobKind.GENERATE)  # waiting again, with its blocks
    out = sched.schedule()
    assert [s.ctx for s in out.scheduled] == [head] and out.preempted == [later]


def test_blocks_a_waiting_fork_shares_with_its_idle_parent_are_freed_for_the_head():
    """Neither swapping out the idle parent nor preempting the fork frees their shared blocks
    alone; together they do, and the head of the queue starts instead of being failed."""
    sched, _ = make(num_blocks=6, budget=64)
    parent = new_ctx(sched, range(100, 116), kind=JobKind.FILL)  # 4 of the 6 blocks, then idle
    advance(sched, sched.schedule())
    fork = sched.fork(parent, next(_ids))
    head = new_ctx(sched, range(200, 212))  # 3 blocks, ranked first
    add_job(sched, fork, JobKind.GENERATE)  # waiting, sharing the parent's 4 blocks
    out = sched.schedule()
    assert [s.ctx for s in out.scheduled] == [head] and out.preempted == [fork]
    assert parent.block_table == [] and parent.state is ContextState.IDLE


def test_blocks_the_head_matches_freed_by_preempting_a_fork_still_leave_room_for_its_rest():
    """The head of the queue matches a cached prefix that only a later-ranked waiting fork
    holds. Preempting the fork frees those blocks, but matching takes them back out of the
    free pool, so making way goes on to the next holder. It used to stop once the free count
    reached what the head needed with the prefix held (2 blocks), and the head, short of its
    last block, was then failed as too large for the pool while nothing ran (a 500)."""
    sched, bm = make(num_blocks=6, budget=64)
    parent = new_ctx(sched, range(100, 108), kind=JobKind.FILL)  # 2 blocks, then idle
    later = new_ctx(sched, range(200, 212), kind=JobKind.FILL)  # 3 blocks, then idle
    advance(sched, sched.schedule())
    fork = sched.fork(parent, next(_ids))
    sched.remove_context(parent)  # the fork alone holds the prefix's blocks now
    head = new_ctx(sched, [*range(100, 108), *range(300, 308)])  # the prefix, then 2 blocks
    add_job(sched, later, JobKind.GENERATE, priority=1)  # waiting with its blocks
    add_job(sched, fork, JobKind.GENERATE, priority=1)  # ranked last: preempted first
    assert bm.num_free_blocks == 1
    out = sched.schedule()
    assert [(s.ctx, s.num_tokens) for s in out.scheduled] == [(head, 8)]
    assert out.num_cached_tokens == 8 and out.preempted == [fork, later]


def test_running_work_short_of_a_block_takes_it_from_waiting_forks_ranked_later():
    """Forks of a computed prompt wait (not yet admitted) holding its blocks, and the pool is
    full. Running work that needs one more block preempts them, instead of preempting itself
    and then being failed as too large for the pool (a 500 under KV pressure with n > 1)."""
    sched, bm = make(num_blocks=9, budget=64)
    running = new_ctx(sched, range(300, 316))  # 4 blocks; samples its 17th token
    parent = new_ctx(sched, range(100, 120), kind=JobKind.FILL)  # 5 blocks
    advance(sched, sched.schedule())
    forks = [sched.fork(parent, next(_ids)) for _ in range(2)]
    sched.remove_context(parent)  # the forks keep its blocks
    for fork in forks:
        fork.token_ids.append(120)
        add_job(sched, fork, JobKind.FILL)
        add_job(sched, fork, JobKind.GENERATE)
    assert bm.num_free_blocks == 0
    out = sched.schedule()
    assert [(s.ctx, s.num_tokens) for s in out.scheduled] == [(running, 1)]
    assert sorted(c.id for c in out.preempted) == sorted(f.id for f in forks)
    assert running.state is ContextState.RUNNING and len(running.block_table) == 5


def test_a_frozen_batch_sits_steps_out_and_its_unwritten_blocks_are_not_served():
    """While a paused step holds its batch (freeze), the contexts in it are neither scheduled
    nor preempted, and a prompt matching the blocks it is writing computes its own; after thaw
    both run again and the written blocks are served."""
    sched, bm = make(num_blocks=16, budget=64)
    shared = list(range(100, 116))  # four full blocks
    bulk = new_ctx(sched, shared + [1, 2], priority=2)
    out = sched.schedule()
    assert [s.ctx for s in out.scheduled] == [bulk]
    sched.freeze(out)
    assert sched.is_frozen(bulk) and not sched.has_latency_contexts()
    urgent = new_ctx(sched, shared + [3], priority=0)
    assert sched.has_latency_contexts()
    beside = sched.schedule()
    assert [s.ctx for s in beside.scheduled] == [urgent]
    assert beside.num_cached_tokens == 0 and beside.scheduled[0].num_tokens == 17
    assert not set(urgent.block_table) & set(bulk.block_table)
    assert bulk in sched.running and bulk.num_computed == 0
    advance(sched, beside)
    sched.thaw()
    advance(sched, out)  # the paused step ends
    late = new_ctx(sched, shared + [4])
    nxt = sched.schedule()
    assert {s.ctx for s in nxt.scheduled} == {bulk, urgent, late}
    assert nxt.num_cached_tokens == 16  # now written: the late prompt takes them


def test_no_block_is_copied_before_the_step_that_fills_it_has_written_it():
    """A waiting fork matches its partial block to a block a sibling fills in this very step,
    is not admitted (no room), and is retried once an idle context is swapped out. Rolled back
    to mid-block with that block as its partial one, it would copy it on write before the step
    has written it (block copies run before the model): found by a randomized graph fuzzer as
    wrong greedy outputs under preemption. It must go back to the block's start instead."""
    sched, bm = make(num_blocks=5)
    idle = new_ctx(sched, [90, 91, 92, 93], kind=JobKind.FILL)  # one full block, idle after
    advance(sched, sched.schedule())
    parent = new_ctx(sched, [1, 2, 3, 4, 5, 6], kind=JobKind.FILL)  # blocks [1..4], [5, 6, _, _]
    advance(sched, sched.schedule())
    a, b = sched.fork(parent, 4000), sched.fork(parent, 4001)
    a.token_ids.extend([7, 8, 9])  # copies the partial block, completes it, needs one more
    add_job(sched, a, JobKind.FILL)
    b.token_ids.extend([7, 8, 10])  # the same completed block, then its own
    add_job(sched, b, JobKind.FILL)
    out = sched.schedule()
    assert {s.ctx.id for s in out.scheduled} == {a.id, b.id}
    written = {
        ctx.block_table[pos // BS]
        for s in out.scheduled
        for ctx in [s.ctx]
        for pos in range(ctx.num_computed, ctx.num_computed + s.num_tokens)
    }
    assert not any(src in written for src, _ in out.block_copies), (out.block_copies, written)
    advance(sched, out)
    assert b.block_table[1] == a.block_table[1]  # b reads a's completed block, once written
    assert idle.block_table == []  # swapped out to make room
