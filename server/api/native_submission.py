"""A graph submission's JSON body as the graph takes it.

Each call's sampling options are checked on their own: a call whose options the server cannot
follow (a field out of range, a pattern, grammar or schema it cannot enforce, more tokens than
the context) is kept with the reason, and the graph fails it alone, with its dependents, while
the rest of the submission applies. What is wrong with the request as a whole (not JSON, an
unknown field, a call without a template) is still its 400.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from parrot_bridge.template import Template, TemplateError, parse_template
from server.api.native_models import GraphSubmission, SamplingSpec
from server.api.openai_inputs import logit_bias_of
from server.api.route import validate, validation_reason
from server.engine.grammar import compiled_grammar
from server.engine.json_schema import compile_schema
from server.engine.regex_prefix import compiled_regex
from server.engine.sampling_params import check_stop_strings
from server.engine_driver import EngineDriver
from server.errors import ApiError
from server.graph import CallDecl, Sampling, Submission, VariableDecl


def submission_of(data: Any, driver: EngineDriver) -> Submission:
    """The submission in `data` (parsed JSON); `ApiError` (400) where it is not one. Compiles
    its calls' regexes, grammars and schemas: call it off the event loop."""
    body, refused = _body_of(data)
    calls = []
    for index, spec in enumerate(body.calls):
        error = refused.get(index)
        sampling = Sampling()
        if error is None:
            try:
                sampling = _sampling_of(spec.sampling, driver)
            except (ValueError, ApiError) as exc:  # ApiError: logit_bias_of's 400
                error = str(exc)
        calls.append(CallDecl(
            spec.id, spec.template, spec.inputs, spec.outputs, sampling, spec.function,
            spec.add_special_tokens, _parsed(spec.template),
            None if error is None else f"invalid sampling: {error}",
        ))  # fmt: skip
    return Submission(
        variables=[VariableDecl(v.id, v.name, v.value) for v in body.variables],
        calls=calls,
        awaits={a.variable: a.criteria for a in body.awaits},
    )


def _body_of(data: Any) -> tuple[GraphSubmission, dict[int, str]]:
    """The body, with each call whose sampling does not validate given the default sampling,
    and why, by the call's index."""
    refused: dict[int, str] = {}
    calls = data.get("calls") if isinstance(data, dict) else None
    if isinstance(calls, list):
        calls = list(calls)
        for index, spec in enumerate(calls):
            if not isinstance(spec, dict) or "sampling" not in spec:
                continue
            try:
                SamplingSpec.model_validate(spec["sampling"])
            except ValidationError as exc:
                loc, reason = validation_reason(exc)
                refused[index] = f"{loc}: {reason}" if loc else reason
                calls[index] = {**spec, "sampling": {}}
        data = {**data, "calls": calls}
    return validate(GraphSubmission, data, "body"), refused


def _sampling_of(s: SamplingSpec, driver: EngineDriver) -> Sampling:
    """ValueError (or `ApiError`) saying what the engine could not follow."""
    # a prompt's length is known only once its inputs are, so a call that may fill the
    # context ends at its end; more than the whole context is a mistake
    if s.max_tokens > driver.max_model_len:
        raise ValueError(
            f"max_tokens {s.max_tokens} exceeds the model's context of "
            f"{driver.max_model_len} tokens"
        )
    check_stop_strings(s.stop)
    if s.json_schema is not None:
        compile_schema(s.json_schema)  # SchemaError names what cannot be followed
    if s.regex is not None:
        compiled_regex(s.regex)  # RegexError says what is not supported
    if s.grammar is not None:
        compiled_grammar(s.grammar)  # GrammarError names the line and column, or the rule
    return Sampling(
        s.max_tokens, s.temperature, s.top_p, s.top_k, s.seed, tuple(s.stop), s.ignore_eos,
        s.presence_penalty, s.frequency_penalty, tuple(logit_bias_of(driver, s.logit_bias).items()),
        None if s.json_schema is None else json.dumps(s.json_schema),  # its key order kept
        None if s.choices is None else tuple(s.choices), s.regex, s.grammar, s.min_p,
        s.repetition_penalty,
    )  # fmt: skip


def _parsed(template: str) -> Template | None:
    """`template` parsed here, in the submission's worker thread; None where it does not parse
    (validation, on the loop, says why with the call's id)."""
    try:
        return parse_template(template)
    except TemplateError:
        return None
