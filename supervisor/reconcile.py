"""Startup reconcile: no record of this node stays ``starting``/``running`` after its process died.

A record's process is ours only if boot id, PID and start time all match; a
PID that now belongs to someone else is never signalled. A live process that
is proven ours is killed with its whole tree (cgroup leaf, else its group
through a pidfd and every process carrying the run's marker) before the
record is failed as orphaned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import psutil

from agent_runtime.session_sealing import seal_task_session
from agent_runtime.session_service import RedisSessionService
from agent_runtime.task_store import LIVE_STATES, TaskStore

from .process_tree import (
    PIDFD_SIGNAL_PROCESS_GROUP,
    TASK_ENV,
    CgroupContainment,
    Containment,
    process_start_ticks,
    signal_marked,
)

__all__ = ["ReconcileReport", "reconcile_node", "seal_orphans"]

log = logging.getLogger("adk_supervisor")

_FIELDS = ("state", "pid", "start_ticks", "boot_id")


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What a reconcile did."""

    examined: int
    failed: int
    killed: int
    seconds: float
    failures: Mapping[str, Mapping[str, object]] = field(default_factory=dict)


def _kill_marked(task_ids: set[str]) -> None:
    """SIGKILLs every process on the host that carries one of these runs' markers."""
    markers = {f"{TASK_ENV}={t}".encode() for t in task_ids}
    for pid in psutil.pids():  # after a restart, escaped processes are nobody's children
        try:
            environ = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        for marker in markers.intersection(environ):
            signal_marked(pid, marker, signal.SIGKILL)


def _kill_proven(pid: int, start_ticks: int) -> bool:
    """Kills ``pid``'s group if the PID still names the recorded process; True if it did."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        # Identity is checked after the pidfd is held: the PID cannot be reused under it.
        if process_start_ticks(pid) != start_ticks:
            return False
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL, None, PIDFD_SIGNAL_PROCESS_GROUP)
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    finally:
        os.close(pidfd)


async def seal_orphans(
    store: TaskStore, failures: Mapping[str, Mapping[str, object]], session_ttl: float | None
) -> None:
    """Seals the sessions of the runs a reconcile failed; best effort, never raises.

    The daemon runs it in the background once it is serving: with thousands of
    orphans, sealing must not hold back the start.
    """
    sessions = RedisSessionService(
        redis_client=store.client, key_prefix=store.key_prefix, session_ttl=session_ttl
    )
    ids = list(failures)
    try:
        records = await store.get_many(ids)
    except Exception as exc:
        log.warning("reconcile: sessions of orphaned runs not sealed (%s)", exc)
        return
    for task_id, record in zip(ids, records, strict=True):
        reason = str(failures[task_id]["reason"])
        # Only the records this reconcile moved (another writer may have ended one first).
        if record is None or record.get("state") != "failed" or record.get("reason") != reason:
            continue
        try:
            with anyio.fail_after(10):
                await seal_task_session(sessions, task_id, record, "failed", reason)
        except Exception as exc:
            log.warning("task %s: session not sealed at reconcile (%s)", task_id, exc)


async def reconcile_node(
    store: TaskStore,
    node_key: str,
    boot: str,
    containment: Containment,
) -> ReconcileReport:
    """Fails every ``starting``/``running`` record of this node whose process is gone or orphaned.

    The report's ``failures`` are the records moved, for :func:`seal_orphans`.
    """
    began = time.monotonic()
    raw_ids = await store.client.smembers(node_key)
    task_ids = sorted(t.decode() if isinstance(t, bytes) else t for t in raw_ids)
    records = await store.fields_many(task_ids, _FIELDS)
    failures: dict[str, dict[str, object]] = {}
    finished: list[str] = []
    killed: set[str] = set()
    for task_id, record in zip(task_ids, records, strict=True):
        if record.get("state") not in LIVE_STATES:
            finished.append(task_id)
            continue
        pid = int(record.get("pid") or 0)
        ticks = int(record.get("start_ticks") or 0)
        if record.get("boot_id") != boot:
            reason = "orphaned: the node rebooted since the run started"
        elif not pid:
            reason = "orphaned: the supervisor died while starting the run"
        elif (now_ticks := process_start_ticks(pid)) != ticks:
            reason = f"orphaned: process {pid} is gone" + (
                "" if now_ticks is None else " (its PID now names another process)"
            )
        elif _kill_proven(pid, ticks):
            killed.add(task_id)
            reason = "orphaned: killed at supervisor restart"
        else:
            reason = f"orphaned: process {pid} is gone"
        failures[task_id] = {"reason": reason}
    # Whatever escaped its group (setsid, double fork) carries the run's marker.
    if failures:
        _kill_marked(set(failures))
    if isinstance(containment, CgroupContainment):
        for leaf in containment.leftover_leaves():
            with contextlib.suppress(OSError):
                (leaf / "cgroup.kill").write_text("1")
            for _ in range(200):
                if "populated 0" in (leaf / "cgroup.events").read_text():
                    break
                await anyio.sleep(0.005)
            with contextlib.suppress(OSError):
                leaf.rmdir()
    moved = await store.fail_many(failures)
    if failures or finished:
        await store.client.srem(node_key, *failures, *finished)
    for task_id, fields in failures.items():
        log.warning("task %s failed at reconcile: %s", task_id, fields["reason"])
    return ReconcileReport(len(task_ids), moved, len(killed), time.monotonic() - began, failures)
