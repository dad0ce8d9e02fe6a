"""The native Semantic Variable API against a live server with a tiny random model."""

from __future__ import annotations

import importlib.metadata
import json
import re
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from server.engine import LLMEngine, SamplingParams
from server.launcher import ServerProcess
from tests.server.http_client import events, metrics, request

pytestmark = pytest.mark.slow

ARTICLE = Path(__file__).resolve().parents[2].parent / "shared/data/arxiv-march-2023/article_0.txt"


@pytest.fixture(scope="module")
def server(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("native") / "server.log"
    with ServerProcess(tiny_llama_path, log_path=log) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def engine(tiny_llama_path: Path) -> LLMEngine:
    """The reference: the same model, prompts run one by one as plain greedy requests."""
    return LLMEngine.from_pretrained(str(tiny_llama_path))


def greedy(engine: LLMEngine, text: str, max_tokens: int, stop: list[str] | None = None) -> str:
    ids = engine.tokenizer.encode(text)
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0, stop=stop or [])
    return engine.generate([ids], sampling)[0].text


def open_session(url: str) -> tuple[str, str]:
    status, body = request("POST", url + "/v1/sessions", {"name": "test"})
    assert status == 201, body
    return body["session_id"], body["token"]


def submit(url: str, sid: str, token: str, body: dict) -> tuple[int, dict]:
    return request("POST", f"{url}/v1/sessions/{sid}/graph", body, token)


def get_var(url: str, sid: str, token: str, vid: str, timeout: float = 60) -> dict:
    status, body = request(
        "GET", f"{url}/v1/sessions/{sid}/variables/{vid}?timeout={timeout}", token=token
    )
    assert status == 200, body
    return body


def call(cid: str, template: str, inputs: dict, outputs: dict, max_tokens: int = 6) -> dict:
    return {
        "id": cid,
        "function": cid.split("-")[0],
        "template": template,
        "inputs": inputs,
        "outputs": outputs,
        "sampling": {"max_tokens": max_tokens, "temperature": 0},
    }


def test_fan_out_fan_in_prefills_the_document_once(server: str, engine: LLMEngine) -> None:
    doc = ARTICLE.read_text()[2000:3000]
    ask = "Document:\n{{input:doc}}\nQuestion {{input:q}}: what is it about?\nAnswer:{{output:a}}"
    calls = [call(f"ask-{i}", ask, {"doc": "doc", "q": f"q{i}"}, {"a": f"a{i}"}) for i in range(8)]
    joined = " | ".join(f"{{{{input:a{i}}}}}" for i in range(8))
    calls.append(
        call("join", f"Answers: {joined}\nVerdict:{{{{output:v}}}}",
             {f"a{i}": f"a{i}" for i in range(8)}, {"v": "v"})
    )  # fmt: skip
    variables = [{"id": "doc", "name": "doc", "value": doc}, {"id": "v"}]
    variables += [{"id": f"q{i}", "value": str(i + 1)} for i in range(8)]
    variables += [{"id": f"a{i}"} for i in range(8)]
    sid, token = open_session(server)
    before = metrics(server)
    status, body = submit(
        server, sid, token, {"variables": variables, "calls": calls,
                             "awaits": [{"variable": "v", "criteria": "latency"}]}
    )  # fmt: skip
    assert status == 200, body
    assert sorted(body["ready_calls"]) == sorted(f"ask-{i}" for i in range(8))
    final = get_var(server, sid, token, "v")
    assert final["status"] == "ready" and final["producer"] == "join"
    after = metrics(server)

    prompts = [f"Document:\n{doc}\nQuestion {i + 1}: what is it about?\nAnswer:" for i in range(8)]
    answers = [greedy(engine, p, 6) for p in prompts]
    for i, expected in enumerate(answers):
        assert get_var(server, sid, token, f"a{i}")["value"] == expected
    assert final["value"] == greedy(engine, f"Answers: {' | '.join(answers)}\nVerdict:", 6)

    ids = [engine.tokenizer.encode(p) for p in prompts]
    shared = next(n for n in range(len(ids[0])) if len({tuple(x[: n + 1]) for x in ids}) > 1)
    doc_tokens = len(engine.tokenizer.encode(doc))
    assert shared >= doc_tokens  # the document is inside the shared run
    own = sum(len(x) - shared for x in ids)
    final_prompt = len(engine.tokenizer.encode(f"Answers: {' | '.join(answers)}\nVerdict:"))
    prefill = after["parrot_prefill_tokens_total"] - before["parrot_prefill_tokens_total"]
    cached = after["parrot_cached_tokens_total"] - before["parrot_cached_tokens_total"]
    prompt = after["parrot_prompt_tokens_total"] - before["parrot_prompt_tokens_total"]
    assert prompt == sum(len(x) for x in ids) + final_prompt
    # the shared run (document included) once, each call's own tail, the final prompt; and per
    # call one recomputed last token (the engine keeps no logits of a fill for the generate)
    assert prefill <= shared + own + final_prompt + 9
    assert cached >= 7 * shared
    assert prefill < sum(len(x) for x in ids) - 6 * doc_tokens


def test_several_outputs_see_the_tokens_a_plain_request_would(
    server: str, engine: LLMEngine
) -> None:
    template = "Story: {{input:s}}\nName:{{output:name}}\nAge:{{output:age}}"
    sid, token = open_session(server)
    status, body = submit(
        server, sid, token,
        {"variables": [{"id": "s", "value": "a parrot named Polly"}, {"id": "n"}, {"id": "g"}],
         "calls": [call("who", template, {"s": "s"}, {"name": "n", "age": "g"}, 8)]},
    )  # fmt: skip
    assert status == 200, body
    age_info = get_var(server, sid, token, "g")
    name_info = get_var(server, sid, token, "n")
    age, name = age_info["value"], name_info["value"]
    prefix = "Story: a parrot named Polly\nName:"
    assert name == greedy(engine, prefix, 8, stop=["\nAge:"])
    assert age == greedy(engine, prefix + name + "\nAge:", 8)
    # each output reports its usage as a plain request of its prompt would
    asked = ((name_info, prefix, ["\nAge:"]), (age_info, prefix + name + "\nAge:", []))
    for info, text, stop in asked:
        ids = engine.tokenizer.encode(text)
        ref = engine.generate([ids], SamplingParams(max_tokens=8, temperature=0, stop=stop))[0]
        usage = dict(info["usage"])
        cached = usage.pop("prompt_tokens_details")["cached_tokens"]
        assert usage == {"prompt_tokens": len(ids), "completion_tokens": len(ref.token_ids),
                         "total_tokens": len(ids) + len(ref.token_ids)}  # fmt: skip
        assert 0 <= cached < len(ids)
        assert info["finish_reason"] == ref.finish_reason
    # the second output's prompt holds the first's, which the call computed before it
    cached = [i["usage"]["prompt_tokens_details"]["cached_tokens"] for i, _, _ in asked]
    first_prompt = len(engine.tokenizer.encode(prefix))
    assert cached[1] >= first_prompt - 2 > cached[0]
    assert get_var(server, sid, token, "s")["usage"] is None


def test_penalties_and_logit_bias_apply_to_graph_calls(server: str, engine: LLMEngine) -> None:
    sid, token = open_session(server)
    spec = call("pen", "List animals:{{output:y}}", {}, {"y": "y"}, 10)
    spec["sampling"] |= {"frequency_penalty": -2.0, "presence_penalty": 0.5,
                         "logit_bias": {"123": 100}}  # fmt: skip
    assert submit(server, sid, token, {"variables": [{"id": "y"}], "calls": [spec]})[0] == 200
    ids = engine.tokenizer.encode("List animals:")
    sampling = SamplingParams(max_tokens=10, temperature=0, frequency_penalty=-2.0,
                              presence_penalty=0.5, logit_bias={123: 100.0})  # fmt: skip
    assert get_var(server, sid, token, "y")["value"] == engine.generate([ids], sampling)[0].text
    assert get_var(server, sid, token, "y")["value"] != greedy(engine, "List animals:", 10)


def test_stripped_inputs_fill_the_stripped_text_and_keep_the_value(
    server: str, engine: LLMEngine
) -> None:
    template = "About {{input:d|strip}}, {{input:d}}:{{input:x|strip}}.{{output:b}}"
    sid, token = open_session(server)
    status, body = submit(
        server, sid, token,
        {"variables": [{"id": "d", "value": "\n  a parrot \t"}, {"id": "a"}, {"id": "b"}],
         "calls": [call("say", "Say:{{output:a}}", {}, {"a": "a"}),
                   call("use", template, {"d": "d", "x": "a"}, {"b": "b"})]},
    )  # fmt: skip
    assert status == 200, body
    said = get_var(server, sid, token, "a")["value"]
    assert said == greedy(engine, "Say:", 6)  # the variable keeps its edges
    prompt = "About a parrot, \n  a parrot \t:" + said.strip() + "."
    assert get_var(server, sid, token, "b")["value"] == greedy(engine, prompt, 6)
    assert get_var(server, sid, token, "d")["value"] == "\n  a parrot \t"


def test_stream_sends_chunks_then_the_value(server: str) -> None:
    sid, token = open_session(server)
    body = {
        "variables": [{"id": "x", "value": "hello"}, {"id": "y"}],
        "calls": [call("echo", "Say {{input:x}}:{{output:y}}", {"x": "x"}, {"y": "y"}, 12)],
    }
    assert submit(server, sid, token, body)[0] == 200
    got = events(f"{server}/v1/sessions/{sid}/variables/y/stream?criteria=latency", token)
    kinds = [e for e, _ in got]
    assert kinds[-1] == "done" and set(kinds[:-1]) <= {"chunk"}
    assert "".join(d["text"] for e, d in got if e == "chunk") == got[-1][1]["value"]
    assert events(f"{server}/v1/sessions/{sid}/variables/x/stream", token) == [
        ("chunk", {"text": "hello"}),
        ("done", {"id": "x", "name": None, "status": "ready", "value": "hello", "error": None,
                  "producer": None, "usage": None, "finish_reason": None, "message": None}),
    ]  # fmt: skip


def test_a_failed_call_fails_downstream_with_the_cause_and_spares_the_rest(server: str) -> None:
    sid, token = open_session(server)
    huge = ARTICLE.read_text()[:6000]
    body = {
        "variables": [{"id": "big", "value": huge}, {"id": "small", "value": "ok"},
                      {"id": "x"}, {"id": "y"}, {"id": "z"}],
        "calls": [
            call("A", "{{input:big}} {{output:x}}", {"big": "big"}, {"x": "x"}),
            call("B", "Then {{input:x}} {{output:y}}", {"x": "x"}, {"y": "y"}),
            call("C", "Also {{input:small}} {{output:z}}", {"small": "small"}, {"z": "z"}),
        ],
    }  # fmt: skip
    assert submit(server, sid, token, body)[0] == 200
    x, y = get_var(server, sid, token, "x"), get_var(server, sid, token, "y")
    assert x["status"] == "failed" and "call 'A' (A) failed: its prompt has" in x["error"]
    assert "context of 1024 tokens" in x["error"]
    assert y["status"] == "failed" and "upstream call 'A' (A) failed" in y["error"]
    assert get_var(server, sid, token, "z")["status"] == "ready"
    got = events(f"{server}/v1/sessions/{sid}/variables/y/stream", token)
    assert got[-1][0] == "error" and "upstream call 'A'" in got[-1][1]["error"]["message"]


def test_a_later_output_whose_prompt_overflows_is_named_and_the_first_is_kept(
    server: str, engine: LLMEngine
) -> None:
    sid, token = open_session(server)
    words = ARTICLE.read_text().split()
    # a prompt of ~1000 tokens: the first output fits, its 40 tokens push the second out
    text = next(" ".join(words[:n]) for n in range(100, len(words))
                if len(engine.tokenizer.encode(" ".join(words[:n]))) > 990)  # fmt: skip
    two = call("two", "{{input:t}} A:{{output:a}} B:{{output:b}}", {"t": "t"}, {"a": "a", "b": "b"},
               max_tokens=40)  # fmt: skip
    two["sampling"]["ignore_eos"] = True
    body = {"variables": [{"id": "t", "value": text}, {"id": "a"}, {"id": "b"}], "calls": [two]}
    assert submit(server, sid, token, body)[0] == 200
    b = get_var(server, sid, token, "b")
    assert b["status"] == "failed" and "its prompt up to output 'b' has" in b["error"], b
    assert get_var(server, sid, token, "a")["status"] == "ready"


def test_variables_set_later_release_their_calls(server: str) -> None:
    sid, token = open_session(server)
    base = f"{server}/v1/sessions/{sid}/variables"
    status, var = request("POST", base, {"name": "late"}, token)
    assert status == 201 and var["status"] == "pending"
    assert get_var(server, sid, token, var["id"], timeout=0.1)["status"] == "pending"
    status, body = request("PUT", f"{base}/{var['id']}", {"value": "now"}, token)
    assert status == 200 and body["value"] == "now"
    body = {
        "variables": [{"id": "o"}],
        "calls": [call("use", "Use {{input:v}}:{{output:o}}", {"v": var["id"]}, {"o": "o"})],
    }
    assert submit(server, sid, token, body)[0] == 200
    assert get_var(server, sid, token, "o")["status"] == "ready"
    status, err = request("PUT", f"{base}/o", {"value": "x"}, token)
    assert status == 409 and "is written by call 'use'" in err["error"]["message"]
    status, info = request("GET", f"{server}/v1/sessions/{sid}", token=token)
    assert status == 200 and info["calls"]["done"] == 1 and info["variables"] == 2


def test_a_call_reading_a_variable_the_client_sets_later(server: str, engine: LLMEngine) -> None:
    """The Parrot paper's workflow: a call reads a variable declared with no value, and waits in
    the session (its constant text before the input filled ahead meanwhile) until the client
    PUTs the value; a read that times out meanwhile says which variable the client owes."""
    head = "Answer in the voice of a referee.\n" + ARTICLE.read_text()[7000:7600] + "\nQuestion: "
    ask = call("ask", head + "{{input:q}}\nAnswer:{{output:a}}", {"q": "q"}, {"a": "a"})
    echo = call("echo", "Repeat: {{input:a}}\nAgain:{{output:b}}", {"a": "a"}, {"b": "b"})
    sid, token = open_session(server)
    m0 = metrics(server)
    status, body = submit(server, sid, token, {
        "variables": [{"id": "q", "name": "question"}, {"id": "a"}, {"id": "b"}],
        "calls": [ask, echo], "awaits": [{"variable": "b", "criteria": "latency"}]})  # fmt: skip
    assert status == 200 and body["ready_calls"] == [], body
    head_tokens = len(engine.tokenizer.encode(head))
    deadline = time.monotonic() + 30
    while metrics(server).get("parrot_pipelined_prefill_tokens_total", 0) - m0.get(
        "parrot_pipelined_prefill_tokens_total", 0
    ) < head_tokens - 2:  # all of it but the tokens an early fill leaves at the boundary
        assert time.monotonic() < deadline, "the text before the unset input was not filled ahead"
        time.sleep(0.05)
    put = f"PUT /v1/sessions/{sid}/variables/q"
    for var, said in [("b", "variable 'b' waits on variable 'q' (question), which the client "
                            f"has not set ({put})"),
                      ("q", f"variable 'q' (question) has no value yet: the client has not set "
                            f"it ({put})")]:  # fmt: skip
        info = get_var(server, sid, token, var, timeout=0.2)
        assert info["status"] == "pending" and info["message"] == said, info
    status, info = request("GET", f"{server}/v1/sessions/{sid}", token=token)
    assert info["calls"]["waiting"] == 2

    m1 = metrics(server)
    status, _ = request("PUT", f"{server}/v1/sessions/{sid}/variables/q", {"value": "Why?"}, token)
    assert status == 200
    a, b = get_var(server, sid, token, "a"), get_var(server, sid, token, "b")
    m2 = metrics(server)
    assert a["status"] == b["status"] == "ready" and a["message"] is None
    assert delta(m2, m1, "parrot_pipelined_prefix_uses_total") == 1
    assert a["usage"]["prompt_tokens_details"]["cached_tokens"] >= head_tokens - 2
    # the same answers as a submission with the value given up front, and as plain requests
    sid2, token2 = open_session(server)
    status, _ = submit(server, sid2, token2, {
        "variables": [{"id": "q", "name": "question", "value": "Why?"}, {"id": "a"}, {"id": "b"}],
        "calls": [ask, echo]})  # fmt: skip
    assert status == 200
    assert get_var(server, sid2, token2, "a")["value"] == a["value"]
    assert get_var(server, sid2, token2, "b")["value"] == b["value"]
    assert a["value"] == greedy(engine, head + "Why?\nAnswer:", 6)
    assert b["value"] == greedy(engine, f"Repeat: {a['value']}\nAgain:", 6)
    status, err = request("PUT", f"{server}/v1/sessions/{sid}/variables/q", {"value": "x"}, token)
    assert status == 409 and err["error"]["code"] == "already_set"


def delta(after: dict, before: dict, name: str) -> float:
    return after.get(name, 0) - before.get(name, 0)


def test_a_read_waiting_when_its_session_closes_is_told_so(server: str) -> None:
    import threading

    sid, token = open_session(server)
    status, var = request("POST", f"{server}/v1/sessions/{sid}/variables", {"name": "late"}, token)
    assert status == 201
    answers: list[tuple[int, dict, float]] = []

    def read() -> None:
        start = time.monotonic()
        status, body = request(
            "GET", f"{server}/v1/sessions/{sid}/variables/{var['id']}?timeout=30", token=token
        )
        answers.append((status, body, time.monotonic() - start))

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    assert request("DELETE", f"{server}/v1/sessions/{sid}", token=token)[0] == 200
    reader.join(20)
    [(status, body, waited)] = answers
    assert status == 404 and "was closed while the request waited" in body["error"]["message"]
    assert waited < 10  # woken by the close, not at the end of its long poll


@pytest.mark.parametrize("route", ["PUT /variables/doc", "POST /variables"])
def test_a_write_whose_body_comes_after_its_session_closed_is_refused(
    server: str, route: str
) -> None:
    """A value PUT (or a variable declared) whose body was still on its way when the session
    was closed (a large document, a client that waits for 100-continue) was answered 200
    (201) as taken, its value gone with the session: the client could not tell it was lost."""
    sid, token = open_session(server)
    status, _ = submit(server, sid, token, {"variables": [{"id": "doc"}], "calls": []})
    assert status == 200
    method, path = route.split()
    data = json.dumps({"value": "a document " * 50}).encode()
    host, port = urlsplit(server).hostname, urlsplit(server).port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            f"{method} /v1/sessions/{sid}{path} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        time.sleep(0.3)  # its handler has found the session and waits for the body
        assert request("DELETE", f"{server}/v1/sessions/{sid}", token=token)[0] == 200
        sock.sendall(data)
        head, _, body = sock.recv(65536).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404"), head
    assert "was closed" in json.loads(body)["error"]["message"]


def test_a_long_poll_whose_client_leaves_ends_then_not_at_its_timeout(server: str) -> None:
    sid, token = open_session(server)
    status, var = request("POST", f"{server}/v1/sessions/{sid}/variables", {"name": "late"}, token)
    assert status == 201

    def left() -> float:  # long polls counted as ended with "client closed request"
        counts = metrics(server).items()
        name = "parrot_http_requests_total"
        return sum(v for k, v in counts if k.startswith(name) and 'status="499"' in k)

    before = left()
    hang_up(server, f"/v1/sessions/{sid}/variables/{var['id']}?timeout=300", token)
    assert ended_within(lambda: left() >= before + 1, 10) and left() == before + 1


def test_a_stream_whose_client_leaves_ends_then_not_at_its_next_chunk(server: str) -> None:
    """A stream of a variable that is not being generated writes nothing: a client that hangs
    up is noticed anyway and the handler ends (its call, the session's, would run on)."""
    sid, token = open_session(server)
    status, var = request("POST", f"{server}/v1/sessions/{sid}/variables", {"name": "late"}, token)
    assert status == 201

    def ended() -> float:  # streams whose handler has returned, whatever their status
        return sum(v for k, v in metrics(server).items()
                   if k.startswith("parrot_http_requests_total") and "/stream" in k)  # fmt: skip

    before = ended()
    # the stream is open, and idle, when the client hangs up
    first = hang_up(server, f"/v1/sessions/{sid}/variables/{var['id']}/stream", token, 10)
    assert first.startswith(b"HTTP/1.1 200")
    assert ended_within(lambda: ended() >= before + 1, 10) and ended() == before + 1


def hang_up(server: str, path: str, token: str, wait_s: float = 0.3) -> bytes:
    """GET `path` on a raw connection, read what first comes back (waiting `wait_s` at most),
    and close it: a client that leaves."""
    host, port = urlsplit(server).hostname, urlsplit(server).port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        sock.settimeout(wait_s)
        try:
            return sock.recv(4096)
        except TimeoutError:
            return b""


def ended_within(done: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    return done()


BAD_GRAPHS = [
    ("unknown_variable", {"calls": [call("A", "{{input:x}} {{output:y}}", {"x": "ghost"},
                                         {"y": "ok"})]}, ["call 'A' (A)", "'ghost'"]),
    ("two_producers", {"calls": [call("A", "a {{output:y}}", {}, {"y": "ok"}),
                                 call("B", "b {{output:y}}", {}, {"y": "ok"})]},
     ["call 'B' (B)", "'ok'", "already has a producer (call 'A' (A))"]),
    ("cycle", {"variables": [{"id": "p"}],
               "calls": [call("A", "{{input:x}} {{output:y}}", {"x": "p"}, {"y": "ok"}),
                         call("B", "{{input:x}} {{output:y}}", {"x": "ok"}, {"y": "p"})]},
     ["cycle", "call 'A' (A)", "call 'B' (B)"]),
    ("invalid_template", {"calls": [call("A", "Hi {{inptu:x}} {{output:y}}", {}, {"y": "ok"})]},
     ["call 'A' (A): invalid template: line 1, column 4: unknown marker kind 'inptu'"]),
    ("invalid_template", {"variables": [{"id": "d", "value": "x"}],
                          "calls": [call("A", "Hi {{input:x|upper}} {{output:y}}", {"x": "d"},
                                         {"y": "ok"})]},
     ["call 'A' (A): invalid template: line 1, column 4: unknown transform 'upper' in "
      "'{{input:x|upper}}' (known: strip)"]),
]  # fmt: skip


@pytest.mark.parametrize(("code", "graph", "needles"), BAD_GRAPHS, ids=[b[0] for b in BAD_GRAPHS])
def test_bad_graphs_are_rejected_whole_and_the_server_goes_on(
    server: str, code: str, graph: dict, needles: list[str]
) -> None:
    sid, token = open_session(server)
    graph = {**graph, "variables": [*graph.get("variables", []), {"id": "ok"}]}
    status, body = submit(server, sid, token, graph)
    assert status == 400, body
    assert body["error"]["code"] == code and body["error"]["type"] == "invalid_request_error"
    for needle in needles:
        assert needle in body["error"]["message"]
    # atomic: not even the valid variable of that submission exists
    status, _ = request("GET", f"{server}/v1/sessions/{sid}/variables/ok?timeout=0", token=token)
    assert status == 404
    good = {"variables": [{"id": "ok"}], "calls": [call("G", "fine {{output:y}}", {}, {"y": "ok"})]}
    assert submit(server, sid, token, good)[0] == 200
    assert get_var(server, sid, token, "ok")["status"] == "ready"


BAD_SAMPLING = [
    ({"stop": [""]}, "stop strings must be non-empty"),
    ({"stop": ["s"] * 257}, "at most 256 stop strings are taken, got 257"),
    ({"stop": ["x" * 5000]}, "a stop string is at most 4096 characters, got one of 5000"),
    ({"grammar": 'root ::= "a" | "b'}, "grammar line 1, column 16: an unclosed string"),
    ({"grammar": "root ::= x"}, "the rule 'x' is used but not defined"),
    ({"grammar": 'root ::= root "a"'}, "the rule 'root' can never end"),
    ({"grammar": "root ::= [^\\x00-\\U0010FFFF]"}, "the rule 'root' can never end"),
    ({"regex": "[^\x00-\U0010ffff]"}, "matches no text"),
    ({"regex": r"(a)\1"}, "the escape \\1 at 5"),
    ({"json_schema": {"type": "string", "multipleOf": 3}}, "multipleOf cannot be enforced"),
    ({"max_tokens": 10**7}, "max_tokens 10000000 exceeds the model's context of"),
    ({"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
    ({"logit_bias": {"\u0663": 1}}, "logit_bias: '\u0663' is not a token id of this model"),
    ({"logit_bias": {"99999": 1}}, "logit_bias: '99999' is not a token id of this model"),
    ({"top_p": 0}, "top_p: Input should be greater than 0"),
    # vLLM's rule, as the OpenAI routes' and the SDK's: -1 or 0 is no top-k (any int passed)
    ({"top_k": -2}, "top_k: Input should be greater than or equal to -1"),
    (7, "Input should be a valid dictionary"),
    # found by fuzzing: a schema keyword or a grammar cut short, each once a 500 of the whole
    # submission
    ({"json_schema": {"type": "object", "properties": {"a": {}}, "required": 5}},
     "#: required must be a list of property names"),
    ({"json_schema": {"type": "object", "properties": {"a": {"type": 1.5}}}},
     "#/properties/a: type must name object"),
    ({"grammar": "root ::= [a-"}, "line 1, column 10: an unclosed character class"),
]


@pytest.mark.parametrize(("sampling", "needle"), BAD_SAMPLING, ids=[b[1][:24] for b in BAD_SAMPLING])
def test_a_call_with_sampling_the_server_cannot_follow_fails_alone(
    server: str, sampling: object, needle: str
) -> None:
    """Its outputs and its readers fail, naming the call and its function; the rest of the
    submission runs."""
    sid, token = open_session(server)
    bad = {**call("bad-1", "a {{output:y}}", {}, {"y": "b"}), "sampling": sampling}
    graph = {"variables": [{"id": v} for v in ("s", "b", "d")],
             "calls": [call("sib-1", "s {{output:y}}", {}, {"y": "s"}), bad,
                       call("dep-1", "{{input:x}} {{output:y}}", {"x": "b"}, {"y": "d"})]}
    status, body = submit(server, sid, token, graph)
    assert status == 200, body
    assert body["ready_calls"] == ["sib-1"] and set(body["failed_calls"]) == {"bad-1"}
    assert body["failed_calls"]["bad-1"].startswith("invalid sampling: ")
    assert needle in body["failed_calls"]["bad-1"]
    failed = get_var(server, sid, token, "b")
    assert failed["status"] == "failed"
    assert failed["error"].startswith("call 'bad-1' (bad) failed: invalid sampling: ")
    assert needle in failed["error"]
    dep = get_var(server, sid, token, "d")
    assert dep["status"] == "failed" and "upstream call 'bad-1' (bad)" in dep["error"]
    assert get_var(server, sid, token, "s")["status"] == "ready"


def test_bad_requests_get_clear_errors(server: str) -> None:
    sid, token = open_session(server)
    other_sid, other_token = open_session(server)
    graph_url = f"{server}/v1/sessions/{sid}/graph"
    cases = [
        (request("POST", graph_url, raw=b"{not json", token=token), 400, "not valid JSON"),
        (request("POST", graph_url, {"calls": [{"id": "A", "template": "{{output:y}}",
                 "outputs": {"y": "v"}, "inputs": []}]}, token),
         400, "calls.0.inputs: Input should be a valid dictionary"),
        (request("POST", graph_url, {"calls": [], "bogus": 1}, token), 400, "bogus"),
        (request("POST", graph_url, {}), 401, "needs its token"),
        (request("POST", graph_url, {}, other_token), 403, "does not open session"),
        # a token that is no UTF-8 (bytes sent as they are): a wrong token, not a 500
        (request("GET", f"{server}/v1/sessions/{sid}", token="\xff\xfe"), 403,
         "does not open session"),
        (request("POST", f"{server}/v1/sessions/s-nope/graph", {}, token), 404, "'s-nope'"),
        (request("GET", f"{server}/v1/sessions/{sid}/variables/nope", token=token), 404,
         "variable 'nope' does not exist"),
        (request("GET", f"{server}/v1/sessions/{sid}/variables/nope?timeout=x", token=token), 400,
         "timeout"),
        (request("GET", f"{server}/v1/nothing"), 404, "no route GET /v1/nothing"),
        (request("DELETE", f"{server}/v1/models"), 405, "not allowed"),
    ]  # fmt: skip
    for (status, body), want_status, needle in cases:
        assert status == want_status, body
        assert needle in body["error"]["message"], body
    assert request("GET", f"{server}/v1/sessions/{other_sid}", token=other_token)[0] == 200
    assert request("DELETE", f"{server}/v1/sessions/{sid}", token=token)[0] == 200
    assert request("GET", f"{server}/v1/sessions/{sid}", token=token)[0] == 404
    assert request("GET", f"{server}/healthz")[1]["status"] == "ok"


def test_text_that_is_no_text_is_refused_before_anything_is_applied(server: str) -> None:
    """Half a UTF-16 pair is valid JSON but no character: named in a 400, with nothing
    applied, and every other session goes on (it once jammed the shared admission queue)."""
    sid, token = open_session(server)
    graph = {"variables": [{"id": "doc", "value": "PLACEHOLDER"}, {"id": "out"}],
             "calls": [call("A", "Echo {{input:d}} {{output:y}}", {"d": "doc"}, {"y": "out"})]}
    raw = json.dumps(graph).replace("PLACEHOLDER", "bad \\ud800 text").encode()
    status, body = request("POST", f"{server}/v1/sessions/{sid}/graph", raw=raw, token=token)
    assert status == 400 and body["error"]["param"] == "variables.0.value", body
    status, _ = request("GET", f"{server}/v1/sessions/{sid}/variables/out?timeout=0", token=token)
    assert status == 404
    raw = b'{"value": "\\udfff"}'
    assert request("POST", f"{server}/v1/sessions/{sid}/variables", {"id": "late"}, token)[0] in (
        200, 201)  # fmt: skip
    status, body = request("PUT", f"{server}/v1/sessions/{sid}/variables/late", raw=raw,
                           token=token)  # fmt: skip
    assert status == 400 and body["error"]["param"] == "value", body
    other, other_token = open_session(server)
    good = {"variables": [{"id": "ok"}], "calls": [call("G", "fine {{output:y}}", {}, {"y": "ok"})]}
    assert submit(server, other, other_token, good)[0] == 200
    assert get_var(server, other, other_token, "ok", timeout=30)["status"] == "ready"


def test_ops_routes(server: str) -> None:
    status, health = request("GET", server + "/healthz")
    assert status == 200 and health["max_model_len"] == 1024
    assert health["engines"] == health["engines_running"] == 1
    # vLLM's probes: an empty 200, and the version
    with urllib.request.urlopen(server + "/health", timeout=30) as resp:
        assert resp.status == 200 and resp.read() == b""
    status, version = request("GET", server + "/version")
    assert status == 200 and version["version"] == importlib.metadata.version("parrot-serve")
    samples = metrics(server)
    for name in ["parrot_prompt_tokens_total", "parrot_prefill_tokens_total",
                 "parrot_cached_tokens_total", "parrot_generated_tokens_total",
                 "parrot_kv_free_blocks", "parrot_graph_submissions_total",
                 "parrot_engine_contexts", "parrot_engine_jobs"]:  # fmt: skip
        assert name in samples
    assert samples['parrot_http_requests_total{route="/healthz",status="200"}'] >= 1
    assert 0 < samples["parrot_kv_free_blocks"] <= samples["parrot_kv_total_blocks"]
    status, doc = request("GET", server + "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert "/v1/sessions/{session_id}/graph" in doc["paths"]
    assert "GraphSubmission" in doc["components"]["schemas"]


def test_call_latencies_are_observed_by_the_priority_deduced(server: str) -> None:
    def counts(kind: str) -> dict[str, float]:
        return {
            p: metrics(server).get(f'parrot_call_{kind}_seconds_count{{priority="{p}"}}', 0)
            for p in ("0", "1", "2")
        }

    queue_before, latency_before = counts("queue"), counts("latency")
    sid, token = open_session(server)
    graph = {
        "variables": [{"id": "doc", "value": "Parrots talk."}, {"id": "s"}, {"id": "t"}],
        "calls": [
            call("sum-1", "Doc: {{input:doc}} Sum:{{output:s}}", {"doc": "doc"}, {"s": "s"}),
            call("title-1", "Sum: {{input:s}} Title:{{output:t}}", {"s": "s"}, {"t": "t"}),
        ],
        "awaits": [{"variable": "t", "criteria": "latency"}],
    }
    assert submit(server, sid, token, graph)[0] == 200
    assert get_var(server, sid, token, "t")["status"] == "ready"
    queue_after, latency_after = counts("queue"), counts("latency")
    # both calls lie on the awaited variable's path: latency-critical (priority 0)
    assert queue_after["0"] - queue_before["0"] == 2
    assert latency_after["0"] - latency_before["0"] == 2
    assert sum(queue_after.values()) - sum(queue_before.values()) == 2


def test_a_json_schema_output_keeps_the_schemas_property_order(
    server: str, engine: LLMEngine
) -> None:
    """The constraint writes properties in the schema's order (as chat's response_format does):
    a model reads what it wrote first, so "reason" before "answer" is the user's to choose."""
    schema = {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 4},
              "answer": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["reason", "answer"]}  # fmt: skip
    sid, token = open_session(server)
    spec = call("js", "Why? {{output:y}}", {}, {"y": "y"}, 30)
    spec["sampling"]["json_schema"] = schema
    assert submit(server, sid, token, {"variables": [{"id": "y"}], "calls": [spec]})[0] == 200
    value = get_var(server, sid, token, "y")["value"]
    sampling = SamplingParams(max_tokens=30, temperature=0, json_object=True, json_schema=schema)
    assert value == engine.generate([engine.tokenizer.encode("Why? ")], sampling)[0].text
    assert re.match(r'\s*\{\s*"reason"', value), value
