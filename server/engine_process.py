"""An engine in a child process of its own, behind the in-process engine's interface.

`EngineProcess` offers what `EngineDriver` and `TokenContext` use of `AsyncLLMEngine` (context
primitives as coroutines and async iterators, the engine's limits, its counters), so the server
drives either the same way (`--engine-process`). The child (`server.engine_worker`) owns the
model and the KV cache; the server keeps the tokenizer. What this buys: a crash, an abort or an
out-of-memory kill in the engine fails the calls that were on it with `EngineDied`, not the
server (which restarts the engine and redoes what no client has seen: `EnginePool.supervise`);
and the server's event loop (HTTP, JSON, tokenizing, graph analysis) never holds the
GIL that the engine's step loop needs. The cost: each engine loads its own copy of the weights,
and every command and output is pickled once over a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncIterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from server.engine import EngineError, EngineStats, JobOutput, SamplingParams
from server.engine.cache_salt import check_cache_salt
from server.engine.job_outputs import job_outputs
from server.engine.tokenizer import Tokenizer
from server.engine_info import EngineInfo
from server.engine_start import engine_main, start_context

STOP_TIMEOUT_S = 30.0  # then the child is killed


class EngineDied(EngineError):
    """The engine's process exited while this work was on it (or was sent to it): nothing of
    the work is left there, so it may be done again on another engine."""


class EngineProcess:
    """A child process running one engine; `spawn()` starts it and waits until it is ready."""

    def __init__(
        self, conn: Connection, process: BaseProcess, info: EngineInfo, tokenizer: Tokenizer
    ) -> None:
        self.conn = conn
        self.process = process
        self.info = info
        self._tokenizer = tokenizer
        self._ids = itertools.count(1)  # context and request ids, unique in this engine
        self._jobs: dict[int, asyncio.Queue[JobOutput | BaseException]] = {}
        self._results: dict[int, asyncio.Future[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._gone: str | None = None  # why no more work is taken, once stopped or dead
        # a send found the child gone before its exit was seen (`_on_exit` says why, later)
        self._pipe_broken = False
        # while held (`hold`), messages wait here and go as one ("batch", ...) at `release`
        self._holds = 0
        self._held: list[tuple[Any, ...]] = []
        # set when the child exits without being asked to (then `_gone` says so)
        self.exited = asyncio.Event()

    @classmethod
    async def spawn(
        cls,
        model: str,
        device: str,
        dtype: str | None,
        log: tuple[str, str] = ("warning", "kv"),
        threads: int | None = None,
        **config: Any,
    ) -> EngineProcess:
        """Start the child and wait for its model to load; its load error is raised here, as
        `ValueError` with the child's message. `log`: the child's (level, format), as
        `configure_logging` takes them; `threads`: its compute threads (None: torch's default,
        one per core)."""
        mp = start_context()
        conn, child_conn = mp.Pipe()
        process = mp.Process(
            target=engine_main,
            args=(child_conn, model, device, dtype, config, *log, threads),
            name="parrot-engine",
            daemon=True,  # never outlives the server
        )
        # off the loop: the fork server answers with the child's pid only once it has forked,
        # which a busy machine (or a stopped fork server) delays, and the loop serves the other
        # engines meanwhile
        starting = asyncio.ensure_future(asyncio.to_thread(process.start))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:  # the server stops while the child starts
            with contextlib.suppress(Exception):
                await starting
            if process.pid is not None:
                process.kill()
                await asyncio.to_thread(process.join, 5)
            conn.close()
            child_conn.close()
            raise
        child_conn.close()  # the child's end lives in the child: EOF here once it exits
        try:
            message = await asyncio.to_thread(conn.recv)
        except asyncio.CancelledError:  # the server stops while this engine loads
            process.kill()
            await asyncio.to_thread(process.join, 5)
            conn.close()
            raise
        except (EOFError, OSError):
            await asyncio.to_thread(process.join, 5)
            conn.close()
            raise EngineError(
                f"the engine process exited while loading {model!r} (exit code "
                f"{process.exitcode})"
            ) from None
        if message[0] != "ready":
            await asyncio.to_thread(process.join, STOP_TIMEOUT_S)
            conn.close()
            raise ValueError(message[1])
        info: EngineInfo = message[1]
        tokenizer = await asyncio.to_thread(
            Tokenizer.from_folder, Path(info.model_folder), info.eos_token_ids,
            info.tokenizer_json,
        )  # fmt: skip
        return cls(conn, process, info, tokenizer)

    # ---- what the driver reads ------------------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self.info.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.info.vocab_size

    @property
    def kv_tokens(self) -> int:
        return self.info.kv_tokens

    @property
    def latency_priority(self) -> int:
        return self.info.latency_priority

    @property
    def threads(self) -> int:
        """Its compute threads, as the child counts them."""
        return self.info.threads

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def alive(self) -> bool:
        """Taking work: neither stopped nor dead (nor found gone by a send: work placed on it
        until its exit is seen would only fail again)."""
        return self._gone is None and not self._pipe_broken

    @property
    def exit_code(self) -> int | None:
        return self.process.exitcode

    async def start(self) -> None:
        if self._reader is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._reader = threading.Thread(target=self._read, name="parrot-engine-pipe", daemon=True)
        self._reader.start()

    async def stop(self) -> None:
        """Ask the child to stop (its jobs end with `EngineError`), wait for it, then kill it
        if it does not exit in time."""
        if self._gone is None:
            self._holds = 0
            with contextlib.suppress(EngineError):
                self._flush()  # what was sent before the stop is applied first
                self._send(("stop",))
            self._gone = "the engine is stopped"
        await asyncio.to_thread(self.process.join, STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            await asyncio.to_thread(self.process.join, 5)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 5)
        self.conn.close()
        self._fail_pending()

    def hold(self) -> None:
        """As `AsyncLLMEngine.hold`: messages kept until `release` go as one, applied by the
        child as one command."""
        self._holds += 1

    def release(self) -> None:
        self._holds -= 1
        if self._holds == 0:
            self._flush()

    def _flush(self) -> None:
        if self._held:
            messages, self._held = self._held, []
            self._send(("batch", messages) if len(messages) > 1 else messages[0])

    # ---- context primitives (as AsyncLLMEngine's) -----------------------------------------
    def create_context(self, parent: int | None = None, cache_salt: str | None = None) -> int:
        check_cache_salt(cache_salt, parent)  # here: the child would fail its whole batch
        ctx = next(self._ids)
        self._send(("create", ctx, parent, cache_salt))
        return ctx

    async def fill(
        self,
        context_id: int,
        token_ids: Sequence[int],
        priority: int = 0,
        yield_tokens: int | None = None,
    ) -> int:
        """As `AsyncEngine.fill`, in the child process."""
        # a fill ahead of need (yield_tokens) is not worth pausing a step for
        urgent = self._urgent(priority) and yield_tokens is None
        message = ("fill", context_id, list(token_ids), priority, yield_tokens)
        cached = 0
        async with contextlib.aclosing(self._job(message, urgent)) as job:
            async for out in job:
                cached = out.cached_tokens if out.cached_tokens is not None else cached
        return cached

    async def generate(
        self,
        context_id: int,
        sampling: SamplingParams,
        priority: int = 0,
        fill_token_ids: Sequence[int] | None = None,
        hold_latency_s: float = 0.0,
    ) -> AsyncIterator[JobOutput]:
        message = (
            "generate", context_id, sampling, priority, list(fill_token_ids or ()), hold_latency_s
        )  # fmt: skip
        async with contextlib.aclosing(self._job(message, self._urgent(priority))) as job:
            async for out in job:
                yield out

    async def generate_request(
        self,
        prompt_token_ids: Sequence[int],
        sampling: SamplingParams,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> AsyncIterator[JobOutput]:
        message = ("request", list(prompt_token_ids), sampling, priority, cache_salt)
        async with contextlib.aclosing(self._job(message, self._urgent(priority))) as job:
            async for out in job:
                yield out

    def boost(self, context_id: int, priority: int) -> None:
        if self._gone is not None:
            return  # a hint: a dead engine runs nothing any more
        with contextlib.suppress(EngineDied):  # the child died: its work fails on its own
            self._send(("boost", context_id, priority))
            if self._urgent(priority):
                self._send(("pause",))

    def truncate(self, context_id: int, num_tokens: int) -> None:
        self._send(("truncate", context_id, num_tokens))

    def free(self, context_id: int) -> None:
        # A stopped or dead engine holds nothing for anyone any more, also one whose death a
        # send found before its exit was seen: a free is cleanup, in `finally` blocks, where
        # raising would cut the rest of the cleanup short.
        if self._gone is None:
            with contextlib.suppress(EngineDied):
                self._send(("free", context_id))

    async def stats(self) -> EngineStats:
        assert self._loop is not None, "start() the engine first"
        req = next(self._ids)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._results[req] = fut
        try:
            self._send(("stats", req))
            return await fut
        finally:
            self._results.pop(req, None)

    # ---- internals ------------------------------------------------------------------------
    def _urgent(self, priority: int) -> bool:
        return priority <= self.info.latency_priority

    async def _job(self, message: tuple[Any, ...], urgent: bool) -> AsyncIterator[JobOutput]:
        """Send a job (its request id goes in after the kind) and yield its outputs; leaving
        early aborts it in the child."""
        assert self._loop is not None, "start() the engine first"
        req = next(self._ids)
        outputs: asyncio.Queue[JobOutput | BaseException] = asyncio.Queue()
        self._jobs[req] = outputs
        finished = False
        try:
            self._send((message[0], req, *message[1:]))
            if urgent:
                self._send(("pause",))
            async for item in job_outputs(outputs):
                finished = item.finished
                yield item
        finally:
            self._jobs.pop(req, None)
            if not finished and self._gone is None:
                with contextlib.suppress(EngineError):
                    self._send(("abort", req))

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._gone is not None:
            raise self._gone_error()
        if self._holds:
            self._held.append(message)
            return
        try:
            with self._send_lock:
                self.conn.send(message)
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            self._pipe_broken = True
            raise EngineDied(f"the engine process is gone ({exc})") from None

    def _gone_error(self) -> EngineError:
        assert self._gone is not None
        return EngineDied(self._gone) if self.exited.is_set() else EngineError(self._gone)

    def _read(self) -> None:
        """The child's messages, handed to the event loop; at EOF, everything still waiting
        fails."""
        loop = self._loop
        assert loop is not None
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            loop.call_soon_threadsafe(self._on_message, message)
        self.process.join(5)
        loop.call_soon_threadsafe(self._on_exit, self.process.exitcode)

    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "outputs":
            for req, out in message[1]:
                queue = self._jobs.get(req)
                if queue is not None:
                    queue.put_nowait(out)
        elif kind == "error":
            queue = self._jobs.get(message[1])
            if queue is not None:
                queue.put_nowait(EngineError(message[2]))
        elif kind == "result":
            fut = self._results.get(message[1])
            if fut is not None and not fut.done():
                fut.set_result(message[2])

    def _on_exit(self, exitcode: int | None) -> None:
        if self._gone is None:
            self._gone = f"the engine process exited unexpectedly (exit code {exitcode})"
            self.exited.set()
        self._fail_pending()

    def _fail_pending(self) -> None:
        for queue in self._jobs.values():
            queue.put_nowait(self._gone_error())
        for fut in self._results.values():
            if not fut.done():
                fut.set_exception(self._gone_error())

