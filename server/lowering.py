"""Lowering a call to generation steps: what text to append before each output, where it stops.

Inputs are filled with their values through the marker's transform (`{{input:x|strip}}`).
Pure: the executor turns each step into context primitives (re-tokenize the rendered text so far,
fill the new tokens, generate).
"""

from __future__ import annotations

from dataclasses import dataclass

from parrot_bridge.template import Input, Output, Text
from server.engine.sampling_params import MAX_STOP_CHARS
from server.graph.call import Call


@dataclass(frozen=True, slots=True)
class GenerateStep:
    """Append `text_before` to the rendered prompt, then generate output `output`."""

    output: str
    text_before: str
    stop: tuple[str, ...]


def lower_call(call: Call, values: dict[str, str]) -> list[GenerateStep]:
    """One step per output, in template order.

    Each output stops at the call's stop strings and at the constant text that follows it in the
    template (that text is what the model would write next). Text after the last output only
    serves as its stop, unless it is all whitespace.
    """
    steps: list[GenerateStep] = []
    pending: list[str] = []
    segments = call.segments
    for i, seg in enumerate(segments):
        if isinstance(seg, Text):
            pending.append(seg.text)
        elif isinstance(seg, Input):
            pending.append(seg.render(values[seg.name]))  # through its transform, if any
        elif isinstance(seg, Output):
            stop = list(call.sampling.stop)
            follow = _following_text(segments, i)
            # a constrained output ends when it is complete, and may hold the text that follows
            if follow and follow not in stop and not call.sampling.constrained:
                # its start is stop enough, and a stop string is at most MAX_STOP_CHARS long
                stop.append(follow[:MAX_STOP_CHARS])
            steps.append(GenerateStep(seg.name, "".join(pending), tuple(stop)))
            pending = []
    return steps


def _following_text(segments: tuple, i: int) -> str | None:
    if i + 1 >= len(segments) or not isinstance(segments[i + 1], Text):
        return None
    text = segments[i + 1].text
    is_last = not any(isinstance(s, Output) for s in segments[i + 1 :])
    if not text.strip():
        # whitespace between two outputs separates them; trailing whitespace means nothing
        return None if is_last else text
    # trailing spaces would rarely be generated verbatim before the next word
    return text.rstrip(" \t")
