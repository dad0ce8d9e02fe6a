"""Prefix sharing across sessions, placement by prefix and pipelined prefill, on a live server
with a tiny random model and two engines. The engine's own prefix cache is off, so every reused
token below was shared by the server's prefix store."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.engine import LLMEngine, SamplingParams
from server.launcher import ServerProcess
from tests.server.http_client import metrics, open_session, request, submit, value

pytestmark = pytest.mark.slow

ARTICLE = Path(__file__).resolve().parents[2].parent / "shared/data/arxiv-march-2023/article_0.txt"
SYSTEM = "You are a careful reviewer of this paper.\n" + ARTICLE.read_text()[3000:3700] + "\nUser: "


@pytest.fixture(scope="module")
def server(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("optimisations") / "server.log"
    with ServerProcess(tiny_llama_path, "--engines", "2", "--no-prefix-cache", log_path=log) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def engine(tiny_llama_path: Path) -> LLMEngine:
    return LLMEngine.from_pretrained(str(tiny_llama_path))


def greedy(engine: LLMEngine, text: str, max_tokens: int) -> str:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0)
    return engine.generate([engine.tokenizer.encode(text)], sampling)[0].text


def ask(url: str, question: str, max_tokens: int = 6) -> tuple[str, str]:
    """A GPTs-style call in a new session: the shared system prompt, then the user's question."""
    sid, token = open_session(url)
    call = {"id": "ask", "template": SYSTEM + "{{input:q}}\nAssistant:{{output:a}}",
            "inputs": {"q": "q"}, "outputs": {"a": "a"},
            "sampling": {"max_tokens": max_tokens, "temperature": 0}}  # fmt: skip
    submit(url, sid, token, [{"id": "q", "value": question}, {"id": "a"}], [call],
           [{"variable": "a", "criteria": "latency"}])  # fmt: skip
    return sid, token


def delta(after: dict, before: dict, name: str) -> float:
    return after.get(name, 0) - before.get(name, 0)


def test_a_shared_system_prompt_is_prefilled_once_across_sessions(
    server: str, engine: LLMEngine
) -> None:
    system_tokens = len(engine.tokenizer.encode(SYSTEM))
    m0 = metrics(server)
    sid, token = ask(server, "What is the main claim?")
    first = value(server, sid, token, "a")
    m1 = metrics(server)
    assert first["value"] == greedy(engine, SYSTEM + "What is the main claim?\nAssistant:", 6)
    assert delta(m1, m0, "parrot_prefix_fills_total") == 1
    assert delta(m1, m0, "parrot_prefill_tokens_total") >= system_tokens

    # a long call with no prefix of its own keeps engine 0 busy: least loaded would now pick
    # engine 1, but engine 0 holds the system prompt, so the second session goes there
    busy_sid, busy_token = open_session(server)
    busy = {"id": "busy", "template": "Write on:{{output:x}}", "inputs": {}, "outputs": {"x": "x"},
            "sampling": {"max_tokens": 400, "temperature": 0, "ignore_eos": True}}  # fmt: skip
    submit(server, busy_sid, busy_token, [{"id": "x"}], [busy], [])
    sid2, token2 = ask(server, "Which method is used?")
    second = value(server, sid2, token2, "a")
    assert value(server, busy_sid, busy_token, "x")["status"] == "ready"
    m2 = metrics(server)
    assert second["value"] == greedy(engine, SYSTEM + "Which method is used?\nAssistant:", 6)
    assert delta(m2, m1, "parrot_prefix_hits_total") == 1
    assert delta(m2, m1, "parrot_prefix_fills_total") == 0
    started = 'parrot_calls_started_total{{engine="{}",priority="{}"}}'
    assert delta(m2, m1, started.format(0, 1)) == 1  # the busy call: nothing awaits it
    assert delta(m2, m1, started.format(0, 0)) == 1  # the question: latency-critical
    assert not any(delta(m2, m1, started.format(1, p)) for p in range(3))
    # the second question, the busy call's prompt and nothing of the system prompt again
    assert delta(m2, m1, "parrot_prefill_tokens_total") < system_tokens // 4
    assert delta(m2, m1, "parrot_cached_tokens_total") >= system_tokens - 4


def draft_and_refine(draft_tokens: int) -> tuple[str, list[dict]]:
    """A graph whose "refine" waits for "draft" (which writes `draft_tokens` tokens) while its
    instructions and its part of the paper are ready at once: (refine's text before its
    input, the calls)."""
    head = "Refine the summary with this part of the paper.\n" + ARTICLE.read_text()[5000:5400]
    head += "\nPrevious summary: "
    calls = [
        {"id": "draft", "template": "Draft a summary:{{output:d}}", "inputs": {},
         "outputs": {"d": "prev"},
         "sampling": {"max_tokens": draft_tokens, "temperature": 0, "ignore_eos": True}},
        {"id": "refine", "template": head + "{{input:prev}}\nNew summary:{{output:s}}",
         "inputs": {"prev": "prev"}, "outputs": {"s": "s"},
         "sampling": {"max_tokens": 6, "temperature": 0}},
    ]  # fmt: skip
    return head, calls


def test_a_pipelined_prefix_is_filled_before_its_input_arrives(
    server: str, engine: LLMEngine
) -> None:
    # "draft" writes the previous summary slowly; "refine" waits for it, but its instructions
    # and its part of the paper are ready at once
    head, calls = draft_and_refine(draft_tokens=300)
    sid, token = open_session(server)
    m0 = metrics(server)
    submit(server, sid, token, [{"id": "prev"}, {"id": "s"}], calls,
           [{"variable": "s", "criteria": "latency"}])  # fmt: skip
    head_tokens = len(engine.tokenizer.encode(head))
    deadline = time.monotonic() + 30
    while True:
        m1 = metrics(server)
        if delta(m1, m0, "parrot_pipelined_prefill_tokens_total") >= head_tokens - 2:
            break
        assert time.monotonic() < deadline, "the ready prefix was not filled ahead"
        time.sleep(0.02)
    assert value(server, sid, token, "prev", timeout=0)["status"] == "pending"

    got = value(server, sid, token, "s")
    m2 = metrics(server)
    prompt = head + value(server, sid, token, "prev")["value"] + "\nNew summary:"
    assert got["value"] == greedy(engine, prompt, 6)
    assert delta(m2, m1, "parrot_pipelined_prefix_uses_total") == 1
    # the draft is latency-critical and the latency-critical refine reads it: the engine held
    # other work back for the refine when the draft ended (the refine itself feeds no call)
    assert delta(m2, m0, "parrot_latency_holds_total") == 1
    # once the input arrives only the tail after the prefilled head is computed (and the two
    # boundary tokens the early fill leaves out; the draft's prompt may fall in this window too)
    tail = len(engine.tokenizer.encode(prompt)) - head_tokens
    draft_prompt = len(engine.tokenizer.encode("Draft a summary:"))
    assert delta(m2, m1, "parrot_prefill_tokens_total") <= tail + 2 + draft_prompt


def _chain(paper: str) -> tuple[list, list, list[str]]:
    """Three calls in turn, each one's part of the paper ready at once (filled ahead)."""
    sampling = {"max_tokens": 24, "temperature": 0, "ignore_eos": True}
    calls = [{"id": "step0", "template": "Draft a summary of this text.\n" + paper[:600]
              + "\nSummary:{{output:s}}", "inputs": {}, "outputs": {"s": "v0"},
              "sampling": sampling}]  # fmt: skip
    for i in (1, 2):
        head = "Refine the summary with this part of the paper.\n" + paper[600 * i : 600 * i + 600]
        calls.append({"id": f"step{i}", "template": head + "\nPrevious summary: {{input:p}}\n"
                      "New summary:{{output:s}}", "inputs": {"p": f"v{i - 1}"},
                      "outputs": {"s": f"v{i}"}, "sampling": sampling})  # fmt: skip
    return [{"id": f"v{i}"} for i in range(3)], calls, ["v0", "v1", "v2"]


def _map_reduce(paper: str) -> tuple[list, list, list[str]]:
    """Four maps sharing their instructions, their summaries coming one by one into a reduce
    that is filled ahead as they come."""
    variables: list[dict] = [{"id": f"c{i}", "value": paper[4000 + 300 * i : 4300 + 300 * i]}
                             for i in range(4)]  # fmt: skip
    variables += [{"id": f"s{i}"} for i in range(4)] + [{"id": "f"}]
    calls = [{"id": f"map{i}", "template": "Summarize this part of a research paper in one "
              "sentence.\n\n{{input:c}}\n\nSummary:{{output:s}}", "inputs": {"c": f"c{i}"},
              "outputs": {"s": f"s{i}"},
              "sampling": {"max_tokens": 4 + 6 * i, "temperature": 0, "ignore_eos": True}}
             for i in range(4)]  # fmt: skip
    parts = "".join(f"Part {i + 1}: {{{{input:s{i}}}}}\n" for i in range(4))
    calls.append({"id": "reduce", "template": "These are summaries of the consecutive parts of "
                  "a research paper, to be combined into one summary of the whole paper.\n"
                  + parts + "Summary of the whole paper:{{output:f}}",
                  "inputs": {f"s{i}": f"s{i}" for i in range(4)}, "outputs": {"f": "f"},
                  "sampling": {"max_tokens": 6, "temperature": 0}})  # fmt: skip
    return variables, calls, [f"s{i}" for i in range(4)] + ["f"]


QUESTIONS = (
    "What is the main claim?",
    "Which method is used, and on which data?",
    "How is the method evaluated?",
    "What are the limitations the authors name?",
)


def _asked_later(paper: str) -> tuple[list, list, list[str]]:
    """A call reading variables the client sets later (PUT, one after another), its long
    leading text filled ahead: each value that comes while that fill runs asks for a deeper
    fill from it, and the last makes the call ready."""
    slots = "".join(f"Question {i + 1}: {{{{input:q{i}}}}}\n" for i in range(len(QUESTIONS)))
    call = {"id": "ask", "template": "You answer questions about this part of a paper.\n"
            + paper[8000:9000] + "\n" + slots + "Answers:{{output:a}}",
            "inputs": {f"q{i}": f"q{i}" for i in range(len(QUESTIONS))}, "outputs": {"a": "a"},
            "sampling": {"max_tokens": 6, "temperature": 0}}  # fmt: skip
    return [{"id": f"q{i}"} for i in range(len(QUESTIONS))] + [{"id": "a"}], [call], ["a"]


@pytest.mark.parametrize("graph", [_chain, _map_reduce, _asked_later])
def test_each_prompt_token_is_counted_once_as_computed_or_cached(
    server: str, graph: Callable[[str], tuple[list, list, list[str]]]
) -> None:
    """The server's prefill + cached tokens over a graph equal its calls' prompt tokens (their
    usage), as a plain client's requests count them: no prefix counted both as computed and
    as reused, and no tokens filled ahead that no call used."""
    variables, calls, outputs = graph(ARTICLE.read_text())
    sid, token = open_session(server)
    m0 = metrics(server)
    submit(server, sid, token, variables, calls, [{"variable": outputs[-1], "criteria": "latency"}])
    if graph is _asked_later:
        for i, question in enumerate(QUESTIONS):
            status, body = request("PUT", f"{server}/v1/sessions/{sid}/variables/q{i}",
                                   {"value": question}, token)  # fmt: skip
            assert status == 200, body
    prompt = sum(value(server, sid, token, var)["usage"]["prompt_tokens"] for var in outputs)
    deadline = time.monotonic() + 30
    while (m1 := metrics(server))["parrot_engine_jobs"]:  # no fill left running
        assert time.monotonic() < deadline, "the engines did not go idle"
        time.sleep(0.02)
    assert delta(m1, m0, "parrot_pipelined_prefix_uses_total") >= 1
    if graph is _map_reduce:
        assert delta(m1, m0, "parrot_prefix_hits_total") >= 3  # the maps' shared instructions
    computed = delta(m1, m0, "parrot_prefill_tokens_total")
    assert computed + delta(m1, m0, "parrot_cached_tokens_total") == prompt


def test_ablation_flags_switch_the_optimisations_off(
    tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory, engine: LLMEngine
) -> None:
    log = tmp_path_factory.mktemp("ablation") / "server.log"
    flags = ["--no-prefix-cache", "--disable-prefix-sharing", "--no-pipelined-prefill",
             "--no-app-scheduling"]  # fmt: skip
    with ServerProcess(tiny_llama_path, *flags, log_path=log) as srv:
        asked = [ask(srv.url, q) for q in ("What is the main claim?", "Which method is used?")]
        answers = [value(srv.url, sid, token, "a")["value"] for sid, token in asked]
        samples = metrics(srv.url)
    assert answers[1] == greedy(engine, SYSTEM + "Which method is used?\nAssistant:", 6)
    system_tokens = len(engine.tokenizer.encode(SYSTEM))
    assert samples["parrot_prefill_tokens_total"] >= 2 * system_tokens  # computed twice
    for name in ("parrot_prefix_fills_total", "parrot_prefix_hits_total",
                 "parrot_pipelined_prefill_tokens_total"):  # fmt: skip
        assert samples[name] == 0
    # request-level scheduling: one priority for all, whatever the client awaits
    assert samples['parrot_calls_started_total{engine="0",priority="1"}'] == 2
    assert not any('priority="0"' in k for k in samples)


def test_no_pipelined_prefill_fills_nothing_ahead(
    tiny_llama_path: Path, tmp_path: Path, engine: LLMEngine
) -> None:
    """The flag alone (prefix sharing stays on): a waiting call's ready prefix is not filled
    before its input arrives, and the answer is unchanged. (The ablation test above cannot tell:
    its calls never wait, and --disable-prefix-sharing turns pipelining off as well.)"""
    head, calls = draft_and_refine(draft_tokens=120)
    flags = ("--no-prefix-cache", "--no-pipelined-prefill")
    with ServerProcess(tiny_llama_path, *flags, log_path=tmp_path / "server.log") as srv:
        sid, token = open_session(srv.url)
        submit(srv.url, sid, token, [{"id": "prev"}, {"id": "s"}], calls,
               [{"variable": "s", "criteria": "latency"}])  # fmt: skip
        got = value(srv.url, sid, token, "s")["value"]
        prev = value(srv.url, sid, token, "prev")["value"]
        samples = metrics(srv.url)
    assert got == greedy(engine, head + prev + "\nNew summary:", 6)
    assert samples["parrot_pipelined_prefill_tokens_total"] == 0
    assert samples["parrot_pipelined_prefix_uses_total"] == 0


def test_a_stored_base_evicted_before_its_pipelined_fork_is_not_forked(
    tiny_llama_path: Path, engine: LLMEngine, tmp_path: Path
) -> None:
    """With room for one stored prefix, the base prefix that two waiting calls' early fills
    fork from is evicted before they run (by the other prefixes stored meanwhile). They fill
    from scratch instead of forking a closed context (which crashed their fill)."""
    log = tmp_path / "server.log"
    flags = ("--prefix-store-max-entries", "1", "--min-shared-prefix-tokens", "1")
    system = "You are a careful assistant that summarizes papers about learning theory.\n"
    with ServerProcess(tiny_llama_path, *flags, log_path=log) as srv:
        sid, token = open_session(srv.url)
        first = {"id": "c0", "template": system + "Doc: {{input:d}}\nAnswer: {{output:y}}",
                 "inputs": {"d": "x"}, "outputs": {"y": "y"},
                 "sampling": {"max_tokens": 4, "temperature": 0}}  # fmt: skip
        submit(srv.url, sid, token, [{"id": "x", "value": "overfitting"}, {"id": "y"}], [first],
               [])  # fmt: skip
        assert value(srv.url, sid, token, "y")["status"] == "ready"
        sid, token = open_session(srv.url)
        lead = "Completely different leading text that is long enough to be stored. "
        readers = [
            {"id": f"B{i}", "template": system + "Doc: {{input:d}}\nHint: {{input:a}}\nAnswer:"
             "{{output:b}}", "inputs": {"d": f"d{i}", "a": "a"}, "outputs": {"b": f"b{i}"},
             "sampling": {"max_tokens": 6, "temperature": 0}}
            for i in (1, 2)
        ]  # fmt: skip
        calls = [{"id": "A", "template": lead + "{{output:a}}", "inputs": {}, "outputs": {"a": "a"},
                  "sampling": {"max_tokens": 8, "temperature": 0}}, *readers]  # fmt: skip
        docs = {"d1": "first document about Bayes complexity", "d2": "second document"}
        variables = [{"id": k, "value": v} for k, v in docs.items()]
        variables += [{"id": v} for v in ("a", "b1", "b2")]
        submit(srv.url, sid, token, variables, calls, [])
        a = value(srv.url, sid, token, "a")["value"]
        assert a == greedy(engine, lead, 8)
        for i in (1, 2):
            prompt = f"{system}Doc: {docs[f'd{i}']}\nHint: {a}\nAnswer:"
            assert value(srv.url, sid, token, f"b{i}")["value"] == greedy(engine, prompt, 6)
    text = log.read_text()
    assert "Traceback" not in text and "no context" not in text, text[-3000:]
