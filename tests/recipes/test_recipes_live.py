"""Every recipe runs as its README says (`python recipes/NAME.py --url URL`) against a live
server with the tiny random model, at small sizes, and reports what it promises: the same
answers in each way of running its application."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import parrot_bridge as P
from parrot_bridge.template import Input, Output, Template
from server.engine import CompletionOutput, LLMEngine, SamplingParams
from server.launcher import ServerProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MAP_REDUCE = ("--chunk-chars", "300", "--max-chunks", "3", "--map-tokens", "6",
              "--reduce-tokens", "6")  # fmt: skip


@pytest.fixture(scope="module")
def url(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("recipes") / "server.log"
    with ServerProcess(tiny_llama_path, log_path=log) as srv:
        yield srv.url


def run_recipe(name: str, url: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / name), "--url", url, *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def fill(template: Template, values: dict[str, str]) -> str:
    """The prompt of a one-output template: its text and filled inputs up to the output."""
    text = ""
    for seg in template.segments:
        if isinstance(seg, Output):
            return text
        text += seg.render(values[seg.name]) if isinstance(seg, Input) else seg.text
    raise AssertionError("no output")


def greedy(engine: LLMEngine, prompt: str, max_tokens: int) -> CompletionOutput:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0)
    return engine.generate([engine.tokenizer.encode(prompt)], sampling)[0]


def test_map_reduce_summary_runs_the_graph_and_reports_its_work(
    url: str, tiny_llama_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = run_recipe("map_reduce_summary.py", url, *MAP_REDUCE)
    assert "chunks: 3" in out
    # the reference: the recipe's own templates and chunks, each call a plain greedy run
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    common = importlib.import_module("_common")
    recipe = importlib.import_module("map_reduce_summary")
    engine = LLMEngine.from_pretrained(str(tiny_llama_path))
    chunks = common.split_into_chunks(common.DEFAULT_ARTICLE.read_text(), 300)[:3]
    mapper = P.semantic_function(max_tokens=6, temperature=0)(recipe.map_chunk)
    prompts = [fill(mapper.template, {"chunk": c}) for c in chunks]
    runs = [greedy(engine, p, 6) for p in prompts]
    parts = {f"part{i}": r.text for i, r in enumerate(runs)}
    prompts.append(fill(recipe.reduce_function(3, 6).template, parts))
    runs.append(greedy(engine, prompts[-1], 6))
    assert f"\nSummary:\n{runs[-1].text.strip()}\n\nchunks: 3" in out
    counters = dict(line.split(":") for line in out.splitlines() if " tokens:" in line)
    assert float(counters["generated tokens"]) == sum(len(r.token_ids) for r in runs)
    prompt_tokens = sum(len(engine.tokenizer.encode(p)) for p in prompts)
    assert float(counters["prompt tokens"]) == prompt_tokens


def test_langchain_map_reduce_gives_the_same_summary_plain_and_compiled(url: str) -> None:
    out = run_recipe("langchain_map_reduce.py", url, *MAP_REDUCE)
    assert "(4 calls, one graph)" in out
    assert "same summary: True" in out


def test_langchain_swap_gives_the_same_answers_in_every_mode(url: str) -> None:
    out = run_recipe("langchain_swap.py", url, "--questions", "2", "--max-tokens", "6", "--openai")
    assert "same answers in every mode: True" in out


def test_llamaindex_rag_gives_the_same_answer_as_the_stock_openai_like_llm(url: str) -> None:
    out = run_recipe(
        "llamaindex_rag.py", url, "--max-papers", "1", "--top-k", "2", "--max-tokens", "6",
        "--questions", "What is the paper about?",
    )  # fmt: skip
    assert out.count("same answer: True") == 2  # tree_summarize and refine
