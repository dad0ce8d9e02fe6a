"""A soak driver: sustained mixed load with faults against a live server, then leak checks.

Worker threads mix, until a deadline: OpenAI completions and chat (plain, streamed, `n`
samples); native sessions through the SDK (chains, map-reduce, a system prompt shared by every
session); clients that hang up mid-stream or mid-request; graph sessions where one call fails
(an over-long prompt) while its siblings run, where a call waits on a variable never set and
the session is closed, or that are closed while their calls run, or whose inputs come one by
one (early fills forking early fills); variable streams abandoned; malformed requests. Every
answer that should succeed is compared with the greedy text of the same prompt on a quiet
engine; every failure must be a 4xx with a message (a 5xx, a hang or a dropped connection is a
defect).

    python -m tests.server.soak --seconds 120 --rounds 3 [--engines 2]
    python -m tests.server.soak --inproc --engines 2 --flag=--engine-process \
        --flag="--engine-restarts 50" --kill-every 4 --seconds 40 --rounds 1

runs rounds against one server (a tiny random model, a KV pool small enough to preempt) and,
after each, waits for the server to go idle and reports what it still holds (KV blocks,
sessions, stored prefixes) and its RSS; at the end it stops the server with SIGTERM and times it.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import math
import random
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

import parrot_bridge as P
from tests.server.http_client import ask_calls, metrics, request

ARTICLE = Path(__file__).resolve().parents[2].parent / "shared/data/arxiv-march-2023/article_0.txt"
FLAGS = ("--served-model-name", "m", "--num-kv-blocks", "48", "--block-size", "16",
         "--prefix-store-ttl-s", "4", "--shutdown-timeout-s", "6")  # fmt: skip
SHUTDOWN_S = 6
TIMEOUT_S = 60.0
SYSTEM = "System: you are a careful reader. Answer briefly and plainly. " * 3


class Reference:
    """Greedy texts of a quiet engine of the same model, memoised (one run at a time)."""

    def __init__(self, path: str | Path) -> None:
        from server.engine import LLMEngine

        self.engine = LLMEngine.from_pretrained(str(path))
        self.lock = threading.Lock()
        self.memo: dict[tuple[str, int, tuple[str, ...]], str] = {}

    def __call__(self, prompt: str, max_tokens: int, stop: tuple[str, ...] = ()) -> str:
        from server.engine import SamplingParams

        key = (prompt, max_tokens, stop)
        with self.lock:
            if key not in self.memo:
                sampling = SamplingParams(max_tokens=max_tokens, temperature=0, stop=list(stop))
                ids = self.engine.tokenizer.encode(prompt)
                self.memo[key] = self.engine.generate([ids], sampling)[0].text
            return self.memo[key]

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self.engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)


@dataclass
class Tally:
    expected: list[tuple[str, str | None, str, int, tuple[str, ...]]] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def expect(self, what: str, got: str | None, prompt: str, n: int, stop: tuple = ()) -> None:
        with self.lock:
            self.expected.append((what, got, prompt, n, tuple(stop)))

    def defect(self, text: str) -> None:
        with self.lock:
            self.defects.append(text)

    def status(self, code: int, what: str, body: Any = None) -> None:
        with self.lock:
            self.statuses[code] += 1
            if code >= 400:
                self.errors[f"{what.split(' /')[0]} {code}"] += 1
        if code >= 500:
            self.defect(f"{what}: HTTP {code}: {str(body)[:300]}")


def _error_message(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get("message")
    return None


class Soak:
    def __init__(self, url: str, ref: Reference, seed: int, model: str = "m") -> None:
        self.url = url
        self.ref = ref
        self.seed = seed
        self.model = model
        self.text = ARTICLE.read_text()
        self.tally = Tally()
        self.client = openai.OpenAI(
            base_url=url + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT_S
        )
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.max_model_len = request("GET", url + "/healthz")[1]["max_model_len"]
        # called with a session id when one of its reads times out (see InProcessServer.dump)
        self.on_hang: Callable[[str | None], None] = lambda _: None

    # -- helpers -------------------------------------------------------------------------------

    def piece(self, r: random.Random, lo: int = 60, hi: int = 400) -> str:
        start = r.randrange(0, len(self.text) - hi - 1)
        return self.text[start : start + r.randrange(lo, hi)]

    def req(self, what: str, method: str, path: str, body: Any = None, token: str | None = None,
            raw: bytes | None = None, timeout: float = TIMEOUT_S) -> tuple[int, Any]:  # fmt: skip
        status, out = request(method, self.url + path, body, token, raw, timeout)
        self.tally.status(status, what, out)
        if status >= 400 and not _error_message(out):
            self.tally.defect(f"{what}: {status} without an error message: {out!r}")
        return status, out

    def open_session(self) -> tuple[str, str]:
        status, s = self.req("open", "POST", "/v1/sessions", {})
        assert status == 201, s
        return s["session_id"], s["token"]

    # -- scenarios -----------------------------------------------------------------------------

    def completion(self, r: random.Random) -> None:
        prompt = (SYSTEM if r.random() < 0.4 else "") + self.piece(r)
        n, stop = r.randrange(1, 24), ((" the",) if r.random() < 0.3 else ())
        kind = r.choice(["plain", "stream", "samples"])
        args = dict(model=self.model, prompt=prompt, max_tokens=n, temperature=0,
                    stop=list(stop) or None)  # fmt: skip
        if kind == "plain":
            out = self.client.completions.create(**args)
            self.tally.expect("completion", out.choices[0].text, prompt, n, stop)
        elif kind == "stream":
            chunks = self.client.completions.create(**args, stream=True)
            self.tally.expect("completion-stream", "".join(c.choices[0].text for c in chunks),
                              prompt, n, stop)  # fmt: skip
        else:
            out = self.client.completions.create(**args, n=r.randrange(2, 4))
            for choice in out.choices:
                self.tally.expect("samples", choice.text, prompt, n, stop)

    def chat(self, r: random.Random) -> None:
        messages = [{"role": "system", "content": SYSTEM}] if r.random() < 0.5 else []
        messages.append({"role": "user", "content": self.piece(r, 40, 250)})
        n = r.randrange(1, 20)
        prompt = self.ref.chat_prompt(messages)
        if r.random() < 0.5:
            out = self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=n, temperature=0
            )
            self.tally.expect("chat", out.choices[0].message.content, prompt, n)
        else:
            chunks = self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=n, temperature=0, stream=True
            )
            got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            self.tally.expect("chat-stream", got, prompt, n)

    def abandon_stream(self, r: random.Random) -> None:
        """A long streamed generation whose client goes away after a few chunks."""
        chunks = self.client.completions.create(
            model=self.model, prompt=self.piece(r), max_tokens=300, temperature=0, stream=True,
            n=r.choice([1, 1, 3]), extra_body={"ignore_eos": True},
        )  # fmt: skip
        for k, _ in enumerate(chunks):
            if k >= r.randrange(0, 4):
                break
        chunks.close()

    def hang_up(self, r: random.Random) -> None:
        """A request (plain or chat, streamed or not) whose connection closes before the answer:
        mid-body, just after the body, or a little later."""
        chat = r.random() < 0.5
        body: dict[str, Any] = {"model": self.model, "max_tokens": r.randrange(50, 300),
                                "temperature": 0, "stream": r.random() < 0.5, "ignore_eos": True}
        if chat:
            body["messages"] = [{"role": "user", "content": self.piece(r)}]
        else:
            body["prompt"] = self.piece(r)
        data = json.dumps(body).encode()
        path = "/v1/chat/completions" if chat else "/v1/completions"
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()  # fmt: skip
        with socket.create_connection((self.host, self.port), timeout=TIMEOUT_S) as s:
            when = r.random()
            if when < 0.15:  # mid-body
                s.sendall(head + data[: len(data) // 2])
                time.sleep(r.random() * 0.05)
                return
            s.sendall(head + data)
            time.sleep(r.random() * 0.3 if when < 0.8 else 0)
            if r.random() < 0.3:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def sdk_chain(self, r: random.Random) -> None:
        doc = self.piece(r)
        k = r.randrange(4, 12)
        summarize = P.SemanticFunction(
            SYSTEM + "Summarize: {{input:doc}}\nSummary:{{output:summary}}",
            name="summarize", params=["doc"], max_tokens=k, temperature=0,
        )  # fmt: skip
        title = P.SemanticFunction(
            "Title for: {{input:summary}}\nTitle:{{output:title}}",
            name="title", params=["summary"], max_tokens=6, temperature=0,
        )  # fmt: skip
        with P.Session(self.url) as s:
            summary = summarize(doc)
            t = title(summary)
            got = t.get(criteria=r.choice(["latency", "throughput"]), timeout=TIMEOUT_S)
            got_summary = summary.get(timeout=TIMEOUT_S)
            assert s.id is not None
        self.tally.expect("sdk-chain-1", got_summary,
                          SYSTEM + f"Summarize: {doc}\nSummary:", k)  # fmt: skip
        self.tally.expect("sdk-chain-2", got, f"Title for: {got_summary}\nTitle:", 6)

    def sdk_map_reduce(self, r: random.Random) -> None:
        k = r.randrange(2, 6)
        chunks = [self.piece(r, 40, 200) for _ in range(k)]
        lengths = [r.randrange(2, 10) for _ in range(k)]
        maps = [
            P.SemanticFunction(
                SYSTEM + "Chunk: {{input:chunk}}\nPoint:{{output:point}}",
                name="map", params=["chunk"], max_tokens=n, temperature=0,
            )  # fmt: skip
            for n in lengths
        ]
        joined = " | ".join(f"{{{{input:p{j}}}}}" for j in range(k))
        reduce = P.SemanticFunction(
            f"Points: {joined}\nAll:{{{{output:all}}}}",
            name="reduce", params=[f"p{j}" for j in range(k)], max_tokens=8, temperature=0,
        )  # fmt: skip
        with P.Session(self.url):
            points = [maps[j](chunks[j]) for j in range(k)]
            out = reduce(*points)
            if r.random() < 0.5:
                got = "".join(out.stream(criteria=r.choice(["latency", "throughput"])))
            else:
                got = out.get(timeout=TIMEOUT_S)
            values = [p.get(timeout=TIMEOUT_S) for p in points]
        for j in range(k):
            self.tally.expect("sdk-map", values[j], SYSTEM + f"Chunk: {chunks[j]}\nPoint:",
                              lengths[j])  # fmt: skip
        self.tally.expect("sdk-reduce", got, f"Points: {' | '.join(values)}\nAll:", 8)

    def sdk_failing_sibling(self, r: random.Random) -> None:
        """One call of a map-reduce has a prompt past the model's length: it fails (and so does
        what reads it), its siblings finish with their own tokens."""
        ok = P.SemanticFunction(
            SYSTEM + "Chunk: {{input:chunk}}\nPoint:{{output:point}}",
            name="map", params=["chunk"], max_tokens=6, temperature=0,
        )  # fmt: skip
        reduce = P.SemanticFunction(
            "A: {{input:a}} B: {{input:b}}\nAll:{{output:all}}",
            name="reduce", params=["a", "b"], max_tokens=4, temperature=0,
        )  # fmt: skip
        good = self.piece(r, 40, 200)
        huge = (self.text * 3)[: r.randrange(4000, 9000)]
        with P.Session(self.url):
            a, bad = ok(good), ok(huge)
            both = reduce(a, bad)
            try:
                both.get(timeout=TIMEOUT_S)
                self.tally.defect("sdk-failing-sibling: the reduce over a failed call succeeded")
            except P.CallFailedError as exc:
                if not str(exc):
                    self.tally.defect("sdk-failing-sibling: a failure without a message")
            got = a.get(timeout=TIMEOUT_S)
            try:
                bad.get(timeout=TIMEOUT_S)
                self.tally.defect("sdk-failing-sibling: an over-long prompt succeeded")
            except P.CallFailedError:
                pass
        self.tally.expect("sdk-sibling", got, SYSTEM + f"Chunk: {good}\nPoint:", 6)

    def sdk_never_set(self, r: random.Random) -> None:
        """A call reads a variable never set (sent, it waits in the session, its leading text
        filled ahead) beside calls that run; the session closes while they run or after one
        was read."""
        f = P.SemanticFunction(
            SYSTEM + "Q: {{input:q}}\nA:{{output:a}}", name="qa", params=["q"],
            max_tokens=r.randrange(2, 40), temperature=0,
        )  # fmt: skip
        with P.Session(self.url) as s:
            unset = P.variable(name="unset")
            f(unset)
            q = self.piece(r, 20, 120)
            a = f(q)
            s.flush()
            if r.random() < 0.5:
                try:
                    got = a.get(timeout=TIMEOUT_S)
                except P.ParrotError:
                    self.on_hang(s.id)
                    raise
                self.tally.expect("sdk-never-set", got, SYSTEM + f"Q: {q}\nA:", f.sampling["max_tokens"])
            else:
                time.sleep(r.random() * 0.3)

    def inputs_later(self, r: random.Random) -> None:
        """A graph whose inputs come one by one: a call over a system prompt of its own waits
        for its question, siblings over it and a document wait for the document, then for
        their questions. Each input in starts early fills that fork the ones before, which may
        still run (two such fills of one key once both stored it: test_prefix_contexts); the
        session is sometimes closed before the answers are read."""
        sid, token = self.open_session()
        base = f"/v1/sessions/{sid}"
        k = r.randrange(2, 4)
        head = "{{input:sys}} Notes:\n{{input:u}}:{{output:o}}"
        ask = "{{input:sys}} Notes:\n{{input:doc}}\nQuestion {{input:q}}:{{output:o}}"
        sampling = {"max_tokens": r.randrange(2, 8), "temperature": 0}
        calls = [{"id": "head", "template": head, "inputs": {"sys": "sys", "u": "u"},
                  "outputs": {"o": "o"}, "sampling": sampling}]  # fmt: skip
        calls += [{"id": f"ask{j}", "template": ask, "outputs": {"o": f"a{j}"},
                   "inputs": {"sys": "sys", "doc": "doc", "q": f"q{j}"}, "sampling": sampling}
                  for j in range(k)]  # fmt: skip
        # a system prompt of its own: one already stored (by other sessions) is not filled early
        system = f"Reader {r.randrange(10**6)}. " + SYSTEM * 4
        variables = [{"id": "sys", "value": system}, {"id": "u"}, {"id": "doc"}, {"id": "o"}]
        variables += [{"id": f"q{j}"} for j in range(k)] + [{"id": f"a{j}"} for j in range(k)]
        self.req("graph", "POST", base + "/graph", {"variables": variables, "calls": calls},
                 token)  # fmt: skip
        doc = self.piece(r, 40, 120)  # the system prompt takes most of the context
        puts = [("doc", doc), ("u", "u")] + [(f"q{j}", str(j)) for j in range(k)]
        for var, text in puts:
            self.req("put", "PUT", f"{base}/variables/{var}", {"value": text}, token)
            time.sleep(r.random() * 0.05)
        if r.random() < 0.7:
            for j in range(k):
                _, v = self.req("get", "GET", f"{base}/variables/a{j}?timeout=30", token=token)
                if v.get("status") != "ready":
                    self.tally.defect(f"inputs-later: a{j} not ready: {v}")
                    continue
                prompt = f"{system} Notes:\n{doc}\nQuestion {j}:"
                self.tally.expect("inputs-later", v["value"], prompt, sampling["max_tokens"])
        self.req("close", "DELETE", base, token=token)

    def graph_faults(self, r: random.Random) -> None:
        """Raw graph: siblings over a shared doc, one over-long call, one waiting on a long
        generation; then the session is closed (sometimes while calls run, sometimes after
        reading a value, sometimes with a long-poll or a stream in flight)."""
        sid, token = self.open_session()
        base = f"/v1/sessions/{sid}"
        doc = SYSTEM + self.piece(r)
        k = r.randrange(1, 5)
        lengths = [r.randrange(1, 12) for _ in range(k)]
        calls = ask_calls(lengths)
        variables = [{"id": "doc", "value": doc}, {"id": "huge", "value": self.text[:6000]},
                     {"id": "bad"}, {"id": "wait"}, {"id": "long"}]  # fmt: skip
        variables += [{"id": f"q{j}", "value": str(j)} for j in range(k)]
        variables += [{"id": f"a{j}"} for j in range(k)]
        calls += [
            {"id": "huge", "template": "{{input:huge}} so:{{output:x}}", "inputs": {"huge": "huge"},
             "outputs": {"x": "bad"}, "sampling": {"max_tokens": 4, "temperature": 0}},
            {"id": "wait", "template": "{{input:doc}} then {{input:u}}:{{output:y}}",
             "inputs": {"doc": "doc", "u": "long"}, "outputs": {"y": "wait"},
             "sampling": {"max_tokens": 4, "temperature": 0}},
            {"id": "long", "template": "{{input:doc}} more:{{output:z}}", "inputs": {"doc": "doc"},
             "outputs": {"z": "long"},
             "sampling": {"max_tokens": 200, "temperature": 0, "ignore_eos": True}},
        ]  # fmt: skip
        criteria = r.choice(["latency", "throughput"])
        status, body = self.req("graph", "POST", base + "/graph", token=token, body={
            "variables": variables, "calls": calls,
            "awaits": [{"variable": f"a{k - 1}", "criteria": criteria}]})  # fmt: skip
        if status != 200:
            self.tally.defect(f"graph submission refused: {status} {body}")
            self.req("close", "DELETE", base, token=token)
            return
        ending = r.choice(["early", "after", "poll", "stream"])
        if ending == "early":  # closed while its calls run
            time.sleep(r.random() * 0.3)
        elif ending in ("poll", "stream"):
            # a reader of the never-set variable's consumer is in flight when the session closes
            done = threading.Event()
            result: list[Any] = []

            def reader() -> None:
                try:
                    if ending == "poll":
                        result.append(request("GET", f"{self.url}{base}/variables/wait?timeout=30",
                                              token=token, timeout=TIMEOUT_S))  # fmt: skip
                    else:
                        with urllib_open(f"{self.url}{base}/variables/long/stream", token) as resp:
                            result.append(resp.read())
                except Exception as exc:  # noqa: BLE001
                    result.append(exc)
                done.set()

            threading.Thread(target=reader, daemon=True).start()
            time.sleep(0.1 + r.random() * 0.4)
            self.req("close", "DELETE", base, token=token)
            if not done.wait(10):
                self.tally.defect(f"a {ending} reader did not return within 10 s of the close")
            elif isinstance(result[0], tuple) and result[0][0] >= 500:
                self.tally.defect(f"{ending} reader after close: {result[0]}")
            return
        else:
            url = f"{base}/variables/a{k - 1}?timeout={TIMEOUT_S - 10}"
            status, final = self.req("get", "GET", url, token=token)
            if status != 200 or final["status"] != "ready":
                self.tally.defect(f"graph sibling not ready: {status} {final}")
            else:
                for j in range(k):
                    _, v = self.req("get", "GET", f"{base}/variables/a{j}?timeout=30", token=token)
                    self.tally.expect("graph-sibling", v.get("value"),
                                      f"Doc:\n{doc}\nPart {j}:", lengths[j])  # fmt: skip
            _, v = self.req("get", "GET", f"{base}/variables/bad?timeout=30", token=token)
            if v.get("status") != "failed" or not v.get("error"):
                self.tally.defect(f"the over-long call did not fail with an error: {v}")
        self.req("close", "DELETE", base, token=token)

    def abandon_variable_stream(self, r: random.Random) -> None:
        sid, token = self.open_session()
        base = f"/v1/sessions/{sid}"
        body = {"variables": [{"id": "d", "value": self.piece(r)}, {"id": "o"}],
                "calls": [{"id": "c", "template": "{{input:d}}:{{output:o}}",
                           "inputs": {"d": "d"}, "outputs": {"o": "o"},
                           "sampling": {"max_tokens": 300, "temperature": 0,
                                        "ignore_eos": True}}]}  # fmt: skip
        self.req("graph", "POST", base + "/graph", body, token)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        conn.request("GET", base + "/variables/o/stream?criteria=latency",
                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        resp = conn.getresponse()
        resp.read(r.randrange(1, 200))
        conn.close()
        if r.random() < 0.5:  # the session is left to be closed later (or by its reaper)
            time.sleep(r.random() * 0.5)
            self.req("close", "DELETE", base, token=token)
        else:
            self.req("close", "DELETE", base, token=token)

    def malformed(self, r: random.Random) -> None:
        sid, token = self.open_session()
        base = f"/v1/sessions/{sid}"
        m = self.model
        bad: list[tuple[str, str, Any, bytes | None, str | None]] = [
            ("POST", "/v1/completions", {"model": m, "prompt": "x", "max_tokens": -1}, None, None),
            ("POST", "/v1/completions", {"model": m}, None, None),
            ("POST", "/v1/completions", None, b"{not json", None),
            ("POST", "/v1/completions", None, b"[1,2]", None),
            ("POST", "/v1/completions", {"model": m, "prompt": "x " * 900, "max_tokens": 4},
             None, None),
            ("POST", "/v1/completions", {"model": m, "prompt": [[1, 2], [999999]]}, None, None),
            ("POST", "/v1/chat/completions", {"model": m, "messages": []}, None, None),
            ("POST", "/v1/chat/completions", {"model": m, "messages": [{"role": "x"}]}, None, None),
            ("POST", "/v1/completions", {"model": "nope", "prompt": "x"}, None, None),
            ("POST", base + "/graph", {"calls": [{"id": "c", "template": "{{output:o}}",
                                                  "inputs": {}, "outputs": {"o": "missing"}}]},
             None, token),
            ("POST", base + "/graph", {"variables": [{"id": "a"}, {"id": "b"}], "calls": [
                {"id": "c1", "template": "{{input:x}}{{output:y}}", "inputs": {"x": "a"},
                 "outputs": {"y": "b"}},
                {"id": "c2", "template": "{{input:x}}{{output:y}}", "inputs": {"x": "b"},
                 "outputs": {"y": "a"}}]}, None, token),
            ("POST", base + "/graph", {"variables": [{"id": "a"}], "calls": [
                {"id": "c", "template": "{{input:x}", "inputs": {"x": "a"}, "outputs": {}}]},
             None, token),
            ("POST", base + "/graph", None, b"\xff\xfe", token),
            ("GET", base + "/variables/none", None, None, token),
            ("GET", base, None, None, "wrong-token"),
            ("PUT", base + "/variables/none", {"value": "x"}, None, token),
            ("GET", "/v1/sessions/nope/variables/x", None, None, token),
        ]  # fmt: skip
        r.shuffle(bad)
        for method, path, body, raw, tok in bad[: r.randrange(3, len(bad))]:
            status, out = self.req(f"malformed {method} {path}", method, path, body, tok, raw)
            if not 400 <= status < 500:
                self.tally.defect(f"malformed {method} {path} {body or raw!r}: {status} {out}")
        self.req("close", "DELETE", base, token=token)

    SCENARIOS: tuple[tuple[str, float], ...] = (
        ("completion", 3), ("chat", 2), ("abandon_stream", 1), ("hang_up", 1.5),
        ("sdk_chain", 1.5), ("sdk_map_reduce", 1.5), ("sdk_failing_sibling", 0.7),
        ("graph_faults", 1.5), ("sdk_never_set", 0.7), ("abandon_variable_stream", 0.7), ("malformed", 0.7),
        ("inputs_later", 1),
    )  # fmt: skip

    def run(self, seconds: float, workers: int) -> Tally:
        deadline = time.monotonic() + seconds
        names = [n for n, _ in self.SCENARIOS]
        weights = [w for _, w in self.SCENARIOS]

        def worker(w: int) -> None:
            r = random.Random(self.seed * 1000 + w)
            while time.monotonic() < deadline:
                name = r.choices(names, weights)[0]
                sub = random.Random(r.random())
                t0 = time.monotonic()
                try:
                    getattr(self, name)(sub)
                    self.tally.kinds[name] += 1
                except Exception as exc:  # noqa: BLE001
                    self.tally.kinds[name + "!"] += 1
                    tb = traceback.format_exc(limit=4)
                    self.tally.defect(f"{name} raised {type(exc).__name__}: {exc}\n{tb}")
                if time.monotonic() - t0 > TIMEOUT_S:
                    self.tally.defect(f"{name} took {time.monotonic() - t0:.0f} s")

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return self.tally

    def check_texts(self) -> int:
        """Compare every answer with the quiet greedy text; mismatches become defects."""
        for what, got, prompt, n, stop in self.tally.expected:
            want = self.ref(prompt, n, stop)
            if got != want:
                self.tally.defect(f"{what}: {got!r} != greedy {want!r} (n={n}, prompt={prompt!r})")
        return len(self.tally.expected)


def urllib_open(url: str, token: str) -> Any:
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    return urllib.request.urlopen(req, timeout=TIMEOUT_S)


def settle(url: str, timeout_s: float = 30.0) -> dict[str, float]:
    """/metrics once no session is open, no prefix is stored and every block is free (or after
    `timeout_s`: what is left then is a leak)."""
    deadline = time.monotonic() + timeout_s
    while True:
        m = metrics(url)
        idle = (m["parrot_sessions_active"] == 0 and m["parrot_prefix_store_entries"] == 0
                # the pool's gauges are absent while every engine restarts (after a kill)
                and m.get("parrot_kv_free_blocks", -1) == m.get("parrot_kv_total_blocks")
                and m["parrot_engine_contexts"] == 0 and m["parrot_engine_jobs"] == 0)  # fmt: skip
        if idle or time.monotonic() > deadline:
            return m
        time.sleep(0.25)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


class InProcessServer:
    """The same app served on a thread of this process, so that its internals can be read
    once it is idle (what /metrics does not show: engine contexts and jobs, the executor's
    per-session bookkeeping, listeners)."""

    def __init__(self, model: Path, flags: list[str]) -> None:
        import asyncio

        from aiohttp import web

        from server.app import init_app
        from server.config import ServerConfig
        from server.launcher import free_port

        port = free_port()
        config = ServerConfig.from_args(["--model", str(model), "--port", str(port), *flags])
        self.url = f"http://127.0.0.1:{port}"
        self.loop = asyncio.new_event_loop()
        self.app = init_app(config)
        self.runner = web.AppRunner(self.app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        self.loop.run_until_complete(site.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def internals(self) -> dict[str, int]:
        import asyncio

        from server.keys import ENGINES, EXECUTOR, SESSIONS

        async def read() -> dict[str, int]:
            ex, pool = self.app[EXECUTOR], self.app[ENGINES]
            out = {
                "sessions": len(self.app[SESSIONS]),
                "exec_plans": len(ex._plans),
                "exec_prefetched": len(ex._prefetched),
                "exec_tasks": sum(len(t) for t in ex._tasks.values()),
                "exec_task_sessions": len(ex._tasks),
                "exec_scans": len(ex._scans),
                "exec_fill_loads": len(ex._fill_loads),
                "exec_placed": len(ex._placed),
                "exec_queue": len(ex.scheduler),
                "prefix_entries": len(ex.prefixes.store),
                "pool_calls": sum(load.running_calls for load in pool.loads),
                "pool_tokens": sum(load.queued_tokens for load in pool.loads),
                "tasks": len(asyncio.all_tasks()) - 1,
            }
            for i, driver in enumerate(pool.drivers):
                ae = driver.engine
                if not hasattr(ae, "call"):
                    continue  # an engine in a child process: /metrics counts its blocks

                def engine_side(e: Any) -> dict[str, int]:
                    sch = e.scheduler
                    return {"contexts": len(sch.contexts), "waiting": len(sch.waiting),
                            "running": len(sch.running), "jobs": len(e._jobs),
                            "used_blocks": e.blocks.num_blocks - e.blocks.num_free_blocks
                            if hasattr(e.blocks, "num_blocks") else -1}  # fmt: skip

                side = await ae.call(engine_side)
                for k, v in side.items():
                    out[f"e{i}_{k}"] = v
                out[f"e{i}_listeners"] = len(ae._listeners)
                out[f"e{i}_lengths"] = len(ae._lengths)
            return out

        return asyncio.run_coroutine_threadsafe(read(), self.loop).result(30)

    def dump(self, session_id: str | None) -> None:
        """What a session's calls wait on: its tasks' stacks and the engines' contexts."""
        import asyncio
        import io

        from server.keys import ENGINES, EXECUTOR, SESSIONS

        async def read() -> str:
            buf = io.StringIO()
            ex, pool = self.app[EXECUTOR], self.app[ENGINES]
            session = self.app[SESSIONS]._sessions.get(session_id or "")
            buf.write(f"=== hang in session {session_id}: ")
            if session is not None:
                buf.write(f"calls {session.graph.counts()}\n")
                for call in session.graph.calls.values():
                    buf.write(f"  call {call.id} {call.state}\n")
            buf.write(f"queue {len(ex.scheduler)} placed {len(ex._placed)} loads {pool.loads}\n")
            for task in ex._tasks.get(session_id or "", ()):
                task.print_stack(limit=30, file=buf)
            for i, driver in enumerate(pool.drivers):

                def engine_side(e: Any) -> str:
                    sch = e.scheduler
                    lines = [f"free {e.blocks.num_free_blocks} held {sch.held} "
                             f"hold {sch.latency_hold_left():.3f} paused {e._paused is not None}"]
                    for c in sch.contexts.values():
                        lines.append(f"  ctx {c.id} {c.state.name} len {len(c.token_ids)} "
                                     f"comp {c.num_computed} blocks {len(c.block_table)} "
                                     f"jobs {[(j.kind.name, j.sort_key, j.yield_tokens) for j in c.jobs]}")
                    return "\n".join(lines) + "\n"

                if hasattr(driver.engine, "call"):  # in this process
                    buf.write(f"engine {i}: " + await driver.engine.call(engine_side))
            return buf.getvalue()

        text = asyncio.run_coroutine_threadsafe(read(), self.loop).result(30)
        with open("/tmp/soak/hang.txt", "a") as f:
            f.write(text)
        print(text[:3000], flush=True)

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class EngineKiller:
    """SIGKILLs a running engine process of an in-process server every `every_s` seconds."""

    def __init__(self, server: InProcessServer, every_s: float, seed: int) -> None:
        import os
        import signal

        from server.keys import ENGINES

        pool = server.app[ENGINES]
        self.kills: list[int] = []
        self._stop = threading.Event()
        rng = random.Random(seed)

        def run() -> None:
            while not self._stop.wait(every_s):
                alive = [d.engine.pid for d in pool.drivers if d.alive]
                if alive:
                    pid = rng.choice(alive)
                    os.kill(pid, signal.SIGKILL)
                    self.kills.append(pid)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def explains(defect: str) -> bool:
        """Streamed work cut by a death, or a 503 while no engine ran."""
        return "exited unexpectedly" in defect or "engine_unavailable" in defect or (
            "no engine is running" in defect
        )


def main(argv: list[str] | None = None) -> int:
    from server.launcher import ServerProcess
    from tests.tiny_models import make_tiny_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--engines", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-dir", default="/tmp/soak/llama")
    ap.add_argument("--log", default="/tmp/soak/server.log")
    ap.add_argument("--inproc", action="store_true", help="serve in this process, read internals")
    ap.add_argument("--flag", action="append", default=[], help="extra server flag(s)")
    ap.add_argument(
        "--kill-every", type=float, default=0,
        help="with --inproc and engines in child processes: SIGKILL a running engine this "
        "often (s); failures of work a client had seen (streamed) and 503s while no engine "
        "runs are then expected, and counted apart",
    )  # fmt: skip
    args = ap.parse_args(argv)
    model = Path(args.model_dir)
    if not (model / "config.json").exists():
        make_tiny_model(model, "llama")
    ref = Reference(model)
    flags = [*FLAGS, "--engines", str(args.engines), *(f for x in args.flag for f in x.split())]
    failed = False
    if args.inproc:
        srv_in = InProcessServer(model, flags)
        try:
            print("fresh:", srv_in.internals(), flush=True)
            for rnd in range(args.rounds):
                soak = Soak(srv_in.url, ref, args.seed * 100 + rnd)
                soak.on_hang = srv_in.dump
                killer = EngineKiller(srv_in, args.kill_every, args.seed) if args.kill_every else None
                tally = soak.run(args.seconds, args.workers)
                if killer is not None:
                    killer.stop()
                    expected = [d for d in tally.defects if killer.explains(d)]
                    tally.defects = [d for d in tally.defects if not killer.explains(d)]
                    print(f"kills {len(killer.kills)}; expected failures {len(expected)}",
                          flush=True)  # fmt: skip
                soak.check_texts()
                m = settle(srv_in.url)
                time.sleep(1)
                inside = srv_in.internals()
                print(f"round {rnd}: {sum(tally.kinds.values())} scenarios; preemptions "
                      f"{m['parrot_preemptions_total']:.0f}; free "
                      f"{m.get('parrot_kv_free_blocks', math.nan):.0f}/"
                      f"{m.get('parrot_kv_total_blocks', math.nan):.0f}; internals {inside}",
                      flush=True)
                for d in tally.defects:
                    failed = True
                    print("DEFECT:", d, flush=True)
                left = {k: v for k, v in inside.items() if v and not k.endswith("tasks")}
                if left:
                    failed = True
                    print("DEFECT: left over:", left, flush=True)
        finally:
            srv_in.close()
        return 1 if failed else 0
    with ServerProcess(model, *flags, log_path=args.log) as srv:
        assert srv.process is not None
        pid = srv.process.pid
        fresh = metrics(srv.url)
        print(f"fresh: free {fresh['parrot_kv_free_blocks']:.0f}/"
              f"{fresh['parrot_kv_total_blocks']:.0f} rss {rss_kib(pid)} KiB", flush=True)
        for rnd in range(args.rounds):
            soak = Soak(srv.url, ref, args.seed * 100 + rnd)
            t0 = time.monotonic()
            tally = soak.run(args.seconds, args.workers)
            took = time.monotonic() - t0
            checked = soak.check_texts()
            m = settle(srv.url)
            print(f"round {rnd}: {sum(tally.kinds.values())} scenarios in {took:.0f} s "
                  f"{dict(tally.kinds)}; {checked} texts checked; statuses "
                  f"{dict(sorted(tally.statuses.items()))} {dict(tally.errors)}; preemptions "
                  f"{m['parrot_preemptions_total']:.0f}; after: free "
                  f"{m['parrot_kv_free_blocks']:.0f}/{m['parrot_kv_total_blocks']:.0f} sessions "
                  f"{m['parrot_sessions_active']:.0f} prefixes "
                  f"{m['parrot_prefix_store_entries']:.0f}; rss {rss_kib(pid)} KiB", flush=True)
            leaks = []
            if m["parrot_kv_free_blocks"] != m["parrot_kv_total_blocks"]:
                leaks.append("KV blocks still referenced")
            if m["parrot_sessions_active"]:
                leaks.append("sessions still open")
            if m["parrot_prefix_store_entries"]:
                leaks.append("prefixes still stored past their TTL")
            # a context left behind may hold no block (an idle one's are swapped out)
            if m["parrot_engine_contexts"] or m["parrot_engine_jobs"]:
                leaks.append("engine contexts or jobs still open")
            for d in tally.defects + leaks:
                failed = True
                print("DEFECT:", d, flush=True)
        # SIGTERM with load in flight: in-flight requests get the shutdown timeout, then are
        # answered with a 503; the process must be gone within about the timeout
        burst = Soak(srv.url, ref, args.seed * 100 + 99)
        loader = threading.Thread(target=burst.run, args=(8.0, args.workers), daemon=True)
        loader.start()
        time.sleep(3)
        t0 = time.monotonic()
        srv.process.terminate()
        try:
            code = srv.process.wait(30)
        except Exception:  # noqa: BLE001
            code = None
        took = time.monotonic() - t0
        print(f"SIGTERM under load: exit code {code} after {took:.1f} s", flush=True)
        if code != 0 or took > SHUTDOWN_S + 2:
            failed = True
            print("DEFECT: unclean shutdown\n" + srv.log_tail(20))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
