"""The child side of an engine in its own process (`server.engine_process`).

`run_engine_worker` is the child's main: it loads the model, answers `("ready", EngineInfo)`
(or `("failed", message)`), then runs the engine's step loop on its main thread while a reader
thread turns the parent's messages into commands applied between steps, exactly as the
in-process engine thread applies its queue. Messages are tuples, pickled over one duplex pipe:

parent -> child: `("create", ctx, parent, cache_salt)`,
`("fill", req, ctx, tokens, priority, yield_tokens)`,
`("generate", req, ctx, sampling, priority, fill_tokens, hold_latency_s)`,
`("request", req, tokens, sampling, priority, cache_salt)`, `("abort", req)`,
`("boost", ctx, priority)`, `("truncate", ctx, num_tokens)`, `("free", ctx)`, `("stats", req)`, `("pause",)` (ask the step
in flight to pause: sent right after latency-critical work), `("stop",)`, and
`("batch", [message, ...])`: messages the parent held (`EngineProcess.hold`), applied as one
command.

child -> parent: `("outputs", [(req, JobOutput), ...])` once per step, `("error", req, message)`
when a job could not be submitted, `("result", req, value)` for `stats`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import queue
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

import torch

from server.engine import LLMEngine
from server.engine.outputs import JobOutput
from server.engine.step_loop import Command, apply_all, run_step_loop
from server.engine.tokenizer import converted_backend_json
from server.engine_info import EngineInfo
from server.log import configure_logging, log_event
from server.long_lived import freeze_long_lived

log = logging.getLogger(__name__)


def run_engine_worker(
    conn: Connection,
    model: str,
    device: str,
    dtype: str | None,
    config: dict[str, Any],
    log_level: str = "warning",
    log_format: str = "kv",
    threads: int | None = None,
) -> None:
    """The child process's main (see the module docstring); it logs as the server does and
    runs `threads` compute threads (None: torch's default)."""
    configure_logging(log_level, log_format)
    # None: torch's default here, which is what the server's own torch would have counted (the
    # same cores, the same environment); set all the same, as when the server sent that count
    torch.set_num_threads(threads if threads is not None else torch.get_num_threads())
    # Ctrl-C reaches the whole process group: the server stops its engines itself (or its end
    # of the pipe closes), so that its calls in flight end cleanly rather than mid-step
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from server.engine.loader import DEFAULT_CACHE_DIR, resolve_model_folder

        engine = LLMEngine.from_pretrained(model, device=device, dtype=dtype, **config)
        _, folder = resolve_model_folder(model, DEFAULT_CACHE_DIR)
    except Exception as exc:  # told to the parent, which raises it where the server starts
        reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        conn.send(("failed", reason))
        return
    info = EngineInfo(
        name=engine.model_name,
        max_model_len=engine.max_model_len,
        vocab_size=engine.model_config.vocab_size,
        kv_tokens=engine.blocks.num_blocks * engine.config.block_size,
        latency_priority=engine.config.latency_priority,
        model_folder=str(folder),
        eos_token_ids=tuple(sorted(engine.tokenizer.eos_token_ids)),
        threads=torch.get_num_threads(),
        tokenizer_json=converted_backend_json(engine.tokenizer, folder),
    )
    frozen = freeze_long_lived()  # torch's and the model's objects: out of the step loop's GCs
    log_event(
        log, "engine_process_ready", pid=os.getpid(), model=info.name, device=str(engine.device),
        threads=info.threads, frozen_objects=frozen,
    )  # fmt: skip
    conn.send(("ready", info))
    _Worker(engine, conn).run()


class _Worker:
    def __init__(self, engine: LLMEngine, conn: Connection) -> None:
        self.engine = engine
        self.conn = conn
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.job_of_request: dict[int, int] = {}
        self.request_of_job: dict[int, int] = {}
        # the parent's context ids -> the engine's: plain requests take engine ids of their own
        self.contexts: dict[int, int] = {}

    def run(self) -> None:
        threading.Thread(target=self._read, name="parrot-engine-reader", daemon=True).start()
        run_step_loop(self.engine, self.commands, self._send_outputs)

    def _read(self) -> None:
        """Parent's messages -> commands, in order; the pipe closing (the parent is gone)
        stops the loop as `("stop",)` does."""
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                message = ("stop",)
            batch = message[1] if message[0] == "batch" else [message]
            work = [m for m in batch if m[0] not in ("stop", "pause")]
            if work:  # one command: the loop runs no step between its messages
                self.commands.put(functools.partial(apply_all, [
                    functools.partial(self._apply, m) for m in work
                ]))  # fmt: skip
            if any(m[0] == "pause" for m in batch):
                # after the work it is for was queued: the loop clears it before it applies that
                self.engine.request_pause()
            if any(m[0] == "stop" for m in batch):
                self.commands.put(None)
                return

    def _apply(self, message: tuple[Any, ...]) -> None:
        engine, kind = self.engine, message[0]
        if kind == "create":
            _, ctx, parent, cache_salt = message
            local_parent = None if parent is None else self._local(parent)
            self.contexts[ctx] = engine.create_context(local_parent, cache_salt=cache_salt)
        elif kind == "fill":
            _, req, ctx, tokens, priority, yield_tokens = message
            self._submit(req, lambda: engine.fill(self._local(ctx), tokens, priority, yield_tokens))
        elif kind == "generate":
            _, req, ctx, sampling, priority, tokens, hold_latency_s = message

            def submit() -> int:
                local = self._local(ctx)
                if tokens:
                    engine.fill(local, tokens, priority)
                return engine.add_generate(local, sampling, priority, hold_latency_s=hold_latency_s)

            self._submit(req, submit)
        elif kind == "request":
            _, req, tokens, sampling, priority, cache_salt = message
            self._submit(req, lambda: engine.add_request(tokens, sampling, priority, cache_salt))
        elif kind == "abort":
            job = self.job_of_request.pop(message[1], None)
            if job is not None:
                del self.request_of_job[job]
                engine.abort(job)
        elif kind == "boost":
            engine.boost(self._local(message[1]), message[2])
        elif kind == "truncate":
            engine.truncate(self._local(message[1]), message[2])
        elif kind == "free":
            local = self.contexts.pop(message[1], None)
            if local is not None:
                engine.free(local)
        elif kind == "stats":
            self._send(("result", message[1], dataclasses.replace(engine.stats)))
        else:
            raise ValueError(f"unknown message {kind!r}")

    def _local(self, ctx: int) -> int:
        local = self.contexts.get(ctx)
        if local is None:
            raise ValueError(f"no context {ctx}")
        return local

    def _submit(self, req: int, submit: Any) -> None:
        try:
            job = submit()
        except Exception as exc:  # the caller's job fails, nothing else
            self._send(("error", req, str(exc) or type(exc).__name__))
            return
        self.job_of_request[req] = job
        self.request_of_job[job] = req

    def _send_outputs(self, outputs: list[JobOutput]) -> None:
        batch = []
        for out in outputs:
            req = self.request_of_job.get(out.job_id)
            if req is None:
                continue
            if out.finished:
                del self.request_of_job[out.job_id]
                del self.job_of_request[req]
            batch.append((req, out))
        if batch:
            self._send(("outputs", batch))

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self.conn.send(message)
        except (BrokenPipeError, OSError):
            pass  # the parent is gone; the reader stops the loop
