"""Per-run resource limits on this host (hybrid cgroups: memory, pids and cpu are v1)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from supervisor.client import SupervisorClient
from supervisor.process.limits import Limiter

from .daemon_harness import Daemon, until_state

pytestmark = pytest.mark.anyio

L = "tests.integration.limit_agents:"


def _members(task_id: str) -> list[psutil.Process]:
    marker = f"ADK_SUPERVISOR_TASK_ID={task_id}"
    found = []
    for proc in psutil.process_iter():
        try:
            if marker in "\0".join(f"{k}={v}" for k, v in proc.environ().items()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _v1_group(controller: str, daemon: Daemon, task_id: str) -> Path:
    for line in Path(f"/proc/{daemon.pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return (
                Path("/sys/fs/cgroup")
                / controller
                / path.lstrip("/")
                / f"adk-supervisor-{daemon.node_id}"
                / f"run-{task_id}"
            )
    raise AssertionError(f"the daemon has no {controller} v1 group")


def test_this_host_offers_v1_controllers_for_every_limit() -> None:
    # The tests below rely on it; the daemon logs the same at start.
    limiter = Limiter("probe-limits")
    try:
        assert limiter.mechanisms == {
            "memory_max": "cgroup1",
            "pids_max": "cgroup1",
            "cpu_max": "cgroup1",
        }, "this host has no writable v1 memory/pids/cpu hierarchy: run the tests as root"
    finally:
        limiter.close()


async def test_a_run_oom_killed_at_its_memory_max_is_failed_and_says_why(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    apps = {"hog": {"ref": L + "memory_hog_agent", "memory_max": "300MiB"}}
    daemon = start_daemon(ADK_SUPERVISOR_APPS=json.dumps(apps))
    assert daemon.logged(
        "resource limits: memory_max: cgroup1, pids_max: cgroup1, cpu_max: cgroup1"
    )
    record = await client.wait(await client.submit("hog", "go", user_id="u"), 120)
    assert record["state"] == "failed", record
    assert record["signal"] == "SIGKILL"
    assert "out of memory: the kernel killed" in record["reason"], record
    assert "memory_max=314572800" in record["limit_hit"]


@pytest.mark.parametrize("mechanism", ["cgroup", "pgroup"])
async def test_a_fork_bomb_stops_at_pids_max_and_dies_with_its_run(
    mechanism: str, start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    start_daemon(mechanism, ADK_SUPERVISOR_PIDS_MAX="40")
    task = await client.submit(L + "fork_bomb_agent", "go", user_id="u")
    await until_state(client, task, "running")
    peak = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        peak = max(peak, len(_members(task)))
        await asyncio.sleep(0.2)
    assert 20 <= peak <= 40, peak  # it forked up to the limit, never past it
    await client.abort(task, "enough")
    record = await client.wait(task, 60)
    assert record["state"] == "aborted" and record["reason"] == "enough"
    assert "pids_max=40 reached" in record["limit_hit"], record
    assert not [p for p in _members(task) if p.status() != psutil.STATUS_ZOMBIE]


async def test_cpu_max_throttles_a_run(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon(ADK_SUPERVISOR_CPU_MAX="0.2")
    task = await client.submit(L + "cpu_burner_agent", "go", user_id="u")
    running = await until_state(client, task, "running")
    leader = psutil.Process(int(running["pid"]))
    await asyncio.sleep(1)  # past the start-up
    before = leader.cpu_times()
    await asyncio.sleep(3)
    after = leader.cpu_times()
    used = (after.user + after.system) - (before.user + before.system)
    stat = (_v1_group("cpu", daemon, task) / "cpu.stat").read_text()
    throttled = int(dict(line.split() for line in stat.splitlines())["nr_throttled"])
    await client.abort(task, "done")
    assert (await client.wait(task, 60))["state"] == "aborted"
    assert throttled > 0
    # Two spinning threads would take up to 6 CPU-seconds in 3 s; 0.2 CPU allows 0.6.
    assert used < 1.2, used
