"""Tool calls read out of generated text, as it streams: `<tool_call>{json}</tool_call>` blocks
(see `tool_request.py`) become calls, everything else stays the message's content."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from server.api.tool_request import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

_NAME_FIELD = re.compile(r'"name"\s*:\s*"([^"]*)"')
_ARGUMENTS_FIELD = re.compile(r'"(?:arguments|parameters)"\s*:\s*')


@dataclass(frozen=True, slots=True)
class ParsedToolCall:
    id: str
    name: str
    arguments: str  # JSON text (what the model wrote, if it is not JSON: OpenAI's caveat too)


@dataclass
class ToolCallParser:
    """Feed it the generated text piece by piece; each call returns the content that can go
    out now and the calls completed so far. Text that might open a block is held back until
    it is clear. A block that is not a call of one of `names` goes back into the content as
    written; an unclosed block at the end (EOS or a stop at its closing tag) is read as if
    closed. `forced` is the function that the first block calls (the request primed the
    block with its name). `primer` is the text the server wrote to open the first block (a
    forced or required call's): fed here, never part of the content, so a primed block that is
    no call (cut inside the name) gives back only what the model wrote.

    With calls, white space at the ends of the content is not content: before the first text
    when a call comes first, and at the end of an answer with calls (the white space between
    text and calls stays). Content's trailing white space waits for what follows, so a stream
    and the whole answer read the same."""

    names: frozenset[str]
    forced: str | None = None
    primer: str = ""
    calls: list[ParsedToolCall] = field(default_factory=list)
    _pending: str = ""
    _inside: bool = False
    _blocks: int = 0
    # where in `_pending` the closing tag may start: a block's text is not searched again at
    # each piece (a long call streamed token by token took quadratic time)
    _unsearched: int = 0
    _space: str = ""  # content's trailing white space, held until text follows
    _texted: bool = False  # some content is out
    _called: bool = False  # a call is out

    def __post_init__(self) -> None:
        if self.primer:
            opened = self.read(self.primer)
            if opened or not self._inside:
                raise ValueError(f"a primer opens a block and writes no content: {self.primer!r}")

    def feed(self, text: str) -> tuple[str, list[ParsedToolCall]]:
        return _split(self.read(text))

    def finish(self) -> tuple[str, list[ParsedToolCall]]:
        """What is left once the text has ended."""
        return _split(self.read_rest())

    def read(self, text: str) -> list[str | ParsedToolCall]:
        """`feed`'s content and calls in the order the model wrote them (a Responses answer's
        items keep it: text after a call is a message after it)."""
        self._pending += text
        pieces: list[str | ParsedToolCall] = []
        while True:
            if self._inside:
                end = self._pending.find(TOOL_CALL_CLOSE, self._unsearched)
                if end < 0:
                    self._unsearched = max(0, len(self._pending) - len(TOOL_CALL_CLOSE) + 1)
                    break
                block = self._pending[:end]
                self._pending = self._pending[end + len(TOOL_CALL_CLOSE) :]
                self._inside, self._unsearched = False, 0
                pieces.append(self._close(block, closed=True))
                continue
            start = self._pending.find(TOOL_CALL_OPEN)
            if start >= 0:
                pieces.append(self._pending[:start])
                self._pending = self._pending[start + len(TOOL_CALL_OPEN) :]
                self._inside = True
                continue
            held = _partial_open(self._pending)
            pieces.append(self._pending[: len(self._pending) - held])
            self._pending = self._pending[len(self._pending) - held :]
            break
        return self._spaced(pieces)

    def read_rest(self) -> list[str | ParsedToolCall]:
        """`finish`'s content and call, in order."""
        rest = self._close(self._pending, closed=False) if self._inside else self._pending
        self._pending, self._inside, self._unsearched = "", False, 0
        pieces = self._spaced([rest])
        if self._space and not self._called:
            pieces.append(self._space)
        self._space = ""
        return pieces

    def _spaced(self, pieces: list[str | ParsedToolCall]) -> list[str | ParsedToolCall]:
        """The pieces without the content's leading white space where a call came first; the
        trailing white space so far is held."""
        out: list[str | ParsedToolCall] = []
        for piece in pieces:
            if isinstance(piece, ParsedToolCall):
                if not self._texted:
                    self._space = ""
                self._called = True
                out.append(piece)
                continue
            text = self._space + piece
            body = text.rstrip()
            self._space = text[len(body) :]
            if body and not self._texted and self._called:
                body = body.lstrip()
            if body:
                self._texted = True
                out.append(body)
        return out

    def _close(self, block: str, closed: bool) -> str | ParsedToolCall:
        """The block's call, or its text as written when it is not a call."""
        call = self._call(block, closed)
        if call is not None:
            self.calls.append(call)
            return call
        if self._blocks == 1 and self.primer:  # the server's text is not the model's
            return block[len(self.primer) - len(TOOL_CALL_OPEN) :]
        return TOOL_CALL_OPEN + block + (TOOL_CALL_CLOSE if closed else "")

    def _call(self, block: str, closed: bool) -> ParsedToolCall | None:
        name, arguments = _read_call(block, closed)
        self._blocks += 1
        if self.forced is not None and self._blocks == 1:
            name = self.forced
        if name not in self.names:
            return None
        return ParsedToolCall(f"call_{uuid.uuid4().hex[:24]}", name, arguments)


def _read_call(block: str, closed: bool = True) -> tuple[str | None, str]:
    """(name, arguments as JSON text) of a block's JSON object; leniently when the object is
    not valid JSON as a whole (a small model's trailing brace, say) but its fields are. A
    block cut before its arguments (not `closed`, no arguments field) has arguments "": the
    model wrote none, and `{}` would be a call it never made."""
    try:
        value = json.loads(block)
    except (ValueError, RecursionError):  # nested past the stack
        value = None
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        arguments = value.get("arguments", value.get("parameters", {}))
        return value["name"], _as_json(arguments)
    name_match = _NAME_FIELD.search(block)
    name = name_match.group(1) if name_match else None
    found = _ARGUMENTS_FIELD.search(block)
    if found is None:
        return name, "{}" if closed else ""
    rest = block[found.end() :]
    try:
        arguments, _ = json.JSONDecoder().raw_decode(rest)
    except (ValueError, RecursionError):
        raw = rest.strip()
        return name, raw[:-1].rstrip() if raw.endswith("}") else raw  # drop the wrapper's brace
    return name, _as_json(arguments)


def _split(pieces: list[str | ParsedToolCall]) -> tuple[str, list[ParsedToolCall]]:
    """(the content, the calls) of ordered pieces."""
    text = "".join(p for p in pieces if isinstance(p, str))
    return text, [p for p in pieces if isinstance(p, ParsedToolCall)]


def _as_json(arguments: object) -> str:
    if isinstance(arguments, str):
        return arguments  # already JSON text, as OpenAI sends arguments
    return json.dumps(arguments, ensure_ascii=False)


def _partial_open(text: str) -> int:
    """Length of the longest end of `text` that begins TOOL_CALL_OPEN."""
    for size in range(min(len(text), len(TOOL_CALL_OPEN) - 1), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-size:]):
            return size
    return 0
