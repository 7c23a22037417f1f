"""The pgroup fallback's marker sweep: one walk of the daemon's descendants serves many kills."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

from agent_runtime.run_spec import TASK_ENV
from supervisor.process.containment import PgroupContainment
from supervisor.process.identity import carries_marker
from supervisor.process.tree import MarkerSweep, run_marker


def _marked_sleepers(count: int) -> list[subprocess.Popen[bytes]]:
    # Each in a session of its own, as an escapee: only its marker names its run.
    procs = [
        subprocess.Popen(
            ["sleep", "600"], env={**os.environ, TASK_ENV: f"t{i}"}, start_new_session=True
        )
        for i in range(count)
    ]
    # Until its exec, a child shows its parent's environment (no marker).
    deadline = time.monotonic() + 30
    for i, proc in enumerate(procs):
        while not carries_marker(proc.pid, run_marker(f"t{i}")):
            assert time.monotonic() < deadline, f"sleep {i} never exec'd"
            time.sleep(0.001)
    return procs


def test_a_mass_kill_walks_the_descendants_once_not_once_per_run() -> None:
    """Before, every kill and every check walked every descendant of the daemon (reading
    each one's environment): O(runs) per kill, 22 s for a mass abort of 300 runs."""
    containment = PgroupContainment(fork_events=False)
    containment.sweep = MarkerSweep(reuse_s=3600)  # every kill below within one walk's reach
    procs = _marked_sleepers(30)
    try:
        containers = [containment.prepare(f"t{i}") for i in range(len(procs))]
        assert all(containment.populated(c) for c in containers)
        for container in containers:
            containment.kill(container, None, 0, signal.SIGKILL)
        for proc in procs:
            assert proc.wait(30) == -signal.SIGKILL
        assert containment.sweep.walks == 1
        # Gone processes do not count, whatever the walk found.
        assert not any(containment.populated(c) for c in containers)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(30)


def test_a_walk_older_than_its_reuse_window_is_walked_again() -> None:
    sweep = MarkerSweep(reuse_s=0)
    assert sweep.marked("t0") == []
    procs = _marked_sleepers(1)
    try:
        # A process forked after the last walk is found by the next one.
        assert sweep.marked("t0") == [procs[0].pid]
        assert sweep.walks == 2
    finally:
        procs[0].kill()
        procs[0].wait(30)
