"""Errors that become HTTP responses, in OpenAI's error shape: {"error": {message, type, ...}}."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error with its HTTP status; `type` and `code` are machine-readable reasons."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(
    message: str, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, code: str | None = None, param: str | None = None) -> ApiError:
    return ApiError(400, message, code=code, param=param)


def not_found(message: str, code: str = "not_found") -> ApiError:
    return ApiError(404, message, type="not_found_error", code=code)


def unavailable(reason: str, code: str = "engine_unavailable") -> ApiError:
    """503 with a hint when to ask again (OpenAI's clients retry it by themselves)."""
    return ApiError(503, reason, type="server_error", code=code, headers={"Retry-After": "1"})
