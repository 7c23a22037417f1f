"""Client side of the status socket: one request, one reply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from ..errors import DaemonError, DaemonUnavailable, TaskNotFoundError
from .protocol import MAX_REPLY, encode

__all__ = ["request"]


async def request(path: Path, cmd: str, timeout_s: float = 30.0, **fields: Any) -> dict[str, Any]:
    """Sends ``{"cmd": cmd, **fields}`` and returns the reply (without ``ok``).

    Raises :class:`DaemonUnavailable` when no daemon answers,
    :class:`TaskNotFoundError` for an unknown task and :class:`DaemonError` for
    any other refusal.
    """
    try:
        stream = await anyio.connect_unix(path)
    except OSError as exc:
        raise DaemonUnavailable(f"no daemon answers on {path} ({exc.strerror or exc})") from None
    async with stream:
        try:
            with anyio.fail_after(timeout_s):
                await stream.send(encode({"cmd": cmd, **fields}))
                line = await BufferedByteReceiveStream(stream).receive_until(b"\n", MAX_REPLY)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
            raise DaemonUnavailable(f"the daemon on {path} closed the connection") from None
    reply: dict[str, Any] = json.loads(line)
    if not reply.pop("ok", False):
        message = str(reply.get("error", "unknown error"))
        if reply.get("kind") == "not_found":
            raise TaskNotFoundError(message)
        raise DaemonError(message)
    return reply
