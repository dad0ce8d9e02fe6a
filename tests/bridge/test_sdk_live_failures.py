"""Failures against a live server: a call the server cannot run fails alone, and closing a
session ends the streams read from it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import parrot_bridge as P
from server.launcher import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("sdk-failures") / "server.log"
    with ServerProcess(tiny_llama_path, log_path=log) as srv:
        yield srv.url


@P.semantic_function(max_tokens=4, temperature=0)
def good(x):
    """Good: {{input:x}} -> {{output:y}}"""


@P.semantic_function(max_tokens=4, regex=r"(a)\1")
def backref(x):
    """Bad: {{input:x}} -> {{output:y}}"""


@P.semantic_function(max_tokens=600, temperature=0, ignore_eos=True)
def ramble(x):
    """Go on about {{input:x}}: {{output:y}}"""


def test_a_call_with_options_the_server_cannot_follow_fails_alone(url: str) -> None:
    """It failed every call sent with it, with a 400 naming the call by its id alone."""
    with P.Session(url):
        first, bad = good("one"), backref("two")
        dependent, second = good(bad), good("three")
        assert first.get(timeout=60) and second.get(timeout=60)
        with pytest.raises(P.CallFailedError, match=r"\(backref\) failed: invalid sampling: the"):
            bad.get(timeout=60)
        with pytest.raises(P.CallFailedError, match=r"upstream call .* \(backref\) failed"):
            dependent.get(timeout=60)
        assert good("after").get(timeout=60)  # the session goes on


async def test_leaving_the_session_while_a_task_streams_ends_the_stream(url: str) -> None:
    async with P.Session(url, timeout=5):
        text = ramble("parrots")

        async def consume() -> str:
            return "".join([chunk async for chunk in text.astream()])

        reader = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
    start = time.monotonic()
    with pytest.raises(P.ParrotError, match="was closed while variable") as got:
        await asyncio.wait_for(reader, 20)
    assert time.monotonic() - start < 10 and not isinstance(got.value, P.CallFailedError)
