"""Cross-origin access (`--allowed-origins`): the policy alone, then a live server's answers to
a browser's preflight, plain and streamed responses, and other origins."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.api import all_routes
from server.cors import CorsPolicy, preflight_middleware
from server.launcher import ServerProcess

APP = "http://app.example:5173"


def test_the_policy_allows_listed_origins_or_any() -> None:
    policy = CorsPolicy((APP,))
    assert policy.allow_origin(APP) == APP
    assert policy.allow_origin("http://evil.example") is None
    assert policy.allow_origin(None) is None
    assert CorsPolicy(("*",)).allow_origin("http://evil.example") == "*"
    for bad in ["app.example", "http://app.example/path", "ftp://x", ""]:
        with pytest.raises(ValueError, match="scheme://host"):
            CorsPolicy((bad,))


async def test_a_preflight_allows_every_method_the_api_serves() -> None:
    # a browser sends PUT (setting a variable) only if the preflight lists it
    app = web.Application(middlewares=[preflight_middleware(CorsPolicy((APP,)))])
    async with TestClient(TestServer(app)) as client:
        for method in sorted({route.method for route in all_routes()}):
            resp = await client.options("/v1/sessions/s/variables/v", headers={
                "Origin": APP, "Access-Control-Request-Method": method,
            })  # fmt: skip
            assert resp.status == 204
            allowed = resp.headers["Access-Control-Allow-Methods"].split(", ")
            assert method in allowed, (method, allowed)


def call(method: str, url: str, headers: dict[str, str], body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


@pytest.mark.slow
def test_a_browser_page_from_an_allowed_origin_can_call_the_api(tiny_llama_path: Path) -> None:
    chat = "/v1/chat/completions"
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    with ServerProcess(tiny_llama_path, "--served-model-name", "tiny", "--allowed-origins", APP) as srv:
        # the preflight a browser sends before a JSON POST with a bearer token
        status, headers, _ = call("OPTIONS", srv.url + chat, {
            "Origin": APP, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        })  # fmt: skip
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == APP
        assert "POST" in headers["Access-Control-Allow-Methods"]
        assert headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        # the call itself, plain and streamed (its headers go out before the body)
        json_headers = {"Origin": APP, "Content-Type": "application/json"}
        status, headers, _ = call("POST", srv.url + chat, json_headers, body)
        assert status == 200 and headers["Access-Control-Allow-Origin"] == APP
        assert headers["Vary"] == "Origin"
        # the page's script may read the request's id
        assert headers["Access-Control-Expose-Headers"] == "X-Request-Id"
        assert headers["X-Request-Id"].startswith("req_")
        status, headers, raw = call("POST", srv.url + chat, json_headers, {**body, "stream": True})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == APP
        assert raw.rstrip().endswith(b"data: [DONE]")
        # an error is readable by the page too
        status, headers, _ = call("POST", srv.url + chat, json_headers, {**body, "model": "x"})
        assert status == 404 and headers["Access-Control-Allow-Origin"] == APP
        # another origin gets no grant, and its preflight is refused with a reason
        other = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        status, headers, raw = call("OPTIONS", srv.url + chat, other)
        assert status == 403 and "Access-Control-Allow-Origin" not in headers
        assert "--allowed-origins" in json.loads(raw)["error"]["message"]
        status, headers, _ = call("GET", srv.url + "/v1/models", {"Origin": "http://evil.example"})
        assert status == 200 and "Access-Control-Allow-Origin" not in headers


@pytest.mark.slow
def test_without_allowed_origins_there_is_no_cors(tiny_llama_path: Path) -> None:
    with ServerProcess(tiny_llama_path) as srv:
        status, headers, _ = call("GET", srv.url + "/v1/models", {"Origin": APP})
        assert status == 200 and "Access-Control-Allow-Origin" not in headers
        status, _, _ = call("OPTIONS", srv.url + "/v1/chat/completions", {
            "Origin": APP, "Access-Control-Request-Method": "POST",
        })  # fmt: skip
        assert status == 405
