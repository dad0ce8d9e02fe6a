"""transformers as the reference: greedy continuations computed one prompt at a time."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM


def load_reference(path: str) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


@torch.inference_mode()
def greedy_reference(model: torch.nn.Module, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation with a plain full forward per token (no cache, no generate quirks)."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt) :]
