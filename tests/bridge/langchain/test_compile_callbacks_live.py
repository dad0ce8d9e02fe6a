"""A compiled chain reports to LangChain's callbacks like the plain chain (live server, tiny
random Llama): one root run with its steps as children, a chat model run per call with its
usage, `astream_events` with the chain's stream and output, messages with usage; steps on
generated values are reported with the real values, never placeholders or probes."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable
from langchain_core.tracers import Run
from langchain_core.tracers.context import collect_runs

from parrot_bridge.langchain import ChatParrot, compile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat(parrot_url: str) -> ChatParrot:
    return ChatParrot(base_url=parrot_url, temperature=0, max_tokens=8)


def two_calls(chat: ChatParrot) -> Runnable:
    draft = ChatPromptTemplate.from_template("A tagline about {topic}.") | chat | StrOutputParser()
    return {"draft": draft} | ChatPromptTemplate.from_template("Improve: {draft}") | chat


class Runs(BaseCallbackHandler):
    """(event, run id, parent run id) of chain and model runs, and the models' results."""

    def __init__(self) -> None:
        self.events: list[tuple[str, UUID, UUID | None]] = []
        self.usages: list[Any] = []
        self.outputs: list[Any] = []  # each model run's llm_output

    def on_chain_start(self, *_: Any, run_id: UUID, parent_run_id: UUID | None = None,
                       **__: Any) -> None:  # fmt: skip
        self.events.append(("chain", run_id, parent_run_id))

    def on_chat_model_start(self, *_: Any, run_id: UUID, parent_run_id: UUID | None = None,
                            **__: Any) -> None:  # fmt: skip
        self.events.append(("chat_model", run_id, parent_run_id))

    def on_llm_end(self, response: Any, **_: Any) -> None:
        self.usages.append(response.generations[0][0].message.usage_metadata)
        self.outputs.append(response.llm_output)


def test_callbacks_see_one_root_run_and_each_model_call_with_usage(chat: ChatParrot) -> None:
    chain, x = two_calls(chat), {"topic": "owls"}
    plain_runs, compiled_runs = Runs(), Runs()
    with get_usage_metadata_callback() as plain_usage:
        plain = chain.invoke(x, config={"callbacks": [plain_runs]})
    with get_usage_metadata_callback() as compiled_usage:
        out = compile(chain).invoke(x, config={"callbacks": [compiled_runs]})
    assert out.content == plain.content
    roots = [e for e in compiled_runs.events if e[2] is None]
    assert len(roots) == 1
    run_ids = {e[1] for e in compiled_runs.events}
    assert all(e[2] in run_ids for e in compiled_runs.events if e[2] is not None)
    assert [e[0] for e in compiled_runs.events].count("chat_model") == 2
    # the server's counts of each graph call: those of the plain requests, but for the prompt
    # tokens each found computed (cache_read), which sharing makes differ
    assert uncached(compiled_runs.usages) == uncached(plain_runs.usages)
    # handlers that count llm_output["token_usage"] (as for ChatOpenAI) see the same too
    # (each response's id is its own: the graph's message's, the plain request's)
    assert [{**o, "id": None} for o in uncached(compiled_runs.outputs)] == [
        {**o, "id": None} for o in uncached(plain_runs.outputs)
    ]
    assert all(o["id"] for o in compiled_runs.outputs + plain_runs.outputs)
    assert all(o["token_usage"]["total_tokens"] > 0 for o in plain_runs.outputs)
    assert all(u["input_tokens"] > 0 and u["output_tokens"] > 0 for u in plain_runs.usages)
    assert uncached(compiled_usage.usage_metadata) == uncached(plain_usage.usage_metadata)
    for usage in compiled_runs.usages + plain_runs.usages:
        assert 0 <= usage["input_token_details"]["cache_read"] < usage["input_tokens"]
    for output in compiled_runs.outputs + plain_runs.outputs:
        usage = output["token_usage"]
        assert 0 <= usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"]
    # the second call forked its template's leading text ("Improve: "), stored by the server
    assert compiled_runs.usages[1]["input_token_details"]["cache_read"] > 0


def uncached(value: object) -> object:
    """`value` without the usages' cache details (LangChain's and OpenAI's)."""
    if isinstance(value, dict):
        return {k: uncached(v) for k, v in value.items()
                if k not in ("input_token_details", "prompt_tokens_details")}  # fmt: skip
    if isinstance(value, list):
        return [uncached(v) for v in value]
    return value


def test_the_output_message_carries_usage_id_and_finish_reason(chat: ChatParrot) -> None:
    chain, x = two_calls(chat), {"topic": "cats"}
    plain, out = chain.invoke(x), compile(chain).invoke(x)
    assert out.content == plain.content and out.id
    assert out.usage_metadata and plain.usage_metadata
    assert uncached(out.usage_metadata) == uncached(plain.usage_metadata)
    # the compiled call forked its template's leading text (stored, and computed ahead of it)
    assert out.usage_metadata["input_token_details"]["cache_read"] > 0
    assert out.response_metadata["model_name"] == plain.response_metadata["model_name"]
    assert out.response_metadata["finish_reason"] == plain.response_metadata["finish_reason"]


def test_astream_events_give_the_chains_start_stream_and_output(chat: ChatParrot) -> None:
    chain = two_calls(chat) | StrOutputParser()
    expected = chain.invoke({"topic": "dogs"})

    async def events() -> list[dict[str, Any]]:
        compiled = compile(chain)
        return [e async for e in compiled.astream_events({"topic": "dogs"}, version="v2")]

    got = asyncio.run(events())
    root = [e for e in got if not e["parent_ids"]]
    assert root[0]["event"] == "on_chain_start" and root[-1]["event"] == "on_chain_end"
    streamed = [e["data"]["chunk"] for e in root if e["event"] == "on_chain_stream"]
    assert streamed and "".join(streamed) == expected == root[-1]["data"]["output"]
    assert [e["event"] for e in got].count("on_chat_model_end") == 2


def steps(run: Run) -> list[tuple[str, str, Any, Any]]:
    """The prompt, parser and model runs under `run`, in order: (type, name, inputs, outputs);
    a parser's input message is left out (its id is each call's own)."""
    out = []
    for child in run.child_runs:
        if child.run_type in ("prompt", "parser", "llm"):
            inputs = None if child.run_type == "parser" else child.inputs
            outputs = None if child.run_type == "llm" else child.outputs
            out.append((child.run_type, child.name, inputs, outputs))
        out += steps(child)
    return out


def values(run: Run) -> str:
    """The inputs and outputs of `run` and the runs under it, as text."""
    return repr((run.inputs, run.outputs)) + "".join(values(c) for c in run.child_runs)


def test_callbacks_see_each_steps_real_values_and_no_probe(chat: ChatParrot) -> None:
    chain, x = two_calls(chat) | StrOutputParser(), {"topic": "owls"}
    with collect_runs() as plain:
        chain.invoke(x)
    with collect_runs() as compiled:
        compile(chain).invoke(x)
    assert "PARROTSV" not in values(compiled.traced_runs[0])
    assert steps(compiled.traced_runs[0]) == steps(plain.traced_runs[0])
