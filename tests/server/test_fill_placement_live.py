"""Early (pipelined) fills and the call they are for, on a live server with two engines of one
call each. The engine holding a call's first early fill gets busy; its deeper fill and then the
call itself still go there, though the other engine is free: the deeper fill forks the first,
and the call waits for the busy engine rather than compute its prompt again on the free one
(the filled prompt is worth more than the one busy call it waits behind)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.engine import LLMEngine
from server.launcher import ServerProcess
from tests.server.http_client import metrics, open_session, request, submit, value

pytestmark = pytest.mark.slow

ARTICLE = Path(__file__).resolve().parents[2].parent / "shared/data/arxiv-march-2023/article_0.txt"
HEAD = "Answer the question about this part of a paper.\n" + ARTICLE.read_text()[2000:3100]
HEAD += "\nQuestion: "
MIDDLE = "\nAnswer it in the words of the paper, citing the sentence you rely on.\nThen this: "
STARTED = 'parrot_calls_started_total{{engine="{}",priority="{}"}}'


@pytest.fixture(scope="module")
def server(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("fill_placement") / "server.log"
    flags = ("--engines", "2", "--max-calls-per-engine", "1", "--no-prefix-cache")
    with ServerProcess(tiny_llama_path, *flags, log_path=log) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def engine(tiny_llama_path: Path) -> LLMEngine:
    return LLMEngine.from_pretrained(str(tiny_llama_path))


def delta(after: dict, before: dict, name: str) -> float:
    return after.get(name, 0) - before.get(name, 0)


def test_a_call_runs_on_the_engine_holding_its_early_fill(server: str, engine: LLMEngine) -> None:
    head_tokens = len(engine.tokenizer.encode(HEAD))
    m0 = metrics(server)
    # "ask" waits for two questions the client sends later; its long head is filled ahead on
    # the least loaded engine (both are idle: engine 0)
    sid, token = open_session(server)
    ask = {"id": "ask", "template": HEAD + "{{input:q0}}" + MIDDLE + "{{input:q1}}\nAnswer:"
           "{{output:a}}", "inputs": {"q0": "q0", "q1": "q1"}, "outputs": {"a": "a"},
           "sampling": {"max_tokens": 4, "temperature": 0}}  # fmt: skip
    submit(server, sid, token, [{"id": "q0"}, {"id": "q1"}, {"id": "a"}], [ask])
    deadline = time.monotonic() + 30
    while delta(m1 := metrics(server), m0, "parrot_pipelined_prefill_tokens_total") < (
        head_tokens - 2
    ):
        assert time.monotonic() < deadline, "the ready head was not filled ahead"
        time.sleep(0.02)
    # a call without a prefix fills engine 0 (the least loaded by index: fills are no load)
    busy_sid, busy_token = open_session(server)
    busy = {"id": "busy", "template": "Write on:{{output:x}}", "inputs": {}, "outputs": {"x": "x"},
            "sampling": {"max_tokens": 300, "temperature": 0, "ignore_eos": True}}  # fmt: skip
    submit(server, busy_sid, busy_token, [{"id": "x"}], [busy])
    # the first question asks for a deeper fill (engine 1 is the least loaded now), the second
    # makes "ask" ready
    for i, question in enumerate(("What is the main claim?", "Which data is used?")):
        status, body = request("PUT", f"{server}/v1/sessions/{sid}/variables/q{i}",
                               {"value": question}, token)  # fmt: skip
        assert status == 200, body
    # "ask" was placed while the busy call ran (else this test shows nothing)
    assert value(server, busy_sid, busy_token, "x", timeout=0)["status"] == "pending"
    got = value(server, sid, token, "a")
    busy_usage = value(server, busy_sid, busy_token, "x")["usage"]
    deadline = time.monotonic() + 30
    while (m2 := metrics(server))["parrot_engine_jobs"]:
        assert time.monotonic() < deadline, "the engines did not go idle"
        time.sleep(0.02)
    assert delta(m2, m1, STARTED.format(0, 1)) == 2  # both calls on engine 0
    assert not any(delta(m2, m1, STARTED.format(1, p)) for p in range(3))
    assert delta(m2, m0, "parrot_prefix_fills_total") == 2  # the head, then deeper from it
    assert delta(m2, m0, "parrot_pipelined_prefix_uses_total") == 1
    # every prompt token computed or reused once: the head was not computed again
    prompt = got["usage"]["prompt_tokens"] + busy_usage["prompt_tokens"]
    computed = delta(m2, m0, "parrot_prefill_tokens_total")
    assert computed + delta(m2, m0, "parrot_cached_tokens_total") == prompt
