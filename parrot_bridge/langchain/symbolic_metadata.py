"""`SymbolicMetadata`: a message's metadata not known yet (finish reason, usage, parsed reply),
for running user functions (lambdas) during a trace. Any read raises `NeedsValue`, so the
function runs again on the real message instead of reading absent values."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage

from parrot_bridge.langchain.symbolic_str import NeedsValue

# the fields that a reply of the server fills in (the text aside)
FIELDS = ("response_metadata", "usage_metadata", "additional_kwargs")


class SymbolicMetadata(dict):  # type: ignore[type-arg]
    """An empty dict that refuses to be read; `known` is what the trace has so far."""

    __slots__ = ("known",)

    def __init__(self, known: Any) -> None:
        super().__init__()
        self.known = known

    def __reduce_ex__(self, protocol: Any) -> Any:  # copies keep what is known
        return (SymbolicMetadata, (self.known,))


def _trap(name: str) -> Any:
    def read(self: SymbolicMetadata, *args: Any, **kwargs: Any) -> Any:
        raise NeedsValue(f"message metadata (dict.{name})")

    read.__name__ = name
    return read


# every read, including those that C code makes of a dict subclass (`{**d}`, `dict(d)`)
for _name in ("__getitem__", "get", "__contains__", "__iter__", "keys", "values", "items",
              "__len__", "__eq__", "__ne__", "__repr__", "__str__", "__or__", "__ror__", "copy",
              "setdefault", "pop", "popitem", "__reversed__", "__bool__", "__hash__"):  # fmt: skip
    setattr(SymbolicMetadata, _name, _trap(_name))


def hide_metadata(message: BaseMessage) -> BaseMessage:
    """`message` (an unanswered AIMessage) with its metadata fields unreadable."""
    if not isinstance(message, AIMessage):
        return message
    update = {name: SymbolicMetadata(getattr(message, name)) for name in FIELDS}
    return message.model_copy(update=update)


def known_metadata(message: BaseMessage) -> dict[str, Any]:
    """The fields that `hide_metadata` hid in `message`, as they were (an update for it)."""
    return {name: value.known for name in FIELDS
            if isinstance(value := getattr(message, name, None), SymbolicMetadata)}  # fmt: skip
