"""Seeded differential fuzz of the text the engine returns: random token sequences (any id,
special tokens, byte tokens that split emoji / CJK / combining marks) streamed through the
incremental detokenizer and through `LLMEngine` (its sampler scripted to emit the chosen ids),
against the tokenizer's own full decode; stop strings cut from random places of that text;
streamed logprobs (`HeldLogprobs`) sent with the chunk that carries their token's text."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest

import server.engine.llm_engine as llm_engine
from server.api.logprobs import HeldLogprobs, completion_logprobs
from server.engine import JobOutput, LLMEngine, SamplingParams, TokenLogprob
from server.engine.tokenizer import Tokenizer

# multi-byte characters (2-4 bytes), a skin-tone modifier, combining marks, a zero-width space,
# whitespace runs: the tiny tokenizer merges some and splits the rest across byte tokens
TEXT = (
    "héllo wörld 日本語のテキスト 🦜🎉✨👍🏽 e\u0301 a\u0308\u0323 한국어 \u200b  \t\n "
    "½€ Привет abc"
)


def random_ids(tok: Tokenizer, rng: random.Random, special: Sequence[int]) -> list[int]:
    """Any ids of the vocabulary, or encoded random text with special tokens and random ids
    put in (so characters can be left incomplete or broken)."""
    if rng.random() < 0.3:
        return [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 25))]
    ids = tok.encode("".join(rng.choice(TEXT) for _ in range(rng.randint(1, 25))))
    for _ in range(rng.randint(0, 3)):
        extra = rng.choice(special) if rng.random() < 0.5 else rng.randrange(tok.vocab_size)
        ids.insert(rng.randrange(len(ids) + 1), extra)
    return ids


def check_logprobs_follow_text(
    tok: Tokenizer,
    ids: list[int],
    pieces: list[str],
    released: list[list[tuple[TokenLogprob, int]]],
) -> None:
    """Each chunk's logprobs are those of the tokens whose text it completes: never ahead of
    the text sent (a token's text first), never behind it; all of them by the end, each with
    the text offset the non-streamed response gives it."""
    sent, ids_out, starts = "", [], []
    for k, (piece, pairs) in enumerate(zip(pieces, released, strict=True)):
        sent += piece
        ids_out += [e.token_id for e, _ in pairs]
        starts += [start for _, start in pairs]
        if k == len(pieces) - 1:
            break
        text = tok.decode(ids_out)
        assert sent.startswith(text), f"logprobs ahead of the text: {text!r} vs {sent!r}"
        more = tok.decode(ids[: len(ids_out) + 1])
        late = sent.startswith(more) and len(more) > len(text) and not more.endswith("\ufffd")
        assert not late, f"logprobs behind the text: {text!r} vs {sent!r}"
    assert ids_out == ids
    whole = completion_logprobs(tok, [TokenLogprob(t, -1.0, []) for t in ids])
    assert starts == whole.text_offset


def fuzz_tokenizer(tok: Tokenizer, cases: int, seed: int) -> None:
    rng = random.Random(seed)
    special = sorted(tok.backend.get_added_tokens_decoder())
    held_back = 0
    for _ in range(cases):
        ids = random_ids(tok, rng, special)
        for skip in (False, True):  # True last: the engine's pieces, for the logprobs below
            detok = tok.detokenizer(skip_special_tokens=skip)
            pieces = [detok.add(t) for t in ids] + [detok.finish()]
            full = tok.decode(ids, skip_special_tokens=skip)
            assert "".join(pieces) == detok.text == full, ids
            at = 0
            for piece in pieces:  # no U+FFFD that the full decode has not at that place
                for i, ch in enumerate(piece):
                    assert ch != "\ufffd" or full[at + i] == "\ufffd", (ids, pieces)
                at += len(piece)
            held_back += pieces[:-1].count("")
        # the streamed logprobs, with the engine's pieces (skip_special_tokens=True)
        held = HeldLogprobs(tok)
        released = []
        for k, (t, piece) in enumerate(zip(ids, pieces[:-1], strict=True)):
            held.add([TokenLogprob(t, -1.0, [])])
            released.append(held.release(piece, finished=k == len(ids) - 1))
        pieces[-2] += pieces[-1]
        check_logprobs_follow_text(tok, ids, pieces[:-1], released)
    assert held_back > cases  # characters really were split across tokens


def test_tiny_tokenizer_stream_equals_full_decode(tiny_llama_path: Path) -> None:
    fuzz_tokenizer(Tokenizer.from_folder(tiny_llama_path), cases=400, seed=11)


@pytest.mark.slow
def test_smollm2_tokenizer_stream_equals_full_decode(smollm2_path: Path) -> None:
    fuzz_tokenizer(Tokenizer.from_folder(smollm2_path), cases=300, seed=12)


def test_engine_text_stop_strings_and_logprobs(tiny_llama_path: Path, monkeypatch) -> None:
    """Through the engine, its sampler scripted: the streamed pieces add up to the final text,
    which is the full decode cut right before the first stop string (never anything after
    it streamed), finish_reason follows, and the logprobs follow the text."""
    scripts: dict[int, list[int]] = {}

    def scripted(logits, params, generators, outputs, *_):
        tokens = [scripts[id(p)][len(done)] for p, done in zip(params, outputs, strict=True)]
        logprobs = [TokenLogprob(t, -1.0, []) for t in tokens]
        return tokens, logprobs

    monkeypatch.setattr(llm_engine, "sample", scripted)
    engine = LLMEngine.from_pretrained(tiny_llama_path, block_size=8)
    tok = engine.tokenizer
    eos = min(tok.eos_token_ids)
    special = [t for t in tok.backend.get_added_tokens_decoder() if t != eos]
    rng = random.Random(13)
    cases = {}  # job id: (full text, stop strings, script, kind)
    for _ in range(250):  # all in one continuous batch
        ids = [t for t in random_ids(tok, rng, special) if t != eos] or [100]
        full = tok.decode(ids)
        stops = []
        if full and rng.random() < 0.6:
            for _ in range(rng.choice((1, 1, 2))):
                a = rng.randrange(len(full))
                stops.append(full[a : rng.randint(a + 1, min(len(full), a + 6))])
        script, stop_ids, kind = list(ids), [], "stop" if stops else "length"
        if not stops and rng.random() < 0.5:
            if rng.random() < 0.5:
                script.append(eos)
                kind = "eos"
            else:  # a stop token id: its text is left out, as vLLM does
                stop_ids = [script[-1]]
                script = script[: script.index(stop_ids[0]) + 1]
                full = tok.decode(script[:-1])
                kind = "stop_token"
        sp = SamplingParams(max_tokens=len(script), temperature=0, stop=stops,
                            stop_token_ids=stop_ids, logprobs=0)  # fmt: skip
        scripts[id(sp)] = script
        ctx = engine.create_context()
        engine.fill(ctx, [5, 6, 7])
        cases[engine.add_generate(ctx, sp, free_on_finish=True)] = (full, stops, script, kind)
    held = {job: HeldLogprobs(tok) for job in cases}
    pieces: dict[int, list[str]] = {job: [] for job in cases}
    released: dict[int, list[list[tuple[TokenLogprob, int]]]] = {job: [] for job in cases}
    last: dict[int, JobOutput] = {}
    while len(last) < len(cases):
        for out in engine.step():
            if out.job_id not in cases:  # the fills
                continue
            held[out.job_id].add(out.new_logprobs)
            pieces[out.job_id].append(out.new_text)
            released[out.job_id].append(held[out.job_id].release(out.new_text, out.finished))
            if out.finished:
                last[out.job_id] = out
    kinds = dict.fromkeys(("stop", "stop_token", "eos", "length"), 0)
    for job, (full, stops, script, kind) in cases.items():
        out = last[job]
        kinds[kind] += 1
        assert out.token_ids == script[: len(out.token_ids)] and (stops or out.token_ids == script)
        assert "".join(pieces[job]) == out.text, (script, stops)
        if stops:
            assert out.finish_reason == "stop"
            assert full.startswith(out.text) and not any(s in out.text for s in stops)
            assert any(full[len(out.text) :].startswith(s) for s in stops), (script, stops)
            if len(stops) == 1:
                assert out.text == full[: full.index(stops[0])]
        else:
            assert out.text == full, script
            assert out.finish_reason == ("length" if kind == "length" else "stop")
        check_logprobs_follow_text(tok, out.token_ids, pieces[job], released[job])
    assert min(kinds.values()) > 10, kinds
