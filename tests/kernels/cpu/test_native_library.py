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
