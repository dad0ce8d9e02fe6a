"""vLLM's `cache_salt` through the OpenAI client on a live server, its engine in a child process
and on a thread: a salted request reuses only prefix-cached KV of requests with the same salt
(seen in `parrot_cached_tokens_total`), one sample or `n`, and answers exactly as unsalted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from server.engine import LLMEngine, SamplingParams
from server.launcher import ServerProcess
from tests.server.http_client import metrics

pytestmark = pytest.mark.slow

PROMPT = "A parrot repeats what it hears, and the keeper writes it all down in a book. " * 3
MESSAGES = [{"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module", params=["engine-process", "no-engine-process"])
def server(
    request: pytest.FixtureRequest, tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    flags = ["--served-model-name", "tiny"]
    if request.param == "no-engine-process":
        flags.append("--no-engine-process")
    log = tmp_path_factory.mktemp("salt") / "server.log"
    with ServerProcess(tiny_llama_path, *flags, log_path=log) as srv:
        yield srv.url


def cached_by(server: str, send) -> int:
    """Prompt tokens the server took from its prefix cache while `send()` ran."""
    before = metrics(server)["parrot_cached_tokens_total"]
    send()
    return int(metrics(server)["parrot_cached_tokens_total"] - before)


def test_salted_requests_share_the_prefix_cache_only_within_their_salt(
    server: str, client: openai.OpenAI, engine: LLMEngine
) -> None:
    ids = engine.tokenizer.encode_prompt(PROMPT)
    assert len(ids) > 32  # at least two full blocks of 16
    want = engine.generate([ids], SamplingParams(max_tokens=8, temperature=0))[0].text

    def complete(salt: str | None) -> None:
        extra = {} if salt is None else {"cache_salt": salt}
        done = client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, extra_body=extra
        )
        assert done.choices[0].text == want

    def stream(salt: str) -> None:
        chunks = client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, stream=True,
            extra_body={"cache_salt": salt},
        )  # fmt: skip
        assert "".join(c.choices[0].text for c in chunks if c.choices) == want

    complete(None)  # the unsalted blocks are cached now
    assert cached_by(server, lambda: complete("tenant-a")) == 0
    assert cached_by(server, lambda: complete("tenant-a")) > 0
    assert cached_by(server, lambda: stream("tenant-b")) == 0
    assert cached_by(server, lambda: complete("tenant-b")) > 0
    assert cached_by(server, lambda: complete(None)) > 0


def test_salted_samples_share_the_prefix_cache_only_within_their_salt(
    server: str, client: openai.OpenAI, engine: LLMEngine
) -> None:
    """`n` samples fork one computed prompt: that prompt's context carries the salt."""
    text = engine.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    ids = engine.tokenizer.encode_prompt(text, add_special_tokens=False)
    want = engine.generate([ids], SamplingParams(max_tokens=6, temperature=0))[0].text

    def chat(salt: str | None, n: int) -> None:
        extra = {} if salt is None else {"cache_salt": salt}
        done = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=6, temperature=0, n=n, extra_body=extra
        )
        assert [c.message.content for c in done.choices] == [want] * n

    chat(None, 1)
    assert cached_by(server, lambda: chat("tenant-c", 2)) == 0
    assert cached_by(server, lambda: chat("tenant-c", 1)) > 0
    assert cached_by(server, lambda: chat("tenant-d", 2)) == 0
    assert cached_by(server, lambda: chat("tenant-d", 3)) > 0


def test_a_salt_is_a_non_empty_string(client: openai.OpenAI) -> None:
    """As vLLM: any non-empty string is taken, an empty one or another type is a 400."""
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    for salt in (" ", "tenant-e"):
        client.completions.create(
            model="tiny", prompt="x", max_tokens=1, extra_body={"cache_salt": salt}
        )
        client.chat.completions.create(**chat, extra_body={"cache_salt": salt})
    for salt in ("", 5, ["x"]):
        with pytest.raises(openai.BadRequestError, match="cache_salt") as err:
            client.completions.create(
                model="tiny", prompt="x", max_tokens=1, extra_body={"cache_salt": salt}
            )
        assert err.value.body["param"] == "cache_salt"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError, match="cache_salt"):
            client.chat.completions.create(**chat, extra_body={"cache_salt": salt})
