"""`SymbolicStr`: text holding generated values not known yet, for running user functions
(lambdas) during a trace. Placing it (f-strings, `+`, `join`, dicts) works; reading its
characters (len, ==, slicing, str methods) raises `NeedsValue`, so the caller can wait for the
real values and run the function again."""

from __future__ import annotations

from typing import Any


class NeedsValue(BaseException):
    """A traced function read generated text. A BaseException, so that `except Exception` in
    user code does not swallow it."""


class SymbolicStr(str):
    """A str whose characters stand for values still being generated (see module doc)."""

    __slots__ = ()

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        if spec:
            raise NeedsValue(f"format spec {spec!r}")
        return str.__str__(self)

    __hash__ = str.__hash__


# Allowed: creating, copying and pickling it, hashing it, and the operations that only place it
# in a larger text (C-level concatenation and join read no characters that matter).
_ALLOWED = {
    "__new__", "__init__", "__getattribute__", "__setattr__", "__delattr__", "__class__",
    "__init_subclass__", "__subclasshook__", "__dir__", "__sizeof__", "__reduce__",
    "__reduce_ex__", "__getnewargs__", "__getstate__", "__str__", "__format__", "__hash__",
    "__add__", "__rmod__", "join", "maketrans",
}  # fmt: skip


def _trap(name: str) -> Any:
    def read(self: SymbolicStr, *args: Any, **kwargs: Any) -> Any:
        raise NeedsValue(f"str.{name}")

    read.__name__ = name
    return read


for _name in dir(str):
    if _name not in _ALLOWED and callable(getattr(str, _name)):
        setattr(SymbolicStr, _name, _trap(_name))
