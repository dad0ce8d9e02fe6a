"""A route of the HTTP API with the models that describe it, and request parsing helpers.

The same `Route` list registers the aiohttp handlers and generates the OpenAPI document, so the
document cannot drift from what is served.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from server.engine.json_depth import path_deeper_than, shown_path
from server.errors import ApiError, bad_request

# containers inside containers; the deepest a request needs is a JSON schema within a tool or
# response_format (schemas stop at 64 levels). Deeper bodies met Python's recursion limit: a 500
MAX_BODY_DEPTH = 100

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
# bodies from this size on are parsed and prepared in a worker thread (their prompt would take
# ~80 ms to tokenize inline here)
LARGE_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    events: type[BaseModel] | None = None  # the payload of server-sent events, when it streams
    text: str | None = None  # a plain-text response's media type
    auth: bool = False  # needs the session token


async def parse_body(request: web.Request, model: type[M]) -> M:
    """The JSON body as `model`; 400 with the field and reason when it does not fit. A large
    body is read in a worker thread (see `prepare`)."""
    return await parse_json(request, lambda data: validate(model, data, "body"))


async def parse_json(request: web.Request, check: Callable[[Any], T]) -> T:
    """`check(data)` of the JSON body (400 when it is not JSON, nests too deep or holds a lone
    surrogate); a large body is read and checked in a worker thread (see `prepare`)."""
    raw = await request.read()
    if len(raw) >= LARGE_BODY_BYTES:
        return await asyncio.to_thread(lambda: check(_json_of(raw)))
    return check(_json_of(raw))


async def prepare(request: web.Request, work: Callable[[], T]) -> T:
    """`work()`: what a request needs before the engines see it (its checks, chat template and
    tokenization). For a large body it runs in a worker thread: inline it would stall every
    stream and probe on the server for as long (a 14 MB prompt tokenizes for ~15 s here,
    letting go of the GIL meanwhile). A small body's runs inline: no thread hop, and requests
    reach the engines in the order they came."""
    if len(await request.read()) >= LARGE_BODY_BYTES:  # read once: aiohttp keeps the bytes
        return await asyncio.to_thread(work)
    return work()


def _json_of(raw: bytes) -> Any:
    try:
        data: Any = json.loads(raw) if raw.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(
            f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc
    except RecursionError as exc:  # nested past what the parser's stack holds
        text = raw.decode(json.detect_encoding(raw), "replace")  # as json.loads decoded it
        raise _too_deep(_deep_path(text, MAX_BODY_DEPTH)) from exc
    deep = path_deeper_than(data, MAX_BODY_DEPTH)
    if deep is not None:
        raise _too_deep(deep)
    bad = _unpaired_surrogate(data)
    if bad is not None:
        # JSON may escape half a UTF-16 pair ("\ud800"); no tokenizer or encoder takes it
        where = ".".join(str(p) for p in bad)
        raise bad_request(
            f"invalid body: {where or 'body'}: the text holds an unpaired UTF-16 surrogate "
            "(a lone \\ud800-\\udfff escape), which is not a character",
            param=where or None,
        )
    return data


# a JSON string (escapes kept) or one of the characters that open, close or separate containers
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]')


def _deep_path(text: str, limit: int) -> tuple[object, ...]:
    """The path (keys and indexes) of the first container nested more than `limit` deep in
    JSON `text` that the parser could not read for its depth, as `path_deeper_than` gives it
    for parsed JSON: the text is scanned up to that container, not parsed."""
    opened: list[str] = []  # "{" or "[", per container open at this point
    path: list[object] = []  # each one's key or index
    key = ""
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in ("{", "["):
            if len(opened) >= limit:
                return tuple(path)
            opened.append(token)
            path.append(None if token == "{" else 0)
        elif token in ("}", "]"):
            if opened:
                opened.pop()
                path.pop()
        elif token == ",":
            if opened and opened[-1] == "[":
                index = path[-1]
                assert isinstance(index, int)
                path[-1] = index + 1
        elif token == ":":
            if opened:
                path[-1] = key
        else:  # a string: the key, if a colon follows
            try:
                key = json.loads(token)
            except ValueError:  # a bad escape: the key as written
                key = token[1:-1]
    return ()


def _too_deep(path: tuple[object, ...]) -> ApiError:
    where = f" (at {shown_path(path)})" if path else ""
    return bad_request(
        f"invalid body: JSON nested more than {MAX_BODY_DEPTH} levels deep{where}",
        param=str(path[0]) if path else None,
    )


def parse_query(request: web.Request, model: type[M]) -> M:
    return validate(model, dict(request.query), "query")


def validate(model: type[M], data: Any, where: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        loc, reason = validation_reason(exc)
        raise bad_request(f"invalid {where}: {loc or where}: {reason}", param=loc or None) from exc


def validation_reason(exc: ValidationError, skip: int = 0) -> tuple[str, str]:
    """(where, what) of `exc`'s first error: its location as a dotted path less its first
    `skip` parts, and its message (with how many more errors there are)."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"][skip:])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return loc, f"{first['msg']}{more}"


def _unpaired_surrogate(data: Any, path: tuple[object, ...] = ()) -> tuple[object, ...] | None:
    """The path of the first string (value or key) in parsed JSON that holds a lone surrogate."""
    if isinstance(data, str):
        return None if data.isascii() or not _has_surrogate(data) else path
    if isinstance(data, dict):
        for key, value in data.items():
            if _has_surrogate(key):
                return (*path, key.encode("utf-8", "backslashreplace").decode())
            found = _unpaired_surrogate(value, (*path, key))
            if found is not None:
                return found
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found = _unpaired_surrogate(value, (*path, i))
            if found is not None:
                return found
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status)
