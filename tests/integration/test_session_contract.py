"""ADK's session contract, held against ours and ADK's own reference services.

Each behaviour test runs against ``RedisSessionService`` and ADK's
``InMemorySessionService`` (and, for what only persistent services promise, ADK's
``DatabaseSessionService`` on SQLite): a test the reference fails is a wrong test.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator

import pytest
from google.adk.errors._stale_session_error import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.sessions import DatabaseSessionService, InMemorySessionService
from google.adk.sessions.base_session_service import BaseSessionService, GetSessionConfig

from agent_runtime import RedisSessionService

from .session_helpers import full_event, text_event

pytestmark = pytest.mark.anyio

APP = "contract_app"


async def _make(kind: str, redis_url: str, key_prefix: str) -> BaseSessionService:
    if kind == "redis":
        return RedisSessionService(redis_url, key_prefix=key_prefix)
    if kind == "in_memory":
        return InMemorySessionService()
    return DatabaseSessionService("sqlite+aiosqlite:///:memory:")


async def _close(service: BaseSessionService) -> None:
    if isinstance(service, RedisSessionService | DatabaseSessionService):
        await service.close()


@pytest.fixture(params=["redis", "in_memory"])
async def service(
    request: pytest.FixtureRequest, redis_url: str, key_prefix: str
) -> AsyncIterator[BaseSessionService]:
    """Ours and ADK's reference implementation."""
    svc = await _make(request.param, redis_url, key_prefix)
    yield svc
    await _close(svc)


@pytest.fixture(params=["redis", "database"])
async def persistent(
    request: pytest.FixtureRequest, redis_url: str, key_prefix: str
) -> AsyncIterator[BaseSessionService]:
    """Ours and ADK's DatabaseSessionService: what persistent services promise beyond InMemory."""
    svc = await _make(request.param, redis_url, key_prefix)
    yield svc
    await _close(svc)


async def test_create_and_get_split_state_scopes(service: BaseSessionService) -> None:
    state = {"s": 1, "app:a": "A", "user:u": [1, 2], "temp:t": "gone"}
    created = await service.create_session(
        app_name=APP, user_id="alice", state=state, session_id="s1"
    )
    assert created.id == "s1"
    assert created.state == {"s": 1, "app:a": "A", "user:u": [1, 2]}
    got = await service.get_session(app_name=APP, user_id="alice", session_id="s1")
    assert got is not None
    assert got.state == {"s": 1, "app:a": "A", "user:u": [1, 2]}
    assert got.events == []
    assert got.last_update_time == pytest.approx(created.last_update_time)


async def test_generated_session_id(service: BaseSessionService) -> None:
    a = await service.create_session(app_name=APP, user_id="u")
    b = await service.create_session(app_name=APP, user_id="u")
    assert a.id and b.id and a.id != b.id
    assert await service.get_session(app_name=APP, user_id="u", session_id=a.id) is not None


async def test_duplicate_session_id(service: BaseSessionService) -> None:
    await service.create_session(app_name=APP, user_id="u", session_id="dup")
    with pytest.raises(AlreadyExistsError):
        await service.create_session(app_name=APP, user_id="u", session_id="dup")


async def test_get_unknown_session_is_none(service: BaseSessionService) -> None:
    assert await service.get_session(app_name=APP, user_id="u", session_id="nope") is None
    assert await service.get_session(app_name="no_app", user_id="u", session_id="nope") is None


async def test_app_state_shared_by_all_users_user_state_per_user(
    service: BaseSessionService,
) -> None:
    s1 = await service.create_session(
        app_name=APP, user_id="alice", state={"app:theme": "dark", "user:n": 1}
    )
    await service.append_event(
        s1, text_event("x", delta={"app:theme": "light", "user:n": 2, "own": True})
    )
    s2 = await service.create_session(app_name=APP, user_id="bob")
    s3 = await service.create_session(app_name=APP, user_id="alice")
    got2 = await service.get_session(app_name=APP, user_id="bob", session_id=s2.id)
    got3 = await service.get_session(app_name=APP, user_id="alice", session_id=s3.id)
    assert got2 is not None and got3 is not None
    assert got2.state == {"app:theme": "light"}
    assert got3.state == {"app:theme": "light", "user:n": 2}
    assert await service.get_user_state(app_name=APP, user_id="alice") == {"n": 2}
    assert await service.get_user_state(app_name=APP, user_id="bob") == {}


async def test_temp_state_visible_in_caller_session_but_not_stored(
    service: BaseSessionService,
) -> None:
    session = await service.create_session(app_name=APP, user_id="u")
    event = text_event("x", delta={"temp:scratch": 42, "kept": 1})
    await service.append_event(session, event)
    assert session.state["temp:scratch"] == 42
    got = await service.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None
    assert "temp:scratch" not in got.state
    assert got.state["kept"] == 1
    assert "temp:scratch" not in got.events[0].actions.state_delta


async def test_append_to_missing_or_deleted_session(service: BaseSessionService) -> None:
    session = await service.create_session(app_name=APP, user_id="u")
    await service.delete_session(app_name=APP, user_id="u", session_id=session.id)
    with pytest.raises(SessionNotFoundError):
        await service.append_event(session, text_event("late"))
    ghost = copy.deepcopy(session)
    ghost.id = "never-created"
    with pytest.raises(SessionNotFoundError):
        await service.append_event(ghost, text_event("x"))


async def test_partial_events_are_not_stored(service: BaseSessionService) -> None:
    session = await service.create_session(app_name=APP, user_id="u")
    await service.append_event(session, text_event("stream...", partial=True, delta={"p": 1}))
    got = await service.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None
    assert got.events == []
    assert "p" not in got.state


async def test_last_update_time_is_event_timestamp(service: BaseSessionService) -> None:
    session = await service.create_session(app_name=APP, user_id="u")
    ts = time.time() + 5
    await service.append_event(session, text_event("x", timestamp=ts))
    assert session.last_update_time == pytest.approx(ts)
    got = await service.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None
    assert got.last_update_time == pytest.approx(ts)


async def _session_with_events(service: BaseSessionService, n: int, t0: float) -> str:
    session = await service.create_session(app_name=APP, user_id="u")
    for i in range(n):
        await service.append_event(session, text_event(f"e{i}", timestamp=t0 + i))
    return session.id


async def test_get_session_config_filters(service: BaseSessionService) -> None:
    t0 = time.time()
    sid = await _session_with_events(service, 6, t0)

    async def texts(config: GetSessionConfig) -> list[str]:
        got = await service.get_session(app_name=APP, user_id="u", session_id=sid, config=config)
        assert got is not None
        return [e.content.parts[0].text for e in got.events if e.content and e.content.parts]  # type: ignore[misc]

    assert await texts(GetSessionConfig(num_recent_events=0)) == []
    assert await texts(GetSessionConfig(num_recent_events=2)) == ["e4", "e5"]
    assert await texts(GetSessionConfig(num_recent_events=100)) == [f"e{i}" for i in range(6)]
    # after_timestamp is inclusive.
    assert await texts(GetSessionConfig(after_timestamp=t0 + 3)) == ["e3", "e4", "e5"]
    assert await texts(GetSessionConfig(after_timestamp=t0 + 3, num_recent_events=2)) == [
        "e4",
        "e5",
    ]
    assert await texts(GetSessionConfig(after_timestamp=t0 + 100)) == []


async def test_list_sessions_all_users_oldest_first_without_events(
    service: BaseSessionService,
) -> None:
    t0 = time.time()
    a = await service.create_session(
        app_name=APP, user_id="alice", state={"app:g": 1, "user:x": "a"}
    )
    b = await service.create_session(app_name=APP, user_id="bob", state={"user:x": "b", "own": 2})
    c = await service.create_session(app_name=APP, user_id="alice")
    await service.append_event(b, text_event("1", timestamp=t0 + 10))
    await service.append_event(a, text_event("2", timestamp=t0 + 20))
    await service.create_session(app_name="other_app", user_id="alice")

    everyone = (await service.list_sessions(app_name=APP)).sessions
    assert [s.id for s in everyone] == [c.id, b.id, a.id]
    assert all(s.events == [] for s in everyone)
    by_id = {s.id: s for s in everyone}
    assert by_id[b.id].state == {"own": 2, "app:g": 1, "user:x": "b"}
    assert by_id[a.id].state == {"app:g": 1, "user:x": "a"}
    assert by_id[a.id].last_update_time == pytest.approx(t0 + 20)

    alice = (await service.list_sessions(app_name=APP, user_id="alice")).sessions
    assert [s.id for s in alice] == [c.id, a.id]
    assert (await service.list_sessions(app_name=APP, user_id="nobody")).sessions == []
    assert (await service.list_sessions(app_name="missing_app")).sessions == []


async def test_list_sessions_beyond_one_page(service: BaseSessionService) -> None:
    # Ours reads its index a page of 250 entries per Redis call: which sessions
    # come back, their order and their merged state must not depend on the pages.
    created = []
    for i in range(600):
        state: dict[str, int] = {"i": i}
        if i < 9:
            state["user:who"] = i
        created.append(await service.create_session(app_name=APP, user_id=f"u{i % 9}", state=state))
    expected = sorted(created, key=lambda s: (s.last_update_time, s.user_id, s.id))

    everyone = (await service.list_sessions(app_name=APP)).sessions
    assert [(s.user_id, s.id) for s in everyone] == [(s.user_id, s.id) for s in expected]
    by_id = {s.id: s for s in created}
    for s in everyone:
        who = int(s.user_id[1:])
        assert s.state == {"i": by_id[s.id].state["i"], "user:who": who}
        assert s.events == []

    one_user = (await service.list_sessions(app_name=APP, user_id="u4")).sessions
    assert [s.id for s in one_user] == [s.id for s in expected if s.user_id == "u4"]


async def test_delete_session(service: BaseSessionService) -> None:
    keep = await service.create_session(app_name=APP, user_id="u")
    gone = await service.create_session(app_name=APP, user_id="u")
    await service.append_event(gone, text_event("x"))
    await service.delete_session(app_name=APP, user_id="u", session_id=gone.id)
    assert await service.get_session(app_name=APP, user_id="u", session_id=gone.id) is None
    assert [s.id for s in (await service.list_sessions(app_name=APP, user_id="u")).sessions] == [
        keep.id
    ]
    # Deleting again (or an unknown id) is not an error.
    await service.delete_session(app_name=APP, user_id="u", session_id=gone.id)


async def test_events_round_trip_exactly(service: BaseSessionService) -> None:
    session = await service.create_session(app_name=APP, user_id="u", state={"app:shared": 0})
    await service.append_event(session, text_event("question"))
    await service.append_event(session, full_event())
    await service.append_event(session, text_event("answer", author="agent"))
    got = await service.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got == session
    assert got is not None and got.events[1].content is not None
    assert got.events[1].content.parts[3].inline_data.data == bytes(range(256))  # type: ignore[index,union-attr]


async def test_equal_redelivery_is_idempotent(service: BaseSessionService) -> None:
    session = await service.create_session(app_name=APP, user_id="u")
    event = text_event("once", delta={"n": 1})
    await service.append_event(session, event)
    await service.append_event(session, event)
    got = await service.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None
    assert len(got.events) == 1


async def test_stale_copy_gets_stale_session_error(persistent: BaseSessionService) -> None:
    session = await persistent.create_session(app_name=APP, user_id="u")
    stale = await persistent.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert stale is not None
    await persistent.append_event(session, text_event("first", timestamp=time.time() + 1))
    with pytest.raises(StaleSessionError):
        await persistent.append_event(stale, text_event("second", timestamp=time.time() + 2))
    fresh = await persistent.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert fresh is not None
    await persistent.append_event(fresh, text_event("third", timestamp=time.time() + 3))
    final = await persistent.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert final is not None
    assert [e.content.parts[0].text for e in final.events] == ["first", "third"]  # type: ignore[index,union-attr]


async def test_two_writers_from_same_copy_exactly_one_wins(persistent: BaseSessionService) -> None:
    session = await persistent.create_session(app_name=APP, user_id="u")
    copies = [copy.deepcopy(session) for _ in range(2)]
    ts = time.time() + 1
    results = await asyncio.gather(
        *(
            persistent.append_event(c, text_event(f"w{i}", timestamp=ts + i))
            for i, c in enumerate(copies)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, StaleSessionError) for r in results) == 1
    got = await persistent.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None
    assert len(got.events) == 1


async def test_tasks_sharing_one_session_object_all_land(persistent: BaseSessionService) -> None:
    # Parallel agents share one Session object: their appends serialise, none is stale.
    session = await persistent.create_session(app_name=APP, user_id="u")
    t0 = time.time()
    await asyncio.gather(
        *(
            persistent.append_event(session, text_event(f"p{i}", timestamp=t0 + i))
            for i in range(20)
        )
    )
    got = await persistent.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None
    assert len(got.events) == 20


async def test_state_values_stored_json_safe(persistent: BaseSessionService) -> None:
    import datetime

    when = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
    session = await persistent.create_session(app_name=APP, user_id="u", state={"when": when})
    await persistent.append_event(session, text_event("x", delta={"fn": print, "app:when": when}))
    got = await persistent.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None
    assert got.state["when"] == "2026-11-22T12:00:00Z"
    assert got.state["app:when"] == "2026-11-22T12:00:00Z"
    assert isinstance(got.state["fn"], str)
