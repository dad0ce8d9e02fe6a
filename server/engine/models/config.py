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

# Required keys of each RoPE scaling type (besides "rope_type"), as transformers reads them.
ROPE_SCALING_KEYS: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
    "longrope": ("factor", "short_factor", "long_factor", "original_max_position_embeddings"),
}
_ORIGINAL_LENGTH_TYPES = ("llama3", "yarn", "longrope")
# transformers' defaults for fields a config.json may leave out, where they differ by family
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048, "num_key_value_heads": None},
    "mistral": {"max_position_embeddings": 4096 * 32, "num_key_value_heads": 8,
                "sliding_window": 4096},
    "qwen2": {"max_position_embeddings": 32768, "num_key_value_heads": 32,
              "sliding_window": 4096, "max_window_layers": 28},
}
# hidden_act values that transformers maps to SiLU
_SILU_NAMES = ("silu", "swish")


@dataclass
class ModelConfig:
    """Shapes and hyper-parameters of a Llama-family decoder (Llama, Mistral, Qwen2, SmolLM).

    `rope_scaling` is None for plain RoPE, else a dict with "rope_type" (a key of
    `ROPE_SCALING_KEYS`) and that type's parameters, computed as transformers does (see
    `server/engine/models/rope.py`). `attention_bias` is the q/k/v projection bias (Qwen2);
    `attention_out_bias` the o_proj bias (Llama's `attention_bias` sets both).
    A Mistral/Qwen2 sliding window is not implemented: sequences must stay within it, which
    `max_model_len` enforces by capping the usable length at the window (the engine takes
    its length limit from `max_model_len`).
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
            if self.rope_scaling["rope_type"] == "longrope":
                for key in ("short_factor", "long_factor"):
                    factors = self.rope_scaling[key]
                    if not isinstance(factors, list) or len(factors) != self.head_dim // 2:
                        raise ValueError(
                            f"rope scaling longrope {key} must be a list of head_dim / 2 "
                            f"({self.head_dim // 2}) numbers"
                        )

    @property
    def max_model_len(self) -> int:
        """Longest sequence (prompt + output) this implementation runs exactly: the position
        table, capped by a sliding window (not implemented: within it, attention is full) and
        by longrope's original length (past it transformers switches to the long factors)."""
        return min(self._length_limits().values())

    def max_model_len_reason(self) -> str | None:
        """Why `max_model_len` is below `max_position_embeddings` (None when it is not)."""
        limits = self._length_limits()
        if min(limits.values()) == self.max_position_embeddings:
            return None
        return "; ".join(
            f"{name} is {value}" for name, value in limits.items()
            if value < self.max_position_embeddings
        )

    def _length_limits(self) -> dict[str, int]:
        limits = {"max_position_embeddings": self.max_position_embeddings}
        if self.sliding_window is not None:
            # within the window a sliding window attends to everything
            limits["sliding_window (not implemented: exact only within it)"] = self.sliding_window
        if self.rope_scaling is not None and self.rope_scaling.get("rope_type") == "longrope":
            limits["longrope's original_max_position_embeddings"] = int(
                self.rope_scaling["original_max_position_embeddings"]
            )
        return limits

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

        defaults = _FAMILY_DEFAULTS[model_type]

        def get(key: str) -> Any:
            return hf[key] if key in hf else defaults.get(key)

        act = hf.get("hidden_act", "silu")
        if act not in _SILU_NAMES:
            raise ValueError(f"{source}: field 'hidden_act' is {act!r}; only 'silu' is supported")
        num_heads = need("num_attention_heads")
        hidden_size = need("hidden_size")
        head_dim = hf.get("head_dim") or hidden_size // num_heads
        max_positions = get("max_position_embeddings")
        rope_theta, rope_scaling = _rope(hf, source, max_positions)
        eos = hf.get("eos_token_id")
        eos_ids = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
        if model_type == "qwen2":
            qkv_bias, out_bias, mlp_bias = True, False, False
            window = _qwen2_window(hf, get, source)
        elif model_type == "mistral":  # transformers' Mistral has no biases at all
            qkv_bias = out_bias = mlp_bias = False
            window = get("sliding_window")
        else:
            qkv_bias = out_bias = bool(hf.get("attention_bias", False))
            mlp_bias = bool(hf.get("mlp_bias", False))
            window = None
        try:
            return cls(
                architecture=architecture,
                vocab_size=need("vocab_size"),
                hidden_size=hidden_size,
                intermediate_size=need("intermediate_size"),
                num_layers=need("num_hidden_layers"),
                num_heads=num_heads,
                num_kv_heads=get("num_key_value_heads") or num_heads,
                head_dim=head_dim,
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope_theta),
                rope_scaling=rope_scaling,
                max_position_embeddings=max_positions,
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
    """The architecture, from `architectures` and `model_type`, which must agree: transformers'
    Auto classes build the model that `model_type` names."""
    names = hf.get("architectures") or []
    model_type = hf.get("model_type")
    if names:
        if names[0] not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"{source}: field 'architectures' is {names!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if model_type is not None and model_type != SUPPORTED_ARCHITECTURES[names[0]]:
            supported = (
                "" if model_type in _ARCHITECTURE_OF_MODEL_TYPE
                else f" ({model_type!r} is not supported: {', '.join(_ARCHITECTURE_OF_MODEL_TYPE)})"
            )
            raise ValueError(
                f"{source}: field 'model_type' is {model_type!r}, which does not match "
                f"'architectures' {names!r} (expected {SUPPORTED_ARCHITECTURES[names[0]]!r})"
                f"{supported}"
            )
        return names[0]
    if model_type not in _ARCHITECTURE_OF_MODEL_TYPE:
        raise ValueError(
            f"{source}: no 'architectures' and field 'model_type' is {model_type!r}; "
            f"supported: {', '.join(_ARCHITECTURE_OF_MODEL_TYPE)}"
        )
    return _ARCHITECTURE_OF_MODEL_TYPE[model_type]


def _qwen2_window(hf: dict[str, Any], get: Any, source: str) -> int | None:
    """The sliding window transformers' Qwen2 applies to some layer, or None: the window is
    on with `use_sliding_window`, for the layers `layer_types` marks "sliding_attention"
    (when absent: layers from `max_window_layers` on)."""
    window = get("sliding_window") if hf.get("use_sliding_window") else None
    if window is None:
        return None
    layer_types = hf.get("layer_types")
    if layer_types is None:
        num_layers = hf.get("num_hidden_layers")
        if not isinstance(num_layers, int):
            return window  # the field check reports it
        first = get("max_window_layers")
        layer_types = ["sliding_attention" if i >= first else "full_attention"
                       for i in range(num_layers)]
    if not isinstance(layer_types, list):
        raise ValueError(f"{source}: field 'layer_types' must be a list")
    return window if "sliding_attention" in layer_types else None


def _rope(
    hf: dict[str, Any], source: str, max_positions: Any
) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either the transformers-5 `rope_parameters` or the older
    `rope_theta` + `rope_scaling` fields, read as transformers does: `rope_scaling` wins when
    both are set; theta from that dict, else the top-level `rope_theta`; a top-level
    `original_max_position_embeddings` wins over the scaling's own, which defaults to
    `max_position_embeddings`; longrope's factor defaults to their ratio."""
    for key in ("rope_scaling", "rope_parameters"):
        if hf.get(key) is not None and not isinstance(hf[key], dict):
            raise ValueError(f"{source}: field {key!r} must be an object")
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    theta = params.get("rope_theta", hf.get("rope_theta"))
    theta = 10000.0 if theta is None else theta
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(f"{source}: partial_rotary_factor {partial} is not supported (only 1.0)")
    scaling = dict(params)
    if any(isinstance(v, dict) for v in scaling.values()):
        raise ValueError(f"{source}: RoPE parameters per layer type are not supported")
    scaling.pop("rope_theta", None)
    scaling.pop("partial_rotary_factor", None)
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    kind = scaling.get("rope_type", "default")
    if kind == "default":
        return theta, None
    if kind in _ORIGINAL_LENGTH_TYPES:
        if hf.get("original_max_position_embeddings") is not None:
            scaling["original_max_position_embeddings"] = hf["original_max_position_embeddings"]
        elif scaling.get("original_max_position_embeddings") is None:
            scaling["original_max_position_embeddings"] = max_positions
    if kind == "longrope" and scaling.get("factor") is None:
        original = scaling.get("original_max_position_embeddings")
        if isinstance(max_positions, int) and isinstance(original, int) and original > 0:
            scaling["factor"] = max_positions / original
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
    original = scaling.get("original_max_position_embeddings")
    if original is not None and not (isinstance(original, int) and original > 0):
        raise ValueError(
            f"rope scaling original_max_position_embeddings must be a positive integer, "
            f"got {original!r}"
        )
