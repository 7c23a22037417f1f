"""Durable runs across daemons (issue 12): peers racing the resume of a dead node's run, and
a frozen node's stale run fenced off from the session a peer resumed.

Real daemons on one Redis (fast peer timing), real SIGKILL/SIGSTOP, the scripted model and
slow tools of :mod:`.durable_agents`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from google.adk.sessions.session import Session

from agent_runtime.durable import OUTCOME_UNKNOWN
from agent_runtime.sessions.service import RedisSessionService
from agent_runtime.task_store import SessionRef, TaskState, TaskStore
from supervisor.client import SupervisorClient
from supervisor.daemon.resume import EPOCH_FIELD, epochs_read, resume_orphans

from .daemon_harness import Daemon, until_state
from .test_durable_runs import APPS, _lines, _until_logged

pytestmark = pytest.mark.anyio

# Heartbeats every 0.3 s, a node is gone after 1.5 s without one.
FAST = {"ADK_SUPERVISOR_HEARTBEAT_INTERVAL_S": "0.3", "ADK_SUPERVISOR_NODE_DEAD_AFTER_S": "1.5"}


async def _history(client: SupervisorClient, task: str) -> list[str]:
    events = [
        json.loads(v[b"event"])
        for _, v in await client.store.client.xrange(client.store.keys.task_history)
        if json.loads(v[b"event"])["task_id"] == task
    ]
    # Each history append follows its transition as a second command, so under load the
    # daemon's `starting` can land before the client's `queued`: each carries its time.
    return [e["state"] for e in sorted(events, key=lambda e: e["at"])]


def _assert_each_event_once(session: Session) -> dict[str, object]:
    """Every event, call and response is in the session once; returns the responses by tool."""
    dumped = [e.model_dump(exclude_none=True) for e in session.events]
    ids = Counter(e.id for e in session.events)
    assert all(n == 1 for n in ids.values()), dumped
    users = [
        e
        for e in session.events
        if e.author == "user" and e.content and any(p.text == "go" for p in e.content.parts or [])
    ]
    assert len(users) == 1, dumped
    calls = Counter(c.id for e in session.events for c in e.get_function_calls())
    answers = Counter(r.id for e in session.events for r in e.get_function_responses())
    assert calls == answers and all(n == 1 for n in calls.values()), dumped
    texts = [
        p.text
        for e in session.events
        for p in (e.content.parts if e.content else None) or []
        if p.text and p.text.startswith("done: ")
    ]
    assert len(texts) == 1, dumped
    return {r.name or "": r.response for e in session.events for r in e.get_function_responses()}


def _runs_below(daemon: Daemon, task: str) -> list[int]:
    """The live processes below ``daemon`` that belong to ``task`` (forked by its fork server,
    so found by the task id in their environment)."""
    marker = f"ADK_SUPERVISOR_TASK_ID={task}".encode()
    found = []
    try:
        children = psutil.Process(daemon.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for proc in children:
        with contextlib.suppress(OSError, psutil.Error):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if marker in Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0"):
                found.append(proc.pid)
    return found


async def _journal(client: SupervisorClient, task: str) -> list[str]:
    raw = await client.store.client.hgetall(client.store.keys.tool_journal(task))
    return sorted(v.decode() for v in raw.values())


async def test_peers_racing_the_takeover_resume_a_killed_run_once(
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    sessions: RedisSessionService,
    tmp_path: Path,
) -> None:
    log = tmp_path / "tools.log"
    env = {**FAST, "ADK_SUPERVISOR_APPS": json.dumps(APPS), "DURABLE_TEST_LOG": str(log)}
    nodes = [start_daemon(**env) for _ in range(3)]
    task = await client.submit("durable", "go", user_id="u", session_id="race")
    await _until_logged(log, "slow_effect start")
    record = await until_state(client, task, "running")
    dead = next(n for n in nodes if n.node_id == record["node_id"])
    peers = [n for n in nodes if n is not dead]
    dead.kill9()  # its run dies with it, mid-tool

    record = await until_state(client, task, "completed", timeout=60)
    assert record["attempt"] == "2" and record["epoch"] == "1", record
    assert record["node_id"] in {p.node_id for p in peers}, record
    time.sleep(1)  # a racing peer that lost would have written by now
    assert await _history(client, task) == [
        "queued",
        "starting",
        "running",
        "queued",
        "starting",
        "running",
        "completed",
    ]
    resumes = [p for p in peers if f"task {task}: orphaned" in p.log() and "resumed" in p.log()]
    assert len(resumes) == 1, [p.log()[-3000:] for p in peers]
    assert sum(p.log().count(f"took over node {dead.node_id}") for p in peers) >= 1
    lines = _lines(log)
    assert len([x for x in lines if "slow_effect start" in x]) == 1, lines
    assert len([x for x in lines if "slow_idem start" in x]) == 1, lines
    # One started mark per call: slow_effect's by the first attempt, slow_idem's by the one resume.
    assert await _journal(client, task) == ["started@0", "started@1"]
    session = await sessions.get_session(app_name="durable", user_id="u", session_id="race")
    assert session is not None
    answers = _assert_each_event_once(session)
    assert answers == {
        "slow_effect": {"error": OUTCOME_UNKNOWN},
        "slow_idem": {"result": "idem done"},
    }


@pytest.mark.parametrize("thaw", ["after_its_write", "mid_tool"])
async def test_a_frozen_nodes_stale_run_adds_nothing_and_is_killed_once_it_thaws(
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    sessions: RedisSessionService,
    tmp_path: Path,
    thaw: str,
) -> None:
    """``after_its_write``: the stale run's tool ends while its daemon is frozen and its
    response is refused by the epoch. ``mid_tool``: thawed while the stale tool still runs,
    the daemon kills the run at its next heartbeat."""
    log = tmp_path / "tools.log"
    env = {**FAST, "ADK_SUPERVISOR_APPS": json.dumps(APPS), "DURABLE_TEST_LOG": str(log)}
    # The frozen node's tool is held until the resume is seen, however slow the takeover
    # is under load: released then (`after_its_write`), its run writes after the resume;
    # never released (`mid_tool`), it is still in its tool at the thaw.
    release = tmp_path / "release-the-stale-tool"
    frozen = start_daemon(**env, DURABLE_TEST_RELEASE=str(release))
    task = await client.submit("durable", "go", user_id="u", session_id="frozen")
    await _until_logged(log, "slow_effect start")
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        # Thawed mid-tool, the resumed attempt still runs (its record is not terminal):
        # only the epoch tells the thawed node that its run is stale.
        peer = start_daemon(**env, DURABLE_TEST_HOLD_S="1" if thaw == "after_its_write" else "6")
        deadline = time.monotonic() + 30
        while (await client.get(task)).get("epoch") != "1":
            assert time.monotonic() < deadline, await client.get(task)
            await asyncio.sleep(0.05)
        assert _runs_below(frozen, task), "the stale run should live while its node is frozen"
        if thaw == "after_its_write":
            release.touch()
            await _until_logged(log, "slow_effect end", timeout=30)
            await until_state(client, task, "completed", timeout=60)
            await asyncio.sleep(0.5)
        if thaw == "mid_tool":
            assert "slow_effect end" not in log.read_text(), "the stale tool ended before the thaw"
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        thawed = time.monotonic()
    while _runs_below(frozen, task) and time.monotonic() < thawed + 5:
        await asyncio.sleep(0.05)
    assert _runs_below(frozen, task) == [], "the stale run outlived its epoch"
    if thaw == "mid_tool":
        # Killed at the next heartbeat (0.3 s here), long before its tool would have ended.
        assert time.monotonic() - thawed < 3
        assert frozen.logged(f"task {task}") and frozen.logged("resumed at epoch 1")
        await until_state(client, task, "completed", timeout=60)
    await asyncio.sleep(1)  # anything the thawed node would record, it has recorded now
    record = await client.get(task)
    assert record["state"] == "completed" and record["epoch"] == "1", record
    assert record["node_id"] == peer.node_id, record
    assert await _history(client, task) == [
        "queued",
        "starting",
        "running",
        "queued",
        "starting",
        "running",
        "completed",
    ]
    lines = _lines(log)
    assert len([x for x in lines if "slow_effect start" in x]) == 1, lines
    assert len([x for x in lines if "slow_effect end" in x]) == (thaw == "after_its_write"), lines
    session = await sessions.get_session(app_name="durable", user_id="u", session_id="frozen")
    assert session is not None
    answers = _assert_each_event_once(session)
    # The stale run's "effect done" never landed: the resumed attempt's unknown outcome stands.
    assert answers == {
        "slow_effect": {"error": OUTCOME_UNKNOWN},
        "slow_idem": {"result": "idem done"},
    }
    if thaw == "after_its_write":
        # The stale run's own log (its record's `error` is fenced too: a stale attempt must
        # not write the current one's failure reason).
        run_log = frozen.state_dir / "logs" / f"{task}.log"
        assert "FencedWriteError: session frozen: append refused" in run_log.read_text()
        assert "FencedWriteError" not in (await client.get(task)).get("error", "")


async def test_a_slow_peer_does_not_resume_again_a_run_a_faster_peer_resumed(
    store: TaskStore,
) -> None:
    """Between a peer's read of a dead node's records and its resume, a faster peer resumed
    the run and started it anew (``running`` again): the slow peer neither resumes it a
    second time nor fails it (seen under load: a third attempt ran the idempotent tool)."""
    entry = {"task_id": "t-slow", "app": "durable", "user_id": "u", "message": "go"}
    await store.submit(
        "t-slow", {"app": "durable", "user_id": "u"}, entry, SessionRef("durable", "u", "slow")
    )
    await store.client.delete(store.keys.runs)
    await store.save_resume_entry("t-slow", entry, 3)
    await store.transition("t-slow", TaskState.STARTING)
    await store.transition("t-slow", TaskState.RUNNING)
    ids = ["t-slow"]
    seen = await store.fields_many(ids, ("state", "node_id", EPOCH_FIELD))  # the slow peer
    assert (await store.resume("t-slow", "orphaned: the fast peer")).outcome == "resumed"
    await store.transition("t-slow", TaskState.STARTING)
    await store.transition("t-slow", TaskState.RUNNING)
    failures: dict[str, dict[str, object]] = {"t-slow": {"reason": "orphaned: the slow peer"}}
    assert await resume_orphans(store, failures, epochs_read(ids, seen)) == {}
    assert failures == {}, "the slow peer would fail a run that lives on the fast one"
    record = await store.get("t-slow")
    assert record is not None
    assert (record["state"], record["attempt"], record["epoch"]) == ("running", "2", "1")
    assert await store.client.xlen(store.keys.runs) == 1
