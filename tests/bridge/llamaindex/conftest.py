"""The LlamaIndex live tests' server: the tiny random Llama, one per test module that asks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.launcher import ServerProcess


@pytest.fixture(scope="module")
def url(
    request: pytest.FixtureRequest, tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "server.log"
    with ServerProcess(tiny_llama_path, log_path=log) as srv:
        yield srv.url
