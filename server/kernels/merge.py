"""Exact merge of partial attention results by their log-sum-exp (natural log)."""

from __future__ import annotations

import torch


def merge_attention_states(
    outputs: torch.Tensor, lses: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine P partial attentions of the same queries over disjoint key sets.

    outputs: [P, ..., D], each part's softmax-normalised output over its own keys;
    lses: [P, ...], each part's natural-log sum of exp(scores). A part with no keys has
    lse = -inf and contributes nothing, whatever its output holds. Returns (output [..., D],
    lse [...]) in float32 at least; rows where every part is empty get output 0 and lse -inf.
    """
    if outputs.shape[:-1] != lses.shape:
        raise ValueError(
            f"merge: outputs {tuple(outputs.shape)} must be lses {tuple(lses.shape)} plus a head dim"
        )
    work = torch.promote_types(outputs.dtype, torch.float32)
    lses = lses.to(work)
    top = lses.amax(dim=0)
    # Subtract the max so that exp never overflows; an all-empty row has max -inf, use 0.
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    weights = torch.exp(lses - top)
    total = weights.sum(dim=0)
    # An empty part may hold garbage (even NaN): select rather than multiply by its zero weight.
    parts = torch.where(weights.unsqueeze(-1) > 0, outputs.to(work), 0.0)
    merged = (parts * weights.unsqueeze(-1)).sum(dim=0)
    merged = merged / torch.where(total > 0, total, 1.0).unsqueeze(-1)
    return merged, top + torch.log(total)
