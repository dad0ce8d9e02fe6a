"""Server-side scheduling alone: priorities, ordering policies, admission, placement."""

import pytest

from parrot_bridge.template import parse_template
from server.analysis import Objective, boundaries
from server.graph import Call, Submission, VariableDecl
from server.metrics import Metrics
from server.prefix_contexts import PrefixContexts
from server.prefix_store import PrefixStoreConfig
from server.scheduling import (
    LATENCY_PRIORITY,
    NORMAL_PRIORITY,
    THROUGHPUT_PRIORITY,
    AppPolicy,
    CallScheduler,
    EngineLoad,
    FifoPolicy,
    WorkItem,
    call_priority,
    choose_engine,
)
from server.session_plan import PlanSwitches, SessionPlan
from tests.server.graphs import chain, decl, map_reduce


def test_priorities_follow_objectives_and_task_groups() -> None:
    assert call_priority(Objective.LATENCY, False) == LATENCY_PRIORITY
    assert call_priority(Objective.LATENCY, True) == LATENCY_PRIORITY
    assert call_priority(Objective.NONE, False) == NORMAL_PRIORITY
    assert call_priority(Objective.THROUGHPUT, True) == THROUGHPUT_PRIORITY
    assert LATENCY_PRIORITY < NORMAL_PRIORITY < THROUGHPUT_PRIORITY


def test_a_session_plan_follows_the_graph_and_the_switches() -> None:
    g = map_reduce(2, "latency")
    plan = SessionPlan(g, PlanSwitches())
    assert plan.priority("reduce") == LATENCY_PRIORITY
    assert plan.priority("map0") == LATENCY_PRIORITY and plan.group("map0") is not None
    g.await_variable("final", "throughput")  # a changed criterion is seen at once
    assert plan.priority("map0") == THROUGHPUT_PRIORITY
    no_groups = SessionPlan(map_reduce(2), PlanSwitches(task_groups=False))
    assert no_groups.group("map0") is None
    blind = SessionPlan(chain(2), PlanSwitches(objective_deduction=False))
    assert blind.objective("step1") is Objective.NONE
    assert blind.priority("step1") == NORMAL_PRIORITY
    flat = SessionPlan(chain(2), PlanSwitches(app_scheduling=False))
    assert flat.objective("step1") is Objective.LATENCY
    assert flat.priority("step1") == NORMAL_PRIORITY


def test_a_session_plan_takes_in_new_awaits_without_analysing_the_graph_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client reading N outputs one by one awaits each; analysing the whole graph again for
    # every await (while calls complete and ask for priorities) was quadratic.
    from server import session_plan

    runs = {"objectives": 0, "groups": 0}
    for name, key in (("deduce_objectives", "objectives"), ("find_task_groups", "groups")):
        real = getattr(session_plan, name)

        def counting(graph, real=real, key=key):  # type: ignore[no-untyped-def]
            runs[key] += 1
            return real(graph)

        monkeypatch.setattr(session_plan, name, counting)
    n = 200
    g = map_reduce(n, "throughput")
    plan = SessionPlan(g, PlanSwitches())
    assert plan.priority("map0") == THROUGHPUT_PRIORITY
    for i in range(n):
        g.await_variable(f"sum{i}", "latency")
        assert plan.priority(f"map{i}") == LATENCY_PRIORITY
        assert plan.group(f"map{i}") is not None
    assert plan.priority("reduce") == THROUGHPUT_PRIORITY
    assert runs == {"objectives": 1, "groups": 1}
    g.await_variable("sum0", "throughput")  # a changed criterion: analysed again
    assert plan.priority("map0") == THROUGHPUT_PRIORITY and runs["objectives"] == 2


def test_a_session_plan_sees_calls_submitted_later() -> None:
    g = chain(2)
    plan = SessionPlan(g, PlanSwitches())
    assert plan.priority("step1") == LATENCY_PRIORITY
    # a map stage and its reduce arrive in a second submission, awaited for throughput
    maps = [decl(f"m{i}", "Sum: {{input:c}} {{output:s}}", {"c": "s1"}, {"s": f"p{i}"})
            for i in range(2)]  # fmt: skip
    reduce = decl("r", "{{input:a}} {{input:b}} All: {{output:f}}", {"a": "p0", "b": "p1"},
                  {"f": "all"})  # fmt: skip
    g.submit(
        Submission(
            variables=[VariableDecl("p0"), VariableDecl("p1"), VariableDecl("all")],
            calls=[*maps, reduce],
            awaits={"all": "throughput"},
        )
    )
    group = plan.group("m0")
    assert group is not None and group.members == ("m0", "m1")
    assert plan.priority("m1") == THROUGHPUT_PRIORITY
    assert plan.priority("step1") == LATENCY_PRIORITY  # still: latency wins


def item(name: str, priority: int, group: str | None = None, cost: int = 10) -> WorkItem[str]:
    return WorkItem(name, priority, cost, group)


def names(admissions: list) -> list[list[str]]:
    return [[i.payload for i in a.items] for a in admissions]


def test_app_policy_puts_latency_work_first_fifo_keeps_arrival_order() -> None:
    for policy, expected in [(AppPolicy(), ["chat", "bg", "bulk"]),
                             (FifoPolicy(), ["bulk", "bg", "chat"])]:  # fmt: skip
        s: CallScheduler[str] = CallScheduler(policy, max_calls_per_engine=8)
        for it in [item("bulk", 2), item("bg", 1), item("chat", 0)]:
            s.add(it)
        got = s.admit([EngineLoad(0)], lambda unit: {})
        assert [n for a in names(got) for n in a] == expected
        assert len(s) == 0


def test_a_task_group_is_admitted_together_onto_one_engine() -> None:
    s: CallScheduler[str] = CallScheduler(AppPolicy(), max_calls_per_engine=2)
    s.add(item("m0", 1, "g"))
    s.add(item("lone", 1))
    s.add(item("m1", 1, "g"))
    s.add(item("m2", 1, "g"))
    loads = [EngineLoad(0), EngineLoad(1)]
    got = s.admit(loads, lambda unit: {})
    # the group goes whole (past the per-engine cap), the lone call to the other engine
    assert names(got) == [["m0", "m1", "m2"], ["lone"]]
    assert [a.engine for a in got] == [0, 1]
    assert (loads[0].running_calls, loads[0].queued_tokens) == (3, 30)


def test_a_queued_item_awaited_later_moves_up_with_its_unit() -> None:
    # A call queued as bulk work whose output the client then awaits for latency kept its
    # place behind the rest of the bulk work.
    s: CallScheduler[str] = CallScheduler(AppPolicy(), max_calls_per_engine=8)
    bulk = [item(f"bulk{i}", THROUGHPUT_PRIORITY) for i in range(3)]
    group = [item(f"m{i}", THROUGHPUT_PRIORITY, "g") for i in range(2)]
    for it in [*bulk, *group]:
        s.add(it)
    s.raise_priority(bulk[2], LATENCY_PRIORITY)
    s.raise_priority(group[1], NORMAL_PRIORITY)
    s.raise_priority(bulk[0], THROUGHPUT_PRIORITY + 1)  # less urgent: no change
    got = s.admit([EngineLoad(0)], lambda unit: {})
    assert names(got) == [["bulk2"], ["m0", "m1"], ["bulk0"], ["bulk1"]]
    assert bulk[2].priority == LATENCY_PRIORITY and bulk[0].priority == THROUGHPUT_PRIORITY
    with pytest.raises(ValueError, match="not queued"):
        s.raise_priority(bulk[1], LATENCY_PRIORITY)


def test_a_more_urgent_member_joining_a_queued_group_moves_the_group_up() -> None:
    # a group's members are queued one by one as they become ready; one the client awaits
    # for latency pulls its whole unit ahead of work that was ahead of the group
    s: CallScheduler[str] = CallScheduler(AppPolicy(), max_calls_per_engine=8)
    s.add(item("m0", THROUGHPUT_PRIORITY, "g"))
    s.add(item("other", NORMAL_PRIORITY))
    s.add(item("m1", LATENCY_PRIORITY, "g"))
    got = s.admit([EngineLoad(0)], lambda unit: {})
    assert names(got) == [["m0", "m1"], ["other"]]


def test_admission_stops_at_the_first_unit_no_engine_has_room_for() -> None:
    s: CallScheduler[str] = CallScheduler(AppPolicy(), max_calls_per_engine=1)
    s.add(item("bulk", 2))
    s.add(item("chat", 0))
    busy = [EngineLoad(0, running_calls=1)]
    assert s.admit(busy, lambda unit: {}) == [] and len(s) == 2
    got = s.admit([EngineLoad(0)], lambda unit: {})
    assert names(got) == [["chat"]] and len(s) == 1  # bulk waits for the next free slot
    assert s.remove_if(lambda p: p == "bulk")[0].payload == "bulk" and len(s) == 0


def test_placement_prefers_the_prefix_holder_then_the_least_loaded() -> None:
    loads = [EngineLoad(0, 3, 900), EngineLoad(1, 1, 100), EngineLoad(2, 1, 50)]
    assert choose_engine(loads, {}, max_calls=8) == 2
    assert choose_engine(loads, {0: 300}, max_calls=8) == 0
    assert choose_engine(loads, {0: 300, 1: 500}, max_calls=8) == 1
    assert choose_engine(loads, {0: 300, 1: 300}, max_calls=8) == 1  # a tie: less loaded
    assert choose_engine(loads, {0: 300}, max_calls=3) == 2  # the holder is full
    assert choose_engine(loads, {}, max_calls=1) is None


def test_a_full_prefix_holder_leaves_the_call_to_an_engine_holding_less_of_it() -> None:
    # Affinity named only the engines holding the prompt's deepest stored boundary: with those
    # full, the call went to the least loaded engine, past one holding its system prompt.
    call = Call("c", parse_template("System.\n{{input:d}}\nQ: {{input:q}}{{output:o}}"),
                {"d": "d", "q": "q"}, {"o": "o"})  # fmt: skip
    bounds = boundaries(call, {"d": "a long document", "q": "why?"})
    prefixes = PrefixContexts(None, PrefixStoreConfig(), Metrics())  # type: ignore[arg-type]
    prefixes.store.put(bounds[0].key, 1, None, 3)  # the system prompt
    prefixes.store.put(bounds[2].key, 0, None, 9)  # the system prompt and the document
    prefixes.store.put(bounds[0].key, 0, None, 3)
    prefixes.store.put("another prompt", 2, None, 50)
    affinity = prefixes.affinity(bounds)
    assert affinity == {0: 9, 1: 3}  # each holder, by its deepest boundary
    loads = [EngineLoad(0, 2, 100), EngineLoad(1, 1, 80), EngineLoad(2, 0, 0)]
    assert choose_engine(loads, affinity, max_calls=4) == 0  # the deepest holder first
    assert choose_engine(loads, affinity, max_calls=2) == 1  # it is full: the next holder
    assert prefixes.affinity(bounds[:1]) == {0: 3, 1: 3} and prefixes.affinity([]) == {}


def test_the_scheduler_asks_for_affinity_per_unit() -> None:
    s: CallScheduler[str] = CallScheduler(AppPolicy(), max_calls_per_engine=4)
    s.add(item("a", 1))
    s.add(item("b", 1))
    got = s.admit(
        [EngineLoad(0), EngineLoad(1)], lambda unit: {1: 64} if unit[0].payload == "b" else {}
    )
    assert {a.items[0].payload: a.engine for a in got} == {"a": 0, "b": 1}
    with pytest.raises(ValueError, match="max_calls_per_engine"):
        CallScheduler(AppPolicy(), max_calls_per_engine=0)


class CountingPolicy(AppPolicy):
    def __init__(self) -> None:
        self.calls = 0

    def key(self, priority: int, arrival: int) -> tuple[int, ...]:
        self.calls += 1
        return super().key(priority, arrival)


def test_admission_does_not_rerank_the_whole_queue_each_time() -> None:
    # The executor admits whenever a call ends; with hundreds of calls queued behind full
    # engines, ranking the whole queue on every admission made the server quadratic.
    policy = CountingPolicy()
    s: CallScheduler[str] = CallScheduler(policy, max_calls_per_engine=1)
    for i in range(300):
        s.add(item(f"c{i}", i % 3, group=f"g{i % 7}" if i % 2 else None))
    ranked_on_add = policy.calls
    full = [EngineLoad(0, running_calls=1)]
    for _ in range(300):
        assert s.admit(full, lambda unit: {}) == []
    admitted = []
    for _ in range(300):
        admitted += names(s.admit([EngineLoad(0)], lambda unit: {}))
    assert len(s) == 0 and sum(map(len, admitted)) == 300
    assert [unit[0] for unit in admitted[:3]] == ["c0", "c3", "c6"]  # priority 0, in arrival
    assert policy.calls - ranked_on_add <= 300  # not 300 per admission
