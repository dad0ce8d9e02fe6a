"""Every recipe runs as its README says (`python recipes/NAME.py --url URL`) against a live
server with the tiny random model, at small sizes, and reports what it promises: the same
answers in each way of running its application."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import parrot_bridge as P
from parrot_bridge.template import Input, Output, Template
from server.engine import CompletionOutput, LLMEngine, SamplingParams
from server.launcher import ServerProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MAP_REDUCE = ("--chunk-chars", "300", "--max-chunks", "3", "--map-tokens", "6",
              "--reduce-tokens", "6")  # fmt: skip
TEAM_TOKENS = {"design": 8, "code": 6, "review": 6}


@pytest.fixture(scope="module")
def url(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("recipes") / "server.log"
    with ServerProcess(tiny_llama_path, log_path=log) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def engine(tiny_llama_path: Path) -> LLMEngine:
    """The reference: the server's model run here, one plain greedy generation per call."""
    return LLMEngine.from_pretrained(str(tiny_llama_path))


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


def import_recipe(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A recipe as a module (its templates and helpers), importing `_common` as it does."""
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    return importlib.import_module(name)


def printed_counters(out: str) -> dict[str, float]:
    """The `label: number` lines a recipe prints (the last of each label: the counters come
    after the answers)."""
    return {k: float(v) for k, v in re.findall(r"^([a-z ]+): +(\d+)$", out, re.MULTILINE)}


def test_map_reduce_summary_runs_the_graph_and_reports_its_work(
    url: str, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = run_recipe("map_reduce_summary.py", url, *MAP_REDUCE)
    assert "chunks: 3" in out
    # the reference: the recipe's own templates and chunks, each call a plain greedy run
    recipe = import_recipe("map_reduce_summary", monkeypatch)
    common = importlib.import_module("_common")
    chunks = common.split_into_chunks(common.DEFAULT_ARTICLE.read_text(), 300)[:3]
    mapper = P.semantic_function(max_tokens=6, temperature=0)(recipe.map_chunk)
    prompts = [fill(mapper.template, {"chunk": c}) for c in chunks]
    runs = [greedy(engine, p, 6) for p in prompts]
    parts = {f"part{i}": r.text for i, r in enumerate(runs)}
    prompts.append(fill(recipe.reduce_function(3, 6).template, parts))
    runs.append(greedy(engine, prompts[-1], 6))
    assert f"\nSummary:\n{runs[-1].text.strip()}\n\nchunks: 3" in out
    counters = printed_counters(out)
    assert counters["generated tokens"] == sum(len(r.token_ids) for r in runs)
    prompt_tokens = sum(len(engine.tokenizer.encode(p)) for p in prompts)
    assert counters["prompt tokens"] == prompt_tokens


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


def test_agent_team_runs_ten_agents_in_one_submission(
    url: str, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = TEAM_TOKENS
    out = run_recipe("agent_team.py", url, "--design-tokens", str(sizes["design"]),
                     "--code-tokens", str(sizes["code"]), "--review-tokens", str(sizes["review"]))  # fmt: skip
    assert "calls: 10 (1 architect, 4 programmers, 1 reviewer, 4 revisers), sent in 1 graph " in out
    # the reference: the recipe's own agents, each call a plain greedy run, in the graph's order
    recipe = import_recipe("agent_team", monkeypatch)
    team = recipe.build_team(sizes["design"], sizes["code"], sizes["review"])
    prompts: list[str] = []
    runs: list[CompletionOutput] = []

    def call(fn: P.SemanticFunction, max_tokens: int, **values: str) -> str:
        prompts.append(fill(fn.template, values))
        runs.append(greedy(engine, prompts[-1], max_tokens))
        return runs[-1].text

    design = call(team.architect, sizes["design"])
    code = {recipe.code_slot(f): call(team.programmers[f], sizes["code"], design=design)
            for f in recipe.FILES}  # fmt: skip
    review = call(team.reviewer, sizes["review"], **code)
    assert f"\nReview:\n{review.strip()}\n\n" in out
    for f in recipe.FILES:
        revised = call(team.revisers[f], sizes["code"], review=review, **code)
        assert f"--- {f} (revised) ---\n{revised.strip()}\n\n" in out
    counters = printed_counters(out)
    assert counters["prompt tokens"] == sum(len(engine.tokenizer.encode(p)) for p in prompts)
    assert counters["generated tokens"] == sum(len(r.token_ids) for r in runs)
    assert counters["prefill tokens"] + counters["cached tokens"] == counters["prompt tokens"]
    assert counters["cached tokens"] > 0  # the agents' shared prefixes


def test_shared_system_prompt_is_prefilled_once_for_all_users(
    url: str, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    users, max_tokens, system_tokens = 3, 6, 300
    out = run_recipe("shared_system_prompt.py", url, "--users", str(users), "--max-tokens",
                     str(max_tokens), "--prompt-tokens", str(system_tokens))  # fmt: skip
    recipe = import_recipe("shared_system_prompt", monkeypatch)
    tokenizer = engine.tokenizer
    system = recipe.system_prompt(system_tokens, tokenizer.encode, tokenizer.decode,
                                  recipe.DEFAULT_ARTICLE)  # fmt: skip
    assert f"\nsystem prompt: {len(tokenizer.encode(system))} tokens (Productivity's" in out
    app = recipe.app_function(system, max_tokens)
    prompts = [fill(app.template, {"question": q}) for q in recipe.QUESTIONS[:users]]
    runs = [greedy(engine, p, max_tokens) for p in prompts]
    for i, (question, run) in enumerate(zip(recipe.QUESTIONS, runs, strict=False)):
        assert f"\nuser {i + 1}: {question}\n{run.text.strip()}\n" in out
    counters = printed_counters(out)
    tokens = [tokenizer.encode(p) for p in prompts]
    assert counters["prompt tokens"] == sum(len(t) for t in tokens)
    assert counters["generated tokens"] == sum(len(r.token_ids) for r in runs)
    assert counters["prefill tokens"] + counters["cached tokens"] == counters["prompt tokens"]
    # the system prompt is filled once (the first user's call goes on from it) and forked for
    # every other user, who computes only what follows it
    assert counters["prefix fills"] == 1
    assert counters["prefix hits"] == users - 1
    shared = counters["prefix fill tokens"]
    # the system turn and the user turn's header (commonprefix compares lists item by item)
    common = len(os.path.commonprefix(tokens))
    assert len(tokenizer.encode(system)) <= shared <= common
    assert counters["fork cached tokens"] == (users - 1) * shared
    # a few tokens more may be found in the prefix cache: those the fill left to the calls
    # (where the text meets the question) that are common to all users
    assert (users - 1) * shared <= counters["cached tokens"] <= (users - 1) * common
    assert f"prefilled 1 time(s), {shared:.0f} tokens; then forked for {users - 1} user(s)" in out
