"""Dense attention calls that return the log-sum-exp, one per library.

Every function takes q [B, Hq, Lq, D], k and v [B, Hkv, Lk, D] (Hq a multiple of Hkv; any
strides with a contiguous last dim), `causal` only for Lq == Lk, an optional additive mask
[B, 1, 1, Lk] in q's dtype, and returns (out [B, Hq, Lq, D] in q's dtype, lse [B, Hq, Lq]
float32, natural log). Lk must be >= 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

AttendFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, bool, float, torch.Tensor | None],
    tuple[torch.Tensor, torch.Tensor],
]


def attend_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    scale: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's CPU flash attention; takes GQA kv heads as they are."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, attn_mask=mask, scale=scale
    )
    return out, lse


def attend_torch_cuda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    scale: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's CUDA kernels: flash for fp16/bf16, memory-efficient otherwise (or with a mask).

    These take equal q and kv head counts, so GQA heads are expanded here; the executor folds
    decode GQA groups into the query length, so only prefill pays for it.
    """
    if k.shape[1] != q.shape[1]:
        group = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    head_dim = q.shape[-1]
    if mask is None and q.dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0:
        result = torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, causal, False, scale=scale
        )
        return result[0], result[1]
    bias = None if mask is None else mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    result = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, bias, True, 0.0, causal, scale=scale
    )
    return result[0], result[1][..., : q.shape[2]]


def attend_flash_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    scale: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """flash-attn's dense kernel ([B, L, H, D] layout, GQA native, natural-log LSE)."""
    if mask is not None:
        raise ValueError("flash-attn backend: masks are not supported; plan exact-length buckets")
    from flash_attn import flash_attn_func

    out, lse, _ = flash_attn_func(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        softmax_scale=scale,
        causal=causal,
        return_attn_probs=True,
    )
    return out.transpose(1, 2), lse
