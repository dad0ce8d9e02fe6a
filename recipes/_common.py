"""What the recipes share: where the shared data lies, the server options and counters, ChatML
turns, chunking an article.

The recipes run as scripts (`python recipes/NAME.py`), so they import this module by its bare
name from their own folder.
"""

from __future__ import annotations

import argparse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"  # see its README.md
DATA_DIR = SHARED_DATA / "arxiv-march-2023"
DEFAULT_ARTICLE = DATA_DIR / "article_0.txt"
ROLES_DIR = SHARED_DATA / "multi-agent-roles"
GPTS_APPS = SHARED_DATA / "gpts-top4.json"

# the server's token counters (`GET /metrics`): each prompt token is either prefilled or cached
COUNTERS = (
    "parrot_prompt_tokens_total",
    "parrot_prefill_tokens_total",
    "parrot_cached_tokens_total",
    "parrot_generated_tokens_total",
)


def add_server_args(p: argparse.ArgumentParser) -> None:
    """`--url` of a running server, or `--serve MODEL` to start one here."""
    p.add_argument("--url", default="http://127.0.0.1:9000", help="a running Parrot server")
    p.add_argument("--serve", metavar="MODEL", help="start a server with this model instead")


def run_on_server(
    args: argparse.Namespace, run: Callable[[str], None], startup_timeout_s: float | None = None
) -> None:
    """`run(url)` on the server `--serve` starts (stopped afterwards), else on `--url`."""
    if not args.serve:
        run(args.url)
        return
    from server.launcher import ServerProcess  # only here: --url needs no server code

    timeout = {} if startup_timeout_s is None else {"startup_timeout_s": startup_timeout_s}
    with ServerProcess(args.serve, **timeout) as server:
        run(server.url)


def read_metrics(url: str) -> dict[str, float]:
    """Every sample of the server's `GET /metrics`, by its series as Prometheus writes it
    (`parrot_calls_total{status="done"}`)."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        lines = resp.read().decode().splitlines()
    values = {}
    for line in lines:
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


def print_counters(
    before: Mapping[str, float], after: Mapping[str, float], names: Iterable[str] = COUNTERS
) -> None:
    """One line per counter: what it rose by between the two readings."""
    labels = {n: n.removeprefix("parrot_").removesuffix("_total").replace("_", " ") for n in names}
    width = max(len(label) for label in labels.values()) + 2
    for name, label in labels.items():
        print(f"{label + ':':{width}}{after.get(name, 0) - before.get(name, 0):.0f}")


def chatml(system: str, user: str, output: str) -> str:
    """A template in the ChatML turns of the default model (SmolLM2-Instruct): a system and a
    user turn, then the assistant's, which is the output `output`."""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        f"<|im_start|>assistant\n{{{{output:{output}}}}}"
    )


def parse_map_reduce_args(description: str) -> argparse.Namespace:
    """The options of the map-reduce recipes: the server, the article, chunks and token caps."""
    p = argparse.ArgumentParser(description=description)
    add_server_args(p)
    p.add_argument("--article", default=str(DEFAULT_ARTICLE))
    p.add_argument("--chunk-chars", type=int, default=2000)
    p.add_argument("--max-chunks", type=int, default=None, help="summarize only the first N")
    p.add_argument("--map-tokens", type=int, default=48)
    p.add_argument("--reduce-tokens", type=int, default=128)
    args = p.parse_args()
    if args.chunk_chars < 200:
        p.error("--chunk-chars must be at least 200")
    return args


def split_into_chunks(text: str, chunk_chars: int) -> list[str]:
    """Consecutive chunks of whole paragraphs, each about `chunk_chars` long (a paragraph
    longer than that is cut)."""
    chunks: list[str] = []
    current = ""
    for paragraph in (p.strip() for p in text.split("\n\n")):
        while len(paragraph) > chunk_chars:
            chunks.append(paragraph[:chunk_chars])
            paragraph = paragraph[chunk_chars:]
        if current and len(current) + len(paragraph) + 2 > chunk_chars:
            chunks.append(current)
            current = ""
        if paragraph:
            current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        chunks.append(current)
    return chunks
