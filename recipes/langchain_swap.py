"""A typical LangChain app, moved to Parrot by swapping one class, then compiled into a graph.

The app drafts an answer (prompt | chat model | parser) and has a second stage improve it. It
runs three ways against one Parrot server:

1. as written, with `ChatOpenAI` pointed at Parrot's OpenAI-compatible API (`--openai`);
2. with `ChatParrot` swapped in: the same chain, one request per model call;
3. `compile(chain)`: the whole chain is one graph; stage two starts on the server as soon as
   stage one's draft is ready, without a round trip through this script.

With greedy sampling the three give the same answer.

    make serve   # in another terminal (or pass --serve MODEL to start one here)
    python recipes/langchain_swap.py --url http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from _common import add_server_args, run_on_server
from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnablePassthrough

from parrot_bridge.langchain import ChatParrot, compile

QUESTIONS = [
    "Why do transformers use attention?",
    "What is a KV cache?",
    "Why does batching speed up LLM serving?",
]


def build_chain(llm: BaseChatModel) -> Runnable:
    """The app: draft an answer, then improve the draft. Nothing Parrot-specific here."""
    draft = ChatPromptTemplate.from_messages([
        ("system", "You are a concise technical writer."),
        ("human", "Answer in two sentences: {question}"),
    ])  # fmt: skip
    improve = ChatPromptTemplate.from_messages([
        ("system", "You are a careful editor."),
        ("human", "Question: {question}\nDraft answer: {draft}\n"
                  "Rewrite the draft so it is clearer and correct."),
    ])  # fmt: skip
    return (
        RunnablePassthrough.assign(draft=draft | llm | StrOutputParser())
        | improve
        | llm
        | StrOutputParser()
    )


def main() -> None:
    args = parse_args()
    run_on_server(args, lambda url: run(url, args))


def run(url: str, args: argparse.Namespace) -> None:
    inputs = [{"question": q} for q in QUESTIONS[: args.questions]]
    settings = {"temperature": 0, "max_tokens": args.max_tokens}
    results: dict[str, list[str]] = {}
    if args.openai:
        from langchain_openai import ChatOpenAI

        model = served_model(url)
        openai_chain = build_chain(ChatOpenAI(base_url=url + "/v1", api_key="unused",
                                              model=model, **settings))  # fmt: skip
        results["ChatOpenAI"] = timed("ChatOpenAI (OpenAI API)", url,
                                      lambda: openai_chain.batch(inputs))  # fmt: skip
    chain = build_chain(ChatParrot(base_url=url, **settings))
    results["ChatParrot"] = timed("ChatParrot swapped in", url, lambda: chain.batch(inputs))
    compiled = compile(chain)
    results["compiled"] = timed("compile(chain)", url, lambda: compiled.batch(inputs))

    print(f"\n{inputs[0]['question']}\n{results['compiled'][0].strip()}\n")
    same = all(r == results["compiled"] for r in results.values())
    print("same answers in every mode:", same)


def timed(label: str, url: str, fn: Callable[[], list[Any]]) -> list[Any]:
    before = submissions(url)
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    print(f"{label:28} {elapsed:6.2f} s   graph submissions: {submissions(url) - before:.0f}")
    return out


def submissions(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("parrot_graph_submissions_total "):
                return float(line.split()[1])
    return 0.0


def served_model(url: str) -> str:
    import json

    with urllib.request.urlopen(url + "/v1/models", timeout=30) as resp:
        return json.load(resp)["data"][0]["id"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_args(p)
    p.add_argument("--questions", type=int, default=3, choices=range(1, len(QUESTIONS) + 1))
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--openai", action="store_true",
                   help="also run the chain with ChatOpenAI against the OpenAI-compatible API")
    return p.parse_args()


if __name__ == "__main__":
    main()
