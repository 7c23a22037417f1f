"""The two ways to contain and kill a run's whole process tree.

- ``cgroup``: each run gets a cgroup v2 leaf, joined before the run executes any
  code of its own; the kill is ``cgroup.kill`` and the tree is gone when
  ``cgroup.events`` says ``populated 0``. Nothing escapes it, not even a
  double-forked ``setsid()``.
- ``pgroup``: each run is its own session and process group; the kill signals
  the group through a pidfd of the unreaped leader, then every process the run
  forked, known from the kernel's fork events (:mod:`.lineage`), whatever group,
  session or environment it moved to. Without those events (refused, or turned
  off with ``pgroup_fork_events``), it
  sweeps the daemon's descendants (it is a child subreaper, so escaped
  grandchildren are reparented to it) that carry the run's
  ``ADK_SUPERVISOR_TASK_ID`` marker.

Written against the cgroup files directly: no library manages cgroup v2 leaves.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import anyio
from anyio.abc import TaskStatus

from agent_runtime.process_control import enter_limits, join_cgroup

from ..errors import ContainmentError
from ._proc_events import EventsLost, ProcEvents, open_events
from .identity import PIDFD_SIGNAL_PROCESS_GROUP, carrying, inside, signal_proven, started_at
from .limits import AppliedLimits
from .lineage import Lineage
from .tree import MarkerSweep, run_marker

__all__ = [
    "CgroupContainment",
    "Containment",
    "PgroupContainment",
    "RunContainer",
    "choose_containment",
    "find_writable_cgroup2",
]

log = logging.getLogger(__name__)


def find_writable_cgroup2() -> Path | None:
    """The cgroup v2 directory of this process, if it is mounted and writable."""
    mount: Path | None = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                mount = Path(left.split()[4])
                break
    if mount is None:
        return None
    own = "/"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:]
    path = mount / own.lstrip("/")
    if not (path / "cgroup.procs").exists() or not os.access(path, os.W_OK):
        return None
    return path


# The leaf of its own cgroup the daemon moves into (see _leave_own_cgroup).
_DAEMON_LEAF = "supervisor"


def _leave_own_cgroup(own: Path) -> Path | None:
    """Moves this process (and its children) out of ``own`` into ``own/supervisor``.

    cgroup v2 hands controllers (memory, pids, cpu) down to child cgroups only
    from a cgroup with no processes of its own; a daemon that stays in its
    systemd service's delegated cgroup can give its runs' leaves no memory or
    pids limit (they fell back to rlimits). systemd's delegation rules ask a
    delegated service to do exactly this. Nothing moves when ``own`` holds a
    process that is not ours (a shared cgroup: a test's, a login shell's), or is
    the root cgroup, which may hand controllers down with processes in it.
    Returns the leaf, or None when nothing moved.
    """
    if own == own.parent or not (own / "cgroup.type").exists():
        return None  # the hierarchy's root: no rule to satisfy
    try:
        pids = [int(p) for p in (own / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return None
    me = os.getpid()
    ours = {me, *_descendants(me)}
    if not pids or any(pid not in ours for pid in pids):
        return None
    leaf = own / _DAEMON_LEAF
    try:
        leaf.mkdir(exist_ok=True)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                (leaf / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        log.info("cannot move the daemon out of %s (%s): runs get no cgroup limits", own, exc)
        return None
    log.info("moved the daemon into %s, so its cgroup can hand controllers to runs", leaf)
    return leaf


def _descendants(pid: int) -> set[int]:
    # /proc/<pid>/task/*/children lists each thread's children: walk it down.
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError, ValueError):
                for child in (task / "children").read_text().split():
                    if int(child) not in found:
                        found.add(int(child))
                        todo.append(int(child))
    return found


@dataclass(slots=True)
class RunContainer:
    """The containment of one run, created before it is spawned, with its resource limits."""

    task_id: str
    cgroup: Path | None = None
    limits: AppliedLimits = field(default_factory=AppliedLimits)

    def preexec(self) -> None:
        """In the forked child, before exec: join the run's cgroups, set its rlimits."""
        if self.cgroup is not None:
            join_cgroup(self.cgroup)
        enter_limits(self.limits.cgroups, self.limits.rlimits)

    def adopt(self, pid: int) -> None:
        """From the daemon: move ``pid`` into the run's cgroup leaf (no-op if it is there)."""
        if self.cgroup is not None:
            with contextlib.suppress(ProcessLookupError):
                (self.cgroup / "cgroup.procs").write_text(str(pid))


class Containment(Protocol):
    """How runs are contained and killed; chosen once at daemon start."""

    name: str

    def prepare(self, task_id: str) -> RunContainer:
        """Creates the container of a run before it is spawned."""

    async def follow(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follows the runs' processes until cancelled (a task of the daemon's group)."""

    def started(self, container: RunContainer, pid: int) -> None:
        """The run in ``container`` was spawned as ``pid`` (not reaped yet)."""

    def kill(self, container: RunContainer, leader_pidfd: int | None, pgid: int, sig: int) -> None:
        """Sends ``sig`` to every process of the run's tree, at once. Never raises."""

    def populated(self, container: RunContainer) -> bool:
        """Whether any process of the run's tree is still alive."""

    def release(self, container: RunContainer) -> None:
        """Removes what :meth:`prepare` created, once the tree is gone."""

    def leftovers(self) -> list[RunContainer]:
        """Containers of runs a previous daemon on this node left behind."""

    def close(self) -> None:
        """Removes what the containment itself created, at a clean stop (its runs are gone)."""


class CgroupContainment:
    """One cgroup v2 leaf per run; ``cgroup.kill`` takes the whole tree."""

    name = "cgroup"

    def __init__(self, parent: Path, node_id: str) -> None:
        self.root = parent / f"adk-supervisor-{node_id}"
        self.root.mkdir(exist_ok=True)

    async def follow(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()  # the kernel keeps each run's tree in its leaf

    def started(self, container: RunContainer, pid: int) -> None:
        return None

    def prepare(self, task_id: str) -> RunContainer:
        leaf = self.root / f"run-{task_id}"
        leaf.mkdir(exist_ok=True)
        return RunContainer(task_id, leaf)

    def kill(self, container: RunContainer, leader_pidfd: int | None, pgid: int, sig: int) -> None:
        assert container.cgroup is not None
        if sig == signal.SIGKILL:
            with contextlib.suppress(OSError):
                (container.cgroup / "cgroup.kill").write_text("1")
            return
        procs: list[str] = []
        with contextlib.suppress(OSError):
            procs = (container.cgroup / "cgroup.procs").read_text().split()
        # A PID read here may be reaped and reused before the signal: prove membership first.
        in_leaf = inside(container.cgroup)
        for pid in map(int, procs):
            signal_proven(pid, in_leaf, sig)

    def populated(self, container: RunContainer) -> bool:
        assert container.cgroup is not None
        try:
            events = (container.cgroup / "cgroup.events").read_text()
        except FileNotFoundError:
            return False
        except OSError:  # EMFILE and the like: unknown counts as alive, the sweep goes on
            return True
        return "populated 1" in events

    def release(self, container: RunContainer) -> None:
        if container.cgroup is not None:
            try:
                container.cgroup.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:  # still populated (a process stuck in D state)
                log.error(
                    "cgroup %s not removed (%s); reconcile retries at the next start",
                    container.cgroup,
                    exc,
                )

    def leftovers(self) -> list[RunContainer]:
        return [
            RunContainer(p.name.removeprefix("run-"), p)
            for p in self.root.iterdir()
            if p.is_dir() and p.name.startswith("run-")
        ]

    def close(self) -> None:
        # Only when empty: a leaf still populated (a process stuck in D state) keeps it,
        # and the next start's reconcile sweeps it.
        try:
            self.root.rmdir()
        except OSError as exc:
            log.warning("cgroup %s not removed at stop (%s)", self.root, exc)


class PgroupContainment:
    """Process group + lineage (or marker sweep), where no writable cgroup v2 exists.

    With the kernel's fork events (root, or any user on Linux 6.6+), every process
    forked in a run's tree is the run's, whatever it does to its group, session or
    environment. Without them (or after the event socket overflowed), the run's
    marker finds escapees that kept their environment; the README says what neither
    can catch.
    """

    name = "pgroup"

    def __init__(self, fork_events: bool = True) -> None:
        self._lineage = Lineage()
        # One walk of the daemon's descendants serves the kills and checks of a moment.
        self.sweep = MarkerSweep()
        self._events: ProcEvents | None = None
        if not fork_events:
            log.info("pgroup_fork_events = false: escapees of a run are found by its marker only")
            return
        try:
            self._events = open_events()
        except OSError as exc:
            log.warning(
                "no process events (%s; root, or Linux 6.6+, is needed): escapees of a run "
                "are found by its environment marker only",
                exc,
            )
        else:
            log.info("pgroup: following every run's forks through the kernel's process events")

    @property
    def tracking(self) -> bool:
        """Whether runs' processes are followed by fork events."""
        return self._events is not None

    async def follow(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if self._events is None:
            task_status.started()
            return
        events = self._events
        try:
            task_status.started()
            while True:
                await anyio.wait_readable(events)
                try:
                    batch = events.read()
                except EventsLost:
                    log.warning("process events overflowed: the marker sweep backs up running runs")
                    self._lineage.events_lost()
                    continue
                for event in batch:
                    self._lineage.apply(event)
        finally:
            self._events = None
            events.close()

    def prepare(self, task_id: str) -> RunContainer:
        return RunContainer(task_id)

    def started(self, container: RunContainer, pid: int) -> None:
        if self._events is not None:
            self._lineage.adopt(container.task_id, pid)

    def kill(self, container: RunContainer, leader_pidfd: int | None, pgid: int, sig: int) -> None:
        # The group is signalled only while its leader is unreaped: its pidfd (or
        # its PID, which cannot be reused before the reap) still names our run.
        if leader_pidfd is not None:
            try:
                signal.pidfd_send_signal(leader_pidfd, sig, None, PIDFD_SIGNAL_PROCESS_GROUP)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # kernel without the group flag
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pgid, sig)
                elif exc.errno != errno.ESRCH:
                    log.error("run %s: group signal failed: %s", container.task_id, exc)
        # One pass: the daemon kills again until populated() is false, catching late forks.
        for pid, ticks in self._lineage.members(container.task_id).items():
            signal_proven(pid, started_at(ticks), sig)
        if self._swept(container):
            marked = carrying(run_marker(container.task_id))
            for pid in self.sweep.marked(container.task_id):
                signal_proven(pid, marked, sig)

    def populated(self, container: RunContainer) -> bool:
        return self._lineage.alive(container.task_id) or (
            self._swept(container) and bool(self.sweep.marked(container.task_id))
        )

    def _swept(self, container: RunContainer) -> bool:
        # The sweep walks every descendant of the daemon: only where lineage is not whole.
        return self._events is None or not self._lineage.complete(container.task_id)

    def release(self, container: RunContainer) -> None:
        self._lineage.forget(container.task_id)

    def leftovers(self) -> list[RunContainer]:
        return []

    def close(self) -> None:
        return None


def choose_containment(
    mode: Literal["auto", "cgroup", "pgroup"], node_id: str, *, fork_events: bool = True
) -> Containment:
    """The containment ``mode`` asks for; ``auto`` prefers cgroups where they are writable.

    ``fork_events``: whether process groups are backed by the kernel's fork events.
    """
    if mode == "pgroup":
        return PgroupContainment(fork_events)
    parent = find_writable_cgroup2()
    if parent is not None:
        try:
            _leave_own_cgroup(parent)
            return CgroupContainment(parent, node_id)
        except OSError as exc:
            if mode == "cgroup":
                raise ContainmentError(f"cannot create a cgroup under {parent}: {exc}") from exc
            log.warning("cgroup v2 at %s is not usable (%s): using process groups", parent, exc)
    elif mode == "cgroup":
        raise ContainmentError(
            "kill_mechanism = 'cgroup' but no writable cgroup v2 hierarchy was found "
            "(run as root, or under systemd with Delegate=yes)"
        )
    return PgroupContainment(fork_events)
