"""Constrained generation: the text must be one JSON object (JSON mode), one a schema allows
(structured outputs), or one of a few strings (vLLM's guided_choice). The sampler draws as
usual and keeps the token if the text can still become what is asked; otherwise that token is
ruled out and it draws again from what is left (exact rejection sampling; greedy takes the most
likely token that fits). End-of-sequence fits only once the text is complete, and once nothing
else can follow (a JSON object has closed) only it does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from server.engine.choice_prefix import ChoicePrefix
from server.engine.json_prefix import JsonPrefix
from server.engine.json_schema import compile_schema
from server.engine.schema_prefix import SchemaPrefix

if TYPE_CHECKING:
    from server.engine.tokenizer import Tokenizer

_FIRST_TRIES = 64  # candidates tried in order of likelihood before the whole vocabulary


class TokenTable:
    """Every token's bytes, and which ids end a generation; other special tokens (chat markers)
    never fit constrained text."""

    def __init__(self, token_bytes: Sequence[bytes | None], stop_ids: frozenset[int]) -> None:
        self.token_bytes = list(token_bytes)  # None: a special token
        self.stop_ids = stop_ids


class OutputConstraint:
    """The constraint of one generation, advanced by each token it samples."""

    def __init__(
        self, table: TokenTable, text: JsonPrefix | SchemaPrefix | ChoicePrefix,
        extra_stop_ids: Sequence[int] = (),
    ) -> None:  # fmt: skip
        """`text`: the automaton the generated text must keep satisfied."""
        self._table = table
        self._stops = table.stop_ids | frozenset(extra_stop_ids)
        self._text = text
        self._off = False  # a token that did not fit was taken (no stop id to end with)

    @property
    def complete(self) -> bool:
        return self._text.complete

    def fits(self, token: int) -> bool:
        if self._off:
            return True
        if token in self._stops:
            return self._text.complete
        data = self._table.token_bytes[token] if token < len(self._table.token_bytes) else None
        return bool(data) and self._text.copy().feed_all(data)  # type: ignore[arg-type]

    def advance(self, token: int) -> None:
        """Take the sampled token. One that does not fit (`choose` found nothing that did and
        there is no stop id) turns the constraint off rather than failing the step."""
        if self._off or token in self._stops:
            return
        data = self._table.token_bytes[token] if token < len(self._table.token_bytes) else None
        if data is None or not self._text.feed_all(data):
            self._off = True

    def choose(
        self, logits: torch.Tensor, drawn: int, redraw: Callable[[torch.Tensor], int] | None
    ) -> int:
        """`drawn` if it fits, else: sampling, `redraw(banned)` (a draw from the row's sampling
        distribution without the banned ids) until a draw fits; greedy (`redraw` None), or
        when the distribution has nothing left that fits, the likeliest token that fits. With
        nothing at all that fits (which the automata never reach: some byte always continues
        an unfinished text), the likeliest stop id."""
        if self.fits(drawn):
            return drawn
        if _final(self._text) and self._stops:  # only a stop id fits now
            return max(self._stops, key=lambda t: float(logits[t]) if t < len(logits) else 0.0)
        if redraw is not None:
            banned = torch.zeros_like(logits, dtype=torch.bool)
            banned[drawn] = True
            for _ in range(_FIRST_TRIES):
                token = redraw(banned)
                if token < 0:
                    break  # nothing left with probability above zero
                if self.fits(token):
                    return token
                banned[token] = True
        order = logits.argsort(descending=True).tolist()
        for token in order:
            if self.fits(token):
                return token
        return max(self._stops, key=lambda t: float(logits[t]) if t < len(logits) else 0.0,
                   default=drawn)  # fmt: skip


def token_table(tokenizer: Tokenizer, eos_ids: frozenset[int]) -> TokenTable:
    """The table of a tokenizer's vocabulary."""
    special = set(tokenizer.backend.get_added_tokens_decoder())
    size = tokenizer.vocab_size
    return TokenTable(
        [None if t in special else tokenizer.token_bytes(t) for t in range(size)], eos_ids
    )


def text_constraint(
    json_object: bool, json_schema: dict | None, choices: Sequence[str] | None
) -> JsonPrefix | SchemaPrefix | ChoicePrefix | None:
    """The automaton a generation's sampling settings ask for, or None."""
    if choices is not None:
        return ChoicePrefix(tuple(c.encode() for c in choices))
    if json_schema is not None:
        return SchemaPrefix(compile_schema(json_schema))
    return JsonPrefix() if json_object else None


def _final(text: JsonPrefix | SchemaPrefix | ChoicePrefix) -> bool:
    return text.final if isinstance(text, ChoicePrefix) else text.complete
