"""Sentinels for generated text in ordinary objects, and the str that refuses to be read."""

from __future__ import annotations

import copy

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue

from parrot_bridge.langchain.symbolic_str import NeedsValue, SymbolicStr, user_code
from parrot_bridge.langchain.symbols import Symbols, has_hidden_text
from parrot_bridge.variable import SemanticVariable


@pytest.fixture
def symbols() -> Symbols:
    return Symbols()


def test_parts_find_and_substitute_through_nested_objects(symbols: Symbols) -> None:
    a, b = SemanticVariable(name="a"), SemanticVariable(name="b")
    ta, tb = symbols.text(a), symbols.text(b)
    assert symbols.parts(f"x {ta}{tb} y {ta}") == ["x ", a, b, " y ", a]
    obj = {
        "msgs": [HumanMessage(f"hi {ta}"), AIMessage(tb)],
        "pv": ChatPromptValue(messages=[HumanMessage(f"<{tb}>")]),
        "s": (StringPromptValue(text=ta), 3, None),
    }
    assert symbols.find(obj) == [a, b]
    out = symbols.substitute(obj, lambda v: v.name.upper() + "{{")
    assert out["msgs"][0].content == "hi A{{" and out["msgs"][1].content == "B{{"
    assert out["pv"].messages[0].content == "<B{{>"
    assert out["s"] == (StringPromptValue(text="A{{"), 3, None)
    assert symbols.find(out) == []


def test_a_sentinel_of_another_trace_is_an_error(symbols: Symbols) -> None:
    other = Symbols().text(SemanticVariable())
    with pytest.raises(KeyError, match="unknown variable"):
        symbols.parts(f"a {other}")


def test_taint_and_untaint(symbols: Symbols) -> None:
    t = str(symbols.text(SemanticVariable()))
    tainted = symbols.taint({"k": [t, "plain"]})
    assert type(tainted["k"][0]) is SymbolicStr and type(tainted["k"][1]) is str
    assert type(symbols.untaint(tainted)["k"][0]) is str


def test_hidden_text_in_unknown_objects_is_detected(symbols: Symbols) -> None:
    class Box:
        def __init__(self, v: str) -> None:
            self.v = v

        def __repr__(self) -> str:
            return f"Box({self.v})"

    t = str(symbols.text(SemanticVariable()))
    assert has_hidden_text({"a": [Box(t)]})
    assert not has_hidden_text({"a": [t, HumanMessage(t), Box("x")]})


def test_symbolic_str_can_be_placed_but_not_read() -> None:
    x = SymbolicStr("PARROTSV" + "0" * 32 + "X")
    assert f"<{x}>" == f"<{str.__str__(x)}>"
    assert "-".join([x, "a"]).endswith("-a") is True
    assert type(x + "a") is str and "%s!" % x == str.__str__(x) + "!"  # noqa: UP031
    assert type(copy.deepcopy(x)) is SymbolicStr
    reads = [len, lambda s: s.upper(), repr, bool, lambda s: s == "a", lambda s: s[0], lambda s: "a" in s,
             lambda s: f"{s:>80}", lambda s: s.split(), lambda s: s.strip()]  # fmt: skip
    for read in reads:
        with pytest.raises(NeedsValue):
            read(x)


def test_needs_value_is_not_swallowed_by_except_exception() -> None:
    def careful(s: str) -> str:
        try:
            return s.lower()
        except Exception:
            return "swallowed"

    with pytest.raises(NeedsValue):
        careful(SymbolicStr("abc"))


def test_hashing_or_comparing_a_symbolic_str_is_a_read() -> None:
    x = SymbolicStr("PARROTSV" + "0" * 32 + "X")
    reads = [hash, lambda s: {"a": 1}.get(s), lambda s: s in {"a"}, lambda s: {s: 1},
             lambda s: "a" == s, lambda s: s != "a", lambda s: s in ["a"]]  # fmt: skip
    for read in reads:
        with pytest.raises(NeedsValue):
            read(x)


def test_str_of_a_symbolic_str_stays_symbolic_in_user_code_only() -> None:
    x = SymbolicStr("PARROTSV" + "0" * 32 + "X")
    assert type(str(x)) is str
    with user_code():
        assert type(str(x)) is SymbolicStr and f"<{x!s}>" == f"<{str.__str__(x)}>"


def test_a_set_holding_a_symbolic_str_is_hidden_text(symbols: Symbols) -> None:
    t = symbols.text(SemanticVariable())

    class Box:
        def __repr__(self) -> str:
            return repr(t)  # reads it

    assert has_hidden_text([Box()]) and has_hidden_text({"a": frozenset([str(t)])})


def test_an_unanswered_messages_metadata_cannot_be_read_until_untainted(
    symbols: Symbols,
) -> None:
    meta = {"model_name": "m", "model_provider": "parrot"}
    message = AIMessage(symbols.text(SemanticVariable()), response_metadata=meta)
    tainted = symbols.taint({"m": message, "h": HumanMessage("hi")})["m"]
    reads = [lambda m: m.response_metadata.get("finish_reason"), lambda m: m.usage_metadata["x"],
             lambda m: "parsed" in m.additional_kwargs, lambda m: {**m.response_metadata},
             lambda m: m.usage_metadata is None or len(m.usage_metadata)]  # fmt: skip
    for read in reads:
        with pytest.raises(NeedsValue):
            read(tainted)
    assert symbols.untaint(tainted).response_metadata == meta
    assert copy.deepcopy(symbols.untaint([tainted]))[0].response_metadata == meta
