"""A GGUF's quantized weights, kept as they are for the CPU's decode steps.

A converted GGUF's float32 weights are what transformers dequantizes. Beside them
(`quantized.weights`, safetensors inside) this module saves, under the HF tensor's name, every
Q4_0, Q4_1, Q4_K, Q8_0 and Q6_K linear weight (an untied LM head's too) and a Q8_0 or Q6_K
token embedding (the tied LM head): 4-bit values with scales and mins, or 8-bit values with a
scale per 32 inputs (Q8_0) or 16 (Q6_K's 6-bit values); rows in HF's order (llama.cpp permutes
a Llama's rows of q and k, transformers un-permutes them, so do we; a Qwen2's are as they are).
The three 4-bit types are saved in Q4_1's form, scale * q + min: Q4_0's d * (q - 8) as
d * q + (-8 d); Q4_K's d * sc_j * q - dmin * m_j (block j of 32 in a super-block of 256) with
scale = d * sc_j and min = -(dmin * m_j); Q6_K's d * sc_j * q with scale = d * sc_j. Every
such product is exact in float32 (a float16 times a small integer), so the weights are the same
numbers. The engine checks at load that they give back its float32 weights bit for bit before it
uses them (`server/engine/models`).
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
    scales, mins float32 [N, K / 32]), weight = scale * q + min; Q8_0 and Q6_K weights as
    (q int8 [N, K], scales float32 [N, K / 32] or [N, K / 16]), weight = scale * q."""

    q4: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    q8: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def write_quantized(gguf_path: Path, folder: Path, config: dict[str, Any]) -> int:
    """Save the Q4_0, Q4_1, Q4_K, Q8_0 and Q6_K linear weights and a Q8_0 or Q6_K token
    embedding of the Llama or Qwen2 GGUF at `gguf_path` into `folder / QUANTIZED_FILE`
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
            q8, scales = _Q8_READERS[t.tensor_type.name](raw)
            arrays.update({f"{_EMBEDDING}.q8": q8, f"{_EMBEDDING}.scales": scales})
            continue
        name = _hf_name(t.name)
        if name is None:
            continue
        parts: dict[str, np.ndarray]
        if t.tensor_type.name in _Q8_READERS:
            q8, scales = _Q8_READERS[t.tensor_type.name](raw)
            parts = {"q8": q8, "scales": scales}
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
            found.q8[name] = (flat[key], flat[f"{name}.scales"])
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
    packed = blocks[:, :, 4:16]
    low, high, extra = packed[:, :, 0:4], packed[:, :, 4:8], packed[:, :, 8:12]
    sc = np.concatenate([low & 0x3F, (extra & 0x0F) | ((low >> 2) & 0x30)], axis=2)
    m = np.concatenate([high & 0x3F, (extra >> 4) | ((high >> 2) & 0x30)], axis=2)
    scales = (d[..., None] * sc.astype(np.float32)).reshape(rows, -1)
    mins = -(dmin[..., None] * m.astype(np.float32)).reshape(rows, -1)
    nibbles = blocks[:, :, 16:].reshape(rows, -1, 4, 1, 32)
    q = (nibbles >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 1, 2, 1)) & 0x0F
    return q.reshape(rows, -1).astype(np.uint8), scales, mins


def _q8_0_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 rows [N, K / 32 * 34] bytes -> q int8 [N, K], scales [N, K / 32]. A block is
    fp16 d, then 32 int8."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, _Q8_0_BYTES)
    scales = blocks[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    q = blocks[:, :, 2:].copy().view(np.int8).reshape(rows, -1)
    return q, scales


def _q6_k_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    return (q - 32).reshape(rows, -1), (d * sc).reshape(rows, -1)


# by GGML type name: each gives (q, scales, mins) in Q4_1's form
_Q4_READERS = {"Q4_0": _q4_0_blocks, "Q4_1": _q4_1_blocks, "Q4_K": _q4_k_blocks}
# and (q int8, scales) for Q8 panels: a scale per 32 inputs (Q8_0) or 16 (Q6_K)
_Q8_READERS = {"Q8_0": _q8_0_blocks, "Q6_K": _q6_k_blocks}


def _hf_row_order(rows: int, groups: int) -> np.ndarray:
    """The GGUF rows in HF's order: llama.cpp interleaves each head's two rotary halves;
    transformers undoes it (row r of HF = row order[r] of the GGUF)."""
    index = np.arange(rows)
    half = rows // groups // 2
    return index.reshape(groups, half, 2).swapaxes(2, 1).reshape(rows)
