"""Exceptions raised by the SDK."""

from __future__ import annotations

__all__ = ["CallFailedError", "ParrotError"]


class ParrotError(Exception):
    """An error from the Parrot server (with its HTTP status, error type/code and the
    response's `X-Request-Id`, which its log line names) or the SDK."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.request_id = request_id


class CallFailedError(ParrotError):
    """A variable has no value because the call producing it (or one upstream) failed (its
    `type` and `code` are "call_failed", as the server's stream error has them)."""
