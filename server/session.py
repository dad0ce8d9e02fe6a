"""One application session on the server: its graph, and the live feeds of its variables."""

from __future__ import annotations

import asyncio
import hmac
import time

from server.graph import Call, Criteria, Generation, Graph, Submission, Variable, VariableState
from server.variable_feed import VariableFeed


class Session:
    """A graph plus what asyncio needs around it: waiting for values and streaming them.

    Calls never run here; mutators return the calls that became ready and the caller hands them
    to the executor.
    """

    def __init__(self, session_id: str, token: str, name: str | None = None) -> None:
        self.id = session_id
        self.name = name
        self.created = time.time()
        self.last_used = time.monotonic()
        self.graph = Graph()
        self.closed = False
        self.closed_why = ""
        self._token = token
        self._feeds: dict[str, VariableFeed] = {}

    def token_matches(self, token: str) -> bool:
        # aiohttp decodes a header's bytes that are no UTF-8 to surrogates: back to them
        return hmac.compare_digest(self._token.encode(), token.encode("utf-8", "surrogateescape"))

    def idle_for(self, now: float) -> float:
        """Seconds since the last request, or 0 while calls run or wait to run."""
        counts = self.graph.counts()
        if counts["ready"] or counts["running"]:
            return 0.0
        return now - self.last_used

    # -- changes -------------------------------------------------------------------------------

    def submit(self, sub: Submission) -> list[Call]:
        """Validate and apply a graph submission (atomic); return the calls ready to run. Its
        calls failed on arrival (sampling the server cannot follow, a failed input) wake the
        reads already waiting on their outputs, as a call failing later does."""
        ready = self.graph.submit(sub)
        # what failed: the new calls' outputs and downstream, old calls' too where a new call
        # writes a client-owned variable they read
        stack = [v for decl in sub.calls for v in decl.outputs.values()]
        seen: set[str] = set()
        while stack:
            var = self.graph.variables[stack.pop()]
            if var.id in seen or var.state is not VariableState.FAILED:
                continue
            seen.add(var.id)
            self._settle(var)
            for call_id in var.consumers:
                stack.extend(self.graph.calls[call_id].outputs.values())
        return ready

    def set_value(self, var_id: str, value: str) -> list[Call]:
        ready = self.graph.set_value(var_id, value)
        self._settle(self.graph.variables[var_id])
        return ready

    def push_chunk(self, var_id: str, text: str) -> None:
        """Text generated so far for an output; only kept while someone may stream it."""
        self.feed(var_id).push(text)

    def complete_output(
        self, call_id: str, name: str, value: str, generation: Generation | None = None
    ) -> list[Call]:
        ready = self.graph.complete_output(call_id, name, value, generation)
        self._settle(self.graph.variables[self.graph.calls[call_id].outputs[name]])
        return ready

    def fail_call(self, call_id: str, reason: str) -> None:
        for var in self.graph.fail_call(call_id, reason):
            self._settle(var)

    def close(self, why: str = "was closed") -> None:
        """End the session: its waiting reads wake and are told `why` (after its id)."""
        self.closed = True
        self.closed_why = why
        for feed in self._feeds.values():
            feed.finish(error=f"session {self.id!r} {why}")
        self._feeds.clear()

    # -- reading -------------------------------------------------------------------------------

    async def wait(self, var_id: str, timeout: float, criteria: Criteria | None = None) -> Variable:
        """The variable once it is ready or failed, or as it is after `timeout` seconds."""
        var = self.graph.variable(var_id)
        if criteria is not None:
            self.graph.await_variable(var_id, criteria)
        if var.state is VariableState.PENDING and timeout > 0:
            try:
                await asyncio.wait_for(self.feed(var_id).done.wait(), timeout)
            except TimeoutError:
                pass
        return var

    def feed(self, var_id: str) -> VariableFeed:
        """The live feed of a variable (a finished one when it already has its value)."""
        feed = self._feeds.get(var_id)
        if feed is not None:
            return feed
        var = self.graph.variable(var_id)
        feed = VariableFeed()
        if var.state is VariableState.PENDING and not self.closed:
            self._feeds[var_id] = feed
        else:
            feed.finish(var.value, var.error or (None if var.value is not None else "closed"))
        return feed

    def _settle(self, var: Variable) -> None:
        feed = self._feeds.pop(var.id, None)
        if feed is not None:
            feed.finish(var.value, var.error)
