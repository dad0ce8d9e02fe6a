"""Checks a submission against the current graph before anything of it is applied."""

from __future__ import annotations

import re
from collections.abc import Callable

from parrot_bridge.template import TemplateError, parse_template
from server.graph.call import Call, CallState
from server.graph.errors import GraphError
from server.graph.submission import CallDecl, Submission, VariableDecl
from server.graph.variable import Variable, VariableState

_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


def build_calls(
    variables: dict[str, Variable], calls: dict[str, Call], sub: Submission
) -> list[Call]:
    """Validate `sub` against the graph's `variables` and `calls`; return its calls, unapplied.

    Raises `GraphError` naming the call and variable at fault: bad ids, unknown variables, a
    variable with two producers, a cycle, a template that does not parse. An input may read a
    variable declared with no value and no producer (client-owned): its call waits until the
    client sets it. A variable the client declares again as it is (same name and value, no
    producer) is no error: it stays as it is.
    """
    new_vars = _check_variables(variables, sub.variables)
    new_calls = [_build_call(calls, decl) for decl in sub.calls]
    _check_unique_calls(new_calls)
    producers = _check_bindings(variables, new_vars, new_calls)
    upstream = _upstream(variables, calls, producers)
    _check_acyclic(new_calls, upstream, lambda v: _label(variables, new_vars, v))
    for var_id in sub.awaits:
        if var_id not in variables and var_id not in new_vars:
            raise GraphError(
                f"awaited variable {var_id!r} does not exist",
                kind="unknown_variable",
                variable=var_id,
            )
    return new_calls


def check_id(kind: str, value: str) -> None:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise GraphError(
            f"invalid {kind} id {value!r}: use 1-128 characters of letters, digits, '_.:-'",
            kind="invalid_id",
            **{kind: str(value)},
        )


def _check_variables(
    variables: dict[str, Variable], decls: list[VariableDecl]
) -> dict[str, VariableDecl]:
    new: dict[str, VariableDecl] = {}
    for decl in decls:
        check_id("variable", decl.id)
        if decl.id in variables and decl.id not in new and _same(variables[decl.id], decl):
            # declared again as it is: a client sending again a submission whose answer it
            # lost (a timeout), not knowing whether it was applied
            continue
        if decl.id in variables or decl.id in new:
            raise GraphError(
                f"variable {decl.id!r} is declared twice",
                kind="duplicate_variable",
                variable=decl.id,
            )
        new[decl.id] = decl
    return new


def _same(var: Variable, decl: VariableDecl) -> bool:
    """Whether `decl` declares the client-owned variable `var` as it is."""
    if var.producer is not None or var.name != decl.name:
        return False
    if decl.value is None:
        return var.state is VariableState.PENDING
    return var.state is VariableState.READY and var.value == decl.value


def _build_call(calls: dict[str, Call], decl: CallDecl) -> Call:
    check_id("call", decl.id)
    if decl.id in calls:
        raise GraphError(f"call {decl.id!r} already exists", kind="duplicate_call", call=decl.id)
    label = f"{decl.id!r} ({decl.function})" if decl.function else repr(decl.id)
    try:
        template = decl.parsed or parse_template(decl.template)
    except TemplateError as exc:
        raise GraphError(
            f"call {label}: invalid template: {exc}", kind="invalid_template", call=decl.id
        ) from exc
    for slot_kind, names, bound in (
        ("input", template.inputs, decl.inputs),
        ("output", template.outputs, decl.outputs),
    ):
        for name in names:
            if name not in bound:
                raise GraphError(
                    f"call {label}: {slot_kind} {name!r} of the template is not bound to a variable",
                    kind="unbound_slot",
                    call=decl.id,
                )
        for name, var_id in bound.items():
            if name not in names:
                raise GraphError(
                    f"call {label}: {slot_kind} {name!r} is bound to variable {var_id!r} but the "
                    f"template has no {{{{{slot_kind}:{name}}}}} marker",
                    kind="unknown_slot",
                    call=decl.id,
                    variable=var_id,
                )
    return Call(
        id=decl.id,
        template=template,
        inputs=dict(decl.inputs),
        outputs=dict(decl.outputs),
        sampling=decl.sampling,
        function=decl.function,
        add_special_tokens=decl.add_special_tokens,
    )


def _check_unique_calls(new_calls: list[Call]) -> None:
    seen: set[str] = set()
    for call in new_calls:
        if call.id in seen:
            raise GraphError(f"call {call.id!r} appears twice", kind="duplicate_call", call=call.id)
        seen.add(call.id)


def _check_bindings(
    variables: dict[str, Variable], new_vars: dict[str, VariableDecl], new_calls: list[Call]
) -> dict[str, Call]:
    """Check every bound variable exists and has one producer; return new producers by var id."""
    producers: dict[str, Call] = {}
    for call in new_calls:
        for name, var_id in [*call.inputs.items(), *call.outputs.items()]:
            if var_id not in variables and var_id not in new_vars:
                raise GraphError(
                    f"call {call.label}: {name!r} refers to unknown variable {var_id!r}",
                    kind="unknown_variable",
                    call=call.id,
                    variable=var_id,
                )
        for name, var_id in call.outputs.items():
            other = _producer_of(variables, new_vars, producers, var_id)
            if other is not None:
                raise GraphError(
                    f"call {call.label}: output {name!r} writes variable "
                    f"{_label(variables, new_vars, var_id)}, which already "
                    f"has a producer ({other})",
                    kind="two_producers",
                    call=call.id,
                    variable=var_id,
                )
            if var_id in call.inputs.values():
                raise GraphError(
                    f"call {call.label}: variable {_label(variables, new_vars, var_id)} is both "
                    "its input and its output "
                    "(a cycle)",
                    kind="cycle",
                    call=call.id,
                    variable=var_id,
                )
            producers[var_id] = call
    return producers


def _producer_of(
    variables: dict[str, Variable],
    new_vars: dict[str, VariableDecl],
    producers: dict[str, Call],
    var_id: str,
) -> str | None:
    if var_id in producers:
        return f"call {producers[var_id].label}"
    if var_id in new_vars:
        return "a value given by the client" if new_vars[var_id].value is not None else None
    var = variables[var_id]
    if var.producer is not None:
        return f"call {var.producer!r}"
    if var.state is VariableState.READY:
        return "a value given by the client"
    return None


def _upstream(
    variables: dict[str, Variable], calls: dict[str, Call], producers: dict[str, Call]
) -> Callable[[str], Call | None]:
    """The call writing a variable, as the cycle check follows it: the new calls' outputs, and
    the old calls' where a new call writes a client-owned variable that old calls read (a
    cycle can then pass through old calls). Only waiting old calls can be on such a cycle."""
    if not any(variables[v].consumers for v in producers if v in variables):
        return producers.get

    def upstream(var_id: str) -> Call | None:
        call, var = producers.get(var_id), variables.get(var_id)
        if call is None and var is not None and var.producer is not None:
            old = calls[var.producer]
            return old if old.state is CallState.WAITING else None
        return call

    return upstream


def _check_acyclic(
    new_calls: list[Call], upstream_of: Callable[[str], Call | None], label: Callable[[str], str]
) -> None:
    """Iterative depth-first search from the new calls (chains may be long), following
    `upstream_of` (see `_upstream`: old calls only where they can close a cycle)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in new_calls:
        if root.id in state:
            continue
        path: list[tuple[Call, str | None]] = [(root, None)]
        pending = [iter(root.inputs.values())]
        state[root.id] = 1
        while pending:
            var_id = next(pending[-1], None)
            if var_id is None:
                state[path.pop()[0].id] = 2
                pending.pop()
                continue
            upstream = upstream_of(var_id)
            if upstream is None or state.get(upstream.id) == 2:
                continue
            if state.get(upstream.id) == 1:
                start = next(i for i, (c, _) in enumerate(path) if c.id == upstream.id)
                steps = [f"call {c.label}" for c, _ in path[start:]]
                reads = [v for _, v in path[start + 1 :]] + [var_id]
                text = " ".join(
                    f"{s} reads {label(v)}, written by" for s, v in zip(steps, reads, strict=True)
                )
                raise GraphError(
                    f"cycle: {text} call {upstream.label}",
                    kind="cycle",
                    call=upstream.id,
                    variable=var_id,
                )
            state[upstream.id] = 1
            path.append((upstream, var_id))
            pending.append(iter(upstream.inputs.values()))


def _label(variables: dict[str, Variable], new_vars: dict[str, VariableDecl], var_id: str) -> str:
    if var_id in variables:
        return variables[var_id].label
    decl = new_vars[var_id]
    return Variable(decl.id, decl.name).label
