"""A Responses API request as the chat request it amounts to: its input items (after a
followed response's conversation) as chat messages, its tools, tool_choice and text format in
the chat API's shapes. The fields this server cannot honour get a 400 naming them."""

from __future__ import annotations

import json
from typing import Any

from server.api.response_output import new_id
from server.api.responses_models import LOGPROBS_INCLUDE, ResponsesRequest
from server.errors import ApiError, bad_request

Message = dict[str, Any]  # a chat message as ChatCompletionRequest takes it

# vLLM's sampling extensions (chat fields the Responses API lacks) taken from extra_body
_PASSED_EXTENSIONS = (
    "seed", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
    "stop", "stop_token_ids", "ignore_eos", "min_tokens", "logit_bias", "bad_words",
    "allowed_token_ids", "skip_special_tokens", "include_stop_str_in_output", "priority",
    "cache_salt",
)  # fmt: skip
_TEXT_PARTS = ("input_text", "output_text", "text")


def chat_request_of(body: ResponsesRequest, history: list[Message]) -> dict[str, Any]:
    """The chat request (a `ChatCompletionRequest`'s fields) that answers `body` after the
    conversation `history` (a followed response's messages; the instructions are this
    request's only)."""
    _refuse_unsupported(body)
    messages: list[Message] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    messages += history
    messages += input_messages(body.input)
    chat: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stream": body.stream,
        "user": body.user,
        "tools": [_chat_tool(t, i) for i, t in enumerate(body.tools or [])] or None,
        "tool_choice": _chat_tool_choice(body.tool_choice),
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": _response_format(body.text),
    }
    if LOGPROBS_INCLUDE in (body.include or []):
        chat["logprobs"] = True
        chat["top_logprobs"] = body.top_logprobs or 0
    extra = body.model_extra or {}
    chat.update({k: extra[k] for k in _PASSED_EXTENSIONS if k in extra})
    verbosity = (body.text or {}).get("verbosity")
    if verbosity is not None:  # the chat checks refuse what cannot be honoured
        chat["verbosity"] = verbosity
    return chat


def input_messages(items: str | list[dict[str, Any]]) -> list[Message]:
    """The input as chat messages: a text is a user message; a list's messages keep their
    role (developer is system where the template has no role of that name), consecutive function_call items become one assistant
    message's tool_calls (after its text, if a message came right before), and each
    function_call_output a tool message."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not items:
        raise bad_request("input must not be an empty list", param="input")
    messages: list[Message] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise bad_request(f"input[{i}] must be an object (an input item)", param="input")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, i))
        elif kind == "function_call":
            call = _function_call(item, i)
            last = messages[-1] if messages else None
            follows = last is not None and last["role"] == "assistant" and (
                bool(last.get("tool_calls")) or (i > 0 and _is_message(items[i - 1]))
            )
            if follows:
                last.setdefault("tool_calls", []).append(call)  # type: ignore[union-attr]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(_function_output(item, i))
        else:
            raise bad_request(
                f"input[{i}]: items of type {kind!r} are not supported; this server takes "
                "message, function_call and function_call_output items",
                param="input",
            )
    return messages


def input_items(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The input as OpenAI lists a response's input items: each with an id (its own, or a new
    one) and a status, a text as a user message of one `input_text` part. The items are
    already checked (`input_messages`)."""
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    listed = []
    for item in items:
        kind = item.get("type", "message")
        entry = {**item, "type": kind, "status": item.get("status") or "completed"}
        if kind == "message" and isinstance(item["content"], str):
            part = "output_text" if item["role"] == "assistant" else "input_text"
            entry["content"] = [{"type": part, "text": item["content"]}]
        prefix = {"message": "msg", "function_call": "fc"}.get(kind, "fco")
        entry["id"] = item.get("id") or new_id(prefix)
        listed.append(entry)
    return listed


def responses_error(exc: ApiError) -> ApiError:
    """A 400 of the chat checks, named as the Responses API names its fields."""
    renames = {
        "messages": "input", "response_format": "text.format",
        "max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens",
        "verbosity": "text.verbosity",
    }  # fmt: skip
    message = exc.message.replace(".function.", ".")
    for old, new in renames.items():
        message = message.replace(old, new)
    param = renames.get(exc.param, exc.param.replace(".function.", ".")) if exc.param else None
    return ApiError(exc.status, message, type=exc.type, code=exc.code, param=param,
                    headers=exc.headers)  # fmt: skip


def _refuse_unsupported(body: ResponsesRequest) -> None:
    refused = {
        "background": (body.background, "background responses are not supported"),
        "conversation": (body.conversation, "conversations are not supported: follow a "
                         "stored response with previous_response_id"),
        "prompt": (body.prompt, "prompt templates are not supported"),
        "max_tool_calls": (body.max_tool_calls, "max_tool_calls is not supported"),
    }  # fmt: skip
    for param, (value, why) in refused.items():
        if value:
            raise bad_request(f"{why} (got {value!r})", param=param)
    if body.truncation == "auto":
        raise bad_request(
            "truncation 'auto' is not supported: an input that does not fit is refused",
            param="truncation",
        )
    effort = (body.reasoning or {}).get("effort")
    if effort not in (None, "none") or (body.reasoning or {}).get("summary"):
        raise bad_request(
            f"reasoning is not supported: the served model does not reason apart from its "
            f"output (got {body.reasoning!r})",
            param="reasoning",
        )


def _message(item: dict[str, Any], i: int) -> Message:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise bad_request(
            f"input[{i}].role must be user, assistant, system or developer, got {role!r}",
            param="input",
        )
    content = item.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "\n".join(_part_text(part, i, k) for k, part in enumerate(content))
    else:
        raise bad_request(f"input[{i}].content must be a string or a list of content parts",
                          param="input")  # fmt: skip
    return {"role": role, "content": text}


def _part_text(part: object, i: int, k: int, field: str = "content") -> str:
    where = f"input[{i}].{field}[{k}]"
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "refusal" and isinstance(part, dict) and isinstance(part.get("refusal"), str):
        return part["refusal"]
    if kind not in _TEXT_PARTS:
        raise bad_request(
            f"{where}: only text content parts (input_text, output_text) are supported, got "
            f"{kind!r}",
            param="input",
        )
    text = part.get("text") if isinstance(part, dict) else None
    if not isinstance(text, str):
        raise bad_request(f"{where}.text must be a string", param="input")
    return text


def _is_message(item: object) -> bool:
    return isinstance(item, dict) and item.get("type", "message") == "message"


def _function_call(item: dict[str, Any], i: int) -> dict[str, Any]:
    fields = {k: item.get(k) for k in ("call_id", "name", "arguments")}
    bad = next((k for k, v in fields.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise bad_request(f"input[{i}] (a function_call) needs {bad!r}, a string",
                          param="input")  # fmt: skip
    return {
        "id": fields["call_id"],
        "type": "function",
        "function": {"name": fields["name"], "arguments": fields["arguments"]},
    }


def _function_output(item: dict[str, Any], i: int) -> Message:
    call_id, output = item.get("call_id"), item.get("output")
    if not isinstance(call_id, str):
        raise bad_request(f"input[{i}] (a function_call_output) needs 'call_id', a string",
                          param="input")  # fmt: skip
    if output is None:  # not the JSON text "null": the client left its result out
        raise bad_request(
            f"input[{i}] (a function_call_output) needs 'output': the call's result, a string "
            "or a list of text parts",
            param="input",
        )
    if isinstance(output, list):
        output = "\n".join(_part_text(part, i, k, "output") for k, part in enumerate(output))
    elif not isinstance(output, str):
        output = json.dumps(output)  # as a client's tool result that is not text
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def _chat_tool(tool: object, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise bad_request(
            f"tools[{i}]: only function tools are supported, got type {kind!r}", param="tools"
        )
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if (not isinstance(choice, dict) or choice.get("type") != "function"
            or not isinstance(choice.get("name"), str)):  # fmt: skip
        raise bad_request(
            f'tool_choice must be "auto", "none", "required" or {{"type": "function", "name": '
            f"...}}, got {choice!r}",
            param="tool_choice",
        )
    return {"type": "function", "function": {"name": choice["name"]}}


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind != "json_schema":
        raise bad_request(
            f"text.format: the types are text, json_object and json_schema, got {kind!r}",
            param="text.format",
        )
    if not isinstance(fmt.get("schema"), dict):
        raise bad_request(
            'text.format.schema must be a JSON schema object: {"type": "json_schema", '
            '"name": ..., "schema": {...}}',
            param="text.format",
        )
    schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
    return {"type": "json_schema", "json_schema": schema}
