"""RedisOrchestrationPlugin with many invocations live at once (the seed's 100 concurrent agents)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from google.adk.agents import LlmAgent
from google.adk.agents.run_config import RunConfig
from google.adk.apps import App
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.genai import types

from agent_runtime import TASK_ID_METADATA_KEY, RedisOrchestrationPlugin, RedisSessionService
from agent_runtime.keys import KeySchema
from agent_runtime.plugin._progress import ProgressWriter
from agent_runtime.redis_connection import connect
from agent_runtime.task_store import TaskState, TaskStore
from examples.scripted_llm import ScriptedLlm

from .history import terminal_events
from .plugin_agents import weather_agent

pytestmark = pytest.mark.anyio

LIVE = 100
PLUGIN_CLIENT = "plugin-under-test"


class _Gates:
    """Holds every invocation at two points: in its tool, then in its second model call."""

    def __init__(self) -> None:
        self.in_tool = 0
        self.all_in_tool = asyncio.Event()
        self.leave_tool = asyncio.Event()
        self.in_second_call = 0
        self.all_in_second_call = asyncio.Event()
        self.leave_second_call = asyncio.Event()

    async def lookup(self, city: str) -> dict[str, str]:
        """Looks a city up once the test lets it."""
        self.in_tool += 1
        if self.in_tool == LIVE:
            self.all_in_tool.set()
        await self.leave_tool.wait()
        return {"city": city, "sky": "clear"}


class _GatedLlm(ScriptedLlm):
    """The scripted model; its answer after the tool waits at the second gate."""

    gates: Any = None

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        last = llm_request.contents[-1] if llm_request.contents else None
        if last is not None and any(p.function_response for p in last.parts or []):
            self.gates.in_second_call += 1
            if self.gates.in_second_call == LIVE:
                self.gates.all_in_second_call.set()
            await self.gates.leave_second_call.wait()
        async for response in super().generate_content_async(llm_request, stream):
            yield response


@pytest.fixture
async def named_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """The plugin's client, named so the test can count its connections."""
    client = connect(redis_url, client_name=PLUGIN_CLIENT)
    yield client
    await client.aclose()


async def _connections(store: TaskStore, name: str) -> int:
    return sum(1 for c in await store.client.client_list() if c["name"] == name)


async def test_progress_of_100_live_invocations_takes_one_connection_and_an_abort_lands(
    named_client: aioredis.Redis,
    key_prefix: str,
    sessions: RedisSessionService,
    store: TaskStore,
) -> None:
    gates = _Gates()
    plugin = RedisOrchestrationPlugin(redis_client=named_client, key_prefix=key_prefix)
    agent = LlmAgent(
        name="gated", model=_GatedLlm(tool_name="lookup", gates=gates), tools=[gates.lookup]
    )
    runner = Runner(
        app=App(name="scale", root_agent=agent, plugins=[plugin]),
        session_service=sessions,
        auto_create_session=True,
    )
    message = types.Content(role="user", parts=[types.Part(text="go")])

    async def run(task_id: str) -> None:
        config = RunConfig(custom_metadata={TASK_ID_METADATA_KEY: task_id})
        async for _ in runner.run_async(
            user_id="u", session_id=task_id, new_message=message, run_config=config
        ):
            pass

    ids = [f"live-{i}" for i in range(LIVE)]
    runs: list[asyncio.Task[None]] = []
    try:
        async with asyncio.timeout(120):
            # One at a time into the tool: registration alone never needs many connections.
            for i, task_id in enumerate(ids):
                runs.append(asyncio.create_task(run(task_id)))
                while gates.in_tool <= i:
                    await asyncio.sleep(0.005)
            await gates.all_in_tool.wait()
            # Every invocation leaves its tool at once: each writes progress (the tool's
            # response, the second model call) in the same moment.
            gates.leave_tool.set()
            await gates.all_in_second_call.wait()
            # One connection for the subscription, one for all of the progress writes; one
            # per invocation would have filled the pool and queued terminal writes behind it.
            assert await _connections(store, PLUGIN_CLIENT) <= 4
            while True:
                records = await store.get_many(ids)
                if all(r is not None and r.get("tool_calls") == "1" for r in records):
                    break  # the progress of every invocation did land
                await asyncio.sleep(0.05)
            await store.client.publish(store.keys.abort_channel("live-7"), '{"reason":"stop"}')
            await runs[7]
            gates.leave_second_call.set()
            await asyncio.gather(*runs)
    finally:
        for task in runs:
            task.cancel()
        await plugin.close()
    records = await store.get_many(ids)
    for task_id, record in zip(ids, records, strict=True):
        want = ("aborted", "stop") if task_id == "live-7" else ("completed", "completed")
        assert record is not None and (record["state"], record["reason"]) == want, task_id
        assert len(await terminal_events(store, task_id)) == 1, task_id


async def test_progress_never_creates_a_record(
    redis_url: str, key_prefix: str, sessions: RedisSessionService, store: TaskStore
) -> None:
    # Without state tracking there is no record: progress must not leave a hash without
    # a state behind (readers take every task:* key for a record).
    plugin = RedisOrchestrationPlugin(
        redis_url=redis_url, key_prefix=key_prefix, enable_state_tracking=False
    )
    runner = Runner(
        app=App(name="papp", root_agent=weather_agent(), plugins=[plugin]),
        session_service=sessions,
        auto_create_session=True,
    )
    config = RunConfig(custom_metadata={TASK_ID_METADATA_KEY: "untracked"})
    message = types.Content(role="user", parts=[types.Part(text="go")])
    try:
        async for _ in runner.run_async(
            user_id="u", session_id="s1", new_message=message, run_config=config
        ):
            pass
        await plugin.close()
    finally:
        await plugin.close()
    assert await store.get("untracked") is None
    assert [k async for k in store.client.scan_iter(store.keys.task("*"))] == []


async def test_progress_written_late_leaves_a_terminal_record_alone(
    store: TaskStore, key_prefix: str
) -> None:
    await store.create("ended", TaskState.RUNNING, {"model_calls": 1})
    await store.transition("ended", TaskState.ABORTED, {"model_calls": 2, "reason": "stop"})
    writer = ProgressWriter(store.client, KeySchema(key_prefix))
    try:
        writer.mark("ended", lambda: {"model_calls": 1, "current_agent": "late"})
        await writer.flush()
    finally:
        await writer.close()
    record = await store.get("ended")
    assert record is not None
    assert (record["state"], record["model_calls"]) == ("aborted", "2")
    assert "current_agent" not in record
