"""Task groups on hand-built graphs."""

import pytest

from server.analysis import find_task_groups
from server.graph import Graph, Submission, VariableDecl
from tests.server.graphs import chain, decl, map_reduce


def test_the_map_stage_feeding_one_reduce_is_one_group() -> None:
    groups = find_task_groups(map_reduce(4))
    assert set(groups) == {"map0", "map1", "map2", "map3"}
    group = groups["map0"]
    assert group.members == ("map0", "map1", "map2", "map3")
    assert group.consumers == ("reduce",)
    assert all(g is group for g in groups.values())


def test_a_chain_has_no_groups() -> None:
    assert find_task_groups(chain(5)) == {}


def test_calls_feeding_different_consumers_are_apart() -> None:
    g = map_reduce(2)
    g.submit(
        Submission(
            variables=[VariableDecl(f"x{i}") for i in range(2)] + [VariableDecl("y")],
            calls=[
                decl("other0", "A {{output:o}}", {}, {"o": "x0"}),
                decl("other1", "B {{output:o}}", {}, {"o": "x1"}),
                decl(
                    "join2",
                    "{{input:a}} {{input:b}} {{output:o}}",
                    {"a": "x0", "b": "x1"},
                    {"o": "y"},
                ),
            ],
        )  # fmt: skip
    )
    groups = find_task_groups(g)
    assert groups["other0"].members == ("other0", "other1")
    assert groups["map0"].members == ("map0", "map1")
    assert groups["other0"] is not groups["map0"]
    assert "reduce" not in groups and "join2" not in groups


def test_a_lone_producer_is_not_a_group_and_min_size_is_checked() -> None:
    assert find_task_groups(map_reduce(1)) == {}
    assert set(find_task_groups(map_reduce(3), min_size=4)) == set()
    with pytest.raises(ValueError, match="min_size"):
        find_task_groups(map_reduce(2), min_size=1)


def test_calls_with_several_outputs_for_one_consumer_are_grouped_by_that_consumer() -> None:
    # a map stage whose calls each give a title and a summary, both read by the reduce
    g = Graph()
    variables = [VariableDecl(f"{kind}{i}") for i in range(3) for kind in ("t", "s")]
    maps = [decl(f"map{i}", "Title: {{output:t}}\nSummary: {{output:s}}", {},
                 {"t": f"t{i}", "s": f"s{i}"}) for i in range(2)]  # fmt: skip
    lone = decl("map2", "Summary: {{output:s}}", {}, {"s": "s2"})
    reads = {f"{kind}{i}": f"{kind}{i}" for i in range(2) for kind in ("t", "s")} | {"s2": "s2"}
    joined = " ".join(f"{{{{input:{name}}}}}" for name in reads)
    reduce = decl("reduce", f"{joined} All: {{{{output:f}}}}", reads, {"f": "final"})
    g.submit(Submission(variables=[*variables, VariableDecl("final")], calls=[*maps, lone, reduce]))
    group = find_task_groups(g)["map0"]
    assert group.members == ("map0", "map1", "map2")
    assert group.consumers == ("reduce",)
