"""Process primitives shared by the supervisor daemon and the fork server it starts.

Written against prctl(2) and cgroupfs directly: neither psutil nor the standard
library exposes PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER or joining a cgroup.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Final

__all__ = ["enter_limits", "join_cgroup", "set_child_subreaper", "set_parent_death_signal"]

_PR_SET_PDEATHSIG: Final = 1
_PR_SET_CHILD_SUBREAPER: Final = 36
_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def set_child_subreaper() -> None:
    """Makes orphaned descendants reparent to this process instead of init."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """In a child: receive ``sig`` when the thread that is its parent exits."""
    _prctl(_PR_SET_PDEATHSIG, sig)


def join_cgroup(cgroup: Path | str) -> None:
    """Moves the calling process into ``cgroup`` (raw syscalls: safe between fork and exec)."""
    fd = os.open(os.path.join(cgroup, "cgroup.procs"), os.O_WRONLY)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


def enter_limits(cgroups: Sequence[Path | str], rlimits: Sequence[Sequence[int]]) -> None:
    """Joins the run's resource-limit cgroups and sets its rlimits (between fork and exec,
    or in the fork server's intermediate), so the run's own code starts under them."""
    for group in cgroups:
        join_cgroup(group)
    for limit, value in rlimits:
        resource.setrlimit(limit, (value, value))
