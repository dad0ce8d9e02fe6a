"""Whether text (UTF-8 bytes, one at a time) is still the start of one of a few fixed tags
followed by a JSON object that the tag's schema allows: the same interface as `JsonPrefix`.

A tool call whose function the model picks is such a text: after a primer that opens the call
(`{"name": "`), each tag is a function's name and what follows it up to its arguments
(`get_weather", "arguments": `), and the arguments follow that function's parameters."""

from __future__ import annotations

from typing import Any

from server.engine.choice_prefix import ChoicePrefix
from server.engine.json_prefix import JsonPrefix
from server.engine.json_schema import compile_schema
from server.engine.schema_prefix import SchemaPrefix


def check_tags(tags: dict[str, dict[str, Any] | None]) -> None:
    """ValueError unless `tags` can be followed: non-empty tags, none the start of another
    (so the tag is known the moment it is complete), schemas that compile."""
    if not tags or not all(isinstance(t, str) and t for t in tags):
        raise ValueError("tagged_json needs one or more non-empty tags")
    nested = next(((a, b) for a in tags for b in tags if a != b and b.startswith(a)), None)
    if nested is not None:
        raise ValueError(f"tagged_json: the tag {nested[0]!r} starts the tag {nested[1]!r}")
    for schema in tags.values():
        if schema is not None:
            compile_schema(schema)  # SchemaError (a ValueError) names what cannot be followed


class TaggedJsonPrefix:
    """`complete` (and `final`) once the object after the tag has closed."""

    __slots__ = ("_schemas", "_tag", "_json")

    def __init__(self, tags: dict[str, dict[str, Any] | None]) -> None:
        self._schemas = {
            t.encode(): None if s is None else compile_schema(s) for t, s in tags.items()
        }
        self._tag = ChoicePrefix(tuple(self._schemas))
        self._json: JsonPrefix | SchemaPrefix | None = None  # once the tag is complete

    @property
    def complete(self) -> bool:
        return self._json is not None and self._json.complete

    @property
    def final(self) -> bool:
        return self._json is not None and self._json.final

    def copy(self) -> TaggedJsonPrefix:
        twin = TaggedJsonPrefix.__new__(TaggedJsonPrefix)
        twin._schemas = self._schemas
        twin._tag = self._tag.copy()
        twin._json = None if self._json is None else self._json.copy()
        return twin

    def feed_all(self, data: bytes) -> bool:
        return all(self.feed(b) for b in data)

    def feed(self, b: int) -> bool:
        if self._json is not None:
            return self._json.feed(b)
        if not self._tag.feed(b):
            return False
        if self._tag.complete:  # no tag starts another: this one is the tag
            node = self._schemas[self._tag.text]
            self._json = JsonPrefix() if node is None else SchemaPrefix(node)
        return True
