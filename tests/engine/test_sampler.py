"""The sampler alone: OpenAI's penalties and log probabilities, on hand-made logits."""

from __future__ import annotations

import pytest
import torch

from server.engine import SamplingParams
from server.engine.sampler import sample
from server.engine.sampling_params import MAX_LOGPROBS, SEED_MAX, SEED_MIN, offset_seed


def test_penalties_lower_generated_tokens_by_count_and_presence() -> None:
    logits = torch.tensor([[3.0, 2.9, 0.0, -1.0], [3.0, 2.9, 0.0, -1.0]])
    frequency = SamplingParams(temperature=0, frequency_penalty=0.5)
    presence = SamplingParams(temperature=0, presence_penalty=0.2)
    # token 0 twice: 3.0 - 2 x 0.5 = 2.0 < 2.9; with presence only: 3.0 - 0.2 = 2.8 < 2.9
    tokens, _ = sample(logits, [frequency, presence], [None, None], [[0, 0, 3], [0]])
    assert tokens == [1, 1]
    untouched, _ = sample(logits, [frequency, presence], [None, None], [[], []])
    assert untouched == [0, 0]
    assert torch.equal(logits[0], torch.tensor([3.0, 2.9, 0.0, -1.0]))  # not changed in place


def test_negative_penalties_favour_repeats() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    sp = SamplingParams(temperature=0, frequency_penalty=-1.5)
    assert sample(logits, [sp], [None], [[0]])[0] == [0]


def test_logprobs_are_the_models_own_distribution() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=gen)
    params = [
        SamplingParams(temperature=0, logprobs=3, frequency_penalty=1.0),
        SamplingParams(temperature=0.7, seed=1, logprobs=0),
        SamplingParams(temperature=0),
    ]
    gens = [None, torch.Generator().manual_seed(1), None]
    tokens, logprobs = sample(logits, params, gens, [[int(logits[0].argmax())], [], []])
    want = logits.log_softmax(-1)
    first = logprobs[0]
    assert first is not None and first.token_id == tokens[0]
    # raw logits: the penalty moved the choice, not the reported distribution
    assert tokens[0] != int(logits[0].argmax())
    assert first.logprob == pytest.approx(float(want[0, tokens[0]]), abs=1e-6)
    top_ids = want[0].topk(3).indices.tolist()
    assert [t for t, _ in first.top] == top_ids
    assert [v for _, v in first.top] == pytest.approx(want[0, top_ids].tolist(), abs=1e-6)
    second = logprobs[1]
    assert second is not None and second.top == []
    assert second.logprob == pytest.approx(float(want[1, tokens[1]]), abs=1e-6)
    assert logprobs[2] is None


@pytest.mark.parametrize(
    "field, value",
    [("presence_penalty", 2.5), ("frequency_penalty", -3.0), ("logprobs", 21), ("logprobs", -1),
     ("temperature", float("nan")), ("temperature", float("inf")), ("presence_penalty", float("nan")),
     ("seed", SEED_MAX + 1), ("seed", SEED_MIN - 1)],
)
def test_settings_out_of_range_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})



def test_the_ends_of_the_ranges_are_taken_and_a_schema_needs_json_mode() -> None:
    # OpenAI takes up to 20 alternatives per token; a schema alone would be silently ignored
    sp = SamplingParams(logprobs=MAX_LOGPROBS, prompt_logprobs=MAX_LOGPROBS, seed=SEED_MIN)
    assert (sp.logprobs, sp.prompt_logprobs, MAX_LOGPROBS) == (20, 20, 20)
    with pytest.raises(ValueError, match="json_schema needs json_object"):
        SamplingParams(json_schema={"type": "object"})


def test_a_tiny_temperature_is_greedy() -> None:
    # logits / 1e-40 overflow float32 to inf, and multinomial then refuses the row
    logits = torch.tensor([[0.5, 3.0, 2.9, -1.0], [1.0, 0.0, 0.2, 0.9]])
    params = [SamplingParams(temperature=1e-40, seed=3), SamplingParams(temperature=1e-6)]
    gens = [torch.Generator().manual_seed(3), None]
    tokens, _ = sample(logits, params, gens, [[], []])
    assert tokens == [1, 0]


def test_sample_seeds_wrap_within_the_seed_range() -> None:
    assert offset_seed(5, 2) == 7
    assert offset_seed(SEED_MAX, 1) == SEED_MIN
    for seed in (SEED_MIN, SEED_MAX, 0):
        for i in range(3):
            torch.Generator().manual_seed(offset_seed(seed, i))  # accepted


def test_logit_bias_moves_the_named_tokens() -> None:
    logits = torch.tensor([[0.5, 3.0, 2.9, -1.0], [1.0, 0.0, 0.2, 0.9]])
    params = [SamplingParams(temperature=0, logit_bias={2: 0.5}),
              SamplingParams(temperature=0, logit_bias={0: -100.0, 3: 1.0}, logprobs=0)]  # fmt: skip
    tokens, logprobs = sample(logits, params, [None, None], [[], []])
    assert tokens == [2, 3]
    # logprobs stay the model's own distribution, before the bias
    want = logits[1].log_softmax(-1)[3]
    assert logprobs[1] is not None and logprobs[1].logprob == pytest.approx(float(want))
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={1: 101.0})


def _filtered_reference(logits: torch.Tensor, temperature: float, top_k: int, top_p: float):
    """The distribution temperature, then top-k, then top-p leave, in float64 (vLLM's order)."""
    probs = (logits.double() / temperature).softmax(-1)
    if 0 < top_k < probs.numel():
        kth = probs.topk(top_k).values[-1]
        probs = torch.where(probs >= kth, probs, 0.0)
        probs = probs / probs.sum()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order, torch.where(keep, sorted_probs, 0.0))
        probs = probs / probs.sum()
    return probs


@pytest.mark.parametrize("case", ["top_k", "top_p", "both"])
def test_top_k_and_top_p_sample_from_the_filtered_distribution(case: str) -> None:
    """Fresh random logits: the sampled tokens are the filtered set (top_p set between two
    cumulative masses, so the set is unambiguous) and their frequencies follow its
    renormalized probabilities. top_k=1 alone is greedy by rule and would not see a top-k
    off by one; a top-p that drops the token crossing the threshold shows here."""
    seed = int(torch.randint(0, 2**31, ()).item())
    gen = torch.Generator().manual_seed(seed)
    vocab, temperature = 12, 0.8
    last = 0
    while last < 2:  # logits with at least two tokens that are not tiny (almost always)
        logits = torch.randn(vocab, generator=gen, dtype=torch.float64) * 1.5
        top_k = int(torch.randint(4, vocab - 2, (), generator=gen)) if case != "top_p" else -1
        head = _filtered_reference(logits, temperature, top_k, 1.0).sort(descending=True).values
        # head[m] (the first token left out) not tiny: float32 sums cannot blur the boundary
        last = min(int((head > 1e-3).sum()), int((head > 0).sum()) - 1)
    top_p = 1.0
    if case != "top_k":
        mass = head.cumsum(-1)
        m = int(torch.randint(1, last, (), generator=gen))
        top_p = float(mass[m - 1] + mass[m]) / 2  # the smallest head reaching it: m + 1 tokens
    want = _filtered_reference(logits, temperature, top_k, top_p)
    draws = 6000
    sp = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    sampler = torch.Generator().manual_seed(seed + 1)
    rows = logits.float().expand(draws, vocab)
    tokens, _ = sample(rows, [sp] * draws, [sampler] * draws, [[]] * draws)
    counts = torch.bincount(torch.tensor(tokens), minlength=vocab).double()
    # nothing outside the set; everything in it not too rare to miss in the draws (p < 1e-5)
    assert not counts[want == 0].any(), (seed, top_k, top_p, counts, want)
    assert counts[want > 2e-3].all(), (seed, top_k, top_p, counts, want)
    sigma = (want * (1 - want) / draws).sqrt()
    assert ((counts / draws - want).abs() <= 5 * sigma + 1e-3).all(), (seed, counts, want)


def test_min_p_and_repetition_penalty_match_transformers() -> None:
    """transformers' own processors are the reference: MinPLogitsWarper on the tempered
    distribution, RepetitionPenaltyLogitsProcessor over the whole context."""
    from transformers import MinPLogitsWarper, RepetitionPenaltyLogitsProcessor

    from server.engine.sampler import _adjusted, _distribution

    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        logits = torch.randn(1, 64, generator=gen) * 3
        context = torch.randint(0, 64, (1, 12), generator=gen)
        penalty = float(torch.empty(()).uniform_(0.5, 2.0, generator=gen))
        sp = SamplingParams(temperature=0.7, min_p=0.1, repetition_penalty=penalty)
        ours = _adjusted(logits, [sp], [[]], [context[0].tolist()], frozenset())
        want = RepetitionPenaltyLogitsProcessor(penalty)(context, logits.clone())
        assert torch.allclose(ours, want, atol=1e-6)
        probs = _distribution(ours[0], sp)
        kept = MinPLogitsWarper(0.1)(context, ours / 0.7)[0].softmax(-1)
        assert torch.allclose(probs, kept, atol=1e-6)


def test_the_logit_bias_comes_before_the_repetition_penalty_as_in_transformers() -> None:
    """transformers' processors in generate's order are the reference (vLLM's order too): the
    bias, then the repetition penalty over the context, which divides a biased positive logit
    (multiplies a negative one); the bias used to be added after it."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        SequenceBiasLogitsProcessor,
    )

    from server.engine.sampler import _adjusted

    gen = torch.Generator().manual_seed(5)
    for _ in range(20):
        logits = torch.randn(1, 64, generator=gen) * 3
        context = torch.randint(0, 64, (1, 12), generator=gen)
        seen = context[0].unique().tolist()
        # biases on tokens the penalty touches (both signs) and on one it does not
        unseen = next(t for t in range(64) if t not in seen)
        bias = {seen[0]: 4.0, seen[1]: -3.0, seen[2]: 1.5, unseen: 2.0}
        penalty = float(torch.empty(()).uniform_(1.2, 2.0, generator=gen))
        sp = SamplingParams(temperature=0, repetition_penalty=penalty, logit_bias=bias)
        ours = _adjusted(logits, [sp], [[]], [context[0].tolist()], frozenset())
        processors = LogitsProcessorList([
            SequenceBiasLogitsProcessor([[[t], b] for t, b in bias.items()]),
            RepetitionPenaltyLogitsProcessor(penalty),
        ])  # fmt: skip
        want = processors(context, logits.clone())
        assert torch.allclose(ours, want, atol=1e-5)


def test_min_tokens_holds_off_eos_and_stop_ids() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.0]])
    sp = SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[1])
    assert sample(logits, [sp], [None], [[2]], eos_ids=frozenset({0}))[0] == [2]
    assert sample(logits, [sp], [None], [[2, 2]], eos_ids=frozenset({0}))[0] == [0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("min_p", 1.5, "min_p"), ("repetition_penalty", 0.0, "repetition_penalty"),
     ("min_tokens", 99, "min_tokens"), ("min_p", float("nan"), "min_p")],
)  # fmt: skip
def test_vllm_extension_settings_are_checked(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(max_tokens=16, **{field: value})
    with pytest.raises(ValueError, match="constrained output"):
        SamplingParams(min_tokens=2, choices=["a"])


def test_the_engine_matches_transformers_generate_with_the_vllm_extensions(tiny_llama_path):
    """Greedy with min_tokens (as transformers' min_new_tokens: EOS masked) and with a
    repetition penalty over prompt and output, several prompts in one continuous batch."""
    from server.engine import LLMEngine
    from tests.engine.reference import load_reference

    engine = LLMEngine.from_pretrained(str(tiny_llama_path))
    model = load_reference(str(tiny_llama_path))
    eos = min(engine.tokenizer.eos_token_ids)
    # greedy, "dog cat" and "of" end with EOS after 4 and 6 tokens: min_tokens has work to do
    texts = ("dog cat", "of", "The parrot", "Graphs of calls")
    prompts = [engine.tokenizer.encode(t) for t in texts]
    plain = engine.generate(prompts, SamplingParams(max_tokens=16, temperature=0))
    assert [o.finish_reason for o in plain[:2]] == ["stop", "stop"]
    for kwargs, theirs in (
        ({"repetition_penalty": 1.3}, {"repetition_penalty": 1.3}),
        ({"min_tokens": 12}, {"min_new_tokens": 12}),
    ):
        sp = SamplingParams(max_tokens=16, temperature=0, **kwargs)
        outs = engine.generate(prompts, sp)
        for prompt, out in zip(prompts, outs, strict=True):
            with torch.inference_mode():
                ref = model.generate(
                    torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                    eos_token_id=eos, pad_token_id=eos, **theirs,
                )[0, len(prompt):].tolist()  # fmt: skip
            if eos in ref:
                ref = ref[: ref.index(eos) + 1]
            assert out.token_ids == [t for t in ref if t != eos] or out.token_ids == ref, kwargs
            if "min_tokens" in kwargs:
                assert len(out.token_ids) >= 12


def test_draws_follow_the_distribution_and_never_take_a_zero() -> None:
    from server.engine.sampler import _draw

    probs = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(6)
    for _ in range(20000):
        counts[_draw(probs, gen)] += 1
    assert counts[0] == counts[2] == counts[5] == 0
    assert torch.allclose(counts / counts.sum(), probs, atol=0.015)
    # unnormalized weights, and one that is all that is left
    assert _draw(torch.tensor([0.0, 0.0, 5.0]), gen) == 2
    again = torch.Generator().manual_seed(0)
    assert [_draw(probs, again) for _ in range(50)] == [
        _draw(probs, g) for g in [torch.Generator().manual_seed(0)] for _ in range(50)
    ]


def test_allowed_token_ids_restrict_greedy_and_sampled_rows() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    greedy = SamplingParams(temperature=0, allowed_token_ids=[2, 4])
    assert sample(logits, [greedy], [None], [[]])[0] == [2]
    sampled = SamplingParams(temperature=1.5, allowed_token_ids=[1, 3])
    gen = torch.Generator().manual_seed(3)
    drawn = {sample(logits, [sampled], [gen], [[]])[0][0] for _ in range(200)}
    assert drawn == {1, 3}
    with pytest.raises(ValueError, match="allowed_token_ids"):
        SamplingParams(allowed_token_ids=[])


def test_a_row_whose_bans_leave_no_token_ends_with_its_likeliest_stop_id() -> None:
    """allowed_token_ids whose every id min_tokens or a bad word rules out: the row takes a
    stop id (EOS, or a stop token id; the likeliest by the model), as a constrained row with
    nothing allowed does, never an id outside allowed_token_ids (the first or the last of the
    vocabulary, drawn from no finite logit)."""
    logits = torch.tensor([[5.0, 1.0, 4.0, 3.0, 2.0, 0.5]])
    eos = frozenset({1})
    for temperature in (0.0, 1.0):
        held = SamplingParams(temperature=temperature, allowed_token_ids=[1], min_tokens=2)
        banned = SamplingParams(temperature=temperature, allowed_token_ids=[3],
                                bad_words_token_ids=[[3]], stop_token_ids=[4])  # fmt: skip
        gen = torch.Generator().manual_seed(0)
        tokens, _ = sample(logits.expand(2, -1), [held, banned], [gen, gen], [[], []],
                           contexts=[[0], [0]], eos_ids=eos)  # fmt: skip
        assert tokens == [1, 4]  # 4 (2.0) is likelier than EOS (1.0)
        ignoring = SamplingParams(temperature=temperature, allowed_token_ids=[3],
                                  bad_words_token_ids=[[3]], ignore_eos=True)  # fmt: skip
        assert sample(logits, [ignoring], [gen], [[]], contexts=[[0]], eos_ids=eos)[0] == [1]


def test_a_bad_words_last_token_is_banned_only_after_its_first_ones() -> None:
    logits = torch.tensor([[1.0, 5.0, 4.0, 3.0]])
    sp = SamplingParams(temperature=0, bad_words_token_ids=[[2, 1], [3]])
    assert sample(logits, [sp], [None], [[0]])[0] == [1]  # "2 1" not begun: 1 is fine
    assert sample(logits, [sp], [None], [[0, 2]])[0] == [2]  # after 2, 1 would complete it
    never = SamplingParams(temperature=0, bad_words_token_ids=[[1], [2]])
    assert sample(logits, [never], [None], [[]])[0] == [3]
    assert sample(logits, [never], [None], [[0, 3]])[0] == [3]  # anywhere, not only first
    with pytest.raises(ValueError, match="bad_words_token_ids"):
        SamplingParams(bad_words_token_ids=[[]])


def test_the_engine_keeps_stop_strings_special_tokens_and_bans_words_when_asked(tiny_llama_path):
    """include_stop_str_in_output, skip_special_tokens, allowed_token_ids and bad words on the
    tiny model, each against its plain greedy run."""
    from server.engine import LLMEngine

    engine = LLMEngine.from_pretrained(str(tiny_llama_path))
    tok = engine.tokenizer
    prompt = tok.encode("The parrot")
    plain = engine.generate([prompt], SamplingParams(max_tokens=24, temperature=0,
                                                     ignore_eos=True))[0]  # fmt: skip
    ids, text = plain.token_ids, plain.text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip() and text.find(stop) > 0
    for include, end in ((False, text.find(stop)), (True, text.find(stop) + len(stop))):
        sp = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, stop=[stop],
                            include_stop_str_in_output=include)  # fmt: skip
        out = engine.generate([prompt], sp)[0]
        assert (out.text, out.finish_reason) == (text[:end], "stop")
    # a stop token's text, kept when asked
    k = next(i for i in range(3, len(ids)) if tok.decode(ids[i : i + 1]).strip())
    for include in (False, True):
        sp = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True,
                            stop_token_ids=[ids[k]], include_stop_str_in_output=include)  # fmt: skip
        out = engine.generate([prompt], sp)[0]
        first = ids.index(ids[k])
        assert out.token_ids == ids[: first + 1]
        assert out.text == tok.decode(ids[: first + int(include)])
    # a special token forced by a logit bias: its text only with skip_special_tokens False
    special = tok.encode("<|im_start|>")
    assert len(special) == 1
    for skip in (True, False):
        sp = SamplingParams(max_tokens=3, temperature=0, logit_bias={special[0]: 100.0},
                            skip_special_tokens=skip)  # fmt: skip
        out = engine.generate([prompt], sp)[0]
        assert out.token_ids == special * 3
        assert out.text == ("" if skip else "<|im_start|>" * 3)
    # allowed ids: the greedy pick among them, as a +100 bias on them picks it
    allowed = sorted(set(ids[1:6]) | {5, 17, 40})
    sp = SamplingParams(max_tokens=12, temperature=0, allowed_token_ids=allowed)
    biased = SamplingParams(max_tokens=12, temperature=0,
                            logit_bias=dict.fromkeys(allowed, 100.0))  # fmt: skip
    out, ref = engine.generate([prompt, prompt], [sp, biased])
    assert out.token_ids == ref.token_ids and set(out.token_ids) <= set(allowed)
    # a bad word (two tokens from the plain output): the output leaves it at its last token
    word = ids[4:6]
    out = engine.generate([prompt], SamplingParams(max_tokens=24, temperature=0,
                                                   ignore_eos=True,
                                                   bad_words_token_ids=[word]))[0]  # fmt: skip
    assert out.token_ids[:5] == ids[:5] and out.token_ids[5] != ids[5]
    assert all(out.token_ids[i : i + 2] != word for i in range(len(out.token_ids) - 1))
