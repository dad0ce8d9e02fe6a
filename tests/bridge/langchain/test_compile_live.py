"""`compile(chain)` against a live server with the tiny random Llama: one graph per call, the
same answers as the plain chain (greedy), splits where a step needs generated text."""

from __future__ import annotations

import asyncio
import logging
from operator import itemgetter
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder, PromptTemplate
from langchain_core.runnables import (
    ConfigurableField,
    Runnable,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
)
from langchain_core.utils.utils import LC_ID_PREFIX
from pydantic import BaseModel

from parrot_bridge.errors import ParrotError
from parrot_bridge.langchain import ChatParrot, ParrotLLM, compile
from parrot_bridge.langchain.compiled import CompiledChain
from tests.bridge.langchain.json_bias import short_json_bias
from tests.server.http_client import metrics

pytestmark = pytest.mark.slow

SUBMISSIONS = "parrot_graph_submissions_total"
GET_VARIABLE = (
    'parrot_http_requests_total{route="/v1/sessions/{session_id}/variables/{variable_id}",'
    'status="200"}'
)
CHUNKS = [f"Part {i}: the transformer reads chunk number {i} of the paper." for i in range(8)]
NOTE_FORMAT = {"type": "json_schema", "json_schema": {"name": "note", "schema": {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}


@pytest.fixture(scope="module")
def chat(parrot_url: str) -> ChatParrot:
    return ChatParrot(base_url=parrot_url, temperature=0, max_tokens=6)


@pytest.fixture(scope="module")
def llm(parrot_url: str) -> ParrotLLM:
    return ParrotLLM(base_url=parrot_url, temperature=0, max_tokens=6)


def two_stage(chat: ChatParrot) -> Runnable:
    draft = ChatPromptTemplate.from_messages(
        [("system", "You write short drafts."), ("human", "Topic: {topic}")]
    )
    improve = ChatPromptTemplate.from_messages([("human", "Improve this draft: {draft}")])
    return draft | chat | StrOutputParser() | {"draft": RunnablePassthrough()} | improve | chat \
        | StrOutputParser()  # fmt: skip


def map_reduce(chat: ChatParrot) -> Runnable:
    summarize = PromptTemplate.from_template("Summarize: {chunk}\nSummary:") | chat \
        | StrOutputParser()  # fmt: skip
    reduce = PromptTemplate.from_template("Combine these summaries:\n{summaries}\nFinal:")
    return {"summaries": summarize.map() | (lambda s: "\n".join(s))} | reduce | chat \
        | StrOutputParser()  # fmt: skip


def shapes(chat: ChatParrot, llm: ParrotLLM) -> dict[str, tuple[Runnable, Any]]:
    """Every supported shape, with an input."""
    history = ChatPromptTemplate.from_messages(
        [("system", "Be brief."), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    parser = StrOutputParser()
    ask = PromptTemplate.from_template("Q: {q}\nA:")
    follow_up = ChatPromptTemplate.from_messages([
        ("system", "Be brief."), MessagesPlaceholder("history"), ("ai", "I said: {said}"),
        ("human", "{question}"),
    ])  # fmt: skip
    generated_history = RunnableParallel(
        history=ask | chat | (lambda m: [HumanMessage("first?"), m]),
        said=ask | chat | parser,
        question=lambda x: "and then?",
    )
    return {
        "prompt|chat|parser": (ask | chat | parser, {"q": "why is the sky blue?"}),
        "chat prompt with history|chat": (
            history | chat,
            {"history": [HumanMessage("hi"), AIMessage("hello")], "question": "and now?"},
        ),
        "generated message in a placeholder, ai template": (
            generated_history | follow_up | chat,
            {"q": "why?"},
        ),
        "prompt|llm": (ask | llm, {"q": "what is attention?"}),
        "llm|lambda|llm": (ask | llm | (lambda s: f"Then: {s}") | llm, {"q": "go"}),
        "two stages": (two_stage(chat), {"topic": "cars"}),
        "parallel dict": (
            RunnableParallel(a=ask | chat | parser, b=ask | llm, q=RunnablePassthrough()),
            {"q": "two views"},
        ),
        "assign": (
            RunnablePassthrough.assign(answer=ask | chat | parser)
            | PromptTemplate.from_template("Q: {q}\nA: {answer}\nCheck:") | llm,
            {"q": "one plus one"},
        ),
        "map": ((ask | chat | parser).map(), [{"q": "x"}, {"q": "y"}, {"q": "z"}]),
        "itemgetter and pick": (
            RunnableParallel(a=ask | chat | parser, q=itemgetter("q")).pick(["a"])
            | RunnableLambda(itemgetter("a")) | PromptTemplate.from_template("Again: {a}") | llm,
            {"q": "pick"},
        ),
        "map reduce": (map_reduce(chat), CHUNKS[:3]),
        "braces in user text": (ask | chat | parser, {"q": "what is {{input:x}} or {{a:b}}?"}),
        "bound stop": (ask | chat.bind(stop=["e"]) | parser, {"q": "tell me"}),
        # a response_format is the semantic call's constraint: the same schema, same text
        "json schema reply": (ask | chat.bind(response_format=NOTE_FORMAT) | parser, {"q": "a"}),
        "json mode reply": (
            ask | chat.bind(response_format={"type": "json_object"}) | parser, {"q": "json"}
        ),
        "json schema completion": (ask | llm.bind(response_format=NOTE_FORMAT), {"q": "b"}),
    }


def text(out: Any) -> Any:
    """Messages compare by content (their ids and usage differ between the two paths)."""
    if isinstance(out, AIMessage):
        return out.content
    if isinstance(out, dict):
        return {k: text(v) for k, v in out.items()}
    if isinstance(out, list):
        return [text(v) for v in out]
    return out


def leaves(out: Any) -> list[Any]:
    if isinstance(out, dict):
        return [leaf for v in out.values() for leaf in leaves(v)]
    if isinstance(out, list):
        return [leaf for v in out for leaf in leaves(v)]
    return [out]


SHAPES = list(shapes(ChatParrot(), ParrotLLM()))


@pytest.mark.parametrize("shape", SHAPES)
def test_compiled_equals_plain(shape: str, chat: ChatParrot, llm: ParrotLLM) -> None:
    chain, x = shapes(chat, llm)[shape]
    plain = chain.invoke(x)
    assert all(leaves(text(plain))), "the model answered nothing: the comparison would be weak"
    compiled = compile(chain)
    assert text(compiled.invoke(x)) == text(plain)
    assert compiled.split_steps == set()
    assert compiled.last_calls, "no model call was traced: the chain ran outside the graph"


def test_two_stage_chain_is_one_submission_and_stage_two_needs_no_round_trip(
    chat: ChatParrot, parrot_url: str
) -> None:
    compiled = compile(two_stage(chat))
    before = metrics(parrot_url)
    answer = compiled.invoke({"topic": "boats"})
    after = metrics(parrot_url)
    assert after[SUBMISSIONS] - before[SUBMISSIONS] == 1
    # the client read one variable (the answer): the draft went to stage two on the server
    assert after[GET_VARIABLE] - before[GET_VARIABLE] == 1
    first, second = compiled.last_calls
    assert second.inputs == (first.output,)
    assert answer == two_stage(chat).invoke({"topic": "boats"})


def test_bound_models_are_traced_into_one_graph(chat: ChatParrot, parrot_url: str) -> None:
    # chat models' bind() returns a RunnableBinding subclass; with_config() a plain one
    first = PromptTemplate.from_template("Topic: {t}") | chat.bind(stop=["e"]) | StrOutputParser()
    second = PromptTemplate.from_template("Go on: {d}") | chat.with_config(tags=["x"]).bind(
        stop=["o"]
    ) | StrOutputParser()  # fmt: skip
    chain = {"d": first} | second
    compiled = compile(chain)
    before = metrics(parrot_url)
    answer = compiled.invoke({"t": "owls"})
    assert metrics(parrot_url)[SUBMISSIONS] - before[SUBMISSIONS] == 1
    one, two = compiled.last_calls
    assert two.inputs == (one.output,) and compiled.split_steps == set()
    assert answer == chain.invoke({"t": "owls"})


def test_fan_out_over_eight_chunks_is_one_task_group(chat: ChatParrot, parrot_url: str) -> None:
    compiled = compile(map_reduce(chat))
    before = metrics(parrot_url)
    answer = compiled.invoke(CHUNKS)
    after = metrics(parrot_url)
    assert after[SUBMISSIONS] - before[SUBMISSIONS] == 1
    *maps, reduce = compiled.last_calls
    assert len(maps) == 8 and all(not m.inputs for m in maps)
    # one consumer reads all eight outputs: the map calls form one task group
    assert set(reduce.inputs) == {m.output for m in maps} and len(reduce.inputs) == 8
    assert answer == map_reduce(chat).invoke(CHUNKS)


def test_a_lambda_that_reads_generated_text_splits_the_graph_and_is_logged_once(
    chat: ChatParrot, parrot_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    shout = RunnableLambda(lambda s: s.upper(), name="shout")
    improve = PromptTemplate.from_template("Improve: {draft}")
    chain = PromptTemplate.from_template("Topic: {t}") | chat | StrOutputParser() | shout \
        | {"draft": RunnablePassthrough()} | improve | chat | StrOutputParser()  # fmt: skip
    compiled = compile(chain)
    before = metrics(parrot_url)
    with caplog.at_level(logging.WARNING, logger="parrot_bridge.langchain"):
        answers = [compiled.invoke({"t": t}) for t in ("cars", "boats")]
    after = metrics(parrot_url)
    assert answers == [chain.invoke({"t": t}) for t in ("cars", "boats")]
    assert after[SUBMISSIONS] - before[SUBMISSIONS] == 4  # two graphs per call
    splits = [r for r in caplog.records if "'shout'" in r.getMessage()]
    assert len(splits) == 1 and "str.upper" in splits[0].getMessage()
    assert compiled.split_steps == {"shout"}


def test_a_chat_call_asking_for_logprobs_or_samples_runs_on_the_client(
    chat: ChatParrot,
) -> None:
    """Semantic calls give one sample without logprobs: such a call is a plain request, its
    answer as the plain chain's (metadata included), and the step is reported as split."""
    ask = PromptTemplate.from_template("Q: {q}\nA:")
    chain = ask | chat | StrOutputParser() | {"q": RunnablePassthrough()} | ask | chat.bind(
        logprobs=True
    )
    plain = chain.invoke({"q": "why?"})
    compiled = compile(chain)
    out = compiled.invoke({"q": "why?"})
    assert out.content == plain.content
    # the same tokens; logprobs to float32's precision (a prefix found cached or not changes
    # the sums' order)
    got, want = (m.response_metadata["logprobs"]["content"] for m in (out, plain))
    assert [t["token"] for t in got] == [t["token"] for t in want] and got
    assert [t["logprob"] for t in got] == pytest.approx([t["logprob"] for t in want], abs=1e-4)
    assert compiled.split_steps == {"ChatParrot"}


def test_a_step_after_the_whole_graph_is_not_warned_about(
    chat: ChatParrot, caplog: pytest.LogCaptureFixture
) -> None:
    """A step that runs on the last answer (a lambda reading it, with_structured_output's
    parser) waits for the graph but splits nothing: it is in split_steps and logged at INFO,
    not warned about as a split (it was, on every compile of a structured-output chain)."""
    shout = RunnableLambda(lambda s: s.upper(), name="shout")
    chain = PromptTemplate.from_template("Topic: {t}") | chat | StrOutputParser() | shout
    compiled = compile(chain)
    with caplog.at_level(logging.INFO, logger="parrot_bridge.langchain"):
        assert compiled.invoke({"t": "cars"}) == chain.invoke({"t": "cars"})
    assert compiled.split_steps == {"shout"}
    shouts = [r for r in caplog.records if "'shout'" in r.getMessage()]
    assert [r.levelno for r in shouts] == [logging.INFO]
    assert "after the graph" in shouts[0].getMessage()
    # followed by a call, the same step splits the graph: a warning
    caplog.clear()
    longer = compile(chain | {"x": RunnablePassthrough()} | PromptTemplate.from_template(
        "Go on: {x}") | chat | StrOutputParser())  # fmt: skip
    with caplog.at_level(logging.INFO, logger="parrot_bridge.langchain"):
        longer.invoke({"t": "cars"})
    shouts = [r for r in caplog.records if "'shout'" in r.getMessage()]
    assert [r.levelno for r in shouts] == [logging.WARNING] and longer.split_steps == {"shout"}


def test_extra_body_fields_become_the_semantic_calls_options_or_run_the_call_here(
    chat: ChatParrot,
) -> None:
    """A chat call's extra_body fields that a semantic call has an option for (top_k,
    guided_regex, ...) keep it in the graph, the answer as the plain chain's; a field it has
    none for (priority) makes the call a plain request, reported as split."""
    ask = PromptTemplate.from_template("Q: {q}\nA:")
    first = ask | chat | StrOutputParser() | {"q": RunnablePassthrough()} | ask
    for extra, split in (({"guided_regex": "[a-z]{2} [0-9]", "top_k": 1}, set()),
                         ({"priority": -1}, {"ChatParrot"})):  # fmt: skip
        chain = first | chat.bind(extra_body=extra)
        compiled = compile(chain)
        assert compiled.invoke({"q": "why?"}).content == chain.invoke({"q": "why?"}).content
        assert compiled.split_steps == split
        assert len(compiled.last_calls) == 2 - len(split)


def test_a_non_parrot_step_on_generated_text_runs_on_the_client(chat: ChatParrot) -> None:
    count = RunnableLambda(lambda s: {"n": str(len(s.split()))}, name="count_words")
    chain = PromptTemplate.from_template("Say {x}") | chat | StrOutputParser() | count \
        | PromptTemplate.from_template("{n} words") | chat  # fmt: skip
    compiled = compile(chain)
    assert compiled.invoke({"x": "hi"}).content == chain.invoke({"x": "hi"}).content
    assert compiled.split_steps == {"count_words"}


def test_batch_is_one_graph_and_matches(chat: ChatParrot, parrot_url: str) -> None:
    chain = two_stage(chat)
    inputs = [{"topic": t} for t in ("cars", "boats", "trains")]
    before = metrics(parrot_url)
    answers = compile(chain).batch(inputs)
    assert metrics(parrot_url)[SUBMISSIONS] - before[SUBMISSIONS] == 1
    assert answers == chain.batch(inputs)


def test_batch_returns_each_inputs_exception_beside_the_others_answers(
    chat: ChatParrot,
) -> None:
    def check(x: dict[str, str]) -> dict[str, str]:
        if x["topic"] == "bad":
            raise RuntimeError("bad topic")
        return x

    for tail in (StrOutputParser(), StrOutputParser() | RunnableLambda(lambda s: s.upper())):
        chain = RunnableLambda(check) | two_stage(chat) | tail
        inputs = [{"topic": "cars"}, {"topic": "bad"}, {"topic": "boats"}]
        plain = chain.batch(inputs, return_exceptions=True)
        compiled = compile(chain)
        for answers in (compiled.batch(inputs, return_exceptions=True),
                        asyncio.run(compiled.abatch(inputs, return_exceptions=True))):  # fmt: skip
            assert [a for i, a in enumerate(answers) if i != 1] == [plain[0], plain[2]]
            assert isinstance(answers[1], RuntimeError) and str(answers[1]) == "bad topic"
        with pytest.raises(RuntimeError, match="bad topic"):
            compiled.batch(inputs)


def test_stream_and_async_give_the_same_answer(chat: ChatParrot) -> None:
    chain, x = two_stage(chat), {"topic": "planes"}
    expected = chain.invoke(x)
    compiled = compile(chain)
    chunks = list(compiled.stream(x))
    assert len(chunks) > 1 and "".join(chunks) == expected

    async def both() -> tuple[Any, list[Any], list[Any]]:
        return (
            await compiled.ainvoke(x),
            [c async for c in compiled.astream(x)],
            await compiled.abatch([x, x]),
        )

    one, streamed, batch = asyncio.run(both())
    assert one == expected and "".join(streamed) == expected and batch == [expected] * 2
    message_chunks = list(compile(PromptTemplate.from_template("{x}") | chat).stream({"x": "a"}))
    assert "".join(c.content for c in message_chunks) == chat.invoke("a").content


def message_stream_facts(chunks: list[Any]) -> tuple[Any, ...]:
    """A chat model's stream as ChatOpenAI's: AIMessageChunks that share one id (LangChain
    gives a chunk without one its run's, which merging drops), the usage on the last chunk
    only. Returns (text, usage totals, finish reason, model name)."""
    assert chunks and all(isinstance(c, AIMessageChunk) for c in chunks)
    ids = {c.id for c in chunks if not (c.id or "").startswith(LC_ID_PREFIX)}
    assert len(ids) == 1 and None not in ids, ids
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.id in ids
    assert chunks[-1].chunk_position == "last"
    assert all(c.usage_metadata is None for c in chunks[:-1])
    usage = merged.usage_metadata
    totals = None if usage is None else {k: usage[k] for k in TOTALS}
    metadata = merged.response_metadata
    return merged.text, totals, metadata.get("finish_reason"), metadata.get("model_name")


TOTALS = ("input_tokens", "output_tokens", "total_tokens")


def test_a_compiled_chat_model_streams_message_chunks_as_the_plain_one(
    chat: ChatParrot,
) -> None:
    """Chunks of one message share an id, the last carries the usage when stream usage is on
    (totals as the plain call's), none without; after a parser, chunks are text."""
    x = {"x": "owls"}
    for model, usage in ((chat, True), (chat.bind(stream_usage=False), False)):
        chain = PromptTemplate.from_template("Tell me about {x}") | model
        compiled = compile(chain)

        async def astreamed(compiled: CompiledChain = compiled) -> list[Any]:
            return [c async for c in compiled.astream(x)]

        plain = message_stream_facts(list(chain.stream(x)))
        assert (plain[1] is not None) == usage and plain[0] and plain[2] == "length"
        assert message_stream_facts(list(compiled.stream(x))) == plain
        assert message_stream_facts(asyncio.run(astreamed())) == plain
    parsed = compile(PromptTemplate.from_template("Tell me about {x}") | chat | StrOutputParser())
    chunks = list(parsed.stream(x))
    assert all(isinstance(c, str) for c in chunks) and "".join(chunks) == plain[0]


def test_a_last_model_step_run_on_the_client_streams_chunk_by_chunk(chat: ChatParrot) -> None:
    """A chain whose last model call runs on the client (logprobs, with_fallbacks, a
    configurable field) streams it as the plain chain does, chunk by chunk, the token events
    reaching the callbacks, its parser's text too; the graph before it stays a graph. A chat
    call asking for n=2 samples comes whole (ChatParrot's own stream refuses it)."""
    x = {"x": "owls"}
    ask = PromptTemplate.from_template("Tell me about {x}")
    configurable = chat.configurable_fields(
        max_tokens=ConfigurableField(id="max_tokens")
    )  # fmt: skip
    for model in (chat.bind(logprobs=True), chat.with_fallbacks([chat]), configurable):
        for chain in (ask | model, ask | model | StrOutputParser()):
            plain_tokens = Tokens()
            plain = list(chain.stream(x, {"callbacks": [plain_tokens]}))
            assert len(plain) > 2, "the plain stream gave no chunks to compare"
            compiled = compile(chain)

            async def astreamed(compiled: CompiledChain = compiled) -> list[Any]:
                return [c async for c in compiled.astream(x)]

            tokens = Tokens()
            streamed = list(compiled.stream(x, {"callbacks": [tokens]}))
            assert contents(streamed) == contents(plain) and tokens.count == plain_tokens.count > 2
            assert contents(asyncio.run(astreamed())) == contents(plain)
            if isinstance(plain[0], AIMessageChunk):
                assert message_stream_facts(streamed) == message_stream_facts(plain)
    draft = ask | chat | StrOutputParser() | {"draft": RunnablePassthrough()} \
        | PromptTemplate.from_template("Improve: {draft}")  # fmt: skip
    chain = draft | chat.bind(logprobs=True) | StrOutputParser()
    compiled = compile(chain)
    streamed = list(compiled.stream(x))
    assert len(streamed) > 2 and streamed == list(chain.stream(x))
    assert [c.step for c in compiled.last_calls] == ["ChatParrot"]  # the draft, in a graph
    samples = ask | chat.bind(n=2)
    [whole] = compile(samples).stream(x)
    assert whole.content == samples.invoke(x).content


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.count = 0

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.count += 1


def contents(chunks: list[Any]) -> list[str]:
    return [c.content if isinstance(c, AIMessageChunk) else c for c in chunks]


def test_parrot_llm_generates_256_tokens_by_default_plain_and_compiled(parrot_url: str) -> None:
    """As langchain-openai's OpenAI LLM (not up to the context's end), on both paths."""
    llm = ParrotLLM(base_url=parrot_url, temperature=0, extra_body={"ignore_eos": True})
    plain = llm.generate(["The paper"]).llm_output
    assert plain is not None and plain["token_usage"]["completion_tokens"] == 256
    compiled = compile(PromptTemplate.from_template("The {x}") | llm)
    compiled.invoke({"x": "paper"})
    [call] = compiled.last_calls
    assert call.output.usage is not None and call.output.usage["completion_tokens"] == 256


def test_parrot_llm_batch_is_one_graph_of_independent_calls(
    llm: ParrotLLM, parrot_url: str
) -> None:
    prompts = ["The paper", "The model", "The data {{input:x}}"]
    before = metrics(parrot_url)
    answers = llm.batch(prompts)
    assert metrics(parrot_url)[SUBMISSIONS] - before[SUBMISSIONS] == 1
    assert answers == [llm.invoke(p) for p in prompts]
    assert "".join(llm.stream(prompts[0])) == answers[0]


def test_an_unserved_model_name_fails_as_a_plain_call_does(
    chat: ChatParrot, served_model: str
) -> None:
    prompt = PromptTemplate.from_template("Hi {x}")
    for model in (chat.model_copy(update={"model_name": "gpt-4o"}), chat.bind(model="gpt-4o")):
        with pytest.raises(ParrotError) as plain:
            (prompt | model).invoke({"x": "a"})
        with pytest.raises(ParrotError) as compiled:
            compile(prompt | model).invoke({"x": "a"})
        assert compiled.value.status == plain.value.status == 404
        assert compiled.value.code == plain.value.code == "model_not_found"
    served = compile(prompt | chat.bind(model=served_model)).invoke({"x": "a"})
    assert served.response_metadata["model_name"] == served_model


def test_a_model_inside_fallbacks_or_configurable_fields_runs_on_the_client(
    chat: ChatParrot,
) -> None:
    prompt = PromptTemplate.from_template("Hi {x}")
    configurable = chat.configurable_fields(max_tokens=ConfigurableField(id="mt"))
    for model in (chat.with_fallbacks([chat]), configurable):
        chain = prompt | chat | StrOutputParser() | {"x": RunnablePassthrough()} | prompt \
            | model | StrOutputParser()  # fmt: skip
        assert compile(chain).invoke({"x": "a"}) == chain.invoke({"x": "a"})
    chain = prompt | configurable | StrOutputParser()
    config: Any = {"configurable": {"mt": 2}}
    assert compile(chain).invoke({"x": "a"}, config) == chain.invoke({"x": "a"}, config)


def test_compile_needs_a_parrot_model() -> None:
    with pytest.raises(ValueError, match="no ChatParrot or ParrotLLM"):
        compile(PromptTemplate.from_template("{x}") | StrOutputParser())


def test_a_non_parrot_model_in_the_middle_splits_the_graph(
    chat: ChatParrot, parrot_url: str
) -> None:
    from langchain_core.language_models import FakeListLLM

    def chain() -> Runnable:
        other = FakeListLLM(responses=["an outside model's answer"])
        return PromptTemplate.from_template("Say {x}") | chat | StrOutputParser() | other \
            | PromptTemplate.from_template("Go on: {y}") | chat | StrOutputParser()  # fmt: skip

    compiled = compile(chain())
    before = metrics(parrot_url)
    assert compiled.invoke({"x": "hi"}) == chain().invoke({"x": "hi"})
    assert metrics(parrot_url)[SUBMISSIONS] - before[SUBMISSIONS] == 2
    assert compiled.split_steps == {"FakeListLLM"}


class Joke(BaseModel):
    setup: str
    punchline: str


class StartOptions(BaseCallbackHandler):
    """The `options` each chat model run starts with."""

    def __init__(self) -> None:
        self.options: list[dict[str, Any]] = []

    def on_chat_model_start(self, *_: Any, **kwargs: Any) -> None:
        self.options.append(kwargs["options"])


def test_with_structured_output_is_a_constrained_call_of_the_graph(
    parrot_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The model call of `with_structured_output` (a JSON-schema reply) runs in the graph
    with the schema as its constraint; its parser runs on the reply. Callbacks see the
    structured-output note a plain call reports. The tiny model's strings close at once
    (`short_json_bias`)."""
    quoting = ChatParrot(base_url=parrot_url, temperature=0, max_tokens=64,
                         model_kwargs={"logit_bias": short_json_bias(parrot_url)})  # fmt: skip
    chain = PromptTemplate.from_template("A joke about {topic}.") | quoting.with_structured_output(
        Joke
    )
    plain_starts, compiled_starts = StartOptions(), StartOptions()
    plain = chain.invoke({"topic": "owls"}, config={"callbacks": [plain_starts]})
    compiled = compile(chain)
    with caplog.at_level(logging.WARNING, logger="parrot_bridge.langchain"):
        out = compiled.invoke({"topic": "owls"}, config={"callbacks": [compiled_starts]})
    assert not caplog.records  # its parser reads the last answer: no split to warn about
    assert out == plain == Joke(setup="", punchline="")
    assert [c.step for c in compiled.last_calls] == ["ChatParrot"]
    [plain_note] = [o["ls_structured_output_format"] for o in plain_starts.options]
    [compiled_note] = [o["ls_structured_output_format"] for o in compiled_starts.options]
    assert compiled_note == plain_note and plain_note["kwargs"]["method"] == "json_schema"
