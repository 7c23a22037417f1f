"""The node's Prometheus metrics: every definition, and the one-line hooks that move them.

The daemon's components call a hook where a thing happens (a run taken,
started, running, ended; a kill sent; an orphan failed); a hook only bumps a
value in memory. The scrape (``metrics_service``, a thread) reads those values
and a few plain attributes bound with :meth:`NodeMetrics.bind` (outbox depth,
Redis health, fork-server restarts): never Redis, never the event loop. What
needs Redis or /proc (the queue, live runs' CPU and memory) is set by the
service's poll on the loop, into gauges here.

Every series has the ``node`` label. ``app`` labels are the run's ``[apps]``
name (or its import path, where those are allowed): at most
:data:`MAX_APP_LABELS` distinct ones, the rest counted as ``other``, so a
stream writer cannot grow the series without bound. Task ids are never labels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent_runtime.run_spec import RunSpec
from agent_runtime.task_store import TaskState

__all__ = ["MAX_APP_LABELS", "NodeMetrics", "app_label"]

MAX_APP_LABELS = 100
"""Distinct ``app`` label values per metric family; later apps are labelled ``other``."""
_OTHER = "other"

_SPAWN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ABORT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_GONE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 20.0)
_DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)


def app_label(spec: RunSpec) -> str:
    """The app a run is labelled with: its ``[apps]`` name, else its import path."""
    return spec.app_name or spec.app_ref


@dataclass(frozen=True, slots=True)
class _Readers:
    """Scrape-time readers: plain attribute reads, safe from the scrape thread."""

    outbox: Callable[[], int] = lambda: 0
    redis_up: Callable[[], bool] = lambda: False
    fork_server_restarts: Callable[[], int] = lambda: 0
    draining: Callable[[], bool] = lambda: False


class _ScrapeTime(Collector):
    """The values read when scraped, not kept: outbox depth, Redis link, restarts."""

    def __init__(self, node: str, readers: Callable[[], _Readers]) -> None:
        self._node = node
        self._readers = readers

    def collect(self) -> Iterable[Metric]:
        read = self._readers()
        gauges = (
            ("adk_supervisor_outbox_depth", "Transitions waiting for Redis.", read.outbox()),
            (
                "adk_supervisor_redis_up",
                "1 while the node's last heartbeat reached Redis.",
                int(read.redis_up()),
            ),
            ("adk_supervisor_draining", "1 once the node takes no new runs.", int(read.draining())),
        )
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=["node"])
            gauge.add_metric([self._node], value)
            yield gauge
        restarts = CounterMetricFamily(
            "adk_supervisor_fork_server_restarts",
            "Times the fork server was lost and restarted.",
            labels=["node"],
        )
        restarts.add_metric([self._node], read.fork_server_restarts())
        yield restarts


class NodeMetrics:
    """One node's metrics registry and its hooks; cheap to make, served only if configured."""

    def __init__(self, node_id: str = "", *, info: Mapping[str, str] | None = None) -> None:
        self.node = node_id
        self.registry = CollectorRegistry(auto_describe=True)
        self._readers = _Readers()
        self._apps: set[str] = set()
        self._usage_apps: set[str] = set()
        # task id -> (app label, monotonic time its entry was taken): bounded by the
        # runs this node handles right now (ended or forgotten with each).
        self._taken: dict[str, tuple[str, float]] = {}
        reg = self.registry
        node = ["node"]
        self.started = Counter(
            "adk_supervisor_runs_started",
            "Runs spawned on this node.",
            [*node, "app"],
            registry=reg,
        )
        self.ended = Counter(
            "adk_supervisor_runs_ended",
            "Runs this node recorded in a terminal state.",
            [*node, "app", "state"],
            registry=reg,
        )
        self.rejected_total = Counter(
            "adk_supervisor_runs_rejected",
            "Runs-stream entries admission refused (malformed or not runnable here).",
            node,
            registry=reg,
        )
        self.live = Gauge(
            "adk_supervisor_live_runs",
            "Runs whose process tree this node owns.",
            [*node, "app"],
            registry=reg,
        )
        self.slots = Gauge(
            "adk_supervisor_run_slots", "max_concurrent_runs of this node.", node, registry=reg
        )
        self.queued = Gauge(
            "adk_supervisor_queued_runs",
            "Runs-stream entries no node has taken yet (the whole stream, as this node "
            "last read it).",
            node,
            registry=reg,
        )
        self.taken_pending = Gauge(
            "adk_supervisor_taken_runs_pending",
            "Runs-stream entries a node took but has not yet acknowledged (starting).",
            node,
            registry=reg,
        )
        self.queue_age = Gauge(
            "adk_supervisor_queue_oldest_age_seconds",
            "Age of the oldest runs-stream entry no node has taken yet (0 if none).",
            node,
            registry=reg,
        )
        self.spawn_latency = Histogram(
            "adk_supervisor_spawn_latency_seconds",
            "Entry taken off the stream to `running` recorded.",
            [*node, "app"],
            buckets=_SPAWN_BUCKETS,
            registry=reg,
        )
        self.abort_latency = Histogram(
            "adk_supervisor_abort_kill_latency_seconds",
            "Abort message received to kill sent (aborts from the feed).",
            node,
            buckets=_ABORT_BUCKETS,
            registry=reg,
        )
        self.tree_gone = Histogram(
            "adk_supervisor_kill_tree_gone_seconds",
            "Kill sent to the run's whole process tree gone, by why it was killed.",
            [*node, "state"],
            buckets=_GONE_BUCKETS,
            registry=reg,
        )
        self.duration = Histogram(
            "adk_supervisor_run_duration_seconds",
            "Spawn to process tree gone, by app and terminal state.",
            [*node, "app", "state"],
            buckets=_DURATION_BUCKETS,
            registry=reg,
        )
        self.orphans_total = Counter(
            "adk_supervisor_orphans",
            "Runs of a dead daemon this node handled: failed at its reconcile or a peer "
            "takeover, or claimed (taken but never started by the peer) to run here.",
            [*node, "by", "outcome"],
            registry=reg,
        )
        self.rss = Gauge(
            "adk_supervisor_live_runs_rss_bytes",
            "Resident memory of the live runs' process trees, summed per app.",
            [*node, "app"],
            registry=reg,
        )
        self.cpu = Gauge(
            "adk_supervisor_live_runs_cpu_cores",
            "CPU the live runs' process trees used over the last poll, in cores, per app.",
            [*node, "app"],
            registry=reg,
        )
        self.polled = Gauge(
            "adk_supervisor_metrics_poll_timestamp_seconds",
            "When the queue and usage gauges were last read (Unix time).",
            node,
            registry=reg,
        )
        info_gauge = Gauge(
            "adk_supervisor_node_info",
            "Always 1; the labels say what this node runs.",
            [*node, *sorted(info or {})],
            registry=reg,
        )
        info_gauge.labels(node_id, *(v for _, v in sorted((info or {}).items()))).set(1)
        for family in (self.queued, self.taken_pending, self.queue_age, self.rejected_total):
            family.labels(node_id)
        self.abort_latency.labels(node_id)
        ProcessCollector(registry=reg)
        reg.register(_ScrapeTime(node_id, lambda: self._readers))

    def bind(
        self,
        *,
        outbox: Callable[[], int],
        redis_up: Callable[[], bool],
        fork_server_restarts: Callable[[], int],
        draining: Callable[[], bool],
    ) -> None:
        """Scrape-time readers; each must be a plain attribute read (it runs off the loop)."""
        self._readers = _Readers(outbox, redis_up, fork_server_restarts, draining)

    def label(self, app: str) -> str:
        """The ``app`` label of ``app``: itself, or ``other`` past :data:`MAX_APP_LABELS`."""
        if app in self._apps:
            return app
        if len(self._apps) >= MAX_APP_LABELS:
            return _OTHER
        self._apps.add(app)
        return app

    # ------------------------------------------------------------- hooks

    def taken(self, task_id: str, app: str) -> None:
        """An admitted entry was taken off the stream."""
        self._taken[task_id] = (self.label(app), time.monotonic())

    def forget(self, task_id: str) -> None:
        """The entry's handling is over (the run ended, or never started here)."""
        self._taken.pop(task_id, None)

    def rejected(self) -> None:
        """Admission refused an entry."""
        self.rejected_total.labels(self.node).inc()

    def spawned(self, spec: RunSpec) -> None:
        """A run's process is registered: it is live."""
        app = self.label(app_label(spec))
        self.started.labels(self.node, app).inc()
        self.live.labels(self.node, app).inc()

    def removed(self, spec: RunSpec) -> None:
        """A run's tree is gone and it left the run table."""
        self.live.labels(self.node, self.label(app_label(spec))).dec()

    def running(self, task_id: str) -> None:
        """``running`` was recorded: the spawn latency is taken to now."""
        taken = self._taken.get(task_id)
        if taken is not None:
            app, at = taken
            self.spawn_latency.labels(self.node, app).observe(time.monotonic() - at)

    def recorded_end(self, task_id: str, state: TaskState) -> None:
        """A terminal state was recorded (or queued for Redis) for a run this node took."""
        app, _ = self._taken.pop(task_id, ("unknown", 0.0))
        self.ended.labels(self.node, app, state.value).inc()

    def finished(self, spec: RunSpec, state: TaskState, duration_s: float) -> None:
        """A run this node spawned is over: how long it lived."""
        app = self.label(app_label(spec))
        self.duration.labels(self.node, app, state.value).observe(duration_s)

    def abort_kill(self, seconds: float) -> None:
        """An abort from the feed became a kill, ``seconds`` after it was received."""
        self.abort_latency.labels(self.node).observe(seconds)

    def kill_to_gone(self, state: TaskState, seconds: float) -> None:
        """A killed run's tree was gone ``seconds`` after the kill."""
        self.tree_gone.labels(self.node, state.value).observe(seconds)

    def orphans(self, by: str, outcome: str, count: int) -> None:
        """Orphaned runs handled ``by`` reconcile or peer, ``outcome`` failed or claimed."""
        self.orphans_total.labels(self.node, by, outcome).inc(count)

    # ----------------------------------------------------- polled gauges

    def set_queue(self, queued: int, pending: int, oldest_age_s: float) -> None:
        """What the last read of the runs stream found."""
        self.queued.labels(self.node).set(queued)
        self.taken_pending.labels(self.node).set(pending)
        self.queue_age.labels(self.node).set(oldest_age_s)

    def set_usage(self, rss: Mapping[str, int], cores: Mapping[str, float]) -> None:
        """Per-app memory and CPU of the live runs (keyed by :meth:`label`); apps shown
        before and without live runs now read 0."""
        self._usage_apps.update(rss, cores)
        for app in sorted(self._usage_apps):
            self.rss.labels(self.node, app).set(rss.get(app, 0))
            self.cpu.labels(self.node, app).set(cores.get(app, 0.0))
        self.polled.labels(self.node).set(time.time())
