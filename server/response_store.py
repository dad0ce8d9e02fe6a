"""Stored responses of the Responses API: each kept with the conversation it ends, so a later
request can follow it (`previous_response_id`) or a client retrieve it, until it is deleted or
the least recently used ones make room (a bound on their number and on their text)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from server.api.responses_models import ResponseObject


@dataclass(slots=True)
class StoredResponse:
    """A response and its conversation as chat messages: the input it answered (after the
    conversation it followed; never the instructions) and its own output; and its own input
    items, with their ids. `size` is the
    characters its messages and the response (its tools' schemas too) hold: what bounds the
    store's memory."""

    response: ResponseObject
    messages: list[dict[str, Any]]
    input_items: list[dict[str, Any]] = field(default_factory=list)  # as the client listed them
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.response.model_dump_json()) + len(str(self.input_items)) + sum(
            len(str(m.get("content") or "")) + len(str(m.get("tool_calls") or ""))
            for m in self.messages
        )


class ResponseStore:
    """At most `max_responses` responses holding at most `max_chars` characters of
    conversation; the least recently stored or read go first."""

    def __init__(self, max_responses: int, max_chars: int) -> None:
        if max_responses < 0 or max_chars < 0:
            raise ValueError("a response store's bounds must be >= 0")
        self.max_responses = max_responses
        self.max_chars = max_chars
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._chars = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def chars(self) -> int:
        return self._chars

    def put(self, stored: StoredResponse) -> bool:
        """Keep `stored` (replacing one of the same id); False when it alone is past the
        bounds, and so is not kept."""
        self.delete(stored.response.id)
        if self.max_responses == 0 or stored.size > self.max_chars:
            return False
        self._items[stored.response.id] = stored
        self._chars += stored.size
        while len(self._items) > self.max_responses or self._chars > self.max_chars:
            _, dropped = self._items.popitem(last=False)
            self._chars -= dropped.size
        return True

    def get(self, response_id: str) -> StoredResponse | None:
        stored = self._items.get(response_id)
        if stored is not None:
            self._items.move_to_end(response_id)
        return stored

    def delete(self, response_id: str) -> bool:
        stored = self._items.pop(response_id, None)
        if stored is None:
            return False
        self._chars -= stored.size
        return True
