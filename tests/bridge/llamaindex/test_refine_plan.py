"""The refine loop's simulation (pure): plans, and checks with the answers the server gave."""

from __future__ import annotations

from parrot_bridge.llamaindex.refine_plan import RefineStep, simulate_refine


def packer(room: int):
    """A chunk fits when chunk + answer have at most `room` characters; otherwise it is cut
    in halves (as a text splitter would cut it to fit)."""

    def repack(chunk: str, answer: str | None) -> list[str]:
        if len(chunk) + len(answer or "") <= room or len(chunk) < 2:
            return [chunk.strip()]
        half = len(chunk) // 2
        return [chunk[:half], chunk[half:]]

    return repack


def test_plan_is_a_chain_reading_the_previous_step() -> None:
    steps, final = simulate_refine(["a", "b ", "c"], packer(100), None)
    assert steps == [RefineStep("qa", "a", None), RefineStep("refine", "b", 0),
                     RefineStep("refine", "c", 1)]  # fmt: skip
    assert final is None  # answers unknown
    same, final = simulate_refine(["a", "b ", "c"], packer(100), None, ["x", "y", "z"])
    assert same == steps and final == "z"


def test_a_start_answer_makes_every_step_a_refine() -> None:
    steps, _ = simulate_refine(["a", "b"], packer(100), "before")
    assert steps == [RefineStep("refine", "a", -1), RefineStep("refine", "b", 0)]


def test_empty_answers_keep_the_previous_one_unless_streaming() -> None:
    planned, _ = simulate_refine(["a", "b", "c"], packer(100), None)
    actual, final = simulate_refine(["a", "b", "c"], packer(100), None, ["x", "", "z"])
    assert actual[2] == RefineStep("refine", "c", 0) and actual != planned
    assert final == "z"
    streamed, _ = simulate_refine(["a", "b", "c"], packer(100), None, ["x", "", "z"], True)
    assert streamed == planned
    _, final = simulate_refine(["a"], packer(100), None, [""])
    assert final is None  # the stock loop answers "Empty Response"


def test_a_long_answer_splits_the_next_chunk_in_stock_order() -> None:
    planned, _ = simulate_refine(["a", "abcdef"], packer(8), None)
    assert planned == [RefineStep("qa", "a", None), RefineStep("refine", "abcdef", 0)]
    actual, _ = simulate_refine(["a", "abcdef"], packer(8), None, ["xyz", "p", "q"])
    # extendleft reverses the halves, as the stock loop does
    assert actual == [RefineStep("qa", "a", None), RefineStep("refine", "def", 0),
                      RefineStep("refine", "abc", 1)]  # fmt: skip
    assert actual != planned
