"""What an OpenAI request becomes: its chat prompt (against transformers'
`apply_chat_template` on the same ChatML template), its sampling and the checks on it."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydantic
import pytest
import tokenizers
from transformers import PreTrainedTokenizerFast

from server.api.native_models import SamplingSpec
from server.api.openai_inputs import (
    UNSUPPORTED_EXTENSIONS,
    bad_words_token_ids,
    chat_logprobs_asked,
    chat_prompt,
    guided_output,
    prompt_logprobs_asked,
    refuse_extensions,
    samples_of,
    sampling_of,
    truncated_prompt,
)
from server.api.openai_models import ChatCompletionRequest, CompletionRequest
from server.api.plain_runs import stop_reason
from server.api.tool_request import TOOL_CALL_CLOSE
from server.engine import JobOutput, SamplingParams
from server.engine.sampling_params import MAX_STOP_CHARS, MAX_STOP_STRINGS, SEED_MAX, SEED_MIN
from server.engine.tokenizer import Tokenizer
from server.errors import ApiError
from tests.tiny_models import CHATML_TEMPLATE, IM_END, IM_START

_BACKEND = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
_BACKEND.add_special_tokens([IM_START, IM_END])
DRIVER: Any = SimpleNamespace(tokenizer=Tokenizer(_BACKEND, chat_template=CHATML_TEMPLATE))
HF = PreTrainedTokenizerFast(tokenizer_object=_BACKEND, chat_template=CHATML_TEMPLATE)


def prompt(messages: list[dict[str, Any]], **extra: Any) -> str:
    return chat_prompt(DRIVER, ChatCompletionRequest(model="m", messages=messages, **extra))


@pytest.mark.parametrize("final", ["A bird: the", " spaced ", "end", "m", ">", "", "  ", "x\n"])
def test_a_continued_final_message_ends_where_transformers_ends_it(final: str) -> None:
    messages = [{"role": "user", "content": "Name a bird."},
                {"role": "assistant", "content": final}]  # fmt: skip
    want = HF.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    got = prompt(messages, add_generation_prompt=False, continue_final_message=True)
    assert got == want


def test_text_parts_are_joined_by_newlines_as_vllm_joins_them() -> None:
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]
    assert prompt([{"role": "user", "content": parts}]) == prompt(
        [{"role": "user", "content": "Hello\nworld"}]
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}],
         "messages[0].content[1]: only text content parts are supported, got 'image_url'"),
        ([{"type": "text"}], "messages[0].content[0]: a text part needs 'text'"),
    ],
)  # fmt: skip
def test_parts_that_are_not_text_are_400s_naming_the_part(content: list, message: str) -> None:
    with pytest.raises(ApiError, match=re.escape(message)) as caught:
        prompt([{"role": "user", "content": content}])
    assert caught.value.status == 400


def test_many_bad_words_are_tokenized_in_linear_time(tiny_llama_path: Path) -> None:
    # before: each word's ids were checked against a list of those found, 10k words ~20 s
    driver: Any = EncodingDriver(Tokenizer.from_folder(tiny_llama_path))
    words = [f"w{i} x{i}" for i in range(10_000)] + ["w0 x0", " w1 x1"]
    start = time.perf_counter()
    found = bad_words_token_ids(driver, words)
    assert time.perf_counter() - start < 3
    expected = {tuple(driver.encode(t)) for w in words for t in (w.lstrip(), " " + w.lstrip())}
    assert len(found) == len(expected) == len({tuple(ids) for ids in found})
    assert found[:2] == [driver.encode("w0 x0"), driver.encode(" w0 x0")]


class EncodingDriver:
    """The one thing bad_words_token_ids asks of the engine driver: its tokenization."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)


# What a request asks of the engine (`sampling_of` and its helpers), on a stand-in driver whose
# tokenizer maps each character to its code point.
SMALL: Any = SimpleNamespace(max_model_len=32, vocab_size=200, encode=lambda t: [ord(c) for c in t])


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest(model="m", prompt="hi", **fields)


def refused(param: str, call: Any, *args: Any) -> None:
    with pytest.raises(ApiError) as caught:
        call(*args)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_sampling_takes_openais_defaults_and_the_whole_context_window() -> None:
    sp = sampling_of(SMALL, completion(), [1, 2], max_tokens=30)  # 2 + 30: exactly the window
    assert (sp.temperature, sp.top_p, sp.top_k, sp.max_tokens) == (1.0, 1.0, -1, 30)
    refused("max_tokens", sampling_of, SMALL, completion(), [1, 2, 3], 30)


def test_token_ids_up_to_the_last_of_the_vocabulary_are_taken_and_past_it_refused() -> None:
    last = SMALL.vocab_size - 1
    sp = sampling_of(SMALL, completion(stop_token_ids=[last], logit_bias={str(last): 5}), [1], 4)
    assert sp.stop_token_ids == [last] and sp.logit_bias == {last: 5.0}
    past = str(SMALL.vocab_size)
    refused("stop_token_ids", sampling_of, SMALL, completion(stop_token_ids=[int(past)]), [1], 4)
    refused("logit_bias", sampling_of, SMALL, completion(logit_bias={past: 5}), [1], 4)
    # keys that str.isdigit() passed and int() refused: a 500 each
    for key in ("9" * 5000, "\u00b2", "\u0661"):
        refused("logit_bias", sampling_of, SMALL, completion(logit_bias={key: 5}), [1], 4)
    assert sampling_of(SMALL, completion(logit_bias={" 7 ": 1}), [1], 4).logit_bias == {7: 1.0}


def test_top_k_follows_vllms_rule_in_both_apis_and_the_engine() -> None:
    """-1 or 0 is no top-k, other negatives are refused (the native API took any int)."""
    for k in (-1, 0, 5):
        assert CompletionRequest(model="m", prompt="hi", top_k=k).top_k == k
        assert SamplingSpec(top_k=k).top_k == SamplingParams(top_k=k).top_k == k
    for make in (lambda: CompletionRequest(model="m", prompt="hi", top_k=-2),
                 lambda: SamplingSpec(top_k=-2)):  # fmt: skip
        with pytest.raises(pydantic.ValidationError, match="top_k"):
            make()
    with pytest.raises(ValueError, match="top_k must be -1 or 0 .no top-k. or at least 1, got -2"):
        SamplingParams(top_k=-2)


def test_seeded_samples_draw_from_consecutive_seeds() -> None:
    assert [s.seed for s in samples_of(SamplingParams(seed=7), 3)] == [7, 8, 9]
    assert [s.seed for s in samples_of(SamplingParams(seed=SEED_MAX), 2)] == [SEED_MAX, SEED_MIN]
    assert [s.seed for s in samples_of(SamplingParams(), 2)] == [None, None]


def test_a_truncated_prompt_keeps_its_last_tokens() -> None:
    ids = list(range(40))
    assert truncated_prompt(SMALL, completion(truncate_prompt_tokens=3), ids) == [37, 38, 39]
    assert truncated_prompt(SMALL, completion(truncate_prompt_tokens=-1), ids) == ids[-32:]
    assert truncated_prompt(SMALL, completion(), ids) == ids


def test_a_bad_word_is_banned_at_the_start_of_a_text_and_after_a_space() -> None:
    assert bad_words_token_ids(SMALL, ["no"]) == [[110, 111], [32, 110, 111]]
    refused("bad_words", bad_words_token_ids, SMALL, ["no", " "])


def test_logprob_options_and_constraints_are_checked() -> None:
    hello = [{"role": "user", "content": "hi"}]
    chat = ChatCompletionRequest(model="m", messages=hello, logprobs=True)
    assert chat_logprobs_asked(chat) == 0  # the chosen tokens' log probabilities, no others
    assert prompt_logprobs_asked(completion(prompt_logprobs=2)) == 2
    refused("prompt_logprobs", prompt_logprobs_asked, completion(prompt_logprobs=2, n=2))
    two = completion(response_format={"type": "json_object"}, guided_regex="a+")
    refused("guided_regex", guided_output, two)


def test_empty_vllm_extensions_change_nothing_and_are_taken() -> None:
    refuse_extensions(completion(logits_processors=[], vllm_xargs={}), UNSUPPORTED_EXTENSIONS)
    body = completion(logits_processors=["mine"])
    refused("logits_processors", refuse_extensions, body, UNSUPPORTED_EXTENSIONS)


def test_stop_strings_are_bounded_in_number_and_length() -> None:
    """Every stop string is looked for after each token, for the whole batch's sake."""
    most = [f"s{i}" for i in range(MAX_STOP_STRINGS)]
    assert sampling_of(SMALL, completion(stop=most), [1], 4).stop == most
    with pytest.raises(ApiError, match=f"at most {MAX_STOP_STRINGS} stop strings") as caught:
        sampling_of(SMALL, completion(stop=[*most, "one more"]), [1], 4)
    assert caught.value.param == "stop"
    refused("stop", sampling_of, SMALL, completion(stop="x" * (MAX_STOP_CHARS + 1)), [1], 4)
    # the server's own stop (a tool call's closing tag) goes beyond the request's cap, once
    SamplingParams(stop=[*most, TOOL_CALL_CLOSE])
    with pytest.raises(ValueError, match="at most"):
        SamplingParams(stop=[*most, TOOL_CALL_CLOSE, "one more"])


@pytest.mark.parametrize(
    ("reason", "fields", "named"),
    [
        ("##", {"stop": "##"}, "##"),
        ("##", {"stop": ["x", "##"]}, "##"),
        (7, {"stop_token_ids": [7]}, 7),
        # the tools' closing tag is the server's stop, not the request's
        (TOOL_CALL_CLOSE, {"stop": ["##"]}, None),
        (TOOL_CALL_CLOSE, {}, None),
        (None, {"stop": ["##"]}, None),  # EOS
    ],
)
def test_a_choice_names_only_the_requests_own_stops(
    reason: int | str | None, fields: dict[str, Any], named: int | str | None
) -> None:
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}],
                                 **fields)  # fmt: skip
    out = JobOutput(0, 0, finished=True, finish_reason="stop", stop_reason=reason)
    assert stop_reason(out, body) == named
