"""What /metrics costs with many live runs: scrape latency over HTTP, the daemon's CPU per
scrape, the size of a scrape, and the poll that reads the queue and the runs' CPU and RSS.

A real daemon (fork-server spawns, ``metrics_listen`` on a free port) on a private
``redis-server`` holds N live runs of ``examples.agents:slow_agent`` (default 100)
and M more queued behind them; the script then scrapes ``/metrics`` S times
(default 200) back to back and reads the daemon's own CPU time around them
(``/proc``), and takes the poll's duration from the daemon's debug log.

Run it from the repository root::

    .venv/bin/python bench/metrics_scrape.py                 # 100 live runs, 200 scrapes
    .venv/bin/python bench/metrics_scrape.py --runs 20 --json

The exit code is 0 whatever the numbers are: this is a benchmark, not a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid

import psutil
import redis

from supervisor.ops.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
AGENT = "examples.agents:slow_agent"


def _start_daemon(url: str, prefix: str, state: Path, runs: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ADK_SUPERVISOR_KEY_PREFIX": prefix,
        "ADK_SUPERVISOR_NODE_ID": f"bench-{uuid.uuid4().hex[:6]}",
        "ADK_SUPERVISOR_STATE_DIR": str(state),
        "ADK_SUPERVISOR_APPS": json.dumps({"slow": AGENT}),
        "ADK_SUPERVISOR_MAX_CONCURRENT_RUNS": str(runs),
        "ADK_SUPERVISOR_METRICS_LISTEN": "127.0.0.1:0",
        "ADK_SUPERVISOR_LOG_LEVEL": "DEBUG",
        "ADK_EXAMPLE_HOLD_S": "600",
    }
    log = (state / "daemon.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--redis-url", url, "run"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited: {(state / 'daemon.log').read_text()}")
        if "ready:" in (state / "daemon.log").read_text(errors="replace"):
            return proc
        time.sleep(0.05)
    raise SystemExit("daemon not ready after 60 s")


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p99": p99, "max": ordered[-1]}


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="live runs")
    parser.add_argument("--queued", type=int, default=20, help="runs queued behind them")
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with RedisServer() as server:
        prefix = f"bench-{uuid.uuid4().hex[:6]}:"
        state = Path(tempfile.mkdtemp(prefix="metrics-bench-"))
        client = redis.Redis.from_url(server.url)
        daemon = _start_daemon(server.url, prefix, state, args.runs)
        try:
            log = state / "daemon.log"
            found = re.search(r"metrics at (http://\S+/metrics)", log.read_text())
            assert found, log.read_text()
            url = found[1]
            for n in range(args.runs + args.queued):
                task_id = uuid.uuid4().hex
                client.hset(f"{prefix}{{{prefix}}}task:{task_id}", mapping={"state": "queued"})
                client.xadd(
                    f"{prefix}{{{prefix}}}runs",
                    {"task_id": task_id, "app": "slow", "user_id": f"u{n}", "message": "go"},
                )
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                text = urllib.request.urlopen(url, timeout=10).read().decode()
                live = re.search(r'adk_supervisor_live_runs\{app="slow",node="[^"]+"\} (\S+)', text)
                if live and float(live[1]) >= args.runs:
                    break
                time.sleep(0.5)
            else:
                raise SystemExit(f"never {args.runs} live runs")
            time.sleep(2 * 5.0)  # two polls with every run live
            cpu0 = _cpu_s(daemon.pid)
            took = []
            size = 0
            for _ in range(args.scrapes):
                t0 = time.perf_counter()
                with urllib.request.urlopen(url, timeout=10) as reply:
                    size = len(reply.read())
                took.append((time.perf_counter() - t0) * 1000)
            cpu = (_cpu_s(daemon.pid) - cpu0) / args.scrapes * 1000
            polls = [float(m) for m in re.findall(r"metrics poll: ([\d.]+) ms", log.read_text())]
        finally:
            daemon.terminate()
            daemon.wait(60)
            client.close()
    report = {
        "live_runs": args.runs,
        "queued_runs": args.queued,
        "scrapes": args.scrapes,
        "scrape_ms": _stats(took),
        "daemon_cpu_ms_per_scrape": cpu,
        "scrape_bytes": size,
        "poll_ms_with_all_live": _stats(polls[-2:]) if len(polls) >= 2 else None,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"# /metrics with {args.runs} live runs and {args.queued} queued ({os.cpu_count()} cores)"
    )
    s = report["scrape_ms"]
    print(f"GET /metrics: p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms, max {s['max']:.2f} ms")
    print(f"daemon CPU per scrape: {cpu:.2f} ms; scrape size {size} bytes")
    if report["poll_ms_with_all_live"]:
        print(f"poll (queue + usage of every run): {polls[-2:]} ms")


if __name__ == "__main__":
    main()
