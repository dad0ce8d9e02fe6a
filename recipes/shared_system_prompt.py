"""A GPTs-style app: one long system prompt, many users, each in a session of their own.

The app's system prompt is as long (in the served model's tokens) as that of one of the four
popular GPTs in the shared data's gpts-top4.json, which holds their lengths, not their text:
the app's instructions, then a knowledge file, the start of an arXiv paper. Every user asks one
question, in a session of their own, all at the same time. The system prompt is constant text of
the app's template, so the server knows it is the same for every user: it is prefilled once and
the other users' calls fork its KV cache instead of computing it again, as the server's counters
show at the end. (Run it again on the same server and no user prefills it: it is still stored.)

    make serve   # in another terminal (or pass --serve MODEL to start one here)
    python recipes/shared_system_prompt.py --url http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import (
    COUNTERS,
    DEFAULT_ARTICLE,
    GPTS_APPS,
    add_server_args,
    chatml,
    print_counters,
    read_metrics,
    run_on_server,
)

import parrot_bridge as P
from parrot_bridge.template import escape_text

INSTRUCTIONS = (
    "You are Paper Guide, an assistant that answers questions about one research paper, the "
    "knowledge file below. Answer in two or three sentences, from the paper only; when the "
    "paper does not say, say so. Quote numbers exactly as the paper gives them.\n\n"
    "Knowledge file:\n\n"
)
QUESTIONS = (
    "What problem does the paper address?",
    "What method does it propose?",
    "How is the method evaluated?",
    "What are the main results?",
    "What are its limitations?",
    "Which prior work does it build on?",
    "Who would find it useful?",
    "What should I read first?",
)
PREFIX_COUNTERS = (
    "parrot_prefix_fills_total",
    "parrot_prefix_fill_tokens_total",
    "parrot_prefix_hits_total",
    "parrot_fork_cached_tokens_total",
)
Encode = Callable[[str], Sequence[int]]
Decode = Callable[[Sequence[int]], str]


def main() -> None:
    args = parse_args()
    run_on_server(args, lambda url: asyncio.run(serve_users(url, args)))


async def serve_users(url: str, args: argparse.Namespace) -> None:
    app = next(a for a in json.loads(GPTS_APPS.read_text()) if a["app_name"] == args.app)
    max_tokens = args.max_tokens or app["output_length"]
    wanted = args.prompt_tokens or app["prompt_length"]
    # room for a question and the answer in the model's context
    fits = post(url, "/tokenize", {"prompt": ""})["max_model_len"] - max_tokens - 64
    system = system_prompt(min(wanted, fits), encode=lambda text: tokenize(url, text),
                           decode=lambda ids: post(url, "/detokenize", {"tokens": ids})["prompt"],
                           article=Path(args.article))  # fmt: skip
    answer = app_function(system, max_tokens)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.users)]

    before = read_metrics(url)
    answers = await asyncio.gather(*(ask(url, answer, q, i) for i, q in enumerate(questions)))
    after = read_metrics(url)

    for i, (question, text) in enumerate(zip(questions, answers, strict=True)):
        print(f"\nuser {i + 1}: {question}\n{text.strip()}")
    print(f"\nsystem prompt: {len(tokenize(url, system))} tokens "
          f"({args.app}'s is {app['prompt_length']} in gpts-top4.json)")  # fmt: skip
    print(f"users: {args.users}, each in a session of their own, all at once")
    print_counters(before, after, (*COUNTERS, *PREFIX_COUNTERS))
    fills, fill_tokens, hits, forked = (after.get(n, 0) - before.get(n, 0) for n in PREFIX_COUNTERS)
    print(f"\nshared prefix (the system prompt) prefilled {fills:.0f} time(s), {fill_tokens:.0f} "
          f"tokens; then forked for {hits:.0f} user(s), {forked:.0f} tokens not computed again")  # fmt: skip


def app_function(system: str, max_tokens: int) -> P.SemanticFunction:
    """The app: its system prompt is constant text of the template, the question an input."""
    template = chatml(escape_text(system), "{{input:question}}", "answer")
    return P.SemanticFunction(template, name="paper_guide", max_tokens=max_tokens, temperature=0)


async def ask(url: str, answer: P.SemanticFunction, question: str, user: int) -> str:
    """One user's session: the question sent, the answer awaited."""
    async with P.Session(url, name=f"user{user + 1}"):
        return await answer(question).aget(criteria="latency")


def system_prompt(tokens: int, encode: Encode, decode: Decode, article: Path) -> str:
    """The instructions and as much of the paper as makes about `tokens` tokens in all (cut
    after a word), with the model's tokenizer (`encode` adds no special tokens)."""
    room = tokens - len(encode(INSTRUCTIONS))
    if room < 1:
        raise SystemExit(f"a system prompt of {tokens} tokens leaves no room for the paper")
    # the converted paper's runs of blank lines and indents would be most of a knowledge file
    paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", article.read_text()))
    paper = "\n\n".join(p for p in paragraphs if p)[: 8 * tokens]  # enough for `tokens`
    knowledge = decode(list(encode(paper))[:room])
    return INSTRUCTIONS + re.sub(r"\S*$", "", knowledge).strip()  # no word cut in two


def tokenize(url: str, text: str) -> list[int]:
    return post(url, "/tokenize", {"prompt": text, "add_special_tokens": False})["tokens"]


def post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.load(resp)


def parse_args() -> argparse.Namespace:
    names = [a["app_name"] for a in json.loads(GPTS_APPS.read_text())]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_args(p)
    p.add_argument("--app", choices=names, default=names[0],
                   help="the app of gpts-top4.json whose system prompt length to take")  # fmt: skip
    p.add_argument("--prompt-tokens", type=int, help="this system prompt length instead")
    p.add_argument("--article", default=str(DEFAULT_ARTICLE), help="the knowledge file")
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--max-tokens", type=int, help="per answer (default: the app's output length)")
    args = p.parse_args()
    if args.users < 1:
        p.error("--users must be at least 1")
    return args


if __name__ == "__main__":
    main()
