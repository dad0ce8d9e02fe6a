"""Exact merge of partial attention results by their log-sum-exp (natural log)."""

from __future__ import annotations

import torch


def merge_attention_states(
    outputs: torch.Tensor, lses: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine P partial attentions of the same queries over disjoint key sets.

    outputs: [P, ..., D], each part's softmax-normalised output over its own keys;
    lses: [P, ...], each part's natural-log sum of exp(scores). A part with no keys has
    lse = -inf and contributes nothing, whatever its output holds (even NaN). Returns
    (output [..., D], lse [...]) in float32 at least; rows where every part is empty get
    output 0 and lse -inf.
    """
    _check(outputs, lses)
    top, weights, total = _weights(lses)
    # Select rather than multiply by the zero weight: 0 * NaN would still be NaN.
    parts = torch.where(weights.unsqueeze(-1) > 0, outputs, 0.0)
    return _combine(parts, weights, total), top + torch.log(total)


def merge_attention_outputs(outputs: torch.Tensor, lses: torch.Tensor) -> torch.Tensor:
    """`merge_attention_states`' output alone, for parts whose outputs are all finite
    (empty parts hold zeros): the per-layer hot path, with fewer tensor ops."""
    _check(outputs, lses)
    _, weights, total = _weights(lses)
    return _combine(outputs, weights, total)


def _check(outputs: torch.Tensor, lses: torch.Tensor) -> None:
    if outputs.shape[:-1] != lses.shape:
        raise ValueError(
            f"merge: outputs {tuple(outputs.shape)} must be lses {tuple(lses.shape)} "
            "plus a head dim"
        )


def _weights(lses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Max-subtracted weights exp(lse_p - max_p lse_p), so exp never overflows."""
    lses = lses.to(torch.promote_types(lses.dtype, torch.float32))
    # A row whose parts are all empty has max -inf: subtract 0 instead (its weights stay 0).
    top = torch.nan_to_num(lses.amax(dim=0), neginf=0.0)
    weights = (lses - top).exp_()
    return top, weights, weights.sum(dim=0)


def _combine(outputs: torch.Tensor, weights: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    merged = (outputs * weights.unsqueeze(-1)).sum(dim=0)
    # total is 0 only where every part is empty; merged is 0 there too.
    return merged / total.clamp_min(torch.finfo(total.dtype).tiny).unsqueeze(-1)
