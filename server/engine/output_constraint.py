"""Constrained generation: the text must be one JSON object (JSON mode), one a schema allows
(structured outputs), one of a few strings (vLLM's guided_choice), a match of a regular
expression (guided_regex) or a sentence of a grammar (guided_grammar). The sampler draws as usual and keeps the token if the text can
still become what is asked; otherwise that token is ruled out and it draws again from what is
left (exact rejection sampling; greedy takes the most likely token that fits). With top-k,
top-p or min-p the sampler instead finds which tokens those filters keep among the tokens that
fit (as if the rest were masked first, vLLM's and transformers' order) and draws among them.
End-of-sequence fits only once the text is complete, and once nothing else can follow (a JSON
object has closed) only it does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from server.engine.choice_prefix import ChoicePrefix
from server.engine.forced_text import forced_text
from server.engine.grammar import GrammarPrefix, compiled_grammar
from server.engine.json_prefix import JsonPrefix
from server.engine.json_schema import compile_schema
from server.engine.regex_prefix import RegexPrefix, compiled_regex
from server.engine.sampling_params import SamplingParams
from server.engine.schema_prefix import SchemaPrefix
from server.engine.tagged_json_prefix import TaggedJsonPrefix

# what the generated text must keep satisfying: each has feed/feed_all/copy/complete/final
TextAutomaton = (
    JsonPrefix | SchemaPrefix | ChoicePrefix | RegexPrefix | GrammarPrefix | TaggedJsonPrefix
)

if TYPE_CHECKING:
    from server.engine.tokenizer import Tokenizer

_FIRST_TRIES = 8  # draws before the search among the tokens that can fit
_BROAD = 4096  # more candidates than this: draw a few times before searching them all


class TokenTable:
    """Every token's bytes, and which ids end a generation; other special tokens (chat markers)
    never fit constrained text."""

    def __init__(self, token_bytes: Sequence[bytes | None], stop_ids: frozenset[int]) -> None:
        self.token_bytes = list(token_bytes)  # None: a special token
        self.stop_ids = stop_ids
        starting: dict[int, list[int]] = {}
        for token, data in enumerate(self.token_bytes):
            if data:
                starting.setdefault(data[0], []).append(token)
        # the tokens whose text starts with each byte: where to look when few tokens fit
        self.starting_with = {b: torch.tensor(ids) for b, ids in starting.items()}


class OutputConstraint:
    """The constraint of one generation, advanced by each token it samples."""

    def __init__(
        self, table: TokenTable, text: TextAutomaton, extra_stop_ids: Sequence[int] = (),
    ) -> None:  # fmt: skip
        """`text`: the automaton the generated text must keep satisfied."""
        self._table = table
        self._stops = table.stop_ids | frozenset(extra_stop_ids)
        self._text = text
        self._off = False  # a token that did not fit was taken (no stop id to end with)
        self._text_so_far = bytearray()  # its spacing is what forced_text follows

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

    def forced_text(self, limit: int) -> bytes:
        """The bytes every continuation of the text starts with (at most `limit`; see
        `forced_text.py`): what the engine drafts for this generation."""
        return b"" if self._off else forced_text(self._text, limit, bytes(self._text_so_far))

    def advance(self, token: int) -> None:
        """Take the sampled token. One that does not fit (`choose` found nothing that did and
        there is no stop id) turns the constraint off rather than failing the step."""
        if self._off or token in self._stops:
            return
        data = self._table.token_bytes[token] if token < len(self._table.token_bytes) else None
        if data is None or not self._text.feed_all(data):
            self._off = True
        else:
            self._text_so_far += data

    def choose(
        self, logits: torch.Tensor, drawn: int, redraw: Callable[[torch.Tensor], int] | None
    ) -> int:
        """`drawn` if it fits. Else greedy (`redraw` None) takes the likeliest token that fits;
        sampling draws again (`redraw(banned)`: the row's sampling distribution without the
        banned ids) among what can fit, which is exact rejection sampling. With nothing at all
        that fits (the automata never reach that, but the request's bans may rule out every
        token that continues the text), the likeliest stop id."""
        if self.fits(drawn):
            return drawn
        if self._text.final and self._stops:  # only a stop id fits now
            return self._likeliest(logits, self._stops, drawn)
        # Only tokens whose first byte continues the text can fit: often a few per cent of
        # the vocabulary (a choice, a JSON key), sometimes most of it (inside a string).
        candidates = self.candidates(logits.shape[0])
        # the request's bans (allowed_token_ids, bad words) hold over the constraint: where no
        # allowed token fits, the generation ends (the likeliest stop id, below)
        candidates = candidates[logits[candidates] > float("-inf")]
        if redraw is not None and len(candidates) > _BROAD:
            # many may fit: a few draws usually find one before a search through them all
            banned = torch.zeros_like(logits, dtype=torch.bool)
            banned[drawn] = True
            for _ in range(_FIRST_TRIES):
                token = redraw(banned)
                if token < 0:
                    break  # nothing left with probability above zero
                if self.fits(token):
                    return token
                banned[token] = True
        order = candidates[logits[candidates].argsort(descending=True)].tolist()
        if redraw is None:
            best = next((t for t in order if self.fits(t)), None)
            return self._likeliest(logits, self._stops, drawn) if best is None else best
        fitting = [t for t in order if self.fits(t)]
        if not fitting:
            return self._likeliest(logits, self._stops, drawn)
        banned = torch.ones_like(logits, dtype=torch.bool)
        banned[torch.tensor(fitting)] = False
        token = redraw(banned)  # the distribution over what fits
        return token if token >= 0 else fitting[0]  # top-k/top-p left none: the likeliest

    def candidates(self, vocab: int) -> torch.Tensor:
        """The ids that may fit: tokens starting with a byte that continues the text, and the
        stop ids once it is complete (all ids once the constraint is off)."""
        if self._off:
            return torch.arange(vocab)
        firsts = [b for b in range(256) if self._text.copy().feed(b)]
        groups = [self._table.starting_with[b] for b in firsts if b in self._table.starting_with]
        if self._text.complete:
            groups.append(torch.tensor(sorted(self._stops), dtype=torch.long))
        candidates = torch.cat(groups) if groups else torch.zeros(0, dtype=torch.long)
        return candidates[candidates < vocab]

    @staticmethod
    def _likeliest(logits: torch.Tensor, tokens: Sequence[int] | frozenset[int], default: int) -> int:
        inside = [t for t in tokens if t < logits.shape[0]]
        return max(inside, key=lambda t: float(logits[t]), default=default)


def token_table(tokenizer: Tokenizer, eos_ids: frozenset[int]) -> TokenTable:
    """The table of a tokenizer's vocabulary."""
    special = set(tokenizer.backend.get_added_tokens_decoder())
    size = tokenizer.vocab_size
    return TokenTable(
        [None if t in special else tokenizer.token_bytes(t) for t in range(size)], eos_ids
    )


def text_constraint(sampling: SamplingParams) -> TextAutomaton | None:
    """The automaton a generation's sampling settings ask for, or None."""
    if sampling.regex is not None:
        return compiled_regex(sampling.regex).start()
    if sampling.grammar is not None:
        return compiled_grammar(sampling.grammar).start()
    choices, json_schema = sampling.choices, sampling.json_schema
    if choices is not None:
        return ChoicePrefix(tuple(c.encode() for c in choices))
    if sampling.tagged_json is not None:
        return TaggedJsonPrefix(sampling.tagged_json)
    if json_schema is not None:
        return SchemaPrefix(compile_schema(json_schema))
    return JsonPrefix() if sampling.json_object else None

