"""Job builders for the application shapes the workloads share (pure data)."""

from __future__ import annotations

import statistics

from benchmarks.common.data import chatml, escape_markers
from benchmarks.common.graph import Call, Criteria, Job, JobResult, Ref

SUMMARIZER = "You summarize research papers accurately and briefly."
ASSISTANT = "You are a helpful assistant. Answer briefly and clearly."


def map_reduce_job(
    name: str,
    chunks: list[str],
    map_tokens: int,
    reduce_tokens: int,
    criteria: Criteria = "latency",
    start_s: float = 0.0,
    app: str = "map_reduce",
) -> Job:
    """One map call per chunk, then one reduce call over all map outputs."""
    maps = [
        Call(
            f"map{i}",
            chatml(SUMMARIZER, "Here is a part of a research paper.\n\n{{input:chunk}}\n\n"
                   "Summarize this part in two sentences.", "summary"),
            {"chunk": chunk},
            map_tokens,
        )
        for i, chunk in enumerate(chunks)
    ]  # fmt: skip
    parts = "\n".join(f"Part {i + 1}: {{{{input:part{i}}}}}" for i in range(len(chunks)))
    reduce = Call(
        "reduce",
        chatml(SUMMARIZER, "These are summaries of the consecutive parts of a research paper.\n"
               f"{parts}\n\nWrite a one-paragraph summary of the whole paper.", "summary"),
        {f"part{i}": Ref(f"map{i}") for i in range(len(chunks))},
        reduce_tokens,
    )  # fmt: skip
    return Job(name, app, (*maps, reduce), {"reduce": criteria}, start_s)


def chain_job(
    name: str, chunks: list[str], tokens: int, criteria: Criteria = "latency", start_s: float = 0.0
) -> Job:
    """Refine-style summary: each call reads the next chunk, then the summary so far. The chunk
    comes first so its prefill does not have to wait for the previous call."""
    first = Call(
        "step0",
        chatml(SUMMARIZER, "Here is the beginning of a research paper.\n\n{{input:chunk}}\n\n"
               "Summarize it in a few sentences.", "summary"),
        {"chunk": chunks[0]},
        tokens,
    )  # fmt: skip
    calls = [first]
    for i, chunk in enumerate(chunks[1:], start=1):
        calls.append(
            Call(
                f"step{i}",
                chatml(SUMMARIZER, "Here is the next part of a research paper.\n\n{{input:chunk}}"
                       "\n\nThis is the summary of the paper so far:\n{{input:previous}}\n\n"
                       "Refine the summary with the new part.", "summary"),
                {"chunk": chunk, "previous": Ref(f"step{i - 1}")},
                tokens,
            )
        )  # fmt: skip
    return Job(name, "chain_summary", tuple(calls), {calls[-1].name: criteria}, start_s)


def single_call_job(
    name: str,
    app: str,
    system: str,
    user: str,
    tokens: int,
    criteria: Criteria,
    start_s: float,
    user_as_input: str | None = None,
) -> Job:
    """One call: `system` and `user` text are constant template text (a shared prefix, keyed by
    content); `user_as_input`, when given, is appended as an input variable's value."""
    user_text = escape_markers(user)
    inputs: dict[str, str | Ref] = {}
    if user_as_input is not None:
        user_text += "{{input:query}}"
        inputs["query"] = user_as_input
    call = Call("answer", chatml(escape_markers(system), user_text, "answer"), inputs, tokens)
    return Job(name, app, (call,), {"answer": criteria}, start_s)


def mean_latency(jobs: list[JobResult] | None, app: str | None = None) -> float:
    """Mean job latency (of one app's jobs when given); nan when there are none."""
    picked = [j.latency_s for j in jobs or [] if app is None or j.app == app]
    return statistics.fmean(picked) if picked else float("nan")


def makespan(jobs: list[JobResult] | None) -> float:
    """From the first job's start to the last job's end."""
    if not jobs:
        return float("nan")
    return max(j.end_s for j in jobs) - min(j.start_s for j in jobs)
