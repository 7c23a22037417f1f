"""Spawn benchmark: submit -> the first line of the agent's own code, and runs per second.

Under a real supervisor daemon on a private ``redis-server``, with this
module's ``stamp_agent`` (a ``BaseAgent`` whose first line writes
``time.time()`` to a file) configured in ``[apps]``:

* latency: N (default 20) runs one at a time, each split into submit ->
  ``starting`` written (the daemon took the run off the stream), submit -> the
  agent's first line (spawn, Runner, session), and submit -> ``completed``
  visible to the client; p50 and p99 of each;
* throughput (fork server only): ``--burst`` (default 300) runs submitted at
  once through the public client (``SupervisorClient.submit``, all in flight
  together), every one to ``completed`` (a process per run, records written):
  runs/s = burst / (last ``ended_at`` - first submit).

As the peer, in the same run: a bare ``python -c`` that imports ADK and this
module and stamps the time, with no supervisor: the cold-start floor that any
spawner which execs a fresh interpreter pays.

    .venv/bin/python bench/spawn_latency.py                 # 20 runs, burst of 300
    .venv/bin/python bench/spawn_latency.py --runs 50 --burst 600 --no-exec --json
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


def _cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of ``pid`` itself and of its children it reaped (utime+stime, cutime+cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def _cpu_shares(daemon: int, redis: int) -> dict[str, tuple[float, float]]:
    """Who burns the CPU: the daemon, the runs it reaped, the fork server (and the
    intermediates it reaped), redis-server, this client."""
    server = next(
        (
            int(p)
            for p in os.listdir("/proc")
            if p.isdigit()
            and Path(f"/proc/{p}/cmdline").exists()
            and b"agent_runtime.fork_server" in Path(f"/proc/{p}/cmdline").read_bytes()
            and f"PPid:\t{daemon}\n" in Path(f"/proc/{p}/status").read_text()
        ),
        None,
    )
    shares = {"daemon": _cpu_s(daemon), "redis": _cpu_s(redis), "client": _cpu_s(os.getpid())}
    if server is not None:
        shares["fork_server"] = _cpu_s(server)
    return shares


async def _burst(client: SupervisorClient, count: int, daemon: int, redis: int) -> dict[str, float]:
    """Submits ``count`` runs at once; runs/s until the last one's ``ended_at``."""
    before = _cpu_shares(daemon, redis)
    t0 = time.time()
    tasks = await asyncio.gather(
        *(client.submit("stamp", "go", user_id="bench") for _ in range(count))
    )
    submitted = time.time()
    deadline = t0 + 30 + count  # generous: a second per run is 30x slower than today
    done: dict[str, dict[str, str]] = {}
    while len(done) < count:
        # Only the runs not seen ended yet, and not too often: this client shares the cores.
        waiting = [task for task in tasks if task not in done]
        for task, record in zip(waiting, await client.store.get_many(waiting), strict=True):
            if record is not None and record.get("state") in ("completed", "failed", "aborted"):
                done[task] = record
        if time.time() > deadline:
            raise SystemExit(f"burst not done after {deadline - t0:.0f}s: {count - len(done)} left")
        if len(done) < count:
            await asyncio.sleep(0.1)
    records: list[dict[str, str] | None] = [done[task] for task in tasks]
    failed = [r for r in records if r is None or r.get("state") != "completed"]
    if failed:
        raise SystemExit(f"{len(failed)} of {count} runs did not complete: {failed[:3]}")
    last = max(float(r["ended_at"]) for r in records if r is not None)
    after = _cpu_shares(daemon, redis)
    per_run = {
        f"{name}_cpu_ms_per_run": (after[name][0] - before[name][0]) * 1000 / count
        for name in after
        if name in before
    }
    per_run["runs_cpu_ms_per_run"] = (after["daemon"][1] - before["daemon"][1]) * 1000 / count
    if "fork_server" in after and "fork_server" in before:
        per_run["intermediates_cpu_ms_per_run"] = (
            (after["fork_server"][1] - before["fork_server"][1]) * 1000 / count
        )
    return {
        **per_run,
        "runs": count,
        "submit_all_s": submitted - t0,
        "elapsed_s": last - t0,
        "runs_per_s": count / (last - t0),
    }


async def _measure(
    url: str, redis: int, runs: int, burst: int, slots: int, stamp_dir: Path, mode: str
) -> tuple[list[dict[str, float]], dict[str, float] | None]:
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    state = Path(tempfile.mkdtemp(prefix="spawn-bench-"))
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}",
        "ADK_SUPERVISOR_KEY_PREFIX": prefix,
        "ADK_SUPERVISOR_STATE_DIR": str(state),
        "ADK_SUPERVISOR_MAX_CONCURRENT_RUNS": str(slots),
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
    throughput = None
    try:
        while "ready:" not in (state / "daemon.log").read_text(errors="replace"):
            if daemon.poll() is not None:
                raise SystemExit((state / "daemon.log").read_text())
            await asyncio.sleep(0.05)
        async with SupervisorClient(url, prefix) as client:
            # One run first: the fork server answers only once it preloaded.
            await client.wait(await client.submit("stamp", "warm", user_id="bench"), 120)
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
            if burst:
                throughput = await _burst(client, burst, daemon.pid, redis)
    finally:
        daemon.terminate()
        daemon.wait(30)
        shutil.rmtree(state, ignore_errors=True)
    return samples, throughput


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs one at a time, per spawner")
    parser.add_argument("--burst", type=int, default=300, help="runs at once (fork server)")
    parser.add_argument("--slots", type=int, default=64, help="the daemon's max_concurrent_runs")
    parser.add_argument("--no-exec", action="store_true", help="skip the exec spawner")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    load = os.getloadavg()
    modes = ("fork-server",) if args.no_exec else ("fork-server", "exec")
    with tempfile.TemporaryDirectory() as stamps, RedisServer() as server:
        bare = _bare_floor(min(args.runs, 5))
        by_mode = {
            mode: asyncio.run(
                _measure(
                    server.url,
                    server.pid or 0,
                    args.runs,
                    args.burst if mode == "fork-server" else 0,
                    args.slots,
                    Path(stamps),
                    mode,
                )
            )
            for mode in modes
        }

    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        "load_avg_1m_at_start": round(load[0], 2),
        "runs": args.runs,
        "bare_python_import_adk_ms_p50": _ms(bare, 0.5),
    }
    for mode, (samples, throughput) in by_mode.items():
        row: dict[str, Any] = {}
        for key, name in (
            ("to_starting", "submit_to_starting"),
            ("to_first_line", "submit_to_first_line"),
            ("end_to_end", "submit_to_completed"),
        ):
            values = [s[key] for s in samples]
            row[f"{name}_ms_p50"] = _ms(values, 0.5)
            row[f"{name}_ms_p99"] = _ms(values, 0.99)
        if throughput is not None:
            row["burst"] = throughput
        report[mode] = row
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"# spawn, {report['date']}, {report['machine']}, load {report['load_avg_1m_at_start']}, "
        f"{args.runs} runs one at a time (ms, p50 / p99)"
    )
    print(f"{'spawner':<14}{'submit->starting':>20}{'submit->first line':>22}{'->completed':>20}")
    for mode in by_mode:
        r = report[mode]
        print(
            f"{mode:<14}"
            + "".join(
                f"{r[f'{n}_ms_p50']:>12.1f} /{r[f'{n}_ms_p99']:>7.1f}"
                for n in ("submit_to_starting", "submit_to_first_line", "submit_to_completed")
            )
        )
        if "burst" in r:
            b = r["burst"]
            print(
                f"  burst: {b['runs']} runs submitted at once (max_concurrent_runs {args.slots}): "
                f"all completed in {b['elapsed_s']:.2f} s = {b['runs_per_s']:.1f} runs/s "
                f"(submitting took {b['submit_all_s']:.2f} s)"
            )
            cpu = {k[: -len("_cpu_ms_per_run")]: v for k, v in b.items() if k.endswith("_per_run")}
            print(
                "  CPU ms per run: "
                + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
                + f" (sum {sum(cpu.values()):.1f}; 2 cores allow {2000 / sum(cpu.values()):.0f} runs/s)"
            )
    print(
        f"bare interpreter importing ADK (no supervisor): {report['bare_python_import_adk_ms_p50']:.1f}"
    )
    if "exec" in report:
        fork, exe = report["fork-server"], report["exec"]
        print(
            f"first line, exec / fork-server: "
            f"{exe['submit_to_first_line_ms_p50'] / fork['submit_to_first_line_ms_p50']:.1f}x"
        )


if __name__ == "__main__":
    main()
