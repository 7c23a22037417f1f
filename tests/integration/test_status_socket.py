"""The status socket of a real daemon: protocol, permissions, and bad or hostile clients."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.ops.redis_server import RedisServer

from .daemon_harness import Daemon

A = "examples.agents:"


@pytest.fixture(scope="module")
def daemon(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    prefix = f"t-{uuid.uuid4().hex[:12]}:"
    d = Daemon(
        redis_server.url,
        prefix,
        tmp_path_factory.mktemp("sock"),
        "auto",
        ADK_SUPERVISOR_SOCKET_IDLE_TIMEOUT_S="2",
        ADK_SUPERVISOR_SOCKET_MAX_CONNECTIONS="100",
        ADK_SUPERVISOR_APPS='{"slow": "examples.agents:slow_agent"}',
    )
    d.start()
    yield d
    assert d.stop() == 0
    assert not d.socket_path.exists(), "the socket outlived a clean exit"


def _connect(path: Path, timeout: float = 30) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # closed with our unread data in its buffer
            break
        if not chunk:
            break
        data += chunk
    return data


def _ask(sock: socket.socket, payload: bytes) -> dict[str, Any]:
    sock.sendall(payload)
    line = _read_line(sock)
    assert line, "connection closed without a reply"
    reply: dict[str, Any] = json.loads(line)
    return reply


def _request(daemon: Daemon, **req: Any) -> dict[str, Any]:
    with _connect(daemon.socket_path) as sock:
        return _ask(sock, json.dumps(req).encode() + b"\n")


def _until(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


def test_socket_is_private_by_default(daemon: Daemon) -> None:
    mode = daemon.socket_path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_ping_and_status_describe_the_node(daemon: Daemon) -> None:
    pong = _request(daemon, cmd="ping")
    assert (
        pong["ok"] and pong["node_id"] == daemon.node_id and pong["redis_url"] == daemon.redis_url
    )
    status = _request(daemon, cmd="status")
    assert status["ok"] and status["node_id"] == daemon.node_id and status["pid"] == daemon.pid
    assert status["redis"]["connected"] is True and status["kill_mechanism"] in ("cgroup", "pgroup")
    assert status["spawner"] == "fork-server"
    assert status["version"] and status["uptime_s"] >= 0 and "running" in status["counts"]


def test_submit_status_abort_over_the_socket(daemon: Daemon) -> None:
    submitted = _request(daemon, cmd="submit", app="slow", message="go", user_id="u")
    task = submitted["task_id"]
    assert submitted["ok"]

    def running() -> bool:
        return any(r["task_id"] == task for r in _request(daemon, cmd="status")["runs"])

    _until(running)
    run = next(r for r in _request(daemon, cmd="status")["runs"] if r["task_id"] == task)
    assert run["app"] == "slow" and run["pid"] > 0 and run["rss_bytes"] > 0
    assert run["cpu_s"] >= 0 and run["elapsed_s"] >= 0
    assert _request(daemon, cmd="abort", task_id=task, reason="from socket")["ok"]
    _until(lambda: _request(daemon, cmd="get", task_id=task)["task"]["state"] == "aborted")
    record = _request(daemon, cmd="get", task_id=task)["task"]
    assert record["reason"] == "from socket" and record["signal"] == "SIGKILL"
    # Mutating requests are logged with the peer's uid.
    uid = os.getuid()
    assert f"task {task} submitted over the status socket by uid={uid}" in daemon.log()
    assert f"abort {task} requested over the status socket by uid={uid}" in daemon.log()


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"{not json\n", "malformed JSON"),
        (b"\xff\xfe\n", "malformed JSON"),
        (b"[1, 2]\n", 'a JSON object with a "cmd" string'),
        (b'{"cmd": "launch"}\n', "unknown command 'launch'; known commands: ping, status"),
        (b'{"cmd": "get"}\n', 'get: missing field "task_id"'),
        (b'{"cmd": "submit", "app": "slow", "message": "m"}\n', 'missing field "user_id"'),
        (b'{"cmd": "submit", "app": "nope", "message": "m", "user_id": "u"}\n', "unknown app"),
        (
            b'{"cmd": "submit", "app": "slow", "message": "m", "user_id": "u", "timeout_s": -1}\n',
            "must be positive",
        ),
        (b'{"cmd": "get", "task_id": "no-such-task"}\n', "no task 'no-such-task'"),
    ],
)
def test_bad_requests_get_an_error_and_the_connection_goes_on(
    daemon: Daemon, payload: bytes, error: str
) -> None:
    with _connect(daemon.socket_path) as sock:
        reply = _ask(sock, payload)
        assert reply["ok"] is False and error in reply["error"]
        assert _ask(sock, b'{"cmd": "ping"}\n')["ok"] is True


def test_line_over_the_limit_is_refused_and_closed(daemon: Daemon) -> None:
    with _connect(daemon.socket_path) as sock:
        # The daemon may close before everything is sent.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b'{"cmd": "ping", "pad": "' + b"x" * 200_000)
        reply = json.loads(_read_line(sock))
        assert reply["ok"] is False and "longer than 65536 bytes" in reply["error"]
        assert _read_line(sock) == b""  # closed
    assert _request(daemon, cmd="ping")["ok"]


def test_silent_and_half_line_clients_are_closed_after_the_idle_timeout(daemon: Daemon) -> None:
    with _connect(daemon.socket_path) as silent, _connect(daemon.socket_path) as half:
        half.sendall(b'{"cmd": "pi')
        # Both are held open by their clients; the daemon serves others meanwhile.
        assert _request(daemon, cmd="ping")["ok"]
        for sock in (silent, half):
            reply = json.loads(_read_line(sock))
            assert reply["ok"] is False and "idle for 2s" in reply["error"]
            assert _read_line(sock) == b""


def test_client_that_never_reads_does_not_block_others(daemon: Daemon) -> None:
    stuck = _connect(daemon.socket_path)
    stuck.setblocking(False)
    sent = 0
    try:
        # Requests whose replies it never reads, until both socket buffers are full.
        for _ in range(20000):
            stuck.send(b'{"cmd": "status"}\n')
            sent += 1
    except BlockingIOError:
        pass
    try:
        assert sent > 0
        for _ in range(3):
            assert _request(daemon, cmd="ping")["ok"]
    finally:
        stuck.close()


def test_hundreds_of_connections_at_once(daemon: Daemon) -> None:
    socks = []
    try:
        for _ in range(300):
            socks.append(_connect(daemon.socket_path))
        for sock in socks:
            # A refused connection may already be closed by the daemon (its error reply
            # waits in our receive buffer): writing to it then fails, reading still works.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b'{"cmd": "ping"}\n')
        replies = []
        for sock in socks:
            line = _read_line(sock)
            replies.append(json.loads(line) if line else None)
        served = [r for r in replies if r and r["ok"]]
        refused = [r for r in replies if r is None or not r["ok"]]
        # max_connections is 100 here: the rest are told so, and nobody hangs.
        assert 0 < len(served) <= 100
        assert refused and all(r is None or "too many connections" in r["error"] for r in refused)
    finally:
        for sock in socks:
            sock.close()
    _until(lambda: _request(daemon, cmd="ping")["ok"])
