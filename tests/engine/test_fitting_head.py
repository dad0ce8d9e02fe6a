"""Constrained sampling with top-k, top-p and min-p: the filters see only the tokens that fit
(vLLM and transformers mask the logits before them), against a float64 reference that masks
the whole vocabulary first; and draws through the sampler with a real JSON constraint."""

from __future__ import annotations

import math
import random

import pytest
import torch

from server.engine import SamplingParams
from server.engine.fitting_head import fitting_head
from server.engine.json_prefix import JsonPrefix
from server.engine.output_constraint import OutputConstraint, TokenTable
from server.engine.sampler import sample
from tests.engine.test_sampler_reference import MARGIN


def _masked_reference(
    probs: list[float], fit: list[bool], top_k: int, top_p: float, min_p: float
) -> dict[int, float] | None:
    """Token -> probability after masking what does not fit, then top-k, top-p and min-p
    (renormalized); None where a float32 cut could fall either way."""
    p = torch.tensor(probs, dtype=torch.float64) * torch.tensor(fit, dtype=torch.float64)
    if not p.sum() > 0:
        return {}
    p = p / p.sum()
    if 0 < top_k < p.numel():
        p = torch.where(p >= p.topk(top_k).values[-1], p, 0.0)
        p = p / p.sum()
    if top_p < 1:
        ordered, order = p.sort(descending=True)
        before = ordered.cumsum(-1) - ordered
        if ((before - top_p).abs() < MARGIN).any():
            return None
        p = torch.zeros_like(p).scatter(0, order, torch.where(before < top_p, ordered, 0.0))
        p = p / p.sum()
    if min_p > 0:
        ratio = p / p.max()
        if ((ratio[p > 0] - min_p).abs() < MARGIN).any():
            return None
        p = torch.where(ratio >= min_p, p, 0.0)
        p = p / p.sum()
    return {t: float(v) for t, v in enumerate(p) if v > 0}


def test_the_kept_tokens_are_the_filters_over_the_masked_distribution() -> None:
    seed = random.randrange(2**31)
    rng = random.Random(seed)
    checked = 0
    while checked < 500:
        vocab = rng.choice([5, 40, 200])
        logits = torch.randn(vocab, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
        probs = (logits.double() * rng.choice([0.5, 2.0, 6.0])).softmax(-1).tolist()
        share = rng.choice([0.05, 0.3, 0.9])
        fit = [rng.random() < share for _ in range(vocab)]
        top_k = rng.choice([-1, 1, 2, 5, 50])
        top_p = rng.choice([1.0, 0.3, 0.8, 0.95])
        min_p = rng.choice([0.0, 0.05, 0.3])
        want = _masked_reference(probs, fit, top_k, top_p, min_p)
        if want is None:
            continue
        checked += 1
        ranked = sorted(enumerate(probs), key=lambda e: -e[1])
        checks: list[int] = []

        def fits(token: int, fit: list[bool] = fit, checks: list[int] = checks) -> bool:
            checks.append(token)
            return fit[token]

        kept = fitting_head(ranked, fits, sum(probs), top_k, top_p, min_p)
        case = (seed, vocab, top_k, top_p, min_p)
        assert sorted(t for t, _ in kept) == sorted(want), case
        total = sum(p for _, p in kept)
        for token, p in kept:
            assert p / total == pytest.approx(want[token], abs=1e-9), case
        assert len(checks) == len(set(checks)), case  # each token checked once at most


def test_the_walk_stops_once_the_rest_cannot_change_the_cut() -> None:
    """A likeliest token that fits and holds 99.9% with top_p 0.9: one check, not 10,000;
    where the cut needs more than `max_checks`, None (the sampler then cuts over all)."""
    probs = [0.999] + [0.001 / 9999] * 9999
    checks: list[int] = []
    kept = fitting_head(enumerate(probs), lambda t: checks.append(t) or True, 1.0, -1, 0.9, 0.0)
    assert kept == [(0, 0.999)] and len(checks) <= 2
    # a flat distribution: the cut would need thousands of checks, given up past the cap
    flat = [1 / 10000] * 10000
    assert fitting_head(enumerate(flat), lambda t: True, 1.0, -1, 0.9, 0.0, 100) is None
    assert len(fitting_head(enumerate(flat), lambda t: True, 1.0, 40, 0.905, 0.0, 100)) == 37


@pytest.mark.parametrize(
    ("logits", "settings"),
    [([1.7, 0.0, -0.69, -5.0], {"top_p": 0.9}),  # p: x .85, "{" .15 ... top_p over all: "{"
     ([3.0, 1.0, 0.5, 2.5], {"top_k": 2}),  # the two likeliest do not fit
     ([3.0, 1.0, 0.5, -5.0], {"min_p": 0.2})],  # "{" is under 0.2 of "x", not of what fits
)  # fmt: skip
def test_constrained_draws_truncate_among_what_fits(logits: list[float], settings: dict):
    """"x" and "y" cannot start a JSON object, "{" and "{ " can: the draws take both of those
    as the masked distribution has them (the filters used to run over the whole vocabulary,
    so that their cut left "{" alone, or nothing and then the likeliest that fits)."""
    table = TokenTable([b"x", b"{", b"{ ", b"y"], frozenset())
    params = SamplingParams(temperature=1.0, max_tokens=4, json_object=True, **settings)
    gen = torch.Generator().manual_seed(3)
    draws = 2000
    picks = [sample(torch.tensor([logits]), [params], [gen], [[]],
                    [OutputConstraint(table, JsonPrefix())])[0][0]
             for _ in range(draws)]  # fmt: skip
    assert set(picks) == {1, 2}, settings
    want = 1 / (1 + math.exp(logits[1] - logits[2]))  # of "{ " within the two
    sigma = math.sqrt(want * (1 - want) / draws)
    assert abs(picks.count(2) / draws - want) <= 5 * sigma, settings
