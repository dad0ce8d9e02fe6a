"""A live Parrot server with the tiny random Llama, one per test module that asks for it."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.launcher import ServerProcess


@pytest.fixture(scope="module")
def parrot_url(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("langchain") / "server.log"
    with ServerProcess(tiny_llama_path, log_path=log) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def served_model(parrot_url: str) -> str:
    with urllib.request.urlopen(parrot_url + "/v1/models", timeout=30) as resp:
        return json.load(resp)["data"][0]["id"]
