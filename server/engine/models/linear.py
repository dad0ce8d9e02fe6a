"""A linear layer that keeps its weight transposed, for weights that come from a file."""

from __future__ import annotations

import torch
from torch import nn

from server.kernels import cpu
from server.kernels.cpu import q4_linear, q8_linear
from server.kernels.cpu.q4_linear import Q4Panels
from server.kernels.cpu.q8_linear import Q8Panels

# Up to this many rows, layers with 4- or 8-bit weights (`Linear.attach_q4`, `attach_q8`)
# multiply with them, and up to QUANTIZED_HEAD_MAX_ROWS logit rows the model's 8-bit head; from
# there on the float32 panels (compute-bound there: dequantizing costs more than the bytes it
# saves). The measured crossovers: server/kernels/README.md (q4 and q8 sections).
QUANTIZED_MAX_ROWS = 16
QUANTIZED_HEAD_MAX_ROWS = 16


class Linear(nn.Module):
    """y = x @ W (+ bias), with W [in_features, out_features] held one of two ways.

    Loaded weights land in `weight_t` ([in, out]; `weight` is the [out, in] view checkpoints
    use). On CPU in float32 the model then calls `pack()`, which moves W into 16-column panels
    (`panels`) for the packed CPU kernel: at decode batch sizes it streams the weights about
    twice as fast as MKL and uses every core (see server/kernels/cpu). `unpack()` restores
    `weight_t`, e.g. to load new weights. Parameters are left uninitialised (they are loaded),
    so construction costs nothing. A packed layer may also hold its weight 4-bit
    (`attach_q4`, from a GGUF's Q4_0/Q4_1/Q4_K blocks) or 8-bit (`attach_q8`, Q8_0, Q6_K and
    the Q5, Q3_K and Q2_K types): steps of few rows then stream ~5x (~3.5x) fewer bytes. A
    layer fused from weights of both kinds may hold both, split (`attach_split`): the first
    `q4.out_features` outputs 4-bit, the rest 8-bit.
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
        self.q4: Q4Panels | None = None
        self.q8: Q8Panels | None = None
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

    def attach_q4(self, panels: Q4Panels) -> bool:
        """Use `panels` for products of up to `QUANTIZED_MAX_ROWS` rows, in place of any 8-bit
        panels, if they hold this packed layer's weight bit for bit (else leave the layer as it
        is). True if attached."""
        if not (self._fits(panels) and q4_linear.matches(panels, self.panels.data)):
            return False
        self.q4, self.q8 = panels, None  # both set means split
        return True

    def attach_q8(self, panels: Q8Panels) -> bool:
        """`attach_q4` for 8-bit panels, whose kernel gives the float32 kernel's results bit
        for bit."""
        if not (self._fits(panels) and q8_linear.matches(panels, self.panels.data)):
            return False
        self.q4, self.q8 = None, panels
        return True

    def attach_split(self, q4: Q4Panels, q8: Q8Panels) -> bool:
        """Use `q4` for the first `q4.out_features` outputs (a multiple of 16, so that each
        part has whole panels) and `q8` for the rest, if each holds its columns of this packed
        layer's weight bit for bit: a GGUF mixed as Q4_K_M keeps q and k Q4_K and v Q6_K in
        one fused q/k/v. True if attached."""
        n4 = q4.out_features
        if not (
            self.panels is not None and n4 % cpu.PANEL == 0
            and q4.in_features == q8.in_features == self.in_features
            and n4 + q8.out_features == self.out_features
        ):
            return False
        panels = self.panels.data
        first = n4 // cpu.PANEL
        if not (q4_linear.matches(q4, panels[:first]) and q8_linear.matches(q8, panels[first:])):
            return False
        self.q4, self.q8 = q4, q8
        return True

    @property
    def split(self) -> bool:
        """Whether the layer holds its weight part 4-bit, part 8-bit (`attach_split`)."""
        return self.q4 is not None and self.q8 is not None

    def _fits(self, panels: Q4Panels | Q8Panels) -> bool:
        """A packed layer of `panels`' shape (the float32 panels' padding hides N's last digits)."""
        return self.panels is not None and (panels.in_features, panels.out_features) == (
            self.in_features, self.out_features
        )

    def bytes_read(self, rows: int) -> int:
        """Bytes of weight (and bias) a product of `rows` rows reads."""
        if self.split and rows <= QUANTIZED_MAX_ROWS:
            weight = self.q4.nbytes + self.q8.nbytes
        elif self.q4 is not None and rows <= QUANTIZED_MAX_ROWS:
            weight = self.q4.nbytes
        elif self.q8 is not None and rows <= QUANTIZED_MAX_ROWS:
            weight = self.q8.nbytes
        else:
            tensor = self.panels if self.panels is not None else self.weight_t
            assert tensor is not None
            weight = tensor.numel() * tensor.element_size()
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return weight + bias

    def unpack(self) -> None:
        """Back to the plain [in, out] weight."""
        self.q4 = self.q8 = None  # the weight is about to change
        if self.panels is None:
            return
        self.weight_t = nn.Parameter(cpu.unpack(self.panels.data, self.out_features))
        self.panels = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split and x.shape[0] <= QUANTIZED_MAX_ROWS:
            n4 = self.q4.out_features
            bias = (None, None) if self.bias is None else (self.bias[:n4], self.bias[n4:])
            return torch.cat([q4_linear.q4_linear(x, self.q4, bias[0]),
                              q8_linear.q8_linear(x, self.q8, bias[1])], dim=1)  # fmt: skip
        if self.q4 is not None and x.shape[0] <= QUANTIZED_MAX_ROWS:
            return q4_linear.q4_linear(x, self.q4, self.bias)
        if self.q8 is not None and x.shape[0] <= QUANTIZED_MAX_ROWS:
            return q8_linear.q8_linear(x, self.q8, self.bias)
        if self.panels is not None:
            return cpu.packed_linear(x, self.panels, self.out_features, self.bias)
        assert self.weight_t is not None
        if self.bias is None:
            return torch.mm(x, self.weight_t)
        return torch.addmm(self.bias, x, self.weight_t)
