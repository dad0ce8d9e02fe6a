"""Map-reduce summarization of an arXiv paper, written the usual LangChain way, run plain and
compiled into one Semantic Variable graph.

The map chain summarizes each chunk (`.map()` over the chunks); the summaries are joined and a
reduce prompt summarizes the whole. Plain, LangChain sends the map calls concurrently, waits for
all of them here, then sends the reduce call. Compiled, the whole graph goes to the server in
one request: the server sees the map calls as one task group feeding the reduce call, and
starts the reduce as soon as the last summary is ready.

    make serve   # in another terminal (or pass --serve MODEL to start one here)
    python recipes/langchain_map_reduce.py --url http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import parse_map_reduce_args, run_on_server, split_into_chunks
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable

from parrot_bridge.langchain import ChatParrot, compile

SYSTEM = "You summarize research papers accurately and briefly."


def build_chain(map_llm: ChatParrot, reduce_llm: ChatParrot) -> Runnable:
    summarize = ChatPromptTemplate.from_messages([
        ("system", SYSTEM),
        ("human", "Here is a part of a research paper.\n\n{chunk}\n\n"
                  "Summarize this part in two sentences."),
    ]) | map_llm | StrOutputParser()  # fmt: skip
    combine = ChatPromptTemplate.from_messages([
        ("system", SYSTEM),
        ("human", "These are summaries of the consecutive parts of a research paper.\n"
                  "{summaries}\n\nWrite a one-paragraph summary of the whole paper."),
    ])  # fmt: skip
    return (
        {"summaries": summarize.map() | join_summaries}
        | combine
        | reduce_llm
        | StrOutputParser()
    )


def join_summaries(summaries: list[str]) -> str:
    return "\n".join(f"Part {i + 1}: {s}" for i, s in enumerate(summaries))


def main() -> None:
    args = parse_map_reduce_args(__doc__.split("\n\n")[0])
    run_on_server(args, lambda url: run(url, args))


def run(url: str, args: argparse.Namespace) -> None:
    text = Path(args.article).read_text()
    chunks = split_into_chunks(text, args.chunk_chars)[: args.max_chunks]
    map_llm = ChatParrot(base_url=url, temperature=0, max_tokens=args.map_tokens)
    reduce_llm = ChatParrot(base_url=url, temperature=0, max_tokens=args.reduce_tokens)
    chain = build_chain(map_llm, reduce_llm)
    compiled = compile(chain)

    start = time.perf_counter()
    plain = chain.invoke(chunks)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    graph = compiled.invoke(chunks)
    compiled_s = time.perf_counter() - start

    print(f"\nSummary:\n{graph.strip()}\n")
    print(f"chunks: {len(chunks)} (about {args.chunk_chars} characters each)")
    print(f"plain LangChain:  {plain_s:6.2f} s")
    print(f"compile(chain):   {compiled_s:6.2f} s   ({len(compiled.last_calls)} calls, one graph)")
    print("same summary:", plain == graph)


if __name__ == "__main__":
    main()
