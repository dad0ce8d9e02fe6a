import pytest

from benchmarks.common.graph import Call, Job, JobResult, Ref, Scenario


def _call(name: str = "a", **inputs: str | Ref) -> Call:
    markers = "".join(f"[{{{{input:{k}}}}}]" for k in inputs)
    return Call(name, f"Q {markers} A: {{{{output:out}}}}", dict(inputs), 8)


def test_render_fills_inputs_and_stops_before_the_output() -> None:
    call = _call(x="one", y="two")
    assert call.render({"x": "1", "y": "2"}) == "Q [1][2] A: "


def test_call_rejects_templates_that_do_not_end_with_one_output() -> None:
    with pytest.raises(ValueError, match="must end with its one output"):
        Call("a", "{{output:x}} trailing text", {}, 4)
    with pytest.raises(ValueError, match="must end with its one output"):
        Call("a", "{{output:x}} {{output:y}}", {}, 4)


def test_call_rejects_inputs_that_do_not_match_the_template() -> None:
    with pytest.raises(ValueError, match=r"template inputs \['x'\] != given \['y'\]"):
        Call("a", "{{input:x}} {{output:o}}", {"y": "v"}, 4)
    with pytest.raises(ValueError, match="max_tokens"):
        Call("a", "{{output:o}}", {}, 0)


def test_job_checks_references_and_awaited_calls() -> None:
    first = _call("a")
    second = _call("b", x=Ref("a"))
    job = Job("j", "app", (first, second), {"b": "latency"})
    assert job.output_tokens == 16
    with pytest.raises(ValueError, match="refers to 'a', which is not an earlier call"):
        Job("j", "app", (second, first), {"b": "latency"})
    with pytest.raises(ValueError, match="two calls named 'a'"):
        Job("j", "app", (first, first), {"a": "latency"})
    with pytest.raises(ValueError, match="awaited calls"):
        Job("j", "app", (first,), {"zzz": "latency"})
    with pytest.raises(ValueError, match="no jobs"):
        Scenario("s", ())


def test_job_result_latency() -> None:
    assert JobResult("j", "app", 1.5, 4.0, {}).latency_s == 2.5
