"""CPU linear layers: the packed kernel against torch.mm (MKL), side by side in one process.

    python -m benchmarks.linear [--quick]

The weights are SmolLM2-135M's: per layer the fused q/k/v, o, fused gate/up and down
projections, 30 layers, plus the tied head, as [in, out] float32 matrices (random values: the
time does not depend on them). One pass multiplies every matrix once, in model order, by an
[M, in] input, so the weights stream from memory as in a decode step with M sequences. Prints a
table (time per pass, weight bytes streamed per second, FLOP rate) and saves JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from benchmarks.common.timing import median_ms
from server.kernels import cpu

RESULTS = Path(__file__).parent / "results"
HIDDEN, INTERMEDIATE, LAYERS, VOCAB = 576, 1536, 30, 49152
LAYER_SHAPES = ((HIDDEN, HIDDEN + 2 * 192), (HIDDEN, HIDDEN), (HIDDEN, 2 * INTERMEDIATE),
                (INTERMEDIATE, HIDDEN))  # fmt: skip
ROWS = (1, 2, 4, 6, 8, 16, 32, 64, 256)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer row counts and repeats")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args(argv)
    if not cpu.available():
        raise SystemExit("the packed kernel could not be built here (no C compiler?)")
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
    out = Path(args.out) if args.out else RESULTS / f"linear_cpu{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "weight_bytes": weight_bytes, "table": table}  # fmt: skip
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
