"""benchmarks.triton_sweep's search and summary, on a made-up cost landscape (the timing itself
needs a GPU and runs in benchmarks/gpu_check's device sessions)."""

from __future__ import annotations

import pytest

from benchmarks import triton_sweep
from benchmarks.triton_sweep import Trial, descend, summarize
from server.kernels.triton_config import TritonConfig

AXES = {"block_n": (32, 64, 128), "num_warps": (2, 4, 8), "min_chunk": (128, 256, 512)}
BLOCK_N_COST = {32: 3.0, 64: 2.0, 128: 1.0}
WARPS_COST = {2: 2.0, 4: 1.0, 8: 0.0}
CHUNK_COST = {128: 0.0, 256: 1.0, 512: 2.0}


def landscape(measured: list[dict[str, int | None]]):
    """Cascade time adds one cost per axis; 8 warps would be fastest but computes wrong
    results; 32-key tiles give the fastest per-sequence time."""

    def measure(config: dict[str, int | None]) -> Trial:
        measured.append(config)
        cascade = (
            BLOCK_N_COST[config["block_n"]]
            + WARPS_COST[config["num_warps"]]
            + CHUNK_COST[config["min_chunk"]]
        )
        per_seq = 10.0 if config["block_n"] == 32 else 20.0
        trial = Trial(config, per_seq_ms=per_seq, cascade_ms=cascade)
        if config["num_warps"] == 8:
            trial.failure = "error 1.0e-01 over 1e-02"
        return trial

    return measure


def test_descent_takes_the_fastest_correct_value_of_each_axis_and_measures_each_config_once():
    measured: list[dict[str, int | None]] = []
    trials = descend(landscape(measured), AXES, passes=3, budget_s=60)
    keys = [tuple(sorted(c.items())) for c in measured]
    assert len(keys) == len(set(keys)) == len(trials)
    assert trials[0].config == {f.name: getattr(TritonConfig(), f.name) for f in
                                TritonConfig.__dataclass_fields__.values()}  # fmt: skip
    best = min((t for t in trials if t.ok), key=lambda t: t.cascade_ms or 0.0)
    assert (best.config["block_n"], best.config["num_warps"], best.config["min_chunk"]) == (
        128,
        4,
        128,
    )
    assert best.cascade_ms == 2.0
    # wrong configs were tried (they are the fastest) but only as probes off a correct base:
    # the search never moved onto one
    wrong = [t.config for t in trials if not t.ok]
    assert wrong
    ok = [t.config for t in trials if t.ok]
    for config in wrong:
        assert any({**config, "num_warps": base["num_warps"]} == base for base in ok)


def test_configs_the_config_refuses_are_not_measured():
    measured: list[dict[str, int | None]] = []
    descend(landscape(measured), {"block_n": (64, 128), "min_chunk": (64, 512)}, 2, 60)
    for config in measured:
        assert config["min_chunk"] % config["block_n"] == 0


def test_a_spent_budget_measures_only_the_default():
    measured: list[dict[str, int | None]] = []
    trials = descend(landscape(measured), AXES, passes=2, budget_s=0)
    assert len(trials) == len(measured) == 1


def test_summary_divides_the_fastest_per_seq_of_any_config_by_the_fastest_cascade():
    measured: list[dict[str, int | None]] = []
    summary = summarize(descend(landscape(measured), AXES, passes=2, budget_s=60))
    # the fastest cascade config's own ratio is 20 / 2 = 10x; a 32-key config ran per-seq in 10
    assert summary["best_per_seq_over_best_cascade"] == pytest.approx(10.0 / 2.0)
    assert summary["fastest_per_seq"]["per_seq_ms"] == 10.0
    assert summary["fastest_cascade"]["failure"] is None


def test_summary_of_nothing_correct_says_so():
    assert summarize([Trial({}, failure="RuntimeError: out of resources")])["best"] is None


def test_num_stages_is_checked():
    assert TritonConfig(num_stages=2).num_stages == 2
    with pytest.raises(ValueError, match="num_stages"):
        TritonConfig(num_stages=0)


def test_the_sweep_refuses_to_run_without_a_gpu(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(triton_sweep.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        triton_sweep.main(["--size", "4x512"])
