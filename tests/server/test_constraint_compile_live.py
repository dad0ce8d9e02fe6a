"""A large grammar compiles off the event loop: while one compiles for about a second, the
server still answers probes (and streams) at once."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from server.engine.grammar import compiled_grammar
from tests.server.http_client import request
from tests.server.test_native_api import call, get_var, open_session

pytestmark = pytest.mark.slow
RULES = 9000  # ~1 s to compile here


def big_grammar() -> str:
    tag = uuid.uuid4().hex[:6]  # one the server has not compiled yet
    names = [f"r{tag}{i}" for i in range(RULES)]
    rules = "\n".join(f'{n} ::= "w{i}" [a-z]' for i, n in enumerate(names))
    return "root ::= " + " ".join(names) + "\n" + rules


def compile_time() -> float:
    started = time.perf_counter()
    compiled_grammar(big_grammar())
    return time.perf_counter() - started


def longest_probe(url: str, body: dict, token: str | None = None) -> tuple[float, int]:
    """(the longest wait for GET /health while `body` is posted to `url`, the post's status)."""
    done: dict[str, int] = {}
    post = threading.Thread(
        target=lambda: done.setdefault("status", request("POST", url, body, token)[0])
    )
    post.start()
    server = url.split("/v1/")[0]
    longest = 0.0
    while post.is_alive():
        started = time.perf_counter()
        assert request("GET", server + "/health")[0] == 200
        longest = max(longest, time.perf_counter() - started)
        time.sleep(0.01)
    post.join()
    return longest, done["status"]


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
    assert longest < max(0.3, took / 3), (longest, took)


def test_a_graph_with_a_large_grammar_compiles_off_the_loop(server: str):
    took = compile_time()
    sid, token = open_session(server)
    spec = call("c", "Hi {{output:x}}", {}, {"x": "out"}, 2)
    spec["sampling"]["grammar"] = big_grammar()
    submission = {"variables": [{"id": "out"}], "calls": [spec]}
    longest, status = longest_probe(f"{server}/v1/sessions/{sid}/graph", submission, token)
    assert status == 200
    assert longest < max(0.3, took / 3), (longest, took)
    # the call runs with its grammar (and ends before the server stops)
    assert get_var(server, sid, token, "out")["status"] == "ready"
