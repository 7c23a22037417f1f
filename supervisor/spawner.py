"""Starting a run's child process, behind one small interface.

:class:`ExecSpawner` forks and execs ``python -m agent_runtime.child``. A
preloaded fork server (ADK imported once, then a fork per run) can replace it
by implementing :class:`Spawner`; nothing else changes.

Forks with ``os.fork`` rather than ``subprocess``: the child must join its
cgroup, start its own session and set its parent-death signal between fork and
exec, and ``subprocess`` would reap children behind the daemon's reaper
(``Popen`` objects waitpid() themselves), stealing exit statuses.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent_runtime.child import RUN_ENV, RunSpec

from .process_tree import TASK_ENV, RunContainer, process_start_ticks, set_parent_death_signal

__all__ = ["ExecSpawner", "SpawnedProcess", "Spawner"]


@dataclass(frozen=True, slots=True)
class SpawnedProcess:
    """A started run leader: its PID, a pidfd for race-free signals, and its identity."""

    pid: int
    pidfd: int
    start_ticks: int


class Spawner(Protocol):
    """Starts the child of a run. Called on the daemon's main thread."""

    def spawn(self, spec: RunSpec, container: RunContainer, log_path: Path) -> SpawnedProcess:
        """Starts the run; the child is its own session leader inside ``container``."""


class ExecSpawner:
    """fork + exec of ``python -m agent_runtime.child`` (about 1 s of ADK import per run)."""

    def __init__(
        self, python: str = sys.executable, extra_env: dict[str, str] | None = None
    ) -> None:
        self.python = python
        self.extra_env = extra_env or {}

    def spawn(self, spec: RunSpec, container: RunContainer, log_path: Path) -> SpawnedProcess:
        env = {**os.environ, **self.extra_env, RUN_ENV: spec.to_json(), TASK_ENV: spec.task_id}
        argv = [self.python, "-m", "agent_runtime.child"]
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        parent = os.getpid()
        try:
            pid = os.fork()
            if pid == 0:  # child: only async-signal-safe-ish syscalls until exec
                try:
                    os.setsid()
                    container.preexec()
                    set_parent_death_signal(signal.SIGKILL)
                    if os.getppid() != parent:  # the daemon died before the prctl
                        os._exit(127)
                    os.dup2(log_fd, 1)
                    os.dup2(log_fd, 2)
                    devnull = os.open(os.devnull, os.O_RDONLY)
                    os.dup2(devnull, 0)
                    os.closerange(3, 65536)
                    os.execve(self.python, argv, env)
                finally:
                    os._exit(127)
        finally:
            os.close(log_fd)
        pidfd = os.pidfd_open(pid)
        return SpawnedProcess(pid, pidfd, process_start_ticks(pid) or 0)
