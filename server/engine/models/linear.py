"""A linear layer that keeps its weight transposed, for weights that come from a file."""

from __future__ import annotations

import torch
from torch import nn


class Linear(nn.Module):
    """y = x @ weight_t (+ bias), with `weight_t` stored [in_features, out_features].

    The transposed layout is what makes batch-1 decode fast on CPU: MKL's matrix-vector product
    streams a [in, out] weight about 1.7x faster than the [out, in] one nn.Linear keeps (larger
    batches are within ~10% either way). `weight` is the [out, in] view checkpoints use.
    Parameters are left uninitialised (they are loaded), so construction costs nothing.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(
            torch.empty(in_features, out_features, device=device, dtype=dtype)
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        )

    @property
    def weight(self) -> torch.Tensor:
        """The [out_features, in_features] view (HF layout)."""
        return self.weight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.mm(x, self.weight_t)
        return torch.addmm(self.bias, x, self.weight_t)
