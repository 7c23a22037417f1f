"""Session-service benchmark: our RedisSessionService against ADK's own services.

What it measures, for each service on the same workload (one session of app
``bench`` / user ``u``, then N appends of a ~210-character text event carrying a
one-key state delta):

* the wall time of every ``append_event`` call: the total, the per-append p50
  and p99, the median of appends 6-15 ("10th append") and the median of the
  last 10 appends ("last append"), which shows whether an append's cost grows
  with the session's length;
* ``get_session`` of the whole N-event session (best of 3 calls);
* for the Redis-based services, the Redis memory the session takes
  (``INFO memory`` ``used_memory`` before and after), per 1000 events;
* ``list_sessions`` of one app holding ``--list-sessions`` sessions (default
  20,000, spread over 200 users; best of 3 calls), and for the Redis-based
  services how many commands (a script call counts as one) one listing sends,
  how long they held the server in all, and how long the longest of them did
  (each the median over the 3 listings), from the server's own ``SLOWLOG``
  (``slowlog-log-slower-than 0``): every other client of that Redis, an abort
  or a task transition, waits behind the command running. SQLite's own
  service is left out of this part (``DatabaseSessionService`` runs on SQLite
  already); seeding ``DatabaseSessionService`` takes most of its few minutes.

Each service first runs a short untimed warm-up on a throwaway session (schema
creation, connections, Lua script loading), so the numbers are steady-state costs.

Services: ours (``agent_runtime.RedisSessionService``), ADK's
``google.adk.integrations.redis.RedisSessionService``, ``SqliteSessionService``,
``DatabaseSessionService`` on ``sqlite+aiosqlite`` and ``InMemorySessionService``.
Both Redis services talk to one private ``redis-server`` this script starts on a
unix socket (never the machine's Redis); the SQLite files live in a temporary
directory.

Run it from the repository root::

    .venv/bin/python bench/session_bench.py                 # 1000 appends per service
    .venv/bin/python bench/session_bench.py --appends 5000 --json
    .venv/bin/python bench/session_bench.py --list-sessions 0   # skip the listing part

It prints a header describing the machine, a table, and the ratios the project
targets, each marked ``ok`` or ``MISSED``. The exit code is 0 whatever the
numbers are: this is a benchmark, not a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running as a script puts bench/ (not the repository root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import contextlib
import datetime
import gc
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

import google.adk
import redis
import redis.asyncio as aioredis
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.integrations.redis import RedisSessionService as AdkRedisSessionService
from google.adk.integrations.redis import RedisSessionServiceConfig
from google.adk.sessions.base_session_service import BaseSessionService
from google.adk.sessions.database_session_service import DatabaseSessionService
from google.adk.sessions.in_memory_session_service import InMemorySessionService
from google.adk.sessions.sqlite_session_service import SqliteSessionService
from google.genai import types

from agent_runtime import RedisSessionService
from supervisor.ops.redis_server import RedisServer

APP_NAME = "bench"
USER_ID = "u"
GET_SESSION_TRIES = 3
WARM_UP_APPENDS = 20
LIST_APP = "bench_list"
LIST_USERS = 200
LIST_TRIES = 3
SEED_BATCH = 50

OURS = "ours (RedisSessionService)"
ADK_REDIS = "ADK RedisSessionService"
ADK_SQLITE = "ADK SqliteSessionService"
ADK_DATABASE = "ADK DatabaseSessionService"
ADK_IN_MEMORY = "ADK InMemorySessionService"

ServiceFactory = Callable[[], contextlib.AbstractAsyncContextManager[BaseSessionService]]


@dataclass(frozen=True)
class ServiceSpec:
    """One service under test: its name, how to open it, and whether it stores in Redis."""

    name: str
    open: ServiceFactory
    uses_redis: bool


@dataclass(frozen=True)
class Result:
    """The numbers of one service, all times in milliseconds."""

    service: str
    appends: int
    append_total_ms: float
    append_p50_ms: float
    append_p99_ms: float
    append_10th_ms: float
    append_last_ms: float
    get_session_ms: float
    redis_kb_per_1000_events: float | None


@dataclass(frozen=True)
class ListResult:
    """``list_sessions`` of one service over ``sessions`` sessions, times in milliseconds."""

    service: str
    sessions: int
    list_ms: float
    redis_calls_per_list: float | None
    redis_time_ms: float | None
    longest_redis_call_ms: float | None


@dataclass(frozen=True)
class Ratio:
    """A ratio between two results, with the project's target for it."""

    name: str
    value: float
    target: float
    higher_is_better: bool

    @property
    def ok(self) -> bool:
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    @property
    def target_text(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.target:g}"


def make_event(i: int) -> Event:
    """The workload's i-th event: ~210 characters of text and a one-key state delta."""
    return Event(
        author="user",
        invocation_id="inv",
        content=types.Content(role="user", parts=[types.Part(text=f"message {i} " + "x" * 200)]),
        actions=EventActions(state_delta={"counter": i}),
    )


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def used_memory(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"])


def service_specs(redis_url: str, tmp_dir: Path) -> list[ServiceSpec]:
    """The services under test, in the order they run."""

    def closing(make: Callable[[], Any]) -> Callable[[], Any]:
        """A service factory whose service is closed after its run."""

        @contextlib.asynccontextmanager
        async def open_service() -> AsyncIterator[BaseSessionService]:
            svc = make()
            try:
                yield svc
            finally:
                await svc.close()

        return open_service

    ours = closing(lambda: RedisSessionService(redis_url, key_prefix="bench:", session_ttl=3600))
    adk_sqlite = closing(
        lambda: SqliteSessionService(db_path=str(tmp_dir / "sqlite_session_service.db"))
    )
    adk_database = closing(
        lambda: DatabaseSessionService(f"sqlite+aiosqlite:///{tmp_dir / 'database_service.db'}")
    )

    @contextlib.asynccontextmanager
    async def adk_redis() -> AsyncIterator[BaseSessionService]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            yield AdkRedisSessionService(
                config=RedisSessionServiceConfig(key_prefix="adkbench:", ttl_seconds=3600),
                redis_client=client,
            )
        finally:
            await client.aclose()

    @contextlib.asynccontextmanager
    async def adk_in_memory() -> AsyncIterator[BaseSessionService]:
        yield InMemorySessionService()

    return [
        ServiceSpec(OURS, ours, uses_redis=True),
        ServiceSpec(ADK_REDIS, adk_redis, uses_redis=True),
        ServiceSpec(ADK_SQLITE, adk_sqlite, uses_redis=False),
        ServiceSpec(ADK_DATABASE, adk_database, uses_redis=False),
        ServiceSpec(ADK_IN_MEMORY, adk_in_memory, uses_redis=False),
    ]


async def warm_up(svc: BaseSessionService) -> None:
    """Runs a short untimed workload on a throwaway session, then deletes it.

    The first calls pay one-time costs that are not the per-append cost being
    measured: schema creation, lazy imports and connections, loading Lua scripts
    (which also leaves a few hundred KB in the server's ``used_memory``).
    """
    session = await svc.create_session(app_name=APP_NAME, user_id=USER_ID)
    for i in range(WARM_UP_APPENDS):
        await svc.append_event(session, make_event(i))
    await svc.get_session(app_name=APP_NAME, user_id=USER_ID, session_id=session.id)
    await svc.delete_session(app_name=APP_NAME, user_id=USER_ID, session_id=session.id)


async def run_workload(spec: ServiceSpec, appends: int, probe: redis.Redis) -> Result:
    """Creates one session, appends ``appends`` events, reads the session back."""
    events = [make_event(i) for i in range(appends)]
    if spec.uses_redis:
        probe.flushall()
    async with spec.open() as svc:
        await warm_up(svc)
        memory_before = used_memory(probe) if spec.uses_redis else 0
        session = await svc.create_session(app_name=APP_NAME, user_id=USER_ID)
        times: list[float] = []
        for event in events:
            start = time.perf_counter()
            await svc.append_event(session, event)
            times.append(time.perf_counter() - start)
        memory_after = used_memory(probe) if spec.uses_redis else 0

        get_times: list[float] = []
        for _ in range(GET_SESSION_TRIES):
            # Collect the appends' garbage now, not in the middle of the timed read.
            gc.collect()
            start = time.perf_counter()
            loaded = await svc.get_session(
                app_name=APP_NAME, user_id=USER_ID, session_id=session.id
            )
            get_times.append(time.perf_counter() - start)
            if loaded is None or len(loaded.events) != appends:
                got = "no session" if loaded is None else f"{len(loaded.events)} events"
                raise AssertionError(f"{spec.name}: get_session returned {got}, not {appends}")
            if loaded.state.get("counter") != appends - 1:
                raise AssertionError(f"{spec.name}: state is {loaded.state!r}")

    ms = [t * 1000 for t in times]
    return Result(
        service=spec.name,
        appends=appends,
        append_total_ms=sum(ms),
        append_p50_ms=statistics.median(ms),
        append_p99_ms=percentile(ms, 99),
        append_10th_ms=statistics.median(ms[5:15]),
        append_last_ms=statistics.median(ms[-10:]),
        get_session_ms=min(get_times) * 1000,
        redis_kb_per_1000_events=(
            (memory_after - memory_before) / 1024 * 1000 / appends if spec.uses_redis else None
        ),
    )


async def seed_sessions(svc: BaseSessionService, count: int) -> None:
    """Creates ``count`` sessions of :data:`LIST_APP` over :data:`LIST_USERS` users."""

    async def one(i: int) -> None:
        state: dict[str, Any] = {"n": i}
        if i < LIST_USERS:
            state["user:name"] = f"user {i}"
        if i == 0:
            state["app:version"] = 1
        await svc.create_session(
            app_name=LIST_APP, user_id=f"user{i % LIST_USERS}", state=state, session_id=f"s{i}"
        )

    for start in range(0, count, SEED_BATCH):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + SEED_BATCH))))


def redis_calls(probe: redis.Redis) -> list[float]:
    """Durations (ms) of the clients' commands logged since the last ``SLOWLOG RESET``.

    Commands a Lua script runs are logged too, from the client ``?:0``: they are
    part of their script's call, not calls of their own.
    """
    entries = probe.slowlog_get(1_000_000)
    own = {b"SLOWLOG", b"CONFIG", b"INFO"}
    return [
        e["duration"] / 1000
        for e in entries
        if e.get("client_address") != b"?:0" and e["command"].split(b" ", 1)[0].upper() not in own
    ]


async def run_list_workload(spec: ServiceSpec, count: int, probe: redis.Redis) -> ListResult:
    """Seeds ``count`` sessions, then times ``list_sessions`` of the whole app."""
    if spec.uses_redis:
        probe.flushall()
    async with spec.open() as svc:
        await seed_sessions(svc, count)
        await svc.list_sessions(app_name=LIST_APP)  # warm-up: scripts loaded, pools filled
        calls: list[float] = []
        busy: list[float] = []
        longest: list[float] = []
        times: list[float] = []
        if spec.uses_redis:
            probe.config_set("slowlog-max-len", 1_000_000)
            probe.config_set("slowlog-log-slower-than", 0)
        try:
            for _ in range(LIST_TRIES):
                gc.collect()
                if spec.uses_redis:
                    probe.slowlog_reset()
                start = time.perf_counter()
                listed = await svc.list_sessions(app_name=LIST_APP)
                times.append(time.perf_counter() - start)
                if spec.uses_redis:
                    these = redis_calls(probe)
                    calls.extend(these)
                    busy.append(sum(these))
                    longest.append(max(these))
                if len(listed.sessions) != count:
                    raise AssertionError(
                        f"{spec.name}: list_sessions returned {len(listed.sessions)}, not {count}"
                    )
                if listed.sessions[0].state.get("app:version") != 1:
                    raise AssertionError(f"{spec.name}: state is {listed.sessions[0].state!r}")
        finally:
            if spec.uses_redis:
                probe.config_set("slowlog-log-slower-than", 10_000)
                probe.config_set("slowlog-max-len", 128)
    return ListResult(
        service=spec.name,
        sessions=count,
        list_ms=min(times) * 1000,
        redis_calls_per_list=len(calls) / LIST_TRIES if spec.uses_redis else None,
        redis_time_ms=statistics.median(busy) if busy else None,
        longest_redis_call_ms=statistics.median(longest) if longest else None,
    )


def ratios(results: dict[str, Result]) -> list[Ratio]:
    ours = results[OURS]
    return [
        Ratio(
            "ADK Redis total append / ours total append",
            results[ADK_REDIS].append_total_ms / ours.append_total_ms,
            20,
            higher_is_better=True,
        ),
        Ratio(
            "ADK Sqlite total append / ours total append",
            results[ADK_SQLITE].append_total_ms / ours.append_total_ms,
            5,
            higher_is_better=True,
        ),
        Ratio(
            "ours last-10 append median / ours appends 6-15 median",
            ours.append_last_ms / ours.append_10th_ms,
            1.5,
            higher_is_better=False,
        ),
        Ratio(
            "ours get_session / ADK InMemory get_session",
            ours.get_session_ms / results[ADK_IN_MEMORY].get_session_ms,
            2.0,
            higher_is_better=False,
        ),
    ]


def environment(probe: redis.Redis) -> dict[str, Any]:
    server: dict[str, Any] = probe.info("server")
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "redis_server": str(server["redis_version"]),
        "google_adk": google.adk.__version__,
    }


def print_list_report(results: list[ListResult]) -> None:
    print(f"\nlist_sessions of one app with {results[0].sessions} sessions; times in ms\n")
    headers = ["service", "list_sessions", "Redis commands", "Redis time", "longest command"]

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    table = [
        [
            r.service,
            f"{r.list_ms:.1f}",
            cell(r.redis_calls_per_list, 0),
            cell(r.redis_time_ms, 1),
            cell(r.longest_redis_call_ms, 2),
        ]
        for r in results
    ]
    widths = [max(len(row[i]) for row in [headers, *table]) for i in range(len(headers))]
    for row in [headers, *table]:
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells))


def print_header(env: dict[str, Any]) -> None:
    print(
        f"{env['date_utc']} | {env['platform']} | {env['cpu_count']} CPUs | "
        f"Python {env['python']} | redis-server {env['redis_server']} | "
        f"google-adk {env['google_adk']}"
    )


def print_report(results: list[Result], rows: list[Ratio]) -> None:
    print(f"{results[0].appends} appends per service; times in ms\n")
    headers = [
        "service",
        "append total",
        "p50",
        "p99",
        "10th",
        f"{results[0].appends}th",
        "get_session",
        "Redis KB/1000 ev",
    ]
    table = [
        [
            r.service,
            f"{r.append_total_ms:.1f}",
            f"{r.append_p50_ms:.3f}",
            f"{r.append_p99_ms:.3f}",
            f"{r.append_10th_ms:.3f}",
            f"{r.append_last_ms:.3f}",
            f"{r.get_session_ms:.2f}",
            "-" if r.redis_kb_per_1000_events is None else f"{r.redis_kb_per_1000_events:.1f}",
        ]
        for r in results
    ]
    widths = [max(len(row[i]) for row in [headers, *table]) for i in range(len(headers))]
    for row in [headers, *table]:
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells))
    print("\n'10th' is the median of appends 6-15, the last column the median of the last 10.\n")
    name_width = max(len(r.name) for r in rows)
    for ratio in rows:
        print(
            f"{ratio.name.ljust(name_width)}  {ratio.value:8.2f}  "
            f"(target {ratio.target_text})  {'ok' if ratio.ok else 'MISSED'}"
        )


async def main_async(appends: int, list_count: int, as_json: bool) -> None:
    with RedisServer() as srv, tempfile.TemporaryDirectory(prefix="adk-bench-") as tmp:
        probe = redis.Redis.from_url(srv.url)
        try:
            env = environment(probe)
            results: list[Result] = []
            listed: list[ListResult] = []
            for spec in service_specs(srv.url, Path(tmp)):
                if not as_json:
                    print(f"running {spec.name} ...", file=sys.stderr, flush=True)
                if appends:
                    results.append(await run_workload(spec, appends, probe))
                if list_count and spec.name != ADK_SQLITE:
                    listed.append(await run_list_workload(spec, list_count, probe))
        finally:
            probe.close()
    rows = ratios({r.service: r for r in results}) if results else []
    if as_json:
        report = {
            "environment": env,
            "results": [asdict(r) for r in results],
            "ratios": [{**asdict(x), "ok": x.ok} for x in rows],
            "list_sessions": [asdict(r) for r in listed],
        }
        print(json.dumps(report, indent=2))
    else:
        print_header(env)
        if results:
            print_report(results, rows)
        if listed:
            print_list_report(listed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--appends",
        type=int,
        default=1000,
        help="events appended per service (default 1000; 0 skips it)",
    )
    parser.add_argument(
        "--list-sessions",
        type=int,
        default=20_000,
        help="sessions in the app whose list_sessions is timed (default 20000; 0 skips it)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.appends and args.appends < 20:
        parser.error("--appends must be 0 or at least 20 (the report takes medians of 10 appends)")
    if args.list_sessions < 0:
        parser.error("--list-sessions must be 0 or more")
    if not args.appends and not args.list_sessions:
        parser.error("nothing to measure: --appends and --list-sessions are both 0")
    logging.getLogger("google_adk").setLevel(logging.ERROR)
    started = time.perf_counter()
    asyncio.run(main_async(args.appends, args.list_sessions, args.json))
    if not args.json:
        print(f"\nbenchmark run time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
