"""`lanes`: run a kernel test with the kernels built over 8-lane (AVX2) and 16-lane (AVX-512)
vectors, whatever this CPU has, so both tile layouts are checked on every x86 host (the
other width runs slowly, through the stack)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest

from server.kernels.cpu import native_library

# by module name: the package exports functions under some of these names
MODULES = (
    "packed_linear", "paged_decode", "paged_levels", "paged_prefill", "decoder_stack", "q4_linear",
    "q8_linear",
)


@pytest.fixture(params=[8, 16], ids=["lanes8", "lanes16"])
def lanes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(native_library, "LANES_OVERRIDE", request.param)
    _forget_libraries()
    yield request.param
    monkeypatch.undo()
    _forget_libraries()


def _forget_libraries() -> None:
    for name in MODULES:
        importlib.import_module(f"server.kernels.cpu.{name}")._library.cache_clear()
