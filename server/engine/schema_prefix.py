"""Whether text (UTF-8 bytes, one at a time) is still the start of a JSON value that a compiled
schema (`json_schema.py`) allows: the same interface as `JsonPrefix`, with a stack of frames,
one per value being read. Object keys are matched against the allowed names as their JSON
bytes, in the schema's order (optional ones may be left out), a closing brace waits for every
required key, enums match their values' compact JSON
bytes, a union takes the branch its first byte names, a string with lengths or a pattern is
read by `StringReader` and a number with bounds is checked digit by digit."""

from __future__ import annotations

import copy
import json

from server.engine.json_prefix import MAX_WHITESPACE_RUN, JsonPrefix
from server.engine.json_schema import ANY, Node

_WHITESPACE = frozenset(b" \t\n\r")
_AGAIN = 2  # a frame has ended without taking the byte: its parent reads it


class SchemaPrefix:
    """Feed bytes with `feed`; False means no text the schema allows starts so (the state is
    then undefined: `copy` before trying). `complete` once the root object has closed."""

    __slots__ = ("_stack", "_spaces", "_done")

    def __init__(self, root: Node) -> None:
        self._stack: list[_Frame] = [_Value(root)]
        self._spaces = 0
        self._done = False

    @property
    def complete(self) -> bool:
        return self._done

    @property
    def final(self) -> bool:
        return self._done

    def copy(self) -> SchemaPrefix:
        twin = SchemaPrefix.__new__(SchemaPrefix)
        twin._stack = [f.copy() for f in self._stack]
        twin._spaces, twin._done = self._spaces, self._done
        return twin

    def feed_all(self, data: bytes) -> bool:
        return all(self.feed(b) for b in data)

    def feed(self, b: int) -> bool:
        if self._done:
            return False
        if b in _WHITESPACE and self._stack[-1].spaces_ok():
            self._spaces += 1
            return self._spaces <= MAX_WHITESPACE_RUN
        self._spaces = 0
        result = self._stack[-1].feed(b, self)
        if result is not _AGAIN:
            return bool(result)
        self.pop()  # the frame ended before b: b belongs to its parent
        return self.feed(b)

    # -- called by frames ---------------------------------------------------------------------

    def push(self, frame: _Frame) -> None:
        self._stack.append(frame)

    def replace(self, frame: _Frame) -> None:
        self._stack[-1] = frame

    def pop(self) -> None:
        """The top frame's value is complete."""
        self._stack.pop()
        if self._stack:
            self._stack[-1].child_done()
        else:
            self._done = True


class _Frame:
    def copy(self) -> _Frame:
        return copy.copy(self)

    def spaces_ok(self) -> bool:
        return False

    def child_done(self) -> None:
        raise AssertionError("this frame has no children")

    def feed(self, b: int, machine: SchemaPrefix) -> bool | int:
        raise NotImplementedError


class _Value(_Frame):
    """A value not begun yet: its first byte picks its frame."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def spaces_ok(self) -> bool:
        return True

    def feed(self, b: int, machine: SchemaPrefix) -> bool | int:
        node = self.node
        if node.kind == "union":
            node = node.option_for(b) or node
        if b not in node.first_bytes():
            return False
        kind = node.kind
        if kind == "any":
            kind = {0x7B: "object", 0x5B: "array", 0x22: "string", 0x74: "boolean",
                    0x66: "boolean", 0x6E: "null"}.get(b, "number")  # fmt: skip
            node = Node("object", additional=ANY) if kind == "object" else (
                Node("array", items=ANY) if kind == "array" else Node(kind))  # fmt: skip
        frame: _Frame
        if kind == "object":
            frame = _Object(node)
        elif kind == "array":
            frame = _Array(node)
        elif kind == "enum":
            frame = _Enum(node.values)
        elif kind == "boolean":
            frame = _Enum((b"true", b"false"))
        elif kind == "null":
            frame = _Enum((b"null",))
        else:  # string, number, integer: JSON's own grammar for one scalar
            frame = _Scalar(node)
        machine.replace(frame)
        return frame.feed(b, machine)


class _Scalar(_Frame):
    """A string or a number, read by `JsonPrefix` as the value of a one-key object; a string's
    rules (`StringReader`) and a number's bounds (as its digits come) checked beside."""

    def __init__(self, node: Node) -> None:
        self.text = JsonPrefix()
        self.text.feed_all(b'{"":')  # past the key: the automaton now reads one value
        self.integer = node.kind == "integer"
        self.bounds = node.bounds
        self.rules = None if node.string is None else node.string.start()
        self.number = ""  # a bounded number's text so far
        self.started = False

    def copy(self) -> _Frame:
        twin = copy.copy(self)
        twin.text = self.text.copy()
        if self.rules is not None:
            twin.rules = self.rules.copy()
        return twin

    def feed(self, b: int, machine: SchemaPrefix) -> bool | int:
        refused = b"eE" if self.bounds is not None else b""  # no exponents within bounds
        if not ((self.integer and b in b".eE") or b in refused):
            probe = self.text.copy()
            if probe.feed(b):
                state = probe.value_state()
                if state == "inside":
                    if not self._rules_take(b):
                        return False
                    self.text, self.started = probe, True
                    return True
                if state == "after" and b == 0x22 and self.started:  # a string's closing quote
                    if self.rules is not None and not self.rules.may_close():
                        return False
                    machine.pop()
                    return True
        # a number ends before a byte it cannot take (if it may end where it is)
        may_end = self.started and self.text.number_may_end()
        if may_end and self.bounds is not None:
            may_end = self.bounds.allows(self.number)
        return _AGAIN if may_end else False

    def _rules_take(self, b: int) -> bool:
        """Whether a string's rules or a number's bounds allow byte `b` (JSON's own grammar
        has already taken it)."""
        if self.rules is not None and self.started:  # past the opening quote
            return self.rules.feed(b)
        if self.bounds is not None:
            longer = self.number + chr(b)
            if not self.bounds.may_become(longer):
                return False
            self.number = longer
        return True


class _Enum(_Frame):
    """One of a few values, by their compact JSON bytes."""

    def __init__(self, values: tuple[bytes, ...]) -> None:
        self.values = values
        self.read = b""

    def feed(self, b: int, machine: SchemaPrefix) -> bool | int:
        longer = self.read + bytes([b])
        if any(v.startswith(longer) for v in self.values):
            self.read = longer
            return True
        return _AGAIN if self.read in self.values else False


class _Object(_Frame):
    _OPEN, _KEY, _IN_KEY, _COLON, _VALUE, _AFTER = range(6)

    def __init__(self, node: Node) -> None:
        self.node = node
        self.phase = -1  # before its "{"
        self.seen: frozenset[str] = frozenset()
        self.next = 0  # where in the schema's property order the next listed key may start
        self.key = b""
        self.free_key: JsonPrefix | None = None  # an additional key, read as a JSON string
        self.current = ""  # the key whose value is being read

    def copy(self) -> _Frame:
        twin = copy.copy(self)
        if self.free_key is not None:
            twin.free_key = self.free_key.copy()
        return twin

    def spaces_ok(self) -> bool:
        return self.phase in (self._OPEN, self._KEY, self._COLON, self._AFTER)

    def child_done(self) -> None:
        self.phase = self._AFTER

    def feed(self, b: int, machine: SchemaPrefix) -> bool | int:
        phase = self.phase
        if phase == -1:
            self.phase = self._OPEN
            return b == 0x7B
        if phase in (self._OPEN, self._KEY):
            if b == 0x22 and self._keys_left():
                self.phase, self.key = self._IN_KEY, b""
                self.free_key = None
                return True
            if phase == self._OPEN and b == 0x7D:
                return self._close(machine)
            return False
        if phase == self._IN_KEY:
            return self._key_byte(b)
        if phase == self._COLON:
            if b != 0x3A:
                return False
            self.phase = self._VALUE
            machine.push(_Value(self._value_node()))
            return True
        if phase == self._AFTER:
            if b == 0x2C and self._keys_left():
                self.phase = self._KEY
                return True
            return b == 0x7D and self._close(machine)
        return False

    def _close(self, machine: SchemaPrefix) -> bool:
        if not self.node.required <= self.seen:
            return False
        machine.pop()
        return True

    def _names(self) -> list[str]:
        """The listed keys that may come next. They come in the schema's order (as OpenAI's
        structured outputs write them: a model reads its "reasoning" before its "answer" only
        if it wrote it first); an optional key may be left out, a required one may not."""
        names = []
        for name in list(self.node.properties)[self.next :]:
            names.append(name)
            if name in self.node.required:
                break
        return names

    def _keys_left(self) -> bool:
        return bool(self._names()) or self.node.additional is not None

    def _key_byte(self, b: int) -> bool:
        names = [json.dumps(k, ensure_ascii=False)[1:-1].encode() for k in self._names()]
        if self.free_key is None:
            longer = self.key + bytes([b])
            if b == 0x22 and self.key in names:
                return self._key_done(json.loads(b'"' + self.key + b'"'))
            if any(n.startswith(longer) for n in names):
                self.key = longer
                return True
            if self.node.additional is None:
                return False
            # not a listed name: any other string, read from its start
            self.free_key = JsonPrefix()
            if not self.free_key.feed_all(b'{"' + self.key):
                return False
        if b == 0x22 and self.free_key.in_plain_string():
            name = json.loads(b'"' + self.key + b'"')
            if name in self.node.properties:
                return False  # a listed name comes only once, by the branch above
            return self._key_done(name)
        if not self.free_key.feed(b):
            return False
        self.key += bytes([b])
        return True

    def _key_done(self, name: str) -> bool:
        self.seen = self.seen | {name}
        if name in self.node.properties:
            self.next = list(self.node.properties).index(name) + 1
        self.current = name
        self.phase = self._COLON
        return True

    def _value_node(self) -> Node:
        listed = self.node.properties.get(self.current)
        return listed if listed is not None else self.node.additional or ANY


class _Array(_Frame):
    def __init__(self, node: Node) -> None:
        self.node = node
        self.count = -1  # before its "["
        self.after = False  # after an item: "," or "]"

    def spaces_ok(self) -> bool:
        return self.count >= 0

    def child_done(self) -> None:
        self.count += 1
        self.after = True

    def feed(self, b: int, machine: SchemaPrefix) -> bool | int:
        if self.count == -1:
            self.count = 0
            return b == 0x5B
        high = self.node.max_items
        if b == 0x5D and (self.after or self.count == 0):
            if self.count < self.node.min_items:
                return False
            machine.pop()
            return True
        if self.after:
            if b != 0x2C or (high is not None and self.count >= high):
                return False
            self.after = False
            return True
        if high is not None and self.count >= high:
            return False
        item = _Value(self.node.items or ANY)
        machine.push(item)
        return item.feed(b, machine)
