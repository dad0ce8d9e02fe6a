"""Whether text (UTF-8 bytes, one at a time) is still the start of one of a few fixed strings
(vLLM's `guided_choice`): the same interface as `JsonPrefix`."""

from __future__ import annotations


class ChoicePrefix:
    """`complete` once the text is one of the choices; `final` once nothing can follow."""

    __slots__ = ("_choices", "_read")

    def __init__(self, choices: tuple[bytes, ...]) -> None:
        self._choices = choices
        self._read = b""

    @property
    def text(self) -> bytes:
        """What has been read."""
        return self._read

    @property
    def complete(self) -> bool:
        return self._read in self._choices

    @property
    def final(self) -> bool:
        return self.complete and not any(
            len(c) > len(self._read) and c.startswith(self._read) for c in self._choices
        )

    def copy(self) -> ChoicePrefix:
        twin = ChoicePrefix.__new__(ChoicePrefix)
        twin._choices, twin._read = self._choices, self._read
        return twin

    def feed_all(self, data: bytes) -> bool:
        longer = self._read + data
        if not any(c.startswith(longer) for c in self._choices):
            return False
        self._read = longer
        return True

    def feed(self, b: int) -> bool:
        return self.feed_all(bytes([b]))
