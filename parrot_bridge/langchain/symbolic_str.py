"""`SymbolicStr`: text holding generated values not known yet, for running user functions
(lambdas) during a trace. Placing it (f-strings, `+`, `join`, dict values) works; reading its
characters (len, ==, hashing, slicing, str methods) raises `NeedsValue`, so the caller can wait
for the real values and run the function again. Hashing reads: a dict or set lookup of a
placeholder would miss silently (`SCORES.get(s, 0)`, `s in {"no"}`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

# set while a user function runs on placeholders: `str(s)` then stays a SymbolicStr, so that a
# lookup of `str(s)` is trapped too (elsewhere, LangChain's own code gets plain text)
_IN_USER_CODE: ContextVar[bool] = ContextVar("parrot_symbolic_user_code", default=False)


class NeedsValue(BaseException):
    """A traced function read generated text. A BaseException, so that `except Exception` in
    user code does not swallow it."""


class SymbolicStr(str):
    """A str whose characters stand for values still being generated (see module doc)."""

    __slots__ = ()

    def __str__(self) -> str:
        return self if _IN_USER_CODE.get() else str.__str__(self)

    def __format__(self, spec: str) -> str:
        if spec:
            raise NeedsValue(f"format spec {spec!r}")
        return str.__str__(self)


@contextmanager
def user_code() -> Iterator[None]:
    """Run a user function on placeholders: `str()` of one keeps it symbolic."""
    token = _IN_USER_CODE.set(True)
    try:
        yield
    finally:
        _IN_USER_CODE.reset(token)


# Allowed: creating, copying and pickling it, and the operations that only place it in a larger
# text (C-level concatenation and join read no characters that matter).
_ALLOWED = {
    "__new__", "__init__", "__getattribute__", "__setattr__", "__delattr__", "__class__",
    "__init_subclass__", "__subclasshook__", "__dir__", "__sizeof__", "__reduce__",
    "__reduce_ex__", "__getnewargs__", "__getstate__", "__str__", "__format__",
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
