"""Starting and stopping a server process: bad flags, bad models, graceful shutdown."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from server.launcher import ServerProcess
from tests.server.http_client import metrics, request

pytestmark = pytest.mark.slow


def test_bad_flags_and_models_fail_with_a_message(tmp_path: Path) -> None:
    # what the engine refuses is refused before a model loads, in one line, not a traceback
    # (the servers start side by side: each takes seconds to import torch; one starts its
    # engine processes' fork server as the default does, the others need none, which halves
    # the imports on two cores)
    alone = "--no-engine-process"
    cases = ((["--port", "99999"], "port must be in 0..65535"),
             (["--block-size", "0", alone], "block_size must be a positive power of two"),
             (["--dtype", "foo"], "dtype must name a torch dtype"),
             (["--kv-cache-gb", "nan", alone], "kv_cache_gb must be positive"),
             (["--model", str(tmp_path / "nothing"), alone], "no model named"))  # fmt: skip
    started = [
        subprocess.Popen([sys.executable, "-m", "server", *flags], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
        for flags, _ in cases
    ]
    missing = ServerProcess(tmp_path / "no-such-model", log_path=tmp_path / "log")
    with pytest.raises(RuntimeError, match="exited with code") as info:
        missing.start()
    assert "no-such-model" in str(info.value)
    for process, (_, needle) in zip(started, cases, strict=True):
        _, stderr = process.communicate(timeout=120)
        assert process.returncode != 0 and len(stderr.strip().splitlines()) == 1, stderr
        assert stderr.startswith("parrot-server: ") and needle in stderr


def test_an_address_it_cannot_listen_on_fails_with_a_message_before_the_model_loads(
    tmp_path: Path,
) -> None:
    """A port in use or a host that does not resolve: one line naming the address, at once,
    not a traceback once the model has loaded."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for host, needle in (("127.0.0.1", f"cannot listen on 127.0.0.1:{port}"),
                             ("999.1.1.1", f"cannot listen on 999.1.1.1:{port}")):
            bad = subprocess.run(
                [sys.executable, "-m", "server", "--host", host, "--port", str(port)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
            assert bad.stderr.startswith("parrot-server: ") and needle in bad.stderr
            assert "engine" not in bad.stderr and "starting" not in bad.stderr


def test_sigterm_wakes_long_polls_and_exits_cleanly(tiny_llama_path: Path, tmp_path: Path) -> None:
    srv = ServerProcess(tiny_llama_path, log_path=tmp_path / "log").start()
    try:
        _, session = request("POST", srv.url + "/v1/sessions", {})
        sid, token = session["session_id"], session["token"]
        request("POST", f"{srv.url}/v1/sessions/{sid}/variables", {"id": "never"}, token)
        polled: list[object] = []
        url = f"{srv.url}/v1/sessions/{sid}/variables/never?timeout=120"
        poller = threading.Thread(target=lambda: polled.append(request("GET", url, token=token)))
        poller.start()
        time.sleep(0.5)
        start = time.monotonic()
        assert srv.stop(timeout_s=20) == 0
        assert time.monotonic() - start < 10
        poller.join(5)
        # told why, rather than "pending" (a poll again would find no server, then a new
        # one that knows no such session)
        [(status, body)] = polled
        assert status == 404 and "the server is shutting down" in body["error"]["message"]
    finally:
        srv.stop()
    assert "msg=stopped" in (tmp_path / "log").read_text()


def test_a_zero_shutdown_timeout_cancels_requests_in_flight(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    srv = ServerProcess(tiny_llama_path, "--shutdown-timeout-s", "0", log_path=tmp_path / "log")
    srv.start()
    try:
        body = {"model": str(tiny_llama_path), "prompt": "Once upon a time", "max_tokens": 1000,
                "n": 64, "temperature": 1.0, "seed": 1}  # fmt: skip
        answers: list[object] = []
        url = srv.url + "/v1/completions"
        client = threading.Thread(target=lambda: answers.append(_posted(url, body)))
        client.start()
        time.sleep(0.5)  # the request is in the engine: ~3 s of work
        start = time.monotonic()
        assert srv.stop(timeout_s=20) == 0
        assert time.monotonic() - start < 2.5  # it did not wait for the request
        client.join(10)
        assert answers and answers[0] == 503  # told why, not a dropped connection
    finally:
        srv.stop()


def test_sigterm_answers_the_requests_its_grace_period_cannot_finish(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    """On SIGTERM the requests in flight get --shutdown-timeout-s to end: one that ends in it is
    answered in full; one still running then gets a 503 saying why, and a stream an error
    event with the same body, then its [DONE]; the process exits soon after. Nothing here
    races the clock: the long requests fill a long context (32K decode steps, a minute or more
    where the grace period is 2 s), each is known to run before SIGTERM (the stream by its
    first chunk, the plain one by the engine's gauge, which stays up), and the short one, sent
    just before SIGTERM, is judged by whether the server admitted it (its log line)."""
    grace = 2.0
    model = _long_context_model(tiny_llama_path, tmp_path)
    log = tmp_path / "log"
    srv = ServerProcess(model, "--shutdown-timeout-s", str(grace), "--kv-cache-gb", "0.25",
                        log_path=log)
    srv.start()
    try:
        url = srv.url + "/v1/completions"
        context = request("GET", srv.url + "/healthz")[1]["max_model_len"]
        assert context == 1 << 15
        # the prompt is 11 tokens: the long ones run to the end of the context
        long = {"model": str(model), "prompt": "Once upon a time", "max_tokens": context - 32,
                "ignore_eos": True}  # fmt: skip
        got: dict[str, tuple[float, Any]] = {}
        streaming = threading.Event()

        def ask(name: str, body: dict[str, Any], rid: str | None = None) -> None:
            if body.get("stream"):
                answer = _streamed(url, body, first=streaming)
            else:
                answer = _answered(url, body, rid)
            got[name] = (time.monotonic(), answer)

        def thread(*args: Any) -> threading.Thread:
            client = threading.Thread(target=ask, args=args)
            client.start()
            return client

        clients = [thread("stream", {**long, "stream": True})]
        assert streaming.wait(60), srv.log_tail()  # its first token is out
        clients.append(thread("plain", long))
        deadline = time.monotonic() + 60
        while metrics(srv.url).get("parrot_engine_jobs", 0) < 2:  # it generates as well
            assert time.monotonic() < deadline and "plain" not in got, srv.log_tail()
            time.sleep(0.05)
        rid = f"short-{time.monotonic_ns()}"
        clients.append(thread("short", {**long, "max_tokens": 8}, rid))
        soon = time.monotonic() + 1  # most often it runs when SIGTERM comes
        while time.monotonic() < soon and "short" not in got:
            if metrics(srv.url).get("parrot_engine_jobs", 0) >= 3:
                break
            time.sleep(0.01)
        start = time.monotonic()
        assert srv.stop(timeout_s=grace + 20) == 0
        exited = time.monotonic() - start
        for client in clients:
            client.join(30)
        assert exited < grace + 5, exited
        answers = {name: answer for name, (_, answer) in got.items()}
        long_ones = {k: v for k, v in answers.items() if k != "short"}
        assert not any(isinstance(a, OSError) for a in long_ones.values()), answers  # hung up on
        ended, (status, body) = got["plain"][0], answers["plain"]
        assert status == 503, body
        error = body["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
        assert f"grace period of {grace:g} s" in error["message"]
        assert grace - 0.2 < ended - start < grace + 5
        ended, events = got["stream"][0], answers["stream"]
        assert events[-2:] == [body, "[DONE]"], events[-3:]
        assert all("error" not in e for e in events[:-2]) and len(events) > 3
        assert grace - 0.2 < ended - start < grace + 5
    finally:
        srv.stop()
    text = log.read_text()
    admitted = f"request_id={rid}" in text
    if admitted:  # it was in flight: it ends within the grace period, answered in full
        status, short = answers["short"]
        assert status == 200 and short["choices"][0]["finish_reason"] == "length", short
        assert short["usage"]["completion_tokens"] == 8
    else:  # SIGTERM closed the listener first: refused, never seen by a handler
        assert isinstance(answers["short"], OSError), answers["short"]
    assert "msg=drained cancelled=2 unanswered=0" in text, text  # the long ones
    assert "status=503" in text and "status=500" not in text
    assert "Traceback" not in text and "never retrieved" not in text and "level=error" not in text


def test_sigterm_ends_a_responses_stream_with_its_error_and_failed_events(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    """A Responses API stream still generating when shutdown's grace period ends gets what a
    chat stream gets, in that API's events: an `error` event with the 503's code, then
    `response.failed`, and the stream closes (the Responses API sends no [DONE]); nothing
    hangs past the grace period and the process exits 0. The long context (as above) keeps
    the stream running well past the grace period."""
    grace = 1.0
    model = _long_context_model(tiny_llama_path, tmp_path)
    log = tmp_path / "log"
    srv = ServerProcess(model, "--shutdown-timeout-s", str(grace), "--kv-cache-gb", "0.25",
                        log_path=log)  # fmt: skip
    srv.start()
    try:
        context = request("GET", srv.url + "/healthz")[1]["max_model_len"]
        body = {"model": str(model), "input": "Once upon a time", "stream": True,
                "max_output_tokens": context - 256, "ignore_eos": True}  # fmt: skip
        got: list[list[tuple[str, Any]] | OSError] = []
        streaming = threading.Event()
        url = srv.url + "/v1/responses"
        client = threading.Thread(target=lambda: got.append(_typed(url, body, streaming)))
        client.start()
        assert streaming.wait(60), srv.log_tail()  # its first delta is out
        start = time.monotonic()
        assert srv.stop(timeout_s=grace + 20) == 0
        assert time.monotonic() - start < grace + 5
        client.join(30)
        assert not client.is_alive()  # the stream closed: no hang
    finally:
        srv.stop()
    [events] = got
    assert not isinstance(events, OSError), events  # ended, not hung up on
    kinds = [kind for kind, _ in events]
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds[:3]
    assert kinds[-2:] == ["error", "response.failed"], kinds[-3:]
    assert "response.output_text.delta" in kinds and "[DONE]" not in kinds
    typed = TypeAdapter(ResponseStreamEvent)  # built once: ~0.1 s each
    for kind, data in events:  # each as OpenAI's SDK reads it
        assert typed.validate_python(data).type == kind
    error, failed = events[-2][1], events[-1][1]["response"]
    assert error["code"] == "server_shutting_down"
    assert f"grace period of {grace:g} s" in error["message"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert failed["error"]["message"] == error["message"]
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    text = log.read_text()
    assert "msg=drained cancelled=1 unanswered=0" in text, text
    assert "Traceback" not in text and "never retrieved" not in text and "level=error" not in text


def _posted(url: str, body: dict) -> object:
    try:
        return request("POST", url, body)[0]
    except OSError as exc:  # the server closed the connection
        return exc


def _answered(url: str, body: dict, rid: str | None = None) -> tuple[int, Any] | OSError:
    """(status, decoded JSON body) of a POST, sent with X-Request-Id `rid` if given."""
    headers = {"Content-Type": "application/json"}
    if rid is not None:
        headers["X-Request-Id"] = rid
    req = urllib.request.Request(url, json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
    except OSError as exc:  # the server closed the connection, or refused it
        return exc


def _streamed(url: str, body: dict, first: threading.Event | None = None) -> list[Any] | OSError:
    """The data of a streamed POST's events, decoded ("[DONE]" as it is); `first` is set once
    the first event has come."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data, headers={"Content-Type": "application/json"})
    out: list[Any] = []
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    text = line[5:].strip()
                    out.append(text if text == "[DONE]" else json.loads(text))
                    if first is not None:
                        first.set()
    except OSError as exc:  # the server closed the connection
        return exc
    return out


def _typed(url: str, body: dict, first: threading.Event) -> list[tuple[str, Any]] | OSError:
    """(event name, decoded data) of a streamed POST's typed events (the Responses API's, or
    "[DONE]" with its text); `first` is set once a text delta has come."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data, headers={"Content-Type": "application/json"})
    out: list[tuple[str, Any]] = []
    kind = ""
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    text = line[5:].strip()
                    out.append(("[DONE]", text) if text == "[DONE]" else (kind, json.loads(text)))
                    if kind == "response.output_text.delta":
                        first.set()
    except OSError as exc:  # the server closed the connection
        return exc
    return out


def _long_context_model(tiny_llama_path: Path, tmp_path: Path) -> Path:
    """The tiny Llama with 32 times its 1024 positions (~2 s to decode on an idle CPU here;
    its weights do not depend on them): a stream that outlasts any grace period."""
    model = Path(shutil.copytree(tiny_llama_path, tmp_path / "llama"))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1 << 15}))
    return model
