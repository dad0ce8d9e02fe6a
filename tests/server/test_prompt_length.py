"""A prompt whose length alone shows it past the model's context fails without being tokenized
(a 20 MB input was tokenized for tens of seconds, only to fail then): in a graph call, and in
an OpenAI request (a 400 naming the field). A tiny model's tokenizer; its encodes counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.api.openai_inputs import encode_prompt
from server.engine_driver import EngineDriver
from server.engine_pool import EnginePool
from server.errors import ApiError
from server.executor import Executor, ExecutorConfig
from server.graph import CallState, Graph, Submission, VariableDecl
from server.metrics import Metrics
from server.session import Session
from tests.server.graphs import decl

HUGE = "word " * 200_000  # 1 MB: ~200,000 tokens, where the context is 1024


@pytest.fixture(scope="module")
def driver(tiny_llama_path: Path) -> EngineDriver:
    return asyncio.run(EngineDriver.load(str(tiny_llama_path), "cpu", None))  # not started


@pytest.fixture
def long_encodes(driver: EngineDriver, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lengths of the long texts the tokenizer is asked to encode."""
    tokenizer, seen = driver.tokenizer, []
    encode = tokenizer.encode

    def counted(text: str, add_special_tokens: bool = False) -> list[int]:
        if len(text) > 10_000:
            seen.append(len(text))
        return encode(text, add_special_tokens)

    monkeypatch.setattr(tokenizer, "encode", counted)
    return seen


def test_a_graph_call_of_a_huge_input_fails_untokenized(
    driver: EngineDriver, long_encodes: list[int]
) -> None:
    async def run() -> Session:
        executor = Executor(EnginePool([driver]), Metrics(), ExecutorConfig())
        session = Session("s", "token")
        session.graph = Graph()
        session.graph.submit(Submission(
            variables=[VariableDecl("doc", value=HUGE), VariableDecl("out")],
            calls=[decl("c", "Summarize: {{input:d}}\nSummary:{{output:s}}", {"d": "doc"},
                        {"s": "out"})],
        ))  # fmt: skip
        reading = asyncio.create_task(session.wait("out", timeout=30))
        executor.dispatch(session, [session.graph.calls["c"]])
        await asyncio.wait_for(reading, 10)
        return session

    session = asyncio.run(run())
    assert session.graph.calls["c"].state is CallState.FAILED
    error = session.graph.variables["out"].error or ""
    assert "its prompt has at least" in error and "model's context of 1024 tokens" in error
    assert long_encodes == []


def test_a_huge_openai_prompt_is_a_400_naming_it_untokenized(
    driver: EngineDriver, long_encodes: list[int]
) -> None:
    with pytest.raises(ApiError) as caught:
        encode_prompt(driver, HUGE, "prompt", True)
    assert caught.value.status == 400 and caught.value.param == "prompt"
    assert "maximum context length is 1024 tokens, but prompt has at least" in str(caught.value)
    assert long_encodes == []
    # to be cut to its last tokens (truncate_prompt_tokens), it is tokenized whole
    assert len(encode_prompt(driver, HUGE, "prompt", True, truncated=True)) > 1024
    # a prompt the bound cannot tell is still counted exactly
    assert len(encode_prompt(driver, "word " * 2000, "messages", True)) > 1024
