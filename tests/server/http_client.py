"""Small urllib helpers for tests against a live server: JSON requests, SSE, metrics."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


def request(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    raw: bytes | None = None,
    timeout: float = 60,
) -> tuple[int, Any]:
    """(status, decoded JSON body) — error statuses are returned, not raised."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def events(url: str, token: str | None = None, timeout: float = 60) -> list[tuple[str, Any]]:
    """All server-sent events of a GET, as (event, decoded data)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out: list[tuple[str, Any]] = []
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        event, data = "message", []
        for raw in r:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                text = "\n".join(data)
                out.append((event, text if text == "[DONE]" else json.loads(text)))
                event, data = "message", []
    return out


def metrics(url: str) -> dict[str, float]:
    """Samples of /metrics by 'name' or 'name{labels}'."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"not a Prometheus sample: {line!r}"
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def requests_except_metrics(samples: dict[str, float]) -> float:
    """HTTP requests counted so far, leaving out scrapes of /metrics itself."""
    return sum(
        v
        for k, v in samples.items()
        if k.startswith("parrot_http_requests_total") and 'route="/metrics"' not in k
    )


def idle_metrics(url: str, timeout_s: float = 10) -> dict[str, float]:
    """/metrics once every KV block is free again (or after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        m = metrics(url)
        if m["parrot_kv_free_blocks"] == m["parrot_kv_total_blocks"] or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def ask_calls(lengths: list[int]) -> list[dict[str, Any]]:
    """Native-API calls `ask-j` over one `doc` variable, call j reading `q{j}`, writing `a{j}`
    and generating up to `lengths[j]` tokens greedily: siblings that share a prefix."""
    ask = "Doc:\n{{input:doc}}\nPart {{input:q}}:{{output:a}}"
    return [
        {"id": f"ask-{j}", "function": "ask", "template": ask,
         "inputs": {"doc": "doc", "q": f"q{j}"}, "outputs": {"a": f"a{j}"},
         "sampling": {"max_tokens": n, "temperature": 0}}
        for j, n in enumerate(lengths)
    ]  # fmt: skip


def open_session(url: str) -> tuple[str, str]:
    """A new session's id and token."""
    status, body = request("POST", url + "/v1/sessions", {})
    assert status == 201, body
    return body["session_id"], body["token"]


def submit(
    url: str, sid: str, token: str, variables: list, calls: list, awaits: list | None = None
) -> None:
    """POST a graph to the session; it must be taken (200)."""
    body = {"variables": variables, "calls": calls, "awaits": awaits or []}
    status, reply = request("POST", f"{url}/v1/sessions/{sid}/graph", body, token)
    assert status == 200, reply


def value(url: str, sid: str, token: str, var: str, timeout: float = 60) -> dict:
    """A variable's body, its value waited for up to `timeout` s."""
    status, body = request(
        "GET", f"{url}/v1/sessions/{sid}/variables/{var}?timeout={timeout}", token=token
    )
    assert status == 200, body
    return body
