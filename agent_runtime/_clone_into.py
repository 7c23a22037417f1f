"""``fork()`` straight into a cgroup: ``clone3(CLONE_INTO_CGROUP)`` for the fork server.

Moving a process into a cgroup by writing ``cgroup.procs`` takes the kernel's
cgroup-wide thread-group lock for writing, which waits for an RCU grace period:
14 ms per run on this 2-core VM, the largest single share of a fork-server
spawn. A process cloned into the cgroup (Linux 5.7+) is placed there as it is
created, under the same lock taken for reading, and is never anywhere else.

Python has no ``clone3``: it is called through libc's ``syscall()`` with the GIL
held (``PyDLL``), between ``PyOS_BeforeFork`` and ``PyOS_AfterFork_*``, which is
what ``os.fork()`` does around glibc's ``fork()``. What glibc's ``fork()`` does
beyond the system call is:

- setting the child's thread id in its thread descriptor: ``CLONE_CHILD_SETTID``
  does it, with the field's address found at start (the one 4-byte word there
  that holds this thread's id);
- taking malloc's and stdio's locks around the fork so that no other thread
  holds one in the child: the server has one thread, so nobody holds them;
- running ``pthread_atfork`` handlers: the intermediate it is used for runs
  none of its own code and forks the run with ``os.fork()``, which runs them
  there.

:func:`clone_into` is None where any of this does not hold (not glibc, threads,
the field not found): the caller then forks and joins the cgroup by writing it.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["clone_into"]

_SYS_CLONE3 = 435  # the same on every architecture (the generic syscall table)
_CLONE_CHILD_SETTID = 0x01000000
_CLONE_INTO_CGROUP = 0x200000000
_SIGCHLD = 17


class _CloneArgs(ctypes.Structure):
    """``struct clone_args`` (linux/sched.h), version 2 (with ``cgroup``)."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags",
            "pidfd",
            "child_tid",
            "parent_tid",
            "exit_signal",
            "stack",
            "stack_size",
            "tls",
            "set_tid",
            "set_tid_size",
            "cgroup",
        )
    ]


def _tid_field(libc: ctypes.PyDLL) -> int | None:
    """The address of this thread's id in glibc's thread descriptor, if exactly one word
    of the descriptor's first 1 KiB holds it (0x2d0 on x86_64 and aarch64 glibc 2.36;
    the descriptor is about 2.3 KiB, so reading further could leave its mapping)."""
    libc.pthread_self.restype = ctypes.c_void_p
    base = libc.pthread_self()
    if not base:
        return None
    tid = threading.get_native_id()
    hits = [at for at in range(0, 1024, 4) if ctypes.c_int.from_address(base + at).value == tid]
    return base + hits[0] if len(hits) == 1 else None


def _make() -> Callable[[int], int] | None:
    if os.confstr("CS_GNU_LIBC_VERSION") is None:
        return None
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        api = ctypes.pythonapi
        before, after_child, after_parent = (
            api.PyOS_BeforeFork,
            api.PyOS_AfterFork_Child,
            api.PyOS_AfterFork_Parent,
        )
    except (OSError, AttributeError):
        return None
    tid_at = _tid_field(libc)
    if tid_at is None:
        return None

    def clone(cgroup_fd: int) -> int:
        """Like ``os.fork()``, the child born in the cgroup whose directory ``cgroup_fd`` is."""
        if threading.active_count() > 1 or len(os.listdir("/proc/self/task")) > 1:
            raise OSError("clone_into needs a single-threaded process")
        args = _CloneArgs(
            flags=_CLONE_INTO_CGROUP | _CLONE_CHILD_SETTID,
            child_tid=tid_at,
            exit_signal=_SIGCHLD,
            cgroup=cgroup_fd,
        )
        before()
        pid = libc.syscall(_SYS_CLONE3, ctypes.byref(args), ctypes.sizeof(args))
        if pid == 0:
            after_child()
            return 0
        err = ctypes.get_errno()
        after_parent()
        if pid < 0:
            raise OSError(err, os.strerror(err))
        return int(pid)

    return clone


clone_into: Callable[[int], int] | None = _make() if Path("/proc/self/task").is_dir() else None
"""``clone_into(cgroup_fd) -> pid`` (0 in the child), or None where it cannot be used."""
