"""The error raised when a submitted graph is invalid."""

from __future__ import annotations


class GraphError(ValueError):
    """A graph submission (or a variable update) that cannot be applied.

    `kind` is a short machine-readable reason (e.g. "unknown_variable", "cycle"); `call` and
    `variable` name what was wrong, when it applies to one of them.
    """

    def __init__(
        self, message: str, *, kind: str, call: str | None = None, variable: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.call = call
        self.variable = variable
