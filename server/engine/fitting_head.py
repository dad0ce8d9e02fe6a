"""Top-k, top-p and min-p over the tokens a constraint lets through, checking as few as it can."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

# unchecked probability below this fraction of the fitting tokens' moves top-p's cut by less
# than float32 sampling resolves: taken as none, it spares checking a long tail token by token
_NEGLIGIBLE = 1e-9


def fitting_head(
    ranked: Iterable[tuple[int, float]],
    fits: Callable[[int], bool],
    total: float,
    top_k: int,
    top_p: float,
    min_p: float,
    max_checks: int | None = None,
) -> list[tuple[int, float]] | None:
    """The tokens that fit which top-k, then top-p, then min-p keep, with their probabilities,
    where those filters see only the tokens that fit (as in vLLM and transformers, whose
    constraints mask the logits before them). `ranked`: (token, probability) of every token
    that may fit, likeliest first; `total`: the sum of those probabilities. Tokens are checked
    with `fits` in that order only until the kept set is certain; None past `max_checks` of
    them (a flat distribution over many tokens that fit, such as inside a JSON string)."""
    found: list[tuple[int, float]] = []
    befores: list[float] = []  # the mass of the fitting tokens before each found one
    mass, left = 0.0, total  # of the tokens found to fit; of those not checked yet
    for checks, (token, p) in enumerate(ranked):
        if _settled(found, befores, mass, left, p, top_k, top_p, min_p):
            break
        if max_checks is not None and checks >= max_checks:
            return None
        left -= p
        if fits(token):
            found.append((token, p))
            befores.append(mass)
            mass += p
    kept = found[:top_k] if top_k > 0 else found
    if top_p < 1.0:
        before, head = 0.0, []
        for token, p in kept:  # the smallest head whose mass reaches top_p (the first stays)
            if before >= top_p * mass:
                break
            head.append((token, p))
            before += p
        kept = head
    if min_p > 0.0 and kept:
        kept = [(token, p) for token, p in kept if p >= min_p * kept[0][1]]
    return kept


def _settled(
    found: list[tuple[int, float]], befores: list[float], mass: float, left: float,
    next_p: float, top_k: int, top_p: float, min_p: float,
) -> bool:  # fmt: skip
    """Whether the tokens not checked yet (the likeliest `next_p`, `left` in all) cannot change
    what is kept: top-p's cut depends on the whole fitting mass, between `mass` and
    `mass + left`."""
    if 0 < top_k <= len(found) or left <= 0.0:
        return True
    if top_p < 1.0:
        if left <= _NEGLIGIBLE * mass:
            return True
        if mass < top_p * (mass + left):
            return False  # a token further down may still be in the head
        # the cut falls in the same place whatever the rest weighs
        return bisect_left(befores, top_p * mass) == bisect_left(befores, top_p * (mass + left))
    return min_p > 0.0 and bool(found) and next_p < min_p * found[0][1]
