"""Serving the node's metrics: ``/metrics`` over HTTP, and the poll that feeds Redis-side gauges.

The HTTP server is prometheus-client's own, in its own threads: a scrape
reads in-memory values and never touches the event loop, so it cannot hold
back a kill. Whatever needs Redis or /proc is read here on the loop every
``metrics_poll_interval_s``, into gauges: the runs stream's queue (one
pipelined XLEN, XINFO GROUPS, TIME and one XRANGE of a single entry) and the
live runs' memory and CPU (the /proc reads in a worker thread, as ``status``
does). A Redis that fails or answers garbage skips one poll; the gauges keep
their last values, and ``adk_supervisor_metrics_poll_timestamp_seconds`` says how old
they are.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from prometheus_client import disable_created_metrics, start_http_server

from agent_runtime.keys import RUNS_GROUP
from agent_runtime.redis_connection import REDIS_ERRORS, as_text

from .metrics import NodeMetrics, app_label
from .runs import ActiveRun
from .status import tree_usage

__all__ = ["MetricsService", "QueueStats", "read_queue"]

log = logging.getLogger("adk_supervisor")


class QueueStats:
    """The runs stream's queue as one read found it."""

    __slots__ = ("oldest_age_s", "pending", "queued")

    def __init__(self, queued: int, pending: int, oldest_age_s: float) -> None:
        self.queued = queued
        self.pending = pending
        self.oldest_age_s = oldest_age_s


def _entry_ms(entry_id: object) -> int | None:
    """The milliseconds part of a stream entry id (untrusted: None if it is not one)."""
    head = as_text(entry_id).partition("-")[0] if isinstance(entry_id, bytes | str) else ""
    return int(head) if head.isdigit() and len(head) <= 20 else None


async def read_queue(client: aioredis.Redis, stream: str) -> QueueStats:
    """Queued entries (not yet delivered to the group), pending ones, and the oldest's age.

    Redis 7's ``lag`` counts the undelivered entries; where it cannot (it reports
    nil), ``XLEN - pending`` does, as every acknowledged entry is deleted.
    """
    async with client.pipeline(transaction=False) as pipe:
        pipe.xlen(stream)
        pipe.xinfo_groups(stream)
        pipe.time()
        length, groups, (seconds, micros) = await pipe.execute()
    group: dict[Any, Any] = next(
        (g for g in groups if isinstance(g, dict) and as_text(g.get("name", b"")) == RUNS_GROUP),
        {},
    )
    pending = group.get("pending")
    pending = pending if isinstance(pending, int) else 0
    lag = group.get("lag")
    queued = lag if isinstance(lag, int) else max(0, int(length) - pending)
    last = group.get("last-delivered-id", b"0-0")
    start = f"({as_text(last)}" if _entry_ms(last) is not None else "-"
    first = await client.xrange(stream, min=start, max="+", count=1)
    age = 0.0
    if first:
        at_ms = _entry_ms(first[0][0])
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        if at_ms is not None:
            age = max(0.0, (now_ms - at_ms) / 1000)
    return QueueStats(queued, pending, age)


class MetricsService:
    """``/metrics`` on ``host:port`` in a thread, and the gauges' poll on the loop."""

    def __init__(
        self,
        metrics: NodeMetrics,
        address: tuple[str, int],
        interval_s: float,
        client: aioredis.Redis,
        stream: str,
        runs: Callable[[], Iterable[ActiveRun]],
    ) -> None:
        self._metrics = metrics
        self._address = address
        self._interval = interval_s
        self._client = client
        self._stream = stream
        self._runs = runs
        self._cpu_seen: dict[str, float] = {}
        self._polled_at: float | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serves until cancelled; the HTTP thread stops with it.

        A port that cannot be bound is logged and the node runs on without
        metrics: the kill switch matters more than its dashboard.
        """
        # The *_created series: half the series, none a dashboard reads.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        host, port = self._address
        try:
            server, thread = start_http_server(port, host, registry=self._metrics.registry)
        except OSError as exc:
            log.error(
                "metrics: cannot listen on %s:%d (%s); running without /metrics",
                *self._address,
                exc,
            )
            task_status.started()
            return
        log.info("metrics at http://%s:%d/metrics", host, server.server_port)
        try:
            task_status.started()
            while True:
                await self.poll()
                await anyio.sleep(self._interval)
        finally:
            # shutdown() waits for serve_forever's next turn (up to 0.5 s): not on the loop.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(server.shutdown)
            server.server_close()
            thread.join(1)

    async def poll(self) -> None:
        """Reads the queue and the live runs' usage into the gauges once."""
        began = time.perf_counter()
        try:
            stats = await read_queue(self._client, self._stream)
        except REDIS_ERRORS as exc:
            log.debug("metrics: queue not read (%s)", exc)
        except (TypeError, ValueError, KeyError, IndexError) as exc:  # garbage in Redis
            log.debug("metrics: queue reply not understood (%s)", exc)
        else:
            self._metrics.set_queue(stats.queued, stats.pending, stats.oldest_age_s)
        await self._poll_usage()
        log.debug("metrics poll: %.1f ms", (time.perf_counter() - began) * 1000)

    async def _poll_usage(self) -> None:
        runs = [
            (
                r.task_id,
                self._metrics.label(app_label(r.spec)),
                r.pid if r.pidfd is not None else None,
            )
            for r in self._runs()
        ]
        # /proc reads take ~0.3 ms a process: off the loop, as `status` does.
        usage = await anyio.to_thread.run_sync(
            lambda: [(0, 0.0) if pid is None else tree_usage(pid) for _, _, pid in runs]
        )
        now = time.monotonic()
        elapsed = None if self._polled_at is None else now - self._polled_at
        self._polled_at = now
        rss: dict[str, int] = defaultdict(int)
        cores: dict[str, float] = defaultdict(float)
        seen: dict[str, float] = {}
        for (task_id, app, _), (run_rss, cpu_s) in zip(runs, usage, strict=True):
            rss[app] += run_rss
            seen[task_id] = cpu_s
            # A run first seen now started within the last interval: all its CPU is new.
            if elapsed:
                cores[app] += max(0.0, cpu_s - self._cpu_seen.get(task_id, 0.0)) / elapsed
        self._cpu_seen = seen
        self._metrics.set_usage(rss, cores)
