"""A step's whole decoder-layer stack in one C call (decoder_stack.c), float32 on CPU.

Layer by layer from Python, a batch-1 decode step paid 5-7 ms for ~450 small torch ops and
the Python around them, on top of the ~12 ms in which the packed kernel streams the weights.
`DecoderStack` holds raw pointers to one model's packed weights and runs every layer of a step
(norms, packed linear layers, RoPE, the cache write, paged decode or prefill attention and the
shared-prefix levels among the decodes, SwiGLU, residual adds).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from server.kernels.cpu import native_library, paged_decode, paged_levels, paged_prefill
from server.kernels.cpu.q4_linear import Q4Panels
from server.kernels.cpu.q8_linear import BLOCKS as Q8_BLOCKS
from server.kernels.cpu.q8_linear import Q8Panels
from server.kernels.metadata import AttentionMetadata
from server.kernels.step_plan import step_plan_of

__all__ = [
    "PHASES", "DecoderStack", "HeadTensors", "LayerTensors", "StackRun", "StackShape", "available",
    "supports",
]

# the phases a timed stack reports, in decoder_stack.c's order
PHASES = ("elementwise", "qkv", "attention", "o", "gate_up", "down", "head")

SOURCES = [
    Path(__file__).with_name(name)
    for name in (
        "decoder_stack.c", "packed_linear.c", "q4_linear.c", "q8_linear.c", "paged_decode.c",
        "paged_prefill.c", "paged_levels.c",
    )
]


def available() -> bool:
    """Whether the library is built (building it now if needed)."""
    return _library() is not None


def supports(num_heads: int, num_kv_heads: int, head_dim: int) -> bool:
    """Whether the attention kernels take this head layout."""
    return all(
        kernel.supports(num_heads, num_kv_heads, head_dim)
        for kernel in (paged_decode, paged_prefill, paged_levels)
    )


@dataclass(frozen=True, slots=True)
class StackShape:
    """The model's sizes; `cos`/`sin` are its RoPE tables [positions, head_dim / 2]."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    cos: torch.Tensor
    sin: torch.Tensor

    def __post_init__(self) -> None:
        if not supports(self.heads, self.kv_heads, self.head_dim):
            raise ValueError(
                f"decoder stack: the paged kernels do not take {self.heads} query heads "
                f"over {self.kv_heads} KV heads of dim {self.head_dim}"
            )
        half = self.head_dim // 2
        for name, table in (("cos", self.cos), ("sin", self.sin)):
            if (
                table.dim() != 2 or table.shape[1] != half or table.dtype != torch.float32
                or not table.is_contiguous() or table.device.type != "cpu"
            ):
                raise ValueError(
                    f"decoder stack: {name} must be a contiguous float32 CPU tensor "
                    f"[positions, {half}], got {tuple(table.shape)} {table.dtype}"
                )


@dataclass(frozen=True, slots=True)
class LayerTensors:
    """One layer's norm weights and packed projections (`server.kernels.cpu.pack` panels), and
    the same projections 4-bit (`q4_linear.Q4Panels`) or 8-bit (`q8_linear.Q8Panels`) where the
    model has them."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: torch.Tensor
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    qkv_bias: torch.Tensor | None = None
    o_bias: torch.Tensor | None = None
    gate_up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None
    qkv_q4: Q4Panels | None = None
    o_q4: Q4Panels | None = None
    gate_up_q4: Q4Panels | None = None
    down_q4: Q4Panels | None = None
    qkv_q8: Q8Panels | None = None
    o_q8: Q8Panels | None = None
    gate_up_q8: Q8Panels | None = None
    down_q8: Q8Panels | None = None


@dataclass(frozen=True, slots=True)
class HeadTensors:
    """The final norm's weight [hidden] and the LM head packed into panels
    ([ceil(vocab / 16), hidden, 16], `server.kernels.cpu.pack`), and 8-bit where the model
    has it (`q8_linear.Q8Panels`)."""

    norm: torch.Tensor
    panels: torch.Tensor
    vocab: int
    q8: Q8Panels | None = None


class DecoderStack:
    """Runs every layer of a step in one call, and with `head` the final norm and the LM head
    over the rows that sample; holds the model's tensors alive.

    `timed` builds the library with a wall clock around each phase (`phase_seconds`), for
    benchmarks: its counters are shared by every timed stack, so time one at a time. Steps of
    up to `quantized_max_rows` rows use the layers' quantized projections where there are,
    and logits of up to `head_quantized_max_rows` rows the quantized head."""

    def __init__(
        self,
        shape: StackShape,
        layers: list[LayerTensors],
        head: HeadTensors | None = None,
        timed: bool = False,
        quantized_max_rows: int = 0,
        head_quantized_max_rows: int = 0,
    ) -> None:
        lib = _library(timed)
        if lib is None:
            raise RuntimeError("the decoder stack kernel could not be built on this machine")
        for i, layer in enumerate(layers):
            _check_layer(i, layer, shape)
        if head is not None:
            _check_head(head, shape)
        self._lib = lib
        self.shape = shape
        self.layers = layers
        self.head = head
        self.timed = timed
        self.quantized_max_rows = quantized_max_rows
        self.head_quantized_max_rows = head_quantized_max_rows
        # read-only once built: engines sharing this model may run steps from several threads
        self._shape = _Shape(
            shape.hidden, shape.heads, shape.kv_heads, shape.head_dim, shape.intermediate,
            shape.eps, shape.head_dim**-0.5, shape.cos.data_ptr(), shape.sin.data_ptr(),
            quantized_max_rows, head_quantized_max_rows,
        )
        self._layers = (_Layer * len(layers))()
        for slot, layer in zip(self._layers, layers, strict=True):
            for name in _Layer.WEIGHTS:
                tensor = getattr(layer, name)
                setattr(slot, name, None if tensor is None else tensor.data_ptr())
            for name in _Layer.Q4:
                q4 = getattr(layer, f"{name}_q4")
                if q4 is not None:
                    setattr(slot, f"{name}_qs", q4.qs.data_ptr())
                    setattr(slot, f"{name}_scales", q4.scales.data_ptr())
                    setattr(slot, f"{name}_mins", q4.mins.data_ptr())
                q8 = getattr(layer, f"{name}_q8")
                if q8 is not None:
                    setattr(slot, f"{name}_q8", q8.qs.data_ptr())
                    setattr(slot, f"{name}_q8_scales", q8.scales.data_ptr())
                    if q8.mins is not None:
                        setattr(slot, f"{name}_q8_mins", q8.mins.data_ptr())
                    setattr(slot, f"{name}_q8_block", q8.block)
                if q4 is not None and q8 is not None:  # split: q4's outputs first
                    setattr(slot, f"{name}_q4_columns", q4.out_features)

    def run(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        logit_rows: list[int] | None = None,
    ) -> torch.Tensor | None:
        """Every layer over the step's hidden [T, hidden] (updated in place): row t is the token
        at `positions[t]`; `meta` lays out the sequences and their shared-prefix levels.

        With `logit_rows` (a stack built with a head), returns the float32 logits
        [len(logit_rows), vocab] of those rows after the final norm; `hidden` is then left
        before that norm."""
        run = self.start(hidden, positions, meta, kv_caches, logit_rows)
        run.advance()
        return run.logits

    def start(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        logit_rows: list[int] | None = None,
    ) -> StackRun:
        """The step of `run`, checked and laid out but not run yet: `StackRun.advance` runs
        it, and may pause it between layers."""
        rows = hidden.shape[0]
        head = wanted = None
        if logit_rows is not None:
            if self.head is None:
                raise ValueError("decoder stack: logits asked of a stack built without a head")
            if not all(0 <= r < rows for r in logit_rows):
                raise ValueError(f"decoder stack: logit rows must lie in [0, {rows})")
            wanted = torch.tensor(logit_rows, dtype=torch.int64)
            logits = torch.empty(len(logit_rows), self.head.vocab, dtype=torch.float32)
            q8 = self.head.q8
            head = _Head(self.head.norm.data_ptr(), self.head.panels.data_ptr(), self.head.vocab,
                         len(logit_rows), wanted.data_ptr(), logits.data_ptr(),
                         None if q8 is None else q8.qs.data_ptr(),
                         None if q8 is None else q8.scales.data_ptr(),
                         None if q8 is None or q8.mins is None else q8.mins.data_ptr(),
                         0 if q8 is None else q8.block)
        if len(kv_caches) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} layer KV caches, got {len(kv_caches)}")
        if not (hidden.dtype == torch.float32 and hidden.is_contiguous()
                and tuple(hidden.shape) == (meta.num_tokens, self.shape.hidden)):
            raise ValueError(
                f"decoder stack: hidden must be contiguous float32 [{meta.num_tokens}, "
                f"{self.shape.hidden}], got {tuple(hidden.shape)} {hidden.dtype}"
            )
        k_cache = kv_caches[0][0]
        want = (self.shape.kv_heads, self.shape.head_dim)
        if (k_cache.dtype != torch.float32 or tuple(k_cache.shape[2:]) != want
                or k_cache.shape[1] != meta.block_size):
            raise ValueError(
                f"decoder stack: caches must be float32 [blocks, {meta.block_size}, {want[0]}, "
                f"{want[1]}], got {tuple(k_cache.shape)} {k_cache.dtype}"
            )
        # the C side indexes the RoPE tables and the caches with these unchecked
        if rows and (
            int(positions.max()) >= self.shape.cos.shape[0]
            or int(meta.slot_mapping.max()) >= k_cache.shape[0] * meta.block_size
        ):
            raise ValueError(
                f"decoder stack: positions must be below {self.shape.cos.shape[0]} and cache "
                f"slots below {k_cache.shape[0] * meta.block_size}"
            )
        blocks: list[int] = []
        offsets = [0]
        for table, length in zip(meta.block_tables, meta.seq_lens, strict=True):
            blocks.extend(table[: -(-length // meta.block_size)])
            offsets.append(len(blocks))
        if blocks and not 0 <= min(blocks) <= max(blocks) < k_cache.shape[0]:
            raise ValueError(f"decoder stack: block ids must lie in [0, {k_cache.shape[0]})")
        index = [
            positions.to(torch.int64).contiguous(),
            meta.slot_mapping.to(torch.int64).contiguous(),
            *(torch.tensor(x, dtype=torch.int64)
              for x in (meta.query_start, meta.seq_lens, blocks, offsets)),
        ]
        levels = _levels(meta)
        pointers = ctypes.c_void_p * len(kv_caches)
        k_caches = pointers(*(k.data_ptr() for k, _ in kv_caches))
        v_caches = pointers(*(v.data_ptr() for _, v in kv_caches))
        level_fields = (0,) if levels is None else (
            levels[0], *(t.data_ptr() for t in _level_slots(levels))
        )
        batch = _Rows(rows, meta.num_seqs, *(t.data_ptr() for t in index), meta.block_size,
                      k_caches, v_caches, *level_fields)
        # the C side points into these: they live as long as the run
        keep = (wanted, index, levels, k_caches, v_caches)
        return StackRun(self, hidden, batch, head, None if head is None else logits, keep)

    def phase_seconds(self) -> dict[str, float]:
        """Wall seconds per phase (`PHASES`) of the steps since the last call, then zeroed;
        only for a stack built `timed`."""
        if not self.timed:
            raise RuntimeError("decoder stack: phase times need a stack built with timed=True")
        counters = self._lib.parrot_stack_phases().contents
        seconds = dict(zip(PHASES, counters, strict=True))
        for i in range(len(PHASES)):
            counters[i] = 0.0
        return seconds


class StackRun:
    """One step on a `DecoderStack`, layer by layer: `advance` runs what is left of it, or
    stops between two layers when asked to, and a later `advance` goes on from there. Between
    calls the step holds its KV blocks as they are: the layers done have written theirs."""

    def __init__(
        self,
        stack: DecoderStack,
        hidden: torch.Tensor,
        batch: _Rows,
        head: _Head | None,
        logits: torch.Tensor | None,
        keep: tuple[object, ...],
    ) -> None:
        self._stack = stack
        self._hidden = hidden
        self._batch = batch
        self._head = head
        self._logits = logits
        self._keep = keep
        self.next_layer = 0

    @property
    def done(self) -> bool:
        return self.next_layer == len(self._stack.layers)

    @property
    def logits(self) -> torch.Tensor | None:
        """The logits asked for (None without `logit_rows`); only once `done`."""
        if not self.done:
            raise RuntimeError("decoder stack: the step has layers left to run")
        return self._logits

    def advance(self, stop: ctypes.c_int | None = None) -> bool:
        """Run the layers left; with `stop`, return early once another thread has set it
        (non-zero), after at least one more layer. True when the step is done."""
        if self.done:
            return True
        stack, head = self._stack, self._head
        status = stack._lib.parrot_decoder_stack(
            self._hidden.data_ptr(), ctypes.byref(stack._shape), stack._layers, self.next_layer,
            len(stack.layers), ctypes.byref(self._batch),
            None if head is None else ctypes.byref(head),
            None if stop is None else ctypes.byref(stop), torch.get_num_threads(),
        )
        if status < 0:
            raise RuntimeError("decoder stack: the kernel failed (out of memory?)")
        self.next_layer = status or len(stack.layers)
        return self.done


class _Layer(ctypes.Structure):
    WEIGHTS = (
        "input_norm", "post_norm", "qkv", "qkv_bias", "o", "o_bias",
        "gate_up", "gate_up_bias", "down", "down_bias",
    )
    # each: qs, scales, mins, q8, q8_scales, q8_mins (or NULL), q8_block, q4_columns (split)
    Q4 = ("qkv", "o", "gate_up", "down")
    _fields_ = [
        *((name, ctypes.c_void_p) for name in WEIGHTS),
        *(field for name in Q4 for field in (
            *((f"{name}_{part}", ctypes.c_void_p)
              for part in ("qs", "scales", "mins", "q8", "q8_scales", "q8_mins")),
            (f"{name}_q8_block", ctypes.c_long), (f"{name}_q4_columns", ctypes.c_long),
        )),
    ]


class _Shape(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_long) for name in
          ("hidden", "heads", "kv_heads", "head_dim", "intermediate")),
        ("eps", ctypes.c_float), ("scale", ctypes.c_float),
        ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p), ("quantized_max_rows", ctypes.c_long),
        ("head_quantized_max_rows", ctypes.c_long),
    ]


class _Rows(ctypes.Structure):
    _fields_ = [
        ("rows", ctypes.c_long), ("seqs", ctypes.c_long),
        *((name, ctypes.c_void_p) for name in
          ("positions", "slots", "q_start", "tokens", "blocks", "offsets")),
        ("block_size", ctypes.c_long),
        ("k_caches", ctypes.POINTER(ctypes.c_void_p)), ("v_caches", ctypes.POINTER(ctypes.c_void_p)),
        ("levels", ctypes.c_long),
        *((name, ctypes.c_void_p) for name in
          ("level_member_offsets", "level_seqs", "level_block_offsets", "level_blocks",
           "level_tokens", "skip")),
    ]


class _Head(ctypes.Structure):
    _fields_ = [
        ("norm", ctypes.c_void_p), ("panels", ctypes.c_void_p), ("vocab", ctypes.c_long),
        ("count", ctypes.c_long), ("rows", ctypes.c_void_p), ("logits", ctypes.c_void_p),
        ("q8", ctypes.c_void_p), ("q8_scales", ctypes.c_void_p), ("q8_mins", ctypes.c_void_p),
        ("q8_block", ctypes.c_long),
    ]


_Levels = tuple[int, paged_levels.LevelIndex, torch.Tensor]


def _levels(meta: AttentionMetadata) -> _Levels | None:
    """The step's shared-prefix levels (checked by the step plan) with members as sequence
    indices, and per sequence the tokens its levels cover; None without levels."""
    if not meta.shared_prefixes:
        return None
    plan = step_plan_of(meta)
    seq_of_row = {row: s for s, row in enumerate(meta.query_start[:-1])}
    skip = [0] * meta.num_seqs
    for suffix in plan.suffixes:
        s = seq_of_row[suffix.row]
        skip[s] = meta.seq_lens[s] - suffix.span.num_tokens
    index = paged_levels.level_index([
        ([seq_of_row[r] for r in level.rows], level.span.blocks, level.span.num_tokens)
        for level in plan.levels
    ])
    return len(plan.levels), index, torch.tensor(skip, dtype=torch.int64)


def _level_slots(levels: _Levels) -> tuple[torch.Tensor, ...]:
    """The tensors in the order of `_Rows`' level fields."""
    _, index, skip = levels
    return (index.member_offsets, index.rows, index.block_offsets, index.blocks, index.tokens,
            skip)


def _check_layer(index: int, layer: LayerTensors, shape: StackShape) -> None:
    """Shapes of the panels and vectors, which the C side trusts."""
    from server.kernels.cpu.packed_linear import PANEL

    q_size = shape.heads * shape.head_dim
    qkv_size = q_size + 2 * shape.kv_heads * shape.head_dim
    panels = {
        "qkv": (shape.hidden, qkv_size), "o": (q_size, shape.hidden),
        "gate_up": (shape.hidden, 2 * shape.intermediate), "down": (shape.intermediate, shape.hidden),
    }
    expected = {name: (-(-n // PANEL), k, PANEL) for name, (k, n) in panels.items()}
    expected.update({f"{name}_bias": (n,) for name, (_, n) in panels.items()})
    expected.update(input_norm=(shape.hidden,), post_norm=(shape.hidden,))
    for name, want in expected.items():
        tensor = getattr(layer, name)
        if tensor is None and name.endswith("_bias"):
            continue
        _check_tensor(f"layer {index} {name}", tensor, want)
    for name, (k, n) in panels.items():
        q4, q8 = getattr(layer, f"{name}_q4"), getattr(layer, f"{name}_q8")
        if q8 is not None and q8.block not in Q8_BLOCKS:
            raise ValueError(f"decoder stack: layer {index} {name}_q8 has blocks of "
                             f"{q8.block} inputs, not {Q8_BLOCKS}")  # fmt: skip
        if q4 is not None and q8 is not None:  # split: q4's outputs, then q8's
            sizes = (q4.in_features, q8.in_features, q4.out_features + q8.out_features)
            if sizes != (k, k, n) or q4.out_features % PANEL:
                raise ValueError(
                    f"decoder stack: layer {index} {name} is split {q4.in_features} -> "
                    f"{q4.out_features} (4-bit) and {q8.in_features} -> {q8.out_features} "
                    f"(8-bit), expected {k} -> {n} together, the 4-bit part in whole panels "
                    f"of {PANEL}"
                )
            continue
        for kind, quantized in (("q4", q4), ("q8", q8)):
            if quantized is not None and (quantized.in_features, quantized.out_features) != (k, n):
                raise ValueError(
                    f"decoder stack: layer {index} {name}_{kind} is {quantized.in_features} -> "
                    f"{quantized.out_features}, expected {k} -> {n}"
                )


def _check_head(head: HeadTensors, shape: StackShape) -> None:
    """Shapes of the final norm and the head's panels, which the C side trusts."""
    from server.kernels.cpu.packed_linear import packed_shape

    _check_tensor("head norm", head.norm, (shape.hidden,))
    _check_tensor("head panels", head.panels, packed_shape(shape.hidden, head.vocab))
    q8 = head.q8
    if q8 is not None and (q8.in_features, q8.out_features) != (shape.hidden, head.vocab):
        raise ValueError(
            f"decoder stack: the 8-bit head is {q8.in_features} -> {q8.out_features}, "
            f"expected {shape.hidden} -> {head.vocab}"
        )
    if q8 is not None and q8.block not in Q8_BLOCKS:
        raise ValueError(f"decoder stack: the 8-bit head has blocks of {q8.block} inputs, "
                         f"not {Q8_BLOCKS}")  # fmt: skip


def _check_tensor(what: str, tensor: torch.Tensor | None, want: tuple[int, ...]) -> None:
    if (
        tensor is None or tuple(tensor.shape) != want or tensor.dtype != torch.float32
        or not tensor.is_contiguous() or tensor.device.type != "cpu"
    ):
        got = None if tensor is None else (tuple(tensor.shape), tensor.dtype)
        raise ValueError(f"decoder stack: {what} must be contiguous float32 {want}, got {got}")


@functools.cache
def _library(timed: bool = False) -> ctypes.CDLL | None:
    lib = native_library.load_function(
        SOURCES, "parrot_decoder_stack",
        [
            ctypes.c_void_p, ctypes.POINTER(_Shape), ctypes.POINTER(_Layer), ctypes.c_long,
            ctypes.c_long, ctypes.POINTER(_Rows), ctypes.POINTER(_Head),
            ctypes.POINTER(ctypes.c_int), ctypes.c_int,
        ],
        ctypes.c_int,
        defines=("PARROT_STACK_TIMERS",) if timed else (),
    )
    if lib is not None and timed:
        lib.parrot_stack_phases.argtypes = []
        lib.parrot_stack_phases.restype = ctypes.POINTER(ctypes.c_double * len(PHASES))
    return lib
