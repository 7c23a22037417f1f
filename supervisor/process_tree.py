"""Process identity and the two ways to contain and kill a run's whole process tree.

- ``cgroup``: each run gets a cgroup v2 leaf, joined in the child before exec;
  the kill is ``cgroup.kill`` and the tree is gone when ``cgroup.events`` says
  ``populated 0``. Nothing escapes it, not even a double-forked ``setsid()``.
- ``pgroup``: each run is its own session and process group; the kill signals
  the group through a pidfd of the unreaped leader, then sweeps the daemon's
  descendants (it is a child subreaper, so escaped grandchildren are
  reparented to it) that carry the run's ``ADK_SUPERVISOR_TASK_ID`` marker.

Written against /proc and the cgroup files directly: psutil has no cgroup or
pidfd support, and its start time is a float rebuilt from boot time, where an
exact tick count is needed for identity checks.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

from agent_runtime.child import TASK_ENV
from agent_runtime.process_control import (
    join_cgroup,
    set_child_subreaper,
    set_parent_death_signal,
)

__all__ = [
    "PIDFD_SIGNAL_PROCESS_GROUP",
    "TASK_ENV",
    "CgroupContainment",
    "Containment",
    "PgroupContainment",
    "RunContainer",
    "boot_id",
    "choose_containment",
    "descendants",
    "find_writable_cgroup2",
    "process_start_ticks",
    "set_child_subreaper",
    "set_parent_death_signal",
    "signal_marked",
]

log = logging.getLogger(__name__)

PIDFD_SIGNAL_PROCESS_GROUP: Final = 4  # Linux 6.9+


def boot_id() -> str:
    """This boot's id: a PID and start time only identify a process within one boot."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


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


@dataclass(slots=True)
class RunContainer:
    """The containment of one run, created before it is spawned."""

    task_id: str
    cgroup: Path | None = None

    def preexec(self) -> None:
        """In the forked child, before exec: join the run's cgroup leaf."""
        if self.cgroup is not None:
            join_cgroup(self.cgroup)

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

    def kill(self, container: RunContainer, leader_pidfd: int | None, pgid: int, sig: int) -> None:
        """Sends ``sig`` to every process of the run's tree, at once."""

    def populated(self, container: RunContainer) -> bool:
        """Whether any process of the run's tree is still alive."""

    def release(self, container: RunContainer) -> None:
        """Removes what :meth:`prepare` created, once the tree is gone."""


class CgroupContainment:
    """One cgroup v2 leaf per run; ``cgroup.kill`` takes the whole tree."""

    name = "cgroup"

    def __init__(self, parent: Path, node_id: str) -> None:
        self.root = parent / f"adk-supervisor-{node_id}"
        self.root.mkdir(exist_ok=True)

    def leaf(self, task_id: str) -> Path:
        """The cgroup directory of a run."""
        return self.root / f"run-{task_id}"

    def prepare(self, task_id: str) -> RunContainer:
        leaf = self.leaf(task_id)
        leaf.mkdir(exist_ok=True)
        return RunContainer(task_id, leaf)

    def kill(self, container: RunContainer, leader_pidfd: int | None, pgid: int, sig: int) -> None:
        assert container.cgroup is not None
        if sig == signal.SIGKILL:
            with contextlib.suppress(FileNotFoundError):
                (container.cgroup / "cgroup.kill").write_text("1")
            return
        procs: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            procs = (container.cgroup / "cgroup.procs").read_text().split()
        leaf = f"/{container.cgroup.name}"
        for pid in map(int, procs):
            # The PID may be reaped and reused after the read: hold it, then check that
            # it is still in this leaf before signalling.
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                if any(line.startswith("0::") and line.endswith(leaf) for line in lines):
                    signal.pidfd_send_signal(pidfd, sig)
            except OSError:
                pass
            finally:
                os.close(pidfd)

    def populated(self, container: RunContainer) -> bool:
        assert container.cgroup is not None
        try:
            events = (container.cgroup / "cgroup.events").read_text()
        except FileNotFoundError:
            return False
        return "populated 1" in events

    def release(self, container: RunContainer) -> None:
        if container.cgroup is not None:
            try:
                container.cgroup.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:  # still populated (a process stuck in D state)
                log.error("cgroup %s not removed (%s); reconcile retries at the next start",
                          container.cgroup, exc)  # fmt: skip

    def leftover_leaves(self) -> list[Path]:
        """Leaves of runs a previous daemon on this node left behind."""
        return [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("run-")]


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


def _carries(pid: int, marker: bytes) -> bool:
    # A zombie, or a process past releasing its memory, has an empty environ.
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _tagged_descendants(task_id: str) -> list[int]:
    marker = f"{TASK_ENV}={task_id}".encode()
    return [pid for pid in descendants(os.getpid()) if _carries(pid, marker)]


def signal_marked(pid: int, marker: bytes, sig: int) -> None:
    """Signals ``pid`` only if, while a pidfd holds it, it still carries ``marker``."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if _carries(pid, marker):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, sig)
    finally:
        os.close(pidfd)


class PgroupContainment:
    """Process group + subreaper sweep, where no writable cgroup v2 exists."""

    name = "pgroup"

    def prepare(self, task_id: str) -> RunContainer:
        return RunContainer(task_id)

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
                    raise
        # Escaped members (setsid, double fork) carry the run's marker. One pass:
        # the daemon sweeps again until populated() is false, catching late forks.
        marker = f"{TASK_ENV}={container.task_id}".encode()
        for pid in _tagged_descendants(container.task_id):
            signal_marked(pid, marker, sig)

    def populated(self, container: RunContainer) -> bool:
        return bool(_tagged_descendants(container.task_id))

    def release(self, container: RunContainer) -> None:
        return None


def choose_containment(mode: Literal["auto", "cgroup", "pgroup"], node_id: str) -> Containment:
    """The containment ``mode`` asks for; ``auto`` prefers cgroups where they are writable."""
    if mode == "pgroup":
        return PgroupContainment()
    parent = find_writable_cgroup2()
    if parent is not None:
        try:
            return CgroupContainment(parent, node_id)
        except OSError as exc:
            if mode == "cgroup":
                raise RuntimeError(f"cannot create a cgroup under {parent}: {exc}") from exc
            log.warning("cgroup v2 at %s is not usable (%s): using process groups", parent, exc)
    elif mode == "cgroup":
        raise RuntimeError(
            "kill_mechanism = 'cgroup' but no writable cgroup v2 hierarchy was found "
            "(run as root, or under systemd with Delegate=yes)"
        )
    return PgroupContainment()
