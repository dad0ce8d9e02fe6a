"""Checkpoint config variants through the public API (`LLMEngine.from_pretrained` on a saved
folder) against transformers in float32: every variant the engine accepts must give
transformers' greedy tokens and log-probabilities, on the C decoder stack and on the torch
path; what it cannot run exactly it refuses, or caps the usable length, with a clear message."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from server.engine.llm_engine import LLMEngine
from server.engine.loader import load_model
from server.engine.models import ModelConfig
from server.engine.models.rope import rope_attention_factor, rope_inverse_frequencies
from server.engine.sampling_params import SamplingParams
from server.kernels.cascade_config import CPU_RULE, CPU_SDPA_RULE
from tests.engine.reference import greedy_reference, load_reference
from tests.tiny_models import make_tiny_model

TOLERANCE = 1e-4
PATHS = {"stack": {"packed_linear": True}, "torch": {"packed_linear": False, "fused_layers": False}}


def check_engine_matches_transformers(
    path: Path, prompt_len: int, max_tokens: int = 8, paths: tuple[str, ...] = ("stack", "torch")
) -> None:
    """Greedy tokens equal and every prompt/output log-probability (with the top 5) within
    TOLERANCE of transformers', on each engine path."""
    ref = load_reference(str(path))
    rng = random.Random(prompt_len)
    prompt = [rng.randrange(3, ref.config.vocab_size) for _ in range(prompt_len)]
    expected = greedy_reference(ref, prompt, max_tokens)
    with torch.inference_mode():
        logits = ref(torch.tensor([prompt + expected])).logits[0].float()
    ref_logprobs = torch.log_softmax(logits, -1)
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True,
                              logprobs=5, prompt_logprobs=5)
    for name in paths:
        engine = LLMEngine.from_pretrained(str(path), device="cpu", **PATHS[name])
        assert (engine.runner.model.decoder_stack is not None) == (name == "stack")
        out = engine.generate(prompt, sampling)[0]
        assert out.token_ids == expected, f"{name}: greedy tokens differ from transformers'"
        rows = [(i - 1, lp) for i, lp in enumerate(out.prompt_logprobs) if lp is not None]
        rows += [(prompt_len - 1 + j, lp) for j, lp in enumerate(out.logprobs)]
        worst = max(
            abs(logprob - ref_logprobs[row, token].item())
            for row, lp in rows
            for token, logprob in [(lp.token_id, lp.logprob), *lp.top]
        )
        assert worst <= TOLERANCE, f"{name}: max |logprob difference| {worst:.3g}"


def write_config(path: Path, **changes: Any) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


# ---- RoPE scaling ---------------------------------------------------------------------------

_rng = random.Random(0)
SHORT = [1.0 + _rng.random() for _ in range(8)]  # head_dim 16: 8 pairs
LONG = [2.0 + 4 * _rng.random() for _ in range(8)]
SCALINGS = {
    "dynamic": ({"rope_type": "dynamic", "factor": 4.0}, {"max_position_embeddings": 128}, 100),
    "yarn": ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64,
              "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 16, "beta_slow": 2}, {}, 120),
    "yarn-attention-factor": ({"rope_type": "yarn", "factor": 3.0, "attention_factor": 1.3,
                               "original_max_position_embeddings": 128, "truncate": False},
                              {"rope_theta": 1e6}, 140),
    "longrope": ({"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG,
                  "original_max_position_embeddings": 128}, {}, 110),
}


@pytest.mark.parametrize("kind", list(SCALINGS))
def test_rope_scaling_through_the_engine(tmp_path: Path, kind: str) -> None:
    scaling, overrides, prompt_len = SCALINGS[kind]
    path = make_tiny_model(tmp_path, "llama", rope_scaling=dict(scaling), **overrides)
    check_engine_matches_transformers(path, prompt_len)


def test_yarn_on_qwen2(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path, "qwen2", rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})
    check_engine_matches_transformers(path, 60, paths=("stack",))


@pytest.mark.parametrize("kind", list(SCALINGS))
def test_rope_tables_match_transformers_bit_for_bit(kind: str) -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling, overrides, _ = SCALINGS[kind]
    hf_dict = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 100,
               "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
               "num_attention_heads": 4, "head_dim": 16, "max_position_embeddings": 1024,
               "rope_scaling": dict(scaling), **overrides}
    ours = ModelConfig.from_hf(hf_dict)
    hf = LlamaConfig(**{k: v for k, v in hf_dict.items() if k != "architectures"})
    expected_freq, expected_factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
    freq = rope_inverse_frequencies(16, ours.rope_theta, ours.rope_scaling)
    assert torch.equal(freq, expected_freq.float())
    assert rope_attention_factor(ours.rope_scaling) == pytest.approx(expected_factor, rel=1e-12)


def test_longrope_length_stops_at_the_original_context(tmp_path: Path) -> None:
    """Past original_max_position_embeddings transformers switches every position to the long
    factors; the engine runs the short ones only, so it stops there."""
    scaling, _, _ = SCALINGS["longrope"]
    path = make_tiny_model(tmp_path, "llama", rope_scaling=dict(scaling))
    config = load_model(path).config
    assert config.max_model_len == 128 and config.max_position_embeddings == 1024
    assert "original_max_position_embeddings is 128" in config.max_model_len_reason()


# ---- sliding windows ------------------------------------------------------------------------

def test_mistral_sliding_window_caps_the_length(tmp_path: Path, caplog) -> None:
    """A window below the sequence length would need windowed attention (not implemented): the
    engine's limit is the window, and a longer request is refused, never computed with full
    attention. Within the window the outputs are transformers'."""
    path = make_tiny_model(tmp_path, "mistral", sliding_window=16)
    with caplog.at_level(logging.WARNING, logger="server.engine.loader"):
        engine = LLMEngine.from_pretrained(str(path), device="cpu")
    assert engine.max_model_len == 16
    assert "sliding_window" in caplog.text and "16" in caplog.text
    with pytest.raises(ValueError, match="max_model_len 16"):
        engine.generate(list(range(3, 43)), SamplingParams(max_tokens=4, temperature=0))
    check_engine_matches_transformers(path, prompt_len=10, max_tokens=5)


@pytest.mark.parametrize(
    ("arch", "overrides", "limit"),
    [
        ("mistral", {"sliding_window": 4096}, 1024),  # window past the positions: full length
        ("mistral", {"sliding_window": None}, 1024),
        ("qwen2", {"use_sliding_window": False, "sliding_window": 16}, 1024),
        # transformers slides only layers >= max_window_layers: none of the 2 here
        ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 2}, 1024),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}, 16),
        ("llama", {"sliding_window": 16}, 1024),  # Llama has no window
    ],
)
def test_sliding_window_limit_only_where_it_applies(
    tmp_path: Path, arch: str, overrides: dict, limit: int
) -> None:
    path = make_tiny_model(tmp_path, arch, **overrides)
    engine = LLMEngine.from_pretrained(str(path), device="cpu")
    assert engine.max_model_len == limit
    if limit == 1024 and arch == "qwen2":
        check_engine_matches_transformers(path, prompt_len=40, paths=("stack",))


def test_config_defaults_follow_transformers() -> None:
    base = {"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 8}
    mistral = ModelConfig.from_hf({**base, "architectures": ["MistralForCausalLM"],
                                   "model_type": "mistral", "attention_bias": True,
                                   "mlp_bias": True})
    # transformers' MistralConfig: window 4096, 8 KV heads, 128k positions; no biases
    assert mistral.sliding_window == 4096 and mistral.num_kv_heads == 8
    assert mistral.max_position_embeddings == 131072 and mistral.max_model_len == 4096
    assert not (mistral.attention_bias or mistral.attention_out_bias or mistral.mlp_bias)
    qwen = ModelConfig.from_hf({**base, "model_type": "qwen2", "use_sliding_window": True,
                                "num_key_value_heads": 8})
    assert qwen.sliding_window is None  # default max_window_layers 28: no layer of 2 slides
    assert qwen.max_position_embeddings == 32768
    # transformers' Qwen2Config has 32 KV heads by default, not one per attention head
    many_heads = {**base, "num_attention_heads": 64, "head_dim": 16}
    qwen = ModelConfig.from_hf({**many_heads, "model_type": "qwen2"})
    assert qwen.num_kv_heads == 32
    with pytest.raises(ValueError, match=r"num_kv_heads \(32\) must divide num_heads \(8\)"):
        ModelConfig.from_hf({**base, "model_type": "qwen2"})
    assert ModelConfig.from_hf({**many_heads, "model_type": "llama"}).num_kv_heads == 64
    swish = ModelConfig.from_hf({**base, "model_type": "llama", "hidden_act": "swish"})
    assert swish.max_position_embeddings == 2048


def test_rope_fields_are_read_as_transformers_reads_them() -> None:
    """`rope_scaling` wins over `rope_parameters` (a v5 config.json edited the old way); a
    top-level original length wins over the scaling's, which defaults to
    max_position_embeddings; theta from the dict that wins. Compared with the tables
    transformers' rotary embedding computes from the same config."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    base = {"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "model_type": "llama",
            "max_position_embeddings": 512, "rope_theta": 5e5}
    cases = [
        {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
         "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
        {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
        {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
         "original_max_position_embeddings": 128},
        {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, "rope_theta": None},
    ]
    for case in cases:
        hf_dict = {k: v for k, v in {**base, **case}.items() if v is not None}
        ours = ModelConfig.from_hf(hf_dict)
        theirs = LlamaRotaryEmbedding(LlamaConfig.from_dict(json.loads(json.dumps(hf_dict))))
        freq = rope_inverse_frequencies(ours.head_dim, ours.rope_theta, ours.rope_scaling)
        assert torch.equal(freq, theirs.inv_freq), case
        assert rope_attention_factor(ours.rope_scaling) == theirs.attention_scaling, case


# ---- what the engine refuses ----------------------------------------------------------------

@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "qwen3"}, "'model_type' is 'qwen3', which does not match"),
        ({"model_type": "mistral"}, "'model_type' is 'mistral', which does not match"),
        ({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral"},
         "'architectures' is ['MixtralForCausalLM']"),
        ({"hidden_act": "gelu"}, "'hidden_act' is 'gelu'"),
        ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0],
                           "original_max_position_embeddings": 64}}, "head_dim / 2 (8)"),
    ],
)
def test_refused_before_the_weights_are_read(
    tiny_llama_path: Path, tmp_path: Path, changes: dict, message: str
) -> None:
    shutil.copytree(tiny_llama_path, tmp_path, dirs_exist_ok=True)
    write_config(tmp_path, **changes)
    (tmp_path / "model.safetensors").write_bytes(b"not read")
    with pytest.raises(ValueError, match="config.json") as err:
        LLMEngine.from_pretrained(str(tmp_path), device="cpu")
    assert message in str(err.value)


def test_missing_tokenizer_fails_before_the_weights(tiny_llama_path: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_llama_path / "config.json", tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not read")
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_model(tmp_path)


# ---- checkpoint files -----------------------------------------------------------------------

def test_pytorch_bin_checkpoint(tiny_llama_path: Path, tmp_path: Path) -> None:
    """Folders with PyTorch .bin weights only (older checkpoints) load like safetensors."""
    from safetensors.torch import load_file

    shutil.copytree(tiny_llama_path, tmp_path, dirs_exist_ok=True)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    for i, part in enumerate((names[:half], names[half:])):
        torch.save({k: tensors[k] for k in part}, tmp_path / f"pytorch_model-0000{i + 1}.bin")
    index = {"metadata": {}, "weight_map": {k: f"pytorch_model-0000{1 + (k in names[half:])}.bin" for k in names}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    loaded = load_model(tmp_path)
    ours = loaded.model.layers[1].mlp.down_proj
    ours.unpack()
    assert torch.equal(ours.weight, tensors["model.layers.1.mlp.down_proj.weight"])
    check_engine_matches_transformers(tmp_path, prompt_len=20, paths=("stack",))


def test_single_file_wins_over_other_safetensors(tiny_llama_path: Path, tmp_path: Path) -> None:
    """As in transformers, model.safetensors is the checkpoint; other .safetensors files beside
    it (Mistral's consolidated.safetensors, adapters) are not read."""
    shutil.copytree(tiny_llama_path, tmp_path, dirs_exist_ok=True)
    shutil.copy(tmp_path / "model.safetensors", tmp_path / "consolidated.safetensors")
    load_model(tmp_path)


def test_a_max_model_len_beyond_the_model_is_lowered_with_a_warning(
    tiny_llama_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limit = LLMEngine.from_pretrained(str(tiny_llama_path)).max_model_len
    with caplog.at_level(logging.WARNING, logger="server.engine.llm_engine"):
        engine = LLMEngine.from_pretrained(str(tiny_llama_path), max_model_len=limit + 100)
    assert engine.max_model_len == limit
    assert f"max_model_len {limit + 100} is more than this model computes exactly" in caplog.text


@pytest.mark.parametrize("capability", ["AVX512", "AVX2", "DEFAULT"])
def test_by_default_the_packed_kernels_run_where_the_cpu_has_avx2_or_avx512(
    tiny_llama_path, monkeypatch: pytest.MonkeyPatch, capability: str
) -> None:
    """The kernels' tiles are written for 8 and 16 lanes; without AVX2 the compiler would split
    them, so there the engine uses torch's matmul by default; `packed_linear=True` still forces
    them (as the tests of the kernels do)."""
    from server.kernels.cpu import decoder_stack

    if not decoder_stack.available():
        pytest.skip("no C compiler for the CPU kernels")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    engine = LLMEngine.from_pretrained(str(tiny_llama_path), num_kv_blocks=8)
    layer = engine.runner.model.layers[0].self_attn.qkv_proj
    assert layer.packed == (capability != "DEFAULT")
    assert (engine.runner.model.decoder_stack is not None) == (capability != "DEFAULT")
    # attention too: without AVX2 PyTorch's kernels, and the cascade rule measured for them
    rule = CPU_SDPA_RULE if capability == "DEFAULT" else CPU_RULE
    assert engine.runner.cascade_rule() == rule
    forced = LLMEngine.from_pretrained(str(tiny_llama_path), num_kv_blocks=8, packed_linear=True)
    assert forced.runner.model.decoder_stack is not None
