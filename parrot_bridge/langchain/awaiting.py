"""Submitting a session's pending graph with the variables the application awaits, then
reading them: one submission that carries every final variable's criterion."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from parrot_bridge.session import Session
from parrot_bridge.variable import Criteria, SemanticVariable


def get_all(
    session: Session,
    variables: Sequence[SemanticVariable],
    criteria: Criteria = "latency",
    timeout: float | None = None,
) -> list[str]:
    """The values of `variables`, after one submission that declares them all awaited; each
    waited for at most `timeout` seconds (a model's `timeout`, as a plain request has it)."""
    submit_awaiting(session, variables, criteria)
    return [var.get(criteria, timeout) for var in variables]


def submit_awaiting(
    session: Session, variables: Sequence[SemanticVariable], criteria: Criteria = "latency"
) -> None:
    """Submit the session's pending graph, declaring `variables` awaited (nothing is sent when
    nothing is pending)."""
    session._loop.run(session._flush(_awaits(variables, criteria)))


async def aget_all(
    session: Session,
    variables: Sequence[SemanticVariable],
    criteria: Criteria = "latency",
    timeout: float | None = None,
) -> list[str]:
    await session._loop.arun(session._flush(_awaits(variables, criteria)))
    return list(await asyncio.gather(*(var.aget(criteria, timeout) for var in variables)))


def _awaits(variables: Sequence[SemanticVariable], criteria: Criteria) -> dict[str, Criteria]:
    # SDK note: Session has no public way yet to declare several awaited variables at once
    return {var.id: criteria for var in variables if var.value is None}
