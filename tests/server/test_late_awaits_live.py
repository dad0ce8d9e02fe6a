"""Awaits that come after their calls were queued (a client reading outputs one by one, or
awaiting what an earlier submission sent) move those calls up, on a live server whose engine
runs one call at a time, so that the rest wait in the server's queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.launcher import ServerProcess
from tests.server.http_client import request

pytestmark = pytest.mark.slow

CALLS = 6


def test_a_queued_call_awaited_later_for_latency_runs_next(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    flags = ("--max-calls-per-engine", "1")
    with ServerProcess(tiny_llama_path, *flags, log_path=tmp_path / "server.log") as srv:
        status, body = request("POST", srv.url + "/v1/sessions", {})
        sid, token = body["session_id"], body["token"]
        base = f"{srv.url}/v1/sessions/{sid}"
        variables = [{"id": f"x{i}", "value": f"Story {i}:"} for i in range(CALLS)]
        variables += [{"id": f"y{i}"} for i in range(CALLS)]
        calls = [
            {"id": f"c{i}", "template": "{{input:x}}{{output:y}}",
             "inputs": {"x": f"x{i}"}, "outputs": {"y": f"y{i}"},
             "sampling": {"max_tokens": 120, "temperature": 0, "ignore_eos": True}}
            for i in range(CALLS)
        ]  # fmt: skip
        # all bulk work at first: queued in arrival order behind c0
        awaits = [{"variable": f"y{i}", "criteria": "throughput"} for i in range(CALLS)]
        body = {"variables": variables, "calls": calls, "awaits": awaits}
        status, reply = request("POST", base + "/graph", body, token)
        assert status == 200, reply
        last = f"y{CALLS - 1}"
        status, reply = request("GET", f"{base}/variables/{last}?criteria=latency&timeout=60",
                                token=token)  # fmt: skip
        assert status == 200 and reply["status"] == "ready", reply
        states = []
        for i in range(1, CALLS - 1):
            status, reply = request("GET", f"{base}/variables/y{i}?timeout=0", token=token)
            states.append(reply["status"])
        # it ran right after the call that held the engine, before the bulk work queued first
        assert states == ["pending"] * (CALLS - 2)
