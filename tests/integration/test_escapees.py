"""Processes that leave their run's group, session and environment are still the run's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from supervisor.client import SupervisorClient

from .daemon_harness import Daemon, until_state

pytestmark = pytest.mark.anyio

ESCAPE = "tests.integration.escape_agents:clean_env_escape_agent"


@pytest.mark.parametrize("spawn_mode", ["fork-server", "exec"])
async def test_abort_kills_an_orphan_that_dropped_the_marker(
    spawn_mode: str,
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    tmp_path: Path,
) -> None:
    # `env -i setsid sleep` from a process that then exits: another session, no marker,
    # reparented to the daemon. Under pgroup it used to survive an `aborted` record.
    start_daemon("pgroup", ADK_SUPERVISOR_SPAWN_MODE=spawn_mode)
    pid_file = tmp_path / "escapee.pid"
    task = await client.submit(ESCAPE, str(pid_file), user_id="u")
    await until_state(client, task, "running")
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert time.monotonic() < deadline, "the agent never started its escapee"
        await asyncio.sleep(0.05)
    escapee = psutil.Process(int(pid_file.read_text()))
    assert escapee.is_running() and "sleep" in escapee.cmdline()
    assert escapee.ppid() != 0
    await client.abort(task, "stop it all")
    record = await client.wait(task, 30)
    assert record["state"] == "aborted"
    try:
        escapee.wait(10)
    except psutil.TimeoutExpired:
        escapee.kill()
        pytest.fail("the escapee outlived its run's abort")
