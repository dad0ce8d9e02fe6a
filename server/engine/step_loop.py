"""The engine's step loop: apply the commands posted so far, run a step, deliver its outputs.

Shared by the in-process engine thread (`AsyncLLMEngine`) and the engine's child process
(`server.engine_worker`): a command is a callable applied between steps; `None` stops the loop.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Sequence
from typing import Any

from server.engine.llm_engine import LLMEngine
from server.engine.outputs import JobOutput

log = logging.getLogger(__name__)

Command = Callable[[], Any] | None


def run_step_loop(
    engine: LLMEngine,
    commands: queue.SimpleQueue[Command],
    deliver: Callable[[list[JobOutput]], None],
) -> None:
    """Run until a `None` command: every job still queued then ends with an error, so nobody
    waits forever on one."""
    while True:
        block = not engine.has_work
        # a step that ran nothing under a latency hold: wait for new work or the hold's end
        wait = engine.idle_wait()
        try:
            command: Command | bool = commands.get(block=block or wait > 0, timeout=wait or None)
        except queue.Empty:
            command = False
        # a pause asked for by work posted from now on stays asked for
        engine.clear_pause_request()
        while command is not False:
            if command is None:
                deliver(engine.fail_all("the engine stopped"))
                return
            apply_all([command])  # type: ignore[list-item]
            try:
                command = commands.get_nowait()
            except queue.Empty:
                command = False
        if engine.has_work:
            try:
                outputs = engine.step()
            except Exception as exc:
                # A failed step leaves its batch in an unknown state: fail the jobs rather than
                # retry forever; contexts stay usable for new jobs.
                log.exception("engine step failed")
                outputs = engine.fail_all(f"engine step failed: {exc!r}")
            deliver(outputs)


def apply_all(commands: Sequence[Callable[[], Any]]) -> None:
    """Apply commands in order; one that fails is logged and the rest still run."""
    for command in commands:
        try:
            command()
        except Exception:
            log.exception("engine command failed")
