"""Decode attention with a shared prefix: cascade vs per-sequence, per layer and per engine step.

    python -m benchmarks.attention                 # the CPU table (SmolLM2 shapes, float32)
    python -m benchmarks.attention --quick         # fewer sizes, fewer repeats
    python -m benchmarks.attention --device cuda --sizes 64x4096 --dtype bfloat16
    python -m benchmarks.attention --cost-rule     # where cascade starts to pay (CascadeConfig)
    python -m benchmarks.attention --engine-rule   # the same on whole engine steps
    python -m benchmarks.attention --engine        # whole SmolLM2 decode steps, 16 forks of 2048
    python -m benchmarks.attention --shape llama3-8b --device cuda   # a 7B-class layer's heads
    python -m benchmarks.attention --cold 30       # KV out of the CPU caches, as in a model
    python -m benchmarks.attention --prefill       # the CPU prefill kernel alone (GFLOP/s)
    python -m benchmarks.attention --prefill --prefill-baseline old.c   # A/B against a version
    python -m benchmarks.attention --levels --levels-baseline old.c --threads 1   # levels alone
    python -m benchmarks.attention --distinct 32x600,16x600 --cold 30   # no shared prefix
    python -m benchmarks.attention --distinct 32x600 --cold 30 --decode-baseline old.c --threads 1

Every row forks `seqs` sequences from one context of `prefix` tokens (blocks shared, as the
engine's forks and prefix cache make them) and gives each its own suffix; one decode step is
timed through `server.kernels.attention`, once with the cascade plan and once without. The
cascade column is timed even where the device's cost rule would not plan the level; the
`rule` column says whether it would. With `--cold N` (CPU) a round runs the step over N
layer-sized caches of its own, as a model's layers do, so each layer's KV comes from memory
rather than from a cache the previous call left warm; the time is the round's over N.
`--distinct RxT` times instead the CPU decode kernel (paged_decode.c) called directly on R rows
of T tokens each with its own blocks (each row's contiguous, rows one after another, as contexts
prefilled one by one get them), the engine's case when unrelated sequences decode together,
with the KV bytes it reads per second. With `--decode-baseline FILE` (an older paged_decode.c)
both builds are timed in turn, round after round (`--rounds`, default 5), each round a median
as `--prefill`'s (one thread: by the thread's CPU time), and the table gives the medians of
the rounds and their ratio.
Results are printed and saved as JSON under benchmarks/results/.

`--prefill` times the CPU causal prefill kernel (server/kernels/cpu/paged_prefill.c) alone on
fresh prompts of 256-2048 tokens, 4 prompts of 512 in one call, and chunks of 512 rows after
1536 tokens of context (the engine's mid-sequence chunks); GFLOP/s count the causal half (4 x
Hq x D per query-key pair a row attends). With `--prefill-baseline FILE` (an older version of
paged_prefill.c, e.g. from `git show`) both are timed in turn, round after round.

`--levels` times the CPU levels kernel (server/kernels/cpu/paged_levels.c) alone: one level of
`seqs` members over a `prefix`-token span per size (16x2048, 64x2048, 16x512, 4x2048, 64x8192,
or `--sizes`), blocks scattered over a pool on huge pages (over `--cold N` pools of their own
in turn: the KV out of the CPU caches); GFLOP/s count 4 x Hq x D per member and key. With
`--levels-baseline FILE` (an older paged_levels.c) both are timed call by call, alternating,
and the table gives the median over `--rounds` of each and of the per-round ratio. Run it with
`--threads 1` on a shared machine: one thread is timed in its own CPU time.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.common.timing import median_ms, sync
from server.kernels import AttentionMetadata, CascadeConfig, attention, build_attention_metadata
from server.kernels.backends import default_backend_name

RESULTS = Path(__file__).parent / "results"
FORCED = CascadeConfig(min_prefix_tokens=1, min_group_size=2)  # time cascade even below the rule
SEQS = (4, 16, 64)
PREFIXES = (512, 2048, 8192)


@dataclass(frozen=True)
class Shape:
    """One layer's attention shape (SmolLM2-135M by default)."""

    num_q_heads: int = 9
    num_kv_heads: int = 3
    head_dim: int = 64
    block_size: int = 16


SHAPES = {
    "smollm2": Shape(),
    "llama3-8b": Shape(num_q_heads=32, num_kv_heads=8, head_dim=128),
    "llama2-7b": Shape(num_q_heads=32, num_kv_heads=32, head_dim=128),
}


@dataclass
class Row:
    seqs: int
    prefix: int
    suffix: int
    per_seq_ms: float
    cascade_ms: float
    planned: bool = True  # whether the device's cost rule plans this level by itself
    per_seq_eager_ms: float | None = None  # CUDA: wall time of an eager call, launches included
    cascade_eager_ms: float | None = None

    @property
    def speedup(self) -> float:
        return self.per_seq_ms / self.cascade_ms


@dataclass
class ForkedDecode:
    """One decode step of forks over a shared prefix, ready to time."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    tables: list[list[int]]
    seq_lens: list[int]
    scale: float

    def metadata(self, cascade: bool, config: CascadeConfig | None = None) -> AttentionMetadata:
        return build_attention_metadata(
            [1] * len(self.seq_lens),
            self.seq_lens,
            self.tables,
            self.k_cache.shape[1],
            self.q.device,
            cascade=cascade,
            cascade_config=config,
        )


def forked_decode(
    seqs: int,
    prefix: int,
    suffix: int,
    shape: Shape,
    dtype: torch.dtype,
    device: str,
    seed: int = 0,
) -> ForkedDecode:
    """Prefix in blocks 0.. (one prefill); the forks then decode in lockstep, so their own
    blocks interleave, as the engine's allocator hands them out."""
    bs = shape.block_size
    shared = prefix // bs
    tables = [list(range(shared)) for _ in range(seqs)]
    next_block = shared
    seq_lens = [prefix + suffix + 1] * seqs  # suffix tokens, then this step's token
    for position in range(shared * bs, prefix + suffix + 1):
        if position % bs == 0 or position == shared * bs:
            for table in tables:
                table.append(next_block)
                next_block += 1
    gen = torch.Generator().manual_seed(seed)

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen).to(dtype=dtype, device=device)

    cache_shape = (next_block, bs, shape.num_kv_heads, shape.head_dim)
    return ForkedDecode(
        q=rand(seqs, shape.num_q_heads, shape.head_dim),
        k=rand(seqs, shape.num_kv_heads, shape.head_dim),
        v=rand(seqs, shape.num_kv_heads, shape.head_dim),
        k_cache=rand(*cache_shape),
        v_cache=rand(*cache_shape),
        tables=tables,
        seq_lens=seq_lens,
        scale=shape.head_dim**-0.5,
    )


def time_layer(
    case: ForkedDecode,
    meta: AttentionMetadata,
    repeats: int,
    backend: str | None,
    layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> float:
    """Milliseconds of one layer's attention call (cache write included).

    On CPU the median of the faster half of the wall times (`median_ms`, about their 25th
    percentile: others' work on a shared machine only adds time); with `layers` (caches of the
    case's shape) that of a round over all of them divided by their count. On CUDA the GPU time of the call replayed
    from a CUDA graph (as engines run decode), so the host's launch overhead does not hide the
    kernels.
    """

    def call() -> torch.Tensor:
        return attention(
            case.q, case.k, case.v, case.k_cache, case.v_cache, meta, case.scale, backend=backend
        )

    if layers:

        def round_over_layers() -> None:
            for k_cache, v_cache in layers:
                attention(case.q, case.k, case.v, k_cache, v_cache, meta, case.scale,
                          backend=backend)  # fmt: skip

        return median_ms(round_over_layers, repeats, case.q.device) / len(layers)
    if case.q.device.type == "cuda":
        try:
            return graph_ms(call, repeats)
        except RuntimeError as exc:  # a backend that cannot be captured: time it eagerly
            print(f"CUDA graph capture failed ({exc}); timing eagerly")
    return median_ms(call, repeats, case.q.device)


def time_eager(
    case: ForkedDecode, meta: AttentionMetadata, repeats: int, backend: str | None
) -> float:
    """Median wall milliseconds of one eager call."""
    return median_ms(
        lambda: attention(
            case.q, case.k, case.v, case.k_cache, case.v_cache, meta, case.scale, backend=backend
        ),
        repeats,
        case.q.device,
    )


def run_table(
    sizes: list[tuple[int, int]],
    suffix: int,
    shape: Shape,
    dtype: torch.dtype,
    device: str,
    repeats: int,
    backend: str | None,
    cold_layers: int = 0,
) -> list[Row]:
    rows = []
    rule = CascadeConfig.for_backend(backend) if backend else CascadeConfig.for_device(device)
    for seqs, prefix in tqdm(sizes, desc="attention table", leave=False, disable=None):
        case = forked_decode(seqs, prefix, suffix, shape, dtype, device)
        layers = [(case.k_cache.clone(), case.v_cache.clone()) for _ in range(cold_layers)]
        per_seq = time_layer(case, case.metadata(cascade=False), repeats, backend, layers)
        cascade_meta = case.metadata(cascade=True, config=FORCED)
        cascade = time_layer(case, cascade_meta, repeats, backend, layers)
        row = Row(seqs, prefix, suffix, per_seq, cascade, planned=rule.pays(seqs, prefix))
        if case.q.device.type == "cuda":
            row.per_seq_eager_ms = time_eager(case, case.metadata(cascade=False), repeats, backend)
            row.cascade_eager_ms = time_eager(case, cascade_meta, repeats, backend)
        rows.append(row)
    return rows


@dataclass
class DistinctRow:
    rows: int
    tokens: int
    ms: float  # one layer's kernel call
    kv_mb: float  # the K and V bytes the call reads
    gb_s: float
    baseline_ms: float | None = None  # --decode-baseline's build, timed in turn


def distinct_case(
    rows: int, tokens: int, shape: Shape, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """q, the two caches and (blocks, offsets, tokens) of `rows` rows of `tokens` own tokens."""
    bs = shape.block_size
    per_row = -(-tokens // bs)
    gen = torch.Generator().manual_seed(seed)
    cache_shape = (rows * per_row, bs, shape.num_kv_heads, shape.head_dim)
    k_cache = torch.randn(*cache_shape, generator=gen)
    v_cache = torch.randn(*cache_shape, generator=gen)
    q = torch.randn(rows, shape.num_q_heads, shape.head_dim, generator=gen)
    index = (
        torch.arange(rows * per_row, dtype=torch.int64),
        torch.arange(rows + 1, dtype=torch.int64) * per_row,
        torch.full((rows,), tokens, dtype=torch.int64),
    )
    return q, k_cache, v_cache, index


def run_distinct(
    sizes: list[tuple[int, int]], shape: Shape, repeats: int, cold_layers: int,
    baseline: Path | None = None, rounds: int = 5,
) -> list[DistinctRow]:
    """The decode kernel alone on rows without shared blocks, per layer (over `cold_layers`
    caches of their own when given, as `time_layer` does); with `baseline` (another version
    of paged_decode.c) both builds in turn for `rounds` rounds, medians of the rounds."""
    from server.kernels.cpu import huge_pages
    from server.kernels.cpu import paged_decode as kernel

    versions = {"kernel": kernel.paged_decode}
    if baseline is not None:
        versions = {"baseline": _kernel_version(kernel, "paged_decode", baseline), **versions}

    def pooled(t: torch.Tensor) -> torch.Tensor:  # on huge pages, as the engine's KV pools
        return huge_pages.zeros(t.shape).copy_(t)

    results = []
    for rows, tokens in tqdm(sizes, desc="distinct rows", leave=False, disable=None):
        q, k_cache, v_cache, index = distinct_case(rows, tokens, shape)
        layers = [(pooled(k_cache), pooled(v_cache)) for _ in range(max(cold_layers, 1))]
        scale = shape.head_dim**-0.5

        def round_over_layers(fn, layers=layers, q=q, index=index, scale=scale) -> None:
            for k, v in layers:
                fn(q, k, v, *index, scale, 0, False)  # chunk 0 (the kernel's), check=False

        ms: dict[str, list[float]] = {v: [] for v in versions}
        for r in range(rounds if baseline is not None else 1):
            for v in list(versions)[:: -1 if r % 2 else 1]:
                call = lambda fn=versions[v]: round_over_layers(fn)  # noqa: E731
                ms[v].append(_prefill_ms(call, repeats) / len(layers))
        new_ms = statistics.median(ms["kernel"])
        kv_bytes = 2 * rows * tokens * shape.num_kv_heads * shape.head_dim * 4
        results.append(DistinctRow(
            rows, tokens, new_ms, kv_bytes / 1e6, kv_bytes / new_ms / 1e6,
            statistics.median(ms["baseline"]) if baseline is not None else None,
        ))
    return results


def cost_rule_sweep(
    shape: Shape, dtype: torch.dtype, device: str, repeats: int, backend: str | None
) -> list[Row]:
    """Cascade forced on for groups and prefixes around the rule, to find where it starts to pay."""
    rule = CascadeConfig.for_backend(backend) if backend else CascadeConfig.for_device(device)
    sizes = [(g, p) for g in (2, 4, 8, 16, 32, 64) for p in (64, 256, 512, 1024, 2048)]
    rows = []
    for seqs, prefix in tqdm(sizes, desc="cost rule", leave=False, disable=None):
        case = forked_decode(seqs, prefix, 32, shape, dtype, device)
        per_seq = time_layer(case, case.metadata(cascade=False), repeats, backend)
        cascade = time_layer(case, case.metadata(cascade=True, config=FORCED), repeats, backend)
        rows.append(Row(seqs, prefix, 32, per_seq, cascade, planned=rule.pays(seqs, prefix)))
    return rows


def engine_step(
    device: str,
    prefix: int,
    forks: int,
    steps: int,
    backend: str | None = None,
    cascade_rule: CascadeConfig | None = None,
    block: int = 4,
    check_outputs: bool = True,
    model: str = "smollm2-135m-instruct",
) -> dict[str, float | bool]:
    """Whole decode steps of `forks` children of one `prefix`-token context, without and with
    cascade (by `cascade_rule`, default the backend's measured rule), `steps` measured per arm.
    Both engines are built and warmed up first; then blocks of `block` steps alternate between
    them (which goes first alternates too), so a machine whose speed drifts slows both alike.
    The median and interquartile range per arm; with `check_outputs`, raises when cascade
    changed the greedy outputs."""
    from server.engine import LLMEngine, SamplingParams

    arms = {}
    warmup = 2
    for label, cascade in (("per_seq", False), ("cascade", True)):
        engine = LLMEngine.from_pretrained(
            model, device=device, enable_cascade=cascade,
            attention_backend=backend, cascade_rule=cascade_rule if cascade else None,
        )
        gen = torch.Generator().manual_seed(0)
        vocab = engine.model_config.vocab_size
        token_ids = torch.randint(0, vocab, (prefix,), generator=gen).tolist()
        root = engine.create_context()
        engine.fill(root, token_ids)
        engine.run_until_idle()
        children = [engine.create_context(parent=root) for _ in range(forks)]
        for child in children:
            engine.add_generate(
                child, SamplingParams(max_tokens=warmup + steps, temperature=0, ignore_eos=True)
            )
        for _ in range(warmup):
            engine.step()
        sync(device)
        arms[label] = (engine, children)
    timings: dict[str, list[float]] = {label: [] for label in arms}
    bar = tqdm(total=2 * steps, desc="engine steps", leave=False, disable=None)
    for i, first in enumerate(range(0, steps, block)):
        for label in list(arms) if i % 2 == 0 else list(arms)[::-1]:
            engine = arms[label][0]
            for _ in range(min(block, steps - first)):
                start = time.perf_counter()
                engine.step()
                sync(device)
                timings[label].append(time.perf_counter() - start)
                bar.update()
    bar.close()
    outputs = {}
    for label, (engine, children) in arms.items():
        engine.run_until_idle()
        outputs[label] = [engine.context_token_ids(c)[prefix:] for c in children]
    equal = outputs["per_seq"] == outputs["cascade"]
    if check_outputs and not equal:
        raise AssertionError(f"cascade changed the greedy outputs ({forks} forks of {prefix})")
    ms = {label: sorted(t * 1e3 for t in times) for label, times in timings.items()}
    per_seq, cascade = statistics.median(ms["per_seq"]), statistics.median(ms["cascade"])
    return {
        "steps": steps,
        "per_seq_step_ms": per_seq,
        "cascade_step_ms": cascade,
        "per_seq_iqr_ms": _iqr(ms["per_seq"]),
        "cascade_iqr_ms": _iqr(ms["cascade"]),
        "speedup": per_seq / cascade,
        "greedy_outputs_equal": equal,
    }


def _iqr(values: list[float]) -> list[float]:
    """[25th, 75th] percentile."""
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


ENGINE_RULE_SIZES = [(2, 2048), (4, 256), (4, 512), (4, 2048), (8, 256), (16, 256), (64, 64),
                     (16, 2048), (32, 1024), (64, 512), (64, 2048), (32, 4096)]


def engine_rule_sweep(device: str, backend: str | None, steps: int) -> list[dict[str, object]]:
    """Whole engine steps with a level forced on every fork group against none: where cascade
    pays once everything else in the step is counted (on CPU the decoder stack runs both in
    one C call; the level costs its planning, one more kernel call per layer and the merge)."""
    rule = CascadeConfig.for_backend(backend or default_backend_name(torch.device(device)))
    results = []
    for forks, prefix in tqdm(ENGINE_RULE_SIZES, desc="engine rule", leave=False, disable=None):
        # outputs reported, not enforced: a sweep's one flipped token must not lose the rest
        r = engine_step(device, prefix, forks, steps, backend, cascade_rule=FORCED,
                        check_outputs=False)  # fmt: skip
        results.append(
            {"seqs": forks, "prefix": prefix, "saved_reads": (forks - 1) * prefix,
             "planned": rule.pays(forks, prefix), **r}
        )
    return results


def profile_kernels(
    size: tuple[int, int],
    suffix: int,
    shape: Shape,
    dtype: torch.dtype,
    device: str,
    backend: str | None,
    calls: int = 20,
) -> None:
    """Print where a layer's time goes, kernel by kernel, per-sequence and cascade."""
    from torch.profiler import ProfilerActivity, profile

    case = forked_decode(*size, suffix, shape, dtype, device)
    activities = [ProfilerActivity.CPU]
    if case.q.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    for label, meta in (
        ("per-seq", case.metadata(cascade=False)),
        ("cascade", case.metadata(cascade=True, config=FORCED)),
    ):
        def call(meta: AttentionMetadata = meta) -> torch.Tensor:
            return attention(
                case.q, case.k, case.v, case.k_cache, case.v_cache, meta, case.scale,
                backend=backend,
            )

        for _ in range(3):
            call()
        sync(device)
        with profile(activities=activities) as prof:
            for _ in range(calls):
                call()
            sync(device)
        cuda = case.q.device.type == "cuda"
        print(f"== {label}, {size[0]} x {size[1]}: per call, by {'GPU' if cuda else 'CPU'} time ==")
        events = [e for e in prof.key_averages() if e.count >= calls]
        for e in sorted(events, key=lambda e: -_self_us(e, cuda))[:8]:
            us = _self_us(e, cuda)
            if us > 0:
                print(f"  {e.key[:48]:<48} {e.count // calls:>3} x  {us / calls:8.2f} us")


def _self_us(event: object, cuda: bool) -> float:
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    return float(getattr(event, attr, 0.0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--backend", default=None, help="kernel backend (default: by device)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--sizes", default=None, help="extra SEQSxPREFIX rows, e.g. 64x4096")
    parser.add_argument(
        "--shape", default="smollm2", choices=sorted(SHAPES), help="the layer's attention heads"
    )
    parser.add_argument("--suffix", type=int, default=40, help="own tokens per sequence")
    parser.add_argument("--cost-rule", action="store_true", help="sweep small groups/prefixes")
    parser.add_argument("--engine", action="store_true", help="also time whole engine steps")
    parser.add_argument(
        "--engine-rule", action="store_true",
        help="whole engine steps, cascade forced on vs off, over group/prefix sizes",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument(
        "--cold", type=int, default=0, metavar="LAYERS",
        help="CPU: time rounds over this many layer-sized caches (KV out of the CPU caches)",
    )
    parser.add_argument(
        "--distinct", default=None, metavar="RxT,...",
        help="CPU: only the decode kernel on R rows of T own tokens each (no shared prefix)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="per-kernel times of the last size, both ways"
    )
    parser.add_argument("--prefill", action="store_true", help="the CPU prefill kernel alone")
    parser.add_argument(
        "--prefill-baseline", default=None, metavar="FILE",
        help="--prefill: also time this version of paged_prefill.c, alternating",
    )
    parser.add_argument("--levels", action="store_true", help="the CPU levels kernel alone")
    parser.add_argument(
        "--levels-baseline", default=None, metavar="FILE",
        help="--levels: also time this version of paged_levels.c, alternating",
    )
    parser.add_argument(
        "--decode-baseline", default=None, metavar="FILE",
        help="--distinct: also time this version of paged_decode.c, alternating",
    )
    parser.add_argument(
        "--rounds", type=int, default=None,
        help="--prefill / --levels / --decode-baseline: alternating rounds (5 / 40 / 5)",
    )
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prefill:
        prefill_main(args)
        return
    if args.levels:
        levels_main(args)
        return
    if (args.cold or args.distinct) and args.device != "cpu":
        parser.error("--cold and --distinct are for CPU runs (GPU timings replay CUDA graphs)")

    dtype = getattr(torch, args.dtype)
    device = args.device
    backend = args.backend or default_backend_name(torch.device(device))
    seqs, prefixes = ((4, 16), (512, 2048)) if args.quick else (SEQS, PREFIXES)
    sizes = [(s, p) for s in seqs for p in prefixes]
    if args.sizes:
        sizes += [tuple(int(x) for x in item.split("x")) for item in args.sizes.split(",")]
    repeats = 5 if args.quick else 15
    shape = SHAPES[args.shape]
    report: dict[str, object] = {
        "device": _device_name(device),
        "backend": backend,
        "dtype": args.dtype,
        "shape_name": args.shape,
        "shape": asdict(shape),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cold_layers": args.cold,
    }
    if args.distinct:
        distinct = [tuple(int(x) for x in item.split("x")) for item in args.distinct.split(",")]
        baseline = Path(args.decode_baseline) if args.decode_baseline else None
        rounds = args.rounds or 5
        drows = run_distinct(distinct, shape, repeats, args.cold, baseline, rounds)
        print(
            f"decode kernel per layer, rows with their own KV, {report['device']}, "
            f"{args.shape} heads"
            + (f", KV cold (rounds over {args.cold} layer caches)" if args.cold else ", KV warm")
            + (f", medians of {rounds} alternating rounds" if baseline else "")
        )
        extra = f" {'base ms':>8} {'speedup':>8}" if baseline else ""
        print(f"{'rows':>5} {'tokens':>7} {'ms':>8} {'KV MB':>8} {'GB/s':>7}" + extra)
        for d in drows:
            line = f"{d.rows:>5} {d.tokens:>7} {d.ms:>8.3f} {d.kv_mb:>8.1f} {d.gb_s:>7.1f}"
            if d.baseline_ms is not None:
                line += f" {d.baseline_ms:>8.3f} {d.baseline_ms / d.ms:>7.2f}x"
            print(line)
        report["decode_baseline"] = args.decode_baseline
        report["distinct"] = [asdict(d) for d in drows]
        cold = "_cold" if args.cold else ""
        out = Path(args.out) if args.out else RESULTS / f"attention_cpu_distinct{cold}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"saved {out}")
        return
    rows = run_table(sizes, args.suffix, shape, dtype, device, repeats, backend, args.cold)
    print(
        f"decode attention per layer, {report['device']}, {backend}, {args.dtype}, "
        f"{args.shape} heads ({shape.num_q_heads} q / {shape.num_kv_heads} kv x {shape.head_dim})"
        + (f", KV cold (rounds over {args.cold} layer caches)" if args.cold else "")
    )
    _print_rows(rows)
    report["table"] = [asdict(r) | {"speedup": r.speedup} for r in rows]
    if args.profile:
        profile_kernels(sizes[-1], args.suffix, shape, dtype, device, backend)
    if args.cost_rule:
        sweep = cost_rule_sweep(shape, dtype, device, repeats, backend)
        print("cost rule sweep (cascade forced on; speedup < 1 means it does not pay)")
        _print_rows(sweep)
        report["cost_rule"] = [asdict(r) | {"speedup": r.speedup} for r in sweep]
    if args.engine:
        result = engine_step(
            device, prefix=2048, forks=16, steps=6 if args.quick else 24, backend=args.backend
        )
        lo, hi = result["per_seq_iqr_ms"]
        clo, chi = result["cascade_iqr_ms"]
        print(
            f"engine decode step, 16 forks of 2048 tokens, {result['steps']} steps per arm in "
            f"alternating blocks, median [IQR]: per-seq {result['per_seq_step_ms']:.1f} ms "
            f"[{lo:.1f}-{hi:.1f}], cascade {result['cascade_step_ms']:.1f} ms "
            f"[{clo:.1f}-{chi:.1f}], {result['speedup']:.2f}x; greedy outputs equal"
        )
        report["engine"] = result
    if args.engine_rule:
        sweep_rows = engine_rule_sweep(device, args.backend, steps=3 if args.quick else 5)
        print("engine steps, cascade forced on vs off (speedup < 1: it does not pay)")
        print(f"{'seqs':>5} {'prefix':>7} {'saved':>7} {'off ms':>8} {'on ms':>8} {'speedup':>8} "
              f"{'rule':>5}")
        for r in sweep_rows:
            print(f"{r['seqs']:>5} {r['prefix']:>7} {r['saved_reads']:>7} "
                  f"{r['per_seq_step_ms']:>8.1f} {r['cascade_step_ms']:>8.1f} "
                  f"{r['speedup']:>7.2f}x {'on' if r['planned'] else 'off':>5}")
        report["engine_rule"] = sweep_rows
    named = "" if backend == default_backend_name(torch.device(device)) else f"_{backend}"
    named += "_cold" if args.cold else ""
    out = Path(args.out) if args.out else RESULTS / f"attention_{device}{named}_{args.dtype}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


PREFILL_CASES = (  # (name, sequences, rows each, context before the rows)
    ("1x256", 1, 256, 0),
    ("1x512", 1, 512, 0),
    ("1x1024", 1, 1024, 0),
    ("1x2048", 1, 2048, 0),
    ("4x512", 4, 512, 0),
    ("2x512 after 1536", 2, 512, 1536),
)


def prefill_case(
    seqs: int, rows: int, context: int, shape: Shape, seed: int = 0
) -> tuple[tuple[object, ...], float]:
    """The kernel's arguments for `seqs` sequences of `rows` new rows after `context` cached
    tokens (blocks scattered over the pool), and the causal half's FLOP."""
    gen = torch.Generator().manual_seed(seed)
    bs, tokens = shape.block_size, context + rows
    per_seq = -(-tokens // bs)
    order = torch.randperm(per_seq * seqs, generator=gen).tolist()
    cache = (per_seq * seqs, bs, shape.num_kv_heads, shape.head_dim)
    k_cache, v_cache = torch.randn(*cache, generator=gen), torch.randn(*cache, generator=gen)
    q = torch.randn(rows * seqs, shape.num_q_heads, shape.head_dim, generator=gen)
    tables = [order[i * per_seq : (i + 1) * per_seq] for i in range(seqs)]
    keys = seqs * sum(context + i + 1 for i in range(rows))
    flop = 4.0 * shape.num_q_heads * shape.head_dim * keys
    args = (q, k_cache, v_cache, [rows] * seqs, [tokens] * seqs, tables, shape.head_dim**-0.5)
    return args, flop


def prefill_main(args: argparse.Namespace) -> None:
    """GFLOP/s of the prefill kernel per case (and of a baseline version's, in turn)."""
    from server.kernels.cpu import paged_prefill as kernel

    shape = SHAPES[args.shape]
    args.rounds = args.rounds or 5
    versions = {"kernel": kernel.paged_prefill}
    if args.prefill_baseline:
        versions = {
            "baseline": _kernel_version(kernel, "paged_prefill", Path(args.prefill_baseline)),
            **versions,
        }
    report: dict[str, object] = {
        "device": _device_name("cpu"),
        "shape_name": args.shape,
        "shape": asdict(shape),
        "threads": torch.get_num_threads(),
        "baseline": args.prefill_baseline,
        "rounds": args.rounds,
        "gflops": "best round's GFLOP/s (median of the faster half of its calls; with one "
        "thread, of their CPU time)",
    }
    rows = []
    for name, seqs, n, context in tqdm(PREFILL_CASES, desc="prefill", leave=False):
        call_args, flop = prefill_case(seqs, n, context, shape)
        outputs = [fn(*call_args) for fn in versions.values()]
        error = max(float((o - outputs[-1]).abs().max()) for o in outputs)
        repeats = max(5, int(3e9 / flop))
        rates: dict[str, list[float]] = {v: [] for v in versions}
        for r in range(args.rounds):
            names = list(versions)[:: -1 if r % 2 else 1]
            for v in names:
                ms = _prefill_ms(lambda v=v, a=call_args: versions[v](*a), repeats)
                rates[v].append(flop / ms / 1e6)
        row = {"case": name, "gflop": flop / 1e9, "max_abs_diff": error}
        row |= {f"{v}_gflops": max(rates[v]) for v in versions}
        row |= {f"{v}_rounds": rates[v] for v in versions}
        rows.append(row)
    print(f"prefill attention (causal half), {report['device']}, {args.shape} heads "
          f"({shape.num_q_heads} q / {shape.num_kv_heads} kv x {shape.head_dim}), GFLOP/s, "
          f"best of {args.rounds} rounds")  # fmt: skip
    print(f"{'case':>18} {'GFLOP':>7} " + " ".join(f"{v:>9}" for v in versions)
          + (f" {'speedup':>8}" if len(versions) > 1 else ""))  # fmt: skip
    for row in rows:
        line = f"{row['case']:>18} {row['gflop']:>7.2f} "
        line += " ".join(f"{row[f'{v}_gflops']:>9.1f}" for v in versions)
        if len(versions) > 1:
            line += f" {row['kernel_gflops'] / row['baseline_gflops']:>7.2f}x"
        print(line)
    report["table"] = rows
    out = Path(args.out) if args.out else RESULTS / "attention_prefill_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


def _prefill_ms(call: Callable[[], object], repeats: int) -> float:
    """median_ms, but one thread's calls are timed in the thread's own CPU time: on a shared
    machine a neighbour then costs this thread its share of the caches, not its whole slices."""
    if torch.get_num_threads() > 1:
        return median_ms(call, repeats)
    call()
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        call()
        times.append(time.thread_time() - start)
    times.sort()
    return statistics.median(times[: max(1, (len(times) + 1) // 2)]) * 1e3


def _kernel_version(kernel: Any, name: str, source: Path) -> Callable[..., Any]:
    """`kernel.<name>` (paged_prefill, paged_levels, paged_decode) with the library built from
    another version of its C source (beside this tree's headers, so it compiles as the kernel
    does)."""
    import shutil
    import tempfile

    from server.kernels.cpu import native_library

    folder = Path(tempfile.mkdtemp(prefix=f"parrot-{name}-baseline-"))
    for header in kernel.SOURCE.parent.glob("*.h"):
        shutil.copy(header, folder / header.name)
    shutil.copy(source, folder / kernel.SOURCE.name)
    lib = native_library.load(folder / kernel.SOURCE.name)
    if lib is None:
        raise SystemExit(f"--{name.removeprefix('paged_')}-baseline: {source} does not build")
    reference = getattr(kernel._library(), f"parrot_{name}")  # this tree's ctypes signature
    fn = getattr(lib, f"parrot_{name}")
    fn.argtypes, fn.restype = reference.argtypes, ctypes.c_int

    def call(*args: object) -> Any:
        own = kernel._library
        kernel._library = lambda: lib  # (the wrapper's checks kept)
        try:
            return getattr(kernel, name)(*args)
        finally:
            kernel._library = own

    return call


LEVELS_SIZES = ((16, 2048), (64, 2048), (16, 512), (4, 2048), (64, 8192))


def levels_case(
    seqs: int, prefix: int, shape: Shape, pools: int = 1, seed: int = 0
) -> tuple[list[tuple[object, ...]], float]:
    """The levels kernel's arguments for one level of `seqs` members over `prefix` tokens,
    once per pool (blocks scattered, caches on huge pages as the engine's), and its FLOP."""
    from server.kernels.cpu import huge_pages
    from server.kernels.cpu.paged_levels import level_index

    gen = torch.Generator().manual_seed(seed)
    bs, blocks = shape.block_size, -(-prefix // shape.block_size)
    q = torch.randn(seqs, shape.num_q_heads, shape.head_dim, generator=gen)
    calls = []
    for _ in range(pools):
        cache = (blocks + 8, bs, shape.num_kv_heads, shape.head_dim)
        k, v = (huge_pages.zeros(cache).copy_(torch.randn(*cache, generator=gen)) for _ in "kv")
        span = torch.randperm(blocks + 8, generator=gen)[:blocks].tolist()
        index = level_index([(list(range(seqs)), span, prefix)])
        out = torch.zeros_like(q)
        lse = torch.full((seqs, shape.num_q_heads), float("-inf"))
        calls.append((q, k, v, index, shape.head_dim**-0.5, out, lse, False))
    return calls, 4.0 * shape.num_q_heads * shape.head_dim * seqs * prefix


def levels_main(args: argparse.Namespace) -> None:
    """Per size, the levels kernel's ms and GFLOP/s (and a baseline version's, alternating)."""
    from server.kernels.cpu import paged_levels as kernel

    shape = SHAPES[args.shape]
    rounds = args.rounds or 40
    sizes = [tuple(int(x) for x in item.split("x")) for item in args.sizes.split(",")] \
        if args.sizes else list(LEVELS_SIZES)  # fmt: skip
    versions = {"kernel": kernel.paged_levels}
    if args.levels_baseline:
        versions = {
            "baseline": _kernel_version(kernel, "paged_levels", Path(args.levels_baseline)),
            **versions,
        }
    rows = []
    for seqs, prefix in tqdm(sizes, desc="levels", leave=False):
        calls, flop = levels_case(seqs, prefix, shape, max(args.cold, 1))
        outputs = []
        for fn in versions.values():  # one call from the same -inf start: the results compared
            fresh = calls[0][:5] + (torch.zeros_like(calls[0][0]),
                                    torch.full_like(calls[0][6], float("-inf")), False)
            fn(*fresh)
            outputs.append(fresh[5])
        error = max(float((o - outputs[-1]).abs().max()) for o in outputs)
        repeats = max(1, int(2e8 / flop / len(calls)))
        ms: dict[str, list[float]] = {v: [] for v in versions}
        for r in range(rounds):
            for v in list(versions)[:: -1 if r % 2 else 1]:
                ms[v].append(_round_ms(versions[v], calls, repeats))
        row = {"seqs": seqs, "prefix": prefix, "gflop": flop / 1e9, "max_abs_diff": error}
        for v in versions:
            row |= {f"{v}_ms": statistics.median(ms[v]), f"{v}_rounds": ms[v]}
            row[f"{v}_gflops"] = flop / row[f"{v}_ms"] / 1e6
        if len(versions) > 1:
            row["speedup"] = statistics.median(
                b / k for b, k in zip(ms["baseline"], ms["kernel"], strict=True)
            )
        rows.append(row)
    threads = torch.get_num_threads()
    print(f"levels kernel, one level per row, {_device_name('cpu')}, {args.shape} heads "
          f"({shape.num_q_heads} q / {shape.num_kv_heads} kv x {shape.head_dim}), {threads} "
          f"thread(s){' (CPU time)' if threads == 1 else ''}, KV "
          f"{f'cold ({args.cold} pools)' if args.cold else 'warm'}, median of {rounds} rounds")  # fmt: skip
    print(f"{'seqs':>5} {'prefix':>7} " + " ".join(f"{v + ' ms':>11} {'GFLOP/s':>8}" for v in versions)
          + (f" {'speedup':>8}" if len(versions) > 1 else ""))  # fmt: skip
    for row in rows:
        line = f"{row['seqs']:>5} {row['prefix']:>7} "
        line += " ".join(f"{row[f'{v}_ms']:>11.3f} {row[f'{v}_gflops']:>8.1f}" for v in versions)
        if len(versions) > 1:
            line += f" {row['speedup']:>7.3f}x"
        print(line)
    report = {
        "device": _device_name("cpu"), "shape_name": args.shape, "shape": asdict(shape),
        "threads": threads, "cold_pools": args.cold, "baseline": args.levels_baseline,
        "rounds": rounds, "table": rows,
        "ms": "median over rounds of a call's time (one thread: its CPU time); speedup: median "
        "of the rounds' baseline/kernel ratios",
    }  # fmt: skip
    out = Path(args.out) if args.out else RESULTS / "attention_levels_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


def _round_ms(call: Callable[..., object], calls: list[tuple[object, ...]], repeats: int) -> float:
    """ms per call of `call` over every argument set in `calls`, `repeats` times (one thread:
    in the thread's own CPU time, as _prefill_ms)."""
    timer = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    start = timer()
    for _ in range(repeats):
        for c in calls:
            call(*c)
    return (timer() - start) / repeats / len(calls) * 1e3


def _print_rows(rows: list[Row]) -> None:
    eager = any(r.per_seq_eager_ms is not None for r in rows)
    head = (
        f"{'seqs':>5} {'prefix':>7} {'per-seq ms':>11} {'cascade ms':>11} {'speedup':>8} "
        f"{'rule':>5}"
    )
    print(head + ("   eager per-seq / cascade ms" if eager else ""))
    for r in rows:
        line = (
            f"{r.seqs:>5} {r.prefix:>7} {r.per_seq_ms:>11.3f} {r.cascade_ms:>11.3f} "
            f"{r.speedup:>7.2f}x {'on' if r.planned else 'off':>5}"
        )
        if r.per_seq_eager_ms is not None and r.cascade_eager_ms is not None:
            line += f"   {r.per_seq_eager_ms:.3f} / {r.cascade_eager_ms:.3f}"
        print(line)


def graph_ms(call: Callable[[], object], repeats: int, calls_per_graph: int = 20) -> float:
    """Median GPU milliseconds of one call, from replays of a CUDA graph of `calls_per_graph`."""
    for _ in range(3):
        call()  # compiles kernels and the step's plan outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls_per_graph):
            call()
    graph.replay()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls_per_graph)
    return statistics.median(times)


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
