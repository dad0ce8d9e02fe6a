"""Typed keys of everything the aiohttp application holds."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.config import ServerConfig
from server.drain import Drain
from server.engine_driver import EngineDriver
from server.engine_pool import EnginePool
from server.executor import Executor
from server.metrics import Metrics
from server.response_store import ResponseStore
from server.session_store import SessionStore

CONFIG = web.AppKey("config", ServerConfig)
METRICS = web.AppKey("metrics", Metrics)
SESSIONS = web.AppKey("sessions", SessionStore)
DRIVER = web.AppKey("driver", EngineDriver)  # the first engine: tokenizer and limits
ENGINES = web.AppKey("engines", EnginePool)
EXECUTOR = web.AppKey("executor", Executor)
OPENAPI = web.AppKey("openapi", dict[str, Any])
RESPONSES = web.AppKey("responses", ResponseStore)  # stored Responses API responses
DRAIN = web.AppKey("drain", Drain)  # requests in flight, and shutdown's grace period for them
