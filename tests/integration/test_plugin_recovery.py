"""Crash recovery of plugin processes: real processes, real SIGKILL, real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from google.adk.agents import LlmAgent
from google.adk.apps import App
from google.adk.runners import Runner
from google.genai import types
from redis.exceptions import ResponseError

from agent_runtime import SEAL_METADATA_KEY, RedisOrchestrationPlugin, RedisSessionService
from agent_runtime.abort_feed import AbortFeed
from agent_runtime.plugin._abort_hub import acquire_abort_hub
from agent_runtime.plugin.recovery import ProcessHeartbeat
from agent_runtime.task_store import TaskStore

from .history import terminal_events
from .plugin_agents import ABORT_MESSAGE, HistoryCheckingLlm, history_problems

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spawn() -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.plugin_worker", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def _line(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        line = await asyncio.to_thread(proc.stdout.readline)
    assert line, f"worker exited with {proc.poll()} before writing"
    return line.strip()


async def _killed_holder(spawn: Any, redis_url: str, key_prefix: str, n: int) -> str:
    """Starts a process running ``n`` invocations, SIGKILLs it mid-tool; returns its owner id."""
    holder = spawn("hold", redis_url, key_prefix, str(n))
    assert await _line(holder) == "READY"
    client = aioredis.Redis.from_url(redis_url)
    owner = (await client.hget(f"{key_prefix}{{{key_prefix}}}task:hold-0", "owner") or b"").decode()
    assert (await client.hget(f"{key_prefix}{{{key_prefix}}}task:hold-0", "state")) == b"running"
    await client.aclose()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    return owner


async def _states(store: TaskStore, task_ids: list[str]) -> list[str]:
    return [(r or {}).get("state", "") for r in await store.get_many(task_ids)]


async def test_kill9_process_tasks_are_failed_sealed_and_session_usable(
    spawn: Any, store: TaskStore, redis_url: str, key_prefix: str
) -> None:
    owner = await _killed_holder(spawn, redis_url, key_prefix, 2)
    async with RedisSessionService(redis_url, key_prefix) as sessions:
        recoverer = RedisOrchestrationPlugin(
            redis_url,
            key_prefix,
            heartbeat_ttl_s=1,
            recovery_interval_s=0.2,
            session_service=sessions,
        )
        try:
            await recoverer.start()  # recovers at start, then every 0.2 s
            async with asyncio.timeout(60):
                while await _states(store, ["hold-0", "hold-1"]) != ["failed", "failed"]:
                    await asyncio.sleep(0.05)
        finally:
            await recoverer.close()
        for i in range(2):
            record = await store.get(f"hold-{i}")
            assert record is not None and record["reason"].startswith("recovered: process")
            assert owner in record["reason"] and record["recovered_by"] == recoverer.owner
            assert len(await terminal_events(store, f"hold-{i}")) == 1
        assert await store.client.hlen(store.keys.plugin_running) == 0

        # The killed invocation's tool call is answered as ADK's abort answers it.
        session = await sessions.get_session(app_name="papp", user_id="u", session_id="s0")
        assert session is not None
        call = next(c for e in session.events for c in e.get_function_calls())
        responses = [
            r for e in session.events for r in e.get_function_responses() if r.id == call.id
        ]
        assert [r.response for r in responses] == [{"error": ABORT_MESSAGE}]
        seal = session.events[-1].custom_metadata or {}
        assert seal[SEAL_METADATA_KEY]["state"] == "failed"

        # The next turn on that session gives the model a well-formed history.
        checker = HistoryCheckingLlm(seen=[])
        runner = Runner(
            app=App(name="papp", root_agent=LlmAgent(name="slow", model=checker)),
            session_service=sessions,
        )
        message = types.Content(role="user", parts=[types.Part(text="still there?")])
        async for _ in runner.run_async(user_id="u", session_id="s0", new_message=message):
            pass
        contents = checker.seen[0]
        assert history_problems(contents) == []
        assert any(
            p.function_response and p.function_response.response == {"error": ABORT_MESSAGE}
            for c in contents
            for p in c.parts or []
        )


async def test_two_processes_recovering_at_once_fail_each_task_exactly_once(
    spawn: Any, store: TaskStore, redis_url: str, key_prefix: str
) -> None:
    n = 6
    owner = await _killed_holder(spawn, redis_url, key_prefix, n)
    go_key = f"{key_prefix}go"
    recoverers = [spawn("recover", redis_url, key_prefix, go_key) for _ in range(2)]
    for proc in recoverers:
        assert await _line(proc) == "WAITING"
    async with asyncio.timeout(60):  # the dead process's heartbeat expires
        while await store.client.exists(f"{key_prefix}{{{key_prefix}}}plugin-heartbeat:{owner}"):
            await asyncio.sleep(0.05)
    await store.client.lpush(go_key, "go", "go")  # both start recovering at the same moment
    results = [json.loads(await _line(proc)) for proc in recoverers]
    assert sorted(results[0] + results[1]) == sorted(f"hold-{i}" for i in range(n))
    assert not set(results[0]) & set(results[1])
    for i in range(n):
        record = await store.get(f"hold-{i}")
        assert record is not None and record["state"] == "failed"
        assert len(await terminal_events(store, f"hold-{i}")) == 1


async def test_heartbeat_loop_outlives_error_replies_and_unexpected_errors(
    store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[BaseException] = [
        ResponseError("READONLY You can't write against a read only replica."),
        RuntimeError("unexpected"),
    ]
    hook_calls = 0

    async def hook() -> None:
        nonlocal hook_calls
        hook_calls += 1
        if hook_calls == 1:
            raise RuntimeError("hook broke once")

    heartbeat = ProcessHeartbeat(store, "owner-x", 0.3, on_beat=hook)
    real_beat = heartbeat.beat

    async def flaky_beat() -> None:
        if failures:
            raise failures.pop(0)
        await real_beat()

    monkeypatch.setattr(heartbeat, "beat", flaky_beat)
    heartbeat.start()
    try:
        async with asyncio.timeout(30):  # the loop goes on past both failures and the hook's
            while hook_calls < 2:
                await asyncio.sleep(0.02)
        assert failures == [] and await store.client.exists(heartbeat.key)
    finally:
        await heartbeat.stop()


async def test_abort_subscription_outlives_error_replies_and_unexpected_errors(
    store: TaskStore, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[BaseException] = [
        ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
        RuntimeError("unexpected"),
    ]
    real_recheck = AbortFeed.recheck

    async def flaky_recheck(self: AbortFeed, task_ids: Iterable[str] | None = None) -> None:
        if failures:
            raise failures.pop(0)
        await real_recheck(self, task_ids)

    monkeypatch.setattr(AbortFeed, "recheck", flaky_recheck)
    subscriber = acquire_abort_hub(redis_url, key_prefix)
    try:
        assert await subscriber.feed.wait_subscribed(30)  # resubscribed after both failures
        assert failures == []
        reasons: list[str] = []
        subscriber.register("t-sub", reasons.append)
        await store.request_abort("t-sub", "operator")
        async with asyncio.timeout(30):
            while not reasons:
                await asyncio.sleep(0.02)
        assert reasons == ["operator"]
    finally:
        await subscriber.release()
