"""Whether text (UTF-8 bytes, one at a time) is still the start of a sentence of a context-free
grammar (vLLM's `structured_outputs.grammar` and `guided_grammar`; the notation is in
`grammar_parser.py`; the whole text must match the rule `root`): the same interface as
`JsonPrefix`.

Each rule is compiled into an NFA over characters whose edges may also call another rule; the
text is followed on sets of configurations (a state and the stack of states to return to), a
pushdown automaton simulated breadth first. Left recursion (a rule that can reach itself before
reading a character) would grow the stack forever, so it is refused, as is a rule that can
never end (one with no sentence: a class that holds no character is no move); so is a name that
no rule defines.
"""

from __future__ import annotations

import functools

from server.engine.char_nfa import CharNfaBuilder
from server.engine.code_point_prefix import CodePointPrefix
from server.engine.collection_pause import collection_paused
from server.engine.grammar_parser import (
    Alt,
    Chars,
    GrammarError,
    Node,
    Ref,
    Repeat,
    Seq,
    parse_grammar,
)

__all__ = ["Grammar", "GrammarError", "GrammarPrefix", "compiled_grammar"]

_MAX_STATES = 200_000
Stack = tuple[int, "Stack"] | None  # (the state to return to, the stack below it)
Config = tuple[int, Stack]


@functools.lru_cache(maxsize=64)
def compiled_grammar(text: str) -> Grammar:
    """The grammar of `text`, compiled once per text (requests often repeat one)."""
    return Grammar(text)


class Grammar:
    """A compiled grammar: `start()` gives the prefix automaton of one generation."""

    def __init__(self, text: str) -> None:
        with collection_paused():  # a large grammar compiles faster (see collection_pause)
            self._build(text)

    def start(self) -> GrammarPrefix:
        return GrammarPrefix(self, self._start)

    def _build(self, text: str) -> None:
        rules = parse_grammar(text)
        if "root" not in rules:
            raise GrammarError("the grammar needs a rule named root (the whole text)")
        self._building = CharNfaBuilder(_MAX_STATES, _too_large)
        self._building_calls: list[list[tuple[str, int]]] = []
        self._entry: dict[str, int] = {}
        self._exit: dict[str, int] = {}
        for name, node in rules.items():
            self._entry[name], self._exit[name] = self._compile(node, rules)
        self._nfa = self._building.packed()
        # per state: (the rule called, the state after) for each call it makes
        self._calls = tuple(map(tuple, self._building_calls))
        del self._building, self._building_calls
        self._exits = frozenset(self._exit.values())
        self._accept = self._exit["root"]
        self._check_productive(rules)
        self._check_left_recursion(rules)
        self._start = self._closure({(self._entry["root"], None)})

    # -- simulation ---------------------------------------------------------------------------

    def step(self, configs: frozenset[Config], code: int) -> frozenset[Config]:
        charsets, edges = self._nfa.charsets, self._nfa.edges
        moved = {(t, stack) for s, stack in configs for c, t in edges[s] if code in charsets[c]}
        return self._closure(moved) if moved else frozenset()

    def may_take(self, configs: frozenset[Config], lo: int, hi: int) -> bool:
        charsets, edges = self._nfa.charsets, self._nfa.edges
        return any(charsets[c].may_hold(lo, hi) for s, _ in configs for c, _ in edges[s])

    def can_continue(self, configs: frozenset[Config]) -> bool:
        return any(self._nfa.edges[s] for s, _ in configs)

    def accepts(self, configs: frozenset[Config]) -> bool:
        return (self._accept, None) in configs

    def _closure(self, configs: set[Config]) -> frozenset[Config]:
        """Every configuration reachable without reading: empty moves, calls (push the state
        after the call) and a rule's end (pop). Only those that read a character, and the
        accepting one, are kept: the others cannot take the next character themselves."""
        edges, empty = self._nfa.edges, self._nfa.empty
        seen, todo = set(configs), list(configs)
        while todo:
            s, stack = todo.pop()
            reached = [(t, stack) for t in empty[s]]
            reached += [(self._entry[rule], (after, stack)) for rule, after in self._calls[s]]
            if s in self._exits and stack is not None:
                reached.append(stack)
            for config in reached:
                if config not in seen:
                    seen.add(config)
                    todo.append(config)
        return frozenset(
            c for c in seen if edges[c[0]] or (c[0] == self._accept and c[1] is None)
        )

    # -- construction -------------------------------------------------------------------------

    def _new_state(self) -> int:
        self._building_calls.append([])
        return self._building.new_state()

    def _compile(self, node: Node, rules: dict[str, Node]) -> tuple[int, int]:
        """The (entry, exit) states of a fragment that reads what `node` describes."""
        if isinstance(node, Chars):
            s, a = self._new_state(), self._new_state()
            self._building.edge(s, node.chars, a)
            return s, a
        if isinstance(node, Ref):
            if node.name not in rules:
                raise GrammarError(f"the rule {node.name!r} is used but not defined")
            s, a = self._new_state(), self._new_state()
            self._building_calls[s].append((node.name, a))
            return s, a
        if isinstance(node, Seq):
            enter = leave = self._new_state()
            for item in node.items:
                s, a = self._compile(item, rules)
                self._building.empty(leave, s)
                leave = a
            return enter, leave
        if isinstance(node, Alt):
            enter, leave = self._new_state(), self._new_state()
            for option in node.options:
                s, a = self._compile(option, rules)
                self._building.empty(enter, s)
                self._building.empty(a, leave)
            return enter, leave
        return self._compile_repeat(node, rules)

    def _compile_repeat(self, node: Repeat, rules: dict[str, Node]) -> tuple[int, int]:
        count = max(node.low, 1) if node.high is None else node.high
        enter, out = self._new_state(), self._new_state()
        before = enter
        copies = [self._compile(node.item, rules) for _ in range(count)]
        for i, (s, a) in enumerate(copies):
            if i >= node.low:  # enough copies already: may stop here
                self._building.empty(before, out)
            self._building.empty(before, s)
            before = a
        self._building.empty(before, out)
        if node.high is None and copies:  # unbounded: the last copy repeats
            self._building.empty(copies[-1][1], copies[-1][0])
        return enter, out

    # -- checks -------------------------------------------------------------------------------

    def _reaches_exit(self, rule: str, read: bool, through: set[str]) -> bool:
        """Whether `rule`'s exit can be reached from its entry, reading characters (`read`) or
        not, calling only rules in `through`."""
        goal, seen, todo = self._exit[rule], {self._entry[rule]}, [self._entry[rule]]
        while todo:
            s = todo.pop()
            if s == goal:
                return True
            nexts = list(self._nfa.empty[s])
            nexts += [after for callee, after in self._calls[s] if callee in through]
            if read:
                nexts += [t for _, t in self._nfa.edges[s]]
            for t in nexts:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return False

    def _fixpoint(self, rules: dict[str, Node], read: bool) -> set[str]:
        found: set[str] = set()
        grew = True
        while grew:
            grew = False
            for rule in rules:
                if rule not in found and self._reaches_exit(rule, read, found):
                    found.add(rule)
                    grew = True
        return found

    def _check_productive(self, rules: dict[str, Node]) -> None:
        productive = self._fixpoint(rules, read=True)
        endless = [rule for rule in rules if rule not in productive]
        if endless:
            raise GrammarError(
                f"the rule {endless[0]!r} can never end: it has no sentence (every way through "
                "it calls itself or another rule that never ends, or reads a character from a "
                "class that holds none)"
            )

    def _check_left_recursion(self, rules: dict[str, Node]) -> None:
        nullable = self._fixpoint(rules, read=False)
        first_calls: dict[str, set[str]] = {}
        for rule in rules:  # the rules each rule can call before reading a character
            called: set[str] = set()
            seen, todo = {self._entry[rule]}, [self._entry[rule]]
            while todo:
                s = todo.pop()
                nexts = list(self._nfa.empty[s])
                for callee, after in self._calls[s]:
                    called.add(callee)
                    if callee in nullable:
                        nexts.append(after)
                for t in nexts:
                    if t not in seen:
                        seen.add(t)
                        todo.append(t)
            first_calls[rule] = called
        for rule in rules:
            path = _path_back(rule, first_calls)
            if path is not None:
                raise GrammarError(
                    f"left recursion: {' -> '.join(path)} before reading a character; write "
                    "it with a repeat (x ::= y (op y)*) instead"
                )


def _too_large() -> GrammarError:
    return GrammarError(f"the grammar is too large (more than {_MAX_STATES} states)")


def _path_back(rule: str, calls: dict[str, set[str]]) -> list[str] | None:
    """A chain of calls from `rule` back to itself, if there is one."""
    parents: dict[str, str] = {}
    todo = [rule]
    while todo:
        current = todo.pop()
        for callee in sorted(calls[current]):
            if callee == rule:
                path = [callee, current]
                while path[-1] != rule:
                    path.append(parents[path[-1]])
                return path[::-1]
            if callee not in parents:
                parents[callee] = current
                todo.append(callee)
    return None


class GrammarPrefix(CodePointPrefix):
    """`complete` once the text is a sentence of the grammar; `final` once nothing more could
    follow."""

    __slots__ = ("_grammar", "_configs")

    def __init__(self, grammar: Grammar, configs: frozenset[Config]) -> None:
        super().__init__()
        self._grammar = grammar
        self._configs = configs

    @property
    def complete(self) -> bool:
        return not self._mid_character and self._grammar.accepts(self._configs)

    @property
    def final(self) -> bool:
        return self.complete and not self._grammar.can_continue(self._configs)

    def copy(self) -> GrammarPrefix:
        twin = GrammarPrefix(self._grammar, self._configs)
        self._copy_bytes_to(twin)
        return twin

    def _step(self, code: int) -> bool:
        self._configs = self._grammar.step(self._configs, code)
        return bool(self._configs)

    def _may_take(self, lo: int, hi: int) -> bool:
        return self._grammar.may_take(self._configs, lo, hi)
