"""rag: LlamaIndex response synthesis (tree_summarize, refine) with `Parrot` (one graph per
query) against the stock synthesizers on `OpenAILike` (one request per call), same server.

    python -m benchmarks.run rag [--quick] [--model smollm2-135m-instruct]

It defines no `WORKLOAD` (the harness runs `Job` graphs, not LlamaIndex pipelines):
`benchmarks.run rag` calls its `main` (`python -m benchmarks.workloads.rag` too), which takes
only `--quick` and `--model` and prints and saves its own table. Every system runs on a fresh
server of its own and reads the same slices of the papers for the same queries (so no system
finds another's prompts in the prefix cache, and all do the same work); an untimed first query
warms each server up. Greedy: each query's answers must be equal across systems.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llama_index.core import get_response_synthesizer as stock_synthesizer  # noqa: E402
from llama_index.llms.openai_like import OpenAILike  # noqa: E402

from benchmarks.common import data  # noqa: E402
from parrot_bridge.llamaindex import Parrot, get_response_synthesizer  # noqa: E402
from server.launcher import ServerProcess  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"
# LlamaIndex packs tree_summarize chunks to `tree_context` tokens (a few leaves per level);
# refine leaves 500 tokens of room for the answer, so it needs a larger window
QUICK = {
    "queries": 1,
    "chunks": 8,
    "chunk_chars": 600,
    "max_tokens": 32,
    "tree_context": 512,
    "refine_context": 1024,
}
FULL = {"queries": 3, "chunks": 12, "chunk_chars": 1000, "max_tokens": 64,
        "tree_context": 768, "refine_context": 1280}  # fmt: skip
QUESTIONS = ("What problem does this work address?", "What method is proposed?",
             "What are the main results?", "What are the limitations?")  # fmt: skip
MODES = ("tree_summarize", "refine")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = QUICK if args.quick else FULL
    log_dir = Path(tempfile.mkdtemp(prefix="parrot-bench-rag-"))
    # the same texts for every system: the warm-up's, then one slice per timed query
    texts = list(itertools.islice(_slices(size), 1 + size["queries"]))
    rows: list[dict[str, Any]] = []
    for mode in MODES:
        for name in system_names(mode):
            log = log_dir / f"{mode}.{name}.log"
            with ServerProcess(args.model, log_path=log, startup_timeout_s=300) as server:
                run = _systems(server.url, mode, size)[name]
                run(QUESTIONS[0], texts[0])  # warm-up, untimed
                for q in range(size["queries"]):
                    before = _submissions(server.url)
                    start = time.perf_counter()
                    answer = run(QUESTIONS[q % len(QUESTIONS)], texts[1 + q])
                    latency = time.perf_counter() - start
                    rows.append({"mode": mode, "system": name, "query": q, "latency_s": latency,
                                 "graph_submissions": _submissions(server.url) - before,
                                 "answer": answer})  # fmt: skip
                    print(f"  {mode} {name:<13} query {q}: {latency:.1f} s", flush=True)
    mark_same_answers(rows)
    report = _report(rows)
    print(_table(report))
    out = RESULTS / f"rag{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python -m benchmarks.workloads.rag " + " ".join(argv or sys.argv[1:]),
            "model": args.model, "size": size, "cpus": os.cpu_count()}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "report": report, "runs": rows}, indent=2))
    print(f"\nsaved {out}")
    return 0


def system_names(mode: str) -> tuple[str, ...]:
    """The systems a response mode runs in (`_systems` builds them)."""
    return ("parrot", "openai", "openai_async") if mode == "tree_summarize" else ("parrot", "openai")


def mark_same_answers(rows: list[dict[str, Any]]) -> None:
    """Set each row's `same_answer`: whether every system answered its query alike."""
    answers: dict[tuple[str, int], set[str]] = {}
    for r in rows:
        answers.setdefault((r["mode"], r["query"]), set()).add(r["answer"])
    for r in rows:
        r["same_answer"] = len(answers[(r["mode"], r["query"])]) == 1


def _systems(
    url: str, mode: str, size: dict[str, int]
) -> dict[str, Callable[[str, list[str]], str]]:
    """Parrot with our synthesizer, and the stock one on OpenAILike (sync, as
    `as_query_engine` builds it; for tree_summarize also its concurrent `use_async` form)."""
    window = size["tree_context" if mode == "tree_summarize" else "refine_context"]
    parrot = Parrot(base_url=url, max_tokens=size["max_tokens"], context_window=window)
    baseline = OpenAILike(api_base=url + "/v1", api_key="none", model=parrot.metadata.model_name,
                          max_tokens=size["max_tokens"], temperature=0, context_window=window,
                          is_chat_model=False)  # fmt: skip
    systems = {
        "parrot": _sync(get_response_synthesizer(llm=parrot, response_mode=mode)),
        "openai": _sync(stock_synthesizer(llm=baseline, response_mode=mode)),
    }
    if mode == "tree_summarize":
        systems["openai_async"] = _async(
            stock_synthesizer(llm=baseline, response_mode=mode, use_async=True)
        )
    return systems


def _submissions(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("parrot_graph_submissions_total "):
                return float(line.split()[1])
    return 0.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.workloads.rag", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    return p.parse_args(argv)


def _slices(size: dict[str, int]) -> Iterator[list[str]]:
    """Fresh chunks for every run, taken in turn from the papers."""
    chars = size["chunk_chars"] * size["chunks"]
    paper = 0
    while True:
        text = data.paper(paper % 5)
        for start in range(0, len(text) - chars, chars):
            piece = text[start : start + chars]
            yield [piece[i : i + size["chunk_chars"]] for i in range(0, chars, size["chunk_chars"])]
        paper += 1


def _sync(synthesizer: Any) -> Callable[[str, list[str]], str]:
    return lambda query, chunks: str(synthesizer.get_response(query, chunks))


def _async(synthesizer: Any) -> Callable[[str, list[str]], str]:
    return lambda query, chunks: str(asyncio.run(synthesizer.aget_response(query, chunks)))


def _report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        means = {s: statistics.mean(r["latency_s"] for r in mine if r["system"] == s)
                 for s in dict.fromkeys(r["system"] for r in mine)}  # fmt: skip
        report[mode] = {
            "mean_latency_s": means,
            "speedup_vs": {s: means[s] / means["parrot"] for s in means if s != "parrot"},
            "same_answer": all(r["same_answer"] for r in mine),
            "parrot_submissions_per_query": statistics.mean(
                r["graph_submissions"] for r in mine if r["system"] == "parrot"
            ),
        }
    return report


def _table(report: dict[str, Any]) -> str:
    lines = [f"{'mode':<16}{'system':<14}{'latency s':>10}{'Parrot gain':>13}  same answer"]
    for mode, result in report.items():
        for system, latency in result["mean_latency_s"].items():
            gain = result["speedup_vs"].get(system)
            shown = f"{gain:.2f}x" if gain is not None else "-"
            lines.append(f"{mode:<16}{system:<14}{latency:>10.2f}{shown:>13}  "
                         f"{result['same_answer']}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
