"""Retention through a real daemon: many runs leave Redis and the log directory bounded
by the settings, and a run's log is cut at its cap while the run goes on writing.

The issue's acceptance names 10,000 runs; those take minutes here, so the test runs
300 with small limits and checks that what Redis and the disk hold stops growing
(after 100, 200 and 300 runs, and sampled all along); ``bench/retention_bench.py``
drives the 10,000 with near-default settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agent_runtime.redis_connection import as_text
from supervisor.client import SupervisorClient

from .daemon_harness import Daemon

pytestmark = pytest.mark.anyio

CHATTY = "tests.integration.log_agents:chatty_agent"
TERMINAL = {"completed", "failed", "timed_out", "aborted"}

# Small limits, so that 300 runs reach every one of them many times over.
RECORD_TTL_S = 2
HISTORY_MAXLEN = 50
LOG_MAX_FILES = 30
LOG_DIR_MAX_BYTES = 100_000
PRUNE_INTERVAL_S = 0.5
SETTLE_S = RECORD_TTL_S + 1.5  # every TTL passed, and a prune pass after the young-log grace


@dataclass(frozen=True)
class Footprint:
    """What the test's prefix holds in Redis and what the daemon's log directory holds."""

    keys: int
    key_bytes: int
    run_streams: int
    """Runs' events streams (``<prefix>events:<id>``), among ``keys``."""
    history: int
    run_users: int
    log_files: int
    log_bytes: int


async def _footprint(r: aioredis.Redis, prefix: str, log_dir: Path) -> Footprint:
    # SCAN skips keys whose TTL passed (DBSIZE would still count them until expired).
    keys = [k async for k in r.scan_iter(match=f"{prefix}*", count=1000)]
    async with r.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key)
        sizes = await pipe.execute()
    users = [u for u in map(as_text, await r.acl_users()) if u.startswith(f"{prefix}run:")]
    log_files, log_bytes = _log_usage(log_dir)
    return Footprint(
        len(keys),
        sum(s or 0 for s in sizes),
        sum(1 for k in keys if k.startswith(f"{prefix}{{{prefix}}}events:")),
        int(await r.xlen(f"{prefix}{{{prefix}}}task-history")),
        len(users),
        log_files,
        log_bytes,
    )


def _log_usage(log_dir: Path) -> tuple[int, int]:
    files = sizes = 0
    with os.scandir(log_dir) as entries:
        for entry in entries:
            if entry.name.endswith(".log"):
                with contextlib.suppress(FileNotFoundError):  # pruned meanwhile
                    sizes += entry.stat().st_size
                    files += 1
    return files, sizes


async def _run_batch(
    client: SupervisorClient, r: aioredis.Redis, prefix: str, n: int
) -> dict[str, int]:
    """Submits ``n`` runs and waits for their ends, read from the events channel (records
    expire in 2 s: polling them could miss one)."""
    states: dict[str, str] = {}
    async with r.pubsub() as sub:
        await sub.subscribe(f"{prefix}task-events")
        ids = {await client.submit(CHATTY, "hi", user_id="u") for _ in range(n)}
        deadline = time.monotonic() + 120
        while len(states) < n:
            assert time.monotonic() < deadline, f"{n - len(states)} runs never ended"
            message = await sub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is None:
                continue
            event = json.loads(message["data"])
            if event["task_id"] in ids and event["state"] in TERMINAL:
                states[event["task_id"]] = event["state"]
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


async def test_300_runs_leave_redis_and_the_log_directory_bounded_by_the_settings(
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    redis_url: str,
    key_prefix: str,
) -> None:
    daemon = start_daemon(
        ADK_SUPERVISOR_LOG_LEVEL="INFO",
        ADK_SUPERVISOR_RECORD_TTL_S=str(RECORD_TTL_S),
        ADK_SUPERVISOR_SESSION_TTL_S=str(RECORD_TTL_S),
        ADK_SUPERVISOR_EVENTS_TTL_S=str(RECORD_TTL_S),
        ADK_SUPERVISOR_TASK_HISTORY_MAXLEN=str(HISTORY_MAXLEN),
        ADK_SUPERVISOR_RUN_LOG_RETENTION_S="60",
        ADK_SUPERVISOR_RUN_LOG_MAX_FILES=str(LOG_MAX_FILES),
        ADK_SUPERVISOR_RUN_LOG_DIR_MAX_BYTES=str(LOG_DIR_MAX_BYTES),
        ADK_SUPERVISOR_RUN_LOG_PRUNE_INTERVAL_S=str(PRUNE_INTERVAL_S),
    )
    log_dir = daemon.state_dir / "logs"
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    peak: dict[str, int] = {"keys": 0, "log_files": 0}

    async def sample() -> None:
        while True:
            now = await _footprint(r, key_prefix, log_dir)
            peak["keys"] = max(peak["keys"], now.keys)
            peak["log_files"] = max(peak["log_files"], now.log_files)
            await asyncio.sleep(0.2)

    settled: list[Footprint] = []
    peaks: list[dict[str, int]] = []
    try:
        sampler = asyncio.create_task(sample())
        for _ in range(3):
            counts = await _run_batch(client, r, key_prefix, 100)
            assert counts == {"completed": 100}, daemon.log()[-3000:]
            peaks.append(dict(peak))
            await asyncio.sleep(SETTLE_S)
            settled.append(await _footprint(r, key_prefix, log_dir))
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    finally:
        await r.aclose()

    # Settled (no run for a TTL and a prune pass): only the fixed keys of the node and the
    # streams are left, whatever the number of runs before.
    for after, fp in zip((100, 200, 300), settled, strict=True):
        where = f"after {after} runs: {fp}"
        assert fp.keys <= 12, where
        assert fp.history <= HISTORY_MAXLEN + 100, where  # MAXLEN ~ trims whole 100-entry nodes
        assert fp.run_users == 0, where
        assert fp.run_streams == 0, where
        assert fp.log_files <= LOG_MAX_FILES + 1, where  # + the fork server's own log
        fork_server_log = (log_dir / "fork-server.log").stat().st_size
        assert fp.log_bytes <= LOG_DIR_MAX_BYTES + fork_server_log, where
    # Not growing with the number of runs: the footprint after 300 is that after 100.
    first, last = settled[0], settled[-1]
    assert last.key_bytes <= first.key_bytes * 1.2 + 20_000, settled
    assert last.log_bytes <= first.log_bytes * 1.2 + 20_000, settled
    # While runs went on: what the TTLs and one prune interval let through, which depends
    # on the run rate but not on the number of runs (by 100 runs, 2 s of TTL were long
    # past). Without retention both grow with every run: 300 log files, 1,500 keys.
    for what in ("log_files", "keys"):
        assert peaks[-1][what] <= peaks[0][what] * 1.5 + 20, peaks
    assert "run logs not pruned" not in daemon.log()


async def test_a_runs_log_is_cut_at_its_cap_while_it_writes_and_deleted_once_it_ended(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    cap = 256 * 1024
    daemon = start_daemon(
        ADK_SUPERVISOR_RUN_LOG_MAX_BYTES=str(cap),
        ADK_SUPERVISOR_RUN_LOG_MAX_FILES="1",  # the fork server's log alone fills it
        ADK_SUPERVISOR_RUN_LOG_PRUNE_INTERVAL_S="0.2",
        ADK_TEST_LOG_BYTES=str(4 * 1024 * 1024),
        ADK_TEST_LOG_HOLD_S="3",
    )
    log_dir = daemon.state_dir / "logs"
    # Runs that ended before: their logs go for the file budget.
    quick = [await client.submit(CHATTY, "hi", user_id="u") for _ in range(3)]
    for task_id in quick:
        assert (await client.wait(task_id, 60))["state"] == "completed"
    task_id = await client.submit(CHATTY, "hi", user_id="u")
    path = log_dir / f"{task_id}.log"
    deadline = time.monotonic() + 60
    while not (path.exists() and b"LAST" in path.read_bytes()):
        assert time.monotonic() < deadline, daemon.log()[-3000:]
        await asyncio.sleep(0.05)
    # Quiet for longer than the young-log grace and a few passes: only being live keeps it.
    await asyncio.sleep(1.5)
    assert (await client.store.get(task_id) or {}).get("state") == "running"
    data = path.read_bytes()
    assert data.startswith(b"FIRST\n")
    note = data.find(b"bytes of this log cut here")
    assert note > 0 and data.find(b"LAST", note) > note, "no output after the cut"
    assert len(data) <= cap and b"\0" not in data  # O_APPEND: no hole where the cut was
    assert path.stat().st_blocks * 512 <= cap + 8192
    assert not any((log_dir / f"{t}.log").exists() for t in quick)
    assert daemon.logged(f"run log {task_id}.log reached run_log_max_bytes")
    # Ended: now it is the oldest log over the budget.
    assert (await client.wait(task_id, 60))["state"] == "completed"
    deadline = time.monotonic() + 5
    while path.exists():
        assert time.monotonic() < deadline, "an ended run's log over the budget stayed"
        await asyncio.sleep(0.05)
