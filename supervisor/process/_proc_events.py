"""The kernel's process events (the netlink proc connector): every fork and exit on the host.

Written by hand: no maintained Python library speaks the proc connector, and all
it takes is one subscribe message and three fixed C structs (linux/cn_proc.h).
Needs CAP_NET_ADMIN before Linux 6.6 (any user since); :func:`open_events` says why
it could not subscribe.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["EventsLost", "Exit", "Fork", "ProcEvents", "open_events"]

_NETLINK_CONNECTOR: Final = 11
_CN_IDX_PROC: Final = 1
_CN_VAL_PROC: Final = 1
_PROC_CN_MCAST_LISTEN: Final = 1
_NLMSG_DONE: Final = 3
_PROC_EVENT_FORK: Final = 0x00000001
_PROC_EVENT_EXIT: Final = 0x80000000

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_FORK = struct.Struct("=IIII")  # parent pid, parent tgid, child pid, child tgid
_EXIT = struct.Struct("=II")  # pid, tgid
_EVENT_AT = _NLMSGHDR.size + _CN_MSG.size
_DATA_AT = _EVENT_AT + _EVENT_HEAD.size
# A fork bomb elsewhere on the host must not overflow the socket while the loop is busy.
_RCVBUF = 8 << 20


@dataclass(frozen=True, slots=True)
class Fork:
    """Process ``parent`` forked process ``child`` (threads are left out)."""

    parent: int
    child: int
    at_ns: int


@dataclass(frozen=True, slots=True)
class Exit:
    """Process ``pid`` exited."""

    pid: int


class EventsLost(Exception):
    """The socket overflowed: some events were dropped and the picture is incomplete."""


class ProcEvents:
    """A subscribed proc-connector socket; non-blocking."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray(64 * 1024)

    def fileno(self) -> int:
        """The socket's file descriptor, for waiting on it."""
        return self._sock.fileno()

    def read(self) -> list[Fork | Exit]:
        """Every event queued now (maybe none); :class:`EventsLost` after an overflow."""
        events: list[Fork | Exit] = []
        view = memoryview(self._buffer)
        while True:
            try:
                size = self._sock.recv_into(self._buffer)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise EventsLost from exc
                raise
            offset = 0
            while offset + _DATA_AT <= size:
                length = _NLMSGHDR.unpack_from(view, offset)[0]
                if length < _DATA_AT:
                    break
                event = _parse(view, offset)
                if event is not None:
                    events.append(event)
                offset += (length + 3) & ~3

    def close(self) -> None:
        """Unsubscribes (by closing the socket)."""
        self._sock.close()


def _parse(view: memoryview, offset: int) -> Fork | Exit | None:
    what, _cpu, at_ns = _EVENT_HEAD.unpack_from(view, offset + _EVENT_AT)
    data = offset + _DATA_AT
    if what == _PROC_EVENT_FORK:
        _ppid, parent_tgid, child_pid, child_tgid = _FORK.unpack_from(view, data)
        return Fork(parent_tgid, child_tgid, at_ns) if child_pid == child_tgid else None
    if what == _PROC_EVENT_EXIT:
        pid, tgid = _EXIT.unpack_from(view, data)
        return Exit(tgid) if pid == tgid else None
    return None


def open_events() -> ProcEvents:
    """Subscribes to the host's fork and exit events; OSError says why it cannot."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_CONNECTOR)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, _RCVBUF)  # SO_RCVBUFFORCE: past rmem_max
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        sock.bind((0, _CN_IDX_PROC))
        op = struct.pack("=I", _PROC_CN_MCAST_LISTEN)
        cn_msg = _CN_MSG.pack(_CN_IDX_PROC, _CN_VAL_PROC, 0, 0, len(op), 0) + op
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(cn_msg), _NLMSG_DONE, 0, 0, os.getpid())
        sock.send(header + cn_msg)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return ProcEvents(sock)
