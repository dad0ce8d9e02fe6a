"""What n-gram drafts (speculative decoding) save a request, side by side in one run: two
engines on the same weights, one drafting (`ngram_speculation`), one not, taking turns
(each case runs on the plain engine, then on the drafting one).

    python -m benchmarks.speculation [--quick] [--model NAME] [--drafts 4] [--rounds 2]

Each case: one request alone (batch 1), ~850-token arXiv chunk with an instruction (a summary,
the key terms, a rewrite), 128 tokens. Round 1's greedy run computes each prompt; the runs after
it find the prompt in each engine's prefix cache, so they time decoding alone. Each case runs greedy and
sampled (temperature 0.7, top_p 0.95, a seed: a draft stays when the step draws it, so the
seeded draws, and the outputs, are those of the engine without drafts). Prints wall times, the
ratio, the drafts made and confirmed, and whether the outputs are equal (they must be); saves JSON.

Then the constrained cases of `benchmarks.constrained` (a cat as JSON: JSON mode, a schema, fixed
choices, a regex, a JSON grammar) and a person as JSON under a schema of 7 string fields, greedy
and sampled, where the drafts are the text the
constraint forces next (the rest of a key, a regex's literal parts) or, where none is forced,
n-gram drafts; with the engines' steps counted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import torch

from benchmarks.common.data import chunks, paper
from benchmarks.constrained import MODES, PROMPT
from server.engine import LLMEngine, SamplingParams

RESULTS = Path(__file__).parent / "results"
PERSON_FIELDS = ("first_name", "last_name", "city", "country", "occupation", "favourite_food",
                 "favourite_colour")  # fmt: skip
PERSON = {
    "type": "object",
    "properties": {name: {"type": "string"} for name in PERSON_FIELDS},
    "required": list(PERSON_FIELDS),
}
PERSON_PROMPT = f"Invent a person and describe them as JSON with {', '.join(PERSON_FIELDS)}."
ASKS = (
    "Summarize this text in a few sentences.",
    "List the key terms this text defines, with their definitions as written.",
    "Rewrite the first paragraph of this text with the same wording, fixing nothing.",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--drafts", type=int, default=4, help="ngram_speculation of the drafting engine")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="one case (a 1000-character chunk), one round, 32 tokens")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args(argv)
    asks = ASKS[:1] if args.quick else ASKS
    if args.quick:
        args.rounds, args.tokens = 1, 32
    plain = LLMEngine.from_pretrained(args.model)
    drafting = LLMEngine.from_pretrained(args.model, ngram_speculation=args.drafts)
    tok = plain.tokenizer
    prompts = [
        tok.encode(tok.apply_chat_template([{"role": "user", "content": chunk + "\n\n" + ask}],
                                           True))
        for chunk, ask in zip(chunks(paper(3), 1000 if args.quick else 3000, len(asks)), asks,
                              strict=True)
    ]  # fmt: skip
    samplings = {
        "greedy": SamplingParams(max_tokens=args.tokens, temperature=0),
        "T=0.7": SamplingParams(max_tokens=args.tokens, temperature=0.7, top_p=0.95, seed=7),
    }
    for engine in (plain, drafting):  # warm-up on a prompt no case starts with
        engine.generate([tok.encode("Warm up.")], SamplingParams(max_tokens=4, temperature=0))
    rows = []
    for round_ in range(1, args.rounds + 1):
        for (case, prompt), (mode, sampling) in itertools.product(enumerate(prompts),
                                                                  samplings.items()):  # fmt: skip
            times, outs = {}, {}
            before = (drafting.stats.drafted_tokens, drafting.stats.accepted_tokens)
            for name, engine in (("plain", plain), ("drafting", drafting)):
                start = time.perf_counter()
                outs[name] = engine.generate([prompt], sampling)[0]
                times[name] = time.perf_counter() - start
            rows.append({
                "round": round_, "case": case, "sampling": mode, "prompt_tokens": len(prompt),
                "generated": len(outs["plain"].token_ids), "plain_s": times["plain"],
                "drafting_s": times["drafting"], "speedup": times["plain"] / times["drafting"],
                "drafted": drafting.stats.drafted_tokens - before[0],
                "accepted": drafting.stats.accepted_tokens - before[1],
                "equal": outs["plain"].token_ids == outs["drafting"].token_ids,
            })  # fmt: skip
    constrained = constrained_rows(plain, drafting, args.rounds, 1 if args.quick else None)
    print(f"n-gram drafts, {args.model}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, batch 1, {args.tokens} tokens")  # fmt: skip
    print(f"{'round':>5} {'case':>4} {'sampling':>8} {'prompt':>6} {'plain s':>8} {'drafts s':>8} "
          f"{'x':>6} {'drafted':>7} {'kept':>5} equal")  # fmt: skip
    for r in rows:
        print(f"{r['round']:>5} {r['case']:>4} {r['sampling']:>8} {r['prompt_tokens']:>6} "
              f"{r['plain_s']:>8.2f} "
              f"{r['drafting_s']:>8.2f} {r['speedup']:>5.2f}x {r['drafted']:>7} "
              f"{r['accepted']:>5} {r['equal']}")  # fmt: skip
    print("\nconstrained (a cat as JSON, up to 48 tokens; a person, 7 fields, up to 160), batch 1")
    print(f"{'round':>5} {'mode':<13} {'sampling':>8} {'plain s':>8} {'drafts s':>8} {'x':>6} "
          f"{'steps':>9} {'drafted':>7} {'kept':>5} equal")  # fmt: skip
    for r in constrained:
        print(f"{r['round']:>5} {r['mode']:<13} {r['sampling']:>8} {r['plain_s']:>8.3f} "
              f"{r['drafting_s']:>8.3f} {r['speedup']:>5.2f}x "
              f"{r['plain_steps']:>4}/{r['drafting_steps']:<4} {r['drafted']:>7} "
              f"{r['accepted']:>5} {r['equal']}")  # fmt: skip
    # a smoke run does not replace the full run's numbers that the README quotes
    name = f"speculation_cpu{'_quick' if args.quick else ''}.json"
    out = Path(args.out) if args.out else RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "drafts": args.drafts, "tokens": args.tokens,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows,
              "constrained": constrained}  # fmt: skip
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


def constrained_rows(
    plain: LLMEngine, drafting: LLMEngine, rounds: int, modes: int | None
) -> list[dict]:
    """Each constrained mode (the first `modes` of them; all if None), greedy and sampled, on
    both engines in turn: wall time, steps, drafts, and whether the outputs are equal."""
    tok = plain.tokenizer
    cases = {m: (PROMPT, 48, MODES[m]) for m in MODES if m != "plain"}
    cases["person_schema"] = (PERSON_PROMPT, 160, {"json_object": True, "json_schema": PERSON})
    kinds = list(cases)[:modes]
    rows = []
    for round_ in range(1, rounds + 1):
        for mode, temperature in itertools.product(kinds, (0.0, 0.7)):
            prompt, max_tokens, extra = cases[mode]
            ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}], True))
            sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=1,
                                      **extra)  # fmt: skip
            times, outs, steps = {}, {}, {}
            before = (drafting.stats.drafted_tokens, drafting.stats.accepted_tokens)
            for name, engine in (("plain", plain), ("drafting", drafting)):
                first, start = engine.stats.steps, time.perf_counter()
                outs[name] = engine.generate([ids], sampling)[0]
                times[name] = time.perf_counter() - start
                steps[name] = engine.stats.steps - first
            rows.append({
                "round": round_, "mode": mode,
                "sampling": "greedy" if temperature == 0 else f"T={temperature}",
                "plain_s": times["plain"], "drafting_s": times["drafting"],
                "speedup": times["plain"] / times["drafting"],
                "plain_steps": steps["plain"], "drafting_steps": steps["drafting"],
                "drafted": drafting.stats.drafted_tokens - before[0],
                "accepted": drafting.stats.accepted_tokens - before[1],
                "equal": outs["plain"].token_ids == outs["drafting"].token_ids,
                "text": outs["drafting"].text,
            })  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
