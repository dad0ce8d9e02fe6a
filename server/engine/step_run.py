"""One engine step's model run, started but not necessarily finished."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch

from server.engine.context import Job
from server.engine.models.layer_run import LayerRun
from server.engine.outputs import TokenLogprob
from server.kernels.cpu.decoder_stack import StackRun


class StepRun:
    """The model run of one scheduled batch. `advance` runs it; given `layers`, it can stop
    between two layers when a flag is set (`pausable`) and go on from there on the next
    `advance`, so that a latency-critical step can run in between.

    Either `layers` (the step as a `StackRun` or `LayerRun`, its logits those of the sampled
    rows) or `compute` (the whole run at once, returning those logits) is given.
    """

    def __init__(
        self,
        layers: StackRun | LayerRun | None = None,
        compute: Callable[[], torch.Tensor | None] | None = None,
        cascade_saved_tokens: int = 0,
    ) -> None:
        if (layers is None) == (compute is None):
            raise ValueError("a step run has either a layer-wise run or a compute function")
        self._layers = layers
        self._compute = compute
        self._logits: torch.Tensor | None = None
        self._done = False
        # what the step's shared-prefix levels saved (see EngineStats.cascade_saved_tokens)
        self.cascade_saved_tokens = cascade_saved_tokens
        # the step's prompt scores: (job, the next entries of its prompt_logprobs)
        self.scored_prompts: list[tuple[Job, list[TokenLogprob]]] = []

    @property
    def pausable(self) -> bool:
        return self._layers is not None

    @property
    def done(self) -> bool:
        return self._done

    @property
    def logits(self) -> torch.Tensor | None:
        """Logits [num_sampled, vocab] (float32) of the rows that sample; None if none do."""
        if not self._done:
            raise RuntimeError("the step has not finished")
        return self._logits

    @torch.inference_mode()
    def advance(self, stop: ctypes.c_int | None = None) -> bool:
        """Run what is left; with `stop` set (non-zero) by another thread, a pausable run
        returns at the next layer boundary. True once the step is done."""
        if self._done:
            return True
        if self._layers is not None:
            if not self._layers.advance(stop):
                return False
            self._logits = self._layers.logits
        else:
            assert self._compute is not None
            self._logits = self._compute()
        self._done = True
        return True
