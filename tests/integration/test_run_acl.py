"""Runs' own Redis credentials (``run_credentials``), tried with a real ACL from inside real runs.

A probe agent (``acl_agents.py``) sends Redis commands through the connection
its run was given and reports which Redis refused: a run must not be able to
abort anyone, touch a node's keys, queue runs, or (with per-run users) touch
another task's record or another app's sessions, while its own ADK session and
its own record work as before.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from google.adk.sessions import Session
from redis.exceptions import NoPermissionError

from agent_runtime import RedisSessionService
from agent_runtime.keys import KeySchema
from agent_runtime.task_store import TaskState, TaskStore
from supervisor.client import SupervisorClient
from supervisor.ops.redis_server import RedisServer
from supervisor.run_acl import run_key_patterns, run_rules, shared_rules, with_credentials

from .daemon_harness import ROOT, Daemon, until_state
from .session_helpers import text_event

pytestmark = pytest.mark.anyio

APPS = {
    "acl_probe": "tests.integration.acl_agents:probe_agent",
    "slow": "examples.agents:slow_agent",
}
APPS_ENV = json.dumps(APPS)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the shared test Redis with its default (all-powerful) user."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def _run_users(raw: aioredis.Redis, prefix: str) -> set[str]:
    users: list[str] = await raw.execute_command("ACL", "USERS")
    return {u for u in users if u.startswith(f"{prefix}run:")}


async def _until_no_run_users(raw: aioredis.Redis, prefix: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while await _run_users(raw, prefix):
        if time.monotonic() > deadline:
            raise AssertionError(f"run users left: {await _run_users(raw, prefix)}")
        await asyncio.sleep(0.05)


def _forbidden_plan(prefix: str, node_id: str, victim: str) -> dict[str, list[str]]:
    keys = KeySchema(prefix)
    return {
        "abort_mark": ["SET", keys.abort_mark(victim), '{"action": "abort"}'],
        "abort_publish": ["PUBLISH", keys.abort_channel(victim), "abort"],
        "abort_mark_by_script": [
            "SCRIPT",
            "return redis.call('SET', KEYS[1], 'x')",
            keys.abort_mark(victim),
        ],
        "node_heartbeat": ["SET", keys.node_heartbeat(node_id), "planted"],
        "node_tasks": ["SADD", keys.node_tasks(node_id), victim],
        "nodes": ["SADD", keys.nodes, "ghost"],
        "runs_stream": ["XADD", keys.runs, "*", "task_id", "evil", "app", "acl_probe"],
        "task_history": ["XADD", keys.task_history, "*", "event", "{}"],
        "task_events": ["PUBLISH", keys.task_events, "{}"],
        "acl": ["ACL", "SETUSER", "evil", "on", "nopass", "~*", "+@all"],
        # Read-only probes of admin commands: on a Redis that allowed them (the old code),
        # CONFIG SET or FLUSHALL would wreck the Redis every later test shares.
        "config": ["CONFIG", "GET", "maxmemory"],
        "dbsize": ["DBSIZE"],
        "keys": ["KEYS", "*"],
        "set_anything": ["SET", "unrelated", "x"],
    }


def _per_run_only_plan(prefix: str, victim: str) -> dict[str, list[str]]:
    keys = KeySchema(prefix)
    other_app = keys.app("other_app")
    return {
        "other_record_write": ["HSET", keys.task(victim), "state", "completed"],
        "other_record_read": ["HGETALL", keys.task(victim)],
        "other_app_write": ["HSET", other_app.app_state, "planted", "1"],
        "other_app_read": ["HGETALL", other_app.app_state],
    }


def _allowed_plan(prefix: str, task_id: str, app: str) -> dict[str, list[str]]:
    keys = KeySchema(prefix)
    return {
        "own_record": ["HSET", keys.task(task_id), "probe", "1"],
        "own_app_sessions": ["HGETALL", keys.app(app).app_state],
    }


async def _probe(
    client: SupervisorClient,
    sessions: RedisSessionService,
    plan: dict[str, list[str]],
    task_id: str,
) -> tuple[dict[str, str], dict[str, str]]:
    """Runs the probe agent with ``plan``; returns its report and the task's final record."""
    await client.submit("acl_probe", json.dumps(plan), user_id="u", task_id=task_id)
    record = await client.wait(task_id, 60)
    assert record["state"] == "completed", record
    # The run's session lives under its [apps] name, whatever its agent is called.
    session = await sessions.get_session(app_name="acl_probe", user_id="u", session_id=task_id)
    assert session is not None
    texts = [e.content.parts[0].text for e in session.events if e.author == "acl_probe_agent"]
    assert texts and texts[-1], session.events
    return json.loads(texts[-1]), record


async def _session(sessions: RedisSessionService, app: str, task_id: str) -> Session:
    deadline = time.monotonic() + 30
    while (
        session := await sessions.get_session(app_name=app, user_id="u", session_id=task_id)
    ) is None:
        assert time.monotonic() < deadline, f"no session of {task_id}"
        await asyncio.sleep(0.02)
    return session


def _refused(report: dict[str, str], names: list[str]) -> None:
    wrongly_allowed = {
        n: report[n] for n in names if not report[n].startswith("refused: NoPermissionError")
    }
    assert not wrongly_allowed, f"a run could do: {wrongly_allowed}"


async def test_a_run_can_touch_only_its_app_sessions_and_its_own_record(
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    sessions: RedisSessionService,
    store: TaskStore,
    raw: aioredis.Redis,
    key_prefix: str,
) -> None:
    daemon = start_daemon(ADK_SUPERVISOR_APPS=APPS_ENV)
    assert daemon.logged("run credentials: per_run")
    keys = KeySchema(key_prefix)
    victim = "victim-task"
    await store.create(victim, TaskState.QUEUED, {"app": "slow", "user_id": "u"})
    victim_before = await store.get(victim)
    await sessions.create_session(app_name="other_app", user_id="u", state={"app:theme": "dark"})
    task = "probe-" + uuid.uuid4().hex[:8]
    plan = {
        **_forbidden_plan(key_prefix, daemon.node_id, victim),
        **_per_run_only_plan(key_prefix, victim),
        **_allowed_plan(key_prefix, task, "acl_probe"),
    }

    report, record = await _probe(client, sessions, plan, task)

    _refused(
        report, [*_forbidden_plan(key_prefix, "n", victim), *_per_run_only_plan(key_prefix, victim)]
    )
    assert report["own_record"] == "ok" and report["own_app_sessions"] == "ok", report
    # Nothing was written where the run was refused.
    assert await store.get(victim) == victim_before
    assert await raw.exists(keys.abort_mark(victim)) == 0
    assert await raw.get("unrelated") is None
    assert await raw.get(keys.node_heartbeat(daemon.node_id)) != "planted"
    assert not await raw.sismember(keys.nodes, "ghost")
    assert await store.get("evil") is None
    assert "evil" not in await raw.execute_command("ACL", "USERS")
    assert (await raw.hgetall(keys.app("other_app").app_state)) == {"theme": '"dark"'}
    # What the child writes to its own record still lands there.
    assert record["adk_app"] == "acl_probe" and record["invocation_id"] and record["probe"] == "1"
    await _until_no_run_users(raw, key_prefix)
    denied = await raw.acl_log(count=128)
    assert any(e["username"].endswith(task) for e in denied), "ACL LOG names the run's user"


async def test_a_run_has_its_user_while_it_runs_and_an_abort_still_kills_it(
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    raw: aioredis.Redis,
    key_prefix: str,
) -> None:
    daemon = start_daemon(ADK_SUPERVISOR_APPS=APPS_ENV)
    task = await client.submit("slow", "go", user_id="u")
    await until_state(client, task, "running")
    user = f"{key_prefix}run:{daemon.node_id}:{task}"
    assert await _run_users(raw, key_prefix) == {user}
    info = await raw.acl_getuser(user)
    keys = KeySchema(key_prefix)
    assert sorted(info["keys"]) == sorted(run_key_patterns(key_prefix, task, "slow"))
    assert {f"~{keys.app('slow').base}*", f"~{keys.task(task)}"} <= set(info["keys"])
    assert not info["channels"], info
    (line,) = [u for u in await raw.execute_command("ACL", "LIST") if f" {user} " in u]
    assert " -@all " in line and "+evalsha" in line and " +set " not in line, line
    # The spec file that carried the password is gone once the run read it, and no log
    # line shows a URL with a password.
    assert not list((daemon.state_dir / "specs").iterdir())
    assert not re.search(r"://[^\s/@:]*:(?!\*\*\*@)[^\s/@]+@", daemon.log())

    started = time.monotonic()
    await client.abort(task, "stop")
    record = await until_state(client, task, "aborted", timeout=10)
    assert time.monotonic() - started < 5
    assert record["reason"] == "stop"
    await _until_no_run_users(raw, key_prefix)


async def test_leftover_users_are_deleted_at_start_and_lost_ones_created_again(
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    sessions: RedisSessionService,
    raw: aioredis.Redis,
    key_prefix: str,
) -> None:
    node = f"node-{uuid.uuid4().hex[:8]}"
    leftover = f"{key_prefix}run:{node}:crashed-run"
    another_node = f"{key_prefix}run:other-{node}:its-run"
    for name in (leftover, another_node):
        await raw.execute_command("ACL", "SETUSER", name, "on", "nopass")
    try:
        daemon = start_daemon(
            ADK_SUPERVISOR_APPS=APPS_ENV,
            ADK_SUPERVISOR_HEARTBEAT_INTERVAL_S="0.3",
            ADK_EXAMPLE_HOLD_S="3",
            node_id=node,
        )
        users = await _run_users(raw, key_prefix)
        assert leftover not in users, "a leftover of this node's crashed daemon is deleted"
        assert another_node in users, "another node's users are not this daemon's business"

        # Redis loses the user of a live run (a restart, a failover): its connections go too.
        task = await client.submit("slow", "go", user_id="u")
        await until_state(client, task, "running")
        # While the run waits in its tool (a run that touched Redis right then would fail
        # until the next heartbeat re-creates its user, as after a Redis restart).
        while len((await _session(sessions, "slow", task)).events) < 2:
            await asyncio.sleep(0.02)
        user = f"{key_prefix}run:{node}:{task}"
        await raw.execute_command("ACL", "DELUSER", user)
        deadline = time.monotonic() + 5
        while user not in await _run_users(raw, key_prefix):
            assert time.monotonic() < deadline, "the sweep never created the user again"
            await asyncio.sleep(0.05)
        assert daemon.logged("Redis had lost the users of 1 live runs")
        # The run reconnects with its own password and finishes its session work.
        record = await client.wait(task, 30)
        assert record["state"] == "completed", record
        deadline = time.monotonic() + 10
        while user in await _run_users(raw, key_prefix):
            assert time.monotonic() < deadline, "the run's user outlived it"
            await asyncio.sleep(0.05)
    finally:
        await raw.execute_command("ACL", "DELUSER", leftover, another_node)


async def test_shared_run_user_from_run_redis_url(
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    sessions: RedisSessionService,
    store: TaskStore,
    raw: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> None:
    name, password = f"{key_prefix}shared-runs", secrets.token_hex(16)
    await raw.execute_command("ACL", "SETUSER", name, f">{password}", *shared_rules(key_prefix))
    try:
        daemon = start_daemon(
            ADK_SUPERVISOR_APPS=APPS_ENV,
            ADK_SUPERVISOR_RUN_REDIS_URL=with_credentials(redis_url, name, password),
        )
        assert daemon.logged("run credentials: shared")
        assert password not in daemon.log()
        victim = "victim-task"
        await store.create(victim, TaskState.QUEUED, {"app": "slow", "user_id": "u"})
        task = "probe-" + uuid.uuid4().hex[:8]
        plan = {
            **_forbidden_plan(key_prefix, daemon.node_id, victim),
            **_per_run_only_plan(key_prefix, victim),
            **_allowed_plan(key_prefix, task, "acl_probe"),
        }
        report, _ = await _probe(client, sessions, plan, task)
        _refused(report, list(_forbidden_plan(key_prefix, "n", victim)))
        # What the README says a shared user still can: every record, every app's sessions.
        assert report["other_record_write"] == "ok" and report["other_app_write"] == "ok"
        assert await _run_users(raw, key_prefix) == set()
    finally:
        await raw.execute_command("ACL", "DELUSER", name)


async def test_a_daemon_user_without_acl_rights_falls_back_or_refuses_per_run(
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    raw: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> None:
    name, password = f"{key_prefix}no-acl-daemon", secrets.token_hex(16)
    await raw.execute_command(
        "ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all", "-acl"
    )
    url = with_credentials(redis_url, name, password)
    try:
        with pytest.raises(RuntimeError, match="cannot create ACL users"):
            start_daemon(url=url, ADK_SUPERVISOR_RUN_CREDENTIALS="per_run")

        daemon = start_daemon(url=url, ADK_SUPERVISOR_APPS=APPS_ENV)
        assert daemon.logged("run credentials: daemon: the daemon's Redis user cannot create")
        task = await client.submit("slow", "go", user_id="u", timeout_s=30)
        await until_state(client, task, "running")
        await client.abort(task)
        assert (await until_state(client, task, "aborted"))["state"] == "aborted"
    finally:
        await raw.execute_command("ACL", "DELUSER", name)


async def test_the_session_service_works_within_a_run_users_rules(
    private_redis: RedisServer, key_prefix: str
) -> None:
    """Every call of the session service, on a fresh server (scripts not loaded yet), as a run
    user: a new command in the service must be granted in ``RUN_COMMANDS`` too."""
    admin = aioredis.Redis.from_url(private_redis.url)
    name, password = f"{key_prefix}run:n:t1", secrets.token_hex(16)
    await admin.execute_command(
        "ACL", "SETUSER", name, *run_rules(key_prefix, "t1", "app", password, optional=False)
    )
    url = with_credentials(private_redis.url, name, password)
    try:
        async with RedisSessionService(url, key_prefix, session_ttl=60) as service:
            session = await service.create_session(
                app_name="app", user_id="u", state={"app:a": 1, "user:b": 2, "s": 3}
            )
            await service.append_event(session, text_event("hi", delta={"user:b": 4, "s": 5}))
            await service.append_event(session, text_event("again", author="agent"))
            got = await service.get_session(app_name="app", user_id="u", session_id=session.id)
            assert got is not None and len(got.events) == 2 and got.state["user:b"] == 4
            listed = await service.list_sessions(app_name="app")
            assert [s.id for s in listed.sessions] == [session.id]
            assert len((await service.list_sessions(app_name="app", user_id="u")).sessions) == 1
            assert await service.get_user_state(app_name="app", user_id="u") == {"b": 4}
            await service.delete_session(app_name="app", user_id="u", session_id=session.id)
            assert await service.get_session(app_name="app", user_id="u", session_id="x") is None
            await TaskStore(service.redis, key_prefix).update("t1", {"adk_app": "app"})
            with pytest.raises(NoPermissionError):
                await service.create_session(app_name="another", user_id="u")
            with pytest.raises(NoPermissionError):
                await TaskStore(service.redis, key_prefix).update("t2", {"x": "y"})
    finally:
        await admin.aclose()


def _check_config(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "check-config"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_explains_the_run_credentials() -> None:
    auto = _check_config()
    assert auto.returncode == 0, auto.stderr
    assert "run_credentials: auto: each run gets an ACL user of its own" in auto.stdout

    shared = _check_config(
        ADK_SUPERVISOR_RUN_CREDENTIALS="shared",
        ADK_SUPERVISOR_RUN_REDIS_URL="redis://runs:s3cret@localhost:6379/0",
        ADK_SUPERVISOR_REDIS_URL="redis://daemon:t0psecret@localhost:6379/0",
    )
    assert shared.returncode == 0, shared.stderr
    assert "every run connects with run_redis_url" in shared.stdout
    assert "ACL SETUSER <user> >PASSWORD on resetchannels" in shared.stdout
    assert "s3cret" not in shared.stdout and "t0psecret" not in shared.stdout

    missing = _check_config(ADK_SUPERVISOR_RUN_CREDENTIALS="shared")
    assert missing.returncode == 2
    assert 'run_credentials = "shared" needs run_redis_url' in missing.stderr
