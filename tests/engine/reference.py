"""transformers as the reference: greedy continuations computed one prompt at a time."""

from __future__ import annotations

import inspect

import torch
from transformers import AutoModelForCausalLM


def load_reference(path: str) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


@torch.inference_mode()
def greedy_reference(model: torch.nn.Module, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy decoding with its own KV cache, exactly `max_new_tokens` long.

    Written out rather than `generate(min_new_tokens=...)`, which masks EOS while our
    `ignore_eos` only keeps going past it.
    """
    # transformers 5.24 renamed `past_key_values` to `cache` (the old name warns, then goes)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(torch.tensor([prompt]), use_cache=True)
    ids: list[int] = []
    for _ in range(max_new_tokens):
        ids.append(int(out.logits[0, -1].argmax()))
        out = model(torch.tensor([[ids[-1]]]), use_cache=True, **{name: getattr(out, name)})
    return ids
