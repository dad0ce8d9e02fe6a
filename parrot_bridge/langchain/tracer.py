"""Tracing one input through an LCEL chain into a session's pending graph.

Values flow through the chain as ordinary Python objects in which generated text is written as
sentinels (see `symbols`). Parrot model steps become semantic calls whose outputs are new
variables; prompt templates, parsers and structural steps pass sentinels along; a step that
needs a generated value (a non-Parrot step, a lambda that reads the text) splits the graph: what
was traced is submitted, the values it needs are awaited, and the step runs on the client.
Batch inputs, parallel branches and map items are traced as strands (see `rounds`): what they
all wait for at a point is submitted together, as one graph. Branches or map items that a
`max_concurrency` limits run apart instead, each a graph of its own (see `window`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from langchain_core.language_models import BaseLanguageModel
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import BasePromptTemplate
from langchain_core.runnables import (
    Runnable,
    RunnableBinding,
    RunnableConfig,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
    RunnableSequence,
)
from langchain_core.runnables.base import RunnableEach
from langchain_core.runnables.passthrough import RunnableAssign, RunnablePick

from parrot_bridge.errors import ParrotError
from parrot_bridge.function import SemanticFunction
from parrot_bridge.langchain.awaiting import get_all, submit_awaiting
from parrot_bridge.langchain.chat_model import ChatParrot
from parrot_bridge.langchain.http import ServerHttp
from parrot_bridge.langchain.lambdas import fragile_probes, invoke_here, result_reads_text
from parrot_bridge.langchain.llm import ParrotLLM
from parrot_bridge.langchain.messages import to_chat_messages
from parrot_bridge.langchain.reporting import ModelRun, needed, outcomes, report, with_outcomes
from parrot_bridge.langchain.response_format import semantic_constraint
from parrot_bridge.langchain.rounds import Outcome, Rounds
from parrot_bridge.langchain.settings import CHAT_ONLY_OPTIONS, without_options
from parrot_bridge.langchain.step_run import StepRun, format_quietly
from parrot_bridge.langchain.symbolic_str import NeedsValue, user_code
from parrot_bridge.langchain.symbols import Symbols, has_hidden_text, map_strings, strings
from parrot_bridge.langchain.window import run_window, window_size
from parrot_bridge.request_fields import semantic_options
from parrot_bridge.session import Session
from parrot_bridge.template import escape_text
from parrot_bridge.variable import Criteria, SemanticVariable

log = logging.getLogger("parrot_bridge.langchain")

ParrotModel = ChatParrot | ParrotLLM
_NOT_TRANSPARENT = "chat_template_not_transparent"  # the render route's error code


@dataclass(frozen=True, slots=True)
class TracedCall:
    """A semantic call of the trace: the step that made it, its inputs and its output."""

    step: str
    inputs: tuple[SemanticVariable, ...]
    output: SemanticVariable


@dataclass(frozen=True, slots=True)
class ClientStream:
    """What `Tracer.run_streamed` gives where its step runs on the client: the step's input,
    its generated values filled in, for the caller to stream the step on."""

    value: Any


@dataclass(slots=True)
class _PendingChat:
    model: ChatParrot
    conversation: list[dict[str, Any]]
    inputs: dict[str, SemanticVariable]
    sampling: dict[str, Any]
    output: SemanticVariable


@dataclass(slots=True)
class Tracer:
    """Traces inputs into `session`: `calls` lists the semantic calls made, and `on_split` is
    told (step name, reason, whether the step came after the whole graph) whenever a step has
    to wait for generated values. Whether it came after the whole graph is known only later:
    a step that is not a model call (a parser, a lambda) is told once the next call of its
    strand is traced (it split the graph) or once the trace ends (it did not: a parser of the
    last answer); another batch input's or parallel branch's calls do not count. `new_session`
    opens the session of a graph traced apart (see `_window`); default: one like `session`."""

    session: Session
    criteria: Criteria = "latency"
    timeout: float | None = None  # seconds each generated value may take (the model's)
    on_split: Callable[[str, str, bool], None] = lambda step, why, last: None
    new_session: Callable[[], Session] | None = None
    symbols: Symbols = field(default_factory=Symbols)
    calls: list[TracedCall] = field(default_factory=list)
    model_runs: list[ModelRun] = field(default_factory=list)
    step_runs: list[StepRun] = field(default_factory=list)  # to report once values are known
    _chats: list[_PendingChat] = field(default_factory=list)
    rounds: Rounds = field(init=False)
    _streamed: Runnable | None = field(default=None, init=False)  # see `run_streamed`

    def __post_init__(self) -> None:
        self.rounds = Rounds(self._submit_round)

    def run_each(
        self, step: Runnable, values: list[Any], configs: list[RunnableConfig | None]
    ) -> list[Outcome]:
        """`run` on each value, each as a strand of its own: their waits are grouped."""
        tasks = [partial(self.run, step, v, c) for v, c in zip(values, configs, strict=True)]
        return self.rounds.fork(tasks)

    def run(self, step: Runnable, value: Any, config: RunnableConfig | None = None) -> Any:
        """The symbolic result of `step` on `value`."""
        if isinstance(step, ParrotModel):
            return self._model(step, value, {}, config)
        if isinstance(step, RunnableBinding) and _plain_binding(step):
            if isinstance(step.bound, ParrotModel):
                return self._model(
                    step.bound, value, dict(step.kwargs), step._merge_configs(config)
                )
            if not step.kwargs:  # bound arguments of other steps are theirs to read: run it here
                return self.run(step.bound, value, step._merge_configs(config))
        if isinstance(step, RunnableSequence):
            for inner in step.steps:
                value = self.run(inner, value, config)
            return value
        if isinstance(step, RunnableParallel):
            branches = list(step.steps__.values())
            if window_size(config, len(branches)):
                outs = self._window(step, [(b, value) for b in branches], config)
            else:
                outs = self.run_each_of(branches, value, config)
            return dict(zip(step.steps__, outs, strict=True))
        if isinstance(step, RunnableAssign):
            if not isinstance(value, dict):
                raise ValueError("The input to RunnablePassthrough.assign() must be a dict.")
            return {**value, **self.run(step.mapper, value, config)}
        if isinstance(step, RunnablePick) or (
            isinstance(step, RunnablePassthrough) and step.func is None
        ):  # only moves values around
            if not self.symbols.find(value):
                return step.invoke(value, config)
            out = step._pick(value) if isinstance(step, RunnablePick) else value
            return self._report_later(step, config, value, out, None)
        if isinstance(step, RunnableEach) and isinstance(value, list):
            if window_size(config, len(value)):
                return self._window(step, [(step.bound, v) for v in value], config)
            return _values(self.run_each(step.bound, value, [config] * len(value)))
        if isinstance(step, RunnableLambda) and getattr(step, "func", None) is not None:
            return self._lambda(step, value, config)
        if isinstance(step, BasePromptTemplate):
            return self._prompt(step, value, config)
        if type(step) is StrOutputParser:
            return self._str_parser(step, value, config)
        return self._on_client(step, value, config, "it is not a step Parrot can trace")

    def run_streamed(self, step: Runnable, value: Any, config: RunnableConfig | None) -> Any:
        """`run`, except where `step` itself runs on the client (a chat call asking for logprobs,
        a model in `with_fallbacks`, one of another server...): then a `ClientStream` of its
        input, the generated values in it awaited, so that the caller streams the step as a
        plain stream does, chunk by chunk, rather than take its whole result. A chat call asking
        for several samples runs as in `run` (ChatParrot streams one sample, refusing more)."""
        self._streamed = step
        try:
            return self.run(step, value, config)
        finally:
            self._streamed = None

    def run_each_of(
        self, steps: list[Runnable], value: Any, config: RunnableConfig | None
    ) -> list[Any]:
        """`run` of each step on `value` (parallel branches), each as a strand of its own;
        the first branch's exception, in their order, is raised (as RunnableParallel does)."""
        return _values(self.rounds.fork([partial(self.run, s, value, config) for s in steps]))

    @contextmanager
    def resolve(self, obj: Any) -> Iterator[Any]:
        """`obj` with its generated values filled in, its messages complete, for a step run on
        the client in the block: the strand waits for the round that submits what all strands
        traced so far; the block runs while others trace."""
        variables = [v for v in self.symbols.find(obj) if v.value is None]
        # its messages as the plain calls give them: metadata too (finish reason, usage...)
        ids = set(_message_ids(obj))
        runs = [run for run in self.model_runs if run.message_id in ids]
        with self.rounds.waiting(variables) if variables else self.rounds.released():
            filled = self.symbols.substitute(obj, lambda v: v.value)
            yield with_outcomes(filled, outcomes(runs))

    def finish(self, outs: Any) -> Any:
        """`outs` with its generated values, after reporting the traced model calls to their
        callbacks; its messages get the usage a plain call would report (see `reporting`).
        Called once every strand has ended."""
        self._tell_waits(last=True)
        self.commit()
        runs = needed(self.model_runs, set(_message_ids(outs)))
        steps = [s for s in self.step_runs if s.callbacks().handlers]
        wanted = self.symbols.find(outs)
        for run in runs:
            wanted += [*self.symbols.find(run.prompt), run.output]
        for step in steps:
            wanted += self.symbols.find([step.input, step.output])
        missing = list({id(v): v for v in wanted if v.value is None}.values())
        if missing:
            get_all(self.session, missing, self.criteria, self.timeout)

        def prompt(run: ModelRun) -> Any:
            return self.symbols.substitute(run.prompt, lambda v: v.value)

        found = outcomes([r for r in self.model_runs if r.output.value is not None])

        def fill(obj: Any) -> Any:
            return with_outcomes(self.symbols.substitute(obj, lambda v: v.value), found)

        # in trace order, so that callbacks see the plain chain's order of runs
        for run in sorted([*runs, *steps], key=lambda r: r.order):
            if isinstance(run, StepRun):
                run.report(fill)
            else:
                report([run], prompt, found)
        return fill(outs)

    def commit(self) -> None:
        """Render pending chat calls (one request) and record them in the session."""
        if not self._chats:
            return
        chats, self._chats = self._chats, []
        try:
            rendered = self._render([c.conversation for c in chats])
        except ParrotError as exc:
            if exc.code != _NOT_TRANSPARENT:
                raise
            for chat in chats:  # in trace order, so a chat's producers are recorded before it
                self._commit_alone(chat)
            return
        for chat, prompt in zip(chats, rendered["prompts"], strict=True):
            self._record_chat(chat, prompt["template"], rendered["max_model_len"])

    def _submit_round(self, variables: list[SemanticVariable]) -> dict[str, BaseException]:
        """Submit all that is pending, awaiting `variables`, and wait for their values: the
        error of each that failed (only its waiters raise it)."""
        self.commit()
        submit_awaiting(self.session, variables, self.criteria)
        errors: dict[str, BaseException] = {}
        for var in variables:
            try:
                var.get(self.criteria, self.timeout)
            except Exception as exc:  # noqa: BLE001 (handed to the strands that need it)
                errors[var.id] = exc
        return errors

    # -- steps ---------------------------------------------------------------------------------

    def _model(
        self, model: ParrotModel, value: Any, kwargs: dict[str, Any], config: RunnableConfig | None
    ) -> Any:
        self._tell_waits(last=False)  # a call after them: they split the graph
        if model.base_url.rstrip("/") != self.session.url.rstrip("/"):
            return self._on_client(model, value, config, "it talks to another server", kwargs)
        if isinstance(model, ChatParrot) and (kwargs.get("model") or model.model_name):
            # semantic calls name no model: an unserved one fails here, as a plain call's 404
            model._server_info(kwargs.get("model") or model.model_name)
        if isinstance(model, ChatParrot) and _asks_chat_only(model, kwargs):
            why = "it asks for several samples or logprobs, which semantic calls do not give"
            return self._on_client(model, value, config, why, kwargs)
        extras: dict[str, Any] = {}
        if isinstance(model, ChatParrot):  # ParrotLLM refuses what no semantic call takes
            extras, left = semantic_options("ChatParrot", "extra_body", model._extra_body(kwargs))
            if left:
                why = f"its extra_body sets {', '.join(left)}, which semantic calls do not take"
                return self._on_client(model, value, config, why, kwargs)
        stop = kwargs.pop("stop", None)
        # with_structured_output's note for callbacks, which the model's invoke takes out too
        structured = kwargs.pop("ls_structured_output_format", None)
        prompt = model._convert_input(self.symbols.untaint(value))
        output = SemanticVariable(name="reply" if isinstance(model, ChatParrot) else "completion")
        if isinstance(model, ParrotLLM):
            template, inputs = self._template(prompt.to_string())
            sampling = model._call_sampling(stop, kwargs)
            fn = SemanticFunction(template + "{{output:completion}}", name="ParrotLLM", **sampling)
            fn.invoke(self.session, **inputs, completion=output)
        else:
            conversation, inputs = self._conversation(to_chat_messages(prompt.to_messages()))
            sampling = {**without_options(model._sampling(stop, kwargs), CHAT_ONLY_OPTIONS),
                        **extras}  # fmt: skip
            self._chats.append(_PendingChat(model, conversation, inputs, sampling, output))
        self.calls.append(TracedCall(model.get_name(), tuple(inputs.values()), output))
        run = ModelRun(model, prompt, stop, kwargs, config, output, structured, self._order())
        self.model_runs.append(run)
        if isinstance(model, ParrotLLM):
            return self.symbols.text(output)
        metadata = {"model_name": model._model_id(kwargs), "model_provider": "parrot"}
        return AIMessage(
            content=self.symbols.text(output), id=run.message_id, response_metadata=metadata
        )

    def _lambda(self, step: RunnableLambda, value: Any, config: RunnableConfig | None) -> Any:
        variables = self.symbols.find(value)
        if not variables:
            with self.rounds.released():  # it may take time (I/O): others trace meanwhile
                return step.invoke(value, config)
        if has_hidden_text(value) or _arity(step.func) != 1:
            return self._on_client(step, value, config, "it needs generated values")
        try:
            with user_code():
                out = step.func(self.symbols.taint(value))  # type: ignore[misc]
        except NeedsValue as exc:
            return self._on_client(step, value, config, f"it reads generated text ({exc})")
        except Exception as exc:  # noqa: BLE001 (a check of its input, a lookup that missed...)
            # its real exception, if any, comes from its run on the real values
            why = f"it failed on a placeholder ({type(exc).__name__})"
            return self._on_client(step, value, config, why)
        out = map_strings(out, lambda s: s)  # its messages with their metadata back
        if has_hidden_text(out):
            return self._on_client(step, value, config, "its output hides generated text")
        if not self.symbols.find(out) and not _taken_from(out, value):
            # it computed its result from the text (`s in {...}` through a copy of it, a
            # count) or from nothing: the probes below cannot tell, so run it on the values
            why = "its output holds no generated text, so it may have read it"
            return self._on_client(step, value, config, why)
        # C code (re, json, str.upper(x)) reads a SymbolicStr's characters untrapped: accept the
        # result only if it is the same placement of fragile probe texts too
        probes = [(lambda v, p=p: p[v.id]) for p in fragile_probes(variables)]
        why = result_reads_text(
            step.func,  # type: ignore[arg-type]
            [self.symbols.substitute(value, probe) for probe in probes],
            [self.symbols.substitute(out, probe) for probe in probes],
        )
        if why:
            return self._on_client(step, value, config, f"it reads generated text: {why}")
        if isinstance(out, Runnable):
            return self.run(out, value, config)
        return self._report_later(step, config, value, out, None)

    def _prompt(self, step: BasePromptTemplate, value: Any, config: RunnableConfig | None) -> Any:
        variables = self.symbols.find(value)
        plain = self.symbols.untaint(value)
        if not variables:
            return step.invoke(plain, config)
        # callbacks see neither placeholders nor probes: the run is reported with the values
        out = format_quietly(step, plain, config)
        # the template must insert each value verbatim: check with awkward probe values
        probes = {v.id: f"\n {{{{p}}}} 'q\" {v.id[-6:]} \\ \t\n" for v in variables}
        probe_in = self.symbols.substitute(plain, lambda v: probes[v.id])
        if self.symbols.substitute(out, lambda v: probes[v.id]) != format_quietly(
            step, probe_in, config
        ):
            return self._on_client(step, value, config, "it changes the values it inserts")
        return self._report_later(step, config, plain, out, "prompt")

    def _str_parser(self, step: StrOutputParser, value: Any, config: RunnableConfig | None) -> Any:
        if isinstance(value, AIMessage) and isinstance(value.content, str):
            out = self.symbols.taint(value.content)
            return self._report_later(step, config, value, out, "parser")
        if isinstance(value, str):
            return self._report_later(step, config, value, value, "parser")
        return self._on_client(step, value, config, "its input is not text")

    def _on_client(
        self, step: Runnable, value: Any, config: RunnableConfig | None, why: str,
        kwargs: dict[str, Any] | None = None,
    ) -> Any:  # fmt: skip
        """Run `step` here: on the input as it is if it holds no generated values, else after
        submitting the graph so far and waiting for them (a split)."""
        if self.symbols.find(value):
            if isinstance(step, BaseLanguageModel):  # the call itself leaves the graph
                self.on_split(step.get_name(), why, False)
            else:
                self.rounds.strand().waited.append((step.get_name(), why))
        with self.resolve(value) as real:
            if self._streams(step, kwargs or {}):
                return ClientStream(real)
            return invoke_here(step, real, config, kwargs)

    def _window(
        self, step: Runnable, tasks: list[tuple[Runnable, Any]], config: RunnableConfig | None
    ) -> list[Any]:
        """The results of `step`'s branches or map items (each a step and its input) where
        `max_concurrency` is below their number: as a plain RunnableParallel's (or batch's)
        thread pool runs them, at most that many at once, the next starting as soon as one
        ends. A graph has no limit of its own, so each is traced apart, a graph of its own,
        once the generated values in the inputs are there (a split, warned about once). The
        first one's exception, in their order, is raised; after a map item's failure no further
        item starts, as in a plain batch."""
        limit = window_size(config, len(tasks))
        assert limit is not None
        what = "map items" if isinstance(step, RunnableEach) else "branches"
        self.on_split(
            step.get_name(),
            f"max_concurrency={limit} limits its {len(tasks)} {what}, so they run {limit} at "
            "once, each as a graph of its own",
            False,
        )
        calls: list[list[TracedCall]] = [[] for _ in tasks]
        with self.resolve([value for _, value in tasks]) as real:
            jobs = [
                partial(self._apart, inner, value, config, found)
                for (inner, _), value, found in zip(tasks, real, calls, strict=True)
            ]
            outs = run_window(jobs, limit, stop_on_error=isinstance(step, RunnableEach))
        self.calls += [call for found in calls for call in found]
        return _values(outs)

    def _apart(
        self, step: Runnable, value: Any, config: RunnableConfig | None, calls: list[TracedCall]
    ) -> Any:
        """`step`'s result on `value`, traced as a graph of its own in a session of its own (its
        model runs reported to callbacks when it ends); its semantic calls added to `calls`."""
        with (self.new_session or self._like_session)() as session:
            tracer = Tracer(session, self.criteria, self.timeout, self.on_split, self.new_session)
            try:
                out = tracer.run(step, value, config)
            finally:
                calls.extend(tracer.calls)
            return tracer.finish(out)

    def _like_session(self) -> Session:
        return Session(self.session.url, name=self.session.name, api_key=self.session.api_key)

    def _streams(self, step: Runnable, kwargs: dict[str, Any]) -> bool:
        """Whether `step`, about to run on the client, is the one `run_streamed` streams (or
        what it binds arguments or config to)."""
        top = self._streamed
        while top is not step and isinstance(top, RunnableBinding):
            top = top.bound
        if top is not step:
            return False
        return not (isinstance(step, ChatParrot) and _sampling(step, kwargs).get("n", 1) > 1)

    def _report_later(
        self, step: Runnable, config: RunnableConfig | None, value: Any, out: Any,
        run_type: str | None,
    ) -> Any:  # fmt: skip
        """`out`, after noting `step`'s run (on generated values) to report in `finish`."""
        plain = self.symbols.untaint  # the values as the step's own run reports them
        self.step_runs.append(
            StepRun(step, config, plain(value), plain(out), run_type, self._order())
        )
        return out

    def _order(self) -> int:
        return len(self.model_runs) + len(self.step_runs)

    def _tell_waits(self, last: bool) -> None:
        """Tell the strand's client steps not yet told whether they split the graph (`last`:
        they did not). Each strand has its own: another input's or branch's later call does not
        come after them."""
        strand = self.rounds.strand()
        waited, strand.waited = strand.waited, []
        for step, why in waited:
            self.on_split(step, why, last)

    # -- helpers -------------------------------------------------------------------------------

    def _render(self, conversations: list[list[dict[str, Any]]]) -> dict[str, Any]:
        http = ServerHttp(self.session.url, api_key=self.session.api_key)
        body = {"conversations": conversations}
        return self.session._loop.run(http.request("POST", "/v1/chat/render", body))

    def _commit_alone(self, chat: _PendingChat) -> None:
        """Record one chat call; when the chat template cannot keep its variables as markers
        (it trims contents, say), wait for their values and render the text itself."""
        try:
            rendered = self._render([chat.conversation])
        except ParrotError as exc:
            if exc.code != _NOT_TRANSPARENT or not chat.inputs:
                raise
            why = "the model's chat template changes contents"
            self.on_split(chat.model.get_name(), why, False)
            names = list(chat.inputs)
            found = get_all(self.session, list(chat.inputs.values()), self.criteria, self.timeout)
            values = dict(zip(names, found, strict=True))
            chat.conversation = [
                {**m, "content": "".join(
                    p["text"] if p["type"] == "text" else values[p["name"]] for p in m["content"]
                )}
                for m in chat.conversation
            ]  # fmt: skip
            chat.inputs = {}
            rendered = self._render([chat.conversation])
        self._record_chat(chat, rendered["prompts"][0]["template"], rendered["max_model_len"])

    def _record_chat(self, chat: _PendingChat, template: str, max_model_len: int) -> None:
        sampling = {"max_tokens": max_model_len, **semantic_constraint(chat.sampling)}
        # tokenized as the chat API tokenizes a rendered prompt: no BOS beyond the template's
        fn = SemanticFunction(
            template + "{{output:reply}}", name="ChatParrot", add_special_tokens=False, **sampling
        )
        fn.invoke(self.session, **chat.inputs, reply=chat.output)

    def _template(self, text: str) -> tuple[str, dict[str, SemanticVariable]]:
        inputs: dict[str, SemanticVariable] = {}
        out = []
        for part in self.symbols.parts(text):
            if isinstance(part, str):
                out.append(escape_text(part))
            else:
                name = _input_name(inputs, part)
                out.append(f"{{{{input:{name}}}}}")
        return "".join(out), inputs

    def _conversation(
        self, messages: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, SemanticVariable]]:
        """`messages` (as `to_chat_messages` makes them) as the render route takes them: the
        contents as parts, with variables for generated values; tool calls and the call a tool
        message answers go along, so the prompt is the one the plain call sends."""
        inputs: dict[str, SemanticVariable] = {}
        conversation = []
        for message in messages:
            content = [
                {"type": "text", "text": p}
                if isinstance(p, str)
                else {"type": "variable", "name": _input_name(inputs, p)}
                for p in self.symbols.parts(message["content"])
            ]
            conversation.append({**message, "content": content})
        return conversation, inputs


def _values(outs: list[Outcome]) -> list[Any]:
    """The strands' values; the first one's exception, in their order, if one raised."""
    for out in outs:
        if out.error is not None:
            raise out.error
    return [out.value for out in outs]


def _message_ids(obj: Any) -> list[str]:
    if isinstance(obj, AIMessage):
        return [obj.id] if obj.id else []
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        return [i for item in obj for i in _message_ids(item)]
    return []


def _asks_chat_only(model: ChatParrot, kwargs: dict[str, Any]) -> bool:
    """Whether a chat call asks for what only a chat request gives: n > 1, or logprobs."""
    sampling = _sampling(model, kwargs)
    return sampling.get("n", 1) > 1 or bool(sampling.get("logprobs"))


def _sampling(model: ChatParrot, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The sampling fields of a chat call with `kwargs` (its call options)."""
    options = {k: v for k, v in kwargs.items() if k != "ls_structured_output_format"}
    return model._sampling(options.pop("stop", None), options)


def _plain_binding(step: RunnableBinding) -> bool:
    """Whether `step` behaves as its bound step with arguments and config: a RunnableBinding or
    a subclass that only narrows types (chat models' `bind()` returns one in langchain-core
    1.8) and overrides no behaviour."""
    return type(step).invoke is RunnableBinding.invoke


def _taken_from(out: Any, value: Any) -> bool:
    """Whether `out` is made only of strings (or a Runnable) found as they are in `value`, as a
    lambda that picks a key of its input gives: it read no generated text."""
    if isinstance(out, Runnable):
        return True
    leaves = [id(s) for s in strings(value)]
    if isinstance(out, dict | list | tuple):
        return all(_taken_from(v, value) for v in (out.values() if isinstance(out, dict) else out))
    return isinstance(out, str) and id(out) in leaves


def _arity(func: Callable[..., Any]) -> int:
    try:
        return len(inspect.signature(func).parameters)
    except (TypeError, ValueError):  # builtins such as operator.itemgetter take the input only
        return 1


def _input_name(inputs: dict[str, SemanticVariable], var: SemanticVariable) -> str:
    for name, known in inputs.items():
        if known is var:
            return name
    name = f"v{len(inputs)}"
    inputs[name] = var
    return name


def log_split_once(seen: set[str], warned: set[str]) -> Callable[[str, str, bool], None]:
    """An `on_split` that adds each step to `seen` and logs it once: a warning where it split
    the graph (`warned` holds those), else (it came after the whole graph) at INFO."""

    def on_split(step: str, why: str, last: bool) -> None:
        if not last and step not in warned:
            warned.add(step)
            log.warning("compile: step %r runs on the client, so the graph is split there: %s",
                        step, why)  # fmt: skip
        elif last and step not in seen:
            log.info("compile: step %r runs on the client after the graph (%s); nothing after "
                     "it goes to the server", step, why)  # fmt: skip
        seen.add(step)

    return on_split
