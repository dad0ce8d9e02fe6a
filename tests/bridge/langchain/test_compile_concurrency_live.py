"""`max_concurrency` in compiled chains (live server, tiny random Llama): a batch's inputs, a
RunnableParallel's branches and a map's items run at most k at once in a sliding window, as a
plain chain's thread pools run them, each a graph of its own; below the limit, one graph."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.tracers.context import collect_runs

from parrot_bridge.langchain import ChatParrot, compile
from tests.bridge.langchain.test_compile_callbacks_live import steps
from tests.server.http_client import metrics

pytestmark = pytest.mark.slow

SUBMISSIONS = "parrot_graph_submissions_total"
TOPICS = ("cars", "boats", "trains", "planes", "bikes")
HOLD_S = 30.0  # how long the first task waits for the others (they take well under a second)


@pytest.fixture(scope="module")
def chat(parrot_url: str) -> ChatParrot:
    return ChatParrot(base_url=parrot_url, temperature=0, max_tokens=6)


class Lifetimes:
    """When each task (a batch input, a branch, a map item, by name) starts and ends, recorded
    by steps that the chain runs on the client: its first step, and its last, which reads the
    answer so it runs once the answer is here. With `hold`, the first task's end waits until
    every other task has ended: only a sliding window of k >= 2 lets it (in groups of k, the
    task after the first group waits for the first task, which waits for it)."""

    def __init__(self, names: list[str], hold: bool = False) -> None:
        self.names, self.hold = names, hold
        self.events: list[int] = []  # +1: a task starts, -1: it ends
        self.held: list[bool] = []  # for each hold: whether the others all ended meanwhile
        self._ended: set[str] = set()
        self._others_ended = threading.Event()
        self._lock = threading.Lock()

    def start(self, name: str) -> None:
        with self._lock:
            self.events.append(1)

    def end(self, name: str) -> None:
        if self.hold and name == self.names[0]:
            self.held.append(self._others_ended.wait(HOLD_S))
        with self._lock:
            self.events.append(-1)
            self._ended.add(name)
            if self._ended >= set(self.names[1:]):
                self._others_ended.set()

    def deepest(self) -> int:
        """The most tasks in flight at once; then starts afresh."""
        with self._lock:
            depth = max(sum(self.events[: i + 1]) for i in range(len(self.events)))
            self.events.clear()
            self._ended.clear()
            self._others_ended.clear()
            return depth


def task(chat: ChatParrot, life: Lifetimes, name: Callable[[Any], str], text: str) -> Runnable:
    """A task of a chain: it starts (a step on its input), asks `text` (a template of the
    input's keys), and ends upper-casing the answer (a step that reads it)."""

    def started(x: dict[str, str]) -> dict[str, str]:
        life.start(name(x))
        return x

    def ended(x: dict[str, str]) -> str:
        out = x["answer"].upper()  # reads the answer: runs on the client once it is here
        life.end(name(x))
        return out

    answer = PromptTemplate.from_template(text) | chat | StrOutputParser()
    return RunnableLambda(started) | RunnablePassthrough.assign(answer=answer) \
        | RunnableLambda(ended)  # fmt: skip


def submitted(url: str, run: Callable[[], Any]) -> tuple[Any, float]:
    """`run()`'s result and the graph submissions it made."""
    before = metrics(url)[SUBMISSIONS]
    out = run()
    return out, metrics(url)[SUBMISSIONS] - before


def test_batch_runs_at_most_max_concurrency_inputs_at_once_in_a_sliding_window(
    chat: ChatParrot, parrot_url: str
) -> None:
    """`max_concurrency=k` below the number of inputs: each input is a graph of its own, at
    most k in flight at once (their lifetimes, from the first step to the last, overlap at most
    k deep), the next starting as soon as one has its answer, as Runnable.batch's thread pool
    runs a plain step's inputs: the first input ends only after all the others (k=2: one slot
    holds it while the other runs the rest). At least k inputs: one graph, as without it."""
    life = Lifetimes(list(TOPICS), hold=True)
    chain = task(chat, life, lambda x: x["topic"], "Topic: {topic}")
    inputs = [{"topic": t} for t in TOPICS]
    two = {"max_concurrency": 2}
    # (a plain sequence's batch goes step by step, each step's inputs k at once)
    expected = chain.batch(inputs, two)
    life.deepest()
    life.held.clear()
    compiled = compile(chain)
    assert submitted(parrot_url, lambda: compiled.batch(inputs)) == (expected, 1)
    assert life.deepest() == 5  # one graph: every input in flight at once
    assert submitted(parrot_url, lambda: compiled.batch(inputs, two)) == (expected, 5)
    assert life.deepest() == 2
    # the whole batch's calls, in input order
    assert [call.output.value.upper() for call in compiled.last_calls] == expected
    assert submitted(parrot_url, lambda: asyncio.run(compiled.abatch(inputs, two))) == (
        expected, 5,
    )  # fmt: skip
    assert life.deepest() == 2
    assert life.held == [True] * 3, "a new input waited for the whole first group"
    life.hold = False  # k=1: the first input cannot wait for the others
    assert submitted(parrot_url, lambda: compiled.batch(inputs, {"max_concurrency": 1})) == (
        expected, 5,
    )  # fmt: skip
    assert life.deepest() == 1
    # k at least the number of inputs: one graph, as without a limit
    assert submitted(parrot_url, lambda: compiled.batch(inputs, {"max_concurrency": 5})) == (
        expected, 1,
    )  # fmt: skip
    assert life.deepest() == 5
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="max_concurrency"):
            compiled.batch(inputs, {"max_concurrency": bad})


def test_a_windowed_batch_keeps_each_inputs_exception_or_stops_at_the_first(
    chat: ChatParrot,
) -> None:
    """With `return_exceptions`, a failing input gets its exception and the others their
    answers; without, the first failure (in input order) is raised and no input starts after
    it, as a plain batch's pool (k=1 here, so that which inputs started is certain)."""
    seen: list[str] = []

    def check(x: dict[str, str]) -> dict[str, str]:
        seen.append(x["topic"])
        if x["topic"].startswith("bad"):
            raise RuntimeError(f"{x['topic']} topic")
        return x

    chain = RunnableLambda(check) | PromptTemplate.from_template("Topic: {topic}") | chat \
        | StrOutputParser()  # fmt: skip
    inputs = [{"topic": t} for t in ("cars", "bad", "boats", "bad2", "owls")]
    plain = chain.batch(inputs, {"max_concurrency": 2}, return_exceptions=True)
    compiled = compile(chain)
    for answers in (
        compiled.batch(inputs, {"max_concurrency": 2}, return_exceptions=True),
        asyncio.run(compiled.abatch(inputs, {"max_concurrency": 2}, return_exceptions=True)),
    ):
        assert [a for i, a in enumerate(answers) if i not in (1, 3)] == [plain[0], plain[2],
                                                                         plain[4]]  # fmt: skip
        assert [str(answers[i]) for i in (1, 3)] == ["bad topic", "bad2 topic"]
        assert isinstance(answers[1], RuntimeError) and isinstance(answers[3], RuntimeError)
    assert len(compiled.last_calls) == 3
    seen.clear()
    with pytest.raises(RuntimeError, match="^bad topic"):
        compiled.batch(inputs, {"max_concurrency": 1})
    assert seen == ["cars", "bad"]


def branches(chat: ChatParrot, life: Lifetimes) -> RunnableParallel:
    return RunnableParallel({
        name: task(chat, life, lambda x, name=name: name, f"{name} and {{topic}}")
        for name in life.names
    })  # fmt: skip


def test_invoke_runs_at_most_max_concurrency_parallel_branches_at_once(
    chat: ChatParrot, parrot_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A RunnableParallel of more branches than `max_concurrency=k` (invoke's config, as a
    plain RunnableParallel's thread pool reads it): at most k branches at once, the next
    starting as soon as one has ended (the first ends only after all the others), each a graph
    of its own; the split is warned about once. Without a limit, or with k no less than the
    branches: one graph, every branch at once."""
    life = Lifetimes(["cars", "boats", "trains", "owls"], hold=True)
    chain = branches(chat, life)
    x, two = {"topic": "wheels"}, {"max_concurrency": 2}
    expected = chain.invoke(x, two)
    assert life.deepest() == 2 and life.held == [True]  # plain
    compiled = compile(chain)
    with caplog.at_level(logging.WARNING, logger="parrot_bridge.langchain"):
        assert submitted(parrot_url, lambda: compiled.invoke(x, two)) == (expected, 4)
        assert life.deepest() == 2 and len(compiled.last_calls) == 4
        assert submitted(parrot_url, lambda: asyncio.run(compiled.ainvoke(x, two))) == (
            expected, 4,
        )  # fmt: skip
        assert life.deepest() == 2
    assert life.held == [True] * 3, "a branch waited for the whole first group"
    warned = [r.getMessage() for r in caplog.records if "max_concurrency=2" in r.getMessage()]
    assert len(warned) == 1 and "RunnableParallel<cars,boats,trains,owls>" in warned[0], warned
    life.hold = False
    for config in (None, {"max_concurrency": 4}):
        assert submitted(parrot_url, lambda c=config: compiled.invoke(x, c)) == (expected, 1)
        assert life.deepest() == 4
    with pytest.raises(ValueError, match="max_concurrency"):
        compiled.invoke(x, {"max_concurrency": 0})


def test_windowed_branches_after_a_graph_call_and_a_windowed_map_equal_plain(
    chat: ChatParrot, parrot_url: str
) -> None:
    """Branches whose input holds generated text wait for it (the graph so far), then run as
    above; a map (`.map()`) of more items than k runs them likewise. Answers as the plain
    chain's; the graph's calls and the branches' are all in `last_calls`."""
    life = Lifetimes(["a", "b", "c"])
    draft = PromptTemplate.from_template("Draft about {x}") | chat | StrOutputParser()
    chain = {"topic": draft} | branches(chat, life)
    two = {"max_concurrency": 2}
    expected = chain.invoke({"x": "owls"}, two)
    life.deepest()
    compiled = compile(chain)
    assert submitted(parrot_url, lambda: compiled.invoke({"x": "owls"}, two)) == (expected, 4)
    assert life.deepest() == 2 and len(compiled.last_calls) == 4

    items = Lifetimes(list(TOPICS), hold=True)
    mapped = task(chat, items, lambda x: x["topic"], "Topic: {topic}").map()
    inputs = [{"topic": t} for t in TOPICS]
    expected = mapped.invoke(inputs, two)  # a plain batch of the items' sequence: step by step
    items.deepest()
    items.held.clear()
    compiled = compile(mapped)
    assert submitted(parrot_url, lambda: compiled.invoke(inputs, two)) == (expected, 5)
    assert items.deepest() == 2 and items.held == [True]
    assert submitted(parrot_url, lambda: compiled.invoke(inputs)) == (expected, 1)
    assert items.deepest() == 5


def test_windowed_inputs_and_branches_report_their_runs_as_the_plain_chain(
    chat: ChatParrot,
) -> None:
    """Callbacks see each input's (or branch's) prompt, model and parser runs with their real
    values, the model runs with the server's usage, as without a limit."""
    chain = PromptTemplate.from_template("Topic: {topic}") | chat | StrOutputParser()
    inputs = [{"topic": t} for t in TOPICS[:3]]
    two = {"max_concurrency": 2}
    with collect_runs() as plain:
        chain.batch(inputs, two)
    with collect_runs() as compiled:
        compile(chain).batch(inputs, two)

    def by_input(runs: Any) -> dict[str, Any]:
        return {run.inputs["topic"]: steps(run) for run in runs.traced_runs}

    assert by_input(compiled) == by_input(plain) and len(by_input(plain)) == 3
    models = [r for run in compiled.traced_runs for r in run.child_runs if r.run_type == "llm"]
    assert len(models) == 3
    assert all(r.outputs["llm_output"]["token_usage"]["completion_tokens"] for r in models)

    fan = RunnableParallel({t: chain for t in TOPICS[:3]})
    with collect_runs() as plain:
        fan.invoke({"topic": "owls"}, two)
    with collect_runs() as compiled:
        compile(fan).invoke({"topic": "owls"}, two)
    [plain_run], [compiled_run] = plain.traced_runs, compiled.traced_runs
    assert sorted(map(repr, steps(compiled_run))) == sorted(map(repr, steps(plain_run)))
    assert len([s for s in steps(compiled_run) if s[0] == "llm"]) == 3
