"""What only the Redis service promises: TTL, concurrency across tasks and processes,
Redis restarts, key layout, URL forms, bad input, ADK's CLI registry and a real Runner."""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import time
import uuid
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from google.adk.agents import LlmAgent
from google.adk.cli.service_registry import get_service_registry, load_services_module
from google.adk.cli.utils.service_factory import create_session_service_from_options
from google.adk.errors._stale_session_error import StaleSessionError
from google.adk.runners import Runner
from google.adk.sessions.session import Session
from google.genai import types
from redis.crc import key_slot

from agent_runtime import RedisSessionService, RedisUnavailableError
from agent_runtime.keys import KeySchema
from agent_runtime.redis_connection import PoolExhaustedError, connect
from examples.scripted_llm import ScriptedLlm
from supervisor.ops.redis_server import RedisServer

from .session_helpers import text_event

pytestmark = pytest.mark.anyio

APP = "redis_app"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _keys(url: str, prefix: str) -> list[str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return sorted(client.scan_iter(match=prefix + "*", count=1000))
    finally:
        client.close()


async def test_ttl_expires_every_session_key_but_not_shared_state(
    redis_url: str, key_prefix: str
) -> None:
    async with RedisSessionService(redis_url, key_prefix=key_prefix, session_ttl=1) as svc:
        session = await svc.create_session(
            app_name=APP, user_id="u", state={"s": 1, "app:a": 1, "user:b": 2}
        )
        await svc.append_event(session, text_event("x"))
        before = _keys(redis_url, key_prefix)
        assert any(":idx" in k for k in before) and any(":ev:" in k for k in before)
        await asyncio.sleep(1.3)
        assert await svc.get_session(app_name=APP, user_id="u", session_id=session.id) is None
        assert (await svc.list_sessions(app_name=APP)).sessions == []
        left = _keys(redis_url, key_prefix)
        # Only app: and user: state outlive the session; no index entry dangles.
        assert left == sorted(k for k in before if k.endswith(":app_state") or ":user_state:" in k)
        assert await svc.get_user_state(app_name=APP, user_id="u") == {"b": 2}


async def test_ttl_slides_on_every_write(redis_url: str, key_prefix: str) -> None:
    async with RedisSessionService(redis_url, key_prefix=key_prefix, session_ttl=1.5) as svc:
        session = await svc.create_session(app_name=APP, user_id="u")
        for i in range(3):
            await asyncio.sleep(0.8)
            await svc.append_event(session, text_event(f"keepalive {i}"))
        got = await svc.get_session(app_name=APP, user_id="u", session_id=session.id)
        assert got is not None and len(got.events) == 3
        assert [s.id for s in (await svc.list_sessions(app_name=APP)).sessions] == [session.id]


async def test_no_ttl_means_keys_persist(redis_url: str, key_prefix: str) -> None:
    async with RedisSessionService(redis_url, key_prefix=key_prefix, session_ttl=None) as svc:
        session = await svc.create_session(app_name=APP, user_id="u", state={"s": 1})
        await svc.append_event(session, text_event("x"))
    client = redis.Redis.from_url(redis_url)
    try:
        assert all(client.pttl(k) == -1 for k in _keys(redis_url, key_prefix))
    finally:
        client.close()


async def test_every_key_of_an_app_shares_one_hash_slot(redis_url: str, key_prefix: str) -> None:
    async with RedisSessionService(redis_url, key_prefix=key_prefix) as svc:
        for user in ("alice", "b:o{b}"):
            session = await svc.create_session(
                app_name="my{app}", user_id=user, state={"user:x": 1, "app:y": 2}
            )
            await svc.append_event(session, text_event("x", delta={"s": 1}))
    keys = _keys(redis_url, key_prefix)
    assert len(keys) >= 10
    assert len({key_slot(k.encode()) for k in keys}) == 1


async def test_many_tasks_with_own_copies_lose_no_update(redis_url: str, key_prefix: str) -> None:
    async with RedisSessionService(redis_url, key_prefix=key_prefix) as svc:
        session = await svc.create_session(app_name=APP, user_id="u")

        async def writer(n: int) -> int:
            stale_hits = 0
            while True:
                mine = await svc.get_session(app_name=APP, user_id="u", session_id=session.id)
                assert mine is not None
                count = mine.state.get("count", 0)
                try:
                    await svc.append_event(mine, text_event(f"w{n}", delta={"count": count + 1}))
                    return stale_hits
                except StaleSessionError:
                    stale_hits += 1

        stale = await asyncio.gather(*(writer(n) for n in range(30)))
        got = await svc.get_session(app_name=APP, user_id="u", session_id=session.id)
        assert got is not None
        assert len(got.events) == 30
        assert got.state["count"] == 30
        assert sum(stale) > 0  # the writers really did race


def _process_writer(url: str, prefix: str, session_id: str, n: int) -> None:
    async def run() -> None:
        async with RedisSessionService(url, key_prefix=prefix) as svc:
            done = 0
            while done < n:
                mine = await svc.get_session(app_name=APP, user_id="u", session_id=session_id)
                assert mine is not None
                try:
                    await svc.append_event(
                        mine, text_event("p", delta={"count": mine.state.get("count", 0) + 1})
                    )
                    done += 1
                except StaleSessionError:
                    pass

    asyncio.run(run())


async def test_writers_in_several_processes_lose_no_update(redis_url: str, key_prefix: str) -> None:
    async with RedisSessionService(redis_url, key_prefix=key_prefix) as svc:
        session = await svc.create_session(app_name=APP, user_id="u")
        ctx = multiprocessing.get_context("spawn")
        procs = [
            ctx.Process(target=_process_writer, args=(redis_url, key_prefix, session.id, 10))
            for _ in range(4)
        ]
        for p in procs:
            p.start()
        await asyncio.to_thread(lambda: [p.join(120) for p in procs])
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
        got = await svc.get_session(app_name=APP, user_id="u", session_id=session.id)
        assert got is not None
        assert len(got.events) == 40
        assert got.state["count"] == 40


async def test_redis_restart_gives_clear_error_then_recovers(private_redis: RedisServer) -> None:
    async with RedisSessionService(private_redis.url, key_prefix="r:") as svc:
        session = await svc.create_session(app_name=APP, user_id="u", session_id="s")
        await svc.append_event(session, text_event("before"))
        private_redis.stop()
        with pytest.raises(RedisUnavailableError, match=r"unreachable.*safe to retry"):
            await svc.append_event(session, text_event("during"))
        with pytest.raises(RedisUnavailableError):
            await svc.get_session(app_name=APP, user_id="u", session_id="s")
        private_redis.start()
        await svc.append_event(session, text_event("after"))
        got = await svc.get_session(app_name=APP, user_id="u", session_id="s")
        assert got is not None
        assert [e.content.parts[0].text for e in got.events] == ["before", "after"]  # type: ignore[index,union-attr]


async def test_retried_append_after_lost_reply_is_stored_once(
    redis_url: str, key_prefix: str
) -> None:
    async with RedisSessionService(redis_url, key_prefix=key_prefix) as svc:
        session = await svc.create_session(app_name=APP, user_id="u")
        retry_copy = session.model_copy(deep=True)
        retry_copy._storage_update_marker = session._storage_update_marker
        event = text_event("once", delta={"n": 1})
        await svc.append_event(session, event)
        # The same append again from the pre-append copy, as a retry after a lost reply would.
        await svc.append_event(retry_copy, event.model_copy(deep=True))
        assert len(retry_copy.events) == 1
        got = await svc.get_session(app_name=APP, user_id="u", session_id=session.id)
        assert got is not None and len(got.events) == 1
        # And the retrying writer's copy is current afterwards.
        await svc.append_event(retry_copy, text_event("next"))


async def test_url_forms_and_acl_credentials(key_prefix: str) -> None:
    with RedisServer(tcp=True) as server:
        admin = redis.Redis(unix_socket_path=str(server.socket_path))
        admin.acl_setuser(
            "alice", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"]
        )
        admin.acl_setuser("default", enabled=False)
        admin.close()
        port = server.port
        for url in (
            f"redis://alice:s3cret@127.0.0.1:{port}/0",
            f"unix://alice:s3cret@{server.socket_path}?db=1",
        ):
            async with RedisSessionService(url, key_prefix=key_prefix) as svc:
                s = await svc.create_session(app_name=APP, user_id="u")
                assert await svc.get_session(app_name=APP, user_id="u", session_id=s.id) is not None
        async with RedisSessionService(f"redis://alice:wrong@127.0.0.1:{port}/0") as bad:
            with pytest.raises(redis.AuthenticationError):
                await bad.create_session(app_name=APP, user_id="u")
    tls = RedisSessionService("rediss://alice:pw@redis.example:6380/0")
    assert tls.redis.connection_pool.connection_class.__name__ == "SSLConnection"


async def test_bad_input_gets_clear_errors(redis_url: str, key_prefix: str) -> None:
    with pytest.raises(ValueError, match="session_ttl"):
        RedisSessionService(redis_url, session_ttl=-1)
    with pytest.raises(ValueError, match="unsupported Redis URL"):
        RedisSessionService("http://localhost:6379")
    with pytest.raises(TypeError, match="unexpected keyword"):
        RedisSessionService(redis_url, sesion_ttl=5)
    async with RedisSessionService(redis_url, key_prefix=key_prefix) as svc:
        with pytest.raises(ValueError, match="app_name"):
            await svc.create_session(app_name="", user_id="u")
        with pytest.raises(ValueError, match="user_id"):
            await svc.get_session(app_name=APP, user_id=None, session_id="s")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="state must be a dict"):
            await svc.create_session(app_name=APP, user_id="u", state=["not", "a", "dict"])  # type: ignore[arg-type]
        session = await svc.create_session(app_name=APP, user_id="u")
        with pytest.raises(TypeError, match="Event"):
            await svc.append_event(session, {"author": "user"})  # type: ignore[arg-type]
        assert await svc.get_session(app_name=APP, user_id="u", session_id="unknown") is None


@pytest.mark.parametrize("registration", ["services.yaml", "services.py"])
async def test_adk_cli_registry_builds_our_service(
    registration: str, tmp_path: Path, redis_server: RedisServer, key_prefix: str
) -> None:
    # The same calls `adk web --session_service_uri ...` makes.
    shutil.copy(EXAMPLES / registration, tmp_path / registration)
    registry = get_service_registry()
    saved = dict(registry._session_factories)
    try:
        load_services_module(str(tmp_path))
        for uri in (
            f"{redis_server.tcp_url}/0?key_prefix={key_prefix}&session_ttl=120",
            f"{redis_server.url}?key_prefix={key_prefix}",
            "rediss://user:pw@redis.example:6380/0",
        ):
            svc = create_session_service_from_options(base_dir=tmp_path, session_service_uri=uri)
            assert isinstance(svc, RedisSessionService)
            if not uri.startswith("rediss"):
                assert svc.key_prefix == key_prefix
                s = await svc.create_session(app_name=APP, user_id="u")
                assert await svc.get_session(app_name=APP, user_id="u", session_id=s.id) is not None
            await svc.close()
    finally:
        registry._session_factories.clear()
        registry._session_factories.update(saved)
        import sys

        sys.modules.pop("services", None)
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))


async def test_real_runner_two_turns_on_one_session(redis_url: str, key_prefix: str) -> None:
    calls: list[str] = []

    def get_weather(city: str) -> dict[str, str]:
        """Returns the weather of a city."""
        calls.append(city)
        return {"city": city, "sky": "clear"}

    agent = LlmAgent(name="weather", model=ScriptedLlm(), tools=[get_weather])
    async with RedisSessionService(redis_url, key_prefix=key_prefix) as svc:
        runner = Runner(agent=agent, app_name=APP, session_service=svc)
        session = await svc.create_session(app_name=APP, user_id="u")
        for turn in ("weather?", "again?"):
            message = types.Content(role="user", parts=[types.Part(text=turn)])
            async for _ in runner.run_async(
                user_id="u", session_id=session.id, new_message=message
            ):
                pass
        got = await svc.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert calls == ["Zurich", "Zurich"]
    assert got is not None
    parts = [p for e in got.events if e.content for p in (e.content.parts or [])]
    assert sum(p.function_call is not None for p in parts) == 2
    assert sum(p.function_response is not None for p in parts) == 2
    assert parts[-1].text and "clear" in parts[-1].text


async def test_append_is_one_round_trip_whose_work_does_not_grow(
    redis_url: str, key_prefix: str
) -> None:
    # Count commands on the server: one EVALSHA per append, and the same work
    # inside it for the 20 appends after 300 events as for the first 20.
    admin = aioredis.Redis.from_url(redis_url)

    async def twenty_appends(svc: RedisSessionService, session: Session) -> dict[str, int]:
        before = await admin.info("commandstats")
        for i in range(20):
            await svc.append_event(session, text_event(f"e{i}", delta={"i": i}))
        after = await admin.info("commandstats")
        delta = {k: after[k]["calls"] - before.get(k, {"calls": 0})["calls"] for k in after}
        return {k: v for k, v in delta.items() if v and k != "cmdstat_info"}

    try:
        async with RedisSessionService(redis_url, key_prefix=key_prefix) as svc:
            session = await svc.create_session(app_name=APP, user_id="u")
            await svc.append_event(session, text_event("warm"))  # loads the script once
            early = await twenty_appends(svc, session)
            for i in range(300):
                await svc.append_event(session, text_event(f"fill{i}"))
            late = await twenty_appends(svc, session)
    finally:
        await admin.aclose()
    assert early["cmdstat_evalsha"] == 20
    # Index keys get PEXPIRE only when their TTL would shrink: bounded, timing-dependent.
    assert early.pop("cmdstat_pexpire") <= 7 * 20 and late.pop("cmdstat_pexpire") <= 7 * 20
    assert early == late
    assert not {"cmdstat_hgetall", "cmdstat_hvals", "cmdstat_get", "cmdstat_lrange"} & set(early)


async def test_more_concurrent_calls_than_connections_wait_for_one(redis_url: str) -> None:
    # redis-py's own pool refused the calls beyond its cap at once, and they surfaced
    # as "Redis is unreachable" while Redis was fine.
    prefix = f"pool-{uuid.uuid4().hex[:8]}:"
    async with RedisSessionService(redis_url, prefix) as service:
        sessions = await asyncio.gather(
            *(service.create_session(app_name="a", user_id="u") for _ in range(400))
        )
    assert len({s.id for s in sessions}) == 400


async def test_an_exhausted_pool_is_reported_as_such_not_as_an_outage(redis_url: str) -> None:
    client = connect(redis_url, max_connections=1, pool_timeout_s=0.2)
    async with RedisSessionService(redis_client=client, key_prefix="pool:") as service:
        busy = asyncio.create_task(client.blpop(["pool:never"], timeout=3))
        await asyncio.sleep(0.1)  # the one connection now waits in BLPOP
        with pytest.raises(PoolExhaustedError, match="stayed busy"):
            await service.get_session(app_name="a", user_id="u", session_id="s")
        await busy
    await client.aclose()


async def test_expired_sessions_leave_no_index_entry_when_ttls_are_mixed(
    redis_url: str, key_prefix: str
) -> None:
    # A session without a TTL keeps the app's index alive; the expiry index used to
    # expire with its last member, so an expired session's index entry stayed for ever.
    app = KeySchema(key_prefix).app("mixed")
    async with (
        RedisSessionService(redis_url, key_prefix=key_prefix, session_ttl=1) as short,
        RedisSessionService(redis_url, key_prefix=key_prefix, session_ttl=None) as forever,
    ):
        await short.create_session(app_name="mixed", user_id="u", session_id="brief")
        await forever.create_session(app_name="mixed", user_id="u", session_id="kept")
        await asyncio.sleep(2.5)
        listed = await forever.list_sessions(app_name="mixed", user_id=None)
        assert [s.id for s in listed.sessions] == ["kept"]
        # Touching the app again (another create) purges what expired.
        await forever.create_session(app_name="mixed", user_id="u", session_id="later")
        members = await forever.redis.zrange(app.index, 0, -1)
        assert sorted(members) == [b"u:kept", b"u:later"]


# --- list_sessions in bounded steps -------------------------------------------------


async def _seed(svc: RedisSessionService, app: str, count: int, users: int, tag: str) -> None:
    async def one(i: int) -> None:
        state = {"n": i, "user:u": i} if i < users else {"n": i}
        await svc.create_session(
            app_name=app, user_id=f"user{i % users}", state=state, session_id=f"{tag}{i}"
        )

    for start in range(0, count, 100):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + 100))))


def _script_calls(entries: list[dict[str, object]]) -> list[list[bytes]]:
    """The commands each top-level call ran, from a SLOWLOG that logged every command.

    Redis logs a script's own commands (client ``?:0``) before the script's call.
    """
    calls: list[list[bytes]] = []
    inner: list[bytes] = []
    for entry in sorted(entries, key=lambda e: int(e["id"])):  # type: ignore[call-overload]
        command = entry["command"]
        assert isinstance(command, bytes)
        if entry.get("client_address") == b"?:0":
            inner.append(command)
            continue
        name = command.split(b" ", 1)[0].upper()
        if name in (b"SLOWLOG", b"CONFIG"):
            continue
        if name == b"HGETALL" and b":user_state:" in command:
            # Users the first page did not cover: one short command each.
            assert not inner
            continue
        assert name == b"EVALSHA", f"list_sessions sent {command[:80]!r} besides its script"
        calls.append(inner)
        inner = []
    return calls


async def test_listing_20000_sessions_never_holds_redis_for_more_than_a_page() -> None:
    # One script used to read the whole index: 20,000 sessions held Redis for about
    # 250 ms, and every abort and task transition on that Redis waited behind it.
    # Counted, not timed: Redis logs every command (slowlog-log-slower-than 0), a
    # script's own commands included, so the sessions each call read are visible.
    count = 20_000
    with RedisServer() as server:
        async with RedisSessionService(server.url, key_prefix="big:", session_ttl=None) as svc:
            await _seed(svc, "big", count, users=200, tag="s")
            await svc.list_sessions(app_name="warm")  # loads the script outside the log
            admin = aioredis.Redis.from_url(server.url)
            try:
                await admin.config_set("slowlog-max-len", 1_000_000)
                await admin.config_set("slowlog-log-slower-than", 0)
                await admin.slowlog_reset()
                listed = await svc.list_sessions(app_name="big")
                await admin.config_set("slowlog-log-slower-than", -1)
                calls = _script_calls(await admin.slowlog_get(2_000_000))
            finally:
                await admin.aclose()
    reads = [sum(c.startswith(b"HMGET big:{big}:sess:") for c in call) for call in calls]
    # Twice the default page size of 250: ZSCAN's COUNT may overshoot by a bucket.
    assert max(reads) <= 500, f"one script call read {max(reads)} sessions"
    assert max(len(call) for call in calls) <= 4 * 500 + 2
    assert sum(reads) >= count and len(calls) >= count // 500
    assert len({(s.user_id, s.id) for s in listed.sessions}) == count
    # Users first met after the first page get their user: state too.
    assert all(s.state["user:u"] == int(s.user_id[4:]) for s in listed.sessions)
    assert [s.last_update_time for s in listed.sessions] == sorted(
        s.last_update_time for s in listed.sessions
    )


async def test_small_index_is_listed_in_one_round_trip(redis_url: str, key_prefix: str) -> None:
    admin = aioredis.Redis.from_url(redis_url)
    try:
        async with RedisSessionService(redis_url, key_prefix=key_prefix) as svc:
            # 100 sessions: a compact sorted set; 240: a hash table, still one page.
            for app, count in (("small", 100), ("page", 240)):
                await _seed(svc, app, count, users=7, tag="s")
                await svc.list_sessions(app_name=app)
                before = (await admin.info("commandstats"))["cmdstat_evalsha"]["calls"]
                listed = await svc.list_sessions(app_name=app)
                after = (await admin.info("commandstats"))["cmdstat_evalsha"]["calls"]
                assert len(listed.sessions) == count
                assert after - before == 1, f"{count} sessions took {after - before} calls"
    finally:
        await admin.aclose()


async def test_paged_listing_is_complete_with_expired_entries_and_writes_between_pages(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = "paged"
    keys = KeySchema(key_prefix).app(app)
    async with (
        RedisSessionService(redis_url, key_prefix=key_prefix, session_ttl=1) as short,
        RedisSessionService(
            redis_url, key_prefix=key_prefix, session_ttl=None, list_page_size=50
        ) as svc,
        RedisSessionService(redis_url, key_prefix=key_prefix, session_ttl=None) as writer,
    ):
        await _seed(short, app, 400, users=30, tag="gone")
        await svc.create_session(
            app_name=app, user_id="user0", session_id="first", state={"app:v": 1, "user:w": 0}
        )
        await _seed(svc, app, 1500, users=30, tag="kept")
        await asyncio.sleep(2.0)  # the 400 short-lived sessions expire

        doomed = [f"kept{i}" for i in range(0, 1500, 7)]
        touched = [f"kept{i}" for i in range(3, 1500, 11) if i % 7]
        deleted: set[str] = set()
        created: dict[str, str] = {}
        real_page = svc._list_page
        pages = 0

        async def page_then_write(**kwargs: object) -> object:
            # Other clients write between two pages: creates (which also grow and
            # rehash the index under the scan), deletes and appends (re-scoring).
            nonlocal pages
            reply = await real_page(**kwargs)  # type: ignore[arg-type]
            pages += 1
            for k in range(40):
                sid = f"new{pages}-{k}"
                await writer.create_session(app_name=app, user_id=f"user{k % 30}", session_id=sid)
                created[sid] = f"user{k % 30}"
            for sid in doomed[(pages - 1) * 5 : pages * 5]:
                n = int(sid[4:])
                await writer.delete_session(app_name=app, user_id=f"user{n % 30}", session_id=sid)
                deleted.add(sid)
            if pages <= len(touched):
                sid = touched[pages - 1]
                got = await writer.get_session(
                    app_name=app, user_id=f"user{int(sid[4:]) % 30}", session_id=sid
                )
                assert got is not None
                await writer.append_event(got, text_event("later", timestamp=time.time() + 60))
            return reply

        monkeypatch.setattr(svc, "_list_page", page_then_write)
        listed = (await svc.list_sessions(app_name=app)).sessions
        monkeypatch.undo()

        assert pages > 5, f"only {pages} pages: the listing was not paged"
        ids = [s.id for s in listed]
        assert len(ids) == len(set(ids)), "a session was listed twice"
        stable = {f"kept{i}" for i in range(1500)} - deleted
        assert stable <= set(ids), f"missing: {sorted(stable - set(ids))[:5]}"
        assert not [i for i in ids if i.startswith("gone")], "an expired session was listed"
        assert set(ids) <= stable | deleted | set(created) | {"first"}
        assert [(s.last_update_time, s.user_id, s.id) for s in listed] == sorted(
            (s.last_update_time, s.user_id, s.id) for s in listed
        )
        by_id = {s.id: s for s in listed}
        assert by_id["kept30"].state == {"n": 30, "app:v": 1, "user:w": 0, "user:u": 0}
        assert by_id["kept31"].state == {"n": 31, "app:v": 1, "user:u": 1}
        assert all(s.state["user:u"] == int(s.user_id[4:]) for s in listed)
        # Every expired entry met on the way was dropped from every index.
        for index in (keys.index, keys.expiry, keys.user_index("user5")):
            left = await svc.redis.zrange(index, 0, -1)
            assert not [m for m in left if b"gone" in m], index

        # One user's index is paged the same way.
        mine = [s.id for s in (await svc.list_sessions(app_name=app, user_id="user4")).sessions]
        expected = {f"kept{i}" for i in range(4, 1500, 30)} - deleted
        expected |= {sid for sid, user in created.items() if user == "user4"}
        assert len(mine) == len(set(mine)) and set(mine) == expected
