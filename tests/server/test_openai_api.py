"""The OpenAI-compatible API, driven by the official `openai` client and LangChain's ChatOpenAI."""

from __future__ import annotations

import time

import openai
import pytest

from server.engine import LLMEngine, SamplingParams
from tests.server.http_client import idle_metrics, metrics, request
from tests.server.test_tool_calls import WEATHER

pytestmark = pytest.mark.slow


def greedy(engine: LLMEngine, text: str, max_tokens: int, stop: list[str] | None = None):
    ids = engine.tokenizer.encode(text)
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0, stop=stop or [])
    return engine.generate([ids], sampling)[0]


def chat_text(engine: LLMEngine, messages: list[dict]) -> str:
    return engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_completion_equals_a_greedy_engine_run(client: openai.OpenAI, engine: LLMEngine) -> None:
    prompt = "The parrot said"
    done = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
    ref = greedy(engine, prompt, 10)
    assert done.choices[0].text == ref.text
    assert done.choices[0].finish_reason == ("length" if ref.finish_reason == "length" else "stop")
    n_prompt = len(engine.tokenizer.encode(prompt))
    assert done.usage.prompt_tokens == n_prompt
    assert done.usage.completion_tokens == len(ref.token_ids)
    assert done.usage.total_tokens == n_prompt + len(ref.token_ids)


def test_completion_stop_and_seed(client: openai.OpenAI, engine: LLMEngine) -> None:
    full = greedy(engine, "Numbers:", 12).text
    stop = full[3:5]
    done = client.completions.create(
        model="tiny", prompt="Numbers:", max_tokens=12, temperature=0, stop=[stop]
    )
    assert done.choices[0].text == full[: full.index(stop)]
    assert done.choices[0].finish_reason == "stop"
    sampled = [
        client.completions.create(
            model="tiny", prompt="Numbers:", max_tokens=12, temperature=1.0, top_p=0.9, seed=7
        )
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def test_a_choice_names_the_stop_that_ended_it(client: openai.OpenAI) -> None:
    """vLLM's stop_reason, streamed and not: the request's stop string or stop token id that
    ended the choice; null for a length cut (and EOS) and for a tool call (see
    test_openai_inputs for the server's own stops)."""
    user = [{"role": "user", "content": "Count."}]
    kw = {"model": "tiny", "max_tokens": 12, "temperature": 0}

    def reasons(completion: dict, chat: dict) -> list[object]:
        """stop_reason of the completion and the chat answer, unstreamed then streamed, with
        `completion` and `chat` in their bodies."""
        done = [client.completions.create(prompt="Numbers:", **kw, extra_body=completion),
                client.chat.completions.create(messages=user, **kw, extra_body=chat)]
        streamed = [
            list(client.completions.create(prompt="Numbers:", **kw, extra_body=completion,
                                           stream=True))[-1],
            list(client.chat.completions.create(messages=user, **kw, extra_body=chat,
                                                stream=True))[-1],
        ]  # fmt: skip
        return [c.choices[0].model_extra["stop_reason"] for c in done + streamed]

    assert reasons({}, {}) == [None] * 4  # cut by length
    with_ids = {"return_token_ids": True}
    texts = [client.completions.create(prompt="Numbers:", **kw).choices[0].text,
             client.chat.completions.create(messages=user, **kw).choices[0].message.content]
    ids = [client.completions.create(prompt="Numbers:", **kw, extra_body=with_ids),
           client.chat.completions.create(messages=user, **kw, extra_body=with_ids)]
    ids = [c.choices[0].model_extra["token_ids"] for c in ids]
    stops = [next(t[i : i + 2] for i in range(3, len(t) - 2) if t[i : i + 2].strip())
             for t in texts]  # fmt: skip
    assert reasons({"stop": ["\x00no", stops[0]]}, {"stop": stops[1]}) == stops * 2
    assert reasons({"stop_token_ids": [ids[0][4]]},
                   {"stop_token_ids": [ids[1][4]]}) == [ids[0][4], ids[1][4]] * 2  # fmt: skip
    # a required call that test_openai_tools knows to close
    call = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER, {"type": "function", "function": {"name": "now",
                                                          "description": "The time"}}],
        tool_choice="required", max_tokens=64, temperature=0,
    )  # fmt: skip
    assert call.choices[0].finish_reason == "tool_calls"
    assert call.choices[0].model_extra["stop_reason"] is None


def test_chat_and_streaming_chat(client: openai.OpenAI, engine: LLMEngine) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a bird."},
    ]
    ref = greedy(engine, chat_text(engine, messages), 12)
    done = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=12, temperature=0
    )
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == ref.text
    assert done.usage.completion_tokens == len(ref.token_ids)
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ref.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == len(ref.token_ids)


def test_continuous_usage_stats_give_every_chunk_its_choices_usage(
    client: openai.OpenAI, engine: LLMEngine
) -> None:
    """vLLM's and SGLang's `stream_options.continuous_usage_stats` (ignored before): with
    include_usage, every chunk carries the usage of its choice so far; the last, the whole."""
    messages = [{"role": "user", "content": "Name a bird."}]
    ref = greedy(engine, chat_text(engine, messages), 8)
    prompt_tokens = len(engine.tokenizer.encode(chat_text(engine, messages)))
    options = {"include_usage": True, "continuous_usage_stats": True}
    chunks = list(client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0, n=2, stream=True,
        stream_options=options))  # fmt: skip
    for index in (0, 1):
        mine = [c for c in chunks if c.choices and c.choices[0].index == index]
        counts = [c.usage.completion_tokens for c in mine]
        assert counts[0] == 0 and counts == sorted(counts) and counts[-1] == len(ref.token_ids)
        assert {c.usage.prompt_tokens for c in mine} == {prompt_tokens}
        assert all(c.usage.total_tokens == prompt_tokens + c.usage.completion_tokens
                   for c in mine)  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2 * len(ref.token_ids)
    ref = greedy(engine, "Once upon", 6)
    chunks = list(client.completions.create(model="tiny", prompt="Once upon", max_tokens=6,
                                            temperature=0, stream=True, stream_options=options))  # fmt: skip
    counts = [c.usage.completion_tokens for c in chunks if c.choices]
    assert counts == sorted(counts) and counts[-1] == len(ref.token_ids) and counts[0] > 0
    # without include_usage, or without the flag, chunks carry none
    for options in ({"continuous_usage_stats": True}, {"include_usage": True}):
        chunks = list(client.completions.create(model="tiny", prompt="Once upon", max_tokens=3,
                                                stream=True, stream_options=options))  # fmt: skip
        assert all(c.usage is None for c in chunks if c.choices)


def test_streaming_completion(client: openai.OpenAI, engine: LLMEngine) -> None:
    ref = greedy(engine, "Once upon", 10)
    chunks = list(
        client.completions.create(
            model="tiny", prompt="Once upon", max_tokens=10, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == ref.text


def test_n_samples_share_the_prompt_and_follow_their_seeds(
    server: str, client: openai.OpenAI, engine: LLMEngine
) -> None:
    prompt = "A parrot can say many words, such as"
    n_prompt = len(engine.tokenizer.encode(prompt))
    ref = greedy(engine, prompt, 8)
    before = metrics(server)["parrot_prefill_tokens_total"]
    done = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, n=3)
    prefilled = metrics(server)["parrot_prefill_tokens_total"] - before
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert all(c.text == ref.text for c in done.choices)
    assert done.usage.prompt_tokens == n_prompt
    assert done.usage.completion_tokens == 3 * len(ref.token_ids)
    # the prompt is computed once (all but its last token); each sample computes that token
    assert prefilled <= n_prompt + 2
    # with a seed, sample i is the one-sample request with seed + i
    kwargs = {"model": "tiny", "max_tokens": 10, "temperature": 1.0}
    many = client.completions.create(prompt=prompt, n=3, seed=11, **kwargs)
    one = [client.completions.create(prompt=prompt, seed=11 + i, **kwargs) for i in range(3)]
    assert [c.text for c in many.choices] == [o.choices[0].text for o in one]
    assert len({c.text for c in many.choices}) > 1
    # two prompts x two samples: by prompt, then by sample
    two = client.completions.create(model="tiny", prompt=[prompt, "Once upon"], max_tokens=4,
                                    temperature=0, n=2)  # fmt: skip
    texts = [c.text for c in two.choices]
    assert texts == [greedy(engine, prompt, 4).text] * 2 + [greedy(engine, "Once upon", 4).text] * 2


def test_samples_of_a_long_prompt_decode_over_one_shared_level(
    server: str, client: openai.OpenAI, engine: LLMEngine
) -> None:
    """8 greedy samples of a ~700-token prompt: the engine's own cost rule plans a shared-prefix
    level over the forks (the metric counts the reads it saved), and every sample still equals
    the one-by-one greedy run."""
    words = "parrot macaw cockatoo budgie lorikeet kakapo conure amazon".split()
    prompt = " ".join(words[(i * 5) % len(words)] + str(i % 7) for i in range(120))
    n_prompt = len(engine.tokenizer.encode(prompt))
    assert 600 <= n_prompt <= 1000, n_prompt
    ref = greedy(engine, prompt, 6)
    before = metrics(server)["parrot_cascade_saved_tokens_total"]
    done = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, n=8)
    saved = metrics(server)["parrot_cascade_saved_tokens_total"] - before
    assert [c.text for c in done.choices] == [ref.text] * 8
    # 7 forks' worth of the prompt's full blocks, once per decode step after the first
    assert saved >= 7 * (n_prompt // 2)


def test_n_samples_stream_with_their_indices(client: openai.OpenAI, engine: LLMEngine) -> None:
    messages = [{"role": "user", "content": "Name a bird."}]
    ref = greedy(engine, chat_text(engine, messages), 10)
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=10, temperature=0, n=2, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == ref.text
        assert [c.finish_reason for c in mine if c.finish_reason] == [mine[-1].finish_reason]
    assert chunks[-1].usage.completion_tokens == 2 * len(ref.token_ids)
    done = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                          temperature=0, n=2)  # fmt: skip
    assert [c.message.content for c in done.choices] == [ref.text] * 2
    stream = client.completions.create(model="tiny", prompt="Once upon", max_tokens=6,
                                       temperature=0, n=2, stream=True)  # fmt: skip
    texts = ["", ""]
    for c in stream:
        texts[c.choices[0].index] += c.choices[0].text
    assert texts == [greedy(engine, "Once upon", 6).text] * 2


def test_abandoned_samples_free_their_kv(server: str, client: openai.OpenAI) -> None:
    # ignore_eos: the samples would run their 3 x 1000 tokens unless the server stops them (a
    # random model's early EOS would free the blocks even if the abort were lost)
    before = metrics(server)["parrot_generated_tokens_total"]
    stream = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=1000,
                                       temperature=0, n=3, stream=True,
                                       extra_body={"ignore_eos": True})  # fmt: skip
    for k, _ in enumerate(stream):
        if k >= 2:
            break
    stream.close()
    m = idle_metrics(server, timeout_s=20)
    assert m["parrot_kv_free_blocks"] == m["parrot_kv_total_blocks"]
    # aborted, not run to the end (half the 3 x 1000: room for a slow machine to notice)
    assert m["parrot_generated_tokens_total"] - before < 1500


def test_a_client_that_hangs_up_stops_its_non_streamed_request(server: str) -> None:
    url = f"{server}/v1/completions"
    # sampled and seeded: the same ~3 s of work each time, the random model stopping at random
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 1000, "n": 64,
            "temperature": 1.0, "seed": 1}  # fmt: skip
    status, done = request("POST", url, body)
    assert status == 200
    whole = done["usage"]["completion_tokens"]
    before = metrics(server)["parrot_generated_tokens_total"]
    with pytest.raises(OSError):  # the client's timeout: it closes the connection
        request("POST", url, body, timeout=0.3)
    m = idle_metrics(server, timeout_s=20)
    assert m["parrot_kv_free_blocks"] == m["parrot_kv_total_blocks"]
    assert m["parrot_generated_tokens_total"] - before < 0.6 * whole  # aborted, not finished
    status, _ = request("POST", url, {"model": "tiny", "prompt": "still", "max_tokens": 2})
    assert status == 200


def test_a_client_that_hangs_up_mid_body_is_no_server_error(server: str) -> None:
    """A body cut short by the client's hang-up is the client's doing: counted as 499 (what
    nginx calls "client closed request"), never as a 500."""
    import socket
    from urllib.parse import urlsplit

    def status_counts() -> tuple[float, float]:
        m = metrics(server)
        count = lambda code: sum(  # noqa: E731
            v for k, v in m.items() if k.startswith("parrot_http_requests_total") and
            f'status="{code}"' in k
        )  # fmt: skip
        return count(500), count(499)

    errors_before, gone_before = status_counts()
    host, port = urlsplit(server).hostname, urlsplit(server).port
    for path in ("/v1/completions", "/v1/chat/completions"):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 1000\r\n\r\n{\"model\": \"tiny\"".encode()
            )
    deadline = time.monotonic() + 10
    while status_counts()[1] < gone_before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    errors, gone = status_counts()
    assert (errors - errors_before, gone - gone_before) == (0, 2)


def test_a_body_that_is_not_in_its_content_encoding_is_a_400(server: str) -> None:
    """Found by fuzzing: a body that its Content-Encoding header does not describe could not be
    decoded, a 500; a body that is what its header says is read."""
    import gzip
    import json
    import urllib.error
    import urllib.request

    body = json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 1}).encode()

    def post(data: bytes, encoding: str) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
        req = urllib.request.Request(f"{server}/v1/completions", data, headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    assert post(gzip.compress(body), "gzip")[0] == 200
    for encoding in ("gzip", "deflate"):
        status, answer = post(body, encoding)
        assert status == 400 and answer["error"]["code"] == "invalid_body_encoding", answer
        assert f"Content-Encoding: {encoding}" in answer["error"]["message"], answer


def test_chat_openai_in_an_lcel_chain(server: str, engine: LLMEngine) -> None:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=server + "/v1", api_key="unused", model="tiny", temperature=0, max_tokens=8
    )
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "Topic: {t}")])
    chain = prompt | llm | StrOutputParser()
    expected = {
        t: greedy(
            engine,
            chat_text(engine, [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": f"Topic: {t}"}]),
            8,
        ).text
        for t in ("cars", "birds")
    }  # fmt: skip
    assert chain.invoke({"t": "cars"}) == expected["cars"]
    assert chain.batch([{"t": "cars"}, {"t": "birds"}]) == [expected["cars"], expected["birds"]]
    assert "".join(chain.stream({"t": "birds"})) == expected["birds"]
    # ChatOpenAI's logprobs and penalties reach the server and come back in its metadata
    scored = llm.bind(logprobs=True, top_logprobs=2, frequency_penalty=0.5).invoke("Topic: cars")
    content = scored.response_metadata["logprobs"]["content"]
    raw = bytes(b for t in content for b in t["bytes"])
    assert raw.decode("utf-8", errors="replace") == scored.content
    assert all(len(t["top_logprobs"]) == 2 for t in content)


def test_completion_logprobs_and_penalties(client: openai.OpenAI, engine: LLMEngine) -> None:
    """logprobs=N: per token its text, logprob, offset and the N most likely alternatives (the
    sampled one always among them), as the engine computes them; penalties reach the engine;
    streamed chunks carry the logprobs of their tokens."""
    prompt, settings = "The parrot said", {"presence_penalty": 0.5, "frequency_penalty": 1.0}
    ids = engine.tokenizer.encode(prompt)
    sampling = SamplingParams(max_tokens=10, temperature=0, logprobs=2, **settings)
    (ref,) = engine.generate([ids], sampling)
    done = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=10, temperature=0, logprobs=2, **settings
    )
    choice = done.choices[0]
    assert choice.text == ref.text
    lp = choice.logprobs
    assert len(lp.tokens) == len(ref.token_ids)
    assert lp.token_logprobs == pytest.approx([e.logprob for e in ref.logprobs], abs=1e-4)
    # where each token's text starts in the choice's text: a token holding part of a character
    # (shown as escapes, this random model makes many) adds text only with the one completing it
    offsets = lp.text_offset
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] <= len(choice.text)
    assert any("\\x" in t for t in lp.tokens)  # the case that used to drift
    checked = 0
    for i, (token, offset) in enumerate(zip(lp.tokens, offsets, strict=True)):
        # a whole token after whole tokens (no part of a character pending before it)
        if "\\x" not in token and (i == 0 or "\\x" not in lp.tokens[i - 1]):
            assert choice.text[offset : offset + len(token)] == token
            checked += 1
    assert checked > 0
    for token, top, entry in zip(lp.tokens, lp.top_logprobs, ref.logprobs, strict=True):
        assert token in top and 2 <= len(top) <= 3
        assert max(top.values()) == pytest.approx(entry.top[0][1], abs=1e-4)
    plain = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
    assert plain.choices[0].logprobs is None
    chunks = list(
        client.completions.create(
            model="tiny", prompt=prompt, max_tokens=10, temperature=0, logprobs=2, stream=True,
            **settings,
        )
    )  # fmt: skip
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.token_logprobs]  # fmt: skip
    assert streamed == pytest.approx(lp.token_logprobs, abs=1e-6)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref.text


def test_echo_scores_the_prompt(client: openai.OpenAI, engine: LLMEngine) -> None:
    """echo=true with logprobs: the prompt leads the text and its tokens are scored by the
    model (the first has none); max_tokens=0 returns the prompt alone, as evaluation harnesses
    ask for it; streamed, the prompt comes first."""
    prompt = "The parrot said hello to the"
    ids = engine.tokenizer.encode(prompt)
    sampling = SamplingParams(max_tokens=5, temperature=0, logprobs=1, prompt_logprobs=1)
    (ref,) = engine.generate([ids], sampling)
    done = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=5, temperature=0, logprobs=1, echo=True
    )
    choice = done.choices[0]
    assert choice.text == prompt + ref.text
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) + len(ref.token_ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want = [e.logprob for e in ref.prompt_logprobs[1:]] + [e.logprob for e in ref.logprobs]
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-4)
    assert "".join(lp.tokens[: len(ids)]) == prompt
    assert done.usage.completion_tokens == len(ref.token_ids)
    scored = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=0, temperature=0, logprobs=1, echo=True
    )
    assert scored.choices[0].text == prompt
    assert scored.choices[0].logprobs.token_logprobs[1:] == pytest.approx(
        [e.logprob for e in ref.prompt_logprobs[1:]], abs=1e-4
    )
    assert scored.usage.completion_tokens == 0
    plain = client.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0,
                                      echo=True)  # fmt: skip
    assert plain.choices[0].text == prompt + ref.text and plain.choices[0].logprobs is None
    chunks = [c for c in client.completions.create(
        model="tiny", prompt=prompt, max_tokens=5, temperature=0, logprobs=1, echo=True,
        stream=True) if c.choices]  # fmt: skip
    assert chunks[0].choices[0].text == prompt
    assert "".join(c.choices[0].text for c in chunks) == prompt + ref.text
    streamed = [v for c in chunks if c.choices[0].logprobs
                for v in c.choices[0].logprobs.token_logprobs]  # fmt: skip
    assert streamed[0] is None and streamed[1:] == pytest.approx(want, abs=1e-6)
    only = [c for c in client.completions.create(
        model="tiny", prompt=prompt, max_tokens=0, echo=True, stream=True) if c.choices]
    assert "".join(c.choices[0].text for c in only) == prompt
    assert only[-1].choices[0].finish_reason == "length"


def test_an_echoed_prompts_offsets_place_its_special_tokens(
    client: openai.OpenAI, engine: LLMEngine
) -> None:
    """An echoed prompt is its tokens' text, special tokens' included (a text prompt as it was
    written, token ids decoded as vLLM does), and each token's text_offset is where its text
    starts in the choice's text, streamed or not."""
    prompt = "<|im_start|>user\nThe parrot<|im_end|>\n"
    ids = engine.tokenizer.encode(prompt)
    assert engine.tokenizer.decode(ids) != prompt  # the special tokens are there
    for asked in (prompt, ids):
        scored = client.completions.create(model="tiny", prompt=asked, max_tokens=0, echo=True,
                                           logprobs=1)  # fmt: skip
        text, lp = scored.choices[0].text, scored.choices[0].logprobs
        assert text == prompt and "".join(lp.tokens) == prompt
        placed = zip(lp.tokens, lp.text_offset, strict=True)
        assert [text[at : at + len(t)] for t, at in placed] == lp.tokens
        kw = {"model": "tiny", "prompt": asked, "max_tokens": 3, "temperature": 0, "echo": True,
              "logprobs": 1}  # fmt: skip
        done = client.completions.create(**kw).choices[0].logprobs.text_offset
        assert done[: len(ids)] == lp.text_offset and done[len(ids)] == len(prompt)
        streamed = [at for c in client.completions.create(**kw, stream=True)
                    if c.choices and c.choices[0].logprobs
                    for at in c.choices[0].logprobs.text_offset]  # fmt: skip
        assert streamed == done


def test_logit_bias_reaches_the_engine(client: openai.OpenAI, engine: LLMEngine) -> None:
    prompt, favoured = "The parrot said", 123
    done = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0,
                                     logit_bias={str(favoured): 100})  # fmt: skip
    ids = engine.tokenizer.encode(prompt)
    sampling = SamplingParams(max_tokens=6, temperature=0, logit_bias={favoured: 100.0})
    (ref,) = engine.generate([ids], sampling)
    assert done.choices[0].text == ref.text and ref.token_ids[0] == favoured
    plain = engine.generate([ids], SamplingParams(max_tokens=6, temperature=0))[0]
    assert plain.token_ids != ref.token_ids


def test_chat_logprobs(client: openai.OpenAI, engine: LLMEngine) -> None:
    """logprobs=true, top_logprobs=N: token objects with their UTF-8 bytes and alternatives,
    the same streamed or not."""
    messages = [{"role": "user", "content": "Name a bird."}]
    ids = engine.tokenizer.encode(chat_text(engine, messages))
    (ref,) = engine.generate([ids], SamplingParams(max_tokens=8, temperature=0, logprobs=3))
    done = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0, logprobs=True,
        top_logprobs=3,
    )  # fmt: skip
    content = done.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx([e.logprob for e in ref.logprobs], abs=1e-4)
    assert b"".join(bytes(c.bytes) for c in content) == b"".join(
        engine.tokenizer.token_bytes(t) for t in ref.token_ids
    )
    assert all(len(c.top_logprobs) == 3 for c in content)
    assert all(c.top_logprobs[0].logprob >= c.logprob - 1e-6 for c in content)
    chunks = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0, logprobs=True,
        top_logprobs=3, stream=True,
    )  # fmt: skip
    streamed = [t.logprob for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]  # fmt: skip
    assert streamed == pytest.approx([c.logprob for c in content], abs=1e-6)
    no = client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    assert no.choices[0].logprobs is None


def test_errors_have_openai_shape_and_the_server_goes_on(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4' does not exist"):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="n"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, n=129)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 1024 tokens"):
        client.completions.create(model="tiny", prompt="x", max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny", messages=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], temperature=-1
        )
    user = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client.chat.completions.create(model="tiny", messages=user, top_logprobs=2)
    with pytest.raises(openai.BadRequestError, match="from 0 to 20 for completions"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, logprobs=21)
    with pytest.raises(openai.BadRequestError, match="0 only with echo"):
        client.completions.create(model="tiny", prompt="x", max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="echo with logprobs takes n=1"):
        client.completions.create(model="tiny", prompt="x", echo=True, logprobs=1, n=2)
    with pytest.raises(openai.BadRequestError, match="suffix"):
        client.completions.create(model="tiny", prompt="x", suffix="y")
    with pytest.raises(openai.BadRequestError, match="frequency_penalty"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, frequency_penalty=3)
    with pytest.raises(openai.BadRequestError, match="stream_options is only allowed when"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       stream_options={"include_usage": True})  # fmt: skip
    # what the engine cannot honour is refused, not ignored
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(model="tiny", messages=user,
                                       response_format={"type": "grammar"})  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="best_of"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, best_of=3)
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        client.chat.completions.create(model="tiny", messages=user, tool_choice="required")
    with pytest.raises(openai.BadRequestError, match="not a token id"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2,
                                  logit_bias={"99999999": 5})  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="must be in \\[-100, 100\\]"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, logit_bias={"5": 200})
    status, body = request("POST", f"{client.base_url}completions", raw=b"[1, 2")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    # valid JSON, yet half a UTF-16 pair is no text: named, not a 500 from the tokenizer
    lone = b'{"model": "tiny", "prompt": "hi \\ud800", "max_tokens": 2}'
    status, body = request("POST", f"{client.base_url}completions", raw=lone)
    assert status == 400 and body["error"]["param"] == "prompt", body
    lone = b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udc00"}]}'
    status, body = request("POST", f"{client.base_url}chat/completions", raw=lone)
    assert status == 400 and body["error"]["param"] == "messages.0.content", body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    done = client.completions.create(model="tiny", prompt="still here", max_tokens=2)
    assert done.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"modalities": ["text", "audio"]}, "writes text only"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "no audio"),
        ({"web_search_options": {}}, "does not search the web"),  # {}: search, as OpenAI's
        ({"reasoning_effort": "low"}, "does not reason"),
        ({"verbosity": "low"}, 'only "medium"'),
        ({"moderation": {"model": "omni-moderation-latest"}}, "does not moderate"),
    ],
)  # fmt: skip
def test_what_the_model_cannot_give_is_a_400_naming_the_field(
    client: openai.OpenAI, fields: dict, says: str
) -> None:
    """OpenAI's fields that ask for audio, a web search, reasoning, moderation or another
    verbosity were taken and the answer came without them; OpenAI refuses them for a model
    that lacks them, and so does this server."""
    user = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny", messages=user, max_tokens=2,
                                       extra_body=fields)  # fmt: skip
    error = refused.value.body
    (name,) = fields
    assert error["param"] == name and f"{name} is not supported: " in error["message"], error
    assert says in error["message"], error


def test_fields_that_change_nothing_in_the_answer_are_taken(client: openai.OpenAI) -> None:
    user = [{"role": "user", "content": "x"}]
    plain = client.chat.completions.create(model="tiny", messages=user, max_tokens=4,
                                           temperature=0)  # fmt: skip
    taken = client.chat.completions.create(
        model="tiny", messages=user, max_tokens=4, temperature=0, modalities=["text"],
        reasoning_effort="none", verbosity="medium", store=False, metadata={"k": "v"},
        service_tier="auto", prediction={"type": "content", "content": "x"}, user="u",
        prompt_cache_key="k", safety_identifier="s",
    )  # fmt: skip
    assert taken.choices[0].message.content == plain.choices[0].message.content


def test_a_malformed_schema_is_a_400_naming_its_field_wherever_it_is_given(server: str) -> None:
    """Found by fuzzing: schema keywords of the wrong JSON type (type 1.5, required 5, a $ref
    that is an object) raised out of the schema compiler, a 500 on every route that takes one;
    a named tool's were a 500 as well."""
    user = [{"role": "user", "content": "x"}]
    wrong_type = {"type": "object", "properties": {"a": {"type": 1.5}}}
    wrong_required = {"type": "object", "properties": {"a": {}}, "required": 5}
    wrong_ref = {"type": "object", "properties": {"r": {"$ref": {}}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": wrong_required}}
    cases = [
        ("completions", {"prompt": "x", "max_tokens": 2, "guided_json": wrong_type}, "guided_json",
         "guided_json: the schema #/properties/a: type must name object"),
        ("chat/completions", {"messages": user, "max_tokens": 2, "response_format": fmt},
         "response_format",
         "response_format: the schema #: required must be a list of property names"),
        ("responses", {"input": "x", "max_output_tokens": 2,
                       "text": {"format": {"type": "json_schema", "name": "x", "schema": wrong_ref}}},
         "text.format", "text.format: the schema #/properties/r: only $ref to #/$defs/NAME"),
    ]  # fmt: skip
    for path, body, param, needle in cases:
        for stream in (False, True):
            asked = {"model": "tiny", **body, "stream": stream}
            status, got = request("POST", f"{server}/v1/{path}", asked)
            assert status == 400 and got["error"]["param"] == param, (path, got)
            assert needle in got["error"]["message"], got
    # a tool's parameters that are no valid JSON Schema are refused too, as OpenAI refuses
    # them (valid ones the decoder cannot enforce are taken: test_openai_tools)
    tool = {"type": "function", "function": {"name": "f", "parameters": wrong_required}}
    asked = {"model": "tiny", "messages": user, "max_tokens": 8, "temperature": 0,
             "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f"}}}
    status, got = request("POST", f"{server}/v1/chat/completions", asked)
    assert status == 400 and got["error"]["code"] == "invalid_function_parameters", got
    assert got["error"]["param"] == "tools[0].function.parameters", got


def test_streamed_logprobs_ride_with_their_text_when_a_stop_string_holds_it_back(
    client: openai.OpenAI, engine: LLMEngine
) -> None:
    """A stop string holds text back; each token's logprob goes with the chunk that carries its
    text, so the text sent so far always covers the tokens reported, and all of them (the stop
    string's too) add up to the non-streamed response."""
    prompt = "Once upon a time"
    full = greedy(engine, prompt, 40).text
    stop = full[len(full) // 2 :][:8].strip() or full[-4:]
    asked = {"model": "tiny", "prompt": prompt, "max_tokens": 40, "temperature": 0,
             "logprobs": 1, "stop": [stop]}  # fmt: skip
    whole = client.completions.create(**asked).choices[0]
    text, tokens, offsets = "", [], []
    for c in client.completions.create(**asked, stream=True):
        choice = c.choices[0]
        text += choice.text
        if choice.logprobs is not None:
            tokens += choice.logprobs.tokens
            offsets += choice.logprobs.text_offset
    assert text == whole.text
    assert tokens == whole.logprobs.tokens and offsets == whole.logprobs.text_offset
    messages = [{"role": "user", "content": prompt}]
    chat_full = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=40, temperature=0
    ).choices[0].message.content
    chat_stop = chat_full[len(chat_full) // 2 :][:8].strip() or chat_full[-4:]
    chat = {"model": "tiny", "messages": messages, "max_tokens": 40, "temperature": 0,
            "logprobs": True, "stop": [chat_stop]}  # fmt: skip
    whole_chat = client.chat.completions.create(**chat).choices[0]
    sent, got = b"", b""
    for c in client.chat.completions.create(**chat, stream=True):
        if not c.choices:
            continue
        choice = c.choices[0]
        sent += (choice.delta.content or "").encode()
        if choice.logprobs is not None:
            got += b"".join(bytes(t.bytes) for t in choice.logprobs.content)
        if choice.finish_reason is None:  # (a random model's stray bytes show as U+FFFD)
            assert len(got) <= len(sent), (sent, got)
    assert got == b"".join(bytes(t.bytes) for t in whole_chat.logprobs.content)


def test_models_retrieve(client: openai.OpenAI) -> None:
    """`client.models.retrieve` (GET /v1/models/{model}): the served model's card, or 404."""
    card = client.models.retrieve("tiny")
    assert card.id == "tiny" and card.object == "model"
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4' does not exist"):
        client.models.retrieve("gpt-4")


def test_completion_prompt_as_token_ids(client: openai.OpenAI, engine: LLMEngine) -> None:
    """OpenAI's (and vLLM's) completions take token ids: a list, or a list of lists; echo
    returns their text."""
    prompt = "The parrot said"
    ids = engine.tokenizer.encode(prompt)
    ref = greedy(engine, prompt, 6).text
    done = client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0)
    assert done.choices[0].text == ref and done.usage.prompt_tokens == len(ids)
    two = client.completions.create(model="tiny", prompt=[ids, ids[:2]], max_tokens=6,
                                    temperature=0, echo=True)  # fmt: skip
    short = engine.tokenizer.decode(ids[:2])
    assert [c.text for c in two.choices] == [prompt + ref, short + greedy(engine, short, 6).text]
    with pytest.raises(openai.BadRequestError, match="99999 is not a token id"):
        client.completions.create(model="tiny", prompt=[1, 99999], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="a list of token ids or a list of lists"):
        client.completions.create(model="tiny", prompt=["a", 1], max_tokens=2)  # type: ignore[list-item]


def test_vllm_sampling_extensions_are_honoured_or_refused(
    client: openai.OpenAI, engine: LLMEngine
) -> None:
    """vLLM's extra sampling fields (sent in extra_body) that the engine has change the result
    as in vLLM; those it lacks get a 400 naming them unless set to their neutral value."""
    prompt = "The parrot said"
    ids = engine.tokenizer.encode(prompt)
    ref = greedy(engine, prompt, 30)
    assert ref.finish_reason == "stop" and len(ref.token_ids) < 30  # EOS, for ignore_eos
    kw = {"model": "tiny", "prompt": prompt, "max_tokens": 30}
    # top_k=1 is greedy whatever the temperature
    for seed in (1, 2):
        done = client.completions.create(**kw, temperature=1.0, seed=seed,
                                         extra_body={"top_k": 1})  # fmt: skip
        assert done.choices[0].text == ref.text
    past = client.completions.create(**kw, temperature=0, extra_body={"ignore_eos": True})
    sampling = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    assert past.choices[0].text == engine.generate([ids], sampling)[0].text
    assert past.usage.completion_tokens == 30 and past.choices[0].finish_reason == "length"
    stop_id = ref.token_ids[3]
    cut = client.completions.create(**kw, temperature=0, extra_body={"stop_token_ids": [stop_id]})
    assert cut.usage.completion_tokens == ref.token_ids.index(stop_id) + 1
    assert cut.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError, match="use_beam_search is not supported") as err:
        client.completions.create(**kw, extra_body={"use_beam_search": True})
    assert err.value.body["param"] == "use_beam_search"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="kv_transfer_params is not supported"):
        client.completions.create(**kw, extra_body={"kv_transfer_params": {"do_remote": True}})
    with pytest.raises(openai.BadRequestError, match="logits_processors is not supported"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"logits_processors": ["x"]})  # fmt: skip
    neutral = {"min_p": 0.0, "repetition_penalty": 1.0, "min_tokens": 0,
               "skip_special_tokens": True, "priority": 0}  # fmt: skip
    same = client.completions.create(**kw, temperature=0, extra_body=neutral)
    assert same.choices[0].text == ref.text
    # min_p, repetition_penalty and min_tokens reach the engine
    for extra in ({"repetition_penalty": 1.4}, {"min_tokens": 30, "max_tokens": 30},
                  {"min_p": 0.3, "seed": 5}):  # fmt: skip
        options = {**kw, "temperature": 1.0 if "min_p" in extra else 0, **{
            k: v for k, v in extra.items() if k in ("max_tokens", "seed")}}  # fmt: skip
        engine_only = {k: v for k, v in extra.items() if k not in ("max_tokens", "seed")}
        done = client.completions.create(**options, extra_body=engine_only)
        sp = SamplingParams(max_tokens=options["max_tokens"], temperature=options["temperature"],
                            seed=options.get("seed"), **engine_only)  # fmt: skip
        assert done.choices[0].text == engine.generate([ids], sp)[0].text, extra
    with pytest.raises(openai.BadRequestError, match="min_tokens"):
        client.completions.create(**kw, extra_body={"min_tokens": 99})


def test_vllm_output_extensions_reach_the_engine(client: openai.OpenAI, engine: LLMEngine):
    """include_stop_str_in_output, skip_special_tokens, allowed_token_ids, bad_words and
    truncate_prompt_tokens: each request's text equals the engine's run with those settings."""
    tok = engine.tokenizer
    prompt = "The parrot said"
    ids = tok.encode(prompt)
    plain = engine.generate([ids], SamplingParams(max_tokens=20, temperature=0,
                                                  ignore_eos=True))[0]  # fmt: skip
    stop = plain.text[8:11]
    word = tok.decode(plain.token_ids[2:4]).strip()
    special = tok.encode("<|im_start|>")[0]
    words = [w for t in (word, " " + word) if (w := tok.encode(t))]
    cases = [
        ({"stop": [stop], "include_stop_str_in_output": True},
         {"stop": [stop], "include_stop_str_in_output": True}),
        ({"logit_bias": {str(special): 100}, "skip_special_tokens": False},
         {"logit_bias": {special: 100.0}, "skip_special_tokens": False}),
        ({"allowed_token_ids": [5, 17, 40, *plain.token_ids[3:6]]},
         {"allowed_token_ids": [5, 17, 40, *plain.token_ids[3:6]]}),
        ({"bad_words": [word]}, {"bad_words_token_ids": [w for i, w in enumerate(words)
                                                         if w not in words[:i]]}),
    ]  # fmt: skip
    for asked, sampling in cases:
        done = client.completions.create(model="tiny", prompt=prompt, max_tokens=20,
                                         temperature=0, extra_body={"ignore_eos": True, **asked})
        ref = engine.generate([ids], SamplingParams(max_tokens=20, temperature=0,
                                                    ignore_eos=True, **sampling))[0]  # fmt: skip
        assert done.choices[0].text == ref.text, asked
    assert stop in plain.text and done.choices[0].text != plain.text  # the bad word moved it
    # the prompt's last 3 tokens only, on both routes
    cut = client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0,
                                    echo=True, extra_body={"truncate_prompt_tokens": 3})
    ref = engine.generate([ids[-3:]], SamplingParams(max_tokens=6, temperature=0))[0]
    assert cut.usage.prompt_tokens == 3
    assert cut.choices[0].text == tok.decode(ids[-3:]) + ref.text
    chat = client.chat.completions.create(model="tiny", max_tokens=2,
                                          messages=[{"role": "user", "content": "Hi " * 30}],
                                          extra_body={"truncate_prompt_tokens": 7})  # fmt: skip
    assert chat.usage.prompt_tokens == 7
    for extra, param in (({"allowed_token_ids": [10**7]}, "allowed_token_ids"),
                         ({"allowed_token_ids": []}, "allowed_token_ids"),
                         ({"bad_words": [" "]}, "bad_words"),
                         ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens")):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="tiny", prompt=prompt, max_tokens=2, extra_body=extra)
        assert err.value.body["param"] == param  # type: ignore[index]


def test_prompt_logprobs_score_each_prompt_token_as_transformers_does(
    client: openai.OpenAI, engine: LLMEngine, tiny_llama_path
) -> None:
    """vLLM's prompt_logprobs: per prompt token its logprob, rank and the top alternatives,
    against transformers' forward on the same weights; beside an echo's logprobs too."""
    import torch

    from tests.engine.reference import load_reference

    ids = engine.tokenizer.encode("The parrot said that graphs of calls")
    with torch.inference_mode():
        ref = load_reference(str(tiny_llama_path))(torch.tensor([ids])).logits[0].log_softmax(-1)
    done = client.completions.create(model="tiny", prompt=ids, max_tokens=2, temperature=0,
                                     echo=True, logprobs=1, extra_body={"prompt_logprobs": 3})
    choice = done.model_dump()["choices"][0]
    scores = choice["prompt_logprobs"]
    assert len(scores) == len(ids) and scores[0] is None
    for p, (token, entry) in enumerate(zip(ids[1:], scores[1:], strict=True)):
        row = ref[p]
        mine = entry[str(token)]
        assert abs(mine["logprob"] - float(row[token])) < 1e-4
        assert mine["rank"] == int((row > row[token]).sum()) + 1
        assert mine["decoded_token"] == engine.tokenizer.token_bytes(token).decode(
            "utf-8", errors="backslashreplace")  # fmt: skip
        best = row.topk(3).indices.tolist()
        assert [entry[str(t)]["rank"] for t in best] == [1, 2, 3]
        assert len(entry) == 3 + (token not in best)
    # the echo's own logprobs keep their one alternative (the engine scored three)
    echoed = choice["logprobs"]["top_logprobs"][1 : len(ids)]
    assert all(1 <= len(top) <= 2 for top in echoed)
    chat = client.chat.completions.create(model="tiny", max_tokens=2,
                                          messages=[{"role": "user", "content": "Hi"}],
                                          extra_body={"prompt_logprobs": 0})  # fmt: skip
    scored = chat.model_dump()["prompt_logprobs"]
    assert len(scored) == chat.usage.prompt_tokens and all(len(e) == 1 for e in scored[1:])
    assert "prompt_logprobs" not in client.completions.create(
        model="tiny", prompt="x", max_tokens=1).model_dump()["choices"][0]  # fmt: skip
    for extra in ({"stream": True}, {"n": 2}):
        with pytest.raises(openai.BadRequestError, match="prompt_logprobs") as err:
            client.completions.create(model="tiny", prompt="x", max_tokens=1,
                                      extra_body={"prompt_logprobs": 1, **extra})  # fmt: skip
        assert err.value.body["param"] == "prompt_logprobs"  # type: ignore[index]


def test_greedy_requests_draft_by_default_and_answer_as_without(
    server: str, client: openai.OpenAI, engine: LLMEngine
) -> None:
    """The server's engines draft tokens by n-gram lookup (--ngram-speculation 4 by default);
    the answer is the reference engine's, which drafts nothing."""
    base = engine.tokenizer.encode("The parrot said")
    first = engine.generate([base], SamplingParams(max_tokens=24, temperature=0,
                                                   ignore_eos=True))[0]  # fmt: skip
    prompt = base + first.token_ids + base  # its own start again: drafts find what followed
    before = metrics(server)["parrot_drafted_tokens_total"]
    done = client.completions.create(model="tiny", prompt=prompt, max_tokens=30, temperature=0,
                                     extra_body={"ignore_eos": True})
    want = engine.generate([prompt], SamplingParams(max_tokens=30, temperature=0,
                                                    ignore_eos=True))[0]  # fmt: skip
    assert done.choices[0].text == want.text
    assert metrics(server)["parrot_drafted_tokens_total"] > before
    assert engine.stats.drafted_tokens == 0


def test_sampled_and_constrained_requests_draft_and_answer_as_without(
    server: str, client: openai.OpenAI, engine: LLMEngine
) -> None:
    """A seeded sampled request drafts and draws what the reference engine draws; a regex's
    literal parts are drafted whole (the text it forces), confirmed, and the answer is the
    same."""
    base = engine.tokenizer.encode("The parrot said")
    first = engine.generate([base], SamplingParams(max_tokens=24, temperature=0,
                                                   ignore_eos=True))[0]  # fmt: skip
    prompt = base + first.token_ids + base
    regex = r'\{"name": "[a-z]{1,8}", "colour": "(green|grey)"\}'
    cases = [
        ({"temperature": 1.0, "top_k": 1, "seed": 5, "max_tokens": 30},
         SamplingParams(max_tokens=30, temperature=1.0, top_k=1, seed=5, ignore_eos=True)),
        ({"temperature": 0, "max_tokens": 40, "structured_outputs": {"regex": regex}},
         SamplingParams(max_tokens=40, temperature=0, regex=regex)),
    ]  # fmt: skip
    for (body, sampling), counter in zip(cases, ("drafted", "accepted_draft"), strict=True):
        before = metrics(server)[f"parrot_{counter}_tokens_total"]
        extra = {k: v for k, v in body.items() if k not in ("temperature", "max_tokens")}
        if "structured_outputs" not in body:
            extra["ignore_eos"] = True
        done = client.completions.create(model="tiny", prompt=prompt,
                                         temperature=body["temperature"],
                                         max_tokens=body["max_tokens"], extra_body=extra)  # fmt: skip
        assert done.choices[0].text == engine.generate([prompt], sampling)[0].text
        assert metrics(server)[f"parrot_{counter}_tokens_total"] > before, body
    assert engine.stats.drafted_tokens == 0


def test_chat_echo_starts_the_answer_with_the_final_message(
    client: openai.OpenAI, engine: LLMEngine
) -> None:
    messages = [{"role": "user", "content": "Name a bird."},
                {"role": "assistant", "content": "A bird: the"}]  # fmt: skip
    extra = {"continue_final_message": True, "add_generation_prompt": False, "echo": True}
    whole = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    inside = whole[: whole.rindex("A bird: the") + len("A bird: the")]
    want = "A bird: the" + greedy(engine, inside, 6).text
    done = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                          temperature=0, extra_body=extra)  # fmt: skip
    assert done.choices[0].message.content == want
    chunks = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                            temperature=0, extra_body=extra, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    # a new assistant turn has another role than the user's final message: nothing echoed
    user = messages[:1]
    plain = client.chat.completions.create(model="tiny", messages=user, max_tokens=6,
                                           temperature=0, extra_body={"echo": True})
    prompt = engine.tokenizer.apply_chat_template(user, add_generation_prompt=True)
    assert plain.choices[0].message.content == greedy(engine, prompt, 6).text


def test_chat_template_extensions(client: openai.OpenAI, engine: LLMEngine) -> None:
    """vLLM's add_generation_prompt=false and continue_final_message=true: the prompt ends
    after the last message, or inside it (the completion continues the assistant's text)."""
    messages = [{"role": "user", "content": "Name a bird."},
                {"role": "assistant", "content": "A bird: the"}]  # fmt: skip
    whole = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    inside = whole[: whole.rindex("A bird: the") + len("A bird: the")]
    extra = {"continue_final_message": True, "add_generation_prompt": False}
    done = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                          temperature=0, extra_body=extra)  # fmt: skip
    assert done.choices[0].message.content == greedy(engine, inside, 6).text
    assert done.usage.prompt_tokens == len(engine.tokenizer.encode(inside))
    user = messages[:1]
    closed = client.chat.completions.create(model="tiny", messages=user, max_tokens=6,
                                            temperature=0,
                                            extra_body={"add_generation_prompt": False})  # fmt: skip
    plain = engine.tokenizer.apply_chat_template(user, add_generation_prompt=False)
    assert closed.choices[0].message.content == greedy(engine, plain, 6).text
    with pytest.raises(openai.BadRequestError, match="add_generation_prompt false"):
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=2,
                                       extra_body={"continue_final_message": True})  # fmt: skip


def test_streaming_several_prompts(server: str, client: openai.OpenAI) -> None:
    """Several prompts stream too (as vLLM's do): choice k * n + i is sample i of prompt k, the
    same text and logprobs as the non-streamed response; an abandoned stream frees its KV."""
    prompts = ["Once upon", "The parrot said", "Hi"]
    kw = {"model": "tiny", "prompt": prompts, "max_tokens": 8, "temperature": 0, "n": 2,
          "echo": True}  # fmt: skip
    whole = client.completions.create(**kw)
    texts, usage = [""] * 6, None
    for c in client.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        if not c.choices:
            usage = c.usage
            continue
        texts[c.choices[0].index] += c.choices[0].text
    assert texts == [c.text for c in whole.choices] and usage == whole.usage
    scored = client.completions.create(model="tiny", prompt=prompts, max_tokens=8, temperature=0,
                                       logprobs=1)  # fmt: skip
    streamed: list[list[float | None]] = [[], [], []]
    for c in client.completions.create(model="tiny", prompt=prompts, max_tokens=8, temperature=0,
                                       logprobs=1, stream=True):  # fmt: skip
        if c.choices[0].logprobs is not None:
            streamed[c.choices[0].index] += c.choices[0].logprobs.token_logprobs
    # equal to float32 rounding: batched with other rows, torch's matmul (linear layers on CPUs
    # without AVX2) sums a row differently in a product of another shape
    want = [c.logprobs.token_logprobs for c in scored.choices]
    assert [len(x) for x in streamed] == [len(x) for x in want]
    assert sum(streamed, []) == pytest.approx(sum(want, []), abs=1e-4)
    before = metrics(server)["parrot_generated_tokens_total"]
    stream = client.completions.create(model="tiny", prompt=prompts, max_tokens=1000,
                                       temperature=0, n=2, stream=True,
                                       extra_body={"ignore_eos": True})  # fmt: skip
    for k, _ in enumerate(stream):
        if k >= 3:
            break
    stream.close()
    m = idle_metrics(server, timeout_s=20)
    assert m["parrot_kv_free_blocks"] == m["parrot_kv_total_blocks"]
    assert m["parrot_generated_tokens_total"] - before < 3000  # of 6 x 1000: aborted


def test_tokenize_gives_the_ids_a_request_uses_and_detokenize_reverses_them(
    server: str, client: openai.OpenAI, engine: LLMEngine
) -> None:
    """vLLM's /tokenize and /detokenize: a prompt as /v1/completions encodes it, messages as
    /v1/chat/completions renders and encodes them (its usage counts the same), and back."""
    text = "Once upon a time, tokens"
    _, got = request("POST", server + "/tokenize", {"model": "tiny", "prompt": text})
    ids = engine.tokenizer.encode(text)
    assert got == {"count": len(ids), "max_model_len": got["max_model_len"], "tokens": ids}
    assert got["max_model_len"] == client.models.list().data[0].max_model_len  # type: ignore[attr-defined]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    _, chat = request("POST", server + "/tokenize", {"messages": messages})
    assert chat["tokens"] == engine.tokenizer.encode(chat_text(engine, messages))
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert reply.usage is not None and reply.usage.prompt_tokens == chat["count"]
    _, back = request("POST", server + "/detokenize", {"tokens": ids})
    assert back == {"prompt": engine.tokenizer.decode(ids)}
    for path, body, needle in (
        ("/tokenize", {"prompt": "a", "messages": messages}, "exactly one of prompt and messages"),
        ("/tokenize", {"model": "gpt-4", "prompt": "a"}, "does not exist"),
        ("/detokenize", {"tokens": [10**9]}, "is not a token id"),
    ):
        status, err = request("POST", server + path, body)
        assert status in (400, 404) and needle in err["error"]["message"], (path, err)


def test_every_response_carries_a_request_id(client: openai.OpenAI) -> None:
    """`X-Request-Id` on every response, as OpenAI's API sends it (its client reports it as
    an error's `request_id`): the client's own when usable, else a fresh one; streams too."""
    user = [{"role": "user", "content": "Hi"}]
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=user,
                                                           max_tokens=2)  # fmt: skip
    first = raw.headers["x-request-id"]
    again = client.chat.completions.with_raw_response.create(model="tiny", messages=user,
                                                             max_tokens=2)  # fmt: skip
    assert first.startswith("req_") and again.headers["x-request-id"] != first
    mine = client.with_options(default_headers={"X-Request-Id": "my-call-7"})
    raw = mine.completions.with_raw_response.create(model="tiny", prompt="x", max_tokens=2)
    assert raw.headers["x-request-id"] == "my-call-7"
    with client.chat.completions.with_streaming_response.create(
        model="tiny", messages=user, max_tokens=2, stream=True
    ) as streamed:
        assert streamed.headers["x-request-id"].startswith("req_")
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="tiny", prompt="x", max_tokens=2, frequency_penalty=3)
    assert refused.value.request_id.startswith("req_")
    unusable = client.with_options(default_headers={"X-Request-Id": "a b" + "c" * 200})
    raw = unusable.completions.with_raw_response.create(model="tiny", prompt="x", max_tokens=2)
    assert raw.headers["x-request-id"].startswith("req_")


def test_metrics_show_the_server_processes_garbage_collections(server: str) -> None:
    """Collections stop every thread of the server process: /metrics shows their pauses, by
    generation, from startup on. A graph of 300 calls leaves enough new objects for a young
    collection (so little outlives a plain request that a few of them may not)."""
    _, created = request("POST", server + "/v1/sessions", {"name": "gc"})
    sid, token = created["session_id"], created["token"]
    calls = [{"id": f"c{i}", "template": f"{i} {{{{output:y}}}}", "outputs": {"y": f"v{i}"},
              "sampling": {"max_tokens": 1}} for i in range(300)]  # fmt: skip
    graph = {"variables": [{"id": f"v{i}"} for i in range(300)], "calls": calls}
    assert request("POST", f"{server}/v1/sessions/{sid}/graph", graph, token)[0] == 200
    request("DELETE", f"{server}/v1/sessions/{sid}", None, token)
    samples = metrics(server)
    assert samples['parrot_gc_pause_seconds_count{generation="0"}'] > 0
    assert samples['parrot_gc_pause_seconds_bucket{generation="0",le="+Inf"}'] == samples[
        'parrot_gc_pause_seconds_count{generation="0"}']


def test_latency_histograms_count_each_prompt_token_and_finished_request(
    server: str, client: openai.OpenAI
) -> None:
    def counts() -> dict[str, float]:
        samples = metrics(server)
        return {
            f"{kind}/{api}": samples.get(f'parrot_request_{kind}_count{{api="{api}"}}', 0)
            for kind in ("time_to_first_token_seconds", "time_per_output_token_seconds",
                         "latency_seconds")
            for api in ("completions", "chat")
        }  # fmt: skip

    before = counts()
    ignore = {"ignore_eos": True}  # every request generates all its tokens
    client.completions.create(model="tiny", prompt=["One", "Two"], max_tokens=5, temperature=0,
                              extra_body=ignore)  # fmt: skip
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, n=2,
        stream=True, extra_body=ignore,
    )  # fmt: skip
    for _ in stream:
        pass
    after = counts()
    delta = {k: after[k] - before[k] for k in after}
    assert delta == {
        # one first token per prompt; a gap per later token of each sample; one whole request
        "time_to_first_token_seconds/completions": 2,
        "time_to_first_token_seconds/chat": 1,
        "time_per_output_token_seconds/completions": 2 * 4,
        "time_per_output_token_seconds/chat": 2 * 3,
        "latency_seconds/completions": 2,
        "latency_seconds/chat": 1,
    }
    samples = metrics(server)
    assert samples['parrot_request_latency_seconds_bucket{api="chat",le="+Inf"}'] == after[
        "latency_seconds/chat"
    ]
    assert samples['parrot_request_latency_seconds_sum{api="chat"}'] > 0


def test_usage_says_how_many_prompt_tokens_came_from_the_prefix_cache(
    client: openai.OpenAI, server: str
) -> None:
    """OpenAI's `prompt_tokens_details.cached_tokens` (LangChain reads it as `cache_read`):
    the same long prompt again finds its full blocks cached, once for all its `n` samples."""
    from langchain_openai import ChatOpenAI

    messages = [{"role": "user", "content": "A parrot's song, told at length: " + "la " * 60}]
    kw = {"model": "tiny", "messages": messages, "max_tokens": 2, "temperature": 0}
    first = client.chat.completions.create(**kw)
    again = client.chat.completions.create(**kw)
    prompt = first.usage.prompt_tokens
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert prompt > 64 and prompt - 16 < cached <= prompt - 1  # all but the last block
    assert first.usage.prompt_tokens_details.cached_tokens < cached
    status, body = request("POST", f"{server}/v1/chat/completions", {**kw, "n": 2})
    assert status == 200 and body["usage"]["prompt_tokens_details"]["cached_tokens"] == cached
    chunks = list(client.chat.completions.create(
        **kw, n=3, stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == cached
    client.completions.create(model="tiny", prompt="la " * 60, max_tokens=1)
    done = client.completions.create(model="tiny", prompt=["la " * 60] * 2, max_tokens=1)
    # both prompts found the first one's blocks: the details sum over the prompts
    assert done.usage.prompt_tokens_details.cached_tokens == 2 * ((done.usage.prompt_tokens // 2
                                                                   - 1) // 16 * 16)
    llm = ChatOpenAI(model="tiny", base_url=server + "/v1", api_key="unused", max_tokens=2,
                     temperature=0, max_retries=0)  # fmt: skip
    usage = llm.invoke(messages[0]["content"]).usage_metadata
    assert usage["input_token_details"]["cache_read"] == cached
