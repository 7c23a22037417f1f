"""Durable runs (issue 12): a run of an app with ``on_orphan = "resume"`` whose process died
without an end of its own is resumed from its persisted session, once, fenced by its epoch.

Real daemons, real signals, a scripted model and slow tools that log every execution.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from agent_runtime.durable import OUTCOME_UNKNOWN
from agent_runtime.sessions.service import FencedWriteError, RedisSessionService
from agent_runtime.task_store import SessionRef, TaskState, TaskStore
from supervisor.client import SupervisorClient

from .daemon_harness import Daemon, until_state

pytestmark = pytest.mark.anyio

D = "tests.integration.durable_agents:"
APPS = {
    "durable": {
        "ref": D + "durable_app",
        "on_orphan": "resume",
        "max_attempts": 3,
        "idempotent_tools": ["slow_idem"],
    },
    "poison": {"ref": D + "poison_app", "on_orphan": "resume", "max_attempts": 2},
}


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def _until_logged(log: Path, text: str, count: int = 1, timeout: float = 60) -> float:
    """The time of the ``count``-th line of ``log`` holding ``text``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in _lines(log) if text in line]
        if len(found) >= count:
            return float(found[count - 1].split()[0])
        await asyncio.sleep(0.02)
    raise AssertionError(f"{text!r} x{count} never logged: {_lines(log)}")


async def test_killed_mid_tool_resumes_with_each_effect_as_the_journal_promises(
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    sessions: RedisSessionService,
    tmp_path: Path,
) -> None:
    log = tmp_path / "tools.log"
    env = {"ADK_SUPERVISOR_APPS": json.dumps(APPS), "DURABLE_TEST_LOG": str(log)}
    daemon = start_daemon(state="a", **env)
    task = await client.submit("durable", "go", user_id="u", session_id="s1")

    # 1. The daemon is kill -9ed while the non-idempotent tool runs (its run dies with it).
    await _until_logged(log, "slow_effect start")
    daemon.kill9()
    restarted = time.time()
    daemon = start_daemon(state="a", node_id=daemon.node_id, **env)
    # 2. The resumed run goes on to the idempotent tool: a leader kill -9 from outside.
    first_idem = await _until_logged(log, "slow_idem start")
    print(f"daemon restart -> next tool running: {first_idem - restarted:.2f}s")
    record = await until_state(client, task, "running")
    os.kill(int(record["pid"]), signal.SIGKILL)  # the leader: it leads its group
    killed = time.time()
    again = await _until_logged(log, "slow_idem start", count=2)
    print(f"leader kill -9 -> idempotent tool running again: {again - killed:.2f}s")

    record = await until_state(client, task, "completed")
    assert record["attempt"] == "3" and record["epoch"] == "2", record
    lines = _lines(log)
    effects = [line for line in lines if "slow_effect start" in line]
    idems = [line.split()[-1] for line in lines if "slow_idem start" in line]
    assert len(effects) == 1, lines  # never run again: its outcome is unknown
    assert len(idems) == 2 and idems[0] == idems[1] and idems[0].startswith(f"{task}:"), lines

    session = await sessions.get_session(app_name="durable", user_id="u", session_id="s1")
    assert session is not None
    users = [
        e
        for e in session.events
        if e.author == "user"
        and e.content
        and e.content.parts
        and any(p.text == "go" for p in e.content.parts)
    ]
    assert len(users) == 1, [e.model_dump(exclude_none=True) for e in session.events]
    answers = {
        p.function_response.name: p.function_response.response
        for e in session.events
        for p in (e.content.parts if e.content else None) or []
        if p.function_response is not None
    }
    assert answers["slow_effect"] == {"error": OUTCOME_UNKNOWN}, answers
    # The model saw the unknown outcome (it answers with every tool response it was given).
    texts = [
        p.text
        for e in session.events
        for p in (e.content.parts if e.content else None) or []
        if p.text and p.text.startswith("done: ")
    ]
    assert len(texts) == 1 and OUTCOME_UNKNOWN in texts[0], texts
    history = [
        json.loads(v[b"event"])
        for _, v in await client.store.client.xrange(client.store.keys.task_history)
        if json.loads(v[b"event"])["task_id"] == task
    ]
    # The history append follows its transition as a second command: under load a
    # daemon's `starting` can land before the client's `queued` (each carries its time).
    history.sort(key=lambda h: h["at"])
    assert [h["state"] for h in history] == [
        "queued",
        "starting",
        "running",
        "queued",
        "starting",
        "running",
        "queued",
        "starting",
        "running",
        "completed",
    ], history


async def test_a_poison_run_stops_after_max_attempts(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, tmp_path: Path
) -> None:
    log = tmp_path / "tools.log"
    start_daemon(ADK_SUPERVISOR_APPS=json.dumps(APPS), DURABLE_TEST_LOG=str(log))
    task = await client.submit("poison", "go", user_id="u")
    record = await until_state(client, task, "failed")
    assert record["attempt"] == "2", record
    assert "SIGKILL" in record["reason"] and "max_attempts" in record["reason"], record
    assert len([line for line in _lines(log) if "poison call" in line]) == 2


async def test_two_resumers_at_once_resume_a_run_once(store: TaskStore, key_prefix: str) -> None:
    session = SessionRef("durable", "u", "race")
    await store.submit(
        "t-race",
        {"app": "durable", "user_id": "u"},
        {"task_id": "t-race", "app": "durable", "user_id": "u", "message": "go"},
        session,
    )
    await store.client.delete(store.keys.runs)
    await store.save_resume_entry(
        "t-race", {"task_id": "t-race", "app": "durable", "user_id": "u", "message": "go"}, 3
    )
    await store.transition("t-race", TaskState.STARTING)
    await store.transition("t-race", TaskState.RUNNING)
    results = []

    async def one() -> None:
        results.append((await store.resume("t-race", "orphaned: test")).outcome)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(one)
    assert sorted(results) == ["rejected"] * 7 + ["resumed"], results
    assert await store.client.xlen(store.keys.runs) == 1
    record = await store.get("t-race")
    assert record is not None and record["state"] == "queued" and record["epoch"] == "1"
    # The session stays held by the run across its resume.
    assert await store.session_holder(session) == "t-race"


async def test_a_stale_epoch_cannot_append_to_the_session(
    redis_url: str, key_prefix: str, store: TaskStore
) -> None:
    fence = store.keys.task_epoch("t-fence")
    async with RedisSessionService(redis_url, key_prefix, fence=(fence, 0)) as stale:
        created = await stale.create_session(app_name="durable", user_id="u", session_id="f")
        from google.adk.events.event import Event

        await stale.append_event(created, Event(author="user", invocation_id="i"))
        await store.client.set(fence, "1")  # a resume elsewhere raised the epoch
        with pytest.raises(FencedWriteError, match="resumed elsewhere"):
            await stale.append_event(created, Event(author="user", invocation_id="i"))
        again = await stale.get_session(app_name="durable", user_id="u", session_id="f")
        assert again is not None and len(again.events) == 1


def test_check_config_refuses_resume_for_an_app_that_is_not_resumable(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    apps = {
        "plain": {"ref": D + "not_resumable_app", "on_orphan": "resume"},
        "gone": {"ref": "tests.integration.no_such_module:app", "on_orphan": "resume"},
        # Checked last, it ends the checker's interpreter: it is named as not checked.
        "zexit": {"ref": "tests.integration.exiting_app:app", "on_orphan": "resume"},
        **APPS,
    }
    daemon = Daemon(None, "x:", tmp_path / "s", "auto", ADK_SUPERVISOR_APPS=json.dumps(apps))
    done = daemon.cli("check-config")
    assert done.returncode == 2, done
    # Every durable app is checked (in one interpreter), each problem named by its app.
    assert "[apps.plain]" in done.stderr and "ResumabilityConfig(is_resumable=True)" in done.stderr
    assert "[apps.gone]" in done.stderr and "no_such_module" in done.stderr
    assert "[apps.durable]" not in done.stderr
    assert '[apps.zexit] on_orphan = "resume": cannot check' in done.stderr
    daemon.env["ADK_SUPERVISOR_APPS"] = json.dumps(APPS)
    assert daemon.cli("check-config").returncode == 0


async def test_a_finished_runs_tool_journal_expires_with_its_record(store: TaskStore) -> None:
    # The journal of a durable run used to be kept for ever.
    keys = store.keys
    timed = TaskStore(store.client, keys.prefix, record_ttl_s=60)
    await timed.create("t-journal", TaskState.QUEUED, {"app": "a"})
    await store.client.hset(keys.tool_journal("t-journal"), "call-1", "started@0")
    assert await store.client.pttl(keys.tool_journal("t-journal")) == -1
    await timed.transition("t-journal", TaskState.FAILED, {"reason": "x"})
    assert 0 < await store.client.pttl(keys.tool_journal("t-journal")) <= 60_000
