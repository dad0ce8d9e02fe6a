"""Where a C compiler exists, every CPU kernel builds: the kernel tests skip without their
library, so a source that stops compiling must fail here rather than skip there."""

from __future__ import annotations

import importlib
import shutil

import pytest


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler here"
)
@pytest.mark.parametrize(
    "name", ["packed_linear", "paged_decode", "paged_prefill", "paged_levels", "decoder_stack"]
)
def test_every_kernel_builds(name: str) -> None:
    kernel = importlib.import_module(f"server.kernels.cpu.{name}")
    assert kernel.available(), f"{name} did not build: see the warning logged above"


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler here"
)
def test_defines_make_a_build_of_their_own(tmp_path, monkeypatch) -> None:
    import ctypes

    from server.kernels.cpu import native_library

    monkeypatch.setattr(native_library, "CACHE_DIR", tmp_path / "cache")
    source = tmp_path / "answer.c"
    source.write_text(
        "#ifdef BIG\nint answer(void) { return 42; }\n#else\nint answer(void) { return 7; }\n#endif\n"
    )
    plain = native_library.load_function([source], "answer", [], ctypes.c_int)
    big = native_library.load_function([source], "answer", [], ctypes.c_int, defines=("BIG",))
    assert plain is not None and big is not None
    assert (plain.answer(), big.answer()) == (7, 42)
    assert len(list((tmp_path / "cache").glob("answer-*.so"))) == 2
