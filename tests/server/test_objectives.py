"""Objective deduction on hand-built graphs."""

from server.analysis import Objective, deduce_objectives, raise_objectives
from server.graph import Submission, VariableDecl
from tests.server.graphs import chain, decl, map_reduce


def test_every_call_upstream_of_a_latency_await_is_latency_critical() -> None:
    objectives = deduce_objectives(chain(4, "latency"))
    assert objectives == {f"step{i}": Objective.LATENCY for i in range(4)}


def test_a_throughput_await_marks_its_upstream_as_bulk() -> None:
    objectives = deduce_objectives(map_reduce(3, "throughput"))
    assert set(objectives.values()) == {Objective.THROUGHPUT}
    assert len(objectives) == 4


def test_nothing_awaited_means_no_objective_until_an_await_arrives() -> None:
    g = chain(2, None)
    assert set(deduce_objectives(g).values()) == {Objective.NONE}
    g.await_variable("s0", "throughput")
    objectives = deduce_objectives(g)
    assert objectives == {"step0": Objective.THROUGHPUT, "step1": Objective.NONE}


def test_latency_wins_where_both_criteria_reach_a_call() -> None:
    g = map_reduce(2, "throughput")
    # a latency-critical consumer of map0's summary: map0 now delays a latency result
    g.submit(
        Submission(
            variables=[VariableDecl("quick")],
            calls=[
                decl(
                    "peek", "First: {{input:s}} Verdict:{{output:v}}", {"s": "sum0"}, {"v": "quick"}
                )
            ],  # fmt: skip
            awaits={"quick": "latency"},
        )
    )
    objectives = deduce_objectives(g)
    assert objectives["peek"] is Objective.LATENCY and objectives["map0"] is Objective.LATENCY
    assert objectives["map1"] is Objective.THROUGHPUT
    assert objectives["reduce"] is Objective.THROUGHPUT


def test_calls_off_the_awaited_path_keep_no_objective() -> None:
    g = map_reduce(2, "latency")
    g.submit(
        Submission(
            variables=[VariableDecl("side")],
            calls=[decl("aside", "Note {{input:s}}:{{output:o}}", {"s": "sum1"}, {"o": "side"})],
        )
    )
    objectives = deduce_objectives(g)
    assert objectives["aside"] is Objective.NONE
    assert objectives["map1"] is Objective.LATENCY


def test_new_awaits_taken_in_one_at_a_time_agree_with_a_full_deduction() -> None:
    # the session plan raises objectives await by await; it must end where deducing the
    # whole graph again would, latency never lowered by a later throughput await
    g = chain(4, None)
    objectives = deduce_objectives(g)
    for var_id, criteria in [("s0", "throughput"), ("s2", "latency"), ("s1", "throughput"),
                             ("s3", "throughput")]:  # fmt: skip
        g.await_variable(var_id, criteria)
        raise_objectives(g, objectives, var_id, criteria)
        assert objectives == deduce_objectives(g)
    assert objectives["step1"] is Objective.LATENCY and objectives["step3"] is Objective.THROUGHPUT
