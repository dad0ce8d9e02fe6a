"""Prompt templates with Semantic Variable markers: `{{input:name}}` and `{{output:name}}`.

This module is the one parser of the template syntax: the SDK checks templates at decoration
time and the server checks them again when a graph arrives. It has no dependencies.

A marker is `{{kind:name}}` (spaces allowed inside the braces); `kind` is `input` or `output` and
`name` an ASCII identifier (letters, digits and `_`, not starting with a digit). Any other
`{{word:...}}` is an error, while braces that do not look like a marker (JSON, `{{ jinja }}`
text) are kept as constant text. Four opening braces `{{{{` stand for a literal `{{`, so any text
can be made constant with `escape_text` (e.g. user content that itself contains `{{input:x}}`).

An input marker may name one transform of the value it inserts: `{{input:name|strip}}` inserts
the value without leading and trailing whitespace. The server applies it when it fills the slot,
so a call can read another call's output cleaned up without a round trip to the client; the
variable's own value is unchanged. `TRANSFORMS` lists the known transforms (only `strip` now).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "Input",
    "Output",
    "Segment",
    "Template",
    "TRANSFORMS",
    "TemplateError",
    "Text",
    "escape_text",
    "parse_template",
]

MARKER_KINDS = ("input", "output")
_MARKER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*:([^{}]*)\}\}")
_ESCAPE = "{{{{"  # a literal "{{"
# A marker or an escape, whichever starts first.
_TOKEN = re.compile(re.escape(_ESCAPE) + "|" + _MARKER.pattern)
# An opening that names a marker kind but never closes properly, e.g. "{{input:x}" or "{{output:".
_BROKEN_MARKER = re.compile(r"\{\{\s*(?:input|output)\s*:")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRANSFORM_SEP = "|"

# Transforms an input marker may apply to its value, by name. `str.strip` strips exactly what
# LlamaIndex's `PromptHelper.repack` strips from the texts it joins.
TRANSFORMS: dict[str, Callable[[str], str]] = {"strip": str.strip}


class TemplateError(ValueError):
    """A template that cannot be parsed; `offset`, `line` and `column` (1-based) say where."""

    def __init__(self, message: str, source: str, offset: int) -> None:
        self.reason = message
        self.offset = offset
        self.line = source.count("\n", 0, offset) + 1
        self.column = offset - (source.rfind("\n", 0, offset) + 1) + 1
        super().__init__(f"line {self.line}, column {self.column}: {message}")


@dataclass(frozen=True, slots=True)
class Text:
    """Constant text of the template."""

    text: str
    offset: int


@dataclass(frozen=True, slots=True)
class Input:
    """An input variable's slot: its value, through `transform` if any, is inserted here."""

    name: str
    offset: int
    transform: str | None = None  # a key of TRANSFORMS

    def render(self, value: str) -> str:
        """The text this slot inserts for the variable's `value`."""
        return value if self.transform is None else TRANSFORMS[self.transform](value)


@dataclass(frozen=True, slots=True)
class Output:
    """An output variable's slot: the model generates its value here."""

    name: str
    offset: int


Segment = Text | Input | Output


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: the source and its segments in order."""

    source: str
    segments: tuple[Segment, ...]

    @property
    def inputs(self) -> list[str]:
        """Input names in order of first appearance (an input may appear more than once)."""
        return list(dict.fromkeys(s.name for s in self.segments if isinstance(s, Input)))

    @property
    def outputs(self) -> list[str]:
        """Output names in template order."""
        return [s.name for s in self.segments if isinstance(s, Output)]


def parse_template(source: str) -> Template:
    """Parse `source` into segments; raise `TemplateError` (with its position) when invalid.

    Rules: at least one output; each output name once; a name is not both input and output;
    two outputs need constant text between them (it tells where the first one stops).
    """
    if not isinstance(source, str):
        raise TypeError(f"a template must be a str, got {type(source).__name__}")
    segments: list[Segment] = []
    text: list[str] = []  # constant text since the last marker, escapes resolved
    text_start = pos = 0
    for match in _TOKEN.finditer(source):
        _check_no_broken_marker(source, pos, match.start())
        text.append(source[pos : match.start()])
        pos = match.end()
        if match.group(0) == _ESCAPE:
            text.append("{{")
            continue
        if "".join(text):
            segments.append(Text("".join(text), text_start))
        segments.append(_marker_segment(source, match))
        text, text_start = [], pos
    _check_no_broken_marker(source, pos, len(source))
    text.append(source[pos:])
    if "".join(text):
        segments.append(Text("".join(text), text_start))
    _check_rules(source, segments)
    return Template(source, tuple(segments))


def escape_text(text: str) -> str:
    """`text` written so that `parse_template` reads it back as constant text, unchanged."""
    return text.replace("{{", _ESCAPE)


def _marker_segment(source: str, match: re.Match[str]) -> Segment:
    kind, body = match.group(1), match.group(2)
    name, sep, transform = (part.strip() for part in body.partition(_TRANSFORM_SEP))
    if kind not in MARKER_KINDS:
        raise TemplateError(
            f"unknown marker kind {kind!r} in {match.group(0)!r} (expected input or output)",
            source,
            match.start(),
        )
    if not _NAME.fullmatch(name):
        raise TemplateError(
            f"invalid variable name {name!r} in {match.group(0)!r} (must be an ASCII "
            "identifier: letters, digits and '_', not starting with a digit)",
            source,
            match.start(),
        )
    if not sep:
        return Input(name, match.start()) if kind == "input" else Output(name, match.start())
    if kind != "input":
        raise TemplateError(
            f"transform {transform!r} in {match.group(0)!r}: only input markers take a transform",
            source,
            match.start(),
        )
    if transform not in TRANSFORMS:
        raise TemplateError(
            f"unknown transform {transform!r} in {match.group(0)!r} "
            f"(known: {', '.join(sorted(TRANSFORMS))})",
            source,
            match.start(),
        )
    return Input(name, match.start(), transform)


def _check_no_broken_marker(source: str, start: int, end: int) -> None:
    broken = _BROKEN_MARKER.search(source, start, end)
    if broken is not None:
        snippet = source[broken.start() : broken.start() + 30]
        raise TemplateError(
            f"unclosed marker {snippet!r} (expected '}}}}')", source, broken.start()
        )


def _check_rules(source: str, segments: list[Segment]) -> None:
    outputs = [s for s in segments if isinstance(s, Output)]
    if not outputs:
        raise TemplateError("the template has no {{output:name}} marker", source, len(source))
    input_names = {s.name for s in segments if isinstance(s, Input)}
    seen: set[str] = set()
    for seg in outputs:
        if seg.name in seen:
            raise TemplateError(f"output {seg.name!r} appears twice", source, seg.offset)
        if seg.name in input_names:
            raise TemplateError(
                f"{seg.name!r} is used both as an input and an output", source, seg.offset
            )
        seen.add(seg.name)
    for prev, seg in zip(segments, segments[1:], strict=False):
        if isinstance(prev, Output) and isinstance(seg, Output):
            raise TemplateError(
                f"outputs {prev.name!r} and {seg.name!r} are adjacent: put constant text between "
                "them so the first one knows where to stop",
                source,
                seg.offset,
            )
        if isinstance(prev, Output) and isinstance(seg, Input):
            # the input's value would be glued to generated text with nothing to stop at
            raise TemplateError(
                f"input {seg.name!r} directly follows output {prev.name!r}: put constant text "
                "between them so the output knows where to stop",
                source,
                seg.offset,
            )
