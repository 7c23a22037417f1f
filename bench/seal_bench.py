"""Sealing a killed run's session: how long it holds the daemon's event loop, by session length.

For sessions of ``--events`` events (default 100, 1,000, 5,000) whose last
invocation left a function call unanswered, on a private ``redis-server``:
``seal_session`` (reads the tail that holds the killed invocation) against a
whole-session ``get_session`` (what sealing read before, on the loop, for every
killed run). Each figure is the median of ``--repeat`` calls, each on a fresh
copy of the session (a seal is idempotent, so a sealed one would cost less).

    .venv/bin/python bench/seal_bench.py
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running as a script puts bench/ (not the repository root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import time

from google.adk.events.event import Event
from google.genai import types

from agent_runtime import RedisSessionService, seal_session
from supervisor.ops.redis_server import RedisServer


async def _fill(sessions: RedisSessionService, session_id: str, events: int) -> None:
    session = await sessions.create_session(app_name="bench", user_id="u", session_id=session_id)
    turns = max(1, events // 20)
    for i in range(events - 1):
        text = types.Content(role="model", parts=[types.Part(text=f"step {i} " + "x" * 200)])
        invocation = f"inv-{min(i // 20, turns - 1)}"
        await sessions.append_event(
            session, Event(invocation_id=invocation, author="bench", content=text)
        )
    call = types.FunctionCall(id="c1", name="tool", args={"q": "x"})
    await sessions.append_event(
        session,
        Event(
            invocation_id=f"inv-{turns - 1}",
            author="bench",
            content=types.Content(role="model", parts=[types.Part(function_call=call)]),
        ),
    )


async def _measure(url: str, sizes: list[int], repeat: int) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    async with RedisSessionService(url, "bench:") as sessions:
        for size in sizes:
            full, seal = [], []
            for r in range(repeat):
                sid = f"s{size}-{r}"
                await _fill(sessions, sid, size)
                t0 = time.perf_counter()
                await sessions.get_session(app_name="bench", user_id="u", session_id=sid)
                full.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                sealed = await seal_session(
                    sessions, app_name="bench", user_id="u", session_id=sid, reason="bench"
                )
                seal.append((time.perf_counter() - t0) * 1000)
                assert any(e.get_function_responses() for e in sealed)
            out[size] = {
                "whole_session_read_ms": round(statistics.median(full), 2),
                "seal_ms": round(statistics.median(seal), 2),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    try:
        results = asyncio.run(_measure(server.url, args.events, args.repeat))
    finally:
        server.cleanup()
    if args.json:
        report = {
            "date": datetime.date.today().isoformat(),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "results": results,
        }
        print(json.dumps(report, indent=2))
        return
    print("events  whole get_session (old seal read)  seal_session (tail)")
    for size, row in results.items():
        print(f"{size:>6}  {row['whole_session_read_ms']:>12.1f} ms {row['seal_ms']:>25.1f} ms")


if __name__ == "__main__":
    main()
