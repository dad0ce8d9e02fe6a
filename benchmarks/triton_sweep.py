"""Tune the Triton backend's tiles and KV split on a GPU: coordinate descent over TritonConfig.

    python -m benchmarks.triton_sweep --shape smollm2 --dtype bfloat16 --size 64x4096
    python -m benchmarks.triton_sweep --shape llama3-8b --budget-s 60 --out sweep.json

One forked decode step of `benchmarks.attention` (seqs forks of one prefix, 40 own tokens each)
is timed per-sequence and with its cascade level, each from a CUDA graph, under one config after
another: starting from the defaults, each axis in turn takes the value that gives the fastest
cascade step, for `--passes` passes or until the budget is spent. Every config's outputs are
checked against the float64 reference (a config that is fast but wrong is reported, never
chosen). The speedup is reported twice: each config's own, and the best cascade time against
the best per-sequence time seen under any config, so that no config wins by slowing the
baseline down. Prints each config as it goes and a summary; saves JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from benchmarks.attention import FORCED, RESULTS, SHAPES, ForkedDecode, forked_decode, graph_ms
from server.kernels.metadata import AttentionMetadata
from server.kernels.reference import reference_attention
from server.kernels.triton_config import TritonConfig

AXES: dict[str, tuple[int | bool | None, ...]] = {
    "fused": (False, True),
    "narrow_rows": (16, 32, 64),
    "wide_rows": (32, 64, 128, 256),
    "block_n": (32, 64, 128),
    "num_warps": (2, 4, 8),
    "num_stages": (None, 1, 2, 3, 4),
    "min_chunk": (128, 256, 512, 1024),
    "programs_per_sm": (2, 4, 8, 16),
}
# float32 tiles run every task at narrow_rows on CUDA cores; wide 64-row float32 tiles spill
FLOAT32_AXES = {**AXES, "narrow_rows": (16, 32), "wide_rows": (64,)}
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


@dataclasses.dataclass
class Trial:
    config: dict[str, int | bool | None]
    per_seq_ms: float | None = None
    cascade_ms: float | None = None
    per_seq_error: float | None = None
    cascade_error: float | None = None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def sweep(
    case: ForkedDecode,
    dtype: torch.dtype,
    passes: int,
    budget_s: float,
    repeats: int = 10,
) -> list[Trial]:
    """Coordinate descent from the default TritonConfig on `case`; every config tried, in order."""
    metas = (case.metadata(cascade=False), case.metadata(cascade=True, config=FORCED))
    references = [
        reference_attention(case.q, case.k, case.v, case.k_cache, case.v_cache, m, case.scale)
        for m in metas
    ]

    def measure(config: dict[str, int | bool | None]) -> Trial:
        trial = _run(case, metas, references, config, dtype, repeats)
        _print_trial(trial)
        return trial

    axes = FLOAT32_AXES if dtype == torch.float32 else AXES
    return descend(measure, axes, passes, budget_s)


def descend(
    measure: Callable[[dict[str, int | bool | None]], Trial],
    axes: Mapping[str, Sequence[int | bool | None]],
    passes: int,
    budget_s: float,
) -> list[Trial]:
    """From the default config, each axis in turn takes the value whose trial has the fastest
    correct cascade (2% better than the current one, so noise does not wander); repeated for
    `passes` passes, or fewer if a pass changes nothing, or until `budget_s` is spent. Each
    config is measured once; returns every trial, the default's first."""
    tried: dict[tuple[tuple[str, int | bool | None], ...], Trial] = {}
    best = dataclasses.asdict(TritonConfig())
    deadline = time.monotonic() + budget_s

    def trial(config: dict[str, int | bool | None]) -> Trial:
        key = tuple(sorted(config.items()))
        if key not in tried:
            tried[key] = measure(config)
        return tried[key]

    current = trial(best)
    for _ in range(passes):
        improved = False
        for axis, values in axes.items():
            for value in values:
                if time.monotonic() > deadline:
                    print(f"budget of {budget_s:.0f}s spent")
                    return list(tried.values())
                candidate = {**best, axis: value}
                if not _valid(candidate):
                    continue
                t = trial(candidate)
                if _faster(t, current):
                    best, current, improved = candidate, t, True
        if not improved:
            break
    return list(tried.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--shape", default="smollm2", choices=sorted(SHAPES))
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--size", default="64x4096", help="SEQSxPREFIX")
    parser.add_argument("--suffix", type=int, default=40, help="own tokens per sequence")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=90.0, help="stop trying new configs")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("the Triton sweep needs a CUDA GPU")
    dtype = getattr(torch, args.dtype)
    seqs, prefix = (int(x) for x in args.size.split("x"))
    case = forked_decode(seqs, prefix, args.suffix, SHAPES[args.shape], dtype, "cuda")
    print(
        f"Triton sweep, {torch.cuda.get_device_name()}, {args.shape} heads, {args.dtype}, "
        f"{seqs} x {prefix} (+{args.suffix} own tokens)"
    )
    trials = sweep(case, dtype, args.passes, args.budget_s)
    summary = summarize(trials)
    for line in summary["lines"]:
        print(line)
    out = Path(args.out) if args.out else (
        RESULTS / f"triton_sweep_{args.shape}_{args.dtype}_{args.size}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "device": torch.cuda.get_device_name(),
        "shape": args.shape,
        "dtype": args.dtype,
        "size": args.size,
        "suffix": args.suffix,
        "torch": torch.__version__,
        "summary": {k: v for k, v in summary.items() if k != "lines"},
        "trials": [dataclasses.asdict(t) for t in trials],
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


def _run(
    case: ForkedDecode,
    metas: tuple[AttentionMetadata, AttentionMetadata],
    references: list[torch.Tensor],
    config: dict[str, int | bool | None],
    dtype: torch.dtype,
    repeats: int,
) -> Trial:
    from server.kernels.triton_backend import TritonBackend  # needs Triton

    result = Trial(config)
    try:
        kernel = TritonBackend(TritonConfig(**config))
        times, errors = [], []
        for meta, expected in zip(metas, references, strict=True):
            meta.compiled.clear()  # each config plans its own work list

            def call(meta: AttentionMetadata = meta) -> torch.Tensor:
                return kernel(case.q, case.k, case.v, case.k_cache, case.v_cache, meta, case.scale)

            out = call().to(torch.float64)
            errors.append(float((out - expected).abs().max() / expected.abs().max()))
            times.append(graph_ms(call, repeats))
        result.per_seq_ms, result.cascade_ms = times
        result.per_seq_error, result.cascade_error = errors
        if not max(errors) < TOLERANCE[dtype]:  # NaN fails too
            result.failure = f"error {max(errors):.2e} over {TOLERANCE[dtype]:.0e}"
    except Exception as exc:  # noqa: BLE001 - a config that does not compile is a result
        result.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return result


def _faster(t: Trial, current: Trial) -> bool:
    if not t.ok or t.cascade_ms is None:
        return False
    if not current.ok or current.cascade_ms is None:
        return True  # anything correct beats a default that failed
    return t.cascade_ms < current.cascade_ms * 0.98


def _valid(config: dict[str, int | bool | None]) -> bool:
    try:
        TritonConfig(**config)
    except ValueError:
        return False
    return True


def _print_trial(t: Trial) -> None:
    cfg = " ".join(f"{k}={v}" for k, v in t.config.items())
    if t.per_seq_ms is None or t.cascade_ms is None:
        print(f"  FAILED {t.failure}  [{cfg}]")
        return
    flag = "" if t.ok else f"  WRONG: {t.failure}"
    print(
        f"  per-seq {t.per_seq_ms * 1e3:7.1f} us  cascade {t.cascade_ms * 1e3:6.1f} us  "
        f"{t.per_seq_ms / t.cascade_ms:5.2f}x  [{cfg}]{flag}"
    )


def summarize(trials: list[Trial]) -> dict[str, object]:
    """The default (the first trial), the fastest correct cascade and per-sequence trials, and
    the honest ratio: the fastest per-sequence time of any config over the fastest cascade."""
    good = [t for t in trials if t.ok and t.per_seq_ms and t.cascade_ms]
    default = trials[0]
    if not good:
        return {"lines": ["no config ran correctly"], "best": None}
    fastest_cascade = min(good, key=lambda t: t.cascade_ms or 0.0)
    fastest_per_seq = min(good, key=lambda t: t.per_seq_ms or 0.0)
    honest = (fastest_per_seq.per_seq_ms or 0.0) / (fastest_cascade.cascade_ms or 1.0)
    lines = [
        f"configs tried: {len(trials)} ({len(trials) - len(good)} failed or wrong)",
        f"default:          per-seq {default.per_seq_ms} ms, cascade {default.cascade_ms} ms",
        f"fastest cascade:  {fastest_cascade.cascade_ms} ms [{fastest_cascade.config}]"
        f" (its per-seq {fastest_cascade.per_seq_ms} ms)",
        f"fastest per-seq:  {fastest_per_seq.per_seq_ms} ms [{fastest_per_seq.config}]",
        f"best per-seq / best cascade: {honest:.2f}x",
    ]
    return {
        "lines": lines,
        "default": dataclasses.asdict(default),
        "fastest_cascade": dataclasses.asdict(fastest_cascade),
        "fastest_per_seq": dataclasses.asdict(fastest_per_seq),
        "best_per_seq_over_best_cascade": honest,
    }


if __name__ == "__main__":
    main()
