"""A local error while a run is being started ends it cleanly: nothing forked lives on
unrecorded, and the daemon goes on serving."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable

import psutil
import pytest

from agent_runtime.run_spec import TASK_ENV
from supervisor.client import SupervisorClient

from .daemon_harness import Daemon, until_state

pytestmark = pytest.mark.anyio

A = "examples.agents:"


def _fork_server(daemon: Daemon) -> psutil.Process:
    servers = [
        child
        for child in psutil.Process(daemon.pid).children()
        if "agent_runtime.fork_server" in child.cmdline()
    ]
    assert len(servers) == 1, servers
    return servers[0]


def _lowest_free_fd(pid: int) -> int:
    used = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
    return next(fd for fd in range(len(used) + 1) if fd not in used)


def _soft_nofile(pid: int, limit: int) -> None:
    # The soft limit only: raising a lowered hard limit again takes CAP_SYS_RESOURCE.
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:"], check=True)


def _marked(task_id: str) -> list[psutil.Process]:
    """Live processes that carry the run's marker."""
    marker = f"{TASK_ENV}={task_id}"
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and marker in "\0".join(
                f"{k}={v}" for k, v in proc.environ().items()
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("mechanism", ["cgroup", "pgroup"])
async def test_a_local_error_after_the_fork_kills_the_run_and_records_it(
    mechanism: str, start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon(mechanism)
    warm = await client.wait(await client.submit(A + "weather_agent", "hi", user_id="u"), 60)
    assert warm["state"] == "completed"
    server = _fork_server(daemon)
    limits = psutil.Process(daemon.pid).rlimit(psutil.RLIMIT_NOFILE)
    # The fork server is held, so the daemon waits for its answer with the spec written;
    # then no file descriptor is left for the pidfd it opens on the forked run.
    server.suspend()
    try:
        task = await client.submit(A + "slow_agent", "go", user_id="u", timeout_s=120)
        spec = daemon.state_dir / "specs" / f"{task}.json"
        deadline = time.monotonic() + 30
        while not spec.exists():
            assert time.monotonic() < deadline, "the daemon never wrote the run's spec"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the spec file is closed again
        _soft_nofile(daemon.pid, _lowest_free_fd(daemon.pid))
    finally:
        server.resume()
    try:
        assert daemon.logged(f"task {task}: start failed after the spawn", timeout=20), daemon.log()
    finally:
        _soft_nofile(daemon.pid, limits[0])
    record = await until_state(client, task, "failed", timeout=30)
    assert "Too many open files" in record["reason"], record
    assert not _marked(task), "the forked run lives on"
    # The daemon goes on: the next run starts and can be aborted.
    after = await client.submit(A + "slow_agent", "go", user_id="u")
    await until_state(client, after, "running")
    await client.abort(after, "done")
    assert (await client.wait(after, 60))["state"] == "aborted"
