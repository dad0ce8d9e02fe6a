"""A step run layer by layer from Python, able to stop between two layers."""

from __future__ import annotations

import ctypes
from collections import deque
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from server.kernels import AttentionMetadata

if TYPE_CHECKING:
    from server.engine.models.llama import KVCache, LlamaForCausalLM


class LayerRun:
    """A step on the path without a decoder stack (GPU, the cpu-sdpa backend, unpacked
    weights), run like `StackRun`: `advance(stop)` runs the layers left, or returns once
    another thread has set `stop`, after at least one more layer; the next `advance` goes on.

    On a GPU a layer's kernels are queued, not finished, when `advance` looks at the flag: a
    pause stops the queueing, and the work already queued runs first. So that this is little,
    a step that may pause queues at most `QUEUE_AHEAD` layers ahead of the GPU.
    """

    QUEUE_AHEAD = 2  # enough to keep the GPU fed between two launches of a layer

    def __init__(
        self,
        model: LlamaForCausalLM,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
        rows: list[int] | None = None,
    ) -> None:
        if len(kv_caches) != len(model.layers):
            raise ValueError(f"expected {len(model.layers)} layer KV caches, got {len(kv_caches)}")
        self._model = model
        self._hidden = F.embedding(input_ids, model.embed_tokens)
        self._cos, self._sin = model.rope.lookup(positions)
        self._kv_caches = kv_caches
        self._meta = meta
        self._rows = rows
        self._normed: torch.Tensor | None = None
        self._queued: deque[torch.cuda.Event] = deque()  # one per layer the GPU may not have run
        self.next_layer = 0

    @property
    def done(self) -> bool:
        return self.next_layer == len(self._model.layers)

    def advance(self, stop: ctypes.c_int | None = None) -> bool:
        """Run the layers left, stopping early as `StackRun.advance` does. True when done."""
        first, layers = self.next_layer, self._model.layers
        while self.next_layer < len(layers):
            if stop is not None and stop.value and self.next_layer > first:
                return False
            k_cache, v_cache = self._kv_caches[self.next_layer]
            layer = layers[self.next_layer]
            self._hidden = layer(self._hidden, self._cos, self._sin, k_cache, v_cache, self._meta)
            self.next_layer += 1
            if stop is not None and self._hidden.is_cuda:
                self._bound_queue()
        return True

    def _bound_queue(self) -> None:
        """Wait until the GPU is at most `QUEUE_AHEAD` layers behind what was queued."""
        event = torch.cuda.Event()
        event.record()
        self._queued.append(event)
        while len(self._queued) > self.QUEUE_AHEAD:
            self._queued.popleft().synchronize()

    @property
    def hidden(self) -> torch.Tensor:
        """The final-normed hidden states [T, H]; only once `done`."""
        self._check_done()
        if self._normed is None:
            self._normed = self._model.norm(self._hidden)
        return self._normed

    @property
    def logits(self) -> torch.Tensor | None:
        """Float32 logits [len(rows), vocab] of the rows asked for (None without rows); only
        once `done`."""
        self._check_done()
        if not self._rows:
            return None
        hidden = self.hidden
        picked = hidden.index_select(0, torch.tensor(self._rows, device=hidden.device))
        return self._model.compute_logits(picked).float()

    def _check_done(self) -> None:
        if not self.done:
            raise RuntimeError("layer run: the step has layers left to run")
