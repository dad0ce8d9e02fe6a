"""All open sessions, each reachable only with its token."""

from __future__ import annotations

import secrets
import time

from server.errors import ApiError, not_found
from server.session import Session


class SessionStore:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, name: str | None = None) -> tuple[Session, str]:
        """A new session and its token (the only time the token is handed out)."""
        token = secrets.token_urlsafe(24)
        session = Session(f"s-{secrets.token_hex(8)}", token, name)
        self._sessions[session.id] = session
        return session, token

    def get(self, session_id: str, token: str | None) -> Session:
        """The session, if `token` is its token; 404 when unknown, 401/403 for a bad token."""
        session = self._sessions.get(session_id)
        if session is None:
            raise not_found(f"session {session_id!r} does not exist (or was closed)")
        if not token:
            raise ApiError(
                401,
                f"session {session_id!r} needs its token: send 'Authorization: Bearer <token>'",
                type="authentication_error",
                code="missing_token",
            )
        if not session.token_matches(token):
            raise ApiError(
                403,
                f"the token does not open session {session_id!r}",
                type="permission_error",
                code="bad_token",
            )
        session.last_used = time.monotonic()
        return session

    def idle(self, ttl_s: float) -> list[Session]:
        """Sessions idle for longer than `ttl_s` seconds."""
        now = time.monotonic()
        return [s for s in self._sessions.values() if s.idle_for(now) > ttl_s]

    def remove(self, session_id: str) -> Session | None:
        return self._sessions.pop(session_id, None)

    def all(self) -> list[Session]:
        return list(self._sessions.values())
