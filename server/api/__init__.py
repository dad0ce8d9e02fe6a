"""The HTTP API: native Semantic Variable routes, OpenAI-compatible routes, operations."""

from server.api.chat_render import chat_render_routes
from server.api.native import native_routes
from server.api.openai import openai_routes
from server.api.ops import ops_routes
from server.api.responses import responses_routes
from server.api.route import Route
from server.api.tokenize import tokenize_routes


def all_routes() -> list[Route]:
    return [
        *native_routes(), *openai_routes(), *responses_routes(), *tokenize_routes(), *ops_routes(),
        *chat_render_routes(),
    ]  # fmt: skip


__all__ = ["Route", "all_routes"]
