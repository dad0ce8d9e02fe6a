"""CPU linear layers: the packed kernel against torch.mm (MKL), side by side in one process.

    python -m benchmarks.linear [--quick] [--q4] [--rows 1,2,4]

The weights are SmolLM2-135M's: per layer the fused q/k/v, o, fused gate/up and down
projections, 30 layers, plus the tied head, as [in, out] float32 matrices (random values: the
time does not depend on them). One pass multiplies every matrix once, in model order, by an
[M, in] input, so the weights stream from memory as in a decode step with M sequences. Prints a
table (time per pass, weight bytes streamed per second, FLOP rate) and saves JSON.

`--q4` adds the 4-bit kernel (q4_linear.c) on the same shapes, the weights quantized as GGUF's
Q4_1 (`quantize_q4_1`), and times the 120 layer matrices and the tied head (576 x 49152, which
the engine keeps float32) apart, packed float32 against Q4 for each, with the bytes each
streams.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from benchmarks.common.timing import median_ms
from server.kernels import cpu
from server.kernels.cpu import q4_linear

RESULTS = Path(__file__).parent / "results"
HIDDEN, INTERMEDIATE, LAYERS, VOCAB = 576, 1536, 30, 49152
LAYER_SHAPES = ((HIDDEN, HIDDEN + 2 * 192), (HIDDEN, HIDDEN), (HIDDEN, 2 * INTERMEDIATE),
                (INTERMEDIATE, HIDDEN))  # fmt: skip
ROWS = (1, 2, 4, 6, 8, 16, 32, 64, 256)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer row counts and repeats")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    parser.add_argument("--q4", action="store_true",
                        help="also the Q4 kernel, layers and head apart (Q4_1 weights)")
    parser.add_argument("--rows", default=None, help="row counts, comma-separated")
    args = parser.parse_args(argv)
    if not cpu.available():
        raise SystemExit("the packed kernel could not be built here (no C compiler?)")
    if args.q4:
        if not q4_linear.available():
            raise SystemExit("the Q4 kernel could not be built here (no C compiler?)")
        q4_table(args)
        return
    rows = (1, 4, 32) if args.quick else ROWS
    repeats = 3 if args.quick else 7
    gen = torch.Generator().manual_seed(0)
    shapes = [*(s for _ in range(LAYERS) for s in LAYER_SHAPES), (HIDDEN, VOCAB)]
    weights = [torch.randn(k, n, generator=gen) for k, n in shapes]
    panels = [cpu.pack(w) for w in weights]
    weight_bytes = sum(w.numel() * 4 for w in weights)
    flop_per_row = sum(2 * w.numel() for w in weights)
    print(f"{len(weights)} matrices, {weight_bytes / 1e6:.0f} MB, threads {torch.get_num_threads()}")
    print(f"{'rows':>5} {'torch.mm ms':>12} {'packed ms':>10} {'speedup':>8} "
          f"{'packed GB/s':>12} {'packed GFLOP/s':>15}")  # fmt: skip
    table = []
    for m in rows:
        inputs = {k: torch.randn(m, k, generator=gen) for k in (HIDDEN, INTERMEDIATE)}

        def run_mm(inputs: dict[int, torch.Tensor] = inputs) -> None:
            for w in weights:
                torch.mm(inputs[w.shape[0]], w)

        def run_packed(inputs: dict[int, torch.Tensor] = inputs) -> None:
            for w, p in zip(weights, panels, strict=True):
                cpu.packed_linear(inputs[w.shape[0]], p, w.shape[1])

        mm, packed = median_ms(run_mm, repeats), median_ms(run_packed, repeats)
        row = {"rows": m, "torch_mm_ms": mm, "packed_ms": packed, "speedup": mm / packed,
               "packed_gb_s": weight_bytes / packed / 1e6,
               "packed_gflop_s": flop_per_row * m / packed / 1e6}  # fmt: skip
        table.append(row)
        print(f"{m:>5} {mm:>12.1f} {packed:>10.1f} {mm / packed:>7.2f}x "
              f"{row['packed_gb_s']:>12.1f} {row['packed_gflop_s']:>15.0f}")  # fmt: skip
    save(args, "linear_cpu", weight_bytes=weight_bytes, table=table)


Q4_ROWS = (1, 2, 4, 8, 16)


def q4_table(args: argparse.Namespace) -> None:
    """Packed float32 against Q4 panels, the 120 layer matrices and the head apart, the four
    passes in turn each round (each `median_ms` of 3 calls); the median round and the best."""
    rows = tuple(int(r) for r in args.rows.split(",")) if args.rows else Q4_ROWS
    repeats = 3 if args.quick else 7
    gen = torch.Generator().manual_seed(0)
    layer_shapes = [s for _ in range(LAYERS) for s in LAYER_SHAPES]
    groups = {"layers": layer_shapes, "head": [(HIDDEN, VOCAB)]}
    packed, quant, nbytes = {}, {}, {}
    for name, shapes in groups.items():
        weights = [torch.randn(k, n, generator=gen) for k, n in shapes]
        packed[name] = [(cpu.pack(w), w.shape[1]) for w in weights]
        quant[name] = [q4_linear.pack_q4(*q4_linear.quantize_q4_1(w.t())) for w in weights]
        nbytes[name] = {"float32": sum(w.numel() * 4 for w in weights),
                        "q4": sum(p.nbytes for p in quant[name])}  # fmt: skip
        del weights
    print(f"threads {torch.get_num_threads()}; MB streamed: "
          + ", ".join(f"{g} float32 {b['float32'] / 1e6:.0f} / q4 {b['q4'] / 1e6:.0f}"
                      for g, b in nbytes.items()))  # fmt: skip
    print(f"{'rows':>5} {'layers f32 ms':>14} {'q4 ms':>8} {'f32/q4':>7} {'q4 GB/s':>8} "
          f"{'head f32 ms':>12} {'q4 ms':>8} {'f32/q4':>7}   (best: layers, head)")  # fmt: skip
    table = []
    for m in rows:
        inputs = {k: torch.randn(m, k, generator=gen) for k in (HIDDEN, INTERMEDIATE)}

        def run_packed(name: str, inputs: dict[int, torch.Tensor] = inputs) -> None:
            for p, n in packed[name]:
                cpu.packed_linear(inputs[p.shape[1]], p, n)

        def run_q4(name: str, inputs: dict[int, torch.Tensor] = inputs) -> None:
            for p in quant[name]:
                q4_linear.q4_linear(inputs[p.in_features], p)

        times: dict[str, list[float]] = {}
        for _ in range(repeats):  # rounds, each pass in turn: the machine's state drifts
            for name in groups:
                times.setdefault(f"{name}_float32_ms", []).append(
                    median_ms(lambda n=name: run_packed(n), 3))
                times.setdefault(f"{name}_q4_ms", []).append(
                    median_ms(lambda n=name: run_q4(n), 3))
        row: dict[str, float] = {"rows": m}
        for key, values in times.items():
            values.sort()
            row[key] = values[(len(values) - 1) // 2]  # median round
            row[key.replace("_ms", "_best_ms")] = values[0]
        row["layers_q4_gb_s"] = nbytes["layers"]["q4"] / row["layers_q4_ms"] / 1e6
        table.append(row)
        print(f"{m:>5} {row['layers_float32_ms']:>14.2f} {row['layers_q4_ms']:>8.2f} "
              f"{row['layers_float32_ms'] / row['layers_q4_ms']:>6.2f}x "
              f"{row['layers_q4_gb_s']:>8.1f} {row['head_float32_ms']:>12.2f} "
              f"{row['head_q4_ms']:>8.2f} {row['head_float32_ms'] / row['head_q4_ms']:>6.2f}x"
              f"   (best {row['layers_float32_best_ms']:.2f} / {row['layers_q4_best_ms']:.2f}, "
              f"{row['head_float32_best_ms']:.2f} / {row['head_q4_best_ms']:.2f})")
    save(args, "linear_q4", bytes=nbytes, table=table)


def save(args: argparse.Namespace, stem: str, **fields: object) -> None:
    """The report as JSON at --out, else benchmarks/results/STEM[_quick].json."""
    out = Path(args.out) if args.out else RESULTS / f"{stem}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, **fields}  # fmt: skip
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
