"""Issue 12's integrity chain: every stored event carries a SHA-256 link chained over the
previous one, the head moves in the append's own script, and ``verify`` (the service's and
``adk-supervisor verify-session``) names what is wrong with an altered or truncated history.

Real redis-server; the damage is done to the stored keys as a failover, a partial restore
or a person with redis-cli would do it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from google.adk.events.event import Event

from agent_runtime.keys import AppKeys
from agent_runtime.sessions.service import RedisSessionService
from supervisor.client import SupervisorClient

from .daemon_harness import Daemon, until_state
from .session_helpers import text_event
from .test_durable_runs import APPS, _lines, _until_logged

pytestmark = pytest.mark.anyio

APP = "chain_app"


async def _session_with(sessions: RedisSessionService, sid: str, count: int) -> None:
    session = await sessions.create_session(app_name=APP, user_id="u", session_id=sid)
    for i in range(count):
        await sessions.append_event(session, text_event(f"event {i}"))


async def test_many_appends_verify_ok(sessions: RedisSessionService) -> None:
    await _session_with(sessions, "many", 1200)  # more than one verify page (500)
    report = await sessions.verify(APP, "u", "many")
    assert report.ok and report.problem == "ok" and report.chained, report
    assert report.events == 1200
    empty = await sessions.create_session(app_name=APP, user_id="u", session_id="empty")
    assert (await sessions.verify(APP, "u", empty.id)).problem == "ok"
    missing = await sessions.verify(APP, "u", "nope")
    assert not missing.ok and missing.problem == "not_found", missing


async def test_appends_from_another_copy_and_a_forgotten_head_keep_the_chain(
    sessions: RedisSessionService, redis_url: str, key_prefix: str
) -> None:
    """A service that never saw the head (another process, a listing's copy, a session
    object without a revision) reads it before appending; the chain still verifies."""
    await _session_with(sessions, "shared", 3)
    async with RedisSessionService(redis_url, key_prefix) as other:
        listed = (await other.list_sessions(app_name=APP, user_id="u")).sessions
        copy = next(s for s in listed if s.id == "shared")
        fetched = await other.get_session(app_name=APP, user_id="u", session_id="shared")
        assert fetched is not None
        copy.events = fetched.events
        await other.append_event(copy, text_event("from a listed copy"))
    again = await sessions.get_session(app_name=APP, user_id="u", session_id="shared")
    assert again is not None
    sessions._heads.clear()
    await sessions.append_event(again, text_event("after forgetting"))
    # The same event delivered twice (a retry after a lost reply) is stored once.
    event = text_event("twice")
    await sessions.append_event(again, event)
    await sessions.append_event(again, event)
    report = await sessions.verify(APP, "u", "shared")
    assert report.ok and report.events == 6, report


async def test_an_altered_event_is_named_by_its_index(
    sessions: RedisSessionService, key_prefix: str
) -> None:
    await _session_with(sessions, "alter", 10)
    keys = AppKeys.for_app(key_prefix, APP).session("u", "alter")
    stored = json.loads(await sessions.redis.hget(keys.events, "7"))
    stored["content"]["parts"][0]["text"] = "something else"
    await sessions.redis.hset(keys.events, "7", json.dumps(stored))
    report = await sessions.verify(APP, "u", "alter")
    assert not report.ok and report.problem == "altered" and report.index == 6, report
    assert "event 6 (number 7 of the 10 stored) was altered" in report.detail, report
    # Its link rewritten too does not help: the next event no longer follows it.
    await sessions.redis.hset(keys.events, "h:7", "0" * 64)
    report = await sessions.verify(APP, "u", "alter")
    assert report.problem == "altered" and report.index == 6, report


async def test_a_truncated_history_is_reported(
    sessions: RedisSessionService, key_prefix: str
) -> None:
    await _session_with(sessions, "cut", 10)
    keys = AppKeys.for_app(key_prefix, APP).session("u", "cut")
    # The last two events gone, the meta's count kept: named as missing.
    await sessions.redis.hdel(keys.events, "9", "10", "h:9", "h:10")
    report = await sessions.verify(APP, "u", "cut")
    assert not report.ok and report.problem == "missing" and report.index == 8, report
    # The count rolled back with them (a consistent-looking older history): the head
    # still names the lost events.
    await sessions.redis.hset(keys.meta, "seq", "8")
    report = await sessions.verify(APP, "u", "cut")
    assert not report.ok and report.problem == "head_mismatch", report
    assert "truncated" in report.detail


async def test_a_head_moved_under_the_caller_is_refused_like_a_stale_session(
    sessions: RedisSessionService, key_prefix: str
) -> None:
    from google.adk.errors._stale_session_error import StaleSessionError

    await _session_with(sessions, "fork", 2)
    session = await sessions.get_session(app_name=APP, user_id="u", session_id="fork")
    assert session is not None
    keys = AppKeys.for_app(key_prefix, APP).session("u", "fork")
    await sessions.redis.hset(keys.meta, "head", "f" * 64)  # the remembered head is stale
    with pytest.raises(StaleSessionError):
        await sessions.append_event(session, text_event("forked"))
    assert (await sessions.verify(APP, "u", "fork")).problem == "head_mismatch"


async def test_a_session_from_before_chains_keeps_working_unchained(
    sessions: RedisSessionService, key_prefix: str
) -> None:
    await _session_with(sessions, "old", 2)
    keys = AppKeys.for_app(key_prefix, APP).session("u", "old")
    # What a session written by the previous version looks like: no head, no links.
    await sessions.redis.hdel(keys.meta, "head")
    await sessions.redis.hdel(keys.events, "h:1", "h:2")
    sessions._heads.clear()
    session = await sessions.get_session(app_name=APP, user_id="u", session_id="old")
    assert session is not None
    await sessions.append_event(session, Event(author="user", invocation_id="i"))
    again = await sessions.get_session(app_name=APP, user_id="u", session_id="old")
    assert again is not None and len(again.events) == 3
    report = await sessions.verify(APP, "u", "old")
    assert report.ok and report.problem == "unchained" and not report.chained, report
    assert await sessions.redis.hget(keys.events, "h:3") is None


async def test_verify_session_cli(
    sessions: RedisSessionService, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    await _session_with(sessions, "cli", 5)
    daemon = Daemon(redis_url, key_prefix, tmp_path / "s", "auto")
    done = daemon.cli("verify-session", APP, "u", "cli", "--redis-url", redis_url)
    assert done.returncode == 0 and "ok: 5 events" in done.stdout, done
    keys = AppKeys.for_app(key_prefix, APP).session("u", "cli")
    await sessions.redis.hset(keys.events, "2", "{}")
    done = daemon.cli("verify-session", APP, "u", "cli", "--redis-url", redis_url, "--json")
    assert done.returncode == 1, done
    report = json.loads(done.stdout)
    assert report["problem"] == "altered" and report["index"] == 1, report
    done = daemon.cli("verify-session", APP, "u", "nope", "--redis-url", redis_url)
    assert done.returncode == 4 and "no session" in done.stderr, done


@pytest.mark.parametrize("damage", ["altered", "truncated"])
async def test_a_resume_refuses_a_broken_chain(
    damage: str,
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    sessions: RedisSessionService,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    """A durable run killed mid-tool whose session was damaged while it was down fails with
    a reason naming the damage instead of resuming (the truncated history lost the tool
    call, so a resume would have made the model call the non-idempotent tool again)."""
    log = tmp_path / "tools.log"
    env = {"ADK_SUPERVISOR_APPS": json.dumps(APPS), "DURABLE_TEST_LOG": str(log)}
    daemon = start_daemon(state="a", **env)
    sid = f"s-{damage}"
    task = await client.submit("durable", "go", user_id="u", session_id=sid)
    await _until_logged(log, "slow_effect start")
    daemon.kill9()
    assert (await sessions.verify("durable", "u", sid)).ok
    keys = AppKeys.for_app(key_prefix, "durable").session("u", sid)
    seq = int(await sessions.redis.hget(keys.meta, "seq"))
    if damage == "altered":
        await sessions.redis.hset(
            keys.events,
            "1",
            (await sessions.redis.hget(keys.events, "1")).replace(b'"go"', b'"stop"'),
        )
        expected = "event 0 (number 1 of the"
    else:
        await sessions.redis.hdel(keys.events, str(seq), f"h:{seq}")
        await sessions.redis.hset(keys.meta, "seq", str(seq - 1))
        expected = "head mismatch"
    start_daemon(state="a", node_id=daemon.node_id, **env)
    record = await until_state(client, task, "failed")
    assert record["epoch"] == "1", record
    reason = record["reason"]
    assert "SessionIntegrityError: not resumed" in reason and expected in reason, reason
    assert len([line for line in _lines(log) if "slow_effect start" in line]) == 1, _lines(log)
    assert not [line for line in _lines(log) if "slow_idem" in line], _lines(log)
