"""The node: one daemon's components, the order they start in, and how it stops.

Start: subreaper, containment, spawner; then (retrying while Redis is away)
reconcile this node's orphans, create the consumer group, register the node;
then, under one task group, each started and ready before the next: reaper,
recorder, abort listener, intake, peer watch, status socket, health (the first
heartbeat), and ``READY=1``. Stop: drain or kill per ``on_shutdown``, wait for
every run slot to come back and for the outbox to flush, forget the heartbeat.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from redis.exceptions import ResponseError

from agent_runtime.process_control import set_child_subreaper
from agent_runtime.redis_connection import (
    REDIS_ERRORS,
    connect,
    describe_reply,
    redact_url,
    topology_problem,
)
from agent_runtime.task_store import TERMINAL_STATES, TaskState, TaskStore

from ..config import Settings
from ..control.handler import ControlHandler
from ..control.server import StatusSocketServer
from ..errors import RedisTopologyError
from ..ops.sd_notify import SdNotifier
from ..process.containment import CgroupContainment, choose_containment
from ..process.identity import boot_id, process_start_ticks
from ..process.limits import Limiter
from ..process.spawners import ExecSpawner, ForkServerSpawner, Spawner
from .aborts import AbortListener
from .admission import resolve_app
from .credentials import RunCredentials
from .health import Health
from .intake import Intake
from .launch import Launcher, NodeIdentity
from .metrics import NodeMetrics
from .metrics_service import MetricsService
from .peers import PeerWatch, Takeover
from .reaper import Reaper
from .reconcile import ReconcileReport, reconcile_node
from .recorder import Recorder
from .retention import LogPolicy, LogRetention
from .runs import RunTable
from .sealing import Sealer
from .status import package_version, run_rows
from .usage import UsageBoard

__all__ = ["Supervisor"]

log = logging.getLogger("adk_supervisor")

_START_BACKOFF_MAX_S = 10.0


class Supervisor:
    """One daemon: ``await Supervisor(settings).serve()`` until :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_url: str | None = None,
        spawner: Spawner | None = None,
        embedded_redis: bool = False,
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url or settings.redis_url or "redis://localhost:6379/0"
        self.node_id = settings.node_id
        self.pid = os.getpid()
        self.embedded_redis = embedded_redis
        self.started_at = time.time()
        self.log_dir = settings.state_dir / "logs"
        self.client: aioredis.Redis = connect(
            self.redis_url, socket_timeout_s=settings.redis_socket_timeout_s
        )
        self.store = TaskStore(
            self.client,
            settings.key_prefix,
            record_ttl_s=settings.record_ttl_s,
            history_maxlen=settings.task_history_maxlen,
            events_maxlen=settings.events_maxlen,
            events_ttl_s=settings.events_ttl_s,
        )
        self.spec_dir = settings.state_dir / "specs"
        self.spawner = spawner or (
            ForkServerSpawner(
                list(settings.apps.values()), self.log_dir / "fork-server.log", self.spec_dir
            )
            if settings.spawn_mode == "fork-server"
            else ExecSpawner(self.spec_dir)
        )
        self.containment = choose_containment(
            settings.kill_mechanism, self.node_id, fork_events=settings.pgroup_fork_events
        )
        self.limiter = Limiter(
            self.node_id,
            self.containment.root if isinstance(self.containment, CgroupContainment) else None,
        )
        self._identity = NodeIdentity(self.node_id, boot_id(), self.redis_url)
        self._stopping = anyio.Event()

        keys = self.store.keys
        self.metrics = NodeMetrics(
            self.node_id,
            info={
                "version": package_version(),
                "kill_mechanism": self.containment.name,
                "spawner": self.spawner.name,
            },
        )
        self.reaper = Reaper()
        self.runs = RunTable(self.containment, self.reaper, settings.kill_grace_s)
        self.recorder = Recorder(self.store, keys.node_tasks(self.node_id), self.metrics)
        self.aborts = AbortListener(
            self.client,
            settings.key_prefix,
            self.runs,
            settings.heartbeat_interval_s,
            store=self.store,
            metrics=self.metrics,
        )
        self.sealer = Sealer(self.store, settings.session_ttl_s)
        self.credentials = RunCredentials(
            self.client,
            configured=settings.run_credentials,
            key_prefix=settings.key_prefix,
            node_id=self.node_id,
            daemon_url=self.redis_url,
            run_redis_url=settings.run_redis_url,
        )
        self.launcher = Launcher(
            settings,
            self._identity,
            store=self.store,
            recorder=self.recorder,
            runs=self.runs,
            reaper=self.reaper,
            containment=self.containment,
            limiter=self.limiter,
            spawner=self.spawner,
            aborts=self.aborts,
            sealer=self.sealer,
            credentials=self.credentials,
            log_dir=self.log_dir,
            spec_dir=self.spec_dir,
            metrics=self.metrics,
        )
        self.intake = Intake(
            self.client, keys, self.node_id, settings.max_concurrent_runs, self.launcher.launch
        )
        self.peers = PeerWatch(self.store, self.node_id, settings.node_dead_after_s)
        self.retention = LogRetention(
            self.log_dir,
            LogPolicy.from_settings(settings),
            settings.run_log_prune_interval_s,
            self.runs.ids,
        )
        self.health = Health(
            self.client,
            keys,
            self.node_id,
            {
                "host": socket.gethostname(),
                "boot_id": self._identity.boot_id,
                "pid": self.pid,
                "start_ticks": process_start_ticks(self.pid),
                "state_dir": str(settings.state_dir),
            },
            settings.heartbeat_interval_s,
            SdNotifier.from_env(),
            self.summary,
            lambda: len(self.runs),
            self._after_beat,
        )
        self.metrics.slots.labels(self.node_id).set(settings.max_concurrent_runs)
        self.metrics.bind(
            outbox=lambda: self.recorder.backlog,
            redis_up=lambda: self.health.redis_healthy,
            fork_server_restarts=lambda: getattr(self.spawner, "restarts", 0),
            draining=lambda: self.intake.draining,
        )

    # ------------------------------------------------------------- lifecycle

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reconciles orphans, then serves until :meth:`stop`; kills remaining runs on the way out."""
        set_child_subreaper()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.spec_dir.mkdir(mode=0o700, exist_ok=True)
        self.spawner.start()
        log.info(
            "adk-supervisor node=%s redis=%s kill_mechanism=%s spawner=%s max_concurrent_runs=%d",
            self.node_id,
            redact_url(self.redis_url),
            self.containment.name,
            self.spawner.name,
            self.settings.max_concurrent_runs,
        )
        self._log_limits()
        try:
            report = await self._join()
            self.limiter.sweep()  # groups of runs a crashed daemon left (reconcile ended them)
            async with anyio.create_task_group() as tg:
                await tg.start(self.reaper.run)
                await tg.start(self.containment.follow)
                await tg.start(self.recorder.run)
                await tg.start(self.aborts.run)
                await tg.start(self.intake.run)
                await tg.start(self.peers.run, self.settings.heartbeat_interval_s, self._took_over)
                await tg.start(self.retention.run)
                await tg.start(self._usage_board().run)
                if (address := self.settings.metrics_address) is not None:
                    await tg.start(self._metrics_service(address).run)
                if report.failures:
                    tg.start_soon(self.sealer.seal_orphans, report.failures)
                await tg.start(self._status_socket().serve)
                log.info("status socket at %s", self.settings.status_socket)
                await tg.start(self.health.run)
                self.health.notifier.ready(self.summary())
                log.info("ready: reconcile done, abort subscription up, taking runs")
                task_status.started()
                await self._stopping.wait()
                await self._shutdown()
                tg.cancel_scope.cancel()
        finally:
            self.spawner.close()
            if self.stopping:  # a clean stop: every run is gone (not so after a failed start)
                self.containment.close()
                self.limiter.close()
            with anyio.CancelScope(shield=True):
                await self.client.aclose()

    def _log_limits(self) -> None:
        log.info("resource limits: %s", self.limiter.describe())
        configured = {"every run": self.settings.limits_for("")} | {
            f"app {name}": self.settings.limits_for(name) for name in self.settings.app_limits
        }
        for who, limits in configured.items():
            if missing := self.limiter.unenforced(limits):
                log.warning(
                    "%s: %s set but not enforced on this host (no cgroup controller for it; "
                    "see the README's resource limits)",
                    who,
                    ", ".join(missing),
                )

    def stop(self) -> None:
        """Asks :meth:`serve` to kill its runs, record them and return."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    async def _join(self) -> ReconcileReport:
        """Node id check, reconcile, consumer group, node registry: retried while Redis is away.

        Exiting would only make systemd restart the daemon into the same outage.
        An error reply (a key of the wrong type) is no outage: it is named, and
        startup goes on where that is safe.
        """
        keys = self.store.keys
        backoff = 0.5
        while True:
            try:
                # A wrong kind of Redis never heals: say so and stop, not retry for ever.
                if problem := await topology_problem(self.client, self.redis_url):
                    raise RedisTopologyError(problem)
                await self._warn_of_old_layout()
                await self.health.check_node_free()
                report = await self._reconcile()
                # After reconcile killed this node's old runs: their users go with them.
                await self.credentials.prepare()
                await self.intake.ensure_group()
                try:
                    await self.peers.register()
                except ResponseError as exc:  # peers will not see this node; it still works
                    log.error("%s; peers cannot see this node", describe_reply(keys.nodes, exc))
            except ResponseError as exc:
                log.error(
                    "cannot take runs: %s; retrying in %.1fs",
                    describe_reply(keys.runs, exc),
                    backoff,
                )
            except REDIS_ERRORS as exc:
                log.warning("Redis unreachable at start (%s); retrying in %.1fs", exc, backoff)
            else:
                self.metrics.orphans("reconcile", "failed", report.failed)
                if report.failed:
                    log.warning(
                        "reconcile: %d orphaned runs failed (%d killed)",
                        report.failed,
                        report.killed,
                    )
                return report
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _START_BACKOFF_MAX_S)

    async def _warn_of_old_layout(self) -> None:
        # The coordination keys had no hash tag before (`adk:runs`, not `adk:{adk:}runs`):
        # runs queued there, and daemons of that layout, are invisible to this one.
        prefix = self.store.keys.prefix
        old = [f"{prefix}runs", f"{prefix}nodes"]
        if any([await self.client.exists(key) for key in old]):
            log.warning(
                "found %s of the key layout before <prefix>{<prefix>}...: "
                "runs queued there are not taken and daemons of that version do not see this "
                "one. Drain those daemons (adk-supervisor drain) and let their runs end, then "
                "DEL the old keys",
                " or ".join(old),
            )

    async def _reconcile(self) -> ReconcileReport:
        key = self.store.keys.node_tasks(self.node_id)
        try:
            return await reconcile_node(self.store, key, self._identity.boot_id, self.containment)
        except ResponseError as exc:
            log.error("reconcile skipped: %s", describe_reply(key, exc))
            return ReconcileReport(0, 0, 0, 0.0)

    def _metrics_service(self, address: tuple[str, int]) -> MetricsService:
        return MetricsService(
            self.metrics,
            address,
            self.settings.metrics_poll_interval_s,
            self.client,
            self.store.keys.runs,
            lambda: self.runs,
        )

    def _usage_board(self) -> UsageBoard:
        return UsageBoard(
            self.client,
            self.store.keys.node_usage(self.node_id),
            self.settings.heartbeat_interval_s,
            lambda: self.runs,
        )

    def _status_socket(self) -> StatusSocketServer:
        settings = self.settings
        return StatusSocketServer(
            settings.status_socket,
            ControlHandler(self),
            mode=settings.socket_mode,
            group=settings.socket_group,
            max_connections=settings.socket_max_connections,
            idle_timeout_s=settings.socket_idle_timeout_s,
        )

    async def _took_over(self, takeover: Takeover) -> None:
        self.metrics.orphans("peer", "failed", takeover.moved)
        self.metrics.orphans("peer", "claimed", takeover.claimed)
        if takeover.claimed:
            self.intake.rescan_pending()
        if takeover.failed:
            await self.sealer.seal_orphans(takeover.failed)

    async def _after_beat(self) -> None:
        await self._fence()
        await self.credentials.sweep()

    async def _fence(self) -> None:
        """Every heartbeat: kill runs whose record a peer ended while this node was away.

        Away need not be noticed: a node frozen (SIGSTOP, a VM paused) past
        ``node_dead_after_s`` sees Redis answer as if nothing happened.
        """
        runs = list(self.runs)
        try:
            records = await self.store.fields_many([r.task_id for r in runs], ("state",))
            durable = [r for r in runs if r.spec.durable]
            epochs = await self.store.epochs([r.task_id for r in durable])
        except REDIS_ERRORS:
            return
        for run, record in zip(runs, records, strict=True):
            state = record.get("state", "")
            if state in TERMINAL_STATES:
                self.runs.kill_ended_elsewhere(run.task_id, state)
        # A durable run a peer resumed meanwhile has a new epoch: this process is stale.
        for run, epoch in zip(durable, epochs, strict=True):
            if epoch != run.spec.epoch:
                self.runs.kill_ended_elsewhere(run.task_id, f"resumed at epoch {epoch}")

    async def _shutdown(self) -> None:
        """The stop path: drain or kill per ``on_shutdown``, record every terminal state."""
        self.intake.drain()
        policy = self.settings.on_shutdown
        self.health.notifier.stopping(f"stopping ({policy}): {self.summary()}")
        log.info("shutting down (on_shutdown=%s): %d running runs", policy, len(self.runs))
        drain_s = self.settings.drain_timeout_s
        if policy == "drain" and len(self.runs):
            with anyio.move_on_after(drain_s):
                for run in self.runs:
                    await run.finished.wait()
            if len(self.runs):
                log.warning(
                    "drain deadline of %gs passed: killing %d runs", drain_s, len(self.runs)
                )
        reason = (
            "supervisor shutting down"
            if policy == "kill"
            else f"supervisor shutting down: drain deadline of {drain_s:g}s passed"
        )
        # Until every run slot is back: a run being spawned right now gets killed too.
        with anyio.move_on_after(self.settings.kill_grace_s + 30):
            while not self.intake.idle:
                self.runs.kill_all(reason)
                await anyio.sleep(0.02)
        await self.recorder.wait_flushed(10)
        await self.health.forget()
        log.info("stopped: %s", self.summary())

    # ------------------------------------------------------ operator surface

    @property
    def draining(self) -> bool:
        """Whether this node stopped taking runs."""
        return self.intake.draining

    def drain(self) -> int:
        """Stops taking new runs; running runs go on to their end. Returns how many run."""
        if not self.intake.draining:
            self.intake.drain()
            log.info("draining: taking no new runs; %d running runs go on", len(self.runs))
            self.health.notifier.status(self.summary())
        return len(self.runs)

    @property
    def max_input_bytes(self) -> int:
        """The largest run input this node's submissions accept."""
        return self.settings.max_input_bytes

    def check_app(self, app: str) -> None:
        """Raises ValueError naming the choices if ``app`` cannot run on this node."""
        resolve_app(app, self.settings.apps, self.settings.allow_import_paths)

    def summary(self) -> str:
        """One line for ``systemctl status`` and logs."""
        done = sum(self.launcher.finished.values())
        redis = "redis ok" if self.health.redis_healthy else "redis DOWN"
        mode = ", draining" if self.draining else ""
        return f"{len(self.runs)} running, {done} finished, {redis}{mode}"

    async def status_snapshot(self) -> dict[str, Any]:
        """What ``adk-supervisor status`` shows: node, health, counts and every running run."""
        rows = await run_rows(self.runs, self.settings.apps)
        return {
            "node_id": self.node_id,
            "version": package_version(),
            "pid": self.pid,
            "uptime_s": round(time.time() - self.started_at, 3),
            "redis": {
                "url": redact_url(self.redis_url),
                "connected": self.health.redis_healthy,
                "embedded": self.embedded_redis,
            },
            "kill_mechanism": self.containment.name,
            "run_credentials": self.credentials.mode,
            "spawner": self.spawner.name,
            "draining": self.draining,
            "max_concurrent_runs": self.settings.max_concurrent_runs,
            "counts": {TaskState.RUNNING.value: len(rows), **self.launcher.finished},
            "runs": rows,
            "state_dir": str(self.settings.state_dir),
            "socket_path": str(self.settings.status_socket),
        }
