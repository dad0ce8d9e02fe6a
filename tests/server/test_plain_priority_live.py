"""vLLM's `priority` on plain requests picks Parrot's scheduling class, on a live server whose
engine runs one sequence at a time, so that the others wait in its queue."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from server.launcher import ServerProcess
from tests.server.http_client import metrics

pytestmark = pytest.mark.slow

BULK = 4


def test_an_urgent_request_overtakes_queued_bulk_ones(tiny_llama_path: Path, tmp_path: Path) -> None:
    flags = ("--max-num-seqs", "1", "--served-model-name", "tiny")
    with ServerProcess(tiny_llama_path, *flags, log_path=tmp_path / "server.log") as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        finished: dict[str, float] = {}

        def ask(name: str, priority: int, max_tokens: int) -> None:
            client.completions.create(
                model="tiny", prompt=f"Story {name}:", max_tokens=max_tokens, temperature=0,
                extra_body={"ignore_eos": True, "priority": priority},
            )  # fmt: skip
            finished[name] = time.perf_counter()

        with ThreadPoolExecutor(BULK + 1) as pool:
            bulk = [pool.submit(ask, f"bulk{i}", 1, 150) for i in range(BULK)]
            deadline = time.monotonic() + 30
            while metrics(srv.url).get("parrot_engine_jobs", 0) < BULK:  # all in the engine
                assert time.monotonic() < deadline, "the bulk requests never reached the engine"
                time.sleep(0.02)
            urgent = pool.submit(ask, "urgent", -1, 8)
            urgent.result(timeout=60)
            for f in bulk:
                f.result(timeout=120)
        # it ran next, before the bulk requests queued first (FIFO would finish it last)
        after = sorted(finished, key=finished.get)
        assert after.index("urgent") <= 1, after
        with pytest.raises(openai.BadRequestError):  # a priority is an integer
            client.completions.create(model="tiny", prompt="x", extra_body={"priority": "high"})
