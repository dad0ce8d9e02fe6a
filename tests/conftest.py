"""Session fixtures: tiny random model folders (built once per run) and the embedded model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import make_tiny_model


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_llama_path(tiny_models_dir: Path) -> Path:
    return make_tiny_model(tiny_models_dir / "llama", "llama")


@pytest.fixture(scope="session")
def tiny_bos_llama_path(tiny_models_dir: Path) -> Path:
    """A tiny Llama whose tokenizer puts BOS before every text, as Llama's and Mistral's do."""
    return make_tiny_model(tiny_models_dir / "bos_llama", "llama", seed=3, bos=True)


@pytest.fixture(scope="session")
def tiny_mistral_path(tiny_models_dir: Path) -> Path:
    return make_tiny_model(tiny_models_dir / "mistral", "mistral")


@pytest.fixture(scope="session")
def tiny_qwen2_path(tiny_models_dir: Path) -> Path:
    """Qwen2 with q/k/v biases and tied embeddings."""
    return make_tiny_model(tiny_models_dir / "qwen2", "qwen2")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The embedded SmolLM2's converted HF folder (converts the GGUF on the first run, ~30 s;
    later runs reuse ~/.cache/parrot/models). Use only from tests marked slow."""
    from server.engine.loader import DEFAULT_CACHE_DIR, resolve_model_folder

    return resolve_model_folder("smollm2-135m-instruct", DEFAULT_CACHE_DIR)[1]
