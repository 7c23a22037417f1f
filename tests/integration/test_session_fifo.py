"""One live run per session: a run for a busy session waits its turn (FIFO), or is refused.

Two runs writing one ADK session at once make one of them fail with
``StaleSessionError`` half-way (the slow agent's tool returns into a session the
other run appended to meanwhile). Real daemons, real runs, one Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable

import pytest

from agent_runtime import RedisSessionService
from agent_runtime.keys import RUNS_GROUP, KeySchema
from agent_runtime.task_store import SessionRef, TaskState, TaskStore
from supervisor.client import SupervisorClient
from supervisor.errors import SessionBusyError

from .daemon_harness import Daemon, until_state

pytestmark = pytest.mark.anyio

SLOW = "examples.agents:slow_agent"  # its tool sleeps ADK_EXAMPLE_HOLD_S seconds
ADK_APP = "slow"  # the agent's own name: the ADK app its sessions live under


def _hold(seconds: float, slots: int = 4) -> dict[str, str]:
    return {
        "ADK_EXAMPLE_HOLD_S": str(seconds),
        "ADK_SUPERVISOR_MAX_CONCURRENT_RUNS": str(slots),
    }


async def _ended(client: SupervisorClient, *tasks: str) -> list[dict[str, str]]:
    records = [await client.wait(task, 90) for task in tasks]
    for record in records:
        assert record["state"] == "completed", (record.get("reason"), record.get("error"))
        assert "StaleSessionError" not in record.get("error", "")
    return records


def _one_after_the_other(records: list[dict[str, str]]) -> None:
    for before, after in itertools.pairwise(records):
        assert float(after["started_at"]) >= float(before["ended_at"]), (before, after)


async def _user_messages(sessions: RedisSessionService, session_id: str) -> list[str]:
    session = await sessions.get_session(app_name=ADK_APP, user_id="u", session_id=session_id)
    assert session is not None
    return [
        part.text or ""
        for event in session.events
        if event.author == "user" and event.content and event.content.parts
        for part in event.content.parts
    ]


async def _line_keys(client: SupervisorClient) -> list[str]:
    found: list[str] = []
    for kind in ("session-lease", "session-queue", "task-session", "parked"):
        found += [
            k.decode()
            async for k in client.client.scan_iter(f"{client.store.keys.coordination}{kind}:*")
        ]
    return found


async def test_two_runs_on_one_session_run_one_after_the_other(
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    sessions: RedisSessionService,
) -> None:
    start_daemon(**_hold(1.5))
    first = await client.submit(SLOW, "first", user_id="u", session_id="s")
    await until_state(client, first, "running")
    second = await client.submit(SLOW, "second", user_id="u", session_id="s")
    await asyncio.sleep(0.5)  # long enough for the daemon to start it, were it allowed to
    waiting = await client.get(second)
    records = await _ended(client, first, second)
    assert waiting["state"] == "queued" and waiting.get("waiting_for") == first, waiting
    _one_after_the_other(records)
    # The session holds the first run's invocation whole, then the second's.
    session = await sessions.get_session(app_name=ADK_APP, user_id="u", session_id="s")
    assert session is not None
    invocations = [key for key, _ in itertools.groupby(e.invocation_id for e in session.events)]
    assert invocations == [r["invocation_id"] for r in records]
    assert await _user_messages(sessions, "s") == ["first", "second"]
    assert "waiting_for" not in records[1]
    assert await _line_keys(client) == []  # the line is gone with its last run


async def test_three_runs_across_two_daemons_keep_submit_order(
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    sessions: RedisSessionService,
) -> None:
    start_daemon(**_hold(1, slots=2))
    start_daemon(**_hold(1, slots=2))
    tasks = [await client.submit(SLOW, f"m{i}", user_id="u", session_id="s3") for i in range(3)]
    queued = [await client.get(t) for t in tasks]
    assert [r.get("waiting_for") for r in queued] == [None, tasks[0], tasks[1]]
    records = await _ended(client, *tasks)
    _one_after_the_other(records)
    assert await _user_messages(sessions, "s3") == ["m0", "m1", "m2"]
    assert await _line_keys(client) == []


async def test_refuse_mode_refuses_at_once_naming_the_live_run(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon(**_hold(3))
    first = await client.submit(SLOW, "first", user_id="u", session_id="r")
    await until_state(client, first, "running")
    with pytest.raises(SessionBusyError) as busy:
        await client.submit(SLOW, "no", user_id="u", session_id="r", if_busy="refuse")
    assert busy.value.task_id == first and first in str(busy.value)
    # The CLI, through the daemon's status socket: exit 1 and the reason.
    cli = daemon.cli(
        "submit", SLOW, "no", "--user-id", "u", "--session-id", "r", "--if-busy", "refuse"
    )
    assert cli.returncode == 1 and first in cli.stderr and "busy" in cli.stderr, cli
    # An entry XADDed by hand (no line at submit) is refused when a daemon reads it.
    await client.client.xadd(
        client.store.keys.runs,
        {
            "task_id": "by-hand",
            "app": SLOW,
            "user_id": "u",
            "session_id": "r",
            "message": "no",
            "if_busy": "refuse",
        },
    )
    refused = await until_state(client, "by-hand", "failed", timeout=10)
    assert refused["reason"] == f"session busy: task {first} holds it (if_busy=refuse)"
    assert (await client.get(first))["state"] == "running"
    # Nothing refused waits: the first ends, and the session is free for a refuse-mode run.
    await _ended(client, first)
    again = await client.submit(SLOW, "now", user_id="u", session_id="r", if_busy="refuse")
    await _ended(client, again)
    assert await _line_keys(client) == []


async def test_an_aborted_waiting_run_is_aborted_at_once_and_the_next_one_runs(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    start_daemon(**_hold(3))
    first = await client.submit(SLOW, "first", user_id="u", session_id="a")
    await until_state(client, first, "running")
    second, third, fourth = [
        await client.submit(SLOW, name, user_id="u", session_id="a")
        for name in ("second", "third", "fourth")
    ]
    assert (await client.get(third))["waiting_for"] == second
    await client.abort(second, "changed my mind")
    aborted = await until_state(client, second, "aborted", timeout=2)
    assert aborted["reason"] == "changed my mind"
    assert (await client.get(first))["state"] == "running"
    # The run behind it now waits for the one ahead of it.
    assert (await client.get(third))["waiting_for"] == first
    # A bare PUBLISH (no durable mark) reaches a daemon, which finds the run waiting.
    await client.client.publish(
        client.store.keys.abort_channel(fourth), json.dumps({"action": "abort", "reason": "bare"})
    )
    await until_state(client, fourth, "aborted", timeout=5)
    assert (await client.get(first))["state"] == "running"
    records = await _ended(client, first, third)
    _one_after_the_other(records)
    for task in (second, fourth):
        record = await client.get(task)
        assert record["state"] == "aborted" and "started_at" not in record, record
    assert await _line_keys(client) == []


async def test_a_daemon_killed_holding_the_session_leaves_it_to_its_reconcile(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon(**_hold(60))
    first = await client.submit(SLOW, "first", user_id="u", session_id="k")
    await until_state(client, first, "running")
    second = await client.submit(SLOW, "second", user_id="u", session_id="k")
    assert (await client.get(second))["waiting_for"] == first
    daemon.kill9()  # the run dies with it (parent-death signal); its record says running
    await asyncio.sleep(1)
    assert (await client.get(second))["state"] == "queued"
    start_daemon(node_id=daemon.node_id, **_hold(1))
    orphan = await until_state(client, first, "failed", timeout=30)
    assert orphan["reason"].startswith("orphaned:")
    (record,) = await _ended(client, second)
    assert float(record["started_at"]) >= float(orphan["ended_at"])
    assert await _line_keys(client) == []


async def test_a_waiting_run_holds_no_slot_and_other_sessions_run_at_once(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    start_daemon(**_hold(3, slots=3))
    first = await client.submit(SLOW, "first", user_id="u", session_id="x")
    await until_state(client, first, "running")
    waiting = await client.submit(SLOW, "waits", user_id="u", session_id="x")
    # Another session of the same user, and the same session id of another user.
    other = await client.submit(SLOW, "other", user_id="u", session_id="y")
    stranger = await client.submit(SLOW, "stranger", user_id="v", session_id="x")
    for task in (other, stranger):
        await until_state(client, task, "running", timeout=10)
    states = {t: (await client.get(t))["state"] for t in (first, waiting, other, stranger)}
    assert states == {first: "running", waiting: "queued", other: "running", stranger: "running"}
    await _ended(client, first, waiting, other, stranger)


async def test_garbage_in_a_sessions_line_blocks_nothing(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, key_prefix: str
) -> None:
    start_daemon(**_hold(0.2))
    keys, redis = KeySchema(key_prefix), client.client
    # Keys of the wrong type where a line's keys go, a lease naming a run that never was,
    # a queue of runs that never were, a parked entry of no run.
    await redis.hset(keys.session_lease(SLOW, "u", "g1"), "not", "a string")
    await redis.set(keys.session_queue(SLOW, "u", "g1"), "not a list")
    await redis.set(keys.session_lease(SLOW, "u", "g2"), "ghost")
    await redis.rpush(keys.session_queue(SLOW, "u", "g2"), "ghost-1", "ghost-2")
    await redis.hset(keys.parked_run("ghost-1"), mapping={"task_id": "ghost-1", "app": SLOW})
    tasks = [
        await client.submit(SLOW, f"{session}-{i}", user_id="u", session_id=session)
        for session in ("g1", "g2")
        for i in range(2)
    ]
    records = await _ended(client, *tasks)
    _one_after_the_other(records[:2])
    _one_after_the_other(records[2:])
    assert not await client.store.get("ghost-1")  # the parked entry of no run never ran
    assert await _line_keys(client) == []


async def _plant(store: TaskStore, key: str, kind: str) -> None:
    redis = store.client
    await redis.delete(key)
    if kind == "string":
        await redis.set(key, "ghost")
    elif kind == "hash":
        await redis.hset(key, mapping={"task_id": "ghost", "state": "queued"})
    elif kind == "list":
        await redis.rpush(key, "ghost", "nobody")
    elif kind == "set":
        await redis.sadd(key, "ghost")
    elif kind == "zset":
        await redis.zadd(key, {"ghost": 1})
    else:
        await redis.xadd(key, {"task_id": "ghost"})


@pytest.mark.parametrize("kind", ["string", "hash", "list", "set", "zset", "stream"])
async def test_the_line_scripts_take_garbage_of_any_type_in_every_line_key(
    store: TaskStore, kind: str
) -> None:
    keys, session = store.keys, SessionRef(SLOW, "u", "s")
    await store.client.xgroup_create(keys.runs, RUNS_GROUP, id="0", mkstream=True)
    for key in (
        keys.session_lease(*session),
        keys.session_queue(*session),
        keys.task_session("t2"),
        keys.parked_run("t1"),
        keys.parked_run("t2"),
    ):
        await _plant(store, key, kind)
    await store.client.hset(keys.task("ghost"), "state", "queued")  # a lease may name it
    await store.client.set(keys.task_session("ghost"), "elsewhere")
    entry = {"task_id": "t2", "app": SLOW, "user_id": "u", "session_id": "s", "message": "hi"}
    entry1 = {**entry, "task_id": "t1"}
    first = await store.submit("t1", {"app": SLOW}, entry1, session)
    second = await store.submit("t2", {"app": SLOW}, entry, session)
    # A lease naming the queued "ghost", or a queue with it first: the ghost holds the
    # session (it is a run, as far as Redis says); a queue's "nobody" is no run at all.
    ahead = {"string": "ghost", "list": "nobody"}.get(kind)
    assert (first.outcome, first.other) == ("ok", ahead)
    assert (second.outcome, second.other) == ("ok", "t1")
    parked = await store.claim("t2", {"node_id": "n"}, session, "0-1", entry)
    assert (parked.outcome, parked.other) == ("waiting", "t1")
    assert await store.client.hgetall(keys.parked_run("t2")) == {
        k.encode(): v.encode() for k, v in entry.items()
    }
    if ahead is not None:
        assert (await store.claim("t1", {}, session, "0-2", entry1)).outcome == "waiting"
        # Its end is recorded, but its own line is elsewhere: the lease is taken back later.
        await store.transition("ghost", TaskState.FAILED)
    assert (await store.claim("t1", {}, session, "0-2", entry1)).outcome == "ok"
    assert (await store.transition("t1", TaskState.COMPLETED)).applied
    # The second's turn: it holds the lease, and its entry is back on the runs stream.
    assert await store.session_holder(session) == "t2"
    assert (await store.client.xrange(keys.runs))[-1][1] == {
        k.encode(): v.encode() for k, v in entry.items()
    }
    assert (await store.claim("t2", {}, session, "0-3", entry)).outcome == "ok"
    assert (await store.transition("t2", TaskState.COMPLETED)).applied
    for key in (
        keys.session_lease(*session),
        keys.session_queue(*session),
        keys.task_session("t1"),
        keys.task_session("t2"),
        keys.parked_run("t2"),
    ):
        assert not await store.client.exists(key), key
