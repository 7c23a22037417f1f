"""Workspace snapshots of durable runs (issue 12): a run of an app with ``workspace = true``
works in its own directory, snapshotted to Redis after each tool call; a resume restores the
snapshot first, and refuses one that could write outside the directory.

Real daemons, a real SIGKILL of the run's leader, the shared test Redis.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent_runtime.workspace import Snapshot
from supervisor.client import SupervisorClient

from .daemon_harness import Daemon, until_state

pytestmark = pytest.mark.anyio

APPS = {
    "notes": {
        "ref": "tests.integration.workspace_agents:notes_app",
        "on_orphan": "resume",
        "max_attempts": 3,
        "idempotent_tools": ["read_note"],
        "workspace": True,
    }
}


def _any_exists(*paths: Path) -> bool:
    return any(path.exists() for path in paths)


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def _until_logged(log: Path, text: str, count: int = 1, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in _lines(log) if text in line]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"{text!r} x{count} never logged: {_lines(log)}")


async def _kill_leader_in_read_note(client: SupervisorClient, task: str, log: Path) -> None:
    await _until_logged(log, "read_note cwd=")
    record = await until_state(client, task, "running")
    os.kill(int(record["pid"]), signal.SIGKILL)  # not sent by the daemon: the run resumes


@pytest.mark.parametrize("spawn_mode", ["fork-server", "exec"])
async def test_a_file_written_before_the_kill_is_there_after_the_resume(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, tmp_path: Path, spawn_mode: str
) -> None:
    log = tmp_path / "tools.log"
    daemon = start_daemon(
        ADK_SUPERVISOR_APPS=json.dumps(APPS),
        ADK_SUPERVISOR_SPAWN_MODE=spawn_mode,
        DURABLE_TEST_LOG=str(log),
    )
    task = await client.submit("notes", "go", user_id="u", session_id="ws1")
    await _kill_leader_in_read_note(client, task, log)
    workspace = daemon.state_dir / "workspaces" / task
    again = (await _until_logged(log, "read_note cwd=", count=2))[1]
    record = await until_state(client, task, "completed")
    assert record["attempt"] == "2", record
    # The resumed attempt ran in a fresh directory that had the file back from Redis.
    assert f"cwd={workspace} " in again and json.dumps("written before the crash") in again, again
    # Removed just after the end is recorded (the attempt's cleanup follows its record).
    for _ in range(250):
        if not _any_exists(workspace):
            break
        await asyncio.sleep(0.02)
    assert not _any_exists(workspace), "the workspace is removed with the run's end"
    keys = client.store.keys
    assert not await client.store.client.exists(keys.workspace_snapshot(task))


def _crafted() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, kind, target in (
            ("ok.txt", tarfile.REGTYPE, ""),
            ("../escape", tarfile.REGTYPE, ""),
            ("/tmp/adk-absolute", tarfile.REGTYPE, ""),
            ("root", tarfile.SYMTYPE, "/"),
            ("null", tarfile.CHRTYPE, ""),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            data = b"planted" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


async def test_a_planted_snapshot_that_leaves_the_directory_fails_the_resume(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, tmp_path: Path
) -> None:
    log = tmp_path / "tools.log"
    daemon = start_daemon(ADK_SUPERVISOR_APPS=json.dumps(APPS), DURABLE_TEST_LOG=str(log))
    task = await client.submit("notes", "go", user_id="u", session_id="ws2")
    await _until_logged(log, "read_note cwd=")
    # Whoever can write the key plants an archive with a correct SHA-256: only the member
    # checks stand between it and the node's filesystem.
    planted = Snapshot.of(_crafted())
    key = client.store.keys.workspace_snapshot(task)
    await client.store.client.hset(key, mapping={"sha256": planted.sha256, "tar": planted.data})
    await _kill_leader_in_read_note(client, task, log)
    record = await until_state(client, task, "failed")
    assert record["attempt"] == "2", record
    assert (
        "UnsafeSnapshotError: not resumed: workspace snapshot member '../escape'"
        in (record["reason"])
    ), record
    assert len(_lines(log)) == 2, "the resumed attempt ran no tool"
    workspaces = daemon.state_dir / "workspaces"
    assert not _any_exists(workspaces / "escape", Path("/tmp/adk-absolute"))


async def test_a_snapshot_over_the_cap_is_skipped_and_logged(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, tmp_path: Path
) -> None:
    log = tmp_path / "tools.log"
    daemon = start_daemon(
        ADK_SUPERVISOR_APPS=json.dumps(APPS),
        ADK_SUPERVISOR_WORKSPACE_SNAPSHOT_MAX_BYTES="64KiB",
        DURABLE_TEST_LOG=str(log),
        WORKSPACE_TEST_NOTE_BYTES=str(200_000),
        DURABLE_TEST_HOLD_S="0",
    )
    task = await client.submit("notes", "go", user_id="u", session_id="ws3")
    await until_state(client, task, "completed")
    run_log = (daemon.state_dir / "logs" / f"{task}.log").read_text()
    assert "workspace snapshot skipped after tool write_note" in run_log, run_log
    assert "exceeds 65536 bytes (workspace_snapshot_max_bytes)" in run_log, run_log


async def test_a_peer_that_takes_over_a_dead_node_restores_the_workspace(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, tmp_path: Path
) -> None:
    log = tmp_path / "tools.log"
    fast = {"ADK_SUPERVISOR_HEARTBEAT_INTERVAL_S": "0.3", "ADK_SUPERVISOR_NODE_DEAD_AFTER_S": "1.5"}
    env = {**fast, "ADK_SUPERVISOR_APPS": json.dumps(APPS), "DURABLE_TEST_LOG": str(log)}
    nodes = [start_daemon(**env) for _ in range(2)]
    task = await client.submit("notes", "go", user_id="u", session_id="ws4")
    await _until_logged(log, "read_note cwd=")
    record = await until_state(client, task, "running")
    dead = next(n for n in nodes if n.node_id == record["node_id"])
    peer = next(n for n in nodes if n is not dead)
    dead.kill9()  # its run dies with it, mid-tool; its workspace stays on its disk
    again = (await _until_logged(log, "read_note cwd=", count=2))[1]
    record = await until_state(client, task, "completed")
    assert record["node_id"] == peer.node_id and record["attempt"] == "2", record
    workspace = peer.state_dir / "workspaces" / task
    assert f"cwd={workspace} " in again and json.dumps("written before the crash") in again, again
