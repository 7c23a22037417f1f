"""Redis Cluster failover during runs and session appends: nothing acknowledged is lost.

Real servers: three primaries with one replica each and a 1 s node timeout (the
``redis_cluster_with_replicas`` fixture, :mod:`tests.cluster_topology`). The primary of
the coordination slot (every task record, events stream and the runs stream) fails over
while a daemon takes a stream of runs and a writer appends to a session in that slot,
through ``?wait_replicas=1``: once by ``CLUSTER FAILOVER`` on its replica, once by
``kill -9``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psutil
import pytest
from google.adk.errors._stale_session_error import StaleSessionError
from google.adk.events.event import Event
from redis.crc import key_slot
from redis.exceptions import RedisError

from agent_runtime import RedisSessionService
from agent_runtime.keys import AppKeys, KeySchema
from agent_runtime.redis_connection import REDIS_ERRORS, RedisUnavailableError, connect
from agent_runtime.redis_url import parse_cluster_url
from agent_runtime.task_store import TERMINAL_STATES
from supervisor.client import SupervisorClient

from ..cluster_topology import ClusterTopology
from .daemon_harness import Daemon, until_state

pytestmark = pytest.mark.anyio

A = "examples.agents:"
WAIT = "wait_replicas=1&wait_timeout_ms=500"

T = TypeVar("T")


async def _retried(call: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
    """``call()`` again while the cluster cannot take it (a failover in progress)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except REDIS_ERRORS:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def _app_in_slot_of(cluster: ClusterTopology, key_prefix: str, primary: int) -> str:
    """An app name whose sessions live on the primary ``primary``."""
    for n in range(1000):
        name = f"app{n}"
        if cluster.slot_owner(key_slot(AppKeys.for_app(key_prefix, name).base.encode())) == primary:
            return name
    raise AssertionError(f"no app name lands on {primary}")


async def _append_until(
    sessions: RedisSessionService, app: str, stop: asyncio.Event, acknowledged: list[str]
) -> int:
    """Appends events back to back, each retried until acknowledged; returns the retries."""
    session = await _retried(lambda: sessions.create_session(app_name=app, user_id="u"))
    session_id = session.id
    retries = 0
    n = 0
    while not stop.is_set():
        event = Event(author="user", invocation_id=f"i{n}", id=f"e{n:06d}")
        while True:
            try:
                await sessions.append_event(session, event)
                break
            except RedisUnavailableError:
                retries += 1
                await asyncio.sleep(0.05)
            except StaleSessionError:
                # The first attempt was stored, its acknowledgement was not: read again.
                retries += 1
                fresh = await _retried(
                    lambda: sessions.get_session(app_name=app, user_id="u", session_id=session_id)
                )
                session = fresh or session
                if any(e.id == event.id for e in session.events):
                    break
        acknowledged.append(event.id)
        n += 1
    return retries


async def _submit_until(client: SupervisorClient, stop: asyncio.Event, ids: list[str]) -> None:
    """Submits a trivial run every 0.2 s; ``ids`` gets those the client acknowledged."""
    while not stop.is_set():
        ids.append(
            await _retried(lambda: client.submit(A + "weather_agent", "weather?", user_id="u"))
        )
        await asyncio.sleep(0.2)


async def _terminal(client: SupervisorClient, task_id: str, timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        record = await _retried(lambda: client.get(task_id))
        if record.get("state") in TERMINAL_STATES:
            return record
        assert time.monotonic() < deadline, f"run {task_id} stuck in {record.get('state')}"
        await asyncio.sleep(0.2)


async def _terminal_entries(client: SupervisorClient, key_prefix: str, task_id: str) -> list[str]:
    """The terminal states the run's events stream holds (exactly one is right)."""
    key = KeySchema(key_prefix).run_events(task_id)
    entries = await _retried(lambda: client.client.xrange(key))
    states = []
    for _id, fields in entries or []:
        assert isinstance(fields, dict)
        if fields.get(b"type") == b"state":
            state = json.loads(fields[b"data"]).get("state")
            if state in TERMINAL_STATES:
                states.append(state)
    return states


async def _failover_during_runs(
    cluster: ClusterTopology,
    start_daemon: Callable[..., Daemon],
    key_prefix: str,
    disrupt: Callable[[int], tuple[int, int, float]],
    heal: Callable[[int], None] = lambda port: None,
    *,
    all_complete: bool = True,
) -> None:
    """Runs and appends go on while ``disrupt(slot)`` fails the coordination slot's
    primary over (returning old, new and how long it took) and ``heal(old)`` gives the
    shard a replica again; then checks nothing acknowledged was lost."""
    url = cluster.url(nodes=len(cluster.ports), query=WAIT)
    daemon = start_daemon(url=url, ADK_EXAMPLE_HOLD_S="60")
    slot = key_slot(KeySchema(key_prefix).coordination.encode())
    primary = cluster.slot_owner(slot)
    app = _app_in_slot_of(cluster, key_prefix, primary)
    sessions = RedisSessionService(url, key_prefix=key_prefix)
    assert sessions.wait_replicas == 1
    acknowledged: list[str] = []
    runs: list[str] = []
    stop = asyncio.Event()
    async with SupervisorClient(url, key_prefix) as client:
        held = [await client.submit(A + "slow_agent", "go", user_id=f"h{n}") for n in range(2)]
        for task_id in held:
            await until_state(client, task_id, "running")
        writer = asyncio.create_task(_append_until(sessions, app, stop, acknowledged))
        submitter = asyncio.create_task(_submit_until(client, stop, runs))
        try:
            await asyncio.sleep(1.5)
            before = (len(acknowledged), len(runs))
            old, new, took = await asyncio.to_thread(disrupt, slot)
            failed_over_at = time.time()
            # An abort published right after the failover is honoured (the daemon kills
            # the run at once; its record may wait in the outbox until the shard has a
            # replica again).
            abort = asyncio.create_task(_retried(lambda: client.abort(held[0], "failover")))
            healed = time.monotonic()
            await asyncio.to_thread(heal, old)
            healed_s = time.monotonic() - healed
            await abort
            await asyncio.sleep(2)
        finally:
            stop.set()
            retries = await writer
            await submitter
        assert len(acknowledged) > before[0] and len(runs) > before[1], "nothing went on"
        assert (await _terminal(client, held[0], 30))["state"] == "aborted"
        await _retried(lambda: client.abort(held[1], "end of test"))
        records = {task_id: await _terminal(client, task_id) for task_id in [*runs, *held]}
        twice = {
            task_id: states
            for task_id in records
            if len(states := await _terminal_entries(client, key_prefix, task_id)) != 1
        }
        heartbeat = await _retried(
            lambda: client.client.get(KeySchema(key_prefix).node_heartbeat(daemon.node_id))
        )
    stored = await _retried(lambda: sessions.list_sessions(app_name=app, user_id="u"))
    session = await _retried(
        lambda: sessions.get_session(app_name=app, user_id="u", session_id=stored.sessions[0].id)
    )
    await sessions.close()
    assert session is not None
    kept = {event.id for event in session.events}
    lost = [event_id for event_id in acknowledged if event_id not in kept]
    states = [record["state"] for record in records.values()]
    print(
        f"{old} -> {new} in {took:.2f}s, replica back {healed_s:.2f}s later; {len(acknowledged)} appends acknowledged, "
        f"{len(lost)} lost, {retries} retried; {len(runs)} runs: "
        f"{ {s: states.count(s) for s in set(states)} }"
    )
    assert lost == [], f"acknowledged appends lost: {lost[:10]}"
    assert twice == {}, f"runs without exactly one terminal entry: {twice}"
    failed = {
        task_id: {k: v for k, v in records[task_id].items() if k in ("reason", "error", "exit")}
        for task_id in runs
        if records[task_id]["state"] != "completed"
    }
    if all_complete:
        assert failed == {}, failed
    else:
        # A run whose child wrote while the shard refused (its session append, its own
        # record fields) may fail: the child does not retry those. It fails once, and
        # says why; it is not lost or stuck.
        assert all(records[task_id]["state"] == "failed" for task_id in failed), failed
    # The daemon lived through it, and writes its heartbeat to the new primary.
    assert psutil.pid_exists(daemon.pid), daemon.log()
    assert heartbeat is not None and json.loads(heartbeat)["at"] > failed_over_at - 1


async def test_forced_failover_of_the_coordination_primary_loses_nothing(
    redis_cluster_with_replicas: ClusterTopology,
    start_daemon: Callable[..., Daemon],
    key_prefix: str,
) -> None:
    cluster = redis_cluster_with_replicas

    def failover(slot: int) -> tuple[int, int, float]:
        started = time.monotonic()
        old, new = cluster.failover(slot)
        return old, new, time.monotonic() - started

    await _failover_during_runs(cluster, start_daemon, key_prefix, failover)


async def test_kill_9_of_the_coordination_primary_loses_nothing(
    redis_cluster_with_replicas: ClusterTopology,
    start_daemon: Callable[..., Daemon],
    key_prefix: str,
) -> None:
    cluster = redis_cluster_with_replicas
    # Its shard has no replica left: with wait_replicas=1 no write there is acknowledged
    # until the killed node is back (as a replica of the new primary).
    await _failover_during_runs(
        cluster, start_daemon, key_prefix, cluster.kill_primary, cluster.restart, all_complete=False
    )


def test_cluster_url_takes_wait_replicas() -> None:
    parsed = parse_cluster_url(f"redis+cluster://h1:7000,h2:7001?{WAIT}")
    assert (parsed.wait_replicas, parsed.wait_timeout_ms) == (1, 500)
    assert parse_cluster_url("redis+cluster://h1").wait_replicas == 0
    for bad in ("redis+cluster://h1?wait_replicas=x", "redis+cluster://h1?wait_timeout_ms=0"):
        with pytest.raises(ValueError):
            parse_cluster_url(bad)


async def test_noreplicas_on_a_cluster_is_retryable(
    redis_cluster_with_replicas: ClusterTopology, key_prefix: str
) -> None:
    """``min-replicas-to-write`` on a primary whose replica is gone: callers get the
    retryable error, not a raw NOREPLICAS reply."""
    cluster = redis_cluster_with_replicas
    app = _app_in_slot_of(cluster, key_prefix, cluster.ports[0])
    primary = cluster.slot_owner(key_slot(AppKeys.for_app(key_prefix, app).base.encode()))
    with cluster.node(primary) as node:
        node.config_set("min-replicas-max-lag", 1)
        node.config_set("min-replicas-to-write", 1)
    cluster.server(cluster.replica_of(primary)).kill()
    sessions = RedisSessionService(cluster.url(nodes=len(cluster.ports)), key_prefix=key_prefix)
    deadline = time.monotonic() + 15
    with pytest.raises(RedisUnavailableError, match="NOREPLICAS"):
        while time.monotonic() < deadline:
            await sessions.create_session(app_name=app, user_id="u")
            await asyncio.sleep(0.1)
    await sessions.close()


async def test_wait_goes_to_the_primary_that_took_the_write(
    redis_cluster_with_replicas: ClusterTopology, key_prefix: str
) -> None:
    """An append through ``?wait_replicas=1`` is acknowledged on a healthy cluster, and
    refused (retryable, may be stored) once the session's primary has no replica left."""
    cluster = redis_cluster_with_replicas
    url = cluster.url(nodes=len(cluster.ports), query=WAIT)
    client = connect(url)
    try:
        sessions = RedisSessionService(redis_client=client, key_prefix=key_prefix)
        assert sessions.wait_replicas == 1
        app = _app_in_slot_of(cluster, key_prefix, cluster.ports[1])
        session = await sessions.create_session(app_name=app, user_id="u")
        await sessions.append_event(session, Event(author="user", invocation_id="i", id="e0"))
        cluster.server(cluster.replica_of(cluster.ports[1])).kill()
        with pytest.raises(RedisUnavailableError, match="0 of 1 replica"):
            await sessions.append_event(session, Event(author="user", invocation_id="i", id="e1"))
    finally:
        with contextlib.suppress(RedisError):
            await client.aclose()
