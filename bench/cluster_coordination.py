"""Coordination on a Redis Cluster against one Redis: the task store's scripts and pub/sub.

On a private redis-server (TCP) and on a private three-primary Redis Cluster (formed
by ``redis-cli --cluster create``, as the tests do), the same client code measures:

* per run, sequentially: ``submit`` (record + session line + runs stream, one script),
  then the ``starting``, ``running`` and ``completed`` transitions (record + events
  stream + line release, one script each, plus the history append); every key is in
  the one coordination slot ``<prefix>{<prefix>}``, so on the cluster each is one
  round trip to the shard that owns it;
* PUBLISH -> message received, through :func:`agent_runtime.redis_connection.open_pubsub`
  (on the cluster the subscriber listens on one node and the message is published
  on another, so it crosses the cluster bus: the broadcast every message pays).

Run it from the repository root::

    .venv/bin/python bench/cluster_coordination.py            # 500 runs, 500 messages
    .venv/bin/python bench/cluster_coordination.py --runs 2000 --json

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
import platform
import statistics
import time
import uuid
from typing import Any

from agent_runtime.redis_connection import connect, open_pubsub
from agent_runtime.task_store import SessionRef, TaskState, TaskStore
from supervisor.ops.redis_server import RedisServer
from tests.cluster_topology import ClusterTopology


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
    }


async def _store_path(url: str, runs: int) -> dict[str, Any]:
    client = connect(url)
    store = TaskStore(client, f"bench-{uuid.uuid4().hex[:6]}:")
    ops: dict[str, list[float]] = {"submit": [], "starting": [], "running": [], "completed": []}
    try:
        started = time.perf_counter()
        for n in range(runs):
            task = f"t{n}"
            entry = {"task_id": task, "app": "a", "user_id": "u", "message": "hi"}
            t0 = time.perf_counter()
            await store.submit(
                task, {"app": "a", "user_id": "u"}, entry, SessionRef("a", "u", task)
            )
            ops["submit"].append(time.perf_counter() - t0)
            for state in (TaskState.STARTING, TaskState.RUNNING, TaskState.COMPLETED):
                t0 = time.perf_counter()
                await store.transition(task, state)
                ops[state.value].append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    finally:
        await client.aclose()
    return {
        "runs_per_s": round(runs / elapsed, 1),
        **{name: _ms(samples) for name, samples in ops.items()},
    }


async def _pubsub(url: str, publish_url: str, messages: int) -> dict[str, Any]:
    listener = connect(url)
    publisher = connect(publish_url)  # a plain URL: PUBLISH goes to that node
    link = open_pubsub(listener)
    samples: list[float] = []
    try:
        await link.subscribe("bench-channel")
        await link.get_message(timeout=5)  # the subscribe confirmation
        for _ in range(messages):
            t0 = time.perf_counter()
            await publisher.publish("bench-channel", "x")
            while True:
                message = await link.get_message(timeout=5)
                if message is not None and message["type"] == "message":
                    break
            samples.append(time.perf_counter() - t0)
        port = link.connection_pool.connection_kwargs.get("port")
    finally:
        await link.aclose()
        await listener.aclose()
        await publisher.aclose()
    return {"listens_on_port": port, **_ms(samples)}


async def _measure(runs: int, messages: int) -> dict[str, Any]:
    single = RedisServer(tcp=True)
    single.start()
    cluster = ClusterTopology()
    try:
        # A warm-up pass of each first (imports, script loads, connections), then the
        # measured passes.
        await _store_path(single.tcp_url, max(1, runs // 5))
        await _store_path(cluster.url(), max(1, runs // 5))
        standalone = {
            "store": await _store_path(single.tcp_url, runs),
            "pubsub": await _pubsub(single.tcp_url, single.tcp_url, messages),
        }
        # The subscriber's client starts from the first node (its link listens there);
        # the publisher is a plain client of the last node: every message crosses the
        # cluster bus, as it does to reach every other node.
        first = f"redis+cluster://127.0.0.1:{cluster.ports[0]}"
        last = f"redis://127.0.0.1:{cluster.ports[-1]}"
        on_cluster = {
            "setup_s": round(cluster.setup_s, 2),
            "store": await _store_path(cluster.url(), runs),
            "pubsub": await _pubsub(first, last, messages),
        }
    finally:
        cluster.cleanup()
        single.cleanup()
    return {"standalone": standalone, "cluster": on_cluster}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = asyncio.run(_measure(args.runs, args.messages))
    figures["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    if args.json:
        print(json.dumps(figures))
        return
    s, c = figures["standalone"], figures["cluster"]
    print(f"cluster formed in {c['setup_s']} s ({os.cpu_count()} CPUs)")
    print(f"{'':14}{'one Redis':>22}{'3-primary cluster':>22}{'ratio p50':>12}")
    for op in ("submit", "starting", "running", "completed"):
        a, b = s["store"][op], c["store"][op]
        print(
            f"{op:14}{a['p50_ms']:>10.3f} / {a['p99_ms']:<9.3f}"
            f"{b['p50_ms']:>10.3f} / {b['p99_ms']:<9.3f}"
            f"{b['p50_ms'] / a['p50_ms']:>10.2f}x"
        )
    print(f"{'runs/s':14}{s['store']['runs_per_s']:>22}{c['store']['runs_per_s']:>22}")
    a, b = s["pubsub"], c["pubsub"]
    print(
        f"{'publish->recv':14}{a['p50_ms']:>10.3f} / {a['p99_ms']:<9.3f}"
        f"{b['p50_ms']:>10.3f} / {b['p99_ms']:<9.3f}{b['p50_ms'] / a['p50_ms']:>10.2f}x"
    )
    print("(p50 / p99 in ms, sequential, one client)")


if __name__ == "__main__":
    main()
