"""A GGUF's quantized weights, kept as they are for the CPU's decode steps.

A converted GGUF's float32 weights are what transformers dequantizes. Beside them
(`quantized.weights`, safetensors inside) this module saves, under the HF tensor's name, every
Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K and Q8_0 linear weight (an untied LM
head's too, unless 4-bit) and a token embedding of the types kept as int8 (the tied LM head):
4-bit values with scales and mins, or int8 values with a scale per 32 inputs (Q8_0, the Q5
types) or 16 (Q6_K, Q3_K, Q2_K) and, for Q5_1, Q5_K and Q2_K, a min per block; rows in HF's
order (llama.cpp permutes a Llama's rows of q and k, transformers un-permutes them, so do we; a
Qwen2's are as they are). The three 4-bit types are saved in Q4_1's form, scale * q + min:
Q4_0's d * (q - 8) as d * q + (-8 d); Q4_K's d * sc_j * q - dmin * m_j (block j of 32 in a
super-block of 256) with scale = d * sc_j and min = -(dmin * m_j); Q5_K likewise with q in
0..31, and Q2_K with q in 0..3 per block of 16; Q5_0's d * (q - 16) as int8 q - 16; Q6_K's and
Q3_K's d * sc_j * q with scale = d * sc_j (Q3_K's q in -4..3). Every such product is exact in
float32 (a float16 times a small integer) and a min is added once, as gguf-py does, so the
weights are the same numbers. The engine checks at load that they give back its float32 weights
bit for bit before it uses them (`server/engine/models`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["QUANTIZED_FILE", "QuantizedWeights", "read_quantized", "write_quantized"]

# safetensors inside; not *.safetensors, which the loader reads as the checkpoint
QUANTIZED_FILE = "quantized.weights"
BLOCK = 32  # weights per block in both formats
_Q4_0_BYTES = 18  # fp16 scale, 16 bytes of nibbles
_Q4_1_BYTES = 20  # fp16 scale, fp16 min, 16 bytes of nibbles
_Q8_0_BYTES = 34  # fp16 scale, 32 int8
_Q4_K_BYTES = 144  # fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles
_Q6_K_BYTES = 210  # 128 bytes of low nibbles, 64 of high 2-bit parts, 16 int8 scales, fp16 d
_Q5_0_BYTES = 22  # fp16 d, 4 bytes of high bits, 16 bytes of nibbles
_Q5_1_BYTES = 24  # fp16 d, fp16 m, 4 bytes of high bits, 16 bytes of nibbles
_Q5_K_BYTES = 176  # fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins, 32 of high bits, 128
_Q3_K_BYTES = 110  # 32 bytes of high bits, 64 of 2-bit parts, 12 of 6-bit scales, fp16 d
_Q2_K_BYTES = 84  # 16 bytes of 4-bit scales and mins, 64 of 2-bit values, fp16 d, fp16 dmin
_EMBEDDING = "model.embed_tokens.weight"
_HF_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


@dataclass
class QuantizedWeights:
    """By HF weight name: 4-bit weights (Q4_0, Q4_1, Q4_K) as (q uint8 [N, K] in 0..15,
    scales, mins float32 [N, K / 32]), weight = scale * q + min; the other types (Q8_0, Q6_K,
    the Q5 types, Q3_K, Q2_K) as (q int8 [N, K], scales float32 [N, K / 32] or [N, K / 16], mins
    as the scales for Q5_1, Q5_K and Q2_K, else None), weight = scale * q (+ min)."""

    q4: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    q8: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = field(
        default_factory=dict
    )


def write_quantized(gguf_path: Path, folder: Path, config: dict[str, Any]) -> int:
    """Save the Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K and Q8_0 linear weights
    and a token embedding of the types kept as int8 of the Llama or Qwen2 GGUF at `gguf_path` into `folder / QUANTIZED_FILE`
    (atomically); `config` is the converted HF config. Returns how many weights were saved (0:
    none, and no file)."""
    from gguf import GGUFReader
    from safetensors.torch import save_file

    reader = GGUFReader(str(gguf_path))
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads", heads)
    permuted = config.get("model_type") == "llama"  # llama.cpp permutes Llama's q/k rows only
    arrays: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        raw = np.asarray(t.data)
        if t.name == "token_embd.weight" and t.tensor_type.name in _Q8_READERS:
            q8, scales, mins = _Q8_READERS[t.tensor_type.name](raw)
            arrays.update({f"{_EMBEDDING}.q8": q8, f"{_EMBEDDING}.scales": scales})
            if mins is not None:
                arrays[f"{_EMBEDDING}.mins"] = mins
            continue
        name = _hf_name(t.name)
        if name is None:
            continue
        parts: dict[str, np.ndarray]
        if t.tensor_type.name in _Q8_READERS:
            q8, scales, mins = _Q8_READERS[t.tensor_type.name](raw)
            parts = {"q8": q8, "scales": scales}
            if mins is not None:
                parts["mins"] = mins
        elif t.tensor_type.name in _Q4_READERS and name != "lm_head.weight":
            # an untied head stays float32 unless 8-bit: the stack's head reads no 4-bit panels
            q, scales, mins = _Q4_READERS[t.tensor_type.name](raw)
            parts = {"q4": q, "scales": scales, "mins": mins}
        else:
            continue
        if permuted and (".q_proj." in name or ".k_proj." in name):
            if not heads:
                continue  # the row order is unknown: leave this weight to float32
            order = _hf_row_order(raw.shape[0], heads if ".q_proj." in name else kv_heads)
            parts = {kind: array[order] for kind, array in parts.items()}
        arrays.update({f"{name}.{kind}": array for kind, array in parts.items()})
    if not arrays:
        return 0
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".quantized.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / QUANTIZED_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return sum(k.endswith((".q4", ".q8")) for k in tensors)


def read_quantized(folder: Path) -> QuantizedWeights:
    """The saved quantized weights of a converted folder (none without a file)."""
    from safetensors.torch import load_file

    found = QuantizedWeights()
    path = folder / QUANTIZED_FILE
    if not path.exists():
        return found
    flat = load_file(str(path))
    for key in flat:
        name, kind = key.rsplit(".", 1)
        if kind == "q4":
            found.q4[name] = (flat[key], flat[f"{name}.scales"], flat[f"{name}.mins"])
        elif kind == "q8":
            found.q8[name] = (flat[key], flat[f"{name}.scales"], flat.get(f"{name}.mins"))
    return found


def _hf_name(gguf_name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`, `output.weight` (an
    untied head) -> `lm_head.weight`; None for others."""
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")
    if len(parts) != 4 or parts[0] != "blk" or parts[3] != "weight" or parts[2] not in _HF_NAMES:
        return None
    return f"model.layers.{parts[1]}.{_HF_NAMES[parts[2]]}.weight"


def _q4_1_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 rows [N, K / 32 * 20] bytes -> q [N, K] (0..15), scales and mins [N, K / 32]. A
    block is fp16 d, fp16 m, then 16 bytes whose low nibbles are weights 0..15 and high
    nibbles 16..31."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, _Q4_1_BYTES)
    scales = blocks[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    mins = blocks[:, :, 2:4].copy().view(np.float16)[:, :, 0].astype(np.float32)
    nibbles = blocks[:, :, 4:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=2).reshape(rows, -1)
    return q.astype(np.uint8), scales, mins


def _q4_0_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_0 rows [N, K / 32 * 18] bytes -> q [N, K] (0..15), scales and mins [N, K / 32] in
    Q4_1's form: a block is fp16 d, then 16 bytes of nibbles as Q4_1's, weight d * (q - 8),
    which is d * q + (-8 d) exactly (every term fits float32's 24 bits)."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, _Q4_0_BYTES)
    scales = blocks[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    nibbles = blocks[:, :, 2:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=2).reshape(rows, -1)
    return q.astype(np.uint8), scales, scales * -8


def _q4_k_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K rows [N, K / 256 * 144] bytes -> q [N, K] (0..15), scales and mins [N, K / 32] in
    Q4_1's form (weight = scale * q + min). A super-block is fp16 d, fp16 dmin, 12 bytes holding
    8 six-bit (sc, m) pairs (bytes 0-3: sc 0-3 and the top bits of sc 4-7; 4-7: m 0-3 and the
    top bits of m 4-7; 8-11: the low nibbles of sc 4-7 and m 4-7), then 4 x 32 bytes: block 2g
    in the low nibbles of bytes 32g .. 32g + 31, block 2g + 1 in their high nibbles."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, _Q4_K_BYTES)
    d = blocks[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    dmin = blocks[:, :, 2:4].copy().view(np.float16)[:, :, 0].astype(np.float32)
    sc, m = _k_scales_mins(blocks[:, :, 4:16])
    scales = (d[..., None] * sc.astype(np.float32)).reshape(rows, -1)
    mins = -(dmin[..., None] * m.astype(np.float32)).reshape(rows, -1)
    nibbles = blocks[:, :, 16:].reshape(rows, -1, 4, 1, 32)
    q = (nibbles >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 1, 2, 1)) & 0x0F
    return q.reshape(rows, -1).astype(np.uint8), scales, mins


_Q8 = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]  # q int8, scales, mins or None


def _k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's and Q5_K's 12 bytes [N, S, 12] -> 8 six-bit sc and m each [N, S, 8] (bytes 0-3:
    sc 0-3 and the top bits of sc 4-7; 4-7: m 0-3 and the top bits of m 4-7; 8-11: the low
    nibbles of sc 4-7 and m 4-7)."""
    low, high, extra = packed[:, :, 0:4], packed[:, :, 4:8], packed[:, :, 8:12]
    sc = np.concatenate([low & 0x3F, (extra & 0x0F) | ((low >> 2) & 0x30)], axis=2)
    m = np.concatenate([high & 0x3F, (extra >> 4) | ((high >> 2) & 0x30)], axis=2)
    return sc, m


def _q8_0_blocks(raw: np.ndarray) -> _Q8:
    """Q8_0 rows [N, K / 32 * 34] bytes -> q int8 [N, K], scales [N, K / 32]. A block is
    fp16 d, then 32 int8."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, _Q8_0_BYTES)
    scales = blocks[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    q = blocks[:, :, 2:].copy().view(np.int8).reshape(rows, -1)
    return q, scales, None


def _q5_blocks(blocks: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1 blocks' last 20 bytes [N, B, 20] (4 bytes of high bits, a little-endian
    uint32 whose bit j belongs to weight j, then 16 bytes whose low nibbles are weights 0..15 and
    high nibbles 16..31) -> q [N, B * 32] in 0..31."""
    rows, nb = blocks.shape[:2]
    qh = blocks[:, :, 0:4].copy().view("<u4")  # [N, B, 1]
    high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)  # [N, B, 32]
    nibbles = blocks[:, :, 4:]
    low = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=2)
    return (low | (high << 4)).reshape(rows, nb * 32)


def _q5_0_blocks(raw: np.ndarray) -> _Q8:
    """Q5_0 rows [N, K / 32 * 22] bytes -> q int8 [N, K] (-16..15), scales [N, K / 32]: a
    block is fp16 d then the 5-bit values, weight d * (q - 16)."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, _Q5_0_BYTES)
    scales = blocks[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    return (_q5_blocks(blocks[:, :, 2:]).astype(np.int8) - 16), scales, None


def _q5_1_blocks(raw: np.ndarray) -> _Q8:
    """Q5_1 rows [N, K / 32 * 24] bytes -> q int8 [N, K] (0..31), scales and mins
    [N, K / 32]: a block is fp16 d, fp16 m, then the 5-bit values, weight d * q + m."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, _Q5_1_BYTES)
    scales = blocks[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    mins = blocks[:, :, 2:4].copy().view(np.float16)[:, :, 0].astype(np.float32)
    return _q5_blocks(blocks[:, :, 4:]).astype(np.int8), scales, mins


def _q5_k_blocks(raw: np.ndarray) -> _Q8:
    """Q5_K rows [N, K / 256 * 176] bytes -> q int8 [N, K] (0..31), scales and mins
    [N, K / 32] (scale = d * sc_j, min = -(dmin * m_j), both exact in float32, weight = scale *
    q + min rounded once, as gguf-py's d * q - dm). A super-block is Q4_K's d, dmin and 12 bytes
    of (sc, m) pairs, then 32 bytes whose bit j of byte l is the high bit of weight l of block j,
    then Q4_K's 128 bytes of low nibbles."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, _Q5_K_BYTES)
    supers = blocks.shape[1]
    d = blocks[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    dmin = blocks[:, :, 2:4].copy().view(np.float16)[:, :, 0].astype(np.float32)
    sc, m = _k_scales_mins(blocks[:, :, 4:16])
    scales = (d[..., None] * sc.astype(np.float32)).reshape(rows, -1)
    mins = -(dmin[..., None] * m.astype(np.float32)).reshape(rows, -1)
    qh = blocks[:, :, 16:48].reshape(rows, supers, 1, 32)
    high = (qh >> np.arange(8, dtype=np.uint8).reshape(8, 1)) & 1  # [N, S, 8, 32]
    nibbles = blocks[:, :, 48:].reshape(rows, supers, 4, 1, 32)
    low = (nibbles >> np.array([0, 4], dtype=np.uint8).reshape(2, 1)) & 0x0F  # [N, S, 4, 2, 32]
    q = low.reshape(rows, supers, 8, 32) | (high << 4)
    return q.reshape(rows, -1).astype(np.int8), scales, mins


def _two_bit_parts(qs: np.ndarray) -> np.ndarray:
    """Q2_K's and Q3_K's 64 bytes [N, S, 64] -> 256 two-bit values [N, S, 256] per
    super-block: value 128 g + 32 s + l sits in bits 2s of byte 32 g + l."""
    rows, supers = qs.shape[:2]
    parts = (qs.reshape(rows, supers, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8)
             .reshape(4, 1)) & 3  # fmt: skip
    return parts.reshape(rows, supers, 256)


def _q3_k_blocks(raw: np.ndarray) -> _Q8:
    """Q3_K rows [N, K / 256 * 110] bytes -> q int8 [N, K] (-4..3) and scales [N, K / 16]
    (d * (sc - 32), exact), weight = scale * q. A super-block is 32 bytes of high bits (bit s of
    byte l: value 32 s + l; a clear bit subtracts 4), 64 bytes of low 2-bit parts, 12 bytes of
    16 six-bit scales (bytes 0-7: their low nibbles, scale j in byte j % 8's nibble j // 8;
    bytes 8-11: their top 2 bits, scale j in byte j % 4 at bit 2 (j // 4)), fp16 d."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, _Q3_K_BYTES)
    supers = blocks.shape[1]
    hmask = blocks[:, :, 0:32].reshape(rows, supers, 1, 32)
    high = ((hmask >> np.arange(8, dtype=np.uint8).reshape(8, 1)) & 1).reshape(rows, supers, 256)
    q = _two_bit_parts(blocks[:, :, 32:96]).astype(np.int8) - 4 * (1 - high.astype(np.int8))
    packed = blocks[:, :, 96:108]
    low = (packed[:, :, 0:8, None] >> np.array([0, 4], dtype=np.uint8)) & 0x0F  # [N, S, 8, 2]
    low = low.swapaxes(2, 3).reshape(rows, supers, 16)
    top = (packed[:, :, 8:12, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3  # [.., 4, 4]
    top = top.swapaxes(2, 3).reshape(rows, supers, 16)
    sc = (low | (top << 4)).astype(np.float32) - 32
    d = blocks[:, :, 108:110].copy().view(np.float16).astype(np.float32)
    return q.reshape(rows, -1), (d * sc).reshape(rows, -1), None


def _q2_k_blocks(raw: np.ndarray) -> _Q8:
    """Q2_K rows [N, K / 256 * 84] bytes -> q int8 [N, K] (0..3), scales and mins [N, K / 16]
    (scale = d * sc, min = -(dmin * m), exact), weight = scale * q + min rounded once, as
    gguf-py's dl * q - ml. A super-block is 16 bytes (sc in the low nibble, m in the high), 64
    bytes of 2-bit values, fp16 d, fp16 dmin."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, _Q2_K_BYTES)
    packed = blocks[:, :, 0:16]
    d = blocks[:, :, 80:82].copy().view(np.float16).astype(np.float32)
    dmin = blocks[:, :, 82:84].copy().view(np.float16).astype(np.float32)
    scales = (d * (packed & 0x0F).astype(np.float32)).reshape(rows, -1)
    mins = -(dmin * (packed >> 4).astype(np.float32)).reshape(rows, -1)
    q = _two_bit_parts(blocks[:, :, 16:80]).astype(np.int8)
    return q.reshape(rows, -1), scales, mins


def _q6_k_blocks(raw: np.ndarray) -> _Q8:
    """Q6_K rows [N, K / 256 * 210] bytes -> q int8 [N, K] (-32..31) and scales [N, K / 16]
    (d * sc, exact in float32: a float16 times an int8), weight = scale * q rounded once, as
    gguf-py dequantizes it. A super-block is 128 bytes of low nibbles (two halves of 128
    weights: bytes i hold weights i and i + 64 of the half), 64 bytes of 2-bit high parts (two
    halves: byte i holds weights i, i + 32, i + 64, i + 96), 16 int8 scales, fp16 d."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, _Q6_K_BYTES)
    supers = blocks.shape[1]
    ql = blocks[:, :, :128].reshape(rows, supers, 2, 1, 64)
    ql = (ql >> np.array([0, 4], dtype=np.uint8).reshape(2, 1)) & 0x0F  # [.., 2, 2, 64]
    qh = blocks[:, :, 128:192].reshape(rows, supers, 2, 1, 32)
    qh = (qh >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(4, 1)) & 0x03  # [.., 2, 4, 32]
    q = (ql.reshape(rows, supers, 8, 32) | (qh.reshape(rows, supers, 8, 32) << 4)).astype(np.int8)
    sc = blocks[:, :, 192:208].copy().view(np.int8).astype(np.float32)
    d = blocks[:, :, 208:210].copy().view(np.float16).astype(np.float32)
    return (q - 32).reshape(rows, -1), (d * sc).reshape(rows, -1), None


# by GGML type name: each gives (q, scales, mins) in Q4_1's form
_Q4_READERS = {"Q4_0": _q4_0_blocks, "Q4_1": _q4_1_blocks, "Q4_K": _q4_k_blocks}
# and (q int8, scales, mins or None) for Q8 panels: a scale per 32 inputs or 16 (Q6_K)
_Q8_READERS = {"Q8_0": _q8_0_blocks, "Q6_K": _q6_k_blocks, "Q5_0": _q5_0_blocks,
               "Q5_1": _q5_1_blocks, "Q5_K": _q5_k_blocks, "Q3_K": _q3_k_blocks,
               "Q2_K": _q2_k_blocks}  # fmt: skip


def _hf_row_order(rows: int, groups: int) -> np.ndarray:
    """The GGUF rows in HF's order: llama.cpp interleaves each head's two rotary halves;
    transformers undoes it (row r of HF = row order[r] of the GGUF)."""
    index = np.arange(rows)
    half = rows // groups // 2
    return index.reshape(groups, half, 2).swapaxes(2, 1).reshape(rows)
