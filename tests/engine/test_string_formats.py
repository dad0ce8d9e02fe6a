"""String formats under structured outputs: what the automaton lets through parses."""

from __future__ import annotations

import datetime
import ipaddress
import json
import random
import uuid

import pytest
from pydantic import TypeAdapter

from server.engine.json_schema import SchemaError, compile_schema
from server.engine.schema_prefix import SchemaPrefix
from server.engine.string_formats import FORMAT_PATTERNS

PARSERS = {
    "date-time": datetime.datetime.fromisoformat,
    "date": datetime.date.fromisoformat,
    "time": datetime.time.fromisoformat,
    "duration": TypeAdapter(datetime.timedelta).validate_python,
    "email": lambda s: _checked(s, s.count("@") == 1 and "." in s.split("@")[1]),
    "hostname": lambda s: _checked(s, all(0 < len(p) < 64 for p in s.split("."))),
    "ipv4": ipaddress.IPv4Address,
    "ipv6": ipaddress.IPv6Address,
    "uuid": uuid.UUID,
}
VALID = {
    "date-time": ["2026-11-29T08:30:00Z", "1999-01-31T23:59:59.123+05:30"],
    "date": ["2026-02-28", "0001-12-31", "2024-02-29", "2000-02-29", "0400-02-29"],
    "time": ["00:00:00Z", "23:59:59.5-08:00"],
    "duration": ["P1D", "PT2H30M", "P1Y2M3DT4H5M6.5S", "P3W", "PT0.5S"],
    "email": ["maria@example.com", "a.b+c@sub.example.org"],
    "hostname": ["localhost", "a-1.example.com"],
    "ipv4": ["0.0.0.0", "192.168.1.255"],
    "ipv6": ["::", "::1", "fe80::1:2", "2001:db8:0:0:0:0:2:1", "1::"],
    "uuid": ["123e4567-e89b-12d3-a456-426614174000"],
}
INVALID = {
    "date-time": ["2026-11-29", "2026-11-29T08:30:00", "2026-13-01T00:00:00Z"],
    "date": ["2026-1-01", "2026-00-10", "tomorrow", "2026-04-31", "2100-02-29", "0000-01-01"],
    "time": ["24:00:00Z", "12:00"],
    "duration": ["P", "PT", "1D", "P1H"],
    "email": ["maria", "@example.com", "maria@localhost"],
    "hostname": ["-a.com", "a..b"],
    "ipv4": ["256.1.1.1", "1.2.3", "01.2.3.4"],
    "ipv6": [":::", "1:2:3:4:5:6:7:8:9", "12345::"],
    "uuid": ["123e4567e89b12d3a456426614174000"],
}


def _checked(text: str, ok: bool) -> str:
    if not ok:
        raise ValueError(text)
    return text


def schema(fmt: str, **more: object) -> dict:
    value = {"type": "string", "format": fmt, **more}
    return {"type": "object", "properties": {"v": value}, "required": ["v"]}


def follows(fmt: str, text: str) -> bool:
    state = SchemaPrefix(compile_schema(schema(fmt)))
    return state.feed_all(json.dumps({"v": text}, separators=(",", ":")).encode()) and (
        state.complete
    )


@pytest.mark.parametrize("fmt", sorted(FORMAT_PATTERNS))
def test_valid_strings_are_followed_and_invalid_ones_refused(fmt: str) -> None:
    """A format was an annotation: `{"when": "2022-01-22"}` passed for a date-time, a date for
    a uuid."""
    for text in VALID[fmt]:
        PARSERS[fmt](text)  # the examples are themselves valid
        assert follows(fmt, text), text
    for text in INVALID[fmt]:
        assert not follows(fmt, text), text


@pytest.mark.parametrize("fmt", sorted(FORMAT_PATTERNS))
def test_random_walks_end_in_strings_that_parse(fmt: str) -> None:
    """Characters drawn at random among those the automaton allows never leave it stuck, and
    every finished string parses as its format."""
    node = compile_schema(schema(fmt))
    # every character some format takes, a few that none does, and none of JSON's escapes
    alphabet = [bytes([b]) for b in b"0123456789aBeFgZTPYMWDHS.:-+@_!~ /"]
    rng = random.Random(fmt)
    for _ in range(12):
        state, text = SchemaPrefix(node), b""
        assert state.feed_all(b'{"v":"')
        while True:
            allowed = [c for c in alphabet if state.copy().feed_all(c)]
            closes = state.copy().feed_all(b'"')
            assert allowed or closes, text  # never stuck
            if closes and (not allowed or rng.random() < 0.3 or len(text) > 32):
                break
            pick = rng.choice(allowed)
            assert state.feed_all(pick)
            text += pick
        PARSERS[fmt](text.decode())


def test_other_formats_stay_annotations_and_a_format_with_a_pattern_is_refused() -> None:
    assert SchemaPrefix(compile_schema(schema("uri"))).feed_all(b'{"v":"not a uri"}')
    with pytest.raises(SchemaError, match="format must be a string"):  # was a TypeError: a 500
        compile_schema(schema(["date"]))  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="format 'date' and a pattern"):
        compile_schema(schema("date", pattern="^2"))
    # 10 characters: no date fits in 9 (the decoder was left inside a string it cannot close)
    with pytest.raises(SchemaError, match="no string of at most 9 characters matches the format"):
        compile_schema(schema("date", maxLength=9))
    with pytest.raises(SchemaError, match="at most 2 characters matches the pattern"):
        compile_schema(schema("uri", pattern="^abc$", maxLength=2))
    assert follows("date", "2026-01-01") and compile_schema(schema("date", maxLength=10))
