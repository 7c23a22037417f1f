"""Daemon lifecycle: SIGTERM/SIGINT with kill or drain, drain over the socket, the embedded
Redis (persistent, stopped on exit), one daemon per state_dir, stale and live sockets."""

from __future__ import annotations

import asyncio
import grp
import json
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from supervisor.client import SupervisorClient
from supervisor.process import find_writable_cgroup2

from .daemon_harness import Daemon, until_state

pytestmark = pytest.mark.anyio

A = "examples.agents:"


def _signal_and_wait(daemon: Daemon, sig: int) -> int:
    assert daemon.proc is not None
    daemon.proc.send_signal(sig)
    return daemon.proc.wait(90)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_shutdown_kill_records_aborted_and_exits_0(
    sig: int, start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon()
    task = await client.submit(A + "slow_agent", "go", user_id="u")
    await until_state(client, task, "running")
    assert _signal_and_wait(daemon, sig) == 0
    record = await client.get(task)
    assert record["state"] == "aborted" and record["reason"] == "supervisor shutting down"
    assert (
        not psutil.pid_exists(int(record["pid"]))
        or psutil.Process(int(record["pid"])).status() == psutil.STATUS_ZOMBIE
    )
    assert not daemon.socket_path.exists()


async def test_second_ctrl_c_does_not_cut_the_shutdown_short(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    # Drain with a deadline: the first SIGINT starts a shutdown that takes a while.
    daemon = start_daemon(ADK_SUPERVISOR_ON_SHUTDOWN="drain", ADK_SUPERVISOR_DRAIN_TIMEOUT_S="2")
    task = await client.submit(A + "slow_agent", "go", user_id="u")
    await until_state(client, task, "running")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGINT)
    await asyncio.sleep(0.5)
    assert _signal_and_wait(daemon, signal.SIGINT) == 0
    record = await client.get(task)
    assert record["state"] == "aborted" and "drain deadline" in record["reason"]
    assert "already stopping" in daemon.log()


async def test_shutdown_drain_lets_runs_finish(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon(ADK_SUPERVISOR_ON_SHUTDOWN="drain", ADK_EXAMPLE_HOLD_S="3")
    task = await client.submit(A + "slow_agent", "go", user_id="u")
    await until_state(client, task, "running")
    assert _signal_and_wait(daemon, signal.SIGTERM) == 0
    assert (await client.get(task))["state"] == "completed"
    assert "shutting down (on_shutdown=drain): 1 running runs" in daemon.log()


async def test_shutdown_drain_deadline_kills_the_rest(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon(ADK_SUPERVISOR_ON_SHUTDOWN="drain", ADK_SUPERVISOR_DRAIN_TIMEOUT_S="1")
    task = await client.submit(A + "slow_agent", "go", user_id="u")
    await until_state(client, task, "running")
    assert _signal_and_wait(daemon, signal.SIGTERM) == 0
    record = await client.get(task)
    assert record["state"] == "aborted" and "drain deadline of 1s passed" in record["reason"]


async def test_drain_over_the_socket_stops_taking_runs(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon(ADK_EXAMPLE_HOLD_S="3")
    running = await client.submit(A + "slow_agent", "go", user_id="u")
    await until_state(client, running, "running")
    drained = daemon.cli("drain")
    assert drained.returncode == 0 and "1 running runs go on" in drained.stdout
    later = await client.submit(A + "weather_agent", "after drain", user_id="u")
    assert (await client.wait(running, 60))["state"] == "completed"
    await asyncio.sleep(1.5)  # one consumer poll period: it would have been taken by now
    assert (await client.get(later))["state"] == "queued"
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert status["draining"] is True and status["counts"]["completed"] == 1


async def test_embedded_redis_cli_without_url_persistence_and_one_daemon_per_state_dir(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(url=None, state="embedded")
    redis_proc = next(
        p for p in psutil.Process(daemon.pid).children() if "redis-server" in p.name()
    )
    # The CLI finds the daemon through the socket in state_dir: no Redis URL anywhere.
    submitted = daemon.cli("submit", A + "weather_agent", "hi", "--user-id", "u", "--wait")
    assert submitted.returncode == 0, submitted.stderr
    task = submitted.stdout.split()[1]
    assert "completed" in submitted.stdout
    assert "embedded Redis at unix://" in daemon.log()

    second = Daemon(None, daemon.key_prefix, daemon.state_dir, "auto")
    second.env = daemon.env
    refused = second.cli("run", timeout=60)
    assert refused.returncode == 1
    assert f"already running on state_dir {daemon.state_dir}" in refused.stderr
    assert daemon.cli("status").returncode == 0  # the first one is untouched

    assert daemon.stop() == 0
    assert not redis_proc.is_running() or redis_proc.status() == psutil.STATUS_ZOMBIE
    gone = daemon.cli("get", task)
    assert gone.returncode == 3 and "no daemon answers" in gone.stderr

    restarted = start_daemon(url=None, state="embedded")
    got = restarted.cli("get", task, "--json")
    assert got.returncode == 0, got.stderr
    record = json.loads(got.stdout)
    assert record["state"] == "completed"  # the append-only file kept it


async def test_stale_socket_is_replaced_and_a_live_one_is_not(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    path = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # what a crash leaves: the file, nobody listening
    daemon = start_daemon(ADK_SUPERVISOR_SOCKET_PATH=str(path))
    assert daemon.cli("status").returncode == 0
    intruder = Daemon(
        daemon.redis_url,
        daemon.key_prefix,
        tmp_path / "other",
        "auto",
        ADK_SUPERVISOR_SOCKET_PATH=str(path),
    )
    refused = intruder.cli("--redis-url", daemon.redis_url, "run", timeout=60)
    assert refused.returncode == 1 and f"another process is serving {path}" in refused.stderr
    assert daemon.cli("status").returncode == 0


async def test_socket_mode_group_and_json_logs(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(
        ADK_SUPERVISOR_SOCKET_MODE="0660",
        ADK_SUPERVISOR_SOCKET_GROUP="adm",
        ADK_SUPERVISOR_LOG_FORMAT="json",
    )
    info = daemon.socket_path.stat()
    assert info.st_mode & 0o777 == 0o660 and info.st_gid == grp.getgrnam("adm").gr_gid
    entries = [json.loads(line) for line in daemon.log().splitlines()]
    assert any(e["msg"].startswith("ready: reconcile done") for e in entries)
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in entries)


async def test_a_second_daemon_with_the_same_node_id_refuses_to_start(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    first = start_daemon()
    task = await client.submit(A + "slow_agent", "go", user_id="u")
    running = await until_state(client, task, "running")
    second = Daemon(
        first.redis_url,
        first.key_prefix,
        first.state_dir.parent / "other",
        "auto",
        node_id=first.node_id,
    )
    assert first.redis_url is not None
    refused = second.cli("--redis-url", first.redis_url, "run", timeout=60)
    assert refused.returncode == 1
    assert f"node_id {first.node_id} is in use by another live daemon" in refused.stderr
    # It touched nothing of the first one's: the run lives on.
    record = await client.get(task)
    assert record["state"] == "running" and record["pid"] == running["pid"]
    assert first.proc is not None and first.proc.poll() is None


async def test_a_clean_stop_removes_the_nodes_cgroup(start_daemon: Callable[..., Daemon]) -> None:
    # Every daemon (and every test run) used to leave adk-supervisor-<node> behind.
    parent = find_writable_cgroup2()
    assert parent is not None, "the tests need a writable cgroup v2 (run them as root)"
    daemon = start_daemon("cgroup")
    root = parent / f"adk-supervisor-{daemon.node_id}"
    assert root.is_dir()
    assert daemon.stop() == 0
    assert not root.exists()
