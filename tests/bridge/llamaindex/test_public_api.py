"""The package's exports and its checks of bad arguments (no server)."""

from __future__ import annotations

import pytest
from llama_index.core.indices.prompt_helper import ChatPromptHelper, PromptHelper
from llama_index.core.response_synthesizers import Accumulate

import parrot_bridge.llamaindex as li


def test_all_names_exist() -> None:
    assert sorted(li.__all__) == li.__all__
    for name in li.__all__:
        assert getattr(li, name) is not None


def test_bad_arguments_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="base_url must start with http"):
        li.Parrot(base_url="127.0.0.1:9000")
    # an OpenAI client's base_url ends in /v1, which our routes add (sent to /v1/v1/...)
    assert li.Parrot(base_url="http://127.0.0.1:9/v1/").base_url == "http://127.0.0.1:9"
    with pytest.raises(ValueError, match="max_tokens"):
        li.Parrot(base_url="http://127.0.0.1:9", max_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        li.Parrot(base_url="http://127.0.0.1:9", temperature=5)  # as OpenAI's, at most 2
    llm = li.Parrot(base_url="http://127.0.0.1:9/", max_tokens=4, context_window=512)
    assert llm.base_url == "http://127.0.0.1:9"
    with pytest.raises(ValueError, match="unknown response_mode 'nope'; expected one of"):
        li.get_response_synthesizer(llm=llm, response_mode="nope")
    with pytest.raises(TypeError, match="unexpected argument 'colour'"):
        li.get_response_synthesizer(llm=llm, response_mode="refine", colour="red")


def test_graph_synthesizers_only_where_they_help() -> None:
    llm = li.Parrot(base_url="http://127.0.0.1:9", max_tokens=4, context_window=512)
    # metadata would ask the server: give the prompt helper its numbers directly
    helpers = {
        "prompt_helper": PromptHelper(context_window=512, num_output=4),
        "chat_prompt_helper": ChatPromptHelper(context_window=512, num_output=4),
    }
    tree = li.get_response_synthesizer(
        llm=llm, response_mode="tree_summarize", use_async=True, **helpers
    )
    assert isinstance(tree, li.ParrotTreeSummarize) and tree._use_async
    compact = li.get_response_synthesizer(llm=llm, **helpers)
    assert isinstance(compact, li.ParrotCompactAndRefine) and isinstance(compact, li.ParrotRefine)
    other = li.get_response_synthesizer(llm=llm, response_mode="accumulate", **helpers)
    assert type(other) is Accumulate
