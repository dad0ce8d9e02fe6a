"""OpenAI tool calling on a chat template that knows nothing of tools: what a request's `tools`,
`tool_choice` and `parallel_tool_calls` ask, checked, and the messages the template renders.

The tools are described at the end of the system message, and the model is asked to answer a
call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, the convention of the Hermes
and Qwen chat formats that open models are commonly tuned on; `ToolCallParser` reads such
blocks back out of the generated text. Past turns are rendered the same way: an assistant
message's `tool_calls` become blocks after its content, and `tool` messages become one user turn
of `<tool_response>` blocks (templates without a tool role render it as a plain turn, or fail).
A forced call (`tool_choice` "required" or a named function) is primed: the assistant turn
starts inside the block, so the model only writes the name (required) or the arguments, and
the decoder holds it to a call: one of the tools' names, arguments that follow the function's
parameters (where the decoder can enforce them; else any JSON object), and the answer ends.
"""

from __future__ import annotations

import json
import re
import reprlib
from dataclasses import dataclass
from typing import Any

from server.api.schema_validity import schema_problem
from server.engine.json_schema import SchemaError, compile_schema
from server.errors import bad_request

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """The request's tools and how they may be used. `required` asks for a call; `forced` names
    the function the answer's first call is (tool_choice naming it, or "required" with one
    tool); `parallel` false allows one call per answer; `named`: tool_choice named it."""

    tools: tuple[Tool, ...]
    required: bool = False
    forced: str | None = None
    parallel: bool = True
    named: bool = False

    @classmethod
    def of(
        cls, tools: list[Any] | None, tool_choice: object, parallel: bool | None
    ) -> ToolRequest | None:
        """The checked request, or None when it offers no tools (or tool_choice is "none");
        400s name the field at fault."""
        checked = tuple(_tool(t, i) for i, t in enumerate(tools or []))
        names = [t.name for t in checked]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            raise bad_request(f"tools: the function name {twice!r} is given twice", param="tools")
        if tool_choice is None or tool_choice == "auto":
            return cls(checked, parallel=parallel is not False) if checked else None
        if tool_choice == "none":
            return None
        if not checked:
            raise bad_request(
                f"tool_choice {tool_choice!r} needs tools, and the request has none",
                param="tool_choice",
            )
        if tool_choice == "required":
            # with one tool, a required call is a call of it (primed with its name)
            forced = checked[0].name if len(checked) == 1 else None
            return cls(checked, required=True, forced=forced, parallel=parallel is not False)
        name = _chosen_name(tool_choice)
        if name not in names:
            raise bad_request(
                f"tool_choice names the function {name!r}, which is not among the tools "
                f"({', '.join(names)})",
                param="tool_choice",
            )
        return cls(checked, required=True, forced=name, parallel=False, named=True)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tools)

    def system_text(self) -> str:
        """What the system message says about the tools and how to call them."""
        signatures = "\n".join(
            json.dumps(
                {"name": t.name, "description": t.description, "parameters": t.parameters},
                ensure_ascii=False,
            )
            for t in self.tools
        )
        how_many = "one or more functions" if self.parallel else "at most one function"
        when = (
            "You must call " + (f"the function {self.forced}" if self.forced else "a function")
            if self.required
            else f"When it helps to answer, you may call {how_many}"
        )
        return (
            f"# Tools\n\n{when}. These are the functions, one JSON signature per line, "
            f"inside <tools></tools>:\n<tools>\n{signatures}\n</tools>\n\n"
            "To call a function, write a JSON object with its name and its arguments inside "
            f"{TOOL_CALL_OPEN}{TOOL_CALL_CLOSE} tags, one call per tag:\n"
            f'{TOOL_CALL_OPEN}\n{{"name": "<function name>", "arguments": {{<arguments>}}}}\n'
            f"{TOOL_CALL_CLOSE}"
        )

    def primer(self) -> str:
        """The start of the assistant's answer when a call is forced (else empty)."""
        if self.forced is not None:
            return f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(self.forced)}, "arguments": '
        if self.required:
            return f'{TOOL_CALL_OPEN}\n{{"name": "'
        return ""

    @property
    def constrained(self) -> bool:
        """A named call's primer ends where its arguments start: they are generated as one
        JSON object (following `arguments_schema()` where there is one), and the answer ends
        with it. (A required call of a function the model picks: `call_tags`.)"""
        return self.forced is not None

    def arguments_schema(self) -> dict[str, Any] | None:
        """A named call's parameters schema, which its arguments then follow; None where the
        decoder cannot enforce it (the arguments are then any JSON object)."""
        tool = next((t for t in self.tools if t.name == self.forced), None)
        return None if tool is None else _enforceable(tool.parameters)

    def call_tags(self) -> dict[str, dict[str, Any] | None] | None:
        """For a required call whose function the model picks (its primer ends at the opening
        quote of the name): the text of each tool's name up to its arguments, with the schema
        they follow (None: any JSON object), as `SamplingParams.tagged_json` takes them; else
        None."""
        if not self.required or self.forced is not None:
            return None
        return {f'{t.name}", "arguments": ': _enforceable(t.parameters) for t in self.tools}

    def stops(self) -> list[str]:
        """Stop strings the answer needs: one call only ends at its closing tag."""
        return [] if self.parallel else [TOOL_CALL_CLOSE]


def has_tool_turns(messages: list[dict[str, Any]]) -> bool:
    """Whether past turns hold tool calls or results (they render as blocks then)."""
    return any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def render_tool_turns(
    messages: list[dict[str, Any]], tools: ToolRequest | None
) -> list[dict[str, Any]]:
    """`messages` ({"role", "content", "tool_calls"?, ...}) as plain text turns: the tools'
    description in the system message, past calls as blocks, tool results as user turns."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "tool":
            block = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "tool_results": True})
            continue
        rendered = {k: v for k, v in message.items() if k != "tool_calls"}
        calls = message.get("tool_calls") or []
        if calls:
            blocks = "\n".join(_call_block(c) for c in calls)
            rendered["content"] = f"{content}\n{blocks}" if content else blocks
        out.append(rendered)
    for message in out:
        message.pop("tool_results", None)
    if tools is not None:
        text = tools.system_text()
        if out and out[0]["role"] in ("system", "developer"):
            first = out[0]["content"]
            out[0] = {**out[0], "content": f"{first}\n\n{text}" if first else text}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def check_tool_calls(calls: object, index: int) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls` (OpenAI's shape), checked; 400 names the field."""
    where = f"messages[{index}].tool_calls"
    if not isinstance(calls, list):
        raise bad_request(f"{where} must be a list", param="messages")
    checked = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments", "{}") if isinstance(function, dict) else None
        if not isinstance(name, str) or not isinstance(arguments, str):
            raise bad_request(
                f'{where}[{j}] must be {{"id", "type": "function", "function": {{"name": str, '
                f'"arguments": str}}}}',
                param="messages",
            )
        checked.append({"name": name, "arguments": arguments})
    return checked


def _call_block(call: dict[str, str]) -> str:
    try:
        arguments: object = json.loads(call["arguments"])
    except (ValueError, RecursionError):  # nested past the stack
        arguments = call["arguments"]  # as the client sent it
    body = json.dumps({"name": call["name"], "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def _tool(raw: object, index: int) -> Tool:
    where = f"tools[{index}]"
    if not isinstance(raw, dict) or raw.get("type", "function") != "function":
        raise bad_request(f'{where}: only {{"type": "function", ...}} tools are supported',
                          param="tools")  # fmt: skip
    function = raw.get("function")
    if not isinstance(function, dict):
        raise bad_request(f"{where}.function must be an object with a name", param="tools")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise bad_request(
            f"{where}.function.name must be 1-64 letters, digits, '_' or '-', got {name!r}",
            param="tools",
        )
    description = function.get("description")
    description = "" if description is None else description
    parameters = function.get("parameters")
    parameters = {"type": "object", "properties": {}} if parameters is None else parameters
    if not isinstance(description, str):
        raise bad_request(f"{where}.function.description must be a string", param="tools")
    return Tool(name, description, _parameters(parameters, name, f"{where}.function.parameters"))


def _parameters(schema: object, name: str, where: str) -> dict[str, Any]:
    """`schema`, checked: a 400 in OpenAI's words (its code and param too) when it is not a
    JSON Schema object, not a valid one, or not one of an object (arguments are an object)."""
    if not isinstance(schema, dict):
        problem = f"#: must be a JSON Schema object, got {reprlib.repr(schema)}"
    else:
        kinds = schema.get("type", "object")
        problem = schema_problem(schema) or (
            None if "object" in (kinds if isinstance(kinds, list) else [kinds])
            else f'#/type: the schema must be of type "object" (arguments are an object), '
            f"got {kinds!r}"
        )  # fmt: skip
    if problem is not None:
        raise bad_request(
            f"Invalid schema for function {name!r}: {where}: {problem}",
            code="invalid_function_parameters", param=where,
        )  # fmt: skip
    return schema  # type: ignore[return-value]


def _enforceable(schema: dict[str, Any]) -> dict[str, Any] | None:
    try:
        compile_schema(schema)
    except SchemaError:
        return None
    return schema


def _chosen_name(tool_choice: object) -> str:
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "function" or not name:
        raise bad_request(
            'tool_choice must be "none", "auto", "required" or {"type": "function", '
            f'"function": {{"name": ...}}}}, got {tool_choice!r}',
            param="tool_choice",
        )
    return str(name)
