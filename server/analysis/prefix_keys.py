"""Prefix keys: a hash for each leading run of a call's prompt segments.

Pure. A boundary sits before each input slot of the text before the first output: everything up
to there is constant text and input values; one also sits right after each input followed by
constant text (calls that read the same values share that far, and on into the text as long as
their tokens agree). Keys chain the segments' hashes, so two calls share a key exactly when
their leading segments are equal. Constant text is keyed by content, so equal system prompts
share a key across sessions and tenants; an input is keyed by the content its slot
inserts (two sessions sending the same document share it too), i.e. after the marker's transform
(`{{input:x|strip}}`), so the key names the text that is filled. A boundary after an input without
a value does not exist yet; the deepest existing one is what a pipelined fill can compute early.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from parrot_bridge.template import Input, Output, Text
from server.graph.call import Call


@dataclass(frozen=True, slots=True)
class Boundary:
    """The prompt's first `num_segments` segments, rendered as `text`, keyed by `key`."""

    key: str
    num_segments: int
    # Right after an input's value (and before more constant text): siblings that read the same
    # value, e.g. four programmers reading one design, share the prefix through it. Only batch
    # sharing uses these; a lone call stores its leading text up to its first input.
    after_input: bool = False
    # the rendered segments of the call, shared by all its boundaries (this one's are the first
    # `num_segments`): a call with K inputs has up to 2K boundaries, and rendering each one's
    # text up front cost O(K^2) per call (a reduce over hundreds of outputs), though at most
    # one of them is ever read
    pieces: Sequence[str] = field(default=(), compare=False, repr=False)

    @property
    def text(self) -> str:
        return "".join(self.pieces[: self.num_segments])


def boundaries(call: Call, values: Mapping[str, str | None]) -> list[Boundary]:
    """Boundaries of `call`'s prompt before its first output, shallowest first.

    `values` maps the call's input names to their values (None: not set yet); the list stops at
    the first input without a value. Empty leading text makes no boundary.
    """
    found: list[Boundary] = []
    digest = hashlib.blake2b(digest_size=16)
    if not call.add_special_tokens:  # the same text without a BOS is other tokens
        digest.update(b"\0no special tokens\0")
    text: list[str] = []
    for i, seg in enumerate(call.segments):
        if isinstance(seg, Output):
            break
        if isinstance(seg, Input):
            if text:
                found.append(Boundary(digest.hexdigest(), i, pieces=text))
            value = values.get(seg.name)
            if value is None:
                break
            piece = seg.render(value)
        elif isinstance(seg, Text):
            piece = seg.text
        else:  # pragma: no cover - the template parser makes only these three
            raise TypeError(f"unknown segment {seg!r}")
        # length-prefixed, so segment edges cannot shift without changing the key
        digest.update(f"{len(piece)}:".encode())
        digest.update(piece.encode())
        text.append(piece)
        if isinstance(seg, Input) and _text_follows(call, i):
            found.append(Boundary(digest.hexdigest(), i + 1, after_input=True, pieces=text))
    return found


def _text_follows(call: Call, i: int) -> bool:
    """Whether constant text follows segment i (else a boundary after it would be the next
    input's own boundary, or the whole prompt)."""
    return i + 1 < len(call.segments) and isinstance(call.segments[i + 1], Text)
