"""The reaper: the daemon is a child subreaper, and this is the one place that calls wait4.

Every run leader is the daemon's child, and every orphaned grandchild is
reparented to it, so every death in every run's tree arrives here as SIGCHLD.
A run's exit status goes to the callback registered for its PID with
:meth:`Reaper.watch`. A spawned run may exit (and be reaped) before its
spawner has even told the daemon its PID: a spawn therefore runs inside
:meth:`Reaper.expecting`, which keeps the statuses of unknown PIDs reaped
meanwhile, for that spawn alone.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus

__all__ = ["ExitStatus", "Expectation", "Reaper"]


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a reaped process ended: its ``wait4`` status and resource usage."""

    status: int
    rusage: Any


OnExit = Callable[[ExitStatus], None]


class Expectation:
    """The exits of unknown PIDs reaped while one spawn is in flight."""

    def __init__(self) -> None:
        self._seen: dict[int, ExitStatus] = {}

    def take(self, pid: int) -> ExitStatus | None:
        """The exit of the spawned ``pid`` if it was reaped during this spawn, else None.

        Only an exit reaped during this spawn can be this run's: an older one under
        the same PID belonged to another process, before the PID was reused. None
        means nobody reaped it yet: the PID still names the run until it is watched.
        """
        return self._seen.pop(pid, None)


class Reaper:
    """Reaps every child of the daemon and hands each watched PID's exit to its callback."""

    def __init__(self) -> None:
        self._watched: dict[int, OnExit] = {}
        self._expectations: list[Expectation] = []
        self._any_exit = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reaps on every SIGCHLD until cancelled."""
        with anyio.open_signal_receiver(signal.SIGCHLD) as signals:
            task_status.started()
            self.reap()
            async for _ in signals:
                self.reap()

    def watch(self, pid: int, on_exit: OnExit) -> None:
        """Calls ``on_exit`` once ``pid`` (a child not reaped yet) is reaped."""
        self._watched[pid] = on_exit
        self.reap()  # it may have exited already, its SIGCHLD still on the way

    def unwatch(self, pid: int) -> None:
        """Forgets ``pid`` (its run is over)."""
        self._watched.pop(pid, None)

    @contextmanager
    def expecting(self) -> Iterator[Expectation]:
        """A spawn in flight: unknown PIDs reaped meanwhile are kept for :meth:`Expectation.take`."""
        expectation = Expectation()
        self._expectations.append(expectation)
        try:
            yield expectation
        finally:
            self._expectations.remove(expectation)

    async def wait_for_any_exit(self, timeout_s: float) -> None:
        """Returns after the next reap, or after ``timeout_s`` (a guard against a missed wake-up)."""
        with anyio.move_on_after(timeout_s):
            await self._any_exit.wait()

    def reap(self) -> None:
        """Reaps every child that has exited (non-blocking)."""
        while True:
            try:
                pid, status, rusage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            # Any reaped process may have been the last of a killed tree: wake the waiters.
            self._any_exit.set()
            self._any_exit = anyio.Event()
            exit_status = ExitStatus(status, rusage)
            on_exit = self._watched.pop(pid, None)
            if on_exit is not None:
                on_exit(exit_status)
            else:
                for expectation in self._expectations:
                    expectation._seen[pid] = exit_status
