"""Generated values during a trace: each Semantic Variable is written into ordinary Python
objects (strings, dicts, lists, messages, prompt values) as a sentinel token, so LangChain's
own code can carry it; the sentinels are found and replaced afterwards. Pure, no I/O."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue

from parrot_bridge.langchain.symbolic_metadata import hide_metadata, known_metadata
from parrot_bridge.langchain.symbolic_str import NeedsValue, SymbolicStr
from parrot_bridge.variable import SemanticVariable

_SENTINEL = re.compile(r"PARROTSV([0-9a-f]{32})X")
_PLAIN = (int, float, bool, type(None), bytes)

Part = str | SemanticVariable


class Symbols:
    """The variables of one trace and their sentinels."""

    def __init__(self) -> None:
        self._vars: dict[str, SemanticVariable] = {}

    def text(self, var: SemanticVariable) -> SymbolicStr:
        """The sentinel that stands for `var` in text."""
        key = var.id.removeprefix("v-")
        if not re.fullmatch("[0-9a-f]{32}", key):
            raise ValueError(f"unexpected variable id {var.id!r}")
        self._vars[key] = var
        return SymbolicStr(f"PARROTSV{key}X")

    def parts(self, text: str) -> list[Part]:
        """`text` cut into constant strings and variables (empty strings left out)."""
        text = str.__str__(text)
        out: list[Part] = []
        pos = 0
        for match in _SENTINEL.finditer(text):
            if match.start() > pos:
                out.append(text[pos : match.start()])
            out.append(self._var(match.group(1)))
            pos = match.end()
        if pos < len(text):
            out.append(text[pos:])
        return out

    def find(self, obj: Any) -> list[SemanticVariable]:
        """The variables written anywhere in `obj`, in order of first appearance."""
        found: dict[str, SemanticVariable] = {}
        for text in strings(obj):
            for match in _SENTINEL.finditer(str.__str__(text)):
                found.setdefault(match.group(1), self._var(match.group(1)))
        return list(found.values())

    def substitute(self, obj: Any, value: Callable[[SemanticVariable], str]) -> Any:
        """`obj` with every sentinel replaced by `value(var)`, as plain strings."""

        def replace(text: str) -> str:
            plain = str.__str__(text)
            if "PARROTSV" not in plain:
                return plain
            return _SENTINEL.sub(lambda m: value(self._var(m.group(1))), plain)

        return map_strings(obj, replace)

    def taint(self, obj: Any) -> Any:
        """`obj` with its sentinel-bearing strings as `SymbolicStr`s and the metadata of its
        unanswered messages unreadable (for user functions)."""

        def unanswered(message: BaseMessage) -> BaseMessage:
            if any(_SENTINEL.search(str.__str__(s)) for s in strings(message.content)):
                return hide_metadata(message)
            return message

        return map_strings(
            obj, lambda s: SymbolicStr(s) if _SENTINEL.search(str.__str__(s)) else s, unanswered
        )

    def untaint(self, obj: Any) -> Any:
        """`obj` with `SymbolicStr`s as plain strings (for LangChain's own code)."""
        return map_strings(obj, str.__str__)

    def _var(self, key: str) -> SemanticVariable:
        var = self._vars.get(key)
        if var is None:
            raise KeyError(f"a sentinel of an unknown variable v-{key} (from another trace?)")
        return var


def has_hidden_text(obj: Any) -> bool:
    """Whether `obj` holds objects that `strings` cannot look into, with a sentinel inside."""
    if isinstance(obj, (str, *_PLAIN)):
        return False
    if isinstance(obj, dict):
        return any(has_hidden_text(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(has_hidden_text(v) for v in obj)
    if isinstance(obj, BaseMessage | StringPromptValue | ChatPromptValue):
        return False
    try:
        return "PARROTSV" in str.__str__(repr(obj))
    except (NeedsValue, Exception):  # a SymbolicStr (or a broken repr) inside: assume so
        return True


def strings(obj: Any) -> Iterator[str]:
    """The strings in `obj` that `map_strings` rewrites."""
    collected: list[str] = []

    def collect(text: str) -> str:
        collected.append(text)
        return text

    map_strings(obj, collect)
    return iter(collected)


def map_strings(
    obj: Any,
    fn: Callable[[str], str],
    on_message: Callable[[BaseMessage], BaseMessage] = lambda m: m,
) -> Any:
    """`obj` rebuilt with `fn` applied to its strings: in str, dict (values), list, tuple,
    messages (content) and prompt values; other objects are kept as they are. Each message
    rebuilt gets back the metadata that `taint` hid, then goes through `on_message`."""
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, dict | list | tuple):
        return map_items(obj, lambda v: map_strings(v, fn, on_message))
    if isinstance(obj, BaseMessage):
        update = {"content": map_strings(obj.content, fn, on_message), **known_metadata(obj)}
        return on_message(obj.model_copy(update=update))
    if isinstance(obj, StringPromptValue):
        return StringPromptValue(text=fn(obj.text))
    if isinstance(obj, ChatPromptValue):
        return ChatPromptValue(messages=map_strings(obj.messages, fn, on_message))
    return obj


def map_items(obj: dict[Any, Any] | list[Any] | tuple[Any, ...], fn: Callable[[Any], Any]) -> Any:
    """The container rebuilt with `fn` applied to its items (a dict's values)."""
    if isinstance(obj, dict):
        items = {k: fn(v) for k, v in obj.items()}
        try:  # keep dict subclasses (LangChain's AddableDict)
            return type(obj)(items)
        except TypeError:
            return items
    if isinstance(obj, list):
        return [fn(v) for v in obj]
    return tuple(fn(v) for v in obj)
