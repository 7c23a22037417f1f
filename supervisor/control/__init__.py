"""The daemon's local status socket: wire format, server, request handler and client."""

from .client import request
from .handler import ControlHandler, ControlledNode
from .protocol import COMMANDS, Peer
from .server import StatusSocketServer, bind_unix_socket

__all__ = [
    "COMMANDS",
    "ControlHandler",
    "ControlledNode",
    "Peer",
    "StatusSocketServer",
    "bind_unix_socket",
    "request",
]
