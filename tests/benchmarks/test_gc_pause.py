"""benchmarks.gc_pause: the lists layout it compares against holds the packed automaton's moves,
and its tables (the run itself loads SmolLM2: not run here)."""

from __future__ import annotations

from benchmarks.gc_pause import as_lists, format_table, summarize, summarize_compiles
from server.engine.regex_prefix import Regex


def test_the_lists_layout_holds_the_same_moves_one_object_per_set() -> None:
    regex = Regex("(ab|[a-c]){2,3}x")  # each copy of the repeat reads its own [a-c]
    edges, empty = as_lists(regex)
    nfa = regex._nfa
    assert [[(chars, t) for chars, t in moves] for moves in edges] == [
        [(nfa.charsets[c], t) for c, t in moves] for moves in nfa.edges
    ]
    assert empty == [list(e) for e in nfa.empty]
    sets = [chars for moves in edges for chars, _ in moves]
    assert len({id(s) for s in sets}) == len(sets) > len(nfa.charsets)


def test_the_table_gives_medians_ratios_and_tracked_objects() -> None:
    pauses = {"lists, startup tracked": [200.0, 300.0, 250.0], "packed, startup frozen": [5.0]}
    tracked = {"lists, startup tracked": 900_000, "packed, startup frozen": 12}
    table = summarize(pauses, tracked)
    assert table["lists, startup tracked"] == {
        "median_ms": 250.0, "vs_first": 1.0, "tracked_objects": 900_000
    }
    assert table["packed, startup frozen"]["vs_first"] == 0.02
    lines = format_table(table).splitlines()
    assert len(lines) == 3 and lines[1].split()[-3:] == ["900,000", "250.0", "1.000"]


def test_compile_times_compare_each_kind_to_its_own_with_collection_held_off() -> None:
    times = {"grammar, held off": [1.0, 0.9, 1.1], "pattern, held off": [0.2],
             "grammar, on": [2.0], "pattern, on": [0.5, 0.6, 0.4]}  # fmt: skip
    table = summarize_compiles(times)
    assert table["grammar, on"] == {"median_s": 2.0, "vs_held_off": 2.0}
    assert table["pattern, on"] == {"median_s": 0.5, "vs_held_off": 2.5}
    assert table["pattern, held off"]["vs_held_off"] == 1.0
