"""Llama-family decoder (Llama, Mistral, Qwen2, SmolLM) over flattened sequences and a paged KV
cache: every layer attends through `server.kernels.attention`."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from server.engine.gguf_quantized import QuantizedWeights
from server.engine.models.config import ModelConfig
from server.engine.models.layer_run import LayerRun
from server.engine.models.linear import QUANTIZED_HEAD_MAX_ROWS, QUANTIZED_MAX_ROWS, Linear
from server.engine.models.rms_norm import RMSNorm
from server.engine.models.rope import RotaryEmbedding, apply_rope
from server.kernels import AttentionMetadata, attention, cpu
from server.kernels.cpu import huge_pages, q4_linear, q8_linear
from server.kernels.cpu.decoder_stack import (
    DecoderStack,
    HeadTensors,
    LayerTensors,
    StackRun,
    StackShape,
)
from server.kernels.cpu.decoder_stack import available as decoder_stack_available
from server.kernels.cpu.decoder_stack import supports as decoder_stack_supports
from server.kernels.cpu.q8_linear import Q8Panels

log = logging.getLogger(__name__)

KVCache = tuple[torch.Tensor, torch.Tensor]
Device = torch.device | str | None


class LlamaForCausalLM(nn.Module):
    """A causal LM whose parameters stay uninitialised until `load_weights`.

    Inputs are flattened: the step's tokens of all sequences, one after another, no padding.
    `kv_caches[i]` is layer i's (k_cache, v_cache), each [num_blocks, block_size, Hkv, D].
    """

    def __init__(
        self,
        config: ModelConfig,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        packed_linear: bool = True,
        fused_layers: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        dtype = dtype or torch.get_default_dtype()
        # CPU float32 linear layers run on the packed kernel once loaded (server/kernels/cpu)
        self.packed_linear = (
            packed_linear and torch.device(device or "cpu").type == "cpu" and dtype == torch.float32
        )
        # Packed models run their steps through one C call for all layers (built by
        # load_weights; see server/kernels/cpu/decoder_stack.c)
        self.fused_layers = fused_layers
        self.decoder_stack: DecoderStack | None = None
        self.embed_tokens = nn.Parameter(
            torch.empty(config.vocab_size, config.hidden_size, device=device, dtype=dtype)
        )
        self.layers = nn.ModuleList(
            DecoderLayer(config, device, dtype) for _ in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, device, dtype)
        self.lm_head: Linear | None = None
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, False, device, dtype)
        # A tied head reads the [vocab, H] embedding as [H, vocab]; on CPU that product is ~2x
        # faster from a transposed copy (made by load_weights: [H, vocab], or its panels when
        # packed), worth its memory. A buffer: the bytes a step streams are counted once.
        self.register_buffer("tied_head", None, persistent=False)
        # the packed tied head 8-bit too (attach_quantized), for steps of few rows
        self.head_q8: Q8Panels | None = None
        self.rope = RotaryEmbedding(
            config.head_dim, config.max_position_embeddings, config.rope_theta,
            config.rope_scaling, device=device, dtype=dtype,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Run the step's T tokens (ids and positions, [T] each); returns hidden states [T, H].

        Writes every layer's new K/V into `kv_caches` at `meta.slot_mapping`.
        """
        if self._runs_on_decoder_stack(meta):
            assert self.decoder_stack is not None
            if len(kv_caches) != len(self.layers):
                raise ValueError(
                    f"expected {len(self.layers)} layer KV caches, got {len(kv_caches)}"
                )
            hidden = F.embedding(input_ids, self.embed_tokens)
            self.decoder_stack.run(hidden, positions, meta, kv_caches)
            return self.norm(hidden)
        run = LayerRun(self, input_ids, positions, kv_caches, meta)
        run.advance()
        return run.hidden

    def forward_logits(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
        rows: list[int],
    ) -> torch.Tensor:
        """Run the step like `forward` and return the float32 logits [len(rows), vocab] of the
        step's rows `rows` only. On the decoder stack the final norm and the LM head run in the
        same C call as the layers."""
        run = self.start_logits(input_ids, positions, kv_caches, meta, rows) if rows else None
        if run is not None:
            run.advance()
            assert run.logits is not None
            return run.logits
        hidden = self(input_ids, positions, kv_caches, meta)  # no rows, or a headless stack
        picked = hidden.index_select(0, torch.tensor(rows, dtype=torch.long, device=hidden.device))
        return self.compute_logits(picked).float()

    def start_logits(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
        rows: list[int],
    ) -> StackRun | LayerRun | None:
        """`forward_logits` as a run that can pause between layers and go on later (`advance`;
        no logits when `rows` is empty): on the decoder stack a `StackRun`, else a `LayerRun`;
        None for rows of a stack built without its head (then `forward_logits` runs it)."""
        stack = self.decoder_stack
        if stack is None or not self._runs_on_decoder_stack(meta):
            return LayerRun(self, input_ids, positions, kv_caches, meta, rows)
        if rows and stack.head is None:
            return None
        hidden = F.embedding(input_ids, self.embed_tokens)
        return stack.start(hidden, positions, meta, kv_caches, rows or None)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits [N, vocab] for hidden states [N, H] (pick the rows you need first)."""
        if self.lm_head is not None:
            return self.lm_head(hidden).float()
        if self.head_q8 is not None and hidden.shape[0] <= QUANTIZED_HEAD_MAX_ROWS:
            return q8_linear.q8_linear(hidden.contiguous(), self.head_q8)
        if self.tied_head is not None and self.tied_head.dim() == 3:
            return cpu.packed_linear(hidden.contiguous(), self.tied_head, self.config.vocab_size)
        if self.tied_head is not None:
            return torch.mm(hidden, self.tied_head).float()
        return F.linear(hidden, self.embed_tokens).float()

    def weight_bytes_read(self, rows: int) -> int:
        """Bytes of weights a step of `rows` rows reads: every linear layer's (4-bit where it
        uses them at that many rows), the LM head's, the norms' and the rows' embeddings; what
        a decode step's time is bound by at small batches."""
        total = 0
        for module in self.modules():
            if isinstance(module, Linear):
                total += module.bytes_read(rows)
            elif isinstance(module, RMSNorm):
                total += module.weight.numel() * module.weight.element_size()
        if self.head_q8 is not None and rows <= QUANTIZED_HEAD_MAX_ROWS:
            total += self.head_q8.nbytes
        elif self.lm_head is None:  # tied (a separate head is one of the Linear modules)
            head = self.tied_head if self.tied_head is not None else self.embed_tokens
            total += head.numel() * head.element_size()
        return total + rows * self.embed_tokens[0].numel() * self.embed_tokens.element_size()

    @torch.no_grad()
    def load_weights(
        self, weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]
    ) -> None:
        """Copy HF-named tensors (`model.layers.0.self_attn.q_proj.weight`, ...) into the fused
        parameters; raises ValueError on unknown, missing or mis-shaped tensors."""
        items = weights.items() if isinstance(weights, Mapping) else weights
        if self.config.tie_word_embeddings and self.lm_head is not None:
            self.lm_head = None  # untied by an earlier load: tied again unless this one differs
        pending = self.weight_slots()
        copier = _WeightCopier()
        stored_head = None  # a tied model's lm_head.weight: settled once the embedding is in
        for name, tensor in items:
            if name.endswith("rotary_emb.inv_freq"):  # recomputed from the config
                continue
            if name == "lm_head.weight" and self.lm_head is None:
                stored_head = tensor
                continue
            slot = pending.pop(name, None)
            if slot is None:
                known = name in self.weight_slots()
                raise ValueError(
                    f"checkpoint tensor {name!r} " + ("appears twice" if known else "is unknown")
                )
            if tuple(tensor.shape) != tuple(slot.shape):
                raise ValueError(
                    f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(slot.shape)}"
                )
            copier.copy(slot, tensor)
        if stored_head is not None:
            self._settle_tied_head(stored_head, pending, copier)
        if pending:
            missing = sorted(pending)
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ValueError(f"checkpoint lacks tensors: {', '.join(missing[:5])}{more}")
        pack = self.packed_linear and cpu.available()
        head_t = self.tied_head = self.head_q8 = None
        if self.lm_head is None and self.embed_tokens.device.type == "cpu":
            head_t = self.embed_tokens.detach().t().contiguous()
            self.tied_head = head_t
        if pack:
            self._pack_weights(head_t)
            self.decoder_stack = self._build_decoder_stack()

    def _settle_tied_head(
        self, head: torch.Tensor, pending: dict[str, torch.Tensor], copier: _WeightCopier
    ) -> None:
        """A checkpoint with tie_word_embeddings that stores lm_head.weight, read as
        transformers does: without an embedding tensor, the head is the embedding; equal to the
        embedding, the two stay tied; different, the config is wrong and the head is its own."""
        embed = self.embed_tokens
        if tuple(head.shape) != tuple(embed.shape):
            raise ValueError(
                f"checkpoint tensor 'lm_head.weight' has shape {tuple(head.shape)}, "
                f"expected {tuple(embed.shape)}"
            )
        if pending.pop("model.embed_tokens.weight", None) is not None:
            copier.copy(embed, head)
            return
        if torch.equal(head.to(device=embed.device, dtype=embed.dtype), embed):
            return
        log.warning(
            "config.json sets tie_word_embeddings, but the checkpoint's lm_head.weight differs "
            "from its embedding: using it as a separate LM head (as transformers does)"
        )
        c = self.config
        self.lm_head = Linear(c.hidden_size, c.vocab_size, False, embed.device, embed.dtype)
        copier.copy(self.lm_head.weight, head)

    def attach_quantized(self, weights: QuantizedWeights) -> int:
        """Give the packed linear layers their 4-bit or 8-bit weights, a packed untied head its
        8-bit (Q8_0, Q6_K) weight and a packed tied head its 8-bit embedding where `weights`
        (`server.engine.gguf_quantized`) has every weight a layer fuses (all of one kind, or
        4-bit parts then 8-bit ones, as Q4_K_M's q/k/v with a Q6_K v: `Linear.attach_split`)
        and they equal its float32 weight bit for bit; rebuilds the decoder stack to use them.
        Returns how many layers (the head counted) took them."""
        attached = 0
        for i, layer in enumerate(self.layers):
            for prefix, block in (("self_attn", layer.self_attn), ("mlp", layer.mlp)):
                for linear, names in block.checkpoint_parts().items():
                    if not linear.packed:
                        continue
                    keys = [f"model.layers.{i}.{prefix}.{name}.weight" for name in names]
                    attached += _attach(linear, weights, keys)
        head = weights.q8.get("lm_head.weight")  # an untied head: 8-bit, as the stack reads
        if head is not None and self.lm_head is not None and self.lm_head.packed:
            attached += self.lm_head.attach_q8(q8_linear.pack_q8(*head))
        embedding = weights.q8.get("model.embed_tokens.weight")
        if embedding is not None and self.tied_head is not None and self.tied_head.dim() == 3:
            panels = q8_linear.pack_q8(*embedding)
            if panels.out_features == self.config.vocab_size and q8_linear.matches(
                panels, self.tied_head
            ):
                self.head_q8 = panels
                attached += 1
        if attached:
            self.decoder_stack = self._build_decoder_stack()
        return attached

    def _pack_weights(self, head_t: torch.Tensor | None) -> None:
        """Every linear layer's panels, and the tied head's, in one buffer on huge pages, in
        the order a step reads them: a batch-1 step streams them 2-5% faster than from one
        allocation each (server/kernels/cpu/huge_pages.py)."""
        linears = [m for m in self.modules() if isinstance(m, Linear) and not m.packed]
        shapes = [m.packed_shape() for m in linears]
        if head_t is not None:
            shapes.append(cpu.packed_shape(*head_t.shape))
        sizes = [math.prod(shape) for shape in shapes]
        arena = huge_pages.zeros(sum(sizes))
        views = [part.view(shape) for part, shape in zip(arena.split(sizes), shapes, strict=True)]
        for module, view in zip(linears, views, strict=False):
            module.pack(view)
        if head_t is not None:
            self.tied_head = cpu.pack(head_t, views[-1])

    def _runs_on_decoder_stack(self, meta: AttentionMetadata) -> bool:
        """A step on the default CPU backend (whose kernels the stack uses; other backends
        are chosen for what they run)."""
        return self.decoder_stack is not None and (meta.backend or "cpu") == "cpu"

    def _build_decoder_stack(self) -> DecoderStack | None:
        c = self.config
        if not (
            self.fused_layers
            and decoder_stack_available()
            and decoder_stack_supports(c.num_heads, c.num_kv_heads, c.head_dim)
        ):
            return None
        shape = StackShape(
            c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size,
            c.rms_norm_eps, self.rope.cos, self.rope.sin,
        )
        layers = []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            linears = {"qkv": attn.qkv_proj, "o": attn.o_proj, "gate_up": mlp.gate_up_proj,
                       "down": mlp.down_proj}
            tensors = {name: lin.panels.data for name, lin in linears.items() if lin.panels is not None}
            if len(tensors) != len(linears):
                return None
            biases = {f"{name}_bias": None if lin.bias is None else lin.bias.data
                      for name, lin in linears.items()}
            quantized = {f"{name}_{kind}": getattr(lin, kind)
                         for name, lin in linears.items() for kind in ("q4", "q8")}  # fmt: skip
            layers.append(LayerTensors(
                layer.input_layernorm.weight.data, layer.post_attention_layernorm.weight.data,
                **tensors, **biases, **quantized,
            ))
        return DecoderStack(
            shape, layers, self._head_tensors(), quantized_max_rows=QUANTIZED_MAX_ROWS,
            head_quantized_max_rows=QUANTIZED_HEAD_MAX_ROWS,
        )

    def _head_tensors(self) -> HeadTensors | None:
        """The final norm and the packed LM head (tied or not) for the stack; None when the
        head is not packed."""
        if self.lm_head is not None:
            panels = self.lm_head.panels
        else:
            panels = self.tied_head if self.tied_head is not None and self.tied_head.dim() == 3 else None
        if panels is None:
            return None
        return HeadTensors(self.norm.weight.data, panels.data, self.config.vocab_size,
                           self.lm_head.q8 if self.lm_head is not None else self.head_q8)

    def weight_slots(self) -> dict[str, torch.Tensor]:
        """HF tensor name -> the view of our parameter it fills (shape as in the checkpoint)."""
        self.decoder_stack = None  # the slots unpack the layers the stack points into
        slots = {
            "model.embed_tokens.weight": self.embed_tokens,
            "model.norm.weight": self.norm.weight,
        }
        if self.lm_head is not None:
            slots.update(_plain_slots(self.lm_head, "lm_head"))
        for i, layer in enumerate(self.layers):
            for name, view in layer.weight_slots().items():
                slots[f"model.layers.{i}.{name}"] = view
        return slots


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, device: Device, dtype: torch.dtype) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, device, dtype)
        self.self_attn = Attention(config, device, dtype)
        self.post_attention_layernorm = RMSNorm(
            config.hidden_size, config.rms_norm_eps, device, dtype
        )
        self.mlp = MLP(config, device, dtype)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))

    def weight_slots(self) -> dict[str, torch.Tensor]:
        slots = {
            "input_layernorm.weight": self.input_layernorm.weight,
            "post_attention_layernorm.weight": self.post_attention_layernorm.weight,
        }
        slots.update({f"self_attn.{k}": v for k, v in self.self_attn.weight_slots().items()})
        slots.update({f"mlp.{k}": v for k, v in self.mlp.weight_slots().items()})
        return slots


class Attention(nn.Module):
    """GQA self-attention with one fused q/k/v projection."""

    def __init__(self, config: ModelConfig, device: Device, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim**-0.5
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = Linear(
            config.hidden_size, q_size + 2 * kv_size, config.attention_bias, device, dtype
        )
        self.o_proj = Linear(q_size, config.hidden_size, config.attention_out_bias, device, dtype)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(x).view(num_tokens, self.num_heads + 2 * self.num_kv_heads, -1)
        qk_heads = self.num_heads + self.num_kv_heads
        # q and k are rotated together: one set of RoPE ops per layer instead of two
        qk = apply_rope(qkv[:, :qk_heads], cos, sin)
        q, k, v = qk[:, : self.num_heads], qk[:, self.num_heads :], qkv[:, qk_heads:]
        out = attention(q, k, v, k_cache, v_cache, meta, self.scale)
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))

    def checkpoint_parts(self) -> dict[Linear, tuple[str, ...]]:
        """Each projection's checkpoint weights, in the order its output rows hold them."""
        return {self.qkv_proj: ("q_proj", "k_proj", "v_proj"), self.o_proj: ("o_proj",)}

    def weight_slots(self) -> dict[str, torch.Tensor]:
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        names = self.checkpoint_parts()[self.qkv_proj]
        parts = dict(zip(names, ((0, q_size), (q_size, kv_size), (q_size + kv_size, kv_size)),
                         strict=True))  # fmt: skip
        return {
            **_fused_slots(self.qkv_proj, parts),
            **_plain_slots(self.o_proj, "o_proj"),
        }


class MLP(nn.Module):
    """SwiGLU feed-forward with one fused gate/up projection."""

    def __init__(self, config: ModelConfig, device: Device, dtype: torch.dtype) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = Linear(
            config.hidden_size, 2 * config.intermediate_size, config.mlp_bias, device, dtype
        )
        self.down_proj = Linear(
            config.intermediate_size, config.hidden_size, config.mlp_bias, device, dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        gate, up = gate_up[:, : self.intermediate_size], gate_up[:, self.intermediate_size :]
        return self.down_proj(F.silu(gate).mul_(up))

    def checkpoint_parts(self) -> dict[Linear, tuple[str, ...]]:
        """Each projection's checkpoint weights, in the order its output rows hold them."""
        return {self.gate_up_proj: ("gate_proj", "up_proj"), self.down_proj: ("down_proj",)}

    def weight_slots(self) -> dict[str, torch.Tensor]:
        size = self.intermediate_size
        names = self.checkpoint_parts()[self.gate_up_proj]
        parts = dict(zip(names, ((0, size), (size, size)), strict=True))
        return {**_fused_slots(self.gate_up_proj, parts), **_plain_slots(self.down_proj, "down_proj")}


class _WeightCopier:
    """Copies checkpoint tensors into parameter views, transposing [out, in] weights into our
    [in, out] layout. A strided destination is filled through one reused dense buffer:
    transposing straight into it is an order of magnitude slower, and a fresh temporary per
    tensor pays page faults for every byte again."""

    def __init__(self) -> None:
        self.scratch: torch.Tensor | None = None

    def copy(self, slot: torch.Tensor, tensor: torch.Tensor) -> None:
        if not (slot.dim() == 2 and slot.stride(0) == 1 and slot.shape[0] > 1):
            slot.copy_(tensor)
            return
        dense_slot = slot.t()  # [in, size]: our layout
        if dense_slot.is_contiguous():
            dense_slot.copy_(tensor.t())
            return
        n = tensor.numel()
        if self.scratch is None or self.scratch.numel() < n:
            self.scratch = torch.empty(n, dtype=slot.dtype, device=slot.device)
        buffer = self.scratch[:n].view(dense_slot.shape)
        buffer.copy_(tensor.t())
        dense_slot.copy_(buffer)


def _attach(linear: Linear, weights: QuantizedWeights, keys: list[str]) -> bool:
    """Give `linear`, fused from the weights `keys` in order, the quantized panels that read
    the fewest bytes: 4-bit if all its parts are; split when 4-bit parts lead and 8-bit ones
    follow (Q4_K_M's q/k/v with a Q6_K v); else all 8-bit, 4-bit parts taken as int8 with their
    scales and mins (Q3_K_M's Q3_K q and k before a Q4_K v). True if attached."""
    n4 = next((j for j, k in enumerate(keys) if k not in weights.q4), len(keys))
    if n4 == len(keys):
        return linear.attach_q4(_q4_panels(weights, keys))
    rest = keys[n4:]
    if n4 and all(k in weights.q8 for k in rest) and linear.attach_split(
        _q4_panels(weights, keys[:n4]), _q8_panels(weights, rest)
    ):
        return True
    q8 = _q8_panels(weights, keys)  # (also where a split's 4-bit part ends mid-panel)
    return q8 is not None and linear.attach_q8(q8)


def _q4_panels(weights: QuantizedWeights, keys: list[str]) -> q4_linear.Q4Panels:
    """The 4-bit weights `keys` (one or more) stacked, outputs in order, into panels."""
    q, scales, mins = (torch.cat(t) for t in zip(*(weights.q4[k] for k in keys), strict=True))
    return q4_linear.pack_q4(q, scales, mins)


def _q8_panels(weights: QuantizedWeights, keys: list[str]) -> q8_linear.Q8Panels | None:
    """The weights `keys` stacked into 8-bit panels (4-bit ones as int8, with their scales
    and mins); None for no keys or a key neither. Parts of 32-input blocks beside parts of 16
    (Q5_K's q and k, Q6_K's v) take 16-input blocks (each scale twice), and parts without mins
    beside parts with them mins of 0 (fma(q, d, 0) is d * q rounded once, as before): the same
    weights, bit for bit."""
    if not keys or not all(k in weights.q8 or k in weights.q4 for k in keys):
        return None
    parts = [weights.q8[k] if k in weights.q8 else _q4_as_q8(*weights.q4[k]) for k in keys]
    block = min(q.shape[1] // scales.shape[1] for q, scales, _ in parts)
    affine = any(mins is not None for _, _, mins in parts)
    qs, scales, mins = [], [], []
    for q, d, m in parts:
        repeat = q.shape[1] // d.shape[1] // block
        qs.append(q)
        scales.append(d.repeat_interleave(repeat, dim=1))
        if affine:
            mins.append(torch.zeros_like(scales[-1]) if m is None else m.repeat_interleave(
                repeat, dim=1))  # fmt: skip
    return q8_linear.pack_q8(torch.cat(qs), torch.cat(scales), torch.cat(mins) if affine else None)


def _q4_as_q8(
    q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return q.to(torch.int8), scales, mins  # 0..15 as int8: scale * q + min, the same weights


def _fused_slots(linear: Linear, parts: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    slots = {}
    linear.unpack()
    assert linear.weight_t is not None
    for name, (start, size) in parts.items():
        slots[f"{name}.weight"] = linear.weight_t.narrow(1, start, size).t()
        if linear.bias is not None:
            slots[f"{name}.bias"] = linear.bias.narrow(0, start, size)
    return slots


def _plain_slots(linear: Linear, name: str) -> dict[str, torch.Tensor]:
    linear.unpack()
    slots = {f"{name}.weight": linear.weight}
    if linear.bias is not None:
        slots[f"{name}.bias"] = linear.bias
    return slots

