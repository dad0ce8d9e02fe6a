"""The engine's per-token log probabilities in OpenAI's two shapes: the completions API's
parallel lists and the chat API's list of token objects."""

from __future__ import annotations

from collections.abc import Sequence

from server.api.openai_models import (
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    PromptLogprob,
    TopLogprob,
)
from server.engine import TokenLogprob
from server.engine.tokenizer import Tokenizer


def completion_logprobs(
    tokenizer: Tokenizer,
    logprobs: Sequence[TokenLogprob | None],
    base: int = 0,
    first_token_id: int | None = None,
    starts: Sequence[int] | None = None,
    skip_special_tokens: bool = True,
    as_ids: bool = False,
) -> CompletionLogprobs:
    """`top_logprobs` maps each alternative's text to its logprob and always holds the
    chosen token (so up to N + 1 entries, as OpenAI's). `text_offset`: `base` plus where each
    token's text starts, from `starts` (a streamed choice's, see `HeldLogprobs`) or found by
    detokenizing these tokens as the engine does, not by the length of each token's own text (a
    token holding part of a character shows as escapes, `\\xe2`, but adds to the text only with
    the token that completes the character; a special token adds nothing). A None entry is an
    echoed prompt's first token (`first_token_id`), which has no probability.
    `skip_special_tokens` is the request's: whether special tokens add their text. `as_ids`
    (vLLM's `return_tokens_as_token_ids`) writes each token as `token_id:{id}` (`token_label`);
    the offsets stay those of the text."""
    ids = [first_token_id if entry is None else entry.token_id for entry in logprobs]
    if starts is None:
        starts = _text_starts(tokenizer, ids, skip_special_tokens)
    tokens, values, tops = [], [], []
    for entry, token_id in zip(logprobs, ids, strict=True):
        text = "" if token_id is None else token_label(tokenizer, token_id, as_ids)
        tokens.append(text)
        if entry is None:
            values.append(None)
            tops.append(None)
            continue
        values.append(entry.logprob)
        top = {token_label(tokenizer, t, as_ids): value for t, value in entry.top}
        top.setdefault(text, entry.logprob)
        tops.append(top)
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=values, top_logprobs=tops,
        text_offset=[base + start for start in starts],
    )  # fmt: skip


def joined(first: CompletionLogprobs, second: CompletionLogprobs) -> CompletionLogprobs:
    """One choice's logprobs in two parts (an echoed prompt's, then the generation's)."""
    return CompletionLogprobs(
        tokens=first.tokens + second.tokens,
        token_logprobs=first.token_logprobs + second.token_logprobs,
        top_logprobs=first.top_logprobs + second.top_logprobs,
        text_offset=first.text_offset + second.text_offset,
    )


def prompt_logprobs(
    tokenizer: Tokenizer, entries: Sequence[TokenLogprob | None], top: int
) -> list[dict[str, PromptLogprob] | None]:
    """vLLM's `prompt_logprobs`: per prompt token (the first has none: null) its token id
    (as text) -> logprob, rank and text, for the token itself and its `top` most likely
    alternatives."""
    out: list[dict[str, PromptLogprob] | None] = []
    for entry in entries:
        if entry is None:
            out.append(None)
            continue
        scores = {str(entry.token_id): PromptLogprob(
            logprob=entry.logprob, rank=entry.rank, decoded_token=token_text(tokenizer, entry.token_id)
        )}  # fmt: skip
        for rank, (token_id, logprob) in enumerate(entry.top[:top], start=1):
            scores.setdefault(str(token_id), PromptLogprob(
                logprob=logprob, rank=rank, decoded_token=token_text(tokenizer, token_id)
            ))  # fmt: skip
        out.append(scores)
    return out


def chat_logprobs(
    tokenizer: Tokenizer, logprobs: Sequence[TokenLogprob], as_ids: bool = False
) -> ChatLogprobs:
    """One object per token with its UTF-8 bytes (a token may hold part of a character) and
    its most likely alternatives, as many as asked for. `as_ids` (vLLM's
    `return_tokens_as_token_ids`) writes each `token` as `token_id:{id}`; `bytes` stay the
    token's own (vLLM gives an alternative the bytes of its `token_id:` text instead: the
    token's are what a client cannot get from the id without the tokenizer)."""
    content = [
        ChatTokenLogprob(
            **_top(tokenizer, entry.token_id, entry.logprob, as_ids).model_dump(),
            top_logprobs=[_top(tokenizer, t, value, as_ids) for t, value in entry.top],
        )
        for entry in logprobs
    ]
    return ChatLogprobs(content=content)


class HeldLogprobs:
    """One streamed choice's token logprobs, each sent with the chunk that carries its token's
    text: the engine holds text back (part of a character, what may start a stop string), so a
    token's logprob can arrive before its text. At the end, the rest go out (also the tokens of
    a stop string, whose text is never sent: the non-streamed response lists them too).

    Where a token's text ends is found by detokenizing the tokens as the engine does, not by
    counting token bytes: a special token adds no text, and bytes that never form a character
    decode to U+FFFD (3 bytes), so byte counts drift from the text. A token whose text is empty
    (a skipped special token) goes with the next chunk that has text."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._detokenizer = tokenizer.detokenizer(skip_special_tokens)
        # (entry, where its text starts, text length at its end)
        self._placed: list[tuple[TokenLogprob, int, int]] = []
        self._unplaced: list[tuple[TokenLogprob, int]] = []  # their text is not released yet
        self._sent_chars = 0  # of the choice's text

    def add(self, entries: Sequence[TokenLogprob]) -> None:
        for entry in entries:
            self._unplaced.append((entry, len(self._detokenizer.text)))
            if self._detokenizer.add(entry.token_id):
                end = len(self._detokenizer.text)
                self._placed.extend((waiting, start, end) for waiting, start in self._unplaced)
                self._unplaced = []

    def release(self, new_text: str, finished: bool) -> list[tuple[TokenLogprob, int]]:
        """The logprobs to send with `new_text`, the choice's next piece of text, each with
        where its token's text starts in the choice's text (`text_offset`, see
        `completion_logprobs`)."""
        self._sent_chars += len(new_text)
        if finished:
            out = [(entry, start) for entry, start, _ in self._placed] + self._unplaced
            self._placed, self._unplaced = [], []
            return out
        count = 0
        while count < len(self._placed) and self._placed[count][2] <= self._sent_chars:
            count += 1
        out = [(entry, start) for entry, start, _ in self._placed[:count]]
        del self._placed[:count]
        return out


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """A token's text; bytes that are part of a character show as escapes (`\\xe2`)."""
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="backslashreplace")


def token_label(tokenizer: Tokenizer, token_id: int, as_ids: bool) -> str:
    """How logprobs name a token: its text, or with `as_ids` vLLM's `token_id:{id}`."""
    return f"token_id:{token_id}" if as_ids else token_text(tokenizer, token_id)


def _text_starts(
    tokenizer: Tokenizer, token_ids: Sequence[int | None], skip_special_tokens: bool = True
) -> list[int]:
    """Where each token's text starts in the text of them all, as the engine detokenizes."""
    detokenizer, starts = tokenizer.detokenizer(skip_special_tokens), []
    for token_id in token_ids:
        starts.append(len(detokenizer.text))
        if token_id is not None:
            detokenizer.add(token_id)
    return starts


def _top(tokenizer: Tokenizer, token_id: int, logprob: float, as_ids: bool) -> TopLogprob:
    raw = tokenizer.token_bytes(token_id)
    return TopLogprob(
        token=token_label(tokenizer, token_id, as_ids), logprob=logprob, bytes=list(raw)
    )
