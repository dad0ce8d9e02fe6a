"""The architecture description of a Llama-family checkpoint, read from its HF config.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# HF `architectures` names we run, and the `model_type` each one is written with.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
_ARCHITECTURE_OF_MODEL_TYPE = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}

# Required keys of each RoPE scaling type (besides "rope_type").
ROPE_SCALING_KEYS: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


@dataclass
class ModelConfig:
    """Shapes and hyper-parameters of a Llama-family decoder (Llama, Mistral, Qwen2, SmolLM).

    `rope_scaling` is None for plain RoPE, else a dict with "rope_type" ("linear" or "llama3")
    and that type's parameters. `attention_bias` is the q/k/v projection bias (Qwen2);
    `attention_out_bias` the o_proj bias (Llama's `attention_bias` sets both).
    A Mistral/Qwen2 sliding window is not implemented: sequences must stay within it, which
    `max_model_len` enforces by capping the usable length at the window.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_out_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be positive, got {self.rms_norm_eps}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"sliding_window must be positive or None, got {self.sliding_window}")
        self.eos_token_ids = tuple(self.eos_token_ids)
        for token_id in (*self.eos_token_ids, self.bos_token_id):
            if token_id is not None and not 0 <= token_id < self.vocab_size:
                raise ValueError(f"special token id {token_id} outside vocab of {self.vocab_size}")
        if self.rope_scaling is not None:
            _check_rope_scaling(self.rope_scaling)

    @property
    def max_model_len(self) -> int:
        """Longest sequence (prompt + output) this implementation runs exactly."""
        if self.sliding_window is None:
            return self.max_position_embeddings
        return min(self.max_position_embeddings, self.sliding_window)

    @property
    def model_type(self) -> str:
        return SUPPORTED_ARCHITECTURES[self.architecture]

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Build from a Hugging Face config dict; `source` names the file in error messages."""
        if not isinstance(hf, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(hf).__name__}")
        architecture = _architecture(hf, source)
        model_type = SUPPORTED_ARCHITECTURES[architecture]

        def need(key: str) -> Any:
            if hf.get(key) is None:
                raise ValueError(f"{source}: missing required field {key!r}")
            return hf[key]

        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"{source}: field 'hidden_act' is {act!r}; only 'silu' is supported")
        num_heads = need("num_attention_heads")
        hidden_size = need("hidden_size")
        head_dim = hf.get("head_dim") or hidden_size // num_heads
        rope_theta, rope_scaling = _rope(hf, source)
        eos = hf.get("eos_token_id")
        eos_ids = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
        if model_type == "qwen2":
            qkv_bias, out_bias, mlp_bias = True, False, False
            window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
        else:
            qkv_bias = bool(hf.get("attention_bias", False))
            out_bias = qkv_bias if model_type == "llama" else False
            mlp_bias = bool(hf.get("mlp_bias", False))
            window = hf.get("sliding_window") if model_type == "mistral" else None
        try:
            return cls(
                architecture=architecture,
                vocab_size=need("vocab_size"),
                hidden_size=hidden_size,
                intermediate_size=need("intermediate_size"),
                num_layers=need("num_hidden_layers"),
                num_heads=num_heads,
                num_kv_heads=hf.get("num_key_value_heads") or num_heads,
                head_dim=head_dim,
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope_theta),
                rope_scaling=rope_scaling,
                max_position_embeddings=hf.get("max_position_embeddings", 2048),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                attention_bias=qkv_bias,
                attention_out_bias=out_bias,
                mlp_bias=mlp_bias,
                sliding_window=window,
                bos_token_id=hf.get("bos_token_id"),
                eos_token_ids=eos_ids,
            )
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None


def _architecture(hf: dict[str, Any], source: str) -> str:
    names = hf.get("architectures") or []
    if names:
        if names[0] not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"{source}: field 'architectures' is {names!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        return names[0]
    model_type = hf.get("model_type")
    if model_type not in _ARCHITECTURE_OF_MODEL_TYPE:
        raise ValueError(
            f"{source}: no 'architectures' and field 'model_type' is {model_type!r}; "
            f"supported: {', '.join(_ARCHITECTURE_OF_MODEL_TYPE)}"
        )
    return _ARCHITECTURE_OF_MODEL_TYPE[model_type]


def _rope(hf: dict[str, Any], source: str) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either the transformers-5 `rope_parameters` or the older
    `rope_theta` + `rope_scaling` fields."""
    params = hf.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ValueError(f"{source}: field 'rope_parameters' must be an object")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(f"{source}: partial_rotary_factor {partial} is not supported (only 1.0)")
    scaling = dict(params) if params else dict(hf.get("rope_scaling") or {})
    scaling.pop("rope_theta", None)
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    if scaling.get("rope_type", "default") == "default":
        return theta, None
    try:
        _check_rope_scaling(scaling)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    return theta, scaling


def _check_rope_scaling(scaling: dict[str, Any]) -> None:
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALING_KEYS:
        raise ValueError(
            f"rope scaling type {kind!r} is not supported; "
            f"supported: none, {', '.join(ROPE_SCALING_KEYS)}"
        )
    missing = [k for k in ROPE_SCALING_KEYS[kind] if scaling.get(k) is None]
    if missing:
        raise ValueError(f"rope scaling {kind!r} lacks {', '.join(missing)}")
    if not scaling["factor"] > 0:
        raise ValueError(f"rope scaling factor must be positive, got {scaling['factor']}")
