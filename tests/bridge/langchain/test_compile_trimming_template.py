"""A model whose chat template trims message contents cannot keep variables as markers: the
compiled chain waits for those values instead (a logged split) and still answers the same."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from parrot_bridge.langchain import ChatParrot, compile
from tests.bridge.langchain.template_server import server_with_template
from tests.server.http_client import metrics

pytestmark = pytest.mark.slow

TRIMMING = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] | trim + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def trim_url(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with server_with_template(tiny_llama_path, tmp_path_factory.mktemp("trimming"), TRIMMING) as url:
        yield url


def test_trimmed_contents_split_the_graph_but_answer_the_same(
    trim_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    chat = ChatParrot(base_url=trim_url, temperature=0, max_tokens=6)
    first = ChatPromptTemplate.from_messages([("human", "  Topic: {t}  ")]) | chat \
        | StrOutputParser()  # fmt: skip
    second = ChatPromptTemplate.from_messages([("human", "{draft}")]) | chat | StrOutputParser()
    chain = first | {"draft": lambda s: f"  {s}  "} | second
    compiled = compile(chain)
    before = metrics(trim_url)
    with caplog.at_level(logging.WARNING, logger="parrot_bridge.langchain"):
        answer = compiled.invoke({"t": "cars"})
    assert answer == chain.invoke({"t": "cars"})
    # the first call has no variables and stays in the graph; the second waits for the first
    assert metrics(trim_url)["parrot_graph_submissions_total"] - before[
        "parrot_graph_submissions_total"] == 2  # fmt: skip
    assert compiled.split_steps == {"ChatParrot"}
    assert any("chat template changes contents" in r.getMessage() for r in caplog.records)
