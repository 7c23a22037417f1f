"""Several supervisors on one Redis: a peer takes over the work of a node that is gone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from agent_runtime import RedisSessionService
from agent_runtime.keys import RUNS_GROUP, KeySchema
from agent_runtime.task_store import TaskState
from supervisor.client import SupervisorClient
from supervisor.process import boot_id

from .daemon_harness import Daemon, until_state
from .history import terminal_events

pytestmark = pytest.mark.anyio

A = "examples.agents:"
# Fast peer timing: heartbeats every 0.3 s, a node is gone after 1.5 s without one.
FAST = {"ADK_SUPERVISOR_HEARTBEAT_INTERVAL_S": "0.3", "ADK_SUPERVISOR_NODE_DEAD_AFTER_S": "1.5"}


@pytest.fixture
def start_node(start_daemon: Callable[..., Daemon]) -> Callable[..., Daemon]:
    """A daemon with fast peer timing."""
    return lambda **env: start_daemon(**FAST, **env)


async def test_peer_fails_the_runs_of_a_node_whose_daemon_died(
    start_node: Callable[..., Daemon], client: SupervisorClient
) -> None:
    first, second = start_node(), start_node()
    task = await client.submit(A + "slow_agent", "go", user_id="u")
    record = await until_state(client, task, "running")
    dead, survivor = (first, second) if record["node_id"] == first.node_id else (second, first)
    dead.kill9()
    failed = await until_state(client, task, "failed", timeout=30)
    assert failed["reason"].startswith(f"orphaned: node {dead.node_id} stopped heartbeating")
    assert f"taken over by {survivor.node_id}" in failed["reason"]
    assert len(await terminal_events(client.store, task)) == 1
    assert survivor.logged(f"took over node {dead.node_id}")
    # The survivor goes on serving, and the dead node left the registry.
    done = await client.wait(await client.submit(A + "weather_agent", "hi", user_id="u"), 60)
    assert done["state"] == "completed" and done["node_id"] == survivor.node_id
    members = await client.client.smembers(client.store.keys.nodes)
    assert dead.node_id.encode() not in members


async def test_two_peers_take_over_a_gone_node_exactly_once(
    start_node: Callable[..., Daemon], client: SupervisorClient
) -> None:
    prefix = client.store.key_prefix
    redis = client.client
    # A node that died holding five running runs and one run it took but never started.
    await redis.sadd(KeySchema(prefix).nodes, "ghost")
    orphans = [f"orphan-{i}" for i in range(5)]
    for task_id in orphans:
        await client.store.create(
            task_id,
            TaskState.RUNNING,
            {
                "node_id": "ghost",
                "boot_id": boot_id(),
                "pid": 999_999,
                "start_ticks": 1,
                "app": "weather",
                "user_id": "u",
                "session_id": task_id,
            },
        )
    await redis.sadd(KeySchema(prefix).node_tasks("ghost"), *orphans)
    stream = KeySchema(prefix).runs
    await redis.xgroup_create(stream, RUNS_GROUP, id="0", mkstream=True)
    queued = await client.submit(A + "weather_agent", "taken, never started", user_id="u")
    taken = await redis.xreadgroup(RUNS_GROUP, "ghost", {stream: ">"}, count=1)
    assert taken and taken[0][1], "the ghost did not take the queued run"

    nodes = [start_node(), start_node()]
    for task_id in orphans:
        record = await until_state(client, task_id, "failed", timeout=30)
        assert record["reason"].startswith("orphaned: node ghost stopped heartbeating")
    done = await client.wait(queued, 60)
    assert done["state"] == "completed"
    assert done["node_id"] in {n.node_id for n in nodes}
    time.sleep(0.5)  # let a second, racing takeover finish its writes
    for task_id in [*orphans, queued]:
        assert len(await terminal_events(client.store, task_id)) == 1, task_id
    assert b"ghost" not in await redis.smembers(KeySchema(prefix).nodes)
    consumers = await redis.xinfo_consumers(stream, RUNS_GROUP)
    assert all(c["name"] not in ("ghost", b"ghost") for c in consumers)


def _tree(task_id: str) -> list[int]:
    marker = f"ADK_SUPERVISOR_TASK_ID={task_id}".encode()
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if marker in Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0"):
                found.append(proc.pid)
    return found


async def test_node_cut_off_from_redis_kills_the_runs_a_peer_ended(
    tmp_path: Path, redis_url: str, key_prefix: str, client: SupervisorClient
) -> None:
    admin = client.client
    user = f"cut-{key_prefix.strip(':')}"
    await admin.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all")
    own_url = redis_url.replace("unix://", f"unix://{user}:pw@", 1)
    cut = Daemon(own_url, key_prefix, tmp_path / "cut", "auto", **FAST)
    peer = Daemon(redis_url, key_prefix, tmp_path / "peer", "auto", **FAST)
    try:
        cut.start()
        task = await client.submit(A + "slow_agent", "go", user_id="u")
        await until_state(client, task, "running")
        # Cut the node off only once its agent sleeps in its slow tool: until then the
        # run itself needs Redis (it shares the node's Redis user).
        async with RedisSessionService(redis_url, key_prefix) as sessions:
            for _ in range(1500):
                s = await sessions.get_session(app_name="slow", user_id="u", session_id=task)
                if s is not None and any(e.get_function_calls() for e in s.events):
                    break
                await asyncio.sleep(0.02)
        # Partition: this node alone can no longer reach Redis; its run goes on.
        await admin.execute_command("ACL", "SETUSER", user, "off")
        await admin.execute_command("CLIENT", "KILL", "USER", user)
        peer.start()
        failed = await until_state(client, task, "failed", timeout=30)
        assert failed["reason"].startswith(f"orphaned: node {cut.node_id} stopped heartbeating")
        assert _tree(task), "the cut-off node's run should still be alive during the partition"
        # Back: the node learns a peer ended its run, and kills what it would leave behind.
        await admin.execute_command("ACL", "SETUSER", user, "on")
        deadline = time.monotonic() + 30
        while _tree(task) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert _tree(task) == [], "the run outlived its record"
        assert "by a peer while this node was cut off" in cut.log()
        assert (await client.get(task))["state"] == "failed"  # the peer's verdict stands
        members = await admin.smembers(KeySchema(key_prefix).nodes)
        assert cut.node_id.encode() in members, "the node did not register again"
    finally:
        cut.stop()
        peer.stop()
        await admin.execute_command("ACL", "DELUSER", user)


async def test_a_frozen_node_kills_the_run_a_peer_ended_once_it_thaws(
    start_node: Callable[..., Daemon], client: SupervisorClient
) -> None:
    frozen = start_node()
    task = await client.submit(A + "slow_agent", "go", user_id="u")
    await until_state(client, task, "running")
    peer = start_node()
    # Frozen, the node sends no heartbeat; Redis stays fine, so once thawed it notices
    # no outage at all: it used to keep the run alive for good.
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        failed = await until_state(client, task, "failed", timeout=30)
        assert f"taken over by {peer.node_id}" in failed["reason"]
        assert _tree(task), "the frozen node's run should live while the node is frozen"
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10  # a heartbeat is 0.3 s here
    while _tree(task) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _tree(task) == [], "the run outlived its record"
    assert frozen.logged("by a peer while this node was cut off from Redis or frozen")
    assert (await client.get(task))["state"] == "failed"  # the peer's verdict stands
