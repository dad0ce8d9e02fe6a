"""Starting and stopping a server process: bad flags, bad models, graceful shutdown."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

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
    event with the same body, then its [DONE]; the process exits soon after."""
    grace = 2.0
    log = tmp_path / "log"
    srv = ServerProcess(tiny_llama_path, "--shutdown-timeout-s", str(grace), log_path=log)
    srv.start()
    try:
        url = srv.url + "/v1/completions"
        # ~10 s of generation here, alone; the short one ~0.3 s beside them
        long = {"model": str(tiny_llama_path), "prompt": "Once upon a time", "max_tokens": 900,
                "ignore_eos": True}  # fmt: skip
        got: dict[str, tuple[float, Any]] = {}

        def ask(name: str, body: dict[str, Any]) -> None:
            answer = _streamed(url, body) if body.get("stream") else _answered(url, body)
            got[name] = (time.monotonic(), answer)

        def started(name: str, body: dict[str, Any], jobs: int) -> threading.Thread:
            """`ask` in a thread, once its request runs in the engine (`jobs` in all)."""
            client = threading.Thread(target=ask, args=(name, body))
            client.start()
            deadline = time.monotonic() + 30
            while metrics(srv.url).get("parrot_engine_jobs", 0) < jobs:
                assert time.monotonic() < deadline, srv.log_tail()
                time.sleep(0.01)
            return client

        clients = [started("stream", {**long, "stream": True}, 1), started("plain", long, 2),
                   started("short", {**long, "max_tokens": 8}, 3)]  # fmt: skip
        assert "short" not in got  # it runs when SIGTERM comes
        start = time.monotonic()
        assert srv.stop(timeout_s=grace + 20) == 0
        exited = time.monotonic() - start
        for client in clients:
            client.join(10)
        assert exited < grace + 3, exited
        answers = {name: answer for name, (_, answer) in got.items()}
        assert not any(isinstance(a, OSError) for a in answers.values()), answers  # hung up on
        status, short = answers["short"]
        assert status == 200 and short["choices"][0]["finish_reason"] == "length"
        assert short["usage"]["completion_tokens"] == 8 and got["short"][0] - start < grace
        ended, (status, body) = got["plain"][0], answers["plain"]
        assert status == 503, body
        error = body["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
        assert f"grace period of {grace:g} s" in error["message"]
        assert grace - 0.2 < ended - start < grace + 2
        ended, events = got["stream"][0], answers["stream"]
        assert events[-2:] == [body, "[DONE]"], events[-3:]
        assert all("error" not in e for e in events[:-2]) and len(events) > 3
        assert grace - 0.2 < ended - start < grace + 2
    finally:
        srv.stop()
    text = log.read_text()
    assert "msg=drained cancelled=2 unanswered=0" in text, text
    assert "status=503" in text and "status=500" not in text
    assert "Traceback" not in text and "never retrieved" not in text and "level=error" not in text


def _posted(url: str, body: dict) -> object:
    try:
        return request("POST", url, body)[0]
    except OSError as exc:  # the server closed the connection
        return exc


def _answered(url: str, body: dict) -> tuple[int, Any] | OSError:
    try:
        return request("POST", url, body)
    except OSError as exc:  # the server closed the connection
        return exc


def _streamed(url: str, body: dict) -> list[Any] | OSError:
    """The data of a streamed POST's events, decoded ("[DONE]" as it is)."""
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
    except OSError as exc:  # the server closed the connection
        return exc
    return out
