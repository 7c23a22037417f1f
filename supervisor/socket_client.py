"""Client side of the status socket: one request, one reply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from .status_socket import MAX_LINE

__all__ = ["DaemonError", "DaemonUnavailable", "request"]


class DaemonUnavailable(ConnectionError):
    """No daemon answers on the socket."""


class DaemonError(RuntimeError):
    """The daemon answered with an error."""


async def request(path: Path, cmd: str, timeout_s: float = 30.0, **fields: Any) -> dict[str, Any]:
    """Sends ``{"cmd": cmd, **fields}`` and returns the reply (without ``ok``)."""
    try:
        stream = await anyio.connect_unix(path)
    except OSError as exc:
        raise DaemonUnavailable(f"no daemon answers on {path} ({exc.strerror or exc})") from None
    async with stream:
        try:
            with anyio.fail_after(timeout_s):
                await stream.send(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
                # Replies (a status with many runs) may be longer than a request may be.
                line = await BufferedByteReceiveStream(stream).receive_until(b"\n", 64 * MAX_LINE)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
            raise DaemonUnavailable(f"the daemon on {path} closed the connection") from None
    reply: dict[str, Any] = json.loads(line)
    if not reply.pop("ok", False):
        raise DaemonError(str(reply.get("error", "unknown error")))
    return reply
