"""Work that stops when its client hangs up or shutdown's grace period ends
(`server.api.disconnect`, `server.drain`), on a stand-in request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.api import disconnect, plain_runs
from server.api.disconnect import ClientGone, unless_disconnected, while_connected
from server.drain import Drain
from server.engine import JobOutput
from server.errors import ApiError
from server.keys import DRAIN


class _Transport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


class _Request:
    def __init__(self) -> None:
        self.transport = _Transport()
        self.app = {DRAIN: Drain()}


def test_a_stream_waiting_for_its_first_output_stops_when_its_client_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A streamed request writes nothing while its prompt is prefilled: a client that hangs up
    then is noticed anyway, and the engine work behind the stream is closed (aborted) at once,
    not when the prefill is over."""
    monkeypatch.setattr(disconnect, "POLL_S", 0.01)
    closed = asyncio.Event()

    async def prefill_forever() -> AsyncIterator[int]:
        try:
            yield 1
            await asyncio.sleep(3600)  # a long prefill: no output for now
            yield 2
        finally:
            closed.set()

    async def main() -> list[Any]:
        request = _Request()
        got: list[Any] = []

        async def read() -> None:
            async for item in while_connected(request, prefill_forever()):  # type: ignore[arg-type]
                got.append(item)

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        assert got == [1] and not closed.is_set()
        request.transport.closing = True
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader, 2)
        assert closed.is_set()
        return got

    assert asyncio.run(main()) == [1]


def test_a_connected_stream_passes_everything_on_and_closes_its_source() -> None:
    closed = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        try:
            for i in range(3):
                await asyncio.sleep(0)
                yield i
        finally:
            closed.set()

    async def main() -> list[int]:
        out = [i async for i in while_connected(_Request(), source())]  # type: ignore[arg-type]
        assert closed.is_set()
        return out

    assert asyncio.run(main()) == [0, 1, 2]


def test_the_end_of_the_grace_period_stops_streams_and_plain_work_with_a_503() -> None:
    """Shutdown: the requests in flight run on through the grace period; once it is over a
    stream's source is closed (its engine jobs abort) and a 503 raised for its error event,
    and non-streamed work is cancelled with the same 503. A request that ends within the
    grace period is not touched, and the wait ends as soon as none is left."""
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        try:
            while True:
                await asyncio.sleep(0.001)
                yield 1
        finally:
            closed.set()

    async def main() -> None:
        request = _Request()
        drain = request.app[DRAIN]

        async def tracked(work: Any) -> Any:
            with drain.tracked():
                return await work

        async def read() -> int:
            items = while_connected(request, endless())  # type: ignore[arg-type]
            return len([i async for i in items])

        def plain(work: Any) -> asyncio.Task[Any]:
            waited = unless_disconnected(request, work)  # type: ignore[arg-type]
            return asyncio.create_task(tracked(waited))

        stream = asyncio.create_task(tracked(read()))
        long, short = plain(asyncio.sleep(3600)), plain(asyncio.sleep(0.05, 7))
        await asyncio.sleep(0.01)
        assert drain.running == 3
        cut = await drain.wait(0.2)
        assert cut == 2 and drain.running == 0 and closed.is_set()
        assert await short == 7
        for task in (stream, long):
            with pytest.raises(ApiError) as info:
                await task
            assert info.value.status == 503 and info.value.code == "server_shutting_down"
            assert "grace period of 0.2 s" in info.value.message
        quick = Drain()
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await quick.wait(5) == 0 and loop.time() - start < 2  # nothing in flight

    asyncio.run(main())



def test_a_stream_whose_grace_period_ends_while_its_last_item_is_written_ends_normally() -> None:
    """The grace period may end while the handler writes a stream's last item (its
    finish_reason chunk): the end of the source, ready by then, ends the stream as usual; the
    503 is raised only for a wait on an item that is not ready."""

    async def source() -> AsyncIterator[str]:
        yield "token"
        yield "final"

    async def main() -> list[str]:
        request = _Request()
        got: list[str] = []
        async for item in while_connected(request, source()):  # type: ignore[arg-type]
            got.append(item)
            await asyncio.sleep(0)  # written meanwhile...
            request.app[DRAIN].stopped = True  # ...the grace period ends
        return got

    assert asyncio.run(main()) == ["token", "final"]


def test_a_client_that_left_during_the_grace_period_is_told_it_left_not_a_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Gone and past the grace period at once: the request is logged as a hang-up (499), as
    it was one, not as the server's 503."""
    monkeypatch.setattr(disconnect, "POLL_S", 0.01)

    async def slow() -> AsyncIterator[int]:
        await asyncio.sleep(3600)
        yield 1

    async def main() -> None:
        request = _Request()
        request.transport.closing = True
        request.app[DRAIN].stopped = True
        with pytest.raises(ClientGone):
            await unless_disconnected(request, asyncio.sleep(3600))  # type: ignore[arg-type]
        with pytest.raises(ConnectionResetError):
            async for _ in while_connected(request, slow()):  # type: ignore[arg-type]
                pass

    asyncio.run(main())


class _Stream:
    """What `stream_outputs` writes its error events to."""

    def __init__(self) -> None:
        self.request = _Request()
        self.sent: list[Any] = []

    async def send(self, data: Any, event: str | None = None) -> None:
        self.sent.append(data)


def _out(finished: bool) -> JobOutput:
    return JobOutput(job_id=0, context_id=0, new_text="x", finished=finished)


@pytest.mark.parametrize("responses", [False, True])
def test_a_stream_gets_an_error_event_only_while_a_choice_is_unfinished(
    monkeypatch: pytest.MonkeyPatch, responses: bool
) -> None:
    """The end of the grace period fails a stream with the 503's code in its error event
    (the Responses API's too); once every choice has its last output, nothing failed for the
    client (the source's end, awaited after it, just came too late): no error event, and the
    handler goes on to its usage chunk and [DONE], or its Responses completion."""
    monkeypatch.setattr(disconnect, "POLL_S", 0.01)

    async def main(last_finished: bool) -> tuple[list[JobOutput], list[Any]]:
        stream = _Stream()
        drain = stream.request.app[DRAIN]

        async def source() -> AsyncIterator[tuple[int, JobOutput]]:
            yield 0, _out(False)
            yield 0, _out(last_finished)
            drain.stopped = True  # the grace period ends before the end comes
            await asyncio.sleep(3600)

        monkeypatch.setattr(plain_runs, "_generate", lambda *_: source())
        failures: list[tuple[str, str, str | None]] = []

        async def failed(message: str, kind: str, code: str | None) -> None:
            failures.append((message, kind, code))

        outputs = plain_runs.stream_outputs(
            stream, None, [[1]], [[None]], None, None,  # type: ignore[arg-type, list-item]
            failed=failed if responses else None,
        )  # fmt: skip
        got = [out async for _, out in outputs]
        return got, failures if responses else stream.sent

    got, errors = asyncio.run(main(last_finished=True))
    assert len(got) == 2 and errors == []
    got, errors = asyncio.run(main(last_finished=False))
    assert len(got) == 2 and len(errors) == 1
    if responses:
        message, kind, code = errors[0]
    else:
        body = errors[0]["error"]
        message, kind, code = body["message"], body["type"], body["code"]
    assert code == "server_shutting_down" and kind == "server_error"
    assert message.startswith("the server is shutting down")

def test_a_cancelled_handler_leaves_no_unretrieved_gather_behind() -> None:
    """A handler cancelled while it waits on gathered work (aiohttp cancels what is left at
    the end of shutdown) cancels that work and retrieves its CancelledError, which asyncio
    would otherwise log as "_GatheringFuture exception was never retrieved"."""
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors.append(ctx))
        work = asyncio.gather(asyncio.sleep(3600), asyncio.sleep(3600))
        handler = asyncio.create_task(unless_disconnected(_Request(), work))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        handler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handler
        assert work.done()
        del work, handler

    asyncio.run(main())
    import gc

    gc.collect()
    assert errors == []
