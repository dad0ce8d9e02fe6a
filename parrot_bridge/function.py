"""Semantic functions: a prompt template (the docstring) whose calls return output variables."""

from __future__ import annotations

import inspect
import json
import math
import uuid
from collections.abc import Callable, Iterator
from typing import Any, overload

from parrot_bridge.errors import ParrotError
from parrot_bridge.session import Session, current_session
from parrot_bridge.template import Template, TemplateError, parse_template
from parrot_bridge.text_check import check_text
from parrot_bridge.variable import SemanticVariable

__all__ = ["SemanticFunction", "semantic_function"]

Result = SemanticVariable | tuple[SemanticVariable, ...]


class SemanticFunction:
    """A template with sampling defaults. Calling it records a call in the current session and
    returns its output variable (a tuple of them, in template order, when there are several).

    Inputs may be strings or `SemanticVariable`s; outputs may be passed as (unset) variables to
    write into, otherwise new ones are made. `add_special_tokens=False`: the prompt gets no BOS
    from the tokenizer (for a prompt a chat template rendered, which writes its own).
    """

    def __init__(
        self,
        template: str | Template,
        name: str = "semantic_function",
        params: list[str] | None = None,
        *,
        defaults: dict[str, str] | None = None,
        add_special_tokens: bool = True,
        **sampling: Any,
    ) -> None:
        """`defaults`: values of inputs that a call may leave out (as a Python default)."""
        self.template = template if isinstance(template, Template) else parse_template(template)
        check_text(self.template.source, f"the template of {name}")
        self.name = name
        self.add_special_tokens = add_special_tokens
        self.sampling = _check_sampling(sampling)
        self.defaults = dict(defaults or {})
        for param, value in self.defaults.items():
            if param not in self.template.inputs or not isinstance(value, str):
                raise TypeError(
                    f"{name}: only inputs have defaults, and they are strings; got "
                    f"{param}={value!r}"
                )
        names = [*self.template.inputs, *self.template.outputs]
        self.params = params if params is not None else names
        missing = [n for n in self.template.inputs if n not in self.params]
        if missing:
            raise TemplateError(
                f"input {missing[0]!r} of the template is not a parameter of {name}",
                self.template.source,
                _offset_of(self.template, missing[0]),
            )
        extra = [p for p in self.params if p not in names]
        if extra:
            raise TypeError(f"parameter {extra[0]!r} of {name} is not used in its template")
        # every parameter is optional in the signature: missing inputs get a clearer error below
        self._signature = inspect.Signature(
            [
                inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
                for p in self.params
            ]
        )

    @property
    def inputs(self) -> list[str]:
        return self.template.inputs

    @property
    def outputs(self) -> list[str]:
        return self.template.outputs

    def __call__(self, *args: Any, **kwargs: Any) -> Result:
        return self.invoke(current_session(), *args, **kwargs)

    def invoke(self, session: Session, *args: Any, **kwargs: Any) -> Result:
        """Record a call in `session` (rather than the current one)."""
        try:
            bound = self._signature.bind(*args, **kwargs).arguments
        except TypeError as exc:
            raise TypeError(f"{self.name}(): {exc}") from None
        inputs: dict[str, SemanticVariable] = {}
        for name in self.inputs:
            value = bound.get(name, None)
            if value is None:
                value = self.defaults.get(name)
            if value is None:
                raise TypeError(f"{self.name}() missing input {name!r}")
            inputs[name] = _as_input(self.name, name, value, session)
        outputs: dict[str, SemanticVariable] = {}
        for name in self.outputs:
            given = bound.get(name)
            if given is None:
                outputs[name] = SemanticVariable(name=name)
            elif isinstance(given, SemanticVariable):
                outputs[name] = given
            else:
                raise TypeError(
                    f"{self.name}(): output {name!r} must be a SemanticVariable to write into, "
                    f"got {type(given).__name__}"
                )
        call_id = f"c-{uuid.uuid4().hex}"
        session._record_call(call_id, self, inputs, outputs)
        result = tuple(outputs[n] for n in self.outputs)
        return result[0] if len(result) == 1 else result

    def __repr__(self) -> str:
        return f"SemanticFunction({self.name}, inputs={self.inputs}, outputs={self.outputs})"


@overload
def semantic_function(fn: Callable[..., Any], /) -> SemanticFunction: ...
@overload
def semantic_function(
    fn: None = None, /, **sampling: Any
) -> Callable[[Callable[..., Any]], SemanticFunction]: ...


def semantic_function(
    fn: Callable[..., Any] | None = None, /, *, add_special_tokens: bool = True, **sampling: Any
) -> SemanticFunction | Callable[[Callable[..., Any]], SemanticFunction]:
    """Decorator: the function's docstring is the template, its parameters name the inputs (and
    may name outputs); an input's default (a string) is its value when a call leaves it out.
    Sampling defaults as keywords: max_tokens, temperature, top_p, top_k, seed, stop,
    ignore_eos, presence_penalty, frequency_penalty, logit_bias, min_p, repetition_penalty,
    and one constraint of json_schema, choices, regex and grammar; `add_special_tokens` as
    SemanticFunction's. Template errors raise here, at decoration, with their position."""

    def decorate(f: Callable[..., Any]) -> SemanticFunction:
        doc = inspect.getdoc(f)
        if not doc:
            raise TemplateError(f"{f.__qualname__} has no docstring to use as its template", "", 0)
        params, defaults, kinds = [], {}, []
        for p in inspect.signature(f).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{f.__qualname__}: *args and **kwargs cannot name variables")
            params.append(p.name)
            kinds.append(p.kind)
            if p.default is not p.empty and p.default is not None:
                defaults[p.name] = p.default
        try:
            function = SemanticFunction(
                doc, name=f.__name__, params=params, defaults=defaults,
                add_special_tokens=add_special_tokens, **sampling,
            )  # fmt: skip
        except TemplateError as exc:
            exc.args = (f"{exc} (in the docstring of {f.__qualname__})",)
            raise
        # calls are bound as the decorated function binds them: a keyword-only parameter
        # passed by position is the TypeError Python gives, not a silent assignment
        function._signature = inspect.Signature(
            [inspect.Parameter(n, k, default=None) for n, k in zip(params, kinds, strict=True)]
        )
        return function

    _check_sampling(sampling)  # a typo in the options fails at the decorator line
    return decorate(fn) if fn is not None else decorate


_SEED_MIN, _SEED_MAX = -(2**63), 2**63 - 1  # the server's seeds are signed 64-bit integers


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    """An int, not a bool (True would be sent as 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _token_id(key: Any) -> bool:
    """A token id as logit_bias keys it: ASCII digits (str.isdigit() passes "٣" and "²")."""
    text = str(key)
    return text.isascii() and text.isdigit() and len(text) <= 18


# Mistakes in the options, refused where the function is defined (the server fails a call whose
# options it cannot follow, such as a pattern it cannot enforce, when the call is sent).
_SAMPLING_CHECKS: dict[str, Callable[[Any], bool]] = {
    "max_tokens": lambda v: _int(v) and v >= 1,
    "temperature": lambda v: _number(v) and v >= 0,
    "top_p": lambda v: _number(v) and 0 < v <= 1,
    "top_k": lambda v: _int(v) and v >= -1,  # vLLM's: -1 or 0 is no top-k
    "seed": lambda v: v is None or (_int(v) and _SEED_MIN <= v <= _SEED_MAX),
    "stop": lambda v: all(isinstance(s, str) and s for s in v),
    "ignore_eos": lambda v: isinstance(v, bool),
    "presence_penalty": lambda v: _number(v) and -2 <= v <= 2,
    "frequency_penalty": lambda v: _number(v) and -2 <= v <= 2,
    "logit_bias": lambda v: isinstance(v, dict) and all(
        _token_id(k) and _number(b) and -100 <= b <= 100 for k, b in v.items()
    ),
    "min_p": lambda v: _number(v) and 0 <= v <= 1,
    "repetition_penalty": lambda v: _number(v) and v > 0,
    # constrained outputs (the server checks the schema, pattern and grammar): a JSON object
    # it allows, one of the strings, a whole match of the pattern, or a sentence of the grammar
    "json_schema": lambda v: isinstance(v, dict) and _json_text(v),
    "choices": lambda v: isinstance(v, list) and bool(v) and all(
        isinstance(c, str) and c for c in v
    ),
    "regex": lambda v: isinstance(v, str) and bool(v),
    "grammar": lambda v: isinstance(v, str) and bool(v),
}
# what a value must be, where "invalid" alone would leave a user guessing
_SAMPLING_RULES = {"top_k": "an int: -1 or 0 for no top-k, else at least 1"}
_CONSTRAINTS = ("json_schema", "choices", "regex", "grammar")
# A server refuses a request whose JSON nests more than 100 levels deep, before it looks at its
# calls: a deeper schema would fail every call of the submission, not only its own.
_MAX_JSON_DEPTH = 100
_MAX_SCHEMA_DEPTH = _MAX_JSON_DEPTH - 4  # in the body, in `calls`, in the call, in `sampling`


def _check_sampling(sampling: dict[str, Any]) -> dict[str, Any]:
    checked = {}
    for key, value in sampling.items():
        if key not in _SAMPLING_CHECKS:
            raise TypeError(
                f"unknown sampling option {key!r}; expected one of {sorted(_SAMPLING_CHECKS)}"
            )
        if key == "stop":
            value = [value] if isinstance(value, str) else list(value)
        if key == "json_schema" and _depth(value, _MAX_SCHEMA_DEPTH) > _MAX_SCHEMA_DEPTH:
            raise ValueError(
                f"invalid json_schema: nested more than {_MAX_SCHEMA_DEPTH} levels deep, which "
                f"a server does not read (a request's JSON nests {_MAX_JSON_DEPTH} levels at "
                "most, and holds a call's schema 4 levels in)"
            )
        if not _SAMPLING_CHECKS[key](value):
            rule = f" ({_SAMPLING_RULES[key]})" if key in _SAMPLING_RULES else ""
            raise ValueError(f"invalid {key}: {value!r}{rule}")
        for text in _texts(value):
            check_text(text, f"option {key}")
        checked[key] = value
    asked = [k for k in _CONSTRAINTS if checked.get(k) is not None]
    if len(asked) > 1:
        raise ValueError(f"ask for one constrained output, not {' and '.join(asked)} together")
    return checked


def _texts(value: Any) -> Iterator[str]:
    """The strings in an option's value (a JSON schema's keys too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(key)
            yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


def _depth(value: Any, limit: int) -> int:
    """How many containers deep `value` nests (a dict or list is 1), counted without recursion
    up to `limit` + 1 (so that a cycle ends)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if not isinstance(item, dict | list):
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children = item.values() if isinstance(item, dict) else item
        todo.extend((child, depth + 1) for child in children)
    return deepest


def _json_text(value: Any) -> bool:
    """Whether `value` goes into a request as it is (JSON: no sets, NaN or other objects)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _as_input(fn: str, name: str, value: Any, session: Session) -> SemanticVariable:
    if isinstance(value, SemanticVariable):
        other = value._session is not None and value._session is not session
        if other and value._value is not None:
            # a value read in one session is plain text to another (as a str would be)
            return session._constant(value._value, name)
        if other:
            raise ParrotError(
                f"{fn}(): input {name!r} reads variable {value._label} of another session, "
                f"which {_why_no_value(value)}"
            )
        return value
    if isinstance(value, str):
        check_text(value, f"{fn}(): input {name!r}")
        return session._constant(value, name)
    raise TypeError(
        f"{fn}(): input {name!r} must be a str or a SemanticVariable, got {type(value).__name__}"
    )


def _why_no_value(var: SemanticVariable) -> str:
    """Why a variable of another session cannot be text here, and what would make it so."""
    owner = var._session
    assert owner is not None
    if var._error is not None:
        return f"failed: {var._error}"
    if owner._closed:
        return f"has no value, and its session {owner.id} is closed"
    if var._producer is None:
        return "has no value yet: set() it first"
    return "has no value yet: get() it first, or call in its own session"


def _offset_of(template: Template, name: str) -> int:
    return next(s.offset for s in template.segments if getattr(s, "name", None) == name)
