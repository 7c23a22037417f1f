"""Abort-latency benchmark: PUBLISH on ``adk:abort:<id>`` -> whole process tree gone.

For each of N runs (default 50) of ``examples.agents:setsid_agent`` (an ADK
agent whose tree includes a grandchild that called ``setsid()`` and
double-forked, so ``killpg`` alone would miss it), under a real supervisor
daemon on a private ``redis-server``:

* the time from the ``PUBLISH`` call to every process of the tree gone (each
  process's pidfd polled readable, which the kernel signals once the process
  has exited);
* the time from the ``PUBLISH`` call to the ``aborted`` transition arriving on
  ``<prefix>task-events`` (the record is written in the same script that
  publishes it, so this is when any reader can see it);
* leaked processes: anything still carrying the run's marker afterwards.

As a reference, in the same run, the floor: a bare subscriber process (redis-py,
blocking read) that ``killpg``s a plain ``sleep`` child in its own group on any
message, measured the same way.

Run it from the repository root::

    .venv/bin/python bench/abort_latency.py                  # 50 runs, kill mechanism auto
    .venv/bin/python bench/abort_latency.py --runs 20 --mechanism pgroup --json
    .venv/bin/python bench/abort_latency.py --scrape-every-ms 100   # under /metrics scrapes

``--scrape-every-ms N`` turns the daemon's ``/metrics`` on and scrapes it over
HTTP every N ms for the whole measurement (the scrapes' own cost is reported).

The exit code is 0 whatever the numbers are: this is a benchmark, not a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running as a script puts bench/ (not the repository root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import datetime
import json
import os
import platform
import select
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

import psutil
import redis

from supervisor.ops.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
MARKER = "ADK_SUPERVISOR_TASK_ID"
SETSID_AGENT = "examples.agents:setsid_agent"

# The floors: a bare subscriber process that kills a tree whose every pid it
# knows, with killpg(), and no bookkeeping at all. "plain" kills a `sleep`;
# "adk" kills a process that imported ADK and the example agents, plus the
# setsid grandchild it forked: the same tree the supervisor kills, so the
# kernel's cost of tearing down ADK-sized address spaces is in both figures.
_FLOOR_SUBSCRIBER = r"""
import os, signal, subprocess, sys
import redis
tree = {
    "plain": ["sleep", "600"],
    "adk": [sys.executable, "-c", "import os, sys, time; sys.path.insert(0, os.getcwd()); "
            "import examples.agents\n"
            "if os.fork() == 0:\n os.setsid()\n time.sleep(600)\n"
            "time.sleep(600)"],
}[sys.argv[3]]
child = subprocess.Popen(tree, start_new_session=True)
r = redis.Redis.from_url(sys.argv[1])
p = r.pubsub()
p.subscribe(sys.argv[2])
p.get_message(timeout=5)  # the subscribe confirmation
import psutil, time
while len(psutil.Process(child.pid).children()) < (1 if sys.argv[3] == "adk" else 0):
    time.sleep(0.01)
time.sleep(0.5 if sys.argv[3] == "adk" else 0)
pids = [child.pid] + [c.pid for c in psutil.Process(child.pid).children()]
print(" ".join(map(str, pids)), flush=True)
for message in p.listen():
    if message["type"] == "message":
        for pid in pids:
            os.killpg(pid, signal.SIGKILL)
        child.wait()
        break
"""


@dataclass
class Sample:
    """One abort: milliseconds from PUBLISH to tree gone and to ``aborted`` visible."""

    tree_gone_ms: float
    visible_ms: float | None
    processes: int
    leaked: int


@dataclass
class _Events:
    """Arrival times of terminal transitions, filled by a listener thread."""

    arrivals: dict[str, tuple[str, float]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, task_id: str, timeout: float) -> tuple[str, float] | None:
        with self.cond:
            self.cond.wait_for(lambda: task_id in self.arrivals, timeout)
            return self.arrivals.get(task_id)


def _listen(url: str, channel: str, events: _Events, stop: threading.Event) -> None:
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    while not stop.is_set():
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is None:
            continue
        at = time.perf_counter()
        event = json.loads(message["data"])
        if event["state"] in ("completed", "failed", "timed_out", "aborted"):
            with events.cond:
                events.arrivals.setdefault(event["task_id"], (event["state"], at))
                events.cond.notify_all()
    pubsub.close()
    client.close()


def _marked(task_id: str) -> list[int]:
    marker = f"{MARKER}={task_id}".encode()
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if marker in Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0"):
                found.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return found


def _publish_and_time_gone(
    client: redis.Redis, channel: str, payload: str, pids: list[int]
) -> tuple[float, float]:
    """PUBLISHes, then waits until every pid has exited; returns (t_publish, t_gone)."""
    poller = select.poll()
    fds = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fd = os.pidfd_open(pid)
            fds.append(fd)
            poller.register(fd, select.POLLIN)
    try:
        t0 = time.perf_counter()
        client.publish(channel, payload)
        remaining = len(fds)
        deadline = t0 + 10
        while remaining and time.perf_counter() < deadline:
            for fd, _ in poller.poll(100):
                poller.unregister(fd)
                remaining -= 1
        return t0, time.perf_counter()
    finally:
        for fd in fds:
            os.close(fd)


def measure_floor(url: str, runs: int, tree: str) -> list[float]:
    """PUBLISH -> tree gone, for a bare subscriber that killpg()s a tree it knows."""
    client = redis.Redis.from_url(url)
    out = []
    for i in range(runs):
        channel = f"floor:{tree}:{i}"
        sub = subprocess.Popen(
            [sys.executable, "-c", _FLOOR_SUBSCRIBER, url, channel, tree],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert sub.stdout is not None
        pids = [int(p) for p in sub.stdout.readline().split()]
        t0, t1 = _publish_and_time_gone(client, channel, "{}", pids)
        out.append((t1 - t0) * 1000)
        sub.wait(10)
    client.close()
    return out


def _start_daemon(
    url: str, prefix: str, state_dir: Path, mechanism: str, metrics: bool = False
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ADK_SUPERVISOR_KEY_PREFIX": prefix,
        "ADK_SUPERVISOR_NODE_ID": f"bench-{uuid.uuid4().hex[:6]}",
        "ADK_SUPERVISOR_STATE_DIR": str(state_dir),
        "ADK_SUPERVISOR_KILL_MECHANISM": mechanism,
        "ADK_SUPERVISOR_ALLOW_IMPORT_PATHS": "true",
        "ADK_SUPERVISOR_MAX_CONCURRENT_RUNS": "4",
        "ADK_EXAMPLE_HOLD_S": "120",
    }
    if metrics:
        env["ADK_SUPERVISOR_METRICS_LISTEN"] = "127.0.0.1:0"
    log = (state_dir / "daemon.log").open("ab")
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
            raise SystemExit(f"daemon exited: {(state_dir / 'daemon.log').read_text()}")
        if "ready:" in (state_dir / "daemon.log").read_text(errors="replace"):
            return proc
        time.sleep(0.05)
    raise SystemExit("daemon not ready after 60 s")


def _submit(client: redis.Redis, prefix: str, task_id: str) -> None:
    # What SupervisorClient.submit does, in the synchronous API.
    client.hset(
        f"{prefix}{{{prefix}}}task:{task_id}",
        mapping={"task_id": task_id, "state": "queued", "created_at": repr(time.time())},
    )
    client.xadd(
        f"{prefix}{{{prefix}}}runs",
        {"task_id": task_id, "app": SETSID_AGENT, "user_id": "bench", "message": "go"},
    )


def _tree_ready(task_id: str) -> list[int]:
    """The run's processes once the leader and its escaped grandchild both exist."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = _marked(task_id)
        if len(pids) >= 2:
            return pids
        time.sleep(0.05)
    raise SystemExit(f"run {task_id} never grew its setsid grandchild")


def _scrape_loop(log: Path, every_s: float, stop: threading.Event, took: list[float]) -> None:
    """GETs the daemon's /metrics every ``every_s`` until ``stop``; each scrape's time in ``took``."""
    import re
    import urllib.request

    while not (found := re.search(r"metrics at (http://\S+/metrics)", log.read_text())):
        time.sleep(0.05)
    while not stop.wait(every_s):
        t0 = time.perf_counter()
        with urllib.request.urlopen(found[1], timeout=5) as reply:
            reply.read()
        took.append((time.perf_counter() - t0) * 1000)


def measure_supervisor(
    url: str, runs: int, mechanism: str, batch: int = 4, scrape_every_ms: float | None = None
) -> tuple[list[Sample], list[float]]:
    """PUBLISH -> tree gone and -> ``aborted`` visible, for runs of the setsid agent;
    and the scrapes' times (ms) when /metrics is scraped meanwhile."""
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    client = redis.Redis.from_url(url)
    events = _Events()
    stop = threading.Event()
    listener = threading.Thread(
        target=_listen, args=(url, f"{prefix}task-events", events, stop), daemon=True
    )
    listener.start()
    samples: list[Sample] = []
    state = tempfile.mkdtemp(prefix="abort-bench-")
    print(f"# daemon log: {state}/daemon.log", file=sys.stderr)
    if True:
        daemon = _start_daemon(url, prefix, Path(state), mechanism, scrape_every_ms is not None)
        scrapes: list[float] = []
        if scrape_every_ms is not None:
            scraper = threading.Thread(
                target=_scrape_loop,
                args=(Path(state) / "daemon.log", scrape_every_ms / 1000, stop, scrapes),
                daemon=True,
            )
            scraper.start()
        try:
            while len(samples) < runs:
                ids = [uuid.uuid4().hex for _ in range(min(batch, runs - len(samples)))]
                for task_id in ids:
                    _submit(client, prefix, task_id)
                trees = {task_id: _tree_ready(task_id) for task_id in ids}
                time.sleep(0.3)  # let the batch settle: each abort meets an idle daemon
                for task_id, pids in trees.items():
                    payload = json.dumps({"action": "abort", "reason": "bench"})
                    t0, t_gone = _publish_and_time_gone(
                        client, f"{prefix}abort:{task_id}", payload, pids
                    )
                    arrival = events.wait_for(task_id, 10)
                    visible = None
                    if arrival is not None and arrival[0] == "aborted":
                        visible = (arrival[1] - t0) * 1000
                    samples.append(
                        Sample((t_gone - t0) * 1000, visible, len(pids), len(_marked(task_id)))
                    )
                    time.sleep(0.05)
        finally:
            daemon.terminate()
            daemon.wait(30)
            stop.set()
            listener.join(5)
            client.close()
    return samples, scrapes


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p99": p99, "max": ordered[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--mechanism", choices=["auto", "cgroup", "pgroup"], default="auto")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--scrape-every-ms", type=float, help="serve /metrics and scrape it this often meanwhile"
    )
    args = parser.parse_args()

    with RedisServer() as server:
        floor = measure_floor(server.url, args.runs, "plain")
        adk_floor = measure_floor(server.url, args.runs, "adk")
        samples, scrapes = measure_supervisor(
            server.url, args.runs, args.mechanism, scrape_every_ms=args.scrape_every_ms
        )

    gone = _stats([s.tree_gone_ms for s in samples])
    visible_values = [s.visible_ms for s in samples if s.visible_ms is not None]
    visible = _stats(visible_values) if visible_values else None
    floor_stats = _stats(floor)
    adk_floor_stats = _stats(adk_floor)
    leaked = sum(s.leaked for s in samples)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"Linux {platform.release()}, Python {platform.python_version()}",
        "mechanism": args.mechanism,
        "runs": len(samples),
        "processes_per_tree": statistics.median(s.processes for s in samples),
        "floor_killpg_plain_ms": floor_stats,
        "floor_killpg_adk_tree_ms": adk_floor_stats,
        "publish_to_tree_gone_ms": gone,
        "publish_to_aborted_visible_ms": visible,
        "not_recorded_aborted": len(samples) - len(visible_values),
        "leaked_processes": leaked,
        "scrape_every_ms": args.scrape_every_ms,
        "scrapes": len(scrapes),
        "scrape_ms": _stats(scrapes) if scrapes else None,
        "ratio_tree_gone_p50_to_floor_p50": gone["p50"] / floor_stats["p50"],
        "ratio_tree_gone_p50_to_adk_floor_p50": gone["p50"] / adk_floor_stats["p50"],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"# abort latency, {report['date']}, {report['machine']}")
    print(
        f"# kill mechanism {args.mechanism}, {len(samples)} runs of {SETSID_AGENT}, "
        f"{report['processes_per_tree']:g} processes per tree"
    )
    print(f"{'figure (ms)':<38}{'p50':>8}{'p99':>8}{'max':>8}")
    rows = [
        ("floor: killpg of a plain child", floor_stats),
        ("floor: killpg of the same ADK tree", adk_floor_stats),
        ("PUBLISH -> tree gone", gone),
    ]
    if visible is not None:
        rows.append(("PUBLISH -> `aborted` visible", visible))
    if scrapes:
        rows.append((f"GET /metrics ({len(scrapes)} scrapes)", _stats(scrapes)))
    for name, s in rows:
        print(f"{name:<38}{s['p50']:>8.3f}{s['p99']:>8.3f}{s['max']:>8.3f}")
    ratio = report["ratio_tree_gone_p50_to_floor_p50"]
    targets = [
        ("tree gone p50 <= 3x floor p50", ratio <= 3, f"{ratio:.2f}x"),
        (
            "tree gone p50 vs the same ADK tree's floor",
            True,
            f"{report['ratio_tree_gone_p50_to_adk_floor_p50']:.2f}x (no target; shows the kernel's share)",
        ),
        ("tree gone p50 < 2 ms", gone["p50"] < 2, f"{gone['p50']:.3f} ms"),
        ("tree gone p99 < 10 ms", gone["p99"] < 10, f"{gone['p99']:.3f} ms"),
        (
            "aborted visible p50 < 3 ms",
            visible is not None and visible["p50"] < 3,
            f"{visible['p50']:.3f} ms" if visible else "never",
        ),
        ("leaked processes = 0", leaked == 0, str(leaked)),
    ]
    for name, ok, value in targets:
        print(f"{'ok    ' if ok else 'MISSED'} {name}: {value}")


if __name__ == "__main__":
    main()
