"""What a user prints, pickles or copies: variables and sessions, without a server."""

from __future__ import annotations

import copy
import pickle

import pytest

import parrot_bridge as P


@P.semantic_function(max_tokens=4)
def echo(x):
    """Echo {{input:x}}:{{output:y}}"""


def offline() -> P.Session:
    return P.Session("http://127.0.0.1:9")  # never contacted


def test_a_variable_s_repr_says_its_state_and_shows_its_value() -> None:
    session = offline()
    topic = P.variable(name="topic")
    out = echo.invoke(session, topic)
    assert repr(topic) == f"SemanticVariable('topic' ({topic.id}), unset)"
    assert repr(out) == f"SemanticVariable('y' ({out.id}), pending)"
    out._value = "a reply " * 20  # as if read from the server
    shown = "a reply " * 4 + "…"  # its first 32 characters
    assert repr(out) == f"SemanticVariable('y' ({out.id}), ready: {shown!r})"
    assert repr(P.variable("text")).endswith(", set: 'text')")
    failed = echo.invoke(session, "x")
    failed._error = P.CallFailedError("call 'c-1' (echo) failed: no room")
    assert repr(failed).endswith(", failed: call 'c-1' (echo) failed: no room)")


def test_a_session_s_repr_names_its_server_id_and_state() -> None:
    session = offline()
    assert repr(session) == "Session('http://127.0.0.1:9', not opened)"
    session.id = "s-1"  # as if opened
    assert repr(session) == "Session('http://127.0.0.1:9', id='s-1', open)"
    session._closed = True
    assert repr(session) == "Session('http://127.0.0.1:9', id='s-1', closed)"


def test_a_read_variable_pickles_and_copies_as_its_text() -> None:
    """Pickling or deep-copying a variable of a session failed on the session's innards
    ("cannot pickle 'weakref.ReferenceType' object")."""
    session = offline()
    out = echo.invoke(session, "x")
    with pytest.raises(TypeError, match=r"variable 'y' \(v-.*\) has no value yet: get\(\) it"):
        pickle.dumps(out)
    out._value, out._usage, out._finish_reason = "reply", {"total_tokens": 9}, "stop"
    for again in (pickle.loads(pickle.dumps(out)), copy.deepcopy(out), copy.copy(out)):
        assert (again.value, again.name, again.usage, again.finish_reason, again.session) == (
            "reply", "y", {"total_tokens": 9}, "stop", None)  # fmt: skip
        assert again.id != out.id and again.get() == "reply"  # another variable, of no session
    failed = echo.invoke(session, "z")
    failed._error = P.CallFailedError("call 'c-1' (echo) failed", code="call_failed")
    with pytest.raises(P.CallFailedError, match="failed") as got:
        pickle.loads(pickle.dumps(failed)).get()
    assert got.value.code == "call_failed"
    free = pickle.loads(pickle.dumps(P.variable("kept", name="k")))  # no session: as before
    assert (free.value, free.name) == ("kept", "k")
