"""`Parrot` and the graph synthesizers against a live server with a tiny random model, compared
with LlamaIndex's stock synthesizers on `OpenAILike` (the same server's OpenAI routes)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, PromptTemplate, Settings, VectorStoreIndex
from llama_index.core import get_response_synthesizer as get_stock_synthesizer
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.callbacks import (
    CallbackManager,
    CBEventType,
    LlamaDebugHandler,
    TokenCountingHandler,
)
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.llms import LLM
from llama_index.core.response_synthesizers import CompactAndRefine, Refine, TreeSummarize
from llama_index.llms.openai_like import OpenAILike

from parrot_bridge.errors import ParrotError
from parrot_bridge.llamaindex import (
    MiniLMEmbedding,
    Parrot,
    ParrotRefine,
    ParrotTreeSummarize,
    get_response_synthesizer,
)
from server.engine import LLMEngine, SamplingParams
from tests.server.http_client import metrics, request

pytestmark = pytest.mark.slow

PAPER = Path(__file__).resolve().parents[3].parent / "shared/data/arxiv-march-2023/article_1.txt"
# the tiny tokenizer needs ~3x the tokens LlamaIndex counts: keep packed prompts in its context
TREE_WINDOW, REFINE_WINDOW = 250, 700
MAX_TOKENS = 8
SUBMISSIONS = "parrot_graph_submissions_total"


@pytest.fixture(scope="module")
def engine(tiny_llama_path: Path) -> LLMEngine:
    return LLMEngine.from_pretrained(str(tiny_llama_path))


@pytest.fixture(scope="module")
def chunks() -> list[str]:
    text = PAPER.read_text()
    return [text[i * 300 : (i + 1) * 300] for i in range(10)]


def parrot(url: str, window: int) -> Parrot:
    return Parrot(base_url=url, max_tokens=MAX_TOKENS, context_window=window)


def openai_like(url: str, llm: Parrot, window: int) -> OpenAILike:
    return OpenAILike(api_base=url + "/v1", api_key="none", model=llm.metadata.model_name,
                      max_tokens=MAX_TOKENS, temperature=0, context_window=window,
                      is_chat_model=False)  # fmt: skip


def greedy(engine: LLMEngine, text: str) -> str:
    sampling = SamplingParams(max_tokens=MAX_TOKENS, temperature=0)
    return engine.generate([engine.tokenizer.encode(text)], sampling)[0].text


def submissions(url: str) -> float:
    return metrics(url)[SUBMISSIONS]


def test_metadata_complete_and_chat(url: str, engine: LLMEngine) -> None:
    llm = Parrot(base_url=url, max_tokens=MAX_TOKENS)
    assert llm.metadata.context_window == 1024  # the tiny model's max_model_len
    assert llm.metadata.num_output == MAX_TOKENS and not llm.metadata.is_chat_model
    assert llm.complete("The parrot said").text == greedy(engine, "The parrot said")
    streamed = list(llm.stream_complete("The parrot said"))
    assert (
        "".join(r.delta for r in streamed) == streamed[-1].text == greedy(engine, "The parrot said")
    )
    messages = [ChatMessage(role="system", content="Be brief."),
                ChatMessage(role="user", content="Hello")]  # fmt: skip
    plain = [{"role": m.role.value, "content": m.content} for m in messages]
    expected = greedy(
        engine, engine.tokenizer.apply_chat_template(plain, add_generation_prompt=True)
    )
    assert llm.chat(messages).message.content == expected
    assert list(llm.stream_chat(messages))[-1].message.content == expected


async def test_completion_to_prompt_wraps_a_prompt_not_yet_formatted(
    url: str, engine: LLMEngine
) -> None:
    """As `OpenAILike`'s: `complete(p)` sends `completion_to_prompt(p)` (a local model's
    instruction format), `formatted=True` sends `p` as it is (predict's prompts are wrapped
    already); the events see the prompt sent. Before, the setting was silently ignored."""

    def wrap(prompt: str) -> str:
        return f"[INST] {prompt} [/INST]"

    llm = Parrot(base_url=url, max_tokens=MAX_TOKENS, completion_to_prompt=wrap)
    wrapped, plain = greedy(engine, wrap("The parrot said")), greedy(engine, "The parrot said")
    assert wrapped != plain
    with observed(llm) as (counter, debug, _):
        assert llm.complete("The parrot said").text == wrapped
    assert [c[0] for c in calls_seen(counter, debug)] == [wrap("The parrot said")]
    assert llm.complete("The parrot said", formatted=True).text == plain
    assert list(llm.stream_complete("The parrot said"))[-1].text == wrapped
    assert (await llm.acomplete("The parrot said")).text == wrapped
    streamed = [r async for r in await llm.astream_complete("The parrot said")]
    assert streamed[-1].text == wrapped
    prompt = PromptTemplate("Topic: {topic}\nAnswer: ")
    assert llm.predict(prompt, topic="cars") == greedy(engine, wrap("Topic: cars\nAnswer: "))


async def test_token_counts_in_additional_kwargs_as_openais(url: str) -> None:
    """LlamaIndex's OpenAI LLM puts the server's usage in a response's `additional_kwargs`
    (prompt, completion and total tokens); Parrot's were empty."""
    llm = Parrot(base_url=url, max_tokens=MAX_TOKENS)
    messages = [ChatMessage(role="user", content="Hello")]
    for response in (llm.complete("The parrot said"), llm.chat(messages),
                     await llm.acomplete("The parrot said"), await llm.achat(messages)):  # fmt: skip
        usage = response.raw["usage"]
        assert response.additional_kwargs == {
            k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")
        }
        assert response.additional_kwargs["completion_tokens"] == MAX_TOKENS
    # a stream's chunks have usage only when asked for (the last one), as OpenAI's
    assert all(c.additional_kwargs == {} for c in llm.stream_complete("The parrot said"))
    asked = Parrot(base_url=url, max_tokens=MAX_TOKENS,
                   additional_kwargs={"stream_options": {"include_usage": True}})  # fmt: skip
    assert asked.complete("The parrot said").text == llm.complete("The parrot said").text
    chunks = list(asked.stream_complete("The parrot said"))
    assert all(c.additional_kwargs == {} for c in chunks[:-1])
    assert chunks[-1].additional_kwargs["completion_tokens"] == MAX_TOKENS
    chunks = [c async for c in await asked.astream_chat(messages)]
    assert chunks[-1].additional_kwargs["completion_tokens"] == MAX_TOKENS
    with observed(asked) as (counter, _, _):  # the server's counts, not the counter's own
        list(asked.stream_complete("The parrot said"))
    assert counter.llm_token_counts[0].completion_token_count == MAX_TOKENS


async def test_a_message_with_an_image_is_refused_not_sent_as_its_text_alone(url: str) -> None:
    """`ChatMessage.content` is its text blocks: an ImageBlock was dropped without a word, and
    the model described an image it never saw (OpenAILike's request gets a 400)."""
    from llama_index.core.llms import ImageBlock, TextBlock

    llm = Parrot(base_url=url, max_tokens=MAX_TOKENS)
    message = ChatMessage(role="user", blocks=[
        TextBlock(text="Describe this image."), ImageBlock(url="http://example.com/cat.png"),
    ])  # fmt: skip
    for call in (llm.chat, llm.stream_chat):
        with pytest.raises(ValueError, match="user message's ImageBlock"):
            call([message])
    for acall in (llm.achat, llm.astream_chat):
        with pytest.raises(ValueError, match="user message's ImageBlock"):
            await acall([message])


async def test_async_methods_run_concurrently(url: str, engine: LLMEngine) -> None:
    llm = Parrot(base_url=url, max_tokens=MAX_TOKENS)
    prompts = [f"Topic {i}:" for i in range(4)]
    done = await asyncio.gather(*(llm.acomplete(p) for p in prompts))
    assert [d.text for d in done] == [greedy(engine, p) for p in prompts]
    gen = await llm.astream_complete(prompts[0])
    assert [r async for r in gen][-1].text == greedy(engine, prompts[0])
    reply = await llm.achat([ChatMessage(role="user", content="Hi")])
    chat_prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True
    )
    assert reply.message.content == greedy(engine, chat_prompt)


def test_predict_keeps_the_template(url: str, engine: LLMEngine) -> None:
    llm = Parrot(base_url=url, max_tokens=MAX_TOKENS, system_prompt="You answer.")
    prompt = PromptTemplate("Topic: {topic}\nAnswer: ")
    before = submissions(url)
    assert llm.predict(prompt, topic="cars") == greedy(
        engine, "You answer.\n\nTopic: cars\nAnswer: "
    )
    assert submissions(url) - before == 1
    assert "".join(llm.stream(prompt, topic="cars")) == llm.predict(prompt, topic="cars")


def test_additional_kwargs_reach_plain_and_semantic_calls(url: str, engine: LLMEngine) -> None:
    """`additional_kwargs` (LlamaIndex's OpenAI LLM's) go with every call: as request fields in
    plain ones, as options in semantic ones (predict keeps its graph); a field that semantic
    calls do not take sends predict the plain way. Before, the setting was dropped unseen."""
    prompt = PromptTemplate("Topic: {topic}\nAnswer: ")
    text = "Topic: cars\nAnswer: "
    # top_k=1 samples the likeliest token: greedy, whatever the temperature
    top1 = Parrot(base_url=url, max_tokens=MAX_TOKENS, temperature=1.0,
                  additional_kwargs={"top_k": 1, "seed": 4})  # fmt: skip
    assert top1.complete(text).text == greedy(engine, text)
    before = submissions(url)
    assert top1.predict(prompt, topic="cars") == greedy(engine, text)
    assert submissions(url) - before == 1
    shaped = Parrot(base_url=url, max_tokens=MAX_TOKENS,
                    additional_kwargs={"guided_regex": "[a-z]{3} [0-9]{2}"})  # fmt: skip
    answer = shaped.predict(prompt, topic="cars")
    assert re.fullmatch("[a-z]{3} [0-9]{2}", answer) and answer == shaped.complete(text).text
    # per call: request fields and extra_body, as LlamaIndex's OpenAI LLM sends them
    llm = Parrot(base_url=url, max_tokens=MAX_TOKENS)
    assert llm.complete(text, extra_body={"guided_regex": "[a-z]{3} [0-9]{2}"}).text == answer
    assert llm.complete(text, temperature=1.0, top_k=1).text == greedy(engine, text)
    with pytest.raises(ValueError, match="Parrot cannot send 'top_kk'"):
        llm.complete(text, top_kk=1)
    with pytest.raises(ParrotError, match="use_beam_search") as refused:  # the server's 400
        llm.complete(text, extra_body={"use_beam_search": True})
    assert refused.value.request_id.startswith("req_")  # the server's log line names it
    # a field semantic calls do not take (vLLM's priority): predict goes the plain way
    urgent = Parrot(base_url=url, max_tokens=MAX_TOKENS, additional_kwargs={"priority": -1})
    before = submissions(url)
    assert urgent.predict(prompt, topic="cars") == greedy(engine, text)
    assert submissions(url) == before


def test_logprobs_come_back_as_llamaindexs_openai_llm_reports_them(url: str) -> None:
    """`logprobs`/`top_logprobs` (LlamaIndex's OpenAI LLM's settings; refused before): each
    token's likeliest alternatives in the response's `logprobs`, the server's own."""
    llm = Parrot(base_url=url, max_tokens=MAX_TOKENS, logprobs=True, top_logprobs=2)
    model = llm.metadata.model_name
    done = llm.complete("The parrot said")
    _, raw = request("POST", url + "/v1/completions", {
        "model": model, "prompt": "The parrot said", "max_tokens": MAX_TOKENS,
        "temperature": 0, "logprobs": 2})  # fmt: skip
    want = raw["choices"][0]["logprobs"]["top_logprobs"]
    assert done.text == raw["choices"][0]["text"] and len(done.logprobs) == len(want)
    for got, top in zip(done.logprobs, want, strict=True):
        assert [a.token for a in got] == list(top)
        assert [a.logprob for a in got] == pytest.approx(list(top.values()), abs=1e-4)
    messages = [ChatMessage(role="user", content="Hello")]
    reply = llm.chat(messages)
    _, raw = request("POST", url + "/v1/chat/completions", {
        "model": model, "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": True, "top_logprobs": 2})  # fmt: skip
    want = raw["choices"][0]["logprobs"]["content"]
    assert [[a.token for a in got] for got in reply.logprobs] == [
        [a["token"] for a in entry["top_logprobs"]] for entry in want
    ]
    assert reply.logprobs[0][0].bytes == want[0]["top_logprobs"][0]["bytes"]
    assert Parrot(base_url=url, max_tokens=MAX_TOKENS).complete("The parrot said").logprobs is None


async def test_concurrent_apredicts_are_one_graph(url: str, engine: LLMEngine) -> None:
    llm = Parrot(base_url=url, max_tokens=MAX_TOKENS)
    prompt = PromptTemplate("Summarize: {text}\nSummary:")
    texts = ["ants", "bees", "cats", "dogs", "eels"]
    before = submissions(url)
    got = await asyncio.gather(*(llm.apredict(prompt, text=t) for t in texts))
    assert submissions(url) - before == 1
    assert got == [greedy(engine, f"Summarize: {t}\nSummary:") for t in texts]
    gen = await llm.astream(prompt, text="ants")
    assert "".join([c async for c in gen]) == got[0]


def test_refine_chain_is_one_submission_with_the_stock_answer(url: str, chunks: list[str]) -> None:
    llm = parrot(url, REFINE_WINDOW)
    ours = get_response_synthesizer(llm=llm, response_mode="refine")
    assert isinstance(ours, ParrotRefine)
    steps, _ = ours._plan("What is it about?", chunks[:4], None)
    assert len(steps) >= 4  # a chain, each step reading the previous answer
    before = submissions(url)
    answer = ours.get_response("What is it about?", chunks[:4])
    assert submissions(url) - before == 1  # every step started on the server
    stock = Refine(llm=openai_like(url, llm, REFINE_WINDOW))
    assert answer == stock.get_response("What is it about?", chunks[:4])


async def test_compact_async_and_streaming_refine(url: str, chunks: list[str]) -> None:
    llm = parrot(url, REFINE_WINDOW)
    stock = CompactAndRefine(llm=openai_like(url, llm, REFINE_WINDOW))
    expected = await stock.aget_response("Main idea?", chunks[:6])
    ours = get_response_synthesizer(llm=llm, response_mode="compact")
    before = submissions(url)
    assert await ours.aget_response("Main idea?", chunks[:6]) == expected
    assert submissions(url) - before == 1
    streaming = get_response_synthesizer(llm=llm, response_mode="refine", streaming=True)
    stock_stream = Refine(llm=openai_like(url, llm, REFINE_WINDOW), streaming=True)
    tokens = streaming.get_response("Main idea?", chunks[:3])
    assert "".join(tokens) == "".join(stock_stream.get_response("Main idea?", chunks[:3]))


async def test_tree_summarize_query_is_one_submission(url: str, chunks: list[str]) -> None:
    llm = parrot(url, TREE_WINDOW)
    ours = get_response_synthesizer(llm=llm, response_mode="tree_summarize")
    assert isinstance(ours, ParrotTreeSummarize)
    stock = TreeSummarize(llm=openai_like(url, llm, TREE_WINDOW))
    query = "What is it about?"  # (with this tiny model) summaries without edge whitespace
    template = ours._summary_template.partial_format(query_str=query)
    assert len(ours._prompt_helper.repack(template, chunks, llm=llm)) >= 3  # two levels
    before = submissions(url)
    answer = ours.get_response(query, chunks)
    assert submissions(url) - before == 1  # both levels, the second wired on the server
    assert answer == stock.get_response(query, chunks)
    before = submissions(url)
    assert await ours.aget_response(query, chunks) == answer
    assert submissions(url) - before == 1
    streaming = get_response_synthesizer(llm=llm, response_mode="tree_summarize", streaming=True)
    before = submissions(url)
    assert "".join(streaming.get_response(query, chunks)) == answer
    assert submissions(url) - before == 1


async def test_tree_summarize_strips_summaries_on_the_server(url: str, chunks: list[str]) -> None:
    llm = parrot(url, TREE_WINDOW)
    ours = get_response_synthesizer(llm=llm, response_mode="tree_summarize")
    stock = TreeSummarize(llm=openai_like(url, llm, TREE_WINDOW))
    query = "Topic?"  # with this tiny model a summary starts with whitespace
    template = ours._summary_template.partial_format(query_str=query)
    packed = ours._prompt_helper.repack(template, chunks, llm=llm)
    summaries = [llm.predict(template, context_str=c) for c in packed]
    assert len(summaries) >= 3 and any(s != s.strip() for s in summaries)
    assert all(s.strip() for s in summaries)
    expected = stock.get_response(query, chunks)
    before = submissions(url)
    assert ours.get_response(query, chunks) == expected
    assert submissions(url) - before == 1 and ours.speculate  # the stock join, on the server
    before = submissions(url)
    assert await ours.aget_response(query, chunks) == expected
    assert submissions(url) - before == 1
    streaming = get_response_synthesizer(llm=llm, response_mode="tree_summarize", streaming=True)
    before = submissions(url)
    assert "".join(streaming.get_response(query, chunks)) == expected
    assert submissions(url) - before == 1 and streaming.speculate


def test_tree_summarize_recovers_when_the_packing_differs(
    url: str, chunks: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # e.g. an empty summary, which the stock packing drops: the next level is recomputed
    monkeypatch.setattr(ParrotTreeSummarize, "_packs_into_one", lambda *_: False)
    llm = parrot(url, TREE_WINDOW)
    ours = get_response_synthesizer(llm=llm, response_mode="tree_summarize")
    stock = TreeSummarize(llm=openai_like(url, llm, TREE_WINDOW))
    query = "Topic?"
    before = submissions(url)
    assert ours.get_response(query, chunks) == stock.get_response(query, chunks)
    assert submissions(url) - before == 2 and not ours.speculate  # no more wasted final calls
    assert ours.get_response(query, chunks[:1]) == stock.get_response(query, chunks[:1])


def test_settings_llm_in_a_vector_index_query_engine(url: str, chunks: list[str]) -> None:
    llm = parrot(url, REFINE_WINDOW)
    saved = Settings._llm, Settings._embed_model
    Settings.llm, Settings.embed_model = llm, MiniLMEmbedding()
    try:
        index = VectorStoreIndex.from_documents([Document(text=c) for c in chunks[:6]])
        stock = index.as_query_engine(similarity_top_k=3).query("What is measured?")
        engine = index.as_query_engine(
            similarity_top_k=3, response_synthesizer=get_response_synthesizer(streaming=True)
        )
        streamed = engine.query("What is measured?")
        assert "".join(streamed.response_gen) == str(stock)
        assert [n.node.node_id for n in streamed.source_nodes] == [
            n.node.node_id for n in stock.source_nodes
        ]
    finally:
        Settings._llm, Settings._embed_model = saved


class EventNames(BaseEventHandler):
    """The names of the instrumentation events dispatched while it is installed."""

    names: list[str] = []

    @classmethod
    def class_name(cls) -> str:
        return "EventNames"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.names.append(type(event).__name__)


@contextmanager
def observed(llm: LLM) -> Iterator[tuple[TokenCountingHandler, LlamaDebugHandler, list[str]]]:
    """Token counts, callback event pairs and instrumentation events of `llm`'s calls."""
    counter = TokenCountingHandler(tokenizer=str.split)  # (tiktoken's tables are not offline)
    debug = LlamaDebugHandler()
    llm.callback_manager = CallbackManager([counter, debug])
    names = EventNames(names=[])
    root = get_dispatcher()
    root.add_event_handler(names)
    try:
        yield counter, debug, names.names
    finally:
        root.event_handlers.remove(names)
        llm.callback_manager = CallbackManager([])


def calls_seen(
    counter: TokenCountingHandler, debug: LlamaDebugHandler
) -> list[tuple[str, str, int, int]]:
    """Per LLM call: its prompt, completion and token counts (the server's, when the LLM
    reports usage as OpenAI's do; else the counter's own tokenizer's)."""
    pairs = debug.get_event_pairs(CBEventType.LLM)
    assert len(pairs) == len(counter.llm_token_counts)
    assert all(c.prompt_token_count > 0 for c in counter.llm_token_counts)
    return [(c.prompt, c.completion, c.prompt_token_count, c.completion_token_count)
            for c in counter.llm_token_counts]  # fmt: skip


def squeezed(names: list[str]) -> list[str]:
    """Runs of one event collapsed (streams send their chunks in different pieces)."""
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


async def test_predict_family_dispatches_the_stock_events(url: str) -> None:
    llm = Parrot(base_url=url, max_tokens=MAX_TOKENS, system_prompt="You answer.")
    prompt = PromptTemplate("Topic: {topic}\nAnswer: ")
    stock = LLM  # the stock methods on the same LLM: they call its `complete`
    runs = {
        "predict": (lambda: llm.predict(prompt, topic="cars"),
                    lambda: stock.predict(llm, prompt, topic="cars")),
        "stream": (lambda: "".join(llm.stream(prompt, topic="cars")),
                   lambda: "".join(stock.stream(llm, prompt, topic="cars"))),
    }  # fmt: skip
    for name, (ours, theirs) in runs.items():
        seen = []
        for run in (ours, theirs):
            with observed(llm) as (counter, debug, names):
                answer = run()
            seen.append((answer, calls_seen(counter, debug), squeezed(names)))
            assert len(debug.get_event_pairs(CBEventType.TEMPLATING)) == 1
        assert seen[0] == seen[1], name
        assert len(seen[0][1]) == 1 and "LLMPredictStartEvent" in seen[0][2]
    with observed(llm) as (counter, debug, names):
        got = await asyncio.gather(*(llm.apredict(prompt, topic=t) for t in ("ants", "bees")))
        tokens = "".join([t async for t in await llm.astream(prompt, topic="ants")])
    with observed(llm) as (stock_counter, stock_debug, stock_names):
        expected = [await stock.apredict(llm, prompt, topic=t) for t in ("ants", "bees")]
        stock_tokens = await stock.astream(llm, prompt, topic="ants")
        assert tokens == "".join([t async for t in stock_tokens])
    assert got == expected
    assert calls_seen(counter, debug) == calls_seen(stock_counter, stock_debug)
    assert sorted(squeezed(names)) == sorted(squeezed(stock_names))


async def test_synthesizer_graph_calls_are_each_reported(url: str, chunks: list[str]) -> None:
    query = "What is it about?"
    for mode, window in (("tree_summarize", TREE_WINDOW), ("compact", REFINE_WINDOW)):
        llm = parrot(url, window)
        stock_llm = openai_like(url, llm, window)
        ours = get_response_synthesizer(llm=llm, response_mode=mode)
        stock = get_stock_synthesizer(llm=stock_llm, response_mode=mode)
        with observed(stock_llm) as (counter, debug, names):
            expected = stock.get_response(query, chunks[:6])
        stock_calls = calls_seen(counter, debug)
        assert len(stock_calls) >= 2  # a graph of several calls
        with observed(llm) as (counter, debug, names):
            assert ours.get_response(query, chunks[:6]) == expected
        assert calls_seen(counter, debug) == stock_calls, mode  # the server's token counts too
        assert names.count("LLMPredictStartEvent") == len(stock_calls)
        assert names.count("LLMCompletionEndEvent") == len(stock_calls)
        with observed(llm) as (counter, debug, names):
            assert await ours.aget_response(query, chunks[:6]) == expected
        assert calls_seen(counter, debug) == stock_calls, mode  # the server's token counts too
    streaming = get_response_synthesizer(llm=llm, response_mode="refine", streaming=True)
    stock_stream = Refine(llm=stock_llm, streaming=True)
    with observed(stock_llm) as (counter, debug, names):
        expected = "".join(stock_stream.get_response(query, chunks[:3]))
    stock_calls = calls_seen(counter, debug)
    with observed(llm) as (counter, debug, names):
        assert "".join(streaming.get_response(query, chunks[:3])) == expected
    # a stream has no usage from OpenAILike (the counter counts itself); ours has the server's
    assert [c[:2] for c in calls_seen(counter, debug)] == [c[:2] for c in stock_calls]
