"""What rows cost a whole engine step: one decoding sequence, plus others decoding or prefilling.

    python -m benchmarks.step_cost [--quick] [--model NAME]

On a CPU a decode step of one sequence already streams all the weights; this measures how much
each extra row adds, which bounds what batching (task groups, baselines' large batches) and
riding along a latency-critical step can win. Each case: a 300-token sequence decodes (plus
`decode` more 300-token sequences decoding, plus a fresh `prefill`-token chunk each step); the
median step time over 20 steps (the first 3 left out as warm-up), with the ratio to the
one-row step and `sum`'s read bandwidth measured in the same run (the machine's bandwidth
varies). Prints a table and saves JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.engine import weight_floor
from server.engine import LLMEngine, SamplingParams

RESULTS = Path(__file__).parent / "results"
CONTEXT = 300
CASES = ((0, 0), (1, 0), (3, 0), (7, 0), (15, 0), (0, 8), (0, 32), (0, 128), (7, 8))
QUICK_CASES = ((0, 0), (3, 0), (7, 0), (0, 8))


def step_ms(engine: LLMEngine, decode: int, prefill: int, steps: int, gen: torch.Generator) -> float:
    """Median step time with 1 + `decode` sequences decoding and a `prefill`-token chunk."""

    vocab = engine.model_config.vocab_size

    def tokens(n: int) -> list[int]:  # ordinary ids: clear of the special ones at the start
        return torch.randint(min(100, vocab // 2), min(20000, vocab), (n,), generator=gen).tolist()

    ctxs = []
    for _ in range(1 + decode):
        ctx = engine.create_context()
        engine.fill(ctx, tokens(CONTEXT))
        ctxs.append(ctx)
    engine.run_until_idle()
    for ctx in ctxs:
        engine.add_generate(ctx, SamplingParams(max_tokens=steps + 5, temperature=0, ignore_eos=True))
    times = []
    for _ in range(steps):
        fills = []
        if prefill:
            fills.append(engine.create_context())
            engine.fill(fills[-1], tokens(prefill))
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
        for ctx in fills:
            engine.free(ctx)
    for ctx in ctxs:
        engine.free(ctx)
    engine.run_until_idle()
    return statistics.median(times[3:]) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="four cases")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args(argv)
    engine = LLMEngine.from_pretrained(args.model)
    gen = torch.Generator().manual_seed(0)
    _, bandwidth, _ = weight_floor(engine)
    cases = QUICK_CASES if args.quick else CASES
    print(f"{args.model}, {CONTEXT}-token sequences, threads {torch.get_num_threads()}, "
          f"sum reads {bandwidth / 1e9:.1f} GB/s")  # fmt: skip
    print(f"{'decode rows':>12} {'prefill tokens':>15} {'step ms':>9} {'x one row':>10}")
    table = []
    one_row = None
    for decode, prefill in cases:
        ms = step_ms(engine, decode, prefill, 20, gen)
        one_row = one_row or ms
        table.append({"decode_rows": 1 + decode, "prefill_tokens": prefill, "step_ms": ms,
                      "vs_one_row": ms / one_row})  # fmt: skip
        print(f"{1 + decode:>12} {prefill:>15} {ms:>9.2f} {ms / one_row:>9.2f}x")
    _, bandwidth_after, _ = weight_floor(engine)
    print(f"sum reads {bandwidth_after / 1e9:.1f} GB/s after the cases")
    name = f"step_cost_cpu{'_quick' if args.quick else ''}.json"
    out = Path(args.out) if args.out else RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.processor() or platform.machine(), "model": args.model,
              "threads": torch.get_num_threads(), "context": CONTEXT,
              "sum_gb_s": [bandwidth / 1e9, bandwidth_after / 1e9], "table": table}  # fmt: skip
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
