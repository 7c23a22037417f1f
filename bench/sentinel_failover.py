"""Session appends across a ``SENTINEL FAILOVER``: how many acknowledged ones are lost.

Starts one master, one replica and three sentinels (the tests' topology), appends
back to back through a forced failover until the old master has resynced, each
append retried until acknowledged, and counts the acknowledged appends missing
afterwards, for three clients: redis-py's Sentinel pool as is (the pool's master
recheck turned off), this project's client, and this client with ``wait_replicas=1``.

    .venv/bin/python bench/sentinel_failover.py [--runs N]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running as a script puts bench/ (not the repository root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import uuid

import agent_runtime.redis_connection as redis_connection
from tests.integration.sentinel_topology import SentinelTopology
from tests.integration.test_sentinel import _appends_lost_across_failover

_CLIENTS = (
    ("redis-py's Sentinel pool as is", "", 1e9),
    ("this client (recheck every 1 s)", "", redis_connection.SENTINEL_RECHECK_S),
    ("this client, wait_replicas=1", "wait_replicas=1&wait_timeout_ms=500", 1.0),
)


async def _main(runs: int) -> None:
    for label, query, recheck in _CLIENTS:
        for _ in range(runs):
            redis_connection.SENTINEL_RECHECK_S = recheck
            topology = SentinelTopology()
            try:
                acked, lost, retries, stall = await _appends_lost_across_failover(
                    topology, f"bench-{uuid.uuid4().hex[:6]}:", query
                )
            finally:
                topology.cleanup()
            print(
                f"{label}: {acked} acknowledged, {lost} lost, {retries} retried, "
                f"longest stall {stall:.2f}s",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="failovers per client")
    asyncio.run(_main(parser.parse_args().runs))
