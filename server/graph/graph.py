"""The call graph of one session: variables, calls and their states. Pure data, no I/O."""

from __future__ import annotations

from server.graph.call import Call, CallState
from server.graph.errors import GraphError
from server.graph.submission import Criteria, Submission, VariableDecl
from server.graph.validate import build_calls, check_id
from server.graph.variable import Generation, Variable, VariableState


class Graph:
    """Variables (one producer, many consumers) and the calls that connect them.

    Every mutator returns what became runnable, so the caller decides when and where calls run.
    A submission is validated as a whole before any of it is applied.
    """

    def __init__(self) -> None:
        self.variables: dict[str, Variable] = {}
        self.calls: dict[str, Call] = {}
        self.awaits: dict[str, Criteria] = {}
        self.version = 0  # bumped when calls or awaits change (analyses are cached by it)
        self.calls_version = 0  # bumped when calls are added (task groups depend on this alone)
        # awaited variables in the order their criterion was set or changed, so that analyses
        # can take in new awaits alone (a client reading N outputs one by one awaits N times)
        self.await_log: list[str] = []

    # -- building ------------------------------------------------------------------------------

    def submit(self, sub: Submission) -> list[Call]:
        """Validate and apply `sub`; return its calls that are ready to run (state READY).

        Raises `GraphError` and leaves the graph untouched when anything in `sub` is invalid; a
        call declared with an `error` is added failed (and what reads its outputs fails too).
        """
        new_calls = build_calls(self.variables, self.calls, sub)
        for decl in sub.variables:
            if decl.id not in self.variables:  # else declared again as it is: kept
                self._add_variable(decl)
        for call in new_calls:
            self.calls[call.id] = call
            for var_id in call.outputs.values():
                self.variables[var_id].producer = call.id
        ready: list[Call] = []
        failed_inputs: list[Call] = []
        refused = {d.id: d.error for d in sub.calls if d.error is not None}
        for call in new_calls:
            for var_id in call.inputs.values():
                var = self.variables[var_id]
                var.consumers.append(call.id)
                if var.state is VariableState.PENDING:
                    call.missing.add(var_id)
            if call.id in refused:
                continue
            if any(self.variables[v].state is VariableState.FAILED for v in call.inputs.values()):
                failed_inputs.append(call)
            elif not call.missing:
                call.state = CallState.READY
                ready.append(call)
        for call_id, reason in refused.items():  # after the links, so dependents fail too
            self._fail(self.calls[call_id], reason)
        for call in failed_inputs:
            if call.state is CallState.WAITING:
                var = next(
                    self.variables[v]
                    for v in call.inputs.values()
                    if self.variables[v].state is VariableState.FAILED
                )
                self._fail(call, f"input variable {var.label} failed: {var.error}")
        self.awaits.update(sub.awaits)
        self.await_log.extend(sub.awaits)
        self.calls_version += 1
        self.version += 1
        return ready

    def add_variable(self, decl: VariableDecl) -> Variable:
        """Declare one variable outside a submission."""
        check_id("variable", decl.id)
        if decl.id in self.variables:
            raise GraphError(
                f"variable {decl.id!r} is declared twice",
                kind="duplicate_variable",
                variable=decl.id,
            )
        return self._add_variable(decl)

    def set_value(self, var_id: str, value: str) -> list[Call]:
        """Give a client-owned variable its value; return the calls that became ready."""
        var = self.variable(var_id)
        if var.producer is not None:
            raise GraphError(
                f"variable {var.label} is written by call {var.producer!r}; it cannot be set",
                kind="two_producers",
                call=var.producer,
                variable=var_id,
            )
        if var.state is not VariableState.PENDING:
            raise GraphError(
                f"variable {var.label} already has a value", kind="already_set", variable=var_id
            )
        return self._set(var, value)

    def await_variable(self, var_id: str, criteria: Criteria) -> None:
        """Record that the client waits for `var_id` with this objective."""
        self.variable(var_id)
        if self.awaits.get(var_id) != criteria:
            self.awaits[var_id] = criteria
            self.await_log.append(var_id)
            self.version += 1

    # -- execution -----------------------------------------------------------------------------

    def start(self, call_id: str) -> Call:
        call = self.calls[call_id]
        if call.state is not CallState.READY:
            raise RuntimeError(f"call {call.label} is {call.state.value}, not ready")
        call.state = CallState.RUNNING
        return call

    def requeue(self, call_id: str) -> Call:
        """A running call that set none of its outputs goes back to READY, to run again (its
        engine died under it)."""
        call = self.calls[call_id]
        if call.state is not CallState.RUNNING:
            raise RuntimeError(f"call {call.label} is {call.state.value}, not running")
        if any(self.variables[v].state is not VariableState.PENDING for v in call.outputs.values()):
            raise RuntimeError(f"call {call.label} has set an output: it cannot run again")
        call.state = CallState.READY
        call.requeued += 1
        return call

    def input_values(self, call: Call) -> dict[str, str]:
        """Values of a ready call's inputs, by template name."""
        values: dict[str, str] = {}
        for name, var_id in call.inputs.items():
            value = self.variables[var_id].value
            if value is None:
                raise RuntimeError(f"call {call.label}: input {name!r} has no value")
            values[name] = value
        return values

    def complete_output(
        self, call_id: str, name: str, value: str, generation: Generation | None = None
    ) -> list[Call]:
        """A running call produced output `name` (as `generation` says); return the calls that
        became ready.

        The call is DONE once all its outputs are set.
        """
        call = self.calls[call_id]
        if call.state is not CallState.RUNNING:
            raise RuntimeError(f"call {call.label} is {call.state.value}, not running")
        var = self.variables[call.outputs[name]]
        var.generation = generation
        ready = self._set(var, value)
        if all(self.variables[v].state is VariableState.READY for v in call.outputs.values()):
            call.state = CallState.DONE
        return ready

    def fail_call(self, call_id: str, reason: str) -> list[Variable]:
        """Fail a call, its unset outputs and everything downstream; return the failed variables."""
        call = self.calls[call_id]
        if call.state in (CallState.DONE, CallState.FAILED):
            return []
        return self._fail(call, reason)

    # -- queries -------------------------------------------------------------------------------

    def variable(self, var_id: str) -> Variable:
        var = self.variables.get(var_id)
        if var is None:
            raise GraphError(
                f"variable {var_id!r} does not exist", kind="unknown_variable", variable=var_id
            )
        return var

    def unset_sources(self, var_id: str) -> list[Variable]:
        """The client-owned variables without a value (no producer) that `var_id` waits on:
        itself, or those read by the calls upstream of it that have not run, nearest first."""
        found: list[Variable] = []
        queue, seen = [var_id], {var_id}
        for current in queue:  # breadth first; grows as it goes
            var = self.variable(current)
            if var.state is not VariableState.PENDING:
                continue
            if var.producer is None:
                found.append(var)
                continue
            for source in self.calls[var.producer].inputs.values():
                if source not in seen:
                    seen.add(source)
                    queue.append(source)
        return found

    def counts(self) -> dict[str, int]:
        """Number of calls in each state."""
        counts = {state.value: 0 for state in CallState}
        for call in self.calls.values():
            counts[call.state.value] += 1
        return counts

    # -- helpers -------------------------------------------------------------------------------

    def _add_variable(self, decl: VariableDecl) -> Variable:
        var = Variable(id=decl.id, name=decl.name)
        if decl.value is not None:
            var.value = decl.value
            var.state = VariableState.READY
        self.variables[decl.id] = var
        return var

    def _set(self, var: Variable, value: str) -> list[Call]:
        var.value = value
        var.state = VariableState.READY
        ready: list[Call] = []
        for call_id in var.consumers:
            call = self.calls[call_id]
            call.missing.discard(var.id)
            if call.state is CallState.WAITING and not call.missing:
                call.state = CallState.READY
                ready.append(call)
        return ready

    def _fail(self, root: Call, reason: str) -> list[Variable]:
        """Fail `root` and, breadth first, every call downstream of a variable it leaves unset."""
        failed: list[Variable] = []
        # downstream calls name the root cause, not the whole path (chains can be long)
        upstream = f"upstream call {root.label} failed: {reason}"
        queue: list[tuple[Call, str]] = [(root, reason)]
        while queue:
            call, why = queue.pop()
            if call.state in (CallState.DONE, CallState.FAILED):
                continue
            call.state = CallState.FAILED
            call.error = why
            for var_id in call.outputs.values():
                var = self.variables[var_id]
                if var.state is not VariableState.PENDING:
                    continue
                var.state = VariableState.FAILED
                var.error = f"call {call.label} failed: {why}"
                failed.append(var)
                for consumer in var.consumers:
                    queue.append((self.calls[consumer], upstream))
        return failed
