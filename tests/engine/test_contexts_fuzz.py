"""A seeded randomized differential test of the engine's context API under KV pressure.

The engine is driven as the server drives it (server/engine_driver.py's TokenContext): prefix
contexts filled with shared "system prompt" runs whose last block is partial, sibling forks of
them filling the same text and then their own tails, truncate-and-refill (the server's rebase),
greedy generations of several lengths and priorities, fills queued behind generations, aborts,
frees, and steps interleaved at random with pause requests, all in a pool small enough that
work is preempted and idle contexts are swapped out, with the prefix cache on. Half the seeds
draft (n-gram speculation), with token runs that repeat short motifs so that drafts are found.

Every generation must equal greedy decoding of the context's tokens when it started (tracked
here as TokenContext tracks them) by an engine that shares nothing: a large pool, no prefix
cache, one prompt at a time. An aborted generation must be a prefix of it. What the engine
holds for an idle context is what the server thinks it holds. Once every context is freed,
every block is free again.

Against the scheduler before 4f8cd05 (a waiting fork not admitted kept a sibling's block that
the same step had not written yet, and copied it on write) about one seed in five gives wrong
greedy outputs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from server.engine import JobOutput, LLMEngine, SamplingParams
from server.token_prefix import common_prefix_len

SEEDS = range(60)
ROUNDS = 160  # rounds of random operations per seed, each followed by 0-3 steps
MAX_GEN = 8  # longest generation
REFERENCE_BATCH = 32  # prompts (of at most 64 tokens, plus MAX_GEN) the reference runs at once
MAX_CONTEXTS = 12  # live contexts kept (idle ones hold blocks until swapped out)
MAX_DRAIN_STEPS = 2000  # steps to finish what is left at the end (a few hundred do)
PRIORITIES = (0, 1, 2)  # latency-critical, normal, background
DRAFTED: dict[int, tuple[int, int]] = {}  # per seed: drafted and confirmed tokens
PAUSED: dict[int, int] = {}  # per seed: steps paused


@dataclass
class Queued:
    job: int
    tokens: list[int] = field(default_factory=list)  # a fill's tokens
    max_tokens: int = 0  # a generation's (0: this is a fill)


@dataclass
class Tracked:
    """A context as the server sees it: its tokens once its finished jobs are applied, and the
    jobs queued on it in order (a generation's prompt is `tokens` when it reaches the head)."""

    id: int
    tokens: list[int] = field(default_factory=list)
    queue: list[Queued] = field(default_factory=list)
    freed: bool = False
    lost: bool = False  # freed with a fill unfinished: its tokens are no longer known

    @property
    def idle(self) -> bool:
        return not self.queue and not self.freed

    def queued_len(self) -> int:
        return len(self.tokens) + sum(len(q.tokens) + q.max_tokens for q in self.queue)


@dataclass
class Generation:
    prompt: list[int]
    token_ids: list[int]
    whole: bool  # ran to max_tokens (else aborted: a prefix)
    where: str


class Fuzz:
    def __init__(
        self, engine: LLMEngine, rng: random.Random, max_len: int, motifs: bool = False
    ) -> None:
        """`motifs`: token runs repeat a short motif, so that drafts are found in them."""
        self.engine = engine
        self.rng = rng
        self.motifs = motifs
        self.max_len = max_len  # longest a context may grow (generations included)
        vocab = engine.model_config.vocab_size
        self.vocab = vocab
        # shared "system prompts": contexts start with a piece of one, forks go on with it
        self.systems = [self.run(rng.randint(max_len // 2, max_len - MAX_GEN)) for _ in range(3)]
        self.contexts: dict[int, Tracked] = {}
        self.by_job: dict[int, Tracked] = {}
        self.generations: list[Generation] = []
        self.log: list[str] = []  # the operations, to reproduce a failure

    def run(self, n: int) -> list[int]:
        if self.motifs:
            motif = [self.rng.randrange(3, self.vocab) for _ in range(self.rng.randint(2, 5))]
            return (motif * n)[:n]
        return [self.rng.randrange(3, self.vocab) for _ in range(n)]

    # ---- the server's primitives ----------------------------------------------------------
    def create(self, parent: Tracked | None = None) -> Tracked:
        cid = self.engine.create_context(parent.id if parent is not None else None)
        t = Tracked(cid, list(parent.tokens) if parent is not None else [])
        self.contexts[cid] = t
        self.log.append(f"c{cid} = create({'' if parent is None else f'parent=c{parent.id}'})")
        return t

    def fill(self, t: Tracked, tokens: list[int], priority: int) -> None:
        yield_tokens = self.rng.choice([None, None, None, 2, 5])
        job = self.engine.fill(t.id, tokens, priority, yield_tokens)
        t.queue.append(Queued(job, tokens=list(tokens)))
        self.by_job[job] = t
        self.log.append(
            f"j{job} = fill(c{t.id}, {len(tokens)} tokens {tokens}, priority={priority}, "
            f"yield_tokens={yield_tokens})"
        )

    def generate(self, t: Tracked, max_tokens: int, priority: int) -> None:
        sp = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        job = self.engine.add_generate(t.id, sp, priority)
        t.queue.append(Queued(job, max_tokens=max_tokens))
        self.by_job[job] = t
        self.log.append(f"j{job} = generate(c{t.id}, max_tokens={max_tokens}, priority={priority})")

    def fill_to(self, t: Tracked, target: list[int], priority: int) -> None:
        """TokenContext._rebase then fill: keep the common prefix, append the rest."""
        assert t.idle
        kept = common_prefix_len(t.tokens, target)
        if kept < len(t.tokens):
            self.engine.truncate(t.id, kept)
            del t.tokens[kept:]
            self.log.append(f"truncate(c{t.id}, {kept})")
        if len(target) > kept:
            self.fill(t, target[kept:], priority)

    def free(self, t: Tracked) -> None:
        self.engine.free(t.id)
        t.freed = True
        del self.contexts[t.id]
        self.log.append(f"free(c{t.id})")

    def abort(self, job: int) -> None:
        self.engine.abort(job)
        self.log.append(f"abort(j{job})")

    def step(self) -> None:
        self.log.append("step()")
        self.check_queue_order()
        self.absorb(self.engine.step())
        self.check_queue_order()

    def check_queue_order(self) -> None:
        """The scheduler keeps its waiting queue sorted by rank, whatever ended, was aborted
        or boosted meanwhile (it is never re-sorted)."""
        ranks = [c.sort_key for c in self.engine.scheduler.waiting]
        assert ranks == sorted(ranks), self.tail()

    # ---- outputs --------------------------------------------------------------------------
    def absorb(self, outputs: list[JobOutput]) -> None:
        for out in outputs:
            assert out.error is None, (out, self.tail())
            if not out.finished:
                continue
            t = self.by_job.pop(out.job_id)
            queued = next(q for q in t.queue if q.job == out.job_id)
            if queued is not t.queue[0]:
                # only a generation aborted before it started leaves out of turn
                assert queued.max_tokens and out.finish_reason == "abort", (out, self.tail())
                assert out.token_ids == [], out
                t.queue.remove(queued)
                continue
            t.queue.pop(0)
            if t.lost:
                continue
            if not queued.max_tokens:
                if out.finish_reason == "abort":  # freed before its tokens were computed
                    assert t.freed, (out, self.tail())
                    t.lost = True
                    continue
                assert out.finish_reason == "stop", out
                t.tokens.extend(queued.tokens)
                continue
            whole = out.finish_reason == "length"
            assert whole or out.finish_reason == "abort", out
            assert len(out.token_ids) == queued.max_tokens or not whole, out
            self.generations.append(
                Generation(list(t.tokens), list(out.token_ids), whole, f"c{t.id} j{out.job_id}")
            )
            t.tokens.extend(out.token_ids)
        for t in self.contexts.values():  # what the engine holds is what the server thinks
            if t.idle and not t.lost:
                assert self.engine.context_token_ids(t.id) == t.tokens, (t.id, self.tail())

    def drain(self) -> None:
        """Step until nothing is left; a step that makes no progress for long is a livelock."""
        for _ in range(MAX_DRAIN_STEPS):
            if not self.engine.has_work:
                return
            self.step()
        raise AssertionError(f"no end after {MAX_DRAIN_STEPS} steps (a livelock):\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log[-n:])

    # ---- random operations ----------------------------------------------------------------
    def idle_contexts(self) -> list[Tracked]:
        return [t for t in self.contexts.values() if t.idle and t.tokens]

    def room(self, t: Tracked) -> int:
        return self.max_len - t.queued_len()

    def continuation(self, tokens: list[int], limit: int) -> list[int]:
        """What comes next: more of the system prompt `tokens` is a piece of, or a new run."""
        for system in self.systems:
            if len(system) > len(tokens) and system[: len(tokens)] == tokens:
                rest = system[len(tokens) :]
                return rest[: self.rng.randint(1, max(1, min(len(rest), limit)))][:limit]
        return self.run(self.rng.randint(1, max(1, limit)))

    def new_prefix(self) -> None:
        """A prefix context: a piece of a system prompt (mostly ending inside a block)."""
        system = self.rng.choice(self.systems)
        t = self.create()
        self.fill(t, system[: self.rng.randint(3, len(system) - 4)], self.rng.choice(PRIORITIES))

    def fan_out(self) -> None:
        """Forks of an idle context fill the same text, then their own tails, and generate
        (the server's parallel calls on a shared prefix)."""
        idle = self.idle_contexts()
        if not idle:
            return self.new_prefix()
        parent = self.rng.choice(idle)
        limit = self.room(parent) - MAX_GEN - 6
        if limit < 1:
            return self.rebase(parent)
        shared = self.continuation(parent.tokens, limit) if self.rng.random() < 0.85 else []
        for _ in range(self.rng.randint(2, 4)):
            child = self.create(parent)
            tail = self.run(self.rng.choice([0, 0, 1, 3, 6]))
            priority = self.rng.choice(PRIORITIES)
            if shared or tail:
                self.fill(child, shared + tail, priority)
            if self.rng.random() < 0.8:
                self.generate(child, self.rng.randint(1, MAX_GEN), priority)

    def rebase(self, t: Tracked | None = None) -> None:
        """An idle context brought to a target that shares only a prefix with it."""
        idle = self.idle_contexts()
        if t is None:
            if not idle:
                return self.new_prefix()
            t = self.rng.choice(idle)
        cut = self.rng.randint(0, len(t.tokens) - 1)
        limit = self.max_len - MAX_GEN - cut
        target = t.tokens[:cut] + self.continuation(t.tokens[:cut], limit)
        priority = self.rng.choice(PRIORITIES)
        self.fill_to(t, target, priority)
        if self.rng.random() < 0.7:
            self.generate(t, self.rng.randint(1, MAX_GEN), priority)

    def queue_more(self) -> None:
        """A fill or a generation queued on any live context, busy or not."""
        live = [t for t in self.contexts.values() if t.queued_len() and self.room(t) > MAX_GEN + 2]
        if not live:
            return
        t = self.rng.choice(live)
        if self.rng.random() < 0.5:
            self.fill(t, self.run(self.rng.randint(1, min(6, self.room(t) - MAX_GEN))),
                      self.rng.choice(PRIORITIES))  # fmt: skip
        max_tokens = self.rng.randint(1, min(MAX_GEN, self.room(t)))
        self.generate(t, max_tokens, self.rng.choice(PRIORITIES))

    def abort_one(self) -> None:
        gens = [q.job for t in self.contexts.values() for q in t.queue if q.max_tokens]
        if gens:
            self.abort(self.rng.choice(gens))

    def boost_one(self) -> None:
        live = list(self.contexts.values())
        if live:
            t = self.rng.choice(live)
            priority = self.rng.choice(PRIORITIES)
            self.engine.boost(t.id, priority)
            self.log.append(f"boost(c{t.id}, {priority})")

    def free_one(self) -> None:
        live = list(self.contexts.values())
        if live:
            self.free(self.rng.choice(live))

    def round(self) -> None:
        ops = [
            (self.new_prefix, 2), (self.fan_out, 5), (self.rebase, 2), (self.queue_more, 2),
            (self.abort_one, 0.5), (self.free_one, 1), (self.boost_one, 1),
        ]  # fmt: skip
        for _ in range(self.rng.choice([1, 1, 2, 3])):
            op = self.rng.choices([o for o, _ in ops], [w for _, w in ops])[0]
            op()
        while len(self.contexts) > MAX_CONTEXTS:  # the oldest idle ones go first
            idle = [t for t in self.contexts.values() if t.idle]
            self.free((idle or list(self.contexts.values()))[0])
        r = self.rng.random()
        if r < 0.25:
            self.engine.request_pause()
            self.log.append("request_pause()")
        elif r < 0.5:
            self.engine.clear_pause_request()
            self.log.append("clear_pause_request()")
        for _ in range(self.rng.choice([0, 1, 1, 2, 3])):
            self.step()


@pytest.fixture(scope="module")
def alone(tiny_llama_path):
    """The reference: a pool large enough that nothing is preempted, nothing cached, no
    pausing or drafts. Each seed's prompts run as one batch: a row's numbers do not depend on
    the rows beside it (which the engine under test relies on too; one prompt at a time took
    two thirds of this file's time)."""
    engine = LLMEngine.from_pretrained(
        tiny_llama_path, block_size=16, num_kv_blocks=REFERENCE_BATCH * 6,
        enable_prefix_cache=False, pausable_steps=False, max_num_seqs=REFERENCE_BATCH,
    )  # fmt: skip
    cache: dict[tuple[int, ...], list[int]] = {}
    sp = SamplingParams(max_tokens=MAX_GEN, temperature=0, ignore_eos=True)

    def greedy(prompts: list[list[int]]) -> list[list[int]]:
        new = list({tuple(p): None for p in prompts if tuple(p) not in cache})
        for start in range(0, len(new), REFERENCE_BATCH):
            batch = new[start : start + REFERENCE_BATCH]
            outs = engine.generate([list(p) for p in batch], sp)
            for prompt, out in zip(batch, outs, strict=True):
                cache[prompt] = out.token_ids
        assert engine.stats.preemptions == 0  # each prompt ran through once, uninterrupted
        return [cache[tuple(p)] for p in prompts]

    return greedy


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_random_context_work_under_kv_pressure_matches_greedy_alone(tiny_llama_path, alone, seed):
    rng = random.Random(seed)
    block_size = (4, 8)[seed % 2]
    pool_tokens = rng.choice([96, 128])
    config = {
        "block_size": block_size,
        "num_kv_blocks": pool_tokens // block_size,
        "max_num_batched_tokens": rng.choice([16, 32, 64]),
        "max_num_seqs": rng.choice([3, 8, 128]),
        "latency_max_batched_tokens": rng.choice([None, 0, 8]),
        "latency_other_decode_rows": rng.choice([0, 2]),
        "background_max_prefill_tokens": rng.choice([None, 8]),
        # drafts in half the seeds (not drawn from rng: each seed's operations stay as they were)
        "ngram_speculation": (0, 4)[seed // 2 % 2],
        "pause_min_tokens": (0, 16)[seed % 2],  # every step may pause, or those of 16+ tokens
    }
    engine = LLMEngine.from_pretrained(tiny_llama_path, **config)
    fuzz = Fuzz(engine, rng, max_len=pool_tokens // 2, motifs=bool(config["ngram_speculation"]))
    for _ in range(ROUNDS):
        fuzz.round()
    engine.clear_pause_request()
    fuzz.log.append("clear_pause_request()")
    fuzz.drain()
    assert all(not t.queue for t in fuzz.contexts.values()), fuzz.tail()
    for t in list(fuzz.contexts.values()):
        fuzz.free(t)
    fuzz.drain()

    references = alone([g.prompt for g in fuzz.generations])
    wrong = [(g, ref) for g, ref in zip(fuzz.generations, references, strict=True)
             if g.token_ids != ref[: len(g.token_ids)]]  # fmt: skip
    assert not wrong, (
        config,
        [(g.where, len(g.prompt), g.token_ids, ref) for g, ref in wrong],
        fuzz.tail(200),
    )
    whole = [g for g in fuzz.generations if g.whole]
    assert len(whole) >= 20, len(whole)  # enough generations ran to their end to compare
    assert engine.stats.preemptions > 0, config
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    DRAFTED[seed] = (engine.stats.drafted_tokens, engine.stats.accepted_tokens)
    PAUSED[seed] = engine.stats.paused_steps


@pytest.mark.slow
def test_the_seeds_with_drafts_drafted():
    """Half the seeds above run with drafts (their token runs repeat short motifs); they did
    draft, and the model confirmed some (run after them in file order)."""
    if len(DRAFTED) < len(SEEDS):
        pytest.skip("needs every seed above to have run")
    drafted = [DRAFTED[s] for s in SEEDS if s // 2 % 2]
    # few: drafts wait for steps of decodes only with nothing waiting (48 and 31 in 60 seeds,
    # 2026-11-29; 102 and 53 in 120 seeds before)
    assert sum(d for d, _ in drafted) > 25 and sum(a for _, a in drafted) > 10, drafted
    assert not any(DRAFTED[s][0] for s in SEEDS if not s // 2 % 2)


@pytest.mark.slow
def test_steps_paused_with_and_without_a_pause_min_tokens():
    """Steps paused in the seeds where every step may pause and in those where only steps of
    16+ tokens may (run after them in file order)."""
    if len(PAUSED) < len(SEEDS):
        pytest.skip("needs every seed above to have run")
    for half in (0, 1):
        # 478, 234 in 60 seeds (2026-11-29; 908, 486 in 120 before)
        assert sum(PAUSED[s] for s in SEEDS if s % 2 == half) > 100, half
