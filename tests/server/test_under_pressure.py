"""A live server short of KV blocks, under concurrent mixed traffic: OpenAI completions (plain,
streamed, several samples of one prompt, abandoned mid-stream) beside native sessions whose graphs are latency-critical or
bulk, and bad requests. Every call must finish with the tokens it would get alone."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from server.engine import LLMEngine, SamplingParams
from server.launcher import ServerProcess
from tests.server.http_client import ask_calls, metrics, request

pytestmark = pytest.mark.slow

ARTICLE = Path(__file__).resolve().parents[2].parent / "shared/data/arxiv-march-2023/article_0.txt"
# 48 blocks of 16 per engine: a few calls fill an engine, so steps preempt and swap out
FLAGS = ("--served-model-name", "m", "--engines", "2", "--num-kv-blocks", "48",
         "--block-size", "16")  # fmt: skip
TIMEOUT_S = 30


@pytest.fixture(scope="module")
def server(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("pressure") / "server.log"
    with ServerProcess(tiny_llama_path, *FLAGS, log_path=log) as srv:
        yield srv.url


class Reference:
    """Greedy runs of the same model, one at a time (an engine is not thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.engine = LLMEngine.from_pretrained(str(path))
        self.lock = threading.Lock()

    def __call__(self, prompt: str, max_tokens: int, stop: list[str] | None = None) -> str:
        sampling = SamplingParams(max_tokens=max_tokens, temperature=0, stop=stop or [])
        with self.lock:
            ids = self.engine.tokenizer.encode(prompt)
            return self.engine.generate([ids], sampling)[0].text


def test_mixed_traffic_short_of_blocks_finishes_every_call_with_its_own_tokens(
    server: str, tiny_llama_path: Path
) -> None:
    greedy = Reference(tiny_llama_path)
    text = ARTICLE.read_text()
    client = openai.OpenAI(base_url=server + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT_S)
    shared_doc = text[5000:5500]

    # (got, prompt, max_tokens, stop): checked once the traffic is over, so that the reference
    # runs (one at a time) do not throttle it
    outputs: list[tuple[str | None, str, int, list[str] | None]] = []

    def expect(got: str | None, prompt: str, n: int, stop: list[str] | None = None) -> None:
        outputs.append((got, prompt, n, stop))

    def chat_prompt(messages: list[dict]) -> str:
        tokenizer = greedy.engine.tokenizer
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def piece(r: random.Random) -> str:
        start = r.randrange(0, len(text) - 1000)
        return text[start : start + r.randrange(100, 500)]

    def completion(i: int) -> None:
        r = random.Random(i)
        prompt = (shared_doc if r.random() < 0.4 else "") + piece(r) + f" Q{i}:"
        n, stop = r.randrange(1, 24), ([" the"] if r.random() < 0.3 else None)
        kind = r.choice(["plain", "stream", "chat", "abandon", "samples"])
        if kind == "plain":
            out = client.completions.create(
                model="m", prompt=prompt, max_tokens=n, temperature=0, stop=stop
            )
            expect(out.choices[0].text, prompt, n, stop)
        elif kind == "stream":
            chunks = client.completions.create(
                model="m", prompt=prompt, max_tokens=n, temperature=0, stop=stop, stream=True
            )
            expect("".join(c.choices[0].text for c in chunks), prompt, n, stop)
        elif kind == "chat":
            messages = [{"role": "user", "content": prompt[-300:]}]
            out = client.chat.completions.create(
                model="m", messages=messages, max_tokens=n, temperature=0
            )
            expect(out.choices[0].message.content, chat_prompt(messages), n)
        elif kind == "samples":  # n forks of one computed prompt
            out = client.completions.create(
                model="m", prompt=prompt, max_tokens=n, temperature=0, stop=stop, n=r.randrange(2, 4)
            )
            for choice in out.choices:
                expect(choice.text, prompt, n, stop)
        else:
            # a long generation whose client goes away: the server must stop it and free its KV
            chunks = client.completions.create(
                model="m", prompt=piece(r), max_tokens=200, temperature=0, stream=True,
                n=r.choice([1, 3]),
            )  # fmt: skip
            for k, _ in enumerate(chunks):
                if k >= 2:
                    break
            chunks.close()

    def session(i: int) -> None:
        r = random.Random(1000 + i)
        _, s = request("POST", server + "/v1/sessions", {})
        sid, token = s["session_id"], s["token"]
        doc = shared_doc if r.random() < 0.5 else piece(r)
        k = r.randrange(1, 6)
        lengths = [r.randrange(1, 10) for _ in range(k)]
        calls = ask_calls(lengths)
        joined = " | ".join(f"{{{{input:a{j}}}}}" for j in range(k))
        calls.append(
            {"id": "join", "function": "join", "template": f"All: {joined}\nSo:{{{{output:v}}}}",
             "inputs": {f"a{j}": f"a{j}" for j in range(k)}, "outputs": {"v": "v"},
             "sampling": {"max_tokens": 8, "temperature": 0}}
        )  # fmt: skip
        variables = [{"id": "doc", "value": doc}, {"id": "v"}]
        variables += [{"id": f"q{j}", "value": str(j)} for j in range(k)]
        variables += [{"id": f"a{j}"} for j in range(k)]
        criteria = r.choice(["latency", "throughput"])
        status, body = request(
            "POST", f"{server}/v1/sessions/{sid}/graph", token=token,
            body={"variables": variables, "calls": calls,
                  "awaits": [{"variable": "v", "criteria": criteria}]},
        )  # fmt: skip
        assert status == 200, body
        if r.random() < 0.2:  # the user goes away: its calls stop, the rest go on
            assert request("DELETE", f"{server}/v1/sessions/{sid}", token=token)[0] == 200
            return
        url = f"{server}/v1/sessions/{sid}/variables"
        _, final = request("GET", f"{url}/v?timeout={TIMEOUT_S}", token=token, timeout=TIMEOUT_S + 5)
        assert final["status"] == "ready", f"session {i} ({criteria}): {final}"
        answers = [request("GET", f"{url}/a{j}", token=token)[1]["value"] for j in range(k)]
        for j in range(k):
            expect(answers[j], f"Doc:\n{doc}\nPart {j}:", lengths[j])
        expect(final["value"], f"All: {' | '.join(answers)}\nSo:", 8)
        request("DELETE", f"{server}/v1/sessions/{sid}", token=token)

    def bad(_: int) -> None:
        for body in ({"model": "m", "prompt": "x", "max_tokens": -1}, {"model": "m"}):
            status, _ = request("POST", server + "/v1/completions", body)
            assert status == 400
        assert request("POST", server + "/v1/completions", raw=b"{not json")[0] == 400
        # within the model's 1024 positions but past the pool's 768 tokens: refused before
        # any stream starts
        with pytest.raises(openai.BadRequestError, match="maximum context length is 768"):
            client.completions.create(
                model="m", prompt="x " * 100, max_tokens=700, temperature=0, stream=True
            )

    jobs = [(completion, i) for i in range(60)] + [(session, i) for i in range(25)]
    jobs += [(bad, i) for i in range(3)]
    random.Random(0).shuffle(jobs)
    with ThreadPoolExecutor(12) as pool:
        for future in [pool.submit(fn, i) for fn, i in jobs]:
            future.result()
    for got, prompt, n, stop in outputs:
        assert got == greedy(prompt, n, stop), (prompt, n, stop)
    after = metrics(server)
    assert after["parrot_sessions_active"] == 0
    assert after["parrot_preemptions_total"] > 0  # the pool really ran short
    status, health = request("GET", server + "/healthz")
    assert status == 200 and health["max_model_len"] == 768


def test_a_quiet_server_frees_stored_prefixes_after_their_ttl(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    flags = ("--prefix-store-ttl-s", "1", "--num-kv-blocks", "48", "--block-size", "16")
    with ServerProcess(tiny_llama_path, *flags, log_path=tmp_path / "server.log") as srv:
        _, s = request("POST", srv.url + "/v1/sessions", {})
        sid, token = s["session_id"], s["token"]
        # a constant system text: stored by content for every session, not only this one
        ask = "System: " + ARTICLE.read_text()[:600] + "\nPart {{input:q}}:{{output:a}}"
        calls = [
            {"id": f"ask-{j}", "function": "ask", "template": ask,
             "inputs": {"q": f"q{j}"}, "outputs": {"a": f"a{j}"},
             "sampling": {"max_tokens": 4, "temperature": 0}}
            for j in range(3)
        ]  # fmt: skip
        variables = [{"id": f"q{j}", "value": str(j)} for j in range(3)]
        variables += [{"id": f"a{j}"} for j in range(3)]
        body = {"variables": variables, "calls": calls, "awaits": [{"variable": "a2"}]}
        assert request("POST", f"{srv.url}/v1/sessions/{sid}/graph", body, token)[0] == 200
        url = f"{srv.url}/v1/sessions/{sid}/variables/a2?timeout={TIMEOUT_S}"
        assert request("GET", url, token=token)[1]["status"] == "ready"
        request("DELETE", f"{srv.url}/v1/sessions/{sid}", token=token)
        assert metrics(srv.url)["parrot_prefix_store_entries"] > 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = metrics(srv.url)
            if m["parrot_prefix_store_entries"] == 0:
                break
            time.sleep(0.2)
        assert m["parrot_prefix_store_entries"] == 0
        assert m["parrot_kv_free_blocks"] == m["parrot_kv_total_blocks"]
