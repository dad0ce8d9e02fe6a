"""A linear layer that keeps its weight transposed, for weights that come from a file."""

from __future__ import annotations

import torch
from torch import nn

from server.kernels import cpu


class Linear(nn.Module):
    """y = x @ W (+ bias), with W [in_features, out_features] held one of two ways.

    Loaded weights land in `weight_t` ([in, out]; `weight` is the [out, in] view checkpoints
    use). On CPU in float32 the model then calls `pack()`, which moves W into 16-column panels
    (`panels`) for the packed CPU kernel: at decode batch sizes it streams the weights about
    twice as fast as MKL and uses every core (see server/kernels/cpu). `unpack()` restores
    `weight_t`, e.g. to load new weights. Parameters are left uninitialised (they are loaded),
    so construction costs nothing.
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
        self.in_features, self.out_features = in_features, out_features
        self.weight_t: nn.Parameter | None = nn.Parameter(
            torch.empty(in_features, out_features, device=device, dtype=dtype)
        )
        self.panels: nn.Parameter | None = None
        self.bias = (
            nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        )

    @property
    def weight(self) -> torch.Tensor:
        """The [out_features, in_features] view (HF layout) of an unpacked layer."""
        if self.weight_t is None:
            raise RuntimeError("the layer is packed: unpack() it to see its weight")
        return self.weight_t.t()

    @property
    def packed(self) -> bool:
        return self.panels is not None

    def packed_shape(self) -> tuple[int, int, int]:
        """The shape `pack()` gives the panels."""
        return cpu.packed_shape(self.in_features, self.out_features)

    def pack(self, out: torch.Tensor | None = None) -> None:
        """Move the weight into panels for the CPU kernel (float32 CPU weights only), into
        `out` (shaped `packed_shape()`) when given."""
        if self.weight_t is None:
            return
        self.panels = nn.Parameter(cpu.pack(self.weight_t.data, out), requires_grad=False)
        self.weight_t = None

    def unpack(self) -> None:
        """Back to the plain [in, out] weight."""
        if self.panels is None:
            return
        self.weight_t = nn.Parameter(cpu.unpack(self.panels.data, self.out_features))
        self.panels = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.panels is not None:
            return cpu.packed_linear(x, self.panels, self.out_features, self.bias)
        assert self.weight_t is not None
        if self.bias is None:
            return torch.mm(x, self.weight_t)
        return torch.addmm(self.bias, x, self.weight_t)
