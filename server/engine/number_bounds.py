"""JSON Schema's `minimum`, `maximum`, `exclusiveMinimum` and `exclusiveMaximum` while a number
is written digit by digit: whether some number that starts with the text so far lies within the
bounds, so that a digit that leads only outside them is refused at once. Numbers are written
without an exponent here (it would let any prefix reach any size)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

_MAX_DIGITS = 400  # more integer digits than any bound here needs


@dataclass(frozen=True, slots=True)
class NumberBounds:
    """The allowed numbers: `low` and `high` (None: no bound), each exclusive or not;
    `integer` for JSON Schema's integer type."""

    low: Fraction | None = None
    low_open: bool = False
    high: Fraction | None = None
    high_open: bool = False
    integer: bool = False

    def __post_init__(self) -> None:
        if self.low is not None and self.high is not None and not self._meets(
            self.low, self.low_open, self.high, self.high_open
        ):
            kind = "integer" if self.integer else "number"
            raise ValueError(f"no {kind} lies within {self.describe()}")

    def describe(self) -> str:
        left = "-inf" if self.low is None else f"{'(' if self.low_open else '['}{_shown(self.low)}"
        right = (
            "inf" if self.high is None else f"{_shown(self.high)}{')' if self.high_open else ']'}"
        )
        return f"{left}, {right}"

    def allows(self, text: str) -> bool:
        """Whether the whole number `text` (JSON, no exponent) is within the bounds."""
        value = Fraction(text)
        if self.integer and value.denominator != 1:
            return False
        return self._meets(value, False, value, False)

    def may_become(self, text: str) -> bool:
        """Whether some number written `text` + more characters (or `text` itself) is allowed.
        `text` is a prefix of a JSON number: "-", "12", "0.", "-3.25", ..."""
        negative = text.startswith("-")
        whole, dot, fraction = text.lstrip("-").partition(".")
        if not whole:  # "" or "-": any magnitude
            spans = [(Fraction(0), False, None, False)]
        elif dot:
            start = Fraction(f"{whole}.{fraction or '0'}")
            spans = [(start, False, start + Fraction(1, 10 ** len(fraction)), True)]
        else:
            d = int(whole)
            spans = [(Fraction(d), False, Fraction(d), False)]
            if not self.integer:  # a fraction may follow
                spans.append((Fraction(d), False, Fraction(d + 1), True))
            if d != 0:  # more digits may follow
                spans += self._longer(d, negative)
        for a, a_open, b, b_open in spans:
            if negative:
                a, a_open, b, b_open = (None if b is None else -b), b_open, -a, a_open
            if self._meets(a, a_open, b, b_open):
                return True
        return False

    def _longer(self, d: int, negative: bool) -> list[tuple[Fraction, bool, Fraction | None, bool]]:
        """The magnitudes written with d's digits and k more: [d * 10^k, (d + 1) * 10^k)."""
        limit = self.low if negative else self.high
        if limit is None:  # unbounded on the side the number grows to
            return [(Fraction(d * 10), False, None, False)]
        spans = []
        k = 1
        while d * 10**k <= abs(limit) and k <= _MAX_DIGITS:
            spans.append((Fraction(d * 10**k), False, Fraction((d + 1) * 10**k), True))
            k += 1
        return spans

    def _meets(
        self, a: Fraction | None, a_open: bool, b: Fraction | None, b_open: bool
    ) -> bool:
        """Whether [a, b] (ends open as told; None: unbounded) holds an allowed number."""
        lo, lo_open = _tighter_low((a, a_open), (self.low, self.low_open))
        hi, hi_open = _tighter_high((b, b_open), (self.high, self.high_open))
        if self.integer:  # an integer between them
            first = None if lo is None else (
                int(lo) + 1 if lo_open and lo.denominator == 1 else math.ceil(lo))  # fmt: skip
            last = None if hi is None else (
                int(hi) - 1 if hi_open and hi.denominator == 1 else math.floor(hi))  # fmt: skip
            return first is None or last is None or first <= last
        if lo is None or hi is None:
            return True
        return lo < hi or (lo == hi and not lo_open and not hi_open)


def _tighter_low(
    x: tuple[Fraction | None, bool], y: tuple[Fraction | None, bool]
) -> tuple[Fraction | None, bool]:
    if x[0] is None:
        return y
    if y[0] is None or x[0] > y[0]:
        return x
    if y[0] > x[0]:
        return y
    return x[0], x[1] or y[1]


def _tighter_high(
    x: tuple[Fraction | None, bool], y: tuple[Fraction | None, bool]
) -> tuple[Fraction | None, bool]:
    if x[0] is None:
        return y
    if y[0] is None or x[0] < y[0]:
        return x
    if y[0] < x[0]:
        return y
    return x[0], x[1] or y[1]


def _shown(bound: Fraction) -> str:
    """A bound as the schema wrote it: 0.2, not the binary fraction the float holds."""
    if bound.denominator == 1:
        return str(bound.numerator)
    return repr(float(bound))
