"""Numeric bounds of JSON Schema while a number is written digit by digit: no number that the
bounds allow is ever cut off, and a prefix that is kept can always be finished inside them."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from server.engine.number_bounds import NumberBounds

_NEXT = "0123456789."


def _grid(integer: bool) -> set[str]:
    texts = {"-0"}
    for i in range(-300, 301):
        texts.add(str(i))
        if not integer:
            texts.update(f"{i}.{f}" for f in ("5", "25", "125", "0625"))
    return texts


def _random_bounds(rng: random.Random) -> NumberBounds | None:
    def one() -> Fraction | None:
        value = Fraction(rng.randint(-250, 250), rng.choice([1, 2, 8]))
        return None if rng.random() < 0.2 else value

    try:
        return NumberBounds(one(), rng.random() < 0.5, one(), rng.random() < 0.5,
                            rng.random() < 0.5)  # fmt: skip
    except ValueError:
        return None


@pytest.mark.parametrize("seed", range(4))
def test_no_allowed_number_is_cut_off_and_kept_prefixes_can_finish(seed: int):
    rng = random.Random(seed)
    for _ in range(25):
        bounds = _random_bounds(rng)
        if bounds is None:
            continue
        allowed = {t for t in _grid(bounds.integer) if bounds.allows(t)}
        for text in allowed:
            assert all(bounds.may_become(text[:k]) for k in range(1, len(text) + 1)), text
        # a kept prefix always has a way on: it is allowed as it is or some character follows
        for text in {t[:k] for t in _grid(bounds.integer) for k in range(1, len(t) + 1)}:
            if bounds.may_become(text) and text not in ("-",) and not text.endswith("."):
                nexts = _NEXT if not bounds.integer else _NEXT[:-1]
                if text.lstrip("-") == "0":
                    nexts = "." if not bounds.integer else ""
                assert bounds.allows(text) or any(
                    bounds.may_become(text + c) for c in nexts
                ), (text, bounds.describe())


def test_the_examples_people_write():
    age = NumberBounds(Fraction(0), False, Fraction(120), False, integer=True)
    assert age.may_become("1") and age.may_become("12") and age.may_become("120")
    assert not age.may_become("121") and not age.may_become("-1") and not age.may_become("1200")
    assert age.allows("0") and not age.allows("7.5")
    share = NumberBounds(Fraction(0), True, Fraction(1), True)  # (0, 1)
    assert share.may_become("0") and share.may_become("0.") and not share.allows("0")
    assert share.allows("0.5") and not share.may_become("1") and not share.may_become("-")
    with pytest.raises(ValueError, match=r"no integer lies within \(3, 4\)"):
        NumberBounds(Fraction(3), True, Fraction(4), True, integer=True)
    with pytest.raises(ValueError, match=r"no integer lies within \[0.2, 0.8\]"):
        NumberBounds(Fraction(0.2), False, Fraction(0.8), False, integer=True)
    with pytest.raises(ValueError, match=r"no number lies within \(1, 1\]"):
        NumberBounds(Fraction(1), True, Fraction(1), False)
