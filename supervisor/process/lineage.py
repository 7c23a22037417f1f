"""Lineage: which run every process belongs to, followed from the kernel's fork events.

Without cgroups, a run's processes can leave everything that names them: the
process group and session (``setsid``), the environment marker (``env -i``),
the parent (a middle process that exits, so the daemon inherits the orphan).
What they cannot leave is their ancestry at birth: every fork on the host is
an event, and a child of a run's process is the run's. So each run's members
are known as a set of (PID, start ticks), kept by fork and exit events, and a
kill or a "tree gone?" check costs what that run's own tree costs.

A fork whose parent is not (yet) a member is kept for a moment: the run's
leader forks before the daemon has registered its PID (a fork-server run starts
on "go" before the daemon reads the reply), and those children are claimed when
the leader is registered.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict, deque

from ._proc_events import Exit, Fork
from .identity import process_start_ticks, process_state

__all__ = ["Lineage"]

log = logging.getLogger(__name__)

# Forks of unknown parents are kept this long (and at most this many) for a leader
# registered just after them; far longer than the daemon takes to read a spawn reply.
_UNCLAIMED_S = 5.0
_UNCLAIMED_MAX = 16384
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _boottime_offset_ns() -> int:
    """Boot time minus monotonic time: events are stamped on the one, start ticks on the other."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns()


class Lineage:
    """The members of every run, from fork and exit events; one per daemon, loop-owned."""

    def __init__(self) -> None:
        self._run_of: dict[int, str] = {}
        # PID -> start ticks; None for a member that ended before its fork was seen
        # (kept until its exit event, so the children it forked are still claimed).
        self._members: dict[str, dict[int, int | None]] = {}
        # parent -> (child, birth ns) forked while the parent was nobody's, oldest first.
        self._unclaimed: OrderedDict[int, list[tuple[int, int]]] = OrderedDict()
        self._unclaimed_at: deque[tuple[float, int]] = deque()
        self._incomplete: set[str] = set()

    def adopt(self, task_id: str, leader: int) -> None:
        """Registers ``leader`` (just spawned) as the root of ``task_id``'s tree."""
        self._members.setdefault(task_id, {})
        # The leader is unreaped, so its PID is still its own: no birth time to check.
        self._run_of[leader] = task_id
        self._members[task_id][leader] = process_start_ticks(leader)
        stack = list(self._unclaimed.pop(leader, ()))
        while stack:
            pid, born_ns = stack.pop()
            self._add(task_id, pid, born_ns)
            stack.extend(self._unclaimed.pop(pid, ()))

    def apply(self, event: Fork | Exit) -> None:
        """Takes one kernel event into account."""
        if isinstance(event, Fork):
            task_id = self._run_of.get(event.parent)
            if task_id is not None:
                self._add(task_id, event.child, event.at_ns)
            else:
                self._park(event.parent, event.child, event.at_ns)
        else:
            task_id = self._run_of.pop(event.pid, None)
            if task_id is not None:
                self._members.get(task_id, {}).pop(event.pid, None)

    def events_lost(self) -> None:
        """Forks were missed: every run tracked now may have members it does not know."""
        self._incomplete.update(self._members)

    def complete(self, task_id: str) -> bool:
        """Whether every fork of the run since its start was seen."""
        return task_id not in self._incomplete

    def members(self, task_id: str) -> dict[int, int]:
        """The run's processes: PID -> start ticks (some may have exited meanwhile)."""
        return {
            pid: ticks for pid, ticks in self._members.get(task_id, {}).items() if ticks is not None
        }

    def alive(self, task_id: str) -> bool:
        """Whether any member still runs (a zombie has ended)."""
        for pid, ticks in self.members(task_id).items():
            if process_start_ticks(pid) == ticks and process_state(pid) not in ("Z", "X", None):
                return True
        return False

    def forget(self, task_id: str) -> None:
        """Drops a run whose tree is gone."""
        for pid in self._members.pop(task_id, {}):
            if self._run_of.get(pid) == task_id:
                del self._run_of[pid]
        self._incomplete.discard(task_id)

    def _add(self, task_id: str, pid: int, born_ns: int) -> None:
        # Read now, the PID may name a later process already (the child exited and the
        # PID was reused): only a start within a tick of the fork event is the child.
        ticks = process_start_ticks(pid)
        if ticks is not None:
            born_ticks = (born_ns + _boottime_offset_ns()) // _TICK_NS
            if abs(ticks - born_ticks) > 1:
                ticks = None
        self._run_of[pid] = task_id
        self._members[task_id][pid] = ticks

    def _park(self, parent: int, child: int, born_ns: int) -> None:
        now = time.monotonic()
        self._unclaimed.setdefault(parent, []).append((child, born_ns))
        self._unclaimed_at.append((now, parent))
        while self._unclaimed_at and (
            now - self._unclaimed_at[0][0] > _UNCLAIMED_S
            or len(self._unclaimed_at) > _UNCLAIMED_MAX
        ):
            _, old = self._unclaimed_at.popleft()
            children = self._unclaimed.get(old)
            if children:
                children.pop(0)
                if not children:
                    del self._unclaimed[old]
