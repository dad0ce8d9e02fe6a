"""The aiohttp application: `init_app(config)` builds it, `run(config)` serves it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from server import request_id
from server.api import all_routes
from server.api.native import end_session
from server.api.openapi import build_openapi
from server.api_key import api_key_middleware
from server.config import ServerConfig
from server.cors import CorsPolicy, cors_headers, preflight_middleware
from server.drain import ANSWER_S, Drain
from server.engine_driver import EngineDriver
from server.engine_pool import EnginePool
from server.executor import Executor
from server.gc_pauses import GcPauses
from server.keys import (
    CONFIG,
    DRAIN,
    DRIVER,
    ENGINES,
    EXECUTOR,
    METRICS,
    OPENAPI,
    RESPONSES,
    SESSIONS,
)
from server.log import configure_logging, log_event
from server.long_lived import freeze_long_lived
from server.metrics import Metrics
from server.middleware import access_middleware, drain_middleware, error_middleware
from server.response_store import ResponseStore
from server.session_store import SessionStore

log = logging.getLogger("server")
VERSION = "0.1.0"


def init_app(config: ServerConfig) -> web.Application:
    """The application, with the engine loaded and started in its startup phase."""
    cors = CorsPolicy(config.allowed_origins) if config.allowed_origins else None
    preflight = [preflight_middleware(cors)] if cors is not None else []
    # inside the error middleware, so that a refusal is JSON in OpenAI's shape
    guard = [api_key_middleware(config.api_key)] if config.api_key is not None else []
    app = web.Application(
        middlewares=[drain_middleware, access_middleware, *preflight, error_middleware, *guard],
        client_max_size=config.max_request_mb * 1024 * 1024,
    )
    app.on_response_prepare.append(request_id.add_header)
    if cors is not None:
        app.on_response_prepare.append(cors_headers(cors))
    app[CONFIG] = config
    app[DRAIN] = Drain()
    app[METRICS] = Metrics()
    app[SESSIONS] = SessionStore()
    app[RESPONSES] = ResponseStore(config.stored_responses, config.stored_response_chars)
    routes = all_routes()
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler, name=route.handler.__name__)
    app[OPENAPI] = build_openapi(routes, "Parrot", VERSION)
    app.cleanup_ctx.append(_engine)
    app.cleanup_ctx.append(_executor)
    app.cleanup_ctx.append(_session_reaper)
    app.cleanup_ctx.append(_prefix_expiry)
    app.on_shutdown.append(_close_sessions)
    app.on_shutdown.append(_drain)  # after the long polls and streams are woken
    return app


def check(config: ServerConfig) -> None:
    """Refuse (ValueError), before a model loads, what the engine would refuse at startup (the
    address is `check_listen`'s, before this module is even imported)."""
    EngineDriver.check(config.model, config.dtype, **config.engine_kwargs())


def run(config: ServerConfig) -> None:
    """Serve until SIGINT/SIGTERM; then refuse new connections, give the requests in flight up
    to `shutdown_timeout_s` to end, answer those still running with a 503 (a stream: an error
    event, then its end) and stop the engines (`_drain`)."""
    configure_logging(config.log_level, config.log_format)
    log_event(log, "starting", model=config.model, host=config.host, port=config.port)
    app = init_app(config)
    app.on_startup.append(_settle_process)  # after the engines load (cleanup_ctx)
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        access_log=None,
        print=None,
        # after `_drain` (a shutdown hook) aiohttp waits this long for the handlers' last bytes,
        # then cancels what is left and waits as long again; it takes 0 for "no limit"
        shutdown_timeout=ANSWER_S / 2,
    )
    log_event(log, "stopped")


async def _settle_process(app: web.Application) -> None:
    """The server process's own: what is alive once it has started is left out of later
    garbage collections, whose pauses /metrics then shows."""
    log_event(log, "startup_objects_frozen", objects=freeze_long_lived())
    app[METRICS].gc_pauses = pauses = GcPauses()
    pauses.start()


async def _engine(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    pool = await EnginePool.load(
        config.engines,
        config.model,
        config.device,
        config.dtype,
        config.engine_process,
        (config.log_level, config.log_format),
        _threads(config),
        **config.engine_kwargs(),
    )
    await pool.start()
    app[ENGINES] = pool
    app[DRIVER] = driver = pool.primary
    # read off the tokenizer once (~0.4 s for a 50k vocabulary), not on the first prompt's turn
    await asyncio.to_thread(driver.fewest_tokens, "")
    log_event(
        log, "engine_ready", model=driver.name, max_model_len=driver.max_model_len,
        engines=len(pool), threads_per_engine=driver.threads, kv_tokens_per_engine=driver.kv_tokens,
        host=config.host, port=config.port, **_engine_pids(pool),
    )  # fmt: skip
    yield
    await pool.stop()


def _threads(config: ServerConfig) -> int | None:
    """Compute threads per engine. Engine processes are told only a count that was asked for
    (None: each takes torch's default, which is the count this process's torch would give, and
    reports it), so this process never loads torch; engines in this process run torch's."""
    if config.engine_process:
        return config.engine_threads
    import torch  # loaded anyway: the engines in this process run on it

    return config.threads_per_engine(torch.get_num_threads())


def _engine_pids(pool: EnginePool) -> dict[str, str]:
    """The engines' child processes, comma-separated, where they run in their own
    (`--engine-process`)."""
    pids = [getattr(d.engine, "pid", None) for d in pool.drivers]
    return {"engine_pids": ",".join(str(p) for p in pids)} if all(pids) else {}


async def _executor(app: web.Application) -> AsyncIterator[None]:
    app[EXECUTOR] = executor = Executor(app[ENGINES], app[METRICS], app[CONFIG].executor_config())
    app[ENGINES].supervise(
        app[CONFIG].restart_policy(), executor.engine_lost, executor.engine_back,
        executor.engine_gone,
    )  # fmt: skip
    yield
    await app[EXECUTOR].close()


async def _session_reaper(app: web.Application) -> AsyncIterator[None]:
    """A background loop that closes sessions idle for longer than the configured TTL."""
    ttl = app[CONFIG].session_ttl_s

    async def reap() -> None:
        while True:
            await asyncio.sleep(min(60.0, ttl / 2))
            for session in app[SESSIONS].idle(ttl):
                await end_session(app, session)
                log_event(log, "session_expired", session=session.id, ttl_s=ttl)

    task = asyncio.create_task(reap(), name="session-reaper")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _prefix_expiry(app: web.Application) -> AsyncIterator[None]:
    """A background loop that frees stored prefixes unused for longer than their TTL."""
    ttl = app[CONFIG].prefix_store_ttl_s

    async def expire() -> None:
        while True:
            await asyncio.sleep(min(60.0, ttl / 2))
            app[EXECUTOR].prefixes.expire()

    task = asyncio.create_task(expire(), name="prefix-expiry")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close_sessions(app: web.Application) -> None:
    """Wake long-polls and streams so shutdown does not wait for them."""
    for session in app[SESSIONS].all():
        session.close("ended: the server is shutting down")


async def _drain(app: web.Application) -> None:
    """The requests in flight get `--shutdown-timeout-s` to end; those still running are then
    answered (`Drain.wait`)."""
    drain, grace = app[DRAIN], app[CONFIG].shutdown_timeout_s
    start = time.perf_counter()
    log_event(log, "draining", requests=drain.running, grace_s=grace)
    cut = await drain.wait(grace)
    log_event(log, "drained", cancelled=cut, unanswered=drain.running,
              s=round(time.perf_counter() - start, 3))  # fmt: skip
