"""benchmarks/engine.py: every arm warmed up alike, and none gets measured prompts for free."""

import random
from pathlib import Path

import pytest

from benchmarks.engine import DATA, measure, warm_up_work


class _BytesTokenizer:
    def encode(self, text: str) -> list[int]:
        return list(text.encode())


def test_warm_up_requests_share_no_cache_block_with_the_measured_ones() -> None:
    if not DATA.is_dir():
        pytest.skip("the shared arXiv data is not there")
    from benchmarks.engine import make_workload

    tok = _BytesTokenizer()
    work = make_workload(tok, 32)
    warm = warm_up_work(tok, work, block=16)
    assert len(warm) == 2
    starts = {tuple(p[:16]) for p, _ in work}
    assert all(tuple(p[:16]) not in starts for p, _ in warm)
    assert all(64 <= len(p) <= 1024 and 32 <= o <= 128 for p, o in warm)


def _work(seed: int, n: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(3, 250) for _ in range(rng.randint(40, 90))], 4) for _ in range(n)]


def test_measured_run_prefills_every_prompt_and_transformers_is_warmed_up(
    tiny_llama_path: Path,
) -> None:
    from transformers import AutoModelForCausalLM

    from server.engine import LLMEngine

    work, warm = _work(0, 5), _work(1, 2)
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_path).eval()
    calls: list[int] = []
    generate = hf.generate

    def counting(ids, *args, **kwargs):
        calls.append(ids.shape[0])
        return generate(ids, *args, **kwargs)

    hf.generate = counting
    drafting = LLMEngine.from_pretrained(str(tiny_llama_path), ngram_speculation=4)
    walls = measure(
        LLMEngine.from_pretrained(str(tiny_llama_path)), hf, work, warm, pad_id=0, drafting=drafting
    )
    assert walls["parrot_cached_prompt_tokens"] == walls["parrot_ngram_cached_prompt_tokens"] == 0
    assert walls["parrot_ngram"] > 0 and walls["ngram_steps"] > 0
    # transformers ran the warm-up both ways (2 one by one, one padded batch) before the
    # measured calls (5 one by one, one padded batch)
    assert calls == [1, 1, 2, 1, 1, 1, 1, 1, 5]
    # a warm-up with measured prompts (as before) hands our engine their prefill
    old = measure(LLMEngine.from_pretrained(str(tiny_llama_path)), hf, work, work[:2], pad_id=0)
    assert old["parrot_cached_prompt_tokens"] > 0


def test_a_drafting_arm_whose_outputs_differ_fails_the_run(
    tiny_llama_path: Path, tiny_mistral_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from server.engine import LLMEngine

    work, warm = _work(0, 3), _work(1, 1)
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_path).eval()
    other = LLMEngine.from_pretrained(str(tiny_mistral_path), ngram_speculation=4)
    with pytest.raises(AssertionError, match="drafts changed the greedy outputs"):
        measure(LLMEngine.from_pretrained(str(tiny_llama_path)), hf, work, warm, 0, other)


def test_each_ratio_is_the_arms_wall_over_ours() -> None:
    """"x faster" columns: how many times longer the arm took than our engine (plain, with
    drafts); drafts that slow our engine down show below 1 in the plain row's drafts column."""
    from benchmarks.engine import table_rows

    walls = {"parrot": 10.0, "parrot_ngram": 12.5, "hf_one_by_one": 60.0, "hf_padded_8": 40.0}
    rows = {name: rest for name, *rest in table_rows(walls, 500)}
    assert rows["parrot engine"] == [10.0, 50.0, 1.0, 0.8]
    assert rows["parrot engine, drafts"] == [12.5, 40.0, 1.25, 1.0]
    assert rows["transformers 1-by-1"] == [60.0, 500 / 60, 6.0, 4.8]
    assert rows["transformers padded x8"][2:] == [4.0, 3.2]


def test_padded_work_counts_the_padded_rows() -> None:
    from benchmarks.engine import padded_work

    work = [([1] * 10, 4), ([1] * 30, 2), ([1] * 5, 8)]
    assert padded_work(work, batch=2) == {"decode_rows": 2 * 4 + 8, "requested_tokens": 14,
                                          "prompt_positions": 2 * 30 + 5, "prompt_tokens": 45}


def test_a_transformers_arm_that_generates_short_fails_the_run(tiny_llama_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from benchmarks.engine import run_hf_one_by_one, run_hf_padded

    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_path).eval()
    work = _work(0, 2)
    run_hf_one_by_one(hf, work)  # the requested lengths: no error
    run_hf_padded(hf, work, pad_id=0)
    generate = hf.generate
    hf.generate = lambda *args, **kwargs: generate(*args, **kwargs)[:, :-1]  # one token short
    with pytest.raises(AssertionError, match="1-by-1 generated"):
        run_hf_one_by_one(hf, work)
    with pytest.raises(AssertionError, match="padded generated"):
        run_hf_padded(hf, work, pad_id=0)
