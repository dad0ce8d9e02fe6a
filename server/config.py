"""The server's configuration and the command line that sets it."""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

from server.cors import CorsPolicy
from server.engine.device import check_device_name
from server.executor_config import ExecutorConfig
from server.prefix_store import PrefixStoreConfig
from server.restart_policy import RestartPolicy

DEFAULT_MODEL = "smollm2-135m-instruct"
_LOG_LEVELS = ("debug", "info", "warning", "error")
_PRINTABLE_KEY = re.compile(r"[!-~]{1,256}")
_ENGINE_FIELDS = (
    "num_kv_blocks",
    "kv_cache_gb",
    "block_size",
    "max_num_batched_tokens",
    "max_num_seqs",
    "max_model_len",
    "enable_prefix_cache",
    "enable_cascade",
    "prefault_kv_cache",
    "quantized_linear",
    "ngram_speculation",
    "ngram_max_rows",
    "pause_min_tokens",
)


@dataclass(slots=True)
class ServerConfig:
    """Everything `parrot-server` can be told. Engine fields left None take the engine's
    defaults."""

    model: str = DEFAULT_MODEL
    host: str = "127.0.0.1"
    port: int = 9000
    served_model_name: str | None = None
    device: str = "auto"  # CUDA when torch sees a GPU, else the CPU
    dtype: str | None = None
    # engine
    num_kv_blocks: int | None = None
    kv_cache_gb: float | None = None
    block_size: int | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    enable_prefix_cache: bool = True
    enable_cascade: bool = True
    prefault_kv_cache: bool = True
    # a GGUF's 4-bit and 8/6-bit layers and head also kept quantized, for CPU steps of few rows
    quantized_linear: bool = True
    # decodes draft up to 4 tokens from their own text (exact: each stays only if the step
    # chooses it, greedy or sampled; a chain of summaries alone ran 3.54 -> 2.25 s,
    # benchmarks/README.md)
    ngram_speculation: int | None = 4
    ngram_max_rows: int | None = None
    pause_min_tokens: int | None = None
    engines: int = 1
    # each engine in a child process of its own: the server's Python work (HTTP, JSON, graphs)
    # then never holds the GIL that the step loop needs; see server/engine_process.py
    engine_process: bool = True
    # compute threads per engine; None: torch's default (one per core) in every engine. Not
    # divided among the engines: an engine alone at work (a reduce, a chain) then keeps every
    # core, and two busy ones share them well enough (map_reduce with --engines 2: 4.1-4.8 s
    # with 2 threads each on 2 cores, 6.2-6.5 s with 1; benchmarks/README.md)
    engine_threads: int | None = None
    # an engine process that dies is restarted, at most this often within 5 minutes
    engine_restarts: int = 5
    # graph execution (each optimisation can be switched off, for ablation)
    enable_prefix_sharing: bool = True
    min_shared_prefix_tokens: int = 16
    prefix_store_max_entries: int = 256
    prefix_store_ttl_s: float = 600.0
    enable_pipelined_prefill: bool = True
    enable_objective_deduction: bool = True
    enable_task_groups: bool = True
    enable_app_scheduling: bool = True
    latency_max_running_tokens: int = 0
    # on top of that cap: a step of 4 rows costs about what 1 row costs here; 3 riding rows took
    # the mixed map-reduce from 5.44 to 5.13 s, the chat 0.54 -> 0.54-0.59 s, the loaded chain
    # unchanged (A/B runs in benchmarks/README.md)
    latency_other_decode_rows: int = 3
    latency_hold_ms: float = 100.0
    pipelined_prefill_chunk: int = 8
    # a step without latency-critical work pauses between two layers when latency-critical
    # work arrives, and goes on after it: the mixed chat's mean went from
    # 0.57-0.64 s to 0.43-0.52 s, about its time alone (benchmarks/README.md)
    enable_step_pausing: bool = True
    # background prefill tokens per step: without pausing, a latency-critical call arriving
    # mid-step waited for the step in flight, so it was 128 (~0.13 s of linear layers here);
    # with pausing it waits for one layer of the chunk, and 512 took the mixed map-reduce 5%
    # faster than 128 at no cost to the chat (benchmarks/README.md)
    background_prefill_chunk: int = 512
    max_calls_per_engine: int = 256
    # operations
    session_ttl_s: float = 3600.0
    max_request_mb: int = 64
    # Responses API responses kept (store=true) to retrieve or follow; the least recently used
    # go first, and past this many characters of conversation in all
    stored_responses: int = 1000
    stored_response_chars: int = 64_000_000
    # origins whose pages may call the API from a browser (CORS); "*" for any; none: no CORS
    allowed_origins: tuple[str, ...] = ()
    # callers must send `Authorization: Bearer <api_key>` (vLLM's --api-key); None: anyone may
    api_key: str | None = field(default=None, repr=False)
    log_level: str = "info"
    log_format: str = "kv"
    # SIGINT/SIGTERM: the grace period of the requests in flight (`server.drain`)
    shutdown_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must name a model (a registered name or a path)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.min_shared_prefix_tokens < 1:
            raise ValueError(
                f"min_shared_prefix_tokens must be >= 1, got {self.min_shared_prefix_tokens}"
            )
        check_device_name(self.device)
        if not 1 <= self.engines <= 64:
            raise ValueError(f"engines must be in 1..64, got {self.engines}")
        if self.engine_restarts < 0:
            raise ValueError(f"engine_restarts must be >= 0 (0: never), got {self.engine_restarts}")
        if self.engine_threads is not None and self.engine_threads < 1:
            raise ValueError(f"engine_threads must be >= 1, got {self.engine_threads}")
        if self.prefix_store_max_entries < 1:
            raise ValueError(
                f"prefix_store_max_entries must be >= 1, got {self.prefix_store_max_entries}"
            )
        if not self.prefix_store_ttl_s > 0:
            raise ValueError(f"prefix_store_ttl_s must be positive, got {self.prefix_store_ttl_s}")
        if self.latency_max_running_tokens < -1:
            raise ValueError(
                "latency_max_running_tokens must be >= 0, or -1 for no cap, "
                f"got {self.latency_max_running_tokens}"
            )
        if self.latency_other_decode_rows < 0:
            raise ValueError(
                f"latency_other_decode_rows must be >= 0, got {self.latency_other_decode_rows}"
            )
        if self.pipelined_prefill_chunk < 0:
            raise ValueError(
                f"pipelined_prefill_chunk must be >= 0 (0: no limit), "
                f"got {self.pipelined_prefill_chunk}"
            )
        # finite: the engine keeps the latency cap on until the hold ends, so an endless one
        # starved every other request once a latency-critical chain had run
        if not 0 <= self.latency_hold_ms < math.inf:
            raise ValueError(
                f"latency_hold_ms must be finite and >= 0 (0: off), got {self.latency_hold_ms}"
            )
        if self.background_prefill_chunk < 0:
            raise ValueError(
                f"background_prefill_chunk must be >= 0 (0: off), got {self.background_prefill_chunk}"
            )
        if self.max_calls_per_engine < 1:
            raise ValueError(f"max_calls_per_engine must be >= 1, got {self.max_calls_per_engine}")
        if self.log_level not in _LOG_LEVELS:
            raise ValueError(f"log_level must be one of {_LOG_LEVELS}, got {self.log_level!r}")
        if self.log_format not in ("kv", "json"):
            raise ValueError(f"log_format must be 'kv' or 'json', got {self.log_format!r}")
        if not self.session_ttl_s > 0:
            raise ValueError(f"session_ttl_s must be positive, got {self.session_ttl_s}")
        if self.api_key is not None and not _PRINTABLE_KEY.fullmatch(self.api_key):
            raise ValueError("api_key must be 1 to 256 printable ASCII characters, no spaces")
        self.allowed_origins = tuple(self.allowed_origins)  # argparse gives a list
        CorsPolicy(self.allowed_origins)  # refuses a malformed origin
        if self.max_request_mb < 1:
            raise ValueError(f"max_request_mb must be >= 1, got {self.max_request_mb}")
        if self.stored_responses < 0 or self.stored_response_chars < 0:
            raise ValueError(
                "stored_responses and stored_response_chars must be >= 0, got "
                f"{self.stored_responses} and {self.stored_response_chars}"
            )
        if not self.shutdown_timeout_s >= 0:  # NaN too
            raise ValueError(f"shutdown_timeout_s must be >= 0, got {self.shutdown_timeout_s}")

    @property
    def model_id(self) -> str:
        """The name clients use in OpenAI requests."""
        return self.served_model_name or self.model

    def threads_per_engine(self, available: int) -> int:
        """Compute threads each engine runs; `available`: torch's default (one per core)."""
        return available if self.engine_threads is None else self.engine_threads

    def restart_policy(self) -> RestartPolicy:
        """When engines whose process died are restarted (`--engine-process` only)."""
        return RestartPolicy(max_restarts=self.engine_restarts, window_s=300.0)

    def engine_kwargs(self) -> dict[str, Any]:
        """EngineConfig fields that were set."""
        values = {name: getattr(self, name) for name in _ENGINE_FIELDS}
        kwargs = {name: value for name, value in values.items() if value is not None}
        if self.enable_app_scheduling and self.latency_max_running_tokens >= 0:
            kwargs["latency_max_batched_tokens"] = self.latency_max_running_tokens
            kwargs["latency_other_decode_rows"] = self.latency_other_decode_rows
        if self.enable_app_scheduling and self.background_prefill_chunk > 0:
            kwargs["background_max_prefill_tokens"] = self.background_prefill_chunk
        kwargs["pausable_steps"] = self.enable_app_scheduling and self.enable_step_pausing
        return kwargs

    def executor_config(self) -> ExecutorConfig:
        """How graph calls are scheduled and share prefixes."""
        return ExecutorConfig(
            enable_prefix_sharing=self.enable_prefix_sharing,
            min_shared_prefix_tokens=self.min_shared_prefix_tokens,
            objective_deduction=self.enable_objective_deduction,
            task_groups=self.enable_task_groups,
            pipelined_prefill=self.enable_pipelined_prefill,
            app_scheduling=self.enable_app_scheduling,
            max_calls_per_engine=self.max_calls_per_engine,
            latency_hold_s=self.latency_hold_ms / 1000 if self.enable_app_scheduling else 0.0,
            pipelined_prefill_chunk=self.pipelined_prefill_chunk,
            prefix_store=PrefixStoreConfig(self.prefix_store_max_entries, self.prefix_store_ttl_s),
        )

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> ServerConfig:
        args = build_parser().parse_args(argv)
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = argparse.ArgumentParser(
        prog="parrot-server", description="Serve an LLM with Semantic Variables."
    )
    p.add_argument("--model", default=d.model, help="registered name, HF folder or GGUF file")
    p.add_argument(
        "--host", default=d.host,
        help=f"address to listen on (default {d.host}: this machine only; 0.0.0.0: every interface)",
    )  # fmt: skip
    p.add_argument("--port", type=int, default=d.port, help=f"default {d.port}")
    p.add_argument("--served-model-name", help="model id in the OpenAI API (default: --model)")
    p.add_argument(
        "--device", default=d.device,
        help="auto (default: the first CUDA GPU when torch sees one, else the CPU), cpu, cuda, "
        "cuda:N",
    )  # fmt: skip
    p.add_argument(
        "--dtype",
        help="float32, float16, bfloat16 or float64 (or float, half, double) (default: float32 "
        "on CPU, bfloat16 on CUDA)",
    )
    engine = p.add_argument_group("engine")
    engine.add_argument(
        "--num-kv-blocks", type=int,
        help="KV pool size per engine (default: by memory); max_model_len never exceeds it",
    )
    engine.add_argument(
        "--kv-cache-gb", type=float,
        help="KV pool size per engine in GiB, when --num-kv-blocks is not given (default: the "
        "engine's, 2); on CPU the pool is in memory from the start",
    )
    engine.add_argument("--block-size", type=int, help="tokens per KV block (default: the engine's, 16)")
    engine.add_argument(
        "--max-num-batched-tokens", type=int,
        help="tokens one engine step computes at most: prefill chunks and decodes (default: the "
        "engine's, 2048)",
    )  # fmt: skip
    engine.add_argument(
        "--max-num-seqs", type=int,
        help="sequences one engine step runs at most (default: the engine's, 128)",
    )  # fmt: skip
    engine.add_argument(
        "--ngram-speculation",
        type=int,
        metavar="K",
        default=d.ngram_speculation,
        help=f"speculative decoding by n-gram lookup (default {d.ngram_speculation}; 0: off): up "
        "to K drafted tokens per decoding sequence, "
        "taken from the sequence's own earlier text and verified in the step (a "
        "constrained output also drafts the text its constraint forces, up to the row limit); "
        "latency-critical calls always draft, other work only while a step holds at most "
        "--ngram-max-rows rows (default 6)",
    )
    engine.add_argument(
        "--ngram-max-rows", type=int, metavar="N",
        help="steps of more rows than this draft for latency-critical calls only (default 6)",
    )  # fmt: skip
    engine.add_argument(
        "--max-model-len", type=int,
        help="context length a request may use, prompt and output (default: the model's; more "
        "is lowered to it with a warning)",
    )  # fmt: skip
    engine.add_argument(
        "--no-prefix-cache",
        dest="enable_prefix_cache",
        action="store_false",
        help="do not reuse KV of identical token prefixes across requests",
    )
    engine.add_argument(
        "--no-cascade",
        dest="enable_cascade",
        action="store_false",
        help="do not attend to shared prefixes once (cascade attention)",
    )
    engine.add_argument(
        "--no-prefault-kv-cache",
        dest="prefault_kv_cache",
        action="store_false",
        help="map the CPU KV pool's pages on first use instead of writing them all at start "
        "(a smaller footprint; steps pay for each page they use first)",
    )
    engine.add_argument(
        "--no-quantized-weights",
        dest="quantized_linear",
        action="store_false",
        help="CPU steps of few rows read float32 weights only, not also a GGUF's 4-bit "
        "(Q4_0/Q4_1/Q4_K) and 8-bit (Q8_0, Q6_K) layers and head (bit for bit the same weights; "
        "SmolLM2's batch-1 steps ran 1.8-2.7x faster with them)",
    )
    engine.add_argument(
        "--engines",
        type=int,
        default=d.engines,
        help="local engines, each with a KV cache of its own: a child process and a model copy "
        "each, or with --no-engine-process a thread each over one model copy",
    )
    engine.add_argument(
        "--engine-process",
        action=argparse.BooleanOptionalAction,
        default=d.engine_process,
        help="run each engine in a child process (the default): the server's own work never "
        "holds the GIL that the step loop needs, and a crash or kill there fails only calls on it "
        "whose output a client saw (see --engine-restarts); --no-engine-process runs the engines as threads of the server (one copy of the "
        "weights for all of them)",
    )
    engine.add_argument(
        "--engine-threads",
        type=int,
        help="compute threads per engine (default: one per core in every engine, so that an "
        "engine working alone uses every core)",
    )
    engine.add_argument(
        "--engine-restarts",
        type=int,
        default=d.engine_restarts,
        help="restart an engine process that dies (killed, crashed) at most this often within "
        "5 minutes, then leave it down (0: never). Its work whose output a client had seen "
        "(streamed) fails; the rest (queued, non-streamed, graph calls nobody streamed) runs "
        "again, once, on an engine that runs; while none does, new plain requests get 503 "
        "and graph calls wait",
    )
    graph = p.add_argument_group("graph execution (each --no-* switches one optimisation off)")
    graph.add_argument(
        "--disable-prefix-sharing",
        "--no-prefix-sharing",
        dest="enable_prefix_sharing",
        action="store_false",
        help="no segment-keyed prefix contexts: calls do not fork shared prompts (this also "
        "turns pipelined prefill off)",
    )
    graph.add_argument("--min-shared-prefix-tokens", type=int, default=d.min_shared_prefix_tokens)
    graph.add_argument(
        "--prefix-store-max-entries",
        type=int,
        default=d.prefix_store_max_entries,
        help="prefix contexts kept across calls and sessions (unused ones evicted LRU)",
    )
    graph.add_argument(
        "--prefix-store-ttl-s",
        type=float,
        default=d.prefix_store_ttl_s,
        help="evict a stored prefix unused for this long",
    )
    graph.add_argument(
        "--no-pipelined-prefill",
        dest="enable_pipelined_prefill",
        action="store_false",
        help="do not fill a waiting call's ready leading segments before its inputs arrive",
    )
    graph.add_argument(
        "--no-objective-deduction",
        dest="enable_objective_deduction",
        action="store_false",
        help="ignore the awaited criteria: every call has the same (normal) priority",
    )
    graph.add_argument(
        "--no-task-groups",
        dest="enable_task_groups",
        action="store_false",
        help="do not group calls that feed one consumer (each is scheduled alone)",
    )
    graph.add_argument(
        "--no-app-scheduling",
        dest="enable_app_scheduling",
        action="store_false",
        help="request-level scheduling: FIFO order, one priority, no latency token cap",
    )
    graph.add_argument(
        "--latency-max-running-tokens",
        type=int,
        default=d.latency_max_running_tokens,
        help="while latency-critical calls run, an engine step computes at most this many "
        "tokens of other work (0: none, strict priority; -1: no cap). On a few CPU cores each "
        "extra sequence in a step slows the latency-critical decode, hence the default 0",
    )
    graph.add_argument(
        "--latency-other-decode-rows",
        type=int,
        default=d.latency_other_decode_rows,
        help="while latency-critical calls run, up to this many decode rows of other work join "
        "each engine step beyond --latency-max-running-tokens (a step of a few rows costs about "
        "what one row costs on CPU, so bulk decodes progress meanwhile)",
    )
    graph.add_argument(
        "--pipelined-prefill-chunk",
        type=int,
        default=d.pipelined_prefill_chunk,
        help="while latency-critical calls decode, a pipelined prefill computes at most this "
        "many tokens per engine step, riding along their steps (0: no limit)",
    )
    graph.add_argument(
        "--latency-hold-ms",
        type=float,
        default=d.latency_hold_ms,
        help="when a latency-critical output that another latency-critical call reads is done, "
        "keep other work to the latency cap this long, until that call arrives (0: off)",
    )
    graph.add_argument(
        "--background-prefill-chunk",
        type=int,
        default=d.background_prefill_chunk,
        help="prefill tokens per engine step of throughput-only calls (deduced), always: a "
        "latency-critical call arriving mid-step waits for one layer of such a step (with step "
        "pausing), or for the whole step (without) (0: off)",
    )
    graph.add_argument(
        "--no-step-pausing",
        dest="enable_step_pausing",
        action="store_false",
        help="a latency-critical call arriving mid-step waits for the step in flight, instead "
        "of that step (of other work) pausing between two layers and going on after it",
    )
    graph.add_argument(
        "--pause-min-tokens",
        type=int,
        metavar="N",
        help="only steps of at least N tokens pause for a latency-critical call (default 64); "
        "a shorter one runs to its end first, and its decodes may then ride along the call's "
        "steps (0: every step may pause)",
    )
    graph.add_argument(
        "--max-calls-per-engine",
        type=int,
        default=d.max_calls_per_engine,
        help="graph calls admitted onto one engine at once; the rest wait in policy order",
    )
    ops = p.add_argument_group("operations")
    ops.add_argument(
        "--session-ttl-s",
        type=float,
        default=d.session_ttl_s,
        help="close sessions idle (no request, no running call) for this long",
    )
    ops.add_argument(
        "--max-request-mb", type=int, default=d.max_request_mb,
        help=f"largest request body in MiB (default {d.max_request_mb}); a larger one is a 413",
    )  # fmt: skip
    ops.add_argument(
        "--stored-responses",
        type=int,
        default=d.stored_responses,
        help="Responses API responses kept to retrieve or follow (previous_response_id); the "
        "least recently used go first (0: none kept)",
    )
    ops.add_argument(
        "--stored-response-chars",
        type=int,
        default=d.stored_response_chars,
        help="characters of conversation the stored responses may hold in all",
    )
    ops.add_argument(
        "--allowed-origins",
        nargs="+",
        type=str,
        default=d.allowed_origins,
        metavar="ORIGIN",
        help="let pages from these origins (scheme://host[:port], or '*' for any) call the API "
        "from a browser: preflights are answered and responses carry "
        "Access-Control-Allow-Origin (default: none)",
    )
    ops.add_argument(
        "--api-key",
        default=os.environ.get("PARROT_API_KEY", d.api_key),
        help="require 'Authorization: Bearer <key>' on the API's routes (a session's own routes "
        "take its token; /health, /healthz, /version, /metrics and /openapi.json stay open); default: "
        "$PARROT_API_KEY, else none",
    )
    ops.add_argument(
        "--log-level", default=d.log_level, choices=_LOG_LEVELS, help=f"default {d.log_level}"
    )
    ops.add_argument("--log-format", default=d.log_format, choices=("kv", "json"))
    ops.add_argument(
        "--shutdown-timeout-s",
        type=float,
        default=d.shutdown_timeout_s,
        help="on SIGINT/SIGTERM the server stops accepting connections and closes its sessions "
        "(the native API's long polls and streams end at once), and gives the OpenAI-compatible "
        "requests in flight up to this long to finish; those still running then are cancelled "
        "and answered with a 503, code server_shutting_down (a stream: an error event, then "
        "its end), and it exits once the engines have stopped (0: answer them at once)",
    )
    return p
