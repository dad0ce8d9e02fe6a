"""Request parsing shared by every route: what a body too odd to process gets back."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel

from server.api.route import MAX_BODY_DEPTH, parse_body
from server.middleware import error_middleware


class _Body(BaseModel):
    x: Any = None


async def _echo(request: web.Request) -> web.Response:
    await parse_body(request, _Body)
    return web.json_response({"ok": True})


def _nested(depth: int) -> str:
    return '{"x": ' + "[" * (depth - 1) + "1" + "]" * (depth - 1) + "}"


async def test_a_body_nested_too_deeply_is_a_400_saying_so() -> None:
    # before: a RecursionError in the parser or the walks after it, answered 500
    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/", _echo)
    async with TestClient(TestServer(app)) as client:
        assert (await client.post("/", data=_nested(MAX_BODY_DEPTH))).status == 200
        for depth in (MAX_BODY_DEPTH + 1, 5_000, 200_000):
            resp = await client.post("/", data=_nested(depth))
            error = (await resp.json())["error"]
            assert resp.status == 400, error
            assert f"nested more than {MAX_BODY_DEPTH} levels deep" in error["message"]
            assert error["type"] == "invalid_request_error"
            # where, however deep (before: past the parser's stack, nothing said where)
            assert "(at x.0.0.....0.0.0)" in error["message"] and error["param"] == "x", error
        keyed = '{"a": 1, "k\\"{": {"b": [0, "]", ' + "[" * 5000 + "]" * 5000 + "]}}"
        error = (await (await client.post("/", data=keyed)).json())["error"]
        assert '(at k"{.b.2.....0.0.0)' in error["message"] and error["param"] == 'k"{', error


async def test_a_body_over_the_size_limit_is_a_413_naming_the_setting() -> None:
    from server.config import ServerConfig
    from server.keys import CONFIG

    app = web.Application(middlewares=[error_middleware], client_max_size=1024 * 1024)
    app[CONFIG] = ServerConfig(max_request_mb=1)
    app.router.add_post("/", _echo)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/", data='{"x": "' + "a" * 1024 * 1024 + '"}')
        error = (await resp.json())["error"]
        assert resp.status == 413
        assert "larger than 1 MB" in error["message"] and "--max-request-mb" in error["message"]
