"""A stand-in for a Parrot server on loopback, for failures a real one does not produce on cue:
routes that never answer, streams that stop sending, canned error bodies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType

from aiohttp import web

from server.launcher import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def never_answer(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(3600)  # cancelled when the server stops
    raise AssertionError("unreachable")


async def stream_then_stall(request: web.Request) -> web.StreamResponse:
    """Starts an event stream (headers sent), then sends nothing."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    return await never_answer(request)


def slow_stream(chunk: dict[str, object], count: int, gap_s: float) -> Handler:
    """An event stream of `count` copies of `chunk`, `gap_s` apart, then `[DONE]`."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(count):
            await asyncio.sleep(gap_s)
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    return handle


def json_answer(body: object, status: int = 200) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status)

    return handle


async def still_pending(request: web.Request) -> web.StreamResponse:
    """A variable read answered as a server whose call is still generating answers: held for
    the long poll's `timeout`, then pending."""
    await asyncio.sleep(float(request.query.get("timeout", "0")))
    return web.json_response({"id": request.match_info.get("var", "v"), "status": "pending"})


# a session that opens, takes graphs and closes; reads of its variables are up to the test
SESSION_ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/v1/sessions"): json_answer({"session_id": "s-1", "token": "t"}),
    ("POST", "/v1/sessions/s-1/graph"): json_answer({}),
    ("DELETE", "/v1/sessions/s-1"): json_answer({}),
}


class FakeServer:
    """`with FakeServer({("GET", "/path/{x}"): handler}) as url:` serves the routes at `url`
    (on a loop in a thread of its own); unlisted routes answer 404."""

    def __init__(self, routes: dict[tuple[str, str], Handler], port: int = 0) -> None:
        """`port`: one picked beforehand (`server.launcher.free_port`), so that a client can be
        pointed at the server before it starts; 0: any free one."""
        self.port = port
        self.app = web.Application()
        for (method, path), handler in routes.items():
            self.app.router.add_route(method, path, handler)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner = web.AppRunner(self.app, shutdown_timeout=0.1)

    def __enter__(self) -> str:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> str:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{self.port}"

    async def _stop(self) -> None:
        await self._runner.cleanup()
        # handlers still waiting (the client gave up on them) end here, not at loop close
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)


async def longest_stall(call: Awaitable[object]) -> float:
    """The longest time a ticker on this loop went unscheduled while `call` ran (a client that
    waits on a blocking call inside an async method stalls every task of its caller's loop)."""
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    await asyncio.wait_for(call, 10)
    ticker.cancel()
    return max(b - a for a, b in zip(ticks, ticks[1:], strict=False))


@contextlib.contextmanager
def late_server(
    routes: dict[tuple[str, str], Handler], delay_s: float = 0.25
) -> Iterator[tuple[str, threading.Event]]:
    """`with late_server(routes) as (url, up):` a FakeServer on a port picked now that starts
    listening `delay_s` later (a server starting: until then a client finds nothing there);
    `up` is set once it listens. It stops when the block ends."""
    port = free_port()
    up, done = threading.Event(), threading.Event()

    def serve() -> None:
        time.sleep(delay_s)
        with FakeServer(routes, port):
            up.set()
            done.wait(10)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", up
    finally:
        done.set()
        thread.join(10)
