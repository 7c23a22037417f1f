"""systemd's notify protocol over ``$NOTIFY_SOCKET``, without libsystemd.

One datagram per notification (``READY=1``, ``WATCHDOG=1``, ``STATUS=...``,
``STOPPING=1``). Without ``$NOTIFY_SOCKET`` (not started by systemd) every call
is a no-op, so the daemon calls it unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["SdNotifier", "watchdog_interval"]

log = logging.getLogger("adk_supervisor")


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, or None if not asked.

    ``$WATCHDOG_PID``, when set, must name this process (systemd sets it so a child
    that inherited the environment does not ping on the parent's behalf).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000


class SdNotifier:
    """Sends notifications to systemd (or to whoever bound ``$NOTIFY_SOCKET``)."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        if address:
            # "@name" is a socket in the abstract namespace.
            self._target = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # A full receive queue must never stall the event loop: drop the message instead.
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls) -> SdNotifier:
        """A notifier for ``$NOTIFY_SOCKET``; removes it from the environment so agent runs
        spawned later cannot talk to systemd as if they were the daemon."""
        address = os.environ.pop("NOTIFY_SOCKET", None)
        return cls(address)

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere."""
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Sends ``KEY=value`` lines in one datagram; returns whether it was sent."""
        if self._sock is None:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            self._sock.sendto(message, self._target)
        except OSError as exc:
            log.debug("sd_notify %r not delivered: %s", assignments, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        """``READY=1`` with a status line."""
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        """``STATUS=`` one-line summary (``systemctl status`` shows it)."""
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the daemon is healthy."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        """Closes the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
