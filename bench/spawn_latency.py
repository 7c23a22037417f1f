"""Spawn-latency benchmark: submit -> the first line of the agent's own code runs.

Runs N (default 10) runs, one at a time, of this module's ``stamp_agent`` (a
``BaseAgent`` whose first line writes ``time.time()`` to a file) under a real
supervisor daemon on a private ``redis-server``, and splits each run's latency:

* submit -> ``starting`` written (the daemon took the run off the stream);
* submit -> the agent's first line (fork + exec + Python start + ADK import +
  app import + Runner + session creation);
* end to end: submit -> ``completed`` visible to the client.

As the peer, in the same run: a bare ``python -c`` that imports ADK and this
module and stamps the time, with no supervisor: the cold-start floor that any
spawner which execs a fresh interpreter pays.

    .venv/bin/python bench/spawn_latency.py            # 10 runs
    .venv/bin/python bench/spawn_latency.py --runs 20 --json
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
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from google.adk.agents.base_agent import BaseAgent
from google.adk.agents.invocation_context import InvocationContext
from google.adk.events.event import Event

from supervisor.client import SupervisorClient
from supervisor.ops.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
STAMP_DIR_ENV = "ADK_BENCH_STAMP_DIR"


class StampAgent(BaseAgent):
    """Writes when its first line ran, then ends the run."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        at = time.time()
        task = os.environ.get("ADK_SUPERVISOR_TASK_ID", "bare")
        Path(os.environ[STAMP_DIR_ENV], task).write_text(repr(at))
        return
        yield  # an async generator that yields nothing


stamp_agent = StampAgent(name="stamp")

_BARE = (
    "import time; t0 = time.time(); import os, sys; sys.path.insert(0, os.getcwd() + '/bench'); "
    "import google.adk.runners, spawn_latency; print(time.time() - t0)"
)


def _bare_floor(runs: int) -> list[float]:
    """Seconds for a fresh interpreter to import ADK and this module (no supervisor)."""
    out = []
    for _ in range(runs):
        t0 = time.time()
        subprocess.run([sys.executable, "-c", _BARE], cwd=ROOT, check=True, capture_output=True)
        out.append(time.time() - t0)
    return out


async def _measure(url: str, runs: int, stamp_dir: Path, mode: str) -> list[dict[str, float]]:
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    state = Path(tempfile.mkdtemp(prefix="spawn-bench-"))
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}",
        "ADK_SUPERVISOR_KEY_PREFIX": prefix,
        "ADK_SUPERVISOR_STATE_DIR": str(state),
        STAMP_DIR_ENV: str(stamp_dir),
        "ADK_SUPERVISOR_SPAWN_MODE": mode,
        # A configured app: the fork server preloads it.
        "ADK_SUPERVISOR_APPS": json.dumps({"stamp": "spawn_latency:stamp_agent"}),
    }
    log = (state / "daemon.log").open("ab")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--redis-url", url, "run"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    samples = []
    try:
        while "ready:" not in (state / "daemon.log").read_text(errors="replace"):
            if daemon.poll() is not None:
                raise SystemExit((state / "daemon.log").read_text())
            await asyncio.sleep(0.05)
        async with SupervisorClient(url, prefix) as client:
            for _ in range(runs):
                t0 = time.time()
                task = await client.submit("stamp", "go", user_id="bench")
                record = await client.wait(task, 60)
                t_end = time.time()
                assert record["state"] == "completed", record
                first_line = float((stamp_dir / task).read_text())
                samples.append(
                    {
                        "to_starting": float(record["started_at"]) - t0,
                        "to_first_line": first_line - t0,
                        "end_to_end": t_end - t0,
                    }
                )
    finally:
        daemon.terminate()
        daemon.wait(30)
        shutil.rmtree(state, ignore_errors=True)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as stamps, RedisServer() as server:
        bare = _bare_floor(args.runs)
        by_mode = {
            mode: asyncio.run(_measure(server.url, args.runs, Path(stamps), mode))
            for mode in ("fork-server", "exec")
        }

    def p50_ms(values: list[float]) -> float:
        return statistics.median(values) * 1000

    report: dict[str, object] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        "runs": args.runs,
        "bare_python_import_adk_ms_p50": p50_ms(bare),
    }
    for mode, samples in by_mode.items():
        report[mode] = {
            "submit_to_starting_ms_p50": p50_ms([s["to_starting"] for s in samples]),
            "submit_to_first_line_ms_p50": p50_ms([s["to_first_line"] for s in samples]),
            "submit_to_completed_ms_p50": p50_ms([s["end_to_end"] for s in samples]),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"# spawn latency, {report['date']}, {report['machine']}, {args.runs} runs each (p50 ms)")
    print(
        f"{'spawner':<14}{'submit->starting':>18}{'submit->first line':>20}{'submit->completed':>19}"
    )
    for mode in by_mode:
        row: Any = report[mode]
        print(
            f"{mode:<14}{row['submit_to_starting_ms_p50']:>18.1f}"
            f"{row['submit_to_first_line_ms_p50']:>20.1f}{row['submit_to_completed_ms_p50']:>19.1f}"
        )
    print(
        f"bare interpreter importing ADK (no supervisor): {report['bare_python_import_adk_ms_p50']:.1f}"
    )
    fork: Any = report["fork-server"]
    exe: Any = report["exec"]
    print(
        f"first line, exec / fork-server: "
        f"{exe['submit_to_first_line_ms_p50'] / fork['submit_to_first_line_ms_p50']:.1f}x"
    )


if __name__ == "__main__":
    main()
