"""How many UTF-8 bytes of a text one token can stand for at most, read off a tokenizer once:
a text's byte length divided by it is a lower bound on its token count, known without running
the tokenizer (~1 s per MB), so a text far past a model's context is refused at once.

A token covers at most its vocabulary entry's bytes of the normalized text (a byte-level
entry spells each byte as one character of 1-2 bytes, SentencePiece's "▁" is 3 bytes for a
space's 1). Normalization may shrink a text: Unicode forms and lowercasing at most 4 times
(U+1D400 "𝐀", 4 bytes, is NFKC's "A"), so the bound divides by that much more; a
tokenizer that may drop text (stripping, removing accents or control characters, splitting on
whitespace) has no bound, as has one whose token may stand for a run of unknown text (a
word-level model's, BPE's that fuses unknown characters into one token).
"""

from __future__ import annotations

import json
from typing import Any

import tokenizers

_UNICODE_SHRINK = 4
# normalizers by how many times shorter (in UTF-8) they may make a text; those not listed may
# drop characters, or are unknown here: no bound
_SHRINK = {"NFC": _UNICODE_SHRINK, "NFD": _UNICODE_SHRINK, "NFKC": _UNICODE_SHRINK,
           "NFKD": _UNICODE_SHRINK, "Lowercase": _UNICODE_SHRINK, "Prepend": 1}  # fmt: skip
# pre-tokenizers that drop the whitespace they split on
_DROPPING = {"Whitespace", "WhitespaceSplit", "BertPreTokenizer"}


def bytes_per_token(backend: tokenizers.Tokenizer) -> int | None:
    """The most bytes of a text that one token of `backend` can stand for (None: no bound)."""
    spec = json.loads(backend.to_str())
    shrink = _shrink(spec.get("normalizer"))
    if shrink is None or _drops(spec.get("pre_tokenizer")) or not _bpe_of_pieces(spec["model"]):
        return None
    vocab = backend.get_vocab(with_added_tokens=True)
    longest = max((len(piece.encode("utf-8", "surrogatepass")) for piece in vocab), default=0)
    return max(1, longest) * shrink


def _bpe_of_pieces(model: dict[str, Any]) -> bool:
    """Whether each token is one of the model's pieces: BPE's, unless it fuses a run of
    unknown characters into one unknown token (without byte fallback), which may be any
    length, as a word-level model's unknown word may."""
    if model.get("type") != "BPE":
        return False
    return not (model.get("unk_token") and model.get("fuse_unk") and not model.get("byte_fallback"))


def _shrink(normalizer: dict[str, Any] | None) -> int | None:
    if normalizer is None:
        return 1
    kind = normalizer.get("type")
    if kind == "Sequence":
        total = 1
        for part in normalizer.get("normalizers", []):
            factor = _shrink(part)
            if factor is None:
                return None
            total *= factor
        return total
    if kind == "Replace":  # " " -> "▁": shrinks where what it writes is shorter
        pattern = normalizer.get("pattern", {})
        source = pattern.get("String") if isinstance(pattern, dict) else None
        content = normalizer.get("content", "")
        if not isinstance(source, str) or not source:
            return None  # a regex: it may match more than it writes
        return max(1, -(-len(source.encode()) // max(1, len(content.encode()))))
    return _SHRINK.get(kind)


def _drops(pre_tokenizer: dict[str, Any] | None) -> bool:
    if pre_tokenizer is None:
        return False
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":
        return any(_drops(p) for p in pre_tokenizer.get("pretokenizers", []))
    return kind in _DROPPING or (kind == "Split" and pre_tokenizer.get("behavior") == "Removed")
