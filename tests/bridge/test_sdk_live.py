"""The SDK against a live server with a tiny random model."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import parrot_bridge as P
from server.engine import LLMEngine, SamplingParams
from server.engine.grammar import compiled_grammar
from server.launcher import ServerProcess
from tests.server.http_client import metrics, request, requests_except_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("sdk") / "server.log"
    with ServerProcess(tiny_llama_path, log_path=log) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def engine(tiny_llama_path: Path) -> LLMEngine:
    return LLMEngine.from_pretrained(str(tiny_llama_path))


def greedy(engine: LLMEngine, text: str, max_tokens: int) -> str:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0)
    return engine.generate([engine.tokenizer.encode(text)], sampling)[0].text


@P.semantic_function(max_tokens=8, temperature=0)
def outline(topic):
    """Write an outline about {{input:topic}}.
    Outline:{{output:outline}}"""


@P.semantic_function(max_tokens=8, temperature=0)
def draft(outline):
    """Expand this outline into a paragraph: {{input:outline}}
    Paragraph:{{output:paragraph}}"""


@P.semantic_function(max_tokens=8, temperature=0)
def title(paragraph):
    """Give a title to: {{input:paragraph}}
    Title:{{output:title}}"""


def test_chain_is_one_submission_and_one_read(url: str, engine: LLMEngine) -> None:
    with P.Session(url) as session:
        before = metrics(url)
        result = title(draft(outline("parrots")))
        assert requests_except_metrics(metrics(url)) == requests_except_metrics(before)
        value = result.get()
        after = metrics(url)
        assert session.id is not None
    assert requests_except_metrics(after) - requests_except_metrics(before) == 2
    sub = "parrot_graph_submissions_total"
    assert after[sub] - before[sub] == 1
    a = greedy(engine, "Write an outline about parrots.\nOutline:", 8)
    b = greedy(engine, f"Expand this outline into a paragraph: {a}\nParagraph:", 8)
    c = greedy(engine, f"Give a title to: {b}\nTitle:", 8)
    assert value == c


def test_later_calls_extend_the_graph_and_values_are_cached(url: str, engine: LLMEngine) -> None:
    with P.Session(url):
        first = outline("cars")
        assert first.get() == greedy(engine, "Write an outline about cars.\nOutline:", 8)
        before = metrics(url)
        second = draft(first)  # reads a variable the server already holds
        assert second.get(criteria="throughput") == greedy(
            engine, f"Expand this outline into a paragraph: {first.get()}\nParagraph:", 8
        )
        assert first.get() == first.value  # known now: no request
        after = metrics(url)
    assert requests_except_metrics(after) - requests_except_metrics(before) == 2
    # the criterion reached the server: the draft ran as bulk work, not latency-critical
    started = 'parrot_calls_started_total{{engine="0",priority="{}"}}'
    assert [after.get(started.format(p), 0) - before.get(started.format(p), 0)
            for p in range(3)] == [0, 0, 1]  # fmt: skip


def test_a_value_from_a_closed_session_feeds_another(url: str, engine: LLMEngine) -> None:
    with P.Session(url):
        first = outline("boats")
        first.get()
    with P.Session(url):
        second = draft(first)  # the first session is closed: its value travels as text
        assert second.get() == greedy(
            engine, f"Expand this outline into a paragraph: {first.value}\nParagraph:", 8
        )


def test_flush_then_stream_and_inputs_set_before_flush(url: str, engine: LLMEngine) -> None:
    topic = P.variable(name="topic")
    with P.Session(url) as session:
        result = outline(topic)
        topic.set("boats")
        session.flush()
        chunks = list(result.stream())
    prompt = engine.tokenizer.encode("Write an outline about boats.\nOutline:")
    ref = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0))[0]
    assert "".join(chunks) == ref.text and result.value == ref.text
    usage = dict(result.usage or {})
    assert 0 <= usage.pop("prompt_tokens_details")["cached_tokens"] < len(prompt)
    assert usage == {"prompt_tokens": len(prompt), "completion_tokens": len(ref.token_ids),
                     "total_tokens": len(prompt) + len(ref.token_ids)}  # fmt: skip
    assert result.finish_reason == ref.finish_reason and topic.usage is None


async def test_async_session_aget_and_astream(url: str, engine: LLMEngine) -> None:
    async with P.Session(url):
        a, b = outline("trains"), outline("planes")
        values = await asyncio.gather(a.aget(), b.aget(criteria="throughput"))
        chunks = [c async for c in draft(a).astream()]
    assert values == [
        greedy(engine, "Write an outline about trains.\nOutline:", 8),
        greedy(engine, "Write an outline about planes.\nOutline:", 8),
    ]
    assert "".join(chunks) == greedy(
        engine, f"Expand this outline into a paragraph: {values[0]}\nParagraph:", 8
    )


def test_threads_share_a_session(url: str, engine: LLMEngine) -> None:
    topics = ["ants", "bees", "cats", "dogs"]
    with P.Session(url) as session:
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda t: outline.invoke(session, t).get(), topics))
    assert got == [greedy(engine, f"Write an outline about {t}.\nOutline:", 8) for t in topics]


@P.semantic_function(max_tokens=8, temperature=0)
def relate(topic, note, answer=None):
    """Relate {{input:topic}} to {{input:note}}:{{output:answer}}"""


def test_server_errors_become_exceptions_and_the_session_goes_on(
    url: str, engine: LLMEngine
) -> None:
    with P.Session(url) as session:
        note = P.variable(name="note")
        first = relate("hello", note)
        relate("hello", first, answer=note)  # a cycle: the server rejects the submission
        with pytest.raises(P.ParrotError, match=r"cycle: call .* reads .*") as e:
            session.flush()
        assert e.value.status == 400 and e.value.code == "cycle"
        assert e.value.request_id.startswith("req_")  # the server's log line names it
        with pytest.raises(P.ParrotError, match="cycle"):
            first.get()  # the failed submission is remembered
        # its input strings were not sent: later calls declare them again
        assert outline("hello").get() == greedy(
            engine, "Write an outline about hello.\nOutline:", 8
        )
        with pytest.raises(P.ParrotError, match="which has no value: cycle"):
            draft(first)


def test_inputs_set_after_a_flush(url: str, engine: LLMEngine) -> None:
    """The calls reading an unset variable go with the flush and wait on the server; `set()`
    sends the value there and they run."""
    topic = P.variable(name="topic")
    with P.Session(url) as session:
        result = outline(topic)
        later = draft(result)
        other = outline("ships")
        before = metrics(url)
        session.flush()  # all three calls; the two reading `topic` wait on the server
        assert metrics(url)["parrot_graph_submissions_total"] == (
            before["parrot_graph_submissions_total"] + 1
        )
        info = server_session(url, session)
        assert info["calls"]["waiting"] == 2 and info["variables"] == 5
        with pytest.raises(
            P.ParrotError, match=r"timed out after 0.3 s .*waits on variable '.*' \(topic\), "
            r"which the client has not set \(PUT /v1/sessions/.*/variables/"
        ):  # fmt: skip
            later.get(timeout=0.3)
        assert other.get() == greedy(engine, "Write an outline about ships.\nOutline:", 8)
        topic.set("boats")
        chunks = list(later.stream())
        value = result.get()
        after = metrics(url)
    expected = greedy(engine, "Write an outline about boats.\nOutline:", 8)
    assert value == expected
    assert "".join(chunks) == greedy(
        engine, f"Expand this outline into a paragraph: {expected}\nParagraph:", 8
    )
    sub = "parrot_graph_submissions_total"
    assert after[sub] - before[sub] == 1  # the set sent a value, not the calls again


async def test_aset_after_an_aflush_releases_the_calls(url: str, engine: LLMEngine) -> None:
    topic = P.variable(name="topic")
    async with P.Session(url) as session:
        result = outline(topic)
        await session.aflush()
        await topic.aset("kites")
        assert await result.aget(timeout=60) == greedy(
            engine, "Write an outline about kites.\nOutline:", 8
        )


def test_setting_a_variable_the_server_has_a_value_for_raises_its_message(url: str) -> None:
    topic = P.variable(name="topic")
    with P.Session(url) as session:
        outline(topic)
        session.flush()
        path = f"{url}/v1/sessions/{session.id}/variables/{topic.id}"
        status, _ = request("PUT", path, {"value": "elsewhere"}, session._transport.token)
        assert status == 200  # set by another client of the session
        with pytest.raises(P.ParrotError, match=r"variable '.*' \(topic\) already has a value"):
            topic.set("here")
        assert topic.value is None


def server_session(url: str, session: P.Session) -> dict:
    status, info = request("GET", f"{url}/v1/sessions/{session.id}", token=session._transport.token)
    assert status == 200, info
    return info


def test_failed_calls_raise_call_failed_downstream(url: str) -> None:
    huge = Path(__file__).resolve().parents[2].parent / "shared/data/arxiv-march-2023/article_1.txt"
    with P.Session(url):
        first = outline(huge.read_text()[:6000])
        second = draft(first)
        with pytest.raises(P.CallFailedError, match="upstream call .*its prompt has") as got:
            second.get()
        with pytest.raises(P.CallFailedError, match="prompt has") as streamed:
            list(first.stream())
    for err in (got.value, streamed.value):  # told apart from other errors the same way
        assert (err.type, err.code) == ("call_failed", "call_failed")


def test_unreachable_server_and_closed_session(url: str) -> None:
    with pytest.raises(P.ParrotError, match="cannot reach the Parrot server"):
        P.Session("http://127.0.0.1:9").open()
    session = P.Session(url).open()
    session.close()
    with pytest.raises(P.ParrotError, match="is closed"):
        outline.invoke(session, "x")


PET = {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]},
       "ok": {"type": "boolean"}}, "required": ["kind", "ok"]}  # fmt: skip


@P.semantic_function(max_tokens=40, temperature=0, json_schema=PET)
def pet(text):
    """Describe {{input:text}} as JSON: {{output:pet}}
    Done."""


@P.semantic_function(max_tokens=8, temperature=0, choices=["yes", "no"])
def verdict(pet):
    """Is this a cat? {{input:pet}}
    Answer:{{output:verdict}}"""


@P.semantic_function(max_tokens=10, temperature=0, regex=r"\d{1,3} (cats|dogs)")
def count(text):
    """How many pets in {{input:text}}? {{output:n}}
    That is all."""


YES_NO = 'root ::= ("yes" | "no") " " [0-9]{1,2}'


@P.semantic_function(max_tokens=10, temperature=0, grammar=YES_NO)
def answer_with_number(text):
    """Answer yes or no, then a number: {{input:text}}? {{output:a}}
    That is all."""


@P.semantic_function(grammar='root ::= "yes" | no')
def misspoken(text):
    """{{input:text}}{{output:out}}"""


def test_constrained_outputs_follow_their_schema_and_choices(url: str, engine: LLMEngine):
    """Semantic calls take a JSON schema, choices, a regex or a grammar; the text after an output
    marker is then no stop string (the constraint ends the output), and the answers equal the
    engine's; a schema or grammar that cannot be followed is a 400."""
    with P.Session(url):
        described = pet("my old tabby")
        answer = verdict(described)
        text, said = described.get(), answer.get()
    json_sampling = SamplingParams(max_tokens=40, temperature=0, json_object=True,
                                   json_schema=PET)  # fmt: skip
    prompt = "Describe my old tabby as JSON: "
    ref = engine.generate([engine.tokenizer.encode(prompt)], json_sampling)[0]
    assert text == ref.text
    if ref.finish_reason == "stop":
        assert json.loads(text)["kind"] in ("cat", "dog")
    choice = SamplingParams(max_tokens=8, temperature=0, choices=["yes", "no"])
    asked = f"Is this a cat? {text}\nAnswer:"
    assert said == engine.generate([engine.tokenizer.encode(asked)], choice)[0].text
    assert said in ("yes", "no")
    with P.Session(url):
        counted = count("my house").get()
    pattern = SamplingParams(max_tokens=10, temperature=0, regex=r"\d{1,3} (cats|dogs)")
    asked = "How many pets in my house? "
    assert counted == engine.generate([engine.tokenizer.encode(asked)], pattern)[0].text
    with P.Session(url):
        answered = answer_with_number("is the sky green")
        said = answered.get()
    grammar = SamplingParams(max_tokens=10, temperature=0, grammar=YES_NO)
    asked = "Answer yes or no, then a number: is the sky green? "
    ref = engine.generate([engine.tokenizer.encode(asked)], grammar)[0]
    assert said == ref.text and answered.finish_reason == ref.finish_reason
    # "That is all." does not stop it: the grammar ends it, complete, or max_tokens mid-way
    if ref.finish_reason == "stop":
        assert re.fullmatch(r"(yes|no) [0-9]{1,2}", said), said
    else:
        assert compiled_grammar(YES_NO).start().feed_all(said.encode()), said
    with P.Session(url):  # what the server cannot follow fails that call alone
        with pytest.raises(P.CallFailedError, match="the rule 'no' is used but not defined") as e:
            misspoken("x").get()
        assert "(misspoken) failed: invalid sampling" in str(e.value)
    with P.Session(url):
        with pytest.raises(P.CallFailedError, match="multipleOf cannot be enforced"):
            patterned("x").get()


@P.semantic_function(json_schema={"type": "object", "properties": {
    "n": {"type": "integer", "multipleOf": 3}}})  # fmt: skip
def patterned(text):
    """{{input:text}}{{output:out}}"""


@P.semantic_function(max_tokens=12, temperature=0, repetition_penalty=1.5)
def repeat_less(text):
    """Say {{input:text}} again and again:{{output:said}}"""


def test_semantic_calls_take_min_p_and_repetition_penalty(url: str, engine: LLMEngine):
    with P.Session(url):
        said = repeat_less("parrot").get()
    prompt = "Say parrot again and again:"
    sampling = SamplingParams(max_tokens=12, temperature=0, repetition_penalty=1.5)
    assert said == engine.generate([engine.tokenizer.encode(prompt)], sampling)[0].text
    assert said != greedy(engine, prompt, 12)  # the penalty changed the answer
    with pytest.raises(ValueError, match="min_p"):
        P.semantic_function(min_p=2)

