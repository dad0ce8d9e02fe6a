"""Whether text (UTF-8 bytes, one at a time) is still the start of one of some fixed strings
(vLLM's `guided_choice`): the same interface as `JsonPrefix`."""

from __future__ import annotations

import bisect


class ChoicePrefix:
    """`complete` once the text is one of the choices; `final` once nothing can follow.

    The choices are kept sorted, so the ones that start with what has been read sit together
    and each question is a binary search: the sampler asks once per candidate token, and a
    scan of 20,000 choices per question had one request stall the engine for seconds a step."""

    __slots__ = ("_choices", "_read")

    def __init__(self, choices: tuple[bytes, ...]) -> None:
        self._choices = tuple(sorted(set(choices)))
        self._read = b""

    @property
    def text(self) -> bytes:
        """What has been read."""
        return self._read

    @property
    def complete(self) -> bool:
        at = bisect.bisect_left(self._choices, self._read)
        return at < len(self._choices) and self._choices[at] == self._read

    @property
    def final(self) -> bool:
        return self.complete and not self._extends(self._read, longer=True)

    def copy(self) -> ChoicePrefix:
        twin = ChoicePrefix.__new__(ChoicePrefix)
        twin._choices, twin._read = self._choices, self._read
        return twin

    def feed_all(self, data: bytes) -> bool:
        longer = self._read + data
        if not self._extends(longer, longer=False):
            return False
        self._read = longer
        return True

    def feed(self, b: int) -> bool:
        return self.feed_all(bytes([b]))

    def _extends(self, text: bytes, longer: bool) -> bool:
        """Whether some choice starts with `text` (and is longer than it, if `longer`): the
        first choice sorted at or after `text` (after, if `longer`) does if any does."""
        at = (bisect.bisect_right if longer else bisect.bisect_left)(self._choices, text)
        return at < len(self._choices) and self._choices[at].startswith(text)
