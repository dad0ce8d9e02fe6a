"""Builds each step's batch: decodes and chunked prefills under a token budget.

Pure bookkeeping over contexts and the block manager (no tensors). A running context out of
blocks takes cached free blocks first (the block manager evicts them), then preempts the
worst-ranked work after it that holds blocks (running, or waiting with blocks of its own, such
as forks not admitted yet), then swaps out idle contexts, and only then preempts itself;
preempted contexts recompute.

When the best-ranked waiting context could not start otherwise, running work of a lower
priority class gives up its slot, and lower-ranked or idle contexts give up their blocks.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter

from server.engine.block_manager import BlockManager, ParentKey, hash_block
from server.engine.config import EngineConfig
from server.engine.context import Context, ContextState


@dataclass(slots=True)
class ScheduledContext:
    ctx: Context
    num_tokens: int  # tokens computed this step (0: a fill satisfied by the prefix cache)
    sample: bool  # the chunk ends the context's tokens and its job generates
    drafts: int = 0  # drafted tokens at its end whose logits verify them (speculative decoding)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledContext] = field(default_factory=list)
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) before the step
    preempted: list[Context] = field(default_factory=list)
    num_cached_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


class Scheduler:
    """Tracks every context's state and decides what runs in the next step."""

    def __init__(
        self,
        config: EngineConfig,
        block_manager: BlockManager,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.blocks = block_manager
        self.now = now
        # until then the latency cap holds even with no latency work queued (see hold_latency)
        self._latency_hold_until = float("-inf")
        # this step's background prefill tokens still allowed (None: no cap); set by schedule()
        self._prefill_left: int | None = None
        # latency-critical contexts with a generation queued or running; set by schedule()
        self._latency_generating = 0
        # decode rows of other work that may still ride along this step's latency work
        self._ride_along_left = 0
        # the last batch was built under a latency hold's cap (see `hold_latency`)
        self.held = False
        self.block_size = block_manager.block_size
        self.contexts: dict[int, Context] = {}
        # kept sorted by rank (`Context.sort_key`) as contexts join it, so that a step reads
        # its head and its latency-critical lead without a pass over thousands waiting; a
        # waiting context whose rank changes is put back in place by `rerank`
        self.waiting: list[Context] = []
        self.running: list[Context] = []
        self._clock = 0
        # a paused step's contexts (ids), left out of every step until thawed, and the blocks
        # that step is writing, which the prefix cache must not serve meanwhile
        self._frozen: set[int] = set()
        self._unwritten: set[int] = set()
        # this step's idle contexts, least recently used first, for `_swap_out_idle` (None:
        # not listed yet this step)
        self._idle_lru: deque[Context] | None = None

    # ---- membership -----------------------------------------------------------------------
    def add_context(self, ctx: Context) -> None:
        self.contexts[ctx.id] = ctx

    def fork(self, parent: Context, context_id: int) -> Context:
        """A new context sharing all of `parent`'s computed blocks (the last one copy-on-write)."""
        child = Context(
            context_id,
            token_ids=list(parent.token_ids),
            block_table=list(parent.block_table),
            block_hashes=list(parent.block_hashes),
            num_computed=parent.num_computed,
            last_used=self._clock,
            cache_salt=parent.cache_salt,
        )
        for block in child.block_table:
            self.blocks.incref(block)
        self.add_context(child)
        return child

    def remove_context(self, ctx: Context) -> None:
        """Forget a context and drop its blocks."""
        self._leave_queues(ctx)
        self.blocks.free_blocks(ctx.block_table)
        ctx.block_table, ctx.block_hashes, ctx.num_computed = [], [], 0
        self.contexts.pop(ctx.id, None)

    def wake(self, ctx: Context) -> None:
        """A context got a job: queue it unless it is already queued or running."""
        if ctx.state is ContextState.IDLE and ctx.jobs:
            ctx.state = ContextState.WAITING
            self._enqueue(ctx)

    def rerank(self, ctx: Context) -> None:
        """`ctx`'s rank changed (its head job ended, or a job was boosted): a waiting context
        moves to its new place in the queue."""
        if ctx.state is ContextState.WAITING and ctx in self.waiting:
            self.waiting.remove(ctx)
            self._enqueue(ctx)

    def sleep(self, ctx: Context) -> None:
        """A context ran out of jobs: it keeps its blocks but leaves the queues."""
        if not ctx.jobs:
            self._leave_queues(ctx)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def hold_latency(self, seconds: float) -> None:
        """Keep the latency cap on for `seconds` from now, as if latency work were queued.

        Set when a latency-critical generation ends whose output another latency-critical call
        reads: the caller needs a moment to submit that call, and a long background step
        started meanwhile would be waited for.
        """
        self._latency_hold_until = max(self._latency_hold_until, self.now() + seconds)

    def latency_hold_left(self) -> float:
        """Seconds the latency hold still lasts (0 when none)."""
        return max(0.0, self._latency_hold_until - self.now())

    def freeze(self, batch: SchedulerOutput) -> None:
        """A step of `batch` has paused between two layers: until `thaw`, its contexts stay out
        of every step (neither scheduled nor preempted, nor giving up their blocks), and the
        blocks it writes are not served from the prefix cache, half written as they are."""
        bs = self.block_size
        self._frozen = {s.ctx.id for s in batch.scheduled}
        self._unwritten = {
            block
            for s in batch.scheduled
            for block in s.ctx.block_table[
                s.ctx.num_computed // bs : -(-(s.ctx.num_computed + s.num_tokens) // bs)
            ]
        }

    def thaw(self) -> None:
        self._frozen, self._unwritten = set(), set()

    def is_frozen(self, ctx: Context) -> bool:
        return ctx.id in self._frozen

    def has_latency_contexts(self) -> bool:
        """Whether latency-critical work is queued or running outside a paused step."""
        if any(self.is_latency(c) and c.id not in self._frozen for c in self.running):
            return True
        for ctx in self.waiting:  # sorted: the latency-critical ones lead it
            if not self.is_latency(ctx):
                return False
            if ctx.id not in self._frozen:
                return True
        return False

    def is_latency(self, ctx: Context) -> bool:
        return ctx.sort_key[0] <= self.config.latency_priority

    # ---- one step -------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        """The next step's batch; a paused step's contexts (`freeze`) sit it out."""
        if not self._frozen:
            return self._schedule_batch()
        frozen = [c for c in self.running if c.id in self._frozen]
        self.running = [c for c in self.running if c.id not in self._frozen]
        try:
            return self._schedule_batch()
        finally:
            self.running.extend(frozen)

    def _schedule_batch(self) -> SchedulerOutput:
        self._clock += 1
        self._idle_lru = None
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        # With latency-critical work about, other work only fills the step up to the cap, so
        # the latency work runs in small, fast steps (its own tokens are not capped).
        cap = self.config.latency_max_batched_tokens
        # the hold is read once a step: the step loop asks `held` whether an empty batch was
        # held back by it (a second reading may find it just ended, and the waiting work that
        # the cap kept out would look like work the pool cannot hold)
        self.held = cap is not None and self.latency_hold_left() > 0
        # the waiting queue is sorted: its head first, its latency-critical contexts leading
        latency_queued = (bool(self.waiting) and self.is_latency(self.waiting[0])) or any(
            self.is_latency(c) for c in self.running
        )
        others: int | None = cap if self.held or latency_queued else None
        self._ride_along_left = self.config.latency_other_decode_rows if others is not None else 0
        self._prefill_left = self.config.background_max_prefill_tokens
        self._latency_generating = self._count_latency_generating(limit=2)

        self._make_way(out)
        queue = sorted(self.running, key=lambda c: c.sort_key)
        self.running = []
        while queue:
            ctx = queue.pop(0)
            self._match_prefix(ctx, out)
            n = min(ctx.num_pending, budget, self._room(ctx, others))
            if n == 0 and ctx.num_pending > 0:
                self.running.append(ctx)  # out of budget: it waits for the next step
                continue
            while not self._reserve(ctx, n, out):
                victim = self._worst_holder_after(ctx, queue)
                if victim is not None:
                    if victim in queue:
                        queue.remove(victim)
                    self._preempt(victim, out)
                elif not self._swap_out_idle():
                    self._preempt(ctx, out)
                    break
            else:
                self._schedule(ctx, n, out)
                self.running.append(ctx)
                budget -= n
                others = self._charge(ctx, others, n)

        while self.waiting and len(self.running) < self.config.max_num_seqs:
            ctx = self.waiting[0]
            before, cached = ctx.num_computed, out.num_cached_tokens
            partial = ctx.block_table[before // self.block_size] if before % self.block_size else None
            self._match_prefix(ctx, out)
            n = min(ctx.num_pending, budget, self._room(ctx, others))
            if (n == 0 and ctx.num_pending > 0) or not self._reserve(ctx, n, out):
                # Not admitted: a waiting context must not pin blocks that others need.
                self.set_num_computed(ctx, self._rollback_point(ctx, before, partial))
                out.num_cached_tokens = cached
                if n and self._swap_out_idle():
                    continue
                break
            self.waiting.pop(0)
            ctx.state = ContextState.RUNNING
            self.running.append(ctx)
            self._schedule(ctx, n, out)
            budget -= n
            others = self._charge(ctx, others, n)
        return out

    def set_num_computed(self, ctx: Context, n: int) -> None:
        """Roll a context back to `n` computed tokens, dropping blocks it no longer needs."""
        ctx.num_computed = min(ctx.num_computed, n)
        keep = -(-ctx.num_computed // self.block_size)
        self.blocks.free_blocks(ctx.block_table[keep:])
        del ctx.block_table[keep:]
        del ctx.block_hashes[ctx.num_computed // self.block_size :]

    # ---- helpers --------------------------------------------------------------------------
    def _rollback_point(self, ctx: Context, before: int, partial: int | None) -> int:
        """Where a context not admitted goes back to: `before`, unless matching replaced its
        partial last block by a cached full one. That block may be one this very step fills
        (another context's, found at once), and kept as a partial block it would be copied on
        write before this step has written it; so the context goes back to the block's start
        and computes those few tokens again."""
        bs = self.block_size
        if partial is not None and ctx.block_table[before // bs] != partial:
            return before - before % bs
        return before

    def _schedule(self, ctx: Context, n: int, out: SchedulerOutput) -> None:
        ctx.last_used = self._clock
        for job in (ctx.job, ctx.sampling_job):  # a fill's count too: see generate_samples
            if job is not None and job.cached_tokens is None:
                job.cached_tokens = ctx.num_computed  # what its first step finds computed
        sample = (
            ctx.sampling_job is not None and n > 0 and ctx.num_computed + n == len(ctx.token_ids)
        )
        drafts = ctx.num_drafts if sample and n > ctx.num_drafts else 0
        out.scheduled.append(ScheduledContext(ctx, n, sample, drafts))

    def _match_prefix(self, ctx: Context, out: SchedulerOutput) -> None:
        """Attach cached blocks that hold the context's next pending tokens.

        A context forked inside a block (its last block partial and shared) matches too: a
        cached block holding those same leading tokens and the pending ones that complete it
        replaces the partial block, e.g. when sibling forks fill the same text after their
        shared prefix, the second reuses the first's blocks instead of recomputing them.
        """
        bs = self.block_size
        full = ctx.num_computed // bs
        limit = self._match_limit(ctx)
        if limit is None:
            return
        if ctx.num_computed % bs:
            if len(ctx.block_table) != full + 1 or (full + 1) * bs > limit:
                return
            if not self._match_partial_block(ctx, full, out):
                return
        elif len(ctx.block_table) != full:
            return
        last = ctx.last_hash
        for block, parent, tokens in self._cached_run(ctx, ctx.num_computed, last, limit):
            self.blocks.incref(block)
            ctx.block_table.append(block)
            ctx.block_hashes.append(self.blocks.register(block, parent, tokens))
            ctx.num_computed += bs
            out.num_cached_tokens += bs

    def _match_limit(self, ctx: Context) -> int | None:
        """How far cached blocks may hold the context's tokens; None when none may."""
        # drafted tokens are computed whatever the cache holds: their logits verify them
        if len(ctx.block_hashes) != ctx.num_computed // self.block_size or ctx.num_drafts:
            return None
        job = ctx.sampling_job
        if job is not None and job.wants_prompt_logprobs:
            return None  # every prompt token's logits are needed: none may come from the cache
        # A generation needs the logits of the last token, so that token is always computed.
        return len(ctx.token_ids) - (1 if job is not None else 0)

    def _cached_run(
        self, ctx: Context, start: int, parent: ParentKey, limit: int
    ) -> Iterator[tuple[int, ParentKey, list[int]]]:
        """(block, its parent's hash, its tokens) of each cached block holding the context's
        tokens from the block-aligned `start` on (after the block hashed `parent`), up to
        `limit`; blocks a paused step is still writing end the run."""
        bs = self.block_size
        while start + bs <= limit:
            tokens = ctx.token_ids[start : start + bs]
            block = self.blocks.lookup(parent, tokens)
            if block is None or block in self._unwritten:
                return
            yield block, parent, tokens
            parent = hash_block(parent, tokens)
            start += bs

    def _match_partial_block(self, ctx: Context, idx: int, out: SchedulerOutput) -> bool:
        bs = self.block_size
        tokens = ctx.token_ids[idx * bs : (idx + 1) * bs]
        parent = ctx.last_hash
        block = self.blocks.lookup(parent, tokens)
        if block is None or block == ctx.block_table[idx] or block in self._unwritten:
            return False
        self.blocks.incref(block)
        self.blocks.free_blocks([ctx.block_table[idx]])
        ctx.block_table[idx] = block
        ctx.block_hashes.append(self.blocks.register(block, parent, tokens))
        out.num_cached_tokens += (idx + 1) * bs - ctx.num_computed
        ctx.num_computed = (idx + 1) * bs
        return True

    def _reserve(self, ctx: Context, n: int, out: SchedulerOutput) -> bool:
        """Make room for `n` more tokens: new blocks, and a private copy of a shared last block."""
        bs = self.block_size
        start, end = ctx.num_computed, ctx.num_computed + n
        need = max(0, -(-end // bs) - len(ctx.block_table))
        shared: int | None = None
        if n and start % bs:
            last = ctx.block_table[start // bs]
            if self.blocks.ref_counts[last] > 1:
                shared = last
        if not self.blocks.can_allocate(need + (shared is not None)):
            return False
        if n and start % bs:
            idx = start // bs
            if shared is not None:
                copy = self.blocks.allocate()
                out.block_copies.append((shared, copy))
                self.blocks.decref(shared)
                ctx.block_table[idx] = copy
            elif self.blocks.is_cached(ctx.block_table[idx]):
                # Written in place: its old content must not be found by others any more.
                self.blocks.unregister(ctx.block_table[idx])
        for _ in range(need):
            ctx.block_table.append(self.blocks.allocate())
        # Blocks that this step fills are findable at once, so a request later in the same
        # batch reuses them (all K/V of a step are written before any attention reads them).
        for idx in range(len(ctx.block_hashes), end // bs):
            parent = ctx.last_hash
            tokens = ctx.token_ids[idx * bs : (idx + 1) * bs]
            ctx.block_hashes.append(self.blocks.register(ctx.block_table[idx], parent, tokens))
        return True

    def _make_way(self, out: SchedulerOutput) -> None:
        """Let the best-ranked waiting context start when others hold what it needs.

        Running contexts of a lower priority class give up their slots (keeping their blocks)
        and, when the waiting context needs them, their blocks (preempted: recomputed later);
        so do waiting contexts ranked after it, and idle ones (swapped out). Without this,
        work held back by the latency cap would keep the slots and blocks that the
        latency-critical work it waits for needs to start, and neither would ever run; and
        blocks that a waiting fork shares with its idle parent would be freed by neither alone.
        """
        if not self.waiting:
            return
        head = self.waiting[0]  # sorted by rank
        rank = head.sort_key[0]
        if len(self.running) >= self.config.max_num_seqs:
            lower = sorted(
                (c for c in self.running if c.sort_key[0] > rank), key=lambda c: c.sort_key
            )
            while lower and len(self.running) >= self.config.max_num_seqs:
                self._step_aside(lower.pop())
        need = self._blocks_needed(head)
        if self.blocks.can_allocate(need):
            return
        # what may give blocks up, the last to go first: waiting and running work ranked
        # after it (worst last), then idle contexts (least recently used last)
        holders = [c for c in self.running if c.sort_key[0] > rank and c.block_table]
        holders += [
            c for c in self.waiting if c is not head and c.sort_key > head.sort_key and c.block_table
        ]
        holders.sort(key=lambda c: c.sort_key)
        idle = [c for c in self.contexts.values() if c.state is ContextState.IDLE and c.block_table]
        holders += sorted(idle, key=lambda c: -c.last_used)
        # a block comes free only when every context holding it lets go (forks share blocks)
        held = Counter(b for c in holders for b in set(c.block_table))
        counts = self.blocks.ref_counts
        reclaimable = sum(1 for b, n in held.items() if counts[b] == n)
        if not self.blocks.can_allocate(need - reclaimable):
            return  # it would not fit even then: preempting would only lose work
        # counted again after each victim: cached blocks the head matches that a victim held
        # come free, and the head's match then takes them out of the free pool again
        while holders and not self.blocks.can_allocate(self._blocks_needed(head)):
            victim = holders.pop()
            if victim.state is ContextState.IDLE:
                self._swap_out(victim)
            else:
                self._preempt(victim, out)

    def _worst_holder_after(self, ctx: Context, queue: list[Context]) -> Context | None:
        """The worst-ranked context after `ctx` whose blocks could go to it: running work not
        yet scheduled this step (`queue`), or waiting work holding blocks `ctx` does not share
        (e.g. forks of a prompt not admitted yet, work that stepped aside). Waiting holders
        matter when nothing else is left: without them, running work short of one block would
        preempt itself while later-ranked waiting work kept the pool full."""
        own = set(ctx.block_table)
        waiting = [
            c for c in self.waiting
            if c.sort_key > ctx.sort_key and any(b not in own for b in c.block_table)
        ]  # fmt: skip
        candidates = [*queue[-1:], *waiting]
        return max(candidates, key=lambda c: c.sort_key, default=None)

    def _blocks_needed(self, ctx: Context) -> int:
        """Free blocks `ctx` takes to compute its next chunk (at most a full step's budget):
        new ones, and the cached free ones its prefix matches (they leave the free pool too,
        and the chunk then starts after them)."""
        bs = self.block_size
        start, taken = self._matchable(ctx)
        matched = (start - ctx.num_computed) // bs
        n = min(len(ctx.token_ids) - start, self.config.max_num_batched_tokens)
        need = max(0, -(-(start + n) // bs) - len(ctx.block_table) - matched) + taken
        if n and start % bs and self.blocks.ref_counts[ctx.block_table[start // bs]] > 1:
            need += 1  # its partial last block is shared: written, it needs a copy
        return need

    def _matchable(self, ctx: Context) -> tuple[int, int]:
        """Where `_match_prefix` would leave a block-aligned context's computed tokens, and how
        many of the cached blocks it would attach are free now (no context holds them)."""
        bs = self.block_size
        start = ctx.num_computed
        limit = self._match_limit(ctx)
        if limit is None or start % bs or len(ctx.block_table) != start // bs:
            return start, 0
        parent = ctx.last_hash
        taken = 0
        for block, _, _ in self._cached_run(ctx, start, parent, limit):
            taken += self.blocks.ref_counts[block] == 0
            start += bs
        return start, taken

    def _step_aside(self, ctx: Context) -> None:
        """Back to waiting with its blocks: it goes on from where it was once readmitted."""
        self.running.remove(ctx)
        ctx.state = ContextState.WAITING
        self._enqueue(ctx)

    def _preempt(self, ctx: Context, out: SchedulerOutput) -> None:
        self.blocks.free_blocks(ctx.block_table)
        ctx.block_table, ctx.block_hashes, ctx.num_computed = [], [], 0
        if ctx in self.running:
            self.running.remove(ctx)
        if ctx in self.waiting:
            self.waiting.remove(ctx)
        ctx.state = ContextState.WAITING
        self._enqueue(ctx, first_among_equals=True)  # it had started: it goes on first
        out.preempted.append(ctx)

    def _swap_out_idle(self) -> bool:
        """Free the blocks of the least recently used idle context; False if there is none.

        The idle contexts are listed once a step: a step that swaps out k of C idle contexts
        (a large prompt over many small cached prefixes) scanned all C each time, O(k * C).
        No context goes idle or is used while a batch is built, so the order holds."""
        if self._idle_lru is None:
            idle = [c for c in self.contexts.values() if c.state is ContextState.IDLE]
            self._idle_lru = deque(sorted(idle, key=lambda c: c.last_used))
        while self._idle_lru:
            ctx = self._idle_lru.popleft()
            if ctx.state is ContextState.IDLE and ctx.block_table:
                self._swap_out(ctx)
                return True
        return False

    def _swap_out(self, ctx: Context) -> None:
        """Free an idle context's blocks: it recomputes its tokens when it gets work again."""
        self.blocks.free_blocks(ctx.block_table)
        ctx.block_table, ctx.block_hashes, ctx.num_computed = [], [], 0

    def _room(self, ctx: Context, others: int | None) -> int:
        """Tokens `ctx` may take under the latency cap (`others`: what is left for non-latency
        work this step, None without a cap) and the background prefill cap."""
        job = ctx.job
        if job is not None and job.yield_tokens is not None and self._latency_generating:
            # a fill ahead of need rides along latency-critical decodes in small pieces
            # (`_latency_generating` counts to 2 at most: enough to tell one besides ctx)
            others_generating = self._latency_generating - (ctx.sampling_job is not None)
            if others_generating > 0 and self.is_latency(ctx):
                return min(ctx.num_pending, job.yield_tokens)
        if self.is_latency(ctx):
            return ctx.num_pending
        room = ctx.num_pending if others is None else others
        if room < ctx.num_pending == 1 and self._ride_along_left > 0:
            return 1  # a decode row riding along (charged to _ride_along_left)
        if self._prefill_left is not None and self._is_background(ctx) and ctx.num_pending > 1:
            room = min(room, self._prefill_left)
        return room

    def _charge(self, ctx: Context, others: int | None, n: int) -> int | None:
        if self.is_latency(ctx):
            return others
        if others is not None and n == 1 > others and self._ride_along_left > 0:
            self._ride_along_left -= 1
            return others
        if self._prefill_left is not None and self._is_background(ctx) and n > 1:
            self._prefill_left -= n
        return None if others is None else others - n

    def _is_background(self, ctx: Context) -> bool:
        return ctx.sort_key[0] >= self.config.background_priority

    def _enqueue(self, ctx: Context, first_among_equals: bool = False) -> None:
        """Into the waiting queue at its rank: after those of equal rank (as arrivals go), or
        before them."""
        place = bisect.bisect_left if first_among_equals else bisect.bisect_right
        self.waiting.insert(place(self.waiting, ctx.sort_key, key=attrgetter("sort_key")), ctx)

    def _count_latency_generating(self, limit: int) -> int:
        """Latency-critical contexts with a generation queued or running, counted up to `limit`
        (`_room` only asks whether there is one besides the context at hand). The waiting
        queue is sorted: its latency-critical contexts lead it."""
        count = sum(1 for c in self.running if self.is_latency(c) and c.sampling_job is not None)
        for ctx in self.waiting:
            if count >= limit or not self.is_latency(ctx):
                break
            count += ctx.sampling_job is not None
        return min(count, limit)

    def _leave_queues(self, ctx: Context) -> None:
        if ctx in self.running:
            self.running.remove(ctx)
        if ctx in self.waiting:
            self.waiting.remove(ctx)
        ctx.state = ContextState.IDLE
