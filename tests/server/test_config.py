"""The server's configuration and its command line."""

import pytest

from server.config import DEFAULT_MODEL, ServerConfig, build_parser


def test_defaults_and_flags_map_to_the_config() -> None:
    assert ServerConfig.from_args([]) == ServerConfig()
    assert ServerConfig().model == DEFAULT_MODEL == "smollm2-135m-instruct"
    c = ServerConfig.from_args(
        ["--model", "/m", "--port", "9100", "--num-kv-blocks", "64", "--no-prefix-cache",
         "--disable-prefix-sharing", "--served-model-name", "m", "--log-format", "json"]
    )  # fmt: skip
    assert (c.model, c.port, c.num_kv_blocks, c.model_id) == ("/m", 9100, 64, "m")
    assert not c.enable_prefix_cache and not c.enable_prefix_sharing and c.enable_cascade
    assert c.engine_kwargs() == {
        "num_kv_blocks": 64,
        "enable_prefix_cache": False,
        "enable_cascade": True,
        "prefault_kv_cache": True,
        "quantized_linear": True,
        "ngram_speculation": 4,
        "latency_max_batched_tokens": 0,
        "latency_other_decode_rows": 3,
        "background_max_prefill_tokens": 512,
        "pausable_steps": True,
    }
    assert ServerConfig.from_args(["--ngram-speculation", "0"]).engine_kwargs()[
        "ngram_speculation"] == 0  # fmt: skip
    # the engines run in child processes unless told otherwise
    assert ServerConfig().engine_process
    assert not ServerConfig.from_args(["--no-engine-process"]).engine_process
    assert ServerConfig.from_args(["--engine-process"]).engine_process


def test_every_engine_runs_a_thread_per_core_unless_told() -> None:
    assert ServerConfig().threads_per_engine(16) == 16
    assert ServerConfig(engines=2).threads_per_engine(2) == 2
    assert ServerConfig.from_args(["--engines", "2", "--engine-threads", "1"]).threads_per_engine(
        2
    ) == 1


def test_ablation_flags_switch_each_optimisation_off() -> None:
    c = ServerConfig.from_args(
        ["--no-objective-deduction", "--no-task-groups", "--no-pipelined-prefill",
         "--no-prefix-sharing", "--engines", "2", "--latency-max-running-tokens", "64"]
    )  # fmt: skip
    ex = c.executor_config()
    assert c.engines == 2
    assert not (ex.objective_deduction or ex.task_groups or ex.pipelined_prefill)
    assert not ex.enable_prefix_sharing and ex.app_scheduling
    assert c.engine_kwargs()["latency_max_batched_tokens"] == 64
    assert ServerConfig.from_args(["--no-prefault-kv-cache"]).engine_kwargs()[
        "prefault_kv_cache"
    ] is False
    assert ServerConfig.from_args(["--kv-cache-gb", "0.5"]).engine_kwargs()["kv_cache_gb"] == 0.5
    assert ServerConfig.from_args(["--no-quantized-weights"]).engine_kwargs()[
        "quantized_linear"
    ] is False
    off = ServerConfig.from_args(["--no-app-scheduling"])
    assert not off.executor_config().app_scheduling
    assert "latency_max_batched_tokens" not in off.engine_kwargs()
    assert "latency_other_decode_rows" not in off.engine_kwargs()
    assert "background_max_prefill_tokens" not in off.engine_kwargs()
    assert off.engine_kwargs()["pausable_steps"] is False
    assert ServerConfig.from_args(["--no-step-pausing"]).engine_kwargs()["pausable_steps"] is False
    chunk = ServerConfig.from_args(["--background-prefill-chunk", "64"]).engine_kwargs()
    assert chunk["background_max_prefill_tokens"] == 64
    assert "background_max_prefill_tokens" not in ServerConfig(
        background_prefill_chunk=0
    ).engine_kwargs()
    no_app = ["--background-prefill-chunk", "256", "--no-app-scheduling"]
    assert "background_max_prefill_tokens" not in ServerConfig.from_args(no_app).engine_kwargs()
    assert (
        "latency_max_batched_tokens"
        not in ServerConfig(latency_max_running_tokens=-1).engine_kwargs()
    )
    assert ServerConfig().executor_config().latency_hold_s == 0.1
    assert ServerConfig().executor_config().pipelined_prefill_chunk == 8
    chunk = ServerConfig.from_args(["--pipelined-prefill-chunk", "0"]).executor_config()
    assert chunk.pipelined_prefill_chunk == 0
    assert ServerConfig.from_args(["--latency-hold-ms", "0"]).executor_config().latency_hold_s == 0
    assert ServerConfig.from_args(["--no-app-scheduling"]).executor_config().latency_hold_s == 0


def test_every_config_field_has_a_flag() -> None:
    dests = {a.dest for a in build_parser()._actions}
    assert set(ServerConfig.__dataclass_fields__) <= dests


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"port": 70000}, "port"),
        ({"model": ""}, "model"),
        ({"min_shared_prefix_tokens": 0}, "min_shared_prefix_tokens"),
        ({"log_format": "xml"}, "log_format"),
        ({"engines": 0}, "engines"),
        ({"engine_threads": 0}, "engine_threads"),
        ({"engine_restarts": -1}, "engine_restarts"),
        ({"allowed_origins": ("app.example",)}, "scheme://host"),
        ({"latency_max_running_tokens": -2}, "latency_max_running_tokens"),
        ({"latency_other_decode_rows": -1}, "latency_other_decode_rows"),
        ({"background_prefill_chunk": -1}, "background_prefill_chunk"),
        ({"latency_hold_ms": -1}, "latency_hold_ms"),
        ({"latency_hold_ms": float("inf")}, "latency_hold_ms must be finite"),
        ({"latency_hold_ms": float("nan")}, "latency_hold_ms"),
        ({"pipelined_prefill_chunk": -1}, "pipelined_prefill_chunk"),
        ({"prefix_store_ttl_s": 0}, "prefix_store_ttl_s"),
        ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ],
)
def test_bad_values_are_refused(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ServerConfig(**kwargs)


def test_an_api_key_is_printable_and_kept_out_of_the_configs_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ServerConfig.from_args(["--api-key", "sk-1"]).api_key == "sk-1"
    monkeypatch.setenv("PARROT_API_KEY", "sk-env")
    assert ServerConfig.from_args([]).api_key == "sk-env"  # where no flag gives one
    assert "sk-1" not in repr(ServerConfig(api_key="sk-1"))
    for bad in ("", "with space", "é", "x" * 257):
        with pytest.raises(ValueError, match="api_key"):
            ServerConfig(api_key=bad)


def test_the_server_checks_its_flags_and_starts_its_fork_server_before_importing_torch() -> None:
    # torch's import takes seconds; the fork server imports it beside the server's own import
    # only if nothing on the way to `start_fork_server` imports it first
    import subprocess
    import sys

    probe = "import sys, server.__main__; print(sorted(m for m in sys.modules if m == 'torch'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_every_dtype_name_is_checked_without_torch(tmp_path) -> None:
    # each name --dtype takes, and names it refuses (torch's own dtypes the engine cannot run
    # in among them): judged by the server's check before it imports torch (an uncommon name
    # once imported torch there, seconds before the fork server)
    import subprocess
    import sys

    probe = f"""
import sys
from server.app import check
from server.config import ServerConfig
from server.engine.dtype_name import DTYPE_NAMES

for name in [*DTYPE_NAMES, "int8", "float8_e4m3fn", "complex64", "Tensor", "foo"]:
    try:
        check(ServerConfig.from_args(["--model", {str(tmp_path)!r}, "--dtype", name]))
        print(name, "taken")
    except ValueError as exc:
        print(name, "refused:", exc)
print(sorted(m for m in sys.modules if m == 'torch'))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "[]", out.stdout + out.stderr
    taken = [line.split()[0] for line in lines[:-1] if line.endswith(" taken")]
    assert taken == ["float32", "float", "float16", "half", "bfloat16", "float64", "double"]
    assert all("dtype must name a torch dtype" in line for line in lines[7:-1]), lines


def test_a_server_with_engine_processes_never_imports_torch_itself(tmp_path) -> None:
    # with the engines in child processes (the default) the server tokenizes, schedules and
    # answers HTTP: its flags checked, its app built and an engine's process described to it,
    # it has loaded no torch, so torch's import in the fork server is the only one on the way
    # to serving (the engine's start and its messages: tests/server/test_engine_process_live.py)
    import subprocess
    import sys

    probe = f"""
import pickle, sys
from server.app import check, init_app
from server.config import ServerConfig
from server.engine_info import EngineInfo
from server.engine_start import engine_main

config = ServerConfig.from_args(["--model", {str(tmp_path)!r}, "--dtype", "bfloat16",
                                 "--engines", "2"])
check(config)
init_app(config)
pickle.dumps(engine_main)  # what an engine process is told to run
pickle.loads(pickle.dumps(EngineInfo("m", 16, 32, 64, 0, "/m", (2,), 2)))  # what it answers
print(sorted(m for m in sys.modules if m == 'torch'))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
