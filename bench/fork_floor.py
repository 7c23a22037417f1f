"""Fork floor: what one fork-server run costs the kernel and the run, with no daemon.

In one process preloaded exactly as the fork server is (ADK, the session
service, one warm-up invocation, this bench's stamp agent, ``gc.freeze()``),
against a private ``redis-server``, CPU time (user+sys, from ``getrusage``) of:

* fork + exit + wait of that process, its heap in 4 KiB pages, then collapsed
  into 2 MiB pages as the server does (``MADV_COLLAPSE``);
* one trivial run (``agent_runtime.child.run`` of the stamp agent: Runner,
  session created, one invocation) in a forked child, and its minor page
  faults (each write to a page shared with the server copies it);
* the same run in the preloaded process itself (no fork: the interpreter's share).

The sum over the processes of one run is what two cores divide: 2000 ms / that
sum is the most runs per second this machine can do, whatever the daemon does.

    .venv/bin/python bench/fork_floor.py [--runs 40] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running as a script puts bench/ (not the repository root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import asyncio
import gc
import json
import os
import resource
import tempfile
import uuid
from collections.abc import Callable

os.environ.setdefault("ADK_BENCH_STAMP_DIR", tempfile.mkdtemp(prefix="fork-floor-"))

from agent_runtime import fork_server
from agent_runtime.child import run
from agent_runtime.run_spec import RunSpec
from supervisor.ops.redis_server import RedisServer


def _cpu() -> tuple[float, float, int]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime, kids.ru_minflt


def _spec(url: str) -> RunSpec:
    task = uuid.uuid4().hex
    return RunSpec(task, "spawn_latency:stamp_agent", None, "u", task, "go", url, "floor:", None)


def _forks(runs: int, child: Callable[[], None]) -> dict[str, float]:
    """CPU ms per fork: the parent's (page tables copied), the child's (its work, its
    exit), and the child's minor faults."""
    before = _cpu()
    for _ in range(runs):
        pid = os.fork()
        if pid == 0:
            try:
                child()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    after = _cpu()
    return {
        "parent_ms": (after[0] - before[0]) * 1000 / runs,
        "child_ms": (after[1] - before[1]) * 1000 / runs,
        "child_minor_faults": (after[2] - before[2]) / runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    fork_server._cache_redis_version()
    fork_server._preload(["spawn_latency:stamp_agent"])
    gc.freeze()
    report: dict[str, object] = {
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "server_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    with RedisServer() as server:
        url = server.url
        asyncio.run(run(_spec(url)))  # the first connection's setup, as the warm server has
        report["fork_exit_4k"] = _forks(args.runs, lambda: None)
        report["fork_run_4k"] = _forks(args.runs, lambda: asyncio.run(run(_spec(url))))
        report["collapsed_mb"] = fork_server._collapse_heap() / 2**20
        report["fork_exit_thp"] = _forks(args.runs, lambda: None)
        report["fork_run_thp"] = _forks(args.runs, lambda: asyncio.run(run(_spec(url))))
        t0 = _cpu()[0]
        for _ in range(args.runs):
            asyncio.run(run(_spec(url)))
        report["in_process_run_ms"] = (_cpu()[0] - t0) * 1000 / args.runs
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"# fork floor, load {report['load_avg_1m']}, preloaded process "
        f"{report['server_rss_mb']:.0f} MB, {args.runs} forks each (CPU ms per fork)"
    )
    for key, label in (
        ("fork_exit_4k", "fork + exit, 4 KiB pages"),
        ("fork_exit_thp", f"fork + exit, {report['collapsed_mb']:.0f} MiB in 2 MiB pages"),
        ("fork_run_4k", "fork + trivial run + exit, 4 KiB"),
        ("fork_run_thp", "fork + trivial run + exit, 2 MiB"),
    ):
        row: dict[str, float] = report[key]  # type: ignore[assignment]
        print(
            f"{label:<44} parent {row['parent_ms']:5.2f}  child {row['child_ms']:6.2f}  "
            f"(child minor faults {row['child_minor_faults']:.0f})"
        )
    print(
        f"the same trivial run in the preloaded process, no fork: {report['in_process_run_ms']:.2f}"
    )


if __name__ == "__main__":
    main()
