"""Where a decode step goes: the decoder stack's phases against the weight-streaming floor.

    python -m benchmarks.step_phases [--rows N] [--context T] [--rounds R] [--steps S]
                                     [--model NAME] [--out PATH]

`rows` sequences of `context` tokens decode together (1: the batch-1 step of
`benchmarks.engine`). The model's stack is rebuilt `timed` (server/kernels/cpu/decoder_stack.c
with a wall clock around each phase), so each round gives per step: the linear products by
matrix, attention, the element-wise parts (norms, RoPE and the cache write, SiLU, residual adds),
the final norm with the LM head, and the rest of the step outside the stack's call (scheduling,
metadata, sampling, detokenising). Each round runs its steps between two reads of the floor and
takes the better read, as `benchmarks.engine` does: this machine's bandwidth doubles and halves
with its neighbours, so the table shows each round's bandwidth. Prints a table, saves JSON.

The KV pools lie on huge pages that the kernel zeroes on first write, so a round whose contexts
grow into fresh pages shows that in the element-wise column (the cache write): once per page
for the life of a server, but often here, where every run starts a fresh engine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.engine import read_buffers, weight_floor
from server.engine import LLMEngine, SamplingParams
from server.kernels.cpu.decoder_stack import PHASES, DecoderStack, LayerTensors

RESULTS = Path(__file__).parent / "results"
LINEARS = ("qkv", "o", "gate_up", "down")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1, help="sequences decoding together")
    parser.add_argument("--context", type=int, default=300, help="tokens per sequence")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="steps per round")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args(argv)
    engine = LLMEngine.from_pretrained(args.model, packed_linear=True)  # the stack it times
    net = engine.runner.model
    stack = net.decoder_stack
    if stack is None:
        raise SystemExit("the decoder stack is not available here (no C compiler?)")
    net.decoder_stack = timed = DecoderStack(
        stack.shape, stack.layers, stack.head, timed=True,
        quantized_max_rows=stack.quantized_max_rows,
        head_quantized_max_rows=stack.head_quantized_max_rows,
    )  # fmt: skip
    start_decoding(engine, args.rows, args.context, args.rounds * args.steps + 8)
    buffers = read_buffers(engine, args.rows)
    rounds = [one_round(engine, timed, buffers, args.steps, args.rows)
              for _ in range(args.rounds)]  # fmt: skip
    print_table(args, rounds)
    out = Path(args.out) if args.out else RESULTS / f"step_phases_cpu_{args.rows}x{args.context}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.processor() or platform.machine(), "model": args.model,
              "threads": torch.get_num_threads(), "rows": args.rows, "context": args.context,
              "steps_per_round": args.steps, "rounds": rounds}  # fmt: skip
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


def start_decoding(engine: LLMEngine, rows: int, context: int, tokens: int) -> None:
    """`rows` contexts of `context` ordinary tokens, prefilled, then decoding greedily."""
    vocab = engine.model_config.vocab_size
    low, high = min(100, vocab // 2), min(20000, vocab)
    gen = torch.Generator().manual_seed(0)
    contexts = []
    for _ in range(rows):
        ctx = engine.create_context()
        engine.fill(ctx, torch.randint(low, high, (context,), generator=gen).tolist())
        contexts.append(ctx)
    engine.run_until_idle()
    for ctx in contexts:
        engine.add_generate(ctx, SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True))
    for _ in range(3):  # first steps fault in fresh cache pages
        engine.step()


def one_round(
    engine: LLMEngine, stack: DecoderStack, buffers: list[torch.Tensor], steps: int, rows: int
) -> dict[str, float]:
    """Per-step milliseconds of each phase, of the whole step and of the rest outside the
    stack, with the floor read around the steps."""
    before, _, weight_bytes = weight_floor(engine, reps=3, buffers=buffers, rows=rows)
    stack.phase_seconds()  # zero the counters
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    step = (time.perf_counter() - start) / steps
    phases = {name: seconds / steps for name, seconds in stack.phase_seconds().items()}
    after, _, _ = weight_floor(engine, reps=3, buffers=buffers, rows=rows)
    floor = min(before, after)
    row = {f"{name}_ms": seconds * 1e3 for name, seconds in phases.items()}
    linear_bytes = sum(_linear_bytes(layer, n, rows <= stack.quantized_max_rows)
                       for layer in stack.layers for n in LINEARS)  # fmt: skip
    head_bytes = 0
    if stack.head is not None:
        q8 = stack.head.q8 if rows <= stack.head_quantized_max_rows else None
        head_bytes = q8.nbytes if q8 is not None else stack.head.panels.numel() * 4
    linears = sum(phases[n] for n in LINEARS)
    row.update(
        step_ms=step * 1e3, floor_ms=floor * 1e3, bandwidth_gbs=weight_bytes / floor / 1e9,
        step_over_floor=step / floor, outside_ms=(step - sum(phases.values())) * 1e3,
        linears_ms=linears * 1e3, linears_gbs=linear_bytes / linears / 1e9 if linears else 0.0,
        head_gbs=head_bytes / phases["head"] / 1e9 if phases["head"] else 0.0,
    )
    return row


def _linear_bytes(layer: LayerTensors, name: str, quantized: bool) -> int:
    """Bytes the stack reads for one projection: 4- or 8-bit where it has them and uses them
    (both for a split projection)."""
    parts = [getattr(layer, f"{name}_{kind}") for kind in ("q4", "q8")]
    if quantized and any(p is not None for p in parts):
        return sum(p.nbytes for p in parts if p is not None)
    return getattr(layer, name).numel() * 4


def print_table(args: argparse.Namespace, rounds: list[dict[str, float]]) -> None:
    print(f"{args.model}: {args.rows} x {args.context}-token sequences decoding, "
          f"{args.steps} steps a round, threads {torch.get_num_threads()}; ms per step")  # fmt: skip
    columns = ["bandwidth_gbs", "floor_ms", "step_ms", "step_over_floor", "linears_ms",
               "linears_gbs", *(f"{p}_ms" for p in PHASES if p not in LINEARS), "head_gbs",
               "outside_ms"]  # fmt: skip
    names = [c.removesuffix("_ms") for c in columns]
    print(f"{'round':>6} " + " ".join(f"{n:>14}" for n in names))
    for i, row in enumerate(rounds, 1):
        print(f"{i:>6} " + " ".join(f"{row[c]:>14.2f}" for c in columns))
    medians = [statistics.median(r[c] for r in rounds) for c in columns]
    print(f"{'median':>6} " + " ".join(f"{m:>14.2f}" for m in medians))


if __name__ == "__main__":
    main()
