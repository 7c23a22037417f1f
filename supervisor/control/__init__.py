"""The daemon's local status socket: wire format, server, request handler and client.

The names load on first use: the CLI imports the client alone, without the
server's anyio or the handler's Redis client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_runtime._lazy import lazy_exports

if TYPE_CHECKING:
    from .client import request
    from .handler import ControlHandler, ControlledNode
    from .protocol import COMMANDS
    from .server import Peer, StatusSocketServer, bind_unix_socket

__all__ = [
    "COMMANDS",
    "ControlHandler",
    "ControlledNode",
    "Peer",
    "StatusSocketServer",
    "bind_unix_socket",
    "request",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "COMMANDS": ".protocol",
        "ControlHandler": ".handler",
        "ControlledNode": ".handler",
        "Peer": ".server",
        "StatusSocketServer": ".server",
        "bind_unix_socket": ".server",
        "request": ".client",
    },
)
