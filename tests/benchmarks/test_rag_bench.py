"""benchmarks/workloads/rag.py: every system does the same work, each on a server of its own.

The servers and the LlamaIndex synthesizers are stand-ins here (the real run needs minutes of
SmolLM2); what is checked is the plan: who reads which texts, on which server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.common import data
from benchmarks.workloads import rag


class _Server:
    started: list[str] = []

    def __init__(self, model: str, log_path: Path, startup_timeout_s: float) -> None:
        self.url = f"http://server{len(self.started)}"
        self.started.append(self.url)

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_every_system_reads_the_same_texts_on_a_fresh_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not data.DATA_DIR.is_dir():
        pytest.skip("the shared arXiv data is not there")
    seen: list[tuple[str, str, str, str, tuple[str, ...]]] = []  # mode, system, url, query, text

    def systems(url: str, mode: str, size: dict[str, int]) -> dict[str, Any]:
        def system(name: str) -> Any:
            def run(query: str, chunks: list[str]) -> str:
                seen.append((mode, name, url, query, tuple(chunks)))
                return "the answer" if name != "openai_async" else "another answer"

            return run

        return {name: system(name) for name in rag.system_names(mode)}

    _Server.started = []
    monkeypatch.setattr(rag, "ServerProcess", _Server)
    monkeypatch.setattr(rag, "_systems", systems)
    monkeypatch.setattr(rag, "_submissions", lambda url: 0.0)
    monkeypatch.setattr(rag, "RESULTS", tmp_path)
    monkeypatch.setitem(rag.QUICK, "queries", 2)
    assert rag.main(["--quick"]) == 0
    for mode in rag.MODES:
        names = rag.system_names(mode)
        runs = {n: [(q, t) for m, s, _, q, t in seen if m == mode and s == n] for n in names}
        assert all(len(r) == 3 for r in runs.values())  # the warm-up, then the two queries
        assert len({tuple(r) for r in runs.values()}) == 1  # the same questions and texts
        assert len({t for _, t in runs["parrot"]}) == 3  # no query re-reads an earlier text
        urls = {n: {u for m, s, u, _, _ in seen if m == mode and s == n} for n in names}
        assert all(len(u) == 1 for u in urls.values())  # one server per system
    assert len(_Server.started) == len({u for _, _, u, _, _ in seen}) == 5
    report = json.loads((tmp_path / "rag_quick.json").read_text())["report"]
    # tree_summarize's async baseline answered otherwise: that mode's answers are not all equal
    assert report["tree_summarize"]["same_answer"] is False
    assert report["refine"]["same_answer"] is True
