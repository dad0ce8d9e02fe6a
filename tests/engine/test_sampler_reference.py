"""The sampler against an independent float64 reference of vLLM's (and transformers')
processing, on fresh random logits with random settings: the logit bias, the bans (min_tokens,
allowed_token_ids, bad words), the repetition penalty over the whole context, the presence and
frequency penalties over the output, then temperature, top-k, top-p and min-p (relative to the
likeliest token); logprobs of the raw logits. Then draws: their frequencies follow the
reference distribution (fixed seeds, tolerance from the number of draws)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
import torch

from server.engine import SamplingParams
from server.engine.sampler import _adjusted, _distribution, sample

EOS = 1
# a cumulative mass or a min-p ratio this close to its threshold may fall either way in float32
MARGIN = 1e-4


def reference(
    logits: torch.Tensor, sp: SamplingParams, output: Sequence[int], context: Sequence[int]
) -> torch.Tensor:
    """The distribution the settings leave (float64), a one-hot for greedy settings."""
    x = logits.double().clone()
    inf = float("inf")
    for token, bias in sp.logit_bias.items():
        x[token] += bias
    penalty = sp.repetition_penalty
    for token in set(context):  # divides positive logits, multiplies the others
        x[token] = x[token] / penalty if x[token] > 0 else x[token] * penalty
    for token in set(output):  # output tokens only
        x[token] -= sp.frequency_penalty * output.count(token) + sp.presence_penalty
    if len(output) < sp.min_tokens:
        for token in {EOS, *sp.stop_token_ids}:
            x[token] = -inf
    if sp.allowed_token_ids is not None:
        x[[t for t in range(x.numel()) if t not in sp.allowed_token_ids]] = -inf
    for word in sp.bad_words_token_ids:
        if list(output[len(output) - len(word) + 1 :]) == word[:-1] or len(word) == 1:
            x[word[-1]] = -inf
    if not bool(x.isfinite().any()):
        return torch.zeros_like(x)  # every token banned: the row ends (test_sampler covers it)
    if sp.temperature < 1e-5 or sp.top_k == 1:
        return torch.nn.functional.one_hot(x.argmax(), x.numel()).double()
    probs = (x / sp.temperature).softmax(-1)
    if 0 < sp.top_k < probs.numel():
        probs = torch.where(probs >= probs.topk(sp.top_k).values[-1], probs, 0.0)
        probs = probs / probs.sum()
    if sp.top_p < 1:
        ordered, order = probs.sort(descending=True)
        before = ordered.cumsum(-1) - ordered  # the mass of the likelier tokens
        _clear(before, sp.top_p)
        kept = torch.where(before < sp.top_p, ordered, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, kept)
        probs = probs / probs.sum()
    if sp.min_p > 0:
        ratio = probs / probs.max()
        _clear(ratio[probs > 0], sp.min_p)
        probs = torch.where(ratio >= sp.min_p, probs, 0.0)
        probs = probs / probs.sum()
    return probs


class Ambiguous(Exception):
    """The case sits on a threshold: float32 may fall either way."""


def _clear(values: torch.Tensor, threshold: float) -> None:
    if bool(((values - threshold).abs() < MARGIN).any()):
        raise Ambiguous


def random_case(rng: random.Random, vocab: int) -> tuple[torch.Tensor, SamplingParams, list, list]:
    """Random logits, settings, output and context (prompt then output)."""
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    logits = torch.randn(vocab, generator=gen) * rng.choice([1.0, 2.0, 4.0])
    output = [rng.randrange(vocab) for _ in range(rng.choice([0, 1, 5, 12]))]
    context = [rng.randrange(vocab) for _ in range(rng.randrange(1, 10))] + output
    allowed = rng.sample(range(vocab), vocab // 2) if rng.random() < 0.2 else None
    bad = [[rng.randrange(vocab) for _ in range(rng.choice([1, 2]))]
           for _ in range(rng.randrange(3))]  # fmt: skip
    if output and rng.random() < 0.5:  # a bad word whose head the output ends with
        bad.append([output[-1], rng.randrange(vocab)])
    max_tokens = 20
    sp = SamplingParams(
        max_tokens=max_tokens,
        temperature=rng.choice([0.0, 0.3, 0.7, 1.0, 1.5]),
        top_k=rng.choice([-1, -1, 1, 2, 5, vocab // 2, vocab + 3]),
        top_p=rng.choice([1.0, 1.0, 0.5, 0.8, 0.95]),
        min_p=rng.choice([0.0, 0.0, 0.05, 0.2]),
        presence_penalty=rng.choice([0.0, 0.5, -0.7, 2.0]),
        frequency_penalty=rng.choice([0.0, 0.3, -0.4, 1.0]),
        repetition_penalty=rng.choice([1.0, 1.0, 0.8, 1.3, 2.0]),
        logit_bias={rng.randrange(vocab): rng.uniform(-5, 5) for _ in range(rng.randrange(4))},
        min_tokens=rng.choice([0, 0, 3, max_tokens]),
        stop_token_ids=rng.choice([[], [rng.randrange(vocab)]]),
        allowed_token_ids=allowed,
        bad_words_token_ids=bad,
        logprobs=rng.choice([None, 0, 3]),
    )
    return logits, sp, output, context


def cases(seed: int, count: int, vocab: int):
    """`count` cases that are not ambiguous and leave some token, each with its reference."""
    rng = random.Random(seed)
    while count:
        logits, sp, output, context = random_case(rng, vocab)
        try:
            want = reference(logits, sp, output, context)
        except Ambiguous:
            continue
        if not want.sum() > 0:
            continue
        count -= 1
        yield logits, sp, output, context, want


def test_the_distribution_sampled_from_is_the_references() -> None:
    """The processed distribution of 300 random cases equals the reference (1e-5); greedy
    picks the reference's one token; logprobs are the raw logits' (the chosen token's and the
    top alternatives)."""
    seed = random.randrange(2**31)
    for logits, sp, output, context, want in cases(seed, 300, 64):
        case = (seed, sp, output, context)
        row = _adjusted(logits[None], [sp], [output], [context], frozenset({EOS}))[0]
        gen = torch.Generator().manual_seed(0)
        (token,), (logprob,) = sample(logits[None], [sp], [gen], [output], contexts=[context],
                                      eos_ids=frozenset({EOS}))  # fmt: skip
        assert want[token] > 0, case
        if sp.greedy:
            assert token == int(want.argmax()), case
        else:
            assert torch.allclose(_distribution(row, sp).double(), want, atol=1e-5), case
        raw = logits.double().log_softmax(-1)
        if sp.logprobs is None:
            assert logprob is None
            continue
        assert logprob is not None and logprob.token_id == token, case
        assert logprob.logprob == pytest.approx(float(raw[token]), abs=1e-5), case
        top = raw.topk(sp.logprobs)
        assert [t for t, _ in logprob.top] == top.indices.tolist(), case
        assert [v for _, v in logprob.top] == pytest.approx(top.values.tolist(), abs=1e-5), case


@pytest.mark.parametrize("seed", range(4))
def test_draws_follow_the_reference_distribution(seed: int) -> None:
    """2500 draws of one random case (fixed seeds) through `sample`: nothing outside the
    reference's support, and each token's frequency within 5 standard deviations (plus one
    draw) of its reference probability: a wrong filter or order moves some token further."""
    draws, vocab = 2500, 16
    logits, sp, output, context, want = next(
        c for c in cases(1000 + seed, 50, vocab) if not c[1].greedy and (c[4] > 0).sum() > 2
    )
    gen = torch.Generator().manual_seed(seed)
    tokens, _ = sample(logits.expand(draws, vocab), [sp] * draws, [gen] * draws, [output] * draws,
                       contexts=[context] * draws, eos_ids=frozenset({EOS}))  # fmt: skip
    freq = torch.bincount(torch.tensor(tokens), minlength=vocab).double() / draws
    case = (seed, sp, freq, want)
    assert not freq[want == 0].any(), case
    sigma = (want * (1 - want) / draws).sqrt()
    assert ((freq - want).abs() <= 5 * sigma + 1 / draws).all(), case
