"""Client side of the status socket: one request, one reply.

Blocking, on purpose: a CLI call sends one line and reads one, and a plain
socket does that without importing asyncio (a tenth of a second on a small
machine). Async callers run it in a worker thread.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from ..errors import DaemonError, DaemonUnavailable, SessionBusyError, TaskNotFoundError
from .protocol import MAX_REPLY, encode

__all__ = ["request"]


def request(path: Path, cmd: str, *, io_timeout_s: float = 30.0, **fields: Any) -> dict[str, Any]:
    """Sends ``{"cmd": cmd, **fields}`` and returns the reply (without ``ok``).

    ``io_timeout_s`` bounds the wait for the daemon; every other keyword is a
    field of the request (``timeout_s`` included: the run's own timeout).
    Raises :class:`DaemonUnavailable` when no daemon answers (or it does not
    answer within ``io_timeout_s``), :class:`TaskNotFoundError` for an unknown task,
    :class:`SessionBusyError` for a refused submit and :class:`DaemonError` for any
    other refusal.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(io_timeout_s)
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise DaemonUnavailable(
                f"no daemon answers on {path} ({exc.strerror or exc})"
            ) from None
        try:
            sock.sendall(encode({"cmd": cmd, **fields}))
            line = _read_line(sock)
        except OSError as exc:  # reset, or the timeout
            raise DaemonUnavailable(f"the daemon on {path} did not answer ({exc})") from None
    if line is None:
        raise DaemonUnavailable(f"the daemon on {path} closed the connection")
    reply: dict[str, Any] = json.loads(line)
    if not reply.pop("ok", False):
        message = str(reply.get("error", "unknown error"))
        if reply.get("kind") == "not_found":
            raise TaskNotFoundError(message)
        if reply.get("kind") == "session_busy":
            raise SessionBusyError(message, str(reply.get("task_id", "")))
        raise DaemonError(message)
    return reply


def _read_line(sock: socket.socket) -> bytes | None:
    """One reply line, or None if the daemon closed first."""
    buffer = bytearray()
    while b"\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
        if len(buffer) > MAX_REPLY:
            raise DaemonUnavailable(f"reply longer than {MAX_REPLY} bytes")
    return bytes(buffer[: buffer.index(b"\n")])
