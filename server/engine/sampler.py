"""Turns the logits of a step into one token per generating context."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from server.engine.fitting_head import fitting_head
from server.engine.output_constraint import OutputConstraint
from server.engine.outputs import TokenLogprob
from server.engine.sampling_params import SamplingParams

_RANKED_HEAD = 256  # tokens ranked before a whole sort (see _ranked)
# tokens checked against a constraint before top-p's cut over those that fit is given up for
# the cut over all (~15 ms of checks; a flat distribution inside a JSON string needs 10,000s)
_MAX_FIT_CHECKS = 2048


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    outputs: Sequence[Sequence[int]],
    constraints: Sequence[OutputConstraint | None] = (),
    contexts: Sequence[Sequence[int]] = (),
    eos_ids: frozenset[int] = frozenset(),
) -> tuple[list[int], list[TokenLogprob | None]]:
    """One token per row of `logits` ([N, vocab], float32), following each row's settings;
    `outputs[i]` are row i's tokens generated so far (for the penalties); `constraints[i]`, if
    given and not None, restricts row i to tokens its constraint allows (JSON, choices, regex);
    `contexts[i]` is row i's whole sequence, prompt included (for `repetition_penalty`), and
    `eos_ids` the tokens `min_tokens` holds off. Returns the tokens and, for rows whose
    settings ask for them, their log probabilities (else None)."""
    raw = logits
    ended: list[int] = []
    if any(p.adjusts_logits for p in params):
        logits = _adjusted(logits, params, outputs, contexts, eos_ids)
        # The bans may leave a row nothing (allowed_token_ids that min_tokens or bad words all
        # rule out): it takes its likeliest stop id, as a constrained row with nothing allowed
        # does, not the id an argmax or a draw over no finite logit lands on (the vocabulary's
        # first or last, outside allowed_token_ids). Only an allowed list bans the whole
        # vocabulary, so only such rows are looked at (penalties alone skip the scan).
        ended = [
            i for i, p in enumerate(params)
            if p.allowed_token_ids is not None and bool((logits[i] == float("-inf")).all())
        ]  # fmt: skip
    # constrained rows that top-k, top-p or min-p truncate draw once their constraint's mask
    # is known (below): those filters count only the tokens that fit
    masked = {
        i for i, c in enumerate(constraints)
        if c is not None and i not in ended and not params[i].greedy and _truncates(params[i])
    }  # fmt: skip
    if all(p.greedy for p in params):
        tokens = logits.argmax(dim=-1).tolist()
    else:
        tokens = [
            int(row.argmax()) if p.greedy or i in ended or i in masked else _sample_row(row, p, gen)
            for i, (row, p, gen) in enumerate(zip(logits, params, generators, strict=True))
        ]
    for i in ended:
        stops = [t for t in eos_ids | set(params[i].stop_token_ids) if t < raw.shape[1]]
        tokens[i] = max(stops, key=lambda t: float(raw[i, t]), default=tokens[i])
    for i, constraint in enumerate(constraints):
        if constraint is not None and i not in ended:
            p, gen = params[i], generators[i]
            if i in masked:
                tokens[i] = _draw_fitting(logits[i], p, gen, constraint)
                continue
            # with temperature alone, drawing again after a miss is exact rejection sampling
            redraw = None if p.greedy else _redraw(logits[i], p, gen)
            tokens[i] = constraint.choose(logits[i], tokens[i], redraw)
    logprobs = [
        None if p.logprobs is None else _logprob(raw[i], tokens[i], p.logprobs)
        for i, p in enumerate(params)
    ]
    return tokens, logprobs


def _adjusted(
    logits: torch.Tensor,
    params: list[SamplingParams],
    outputs: Sequence[Sequence[int]],
    contexts: Sequence[Sequence[int]],
    eos_ids: frozenset[int],
) -> torch.Tensor:
    """The logit bias, the repetition penalty (over the whole context), OpenAI's penalties
    (minus frequency x count, minus presence once a token appeared in the output), then the
    bans: min_tokens' on ending, tokens outside allowed_token_ids, a bad word's completion.
    The bias comes first, as in vLLM and transformers: the repetition penalty divides (or
    multiplies) a biased logit."""
    logits = logits.clone()
    for i, (p, generated) in enumerate(zip(params, outputs, strict=True)):
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), device=logits.device)
            bias = torch.tensor(list(p.logit_bias.values()), dtype=logits.dtype)
            logits[i, ids] += bias.to(logits.device)
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(contexts[i])), device=logits.device, dtype=torch.long)
            values = logits[i, seen]
            logits[i, seen] = torch.where(
                values > 0, values / p.repetition_penalty, values * p.repetition_penalty
            )
        if p.penalized and generated:
            ids, counts = torch.tensor(generated, device=logits.device).unique(return_counts=True)
            logits[i, ids] -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty
        if len(generated) < p.min_tokens:
            ends = [t for t in eos_ids | set(p.stop_token_ids) if t < logits.shape[1]]
            logits[i, ends] = float("-inf")
        if p.allowed_token_ids is not None:
            allowed = torch.tensor(p.allowed_token_ids, device=logits.device, dtype=torch.long)
            keep = logits[i, allowed]
            logits[i] = float("-inf")
            logits[i, allowed] = keep
        banned = _bad_word_ends(p.bad_words_token_ids, generated, logits.shape[1])
        if banned:
            logits[i, banned] = float("-inf")
    return logits


def _bad_word_ends(words: list[list[int]], generated: Sequence[int], vocab: int) -> list[int]:
    """The tokens that would complete one of `words` right after `generated`."""
    ends = []
    for word in words:
        head = len(word) - 1
        if word[-1] < vocab and (
            head == 0 or (len(generated) >= head and list(generated[-head:]) == word[:-1])
        ):
            ends.append(word[-1])
    return ends


def _logprob(row: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The token's log probability under the model's own distribution (the raw logits)."""
    logprobs = row.float().log_softmax(-1)
    best: list[tuple[int, float]] = []
    if top > 0:
        values, ids = logprobs.topk(min(top, logprobs.numel()))
        best = list(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, float(logprobs[token]), best)


def _sample_row(row: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
    return _draw(_distribution(row, p), gen)


def _draw(probs: torch.Tensor, gen: torch.Generator | None) -> int:
    """One index drawn with weights `probs` (not necessarily normalized, some > 0): by the
    inverse of their running sum, in float64. `torch.multinomial` does the same draw 12x
    slower over a 49k vocabulary on this CPU (1.0 against 0.08 ms), once per sampled row per
    step."""
    cdf = probs.to(torch.float64).cumsum(0)
    u = torch.rand((1,), generator=gen, dtype=torch.float64, device=probs.device) * cdf[-1]
    return min(int(torch.searchsorted(cdf, u, right=True)), probs.numel() - 1)


def _truncates(p: SamplingParams) -> bool:
    return p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0


def _draw_fitting(
    row: torch.Tensor, p: SamplingParams, gen: torch.Generator | None, constraint: OutputConstraint
) -> int:
    """A draw from the row's tempered distribution over the tokens that fit, truncated by
    top-k, top-p and min-p as if those that do not fit were masked first (vLLM's and
    transformers' order); where nothing fits, what the constraint then ends with. Where the
    cut needs more than _MAX_FIT_CHECKS tokens checked, the filters run over the whole
    vocabulary and the draw is redone among what fits (as with no filter)."""
    probs = (row.double() / p.temperature).softmax(-1)
    candidates = constraint.candidates(row.numel()).to(row.device)
    values = probs[candidates]
    candidates, values = candidates[values > 0], values[values > 0]
    kept = fitting_head(_ranked(candidates, values), constraint.fits, float(values.sum()),
                        p.top_k, p.top_p, p.min_p, _MAX_FIT_CHECKS)  # fmt: skip
    if kept is None:  # most of the mass fits, spread thin: the filters over all come close
        return constraint.choose(row, _sample_row(row, p, gen), _redraw(row, p, gen))
    if not kept:
        return constraint.choose(row, int(row.argmax()), None)
    weights = torch.tensor([m for _, m in kept], dtype=torch.float64, device=row.device)
    return kept[_draw(weights, gen)][0]


def _ranked(ids: torch.Tensor, values: torch.Tensor) -> Iterator[tuple[int, float]]:
    """(id, value) likeliest first, lazily: the walk over them mostly stops within the first
    few, and sorting a whole vocabulary into Python lists costs more than the walk."""
    head = min(_RANKED_HEAD, values.numel())
    top = values.topk(head)
    first = ids[top.indices].tolist()
    yield from zip(first, top.values.tolist(), strict=True)
    if head < values.numel():
        seen = set(first)  # ties may order the two differently: each id comes once
        ordered, order = values.sort(descending=True)
        rest = zip(ids[order].tolist(), ordered.tolist(), strict=True)
        yield from ((t, v) for t, v in rest if t not in seen)


def _redraw(
    row: torch.Tensor, p: SamplingParams, gen: torch.Generator | None
) -> Callable[[torch.Tensor], int]:
    """Draws from the row's distribution with the banned ids left out (-1 when nothing is
    left); the distribution is computed on the first call (most drawn tokens fit)."""
    probs: list[torch.Tensor] = []

    def draw(banned: torch.Tensor) -> int:
        if not probs:
            probs.append(_distribution(row, p))
        left = probs[0].masked_fill(banned, 0.0)
        if not float(left.sum()) > 0:
            return -1
        return _draw(left, gen)

    return draw


def _distribution(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The row's sampling distribution: temperature, then top-k, top-p and min-p."""
    scaled = row.float() / p.temperature
    if 0 < p.top_k < scaled.numel():
        kth = torch.topk(scaled, p.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = scaled.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        # keep the smallest head whose mass reaches top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs >= p.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(0, order, sorted_logits)
    probs = scaled.softmax(-1)
    if p.min_p > 0:
        probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        probs = probs / probs.sum()
    return probs
