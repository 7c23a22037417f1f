"""sd_notify against a fake systemd: a real AF_UNIX datagram socket bound by the test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from supervisor.ops.redis_server import RedisServer
from supervisor.ops.sd_notify import SdNotifier, watchdog_interval
from supervisor.process import boot_id

from .daemon_harness import Daemon


class FakeSystemd:
    """Receives notifications as systemd would, on ``$NOTIFY_SOCKET``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def receive(self, window: float = 0.1) -> list[str]:
        """Every datagram that arrives within the next ``window`` seconds."""
        got = []
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        self.messages += got
        return got

    def wait_for(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.receive(0.2):
                if needle in message:
                    return message
        raise AssertionError(f"no {needle!r} in {self.messages[-10:]}")


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.sock.close()


def test_notifier_speaks_the_protocol(systemd: FakeSystemd) -> None:
    notifier = SdNotifier(str(systemd.path))
    assert notifier.ready("up") and notifier.watchdog() and notifier.stopping("bye")
    assert systemd.receive() == ["READY=1\nSTATUS=up", "WATCHDOG=1", "STOPPING=1\nSTATUS=bye"]
    assert not SdNotifier(None).ready("nobody listens")  # outside systemd: a no-op


def test_abstract_namespace_address() -> None:
    name = f"adk-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert SdNotifier("@" + name).status("hello")
        assert sock.recv(100) == b"STATUS=hello"


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    mine = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 2.0


def test_daemon_lifecycle_under_fake_systemd(
    systemd: FakeSystemd, private_redis: RedisServer, tmp_path: Path
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:12]}:"
    node = f"node-{uuid.uuid4().hex[:8]}"
    # An orphan of this node: READY must come only after reconcile failed it.
    dead = subprocess.Popen(["true"])
    dead.wait()
    admin = redis.Redis.from_url(private_redis.url, decode_responses=True)
    admin.hset(
        f"{prefix}task:orphan",
        mapping={
            "state": "running",
            "node_id": node,
            "boot_id": boot_id(),
            "pid": dead.pid,
            "start_ticks": 1,
        },
    )
    admin.sadd(f"{prefix}node:{node}:tasks", "orphan")
    daemon = Daemon(
        private_redis.url,
        prefix,
        tmp_path / "state",
        "auto",
        node_id=node,
        NOTIFY_SOCKET=str(systemd.path),
        WATCHDOG_USEC="1000000",
        ADK_SUPERVISOR_HEARTBEAT_INTERVAL_S="0.3",
    )
    daemon.start()
    try:
        ready = systemd.wait_for("READY=1")
        assert "STATUS=0 running, 0 finished, redis ok" in ready
        assert admin.hget(f"{prefix}task:orphan", "state") == "failed"
        assert daemon.cli("status").returncode == 0  # the status socket is up too

        systemd.wait_for("WATCHDOG=1")
        systemd.wait_for("WATCHDOG=1")
        private_redis.stop()
        systemd.wait_for("redis DOWN")
        # While Redis is unreachable systemd hears no WATCHDOG=1 (and would restart us).
        assert "WATCHDOG=1" not in systemd.receive(window=2.5)
        assert "Redis lost" in daemon.log()
        private_redis.start()
        systemd.wait_for("WATCHDOG=1")
        assert "Redis back" in daemon.log()

        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        systemd.wait_for("STOPPING=1")
        assert daemon.proc.wait(60) == 0
    finally:
        daemon.stop()
        admin.close()
