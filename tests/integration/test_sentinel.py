"""Redis Sentinel: the daemon, the client and the session service through ``redis+sentinel://``.

Real servers: one master, one replica and three sentinels (:mod:`.sentinel_topology`),
and a real ``SENTINEL FAILOVER`` while runs and appends are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from google.adk.errors._stale_session_error import StaleSessionError
from google.adk.events.event import Event

from agent_runtime import RedisSessionService
from agent_runtime.keys import KeySchema
from agent_runtime.redis_connection import RedisUnavailableError, connect, translate_redis_errors
from agent_runtime.redis_url import parse_sentinel_url, redact_url
from supervisor.client import SupervisorClient
from supervisor.run_acl import with_credentials

from .daemon_harness import ROOT, Daemon, until_state
from .sentinel_topology import SentinelTopology

pytestmark = pytest.mark.anyio

A = "examples.agents:"


@pytest.fixture
def topology() -> Iterator[SentinelTopology]:
    """A fresh deployment per test: a failover changes who is master."""
    deployment = SentinelTopology()
    yield deployment
    deployment.cleanup()


def test_sentinel_url_form() -> None:
    url = "redis+sentinel://u:p%3Aw@h1:26379,h2:26380/mym/3?sentinel_password=s&wait_replicas=1"
    parsed = parse_sentinel_url(url)
    assert parsed.sentinels == (("h1", 26379), ("h2", 26380))
    assert (parsed.service, parsed.db, parsed.username, parsed.password) == ("mym", 3, "u", "p:w")
    assert (parsed.sentinel_password, parsed.wait_replicas, parsed.tls) == ("s", 1, False)
    assert "p%3Aw" not in redact_url(url) and "=s&" not in redact_url(url)
    assert parse_sentinel_url("rediss+sentinel://h1/m").tls
    # A run's own ACL user replaces the credentials and keeps the sentinel form.
    per_run = with_credentials(url, "run:1", "pw")
    assert per_run.startswith("redis+sentinel://run%3A1:pw@h1:26379,h2:26380/mym/3?")
    assert parse_sentinel_url(per_run).username == "run:1"
    for bad in ("redis+sentinel://h1:x/m", "redis+sentinel://h1", "redis+sentinel://h/m?typo=1"):
        with pytest.raises(ValueError):
            parse_sentinel_url(bad)


async def test_daemon_runs_and_aborts_through_sentinel(
    topology: SentinelTopology, start_daemon: Callable[..., Daemon], key_prefix: str
) -> None:
    url = topology.url()
    start_daemon(url=url, ADK_EXAMPLE_HOLD_S="60")
    async with SupervisorClient(url, key_prefix) as client:
        done = await client.submit(A + "weather_agent", "weather?", user_id="u")
        held = await client.submit(A + "slow_agent", "go", user_id="u")
        assert (await client.wait(done, 60))["state"] == "completed"
        await until_state(client, held, "running")
        await client.abort(held, "enough")
        assert (await client.wait(held, 30))["state"] == "aborted"
    with topology.node(topology.master_port()) as master:
        assert master.hget(f"{key_prefix}{{{key_prefix}}}task:{held}", "state") == b"aborted"


async def test_daemon_follows_a_failover_during_a_run(
    topology: SentinelTopology, start_daemon: Callable[..., Daemon], key_prefix: str
) -> None:
    url = topology.url()
    daemon = start_daemon(url=url, ADK_EXAMPLE_HOLD_S="6")
    async with SupervisorClient(url, key_prefix) as client:
        held = await client.submit(A + "slow_agent", "go", user_id="u")
        to_abort = await client.submit(A + "slow_agent", "go", user_id="u")
        await until_state(client, held, "running")
        await until_state(client, to_abort, "running")
        old, new = await asyncio.to_thread(topology.failover)
        failed_over_at = time.time()
        # An abort sent during the failover's aftermath reaches the daemon (pub/sub
        # reconnects to the new master) and lands there.
        await client.abort(to_abort, "during failover")
        assert (await client.wait(to_abort, 30))["state"] == "aborted"
        assert (await client.wait(held, 60))["state"] == "completed"
    heartbeat = KeySchema(key_prefix).node_heartbeat(daemon.node_id)
    with topology.node(new) as master:
        assert master.hget(f"{key_prefix}{{{key_prefix}}}task:{held}", "state") == b"completed"
        assert master.hget(f"{key_prefix}{{{key_prefix}}}task:{to_abort}", "state") == b"aborted"
        deadline = time.monotonic() + 30
        while True:
            raw = master.get(heartbeat)
            if raw is not None and json.loads(raw)["at"] > failed_over_at:
                break
            assert time.monotonic() < deadline, f"no heartbeat on the new master {new}"
            await asyncio.sleep(0.1)
    # Once the old master follows the new one, what it holds is what the new one has.
    await asyncio.to_thread(topology.until_demoted, old)
    with topology.node(old) as demoted:
        assert demoted.hget(f"{key_prefix}{{{key_prefix}}}task:{held}", "state") == b"completed"


async def _append_until(
    sessions: RedisSessionService, stop: asyncio.Event, acknowledged: list[str]
) -> tuple[int, float]:
    """Appends events back to back, retrying each when refused.

    Returns the retries and the longest time between two acknowledged appends.
    """
    session = await sessions.create_session(app_name="app", user_id="u", session_id="s")
    retries = 0
    n = 0
    last = time.monotonic()
    longest = 0.0
    while not stop.is_set():
        event = Event(author="user", invocation_id=f"i{n}", id=f"e{n:06d}")
        while True:
            try:
                await sessions.append_event(session, event)
                break
            except RedisUnavailableError:
                # Not acknowledged: the same append again (one that was stored is
                # recognised, and must reach a replica too before it counts).
                retries += 1
                await asyncio.sleep(0.05)
            except StaleSessionError:
                # Without WAIT: the master that took the last appends was demoted and
                # resynced, and they are gone; read the session again and go on.
                retries += 1
                with contextlib.suppress(RedisUnavailableError):
                    fresh = await sessions.get_session(app_name="app", user_id="u", session_id="s")
                    session = fresh or session
        acknowledged.append(event.id)
        longest = max(longest, time.monotonic() - last)
        last = time.monotonic()
        n += 1
    return retries, longest


async def _appends_lost_across_failover(
    topology: SentinelTopology, key_prefix: str, query: str
) -> tuple[int, int, int, float]:
    """(acknowledged, lost, retries, longest stall) of appends through one forced failover."""
    sessions = RedisSessionService(topology.url(query), key_prefix=key_prefix)
    acknowledged: list[str] = []
    stop = asyncio.Event()
    writer = asyncio.create_task(_append_until(sessions, stop, acknowledged))
    try:
        await asyncio.sleep(1)
        old, _new = await asyncio.to_thread(topology.failover)
        # Through the window where the demoted master still takes writes.
        await asyncio.to_thread(topology.until_demoted, old)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        retries, longest = await writer
    stored = await sessions.get_session(app_name="app", user_id="u", session_id="s")
    await sessions.close()
    assert stored is not None
    kept = {event.id for event in stored.events}
    lost = [event_id for event_id in acknowledged if event_id not in kept]
    return len(acknowledged), len(lost), retries, longest


async def test_no_acknowledged_append_is_lost_across_a_failover_with_wait(
    topology: SentinelTopology, key_prefix: str
) -> None:
    acknowledged, lost, retries, longest = await _appends_lost_across_failover(
        topology, key_prefix, "wait_replicas=1&wait_timeout_ms=500"
    )
    print(
        f"wait_replicas=1: {acknowledged} acknowledged, {lost} lost, {retries} retried, "
        f"longest stall {longest:.2f}s"
    )
    assert acknowledged > 100
    assert lost == 0


async def test_noreplicas_and_readonly_are_retryable(
    topology: SentinelTopology, key_prefix: str
) -> None:
    with topology.node(topology.master.port) as master:
        master.config_set("min-replicas-max-lag", 1)
        master.config_set("min-replicas-to-write", 1)
    topology.replica.kill()
    sessions = RedisSessionService(topology.url(), key_prefix=key_prefix)
    deadline = time.monotonic() + 15
    with pytest.raises(RedisUnavailableError, match="NOREPLICAS"):
        while time.monotonic() < deadline:
            await sessions.create_session(app_name="app", user_id="u")
            await asyncio.sleep(0.1)
    await sessions.close()
    # A write to a replica (a demoted master) is retryable too, not a raw ResponseError.
    topology.replica.start()
    replica = connect(topology.replica.tcp_url)
    with pytest.raises(RedisUnavailableError, match="READONLY"):
        async with translate_redis_errors("the replica"):
            await replica.set(f"{key_prefix}x", 1)
    await replica.aclose()


def test_check_config_explains_a_sentinel_url() -> None:
    url = "redis+sentinel://u:secret@127.0.0.1:26379,127.0.0.1:26380/mym?wait_replicas=1"
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "check-config"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ADK_SUPERVISOR_REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "redis: Sentinel: master 'mym'" in done.stdout
    assert "secret" not in done.stdout


async def test_daemon_counts_noreplicas_as_an_outage(
    topology: SentinelTopology, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(url=topology.url(), ADK_SUPERVISOR_HEARTBEAT_INTERVAL_S="0.3")
    with topology.node(topology.master.port) as master:
        master.config_set("min-replicas-max-lag", 1)
        master.config_set("min-replicas-to-write", 1)
    topology.replica.kill()
    assert daemon.logged("Redis lost", timeout=20), daemon.log()
    log = daemon.log()
    assert "NOREPLICAS" in log
    # Not taken for a key of the wrong type or a broken node registry.
    assert "peers cannot see this node" not in log
