"""The global prefix store alone: references, LRU eviction, time to live."""

import pytest

from server.prefix_store import PrefixStore, PrefixStoreConfig


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(max_entries: int = 3, ttl_s: float = 100.0) -> tuple[PrefixStore[str], list[str], Clock]:
    evicted: list[str] = []
    clock = Clock()
    return PrefixStore(PrefixStoreConfig(max_entries, ttl_s), evicted.append, clock), evicted, clock


def test_entries_are_per_key_and_engine() -> None:
    store, _, _ = make()
    entry = store.put("k", 0, "ctx-a", 40)
    assert store.get("k", 0) is entry and store.get("k", 1) is None
    store.put("k", 1, "ctx-b", 40)
    assert sorted(store.engines_holding("k")) == [0, 1]
    with pytest.raises(KeyError, match="already stored"):
        store.put("k", 0, "again", 1)


def test_unreferenced_entries_are_evicted_least_recently_used_first() -> None:
    store, evicted, clock = make(max_entries=2)
    a = store.put("a", 0, "A", 1)
    b = store.put("b", 0, "B", 1)
    store.release(a)
    store.release(b)
    clock.now = 1
    store.get("a", 0)  # a is now more recent than b
    c = store.put("c", 0, "C", 1)
    assert evicted == ["B"] and len(store) == 2
    # referenced entries stay even over the size; they go once released
    d = store.put("d", 0, "D", 1)
    assert evicted == ["B", "A"] and store.get("c", 0) is c
    assert len(store) == 2
    store.acquire(c)
    store.release(c)
    store.release(d)
    assert len(store) == 2


def test_references_keep_an_entry_past_its_size_and_lifetime() -> None:
    store, evicted, clock = make(max_entries=1, ttl_s=10)
    a = store.put("a", 0, "A", 1)
    b = store.put("b", 0, "B", 1)
    assert evicted == [] and len(store) == 2  # both referenced by their creators
    store.release(b)
    assert evicted == ["B"]
    clock.now = 50
    store.expire()
    assert evicted == ["B"]  # a is still referenced
    store.release(a)
    clock.now = 61
    store.expire()
    assert evicted == ["B", "A"] and len(store) == 0


def test_lifetime_counts_from_the_last_use() -> None:
    store, evicted, clock = make(ttl_s=10)
    store.release(store.put("a", 0, "A", 1))
    clock.now = 8
    assert store.get("a", 0) is not None
    clock.now = 16
    assert store.get("a", 0) is not None
    clock.now = 30
    assert store.get("a", 0) is None and evicted == ["A"]


def test_discard_and_clear_close_handles_and_bad_release_is_refused() -> None:
    store, evicted, _ = make()
    a = store.put("a", 0, "A", 1)
    store.put("b", 0, "B", 1)
    store.discard(a)
    assert evicted == ["A"] and store.get("a", 0) is None
    store.clear()
    assert evicted == ["A", "B"] and len(store) == 0
    c = store.put("c", 0, "C", 1)
    store.release(c)
    with pytest.raises(RuntimeError, match="released more often"):
        store.release(c)


def test_a_dead_engines_entries_go_at_once_and_their_holders_can_still_release() -> None:
    store, evicted, _ = make(max_entries=8)
    held = store.put("a", 1, "A1", 1)  # referenced by whoever is filling or forking it
    store.release(store.put("b", 1, "B1", 1))
    kept = store.put("a", 0, "A0", 1)
    assert store.discard_engine(1) == 2
    assert sorted(evicted) == ["A1", "B1"]
    assert store.engines_holding("a") == [0] and store.get("b", 1) is None
    store.release(held)  # no error, and nothing comes back
    assert store.peek("a", 1) is None and len(store) == 1
    # a new entry for the same key on the restarted engine is a fresh one
    again = store.put("a", 1, "A1'", 1)
    assert again is not held and store.get("a", 1) is again and store.get("a", 0) is kept
    assert store.discard_engine(5) == 0


@pytest.mark.parametrize(("kwargs", "needle"), [({"max_entries": 0}, "max_entries"),
                                                ({"ttl_s": 0}, "ttl_s")])  # fmt: skip
def test_bad_config_is_refused(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        PrefixStoreConfig(**kwargs)
