"""LangChain callbacks and message metadata for the model calls of a compiled chain.

A traced model call runs on the server inside a graph, so LangChain never starts a run for it.
Once the graph's values have arrived, each call is reported as the plain chain would report
it: a chat model (or LLM) run under the step's parent run, with its prompt, its message and
its usage; messages in the chain's output get the same usage, id and finish reason.

Usage and finish reason are the server's: each output variable of a graph reports them as a
plain request of its prompt would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import CallbackManager
from langchain_core.messages import AIMessage, AIMessageChunk, UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult, Generation, LLMResult
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_core.utils.function_calling import convert_to_json_schema

from parrot_bridge.langchain.chat_model import ChatParrot, usage_metadata
from parrot_bridge.langchain.llm import ParrotLLM
from parrot_bridge.langchain.symbols import map_items
from parrot_bridge.variable import SemanticVariable


@dataclass(slots=True)
class ModelRun:
    """A traced model call: its prompt holds sentinels until the graph's values arrive."""

    model: ChatParrot | ParrotLLM
    prompt: PromptValue
    stop: list[str] | None
    kwargs: dict[str, Any]
    config: RunnableConfig | None
    output: SemanticVariable
    structured_format: dict[str, Any] | None = None  # `ls_structured_output_format`
    order: int = 0  # its place among the trace's runs (other steps' too)

    @property
    def message_id(self) -> str:
        """The id of the call's AIMessage in the trace (so the output can be found again)."""
        return f"parrot-{self.output.id}"

    def callbacks(self) -> CallbackManager:
        """The manager the model's own invoke would configure from the step's config."""
        config = ensure_config(self.config)
        metadata = {**config.get("metadata", {}),
                    **self.model._get_ls_params(stop=self.stop, **self.kwargs)}  # fmt: skip
        return CallbackManager.configure(
            config.get("callbacks"), self.model.callbacks, self.model.verbose,
            config.get("tags"), self.model.tags, metadata, self.model.metadata,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a plain request would have said about a chat call."""

    usage: UsageMetadata
    finish_reason: str
    model_name: str
    token_usage: dict[str, Any]  # the server's usage, as a plain call's response_metadata has it
    additional_kwargs: dict[str, Any]  # the reply parsed into a pydantic response_format

    def response_metadata(self, message_id: str | None) -> dict[str, Any]:
        """A plain call's message metadata (ChatParrot's, with LangChain's llm_output merged);
        its `id` is the graph message's, as a plain reply's is the response's."""
        return {"token_usage": self.token_usage, "model_name": self.model_name,
                "finish_reason": self.finish_reason, "model_provider": "parrot",
                "id": message_id, "system_fingerprint": None, "logprobs": None}  # fmt: skip


def needed(runs: list[ModelRun], output_ids: set[str]) -> list[ModelRun]:
    """The runs to report: those with callback handlers or a message in the outputs."""
    return [r for r in runs if r.message_id in output_ids or r.callbacks().handlers]


def outcomes(runs: list[ModelRun]) -> dict[str, Outcome]:
    """What the server reported of each run's output (by message id): the usage a plain request
    of its prompt would report, and its finish reason. Only once the output was fetched."""
    out = {}
    for run in runs:
        usage, reason = run.output.usage, run.output.finish_reason
        if usage is None or reason is None:
            continue
        out[run.message_id] = Outcome(
            usage_metadata(usage), reason, run.model._model_id(run.kwargs), usage,
            _parsed(run.model, run.output.value or "", run.kwargs),
        )  # fmt: skip
    return out


def _parsed(model: ChatParrot | ParrotLLM, text: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The `additional_kwargs` that a plain chat call adds to its message (`parsed`)."""
    if not isinstance(model, ChatParrot):
        return {}
    result = ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])
    return model._with_parsed(result, kwargs).generations[0].message.additional_kwargs


def message(run: ModelRun, outcome: Outcome | None) -> AIMessage:
    """The AIMessage a plain call would have returned."""
    if outcome is None:
        return AIMessage(content=run.output.value or "", id=run.message_id)
    return AIMessage(
        content=run.output.value or "",
        id=run.message_id,
        usage_metadata=outcome.usage,
        response_metadata=outcome.response_metadata(run.message_id),
        additional_kwargs=dict(outcome.additional_kwargs),
    )


def last_chunk(done: AIMessage, runs: list[ModelRun]) -> AIMessageChunk:
    """The chunk that ends a streamed reply, `done` being the whole reply as the graph gave it:
    its finish reason and model, and its usage when the call streams usage (ChatParrot's
    `stream_usage`, as ChatOpenAI's), as a plain stream's last chunks carry them. Its id is the
    other chunks' (LangChain would give it the run's, which merging drops)."""
    run = next((r for r in runs if r.message_id == done.id), None)
    streams_usage = False
    if run is not None and isinstance(run.model, ChatParrot):
        streams_usage = run.model._stream_usage(run.kwargs)
    keys = ("finish_reason", "model_name", "model_provider")
    metadata = {k: done.response_metadata[k] for k in keys if k in done.response_metadata}
    return AIMessageChunk(
        content="",
        id=done.id,
        usage_metadata=done.usage_metadata if streams_usage else None,
        response_metadata=metadata,
        chunk_position="last",
    )


def report(
    runs: list[ModelRun], prompt: Callable[[ModelRun], PromptValue], found: dict[str, Outcome]
) -> None:
    """Start and end each run's callbacks, as `invoke` on the model would have."""
    for run in runs:
        manager = run.callbacks()
        if not manager.handlers:
            continue
        params = run.model._get_invocation_params(stop=run.stop, **run.kwargs)
        options = {"stop": run.stop, **run.kwargs, **_structured_option(run.structured_format)}
        shown = prompt(run)
        if isinstance(run.model, ChatParrot):
            (manager_run,) = manager.on_chat_model_start(
                run.model._serialized, [shown.to_messages()], invocation_params=params,
                options=options, batch_size=1,
            )  # fmt: skip
            outcome = found.get(run.message_id)
            reply = message(run, outcome)
            generation: Generation = ChatGeneration(
                message=reply, generation_info={"finish_reason": outcome.finish_reason}
                if outcome else None,
            )  # fmt: skip
            llm_output = None
            if outcome is not None:  # as ChatParrot's plain calls report it
                llm_output = {"token_usage": run.output.usage, "model_name": outcome.model_name,
                              "id": reply.id, "system_fingerprint": None}  # fmt: skip
        else:
            (manager_run,) = manager.on_llm_start(
                run.model._serialized, [shown.to_string()], invocation_params=params,
                options=options, batch_size=1,
            )  # fmt: skip
            generation = Generation(text=run.output.value or "")
            llm_output = None
            if run.message_id in found:  # as ParrotLLM's plain calls report it
                usage = run.output.usage
                llm_output = {"token_usage": usage, "model_name": found[run.message_id].model_name}
        manager_run.on_llm_end(LLMResult(generations=[[generation]], llm_output=llm_output))


def with_outcomes(obj: Any, found: dict[str, Outcome]) -> Any:
    """`obj` with the traced calls' messages given what a plain call's message has: usage,
    finish reason, token usage, the parsed reply."""
    if isinstance(obj, AIMessage) and obj.id in found:
        outcome = found[obj.id]
        return obj.model_copy(update={
            "usage_metadata": outcome.usage,
            "response_metadata": {**obj.response_metadata, **outcome.response_metadata(obj.id)},
            "additional_kwargs": {**obj.additional_kwargs, **outcome.additional_kwargs},
        })  # fmt: skip
    if isinstance(obj, dict | list | tuple):
        return map_items(obj, lambda v: with_outcomes(v, found))
    return obj


def _structured_option(structured: dict[str, Any] | None) -> dict[str, Any]:
    """The `ls_structured_output_format` option as the model's own invoke reports it: the
    schema as JSON schema (left out, as there, when it cannot be converted)."""
    if not structured:
        return {}
    try:
        schema = convert_to_json_schema(structured["schema"])
    except ValueError:
        return {}
    return {"ls_structured_output_format": {"kwargs": structured.get("kwargs", {}),
                                            "schema": schema}}  # fmt: skip
