"""Retention benchmark: 10,000 runs through a real daemon, and what they leave behind.

A real daemon on a private ``redis-server`` runs ``--runs`` (default 10,000) runs of
this module's ``log_agent`` (prints one line of about 1 KB and ends; configured in
``[apps]``, so the fork server preloads it) with ``--slots`` runs at once. A
submitter keeps the runs stream fed a few hundred runs ahead; runs end as
``completed`` on ``<prefix>task-events``. At 1k, 5k and 10k ended runs it prints
the run rate so far, Redis's ``used_memory``, its key count (``DBSIZE``: the server
is the bench's own), the history stream's length, and the log directory's files
and bytes.

Two settings, one after the other:

* ``retention``: the defaults, with the time windows shortened so that they pass
  within the bench (``record_ttl_s``, ``session_ttl_s`` and, where the daemon has
  them, ``events_ttl_s``: 60 s; ``run_log_max_files = 1000``); with 60 s windows
  Redis should plateau after a minute of runs, the log directory at 1,000 files;
* ``none``: every retention off (TTLs 0, log limits 0; the history stream keeps
  its cap), for ``--compare-runs`` runs (default 2,000: the growth per run is
  what it shows; ``--compare-runs 10000`` runs it in full).

    .venv/bin/python bench/retention_bench.py
    .venv/bin/python bench/retention_bench.py --runs 2000 --compare-runs 0 --json

The exit code is 0 whatever the numbers are: this is a benchmark, not a test.
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
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import redis.asyncio as aioredis
from google.adk.agents.base_agent import BaseAgent
from google.adk.agents.invocation_context import InvocationContext
from google.adk.events.event import Event
from google.genai import types

from supervisor.client import SupervisorClient
from supervisor.config import Settings
from supervisor.ops.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"completed", "failed", "timed_out", "aborted"}
AHEAD = 400  # runs submitted but not yet ended: enough to keep every slot busy


class LogAgent(BaseAgent):
    """Prints one line of about 1 KB (its run log) and answers once."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        print("log line " + "x" * 1000, flush=True)
        yield Event(
            author=self.name,
            invocation_id=ctx.invocation_id,
            content=types.Content(role="model", parts=[types.Part(text="done")]),
        )


log_agent = LogAgent(name="log")


def _settings(mode: str) -> dict[str, str]:
    known = Settings.model_fields
    if mode == "retention":
        chosen = {
            "record_ttl_s": "60",
            "session_ttl_s": "60",
            "events_ttl_s": "60",
            "run_log_max_files": "1000",
        }
    else:
        chosen = {
            "record_ttl_s": "0",
            "session_ttl_s": "0",
            "events_ttl_s": "0",
            "run_log_retention_s": "0",
            "run_log_max_files": "0",
            "run_log_dir_max_bytes": "0",
            "run_log_max_bytes": "0",
        }
    return {k: v for k, v in chosen.items() if k in known}


def _checkpoints(runs: int) -> list[int]:
    points = [p for p in (1000, 2000, 5000, 10_000) if p < runs]
    return [*points, runs]


async def _measure(r: aioredis.Redis, prefix: str, log_dir: Path) -> dict[str, int]:
    memory = await r.info("memory")
    files = 0
    size = 0
    for entry in os.scandir(log_dir):
        if entry.name.endswith(".log"):
            with contextlib.suppress(FileNotFoundError):
                size += entry.stat().st_size
                files += 1
    return {
        "used_memory": int(memory["used_memory"]),
        "keys": int(await r.dbsize()),
        "history": int(await r.xlen(f"{prefix}{{{prefix}}}task-history")),
        "log_files": files,
        "log_bytes": size,
    }


async def _drive(url: str, mode: str, runs: int, slots: int) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    state = Path(tempfile.mkdtemp(prefix="retention-bench-"))
    settings = _settings(mode)
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}",
        "ADK_SUPERVISOR_KEY_PREFIX": prefix,
        "ADK_SUPERVISOR_NODE_ID": f"bench-{uuid.uuid4().hex[:6]}",
        "ADK_SUPERVISOR_STATE_DIR": str(state),
        "ADK_SUPERVISOR_MAX_CONCURRENT_RUNS": str(slots),
        "ADK_SUPERVISOR_APPS": json.dumps({"log": "retention_bench:log_agent"}),
        **{f"ADK_SUPERVISOR_{k.upper()}": v for k, v in settings.items()},
    }
    log = (state / "daemon.log").open("ab")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--redis-url", url, "run"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    r = aioredis.Redis.from_url(url, decode_responses=True)
    rows: list[dict[str, Any]] = []
    states: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 120
        while "ready:" not in (state / "daemon.log").read_text(errors="replace"):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((state / "daemon.log").read_text())
            await asyncio.sleep(0.05)
        ended = 0
        submitted = 0
        points = _checkpoints(runs)
        async with SupervisorClient(url, prefix) as client, r.pubsub() as sub:
            await sub.subscribe(f"{prefix}task-events")
            t0 = time.monotonic()
            while ended < runs:
                while submitted < runs and submitted - ended < AHEAD:
                    await client.submit("log", "hi", user_id="bench")
                    submitted += 1
                message = await sub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is None:
                    if daemon.poll() is not None:
                        raise SystemExit("the daemon exited:\n" + daemon_log_tail(state))
                    continue
                event = json.loads(message["data"])
                if event["state"] not in TERMINAL:
                    continue
                ended += 1
                states[event["state"]] = states.get(event["state"], 0) + 1
                if ended == points[0]:
                    points.pop(0)
                    elapsed = time.monotonic() - t0
                    row = {"runs": ended, "runs_per_s": round(ended / elapsed, 1)}
                    row |= await _measure(r, prefix, state / "logs")
                    rows.append(row)
                    print(f"  {mode}: {_line(row)}", file=sys.stderr, flush=True)
    finally:
        await r.aclose()
        daemon.terminate()
        daemon.wait(60)
        shutil.rmtree(state, ignore_errors=True)
    return {"settings": settings, "slots": slots, "states": states, "checkpoints": rows}


def daemon_log_tail(state: Path) -> str:
    """The last lines the daemon logged."""
    return "\n".join((state / "daemon.log").read_text(errors="replace").splitlines()[-20:])


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['runs']:>6} runs  {row['runs_per_s']:>6.1f} runs/s  "
        f"used_memory {row['used_memory'] / 2**20:>7.1f} MiB  keys {row['keys']:>6}  "
        f"history {row['history']:>6}  logs {row['log_files']:>6} files "
        f"{row['log_bytes'] / 2**20:>7.2f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--compare-runs", type=int, default=2000, help="0: no comparison")
    parser.add_argument("--slots", type=int, default=16, help="max_concurrent_runs")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
    }
    plan = [("retention", args.runs), ("none", args.compare_runs)]
    for mode, runs in plan:
        if runs <= 0:
            continue
        with RedisServer() as server:  # each mode on a fresh Redis: used_memory is its own
            report[mode] = asyncio.run(_drive(server.url, mode, runs, args.slots))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"# retention, {report['date']}, {report['machine']}, {args.slots} runs at once")
    for mode, _ in plan:
        if mode not in report:
            continue
        print(f"{mode}: {report[mode]['settings']}  ended: {report[mode]['states']}")
        for row in report[mode]["checkpoints"]:
            print(f"  {_line(row)}")


if __name__ == "__main__":
    main()
