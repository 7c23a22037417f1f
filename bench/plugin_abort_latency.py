"""Abort latency of ``RedisOrchestrationPlugin``: PUBLISH -> ``run_async`` returned.

Each of N runs starts an invocation of a scripted ``LlmAgent`` whose tool
sleeps for a minute, waits until the tool runs, then PUBLISHes
``{"action": "abort"}`` on ``<prefix>abort:<task_id>`` from a separate client
and measures the wall time until the ``async for`` over ``run_async`` ends.
That span covers: delivery to the plugin's shared subscriber,
``InvocationContext.abort()``, ADK cancelling the tool and appending its
``INVOCATION_ABORTED`` sealing events to the (Redis) session, and the plugin's
``aborted`` transition in ``after_run_callback``.

Run it from the repository root (a private ``redis-server`` on a unix socket)::

    .venv/bin/python bench/plugin_abort_latency.py            # 50 runs
    .venv/bin/python bench/plugin_abort_latency.py --runs 200

It prints p50 / p99 / max in milliseconds. Exit code 0 whatever the numbers are.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running as a script puts bench/ (not the repository root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import platform
import statistics
import time

import redis.asyncio as aioredis
from google.adk.agents import LlmAgent
from google.adk.agents.run_config import RunConfig
from google.adk.apps import App
from google.adk.runners import Runner
from google.genai import types

from agent_runtime import (
    TASK_ID_METADATA_KEY,
    RedisOrchestrationPlugin,
    RedisSessionService,
)
from examples.scripted_llm import ScriptedLlm
from supervisor.ops.redis_server import RedisServer

_started = asyncio.Event()


async def slow_lookup(city: str) -> dict[str, str]:
    """A tool that takes a minute."""
    _started.set()
    await asyncio.sleep(60)
    return {"city": city}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(redis_url: str, runs: int) -> list[float]:
    """Milliseconds from PUBLISH to run_async returning, for each run."""
    prefix = "bench-plugin:"
    plugin = RedisOrchestrationPlugin(redis_url=redis_url, key_prefix=prefix)
    sessions = RedisSessionService(redis_url, prefix)
    agent = LlmAgent(name="slow", model=ScriptedLlm(tool_name="slow_lookup"), tools=[slow_lookup])
    runner = Runner(
        app=App(name="bench", root_agent=agent, plugins=[plugin]),
        session_service=sessions,
        auto_create_session=True,
    )
    publisher = aioredis.Redis.from_url(redis_url)
    await publisher.ping()

    async def one(task_id: str) -> None:
        config = RunConfig(custom_metadata={TASK_ID_METADATA_KEY: task_id})
        message = types.Content(role="user", parts=[types.Part(text="go")])
        async for _ in runner.run_async(
            user_id="u", session_id=task_id, new_message=message, run_config=config
        ):
            pass

    latencies: list[float] = []
    for i in range(runs + 3):  # three untimed warm-up runs
        _started.clear()
        run = asyncio.create_task(one(f"run-{i}"))
        await _started.wait()
        began = time.perf_counter()
        await publisher.publish(f"{prefix}abort:run-{i}", '{"action":"abort"}')
        await run
        if i >= 3:
            latencies.append((time.perf_counter() - began) * 1000)
        state = await publisher.hget(f"{prefix}task:run-{i}", "state")
        assert state == b"aborted", state
    await publisher.aclose()
    await runner.close()
    await sessions.close()
    return latencies


def main() -> None:
    """Parses arguments, runs the benchmark on a private Redis, prints the figures."""
    parser = argparse.ArgumentParser(description="PUBLISH -> run returned, through the plugin")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    try:
        latencies = asyncio.run(measure(server.url, args.runs))
    finally:
        server.cleanup()
    print(
        f"python {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"{args.runs} runs, Redis on a unix socket"
    )
    print(
        f"PUBLISH -> run_async returned (ms): p50 {statistics.median(latencies):.2f}  "
        f"p99 {_percentile(latencies, 0.99):.2f}  max {max(latencies):.2f}"
    )


if __name__ == "__main__":
    main()
