"""Walking a process tree through the kernel's ``children`` lists, and finding a run's marked processes."""

from __future__ import annotations

import os
from pathlib import Path

from agent_runtime.run_spec import TASK_ENV

from .identity import carries_marker

__all__ = ["descendants", "marked_descendants", "run_marker"]


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


def marked_descendants(task_id: str) -> list[int]:
    """This daemon's descendants that carry the run's marker (its subreaper inherits escapees)."""
    marker = run_marker(task_id)
    return [pid for pid in descendants(os.getpid()) if carries_marker(pid, marker)]
