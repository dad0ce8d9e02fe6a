"""Stand-ins for an engine and its driver whose fills wait at a gate: the executor's early fills
can be watched while they run (where they went, how large, what load they count) without a
model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from server.engine.outputs import JobOutput
from server.engine_driver import TokenContext


class GatedEngine:
    """Contexts whose fills wait until `gate` is set; `started` and `filled` record the sizes
    of the fills begun and of those done. A generation answers one token at once."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.gate = gate if gate is not None else asyncio.Event()
        self.started: list[int] = []
        self.filled: list[int] = []
        self._ids = 0

    def create_context(self, parent: int | None = None) -> int:
        self._ids += 1
        return self._ids

    async def fill(self, context_id: int, tokens: list[int], *args: Any) -> int:
        self.started.append(len(tokens))
        await self.gate.wait()
        self.filled.append(len(tokens))
        return 0

    async def generate(
        self, context_id: int, *args: Any, **kwargs: Any
    ) -> AsyncIterator[JobOutput]:
        yield JobOutput(0, context_id, [7], "done", [7], "done", True, "stop")

    def truncate(self, context_id: int, kept: int) -> None:
        pass

    def boost(self, context_id: int, priority: int) -> None:
        pass

    def free(self, context_id: int) -> None:
        pass


class GatedDriver:
    """An engine driver over a `GatedEngine`: one token per character, so a prefix's tokens
    start every longer text's."""

    alive = True
    max_model_len = 100_000

    def __init__(self, engine: GatedEngine) -> None:
        self.engine = engine

    def encode_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def fewest_tokens(self, text: str) -> int:
        return len(text)

    def new_context(self) -> TokenContext:
        return TokenContext(self.engine, self.engine.create_context(), [])  # type: ignore[arg-type]

    async def together(self) -> None:
        pass
