"""Walking a process tree through the kernel's ``children`` lists, and finding a run's marked processes."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

from agent_runtime.run_spec import TASK_ENV

from .identity import carries_marker

__all__ = ["MarkerSweep", "descendants", "run_marker"]

_MARKER_PREFIX = f"{TASK_ENV}=".encode()


def descendants(root: int) -> list[int]:
    """PIDs below ``root``, from the kernel's per-thread ``children`` lists.

    Walks only the tree itself; psutil's ``children(recursive=True)`` reads the
    stat file of every process on the host, which made each sweep cost
    milliseconds on the kill path.
    """
    found: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                children = Path(f"/proc/{pid}/task/{tid}/children").read_bytes().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                stack.append(child)
    return found


def run_marker(task_id: str) -> bytes:
    """The environment entry every process of the run carries."""
    return f"{TASK_ENV}={task_id}".encode()


class MarkerSweep:
    """This daemon's marked descendants, by run, from one walk that every kill and check
    made within ``reuse_s`` of its end shares.

    A walk reads the environment of every descendant, so of every process of every
    run: walked per kill and per check, a mass abort of N runs read N x N environments
    (300 runs: 22 s until every process was gone). A process a run forks after the walk
    a kill or check uses is not seen by it; that race is a walk's anyway (a fork right
    after it), and the kill path keeps checking, on newer walks, while anything of the
    run is left. Loop-owned, like the containment.
    """

    def __init__(self, reuse_s: float = 0.05) -> None:
        self._reuse_s = reuse_s
        self._walked_at = -float("inf")
        self._by_task: dict[str, list[int]] = {}
        self.walks = 0
        """How many walks were made (each reads every descendant's environment)."""

    def marked(self, task_id: str) -> list[int]:
        """The daemon's descendants that carry ``task_id``'s marker now."""
        if time.monotonic() - self._walked_at > self._reuse_s:
            self._walk()
        marker = run_marker(task_id)
        # Found by a walk, and still carrying it: a PID gone or reused since does not count.
        return [pid for pid in self._by_task.get(task_id, ()) if carries_marker(pid, marker)]

    def _walk(self) -> None:
        by_task: defaultdict[str, list[int]] = defaultdict(list)
        for pid in descendants(os.getpid()):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            for entry in environ.split(b"\0"):
                if entry.startswith(_MARKER_PREFIX):
                    by_task[entry[len(_MARKER_PREFIX) :].decode(errors="replace")].append(pid)
                    break
        self._by_task = dict(by_task)
        # From its end: a walk of hundreds of runs' processes takes longer than the window,
        # and dated from its start, every kill of a mass abort walked again.
        self._walked_at = time.monotonic()
        self.walks += 1
