"""The OpenAI-API tests' server: the tiny random Llama served as "tiny", one per test module that
asks for it, with the official client and an engine on the same weights for references. A
module that serves another model overrides `served_path`; one that needs another server
defines its own `server` (or `engine`, `client`) fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from server.engine import LLMEngine
from server.launcher import ServerProcess


@pytest.fixture(scope="module")
def served_path(tiny_llama_path: Path) -> Path:
    """The model folder `server` serves and `engine` loads; a module may serve another."""
    return tiny_llama_path


@pytest.fixture(scope="module")
def server(served_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("openai") / "server.log"
    with ServerProcess(served_path, "--served-model-name", "tiny", log_path=log) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def engine(served_path: Path) -> LLMEngine:
    return LLMEngine.from_pretrained(str(served_path))


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
