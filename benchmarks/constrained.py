"""What constrained decoding costs a decode step: JSON mode, a JSON schema, fixed choices, a
regular expression and a grammar (JSON's, in GBNF) against plain sampling, greedy and sampled,
on the same prompts in one run.

    python -m benchmarks.constrained [--quick] [--model NAME] [--batch 1 8]

Each case: `batch` copies of one chat prompt (asking for a cat as JSON) generate up to 48 tokens
in one continuous batch; the median wall time of the steps after the first two (the prefill) is
the decode step. Plain runs to 48 tokens (`ignore_eos`); the constrained ones end when their
text is complete, so the number of steps differs and only the per-step time compares. Prints a
table with ratios to plain and saves JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from server.engine import JobOutput, LLMEngine, SamplingParams

RESULTS = Path(__file__).parent / "results"
PROMPT = "Describe a grumpy cat called Felix, aged 7, as JSON with name, age and mood."
CAT = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "mood": {"enum": ["happy", "grumpy", "sleepy"]},
    },
    "required": ["name", "age", "mood"],
}
CAT_REGEX = (
    r'\{"name": "[A-Za-z ]{1,20}", "age": [0-9]{1,2}, "mood": "(happy|grumpy|sleepy)"\}'
)
JSON_GRAMMAR = r"""
root   ::= object
value  ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws (string ":" ws value ("," ws string ":" ws value)*)? "}"
array  ::= "[" ws (value ("," ws value)*)? "]"
string ::= "\"" ([^"\\\x00-\x1f] | "\\" ["\\/bfnrt])* "\"" ws
number ::= "-"? [0-9]+ ("." [0-9]+)? ws
ws     ::= [ \t\n]{0,8}
"""
MODES: dict[str, dict[str, Any]] = {
    "plain": {"ignore_eos": True},
    "json_object": {"json_object": True},
    "json_schema": {"json_object": True, "json_schema": CAT},
    "choices": {"choices": ["positive", "negative", "neutral and calm"]},
    "regex": {"regex": CAT_REGEX},
    "grammar": {"grammar": JSON_GRAMMAR},
}


def decode_step_ms(engine: LLMEngine, ids: list[int], batch: int, sampling: SamplingParams) -> dict:
    """Median decode step (ms) and the tokens each request generated."""
    jobs = [engine.add_request(ids, sampling) for _ in range(batch)]
    finals: dict[int, JobOutput] = {}
    steps: list[float] = []
    while len(finals) < batch:
        start = time.perf_counter()
        outputs = engine.step()
        steps.append(time.perf_counter() - start)
        finals.update((o.job_id, o) for o in outputs if o.finished)
    decode = steps[2:] or steps
    return {
        "decode_step_ms": statistics.median(decode) * 1e3,
        "steps": len(steps),
        "tokens": [len(finals[j].token_ids) for j in jobs],
        "text": finals[jobs[0]].text,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds, median kept")
    parser.add_argument("--quick", action="store_true", help="one round, batch 1")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.rounds = [1], 1
    engine = LLMEngine.from_pretrained(args.model)
    chat = engine.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], True)
    ids = engine.tokenizer.encode(chat)
    rows = []
    for batch in args.batch:
        for temperature in (0.0, 1.0):
            times: dict[str, list[float]] = {m: [] for m in MODES}
            last: dict[str, dict] = {}
            for _ in range(args.rounds):  # modes alternate inside each round
                for mode, extra in MODES.items():
                    sampling = SamplingParams(max_tokens=48, temperature=temperature, seed=1,
                                              **extra)  # fmt: skip
                    last[mode] = decode_step_ms(engine, ids, batch, sampling)
                    times[mode].append(last[mode]["decode_step_ms"])
            plain = statistics.median(times["plain"])
            for mode in MODES:
                ms = statistics.median(times[mode])
                rows.append({"batch": batch, "temperature": temperature, "mode": mode,
                             "decode_step_ms": ms, "vs_plain": ms / plain,
                             "steps": last[mode]["steps"], "tokens": last[mode]["tokens"],
                             "text": last[mode]["text"]})  # fmt: skip
    print(f"constrained decoding, {args.model}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds")  # fmt: skip
    print(f"{'batch':>5} {'temp':>5} {'mode':<12} {'step ms':>8} {'x plain':>8} {'steps':>6}")
    for r in rows:
        print(f"{r['batch']:>5} {r['temperature']:>5.1f} {r['mode']:<12} "
              f"{r['decode_step_ms']:>8.2f} {r['vs_plain']:>7.2f}x {r['steps']:>6}")  # fmt: skip
    # a smoke run does not replace the full run's numbers that the README quotes
    name = f"constrained_cpu{'_quick' if args.quick else ''}.json"
    out = Path(args.out) if args.out else RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "rounds": args.rounds, "rows": rows}  # fmt: skip
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
