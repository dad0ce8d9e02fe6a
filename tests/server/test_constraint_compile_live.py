"""Heavy request work runs off the event loop: while a large grammar compiles, or a large
prompt is parsed, templated and tokenized, for about a second, the server still answers probes
(and streams) at once."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest

from server.engine import LLMEngine
from server.engine.grammar import compiled_grammar
from server.engine.json_schema import compile_schema
from tests.server.http_client import request
from tests.server.test_native_api import call, get_var, open_session

pytestmark = pytest.mark.slow
RULES = 9000  # ~1 s to compile here
T = TypeVar("T")


def big_grammar() -> str:
    tag = uuid.uuid4().hex[:6]  # one the server has not compiled yet
    names = [f"r{tag}{i}" for i in range(RULES)]
    rules = "\n".join(f'{n} ::= "w{i}" [a-z]' for i, n in enumerate(names))
    return "root ::= " + " ".join(names) + "\n" + rules


def compile_time() -> float:
    started = time.perf_counter()
    compiled_grammar(big_grammar())
    return time.perf_counter() - started


def assert_not_stalled(longest: float, took: float) -> None:
    """The longest probe wait stayed well under the work's own time (`took`, measured here),
    which it would reach were the work done on the event loop (1.25-1.47 s stalls then): under
    a third of it, and never asked below 0.3 s. The compiled automata pile up in the server's
    caches, and they once made its full garbage collections, which stop the loop too, take
    0.3-0.65 s; packed, they no longer do (tests/engine/test_char_nfa.py)."""
    assert longest < max(0.3, took / 3), (longest, took)


def longest_probe(url: str, body: dict, token: str | None = None) -> tuple[float, int]:
    """(the longest wait for GET /health while `body` is posted to `url`, the post's status)."""
    return longest_probe_while(url.split("/v1/")[0], lambda: request("POST", url, body, token)[0])


def longest_probe_while(server: str, work: Callable[[], T]) -> tuple[float, T]:
    """(the longest wait for GET /health while `work` runs in a thread, what it returned)."""
    done: dict[str, T] = {}
    worker = threading.Thread(target=lambda: done.setdefault("result", work()))
    worker.start()
    longest = 0.0
    while worker.is_alive():
        started = time.perf_counter()
        assert request("GET", server + "/health")[0] == 200
        longest = max(longest, time.perf_counter() - started)
        time.sleep(0.01)
    worker.join()
    return longest, done["result"]


@pytest.mark.parametrize(
    ("path", "prompt"),
    [("/v1/completions", {"prompt": "Hi"}),
     ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})],
)  # fmt: skip
def test_probes_are_answered_while_a_large_grammar_compiles(server: str, path: str, prompt):
    took = compile_time()
    body = {"model": "tiny", **prompt, "max_tokens": 2, "guided_grammar": big_grammar()}
    longest, status = longest_probe(server + path, body)
    assert status == 200
    assert_not_stalled(longest, took)


def test_a_graph_with_a_large_grammar_compiles_off_the_loop(server: str):
    took = compile_time()
    sid, token = open_session(server)
    spec = call("c", "Hi {{output:x}}", {}, {"x": "out"}, 2)
    spec["sampling"]["grammar"] = big_grammar()
    submission = {"variables": [{"id": "out"}], "calls": [spec]}
    longest, status = longest_probe(f"{server}/v1/sessions/{sid}/graph", submission, token)
    assert status == 200
    assert_not_stalled(longest, took)
    # the call runs with its grammar (and ends before the server stops)
    assert get_var(server, sid, token, "out")["status"] == "ready"


def patterned_schema() -> dict:
    """Two string patterns near the automaton's size cap, new to the server (~1 s here)."""
    tag = uuid.uuid4().hex[:6]
    words = {"type": "string", "pattern": f"^{tag}([a-z]{{1,100}} ){{1,240}}$"}
    digits = {"type": "string", "pattern": f"^{tag}([0-9]{{1,100}},){{1,240}}$"}
    return {"type": "object", "properties": {"words": words, "digits": digits}}


def enum_schema() -> dict:
    """A 300,000-value enum, new to the server (~0.5 s here), keys not in sorted order."""
    tag = uuid.uuid4().hex[:6]
    values = {"enum": [f"{tag}{i}" for i in range(300_000)]}
    return {"type": "object", "properties": {"z": values, "a": {"type": "integer"}}}


def schema_compile_time(make: Callable[[], dict]) -> float:
    started = time.perf_counter()
    compile_schema(make())
    return time.perf_counter() - started


def test_a_forced_tool_calls_parameters_compile_off_the_loop(server: str):
    """The schema a named tool call's arguments follow compiles with the request's other
    constraints, in the thread, not where its sampling is built."""
    took = schema_compile_time(patterned_schema)
    tool = {"type": "function", "function": {"name": "f", "parameters": patterned_schema()}}
    body = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}],
            "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f"}}}  # fmt: skip
    longest, status = longest_probe(server + "/v1/chat/completions", body)
    assert status == 200
    assert_not_stalled(longest, took)


def test_a_graph_calls_schema_compiles_off_the_loop_where_the_call_runs(server: str):
    """A graph call's schema compiles when the graph is checked and again where the call runs
    (keys sorted then; and a call that waited for its inputs may find it pushed out of the
    cache since): both in a thread."""
    took = schema_compile_time(enum_schema)
    sid, token = open_session(server)
    spec = call("c", "Hi {{output:x}}", {}, {"x": "out"}, 2)
    spec["sampling"]["json_schema"] = enum_schema()
    submission = {"variables": [{"id": "out"}], "calls": [spec]}

    def submit_and_read() -> dict:
        status, answer = request("POST", f"{server}/v1/sessions/{sid}/graph", submission, token)
        assert status == 200, answer
        return get_var(server, sid, token, "out")

    longest, out = longest_probe_while(server, submit_and_read)
    assert out["status"] == "ready", out
    assert_not_stalled(longest, took)


LONG_TEXT = " ".join(f"w{i}" for i in range(150_000))  # ~1 MB, ~1 s to tokenize here


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG_TEXT}]}, 400),
     ("/v1/completions", {"prompt": LONG_TEXT}, 400),
     ("/v1/responses", {"input": LONG_TEXT}, 400),
     ("/tokenize", {"prompt": LONG_TEXT}, 200)],
)  # fmt: skip
def test_probes_are_answered_while_a_long_prompt_is_tokenized(
    server: str, engine: LLMEngine, path: str, body: dict, status: int
):
    """A prompt far past the context is refused, and tokenizing it (in a worker thread, the
    tokenizer letting go of the GIL) does not stall the server meanwhile."""
    started = time.perf_counter()
    engine.tokenizer.encode(LONG_TEXT)
    took = time.perf_counter() - started
    def post() -> int:
        # the status only: decoding /tokenize's 2 MB answer here held this process's GIL and
        # stalled its own probes (0.3-0.45 s against 0.09-0.19 s posted by curl)
        data = json.dumps({"model": "tiny", **body}).encode()
        req = urllib.request.Request(server + path, data, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                resp.read()
                return resp.status
        except urllib.error.HTTPError as exc:
            exc.read()
            return exc.code

    longest, answered = longest_probe_while(server, post)
    assert answered == status
    assert_not_stalled(longest, took)


def test_probes_are_answered_while_a_graph_calls_long_input_is_tokenized(
    server: str, engine: LLMEngine
):
    """A graph call whose ready leading text is long (filled ahead while its other input is
    generated) and whose whole prompt is longer still: both are tokenized in a worker thread,
    and the call fails with its prompt's length."""
    started = time.perf_counter()
    engine.tokenizer.encode(LONG_TEXT)
    took = time.perf_counter() - started
    sid, token = open_session(server)
    first = call("a", "Say:{{output:l}}", {}, {"l": "later"}, 2)
    second = call("b", "Read {{input:doc}} then {{input:l}}:{{output:x}}",
                  {"doc": "doc", "l": "later"}, {"x": "out"}, 2)  # fmt: skip
    submission = {"variables": [{"id": "doc", "value": LONG_TEXT}, {"id": "later"},
                                {"id": "out"}], "calls": [first, second]}  # fmt: skip

    def run() -> dict:
        status, answer = request("POST", f"{server}/v1/sessions/{sid}/graph", submission, token)
        assert status == 200, answer
        return get_var(server, sid, token, "out")

    longest, out = longest_probe_while(server, run)
    assert out["status"] == "failed" and "tokens" in out["error"], out
    assert_not_stalled(longest, took)
