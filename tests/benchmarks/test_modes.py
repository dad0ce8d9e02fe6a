from benchmarks.common.modes import (
    ABLATIONS,
    THROUGHPUT_CAPS,
    ablation_by_name,
    ablation_mode,
    parse_help_flags,
)
from benchmarks.common.workload import load_workload
from benchmarks.run import select_modes

HELP = """usage: parrot-server [-h] [--model MODEL] [--no-cascade]
  --disable-prefix-sharing
                        do not fork calls
  --max-num-seqs MAX_NUM_SEQS, --foo=3
"""


def test_parse_help_flags_finds_long_options() -> None:
    flags = parse_help_flags(HELP)
    assert {"--model", "--no-cascade", "--disable-prefix-sharing", "--max-num-seqs", "--foo"} <= flags
    assert "-h" not in flags


def test_ablation_uses_the_first_accepted_spelling_and_parrot_caps() -> None:
    mode = ablation_mode(ablation_by_name("prefix_sharing"), parse_help_flags(HELP))
    assert mode is not None
    assert mode.flags == (*THROUGHPUT_CAPS, "--disable-prefix-sharing")
    assert mode.api == "parrot" and mode.ablation == "prefix_sharing"
    assert ablation_mode(ablation_by_name("task_groups"), parse_help_flags(HELP)) is None


def test_select_modes_skips_unknown_flags_with_a_note() -> None:
    workload = load_workload("shared_prompt")
    modes, skipped = select_modes(workload, "relevant", parse_help_flags(HELP))
    names = [m.name for m in modes]
    assert names[:4] == ["parrot", "baseline_throughput", "baseline_no_cache", "baseline_latency"]
    assert "parrot_no_prefix_sharing" in names and "parrot_no_cascade" in names
    assert any("app_scheduler skipped" in note for note in skipped)
    accepted = frozenset(f.split("=")[0] for a in ABLATIONS for f in a.flags)
    every, _ = select_modes(workload, "all", accepted)
    assert len(every) == 4 + len(ABLATIONS)
    # a flag with a value is matched by its name and passed with its value
    chunks = next(m for m in every if m.ablation == "background_chunks")
    assert chunks.flags[-1] == "--background-prefill-chunk=0"
    assert len(select_modes(workload, "none", frozenset())[0]) == 4
