"""vLLM's `return_token_ids` and `return_tokens_as_token_ids` on the live tiny server: the ids
are the ones the reference engine takes and generates, streamed or not, for several prompts
and samples; logprobs name tokens `token_id:{id}`."""

from __future__ import annotations

import openai
import pytest

from server.engine import LLMEngine, SamplingParams

PROMPTS = ["The parrot said", "Once upon"]
MESSAGES = [{"role": "user", "content": "Name a bird."}]


def reference(engine: LLMEngine, ids: list[int], max_tokens: int, **sampling):
    params = SamplingParams(max_tokens=max_tokens, temperature=0, **sampling)
    return engine.generate([ids], params)[0]


def parsed(label: str) -> int:
    """A `token_id:{id}` label's id (fails on a token's text)."""
    kind, _, number = label.partition(":")
    assert kind == "token_id" and number.isdigit(), label
    return int(number)


def test_completion_token_ids_are_the_engines(client: openai.OpenAI, engine: LLMEngine) -> None:
    """Two prompts x two samples: each choice has its prompt's ids and the ids the engine
    generated, a stop token included; streamed, the chunks' ids add up to the same."""
    stop_id = reference(engine, engine.tokenizer.encode(PROMPTS[0]), 8).token_ids[4]
    kw = {"model": "tiny", "prompt": PROMPTS, "max_tokens": 8, "temperature": 0, "n": 2}
    extra = {"return_token_ids": True, "stop_token_ids": [stop_id]}
    done = client.completions.create(**kw, extra_body=extra).model_dump()
    for k, prompt in enumerate(PROMPTS):
        ids = engine.tokenizer.encode(prompt)
        ref = reference(engine, ids, 8, stop_token_ids=[stop_id])
        for choice in done["choices"][2 * k : 2 * k + 2]:
            assert choice["prompt_token_ids"] == ids
            assert choice["token_ids"] == ref.token_ids and choice["text"] == ref.text
    assert done["choices"][0]["token_ids"][-1] == stop_id  # the stop token is in, as vLLM's
    assert done["choices"][0]["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in done["choices"])
    ids_of: list[list[int]] = [[] for _ in range(4)]
    prompt_ids: list[list[list[int]]] = [[] for _ in range(4)]
    for chunk in client.completions.create(**kw, extra_body=extra, stream=True):
        (choice,) = chunk.model_dump()["choices"]
        if choice.get("prompt_token_ids") is not None:
            assert not ids_of[choice["index"]]  # the first chunk of its choice
            prompt_ids[choice["index"]].append(choice["prompt_token_ids"])
        ids_of[choice["index"]] += choice["token_ids"]
    assert ids_of == [c["token_ids"] for c in done["choices"]]
    assert prompt_ids == [[c["prompt_token_ids"]] for c in done["choices"]]
    # not asked (false, vLLM's default): not there
    plain = client.completions.create(**kw, extra_body={"return_token_ids": False}).model_dump()
    assert all("token_ids" not in c and "prompt_token_ids" not in c for c in plain["choices"])


def test_an_echo_keeps_its_text_and_token_ids_stay_the_generated(
    client: openai.OpenAI, engine: LLMEngine
) -> None:
    """Echo and token ids are separate (vLLM's echo text vanishing with return_token_ids is
    its bug, vllm#57996); with max_tokens 0 nothing is generated, so no ids."""
    prompt = PROMPTS[0]
    ids = engine.tokenizer.encode(prompt)
    ref = reference(engine, ids, 5)
    kw = {"model": "tiny", "prompt": prompt, "temperature": 0, "echo": True,
          "extra_body": {"return_token_ids": True}}  # fmt: skip
    done = client.completions.create(**kw, max_tokens=5).model_dump()["choices"][0]
    assert done["text"] == prompt + ref.text
    assert (done["prompt_token_ids"], done["token_ids"]) == (ids, ref.token_ids)
    streamed: list[int] = []
    for chunk in client.completions.create(**kw, max_tokens=5, stream=True):
        streamed += chunk.model_dump()["choices"][0]["token_ids"]
    assert streamed == ref.token_ids
    scored = client.completions.create(**kw, max_tokens=0).model_dump()["choices"][0]
    assert (scored["text"], scored["prompt_token_ids"], scored["token_ids"]) == (prompt, ids, [])


def test_ids_whose_text_is_held_back_still_come(client: openai.OpenAI, engine: LLMEngine) -> None:
    """A possible stop string holds text back (and the ids with it); the stream still ends with
    every id the engine generated, the stop string's tokens included, as vLLM's."""
    prompt = "Numbers:"
    ids = engine.tokenizer.encode(prompt)
    full = reference(engine, ids, 12).text
    stop = full[4:7]
    ref = reference(engine, ids, 12, stop=[stop])
    assert ref.finish_reason == "stop" and len(ref.token_ids) < 12
    streamed: list[int] = []
    for chunk in client.completions.create(
        model="tiny", prompt=prompt, max_tokens=12, temperature=0, stop=[stop], stream=True,
        extra_body={"return_token_ids": True},
    ):  # fmt: skip
        streamed += chunk.model_dump()["choices"][0]["token_ids"]
    assert streamed == ref.token_ids


def test_chat_token_ids_are_the_engines(client: openai.OpenAI, engine: LLMEngine) -> None:
    """The response has the rendered prompt's ids, each choice its generated ids; streamed, the
    role chunks carry the prompt's and the later chunks add up to the choice's."""
    ids = engine.tokenizer.encode(
        engine.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    )
    ref = reference(engine, ids, 8)
    kw = {"model": "tiny", "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "n": 2,
          "extra_body": {"return_token_ids": True}}  # fmt: skip
    done = client.chat.completions.create(**kw).model_dump()
    assert done["prompt_token_ids"] == ids
    assert [c["token_ids"] for c in done["choices"]] == [ref.token_ids] * 2
    assert done["choices"][0]["message"]["content"] == ref.text
    ids_of: list[list[int]] = [[], []]
    prompts = []
    for chunk in client.chat.completions.create(**kw, stream=True):
        data = chunk.model_dump()
        if data.get("prompt_token_ids") is not None:
            prompts.append(data["prompt_token_ids"])
        (choice,) = data["choices"]
        ids_of[choice["index"]] += choice.get("token_ids") or []
    assert prompts == [ids, ids] and ids_of == [ref.token_ids] * 2
    plain = client.chat.completions.create(**{**kw, "extra_body": {}}).model_dump()
    assert "prompt_token_ids" not in plain and "token_ids" not in plain["choices"][0]


def test_completion_logprobs_name_tokens_by_id(client: openai.OpenAI, engine: LLMEngine) -> None:
    """Every token and alternative, an echoed prompt's too, is `token_id:{id}` of the engine's
    token; the offsets stay those of the text; streamed, the same labels."""
    prompt = PROMPTS[0]
    ids = engine.tokenizer.encode(prompt)
    ref = reference(engine, ids, 6, logprobs=2)
    kw = {"model": "tiny", "prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 2}
    plain = client.completions.create(
        **kw, extra_body={"return_tokens_as_token_ids": False}
    ).choices[0].logprobs
    done = client.completions.create(**kw, extra_body={"return_tokens_as_token_ids": True})
    lps = done.choices[0].logprobs
    assert [parsed(t) for t in lps.tokens] == ref.token_ids
    for top, entry in zip(lps.top_logprobs, ref.logprobs, strict=True):
        assert {parsed(t) for t in top} == {t for t, _ in entry.top} | {entry.token_id}
    assert lps.text_offset == plain.text_offset
    # equal to float32 rounding: the second prompt comes from the prefix cache, and torch's
    # matmul (linear layers on CPUs without AVX2) sums a row by the product's shape
    assert lps.token_logprobs == pytest.approx(plain.token_logprobs, abs=1e-4)
    streamed: list[str] = []
    for chunk in client.completions.create(
        **kw, stream=True, extra_body={"return_tokens_as_token_ids": True}
    ):
        if chunk.choices[0].logprobs is not None:
            streamed += chunk.choices[0].logprobs.tokens
    assert streamed == lps.tokens
    echoed = client.completions.create(
        **kw, echo=True, extra_body={"return_tokens_as_token_ids": True}
    ).choices[0].logprobs  # fmt: skip
    assert [parsed(t) for t in echoed.tokens] == ids + ref.token_ids


def test_chat_logprobs_name_tokens_by_id(client: openai.OpenAI, engine: LLMEngine) -> None:
    """`token` is `token_id:{id}` for the chosen token and each alternative; `bytes` stay the
    token's own; streamed, the same."""
    ids = engine.tokenizer.encode(
        engine.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    )
    ref = reference(engine, ids, 6, logprobs=2)
    kw = {"model": "tiny", "messages": MESSAGES, "max_tokens": 6, "temperature": 0,
          "logprobs": True, "top_logprobs": 2,
          "extra_body": {"return_tokens_as_token_ids": True}}  # fmt: skip
    content = client.chat.completions.create(**kw).choices[0].logprobs.content
    assert [parsed(c.token) for c in content] == ref.token_ids
    assert [bytes(c.bytes) for c in content] == [
        engine.tokenizer.token_bytes(t) for t in ref.token_ids
    ]
    for c, entry in zip(content, ref.logprobs, strict=True):
        assert [parsed(t.token) for t in c.top_logprobs] == [t for t, _ in entry.top]
        assert [bytes(t.bytes) for t in c.top_logprobs] == [
            engine.tokenizer.token_bytes(t) for t, _ in entry.top
        ]
    streamed = [t.token for chunk in client.chat.completions.create(**kw, stream=True)
                if chunk.choices and chunk.choices[0].logprobs
                for t in chunk.choices[0].logprobs.content]  # fmt: skip
    assert streamed == [c.token for c in content]
