"""A compiled batch, or parallel branches, whose steps need generated text on the client (a
list parser, a lambda reading the answer): every input and branch is traced up to that point
and what they wait for goes as one graph, not one graph per input one after another (live
server, tiny random Llama). Answers, errors and callbacks stay the plain chain's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from langchain_core.output_parsers import CommaSeparatedListOutputParser, StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.tracers.context import collect_runs

from parrot_bridge.langchain import ChatParrot, compile
from tests.bridge.langchain.test_compile_callbacks_live import steps
from tests.server.http_client import metrics

pytestmark = pytest.mark.slow

SUBMISSIONS = "parrot_graph_submissions_total"
TOPICS = [{"topic": t} for t in ("cars", "boats", "trains", "owls")]


@pytest.fixture(scope="module")
def chat(parrot_url: str) -> ChatParrot:
    return ChatParrot(base_url=parrot_url, temperature=0, max_tokens=8)


def listed(chat: ChatParrot, text: str = "List things about {topic}") -> Runnable:
    return PromptTemplate.from_template(text) | chat | CommaSeparatedListOutputParser()


def stripped(chat: ChatParrot) -> Runnable:
    strip = RunnableLambda(lambda s: s.strip(), name="strip")
    return PromptTemplate.from_template("About {topic}") | chat | StrOutputParser() | strip


def submitted(url: str, run: Any) -> tuple[Any, float]:
    """`run()`'s result and the graph submissions it made."""
    before = metrics(url)[SUBMISSIONS]
    out = run()
    return out, metrics(url)[SUBMISSIONS] - before


def test_a_batch_ending_in_a_client_step_is_one_submission_and_equals_plain(
    chat: ChatParrot, parrot_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    for chain in (listed(chat), stripped(chat)):
        plain = chain.batch(TOPICS)
        assert all(plain), "the model answered nothing: the comparison would be weak"
        compiled = compile(chain)
        with caplog.at_level(logging.WARNING, logger="parrot_bridge.langchain"):
            answers, n = submitted(parrot_url, lambda c=compiled: c.batch(TOPICS))
            assert (answers, n) == (plain, 1)
            answers, n = submitted(parrot_url, lambda c=compiled: asyncio.run(c.abatch(TOPICS)))
            assert (answers, n) == (plain, 1)
        # its step runs after the whole graph: no split to warn about (another input's call
        # traced after it is no call after it)
        assert not caplog.records
        assert len(compiled.last_calls) == len(TOPICS)


def test_parallel_branches_ending_in_parsers_are_one_submission(
    chat: ChatParrot, parrot_url: str
) -> None:
    branches = {f"b{i}": listed(chat, f"List {i} things about {{topic}}") for i in range(3)}
    chain = RunnableParallel(branches, q=RunnablePassthrough())
    plain = chain.invoke(TOPICS[0])
    compiled = compile(chain)
    assert submitted(parrot_url, lambda: compiled.invoke(TOPICS[0])) == (plain, 1)
    # a batch of such inputs: every branch of every input in the one graph
    answers, n = submitted(parrot_url, lambda: compiled.batch(TOPICS[:2]))
    assert (answers, n) == (chain.batch(TOPICS[:2]), 1)
    assert len(compiled.last_calls) == 6


def test_a_second_round_of_waits_is_grouped_too(
    chat: ChatParrot, parrot_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A lambda reading the first answer splits each input's graph: the inputs' first stages go
    as one graph, their second stages (after the lambda ran for each) as another."""
    chain = stripped(chat) | {"draft": RunnablePassthrough()} \
        | PromptTemplate.from_template("Improve: {draft}") | chat | StrOutputParser()  # fmt: skip
    plain = chain.batch(TOPICS)
    compiled = compile(chain)
    with caplog.at_level(logging.WARNING, logger="parrot_bridge.langchain"):
        assert submitted(parrot_url, lambda: compiled.batch(TOPICS)) == (plain, 2)
    assert [r.getMessage().split("'")[1] for r in caplog.records] == ["strip"]
    assert compiled.split_steps == {"strip"}


def test_a_client_step_failing_on_its_values_fails_its_input_alone(chat: ChatParrot) -> None:
    def check(x: dict[str, str]) -> str:
        if x["topic"] == "bad":
            raise RuntimeError("bad topic")
        return x["answer"].strip()  # reads the answer: runs on the client, after the round

    ask = PromptTemplate.from_template("About {topic}") | chat | StrOutputParser()
    chain = RunnablePassthrough.assign(answer=ask) | RunnableLambda(check)
    inputs = [TOPICS[0], {"topic": "bad"}, TOPICS[1]]
    plain = chain.batch(inputs, return_exceptions=True)
    compiled = compile(chain)
    for answers in (compiled.batch(inputs, return_exceptions=True),
                    asyncio.run(compiled.abatch(inputs, return_exceptions=True))):  # fmt: skip
        assert [answers[0], answers[2]] == [plain[0], plain[2]]
        assert isinstance(answers[1], RuntimeError) and str(answers[1]) == "bad topic"
    with pytest.raises(RuntimeError, match="bad topic"):
        compiled.batch(inputs)
    with pytest.raises(RuntimeError, match="bad topic"):
        compile(RunnableParallel(ok=ask, bad=RunnableLambda(check))).invoke(
            {"topic": "bad", "answer": "x"}
        )


def test_each_inputs_steps_are_reported_with_real_values_as_plain(chat: ChatParrot) -> None:
    chain = listed(chat)
    with collect_runs() as plain:
        chain.batch(TOPICS[:3])
    with collect_runs() as compiled:
        compile(chain).batch(TOPICS[:3])

    def by_input(runs: Any) -> dict[str, Any]:
        # as a set: a step run on the client is reported when it runs, so before the traced
        # calls (reported once the graph is done), as in a compiled invoke
        return {run.inputs["topic"]: sorted(map(repr, steps(run))) for run in runs.traced_runs}

    assert by_input(compiled) == by_input(plain)
    assert len(by_input(plain)) == 3
