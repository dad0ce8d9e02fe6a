"""Hand-built graphs for the analysis and scheduling tests (no engine, no server)."""

from __future__ import annotations

from server.graph import CallDecl, Criteria, Graph, Submission, VariableDecl


def decl(cid: str, template: str, inputs: dict[str, str], outputs: dict[str, str]) -> CallDecl:
    return CallDecl(id=cid, template=template, inputs=inputs, outputs=outputs, function=cid)


def map_reduce(n: int = 3, criteria: Criteria = "latency") -> Graph:
    """`n` map calls over chunks, one reduce reading all their summaries, awaited."""
    g = Graph()
    variables = [VariableDecl(f"chunk{i}", value=f"text {i}") for i in range(n)]
    variables += [VariableDecl(f"sum{i}") for i in range(n)] + [VariableDecl("final")]
    calls = [
        decl(f"map{i}", "Summarize: {{input:c}}\nSummary:{{output:s}}", {"c": f"chunk{i}"},
             {"s": f"sum{i}"})
        for i in range(n)
    ]  # fmt: skip
    joined = " ".join(f"{{{{input:s{i}}}}}" for i in range(n))
    calls.append(decl("reduce", f"Combine: {joined}\nAll:{{{{output:f}}}}",
                      {f"s{i}": f"sum{i}" for i in range(n)}, {"f": "final"}))  # fmt: skip
    g.submit(Submission(variables=variables, calls=calls, awaits={"final": criteria}))
    return g


def chain(n: int = 3, criteria: Criteria | None = "latency") -> Graph:
    """A refine chain: step i reads chunk i and the summary of step i-1."""
    g = Graph()
    variables = [VariableDecl(f"chunk{i}", value=f"text {i}") for i in range(n)]
    variables += [VariableDecl("s-1", value="")] + [VariableDecl(f"s{i}") for i in range(n)]
    calls = [
        decl(f"step{i}", "Refine. Chunk: {{input:c}}\nPrevious: {{input:p}}\nNew:{{output:s}}",
             {"c": f"chunk{i}", "p": f"s{i - 1}"}, {"s": f"s{i}"})
        for i in range(n)
    ]  # fmt: skip
    awaits: dict[str, Criteria] = {f"s{n - 1}": criteria} if criteria else {}
    g.submit(Submission(variables=variables, calls=calls, awaits=awaits))
    return g
