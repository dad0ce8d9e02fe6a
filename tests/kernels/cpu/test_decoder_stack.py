"""The one-call decoder stack against the layer-by-layer model it replaces, on tiny random
checkpoints (that path is itself checked against transformers in tests/engine)."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import pytest
import torch

from server.engine.loader import load_model
from server.engine.models.llama import LlamaForCausalLM
from server.kernels import CascadeConfig, build_attention_metadata
from server.kernels.cpu import decoder_stack
from server.kernels.cpu.decoder_stack import (
    DecoderStack,
    HeadTensors,
    LayerTensors,
    StackRun,
    StackShape,
)
from server.kernels.cpu.q4_linear import Q4Panels
from server.kernels.cpu.q8_linear import Q8Panels
from tests.engine.test_models import PagedRunner
from tests.tiny_models import make_tiny_model

pytestmark = pytest.mark.skipif(
    not decoder_stack.available(), reason="no C compiler for the CPU kernels"
)

# SmolLM2's head layout (9 query heads over 3 KV heads of dim 64) at two layers
SMOLLM2_SHAPED = {
    "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
    "num_key_value_heads": 3, "head_dim": 64,
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack_models")


@pytest.mark.parametrize(
    "arch,overrides",
    [("llama", {}), ("qwen2", {}), ("mistral", {}), ("llama", SMOLLM2_SHAPED)],
    ids=["llama", "qwen2-bias-tied", "mistral-3-layers", "smollm2-heads"],
)
def test_steps_match_layer_by_layer(arch: str, overrides: dict, models_dir: Path) -> None:
    """Prefill three sequences, decode them together, then add a chunk between decodes: the
    stack's logits and the KV it writes equal the layer-by-layer model's at every step."""
    path = make_tiny_model(models_dir / f"{arch}-{len(overrides)}", arch, seed=3, **overrides)
    fused, plain = load_model(path).model, load_model(path, fused_layers=False).model
    assert fused.decoder_stack is not None and plain.decoder_stack is None
    calls = _count_stack_calls(fused)
    ours, ref = PagedRunner(fused, num_blocks=96), PagedRunner(plain, num_blocks=96)
    gen = torch.Generator().manual_seed(11)
    # 300 tokens span 19 blocks: the attention kernel splits that row into chunks
    prompts = {
        i: torch.randint(0, 500, (n,), generator=gen).tolist() for i, n in enumerate([1, 37, 300])
    }
    got, want = ours.step(prompts), ref.step(prompts)
    for seq in want:
        _assert_close(got[seq], want[seq])
    for _ in range(4):
        tokens = {seq: [int(logits[-1].argmax())] for seq, logits in want.items()}
        got, want = ours.step(tokens), ref.step(tokens)
        for seq in want:
            _assert_close(got[seq], want[seq])
    # decode rows before and after a chunk: the stack gathers them for the decode kernel
    mixed = {0: [7], 1: torch.randint(0, 500, (45,), generator=gen).tolist(), 2: [9]}
    got, want = ours.step(mixed), ref.step(mixed)
    for seq in want:
        _assert_close(got[seq], want[seq])
    assert calls["n"] == 6
    for (k1, v1), (k2, v2) in zip(ours.caches, ref.caches, strict=True):
        _assert_close(k1, k2)
        _assert_close(v1, v2)


def test_steps_match_layer_by_layer_at_both_vector_widths(lanes: int, tmp_path: Path) -> None:
    """The stack's element-wise code (SiLU) is written over the machine's vectors: built over
    8 and 16 lanes, it gives the layer-by-layer model's logits and KV."""
    test_steps_match_layer_by_layer("llama", SMOLLM2_SHAPED, tmp_path)


@pytest.mark.parametrize("arch", ["llama", "qwen2"], ids=["separate-head", "tied-head"])
def test_the_head_in_the_stack_gives_the_sampled_rows_logits(arch: str, models_dir: Path) -> None:
    """The final norm and the LM head run in the stack's call for the rows that sample: their
    logits equal the model's own norm and head over every row, prefill chunks and decodes."""
    path = make_tiny_model(models_dir / f"head-{arch}", arch, seed=5)
    model = load_model(path).model
    assert model.decoder_stack is not None and model.decoder_stack.head is not None
    calls = _count_stack_calls(model)
    fused, whole = PagedRunner(model, num_blocks=96), PagedRunner(model, num_blocks=96)
    gen = torch.Generator().manual_seed(2)
    steps = [
        {i: torch.randint(0, 500, (n,), generator=gen).tolist() for i, n in enumerate([5, 40])},
        {0: [3], 1: [8]},
        {0: [4], 1: torch.randint(0, 500, (20,), generator=gen).tolist(), 2: [1, 2, 3]},
    ]
    for chunks in steps:
        got, want = fused.step_last(chunks), whole.step(chunks)
        for seq in chunks:
            _assert_close(got[seq], want[seq][-1:])
    assert calls["n"] == 2 * len(steps)


def test_a_step_stopped_between_layers_goes_on_to_the_same_logits(models_dir: Path) -> None:
    """With the stop flag set, each advance runs one more layer and returns; the step, so
    resumed layer by layer, gives the logits and KV of an uninterrupted one, bit for bit."""
    path = make_tiny_model(models_dir / "stopped", "mistral", seed=7)
    model = load_model(path).model
    layers = model.config.num_layers
    assert layers >= 3
    whole, stopped = PagedRunner(model, 96, seed=1), PagedRunner(model, 96, seed=1)
    gen = torch.Generator().manual_seed(3)
    steps = [
        {0: torch.randint(0, 500, (70,), generator=gen).tolist(), 1: [5, 6, 7]},
        {0: [3], 1: [8], 2: torch.randint(0, 500, (33,), generator=gen).tolist()},
    ]
    stop = ctypes.c_int(1)
    for chunks in steps:
        want = whole.step_last(chunks)
        ids, positions, meta = stopped._batch(chunks)
        last = [end - 1 for end in meta.query_start[1:]]
        with torch.inference_mode():
            run = model.start_logits(ids, positions, stopped.caches, meta, last)
            assert run is not None
            with pytest.raises(RuntimeError, match="layers left"):
                _ = run.logits
            advances = 1
            while not run.advance(stop):
                assert run.next_layer == advances
                advances += 1
        assert advances == layers and run.advance(stop)
        for i, seq in enumerate(chunks):
            assert torch.equal(run.logits[i : i + 1], want[seq])
    for (k1, v1), (k2, v2) in zip(stopped.caches, whole.caches, strict=True):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
    # a cleared flag does not stop it
    ids, positions, meta = stopped._batch({0: [4]})
    with torch.inference_mode():
        run = model.start_logits(ids, positions, stopped.caches, meta, [0])
        assert run is not None and run.advance(ctypes.c_int(0))


def test_the_stack_refuses_logits_it_cannot_give(tiny_llama_path: Path) -> None:
    model: LlamaForCausalLM = load_model(tiny_llama_path).model
    stack = model.decoder_stack
    assert stack is not None and stack.head is not None
    caches = PagedRunner(model).caches
    meta = build_attention_metadata([2], [2], [[0]], caches[0][0].shape[1])
    hidden, positions = torch.zeros(2, model.config.hidden_size), torch.arange(2)
    with pytest.raises(ValueError, match=r"logit rows must lie in \[0, 2\)"):
        stack.run(hidden, positions, meta, caches, [2])
    headless = DecoderStack(stack.shape, stack.layers)
    with pytest.raises(ValueError, match="built without a head"):
        headless.run(hidden, positions, meta, caches, [1])
    with pytest.raises(ValueError, match="head panels must be"):
        DecoderStack(stack.shape, stack.layers,
                     HeadTensors(stack.head.norm, stack.head.panels, stack.head.vocab + 16))


def test_a_timed_stack_computes_the_same_and_counts_every_phase(tiny_llama_path: Path) -> None:
    model: LlamaForCausalLM = load_model(tiny_llama_path).model
    plain = model.decoder_stack
    assert plain is not None and plain.head is not None
    with pytest.raises(RuntimeError, match="timed=True"):
        plain.phase_seconds()
    timed = DecoderStack(plain.shape, plain.layers, plain.head, timed=True)
    timed.phase_seconds()  # other tests' timed stacks share the counters
    steps = [{0: list(range(3, 40)), 1: list(range(7, 20))}, {0: [5], 1: [9]}]
    runs = {}
    for name, stack in (("plain", plain), ("timed", timed)):
        model.decoder_stack = stack
        runner = PagedRunner(model, num_blocks=32)
        runs[name] = [runner.step_last(chunks) for chunks in steps]
    for got, want in zip(runs["timed"], runs["plain"], strict=True):
        for seq in want:
            assert torch.equal(got[seq], want[seq])
    seconds = timed.phase_seconds()
    assert set(seconds) == set(decoder_stack.PHASES) and all(t > 0 for t in seconds.values())
    assert all(t == 0 for t in timed.phase_seconds().values())


def test_engines_sharing_the_weights_run_steps_at_once(tiny_llama_path: Path) -> None:
    """The server's engines share one model and run steps from their own threads, each with its
    own KV cache: the stack keeps nothing of a call in shared state."""
    model = load_model(tiny_llama_path).model
    prompts = [list(range(3, 40)), list(range(50, 71))]

    def run(runner: PagedRunner, prompt: list[int]) -> list[torch.Tensor]:
        out = [runner.step({0: prompt})[0][-1]]
        for _ in range(25):
            out.append(runner.step({0: [int(out[-1].argmax())]})[0][-1])
        return out

    alone = [run(PagedRunner(model, num_blocks=32, seed=i), p) for i, p in enumerate(prompts)]
    together: list[list[torch.Tensor]] = [[], []]

    def worker(i: int) -> None:
        together[i] = run(PagedRunner(model, num_blocks=32, seed=i), prompts[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert len(together[i]) == len(alone[i])
        for got, want in zip(together[i], alone[i], strict=True):
            _assert_close(got, want)


@pytest.mark.parametrize("overrides", [{}, SMOLLM2_SHAPED], ids=["llama", "smollm2-heads"])
def test_shared_prefix_steps_match_layer_by_layer(overrides: dict, models_dir: Path) -> None:
    """Forks decode over nested shared-prefix levels (levels forced by a permissive cost rule)
    beside a lone decode and a prefill chunk: the stack's logits equal the layer-by-layer
    model's without levels, at every step."""
    path = make_tiny_model(models_dir / f"levels-{len(overrides)}", "llama", seed=5, **overrides)
    fused, plain = load_model(path).model, load_model(path, fused_layers=False).model
    calls = _count_stack_calls(fused)
    forced = CascadeConfig(min_prefix_tokens=16)
    ours, ref = PagedRunner(fused, 128, cascade_config=forced), PagedRunner(plain, 128)
    gen = torch.Generator().manual_seed(4)

    def tokens(n: int) -> list[int]:
        return torch.randint(0, 500, (n,), generator=gen).tolist()

    def step(chunks: dict[int, list[int]]) -> dict[int, torch.Tensor]:
        got, want = ours.step(chunks), ref.step(chunks)
        for seq in want:
            _assert_close(got[seq], want[seq])
        return want

    # root: 64 tokens; mid = root + 32; A1-A3 fork root, B1-B2 fork mid; C stands alone
    root, mid, lone = 0, 1, 2
    step({root: tokens(64), lone: tokens(50)})
    for runner in (ours, ref):
        runner.fork(root, mid)
    step({mid: tokens(32)})
    forks = {10: root, 11: root, 12: root, 20: mid, 21: mid}
    for runner in (ours, ref):
        for child, parent in forks.items():
            runner.fork(parent, child)
    late = 3
    for i in range(4):
        chunk = {child: tokens(1) for child in forks} | {lone: tokens(1)}
        if i == 1:
            chunk[late] = tokens(40)  # a prefill between the decodes: they are gathered
        step(chunk)
        levels = {(p.start, p.end): len(p.seqs) for p in ours.last_meta.shared_prefixes}
        assert levels == {(0, 64): 5, (64, 96): 2}
    assert calls["n"] == 6


def test_cpu_sdpa_backend_keeps_its_own_path(tiny_llama_path: Path) -> None:
    """The PyTorch-only backend is chosen for what it runs: decode steps stay on it."""
    model = load_model(tiny_llama_path).model
    assert not model._runs_on_decoder_stack(
        build_attention_metadata([1], [1], [[0]], 16, backend="cpu-sdpa")
    )
    assert model._runs_on_decoder_stack(build_attention_metadata([1], [1], [[0]], 16))


def test_weight_slots_drop_the_stack_and_reloading_builds_it(tiny_llama_path: Path) -> None:
    """weight_slots() unpacks the layers the stack points into, so it drops the stack;
    load_weights packs again and builds a new one."""
    model = load_model(tiny_llama_path).model
    state = {name: view.detach().clone() for name, view in model.weight_slots().items()}
    assert model.decoder_stack is None
    model.load_weights(state)
    assert model.decoder_stack is not None


def test_bad_tensors_are_refused_with_their_names(tiny_llama_path: Path) -> None:
    model: LlamaForCausalLM = load_model(tiny_llama_path).model
    stack = model.decoder_stack
    assert stack is not None
    good = stack.layers[0]
    with pytest.raises(ValueError, match="layer 0 o must be"):
        DecoderStack(stack.shape, [LayerTensors(**{**_fields(good), "o": good.qkv})])
    with pytest.raises(ValueError, match="layer 0 qkv_bias must be"):
        DecoderStack(stack.shape, [LayerTensors(**{**_fields(good), "qkv_bias": torch.ones(3)})])
    k, n = good.o.shape[1], stack.shape.hidden  # 8-bit panels whose scales cover 8 inputs each
    eights = Q8Panels(torch.zeros(good.o.shape[0], k, 16, dtype=torch.int8),
                      torch.zeros(good.o.shape[0], k // 8, 16), n)  # fmt: skip
    with pytest.raises(ValueError, match="layer 0 o_q8 has blocks of 8 inputs"):
        DecoderStack(stack.shape, [LayerTensors(**{**_fields(good), "o_q8": eights})])
    # a split o (4-bit outputs, then 8-bit) whose parts do not add up to its outputs
    fours = Q4Panels(torch.zeros(1, k, 8, dtype=torch.uint8), torch.zeros(1, k // 32, 16),
                     torch.zeros(1, k // 32, 16), 16)  # fmt: skip
    sixteens = Q8Panels(torch.zeros(good.o.shape[0], k, 16, dtype=torch.int8),
                        torch.zeros(good.o.shape[0], k // 16, 16), n)  # fmt: skip
    with pytest.raises(ValueError, match="layer 0 o is split"):
        DecoderStack(stack.shape, [LayerTensors(**{**_fields(good), "o_q4": fours,
                                                   "o_q8": sixteens})])  # fmt: skip
    c = model.config
    with pytest.raises(ValueError, match="do not take 5 query heads"):
        StackShape(c.hidden_size, 5, 2, c.head_dim, c.intermediate_size, 1e-5,
                   model.rope.cos, model.rope.sin)
    with pytest.raises(ValueError, match="cos must be"):
        StackShape(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size,
                   1e-5, model.rope.cos.double(), model.rope.sin)
    caches = PagedRunner(model).caches
    far = torch.tensor([model.rope.cos.shape[0]])
    with pytest.raises(ValueError, match="positions must be below"):
        block = caches[0][0].shape[1]
        stack.run(torch.zeros(1, c.hidden_size), far,
                  build_attention_metadata([1], [1], [[0]], block), caches)
    # the new token's slot is fine, an earlier block of the sequence lies past the pool
    outside = [[caches[0][0].shape[0], 0]]
    with pytest.raises(ValueError, match="block ids must lie in"):
        stack.run(torch.zeros(1, c.hidden_size), torch.tensor([block]),
                  build_attention_metadata([1], [block + 1], outside, block), caches)
    with pytest.raises(ValueError, match="hidden must be"):
        stack.run(torch.zeros(1, c.hidden_size + 1), torch.zeros(1, dtype=torch.long),
                  build_attention_metadata([1], [1], [[0]], 16), PagedRunner(model).caches)


def _count_stack_calls(model: LlamaForCausalLM) -> dict[str, int]:
    """Counts the stack's real runs, which all start with `start` (the wrapped method still
    runs)."""
    stack = model.decoder_stack
    assert stack is not None
    calls = {"n": 0}
    start = stack.start

    def counted(*args: object, **kwargs: object) -> StackRun:
        calls["n"] += 1
        return start(*args, **kwargs)

    stack.start = counted  # type: ignore[method-assign]
    return calls


def _fields(layer: LayerTensors) -> dict[str, torch.Tensor | None]:
    return {name: getattr(layer, name) for name in LayerTensors.__slots__}


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Within the engine's fidelity bar (1e-4 against transformers): float32 sums taken in
    another order drift by ~1e-5 relative through the SmolLM2-shaped layers."""
    scale = want.abs().max().item() or 1.0
    assert (got - want).abs().max().item() / scale < 1e-4
