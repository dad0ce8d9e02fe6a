"""How long a full garbage collection stops a server process, by how its long-lived objects are
held.

    python -m benchmarks.gc_pause [--quick] [--rounds N] [--model NAME]

A full collection walks every object the collector tracks, and while it runs nothing else in
the process does: not the event loop (streams, probes), not the engine's step loop. This loads
the engine (torch, the model), compiles the constraints of a few large requests (grammars of
9,000 rules, string patterns near the automaton's size cap) and times `gc.collect()` with:
- the compiled automata as lists of (character set, state) pairs per state (the layout before
  they were packed) or packed (tuples of ints, over one table of character sets);
- the objects alive at startup tracked, or frozen (`gc.freeze`, as `python -m server` and its
  engine processes do once started).
All four run in one process, in turn within each round. (The automata are compiled before a
freeze here, so it takes them in too; packed, they are a few dozen tracked objects either way.)
Then, with the startup objects frozen as in the server, it times compiling one such grammar and
one such pattern with collection held off while they compile (as the server compiles them) and
on (that pause replaced by nothing), in turn within each round. Prints both tables, medians with
ratios, and saves JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
LAYOUTS = ("lists", "packed")
STARTUPS = ("tracked", "frozen")
COLLECTIONS = 5  # timed per case and round


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, fewer constraints")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--out", type=Path, default=RESULTS / "gc_pause_cpu.json")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    from server.engine import LLMEngine

    engine = LLMEngine.from_pretrained(args.model)
    automata = compiled_constraints(1 if args.quick else 3)
    pauses: dict[str, list[float]] = {}
    tracked: dict[str, int] = {}
    for done in range(rounds):
        for layout in LAYOUTS:
            for startup in STARTUPS:
                name = f"{layout}, startup {startup}"
                ms, objects = full_collection_ms(automata, layout, startup == "frozen")
                pauses.setdefault(name, []).extend(ms)
                tracked[name] = objects
                print(f"round {done + 1}/{rounds}, {name}: {statistics.median(ms):.1f} ms, "
                      f"{objects:,} tracked", flush=True)  # fmt: skip
    table = summarize(pauses, tracked)
    print(format_table(table))
    compiles = compile_seconds(rounds)
    compile_table = summarize_compiles(compiles)
    print(f"\n{'compile, collection':28} {'median s':>9} {'x held off':>11}")
    for name, row in compile_table.items():
        print(f"{name:28} {row['median_s']:>9.3f} {row['vs_held_off']:>11.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(["python -m benchmarks.gc_pause", *(argv or sys.argv[1:])]),
        "started_at": started, "model": args.model, "engine": type(engine).__name__,
        "constraints": len(automata), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "table": table, "pause_ms": pauses,
        "compile_table": compile_table, "compile_s": compiles,
    }, indent=2) + "\n")  # fmt: skip
    print(f"\nsaved {args.out}")
    return 0


def compiled_constraints(requests: int) -> list[Any]:
    """The automata of `requests` large grammars and `requests` schemas with two large
    patterns each, as the compile caches hold them."""
    from server.engine.grammar import Grammar
    from server.engine.regex_prefix import Regex

    automata: list[Any] = []
    for _ in range(requests):
        tag = uuid.uuid4().hex[:6]
        automata.append(Grammar(large_grammar(tag)))
        automata.append(Regex(f"{tag}([a-z]{{1,100}} ){{1,240}}"))
        automata.append(Regex(f"{tag}([0-9]{{1,100}},){{1,240}}"))
    return automata


def large_grammar(tag: str) -> str:
    """A grammar of 9,000 rules, new to the compile cache (`tag`)."""
    names = [f"r{tag}{i}" for i in range(9000)]
    rules = "\n".join(f'{n} ::= "w{i}" [a-z]' for i, n in enumerate(names))
    return "root ::= " + " ".join(names) + "\n" + rules


def compile_seconds(rounds: int) -> dict[str, list[float]]:
    """Compile times of a large grammar and a near-cap pattern, with collection held off while
    they compile (the server's way) and on, the startup objects frozen as in the server."""
    import server.engine.grammar as grammar
    import server.engine.regex_prefix as regex_prefix

    times: dict[str, list[float]] = {}
    held_off = grammar.collection_paused
    gc.collect()
    gc.freeze()
    try:
        for _ in range(rounds):
            for collection in ("held off", "on"):
                pause = held_off if collection == "held off" else contextlib.nullcontext
                grammar.collection_paused = pause  # type: ignore[assignment]
                regex_prefix.collection_paused = pause  # type: ignore[assignment]
                tag = uuid.uuid4().hex[:6]
                for kind, build, text in (
                    ("grammar", grammar.Grammar, large_grammar(tag)),
                    ("pattern", regex_prefix.Regex, f"{tag}([a-z]{{1,100}} ){{1,240}}"),
                ):  # fmt: skip
                    start = time.perf_counter()
                    build(text)
                    elapsed = time.perf_counter() - start
                    times.setdefault(f"{kind}, {collection}", []).append(elapsed)
                    gc.collect()
    finally:
        grammar.collection_paused = regex_prefix.collection_paused = held_off
        gc.unfreeze()
    return times


def summarize_compiles(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median compile time (s) per case and its ratio to the same kind's with collection held
    off."""
    def median(name: str) -> float:
        return statistics.median(times[name])

    return {
        name: {"median_s": round(median(name), 3),
               "vs_held_off": round(median(name) / median(name.split(",")[0] + ", held off"), 2)}
        for name in times
    }  # fmt: skip


def full_collection_ms(automata: list[Any], layout: str, frozen: bool) -> tuple[list[float], int]:
    """(full collection times in ms, objects the collector tracks) with the automata held in
    `layout` and the objects alive now frozen or not."""
    gc.collect()
    if frozen:
        gc.freeze()
    held = [as_lists(a) for a in automata] if layout == "lists" else automata
    gc.collect()  # a first pass untracks tuples of atoms, as it does in a running process
    times = []
    for _ in range(COLLECTIONS):
        start = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - start) * 1000)
    objects = len(gc.get_objects())
    del held
    gc.unfreeze()
    return times, objects


def as_lists(automaton: Any) -> list[list[list[Any]]]:
    """The packed automaton's moves held as the compiler held them before packing: per state a
    list of (character set, state) pairs, each set an object of its own, and a list of the
    states reached without reading."""
    from server.engine.char_set import CharSet

    nfa = automaton._nfa
    edges = [
        [(CharSet(nfa.charsets[c].ranges, nfa.charsets[c].negated, nfa.charsets[c].classes), t)
         for c, t in moves]
        for moves in nfa.edges
    ]  # fmt: skip
    return [edges, [list(e) for e in nfa.empty]]


def summarize(pauses: dict[str, list[float]], tracked: dict[str, int]) -> dict[str, dict]:
    """Median pause (ms) per case, its ratio to the first case's, and the objects tracked."""
    first = statistics.median(next(iter(pauses.values())))
    return {
        name: {"median_ms": round(statistics.median(ms), 1),
               "vs_first": round(statistics.median(ms) / first, 3),
               "tracked_objects": tracked[name]}
        for name, ms in pauses.items()
    }  # fmt: skip


def format_table(table: dict[str, dict]) -> str:
    lines = [f"{'automata, startup objects':28} {'tracked':>10} {'full GC ms':>11} {'x first':>8}"]
    for name, row in table.items():
        lines.append(f"{name:28} {row['tracked_objects']:>10,} {row['median_ms']:>11.1f} "
                     f"{row['vs_first']:>8.3f}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
