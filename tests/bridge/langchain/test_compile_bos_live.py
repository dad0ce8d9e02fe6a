"""A model whose tokenizer adds BOS (Llama's, Mistral's) and whose chat template does not write
one: a compiled chain's chat calls get no BOS, as the chat API's prompts do, and its plain LLM
calls get one, as completions do; so compiled still equals plain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate

from parrot_bridge.langchain import ChatParrot, ParrotLLM, compile
from server.launcher import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bos_url(tiny_bos_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("langchain_bos") / "server.log"
    with ServerProcess(tiny_bos_llama_path, log_path=log) as srv:
        yield srv.url


def test_compiled_chat_and_llm_calls_tokenize_as_the_plain_ones(bos_url: str) -> None:
    chat = ChatParrot(base_url=bos_url, temperature=0, max_tokens=8)
    llm = ParrotLLM(base_url=bos_url, temperature=0, max_tokens=8)
    ask = ChatPromptTemplate.from_messages(
        [("system", "You answer briefly."), ("human", "Topic: {topic}")]
    )
    chain = ask | chat | StrOutputParser() | PromptTemplate.from_template("Again: {x}") | llm
    plain = chain.invoke({"topic": "parrots"})
    assert plain.strip(), "the model answered nothing: the comparison would be weak"
    compiled = compile(chain)
    assert compiled.invoke({"topic": "parrots"}) == plain
    assert compiled.split_steps == set()
