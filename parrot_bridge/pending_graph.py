"""The calls and variables a session recorded but has not sent yet. Thread-safe, no I/O.

A call that reads a variable nobody will set yet (no value and no producer, directly or through
other pending calls) is held here until that variable is set: the server rejects such a call,
and holding it lets `set()` come after a flush.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parrot_bridge.errors import ParrotError
from parrot_bridge.variable import Criteria, SemanticVariable

if TYPE_CHECKING:
    from parrot_bridge.function import SemanticFunction


@dataclass(slots=True)
class Batch:
    """One submission: its JSON body, the variables it declares, the outputs of its calls."""

    body: dict[str, Any]
    variables: list[SemanticVariable]
    outputs: list[SemanticVariable]


@dataclass(slots=True)
class _Call:
    spec: dict[str, Any]
    inputs: list[SemanticVariable]
    outputs: list[SemanticVariable]


class PendingGraph:
    def __init__(self, owner: object) -> None:
        self._owner = owner  # the session, to tell its variables from others'
        self._lock = threading.Lock()
        self._calls: list[_Call] = []

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._calls)

    def add_call(
        self,
        call_id: str,
        fn: SemanticFunction,
        inputs: dict[str, SemanticVariable],
        outputs: dict[str, SemanticVariable],
    ) -> None:
        """Record a call; its variables join the session. Checked first, then applied."""
        with self._lock:
            for var in [*inputs.values(), *outputs.values()]:
                if var._session is not None and var._session is not self._owner:
                    raise ParrotError(f"variable {var._label} belongs to another session")
            for name, var in inputs.items():
                if var._error is not None:
                    raise ParrotError(
                        f"{fn.name}(): input {name!r} reads variable {var._label}, which has no "
                        f"value: {var._error}",
                        status=var._error.status,
                        type=var._error.type,
                        code=var._error.code,
                    )
            seen: set[str] = set()
            for name, var in outputs.items():
                if var._producer is not None or var._value is not None or var.id in seen:
                    raise ParrotError(
                        f"{fn.name}(): output {name!r} cannot write variable {var._label}: it "
                        "already has a value or a producer"
                    )
                if var in inputs.values():
                    raise ParrotError(
                        f"{fn.name}(): variable {var._label} is both an input and an output"
                    )
                seen.add(var.id)
            for var in outputs.values():
                var._producer = call_id
            for var in [*inputs.values(), *outputs.values()]:
                var._session = self._owner  # type: ignore[assignment]
            spec = {
                "id": call_id,
                "function": fn.name,
                "template": fn.template.source,
                "inputs": {name: var.id for name, var in inputs.items()},
                "outputs": {name: var.id for name, var in outputs.items()},
                "sampling": fn.sampling,
            }
            if not fn.add_special_tokens:
                spec["add_special_tokens"] = False
            self._calls.append(_Call(spec, list(inputs.values()), list(outputs.values())))

    def take(self, awaits: dict[str, Criteria] | None = None) -> Batch | None:
        """The pending calls that can run, as one submission (and forget them); None when none
        can. Calls waiting on an unset variable stay pending."""
        with self._lock:
            self._fail_readers_of_failed()
            held = self._held()
            ready = [c for i, c in enumerate(self._calls) if i not in held]
            if not ready:
                return None
            self._calls = [c for i, c in enumerate(self._calls) if i in held]
            declared: dict[str, SemanticVariable] = {}
            for call in ready:
                for var in [*call.inputs, *call.outputs]:
                    if not var._declared:
                        declared.setdefault(var.id, var)
            variables = list(declared.values())
            for var in variables:
                var._declared = True
            body = {
                "variables": [{"id": v.id, "name": v.name, "value": v._value} for v in variables],
                "calls": [c.spec for c in ready],
                "awaits": [{"variable": k, "criteria": c} for k, c in (awaits or {}).items()],
            }
            return Batch(body, variables, [v for c in ready for v in c.outputs])

    def reject(self, batch: Batch, error: ParrotError) -> None:
        """The server did not take `batch`: its calls are dropped (their outputs fail with
        `error`) and its other variables are undeclared, so later calls send them again.
        Pending calls reading those outputs (held, waiting on an unset variable) fail too."""
        with self._lock:
            for var in batch.variables:
                var._declared = False
            for var in batch.outputs:
                var._error = error
            self._fail_readers_of_failed()

    def unset_source(self, var: SemanticVariable) -> SemanticVariable | None:
        """The variable without value or producer that a pending call writing `var` waits on."""
        with self._lock:
            producers = {out.id: c for c in self._calls for out in c.outputs}
            stack, seen = [var], {var.id}
            while stack:
                call = producers.get(stack.pop().id)
                for source in call.inputs if call else ():
                    if source._value is None and source._producer is None:
                        return source
                    if source.id not in seen:
                        seen.add(source.id)
                        stack.append(source)
            return None

    def _fail_readers_of_failed(self) -> None:
        """Drop the pending calls that read, directly or through other pending calls, an output
        that failed on the client (its submission was refused): sent, they would be refused
        for reading a variable the server never got, and fail the calls sent with them."""
        failing = True
        while failing:
            failing = False
            for call in list(self._calls):
                source = next((v for v in call.inputs if v._error is not None), None)
                if source is None:
                    continue
                self._calls.remove(call)
                failing = True
                cause = source._error
                assert cause is not None
                name = next(n for n, v in call.spec["inputs"].items() if v == source.id)
                error = ParrotError(
                    f"{call.spec['function']}(): input {name!r} reads variable {source._label}, "
                    f"which has no value: {cause}",
                    status=cause.status,
                    type=cause.type,
                    code=cause.code,
                )
                for var in call.outputs:
                    var._error = error

    def _held(self) -> set[int]:
        """Indexes of the calls that read, directly or through other pending calls, a variable
        without value or producer."""
        readers: dict[str, list[int]] = {}
        for i, call in enumerate(self._calls):
            for var in call.inputs:
                readers.setdefault(var.id, []).append(i)
        stack = [
            v for c in self._calls for v in c.inputs if v._value is None and v._producer is None
        ]
        held: set[int] = set()
        while stack:
            for i in readers.get(stack.pop().id, ()):
                if i not in held:
                    held.add(i)
                    stack.extend(self._calls[i].outputs)
        return held
