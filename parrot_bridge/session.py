"""A session on a Parrot server: records calls into a pending graph, submits it in one request
when a value is awaited, and reads variables (long-poll or stream)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from parrot_bridge.errors import CallFailedError, ParrotError
from parrot_bridge.loop_thread import shared_loop
from parrot_bridge.pending_graph import PendingGraph
from parrot_bridge.server_url import server_root
from parrot_bridge.transport import Transport
from parrot_bridge.variable import Criteria, SemanticVariable

if TYPE_CHECKING:
    from parrot_bridge.function import SemanticFunction

__all__ = ["Session", "current_session"]

_ANSWER_GRACE_S = 1.0

log = logging.getLogger("parrot_bridge")

_current: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "parrot_session", default=None
)


def current_session() -> Session:
    """The session of the innermost `with P.Session(...)` / `async with` block."""
    session = _current.get()
    if session is None:
        raise ParrotError(
            "no active Parrot session: call semantic functions inside `with P.Session(url):` "
            "(or `async with`), or use fn.invoke(session, ...)"
        )
    return session


class Session:
    """One application session on the server (`with` and `async with`).

    Semantic function calls made inside it are recorded, not sent. The pending graph goes to
    the server in one request when a variable is read (`get`, `aget`, `stream`, `astream`) or
    on `flush()`; later calls extend the graph on the server. A call reading a variable that has
    no value yet (and no call writes) is sent all the same: it waits on the server, which fills
    its ready leading text meanwhile, until the variable is `set()` (or `aset()`), which sends
    the value at once when the variable was sent already, else with the next submission.

    A submission the server rejects (or that cannot be sent) raises its error; its calls are
    dropped and their outputs raise that error when read, but their inputs are kept on the
    client, so later calls may read the same strings and variables.

    `timeout`: seconds the server may take to answer a request (beyond a long poll's wait)
    and a stream may go without a chunk, as the OpenAI client's `timeout`; past it the request
    raises `ParrotError`. None: no limit. `get(timeout=)` bounds the wait for a value.
    `max_retries`: how often a request is sent again when no connection could be made (the
    server starting or restarting), waiting 0.5 s, then 1, 2, 4, up to 8 s between tries, as
    the OpenAI client does (2 retries: 1.5 s in all; give more to outlast a model's load).
    `transport`: the HTTP client every request goes through (default: one for `url`,
    `timeout`, `max_retries` and `api_key`, the server's `--api-key`).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:9000",
        *,
        name: str | None = None,
        poll_s: float = 30.0,
        timeout: float | None = 600.0,
        max_retries: int = 2,
        transport: Transport | None = None,
        api_key: str | None = None,
    ) -> None:
        if not 0 < poll_s <= 300:
            raise ValueError(f"poll_s must be in (0, 300], got {poll_s}")
        self.url = server_root(url, "the server's url")  # "http://host:9000/v1" too
        self.api_key = api_key
        self.name = name
        self.poll_s = poll_s
        self.id: str | None = None
        self._loop = shared_loop()
        self._transport = transport or Transport(
            url, timeout=timeout, max_retries=max_retries, api_key=api_key
        )
        self._pending = PendingGraph(self)
        self._constants: dict[str, SemanticVariable] = {}
        self._flush_lock: asyncio.Lock | None = None  # made on the SDK loop
        self._closed = False  # no new calls or reads
        self._ended = False  # the server was told (or had forgotten it): close() is done
        # reads and streams in flight (tasks on the SDK loop): closing ends them, since a
        # stream's connection may outlive the client that closing shuts down
        self._readers: set[asyncio.Task[Any]] = set()
        self._ending: set[asyncio.Task[Any]] = set()  # readers that closing cancelled
        self._submissions: set[asyncio.Future[None]] = set()  # in flight (on the SDK loop)
        self._context_tokens: list[contextvars.Token[Session | None]] = []

    def __repr__(self) -> str:
        if self.id is None:
            return f"Session({self.url!r}, not opened)"
        return f"Session({self.url!r}, id={self.id!r}, {'closed' if self._closed else 'open'})"

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> Session:
        """Create the session on the server (done lazily otherwise)."""
        self._loop.run(self._ensure_open())
        return self

    async def aopen(self) -> Session:
        await self._loop.arun(self._ensure_open())
        return self

    def close(self) -> None:
        """Close it on the server: its calls stop, its variables are gone. Pending calls are
        dropped; reads and streams in flight raise `ParrotError` (the session was closed). When
        the server could not be told, it raises, and close() may be called again."""
        self._loop.run(self._close())

    async def aclose(self) -> None:
        await self._loop.arun(self._close())

    def __enter__(self) -> Session:
        self.open()
        self._context_tokens.append(_current.set(self))
        return self

    def __exit__(self, et: type[BaseException] | None, *exc: object) -> None:
        _current.reset(self._context_tokens.pop())
        try:
            self.close()
        except ParrotError:
            if et is None:  # do not hide the error that ended the block
                raise

    async def __aenter__(self) -> Session:
        await self.aopen()
        self._context_tokens.append(_current.set(self))
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        _current.reset(self._context_tokens.pop())
        try:
            await self.aclose()
        except ParrotError:
            if et is None:
                raise

    # -- submitting ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Send the pending calls now (one request), without waiting for any value; calls
        reading an unset variable go too, and wait on the server until it is set."""
        self._loop.run(self._flush())

    async def aflush(self) -> None:
        await self._loop.arun(self._flush())

    # -- used by variables and functions -------------------------------------------------------

    def _record_call(
        self,
        call_id: str,
        fn: SemanticFunction,
        inputs: dict[str, SemanticVariable],
        outputs: dict[str, SemanticVariable],
    ) -> None:
        if self._closed:
            raise ParrotError(f"session {self.id} is closed")
        self._pending.add_call(call_id, fn, inputs, outputs)

    def _constant(self, value: str, name: str) -> SemanticVariable:
        """A variable for a string argument; equal strings share one variable (and prefix)."""
        var = self._constants.get(value)
        if var is None:
            var = self._constants.setdefault(value, SemanticVariable(value, name))
        return var

    def _get(self, var: SemanticVariable, criteria: Criteria, timeout: float | None) -> str:
        return self._loop.run(self._read(var, criteria, timeout))

    async def _aget(self, var: SemanticVariable, criteria: Criteria, timeout: float | None) -> str:
        return await self._loop.arun(self._read(var, criteria, timeout))

    def _set(self, var: SemanticVariable, value: str) -> None:
        if not self._pending.set_local(var, value):
            self._loop.run(self._put(var, value))

    async def _aset(self, var: SemanticVariable, value: str) -> None:
        if not self._pending.set_local(var, value):
            await self._loop.arun(self._put(var, value))

    def _stream(self, var: SemanticVariable, criteria: Criteria) -> Iterator[str]:
        return self._loop.iterate(lambda: self._follow(var, criteria))

    def _astream(self, var: SemanticVariable, criteria: Criteria) -> AsyncIterator[str]:
        return self._loop.aiterate(lambda: self._follow(var, criteria))

    # -- coroutines on the SDK loop ------------------------------------------------------------

    @property
    def _path(self) -> str:
        return f"/v1/sessions/{self.id}"

    async def _ensure_open(self) -> None:
        if self._closed:
            raise ParrotError(f"session {self.id} is closed")
        if self._flush_lock is None:
            self._flush_lock = asyncio.Lock()
        if self.id is None:
            body: dict[str, Any] = {"name": self.name} if self.name else {}
            try:
                created = await self._transport.request("POST", "/v1/sessions", body)
            except ParrotError:
                await self._transport.close()  # nothing to keep; a retry opens a new client
                raise
            self.id = created["session_id"]
            self._transport.token = created["token"]

    async def _flush(self, awaits: dict[str, Criteria] | None = None) -> None:
        await self._ensure_open()
        # A read cut off (its timeout, a cancelled task, Ctrl-C) leaves its submission to go on:
        # cut, it would free the lock before the server took it, so that a later read could ask
        # for its variables first (404), or the server would never get calls the client counts
        # as sent.
        submission = asyncio.ensure_future(self._submit(awaits))
        self._submissions.add(submission)
        submission.add_done_callback(self._submitted)
        await asyncio.shield(submission)

    def _submitted(self, submission: asyncio.Future[None]) -> None:
        self._submissions.discard(submission)
        if not submission.cancelled():
            submission.exception()  # seen: its reader may be gone, its calls carry the error

    async def _submit(self, awaits: dict[str, Criteria] | None) -> None:
        assert self._flush_lock is not None
        # one submission at a time, so a read never overtakes the submission declaring its var
        async with self._flush_lock:
            batch = self._pending.take(awaits)
            if batch is None:
                return
            try:
                await self._transport.request("POST", f"{self._path}/graph", batch.body)
            except Exception as exc:  # not sent (whatever stopped it): its calls must not vanish
                error = exc if isinstance(exc, ParrotError) else ParrotError(
                    f"the calls could not be submitted: {exc!r}")  # fmt: skip
                self._pending.reject(batch, error)
                raise

    async def _put(self, var: SemanticVariable, value: str) -> None:
        """Set a variable the server knows, after the submission in flight (which may declare
        it, or be refused and leave it to the next one). Once the session is closed, its calls
        are gone: the value stays on the client (text to other sessions' calls)."""
        if self._closed:
            var._value = value
            return
        await self._ensure_open()
        assert self._flush_lock is not None
        async with self._flush_lock:
            if self._pending.set_local(var, value):
                return  # its submission was refused: it goes with the next one
            body = {"value": value}
            await self._transport.request("PUT", f"{self._path}/variables/{var.id}", body)
            var._value = value

    async def _read(self, var: SemanticVariable, criteria: Criteria, timeout: float | None) -> str:
        self._check_readable(var)
        async with self._reading(var):
            await self._flush({var.id: criteria})
            self._warn_if_unset_upstream(var)
            # a server that stops answering must not outlast the caller's `timeout` either; the
            # grace lets the answer to the last poll (sent when `timeout` is up) arrive
            limit = None if timeout is None else timeout + _ANSWER_GRACE_S
            try:
                async with asyncio.timeout(limit):
                    return await self._poll(var, criteria, timeout)
            except TimeoutError:
                raise ParrotError(
                    f"timed out after {timeout} s waiting for variable {var._label}",
                    code="timeout",  # as a request's or a stream's time limit has it
                ) from None

    @contextlib.asynccontextmanager
    async def _reading(self, var: SemanticVariable) -> AsyncIterator[None]:
        """Around a read or stream of `var`: closing the session (another thread or task) ends
        it with `ParrotError`, whatever the server or the connection did meanwhile."""
        task = asyncio.current_task()
        assert task is not None
        self._readers.add(task)
        try:
            yield
        except asyncio.CancelledError:
            # cancelled by closing alone (not also by its caller): say so
            if task in self._ending and task.uncancel() == 0:
                raise self._closed_while(var) from None
            raise
        except ParrotError as exc:
            if self._closed:  # its client went away under it, or the server ended it
                raise self._closed_while(var) from exc
            raise
        finally:
            self._readers.discard(task)
            self._ending.discard(task)

    def _closed_while(self, var: SemanticVariable) -> ParrotError:
        return ParrotError(f"session {self.id} was closed while variable {var._label} was read")

    async def _poll(self, var: SemanticVariable, criteria: Criteria, timeout: float | None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = self.poll_s if deadline is None else max(0.0, deadline - time.monotonic())
            hold = min(wait, self.poll_s)
            info = await self._transport.request(
                "GET",
                f"{self._path}/variables/{var.id}",
                params={"criteria": criteria, "timeout": str(hold)},
                hold_s=hold,
            )
            if info["status"] == "ready":
                _fetched(var, info)
                return info["value"]
            if info["status"] == "failed":
                raise CallFailedError(info["error"], type="call_failed", code="call_failed")
            if deadline is not None and time.monotonic() >= deadline:
                why = f": {info['message']}" if info.get("message") else ""
                raise ParrotError(
                    f"timed out after {timeout} s waiting for variable {var._label}{why}",
                    code="timeout",
                )

    async def _follow(self, var: SemanticVariable, criteria: Criteria) -> AsyncIterator[str]:
        self._check_readable(var)
        async with self._reading(var):
            await self._flush({var.id: criteria})
            self._warn_if_unset_upstream(var)
            path = f"{self._path}/variables/{var.id}/stream"
            try:
                async for event, data in self._transport.events(path, {"criteria": criteria}):
                    if event == "chunk":
                        yield data["text"]
                    elif event == "done":
                        _fetched(var, data)
                        return
                    elif event == "error":
                        error = data["error"]
                        raise CallFailedError(error["message"], type=error.get("type"),
                                              code=error.get("code"))  # fmt: skip
            except ParrotError as exc:
                # no chunk in time: a variable the client has not set may be why
                timed_out = exc.status is None and exc.code == "timeout"
                why = await self._why_pending(var) if timed_out else None
                if why is None:
                    raise
                raise ParrotError(f"{exc.message}: {why}", code=exc.code) from exc
            raise ParrotError(f"the stream of variable {var._label} ended early")

    def _warn_if_unset_upstream(self, var: SemanticVariable) -> None:
        """A read whose value waits on a variable nobody has set yet waits until someone does
        (another thread may): said at once, so a forgotten set() is no silent hang."""
        source = self._pending.unset_source(var)
        if source is not None:
            log.warning(
                "variable %s waits on variable %s, which has no value yet: the read waits "
                "until it is set()", var._label, source._label,
            )  # fmt: skip

    async def _why_pending(self, var: SemanticVariable) -> str | None:
        """The server's word on why `var` has no value yet (a variable upstream that the client
        has not set), if it can be had at once."""
        try:
            async with asyncio.timeout(_ANSWER_GRACE_S):
                info = await self._transport.request(
                    "GET", f"{self._path}/variables/{var.id}", params={"timeout": "0"}
                )
        except (ParrotError, TimeoutError):
            return None
        return info.get("message") if info.get("status") == "pending" else None

    async def _close(self) -> None:
        self._closed = True
        if self._ended:
            return
        try:
            if self.id is not None:
                await self._transport.request("DELETE", self._path)
            self._ended = True
        except ParrotError as exc:
            if exc.status != 404:  # not told: close() may be called again
                raise
            self._ended = True  # the server forgot it already (it expired or restarted)
        finally:
            await self._end_readers()
            await self._transport.close()  # a retry opens a new client

    async def _end_readers(self) -> None:
        """Cancel the reads and streams in flight (they raise that the session was closed) and
        let them finish before their client closes."""
        readers = [t for t in self._readers if t is not asyncio.current_task()]
        for task in readers:
            self._ending.add(task)
            task.cancel()
        # submissions whose readers are gone end too (answered, or refused: the session is gone)
        waiting = [*readers, *self._submissions]
        if waiting:
            await asyncio.wait(waiting, timeout=5)

    def _check_readable(self, var: SemanticVariable) -> None:
        if self._closed:  # not "closed while ... read": the read began after
            raise ParrotError(
                f"session {self.id} is closed: variable {var._label} has no value (its calls "
                "stopped when the session closed)"
            )
        if var._producer is None and var._value is None:
            raise ParrotError(
                f"variable {var._label} has no value and no call writes it; set() it first"
            )


def _fetched(var: SemanticVariable, info: dict[str, Any]) -> None:
    """Keep what the server says of a ready variable."""
    var._value = info["value"]
    var._usage = info.get("usage")
    var._finish_reason = info.get("finish_reason")
