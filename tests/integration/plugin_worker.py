"""A process running the orchestration plugin, for crash-recovery tests.

``python -m tests.integration.plugin_worker hold <redis_url> <prefix> <n>``: starts ``n``
invocations whose tool never returns (task ids ``hold-0`` ...), prints
``READY`` once every tool runs, then waits to be killed.

``python -m tests.integration.plugin_worker recover <redis_url> <prefix> <go_key>``: starts
a plugin without recovery, prints ``WAITING``, blocks until the test pushes to
``go_key`` (so several recoverers start at the same moment), then runs one
recovery pass and prints the task ids it failed as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys

import redis.asyncio as aioredis
from google.adk.agents.run_config import RunConfig
from google.adk.apps import App
from google.adk.runners import Runner
from google.genai import types

from agent_runtime import TASK_ID_METADATA_KEY, RedisOrchestrationPlugin, RedisSessionService

from .plugin_agents import ToolGate, slow_agent

HEARTBEAT_TTL_S = 1.0


async def hold(redis_url: str, prefix: str, n: int) -> None:
    plugin = RedisOrchestrationPlugin(
        redis_url, prefix, enable_crash_recovery=False, heartbeat_ttl_s=HEARTBEAT_TTL_S
    )
    gate = ToolGate()
    sessions = RedisSessionService(redis_url, prefix)
    app = App(name="papp", root_agent=slow_agent(gate), plugins=[plugin])
    runner = Runner(app=app, session_service=sessions, auto_create_session=True)

    async def one(i: int) -> None:
        message = types.Content(role="user", parts=[types.Part(text="go")])
        config = RunConfig(custom_metadata={TASK_ID_METADATA_KEY: f"hold-{i}"})
        async for _ in runner.run_async(
            user_id="u", session_id=f"s{i}", new_message=message, run_config=config
        ):
            pass

    runs = [asyncio.create_task(one(i)) for i in range(n)]
    store = aioredis.Redis.from_url(redis_url)
    while True:  # every tool is running once every record counts one tool call
        records = [
            await store.hget(f"{prefix}{{{prefix}}}task:hold-{i}", "tool_calls") for i in range(n)
        ]
        if all(r == b"1" for r in records):
            break
        await asyncio.sleep(0.02)
    print("READY", flush=True)
    await asyncio.gather(*runs)


async def recover(redis_url: str, prefix: str, go_key: str) -> None:
    plugin = RedisOrchestrationPlugin(
        redis_url, prefix, enable_crash_recovery=False, heartbeat_ttl_s=HEARTBEAT_TTL_S
    )
    await plugin.start()
    client = aioredis.Redis.from_url(redis_url)
    print("WAITING", flush=True)
    await client.blpop([go_key], timeout=60)
    recovered = await plugin.recover_crashed()
    print(json.dumps(recovered), flush=True)
    await plugin.close()
    await client.aclose()


def main() -> None:
    mode, redis_url, prefix, arg = sys.argv[1:5]
    if mode == "hold":
        asyncio.run(hold(redis_url, prefix, int(arg)))
    else:
        asyncio.run(recover(redis_url, prefix, arg))


if __name__ == "__main__":
    main()
