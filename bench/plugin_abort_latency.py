"""Abort latency of ``RedisOrchestrationPlugin``: PUBLISH -> ``run_async`` returned.

One at a time (the default): each of N runs starts an invocation of a scripted
``LlmAgent`` whose tool sleeps for a minute, waits until the tool runs, then
PUBLISHes ``{"action": "abort"}`` on ``<prefix>abort:<task_id>`` from a separate
client and measures the wall time until the ``async for`` over ``run_async``
ends. That span covers: delivery to the plugin's shared subscriber,
``InvocationContext.abort()``, ADK cancelling the tool and appending its
``INVOCATION_ABORTED`` sealing events to the (Redis) session, and the plugin's
``aborted`` transition in ``after_run_callback``.

Concurrently (``--concurrency N --total M``): N invocations live at once, M in
all, through one runner, one plugin and one Redis session service. Every
invocation calls a scripted model (``--model-ms`` per call) twice and a tool
(``--tool-ms``) once; every ``--abort-every``-th is aborted by a PUBLISH at a
random point after the plugin registered it (its tool hangs, so it cannot
complete first). Prints p50 / p99 of PUBLISH -> the plugin's abort handler ran,
-> the record became ``aborted`` (seen by a subscriber thread of
``<prefix>task-events``), -> ``run_async`` returned; invocations per second; and
checks every record: ``completed`` or ``aborted`` as intended, and exactly one
terminal entry in each run's events stream. Exits 1 if a record is wrong.

Run it from the repository root (a private ``redis-server`` on a unix socket)::

    .venv/bin/python bench/plugin_abort_latency.py            # 50 runs, one at a time
    .venv/bin/python bench/plugin_abort_latency.py --runs 200
    .venv/bin/python bench/plugin_abort_latency.py --concurrency 100 --total 10000

Figures print in milliseconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running as a script puts bench/ (not the repository root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import statistics
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from google.adk.agents import LlmAgent
from google.adk.agents.invocation_context import InvocationContext
from google.adk.agents.run_config import RunConfig
from google.adk.apps import App
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.tools.tool_context import ToolContext
from google.genai import types

from agent_runtime import (
    TASK_ID_METADATA_KEY,
    RedisOrchestrationPlugin,
    RedisSessionService,
)
from agent_runtime.keys import KeySchema
from agent_runtime.task_store import TaskState
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
    """Milliseconds from PUBLISH to run_async returning, for each run, one at a time."""
    prefix = "bench-plugin:"
    keys = KeySchema(prefix)
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
        await publisher.publish(keys.abort_channel(f"run-{i}"), '{"action":"abort"}')
        await run
        if i >= 3:
            latencies.append((time.perf_counter() - began) * 1000)
        state = await publisher.hget(keys.task(f"run-{i}"), "state")
        assert state == b"aborted", state
    await publisher.aclose()
    await runner.close()
    await sessions.close()
    return latencies


# ------------------------------------------------------------------ concurrent


class _PacedLlm(ScriptedLlm):
    """The scripted model, taking ``delay_s`` per call like a remote model's latency, and
    reporting token usage as one does (without it ADK logs a warning per call)."""

    delay_s: float = 0.0

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        await asyncio.sleep(self.delay_s)
        async for response in super().generate_content_async(llm_request, stream):
            response.usage_metadata = types.GenerateContentResponseUsageMetadata(
                prompt_token_count=20, candidates_token_count=10, total_token_count=30
            )
            yield response


@dataclass
class _Scenario:
    """What the concurrent run shares: the doomed task ids and the timestamps taken."""

    tool_s: float
    doomed: set[str] = field(default_factory=set)
    registered: dict[str, asyncio.Event] = field(default_factory=dict)
    handled: dict[str, float] = field(default_factory=dict)
    recorded: dict[str, float] = field(default_factory=dict)


class _TimedPlugin(RedisOrchestrationPlugin):
    """The plugin, noting when each invocation is registered and when its abort handler ran."""

    def __init__(self, scenario: _Scenario, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario

    def _abort(self, inv: Any, state: TaskState, reason: str) -> None:
        self.scenario.handled.setdefault(inv.task_id, time.perf_counter())
        super()._abort(inv, state, reason)

    async def before_run_callback(
        self, *, invocation_context: InvocationContext
    ) -> types.Content | None:
        result = await super().before_run_callback(invocation_context=invocation_context)
        event = self.scenario.registered.get(invocation_context.session.id)
        if event is not None:
            event.set()
        return result


def _watch_records(url: str, channel: str, scenario: _Scenario, ready: threading.Event) -> None:
    """In a thread (off the measured event loop): when each record turned ``aborted``."""
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    for message in pubsub.listen():
        if message["type"] == "subscribe":
            ready.set()
            continue
        if message["type"] != "message":
            continue
        if message["data"] == b"stop":
            break
        event = json.loads(message["data"])
        if event.get("state") == "aborted":
            scenario.recorded.setdefault(event["task_id"], time.perf_counter())
    pubsub.close()
    client.close()


@dataclass
class ConcurrentFigures:
    """The concurrent run's measurements (milliseconds) and its record check."""

    handled: list[float]
    recorded: list[float]
    returned: list[float]
    wall_s: float
    cpu_s: float
    commands: dict[str, int]
    total: int
    aborted: int
    wrong: list[str]


async def measure_concurrent(
    redis_url: str,
    concurrency: int,
    total: int,
    abort_every: int,
    model_s: float,
    tool_s: float,
    seed: int,
) -> ConcurrentFigures:
    """Runs ``total`` invocations, ``concurrency`` at once, aborting every ``abort_every``-th."""
    prefix = "bench-plugin-c:"
    keys = KeySchema(prefix)
    rng = random.Random(seed)
    scenario = _Scenario(tool_s=tool_s)

    async def lookup(city: str, tool_context: ToolContext) -> dict[str, str]:
        """A tool taking ``tool_s``; a doomed invocation's hangs until aborted."""
        if tool_context.session.id in scenario.doomed:
            await asyncio.sleep(3600)
        await asyncio.sleep(scenario.tool_s)
        return {"city": city, "weather": "sunny"}

    plugin = _TimedPlugin(scenario, redis_url=redis_url, key_prefix=prefix)
    sessions = RedisSessionService(redis_url, prefix)
    agent = LlmAgent(
        name="paced", model=_PacedLlm(tool_name="lookup", delay_s=model_s), tools=[lookup]
    )
    runner = Runner(
        app=App(name="bench", root_agent=agent, plugins=[plugin]),
        session_service=sessions,
        auto_create_session=True,
    )
    publisher = aioredis.Redis.from_url(redis_url)
    await publisher.ping()
    ready = threading.Event()
    watcher = threading.Thread(
        target=_watch_records,
        args=(redis_url, keys.task_events, scenario, ready),
        daemon=True,
    )
    watcher.start()
    ready.wait(10)
    await plugin.start()

    published: dict[str, float] = {}
    returned: dict[str, float] = {}
    # A doomed invocation is aborted at a random point of what a whole one takes.
    span_s = 2 * model_s + tool_s
    ids = [f"c-{i}" for i in range(total)]
    doomed = {t for i, t in enumerate(ids) if abort_every and i % abort_every == abort_every - 1}
    scenario.doomed = doomed
    message = types.Content(role="user", parts=[types.Part(text="go")])
    pending = iter(ids)

    async def abort_later(task_id: str, delay: float) -> None:
        await scenario.registered[task_id].wait()
        await asyncio.sleep(delay)
        published[task_id] = time.perf_counter()
        await publisher.publish(keys.abort_channel(task_id), '{"action":"abort"}')

    async def worker() -> None:
        for task_id in pending:
            config = RunConfig(custom_metadata={TASK_ID_METADATA_KEY: task_id})
            aborter: asyncio.Task[None] | None = None
            if task_id in doomed:
                scenario.registered[task_id] = asyncio.Event()
                aborter = asyncio.create_task(abort_later(task_id, rng.uniform(0, span_s)))
            async for _ in runner.run_async(
                user_id="u", session_id=task_id, new_message=message, run_config=config
            ):
                pass
            returned[task_id] = time.perf_counter()
            if aborter is not None:
                await aborter

    stats_before = await publisher.info("commandstats")
    began = time.perf_counter()
    cpu_began = _cpu_s()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    wall_s = time.perf_counter() - began
    cpu_s = _cpu_s() - cpu_began
    stats_after = await publisher.info("commandstats")
    commands = {
        name.removeprefix("cmdstat_"): int(stat["calls"])
        - int(stats_before.get(name, {}).get("calls", 0))
        for name, stat in stats_after.items()
    }

    wrong: list[str] = []
    records = await plugin.store.get_many(ids)
    async with publisher.pipeline(transaction=False) as pipe:
        for task_id in ids:
            pipe.xrange(keys.run_events(task_id))
        streams = await pipe.execute()
    for task_id, record, entries in zip(ids, records, streams, strict=True):
        want = "aborted" if task_id in doomed else "completed"
        state = (record or {}).get("state")
        terminal = [
            e
            for _, e in entries
            if e.get(b"type") == b"state"
            and json.loads(e[b"data"]).get("state") in {s.value for s in TaskState if s.terminal}
        ]
        if state != want or len(terminal) != 1:
            wrong.append(f"{task_id}: {state}, {len(terminal)} terminal entries (want {want})")
    await publisher.publish(keys.task_events, "stop")
    watcher.join(10)
    await publisher.aclose()
    await runner.close()
    await sessions.close()

    def since_publish(stamps: dict[str, float]) -> list[float]:
        return [(stamps[t] - published[t]) * 1000 for t in doomed if t in stamps]

    return ConcurrentFigures(
        handled=since_publish(scenario.handled),
        recorded=since_publish(scenario.recorded),
        returned=since_publish(returned),
        wall_s=wall_s,
        cpu_s=cpu_s,
        commands=commands,
        total=total,
        aborted=len(doomed),
        wrong=wrong,
    )


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _spread(values: list[float]) -> str:
    if not values:
        return "none"
    return (
        f"p50 {statistics.median(values):7.1f}  p99 {_percentile(values, 0.99):7.1f}  "
        f"max {max(values):7.1f}  (n={len(values)})"
    )


def main() -> None:
    """Parses arguments, runs the benchmark on a private Redis, prints the figures."""
    parser = argparse.ArgumentParser(description="PUBLISH -> run returned, through the plugin")
    parser.add_argument("--runs", type=int, default=50, help="one at a time: aborted runs")
    parser.add_argument("--concurrency", type=int, default=0, help="invocations live at once")
    parser.add_argument("--total", type=int, default=1000, help="with --concurrency: in all")
    parser.add_argument("--abort-every", type=int, default=10, help="abort every n-th")
    parser.add_argument("--model-ms", type=float, default=20.0, help="each model call's latency")
    parser.add_argument("--tool-ms", type=float, default=50.0, help="the tool's duration")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    try:
        if args.concurrency > 0:
            figures = asyncio.run(
                measure_concurrent(
                    server.url,
                    args.concurrency,
                    args.total,
                    args.abort_every,
                    args.model_ms / 1000,
                    args.tool_ms / 1000,
                    args.seed,
                )
            )
        else:
            latencies = asyncio.run(measure(server.url, args.runs))
    finally:
        server.cleanup()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"python {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} cores, load average {load}, Redis on a unix socket"
    )
    if args.concurrency <= 0:
        print(f"{args.runs} runs, one at a time")
        print(
            f"PUBLISH -> run_async returned (ms): p50 {statistics.median(latencies):.2f}  "
            f"p99 {_percentile(latencies, 0.99):.2f}  max {max(latencies):.2f}"
        )
        return
    print(
        f"{figures.total} invocations, {args.concurrency} at once, {figures.aborted} aborted "
        f"(every {args.abort_every}th); model call {args.model_ms:g} ms, tool {args.tool_ms:g} ms"
    )
    print(f"PUBLISH -> abort handler ran      (ms): {_spread(figures.handled)}")
    print(f"PUBLISH -> record aborted         (ms): {_spread(figures.recorded)}")
    print(f"PUBLISH -> run_async returned     (ms): {_spread(figures.returned)}")
    print(
        f"{figures.total / figures.wall_s:.1f} invocations/s ({figures.wall_s:.1f} s), "
        f"{figures.cpu_s / figures.total * 1000:.1f} ms CPU per invocation (this process); "
        f"records wrong: {len(figures.wrong)}"
    )
    busiest = sorted(figures.commands.items(), key=lambda kv: -kv[1])[:8]
    print(
        f"Redis commands per invocation (plugin and sessions): "
        f"{sum(figures.commands.values()) / figures.total:.1f}; "
        + ", ".join(f"{name} {calls / figures.total:.1f}" for name, calls in busiest)
    )
    for line in figures.wrong[:20]:
        print("  " + line)
    if figures.wrong:
        sys.exit(1)


if __name__ == "__main__":
    main()
