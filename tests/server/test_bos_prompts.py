"""A model whose tokenizer puts BOS before every text (Llama's, Mistral's): every entry point
tokenizes a prompt as Hugging Face and vLLM do. Completions and graph calls start with BOS;
chat prompts do not add one, since chat templates write their own; `add_special_tokens`
(vLLM's field) overrides either."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from server.engine import LLMEngine, SamplingParams
from tests.server.http_client import metrics, request

DOC = "Parrot serves applications: their calls share prompts, and outputs feed later calls. "


@pytest.fixture(scope="module")
def served_path(tiny_bos_llama_path: Path) -> Path:
    return tiny_bos_llama_path  # `server`, `engine` and `client` come from conftest.py


@pytest.fixture(scope="module")
def hf(tiny_bos_llama_path: Path):
    return AutoTokenizer.from_pretrained(str(tiny_bos_llama_path))


def greedy_ids(engine: LLMEngine, ids: list[int], max_tokens: int = 8) -> str:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return engine.generate([ids], sampling)[0].text


def test_completions_start_with_bos_unless_told_not_to(client, engine, hf) -> None:
    prompt = "The results of the study"
    with_bos, without = hf(prompt).input_ids, hf(prompt, add_special_tokens=False).input_ids
    assert with_bos == [hf.bos_token_id, *without]
    for extra, ids in (({}, with_bos), ({"add_special_tokens": False}, without)):
        done = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=8, temperature=0,
            extra_body={"ignore_eos": True, **extra},
        )  # fmt: skip
        assert done.usage.prompt_tokens == len(ids)
        assert done.choices[0].text == greedy_ids(engine, ids)
    # an echoed prompt shows the BOS added to it, where its logprobs place that token
    echoed = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=0
    )
    choice = echoed.choices[0]
    assert choice.text == "<s>" + prompt
    assert choice.logprobs.tokens[0] == "<s>" and choice.logprobs.text_offset[:2] == [0, 3]


def test_returned_prompt_token_ids_are_the_tokenizers_with_its_bos(client, engine, hf) -> None:
    """vLLM's `return_token_ids`: a completion's prompt ids start with the BOS the tokenizer
    adds (none with add_special_tokens false); a chat's are the rendered template's, streamed
    or not; the generated ids are the engine's."""
    prompt = "The results of the study"
    kw = {"model": "tiny", "max_tokens": 6, "temperature": 0}
    for extra, special in (({}, True), ({"add_special_tokens": False}, False)):
        ids = hf(prompt, add_special_tokens=special).input_ids
        done = client.completions.create(
            **kw, prompt=prompt, extra_body={"return_token_ids": True, **extra}
        ).model_dump()["choices"][0]  # fmt: skip
        ref = engine.generate([ids], SamplingParams(max_tokens=6, temperature=0))[0]
        assert (done["prompt_token_ids"], done["token_ids"]) == (ids, ref.token_ids)
    assert hf(prompt).input_ids[0] == hf.bos_token_id
    messages = [{"role": "user", "content": "What does a parrot say?"}]
    rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    plain = hf(rendered, add_special_tokens=False).input_ids
    chat = client.chat.completions.create(
        **kw, messages=messages, extra_body={"return_token_ids": True}
    ).model_dump()  # fmt: skip
    assert chat["prompt_token_ids"] == plain
    chunks = client.chat.completions.create(
        **kw, messages=messages, stream=True, extra_body={"return_token_ids": True}
    )  # fmt: skip
    assert next(iter(chunks)).model_dump()["prompt_token_ids"] == plain
    chunks.close()


def test_chat_prompts_add_no_bos_unless_asked(client, engine, hf, server: str) -> None:
    messages = [{"role": "user", "content": "What does a parrot say?"}]
    rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    plain = hf(rendered, add_special_tokens=False).input_ids
    for extra, ids in (({}, plain), ({"add_special_tokens": True}, [hf.bos_token_id, *plain])):
        done = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=8, temperature=0,
            extra_body={"ignore_eos": True, **extra},
        )  # fmt: skip
        assert done.usage.prompt_tokens == len(ids)
        assert done.choices[0].message.content == greedy_ids(engine, ids)
    # /tokenize gives the ids the requests use
    status, body = request("POST", server + "/tokenize", {"prompt": "The results"})
    assert status == 200 and body["tokens"] == hf("The results").input_ids
    status, body = request("POST", server + "/tokenize", {"messages": messages})
    assert status == 200 and body["tokens"] == plain
    status, body = request(
        "POST", server + "/tokenize", {"prompt": "The results", "add_special_tokens": False}
    )
    assert status == 200 and body["tokens"] == hf("The results", add_special_tokens=False).input_ids


def test_graph_calls_start_with_bos_and_still_share_their_prefix(server: str, engine, hf) -> None:
    ask = "Document: {{input:doc}}\nQuestion {{input:q}}:{{output:a}}"
    calls = [
        {"id": f"ask-{i}", "function": "ask", "template": ask,
         "inputs": {"doc": "doc", "q": f"q{i}"}, "outputs": {"a": f"a{i}"},
         "sampling": {"max_tokens": 6, "temperature": 0, "ignore_eos": True}}
        for i in range(3)
    ]  # fmt: skip
    variables = [{"id": "doc", "value": DOC * 4}]
    variables += [{"id": f"q{i}", "value": f"what is point {i + 1}?"} for i in range(3)]
    variables += [{"id": f"a{i}"} for i in range(3)]
    status, opened = request("POST", server + "/v1/sessions", {"name": "bos"})
    assert status == 201, opened
    sid, token = opened["session_id"], opened["token"]
    before = metrics(server)
    status, body = request(
        "POST", f"{server}/v1/sessions/{sid}/graph", {"variables": variables, "calls": calls}, token
    )
    assert status == 200, body
    for i in range(3):
        status, out = request(
            "GET", f"{server}/v1/sessions/{sid}/variables/a{i}?timeout=60", token=token
        )
        assert status == 200 and out["status"] == "ready", out
        ids = hf(f"Document: {DOC * 4}\nQuestion what is point {i + 1}?:").input_ids
        assert ids[0] == hf.bos_token_id
        assert out["value"] == greedy_ids(engine, ids, 6)
        assert out["usage"]["prompt_tokens"] == len(ids)
    after = metrics(server)
    doc_tokens = len(hf(DOC * 4, add_special_tokens=False).input_ids)
    cached = after["parrot_cached_tokens_total"] - before["parrot_cached_tokens_total"]
    assert cached >= 2 * doc_tokens  # the document, BOS and all, was filled once and forked


def test_a_graph_call_may_ask_for_no_bos(server: str, engine, hf) -> None:
    status, opened = request("POST", server + "/v1/sessions", {"name": "no-bos"})
    assert status == 201, opened
    sid, token = opened["session_id"], opened["token"]
    sampling = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}
    calls = [
        {"id": f"c{k}", "template": "Tell me about parrots:{{output:a}}", "outputs": {"a": f"a{k}"},
         "sampling": sampling, **extra}
        for k, extra in enumerate(({}, {"add_special_tokens": False}))
    ]  # fmt: skip
    body = {"variables": [{"id": "a0"}, {"id": "a1"}], "calls": calls}
    status, out = request("POST", f"{server}/v1/sessions/{sid}/graph", body, token)
    assert status == 200, out
    for k, special in enumerate((True, False)):
        status, out = request(
            "GET", f"{server}/v1/sessions/{sid}/variables/a{k}?timeout=60", token=token
        )
        ids = hf("Tell me about parrots:", add_special_tokens=special).input_ids
        assert status == 200 and out["value"] == greedy_ids(engine, ids, 6), out
        assert out["usage"]["prompt_tokens"] == len(ids)
