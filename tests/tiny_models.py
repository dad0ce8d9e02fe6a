"""Tiny random Llama / Mistral / Qwen2 checkpoints in the Hugging Face layout, built offline.

`make_tiny_model` writes config.json, model.safetensors, generation_config.json and a small
byte-level BPE tokenizer (ChatML template) trained on a fixed text, so the same arguments give
the same files. Tests load them with our loader and, as the reference, with transformers.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # test helper: nothing may touch the hub

REPO_ROOT = Path(__file__).resolve().parents[1]
_PAPER = Path("shared") / "data" / "arxiv-march-2023" / "article_0.txt"
# ../shared beside the repo; a copy under the repo's own (ignored) shared/ where only the repo
# travels, as on a lent GPU machine (benchmarks/gpu_check.sh)
TRAINING_TEXT = next(
    (p for p in (REPO_ROOT.parent / _PAPER, REPO_ROOT / _PAPER) if p.is_file()),
    REPO_ROOT.parent / _PAPER,
)
VOCAB_SIZE = 512
EOS_TOKEN, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
BOS_TOKEN = "<s>"  # only in the tokenizers made with bos=True
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Multi-byte text repeated in the training data, so some merges hold whole non-ASCII characters
# while rarer characters still split across byte tokens.
MULTILINGUAL_TEXT = (
    "Grüße aus Zürich: naïve café, déjà vu, smörgåsbord. Ελληνικά γράμματα. "
    "Русский текст для проверки. 日本語のテキストです。中文文本测试。한국어 텍스트. "
    "Emoji 🦜🎉✨ and symbols ½ ¾ € £ ¥ → ∑ ∞.\n"
)

ARCHITECTURES = ("llama", "mistral", "qwen2")
_BASE: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    # wider than the usual 0.02 so logits are spread out: greedy ties would make
    # token-by-token comparisons with transformers flaky
    "initializer_range": 0.2,
}
_PER_ARCH: dict[str, dict[str, Any]] = {
    "llama": {"num_hidden_layers": 2, "rope_theta": 10000.0},
    "mistral": {"num_hidden_layers": 3, "rope_theta": 1e6, "sliding_window": 4096},
    "qwen2": {"num_hidden_layers": 2, "rope_theta": 1e6, "tie_word_embeddings": True,
              "use_sliding_window": False},
}


def make_tiny_model(
    path: str | Path, arch: str = "llama", seed: int = 0, bos: bool = False, **overrides: Any
) -> Path:
    """Write a tiny random `arch` checkpoint with its tokenizer into `path`; returns `path`.

    `bos`: the tokenizer puts a BOS token (`BOS_TOKEN`) before every text, as Llama's and
    Mistral's do. `overrides` go to the transformers config (e.g. tie_word_embeddings=True,
    rope_scaling={"rope_type": "llama3", ...}, num_hidden_layers=4).
    """
    import transformers

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    path = Path(path)
    tokenizer = _hf_tokenizer(bos)
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[arch]
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    bos_id = tokenizer.convert_tokens_to_ids(BOS_TOKEN) if bos else None
    settings = {**_BASE, **_PER_ARCH[arch], "bos_token_id": bos_id, "eos_token_id": eos_id,
                "pad_token_id": eos_id, **overrides}
    config = config_class(**settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
        _perturb_norms_and_biases(model)
    transformers.utils.logging.disable_progress_bar()  # one bar per tiny model is noise
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@torch.no_grad()
def _perturb_norms_and_biases(model: torch.nn.Module) -> None:
    """HF initialises norm weights to 1 and biases to 0, which would hide mix-ups of those
    tensors; give them random values."""
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.uniform_(0.5, 1.5)
        elif name.endswith(".bias"):
            param.normal_(0.0, 0.5)


@functools.cache
def training_text() -> str:
    """The fixed tokenizer training text: 20 KB of a paper from ../shared plus multilingual text."""
    if not TRAINING_TEXT.is_file():
        raise FileNotFoundError(f"{TRAINING_TEXT} is missing: tests expect ../shared beside the repo")
    paper = TRAINING_TEXT.read_bytes()[:20_000].decode("utf-8", errors="ignore")
    return paper + MULTILINGUAL_TEXT * 20


@functools.cache
def _backend_tokenizer_json(bos: bool = False) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, IM_START, IM_END] + ([BOS_TOKEN] if bos else []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text().splitlines(keepends=True), trainer)
    if bos:  # Llama's post-processor: BOS before each text
        bos_id = tokenizer.token_to_id(BOS_TOKEN)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
            special_tokens=[(BOS_TOKEN, bos_id)],
        )  # fmt: skip
    return tokenizer.to_str()


def _hf_tokenizer(bos: bool = False) -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_backend_tokenizer_json(bos)),
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        chat_template=CHATML_TEMPLATE,
        **({"bos_token": BOS_TOKEN} if bos else {}),
    )
