"""What the recipes share: where the arXiv data lies, the server options, chunking an article.

The recipes run as scripts (`python recipes/NAME.py`), so they import this module by its bare
name from their own folder.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data" / "arxiv-march-2023"
DEFAULT_ARTICLE = DATA_DIR / "article_0.txt"


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
