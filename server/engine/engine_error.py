"""The error of a job that failed inside an engine (torch-free: the server process raises it
and catches it without loading the engine)."""

from __future__ import annotations


class EngineError(RuntimeError):
    """A job failed inside the engine (its message says why)."""
