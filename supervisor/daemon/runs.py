"""The run table and the whole kill path: the one place that decides to kill a run.

A run is killed for one of six reasons, each a method here: an abort
(:meth:`RunTable.abort`, from the feed or a durable mark), a deadline (in
:meth:`RunTable.watch`), the daemon's shutdown (:meth:`RunTable.kill_all`), a
record a peer ended while this node was cut off (:meth:`RunTable.kill_ended_elsewhere`),
an abort that arrived while the run was still being started (parked, then
applied by :meth:`RunTable.add`), and a start that failed after the fork
(:meth:`RunTable.fail`). Every kill is synchronous: it never waits on
Redis, and the first kill's reason is the one recorded.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import anyio

from agent_runtime.run_spec import RunSpec
from agent_runtime.task_store import TaskState

from ..process.containment import Containment, RunContainer
from .reaper import ExitStatus, Reaper

__all__ = ["ActiveRun", "KillOrder", "RunTable"]

log = logging.getLogger("adk_supervisor")

# How long the tree may stay populated after a SIGKILL before the daemon gives up on it
# (a process stuck in uninterruptible sleep); the run is recorded anyway.
_TREE_GONE_LIMIT_S = 20.0
# A missed SIGCHLD wake-up costs at most this much in the sweep loop.
_SWEEP_TICK_S = 0.05
# A killed leader not reaped within this long is sent SIGKILL again (a guard: the reap
# normally wakes its run at once).
_LEADER_TICK_S = 1.0


@dataclass(slots=True)
class KillOrder:
    """Why the supervisor killed a run, and the signals it actually sent, in order."""

    state: TaskState
    reason: str
    sent_at: float
    signals: list[signal.Signals] = field(default_factory=list)

    def sent(self, sig: signal.Signals) -> None:
        """Notes a signal sent to the run's tree (each kind once)."""
        if sig not in self.signals:
            self.signals.append(sig)


@dataclass(eq=False)
class ActiveRun:
    """A run whose process tree this daemon owns."""

    spec: RunSpec
    container: RunContainer
    pid: int
    pidfd: int | None  # None once reaped: never signal through a reaped PID
    start_ticks: int
    started: float
    deadline: float | None
    exit: ExitStatus | None = None
    kill: KillOrder | None = None
    exited: anyio.Event = field(default_factory=anyio.Event)
    exited_or_killed: anyio.Event = field(default_factory=anyio.Event)
    finished: anyio.Event = field(default_factory=anyio.Event)

    @property
    def task_id(self) -> str:
        """The run's task id."""
        return self.spec.task_id

    def on_exit(self, exit_status: ExitStatus) -> None:
        """The reaper's callback: the leader was reaped."""
        self.exit = exit_status
        if self.pidfd is not None:
            # The pidfd now names a reaped process: never signal through it again.
            os.close(self.pidfd)
            self.pidfd = None
        self.exited.set()
        self.exited_or_killed.set()


class RunTable:
    """The runs of this node, those being started, and every decision to kill one."""

    def __init__(self, containment: Containment, reaper: Reaper, kill_grace_s: float) -> None:
        self._containment = containment
        self._reaper = reaper
        self._grace_s = kill_grace_s
        self._runs: dict[str, ActiveRun] = {}
        # Runs between intake and registration, with an abort that arrived meanwhile
        # (pub/sub alone would drop it: there is no process to kill yet).
        self._starting: dict[str, str | None] = {}

    # ------------------------------------------------------------ membership

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[ActiveRun]:
        return iter(list(self._runs.values()))

    def ids(self) -> list[str]:
        """Task ids of the registered runs."""
        return list(self._runs)

    def begin_start(self, task_id: str) -> bool:
        """Marks ``task_id`` as being started here; False if this node already has it."""
        if task_id in self._starting or task_id in self._runs:
            return False
        self._starting[task_id] = None
        return True

    def end_start(self, task_id: str) -> None:
        """The start is over (registered or given up)."""
        self._starting.pop(task_id, None)

    def parked_abort(self, task_id: str) -> str | None:
        """The reason of an abort that arrived while ``task_id`` was being started."""
        return self._starting.get(task_id)

    def add(self, run: ActiveRun) -> None:
        """Registers a spawned run; an abort parked during its start kills it now."""
        self._runs[run.task_id] = run
        parked = self._starting.pop(run.task_id, None)
        if parked is not None:
            self._kill(run, TaskState.ABORTED, parked)

    def remove(self, run: ActiveRun) -> None:
        """Forgets a run whose tree is gone and whose end is recorded."""
        self._runs.pop(run.task_id, None)
        self._reaper.unwatch(run.pid)
        run.finished.set()

    # ------------------------------------------------------- kill decisions

    def abort(self, task_id: str, reason: str) -> Literal["killed", "parked", "unknown"]:
        """Aborts a run of this node, or parks the abort of one being started."""
        run = self._runs.get(task_id)
        if run is not None:
            self._kill(run, TaskState.ABORTED, reason)
            return "killed"
        if task_id in self._starting:
            self._starting[task_id] = reason
            return "parked"
        return "unknown"

    def apply_marks(self, marks: Mapping[str, str]) -> None:
        """Aborts the registered runs among ``marks`` (task id -> reason)."""
        for task_id, reason in marks.items():
            run = self._runs.get(task_id)
            if run is not None:
                self._kill(run, TaskState.ABORTED, reason)

    def fail(self, task_id: str, reason: str) -> None:
        """Kills a run this daemon cannot supervise (its start failed after the fork)."""
        run = self._runs.get(task_id)
        if run is not None:
            self._kill(run, TaskState.FAILED, reason)

    def kill_all(self, reason: str) -> None:
        """Kills every registered run (the daemon is stopping)."""
        for run in self:
            self._kill(run, TaskState.ABORTED, reason)

    def kill_ended_elsewhere(self, task_id: str, state: str) -> None:
        """Kills a run whose record a peer ended while this node was cut off from Redis.

        Once a record is terminal nobody tracks the processes, so they must not live on.
        """
        run = self._runs.get(task_id)
        if run is not None and run.kill is None:
            log.warning(
                "task %s was ended (%s) by a peer while this node was cut off "
                "from Redis or frozen: killing its processes",
                task_id,
                state,
            )
            self._kill(run, TaskState.FAILED, f"ended by a peer as {state} during an outage")

    def discard(self, container: RunContainer) -> None:
        """Kills whatever a failed spawn left in ``container`` and removes it.

        A half-started run (the fork server died or stalled mid-request) may be
        inside: it must not live on unrecorded.
        """
        self._containment.kill(container, None, 0, signal.SIGKILL)
        self._containment.release(container)

    def _kill(self, run: ActiveRun, state: TaskState, reason: str) -> None:
        """Kills the run's whole tree now (SIGTERM first only with a configured grace)."""
        if run.kill is not None:
            return
        if run.exited.is_set():
            # The run already ended on its own: its outcome stands. Leftovers it left
            # behind are swept anyway (see _ensure_tree_gone).
            self._containment.kill(run.container, None, run.pid, signal.SIGKILL)
            return
        sig = signal.SIGTERM if self._grace_s > 0 else signal.SIGKILL
        run.kill = KillOrder(state, reason, time.monotonic(), [sig])
        run.exited_or_killed.set()
        self._containment.kill(run.container, run.pidfd, run.pid, sig)

    # --------------------------------------------------------------- watch

    async def watch(self, run: ActiveRun) -> float:
        """Waits for the run's end (exit, kill or deadline) and its whole tree to be gone.

        Returns the monotonic time the tree was gone; the caller releases the container
        (after reading what the run's limits did to it).
        """
        with anyio.move_on_at(math.inf if run.deadline is None else run.deadline):
            await run.exited_or_killed.wait()
        if run.kill is None and not run.exited.is_set() and run.deadline is not None:
            limit = run.deadline - run.started
            self._kill(run, TaskState.TIMED_OUT, f"timed out after {limit:g}s")
        await self._ensure_tree_gone(run)
        await run.exited.wait()
        return time.monotonic()

    async def _ensure_tree_gone(self, run: ActiveRun) -> None:
        if run.kill is not None and self._grace_s > 0:
            with anyio.move_on_after(self._grace_s):
                await run.exited.wait()
        deadline = time.monotonic() + _TREE_GONE_LIMIT_S
        if run.exited.is_set() and not self._containment.populated(run.container):
            return  # the usual end: the leader was the whole tree, or took it along
        # Leftovers (a grace that ran out, or processes the run left behind) get SIGKILL.
        self._sigkill(run)
        # First the leader's own reap, which wakes this run alone: with 1,000 runs killed
        # at once, waking every killed run at every exit of any of them (each re-killing
        # and re-reading its tree) made a mass abort cost O(runs) per exit.
        with anyio.move_on_at(deadline):
            while not run.exited.is_set():
                with anyio.move_on_after(_LEADER_TICK_S):
                    await run.exited.wait()
                if not run.exited.is_set():
                    self._sigkill(run)
        while time.monotonic() < deadline:
            if run.exited.is_set() and not self._containment.populated(run.container):
                return
            if run.kill is not None:  # late forks of a killed run get it too
                self._sigkill(run)
            # Every process of the tree ends as a child of this subreaper, so each death
            # wakes the reaper: wait on that, not on a polling tick. Only runs whose tree
            # outlived its leader wait here.
            await self._reaper.wait_for_any_exit(_SWEEP_TICK_S)
        log.error("run %s: process tree still populated after kill", run.task_id)

    def _sigkill(self, run: ActiveRun) -> None:
        self._containment.kill(run.container, run.pidfd, run.pid, signal.SIGKILL)
        if run.kill is not None and not run.exited.is_set():
            run.kill.sent(signal.SIGKILL)  # the grace ran out: the leader gets it too
