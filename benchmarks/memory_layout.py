"""Where the CPU engine's big buffers live, side by side: packed weights and KV pools.

    python -m benchmarks.memory_layout [--rounds N] [--quick] [--model NAME] [--out PATH]

Weights (SmolLM2, float32): the batch-1 decode step with the packed panels and the tied head
(a) in one allocation each, as torch gives them; (b) in one buffer in model order on 4 KiB
pages; (c) in one buffer on huge pages, what the engine does (`server/kernels/cpu/huge_pages.py`).
KV: the paged decode kernel over 30 layer-sized pools with the blocks scattered at random, the
pools from `torch.zeros` or from `huge_pages.zeros`, for one row and for many.

The variants alternate within every round (this machine's bandwidth doubles and halves with its
neighbours); the table gives the medians over rounds and the ratios to (a), with `sum`'s read
bandwidth per round to tell the memory's state. Prints a table and saves JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.engine import batch1_step_time
from server.engine import LLMEngine
from server.engine.models.linear import Linear
from server.kernels.cpu import huge_pages, paged_decode

RESULTS = Path(__file__).parent / "results"
KV_CASES = ((1, 300), (1, 2048), (32, 700))  # (rows, tokens per row)
QUICK_KV_CASES = ((1, 64), (4, 100))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--quick", action="store_true", help="small KV pools (a smoke run)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    weights = weight_layouts(args.model, args.rounds)
    kv = kv_pools(args.rounds, args.quick)
    report = {"machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "rounds": args.rounds,
              "batch1_step_ms": weights, "decode_attention_us": kv}  # fmt: skip
    # a smoke run does not replace the full run's numbers that the README quotes
    name = f"memory_layout_cpu{'_quick' if args.quick else ''}.json"
    out = Path(args.out) if args.out else RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


def weight_layouts(model: str, rounds: int) -> dict[str, list[float]]:
    """Batch-1 step times (ms) per round for each layout of the packed weights."""
    engine = LLMEngine.from_pretrained(model, packed_linear=True)  # the kernels it measures
    net = engine.runner.model
    linears = [m for m in net.modules() if isinstance(m, Linear) and m.packed]
    if not linears or net.decoder_stack is None:
        raise SystemExit("the packed CPU kernels are not available here")
    tied = net.tied_head is not None
    engine_layout = [m.panels.data for m in linears] + ([net.tied_head] if tied else [])
    layouts = {
        "one allocation each": [t.clone() for t in engine_layout],
        "one buffer, 4 KiB pages": _one_buffer(engine_layout, huge=False),
        "one buffer, huge pages (engine)": engine_layout,
    }

    def use(tensors: list[torch.Tensor]) -> None:
        for module, tensor in zip(linears, tensors, strict=False):
            module.panels.data = tensor
        if tied:
            net.tied_head = tensors[-1]
        net.decoder_stack = net._build_decoder_stack()

    times: dict[str, list[float]] = {name: [] for name in layouts}
    bandwidth = []
    probe = torch.randn(sum(t.numel() for t in engine_layout) // 4096 + 1, 4096)
    prompt = [(1000 + i) % engine.model_config.vocab_size for i in range(256)]
    for _ in range(rounds):
        for name, tensors in layouts.items():
            use(tensors)
            times[name].append(batch1_step_time(engine, prompt, steps=30) * 1e3)
        bandwidth.append(_sum_bandwidth(probe))
    use(engine_layout)
    _print_table("batch-1 decode step (SmolLM2, context 256-280)", "ms", times, bandwidth)
    return {**times, "sum_gbs": bandwidth}


def kv_pools(rounds: int, quick: bool = False) -> dict[str, list[float]]:
    """Decode attention per layer (us) per round, KV pools from torch.zeros or huge pages
    (SmolLM2's heads; 30 pools of 2000 blocks, or 4 of 400 when `quick`)."""
    blocks_total, layers = (400, 4) if quick else (2000, 30)
    block, kv_heads, heads, dim = 16, 3, 9, 64
    shape = (blocks_total, block, kv_heads, dim)
    pools = {
        "torch.zeros": [(torch.zeros(shape), torch.zeros(shape)) for _ in range(layers)],
        "huge pages (engine)": [(huge_pages.zeros(shape), huge_pages.zeros(shape))
                                for _ in range(layers)],
    }  # fmt: skip
    for caches in pools.values():
        for k, v in caches:
            k.normal_()
            v.normal_()
    gen = torch.Generator().manual_seed(1)
    result: dict[str, list[float]] = {}
    bandwidth = []
    probe = torch.randn((8 if quick else 128) << 20 >> 2)
    for rows, tokens in QUICK_KV_CASES if quick else KV_CASES:
        per_row = math.ceil(tokens / block)
        ids = torch.randperm(blocks_total, generator=gen)[: rows * per_row].to(torch.int64)
        offsets = torch.arange(0, rows * per_row + 1, per_row, dtype=torch.int64)
        lengths = torch.full((rows,), tokens, dtype=torch.int64)
        q = torch.randn(rows, heads, dim, generator=gen)
        times: dict[str, list[float]] = {name: [] for name in pools}
        for caches in pools.values():  # warm-up: the kernel built, its buffers allocated
            paged_decode.paged_decode(q, *caches[0], ids, offsets, lengths, dim**-0.5)
        for _ in range(rounds):
            for name, caches in pools.items():
                probe.add_(1.0)  # out of the caches, as a step's other layers leave them
                start = time.perf_counter()
                for k, v in caches:
                    paged_decode.paged_decode(q, k, v, ids, offsets, lengths, dim**-0.5,
                                              check=False)  # fmt: skip
                times[name].append((time.perf_counter() - start) / layers * 1e6)
            bandwidth.append(_sum_bandwidth(probe))
        label = f"decode attention per layer, {rows} row(s) x {tokens} tokens"
        _print_table(label, "us", times, bandwidth[-rounds:])
        for name, values in times.items():
            result[f"{rows}x{tokens} {name}"] = values
    result["sum_gbs"] = bandwidth
    return result


def _one_buffer(tensors: list[torch.Tensor], huge: bool) -> list[torch.Tensor]:
    """Copies of `tensors` back to back in one buffer (huge pages or plain 4 KiB pages)."""
    total = sum(t.numel() for t in tensors)
    if huge:
        buffer = huge_pages.zeros(total)
    else:
        memory = mmap.mmap(-1, total * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buffer = torch.frombuffer(memory, dtype=torch.float32)
    parts = buffer.split([t.numel() for t in tensors])
    out = [part.view(t.shape) for part, t in zip(parts, tensors, strict=True)]
    for view, t in zip(out, tensors, strict=True):
        view.copy_(t)
    return out


def _sum_bandwidth(buffer: torch.Tensor) -> float:
    start = time.perf_counter()
    buffer.sum()
    return buffer.numel() * buffer.element_size() / (time.perf_counter() - start) / 1e9


def _print_table(
    title: str, unit: str, times: dict[str, list[float]], bandwidth: list[float]
) -> None:
    base = statistics.median(next(iter(times.values())))
    print(f"\n{title}; `sum` read {min(bandwidth):.0f}-{max(bandwidth):.0f} GB/s over the rounds")
    print(f"{'layout':<34}{'median ' + unit:>12}{'range':>18}{'x faster':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"{name:<34}{median:>12.2f}{spread:>18}{base / median:>10.3f}")


if __name__ == "__main__":
    main()
