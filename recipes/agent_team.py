"""A team of LLM agents writing a program together, run as one graph of Semantic Variables.

The roles are the four-agent software team of the shared data (multi-agent-roles/): the
architect designs the files and APIs of a command-line snake game; one programmer per file
implements it from the design, the four in parallel; the reviewer reads the four files; one
reviser per file revises it from all the code and the review, in parallel again. Each role's
`{placeholders}` become Semantic Variables (another agent's output) or fixed text (a file
name); those that show the answer's format stay as written. The templates use the ChatML turns
of the default model (SmolLM2-Instruct).

The ten calls go to the server in one submission: each agent starts there as soon as its
inputs are ready, without a round trip through this script, and the prompt text that several
agents read alike (the design, the code and the review) is computed once for all of them: the
cached tokens at the end.

    make serve   # in another terminal (or pass --serve MODEL to start one here)
    python recipes/agent_team.py --url http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from dataclasses import dataclass

from _common import ROLES_DIR, add_server_args, chatml, print_counters, read_metrics, run_on_server

import parrot_bridge as P
from parrot_bridge.template import escape_text

FILES = ("main.py", "game.py", "snake.py", "food.py")  # as the architect's role lists them
SYSTEM = "You are a member of a software team that writes a command-line snake game in Python."
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
Agent = P.SemanticFunction


@dataclass(frozen=True, slots=True)
class Team:
    """One semantic function per agent; programmers and revisers by the file they write."""

    architect: Agent
    programmers: dict[str, Agent]
    reviewer: Agent
    revisers: dict[str, Agent]


def main() -> None:
    args = parse_args()
    team = build_team(args.design_tokens, args.code_tokens, args.review_tokens)
    run_on_server(args, lambda url: asyncio.run(run_team(url, team)))


async def run_team(url: str, team: Team) -> None:
    before = read_metrics(url)
    start = time.perf_counter()
    async with P.Session(url, name="agent_team"):
        design = team.architect()
        code = {code_slot(f): team.programmers[f](design=design) for f in FILES}
        review = team.reviewer(**code)
        revised = {f: team.revisers[f](review=review, **code) for f in FILES}
        # Nothing has been sent yet: the first read submits all the calls as one graph, the
        # revised files awaited with the latency objective (the team's answer).
        answers = await asyncio.gather(*(revised[f].aget(criteria="latency") for f in FILES))
        review_text = await review.aget()
    elapsed = time.perf_counter() - start
    after = read_metrics(url)

    print("\nReview:\n" + review_text.strip() + "\n")
    for file_name, text in zip(FILES, answers, strict=True):
        print(f"--- {file_name} (revised) ---\n{text.strip()}\n")
    calls, submissions = (
        after.get(name, 0) - before.get(name, 0)
        for name in ('parrot_calls_total{status="done"}', "parrot_graph_submissions_total")
    )
    print(f"calls: {calls:.0f} (1 architect, {len(FILES)} programmers, 1 reviewer, "
          f"{len(FILES)} revisers), sent in {submissions:.0f} graph submission(s)")  # fmt: skip
    print(f"total: {elapsed:.2f} s")
    print_counters(before, after)


def build_team(design_tokens: int, code_tokens: int, review_tokens: int) -> Team:
    """The agents, from the role texts; the token caps bound each agent's answer."""

    def agent(role: str, name: str, output: str, max_tokens: int, **slots: str) -> Agent:
        template = chatml(SYSTEM, role_text(role, slots), output)
        return P.SemanticFunction(template, name=name, max_tokens=max_tokens, temperature=0)

    codes = {code_slot(f): f"{{{{input:{code_slot(f)}}}}}" for f in FILES}
    programmers, revisers = {}, {}
    for f in FILES:
        others = {f"other_filename{i + 1}": o for i, o in enumerate(o for o in FILES if o != f)}
        design = {"architect_response": "{{input:design}}", "file_name": f}
        programmers[f] = agent("programmer", f"programmer_{stem(f)}", "code", code_tokens,
                               **design, **others)  # fmt: skip
        revisers[f] = agent("reviser", f"reviser_{stem(f)}", "revised", code_tokens,
                            review="{{input:review}}", file_name=f, **codes)  # fmt: skip
    return Team(
        architect=agent("architect", "architect", "design", design_tokens),
        programmers=programmers,
        # its `{review}` ends the role text: the review is the assistant's turn instead
        reviewer=agent("reviewer", "reviewer", "review", review_tokens, review="", **codes),
        revisers=revisers,
    )


def role_text(role: str, slots: dict[str, str]) -> str:
    """A role's text as template text, its placeholders named in `slots` replaced (by a
    marker or by text); the others show the answer's format and are kept."""
    text = escape_text((ROLES_DIR / f"{role}.txt").read_text().strip())
    return _PLACEHOLDER.sub(lambda m: slots.get(m.group(1), m.group(0)), text).rstrip()


def stem(file_name: str) -> str:
    return file_name.removesuffix(".py")


def code_slot(file_name: str) -> str:
    """The roles' placeholder for a file's code: main.py -> main_code."""
    return f"{stem(file_name)}_code"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_args(p)
    p.add_argument("--design-tokens", type=int, default=512, help="the architect's answer")
    p.add_argument("--code-tokens", type=int, default=512, help="each file, written or revised")
    p.add_argument("--review-tokens", type=int, default=256)
    return p.parse_args()


if __name__ == "__main__":
    main()
