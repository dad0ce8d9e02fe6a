"""The chat prompt a request becomes (`openai_inputs.chat_prompt`), against transformers'
`apply_chat_template` on the same ChatML template."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tokenizers
from transformers import PreTrainedTokenizerFast

from server.api.openai_inputs import bad_words_token_ids, chat_prompt
from server.api.openai_models import ChatCompletionRequest
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
