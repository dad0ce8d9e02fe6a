"""The native API: sessions, variables, graph submission, long-poll gets and token streams."""

from __future__ import annotations

import asyncio
import logging
import uuid

from aiohttp import web

from server.api.disconnect import unless_disconnected, while_connected
from server.api.native_models import (
    GraphSubmission,
    SessionClosed,
    SessionCreate,
    SessionCreated,
    SessionInfo,
    StreamChunk,
    StreamQuery,
    SubmissionResult,
    TokenUsage,
    VariableCreate,
    VariableInfo,
    VariableQuery,
    VariableSet,
)
from server.api.native_submission import submission_of
from server.api.openai_models import PromptTokensDetails
from server.api.route import Route, json_response, parse_body, parse_json, parse_query
from server.api.sse import EventStream
from server.errors import ApiError, error_body, not_found
from server.graph import GraphError, Variable, VariableDecl, VariableState
from server.keys import CONFIG, DRIVER, EXECUTOR, METRICS, SESSIONS
from server.log import log_event
from server.session import Session

log = logging.getLogger(__name__)

_SESSION = "/v1/sessions/{session_id}"
_VARIABLE = _SESSION + "/variables/{variable_id}"
_NAMED = 5  # unset variables a pending read names, at most


def native_routes() -> list[Route]:
    tag = "sessions"
    return [
        Route("POST", "/v1/sessions", create_session, "Open a session", tag,
              body=SessionCreate, response=SessionCreated, status=201),
        Route("GET", _SESSION, get_session, "Describe a session", tag,
              response=SessionInfo, auth=True),
        Route("DELETE", _SESSION, close_session, "Close a session and stop its calls", tag,
              response=SessionClosed, auth=True),
        Route("POST", _SESSION + "/graph", submit_graph,
              "Submit variables and calls (atomic); ready calls start at once, the others "
              "wait for their inputs (a client-owned variable: until it is PUT)", tag,
              body=GraphSubmission, response=SubmissionResult, auth=True),
        Route("POST", _SESSION + "/variables", create_variable, "Declare a variable", tag,
              body=VariableCreate, response=VariableInfo, status=201, auth=True),
        Route("GET", _VARIABLE, get_variable, "Get a variable, waiting for its value", tag,
              query=VariableQuery, response=VariableInfo, auth=True),
        Route("PUT", _VARIABLE, set_variable, "Set a client-owned variable's value", tag,
              body=VariableSet, response=VariableInfo, auth=True),
        Route("GET", _VARIABLE + "/stream", stream_variable,
              "Stream a variable's text as it is generated (event: chunk, done or error)", tag,
              query=StreamQuery, events=StreamChunk, auth=True),
    ]  # fmt: skip


async def create_session(request: web.Request) -> web.Response:
    body = await parse_body(request, SessionCreate)
    store = request.app[SESSIONS]
    session, token = store.create(body.name)
    request.app[METRICS].sessions.set(len(store))
    model = request.app[CONFIG].model_id
    return json_response(SessionCreated(session_id=session.id, token=token, model=model), 201)


async def get_session(request: web.Request) -> web.Response:
    session = _session(request)
    info = SessionInfo(
        session_id=session.id,
        name=session.name,
        created=session.created,
        variables=len(session.graph.variables),
        calls=session.graph.counts(),
    )
    return json_response(info)


async def close_session(request: web.Request) -> web.Response:
    session = _session(request)
    await end_session(request.app, session)
    return json_response(SessionClosed(session_id=session.id))


async def end_session(app: web.Application, session: Session) -> None:
    """Forget a session, stop its calls (freeing their contexts), wake its readers."""
    app[SESSIONS].remove(session.id)
    # closed before its work is cancelled: a scan due meanwhile would start fills for it
    session.close()
    await app[EXECUTOR].cancel_session(session.id)
    app[METRICS].sessions.set(len(app[SESSIONS]))


async def submit_graph(request: web.Request) -> web.Response:
    session = _session(request)
    data = await parse_json(request, lambda data: data)
    # its calls' regexes, grammars and schemas compile in a thread (see constraint_compile);
    # the session is looked up again after, as it may have been closed meanwhile
    submission = await asyncio.to_thread(submission_of, data, request.app[DRIVER])
    session = _session(request)
    ready = session.submit(submission)
    request.app[METRICS].graph_submissions.inc()
    failed = {c.id: c.error for c in submission.calls if c.error is not None}
    for call_id, reason in failed.items():
        request.app[METRICS].calls.inc(status="failed")
        log_event(log, "call_failed", session=session.id, call=call_id, reason=reason)
    request.app[EXECUTOR].dispatch(session, ready)
    result = SubmissionResult(
        session_id=session.id,
        variables=len(submission.variables),
        calls=len(submission.calls),
        ready_calls=[c.id for c in ready],
        failed_calls=failed,
    )
    return json_response(result)


async def create_variable(request: web.Request) -> web.Response:
    _session(request)  # a bad token is refused before the body is read
    body = await parse_body(request, VariableCreate)
    session = _session(request)  # again: it may have been closed while the body came
    decl = VariableDecl(body.id or f"v-{uuid.uuid4().hex}", body.name, body.value)
    return json_response(_info(session.graph.add_variable(decl)), 201)


async def get_variable(request: web.Request) -> web.Response:
    session = _session(request)
    query = parse_query(request, VariableQuery)
    var_id = _variable_id(request, session)
    if query.criteria is not None:
        session.graph.await_variable(var_id, query.criteria)
        request.app[EXECUTOR].awaited(session)
    # a long poll whose client left is ended at once (499), not at its timeout (up to 300 s)
    var = await unless_disconnected(request, session.wait(var_id, query.timeout))
    if session.closed and var.state is VariableState.PENDING:
        raise not_found(f"session {session.id!r} {session.closed_why} while the request waited")
    info = _info(var)
    if var.state is VariableState.PENDING:
        info.message = _waiting_on_client(session, var_id)
    return json_response(info)


async def set_variable(request: web.Request) -> web.Response:
    _session(request)  # a bad token is refused before the body is read
    body = await parse_body(request, VariableSet)
    # again: closed while the body came, it would take the value and answer 200, the value
    # gone with the session
    session = _session(request)
    var_id = _variable_id(request, session)
    try:
        ready = session.set_value(var_id, body.value)
    except GraphError as exc:
        raise ApiError(409, exc.message, type="conflict_error", code=exc.kind) from exc
    request.app[EXECUTOR].dispatch(session, ready)
    return json_response(_info(session.graph.variables[var_id]))


async def stream_variable(request: web.Request) -> web.StreamResponse:
    session = _session(request)
    query = parse_query(request, StreamQuery)
    var_id = _variable_id(request, session)
    if query.criteria is not None:
        session.graph.await_variable(var_id, query.criteria)
        request.app[EXECUTOR].awaited(session)
    feed = session.feed(var_id)
    stream = EventStream(request)
    await stream.open()
    try:
        # a client that left is noticed while no chunk comes (a call waiting for its inputs may
        # send none for long), not at the next write; the call is the session's and runs on
        async for text in while_connected(request, feed.follow()):
            await stream.send(StreamChunk(text=text), "chunk")
        if feed.error is not None:
            await stream.send(error_body(feed.error, "call_failed", "call_failed"), "error")
        else:
            await stream.send(_info(session.graph.variables[var_id]), "done")
    except ConnectionError:  # the client left; nothing to tell it
        return stream.response
    return await stream.close()


# -- helpers -------------------------------------------------------------------------------------


def _waiting_on_client(session: Session, var_id: str) -> str | None:
    """Why a pending variable has no value, when the client owes it one: it, or a variable
    upstream of it, is client-owned and not set (None otherwise: its calls are on their way)."""
    unset = session.graph.unset_sources(var_id)
    if not unset:
        return None
    route = f"PUT /v1/sessions/{session.id}/variables/"
    var = session.graph.variables[var_id]
    if unset == [var]:
        return f"variable {var.label} has no value yet: the client has not set it ({route}{var_id})"
    shown = unset[:_NAMED]
    more = f" and {len(unset) - len(shown)} more" if len(unset) > len(shown) else ""
    named = ", ".join(v.label for v in shown) + more
    puts = ", ".join(f"{route}{v.id}" for v in shown) + (", ..." if more else "")
    which = "variable" if len(unset) == 1 else "variables"
    return f"variable {var.label} waits on {which} {named}, which the client has not set ({puts})"


def _session(request: web.Request) -> Session:
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else None
    return request.app[SESSIONS].get(request.match_info["session_id"], token)


def _variable_id(request: web.Request, session: Session) -> str:
    var_id = request.match_info["variable_id"]
    if var_id not in session.graph.variables:
        raise not_found(f"variable {var_id!r} does not exist in session {session.id!r}")
    return var_id


def _info(var: Variable) -> VariableInfo:
    made = var.generation
    usage = None if made is None else TokenUsage(
        prompt_tokens=made.prompt_tokens, completion_tokens=made.completion_tokens,
        total_tokens=made.prompt_tokens + made.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=made.cached_tokens),
    )  # fmt: skip
    return VariableInfo(
        id=var.id,
        name=var.name,
        status=var.state.value,
        value=var.value,
        error=var.error,
        producer=var.producer,
        usage=usage,
        finish_reason=None if made is None else made.finish_reason,  # type: ignore[arg-type]
    )
