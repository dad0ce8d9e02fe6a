"""Semantic Variables on the client: futures for text that a call (or the client) provides."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Literal, SupportsIndex

from parrot_bridge.errors import ParrotError
from parrot_bridge.text_check import check_text

if TYPE_CHECKING:
    from parrot_bridge.session import Session

Criteria = Literal["latency", "throughput"]
_CRITERIA = ("latency", "throughput")
_SHOWN = 32  # characters of a value that repr shows

__all__ = ["Criteria", "SemanticVariable", "variable"]


class SemanticVariable:
    """A named placeholder for text: an input the client sets, or the output of a call.

    Reading it (`get`, `aget`, `stream`, `astream`) submits the session's pending calls in one
    request and waits on the server; `criteria` tells the server what the application needs
    from it ("latency": this value soon; "throughput": the whole job efficiently).
    """

    def __init__(self, value: str | None = None, name: str | None = None) -> None:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"a variable's value must be a str, got {type(value).__name__}")
        if value is not None:
            check_text(value, f"the value of variable {name!r}")
        if name is not None:
            check_text(name, "a variable's name")
        self.id = f"v-{uuid.uuid4().hex}"
        self.name = name
        self._value = value
        self._session: Session | None = None
        self._producer: str | None = None  # id of the call that writes it
        self._declared = False  # the server knows it
        self._error: ParrotError | None = None
        self._usage: dict[str, Any] | None = None
        self._finish_reason: str | None = None

    @property
    def value(self) -> str | None:
        """The value if known on the client (set here, or fetched already), else None."""
        return self._value

    @property
    def usage(self) -> dict[str, Any] | None:
        """For a call's output, once fetched: `prompt_tokens` (the call's prompt up to this
        output), `completion_tokens`, `total_tokens` and `prompt_tokens_details`
        (`cached_tokens`: those computed before the call generated, shared or cached), as an
        OpenAI response reports them."""
        return self._usage

    @property
    def finish_reason(self) -> str | None:
        """For a call's output, once fetched: "stop" (EOS or a stop string) or "length"."""
        return self._finish_reason

    @property
    def session(self) -> Session | None:
        return self._session

    @property
    def is_output(self) -> bool:
        return self._producer is not None

    def set(self, value: str) -> None:
        """Give an input its value. When the variable was sent to the server already (calls
        reading it were flushed, and wait there for it), the value is sent at once; else it goes
        with the next submission. A value the server refuses (the variable has one already, its
        session is gone) raises `ParrotError` with the server's message."""
        self._check_settable(value)
        if self._session is None:
            self._value = value
        else:
            self._session._set(self, value)

    async def aset(self, value: str) -> None:
        """`set`, for async code."""
        self._check_settable(value)
        if self._session is None:
            self._value = value
        else:
            await self._session._aset(self, value)

    def get(self, criteria: Criteria = "latency", timeout: float | None = None) -> str:
        """The value, waiting for it on the server if needed (`timeout`: at most so many
        seconds, then `ParrotError` with `code` "timeout"; None: as long as it takes)."""
        _check_criteria(criteria)
        _check_timeout(timeout)
        known = self._known()
        if known is not None:
            return known
        return self._bound()._get(self, criteria, timeout)

    async def aget(self, criteria: Criteria = "latency", timeout: float | None = None) -> str:
        _check_criteria(criteria)
        _check_timeout(timeout)
        known = self._known()
        if known is not None:
            return known
        return await self._bound()._aget(self, criteria, timeout)

    def stream(self, criteria: Criteria = "latency") -> Iterator[str]:
        """The value's text in chunks, as the server generates it."""
        _check_criteria(criteria)
        known = self._known()
        if known is not None:
            yield known
            return
        yield from self._bound()._stream(self, criteria)

    async def astream(self, criteria: Criteria = "latency") -> AsyncIterator[str]:
        _check_criteria(criteria)
        known = self._known()
        if known is not None:
            yield known
            return
        async for chunk in self._bound()._astream(self, criteria):
            yield chunk

    def __repr__(self) -> str:
        if self._error is not None:
            state = f"failed: {self._error}"
        elif self._value is not None:
            shown = self._value if len(self._value) <= _SHOWN else self._value[:_SHOWN] + "…"
            state = f"{'ready' if self._producer else 'set'}: {shown!r}"
        else:
            state = "pending" if self._producer else "unset"
        return f"SemanticVariable({self._label}, {state})"

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        """Pickled or copied, a variable of a session is its outcome: a new variable (another
        id, no session) with its value, usage and finish reason, or its error. One with neither
        yet cannot be (its value is still to come from its session)."""
        if self._session is None:
            return super().__reduce_ex__(protocol)
        if self._value is None and self._error is None:
            raise TypeError(
                f"variable {self._label} has no value yet: get() it before pickling or copying "
                "it (its value is still to come from its session)"
            )
        state = (self._value, self.name, self._usage, self._finish_reason, self._error)
        return (_detached, state)

    # -- helpers -------------------------------------------------------------------------------

    @property
    def _label(self) -> str:
        return f"{self.name!r} ({self.id})" if self.name else repr(self.id)

    def _check_settable(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"a variable's value must be a str, got {type(value).__name__}")
        check_text(value, f"the value of variable {self._label}")
        if self._producer is not None:
            raise ParrotError(f"variable {self._label} is written by call {self._producer!r}")
        if self._value is not None:
            raise ParrotError(f"variable {self._label} already has a value")

    def _known(self) -> str | None:
        if self._error is not None:
            raise self._error
        return self._value

    def _bound(self) -> Session:
        if self._session is None:
            raise ParrotError(
                f"variable {self._label} has no value and belongs to no session: pass it to a "
                "semantic function inside `with P.Session(url):` first, or set() it"
            )
        return self._session


def _detached(
    value: str | None,
    name: str | None,
    usage: dict[str, Any] | None,
    finish_reason: str | None,
    error: ParrotError | None,
) -> SemanticVariable:
    """A variable of no session holding a read variable's outcome (see `__reduce_ex__`)."""
    var = SemanticVariable(value, name)
    var._usage, var._finish_reason, var._error = usage, finish_reason, error
    return var


def _check_criteria(criteria: str) -> None:
    """Refuse a bad criterion before anything is sent: the server would reject the submission,
    and a rejected submission fails every pending call in it, not only this read."""
    if criteria not in _CRITERIA:
        raise ValueError(f"criteria must be 'latency' or 'throughput', got {criteria!r}")


def _check_timeout(timeout: float | None) -> None:
    valid = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if timeout is not None and not (valid and math.isfinite(timeout) and timeout >= 0):
        raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")


def variable(value: str | None = None, name: str | None = None) -> SemanticVariable:
    """A new Semantic Variable, optionally with its value."""
    return SemanticVariable(value, name)
