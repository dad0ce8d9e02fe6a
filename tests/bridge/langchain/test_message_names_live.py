"""A message's `name` reaches the chat template, as OpenAI's chat API (and ChatOpenAI) pass
it: through ChatParrot's requests and through a compiled chain's rendered prompt alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

from parrot_bridge.langchain import ChatParrot, compile
from tests.bridge.langchain.template_server import server_with_template
from tests.server.http_client import request

pytestmark = pytest.mark.slow

NAMED = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] }}"
    "{% if message['name'] is defined %}{{ ' (' + message['name'] + ')' }}{% endif %}"
    "{{ '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def named_url(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with server_with_template(tiny_llama_path, tmp_path_factory.mktemp("named"), NAMED) as url:
        yield url


def test_a_messages_name_reaches_the_chat_template(named_url: str) -> None:
    chat = ChatParrot(base_url=named_url, temperature=0, max_tokens=6)
    messages = [SystemMessage("Be brief."), HumanMessage("Hello there", name="alice_01")]
    as_sent = [{"role": "system", "content": "Be brief."},
               {"role": "user", "content": "Hello there", "name": "alice_01"}]  # fmt: skip

    def tokens(messages: list[dict]) -> int:  # as the chat API counts the prompt
        return request("POST", named_url + "/tokenize", {"messages": messages})[1]["count"]

    named = tokens(as_sent)
    assert named > tokens([as_sent[0], {"role": "user", "content": "Hello there"}])
    assert chat.get_num_tokens_from_messages(messages) == named
    reply = chat.invoke(messages)
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] == named
    # a compiled chain renders its prompt with the name too, so it answers as the chain does
    prompt = ChatPromptTemplate.from_messages([MessagesPlaceholder("history"),
                                               ("human", "And {topic}?")])  # fmt: skip
    chain = prompt | chat | StrOutputParser()
    history = {"history": messages, "topic": "parrots"}
    assert compile(chain).invoke(history) == chain.invoke(history)
