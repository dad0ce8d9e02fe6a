"""benchmarks.ab: settings as Parrot modes, latency per app, and the side-by-side table."""

from benchmarks.ab import format_table, latency_by_app, setting_mode
from benchmarks.common.graph import JobResult
from benchmarks.common.modes import PARROT


def test_a_setting_adds_its_flags_to_parrots() -> None:
    mode = setting_mode("--latency-other-decode-rows=0,--background-prefill-chunk=64")
    assert mode.flags == (*PARROT.flags, "--latency-other-decode-rows=0",
                          "--background-prefill-chunk=64")  # fmt: skip
    assert mode.api == "parrot" and mode.name.startswith("parrot[")
    assert setting_mode("").flags == PARROT.flags


def test_latency_by_app_and_the_table() -> None:
    jobs = [JobResult("c0", "chat", 0, 1, {}), JobResult("c1", "chat", 1, 4, {}),
            JobResult("mr", "map_reduce", 0, 5, {})]  # fmt: skip
    assert latency_by_app(jobs) == {"chat": 2.0, "map_reduce": 5.0}
    rounds = [{"a": {"chat": 2.0}}, {"a": {"chat": 4.0}}]
    assert format_table(rounds, ["a"]).endswith("mean 3.000 s")
