"""Tiny GGUF files written from HF folders, as llama.cpp lays them out, for the loader's tests."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.torch import load_file

Q2_K = gguf.GGMLQuantizationType.Q2_K
Q3_K = gguf.GGMLQuantizationType.Q3_K
Q4_K = gguf.GGMLQuantizationType.Q4_K
Q5_K = gguf.GGMLQuantizationType.Q5_K
Q6_K = gguf.GGMLQuantizationType.Q6_K
Q8_0 = gguf.GGMLQuantizationType.Q8_0
LAYER_TYPES = {"q4_0": gguf.GGMLQuantizationType.Q4_0, "q4_1": gguf.GGMLQuantizationType.Q4_1,
               "q4_k": Q4_K, "q8_0": Q8_0, "q5_0": gguf.GGMLQuantizationType.Q5_0,
               "q5_1": gguf.GGMLQuantizationType.Q5_1, "q5_k": Q5_K, "q3_k": Q3_K,
               "q2_k": Q2_K}  # fmt: skip


def write_llama_gguf(
    folder: Path, path: Path, quant: str | None = None, q8_0_layers: tuple[str, ...] = (),
    arch: str = "llama", q6_k_layers: tuple[str, ...] = (), q4_k_layers: tuple[str, ...] = (),
) -> None:
    """Write an HF Llama (or, with `arch="qwen2"`, Qwen2) folder as a GGUF the way llama.cpp
    lays one out (Llama's q/k rows permuted, Qwen2's as they are); with `quant` ("q4_0",
    "q4_1", "q4_k", "q5_0", "q5_1", "q5_k", "q3_k", "q2_k" or "q8_0"), the linear layers' weights (an untied head's too) quantized to
    that type and the embedding to Q8_0, as llama.cpp's files of those types hold them (the
    norms stay float32), except the tensors named in `q8_0_layers`, `q6_k_layers` or
    `q4_k_layers` (GGUF
    names: `blk.1.attn_v.weight`, `token_embd.weight`), quantized to Q8_0 or Q6_K (mixed files,
    as Q4_K_M's are)."""

    config = json.loads((folder / "config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["id"] for t in tokenizer["added_tokens"] if t["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m)
                             for m in tokenizer["model"]["merges"]])
    writer.add_bos_token_id(config["eos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_chat_template((folder / "chat_template.jinja").read_text())
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, tensor in load_file(str(folder / "model.safetensors")).items():
        array = tensor.numpy()
        if name == "model.embed_tokens.weight":
            gguf_name = "token_embd.weight"
        elif name == "model.norm.weight":
            gguf_name = "output_norm.weight"
        elif name == "lm_head.weight":
            gguf_name = "output.weight"
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            module, kind = rest.rsplit(".", 1)
            gguf_name = f"blk.{layer}.{names[module]}.{kind}"
            if arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
                array = permute_rope_rows(array, heads if module.endswith("q_proj") else kv_heads)
        qtype = None
        if gguf_name in q6_k_layers:
            qtype = Q6_K
        elif gguf_name in q4_k_layers:
            qtype = Q4_K
        elif gguf_name in q8_0_layers:
            qtype = Q8_0
        elif quant is not None and name.endswith(("_proj.weight", "lm_head.weight")):
            qtype = LAYER_TYPES[quant]
        elif quant is not None and name == "model.embed_tokens.weight":
            qtype = Q8_0
        if qtype in K_QUANTIZERS:  # gguf-py reads these but does not write them
            quantized = K_QUANTIZERS[qtype](np.ascontiguousarray(array))
            writer.add_tensor(gguf_name, quantized, raw_shape=quantized.shape, raw_dtype=qtype)
        elif qtype is not None:
            quantized = gguf.quants.quantize(np.ascontiguousarray(array), qtype)
            writer.add_tensor(gguf_name, quantized, raw_shape=quantized.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def permute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """HF "rotate half" rows -> llama.cpp interleaved pairs, per head."""
    rows = weight.shape[0]
    return (weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def quantize_q4_k(weight: np.ndarray) -> np.ndarray:
    """A float32 [N, K] weight (K a multiple of 256) as Q4_K bytes [N, K / 256 * 144]: per
    super-block d and dmin (float16), 8 blocks of 32 with 6-bit sc and m, weight ~ d * sc * q -
    dmin * m. A plain min/max fit (not llama.cpp's search): any valid encoding will do, since
    the tests compare against what gguf-py's dequantize makes of it."""
    d, dmin, packed, q = _k_fit(weight, 15)
    n, supers = q.shape[:2]
    nibbles = q[:, :, 0::2] | (q[:, :, 1::2] << 4)  # block 2g low, 2g + 1 high: [n, s, 4, 32]
    out = np.concatenate([d[..., None].view(np.uint8), dmin[..., None].view(np.uint8), packed,
                          nibbles.reshape(n, supers, 128)], axis=2)
    return out.reshape(n, -1)


def quantize_q5_k(weight: np.ndarray) -> np.ndarray:
    """`quantize_q4_k` for Q5_K [N, K / 256 * 176]: q in 0..31, its high bits in 32 bytes
    after the scales (bit j of byte l: weight l of block j), then Q4_K's nibbles of the rest."""
    d, dmin, packed, q = _k_fit(weight, 31)
    n, supers = q.shape[:2]
    high = (q >> 4) & 1  # [n, s, 8, 32]
    qh = (high << np.arange(8, dtype=np.uint8).reshape(8, 1)).sum(axis=2, dtype=np.uint8)
    low = q & 0x0F
    nibbles = low[:, :, 0::2] | (low[:, :, 1::2] << 4)
    out = np.concatenate([d[..., None].view(np.uint8), dmin[..., None].view(np.uint8), packed,
                          qh, nibbles.reshape(n, supers, 128)], axis=2)
    return out.reshape(n, -1)


def _k_fit(weight: np.ndarray, top: int) -> tuple[np.ndarray, ...]:
    """Q4_K's and Q5_K's fit: d, dmin [n, S] float16, the 12 packed bytes of the 6-bit sc and m
    [n, S, 12], q [n, S, 8, 32] in 0..top."""
    n, k = weight.shape
    w = weight.astype(np.float32).reshape(n, k // 256, 8, 32)
    lo = np.minimum(w.min(axis=3), 0.0)  # the min is subtracted as dmin * m, m >= 0
    step = (w.max(axis=3) - lo) / top
    d = (step.max(axis=2) / 63).astype(np.float16)
    dmin = ((-lo).max(axis=2) / 63).astype(np.float16)
    df, dminf = d.astype(np.float32)[..., None], dmin.astype(np.float32)[..., None]
    sc = np.clip(np.round(np.divide(step, df, out=np.zeros_like(step), where=df > 0)), 0, 63)
    m = np.clip(np.round(np.divide(-lo, dminf, out=np.zeros_like(lo), where=dminf > 0)), 0, 63)
    scale, offset = (df * sc)[..., None], (dminf * m)[..., None]
    q = np.round(np.divide(w + offset, scale, out=np.zeros_like(w), where=scale > 0))
    q = np.clip(q, 0, top).astype(np.uint8)  # [n, supers, 8, 32]
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    packed = np.empty((n, k // 256, 12), dtype=np.uint8)
    packed[..., 0:4] = (sc[..., :4] & 0x3F) | ((sc[..., 4:] & 0x30) << 2)
    packed[..., 4:8] = (m[..., :4] & 0x3F) | ((m[..., 4:] & 0x30) << 2)
    packed[..., 8:12] = (sc[..., 4:] & 0x0F) | ((m[..., 4:] & 0x0F) << 4)
    return d, dmin, packed, q


def quantize_q6_k(weight: np.ndarray) -> np.ndarray:
    """A float32 [N, K] weight (K a multiple of 256) as Q6_K bytes [N, K / 256 * 210]: per
    super-block 16 int8 scales of 16 weights and a float16 d, weight ~ d * sc * q with q in
    -32..31. A plain max fit (not llama.cpp's search), laid out as gguf-py reads it."""
    n, k = weight.shape
    w = weight.astype(np.float32).reshape(n, k // 256, 16, 16)
    step = np.abs(w).max(axis=3) / 31  # per 16 weights
    d = (step.max(axis=2) / 127).astype(np.float16)
    df = d.astype(np.float32)[..., None]
    sc = np.clip(np.round(np.divide(step, df, out=np.zeros_like(step), where=df > 0)), -128, 127)
    scale = (df * sc)[..., None]
    q = np.round(np.divide(w, scale, out=np.zeros_like(w), where=scale != 0))
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, k // 256, 2, 128)  # halves
    ql = (q[..., :64] & 0x0F) | ((q[..., 64:] & 0x0F) << 4)  # [n, s, 2, 64]
    hi = (q >> 4).reshape(n, k // 256, 2, 4, 32)
    qh = hi[..., 0, :] | (hi[..., 1, :] << 2) | (hi[..., 2, :] << 4) | (hi[..., 3, :] << 6)
    out = np.concatenate([ql.reshape(n, k // 256, 128), qh.reshape(n, k // 256, 64),
                          sc.astype(np.int8).view(np.uint8), d[..., None].view(np.uint8)], axis=2)
    return out.reshape(n, -1)


def quantize_q3_k(weight: np.ndarray) -> np.ndarray:
    """A float32 [N, K] weight (K a multiple of 256) as Q3_K bytes [N, K / 256 * 110]: 16
    blocks of 16 with a 6-bit scale sc (stored + 32), weight ~ d * sc * q, q in -4..3 (a low
    2-bit part and a high bit that, clear, subtracts 4). A plain max fit, laid out as gguf-py
    reads it."""
    n, k = weight.shape
    supers = k // 256
    w = weight.astype(np.float32).reshape(n, supers, 16, 16)
    step = np.abs(w).max(axis=3) / 4
    d = (step.max(axis=2) / 31).astype(np.float16)
    df = d.astype(np.float32)[..., None]
    sc = np.clip(np.round(np.divide(step, df, out=np.zeros_like(step), where=df > 0)), -32, 31)
    scale = (df * sc)[..., None]
    q = np.clip(np.round(np.divide(w, scale, out=np.zeros_like(w), where=scale != 0)), -4, 3)
    q = q.astype(np.int8).reshape(n, supers, 256)
    high = (q >= 0).astype(np.uint8)
    parts = (q & 3).astype(np.uint8)
    hmask = (high.reshape(n, supers, 8, 32) << np.arange(8, dtype=np.uint8).reshape(8, 1)).sum(
        axis=2, dtype=np.uint8)  # fmt: skip
    s6 = (sc + 32).astype(np.uint8)  # [n, S, 16]
    packed = np.empty((n, supers, 12), dtype=np.uint8)
    packed[..., 0:8] = (s6[..., 0:8] & 0x0F) | ((s6[..., 8:16] & 0x0F) << 4)
    top = ((s6 >> 4) & 3).reshape(n, supers, 4, 4)  # [.., s, b]: scale 4 s + b
    packed[..., 8:12] = (top << (2 * np.arange(4, dtype=np.uint8)).reshape(4, 1)).sum(
        axis=2, dtype=np.uint8)  # fmt: skip
    out = np.concatenate([hmask, _two_bit_bytes(parts), packed, d[..., None].view(np.uint8)],
                         axis=2)  # fmt: skip
    return out.reshape(n, -1)


def quantize_q2_k(weight: np.ndarray) -> np.ndarray:
    """A float32 [N, K] weight (K a multiple of 256) as Q2_K bytes [N, K / 256 * 84]: 16
    blocks of 16 with 4-bit sc and m, weight ~ d * sc * q - dmin * m, q in 0..3. A plain
    min/max fit, laid out as gguf-py reads it."""
    n, k = weight.shape
    supers = k // 256
    w = weight.astype(np.float32).reshape(n, supers, 16, 16)
    lo = np.minimum(w.min(axis=3), 0.0)
    step = (w.max(axis=3) - lo) / 3
    d = (step.max(axis=2) / 15).astype(np.float16)
    dmin = ((-lo).max(axis=2) / 15).astype(np.float16)
    df, dminf = d.astype(np.float32)[..., None], dmin.astype(np.float32)[..., None]
    sc = np.clip(np.round(np.divide(step, df, out=np.zeros_like(step), where=df > 0)), 0, 15)
    m = np.clip(np.round(np.divide(-lo, dminf, out=np.zeros_like(lo), where=dminf > 0)), 0, 15)
    scale, offset = (df * sc)[..., None], (dminf * m)[..., None]
    q = np.round(np.divide(w + offset, scale, out=np.zeros_like(w), where=scale > 0))
    q = np.clip(q, 0, 3).astype(np.uint8).reshape(n, supers, 256)
    packed = sc.astype(np.uint8) | (m.astype(np.uint8) << 4)
    out = np.concatenate([packed, _two_bit_bytes(q), d[..., None].view(np.uint8),
                          dmin[..., None].view(np.uint8)], axis=2)  # fmt: skip
    return out.reshape(n, -1)


def _two_bit_bytes(parts: np.ndarray) -> np.ndarray:
    """256 two-bit values [n, S, 256] -> 64 bytes [n, S, 64]: value 128 g + 32 s + l in bits 2s
    of byte 32 g + l."""
    n, supers = parts.shape[:2]
    grouped = parts.reshape(n, supers, 2, 4, 32) << (2 * np.arange(4, dtype=np.uint8)).reshape(4, 1)
    return grouped.sum(axis=3, dtype=np.uint8).reshape(n, supers, 64)


K_QUANTIZERS = {Q2_K: quantize_q2_k, Q3_K: quantize_q3_k, Q4_K: quantize_q4_k,
                Q5_K: quantize_q5_k, Q6_K: quantize_q6_k}  # fmt: skip
