"""A server started with --api-key, and every client of the project given the key."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from langchain_core.prompts import PromptTemplate
from llama_index.core import PromptTemplate as IndexPrompt

import parrot_bridge as P
from parrot_bridge.errors import ParrotError
from parrot_bridge.langchain import ChatParrot, ParrotLLM, compile
from parrot_bridge.llamaindex import Parrot
from server.launcher import ServerProcess
from tests.server.http_client import request

pytestmark = pytest.mark.slow

KEY = "sk-parrot-test-key"


@pytest.fixture(scope="module")
def url(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("api_key") / "server.log"
    with ServerProcess(tiny_llama_path, "--api-key", KEY, log_path=log) as srv:
        yield srv.url


@P.semantic_function(max_tokens=4, temperature=0)
def name_of(thing):
    """A name for {{input:thing}}:{{output:name}}"""


def test_the_api_answers_only_with_the_key_and_probes_stay_open(url: str) -> None:
    model = request("GET", url + "/v1/models", token=KEY)[1]["data"][0]["id"]
    chat = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for method, path, body in [("GET", "/v1/models", None), ("POST", "/v1/chat/completions", chat),
                               ("POST", "/v1/sessions", {}), ("POST", "/tokenize",
                                                               {"prompt": "a"})]:  # fmt: skip
        status, answer = request(method, url + path, body)
        assert status == 401 and answer["error"]["code"] == "invalid_api_key", path
        assert "Authorization: Bearer" in answer["error"]["message"]
        # a key that is no UTF-8 (its bytes as sent) is a wrong key too, not a 500
        for wrong in ("sk-wrong", "\xff\xfe"):
            status, answer = request(method, url + path, body, token=wrong)
            assert status == 401 and "not this server's" in answer["error"]["message"], path
        status, _ = request(method, url + path, body, token=KEY)
        assert status in (200, 201), path
    for path in ("/health", "/version", "/metrics", "/openapi.json"):
        with urllib.request.urlopen(url + path, timeout=30) as resp:
            assert resp.status == 200, path
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    assert client.chat.completions.create(model=model, messages=chat["messages"], max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0).models.list()


def test_the_sdk_opens_its_session_with_the_key_and_runs_on_its_token(url: str) -> None:
    with P.Session(url, api_key=KEY):
        assert isinstance(name_of("a cat").get(), str)
    with pytest.raises(ParrotError, match="API key") as refused:
        with P.Session(url, max_retries=0):
            name_of("a cat").get()
    assert refused.value.status == 401


async def test_the_adapters_send_the_key(url: str) -> None:
    chat = ChatParrot(base_url=url, api_key=KEY, temperature=0, max_tokens=3)
    assert isinstance(chat.invoke("Hi").content, str)
    chain = PromptTemplate.from_template("Say {x}.") | chat
    assert compile(chain).invoke({"x": "hi"}).content == chain.invoke({"x": "hi"}).content
    llm = ParrotLLM(base_url=url, api_key=KEY, temperature=0, max_tokens=3)
    assert isinstance(llm.invoke("Hi"), str)
    with pytest.raises(ParrotError, match="API key"):
        ChatParrot(base_url=url, max_retries=0).invoke("Hi")
    parrot = Parrot(base_url=url, api_key=KEY, max_tokens=3)
    assert isinstance(parrot.complete("Hi").text, str)
    assert isinstance(parrot.predict(IndexPrompt("Say {x}."), x="hi"), str)
    assert isinstance((await parrot.acomplete("Hi")).text, str)
