"""Gateway benchmark: what an HTTP client of ``adk-supervisor gateway`` waits for, and how fast a stop is.

A real daemon and a real gateway (uvicorn, its own process) on a private
``redis-server``, the example agents, httpx as the client. N times each:

* ``POST /run_sse`` of the tool-calling weather agent: -> the response's headers
  (the run is queued), -> the first event, -> the stream's end;
* ``POST /run_sse`` with ``streaming`` of the story agent: -> the first partial text;
* stop by disconnect (adk web's stop button): the client closes ``/run_sse`` while
  the slow agent sits in its tool -> the record ``aborted`` (task-events channel)
  -> the run's process gone (its pidfd);
* stop from another connection: ``POST /runs/{id}/abort`` -> the ``/run_sse``
  stream ended (ADK's error frame, then EOF).

    .venv/bin/python bench/gateway_latency.py            # 10 runs of each
    .venv/bin/python bench/gateway_latency.py --runs 5

The exit code is 0 whatever the numbers are: this is a benchmark, not a test.
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
import select
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

import httpx

from supervisor.client import SupervisorClient
from supervisor.ops.redis_server import RedisServer
from tests.integration.daemon_harness import Daemon
from tests.integration.gateway_harness import EXAMPLE_APPS, GatewayProcess


def _ms(values: list[float]) -> str:
    values = sorted(v * 1000 for v in values)
    return f"p50 {statistics.median(values):7.1f} ms   max {values[-1]:7.1f} ms   (n={len(values)})"


def _body(app: str, session: str, **extra: object) -> dict[str, object]:
    return {
        "appName": app,
        "userId": "u",
        "sessionId": session,
        "newMessage": {"role": "user", "parts": [{"text": "hi"}]},
        **extra,
    }


async def _until(check: Callable[[], Awaitable[bool]]) -> float:
    """When ``check`` first holds (polled every 0.5 ms, for up to 30 s)."""
    for _ in range(60_000):
        if await check():
            return time.perf_counter()
        await asyncio.sleep(0.0005)
    raise TimeoutError


async def _gone(pid: int) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], 0)[0])
    finally:
        os.close(fd)


async def main(runs: int) -> None:
    server = RedisServer(tcp=True)
    server.start()
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    daemon = Daemon(
        server.url, prefix, work / "state", "auto", ADK_SUPERVISOR_APPS=json.dumps(EXAMPLE_APPS)
    )
    gateway = GatewayProcess(server.url, prefix, work / "gateway" / "gateway.log")
    daemon.start()
    url = gateway.start()
    figures: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    try:
        async with (
            httpx.AsyncClient(base_url=url, timeout=60) as http,
            SupervisorClient(server.url, prefix) as client,
        ):
            for app in ("weather", "story", "slow"):
                await http.post(f"/apps/{app}/users/u/sessions", json={"sessionId": "b"})
            for _ in range(runs):
                start = time.perf_counter()
                async with http.stream("POST", "/run_sse", json=_body("weather", "b")) as reply:
                    note("weather: headers (queued)", time.perf_counter() - start)
                    first = None
                    async for line in reply.aiter_lines():
                        if line.startswith("data:") and first is None:
                            first = time.perf_counter() - start
                note("weather: first event", first or 0.0)
                note("weather: stream end", time.perf_counter() - start)

                start = time.perf_counter()
                async with http.stream(
                    "POST", "/run_sse", json=_body("story", "b", streaming=True)
                ) as reply:
                    async for line in reply.aiter_lines():
                        if line.startswith("data:"):
                            note("story: first partial text", time.perf_counter() - start)
                            break

                # adk web's stop: the client closes the stream.
                async with http.stream("POST", "/run_sse", json=_body("slow", "b")) as reply:
                    task_id = reply.headers["x-adk-task-id"]
                    async for line in reply.aiter_lines():
                        if line.startswith("data:"):
                            break
                    await _until(partial(_state_is, client, task_id, "running"))
                    pid = int((await client.get(task_id))["pid"])
                    closed = time.perf_counter()
                aborted = await _until(partial(_state_is, client, task_id, "aborted"))
                gone = await _until(partial(_gone, pid))
                note("stop (disconnect) -> record aborted", aborted - closed)
                note("stop (disconnect) -> process gone", gone - closed)

                # A stop from another connection: POST /runs/{id}/abort.
                async with http.stream("POST", "/run_sse", json=_body("slow", "b")) as reply:
                    task_id = reply.headers["x-adk-task-id"]
                    lines = reply.aiter_lines()
                    async for line in lines:
                        if line.startswith("data:"):
                            break
                    await _until(partial(_state_is, client, task_id, "running"))
                    sent = time.perf_counter()
                    await http.post(f"/runs/{task_id}/abort", json={"reason": "bench"})
                    async for _ in lines:
                        pass
                    note("POST /runs/{id}/abort -> /run_sse ended", time.perf_counter() - sent)
    finally:
        gateway.stop()
        daemon.stop()
        server.cleanup()
    print(f"gateway latency, {runs} runs each (daemon + gateway + redis-server on this host)")
    for name, values in figures.items():
        print(f"  {name:<42} {_ms(values)}")


async def _state_is(client: SupervisorClient, task_id: str, state: str) -> bool:
    return (await client.get(task_id)).get("state") == state


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    asyncio.run(main(parser.parse_args().runs))
