"""Engine throughput against transformers, and batch-1 decode against the weight-streaming floor.

    python -m benchmarks.engine [--quick] [--device cpu|cuda]

One run, side by side: our engine on 32 requests (prompts of 64-1024 tokens cut from the arXiv
papers in ../shared/data, 32-128 output tokens, greedy, fixed lengths), plain and with the
server's n-gram drafts (its outputs checked equal to the plain run's); transformers `generate`
one request at a time; transformers `generate` in left-padded batches of 8; and our batch-1
decode step against weight bytes / memory bandwidth measured in the same process, in
five rounds of steps, each between two floor reads, since the bandwidth here changes by 2x
with load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from server.engine import LLMEngine, SamplingParams  # noqa: E402
from server.kernels.cpu import huge_pages  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "arxiv-march-2023"
RESULTS = Path(__file__).resolve().parent / "results"


def make_workload(tokenizer, n: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """(prompt token ids, output length) pairs cut from the papers."""
    rng = random.Random(seed)
    papers = [tokenizer.encode(p.read_text()) for p in sorted(DATA.glob("article_*.txt"))]
    work = []
    for _ in range(n):
        paper = rng.choice(papers)
        length = rng.randint(64, 1024)
        start = rng.randrange(0, len(paper) - length)
        work.append((paper[start : start + length], rng.randint(32, 128)))
    return work


def warm_up_work(tokenizer, work, n: int = 2, block: int = 16) -> list[tuple[list[int], int]]:
    """`n` requests shaped like the measured ones but none starting with a measured prompt's
    first `block` tokens: a warm-up with the measured prompts themselves would leave them in
    our engine's prefix cache (not in transformers'), so the measured run would skip their
    prefill."""
    starts = {tuple(p[:block]) for p, _ in work}
    picked: list[tuple[list[int], int]] = []
    seed = 1
    while len(picked) < n:
        for prompt, out in make_workload(tokenizer, n, seed=seed):
            if tuple(prompt[:block]) not in starts and len(picked) < n:
                picked.append((prompt, out))
        seed += 1
    return picked


def measure(
    engine: LLMEngine, hf, work, warm, pad_id: int, drafting: LLMEngine | None = None
) -> dict[str, float]:
    """Wall seconds of each arm on `work`, each arm warmed up first on `warm` (requests that
    share no prefix-cache block with `work`), and the prompt tokens our engine took from its
    prefix cache during the measured run (0 when no arm gets prompts for free). `drafting`:
    an engine on the same weights with n-gram drafts on, measured too; its outputs must equal
    the plain engine's (greedy: drafts change the steps, never the tokens)."""
    run_ours(engine, warm)
    run_hf_one_by_one(hf, warm)
    run_hf_padded(hf, warm, pad_id=pad_id)
    cached_before = engine.stats.cached_tokens
    ours, tokens = run_ours(engine, work)
    cached = engine.stats.cached_tokens - cached_before
    walls = {"parrot": ours, "parrot_cached_prompt_tokens": cached}
    if drafting is not None:
        run_ours(drafting, warm)
        before = (drafting.stats.cached_tokens, drafting.stats.drafted_tokens,
                  drafting.stats.accepted_tokens, drafting.stats.steps)  # fmt: skip
        walls["parrot_ngram"], drafted_outputs = run_ours(drafting, work)
        if drafted_outputs != tokens:
            raise AssertionError("n-gram drafts changed the greedy outputs")
        walls["parrot_ngram_cached_prompt_tokens"] = drafting.stats.cached_tokens - before[0]
        walls["ngram_drafted_tokens"] = drafting.stats.drafted_tokens - before[1]
        walls["ngram_accepted_tokens"] = drafting.stats.accepted_tokens - before[2]
        walls["ngram_steps"] = drafting.stats.steps - before[3]
    walls["hf_one_by_one"] = run_hf_one_by_one(hf, work)
    walls["hf_padded_8"] = run_hf_padded(hf, work, pad_id=pad_id)
    return walls


def run_ours(engine: LLMEngine, work) -> tuple[float, list[list[int]]]:
    """Wall seconds of one `generate` of `work`, and its outputs' token ids."""
    params = [SamplingParams(max_tokens=o, temperature=0, ignore_eos=True) for _, o in work]
    start = time.perf_counter()
    outs = engine.generate([p for p, _ in work], params)
    elapsed = time.perf_counter() - start
    assert [len(o.token_ids) for o in outs] == [o for _, o in work]
    return elapsed, [list(o.token_ids) for o in outs]


@torch.inference_mode()
def run_hf_one_by_one(model, work) -> float:
    """Wall seconds; each request must generate its length (checked after the clock)."""
    start = time.perf_counter()
    outs = []
    for prompt, out_len in tqdm(work, desc="transformers 1-by-1", leave=False):
        ids = torch.tensor([prompt], device=model.device)
        out = model.generate(ids, max_new_tokens=out_len, min_new_tokens=out_len, do_sample=False)
        outs.append(out.shape[1] - len(prompt))
    elapsed = time.perf_counter() - start
    if outs != [o for _, o in work]:
        raise AssertionError(f"transformers 1-by-1 generated {outs}, not the requested lengths")
    return elapsed


@torch.inference_mode()
def run_hf_padded(model, work, pad_id: int, batch: int = 8) -> float:
    """Wall seconds; every row of a batch must generate the batch's longest length (checked
    after the clock): see `padded_work` for what that computes."""
    start = time.perf_counter()
    outs, wanted = [], []
    for i in tqdm(range(0, len(work), batch), desc="transformers padded x8", leave=False):
        group = work[i : i + batch]
        width = max(len(p) for p, _ in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, (prompt, _) in enumerate(group):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        out_len = max(o for _, o in group)
        out = model.generate(
            ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=out_len,
            min_new_tokens=out_len,
            do_sample=False,
            pad_token_id=pad_id,
        )
        outs.append(out.shape[1] - width)
        wanted.append(out_len)
    elapsed = time.perf_counter() - start
    if outs != wanted:
        raise AssertionError(f"transformers padded generated {outs}, not the batches' {wanted}")
    return elapsed


def padded_work(work, batch: int = 8) -> dict[str, int]:
    """What the padded arm computes against what is requested: every row of a batch decodes
    the batch's longest output and prefills the batch's longest prompt (left-padded)."""
    groups = [work[i : i + batch] for i in range(0, len(work), batch)]
    return {
        "decode_rows": sum(len(g) * max(o for _, o in g) for g in groups),
        "requested_tokens": sum(o for _, o in work),
        "prompt_positions": sum(len(g) * max(len(p) for p, _ in g) for g in groups),
        "prompt_tokens": sum(len(p) for p, _ in work),
    }


@torch.inference_mode()
def batch1_step_time(engine: LLMEngine, prompt: list[int], steps: int = 40) -> float:
    ctx = engine.create_context()
    engine.fill(ctx, prompt)
    engine.run_until_idle()
    engine.add_generate(ctx, SamplingParams(max_tokens=steps + 5, temperature=0, ignore_eos=True))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    engine.free(ctx)
    return statistics.median(times[5:])


def weight_bytes(engine: LLMEngine, rows: int = 1) -> int:
    """The weight bytes a step of `rows` rows reads (4-bit where the layers use them)."""
    return engine.runner.model.weight_bytes_read(rows)


def read_buffers(engine: LLMEngine, rows: int = 1) -> list[torch.Tensor]:
    """Buffers as large as the weights a step of `rows` rows reads: plain pages and (CPU) huge
    pages, as the engine's own weights are."""
    n = weight_bytes(engine, rows) // 4
    cols = 4096
    buffers = [torch.randn(n // cols, cols, device=engine.device)]
    if engine.device.type == "cpu":
        buffers.append(huge_pages.zeros((n // cols, cols)).normal_())
    return buffers


def weight_floor(
    engine: LLMEngine, reps: int = 5, buffers: list[torch.Tensor] | None = None, rows: int = 1
) -> tuple[float, float, int]:
    """(seconds to stream a step's weights once, bandwidth bytes/s, weight bytes): the weights
    a step of `rows` rows reads over the fastest of two read kernels on `read_buffers`."""
    buffers = buffers or read_buffers(engine, rows)
    vec = torch.randn(buffers[0].shape[1], device=engine.device)
    best = float("inf")
    for buf in buffers:
        for fn in (buf.sum, lambda b=buf: b @ vec):
            fn()
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                if engine.device.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t)
    bandwidth = buffers[0].numel() * 4 / best
    return weight_bytes(engine, rows) / bandwidth, bandwidth, weight_bytes(engine, rows)


def batch1_against_floor(
    engine: LLMEngine, prompt: list[int], rounds: int = 5
) -> list[dict[str, float]]:
    """Rounds of batch-1 steps between two floor measurements, each ratio against the better
    of the two: this machine's bandwidth doubles and halves with its neighbours, so a floor
    taken once could belong to another state than the steps (the ratio errs on the strict
    side when the state changes within a round)."""
    buffers = read_buffers(engine)
    out = []
    for _ in range(rounds):
        before, _, _ = weight_floor(engine, reps=3, buffers=buffers)
        step = batch1_step_time(engine, prompt, steps=25)
        after, _, _ = weight_floor(engine, reps=3, buffers=buffers)
        floor = min(before, after)
        out.append({"floor_ms": floor * 1e3, "step_ms": step * 1e3,
                    "bandwidth_gbs": weight_bytes(engine) / floor / 1e9,
                    "step_over_floor": step / floor})  # fmt: skip
    return out


def table_rows(
    walls: dict[str, float], gen_tokens: int
) -> list[tuple[str, float, float, float, float]]:
    """(arm, wall s, tokens/s, how many times faster our plain engine is than the arm, the
    same for our engine with drafts): each ratio is the arm's wall over ours."""
    ours, ngram = walls["parrot"], walls["parrot_ngram"]
    arms = (("parrot engine", ours), ("parrot engine, drafts", ngram),
            ("transformers 1-by-1", walls["hf_one_by_one"]),
            ("transformers padded x8", walls["hf_padded_8"]))  # fmt: skip
    return [(name, wall, gen_tokens / wall, wall / ours, wall / ngram) for name, wall in arms]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 requests instead of 32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from server.config import ServerConfig
    from server.engine.loader import DEFAULT_CACHE_DIR, resolve_model_folder

    _, folder = resolve_model_folder(args.model, DEFAULT_CACHE_DIR)
    engine = LLMEngine.from_pretrained(args.model, device=args.device)
    # the server's default: drafts of up to 4 tokens (`--ngram-speculation`)
    drafting = LLMEngine.from_pretrained(
        args.model, device=args.device, ngram_speculation=ServerConfig().ngram_speculation
    )
    tok = engine.tokenizer
    work = make_workload(tok, 8 if args.quick else 32)
    gen_tokens = sum(o for _, o in work)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=next(engine.runner.model.parameters()).dtype)
    hf = hf.to(args.device).eval()

    warm = warm_up_work(tok, work, block=engine.config.block_size)
    walls = measure(engine, hf, work, warm, pad_id=min(tok.eos_token_ids), drafting=drafting)
    del drafting  # its weights and KV pool go before the bandwidth rounds
    ours, one, padded = walls["parrot"], walls["hf_one_by_one"], walls["hf_padded_8"]
    ngram = walls["parrot_ngram"]
    batch1 = batch1_against_floor(engine, work[0][0][:256])
    batch1_bytes = weight_bytes(engine)
    median = {key: statistics.median(r[key] for r in batch1) for key in batch1[0]}
    # the same step with float32 weights only (no 4-bit layers or 8-bit head): its own floor
    del engine
    plain = LLMEngine.from_pretrained(args.model, device=args.device, quantized_linear=False)
    batch1_plain = batch1_against_floor(plain, work[0][0][:256])
    median_plain = {key: statistics.median(r[key] for r in batch1_plain) for key in batch1[0]}
    plain_bytes = weight_bytes(plain)
    del plain

    rows = table_rows(walls, gen_tokens)
    print(f"\n{len(work)} requests, {gen_tokens} generated tokens, device {args.device}, threads {torch.get_num_threads()}")
    print(f"{'mode':<26}{'wall s':>10}{'tok/s':>10}{'ours is x faster':>18}{'with drafts':>13}")
    for name, wall, tps, ratio, ratio_ngram in rows:
        print(f"{name:<26}{wall:>10.2f}{tps:>10.1f}{ratio:>18.2f}{ratio_ngram:>13.2f}")
    padded_extra = padded_work(work)
    print(f"transformers padded x8 computes padded rows: {padded_extra['decode_rows']} decode "
          f"rows for the {padded_extra['requested_tokens']} tokens requested, "
          f"{padded_extra['prompt_positions']} prompt positions for the "
          f"{padded_extra['prompt_tokens']} prompt tokens (its tok/s counts the requested)")
    print(f"prompt tokens our engine took from its prefix cache in the measured run: "
          f"{walls['parrot_cached_prompt_tokens']}, with drafts "
          f"{walls['parrot_ngram_cached_prompt_tokens']} (0: every arm prefilled every prompt)")
    print(f"drafts: {walls['ngram_drafted_tokens']} drafted, {walls['ngram_accepted_tokens']} "
          f"kept, {walls['ngram_steps']} steps; outputs equal to the plain run's")
    for label, mb, rounds, mid in (
        ("the weights it reads", batch1_bytes / 1e6, batch1, median),
        ("float32 weights only (quantized_linear=False)", plain_bytes / 1e6, batch1_plain,
         median_plain),
    ):
        print(f"\nbatch-1 decode step against the weight-streaming floor, {label} "
              f"({mb:.0f} MB), rounds side by side:")
        print(f"{'round':<8}{'bandwidth GB/s':>16}{'floor ms':>10}{'step ms':>10}"
              f"{'step/floor':>12}")  # fmt: skip
        for i, r in enumerate([*rounds, mid]):
            name = "median" if i == len(rounds) else str(i + 1)
            print(f"{name:<8}{r['bandwidth_gbs']:>16.1f}{r['floor_ms']:>10.2f}"
                  f"{r['step_ms']:>10.2f}{r['step_over_floor']:>11.2f}x")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    result = {
        "device": args.device,
        "requests": len(work),
        "generated_tokens": gen_tokens,
        "wall_s": {"parrot": ours, "parrot_ngram": ngram, "hf_one_by_one": one,
                   "hf_padded_8": padded},
        "speedup": {"vs_one_by_one": one / ours, "vs_padded_8": padded / ours},
        "hf_padded_8_work": padded_extra,
        "speedup_with_drafts": {"vs_one_by_one": one / ngram, "vs_padded_8": padded / ngram,
                                "vs_parrot_plain": ours / ngram},
        "parrot_cached_prompt_tokens": walls["parrot_cached_prompt_tokens"],
        "parrot_ngram_cached_prompt_tokens": walls["parrot_ngram_cached_prompt_tokens"],
        "ngram": {key: walls[f"ngram_{key}"] for key in ("drafted_tokens", "accepted_tokens",
                                                         "steps")},
        "batch1_step_ms": median["step_ms"],
        "floor_ms": median["floor_ms"],
        "step_over_floor": median["step_over_floor"],
        "bandwidth_gbs": median["bandwidth_gbs"],
        "batch1_rounds": batch1,
        "batch1_weight_bytes": batch1_bytes,
        "float32_weights": {
            "batch1_step_ms": median_plain["step_ms"], "floor_ms": median_plain["floor_ms"],
            "step_over_floor": median_plain["step_over_floor"],
            "weight_bytes": plain_bytes, "batch1_rounds": batch1_plain,
        },
    }
    suffix = "_quick" if args.quick else ""
    path = Path(args.out) if args.out else RESULTS / f"engine_{args.device}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
