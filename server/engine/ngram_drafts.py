"""Draft tokens for speculative decoding by n-gram lookup (prompt lookup decoding): the text
that followed the last time the sequence's final n tokens appeared, found in the sequence
itself (its prompt and what it has generated). Summaries, extractions and code edits copy from
their input, so the model often confirms several drafted tokens in one step; a step verifies
them all at once, its rows nearly free on a few CPU cores while the batch is small."""

from __future__ import annotations

from array import array
from collections.abc import Sequence

MIN_MATCH = 2  # a single repeated token is too weak a clue
MAX_MATCH = 4


def ngram_drafts(tokens: Sequence[int], k: int) -> list[int]:
    """Up to `k` tokens that followed the latest earlier occurrence of `tokens`' last n tokens
    (the longest n from MAX_MATCH down to MIN_MATCH that occurs); [] when none does."""
    if k <= 0 or len(tokens) <= MIN_MATCH:
        return []
    data = array("i", tokens).tobytes()  # searched in C: a byte offset a multiple of 4 is a token
    for n in range(min(MAX_MATCH, len(tokens) - 1), MIN_MATCH - 1, -1):
        tail = data[-4 * n :]
        end = len(data) - 4  # an occurrence ends before the last token (not the tail itself)
        while (at := data.rfind(tail, 0, end)) >= 0:
            if at % 4 == 0:
                start = at // 4 + n
                return list(tokens[start : start + k])
            end = at + 4 * n - 1  # misaligned: an occurrence starting further back
    return []
