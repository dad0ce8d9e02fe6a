"""Engines in child processes on a CUDA device: the server's default placement there (skipped
without a GPU; benchmarks/gpu_check.sh runs it on a lent machine, where the server needs
pydantic carried as wheels: see that script)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.engine import LLMEngine, SamplingParams
from server.engine_process import EngineProcess
from server.launcher import ServerProcess
from tests.server.http_client import request

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


async def test_an_engine_process_on_cuda_gives_the_cpu_engines_tokens(
    tiny_llama_path: Path,
) -> None:
    reference = LLMEngine.from_pretrained(str(tiny_llama_path))
    prompts = [reference.tokenizer.encode(t) for t in ("The parrot said", "1 2 3 4", "Once")]
    want = [o.token_ids for o in reference.generate(prompts, GREEDY)]
    engine = await EngineProcess.spawn(str(tiny_llama_path), "cuda", "float32")
    await engine.start()
    try:
        for ids, expected in zip(prompts, want, strict=True):
            got: list[int] = []
            async for out in engine.generate_request(ids, GREEDY):
                got.extend(out.new_token_ids)
            assert got == expected
        parent = engine.create_context()
        await engine.fill(parent, prompts[0][:-1])
        child = engine.create_context(parent)
        got = []
        async for out in engine.generate(child, GREEDY, fill_token_ids=prompts[0][-1:]):
            got.extend(out.new_token_ids)
        assert got == want[0]
    finally:
        await engine.stop()


def test_a_server_on_cuda_answers_as_the_cpu_engine(tiny_llama_path: Path, tmp_path: Path) -> None:
    reference = LLMEngine.from_pretrained(str(tiny_llama_path))
    flags = ("--device", "cuda", "--dtype", "float32", "--served-model-name", "tiny")
    text = "The parrot said"
    ids = reference.tokenizer.encode(text)
    expected = reference.generate([ids], SamplingParams(max_tokens=8, temperature=0))[0]
    with ServerProcess(tiny_llama_path, *flags, log_path=tmp_path / "server.log") as srv:
        body = {"model": "tiny", "prompt": text, "max_tokens": 8, "temperature": 0}
        status, done = request("POST", srv.url + "/v1/completions", body)
        assert status == 200, done
        assert done["choices"][0]["text"] == expected.text
