"""A read cut off (a timeout, cancellation, Ctrl-C) while the submission it made is in flight:
the submission still reaches the server before any later request of the session."""

from __future__ import annotations

import asyncio

from aiohttp import web

import parrot_bridge as P
from tests.bridge.fake_server import SESSION_ROUTES, FakeServer, Handler

VARIABLE = "/v1/sessions/s-1/variables/{var}"


@P.semantic_function(max_tokens=4)
def echo(x):
    """Echo {{input:x}}:{{output:y}}"""


class SlowGraph:
    """A session whose submissions take `delay_s` to be taken; its variables exist (and are
    ready, valued "done") once a submission declaring them was, as on a real server."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.declared: set[str] = set()

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {**SESSION_ROUTES, ("POST", "/v1/sessions/s-1/graph"): self._graph,
                ("GET", VARIABLE): self._read}  # fmt: skip

    async def _graph(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        await asyncio.sleep(self.delay_s)
        self.declared.update(v["id"] for v in body["variables"])
        return web.json_response({})

    async def _read(self, request: web.Request) -> web.StreamResponse:
        var = request.match_info["var"]
        if var not in self.declared:
            error = {"message": f"variable {var!r} does not exist in session 's-1'",
                     "type": "not_found_error", "code": "variable_not_found"}  # fmt: skip
            return web.json_response({"error": error}, status=404)
        return web.json_response({"id": var, "status": "ready", "value": "done"})


async def test_a_read_cancelled_during_its_submission_leaves_it_to_arrive_first() -> None:
    """The cancelled read freed the session for the next one while the server was still taking
    the submission: the next read asked for a variable the server did not have yet (404)."""
    server = SlowGraph(delay_s=0.5)
    with FakeServer(server.routes()) as url:
        async with P.Session(url):
            y = echo("a")
            try:
                await asyncio.wait_for(y.aget(), 0.1)
            except TimeoutError:
                pass
            else:
                raise AssertionError("the read was not cut off")
            assert await y.aget(timeout=5) == "done"
