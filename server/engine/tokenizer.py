"""Text <-> token ids, chat templates and streaming detokenization for a model folder.

Wraps the Hugging Face `tokenizers` backend (tokenizer.json) directly, so serving never imports
transformers; a folder without tokenizer.json falls back to transformers' converter once (in
the process that loads the model: `converted_backend_json` hands its result on).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import tokenizers
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from server.engine.token_bound import bytes_per_token

_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
# what `prompt_prefix_ids` encodes with and without special tokens to find those put before it
_PROBE_TEXT = "Hello"


class Tokenizer:
    """A model's tokenizer: encode/decode, its special ids and its chat template."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        eos_token_ids: Iterable[int] = (),
        bos_token_id: int | None = None,
        chat_template: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.eos_token_ids: frozenset[int] = frozenset(eos_token_ids)
        self.bos_token_id = bos_token_id
        self.chat_template = chat_template
        self.special_tokens: dict[str, str] = dict(special_tokens or {})
        # GPT-2-style byte-level BPE spells each byte as one printable character (and decodes
        # the bytes of the whole text at once, invalid ones each to U+FFFD)
        self.byte_level = "ByteLevel" in type(backend.decoder).__name__ if backend.decoder else False

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        extra_eos_token_ids: Iterable[int] = (),
        backend_json: str | None = None,
    ) -> Tokenizer:
        """Load tokenizer.json, tokenizer_config.json, the chat template and generation_config's
        EOS ids from an HF model folder; `extra_eos_token_ids` (e.g. config.json's) are added.
        `backend_json`: the backend as JSON (`converted_backend_json` of a tokenizer loaded from
        this folder elsewhere), taken instead of converting the folder's files again."""
        folder = Path(folder)
        backend = (
            _load_backend(folder) if backend_json is None
            else tokenizers.Tokenizer.from_str(backend_json)
        )  # fmt: skip
        config = _read_json(folder / "tokenizer_config.json")
        special = {
            key: _token_text(config.get(key)) for key in _SPECIAL_TOKEN_KEYS if config.get(key)
        }
        for key, value in _read_json(folder / "special_tokens_map.json").items():
            if key in _SPECIAL_TOKEN_KEYS and key not in special and _token_text(value):
                special[key] = _token_text(value)
        eos_ids = set(extra_eos_token_ids)
        generation_eos = _read_json(folder / "generation_config.json").get("eos_token_id")
        if generation_eos is not None:
            eos_ids.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        if "eos_token" in special and backend.token_to_id(special["eos_token"]) is not None:
            eos_ids.add(backend.token_to_id(special["eos_token"]))
        bos_id = backend.token_to_id(special["bos_token"]) if "bos_token" in special else None
        return cls(backend, eos_ids, bos_id, _chat_template(folder, config), special)

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer knows, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; `add_special_tokens` applies the tokenizer's BOS/EOS template."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        # encode_batch lets go of the GIL while it works (encode holds it): a long prompt
        # tokenized in a worker thread then leaves the event loop free (~1 s per MB here)
        return self.backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def encode_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """A prompt's token ids: the tokenizer's leading special tokens (`prompt_prefix_ids`,
        e.g. Llama's and Mistral's BOS), as Hugging Face and vLLM add them to a text prompt,
        then the text's. Not added twice: a text that starts with them (a chat template that
        writes its BOS) keeps its own. Special tokens that a tokenizer would put after a text
        are not added: a prompt's tokens must extend the tokens of its every prefix, which
        prefix sharing and calls with several outputs build on."""
        ids = self.encode(text)
        lead = list(self.prompt_prefix_ids) if add_special_tokens else []
        if lead and ids[: len(lead)] != lead:
            return lead + ids
        return ids

    def fewest_tokens(self, text: str) -> int:
        """A lower bound on the number of tokens `text` encodes to, without encoding it (its
        UTF-8 length over `token_bound.bytes_per_token`; 0 where the tokenizer has none)."""
        if self._bytes_per_token is None:
            return 0
        return len(text.encode("utf-8", "surrogatepass")) // self._bytes_per_token

    @cached_property
    def _bytes_per_token(self) -> int | None:
        return bytes_per_token(self.backend)

    @cached_property
    def prompt_prefix_ids(self) -> tuple[int, ...]:
        """The special tokens this tokenizer puts before a text (its post-processor's): BOS
        for Llama and Mistral, none for ChatML models such as Qwen2 and SmolLM2."""
        bare = self.encode(_PROBE_TEXT)
        full = self.encode(_PROBE_TEXT, add_special_tokens=True)
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return tuple(full[:start])
        return ()  # the post-processor rewrites the text's tokens: add nothing rather than guess

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; byte sequences cut mid-character decode to U+FFFD."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for: with byte-level BPE a token may hold part of a UTF-8
        character, which its text alone cannot show (OpenAI's logprobs report these bytes)."""
        piece = self.backend.id_to_token(token_id)
        if piece is None:
            return b""
        if _is_byte_fallback(piece):  # sentencepiece's <0xE2>
            return bytes([int(piece[3:5], 16)])
        if self.byte_level and all(c in _BYTE_OF_CHAR for c in piece):
            return bytes(_BYTE_OF_CHAR[c] for c in piece)
        return self.backend.decode([token_id], skip_special_tokens=False).encode()

    def token_id(self, token: str) -> int | None:
        """Id of a vocabulary entry (e.g. "<|im_end|>"), or None."""
        return self.backend.token_to_id(token)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        **template_vars: Any,
    ) -> str:
        """Render `messages` ([{"role": ..., "content": ...}, ...]) into the model's prompt text.

        Extra keyword arguments (tools, documents, ...) are passed to the template. OpenAI's
        `developer` role is the system role (as OpenAI reads it) for a template that does not
        name it; one that does gets it as it is.
        """
        if self.chat_template is None:
            raise ValueError("this model has no chat template (none in its tokenizer files)")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise ValueError(f"messages[{i}] must be a dict with a string 'role'")
        if not self._knows_developer:
            messages = [
                {**m, "role": "system"} if m["role"] == "developer" else m for m in messages
            ]
        return self._compiled_template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens,
            **template_vars,
        )

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """The ids of the special tokens (those `decode` leaves out by default)."""
        added = self.backend.get_added_tokens_decoder()
        return frozenset(i for i, token in added.items() if token.special)

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        """A fresh streaming detokenizer over this tokenizer."""
        return IncrementalDetokenizer(self, skip_special_tokens)

    @cached_property
    def _knows_developer(self) -> bool:
        """The template renders a `developer` role of its own (a plain template would write
        it out as a turn of a role the model was never trained on)."""
        return "developer" in (self.chat_template or "")

    @cached_property
    def _compiled_template(self) -> jinja2.Template:
        return _template_environment().from_string(self.chat_template or "")


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, one token at a time.

    Each step re-decodes only a small window (from `prefix_offset`) so that tokenizers that
    merge a leading space or split a character across tokens still stream correctly: text is
    released only when the window no longer ends in an incomplete character (U+FFFD). With
    byte-level BPE, a U+FFFD that no later byte can change (its bytes are not the start of a
    character) is released too: held, the window would grow with every token, each step
    re-decoding all of it (quadratic: 4,000 stray continuation bytes took 3 s of step time, and
    nothing streamed). Not with sentencepiece's byte fallback, whose decoder turns a whole run
    of byte tokens into U+FFFDs once any byte of it is invalid, so later bytes can change it.
    The concatenated deltas plus `finish()` equal `decode(token_ids)`; `text` holds them so far.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self.text = ""
        self._prefix_offset = 0  # window start: tokens before it are settled text
        self._read_offset = 0  # tokens before it have been released as text
        self._prefix_text = ""  # decode(token_ids[prefix_offset:read_offset])

    def add(self, token_id: int) -> str:
        """Append one token; returns the text it completes (often "", e.g. mid-character)."""
        self.token_ids.append(token_id)
        window = self._decode(self.token_ids[self._prefix_offset :])
        if len(window) <= len(self._prefix_text):
            return ""
        if window.endswith("\ufffd") and (
            not self.tokenizer.byte_level or self._inside_character()
        ):
            return ""
        delta = window[len(self._prefix_text) :]
        # the released tokens become the next window's prefix
        self._prefix_offset, self._read_offset = self._read_offset, len(self.token_ids)
        self._prefix_text = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
        self.text += delta
        return delta

    def add_many(self, token_ids: Iterable[int]) -> str:
        """Append several tokens; returns their combined delta."""
        return "".join(self.add(t) for t in token_ids)

    def finish(self) -> str:
        """Release whatever is held back (an incomplete character decodes as U+FFFD)."""
        window = self._decode(self.token_ids[self._prefix_offset :])
        delta = window[len(self._prefix_text) :]
        self._prefix_offset = self._read_offset = len(self.token_ids)
        self._prefix_text = ""
        self.text += delta
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _inside_character(self) -> bool:
        """Whether the held tokens' bytes end inside a UTF-8 character (a lead byte still
        waiting for its continuation bytes): only then can later tokens change the window's
        last U+FFFD. Released text always ends between characters, so the held bytes start
        at one."""
        skipped = self.tokenizer.special_ids if self.skip_special_tokens else frozenset()
        held = b"".join(
            self.tokenizer.token_bytes(t)
            for t in self.token_ids[self._read_offset :]
            if t not in skipped
        )
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        decoder.decode(held)
        return bool(decoder.getstate()[0])  # the bytes it keeps for the character's rest


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's character for each byte: printable Latin-1 bytes stand for
    themselves, the other 68 take the code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


_BYTE_OF_CHAR = _byte_level_alphabet()


def _is_byte_fallback(piece: str) -> bool:
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def converted_backend_json(tokenizer: Tokenizer, folder: str | Path) -> str | None:
    """`tokenizer`'s backend as JSON where `folder` (whence it was loaded) has no
    tokenizer.json, so that it was converted from the other files; else None (the file is
    there to read). The conversion needs transformers, whose tokenizer loading imports torch:
    a process with torch converts once, and a torch-free one takes this."""
    if (Path(folder) / "tokenizer.json").is_file():
        return None
    return tokenizer.backend.to_str()


def _load_backend(folder: Path) -> tokenizers.Tokenizer:
    path = folder / "tokenizer.json"
    if path.is_file():
        try:
            return tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:
            raise ValueError(f"{path}: not a valid tokenizer file ({e})") from e
    # e.g. a sentencepiece-only folder: transformers converts it to a fast tokenizer (its
    # AutoTokenizer imports torch, so a server with engine processes takes their conversion)
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return hf.backend_tokenizer
    except Exception as e:
        raise ValueError(f"{folder}: no tokenizer.json and no tokenizer transformers can load ({e})") from e


def _chat_template(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if template is None:
        template = _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{folder}: chat_template must be a string")
    return template


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    """Special tokens are saved either as text or as {"content": text, ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in HF
    templates; rendering just keeps the body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_template_error(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None,
    separators: tuple[str, str] | None = None, sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _template_environment() -> jinja2.Environment:
    """The Jinja dialect HF chat templates are written for."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, "jinja2.ext.loopcontrols"],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_template_error
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env
