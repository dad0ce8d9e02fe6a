"""The call graph alone: readiness, server-side propagation, failures and validation."""

import pytest

from server.graph import (
    CallDecl,
    CallState,
    Graph,
    GraphError,
    Submission,
    VariableDecl,
    VariableState,
)


def call(cid: str, reads: str | None, writes: str, template: str | None = None) -> CallDecl:
    if template is None:
        template = ("In: {{input:x}} " if reads else "Start ") + "Out: {{output:y}}"
    return CallDecl(
        id=cid,
        template=template,
        inputs={"x": reads} if reads else {},
        outputs={"y": writes},
        function=f"f_{cid}",
    )


def chain() -> Submission:
    return Submission(
        variables=[VariableDecl("doc", "doc", "text"), VariableDecl("a"), VariableDecl("b")],
        calls=[call("A", "doc", "a"), call("B", "a", "b")],
        awaits={"b": "latency"},
    )


def test_chain_runs_on_the_server_one_call_after_another() -> None:
    g = Graph()
    ready = g.submit(chain())
    assert [c.id for c in ready] == ["A"]
    assert g.calls["B"].state is CallState.WAITING
    assert g.awaits == {"b": "latency"}
    g.start("A")
    assert g.input_values(g.calls["A"]) == {"x": "text"}
    ready = g.complete_output("A", "y", "first")
    assert [c.id for c in ready] == ["B"]
    assert g.calls["A"].state is CallState.DONE
    assert g.variables["a"].value == "first"
    assert g.input_values(g.calls["B"]) == {"x": "first"}


def test_later_submissions_extend_the_graph() -> None:
    g = Graph()
    g.submit(chain())
    ready = g.submit(Submission(variables=[VariableDecl("c")], calls=[call("C", "b", "c")]))
    assert ready == []
    g.start("A")
    g.complete_output("A", "y", "1")
    g.start("B")
    assert [c.id for c in g.complete_output("B", "y", "2")] == ["C"]


def test_fan_in_waits_for_every_input() -> None:
    g = Graph()
    tpl = "{{input:p}} {{input:q}} -> {{output:y}}"
    g.submit(
        Submission(
            variables=[
                VariableDecl("d", value="doc"),
                VariableDecl("p"),
                VariableDecl("q"),
                VariableDecl("r"),
            ],
            calls=[
                call("P", "d", "p"),
                call("Q", "d", "q"),
                CallDecl("R", tpl, {"p": "p", "q": "q"}, {"y": "r"}),
            ],
        )
    )
    for cid in "PQ":
        g.start(cid)
    assert g.complete_output("P", "y", "1") == []
    assert [c.id for c in g.complete_output("Q", "y", "2")] == ["R"]


def two_outputs() -> Submission:
    """One call C setting n, then a."""
    return Submission(
        variables=[VariableDecl("n"), VariableDecl("a")],
        calls=[CallDecl("C", "Name: {{output:n}}\nAge: {{output:a}}", {}, {"n": "n", "a": "a"})],
    )


def test_multiple_outputs_finish_the_call_when_all_are_set() -> None:
    g = Graph()
    g.submit(two_outputs())
    g.start("C")
    g.complete_output("C", "n", "Bob")
    assert g.calls["C"].state is CallState.RUNNING
    g.complete_output("C", "a", "3")
    assert g.calls["C"].state is CallState.DONE


def test_a_running_call_that_set_nothing_can_run_again_once_requeued() -> None:
    g = Graph()
    g.submit(two_outputs())
    with pytest.raises(RuntimeError, match="not running"):
        g.requeue("C")  # ready, not started
    g.start("C")
    assert g.requeue("C").state is CallState.READY and g.calls["C"].requeued == 1
    g.start("C")  # it runs again
    g.complete_output("C", "n", "Bob")
    with pytest.raises(RuntimeError, match="has set an output"):
        g.requeue("C")  # its first output is out: running it again would set it twice
    assert g.calls["C"].state is CallState.RUNNING


def test_failure_propagates_downstream_with_the_cause_and_spares_the_rest() -> None:
    g = Graph()
    g.submit(chain())
    g.submit(
        Submission(
            variables=[VariableDecl("c"), VariableDecl("other")],
            calls=[call("C", "b", "c"), call("D", "doc", "other")],
        )
    )
    g.start("A")
    failed = g.fail_call("A", "prompt too long")
    assert {v.id for v in failed} == {"a", "b", "c"}
    assert g.variables["a"].error == "call 'A' (f_A) failed: prompt too long"
    assert g.variables["c"].error == (
        "call 'C' (f_C) failed: upstream call 'A' (f_A) failed: prompt too long"
    )
    assert g.calls["D"].state is CallState.READY
    assert g.variables["other"].state is VariableState.PENDING


def test_a_call_reading_a_failed_variable_fails_at_once() -> None:
    g = Graph()
    g.submit(chain())
    g.start("A")
    g.fail_call("A", "boom")
    ready = g.submit(Submission(variables=[VariableDecl("z")], calls=[call("Z", "a", "z")]))
    assert ready == []
    assert g.calls["Z"].state is CallState.FAILED
    assert "boom" in g.variables["z"].error


def test_a_call_submitted_with_an_error_fails_alone_with_its_dependents() -> None:
    g = Graph()
    refused = CallDecl("A", "Start {{output:y}}", {}, {"y": "a"}, function="f_A",
                       error="invalid sampling: the escape \\1 is not supported")  # fmt: skip
    ready = g.submit(
        Submission(
            variables=[VariableDecl("doc", value="text"), VariableDecl("a"),
                       VariableDecl("b"), VariableDecl("c")],
            calls=[call("S", "doc", "c"), refused, call("B", "a", "b")],
        )
    )  # fmt: skip
    assert [c.id for c in ready] == ["S"]
    assert g.calls["A"].state is CallState.FAILED and g.calls["B"].state is CallState.FAILED
    assert g.variables["a"].error == (
        "call 'A' (f_A) failed: invalid sampling: the escape \\1 is not supported"
    )
    assert g.variables["b"].error.startswith("call 'B' (f_B) failed: upstream call 'A' (f_A)")
    later = g.submit(Submission(variables=[VariableDecl("z")], calls=[call("Z", "b", "z")]))
    assert later == [] and g.calls["Z"].state is CallState.FAILED


def test_set_value_makes_consumers_ready_and_cannot_overwrite() -> None:
    g = Graph()
    g.add_variable(VariableDecl("late"))
    g.set_value("late", "v")
    g.submit(Submission(variables=[VariableDecl("o")], calls=[call("A", "late", "o")]))
    with pytest.raises(GraphError, match="already has a value"):
        g.set_value("late", "again")
    with pytest.raises(GraphError, match="is written by call 'A'"):
        g.set_value("o", "x")


def bad(kind: str, sub: Submission, *needles: str, graph: Graph | None = None) -> None:
    g = graph or Graph()
    before = (dict(g.variables), dict(g.calls))
    with pytest.raises(GraphError) as info:
        g.submit(sub)
    assert info.value.kind == kind
    for needle in needles:
        assert needle in info.value.message
    assert (g.variables, g.calls) == before  # atomic: nothing applied


def test_unknown_variable() -> None:
    sub = Submission(variables=[VariableDecl("o")], calls=[call("A", "ghost", "o")])
    bad("unknown_variable", sub, "call 'A' (f_A)", "'ghost'")


def test_two_producers_in_one_submission_and_across_submissions() -> None:
    sub = Submission(
        variables=[VariableDecl("d", value="t"), VariableDecl("o")],
        calls=[call("A", "d", "o"), call("B", "d", "o")],
    )
    bad("two_producers", sub, "call 'B' (f_B)", "'o'", "call 'A'")
    g = Graph()
    g.submit(chain())
    bad("two_producers", Submission(calls=[call("Z", "doc", "a")]), "'a'", graph=g)
    given = Submission(variables=[VariableDecl("v", value="x")], calls=[call("A", None, "v")])
    bad("two_producers", given, "a value given by the client")


def test_cycle_is_named() -> None:
    sub = Submission(
        variables=[VariableDecl("p", "plan"), VariableDecl("q", "question")],
        calls=[call("A", "q", "p"), call("B", "p", "q")],
    )
    bad("cycle", sub, "cycle:", "call 'A' (f_A)", "call 'B' (f_B)", "reads 'q' (question)",
        "reads 'p' (plan)")  # fmt: skip
    self_loop = Submission(variables=[VariableDecl("p")], calls=[call("A", "p", "p")])
    bad("cycle", self_loop, "both its input and its output")


def test_a_call_reading_a_client_owned_variable_waits_until_the_client_sets_it() -> None:
    """A variable declared with no value and no producer is the client's to set later (the
    Parrot paper's workflow): its readers wait in the session, downstream calls behind them."""
    g = Graph()
    sub = Submission(
        variables=[VariableDecl("e", "input"), VariableDecl("o"), VariableDecl("p")],
        calls=[call("A", "e", "o"), call("B", "o", "p")],
    )
    assert g.submit(sub) == []
    assert g.calls["A"].state is CallState.WAITING and g.calls["A"].missing == {"e"}
    assert [c.id for c in g.set_value("e", "now")] == ["A"]
    g.start("A")
    assert g.input_values(g.calls["A"]) == {"x": "now"}
    assert [c.id for c in g.complete_output("A", "y", "out")] == ["B"]
    # a variable read but declared nowhere is still an error
    ghost = Submission(variables=[VariableDecl("q")], calls=[call("C", "ghost", "q")])
    bad("unknown_variable", ghost, "call 'C' (f_C)", "'ghost'", graph=g)


def test_unset_sources_are_the_client_owned_variables_a_variable_waits_on() -> None:
    g = Graph()
    tpl = "{{input:p}} {{input:q}} -> {{output:y}}"
    g.submit(
        Submission(
            variables=[VariableDecl(v) for v in ("x", "y", "a", "b", "r", "s")]
            + [VariableDecl("d", value="doc")],
            calls=[call("A", "x", "a"), call("B", "d", "b"),
                   CallDecl("R", tpl, {"p": "a", "q": "y"}, {"y": "r"}), call("S", "r", "s")],
        )
    )  # fmt: skip
    assert [v.id for v in g.unset_sources("s")] == ["y", "x"]  # nearest first
    assert [v.id for v in g.unset_sources("x")] == ["x"]  # itself
    assert g.unset_sources("b") == [] and g.unset_sources("d") == []  # on its way; has one
    g.set_value("y", "why")
    assert [v.id for v in g.unset_sources("s")] == ["x"]
    g.set_value("x", "ex")
    assert g.unset_sources("s") == []


def test_a_later_call_may_write_a_client_owned_variable_that_waiting_calls_read() -> None:
    g = Graph()
    g.submit(
        Submission(
            variables=[VariableDecl("x", "plan"), VariableDecl("o", "out")],
            calls=[call("A", "x", "o")],
        )
    )
    # a call writing `x` from what reads `x` closes a cycle through the waiting call A
    closing = Submission(variables=[VariableDecl("p")], calls=[call("W", "o", "x")])
    bad("cycle", closing, "cycle:", "call 'W' (f_W) reads 'o' (out), written by call 'A' (f_A) "
        "reads 'x' (plan), written by call 'W'", graph=g)  # fmt: skip
    # a producer that is no cycle: A waits for it as for the client
    ready = g.submit(Submission(variables=[VariableDecl("d", value="t")],
                                calls=[call("W", "d", "x")]))  # fmt: skip
    assert [c.id for c in ready] == ["W"] and g.variables["x"].producer == "W"
    with pytest.raises(GraphError, match="is written by call 'W'"):
        g.set_value("x", "mine")
    g.start("W")
    assert [c.id for c in g.complete_output("W", "y", "made")] == ["A"]
    # a refused producer of a client-owned variable fails its old readers too
    g.submit(Submission(variables=[VariableDecl("z"), VariableDecl("zo")],
                        calls=[call("Z", "z", "zo")]))  # fmt: skip
    g.submit(Submission(calls=[CallDecl("P", "{{output:y}}", {}, {"y": "z"}, error="bad")]))
    assert g.calls["Z"].state is CallState.FAILED and "bad" in g.variables["zo"].error


def test_bad_template_and_bindings() -> None:
    sub = Submission(variables=[VariableDecl("o")], calls=[call("A", None, "o", "{{oops:y}}")])
    bad("invalid_template", sub, "call 'A' (f_A): invalid template: line 1, column 1")
    unbound = Submission(calls=[CallDecl("A", "{{input:x}} {{output:y}}", {}, {})])
    bad("unbound_slot", unbound, "input 'x'")
    extra = Submission(
        variables=[VariableDecl("o"), VariableDecl("d", value="t")],
        calls=[CallDecl("A", "{{output:y}}", {"zz": "d"}, {"y": "o"})],
    )
    bad("unknown_slot", extra, "no {{input:zz}} marker")
    transform = Submission(
        variables=[VariableDecl("o"), VariableDecl("d", value="t")],
        calls=[CallDecl("A", "{{input:x|upper}} {{output:y}}", {"x": "d"}, {"y": "o"})],
    )
    bad("invalid_template", transform, "call 'A': invalid template: line 1, column 1: unknown "
        "transform 'upper' in '{{input:x|upper}}' (known: strip)")  # fmt: skip


def test_a_transform_changes_the_prompt_not_the_value() -> None:
    g = Graph()
    sub = Submission(
        variables=[VariableDecl("d", value="  spaced \n"), VariableDecl("o")],
        calls=[CallDecl("A", "In: {{input:x|strip}}. {{output:y}}", {"x": "d"}, {"y": "o"})],
    )
    [ready] = g.submit(sub)
    assert g.input_values(ready) == {"x": "  spaced \n"}  # what the slot renders from
    assert g.variables["d"].value == "  spaced \n"


def test_ids_and_duplicates() -> None:
    bad("invalid_id", Submission(variables=[VariableDecl("has space")]), "'has space'")
    bad("duplicate_variable", Submission(variables=[VariableDecl("a"), VariableDecl("a")]), "'a'")
    dup = Submission(
        variables=[VariableDecl("o1"), VariableDecl("o2")],
        calls=[call("A", None, "o1"), call("A", None, "o2")],
    )
    bad("duplicate_call", dup, "'A'")
    bad("unknown_variable", Submission(awaits={"nope": "latency"}), "'nope'")


def test_a_variable_declared_again_as_it_is_is_kept() -> None:
    """A client that lost the answer to a submission (a timeout) does not know it was applied:
    declaring its input variables again must not make the session unusable."""
    g = Graph()
    g.submit(chain())
    again = g.submit(
        Submission(
            variables=[VariableDecl("doc", "doc", "text"), VariableDecl("c")],
            calls=[call("C", "doc", "c")],
        )
    )
    assert [c.id for c in again] == ["C"] and g.variables["doc"].consumers == ["A", "C"]
    for changed in (VariableDecl("doc", "doc", "other"), VariableDecl("doc", "renamed", "text"),
                    VariableDecl("a"), VariableDecl("doc")):  # fmt: skip
        bad("duplicate_variable", Submission(variables=[changed]), "declared twice", graph=g)


def test_long_chain_does_not_hit_the_recursion_limit() -> None:
    n = 3000
    variables = [VariableDecl("v0", value="x")] + [VariableDecl(f"v{i}") for i in range(1, n + 1)]
    calls = [call(f"c{i}", f"v{i}", f"v{i + 1}") for i in range(n)]
    g = Graph()
    assert [c.id for c in g.submit(Submission(variables, calls))] == ["c0"]


def test_a_call_failing_after_one_output_keeps_that_value_and_its_readers() -> None:
    g = Graph()
    g.submit(two_outputs())
    g.submit(
        Submission(
            variables=[VariableDecl("greeting"), VariableDecl("older")],
            calls=[call("G", "n", "greeting"), call("H", "a", "older")],
        )
    )
    g.start("C")
    assert [c.id for c in g.complete_output("C", "n", "Bob")] == ["G"]
    failed = g.fail_call("C", "engine died")
    # the name was generated and handed on before the failure: it stays, and so does G
    assert {v.id for v in failed} == {"a", "older"}
    assert g.variables["n"].state is VariableState.READY and g.variables["n"].value == "Bob"
    assert g.variables["n"].error is None
    assert g.calls["G"].state is CallState.READY
    assert g.calls["H"].state is CallState.FAILED


def test_later_submissions_are_checked_against_the_variables_already_there() -> None:
    g = Graph()
    g.submit(Submission(variables=[VariableDecl("empty"), VariableDecl("given", value="x")]))
    overwrite = Submission(calls=[call("B", None, "given")])
    bad("two_producers", overwrite, "'given'", "a value given by the client", graph=g)
    assert g.variables["given"].value == "x" and g.variables["given"].producer is None
    # a variable declared earlier with no value is the client's: a call may read it
    later = Submission(variables=[VariableDecl("o")], calls=[call("A", "empty", "o")])
    assert g.submit(later) == [] and g.calls["A"].state is CallState.WAITING
