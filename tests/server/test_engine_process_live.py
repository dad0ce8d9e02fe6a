"""A live server whose engines run in child processes (`--engine-process`): the same answers as
an engine in process, and a dead engine fails its calls while the server goes on."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from server.engine import LLMEngine, SamplingParams
from server.launcher import ServerProcess
from tests.server.http_client import events, metrics, request

pytestmark = pytest.mark.slow


# one call: "Name: Polly\nSays:" and 6 greedy tokens into y
GRAPH = {
    "variables": [{"id": "x", "value": "Polly"}, {"id": "y"}],
    "calls": [{"id": "c", "template": "Name: {{input:x}}\nSays:{{output:y}}",
               "inputs": {"x": "x"}, "outputs": {"y": "y"},
               "sampling": {"max_tokens": 6, "temperature": 0}}],
}  # fmt: skip


def greedy(engine: LLMEngine, text: str, max_tokens: int) -> str:
    ids = engine.tokenizer.encode(text)
    return engine.generate([ids], SamplingParams(max_tokens=max_tokens, temperature=0))[0].text


def engine_pids(log: Path) -> list[int]:
    found = re.search(r'engine_pids(?:=|": ")([\d,]+)', log.read_text())
    assert found, log.read_text()[-2000:]
    return [int(p) for p in found.group(1).split(",")]


def test_engines_in_child_processes_answer_as_in_process_and_die_alone(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    reference = LLMEngine.from_pretrained(str(tiny_llama_path))
    log = tmp_path / "server.log"
    flags = ("--engine-process", "--engines", "2", "--served-model-name", "tiny",
             "--engine-restarts", "0", "--engine-threads", "1")  # fmt: skip
    with ServerProcess(tiny_llama_path, *flags, log_path=log) as srv:
        pids = engine_pids(log)
        assert len(pids) == 2 and srv.process is not None and srv.process.pid not in pids
        # each engine runs the compute threads it is told
        text = log.read_text()
        assert re.search(r"threads_per_engine=1\b", text)
        assert re.findall(r"engine_process_ready.*threads=(\d+)", text) == ["1", "1"]
        # each process leaves what it started with (an engine's: torch's ~170,000 objects, the
        # model's; the server's: its own ~60,000, torch never loaded there) out of its later full
        # garbage collections, which stop its loop while they run
        engines = re.findall(r"frozen_objects=(\d+)", text)
        server = re.findall(r"startup_objects_frozen objects=(\d+)", text)
        assert len(engines) == 2 and all(int(n) > 100_000 for n in engines), engines
        assert len(server) == 1 and int(server[0]) > 10_000, server
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        prompts = ["The parrot said", "Once upon a time", "Numbers: 1 2 3"]
        for text in prompts:
            done = client.completions.create(model="tiny", prompt=text, max_tokens=8, temperature=0)
            assert done.choices[0].text == greedy(reference, text, 8)
        # a graph call: its context is filled and generated on an engine in a child process
        status, body = request("POST", srv.url + "/v1/sessions", {"name": "t"})
        sid, token = body["session_id"], body["token"]
        status, body = request("POST", f"{srv.url}/v1/sessions/{sid}/graph", GRAPH, token)
        assert status == 200, body
        status, body = request("GET", f"{srv.url}/v1/sessions/{sid}/variables/y", token=token)
        assert status == 200 and body["value"] == greedy(reference, "Name: Polly\nSays:", 6)
        assert metrics(srv.url)["parrot_generated_tokens_total"] >= 3 * 8 + 6
        # the engines ran all of it: the server process never loaded torch (nor its ~2.5 s)
        assert not torch_loaded(srv.process.pid)

        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(openai.InternalServerError, match="exited unexpectedly"):
            client.completions.create(model="tiny", prompt="Hello", max_tokens=4)
        # the server itself goes on answering what needs no engine
        assert [m.id for m in client.models.list().data] == ["tiny"]
        assert srv.process.poll() is None
        started = time.monotonic()
        assert srv.stop() == 0  # and it stops cleanly, without waiting on the dead engines
        assert time.monotonic() - started < 10


def torch_loaded(pid: int) -> bool:
    """Whether process `pid` mapped torch's library (Linux)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def without_tokenizer_json(model: Path, folder: Path) -> Path:
    """A copy of `model` whose tokenizer is vocab.json and merges.txt (GPT-2's files, which
    transformers converts as it does a sentencepiece model) instead of tokenizer.json."""
    import tokenizers

    folder.mkdir()
    for file in model.iterdir():
        if file.name != "tokenizer.json":
            shutil.copy(file, folder)
    backend = tokenizers.Tokenizer.from_file(str(model / "tokenizer.json"))
    backend.model.save(str(folder))
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("backend", None)
    config["tokenizer_class"] = "GPT2Tokenizer"
    config["added_tokens_decoder"] = {
        str(i): {"content": t.content, "special": True}
        for i, t in backend.get_added_tokens_decoder().items()
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_a_folder_without_tokenizer_json_is_served_with_no_torch_in_the_server(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    """transformers converts such a folder's tokenizer, and its AutoTokenizer imports torch:
    the engine process converts it, and the server takes the engine's result (the server
    converted it again, importing torch and transformers for seconds)."""
    folder = without_tokenizer_json(tiny_llama_path, tmp_path / "model")
    reference = LLMEngine.from_pretrained(str(tiny_llama_path))
    prompt = "<|im_start|>user\nGrüße aus Zürich 🦜<|im_end|>\n"
    flags = ("--engines", "1", "--served-model-name", "tiny", "--engine-threads", "1")
    with ServerProcess(folder, *flags, log_path=tmp_path / "server.log") as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        done = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0)
        assert done.choices[0].text == greedy(reference, prompt, 6)
        assert done.usage.prompt_tokens == len(reference.tokenizer.encode(prompt))
        assert srv.process is not None and not torch_loaded(srv.process.pid)


def wait_logged(log: Path, event: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text()
        if event in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"no {event} in the log: {log.read_text()[-2000:]}")


def test_a_killed_engine_is_restarted_and_what_waited_runs_on_the_new_one(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    reference = LLMEngine.from_pretrained(str(tiny_llama_path))
    log = tmp_path / "server.log"
    with ServerProcess(tiny_llama_path, "--served-model-name", "tiny", log_path=log) as srv:
        [pid] = engine_pids(log)
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        done = client.completions.create(model="tiny", prompt="Hi", max_tokens=4, temperature=0)
        assert done.choices[0].text == greedy(reference, "Hi", 4)
        status, body = request("POST", srv.url + "/v1/sessions", {"name": "t"})
        sid, token = body["session_id"], body["token"]
        generated = metrics(srv.url)["parrot_generated_tokens_total"]
        assert generated >= 4

        os.kill(pid, signal.SIGKILL)
        wait_logged(log, "engine_exited")
        # no engine runs: a plain request is told to come back (OpenAI's clients retry 503)
        assert request("GET", srv.url + "/healthz")[1]["engines_running"] == 0
        assert health_status(srv.url) == 503  # vLLM's readiness probe: not ready
        # counters hold what the dead engine was last seen to count: they never go down
        assert metrics(srv.url)["parrot_generated_tokens_total"] == generated
        with pytest.raises(openai.APIStatusError) as refused:
            client.completions.create(model="tiny", prompt="Hi", max_tokens=4)
        assert refused.value.status_code == 503
        assert refused.value.response.headers["retry-after"] == "1"
        assert "restarted" in refused.value.message
        with pytest.raises(openai.BadRequestError):  # a bad request is a 400 all the same
            client.completions.create(model="tiny", prompt=[[1, 2], [999999]], max_tokens=4)
        # a graph call submitted meanwhile waits for the new engine instead of failing
        status, body = request("POST", f"{srv.url}/v1/sessions/{sid}/graph", GRAPH, token)
        assert status == 200, body
        assert "engine_restarted" not in log.read_text()  # it was submitted during the restart
        status, body = request("GET", f"{srv.url}/v1/sessions/{sid}/variables/y", token=token)
        assert status == 200 and body["value"] == greedy(reference, "Name: Polly\nSays:", 6)

        text = wait_logged(log, "engine_restarted")
        new_pid = int(re.search(r"engine_restarted.* pid=(\d+)", text).group(1))
        assert new_pid != pid and not exited(new_pid)
        done = client.completions.create(model="tiny", prompt="Hi", max_tokens=4, temperature=0)
        assert done.choices[0].text == greedy(reference, "Hi", 4)
        assert metrics(srv.url)["parrot_engine_restarts_total"] == 1
        # a restart loads torch in the new engine alone
        assert srv.process is not None and not torch_loaded(srv.process.pid)
        # the new engine's counts go on from the old one's (6 tokens of the call, 4 here)
        assert metrics(srv.url)["parrot_generated_tokens_total"] == generated + 10
        assert request("GET", srv.url + "/healthz")[1]["engines_running"] == 1
        assert health_status(srv.url) == 200
        assert srv.stop() == 0
    assert wait_exited([new_pid])


def test_while_one_engine_restarts_the_others_take_its_work(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    reference = LLMEngine.from_pretrained(str(tiny_llama_path))
    log = tmp_path / "server.log"
    flags = ("--engines", "2", "--served-model-name", "tiny")
    with ServerProcess(tiny_llama_path, *flags, log_path=log) as srv:
        pids = engine_pids(log)
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        # the engines' fork server, stopped, holds the restart for as long as this test needs
        # (on a busy machine a restart can otherwise end before the requests below): and the
        # server, which waits for the fork server's answer, must go on serving meanwhile
        fork_server = parent_pid(pids[0])
        assert fork_server != srv.process.pid and parent_pid(fork_server) == srv.process.pid
        os.kill(fork_server, signal.SIGSTOP)
        try:
            os.kill(pids[0], signal.SIGKILL)
            wait_logged(log, "engine_exited")
            assert request("GET", srv.url + "/healthz")[1]["engines_running"] == 1
            # every request lands on the engine that runs: none fails, none waits for the restart
            for text in ["The parrot said", "Once upon a time", "Numbers: 1 2 3"]:
                done = client.completions.create(
                    model="tiny", prompt=text, max_tokens=6, temperature=0, timeout=30
                )
                assert done.choices[0].text == greedy(reference, text, 6)
            assert "engine_restarted" not in log.read_text()
        finally:
            os.kill(fork_server, signal.SIGCONT)
        wait_logged(log, "engine_restarted")
        assert request("GET", srv.url + "/healthz")[1]["engines_running"] == 2


def parent_pid(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def test_work_waiting_on_an_engine_that_dies_runs_again_on_the_new_one(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    """What had produced nothing when its engine died (it waited in the engine's queue) runs
    again on the restarted engine, as if nothing happened, also when a client streams it (it
    has seen nothing yet); what had produced text fails."""
    reference = LLMEngine.from_pretrained(str(tiny_llama_path))
    log = tmp_path / "server.log"
    flags = ("--served-model-name", "tiny", "--max-num-seqs", "1")
    with ServerProcess(tiny_llama_path, *flags, log_path=log) as srv, ThreadPoolExecutor() as pool:
        [pid] = engine_pids(log)
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        # a long generation holds the engine's only running slot ...
        long = iter(client.completions.create(
            model="tiny", prompt="Count:", max_tokens=1000, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        ))  # fmt: skip
        next(long)
        # ... and three more queue behind it (one long generation takes only ~0.5 s here: the
        # queue keeps the engine busy until the kill) ...
        more = [
            pool.submit(client.completions.create, model="tiny", prompt=f"Count {i}:",
                        max_tokens=1000, temperature=0, extra_body={"ignore_eos": True})
            for i in range(3)
        ]  # fmt: skip
        # ... and so do a plain request and a graph call
        waiting = pool.submit(
            client.completions.create, model="tiny", prompt="Hi", max_tokens=4, temperature=0
        )
        status, body = request("POST", srv.url + "/v1/sessions", {"name": "t"})
        sid, token = body["session_id"], body["token"]
        status, body = request("POST", f"{srv.url}/v1/sessions/{sid}/graph", GRAPH, token)
        assert status == 200, body
        # a client follows the call's output, and has seen nothing of it when the engine dies
        streamed = pool.submit(events, f"{srv.url}/v1/sessions/{sid}/variables/y/stream", token)
        deadline = time.monotonic() + 30
        while metrics(srv.url)["parrot_engine_jobs"] < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metrics(srv.url)["parrot_engine_jobs"] >= 6  # the long one and five waiting
        assert not streamed.done()

        os.kill(pid, signal.SIGKILL)
        with pytest.raises(openai.APIError, match="exited unexpectedly"):
            for _ in long:  # it had streamed text: its error ends the stream
                pass
        assert waiting.result(timeout=60).choices[0].text == greedy(reference, "Hi", 4)
        assert [f.result(timeout=60).usage.completion_tokens for f in more] == [1000] * 3
        status, body = request("GET", f"{srv.url}/v1/sessions/{sid}/variables/y", token=token)
        assert status == 200 and body["value"] == greedy(reference, "Name: Polly\nSays:", 6)
        got = streamed.result(timeout=60)
        assert got[-1][0] == "done", got[-1]
        assert "".join(data["text"] for kind, data in got if kind == "chunk") == body["value"]
        assert metrics(srv.url)["parrot_calls_requeued_total"] == 1
        assert metrics(srv.url)["parrot_engine_restarts_total"] == 1


def test_mid_generation_what_nobody_has_seen_yet_is_redone(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    """A non-streamed request and a graph call whose output nobody follows are mid-generation
    when their engine dies: the client has seen nothing of either, so both run again from the
    start on the restarted engine and answer as if nothing happened."""
    reference = LLMEngine.from_pretrained(str(tiny_llama_path))
    long = SamplingParams(max_tokens=900, temperature=0, ignore_eos=True)

    def expected(text: str) -> str:
        return reference.generate([reference.tokenizer.encode(text)], long)[0].text

    log = tmp_path / "server.log"
    graph = {
        "variables": [{"id": "y"}],
        "calls": [{"id": "c", "template": "Count:{{output:y}}", "outputs": {"y": "y"},
                   "sampling": {"max_tokens": 900, "temperature": 0, "ignore_eos": True}}],
    }  # fmt: skip
    with ServerProcess(tiny_llama_path, "--served-model-name", "tiny", log_path=log) as srv, \
            ThreadPoolExecutor() as pool:  # fmt: skip
        [pid] = engine_pids(log)
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        plain = pool.submit(
            client.completions.create, model="tiny", prompt="Numbers:", max_tokens=900,
            temperature=0, extra_body={"ignore_eos": True},
        )  # fmt: skip
        status, body = request("POST", srv.url + "/v1/sessions", {"name": "t"})
        sid, token = body["session_id"], body["token"]
        status, body = request("POST", f"{srv.url}/v1/sessions/{sid}/graph", graph, token)
        assert status == 200, body
        deadline = time.monotonic() + 30
        while metrics(srv.url)["parrot_generated_tokens_total"] < 60:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        assert not plain.done()  # it was mid-generation
        assert plain.result(timeout=60).choices[0].text == expected("Numbers:")
        status, body = request("GET", f"{srv.url}/v1/sessions/{sid}/variables/y", token=token)
        assert status == 200 and body["value"] == expected("Count:")
        assert metrics(srv.url)["parrot_calls_requeued_total"] == 1


def test_requests_on_two_engines_killed_at_once_are_redone_or_told_to_retry(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    """Both engines die at once (one kill of each), each under a non-streamed request nobody
    has seen. The server learns of the deaths one by one, so a redo may go to the other dying
    engine: each request is then either redone once an engine is back, or, when its redo's
    engine died too, told to retry (503 with Retry-After, as a request arriving during the
    restart is); never failed with a 500, as if the request had killed them."""
    reference = LLMEngine.from_pretrained(str(tiny_llama_path))
    long = SamplingParams(max_tokens=600, temperature=0, ignore_eos=True)
    prompts = ["Numbers:", "Count:"]
    log = tmp_path / "server.log"
    flags = ("--engines", "2", "--served-model-name", "tiny", "--engine-threads", "1")
    with ServerProcess(tiny_llama_path, *flags, log_path=log) as srv, \
            ThreadPoolExecutor() as pool:  # fmt: skip
        pids = engine_pids(log)
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        plain = [
            pool.submit(client.completions.create, model="tiny", prompt=text, max_tokens=600,
                        temperature=0, extra_body={"ignore_eos": True})
            for text in prompts
        ]  # fmt: skip
        kill_mid_generation(srv.url, pids)
        assert not any(f.done() for f in plain)
        for text, f in zip(prompts, plain, strict=True):
            try:
                done = f.result(timeout=120)
            except openai.APIStatusError as exc:
                assert exc.status_code == 503, exc.message
                assert exc.response.headers["retry-after"] == "1"
                assert "retry shortly" in exc.message
                continue
            expected = reference.generate([reference.tokenizer.encode(text)], long)[0].text
            assert done.choices[0].text == expected
        wait_logged(log, "engine_restarted")
        # and asked again, it is answered
        done = client.completions.create(model="tiny", prompt="Hi", max_tokens=4, temperature=0)
        assert done.choices[0].text == greedy(reference, "Hi", 4)


def test_graph_calls_on_two_engines_killed_at_once_run_again_until_an_engine_is_back(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    """Both engines die at once, each under a graph call nobody has seen. The server learns of
    the deaths one by one, so a redo may go to the other engine, already dead: a graph call has
    no client to tell to retry, so it waits for a restarted engine and runs there (it failed,
    with what reads it, though nothing it did killed the engines)."""
    reference = LLMEngine.from_pretrained(str(tiny_llama_path))
    long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
    log = tmp_path / "server.log"
    flags = ("--engines", "2", "--served-model-name", "tiny", "--engine-threads", "1")
    with ServerProcess(tiny_llama_path, *flags, log_path=log) as srv:
        pids = engine_pids(log)
        sessions = []
        for text in ["Numbers:", "Count:"]:
            graph = {
                "variables": [{"id": "y"}, {"id": "z"}],
                "calls": [
                    {"id": "c", "template": text + "{{output:y}}", "outputs": {"y": "y"},
                     "sampling": {"max_tokens": 400, "temperature": 0, "ignore_eos": True}},
                    {"id": "d", "template": "Name: {{input:y|strip}}\nSays:{{output:z}}",
                     "inputs": {"y": "y"}, "outputs": {"z": "z"},
                     "sampling": {"max_tokens": 4, "temperature": 0}},
                ],
            }  # fmt: skip
            status, body = request("POST", srv.url + "/v1/sessions", {"name": "t"})
            sid, token = body["session_id"], body["token"]
            status, body = request("POST", f"{srv.url}/v1/sessions/{sid}/graph", graph, token)
            assert status == 200, body
            sessions.append((text, sid, token))
        kill_mid_generation(srv.url, pids)
        for text, sid, token in sessions:
            base = f"{srv.url}/v1/sessions/{sid}/variables"
            status, y = request("GET", f"{base}/y?timeout=120", token=token, timeout=150)
            assert status == 200 and y["status"] == "ready", y
            ids = reference.tokenizer.encode(text)
            assert y["value"] == reference.generate([ids], long)[0].text
            status, z = request("GET", f"{base}/z?timeout=60", token=token)
            assert z["value"] == greedy(reference, f"Name: {y['value'].strip()}\nSays:", 4)
        assert metrics(srv.url)["parrot_calls_requeued_total"] >= 2


def test_calls_waiting_for_an_engine_that_stays_down_fail_instead_of_waiting_forever(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    """The restart fails (the model is gone) and the budget is spent: a graph call that was
    waiting for the engine fails with the reason, and plain requests get the engine's 500."""
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_path, model)
    log = tmp_path / "server.log"
    flags = ("--served-model-name", "tiny", "--engine-restarts", "1")
    with ServerProcess(model, *flags, log_path=log) as srv:
        [pid] = engine_pids(log)
        shutil.rmtree(model)  # so that the restart fails
        status, body = request("POST", srv.url + "/v1/sessions", {"name": "t"})
        sid, token = body["session_id"], body["token"]
        os.kill(pid, signal.SIGKILL)
        wait_logged(log, "engine_exited")
        status, body = request("POST", f"{srv.url}/v1/sessions/{sid}/graph", GRAPH, token)
        assert status == 200, body
        assert "restart_in_s=never" not in log.read_text()  # submitted while it restarted
        status, body = request(
            "GET", f"{srv.url}/v1/sessions/{sid}/variables/y?timeout=60", token=token
        )
        assert status == 200 and body["status"] == "failed", body
        assert "exited unexpectedly" in body["error"]
        text = log.read_text()
        assert "engine_restart_failed" in text and "restart_in_s=never" in text
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError, match="exited unexpectedly"):
            client.completions.create(model="tiny", prompt="Hi", max_tokens=4)


def exited(pid: int) -> bool:
    """Gone, or a zombie waiting for whoever adopted it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    except FileNotFoundError:
        return True


def wait_exited(pids: list[int], timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(exited(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_engine_processes_end_with_the_server(tiny_llama_path: Path, tmp_path: Path, how: str):
    """Stopped gracefully, the server stops its engines; killed outright, its engines see their
    pipe close and exit by themselves (no orphan holds the model and KV memory)."""
    log = tmp_path / "server.log"
    flags = ("--engine-process", "--log-format", "json")
    with ServerProcess(tiny_llama_path, *flags, log_path=log) as srv:
        pids = engine_pids(log)
        # the engines log as the server does (JSON records here), each naming its process
        lines = log.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        ready = [r for r in records if r["msg"] == "engine_process_ready"]
        assert [r["pid"] for r in ready] == pids
        assert srv.process is not None
        if how == "sigterm":
            assert srv.stop() == 0
        else:
            srv.process.kill()
            srv.process.wait()
        assert wait_exited(pids), [Path(f"/proc/{p}/stat").read_text() for p in pids]


def test_a_stream_whose_engine_dies_ends_with_a_server_error(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    """A streamed request whose engine dies after its first tokens went out cannot be redone:
    its stream ends with an error event that says the server failed (as the non-streamed 500
    does), not that the request was invalid."""
    import urllib.request

    log = tmp_path / "server.log"
    flags = ("--served-model-name", "tiny", "--engine-restarts", "0")
    with ServerProcess(tiny_llama_path, *flags, log_path=log) as srv:
        [pid] = engine_pids(log)
        body = {"model": "tiny", "prompt": "Numbers:", "max_tokens": 900, "temperature": 0,
                "ignore_eos": True, "stream": True}  # fmt: skip
        req = urllib.request.Request(
            srv.url + "/v1/completions", json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )  # fmt: skip
        events: list[str] = []
        with urllib.request.urlopen(req, timeout=60) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 3:
                    os.kill(pid, signal.SIGKILL)
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert "exited unexpectedly" in error["message"]
        assert error["type"] == "server_error"


def health_status(url: str) -> int:
    """vLLM's GET /health: an empty body, the status says it all."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=30) as resp:
            assert resp.read() == b""
            return resp.status
    except urllib.error.HTTPError as err:
        assert err.headers["Retry-After"] == "1"
        return err.code


def kill_mid_generation(url: str, pids: list[int]) -> None:
    """Kill the engines once 60 tokens are out (the requests running are mid-generation)."""
    deadline = time.monotonic() + 30
    while metrics(url)["parrot_generated_tokens_total"] < 60:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
