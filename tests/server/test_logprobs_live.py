"""Logprobs over HTTP against transformers' log_softmax of its logits on the same weights: the
/v1/completions and /v1/chat/completions logprobs of seeded sampled choices (chosen token and
top alternatives), and vLLM's prompt_logprobs of a prompt computed in chunks, with requests
batched together, run again with their prompts in the prefix cache, and with the server's n-gram
drafts confirmed; the same seeds draw the same tokens whatever runs beside them, and the same
as an engine given the same settings."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from server.engine import LLMEngine, SamplingParams
from server.launcher import ServerProcess
from tests.engine.reference import load_reference
from tests.server.http_client import metrics
from tests.server.test_token_ids_live import parsed

pytestmark = pytest.mark.slow

TOP = 3


@pytest.fixture(scope="module")
def server(served_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny model with the server's defaults (n-gram drafts on) and 32-token steps, so a
    longer prompt is computed in chunks beside the other requests' decodes."""
    log = tmp_path_factory.mktemp("logprobs") / "server.log"
    args = ("--served-model-name", "tiny", "--max-num-batched-tokens", "32")
    with ServerProcess(served_path, *args, log_path=log) as srv:
        yield srv.url


def _requests(rng: random.Random, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """Completions and chat requests with seeded sampled settings, logprobs and token ids."""
    ids = {"return_token_ids": True, "return_tokens_as_token_ids": True}
    out: list[tuple[str, dict[str, Any]]] = []
    for k in range(6):
        sampling = {"temperature": rng.choice([0.0, 0.6, 1.0, 1.4]), "seed": seed + k,
                    "top_p": rng.choice([1.0, 0.9]), "max_tokens": 16, "presence_penalty": 0.3}
        extra = {**ids, "top_k": rng.choice([-1, 8]), "min_p": rng.choice([0.0, 0.05]),
                 "repetition_penalty": rng.choice([1.0, 1.2]), "ignore_eos": True}  # fmt: skip
        if k % 2:
            words = " ".join(rng.choice(["parrot", "graph", "call", "seed", "tree"])
                             for _ in range(rng.randint(8, 16)))  # fmt: skip
            out.append(("chat", {**sampling, "messages": [{"role": "user", "content": words}],
                                 "logprobs": True, "top_logprobs": TOP, "extra_body": extra}))
        else:
            prompt = [rng.randrange(3, 500) for _ in range(rng.randint(18, 60))]
            if k == 0:  # prompt_logprobs too, over several 32-token chunks
                extra["prompt_logprobs"] = TOP
                prompt += [rng.randrange(3, 500) for _ in range(60)]
            out.append(("completion", {**sampling, "prompt": prompt, "logprobs": TOP,
                                       "extra_body": extra}))
    # a forced repeat: its n-gram drafts are confirmed; its logprobs stay the model's own
    loop = rng.randrange(3, 500)
    out.append(("completion", {"prompt": [rng.randrange(3, 500) for _ in range(20)],
                               "max_tokens": 16, "temperature": 0, "logprobs": TOP,
                               "logit_bias": {str(loop): 100}, "extra_body": ids}))  # fmt: skip
    return out  # fmt: skip


def _ask(client: openai.OpenAI, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The choice's prompt ids, generated ids, their (logprob, top) and prompt_logprobs."""
    if kind == "chat":
        done = client.chat.completions.create(model="tiny", **body).model_dump()
        choice = done["choices"][0]
        entries = [(parsed(c["token"]), c["logprob"],
                    [(parsed(t["token"]), t["logprob"]) for t in c["top_logprobs"]])
                   for c in choice["logprobs"]["content"]]  # fmt: skip
        return {"prompt": done["prompt_token_ids"], "ids": choice["token_ids"],
                "entries": entries, "prompt_logprobs": None, "cached": _cached(done)}  # fmt: skip
    done = client.completions.create(model="tiny", **body).model_dump()
    choice = done["choices"][0]
    lps = choice["logprobs"]
    entries = []
    for token, value, top in zip(lps["tokens"], lps["token_logprobs"], lps["top_logprobs"],
                                 strict=True):  # fmt: skip
        alternatives = sorted(((parsed(t), v) for t, v in top.items()), key=lambda e: -e[1])
        entries.append((parsed(token), value, alternatives))
    return {"prompt": choice["prompt_token_ids"], "ids": choice["token_ids"], "entries": entries,
            "prompt_logprobs": choice.get("prompt_logprobs"), "cached": _cached(done)}  # fmt: skip


def _cached(done: dict[str, Any]) -> int:
    return (done["usage"].get("prompt_tokens_details") or {}).get("cached_tokens") or 0


def _check(ref: torch.nn.Module, got: dict[str, Any], case: object) -> None:
    prompt, ids = got["prompt"], got["ids"]
    with torch.inference_mode():
        want = ref(torch.tensor([prompt + ids])).logits[0].double().log_softmax(-1)
    assert [e[0] for e in got["entries"]] == ids, case
    for pos, (token, value, top) in enumerate(got["entries"]):
        row = want[len(prompt) - 1 + pos]
        assert value == pytest.approx(float(row[token]), abs=1e-4), (case, pos)
        best = row.topk(TOP)
        # the completions API's top also holds the chosen token (up to TOP + 1 entries)
        assert [t for t, _ in top[:TOP]] == best.indices.tolist(), (case, pos)
        assert [v for _, v in top[:TOP]] == pytest.approx(best.values.tolist(), abs=1e-4)
    scores = got["prompt_logprobs"]
    if scores is not None:
        assert len(scores) == len(prompt) and scores[0] is None, case
        for pos, (token, entry) in enumerate(zip(prompt[1:], scores[1:], strict=True)):
            row = want[pos]
            assert entry[str(token)]["logprob"] == pytest.approx(float(row[token]), abs=1e-4)
            best = row.topk(TOP).indices.tolist()
            assert [entry[str(t)]["rank"] for t in best] == [1, 2, 3], (case, pos)


def _sampling(body: dict[str, Any]) -> SamplingParams:
    """The engine's settings for a request body of `_requests`."""
    fields = {k: v for k, v in {**body, **body.get("extra_body", {})}.items()
              if k in SamplingParams.__dataclass_fields__ and k != "logprobs"}  # fmt: skip
    fields["logit_bias"] = {int(t): b for t, b in fields.get("logit_bias", {}).items()}
    return SamplingParams(**fields, logprobs=TOP)


def test_logprobs_are_transformers_batched_cached_and_drafted(
    client: openai.OpenAI, server: str, served_path: Path, engine: LLMEngine
) -> None:
    seed = random.randrange(2**30)
    asks = _requests(random.Random(seed), seed)
    ref = load_reference(str(served_path))
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(lambda a: _ask(client, *a), asks))
    # one at a time: other batches, the prompts in the prefix cache now
    alone = [_ask(client, kind, body) for kind, body in asks]
    counters = metrics(server)
    assert counters["parrot_accepted_draft_tokens_total"] > 0, counters
    for (kind, body), first, again in zip(asks, together, alone, strict=True):
        case = (seed, kind, {k: v for k, v in body.items() if k not in ("prompt", "messages")})
        assert again["ids"] == first["ids"], case
        # each field reached the engine as meant: it draws the same with the same settings
        assert engine.generate([first["prompt"]], _sampling(body))[0].token_ids == first["ids"]
        # prompt_logprobs compute their whole prompt; the others start from the cache where
        # they hold a whole block (16 tokens) before their last token
        cachable = first["prompt_logprobs"] is None and len(first["prompt"]) > 16
        assert (again["cached"] > 0) == cachable, case
        _check(ref, first, case)
        _check(ref, again, case)
