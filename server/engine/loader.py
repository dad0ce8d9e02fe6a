"""Load a model and its tokenizer from a registered name, an HF folder or a GGUF file.

GGUF files are converted once with transformers' GGUF reader (which dequantizes the weights)
into an HF safetensors folder under a cache directory, so later starts only read safetensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from server.engine.gguf_quantized import read_quantized, write_quantized
from server.engine.model_name import check_model_name
from server.engine.models import LlamaForCausalLM, ModelConfig
from server.engine.models.linear import QUANTIZED_MAX_ROWS
from server.engine.registry import embedded_model
from server.engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "parrot" / "models"
_SOURCE_STAMP = "parrot_source.json"  # in a converted folder: which GGUF it came from

# Used when a GGUF carries no chat template: the ChatML layout SmolLM2 and Qwen2 use.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class LoadedModel:
    """A ready model: `path` is the HF folder its weights were read from (for a GGUF, the
    converted copy, which transformers can load too)."""

    model: LlamaForCausalLM
    tokenizer: Tokenizer
    config: ModelConfig
    name: str
    path: Path


def load_model(
    name_or_path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | Path | None = None,
    packed_linear: bool = True,
    fused_layers: bool = True,
    quantized_linear: bool = True,
) -> LoadedModel:
    """Load a registered name (`smollm2-135m-instruct`), an HF folder (config.json +
    *.safetensors, or PyTorch *.bin weights) or a .gguf file. dtype None: float32 on CPU,
    bfloat16 on CUDA, whatever the checkpoint's `torch_dtype`/`dtype` (weights are cast).
    GGUF conversions are cached in `<cache_dir>/<name>` (cache_dir defaults to
    ~/.cache/parrot/models). `packed_linear`: CPU float32 linear layers use the packed kernel;
    `fused_layers`: packed models run steps without shared-prefix levels through one C call for
    all layers; `quantized_linear`: packed layers converted from a GGUF's 4-bit (Q4_0, Q4_1,
    Q4_K) or Q8_0/Q6_K weights (and a tied head from its embedding) keep them quantized too, for
    steps of few rows (`server/engine/gguf_quantized.py`)."""
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE_DIR
    name, folder = resolve_model_folder(name_or_path, cache_root)
    config = ModelConfig.from_hf(_read_config(folder), source=str(folder / "config.json"))
    reason = config.max_model_len_reason()
    if reason is not None:
        log.warning(
            "%s: sequences are limited to %d tokens (max_model_len): %s",
            folder, config.max_model_len, reason,
        )
    weights = _checkpoint_weights(folder)  # checks the files are there; reads nothing yet
    # the tokenizer before the weights: a folder without one fails before the heavy part
    tokenizer = Tokenizer.from_folder(folder, extra_eos_token_ids=config.eos_token_ids)
    model = LlamaForCausalLM(
        config, device=device, dtype=dtype, packed_linear=packed_linear, fused_layers=fused_layers
    )
    model.load_weights(weights)
    if quantized_linear and packed_linear and device.type == "cpu" and dtype == torch.float32:
        attached = model.attach_quantized(read_quantized(folder))
        if attached:
            log.info("%s: %d weights used quantized in steps of up to %d rows",
                     name, attached, QUANTIZED_MAX_ROWS)  # fmt: skip
    model.eval()
    return LoadedModel(model, tokenizer, config, name, folder)


def resolve_model_folder(name_or_path: str | Path, cache_root: Path) -> tuple[str, Path]:
    """(display name, HF folder) for a registered name, a folder or a .gguf file; converts a
    GGUF into the cache on first use."""
    embedded = embedded_model(str(name_or_path))
    if embedded is not None:
        return embedded.name, convert_gguf(embedded.path(), cache_root / embedded.name)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.stem, convert_gguf(path, cache_root / path.stem)
    if path.is_dir():
        return path.name, path
    check_model_name(name_or_path)
    raise AssertionError("check_model_name accepts only what is handled above")


def convert_gguf(gguf_path: Path, folder: Path) -> Path:
    """The HF folder converted from `gguf_path`, creating it (atomically) if it is missing or
    was made from a different file."""
    stamp = _gguf_stamp(gguf_path)
    if _read_stamp(folder) == stamp:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_hf_folder(gguf_path, tmp)
        (tmp / _SOURCE_STAMP).write_text(json.dumps(stamp, indent=2))
        _make_readable(tmp)  # mkdtemp creates it private
        if folder.exists():  # stale conversion: move it aside, then swap
            stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}.stale.", dir=folder.parent))
            os.replace(folder, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            if _read_stamp(folder) != stamp:  # lost a race only if the winner matches
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _write_hf_folder(gguf_path: Path, out: Path) -> None:
    """Dequantize a GGUF with transformers and save config, weights and tokenizer as HF files."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, src_file = str(gguf_path.parent), gguf_path.name
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            src_dir, gguf_file=src_file, dtype=torch.float32, local_files_only=True
        )
        hf_tokenizer = AutoTokenizer.from_pretrained(
            src_dir, gguf_file=src_file, local_files_only=True
        )
    except Exception as e:
        raise ValueError(f"{gguf_path}: transformers cannot load this GGUF ({e})") from e
    config = hf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    config["architectures"] = [type(hf_model).__name__]
    config["dtype"] = "float32"
    ModelConfig.from_hf(config, source=f"{gguf_path} (converted config)")  # fail before saving
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    state = hf_model.state_dict()
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    if not hf_tokenizer.chat_template:
        hf_tokenizer.chat_template = CHATML_TEMPLATE
    hf_tokenizer.save_pretrained(str(out))
    if config.get("model_type") in ("llama", "qwen2"):
        write_quantized(gguf_path, out, config)  # as they are too, for CPU decode steps


def _make_readable(folder: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for file in folder.iterdir():
        file.chmod(0o666 & ~umask)


def _gguf_stamp(path: Path) -> dict[str, Any]:
    """What identifies a GGUF's content cheaply: its name, size and a hash of its two ends.

    Not its path or mtime: the same wheel installed in two environments is the same model, and
    one conversion serves both.
    """
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    # layout 2: the conversion holds the quantized weights too (gguf_quantized.py); 3: Q4_K
    # weights among them (a GGUF converted before kept those float32 only); 4: Q5_0, Q5_1,
    # Q5_K, Q3_K and Q2_K too
    return {"gguf": path.name, "size": size, "sha256_ends": digest.hexdigest(), "layout": 4}


def _read_stamp(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / _SOURCE_STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        hint = ""
        ggufs = sorted(folder.glob("*.gguf"))
        if ggufs:
            hint = f"; to load a GGUF, pass the file itself, e.g. {ggufs[0]}"
        raise ValueError(f"{folder}: missing config.json (not a Hugging Face model folder){hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e


def _checkpoint_weights(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The folder's weights as (name, tensor) pairs: its safetensors files, or else its
    PyTorch .bin files (as transformers, which prefers safetensors). Raises ValueError at
    once (not on first iteration) when there are none or an index lists missing files."""
    files = _weight_files(folder, "model.safetensors", "*.safetensors")
    if files:
        return _safetensors_weights(files)
    files = _weight_files(folder, "pytorch_model.bin", "pytorch_model*.bin")
    if files:
        return _bin_weights(files)
    raise ValueError(f"{folder}: no *.safetensors (or pytorch_model*.bin) weights")


def _weight_files(folder: Path, single: str, pattern: str) -> list[Path]:
    """The shards `<single>.index.json` lists, else `single` (as transformers; a folder may
    also hold e.g. Mistral's consolidated.safetensors), else every file matching `pattern`."""
    index = folder / f"{single}.index.json"
    if not index.is_file():
        if (folder / single).is_file():
            return [folder / single]
        return sorted(folder.glob(pattern))
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: not a weights index ({e})") from e
    files = sorted({folder / f for f in weight_map.values()})
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"{index}: lists missing shard(s) {', '.join(missing)}")
    return files


def _safetensors_weights(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream (name, tensor) pairs from safetensors shards, one at a time so a large model
    never needs a second full copy in memory."""
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


def _bin_weights(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs from PyTorch state-dict shards, memory-mapped, read with
    `weights_only` (tensors and containers only: no code runs from the file)."""
    for file in files:
        try:
            try:
                state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
                state = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{file}: cannot read it as a PyTorch state dict ({e})") from e
        if not isinstance(state, dict):
            raise ValueError(f"{file}: expected a state dict, got {type(state).__name__}")
        for key, tensor in state.items():
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{file}: entry {key!r} is not a tensor")
            yield key, tensor
        del state
