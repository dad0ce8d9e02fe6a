"""The calls and variables a session recorded but has not sent yet. Thread-safe, no I/O.

Every pending call is sent, also one reading a variable that has no value yet and no producer:
the variable is declared without a value, the call waits on the server (which fills its ready
leading text meanwhile) and `set()` gives the value there later.
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
        # the inputs of the call writing each output, sent or not (to tell a reader what unset
        # variable its value waits on)
        self._inputs_of: dict[str, list[SemanticVariable]] = {}

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
            for var in outputs.values():
                self._inputs_of[var.id] = list(inputs.values())

    def take(self, awaits: dict[str, Criteria] | None = None) -> Batch | None:
        """The pending calls as one submission (and forget them); None when there are none.
        Variables the server does not know yet are declared, with their value if they have one
        (else they are the client's to set later)."""
        with self._lock:
            self._fail_readers_of_failed()
            calls, self._calls = self._calls, []
            if not calls:
                return None
            declared: dict[str, SemanticVariable] = {}
            for call in calls:
                for var in [*call.inputs, *call.outputs]:
                    if not var._declared:
                        declared.setdefault(var.id, var)
            variables = list(declared.values())
            for var in variables:
                var._declared = True
            body = {
                "variables": [{"id": v.id, "name": v.name, "value": v._value} for v in variables],
                "calls": [c.spec for c in calls],
                "awaits": [{"variable": k, "criteria": c} for k, c in (awaits or {}).items()],
            }
            return Batch(body, variables, [v for c in calls for v in c.outputs])

    def set_local(self, var: SemanticVariable, value: str) -> bool:
        """Give `var` its value here when the server does not know it yet (it then goes with
        the next submission) and return True; False when it was declared: the server must be
        told. Checked and done under the lock `take` declares variables under."""
        with self._lock:
            if var._value is not None:  # another thread's set() came first
                raise ParrotError(f"variable {var._label} already has a value")
            if var._declared:
                return False
            var._value = value
            return True

    def unset_source(self, var: SemanticVariable) -> SemanticVariable | None:
        """A variable with no value, no producer and no error that `var`'s value waits on,
        through the calls recorded here (sent or not); None when there is none."""
        with self._lock:
            stack, seen = [var], {var.id}
            while stack:
                for source in self._inputs_of.get(stack.pop().id, ()):
                    if source._value is not None or source._error is not None:
                        continue
                    if source._producer is None:
                        return source
                    if source.id not in seen:
                        seen.add(source.id)
                        stack.append(source)
            return None

    def reject(self, batch: Batch, error: ParrotError) -> None:
        """The server did not take `batch`: its calls are dropped (their outputs fail with
        `error`) and its other variables are undeclared, so later calls send them again.
        Pending calls reading those outputs fail too."""
        with self._lock:
            for var in batch.variables:
                var._declared = False
            for var in batch.outputs:
                var._error = error
            self._fail_readers_of_failed()

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
