"""JSON mode: the JSON-prefix automaton against Python's json, the constraint's choices, and
the engine's constrained generation (tiny random model: whatever it writes is JSON)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch

from server.engine import LLMEngine, SamplingParams
from server.engine.json_prefix import MAX_WHITESPACE_RUN, JsonPrefix
from server.engine.output_constraint import OutputConstraint, TokenTable


def accepts(text: str | bytes) -> JsonPrefix | None:
    state = JsonPrefix()
    data = text.encode() if isinstance(text, str) else text
    return state if state.feed_all(data) else None


def random_value(rng: random.Random, depth: int = 0) -> object:
    kinds = ["int", "float", "str", "bool", "null"] + (["list", "dict"] * 2 if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-10**6, 10**6)
    if kind == "float":
        return rng.uniform(-1e3, 1e3) * 10 ** rng.randint(-8, 8)
    if kind == "str":
        return "".join(rng.choice('ab "\\/\n\t\u00e9\u4e2d\U0001f600x\x01') for _ in range(rng.randint(0, 6)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return random_object(rng, depth + 1)


def random_object(rng: random.Random, depth: int = 0) -> dict:
    return {f"k{i}": random_value(rng, depth) for i in range(rng.randint(0, 4))}


@pytest.mark.parametrize("seed", range(40))
def test_every_prefix_of_a_json_object_is_accepted_and_only_the_whole_completes(seed: int):
    rng = random.Random(seed)
    value = random_object(rng)
    text = json.dumps(value, indent=rng.choice([None, 2]), ensure_ascii=rng.random() < 0.5)
    data = text.encode()
    state = JsonPrefix()
    for i, b in enumerate(data):
        assert not state.complete, text[:i]
        assert state.feed(b), (text, i)
    assert state.complete
    assert not state.copy().feed(ord(" ")) and not state.copy().feed(ord("{"))


@pytest.mark.parametrize(
    "bad",
    ['[1]', '"a"', '1', ' x', '{,', '{"a" 1', '{"a":}', '{"a":01', '{"a":-}', '{"a":1.}',
     '{"a":1e}', '{"a":tru}', '{"a":nul ', '{"a":1,}', '{"a":[1,]', '{"a":[1}', '{"a":{]',
     '{"a\x01":1', '{"\\x":1', '{"\\u12g":1', '{"a":1}}', '{"a":1} ', '{a:1}', '{"a":+1',
     b'{"\x80":1', b'{"\xc3\x28":1', b'{"\xff":1', b'{"a":"\xe4\xb8"}'],
)  # fmt: skip
def test_text_that_cannot_become_a_json_object_is_refused(bad: str | bytes):
    assert accepts(bad) is None


@pytest.mark.parametrize(
    "bad", [b"\xed\xa0", b"\xed\xbf", b"\xe0\x80", b"\xe0\x9f", b"\xf0\x8f", b"\xf4\x90"]
)  # a surrogate half, overlong forms, past U+10FFFF: a token's raw bytes, not UTF-8
def test_ill_formed_utf8_is_refused_in_strings_at_the_byte_that_breaks_it(bad: bytes):
    assert accepts(b'{"a":"' + bad[:-1]) is not None
    assert accepts(b'{"a":"' + bad) is None and accepts(b'{"' + bad) is None
    edges = "\ud7ff\ue000\u0800\U00010000\U0010ffff"  # the neighbours stay allowed
    assert accepts(('{"' + edges + '":"' + edges + '"}').encode()).complete


def test_whitespace_runs_are_capped_but_strings_are_not():
    assert accepts("{" + " " * MAX_WHITESPACE_RUN) is not None
    assert accepts("{" + " " * (MAX_WHITESPACE_RUN + 1)) is None
    assert accepts('{"a": "' + " " * 100) is not None
    assert accepts('{"a": 1' + "\n" * 5 + "," + " " * MAX_WHITESPACE_RUN + '"b"') is not None


@pytest.mark.parametrize("seed", range(20))
def test_complete_means_json_loads_a_dict(seed: int):
    """Random byte soup from JSON's alphabet: whenever the automaton says complete, json
    agrees; whenever it refuses, no extension of the refused text parses."""
    rng = random.Random(seed)
    alphabet = list(b'{}[]:," \\ntrufalsenl0123456789.-eE+abc')
    for _ in range(300):
        state, data = JsonPrefix(), bytearray()
        for _ in range(rng.randint(1, 30)):
            b = rng.choice(alphabet)
            if not state.copy().feed(b):
                continue
            state.feed(b)
            data.append(b)
            if state.complete:
                assert isinstance(json.loads(bytes(data)), dict), bytes(data)
                break


def table_of(pieces: list[str | None], stop: int) -> TokenTable:
    return TokenTable([None if p is None else p.encode() for p in pieces], frozenset({stop}))


PIECES = ["Sure", "{", '"a"', ":", " 1", "}", "<s>", "ok", " "]
EOS = 6


def test_greedy_takes_the_likeliest_token_that_fits():
    constraint = OutputConstraint(table_of([*PIECES[:6], None, *PIECES[7:]], EOS), JsonPrefix())
    logits = torch.tensor([9.0, 1.0, 0.0, 0.0, 0.0, 0.0, 5.0, 8.0, 2.0])
    chosen = []
    for _ in range(6):
        token = constraint.choose(logits, int(logits.argmax()), None)
        constraint.advance(token)
        chosen.append(token)
        logits[token] = -50.0  # each piece once, then the next likeliest
        if token == EOS:
            break
    assert chosen == [8, 1, 2, 3, 4, 5][: len(chosen)]  # " ", "{", '"a"', ":", " 1", "}"
    assert constraint.complete
    # once complete only the stop id fits, however unlikely
    assert constraint.choose(logits, 0, None) == EOS
    assert not constraint.fits(8) and constraint.fits(EOS)


def test_sampling_redraws_among_the_tokens_that_fit():
    constraint = OutputConstraint(table_of(PIECES, EOS), JsonPrefix())
    probs = torch.tensor([0.5, 0.2, 0.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.1])
    seen = []

    def redraw(banned: torch.Tensor) -> int:
        seen.append((~banned).nonzero().flatten().tolist())
        return 1

    # "Sure" was drawn: the draw is redone over what can start a JSON object: "{" and " "
    assert constraint.choose(probs.log(), 0, redraw) == 1 and seen == [[1, 8]]
    # top-k/top-p leaving none of them: the likeliest that fits
    constraint.advance(1)
    assert constraint.choose(probs.log(), 7, lambda banned: -1) == 8  # " " (2: '"a"' is 0.0)


def test_sampling_is_exact_rejection_sampling_over_what_fits():
    from server.engine.sampler import sample

    table = table_of(["x", "{", "{ ", "y"], 3)
    logits = torch.tensor([[2.0, 1.0, 0.0, 3.0]])
    params = SamplingParams(temperature=1.0, max_tokens=4, json_object=True)
    counts = [0, 0, 0, 0]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3000):
        tokens, _ = sample(logits, [params], [gen], [[]], [OutputConstraint(table, JsonPrefix())])
        counts[tokens[0]] += 1
    # only "{" and "{ " fit, in the ratio e^1 : e^0
    assert counts[0] == counts[3] == 0
    assert abs(counts[1] / counts[2] - torch.e) < 0.35


def test_json_mode_refuses_ignore_eos():
    with pytest.raises(ValueError, match="ignore_eos"):
        SamplingParams(json_object=True, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_llama_path: Path) -> LLMEngine:
    return LLMEngine.from_pretrained(str(tiny_llama_path))


def test_the_engine_writes_json_objects_greedy_and_sampled(engine: LLMEngine):
    prompts = [engine.tokenizer.encode(p) for p in ("Return JSON:", "A cat", "x y z {")]
    for sampling in (
        SamplingParams(max_tokens=48, temperature=0, json_object=True),
        SamplingParams(max_tokens=48, temperature=1.0, seed=5, json_object=True),
        SamplingParams(max_tokens=48, temperature=0.8, top_p=0.9, seed=6, json_object=True),
    ):
        outs = engine.generate(prompts, sampling)
        for out in outs:
            assert accepts(out.text) is not None, out.text
            if out.finish_reason == "stop":
                assert isinstance(json.loads(out.text), dict)
        again = engine.generate(prompts, sampling)
        assert [o.token_ids for o in again] == [o.token_ids for o in outs]  # reproducible
    unconstrained = engine.generate(prompts, SamplingParams(max_tokens=16, temperature=0))
    assert not all(accepts(o.text) for o in unconstrained)  # the constraint did something


def test_a_token_that_does_not_fit_turns_the_constraint_off_instead_of_failing():
    constraint = OutputConstraint(TokenTable([b"x", b"{"], frozenset()), JsonPrefix())
    logits = torch.tensor([5.0, 1.0])
    assert constraint.choose(logits, 0, None) == 1
    constraint.advance(0)  # taken anyway (a scripted sampler, say): no exception
    assert constraint.fits(0) and constraint.choose(logits, 0, None) == 0


def test_choices_end_on_a_whole_choice():
    from server.engine.choice_prefix import ChoicePrefix

    table = table_of(["y", "es", "!", "no", "x"], 5)
    text = ChoicePrefix((b"yes", b"yes!", b"no"))
    constraint = OutputConstraint(TokenTable([*table.token_bytes, None], frozenset({5})), text)
    logits = torch.tensor([0.0, 0.0, 0.0, 1.0, 9.0, 5.0])
    assert constraint.choose(logits, 4, None) == 3  # "x" does not fit; EOS not yet; "no" does
    picks = []
    for _ in range(3):
        token = constraint.choose(logits, int(logits.argmax()), None)
        constraint.advance(token)
        picks.append(token)
        logits[token] = -9.0
        if token == 5:
            break
    assert picks[:2] == [3, 5]  # "no", then only EOS fits


def test_choices_answer_as_a_scan_of_them_would_and_in_logarithmic_time():
    from server.engine.choice_prefix import ChoicePrefix

    rng = random.Random(7)
    choices = tuple({bytes(rng.choices(b"ab\xc3", k=rng.randint(1, 5))) for _ in range(40)})
    for _ in range(300):
        text, read = ChoicePrefix(choices), b""
        for b in rng.choices(b"ab\xc3", k=6):
            fits = any(c.startswith(read + bytes([b])) for c in choices)
            assert text.copy().feed(b) == fits
            if not fits:
                break
            text.feed(b)
            read += bytes([b])
            assert text.complete == (read in choices)
            assert text.final == (read in choices and not any(
                len(c) > len(read) and c.startswith(read) for c in choices))  # fmt: skip
    # the sampler asks once per candidate token: a scan of 50k choices each time took ~10 s here
    many = ChoicePrefix(tuple(f"option number {i}".encode() for i in range(50_000)))
    start = time.perf_counter()
    for i in range(2_000):
        assert many.copy().feed_all(f"option number {i * 7}".encode()) == (i * 7 < 50_000)
    assert time.perf_counter() - start < 1


def test_the_engine_answers_with_one_of_the_choices(engine: LLMEngine):
    prompts = [engine.tokenizer.encode(p) for p in ("Sentiment:", "A cat", "x y z")]
    for sampling in (
        SamplingParams(max_tokens=16, temperature=0, choices=["positive", "negative", "n/a"]),
        SamplingParams(max_tokens=16, temperature=1.0, seed=4, choices=["yes", "yes, sure"]),
    ):
        for out in engine.generate(prompts, sampling):
            assert out.text in sampling.choices and out.finish_reason == "stop"
    with pytest.raises(ValueError, match="choices"):
        SamplingParams(choices=[])


def test_when_draws_keep_missing_the_few_tokens_that_fit_they_are_drawn_among():
    """200 tokens, two of which fit ("{" and "{ ", by far the least likely): the redraws miss
    them, then the sampler draws between those two by their probabilities (e^1 : e^0)."""
    from server.engine.sampler import sample

    table = TokenTable([b"x"] * 198 + [b"{", b"{ "], frozenset())
    logits = torch.full((1, 200), 12.0)
    logits[0, 198], logits[0, 199] = 1.0, 0.0
    params = SamplingParams(temperature=1.0, max_tokens=4, json_object=True)
    gen = torch.Generator().manual_seed(1)
    picks = [sample(logits, [params], [gen], [[]], [OutputConstraint(table, JsonPrefix())])[0][0]
             for _ in range(400)]  # fmt: skip
    assert set(picks) == {198, 199}
    assert 1.8 < picks.count(198) / picks.count(199) < 4.0  # e = 2.72
    # with top-p leaving neither, the likelier of them
    tight = SamplingParams(temperature=1.0, top_p=0.5, max_tokens=4, json_object=True)
    assert sample(logits, [tight], [gen], [[]], [OutputConstraint(table, JsonPrefix())])[0] == [198]
