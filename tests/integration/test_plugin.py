"""RedisOrchestrationPlugin with a real ADK Runner, a real Redis and scripted models."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from google.adk.agents import LlmAgent
from google.adk.agents.run_config import RunConfig
from google.adk.apps import App
from google.adk.events.event import Event
from google.adk.runners import Runner
from google.genai import types
from redis.exceptions import ResponseError

from agent_runtime import (
    TASK_ID_METADATA_KEY,
    TIMEOUT_METADATA_KEY,
    RedisOrchestrationPlugin,
    RedisSessionService,
)
from agent_runtime.task_store import TaskState, TaskStore

from .history import terminal_events
from .plugin_agents import (
    ABORT_MESSAGE,
    ToolGate,
    broken_tool_agent,
    raising_model_agent,
    slow_agent,
    weather_agent,
)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def make_plugin(
    redis_url: str, key_prefix: str
) -> AsyncIterator[Callable[..., RedisOrchestrationPlugin]]:
    plugins: list[RedisOrchestrationPlugin] = []

    def make(**kwargs: Any) -> RedisOrchestrationPlugin:
        plugin = RedisOrchestrationPlugin(redis_url=redis_url, key_prefix=key_prefix, **kwargs)
        plugins.append(plugin)
        return plugin

    yield make
    for plugin in plugins:
        await plugin.close()


def _runner(
    agent: LlmAgent, plugin: RedisOrchestrationPlugin, sessions: RedisSessionService
) -> Runner:
    app = App(name="papp", root_agent=agent, plugins=[plugin])
    return Runner(app=app, session_service=sessions, auto_create_session=True)


async def _run(runner: Runner, session_id: str, text: str = "go", **meta: Any) -> list[Event]:
    config = RunConfig(custom_metadata=meta) if meta else None
    message = types.Content(role="user", parts=[types.Part(text=text)])
    return [
        e
        async for e in runner.run_async(
            user_id="u", session_id=session_id, new_message=message, run_config=config
        )
    ]


async def _only_task(store: TaskStore) -> str:
    keys = [k.decode() async for k in store.client.scan_iter(store.keys.task("*"))]
    assert len(keys) == 1, keys
    return keys[0].removeprefix(store.keys.task(""))


async def test_completed_run_is_recorded_with_progress(
    make_plugin: Callable[..., RedisOrchestrationPlugin],
    sessions: RedisSessionService,
    store: TaskStore,
) -> None:
    runner = _runner(weather_agent(), make_plugin(), sessions)
    events = await _run(runner, "s1")
    task_id = await _only_task(store)
    assert task_id == events[-1].invocation_id  # the invocation id is the default task id
    record = await store.get(task_id)
    assert record is not None
    assert record["state"] == "completed" and record["tracker"] == "plugin"
    assert (record["app"], record["user_id"], record["session_id"]) == ("papp", "u", "s1")
    assert record["model_calls"] == "2" and record["tool_calls"] == "1"
    assert record["current_agent"] == "weather" and float(record["last_event_at"]) > 0
    assert len(await terminal_events(store, task_id)) == 1
    assert not await store.client.hexists(store.keys.plugin_running, task_id)


@pytest.mark.parametrize(
    ("agent", "error"),
    [
        (broken_tool_agent, "ValueError: the tool broke on purpose for Zurich"),
        (raising_model_agent, "RuntimeError: the model broke on purpose"),
    ],
)
async def test_tool_or_model_error_is_recorded_failed(
    agent: Callable[[], LlmAgent],
    error: str,
    make_plugin: Callable[..., RedisOrchestrationPlugin],
    sessions: RedisSessionService,
    store: TaskStore,
) -> None:
    runner = _runner(agent(), make_plugin(), sessions)
    with pytest.raises(Exception, match="broke on purpose"):
        await _run(runner, "s1", **{TASK_ID_METADATA_KEY: "job-1"})
    record = await store.get("job-1")  # the caller's task id
    assert record is not None
    assert record["state"] == "failed" and error in record["reason"]
    assert record["error"] == record["reason"]
    assert len(await terminal_events(store, "job-1")) == 1


async def test_publish_aborts_run_in_slow_tool_through_adk_abort(
    make_plugin: Callable[..., RedisOrchestrationPlugin],
    sessions: RedisSessionService,
    store: TaskStore,
    redis_url: str,
    key_prefix: str,
) -> None:
    gate = ToolGate()
    runner = _runner(slow_agent(gate), make_plugin(), sessions)
    run = asyncio.create_task(_run(runner, "s1", **{TASK_ID_METADATA_KEY: "t-abort"}))
    async with asyncio.timeout(30):
        await gate.started.wait()
    # A raw PUBLISH, as `redis-cli PUBLISH adk:abort:t-abort '{...}'` sends it: no durable mark.
    publisher = aioredis.Redis.from_url(redis_url)
    assert (
        await publisher.publish(
            f"{key_prefix}abort:t-abort", '{"action":"abort","reason":"operator"}'
        )
        >= 1
    )
    await publisher.aclose()
    async with asyncio.timeout(30):
        await run  # the run returns by itself: no cancel, no exception
    assert not gate.finished
    record = await store.get("t-abort")
    assert record is not None and record["state"] == "aborted" and record["reason"] == "operator"
    assert len(await terminal_events(store, "t-abort")) == 1
    # ADK's own abort sealed the dangling call: the session is valid for the next turn.
    session = await sessions.get_session(app_name="papp", user_id="u", session_id="s1")
    assert session is not None
    call = next(c for e in session.events for c in e.get_function_calls())
    responses = [r for e in session.events for r in e.get_function_responses() if r.id == call.id]
    assert [r.response for r in responses] == [{"error": ABORT_MESSAGE}]
    assert session.events[-1].error_code == "INVOCATION_ABORTED"


async def test_durable_mark_aborts_before_the_run_starts(
    make_plugin: Callable[..., RedisOrchestrationPlugin],
    sessions: RedisSessionService,
    store: TaskStore,
) -> None:
    gate = ToolGate()
    await store.request_abort("t-early", "cancelled before it started")
    runner = _runner(slow_agent(gate), make_plugin(), sessions)
    async with asyncio.timeout(30):
        await _run(runner, "s1", **{TASK_ID_METADATA_KEY: "t-early"})
    assert not gate.started.is_set()  # the model never asked for the tool
    record = await store.get("t-early")
    assert record is not None and record["state"] == "aborted"
    assert record["reason"] == "cancelled before it started" and record["model_calls"] == "0"


async def test_timeout_ends_timed_out_through_the_abort_path(
    make_plugin: Callable[..., RedisOrchestrationPlugin],
    sessions: RedisSessionService,
    store: TaskStore,
) -> None:
    gate = ToolGate()
    runner = _runner(slow_agent(gate), make_plugin(), sessions)
    async with asyncio.timeout(60):
        await _run(runner, "s1", **{TASK_ID_METADATA_KEY: "t-slow", TIMEOUT_METADATA_KEY: 1})
    assert gate.started.is_set() and not gate.finished
    record = await store.get("t-slow")
    assert record is not None and record["state"] == "timed_out"
    assert record["reason"] == "timed out after 1s"
    # after_run ran (a cancel would skip it) and the tool call is answered.
    session = await sessions.get_session(app_name="papp", user_id="u", session_id="s1")
    assert session is not None
    assert any(
        r.response == {"error": ABORT_MESSAGE}
        for e in session.events
        for r in e.get_function_responses()
    )


async def test_one_subscriber_connection_serves_concurrent_runs(
    make_plugin: Callable[..., RedisOrchestrationPlugin],
    sessions: RedisSessionService,
    store: TaskStore,
) -> None:
    gates = [ToolGate() for _ in range(4)]
    plugin = make_plugin()
    runs = [
        asyncio.create_task(
            _run(
                _runner(slow_agent(g), plugin, sessions), f"s{i}", **{TASK_ID_METADATA_KEY: f"c{i}"}
            )
        )
        for i, g in enumerate(gates)
    ]
    async with asyncio.timeout(30):
        for gate in gates:
            await gate.started.wait()
    clients = await store.client.client_list()
    subscribers = [
        c for c in clients if c["name"].startswith("adk-plugin-abort-") and c["psub"] != "0"
    ]
    assert len(subscribers) == 1 and subscribers[0]["psub"] == "1"  # one PSUBSCRIBE pattern
    for i in range(4):
        await store.request_abort(f"c{i}", f"stop {i}")
    async with asyncio.timeout(30):
        await asyncio.gather(*runs)
    for i in range(4):
        record = await store.get(f"c{i}")
        assert record is not None and (record["state"], record["reason"]) == (
            "aborted",
            f"stop {i}",
        )


async def test_supervised_child_adds_progress_and_leaves_state_to_the_daemon(
    make_plugin: Callable[..., RedisOrchestrationPlugin],
    sessions: RedisSessionService,
    store: TaskStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await store.create("sup-1", TaskState.RUNNING, {"pid": 1})
    monkeypatch.setenv("ADK_SUPERVISOR_TASK_ID", "sup-1")
    runner = _runner(weather_agent(), make_plugin(), sessions)
    events = await _run(runner, "s1")
    record = await store.get("sup-1")
    assert record is not None and record["state"] == "running"  # the daemon records the end
    assert record["tool_calls"] == "1" and record["model_calls"] == "2"
    assert record["invocation_id"] == events[-1].invocation_id and record["adk_app"] == "papp"
    assert await terminal_events(store, "sup-1") == []


async def test_plugin_built_before_the_task_id_is_set_still_runs_supervised(
    make_plugin: Callable[..., RedisOrchestrationPlugin],
    sessions: RedisSessionService,
    store: TaskStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As in the fork server: the app (and its plugin) is built at import, before
    # the run's process learns its task id.
    monkeypatch.delenv("ADK_SUPERVISOR_TASK_ID", raising=False)
    plugin = make_plugin()
    runner = _runner(weather_agent(), plugin, sessions)
    await store.create("sup-late", TaskState.RUNNING, {"pid": 1})
    monkeypatch.setenv("ADK_SUPERVISOR_TASK_ID", "sup-late")
    events = await _run(runner, "s1")
    record = await store.get("sup-late")
    assert record is not None and record["state"] == "running"  # the daemon records the end
    assert record["tool_calls"] == "1" and record["invocation_id"] == events[-1].invocation_id
    assert await terminal_events(store, "sup-late") == []
    assert await _only_task(store) == "sup-late"  # no record of its own
    assert await store.client.hlen(store.keys.plugin_running) == 0


async def test_terminal_write_refused_by_redis_is_retried_until_it_lands(
    make_plugin: Callable[..., RedisOrchestrationPlugin],
    sessions: RedisSessionService,
    store: TaskStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plugin = make_plugin(heartbeat_ttl_s=0.3)
    await plugin.start()
    real = plugin.store.transition
    refused: list[TaskState] = []

    async def refuse_first_terminal(task_id: str, state: TaskState, *args: Any, **kw: Any) -> Any:
        if state.terminal and not refused:
            refused.append(state)
            raise ResponseError("OOM command not allowed when used memory > 'maxmemory'.")
        return await real(task_id, state, *args, **kw)

    monkeypatch.setattr(plugin.store, "transition", refuse_first_terminal)
    runner = _runner(weather_agent(), plugin, sessions)
    await _run(runner, "s1", **{TASK_ID_METADATA_KEY: "t-retry"})
    assert refused == [TaskState.COMPLETED]
    async with asyncio.timeout(30):  # the heartbeat loop retries the write
        while (await store.get("t-retry") or {}).get("state") != "completed":
            await asyncio.sleep(0.02)
    assert len(await terminal_events(store, "t-retry")) == 1
    async with asyncio.timeout(30):
        while await store.client.hexists(store.keys.plugin_running, "t-retry"):
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("same_plugin", [True, False], ids=["same-process", "other-process"])
async def test_duplicate_task_id_leaves_the_live_invocation_alone(
    same_plugin: bool,
    make_plugin: Callable[..., RedisOrchestrationPlugin],
    sessions: RedisSessionService,
    store: TaskStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = ToolGate()
    first = make_plugin()
    second = first if same_plugin else make_plugin()
    held = asyncio.create_task(
        _run(_runner(slow_agent(gate), first, sessions), "s1", **{TASK_ID_METADATA_KEY: "dup"})
    )
    async with asyncio.timeout(30):  # the first invocation sits in its tool, progress written
        while (await store.get("dup") or {}).get("tool_calls") != "1":
            await asyncio.sleep(0.02)
    before = await store.get("dup")
    index = store.keys.plugin_running
    with caplog.at_level(logging.WARNING, logger="adk_supervisor"):
        runner = _runner(weather_agent(), second, sessions)
        await _run(runner, "s2", **{TASK_ID_METADATA_KEY: "dup"})
    assert any("dup" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert await store.get("dup") == before  # not completed, not re-registered, no progress
    assert await store.client.hget(index, "dup") == first.owner.encode()

    await store.request_abort("dup", "operator")  # the first invocation is still tracked
    async with asyncio.timeout(30):
        await held
    record = await store.get("dup")
    assert record is not None and (record["state"], record["reason"]) == ("aborted", "operator")
    assert len(await terminal_events(store, "dup")) == 1
    assert not await store.client.hexists(index, "dup")


async def test_example_plugin_app_runs_without_the_daemon(redis_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.plugin_app",
        "--redis-url",
        redis_url,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    async with asyncio.timeout(120):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert out.decode().splitlines() == [
        "example-done completed - completed",
        "example-aborted aborted - demo",
        "example-timed-out timed_out - timed out after 1s",
    ]
