"""benchmarks.common.harness.process_cpu_s counts the server's engine processes too."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.common.harness import process_cpu_s


def test_cpu_of_a_live_child_is_counted_with_its_parent() -> None:
    before = process_cpu_s(os.getpid())
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nt = time.process_time()\n"
         "while time.process_time() - t < 0.6: pass\ntime.sleep(30)"]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while process_cpu_s(os.getpid()) - before < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        # this process only waited: the half second and more is the child's
        assert process_cpu_s(os.getpid()) - before >= 0.5
    finally:
        child.kill()
        child.wait()


def test_cpu_of_a_grandchild_is_counted_too() -> None:
    """The server's engines are children of its fork server: a process whose child only waits
    on a grandchild that burns CPU is charged the grandchild's time."""
    burn = ("import time\nt = time.process_time()\n"
            "while time.process_time() - t < 0.6: pass\ntime.sleep(30)")
    run = "import subprocess, sys\nsubprocess.run([sys.executable, '-c', {!r}])"
    top = subprocess.Popen([sys.executable, "-c", run.format(run.format(burn))])
    try:
        start = process_cpu_s(top.pid)  # at most the interpreters' start-up so far
        deadline = time.monotonic() + 20
        while process_cpu_s(top.pid) - start < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_cpu_s(top.pid) - start >= 0.5
    finally:
        for pid in _descendants(top.pid):
            os.kill(pid, 9)
        top.kill()
        top.wait()


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    children = [int(p) for p in out.split()]
    return [d for c in children for d in (*_descendants(c), c)]


def test_a_process_that_is_gone_has_no_cpu_time() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_cpu_s(child.pid) != process_cpu_s(child.pid)  # nan
