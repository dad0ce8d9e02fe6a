"""A tag, then the JSON object its schema allows (`tagged_json`: a tool call whose function the
model picks), and the request's bans holding over any constraint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from server.engine import LLMEngine, SamplingParams
from server.engine.json_prefix import JsonPrefix
from server.engine.output_constraint import OutputConstraint, TokenTable
from server.engine.tagged_json_prefix import TaggedJsonPrefix, check_tags

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TAGS = {'get_weather", "arguments": ': CITY, 'now", "arguments": ': None}


def follows(text: str) -> TaggedJsonPrefix | None:
    state = TaggedJsonPrefix(TAGS)
    return state if state.feed_all(text.encode()) else None


@pytest.mark.parametrize(
    "whole",
    ['get_weather", "arguments": {"city": "Paris"}', 'now", "arguments": {}',
     'now", "arguments": {"tz": [1, {"x": null}]}'],
)  # fmt: skip
def test_every_prefix_follows_and_only_the_whole_completes(whole: str):
    for end in range(len(whole)):
        state = follows(whole[:end])
        assert state is not None and not state.complete, whole[:end]
    state = follows(whole)
    assert state is not None and state.complete and state.final
    assert not state.copy().feed(ord("x"))


@pytest.mark.parametrize(
    "bad",
    ['get_time", "arguments": {}', 'now" , "arguments": {}', 'get_weather", "arguments": {}',
     'get_weather", "arguments": {"city": 1}', 'now", "arguments": []',
     'now", "arguments": {}}'],
)  # fmt: skip
def test_other_tags_and_arguments_the_schema_refuses_do_not_follow(bad: str):
    state = follows(bad)
    # either refused outright or, for a missing required key, never complete
    assert state is None or not state.complete


def test_copies_are_independent():
    state = follows('now", "arguments": {')
    assert state is not None
    twin = state.copy()
    assert twin.feed_all(b"}") and twin.complete and not state.complete


@pytest.mark.parametrize(
    ("tags", "message"),
    [({}, "one or more"), ({"": None}, "one or more"), ({"a": None, "ab": None}, "starts the tag"),
     ({"a": {"type": "object", "properties": {"n": {"multipleOf": 2}}}}, "multipleOf")],
)  # fmt: skip
def test_tags_that_cannot_be_followed_are_refused(tags: dict, message: str):
    with pytest.raises(ValueError, match=message):
        check_tags(tags)
    with pytest.raises(ValueError, match=message):
        SamplingParams(tagged_json=tags)


def test_tagged_json_is_one_constraint_among_the_others():
    with pytest.raises(ValueError, match="one of"):
        SamplingParams(tagged_json=TAGS, json_object=True)
    with pytest.raises(ValueError, match="ignore_eos"):
        SamplingParams(tagged_json=TAGS, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_llama_path: Path) -> LLMEngine:
    return LLMEngine.from_pretrained(str(tiny_llama_path))


def test_the_engine_writes_a_tag_and_its_object_greedy_and_sampled(engine: LLMEngine):
    prompts = [engine.tokenizer.encode(p) for p in ("Call a tool:", "A cat", "x y z {")]
    for sampling in (
        SamplingParams(max_tokens=64, temperature=0, tagged_json=TAGS),
        SamplingParams(max_tokens=64, temperature=1.0, seed=3, tagged_json=TAGS),
    ):
        outs = engine.generate(prompts, sampling)
        for out in outs:
            assert follows(out.text) is not None, out.text
            tag = next(t for t in TAGS if out.text.startswith(t))
            if out.finish_reason == "stop":
                arguments = json.loads(out.text[len(tag) :])
                assert isinstance(arguments, dict)
                if TAGS[tag] is not None:
                    assert isinstance(arguments["city"], str)
        again = engine.generate(prompts, sampling)
        assert [o.token_ids for o in again] == [o.token_ids for o in outs]


PIECES = ["Sure", "{", "}", "<s>", " "]
EOS = 3


def test_a_banned_token_is_never_chosen_to_fit_a_constraint():
    table = TokenTable([p.encode() if p != "<s>" else None for p in PIECES], frozenset({EOS}))
    inf = float("-inf")
    # "{" is the only token that starts the object, and the request banned it
    logits = torch.tensor([9.0, inf, 1.0, 0.5, inf])
    constraint = OutputConstraint(table, JsonPrefix())
    assert constraint.choose(logits, 0, None) == EOS  # greedy: the generation ends
    assert constraint.choose(logits, 0, lambda banned: -1) == EOS  # sampled too
    # allowed, it is taken
    logits[1] = -5.0
    assert constraint.choose(logits, 0, None) == 1


def test_the_engine_keeps_allowed_token_ids_over_json_mode(engine: LLMEngine):
    prompt = engine.tokenizer.encode("Return JSON:")
    brace = engine.tokenizer.encode("{")
    assert len(brace) == 1
    word = engine.tokenizer.encode("The")[0]
    # nothing allowed starts the object; then only "{", after which nothing allowed goes on
    for allowed, text in (([word], ""), ([word, brace[0]], "{")):
        sampling = SamplingParams(max_tokens=8, temperature=0, json_object=True,
                                  allowed_token_ids=allowed)  # fmt: skip
        [out] = engine.generate([prompt], sampling)
        assert set(out.token_ids) <= set(allowed) | engine.eos_token_ids, out.token_ids
        assert out.text == text and out.finish_reason == "stop"
    banned = SamplingParams(max_tokens=8, temperature=0, json_object=True,
                            bad_words_token_ids=[brace])  # fmt: skip
    [out] = engine.generate([prompt], banned)
    # other tokens may still open the object ('{"', say): only the banned one is ruled out
    assert brace[0] not in out.token_ids and JsonPrefix().feed_all(out.text.encode())
