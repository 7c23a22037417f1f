"""Process identity: proving a PID names the process we mean, then signalling it.

PIDs are reused (pid_max is 32768 on many hosts), so no PID is signalled on
its number alone: :func:`signal_proven` holds the process with a pidfd first,
so the PID cannot be reused under it, then checks a proof that Redis cannot
forge (start ticks, cgroup leaf, environment marker), then signals through the
pidfd. Every caller that signals a process it did not just fork goes through it.

Written against /proc directly: psutil has no pidfd support, and its start
time is a float rebuilt from boot time, where an exact tick count is needed.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = [
    "PIDFD_SIGNAL_PROCESS_GROUP",
    "boot_id",
    "carries_marker",
    "carrying",
    "in_cgroup_leaf",
    "inside",
    "process_start_ticks",
    "process_state",
    "signal_proven",
    "started_at",
]

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


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (``R``, ``S``, ``Z`` for a zombie...), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split(maxsplit=1)[0].decode()


def carries_marker(pid: int, marker: bytes) -> bool:
    """Whether ``pid``'s exec-time environment holds the ``NAME=value`` entry ``marker``."""
    # A zombie, or a process past releasing its memory, has an empty environ.
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def in_cgroup_leaf(pid: int, leaf: Path) -> bool:
    """Whether ``pid`` is a member of the cgroup v2 directory ``leaf``."""
    suffix = f"/{leaf.name}"
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return False
    return any(line.startswith("0::") and line.endswith(suffix) for line in lines)


def carrying(marker: bytes) -> Callable[[int], bool]:
    """A proof for :func:`signal_proven`: the process carries ``marker``."""
    return lambda pid: carries_marker(pid, marker)


def started_at(ticks: int) -> Callable[[int], bool]:
    """A proof for :func:`signal_proven`: the process started at ``ticks`` (it is not a
    later process under a reused PID)."""
    return lambda pid: process_start_ticks(pid) == ticks


def inside(leaf: Path) -> Callable[[int], bool]:
    """A proof for :func:`signal_proven`: the process is a member of cgroup ``leaf``."""
    return lambda pid: in_cgroup_leaf(pid, leaf)


def signal_proven(
    pid: int, proof: Callable[[int], bool], sig: int, *, with_group: bool = False
) -> bool:
    """Signals ``pid`` only if ``proof(pid)`` holds while a pidfd pins it; True if it did.

    ``with_group`` also signals the process group ``pid`` leads (through the
    pidfd, so even a zombie leader's group is reached), before the process itself.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if not proof(pid):
            return False
        if with_group:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, sig, None, PIDFD_SIGNAL_PROCESS_GROUP)
        with contextlib.suppress(OSError):  # gone meanwhile: nothing left to signal
            signal.pidfd_send_signal(pidfd, sig)
        return True
    finally:
        os.close(pidfd)
