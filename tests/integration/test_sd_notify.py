"""sd_notify against a fake systemd: a real AF_UNIX datagram socket bound by the test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from agent_runtime.keys import KeySchema
from supervisor.ops.redis_server import RedisServer
from supervisor.ops.sd_notify import SdNotifier, watchdog_interval
from supervisor.process import boot_id

from .daemon_harness import Daemon


def _submit(client: redis.Redis, prefix: str, task: str, timeout_s: float | None) -> str:
    """Queues a slow run the way SupervisorClient does (record, then stream entry)."""
    client.hset(f"{prefix}{{{prefix}}}task:{task}", mapping={"task_id": task, "state": "queued"})
    entry = {"task_id": task, "app": "examples.agents:slow_agent", "user_id": "u", "message": "go"}
    if timeout_s is not None:
        entry["timeout"] = str(timeout_s)
    client.xadd(f"{prefix}{{{prefix}}}runs", entry)  # type: ignore[arg-type]
    return task


def _until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


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
        f"{prefix}{{{prefix}}}task:orphan",
        mapping={
            "state": "running",
            "node_id": node,
            "boot_id": boot_id(),
            "pid": dead.pid,
            "start_ticks": 1,
        },
    )
    admin.sadd(f"{prefix}{{{prefix}}}node:{node}:tasks", "orphan")
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
        assert admin.hget(f"{prefix}{{{prefix}}}task:orphan", "state") == "failed"
        assert daemon.cli("status").returncode == 0  # the status socket is up too

        systemd.wait_for("WATCHDOG=1")
        systemd.wait_for("WATCHDOG=1")
        client = redis.Redis.from_url(private_redis.url, decode_responses=True)
        lives = _submit(client, prefix, "lives", None)
        expires = _submit(client, prefix, "expires", 3)
        for task in (lives, expires):
            # In its tool (which sleeps): the run needs Redis no more until it returns.
            events = KeySchema(prefix).app("slow").session("u", task).events
            _until(lambda e=events: any("slow_lookup" in v for v in admin.hvals(e)))
        client.close()
        leader = int(admin.hget(f"{prefix}{{{prefix}}}task:{lives}", "pid") or 0)
        private_redis.stop()
        systemd.wait_for("redis DOWN")
        # The watchdog proves the event loop turns, not that Redis answers: pings go on
        # through the outage (a watchdog restart would kill every run of the node).
        pings = [m for m in systemd.receive(window=4) if m == "WATCHDOG=1"]
        assert len(pings) >= 4, systemd.messages[-10:]
        assert "Redis lost" in daemon.log()
        assert os.path.exists(f"/proc/{leader}"), "a run died with the Redis outage"
        back_at = time.time()
        private_redis.start()
        systemd.wait_for("redis ok")
        assert daemon.logged("Redis back")
        # The run whose timeout passed during the outage was killed then; its end,
        # kept in the outbox, lands now.
        _until(lambda: admin.hget(f"{prefix}{{{prefix}}}task:{expires}", "state") == "timed_out")
        # Its record says when it ended, not when the outbox got it written.
        assert (
            float(admin.hget(f"{prefix}{{{prefix}}}task:{expires}", "ended_at") or "inf") < back_at
        )
        assert admin.hget(f"{prefix}{{{prefix}}}task:{lives}", "state") == "running"

        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        systemd.wait_for("STOPPING=1")
        assert daemon.proc.wait(60) == 0
    finally:
        daemon.stop()
        admin.close()
