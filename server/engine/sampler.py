"""Turns the logits of a step into one token per generating context."""

from __future__ import annotations

import torch

from server.engine.sampling_params import SamplingParams


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> list[int]:
    """One token per row of `logits` ([N, vocab], float32), following each row's settings."""
    if all(p.greedy for p in params):
        return logits.argmax(dim=-1).tolist()
    tokens: list[int] = []
    for row, p, gen in zip(logits, params, generators, strict=True):
        if p.greedy:
            tokens.append(int(row.argmax()))
        else:
            tokens.append(_sample_row(row, p, gen))
    return tokens


def _sample_row(row: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
    scaled = row.float() / p.temperature
    if 0 < p.top_k < scaled.numel():
        kth = torch.topk(scaled, p.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = scaled.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        # keep the smallest head whose mass reaches top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs >= p.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(0, order, sorted_logits)
    probs = scaled.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=gen))
