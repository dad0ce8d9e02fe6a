"""A GGUF's quantized weights kept as they are (Q4_1 or Q4_K linear layers, a Q8_0 tied embedding):
saved at conversion (rows in HF's order), checked against the float32 conversion at load, and
used by the linear layers, the head and the decoder stack for steps of few rows, with the
engine's tokens unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from server.engine import LLMEngine, SamplingParams
from server.engine.gguf_quantized import QUANTIZED_FILE, QuantizedWeights, read_quantized
from server.engine.loader import load_model
from server.engine.models.linear import QUANTIZED_HEAD_MAX_ROWS, QUANTIZED_MAX_ROWS, Linear
from server.kernels.cpu import decoder_stack, q4_linear, q8_linear
from tests.engine.gguf_writer import write_llama_gguf
from tests.tiny_models import make_tiny_model

pytestmark = pytest.mark.skipif(
    not (q4_linear.available() and q8_linear.available() and decoder_stack.available()),
    reason="no C compiler here",
)


@pytest.fixture(scope="module")
def q4_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with tied embeddings (as SmolLM2) as a Q4_1 GGUF, its embedding Q8_0."""
    folder = make_tiny_model(tmp_path_factory.mktemp("tied") / "llama", "llama", seed=5,
                             tie_word_embeddings=True)  # fmt: skip
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q4_1.gguf"
    write_llama_gguf(folder, path, quant="q4_1")
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def test_the_4_bit_weights_give_back_the_float32_conversion(q4_gguf: Path, cache_dir: Path):
    folder = load_model(q4_gguf, cache_dir=cache_dir).path
    found = read_quantized(folder)
    weights = load_file(str(folder / "model.safetensors"))
    assert len(found.q4) == 2 * 7  # every linear weight of both layers
    for name, (q, scales, mins) in found.q4.items():
        rows, cols = q.shape
        dequantized = (q.float().view(rows, -1, 32) * scales[..., None] + mins[..., None])
        # bit for bit, q and k rows in HF's order too (llama.cpp permutes them)
        assert torch.equal(dequantized.view(rows, cols), weights[name]), name
    (name, (q, scales, mins)), = found.q8.items()
    assert mins is None
    assert name == "model.embed_tokens.weight"
    rows, cols = q.shape
    dequantized = q.float().view(rows, -1, 32) * scales[..., None]
    assert torch.equal(dequantized.view(rows, cols), weights[name])


def test_linear_layers_and_the_stack_take_them(q4_gguf: Path, cache_dir: Path):
    model = load_model(q4_gguf, cache_dir=cache_dir).model
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert len(linears) == 2 * 4 and all(m.q4 is not None for m in linears)
    assert model.head_q8 is not None
    assert model.decoder_stack is not None and model.decoder_stack.head is not None
    assert model.decoder_stack.head.q8 is model.head_q8
    assert all(layer.qkv_q4 is not None and layer.down_q4 is not None
               for layer in model.decoder_stack.layers)  # fmt: skip
    plain = load_model(q4_gguf, cache_dir=cache_dir, quantized_linear=False).model
    assert all(m.q4 is None for m in plain.modules() if isinstance(m, Linear))
    assert plain.head_q8 is None
    # what a step of one row reads: 4-bit layers and an 8-bit head, ~4x fewer bytes here
    assert model.weight_bytes_read(1) * 3 < plain.weight_bytes_read(1)
    more = max(QUANTIZED_MAX_ROWS, QUANTIZED_HEAD_MAX_ROWS) + 1  # float32 only from there on
    assert model.weight_bytes_read(more) == plain.weight_bytes_read(more)


def test_4_bit_weights_that_differ_from_the_float32_ones_are_not_used(
    q4_gguf: Path, cache_dir: Path
):
    loaded = load_model(q4_gguf, cache_dir=cache_dir, quantized_linear=False)
    found = read_quantized(loaded.path)
    name = "model.layers.1.mlp.up_proj.weight"
    q, scales, mins = found.q4[name]
    found.q4[name] = (q, scales * 2, mins)
    q8, q8_scales, _ = found.q8["model.embed_tokens.weight"]
    found.q8["model.embed_tokens.weight"] = (q8, q8_scales * 2, None)
    assert loaded.model.attach_quantized(found) == 2 * 4 - 1
    assert loaded.model.layers[1].mlp.gate_up_proj.q4 is None
    assert loaded.model.layers[1].mlp.down_proj.q4 is not None
    assert loaded.model.head_q8 is None


def test_an_unquantized_gguf_has_no_4_bit_weights(tiny_llama_path: Path, tmp_path: Path):
    path = tmp_path / "tiny-llama.F32.gguf"
    write_llama_gguf(tiny_llama_path, path)
    loaded = load_model(path, cache_dir=tmp_path / "models")
    assert not (loaded.path / QUANTIZED_FILE).exists()
    assert all(m.q4 is None for m in loaded.model.modules() if isinstance(m, Linear))


@pytest.mark.parametrize("fused_layers", [True, False])
def test_the_engine_decodes_the_same_tokens_with_them(
    q4_gguf: Path, cache_dir: Path, fused_layers: bool
):
    """Greedy over batches of 1, of more than QUANTIZED_MAX_ROWS rows (float32 layers, the 8-bit
    head) and of more than QUANTIZED_HEAD_MAX_ROWS (float32 only),
    through the decoder stack and layer by layer: the 4-bit path changes only the order of
    the sums, as the packed kernel does against torch's."""
    load_model(q4_gguf, cache_dir=cache_dir)  # converted once
    engines = [
        LLMEngine.from_pretrained(str(cache_dir / "tiny-llama.Q4_1"), num_kv_blocks=64,
                                  quantized_linear=q4, fused_layers=fused_layers)
        for q4 in (True, False)
    ]  # fmt: skip
    assert any(isinstance(m, Linear) and m.q4 is not None
               for m in engines[0].runner.model.modules())  # fmt: skip
    assert_same_generations(*engines, (1, QUANTIZED_MAX_ROWS + 2, QUANTIZED_HEAD_MAX_ROWS + 1))


@pytest.fixture(scope="module", params=["q4_0", "q4_k"])
def mixed_gguf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tied Llama wide enough for Q4_K's super-blocks of 256, as a Q4_0 or Q4_K GGUF
    with its embedding Q8_0 and one layer's v projection Q8_0 (mixed, as Q4_K_M files are)."""
    folder = make_tiny_model(tmp_path_factory.mktemp("tied_wide") / "llama", "llama", seed=6,
                             tie_word_embeddings=True, hidden_size=256, intermediate_size=512,
                             head_dim=64)  # fmt: skip
    path = tmp_path_factory.mktemp("gguf_mixed") / f"tiny-llama.{request.param.upper()}.gguf"
    write_llama_gguf(folder, path, quant=request.param, q8_0_layers=("blk.1.attn_v.weight",))
    return path


def test_q4_0_and_q4_k_weights_are_kept_in_q4_1_form_bit_for_bit(
    mixed_gguf: Path, cache_dir: Path
):
    """Q4_0's d * (q - 8) and Q4_K's d * sc * q - dmin * m, saved as scale * q + min, give back
    transformers' float32 conversion exactly; the Q8_0 layer is kept 8-bit; the layers whose
    fused parts are all 4-bit take them, the fused q/k/v with the 8-bit v takes both, split."""
    loaded = load_model(mixed_gguf, cache_dir=cache_dir)
    found = read_quantized(loaded.path)
    weights = load_file(str(loaded.path / "model.safetensors"))
    assert len(found.q4) == 2 * 7 - 1
    assert "model.layers.1.self_attn.v_proj.weight" not in found.q4
    assert set(found.q8) == {"model.layers.1.self_attn.v_proj.weight",
                               "model.embed_tokens.weight"}  # fmt: skip
    for name, (q, scales, mins) in found.q4.items():
        rows, cols = q.shape
        dequantized = q.float().view(rows, -1, 32) * scales[..., None] + mins[..., None]
        assert torch.equal(dequantized.view(rows, cols), weights[name]), name
    model = loaded.model
    assert model.layers[0].self_attn.qkv_proj.q4 is not None
    assert not model.layers[0].self_attn.qkv_proj.split
    qkv = model.layers[1].self_attn.qkv_proj
    assert qkv.split and qkv.q8.out_features == qkv.out_features - qkv.q4.out_features
    for layer in model.layers:
        assert layer.self_attn.o_proj.q4 is not None
        assert layer.mlp.gate_up_proj.q4 is not None and layer.mlp.down_proj.q4 is not None
    assert model.head_q8 is not None


@pytest.mark.parametrize("fused_layers", [True, False])
def test_the_engine_decodes_the_same_tokens_with_q4_0_and_q4_k_weights(
    mixed_gguf: Path, cache_dir: Path, fused_layers: bool
):
    """Through the decoder stack and layer by layer, the split q/k/v included."""
    load_model(mixed_gguf, cache_dir=cache_dir)  # converted once
    engines = [
        LLMEngine.from_pretrained(str(cache_dir / mixed_gguf.stem), num_kv_blocks=64,
                                  quantized_linear=q4, fused_layers=fused_layers)
        for q4 in (True, False)
    ]  # fmt: skip
    model = engines[0].runner.model
    assert model.layers[0].mlp.down_proj.q4 is not None
    assert model.layers[1].self_attn.qkv_proj.split
    assert (model.decoder_stack is not None) == fused_layers
    assert_same_generations(*engines, (1, 5, QUANTIZED_MAX_ROWS + 2))


def test_a_qwen2_gguf_keeps_its_4_bit_weights_too(tmp_path: Path):
    """Qwen2 (q/k/v biases, tied embeddings): llama.cpp leaves its q/k rows in HF's order, and
    so does the conversion; every layer takes its weights and the tokens stay those of the
    float32-only engine."""
    folder = make_tiny_model(tmp_path / "qwen2", "qwen2", seed=7)
    path = tmp_path / "tiny-qwen2.Q4_0.gguf"
    write_llama_gguf(folder, path, quant="q4_0", arch="qwen2")
    model = load_model(path, cache_dir=tmp_path / "models").model
    assert all(m.q4 is not None for m in model.modules() if isinstance(m, Linear))
    assert model.head_q8 is not None
    engines = [LLMEngine.from_pretrained(str(tmp_path / "models" / "tiny-qwen2.Q4_0"),
                                         num_kv_blocks=64, quantized_linear=q4)
               for q4 in (True, False)]  # fmt: skip
    assert_same_generations(*engines, (3,))


@pytest.mark.parametrize("fused_layers", [True, False])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_q8_0_gguf_keeps_its_8_bit_layers_with_the_same_logits(
    tmp_path: Path, fused_layers: bool, tied: bool
):
    """Q8_0 linear layers (q and k rows in HF's order) and head, tied (the embedding) or not
    (output.weight), go to 8-bit panels, whose kernel gives the float32 kernel's sums bit for
    bit: the tokens and logprobs are exactly those of the float32-only engine, through the
    decoder stack and layer by layer, up to and past QUANTIZED_MAX_ROWS rows."""
    folder = make_tiny_model(tmp_path / "llama", "llama", seed=8, tie_word_embeddings=tied)
    path = tmp_path / "tiny-llama.Q8_0.gguf"
    write_llama_gguf(folder, path, quant="q8_0")
    loaded = load_model(path, cache_dir=tmp_path / "models")
    linears = [m for m in loaded.model.modules() if isinstance(m, Linear)]
    assert len(linears) == 2 * 4 + (not tied)
    assert all(m.q8 is not None and m.q4 is None for m in linears)
    head = loaded.model.head_q8 if tied else loaded.model.lm_head.q8
    assert head is not None and loaded.model.decoder_stack.head.q8 is head
    plain = load_model(path, cache_dir=tmp_path / "models", quantized_linear=False).model
    assert loaded.model.weight_bytes_read(1) * 3 < plain.weight_bytes_read(1)
    engines = [LLMEngine.from_pretrained(str(loaded.path), num_kv_blocks=64, quantized_linear=q,
                                         fused_layers=fused_layers)
               for q in (True, False)]  # fmt: skip
    assert_same_generations(*engines, (1, QUANTIZED_MAX_ROWS + 2), exact=True)


def test_a_layer_takes_only_panels_of_its_own_shape() -> None:
    """Float32 panels pad N to a multiple of 16, so 35 and 37 outputs have panels of one shape:
    the layer checks N itself (a 35-output weight that matches its first 35 columns is not
    its weight)."""
    torch.manual_seed(0)
    layer = Linear(64, 37, bias=False)
    q, scales, mins = q4_linear.quantize_q4_1(torch.randn(37, 64))
    layer.weight_t.data.copy_(q4_linear.dequantize(q4_linear.pack_q4(q, scales, mins)))
    layer.pack()
    assert not layer.attach_q4(q4_linear.pack_q4(q[:35], scales[:35], mins[:35]))
    assert layer.attach_q4(q4_linear.pack_q4(q, scales, mins))
    q8, d8 = q8_linear.quantize_q8_0(torch.randn(37, 64))
    layer = Linear(64, 37, bias=False)
    layer.weight_t.data.copy_(q8_linear.dequantize(q8_linear.pack_q8(q8, d8)))
    layer.pack()
    assert not layer.attach_q8(q8_linear.pack_q8(q8[:35], d8[:35]))
    assert layer.attach_q8(q8_linear.pack_q8(q8, d8))


def assert_same_generations(
    quantized: LLMEngine, plain: LLMEngine, batches: tuple[int, ...], exact: bool = False
) -> None:
    """Greedy generations of batches of prompts: the same tokens on both engines, and logprobs
    within float32 rounding (`exact`: the same bits)."""
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=0)
    for batch in batches:
        prompts = [plain.tokenizer.encode(f"The parrot {i} said") for i in range(batch)]
        got, want = (engine.generate(prompts, params) for engine in (quantized, plain))
        for g, w in zip(got, want, strict=True):
            assert g.token_ids == w.token_ids
            assert g.logprobs is not None and w.logprobs is not None
            a, b = ([t.logprob for t in out.logprobs] for out in (g, w))
            assert a == b if exact else a == pytest.approx(b, abs=1e-4)


def test_a_q4_k_m_like_file_keeps_its_6_bit_layers_as_8_bit_panels(tmp_path: Path):
    """Q6_K (6-bit values, a scale per 16 weights) goes to 8-bit panels with 16-input blocks:
    the down projections and the tied embedding (head) of a file mixed as Q4_K_M's are, bit
    for bit; a fused q/k/v whose v is Q6_K while q and k are Q4_K is split, q and k 4-bit and
    v 8-bit, so a step reads ~0.7 bytes a weight there instead of float32's 4; the tokens are
    the float32-only engine's."""
    folder = make_tiny_model(tmp_path / "llama", "llama", seed=9, tie_word_embeddings=True,
                             hidden_size=256, intermediate_size=512, head_dim=64)  # fmt: skip
    path = tmp_path / "tiny-llama.Q4_K_M.gguf"
    six = ("token_embd.weight", "blk.0.ffn_down.weight", "blk.1.ffn_down.weight",
           "blk.1.attn_v.weight")  # fmt: skip
    write_llama_gguf(folder, path, quant="q4_k", q6_k_layers=six)
    loaded = load_model(path, cache_dir=tmp_path / "models")
    found = read_quantized(loaded.path)
    weights = load_file(str(loaded.path / "model.safetensors"))
    for name, (q, scales, _) in found.q8.items():
        assert scales.shape[1] * 16 == q.shape[1], name
        rows, cols = q.shape
        dequantized = (q.float().view(rows, -1, 16) * scales[..., None]).view(rows, cols)
        assert torch.equal(dequantized, weights[name]), name
    model = loaded.model
    for layer in model.layers:
        assert layer.mlp.down_proj.q8 is not None and layer.mlp.down_proj.q8.block == 16
        assert layer.mlp.gate_up_proj.q4 is not None and layer.self_attn.o_proj.q4 is not None
    assert model.layers[0].self_attn.qkv_proj.q4 is not None
    qkv = model.layers[1].self_attn.qkv_proj
    assert qkv.split and qkv.q8.block == 16
    c = model.config
    assert qkv.q4.out_features == (c.num_heads + c.num_kv_heads) * c.head_dim  # q and k
    assert qkv.bytes_read(1) * 4 < qkv.bytes_read(QUANTIZED_MAX_ROWS + 1)
    assert model.head_q8 is not None and model.head_q8.block == 16
    engines = [LLMEngine.from_pretrained(str(loaded.path), num_kv_blocks=64, quantized_linear=q)
               for q in (True, False)]  # fmt: skip
    assert_same_generations(*engines, (1, 3))


def test_an_untied_4_bit_head_is_not_kept(tmp_path: Path):
    """The stack's head reads 8-bit panels only: a Q4_0 file's untied output.weight is left to
    float32 (not saved), while its layers take their 4-bit weights."""
    folder = make_tiny_model(tmp_path / "llama", "llama", seed=10)  # untied
    path = tmp_path / "tiny-llama.Q4_0.gguf"
    write_llama_gguf(folder, path, quant="q4_0")
    loaded = load_model(path, cache_dir=tmp_path / "models")
    assert "lm_head.weight" not in read_quantized(loaded.path).q4
    model = loaded.model
    assert model.lm_head is not None and model.lm_head.q4 is None and model.lm_head.q8 is None
    assert all(m.q4 is not None for m in model.modules() if isinstance(m, Linear)
               and m is not model.lm_head)  # fmt: skip


def test_a_split_layer_takes_4_bit_then_8_bit_parts_of_its_own_weight() -> None:
    """`attach_split`: the first outputs (whole 16-column panels) 4-bit, the rest 8-bit, each
    checked against its own columns; the product is x @ W within float32 rounding, with its
    bias, up to QUANTIZED_MAX_ROWS rows (then the float32 panels)."""
    torch.manual_seed(1)
    q, scales, mins = q4_linear.quantize_q4_1(torch.randn(48, 64))
    q8, d8 = q8_linear.quantize_q8_0(torch.randn(24, 64), block=16)
    four, eight = q4_linear.pack_q4(q, scales, mins), q8_linear.pack_q8(q8, d8)
    weight_t = torch.cat([q4_linear.dequantize(four), q8_linear.dequantize(eight)], dim=1)

    def packed_layer() -> Linear:
        layer = Linear(64, 72, bias=True)
        layer.weight_t.data.copy_(weight_t)
        layer.bias.data.copy_(torch.randn(72))
        layer.pack()
        return layer

    layer = packed_layer()
    assert not layer.attach_split(eight, four)  # the wrong way round
    narrow = q4_linear.pack_q4(q[:40], scales[:40], mins[:40])  # not whole panels
    assert not layer.attach_split(narrow, q8_linear.pack_q8(*q8_linear.quantize_q8_0(
        torch.randn(32, 64))))  # fmt: skip
    other = q8_linear.pack_q8(*q8_linear.quantize_q8_0(torch.randn(24, 64), block=16))
    assert not layer.attach_split(four, other)  # the 8-bit part is not this weight's
    assert not layer.split
    assert layer.attach_split(four, eight) and layer.split
    assert layer.bytes_read(1) < layer.bytes_read(QUANTIZED_MAX_ROWS + 1) / 4
    for rows in (1, 3, QUANTIZED_MAX_ROWS, QUANTIZED_MAX_ROWS + 1):
        x = torch.randn(rows, 64)
        want = (x.double() @ weight_t.double() + layer.bias.double()).float()
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quant", ["q5_0", "q5_1", "q5_k"])
def test_5_bit_weights_are_kept_as_8_bit_panels_with_the_same_logits(tmp_path: Path, quant: str):
    """Q5_0 (d * (q - 16)), Q5_1 (d * q + m) and Q5_K (d * sc * q - dmin * m) linear weights go
    to 8-bit panels, the affine two with a min per block: bit for bit transformers' float32
    conversion, and the tokens and logprobs exactly the float32-only engine's (the 8-bit kernel's
    sums are the float32 kernel's), through the decoder stack (and layer by layer for Q5_1)."""
    loaded, found = _wide_gguf(tmp_path, 11, quant)
    for name, (q, scales, mins) in found.q8.items():
        assert q.shape[1] // scales.shape[1] == 32, name
        if name != "model.embed_tokens.weight":
            assert (mins is None) == (quant == "q5_0"), name
            assert int(q.min()) >= (-16 if quant == "q5_0" else 0) and int(q.max()) <= 31
    linears = [m for m in loaded.model.modules() if isinstance(m, Linear)]
    assert len(linears) == 2 * 4 and all(m.q8 is not None and m.q4 is None for m in linears)
    assert all((m.q8.mins is None) == (quant == "q5_0") for m in linears)
    # layer by layer too for one affine type (the torch path's kernel calls)
    for fused_layers in (True, False) if quant == "q5_1" else (True,):
        engines = [LLMEngine.from_pretrained(str(loaded.path), num_kv_blocks=64,
                                             quantized_linear=q, fused_layers=fused_layers)
                   for q in (True, False)]  # fmt: skip
        assert_same_generations(*engines, (1, QUANTIZED_MAX_ROWS + 2), exact=True)


def test_a_q5_k_m_like_file_fuses_5_bit_and_6_bit_parts_into_16_input_blocks(tmp_path: Path):
    """Q5_K_M: q and k Q5_K (blocks of 32, with mins), v Q6_K (blocks of 16, none) in one fused
    q/k/v: the 32-input scales and mins are repeated into 16-input blocks and v's mins are 0,
    the same weights bit for bit, so the layer takes 8-bit panels and the tokens and logprobs
    are exactly the float32-only engine's."""
    folder = make_tiny_model(tmp_path / "llama", "llama", seed=12, tie_word_embeddings=True,
                             hidden_size=256, intermediate_size=512, head_dim=64)  # fmt: skip
    path = tmp_path / "tiny-llama.Q5_K_M.gguf"
    six = ("token_embd.weight", "blk.1.ffn_down.weight", "blk.1.attn_v.weight")
    write_llama_gguf(folder, path, quant="q5_k", q6_k_layers=six)
    loaded = load_model(path, cache_dir=tmp_path / "models")
    model = loaded.model
    qkv = model.layers[1].self_attn.qkv_proj
    assert qkv.q8 is not None and qkv.q8.block == 16 and qkv.q8.mins is not None
    v_columns = qkv.q8.mins.transpose(1, 2).reshape(-1, qkv.q8.mins.shape[1])[-128:]
    assert torch.all(v_columns == 0)  # v's two heads of 64
    assert model.layers[0].self_attn.qkv_proj.q8.block == 32
    assert model.layers[1].mlp.down_proj.q8.mins is None
    assert model.head_q8 is not None and model.head_q8.block == 16
    engines = [LLMEngine.from_pretrained(str(loaded.path), num_kv_blocks=64, quantized_linear=q)
               for q in (True, False)]  # fmt: skip
    assert_same_generations(*engines, (1, 3), exact=True)


@pytest.mark.parametrize("quant", ["q3_k", "q2_k"])
def test_2_and_3_bit_k_weights_are_kept_as_8_bit_panels_with_the_same_logits(
    tmp_path: Path, quant: str
):
    """Q3_K (d * sc * q, q in -4..3) and Q2_K (d * sc * q - dmin * m, q in 0..3), a scale per
    16 inputs: 8-bit panels of 16-input blocks, Q2_K's with mins, bit for bit transformers'
    float32 conversion; tokens and logprobs exactly the float32-only engine's."""
    loaded, found = _wide_gguf(tmp_path, 13, quant)
    for name, (q, scales, mins) in found.q8.items():
        if name != "model.embed_tokens.weight":
            assert q.shape[1] // scales.shape[1] == 16, name
            assert (mins is None) == (quant == "q3_k"), name
    linears = [m for m in loaded.model.modules() if isinstance(m, Linear)]
    assert all(m.q8 is not None and m.q8.block == 16 for m in linears)
    engines = [LLMEngine.from_pretrained(str(loaded.path), num_kv_blocks=64, quantized_linear=q)
               for q in (True, False)]  # fmt: skip
    assert_same_generations(*engines, (1, 3), exact=True)


def test_a_q3_k_m_like_file_takes_its_4_bit_v_as_8_bit_beside_3_bit_q_and_k(tmp_path: Path):
    """Q3_K_M: q and k Q3_K, v Q4_K in one fused q/k/v, the 8-bit parts first: the whole
    projection goes to 8-bit panels, the Q4_K part as int8 values with its scales and mins
    (blocks of 16, each of its 32-input scales twice), the same weights bit for bit; the Q4_K
    o projection stays 4-bit; tokens are the float32-only engine's."""
    folder = make_tiny_model(tmp_path / "llama", "llama", seed=14, tie_word_embeddings=True,
                             hidden_size=256, intermediate_size=512, head_dim=64)  # fmt: skip
    path = tmp_path / "tiny-llama.Q3_K_M.gguf"
    write_llama_gguf(folder, path, quant="q3_k", q6_k_layers=("token_embd.weight",),
                     q4_k_layers=("blk.1.attn_v.weight", "blk.1.attn_output.weight"))
    model = load_model(path, cache_dir=tmp_path / "models").model
    qkv = model.layers[1].self_attn.qkv_proj
    assert qkv.q4 is None and qkv.q8 is not None and qkv.q8.block == 16
    assert qkv.q8.mins is not None
    assert model.layers[1].self_attn.o_proj.q4 is not None
    assert model.layers[0].self_attn.qkv_proj.q8.mins is None  # all Q3_K
    engines = [LLMEngine.from_pretrained(str(tmp_path / "models" / path.stem), num_kv_blocks=64,
                                         quantized_linear=q)
               for q in (True, False)]  # fmt: skip
    assert_same_generations(*engines, (1, 3))


@pytest.mark.parametrize("fused_layers", [True, False])
def test_a_qwen2_split_q_k_v_adds_each_part_its_own_biases(tmp_path: Path, fused_layers: bool):
    """Qwen2's q/k/v have biases: a split q/k/v (q and k Q4_0, v Q8_0) adds the first biases
    to the 4-bit part's outputs and the rest to the 8-bit part's, through the decoder stack and
    layer by layer, up to and past QUANTIZED_MAX_ROWS rows."""
    folder = make_tiny_model(tmp_path / "qwen2", "qwen2", seed=15)
    path = tmp_path / "tiny-qwen2.Q4_0.gguf"
    write_llama_gguf(folder, path, quant="q4_0", arch="qwen2",
                     q8_0_layers=("blk.0.attn_v.weight", "blk.1.attn_v.weight"))  # fmt: skip
    loaded = load_model(path, cache_dir=tmp_path / "models")
    c = loaded.model.config
    for layer in loaded.model.layers:
        qkv = layer.self_attn.qkv_proj
        assert qkv.split and qkv.bias is not None
        assert qkv.q4.out_features == (c.num_heads + c.num_kv_heads) * c.head_dim
    engines = [LLMEngine.from_pretrained(str(loaded.path), num_kv_blocks=64, quantized_linear=q,
                                         fused_layers=fused_layers)
               for q in (True, False)]  # fmt: skip
    assert (engines[0].runner.model.decoder_stack is not None) == fused_layers
    assert_same_generations(*engines, (1, 3, QUANTIZED_MAX_ROWS + 2))


@pytest.mark.parametrize("fused_layers", [True, False])
def test_an_untied_head_with_mins_gives_the_same_logits(tmp_path: Path, fused_layers: bool):
    """An untied Q2_K output.weight (a min per block of 16) is the 8-bit head of the stack and
    of the layer-by-layer path, mins included: the logits are the float32 head's bit for bit."""
    folder = make_tiny_model(tmp_path / "llama", "llama", seed=16, tie_word_embeddings=False,
                             hidden_size=256, intermediate_size=512, head_dim=64)  # fmt: skip
    path = tmp_path / "tiny-llama.Q2_K.gguf"
    write_llama_gguf(folder, path, quant="q2_k")
    loaded = load_model(path, cache_dir=tmp_path / "models")
    head = loaded.model.lm_head.q8
    assert head is not None and head.mins is not None and head.block == 16
    assert loaded.model.decoder_stack.head.q8 is head
    engines = [LLMEngine.from_pretrained(str(loaded.path), num_kv_blocks=64, quantized_linear=q,
                                         fused_layers=fused_layers)
               for q in (True, False)]  # fmt: skip
    assert_same_generations(*engines, (1, 3), exact=True)


def _packed(weight_t: torch.Tensor) -> Linear:
    layer = Linear(*weight_t.shape, bias=False)
    layer.weight_t.data.copy_(weight_t)
    layer.pack()
    return layer


def test_attaching_one_kind_drops_the_other() -> None:
    """A layer holds 4-bit or 8-bit panels, or both only when split (`attach_split`): attaching
    whole-layer panels of one kind to a layer that holds the other replaces them, rather than
    leaving a layer that looks split with two full-width parts (2N outputs)."""
    torch.manual_seed(2)
    q, scales, mins = q4_linear.quantize_q4_1(torch.randn(48, 64))
    four = q4_linear.pack_q4(q, scales, mins)
    weight_t = q4_linear.dequantize(four)
    # the same weights as int8 0..15 with the 4-bit scales and mins
    eight = q8_linear.pack_q8(q.to(torch.int8), scales, mins)
    x = torch.randn(2, 64)
    layer = _packed(weight_t)
    assert layer.attach_q8(eight) and layer.attach_q4(four)
    assert not layer.split and layer.q8 is None and layer(x).shape == (2, 48)
    layer = _packed(weight_t)
    assert layer.attach_q4(four) and layer.attach_q8(eight)
    assert not layer.split and layer.q4 is None and layer(x).shape == (2, 48)
    assert layer.bytes_read(1) == eight.nbytes


def test_a_fused_layer_that_cannot_split_takes_all_8_bit() -> None:
    """4-bit parts first, 8-bit after, but the 4-bit outputs (24) are no whole 16-column
    panels, so the layer cannot split: it takes 8-bit panels for all of it, the 4-bit part as
    int8 with its scales and mins, as when the 8-bit parts come first."""
    from server.engine.gguf_quantized import QuantizedWeights
    from server.engine.models.llama import _attach

    torch.manual_seed(3)
    q, scales, mins = q4_linear.quantize_q4_1(torch.randn(24, 64))
    q8, d8 = q8_linear.quantize_q8_0(torch.randn(16, 64))
    weight_t = torch.cat([q4_linear.dequantize(q4_linear.pack_q4(q, scales, mins)),
                          q8_linear.dequantize(q8_linear.pack_q8(q8, d8))], dim=1)  # fmt: skip
    weights = QuantizedWeights(q4={"a": (q, scales, mins)}, q8={"b": (q8, d8, None)})
    layer = _packed(weight_t)
    assert _attach(layer, weights, ["a", "b"])
    assert not layer.split and layer.q8 is not None and layer.q8.mins is not None
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), x @ weight_t, rtol=1e-5, atol=1e-5)


def test_a_split_q_k_v_wider_than_the_hidden_size_and_the_mlp(tmp_path: Path):
    """Heads of 32 make a Llama's q (128) wider than its hidden size (64) and its fused q/k/v
    (256) wider than its gate/up (128): the stack's split q/k/v writes both parts, the full
    fused width, into its scratch, which must hold the widest projection."""
    folder = make_tiny_model(tmp_path / "llama", "llama", seed=17, head_dim=32,
                             intermediate_size=64)  # fmt: skip
    path = tmp_path / "tiny-llama.Q4_0.gguf"
    write_llama_gguf(folder, path, quant="q4_0",
                     q8_0_layers=("blk.0.attn_v.weight", "blk.1.attn_v.weight"))  # fmt: skip
    loaded = load_model(path, cache_dir=tmp_path / "models")
    c = loaded.model.config
    qkv_size = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    assert qkv_size > max(c.hidden_size, 2 * c.intermediate_size, c.num_heads * c.head_dim)
    assert all(layer.self_attn.qkv_proj.split for layer in loaded.model.layers)
    engines = [LLMEngine.from_pretrained(str(loaded.path), num_kv_blocks=64, quantized_linear=q)
               for q in (True, False)]  # fmt: skip
    assert engines[0].runner.model.decoder_stack is not None
    assert_same_generations(*engines, (1, 5, QUANTIZED_MAX_ROWS))


def _wide_gguf(tmp_path: Path, seed: int, quant: str) -> tuple[Any, QuantizedWeights]:
    """A tiny tied Llama wide enough for the K types' super-blocks of 256, written with every
    linear weight `quant` (the embedding Q8_0) and converted: the loaded model and its saved
    weights, all 8-bit, each equal bit for bit to transformers' float32 conversion."""
    folder = make_tiny_model(tmp_path / "llama", "llama", seed=seed, tie_word_embeddings=True,
                             hidden_size=256, intermediate_size=512, head_dim=64)  # fmt: skip
    path = tmp_path / f"tiny-llama.{quant.upper()}.gguf"
    write_llama_gguf(folder, path, quant=quant)
    loaded = load_model(path, cache_dir=tmp_path / "models")
    found = read_quantized(loaded.path)
    weights = load_file(str(loaded.path / "model.safetensors"))
    assert len(found.q8) == 2 * 7 + 1 and not found.q4  # the layers' and the embedding
    for name, (q, scales, mins) in found.q8.items():
        rows, cols = q.shape
        w = q.float().view(rows, scales.shape[1], -1) * scales[..., None]
        if mins is not None:
            w = w + mins[..., None]
        assert torch.equal(w.view(rows, cols), weights[name]), name
    return loaded, found
