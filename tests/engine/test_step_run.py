"""StepRun without a model: a compute function runs whole on the first advance."""

import pytest
import torch

from server.engine.step_run import StepRun


def test_a_compute_run_is_done_after_one_advance_and_keeps_its_logits() -> None:
    calls = []
    run = StepRun(compute=lambda: calls.append(1) or torch.ones(2, 3), cascade_saved_tokens=7)
    assert not run.pausable and not run.done
    with pytest.raises(RuntimeError, match="not finished"):
        _ = run.logits
    assert run.advance() and run.advance() and calls == [1]
    assert torch.equal(run.logits, torch.ones(2, 3)) and run.cascade_saved_tokens == 7


def test_a_run_has_exactly_one_way_to_run() -> None:
    with pytest.raises(ValueError, match="either"):
        StepRun()
