"""The sampler alone: OpenAI's penalties and log probabilities, on hand-made logits."""

from __future__ import annotations

import pytest
import torch

from server.engine import SamplingParams
from server.engine.sampler import sample
from server.engine.sampling_params import SEED_MAX, SEED_MIN, offset_seed


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
