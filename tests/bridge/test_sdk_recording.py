"""The SDK without a server: decoration-time checks, calls recorded into the pending graph."""

import math

import pytest

import parrot_bridge as P
from parrot_bridge.variable import SemanticVariable


@P.semantic_function(max_tokens=12, temperature=0, stop="\n")
def summarize(doc: str):
    """Document: {{input:doc}}
    Summary: {{output:summary}}"""


@P.semantic_function
def profile(text, name=None, age=None):
    """{{input:text}}
    Name: {{output:name}}
    Age: {{output:age}}"""


def offline() -> P.Session:
    return P.Session("http://127.0.0.1:9")  # never contacted by these tests


def test_docstring_is_the_template_and_keywords_the_sampling() -> None:
    assert summarize.template.source == "Document: {{input:doc}}\nSummary: {{output:summary}}"
    assert summarize.inputs == ["doc"] and summarize.outputs == ["summary"]
    assert summarize.sampling == {"max_tokens": 12, "temperature": 0, "stop": ["\n"]}
    assert summarize.name == "summarize"


def test_template_errors_raise_at_decoration_with_their_position() -> None:
    with pytest.raises(
        P.TemplateError,
        match=r"line 2, column 6: unknown marker kind 'outptu'.*docstring of .*typo",
    ):

        @P.semantic_function
        def typo(x):
            """In: {{input:x}}
            Out: {{outptu:y}}"""

    with pytest.raises(P.TemplateError, match=r"line 1, column 5: input 'x' .* not a parameter"):

        @P.semantic_function
        def missing():
            """In: {{input:x}} {{output:y}}"""

    with pytest.raises(P.TemplateError, match="adjacent"):

        @P.semantic_function
        def adjacent(x):
            """{{input:x}} {{output:a}}{{output:b}}"""

    with pytest.raises(P.TemplateError, match="no docstring"):

        @P.semantic_function
        def empty(x):
            pass


def test_bad_sampling_and_parameters_raise_at_decoration() -> None:
    with pytest.raises(TypeError, match="unknown sampling option 'max_token'"):
        P.semantic_function(max_token=3)
    with pytest.raises(ValueError, match="invalid temperature"):
        P.SemanticFunction("{{output:y}}", temperature=-1)
    with pytest.raises(ValueError, match="invalid grammar"):
        P.semantic_function(grammar="")
    # mistakes in the options, refused before anything is sent
    for key, value in [("temperature", math.inf), ("repetition_penalty", math.inf),
                       ("top_p", math.nan), ("seed", 2**64), ("seed", -(2**63) - 1),
                       ("json_schema", {"type": "object", "enum": {"a", "b"}}),
                       ("logit_bias", {"5": math.nan}), ("temperature", True),
                       ("max_tokens", True), ("top_k", True), ("top_k", -2), ("seed", False),
                       ("logit_bias", {"\u0663": 1}), ("logit_bias", {"1" * 19: 1})]:  # fmt: skip
        with pytest.raises(ValueError, match=f"invalid {key}"):
            P.semantic_function(**{key: value})
    # vLLM's rule for top_k, as the server's: -1 or 0 is none, other negatives are refused
    with pytest.raises(ValueError, match=r"invalid top_k: -5 \(an int: -1 or 0 for no top-k"):
        P.semantic_function(top_k=-5)
    assert [P.SemanticFunction("{{output:y}}", top_k=k).sampling["top_k"] for k in (-1, 0, 3)] == [
        -1, 0, 3
    ]
    with pytest.raises(ValueError, match="not choices and regex together"):
        P.semantic_function(choices=["a"], regex="a")
    assert P.SemanticFunction("{{output:y}}", seed=2**63 - 1, temperature=2).sampling["seed"]
    with pytest.raises(TypeError, match="parameter 'z' of f is not used"):

        @P.semantic_function
        def f(x, z):
            """{{input:x}} {{output:y}}"""


def test_calls_return_output_variables_at_once_and_record_one_pending_graph() -> None:
    session = offline()
    doc = P.variable("A long document.", name="doc")
    first = summarize.invoke(session, doc)
    second = summarize.invoke(session, first)
    assert isinstance(first, SemanticVariable) and first.name == "summary"
    assert first.value is None and first.is_output
    batch = session._pending.take({second.id: "throughput"})
    assert batch is not None
    body = batch.body
    assert [v["id"] for v in body["variables"]] == [doc.id, first.id, second.id]
    assert body["variables"][0]["value"] == "A long document."
    assert [c["inputs"] for c in body["calls"]] == [{"doc": doc.id}, {"doc": first.id}]
    assert body["calls"][1]["outputs"] == {"summary": second.id}
    assert body["calls"][0]["sampling"] == {"max_tokens": 12, "temperature": 0, "stop": ["\n"]}
    assert body["awaits"] == [{"variable": second.id, "criteria": "throughput"}]
    assert session._pending.take() is None  # sent once
    third = summarize.invoke(session, second)  # later calls only send what is new
    assert [v["id"] for v in session._pending.take().body["variables"]] == [third.id]


def test_several_outputs_come_back_as_a_tuple_and_may_be_given() -> None:
    session = offline()
    age = P.variable(name="age")
    name, same_age = profile.invoke(session, "Bob, 42", age=age)
    assert same_age is age and name.name == "name"
    assert session._pending.take().body["calls"][0]["outputs"] == {"name": name.id, "age": age.id}


def test_equal_string_arguments_share_one_variable() -> None:
    session = offline()
    summarize.invoke(session, "same text")
    summarize.invoke(session, "same text")
    body = session._pending.take().body
    assert len({c["inputs"]["doc"] for c in body["calls"]}) == 1
    assert len(body["variables"]) == 3


def test_misuse_is_reported_clearly() -> None:
    with pytest.raises(P.ParrotError, match="no active Parrot session"):
        summarize("text")
    session = offline()
    with pytest.raises(TypeError, match="input 'doc' must be a str or a SemanticVariable"):
        summarize.invoke(session, 3)
    with pytest.raises(TypeError, match="missing input 'doc'"):
        summarize.invoke(session)
    out = summarize.invoke(session, "x")
    with pytest.raises(TypeError, match="unexpected keyword argument 'summary'"):
        summarize.invoke(session, "y", summary=P.variable())  # not a parameter of summarize
    with pytest.raises(P.ParrotError, match="already has a value or a producer"):
        profile.invoke(session, "y", age=out)
    with pytest.raises(P.ParrotError, match="of another session, which has no value yet"):
        summarize.invoke(offline(), out)
    with pytest.raises(P.ParrotError, match="is written by call"):
        out.set("no")
    with pytest.raises(P.ParrotError, match="belongs to no session"):
        P.variable().get()
    assert P.variable("known").get() == "known"  # a local value needs no server
    with pytest.raises(TypeError):
        P.variable(5)  # type: ignore[arg-type]


def test_a_value_read_in_one_session_is_text_to_another() -> None:
    first, second = offline(), offline()
    out = summarize.invoke(first, "x")
    out._value = "a summary"  # as if read from the server
    again = summarize.invoke(second, out)
    body = second._pending.take().body
    assert body["variables"][0]["value"] == "a summary"
    assert body["calls"][0]["inputs"] == {"doc": body["variables"][0]["id"]}
    assert out.session is first and again.session is second


def test_a_failed_submission_drops_its_calls_but_not_its_inputs() -> None:
    session = offline()
    session.id = "s-offline"  # as if opened: the submission itself fails
    doc = P.variable("A document.", name="doc")
    first = summarize.invoke(session, doc)
    second = summarize.invoke(session, "same text")
    with pytest.raises(P.ParrotError, match="cannot reach the Parrot server") as e:
        session.flush()
    with pytest.raises(P.ParrotError) as again:
        second.get()
    assert again.value is e.value  # its outputs fail with the submission's error
    assert doc.get() == "A document."
    with pytest.raises(P.ParrotError, match="which has no value: cannot reach"):
        summarize.invoke(session, first)
    third = summarize.invoke(session, "same text")
    fourth = summarize.invoke(session, doc)
    body = session._pending.take().body
    # the server never saw the inputs: they are declared again
    assert [v["value"] for v in body["variables"]] == ["same text", None, "A document.", None]
    assert [v["id"] for v in body["variables"]][1::2] == [third.id, fourth.id]
    with pytest.raises(P.ParrotError, match="cannot reach"):
        session.close()  # (and its HTTP client with it)


def test_a_bad_criterion_is_refused_before_the_pending_calls_are_sent() -> None:
    """A typo in `criteria` must not reach the server: its 400 would fail every pending call."""
    session = offline()
    session.id = "s-offline"
    out = summarize.invoke(session, "text")
    with pytest.raises(ValueError, match="criteria must be 'latency' or 'throughput'"):
        out.get(criteria="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 'bulk'"):
        next(out.stream(criteria="bulk"))  # type: ignore[arg-type]
    body = session._pending.take().body  # the call is still pending, unharmed
    assert [c["outputs"]["summary"] for c in body["calls"]] == [out.id]


def test_calls_reading_an_unset_variable_are_sent_with_it_declared_unset() -> None:
    """They wait on the server (which fills their ready leading text meanwhile), not here."""
    session = offline()
    topic = P.variable(name="topic")
    first = summarize.invoke(session, topic)
    second = summarize.invoke(session, first)
    other = summarize.invoke(session, "ready")
    body = session._pending.take().body
    assert [c["outputs"]["summary"] for c in body["calls"]] == [first.id, second.id, other.id]
    assert body["variables"][0] == {"id": topic.id, "name": "topic", "value": None}
    assert session._pending.take() is None  # nothing held back
    assert not session._pending.set_local(topic, "late")  # declared: the server must be told
    assert topic.value is None
    with pytest.raises(P.ParrotError, match=r"'topic' .* has no value and no call writes it"):
        session._check_readable(topic)
    session._check_readable(second)  # it waits on the server for `topic`


def test_a_variable_set_before_its_calls_are_sent_goes_with_them() -> None:
    session = offline()
    topic = P.variable(name="topic")
    out = summarize.invoke(session, topic)
    topic.set("now set")  # not sent yet: kept here, nothing is sent
    body = session._pending.take().body
    assert [v["id"] for v in body["variables"]] == [topic.id, out.id]
    assert body["variables"][0]["value"] == "now set"


def test_a_call_recorded_while_its_input_s_submission_is_refused_fails_on_the_client() -> None:
    """Recorded while the submission writing its input was in flight, then that submission is
    refused: sent, the call would make the server refuse the next submission too, failing the
    innocent calls sent with it."""
    session = offline()
    refused = summarize.invoke(session, "x")
    batch = session._pending.take()
    join = P.SemanticFunction("{{input:a}} {{input:b}} {{output:y}}", name="join")
    both = join.invoke(session, "text", refused)
    session._pending.reject(batch, P.ParrotError("no good", status=400, code="cycle"))
    innocent = summarize.invoke(session, "fine")
    body = session._pending.take().body
    assert [c["id"] for c in body["calls"]] == [innocent._producer]
    assert session._pending.take() is None  # nothing left
    with pytest.raises(P.ParrotError, match="join\\(\\): input 'b' reads .*no good") as e:
        both.get()
    assert (e.value.status, e.value.code) == (400, "cycle")


def test_decorated_defaults_and_special_tokens_carry_over() -> None:
    @P.semantic_function(add_special_tokens=False, max_tokens=3)
    def tell(doc, style="briefly"):
        """Tell {{input:doc}} {{input:style}}: {{output:said}}"""

    assert not tell.add_special_tokens and tell.sampling == {"max_tokens": 3}
    session = offline()
    tell.invoke(session, "a")
    tell.invoke(session, "b", style="at length")
    body = session._pending.take().body
    values = {v["id"]: v["value"] for v in body["variables"]}
    assert [values[c["inputs"]["style"]] for c in body["calls"]] == ["briefly", "at length"]
    assert all(c["add_special_tokens"] is False for c in body["calls"])
    with pytest.raises(TypeError, match="only inputs have defaults"):

        @P.semantic_function
        def typed(doc, said=P.variable()):
            """{{input:doc}} {{output:said}}"""


def test_decorated_parameters_bind_as_the_function_binds_them() -> None:
    @P.semantic_function
    def tell(doc, /, *, style):
        """Tell {{input:doc}} {{input:style}}: {{output:said}}"""

    session = offline()
    tell.invoke(session, "a", style="b")
    with pytest.raises(TypeError, match=r"tell\(\): too many positional arguments"):
        tell.invoke(session, "a", "b")
    with pytest.raises(TypeError, match="tell"):
        tell.invoke(session, doc="a", style="b")
    assert len(session._pending.take().body["calls"]) == 1


def test_public_names() -> None:
    assert set(P.__all__) == {
        "CallFailedError", "Criteria", "ParrotError", "SemanticFunction", "SemanticVariable",
        "Session", "Template", "TemplateError", "current_session", "parse_template",
        "semantic_function", "variable",
    }  # fmt: skip
    assert all(hasattr(P, name) for name in P.__all__)


def test_text_that_cannot_be_sent_is_refused_where_it_is_given() -> None:
    """A lone surrogate has no UTF-8 form: sent, the server refused the whole submission (a 400
    naming `variables.2.value`), failing every call sent with it, not only the one holding it."""
    session = offline()
    fine = summarize.invoke(session, "fine text")
    with pytest.raises(ValueError, match=r"summarize\(\): input 'doc' holds an unpaired surrogat"
                                         r"e '\\ud800' at index 4"):  # fmt: skip
        summarize.invoke(session, "bad \ud800 text")
    with pytest.raises(ValueError, match="the value of variable 'q' holds an unpaired"):
        P.variable("\udcff", name="q")
    later = P.variable(name="later")
    summarize.invoke(session, later)
    with pytest.raises(ValueError, match=r"the value of variable 'later' \(v-.*\) holds an unp"):
        later.set("\ud83d")  # half of an emoji's UTF-16 pair
    with pytest.raises(ValueError, match="the template of bad holds an unpaired surrogate"):
        P.SemanticFunction("\udc80 {{input:x}} {{output:y}}", name="bad")
    with pytest.raises(ValueError, match="option stop holds"):
        P.SemanticFunction("{{input:x}} {{output:y}}", stop=["\ud800"])
    with pytest.raises(ValueError, match="option json_schema holds"):
        P.SemanticFunction("{{input:x}} {{output:y}}", json_schema={"enum": ["a\udfff"]})
    body = session._pending.take().body  # the other calls are pending, unharmed
    assert [c["outputs"]["summary"] for c in body["calls"]][0] == fine.id
    assert len(body["calls"]) == 2 and "🦜" == P.variable("🦜").value  # paired: a character


def _nested(depth: int) -> dict:
    """A JSON schema nested `depth` containers deep (the outermost is 1)."""
    schema: dict = {"type": "string"}
    for _ in range(depth - 1):
        schema = {"type": "array", "items": schema}
    return schema


def test_a_schema_nested_past_what_the_server_reads_is_refused_at_decoration() -> None:
    """The server refuses a request nested more than 100 levels deep, before it looks at the
    calls: a deep schema failed the whole submission (every call sent with it) with a 400
    naming a path ("calls.10.sampling.....items"), not the function."""
    from server.api.route import MAX_BODY_DEPTH
    from server.engine.json_depth import path_deeper_than

    deepest = P.SemanticFunction("{{input:x}} {{output:y}}", json_schema=_nested(96))
    session = offline()
    deepest.invoke(session, "x")
    body = session._pending.take().body
    assert path_deeper_than(body, MAX_BODY_DEPTH) is None  # the server reads it
    for depth in (97, 5000):
        with pytest.raises(ValueError, match="invalid json_schema: nested more than 96 levels"):
            P.SemanticFunction("{{input:x}} {{output:y}}", json_schema=_nested(depth))
    looped: dict = {"type": "array"}
    looped["items"] = looped  # a cycle: refused, not walked for ever
    with pytest.raises(ValueError, match="invalid json_schema: nested"):
        P.semantic_function(json_schema=looped)
