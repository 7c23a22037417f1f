"""An unrelated abort's latency while the daemon is busy: a mass abort, a storm of ``status``.

A real daemon on a private ``redis-server`` holds ``--idle`` runs of
``examples.agents:slow_agent`` (one process each, waiting in a tool). A probe
run of the same agent is then aborted by ``PUBLISH`` and timed from the
PUBLISH to its leader gone (pidfd readable), in three conditions:

* ``quiet``: nothing else happens (the floor of this setup);
* ``status``: two threads ask the status socket for ``status`` in a loop (each
  answer reads memory and CPU of every run's tree);
* ``mass abort``: the probe's abort is published right after one abort for
  every idle run (a pipeline of ``--idle`` PUBLISHes).

``--tree DIR`` runs the daemon from another checkout (for example the commit
before a change), so both are measured in one sitting with the same bench::

    .venv/bin/python bench/abort_under_load.py --mechanism pgroup
    git worktree add /tmp/before <commit>
    .venv/bin/python bench/abort_under_load.py --mechanism pgroup --tree /tmp/before

The exit code is 0 whatever the numbers are: this is a benchmark, not a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running as a script puts bench/ (not the repository root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
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

import redis

from supervisor.control.client import request
from supervisor.ops.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
AGENT = "examples.agents:slow_agent"


def _daemon(  # type: ignore[no-untyped-def]
    tree: Path, url: str, prefix: str, state: Path, mechanism: str, slots: int, profile: Path | None
):
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "ADK_SUPERVISOR_KEY_PREFIX": prefix,
        "ADK_SUPERVISOR_NODE_ID": f"bench-{uuid.uuid4().hex[:6]}",
        "ADK_SUPERVISOR_STATE_DIR": str(state),
        "ADK_SUPERVISOR_KILL_MECHANISM": mechanism,
        "ADK_SUPERVISOR_MAX_CONCURRENT_RUNS": str(slots),
        "ADK_SUPERVISOR_ALLOW_IMPORT_PATHS": "true",
        "ADK_SUPERVISOR_APPS": json.dumps({"slow": AGENT}),
        "ADK_EXAMPLE_HOLD_S": "600",
    }
    log = (state / "daemon.log").open("ab")
    profiled = ["-m", "cProfile", "-o", str(profile)] if profile else []
    proc = subprocess.Popen(
        [sys.executable, *profiled, "-m", "supervisor", "--redis-url", url, "run"],
        env=env,
        cwd=tree,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while "ready:" not in (state / "daemon.log").read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"daemon did not start: {(state / 'daemon.log').read_text()}")
        time.sleep(0.05)
    return proc


def _submit(client: redis.Redis, prefix: str) -> str:
    task_id = uuid.uuid4().hex
    now = repr(time.time())
    client.hset(
        f"{prefix}{{{prefix}}}task:{task_id}",
        mapping={"task_id": task_id, "state": "queued", "app": "slow", "created_at": now},
    )
    client.xadd(
        f"{prefix}{{{prefix}}}runs",
        {"task_id": task_id, "app": "slow", "message": "go", "user_id": "u", "session_id": task_id},
    )
    return task_id


def _wait_running(
    client: redis.Redis, prefix: str, ids: list[str], timeout: float
) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    pids: dict[str, int] = {}
    while len(pids) < len(ids):
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(pids)} of {len(ids)} runs started")
        for task_id in ids:
            if task_id not in pids:
                state, pid = client.hmget(f"{prefix}{{{prefix}}}task:{task_id}", "state", "pid")
                if state == b"running" and pid:
                    pids[task_id] = int(pid)
        time.sleep(0.1)
    return pids


def _abort_ms(client: redis.Redis, prefix: str, pid: int, task_id: str, before: list[str]) -> float:
    """PUBLISH the aborts of ``before``, then of ``task_id``; ms until ``pid`` is gone."""
    fd = os.pidfd_open(pid)
    try:
        pipe = client.pipeline(transaction=False)
        for other in before:
            pipe.publish(f"{prefix}abort:{other}", '{"reason": "mass"}')
        pipe.execute()
        t0 = time.perf_counter()
        client.publish(f"{prefix}abort:{task_id}", '{"reason": "probe"}')
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(120_000):
            return float("inf")
        return (time.perf_counter() - t0) * 1000
    finally:
        os.close(fd)


def _probe(client: redis.Redis, prefix: str, before: list[str] | None = None) -> float:
    task_id = _submit(client, prefix)
    pid = _wait_running(client, prefix, [task_id], 60)[task_id]
    time.sleep(0.3)  # past the start's own Redis writes
    return _abort_ms(client, prefix, pid, task_id, before or [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=150, help="idle runs held (default 150)")
    parser.add_argument("--probes", type=int, default=5, help="probes per condition (default 5)")
    parser.add_argument("--mechanism", default="pgroup", choices=["cgroup", "pgroup"])
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout the daemon runs from")
    parser.add_argument("--profile", type=Path, help="write the daemon's cProfile stats here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    server = RedisServer()
    server.start()
    state = Path(tempfile.mkdtemp(prefix="adk-bench-load-"))
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    daemon = _daemon(
        args.tree.resolve(), server.url, prefix, state, args.mechanism, args.idle + 4, args.profile
    )
    client = redis.Redis.from_url(server.url)
    results: dict[str, list[float]] = {}
    try:
        idle = [_submit(client, prefix) for _ in range(args.idle)]
        _wait_running(client, prefix, idle, 600)
        results["quiet"] = [_probe(client, prefix) for _ in range(args.probes)]

        stop = threading.Event()
        answered = [0]

        def storm() -> None:
            while not stop.is_set():
                request(state / "supervisor.sock", "status", io_timeout_s=60)
                answered[0] += 1

        threads = [threading.Thread(target=storm) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            results["status"] = [_probe(client, prefix) for _ in range(args.probes)]
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        results["mass abort"] = [_probe(client, prefix, before=idle)]
    finally:
        client.close()
        daemon.terminate()
        daemon.wait(60)
        server.cleanup()

    report = {
        "date": datetime.date.today().isoformat(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "tree": str(args.tree),
        "mechanism": args.mechanism,
        "idle_runs": args.idle,
        "status_answers": answered[0],
        "abort_ms": {k: [round(v, 1) for v in vs] for k, vs in results.items()},
        "median_ms": {k: round(statistics.median(vs), 1) for k, vs in results.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.idle} idle runs, kill mechanism {args.mechanism}, daemon from {args.tree}")
    for condition, values in report["abort_ms"].items():
        print(
            f"  probe abort, {condition:<10}: median {report['median_ms'][condition]:8.1f} ms  {values}"
        )
    print(f"  status answers during the storm: {answered[0]}")


if __name__ == "__main__":
    main()
