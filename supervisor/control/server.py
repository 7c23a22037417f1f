"""The daemon's local control socket: newline-delimited JSON over a unix stream socket.

The wire format is :mod:`supervisor.control.protocol`. The
transport protects the daemon from its clients: a line over ``max_line`` bytes,
a client idle past ``idle_timeout_s`` or one that does not read its replies,
and connections beyond ``max_connections`` get an error reply (when one can be
delivered) and a closed connection; nobody else notices.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from ..errors import RequestError, SessionBusyError, SocketInUseError, TaskNotFoundError
from .protocol import MAX_LINE, decode_request, encode, error_reply

__all__ = ["Handler", "Peer", "StatusSocketServer", "bind_unix_socket"]

log = logging.getLogger("adk_supervisor")

_WRITE_TIMEOUT_S = 5.0
_CLIENT_GONE = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end (from ``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


Handler = Callable[[dict[str, Any], Peer], Awaitable[dict[str, Any]]]


def _is_served(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False  # ECONNREFUSED: nobody listens, the file is a crash's leftover
    finally:
        probe.close()
    return True


def bind_unix_socket(path: Path, mode: int = 0o600, group: str | None = None) -> socket.socket:
    """A listening unix socket at ``path`` with ``mode`` (and ``group``) from its first moment.

    A stale socket left by a crash is replaced; a socket a live process serves is
    not (:class:`SocketInUseError`). The socket is bound under a temporary name,
    given its mode and group, then renamed over ``path``, so no client ever sees
    it with looser permissions.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        existing = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(existing.st_mode):
            raise SocketInUseError(
                f"{path} exists and is not a socket: move it away or choose another socket_path"
            )
        if _is_served(path):
            raise SocketInUseError(
                f"another process is serving {path} (a daemon with the same socket_path is "
                "running): stop it, or choose another socket_path"
            )
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(temporary))
        os.chmod(temporary, mode)
        if group is not None:
            os.chown(temporary, -1, grp.getgrnam(group).gr_gid)
        sock.listen(1024)
        os.rename(temporary, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return sock


def _peer(stream: SocketStream) -> Peer:
    raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
    creds = raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Peer(pid, uid, gid)


class StatusSocketServer:
    """Serves ``handler`` on a unix socket until cancelled; removes the socket on the way out."""

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        mode: int = 0o600,
        group: str | None = None,
        max_connections: int = 512,
        idle_timeout_s: float = 60.0,
        max_line: int = MAX_LINE,
    ) -> None:
        self.path = path
        self.handler = handler
        self.mode = mode
        self.group = group
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.max_line = max_line
        self.connections = 0

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Binds, reports started, and serves every client in its own task."""
        sock = bind_unix_socket(self.path, self.mode, self.group)
        inode = os.stat(self.path).st_ino
        try:
            listener = await SocketListener.from_socket(sock)
            async with listener, anyio.create_task_group() as tg:
                task_status.started()
                await listener.serve(self._client, task_group=tg)
        finally:
            # Only our own socket: a daemon started after us may have replaced it.
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == inode:
                    self.path.unlink()

    async def _send(self, stream: SocketStream, reply: dict[str, Any]) -> bool:
        data = encode(reply)
        # A client that does not read its replies must not hold a task forever.
        with anyio.move_on_after(_WRITE_TIMEOUT_S):
            try:
                await stream.send(data)
            except _CLIENT_GONE:
                return False
            return True
        return False

    async def _client(self, stream: SocketStream) -> None:
        self.connections += 1
        try:
            async with stream:
                if self.connections > self.max_connections:
                    await self._send(
                        stream,
                        error_reply(
                            f"too many connections (max {self.max_connections}); retry later"
                        ),
                    )
                    return
                await self._converse(stream)
        except Exception:  # a client's trouble never reaches the daemon's task group
            log.exception("status socket: client connection failed")
        finally:
            self.connections -= 1

    async def _converse(self, stream: SocketStream) -> None:
        peer = _peer(stream)
        reader = BufferedByteReceiveStream(stream)
        while True:
            line: bytes | None = None
            with anyio.move_on_after(self.idle_timeout_s):
                try:
                    line = await reader.receive_until(b"\n", self.max_line)
                except anyio.DelimiterNotFound:
                    await self._send(
                        stream, error_reply(f"request longer than {self.max_line} bytes")
                    )
                    return
                except _CLIENT_GONE:
                    return
            if line is None:
                await self._send(stream, error_reply(f"idle for {self.idle_timeout_s:g}s: closing"))
                return
            if not line.strip():
                continue
            if not await self._send(stream, await self._dispatch(line, peer)):
                return

    async def _dispatch(self, line: bytes, peer: Peer) -> dict[str, Any]:
        try:
            request = decode_request(line)
            reply = await self.handler(request, peer)
        except (RequestError, TaskNotFoundError, SessionBusyError) as exc:
            return error_reply(exc)
        except Exception as exc:  # one failing request must not take the socket down
            log.exception("status socket: request %r failed", line[:200])
            return error_reply(f"internal error: {type(exc).__name__}: {exc}")
        return {"ok": True, **reply}
