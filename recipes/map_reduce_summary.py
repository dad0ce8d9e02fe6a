"""Map-reduce summarization of an arXiv paper with Semantic Variables.

The paper is cut into chunks; one map call summarizes each chunk and one reduce call reads all
the map outputs. The templates use the ChatML turns of the default model (SmolLM2-Instruct). The whole graph goes to the server in one request: the reduce call starts on
the server as soon as the last map output is ready, without a round trip through this script.

    make serve   # in another terminal (or pass --serve MODEL to start one here)
    python recipes/map_reduce_summary.py --url http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from _common import (
    parse_map_reduce_args,
    print_counters,
    read_metrics,
    run_on_server,
    split_into_chunks,
)
from tqdm import tqdm

import parrot_bridge as P


def main() -> None:
    args = parse_map_reduce_args(__doc__.split("\n\n")[0])
    chunks = split_into_chunks(Path(args.article).read_text(), args.chunk_chars)[: args.max_chunks]
    run_on_server(args, lambda url: asyncio.run(summarize(url, chunks, args)))


async def summarize(url: str, chunks: list[str], args: argparse.Namespace) -> None:
    summarize_chunk = P.semantic_function(max_tokens=args.map_tokens, temperature=0)(map_chunk)
    combine = reduce_function(len(chunks), args.reduce_tokens)
    before = read_metrics(url)
    start = time.perf_counter()
    async with P.Session(url, name="map_reduce_summary"):
        partials = [summarize_chunk(chunk) for chunk in chunks]
        final = combine(*partials)
        # Awaiting the final value first sends the whole graph with its objective (latency);
        # the map outputs are awaited too, only to move the progress bar.
        final_task = asyncio.create_task(final.aget(criteria="latency"))
        try:
            with tqdm(total=len(chunks) + 1, desc="map-reduce", unit="call") as bar:
                first_map = None
                for done in asyncio.as_completed([p.aget(criteria="throughput") for p in partials]):
                    await done
                    first_map = first_map or time.perf_counter()
                    bar.update()
                map_done = time.perf_counter()
                summary = await final_task
                bar.update()
        finally:
            final_task.cancel()
    end = time.perf_counter()
    after = read_metrics(url)

    print("\nSummary:\n" + summary.strip() + "\n")
    print(f"chunks: {len(chunks)} (about {args.chunk_chars} characters each)")
    print(f"first map output: {(first_map or map_done) - start:.2f} s")
    print(f"map stage:        {map_done - start:.2f} s")
    print(f"reduce:           {end - map_done:.2f} s")
    print(f"total:            {end - start:.2f} s")
    print_counters(before, after)


def map_chunk(chunk):
    """<|im_start|>system
    You summarize research papers accurately and briefly.<|im_end|>
    <|im_start|>user
    Here is a part of a research paper.

    {{input:chunk}}

    Summarize this part in two sentences.<|im_end|>
    <|im_start|>assistant
    {{output:summary}}"""


def reduce_function(n: int, max_tokens: int) -> P.SemanticFunction:
    """One input marker per map output: the template is built for this many chunks."""
    parts = "\n".join(f"Part {i + 1}: {{{{input:part{i}}}}}" for i in range(n))
    template = (
        "<|im_start|>system\nYou summarize research papers accurately and briefly.<|im_end|>\n"
        "<|im_start|>user\nThese are summaries of the consecutive parts of a research paper.\n"
        f"{parts}\n\nWrite a one-paragraph summary of the whole paper.<|im_end|>\n"
        "<|im_start|>assistant\n{{output:summary}}"
    )
    return P.SemanticFunction(template, name="reduce", max_tokens=max_tokens, temperature=0)


if __name__ == "__main__":
    main()
