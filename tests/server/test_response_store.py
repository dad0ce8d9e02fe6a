"""The store of Responses API responses, alone: bounded by count and by characters, least
recently used first."""

from __future__ import annotations

import pytest

from server.api.responses_models import ResponseObject
from server.response_store import ResponseStore, StoredResponse


def stored(rid: str, text: str) -> StoredResponse:
    response = ResponseObject(
        id=rid, created_at=0, status="completed", model="m", output=[], parallel_tool_calls=True,
        store=True, temperature=1.0, top_p=1.0, text={"format": {"type": "text"}},
        tool_choice="auto", tools=[],
    )  # fmt: skip
    return StoredResponse(response, [{"role": "user", "content": text}])


def test_the_least_recently_used_go_first_past_the_count():
    store = ResponseStore(max_responses=2, max_chars=1000)
    store.put(stored("a", "x"))
    store.put(stored("b", "x"))
    assert store.get("a") is not None  # read: now the most recent
    store.put(stored("c", "x"))
    assert [r for r in "abc" if store.get(r) is not None] == ["a", "c"]
    assert len(store) == 2


def test_characters_bound_the_store_and_a_response_past_them_is_not_kept():
    a, b = stored("a", "12345"), stored("b", "123456")
    assert b.size == a.size + 1 > 5  # the response's own JSON counts too
    store = ResponseStore(max_responses=10, max_chars=a.size + b.size - 1)
    assert store.put(a)
    assert store.put(b)  # one character too many: "a" goes
    assert store.get("a") is None and store.chars == b.size
    assert not store.put(stored("c", "x" * (a.size + b.size)))
    assert store.get("c") is None and store.get("b") is not None


def test_delete_and_replace_keep_the_count_of_characters():
    store = ResponseStore(max_responses=10, max_chars=10_000)
    store.put(stored("a", "1234"))
    again = stored("a", "12")
    store.put(again)
    assert store.chars == again.size and len(store) == 1
    assert store.delete("a") and not store.delete("a")
    assert store.chars == 0 and len(store) == 0


def test_a_store_of_none_keeps_nothing_and_negative_bounds_are_refused():
    assert not ResponseStore(0, 100).put(stored("a", "x"))
    with pytest.raises(ValueError, match=">= 0"):
        ResponseStore(-1, 10)
