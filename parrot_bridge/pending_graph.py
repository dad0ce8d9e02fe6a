"""The calls and variables a session recorded but has not sent yet. Thread-safe, no I/O."""

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
    """One submission: its JSON body and the variables it declares."""

    body: dict[str, Any]
    variables: list[SemanticVariable]


class PendingGraph:
    def __init__(self, owner: object) -> None:
        self._owner = owner  # the session, to tell its variables from others'
        self._lock = threading.Lock()
        self._variables: dict[str, SemanticVariable] = {}
        self._calls: list[dict[str, Any]] = []

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._calls or self._variables)

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
                if not var._declared:
                    self._variables[var.id] = var
            self._calls.append(
                {
                    "id": call_id,
                    "function": fn.name,
                    "template": fn.template.source,
                    "inputs": {name: var.id for name, var in inputs.items()},
                    "outputs": {name: var.id for name, var in outputs.items()},
                    "sampling": fn.sampling,
                }
            )

    def take(self, awaits: dict[str, Criteria] | None = None) -> Batch | None:
        """Everything pending, as one submission (and forget it); None when nothing is."""
        with self._lock:
            if not self._calls and not self._variables:
                return None
            variables = list(self._variables.values())
            body = {
                "variables": [{"id": v.id, "name": v.name, "value": v._value} for v in variables],
                "calls": self._calls,
                "awaits": [{"variable": k, "criteria": c} for k, c in (awaits or {}).items()],
            }
            self._variables, self._calls = {}, []
            for var in variables:
                var._declared = True
            return Batch(body, variables)
