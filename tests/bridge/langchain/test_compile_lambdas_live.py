"""`compile(chain)` with user lambdas against a live server (tiny random Llama): lambdas that
only place generated text stay in the graph; lambdas that read it (even through C code that a
placeholder cannot trap, or by looking it up in a dict or set), that read a reply's metadata,
and async-only lambdas run on the client with the real values and messages."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import BaseModel

from parrot_bridge.langchain import ChatParrot, compile
from tests.server.http_client import metrics

pytestmark = pytest.mark.slow

SUBMISSIONS = "parrot_graph_submissions_total"


@pytest.fixture(scope="module")
def chat(parrot_url: str) -> ChatParrot:
    return ChatParrot(base_url=parrot_url, temperature=0, max_tokens=12)


def draft(chat: ChatParrot) -> Runnable:
    return PromptTemplate.from_template("Write two lines about {t}.") | chat | StrOutputParser()


# each reads the text in C code: a SymbolicStr's traps never fire
READERS: dict[str, Callable[[str], Any]] = {
    "re.sub": lambda x: re.sub(r"\s+", "_", x),
    "str.upper(x)": lambda x: str.upper(x),
    "re.findall": lambda x: " ".join(re.findall(r"[A-Za-z]+", x)[:3]),
    "json.dumps": lambda x: json.dumps({"draft": x}),
    "str.split(x)": lambda x: {"n": str(len(str.split(x)))},
}

PLACERS: dict[str, Callable[[str], Any]] = {
    "+": lambda x: {"d": "Text: " + x + "\n"},
    "f-string": lambda x: {"d": f"[{x}] and {x!s}"},
    "format": lambda x: {"d": "<{}>".format(x)},  # noqa: UP032 (the method is what is tested)
    "%": lambda x: {"d": "%s!" % x},  # noqa: UP031
    "join": lambda x: {"d": " / ".join([x, "end"])},
}


@pytest.mark.parametrize("name", list(READERS))
def test_a_lambda_reading_text_in_c_code_runs_on_the_real_text(name: str, chat: ChatParrot) -> None:
    chain = draft(chat) | RunnableLambda(READERS[name], name="reader")
    compiled = compile(chain)
    assert compiled.invoke({"t": "owls"}) == chain.invoke({"t": "owls"})
    assert compiled.split_steps == {"reader"}


@pytest.mark.parametrize("name", list(PLACERS))
def test_a_lambda_placing_text_stays_in_the_graph(
    name: str, chat: ChatParrot, parrot_url: str
) -> None:
    chain = draft(chat) | RunnableLambda(PLACERS[name]) \
        | PromptTemplate.from_template("Shorten: {d}") | chat | StrOutputParser()  # fmt: skip
    compiled = compile(chain)
    before = metrics(parrot_url)
    answer = compiled.invoke({"t": "owls"})
    assert metrics(parrot_url)[SUBMISSIONS] - before[SUBMISSIONS] == 1
    assert compiled.split_steps == set() and len(compiled.last_calls) == 2
    assert answer == chain.invoke({"t": "owls"})


async def _context(x: dict[str, str]) -> dict[str, str]:
    await asyncio.sleep(0)
    return {"t": x["t"], "ctx": "Owls hunt at night."}


async def _shout(text: str) -> str:
    await asyncio.sleep(0)
    return text.upper()


def test_async_only_lambdas_work_in_ainvoke_and_astream(chat: ChatParrot) -> None:
    first = RunnableLambda(_context) | PromptTemplate.from_template("{ctx} About {t}:") | chat \
        | StrOutputParser()  # fmt: skip
    on_generated = draft(chat) | RunnableLambda(_shout, name="shout")
    x = {"t": "owls"}

    async def both(chain: Runnable) -> tuple[Any, Any, list[Any]]:
        compiled = compile(chain)
        streamed = [c async for c in compiled.astream(x)]
        return await chain.ainvoke(x), await compiled.ainvoke(x), streamed

    plain, compiled, streamed = asyncio.run(both(first))
    assert compiled == plain and "".join(streamed) == plain
    plain, compiled, streamed = asyncio.run(both(on_generated))
    assert compiled == plain and streamed == [plain]


SCORES = {"positive": 1, "negative": -1}

# each looks the generated label up (hashing it, or comparing it) or reads the message's
# metadata: tracing on a placeholder would miss or read absent values
LOOKUPS: dict[str, Callable[[Any], Any]] = {
    "dict.get": lambda s: SCORES.get(s, 0),
    "dict []": lambda s: SCORES[s],
    "in a set": lambda s: s in {"negative"},
    "in a dict": lambda s: s in SCORES,
    "== a str": lambda s: "positive" == s,
    "a set of it": lambda s: {s},
    "a dict keyed by it": lambda s: {s: 1},
    "route dict": lambda s: {"label": s, "score": SCORES.get(s)},
    "str() of it": lambda s: {"label": s, "score": SCORES.get(str(s))},
    "a copy in a set": lambda s: (s + "") in {"positive", "negative"},
}


def classify(chat: ChatParrot) -> Runnable:
    labels = {"guided_choice": ["positive", "negative"]}
    return PromptTemplate.from_template("Positive or negative? {review}") \
        | chat.bind(extra_body=labels) | StrOutputParser()  # fmt: skip


@pytest.mark.parametrize("name", list(LOOKUPS))
def test_a_lambda_looking_up_generated_text_runs_on_the_real_text(
    name: str, chat: ChatParrot
) -> None:
    chain = classify(chat) | RunnableLambda(LOOKUPS[name], name="lookup")
    compiled = compile(chain)
    x = {"review": "I loved it."}
    assert compiled.invoke(x) == chain.invoke(x)
    assert compiled.split_steps == {"lookup"}


def test_a_lambda_failing_on_a_placeholder_raises_its_real_exception(chat: ChatParrot) -> None:
    chain = classify(chat) | RunnableLambda(lambda s: {}[s])
    x = {"review": "I loved it."}
    with pytest.raises(KeyError) as plain:
        chain.invoke(x)
    with pytest.raises(KeyError) as compiled:
        compile(chain).invoke(x)
    assert type(compiled.value.args[0]) is str and compiled.value.args == plain.value.args


class Review(BaseModel):
    stars: int


METADATA: dict[str, Callable[[AIMessage], Any]] = {
    "finish_reason": lambda m: m.response_metadata.get("finish_reason"),
    "truncated": lambda m: {"text": m.content,
                            "cut": m.response_metadata.get("finish_reason") == "length"},
    "usage_metadata": lambda m: m.usage_metadata["output_tokens"],
    "token_usage": lambda m: m.response_metadata["token_usage"]["completion_tokens"],
    "parsed": lambda m: m.additional_kwargs.get("parsed", "absent"),
    "id": lambda m: m.response_metadata["id"] == m.id,
    # (but the id: each reply's own)
    "all of it": lambda m: ({**m.response_metadata, "id": None}, m.usage_metadata,
                            m.additional_kwargs),
}  # fmt: skip


@pytest.mark.parametrize("name", list(METADATA))
def test_a_lambda_reading_a_replys_metadata_sees_the_plain_calls(
    name: str, chat: ChatParrot
) -> None:
    model = chat.bind(response_format=Review) if name == "parsed" else chat
    chain = PromptTemplate.from_template("Rate {t}.") | model \
        | RunnableLambda(METADATA[name], name="meta")  # fmt: skip
    compiled = compile(chain)
    assert compiled.invoke({"t": "owls"}) == chain.invoke({"t": "owls"})
    assert compiled.split_steps == {"meta"}


def test_a_client_step_gets_the_plain_calls_message(chat: ChatParrot) -> None:
    """A step that cannot be traced (a parser) gets the whole message, metadata too (but the
    id: each reply's own)."""
    chain = PromptTemplate.from_template("Rate {t}.") | chat | RunnableLambda(
        lambda m, config: ({**m.response_metadata, "id": None}, m.usage_metadata)  # noqa: ARG005
    )
    assert compile(chain).invoke({"t": "owls"}) == chain.invoke({"t": "owls"})
