"""Startup reconcile: no record of this node stays ``starting``/``running`` after its process died.

A run of a durable app (``on_orphan = "resume"``) is put back on the runs stream
instead of failed (:mod:`.resume`).

Everything a record holds (PID, start ticks, boot id) is public in /proc and
can be planted by anyone who writes to Redis, so it only says where to look: a
process is signalled only once, held by a pidfd, it is proven a run of this
supervisor by what Redis cannot forge, the run's marker in its exec-time
environment, besides a matching start time. Its group is signalled only if it
leads that group (as every run leader does). A live process proven ours is
killed with its whole tree (cgroup leaf, else its group and every process
carrying the run's marker) before the record is failed as orphaned.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import psutil

from agent_runtime.redis_connection import as_text
from agent_runtime.task_store import LIVE_STATES, TaskStore

from ..process.containment import Containment
from ..process.identity import carries_marker, carrying, process_start_ticks, signal_proven
from ..process.tree import run_marker
from .resume import EPOCH_FIELD, epochs_read, resume_orphans

__all__ = ["ReconcileReport", "reconcile_node"]

log = logging.getLogger("adk_supervisor")

_FIELDS = ("state", "pid", "start_ticks", "boot_id", EPOCH_FIELD)


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What a reconcile did."""

    examined: int
    failed: int
    killed: int
    seconds: float
    failures: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    resumed: int = 0
    """Runs of durable apps put back on the runs stream instead of failed."""


def _kill_marked(task_ids: set[str]) -> None:
    """SIGKILLs every process on the host that carries one of these runs' markers."""
    markers = {run_marker(t) for t in task_ids}
    for pid in psutil.pids():  # after a restart, escaped processes are nobody's children
        try:
            environ = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        for marker in markers.intersection(environ):
            signal_proven(pid, carrying(marker), signal.SIGKILL)


def _our_run_leader(task_id: str, ticks: int, pid: int) -> bool:
    """Whether ``pid`` is the leader of this run: start time, marker, own process group."""
    try:
        leads_group = os.getpgid(pid) == pid
    except OSError:
        return False
    return (
        leads_group
        and process_start_ticks(pid) == ticks
        and carries_marker(pid, run_marker(task_id))
    )


def _int(value: str | None) -> int | None:
    """A number field of a record (0 if absent); None if it is no decimal integer.

    Redis content is untrusted, and ``int()`` takes more than a daemon ever writes
    (``" 4_2 "``, other scripts' digits).
    """
    if not value:
        return 0
    return int(value) if re.fullmatch(r"-?[0-9]{1,20}", value) else None


async def reconcile_node(
    store: TaskStore, node_tasks_key: str, boot: str, containment: Containment
) -> ReconcileReport:
    """Fails every ``starting``/``running`` record of this node whose process is gone or orphaned.

    The report's ``failures`` are the records moved, for sealing their sessions.
    """
    began = time.monotonic()
    task_ids = sorted(map(as_text, await store.client.smembers(node_tasks_key)))
    records = await store.fields_many(task_ids, _FIELDS)
    failures: dict[str, dict[str, object]] = {}
    finished: list[str] = []
    killed: set[str] = set()
    for task_id, record in zip(task_ids, records, strict=True):
        if record.get("state") not in LIVE_STATES:
            finished.append(task_id)
            continue
        pid = _int(record.get("pid"))
        ticks = _int(record.get("start_ticks"))
        if record.get("boot_id") != boot:
            reason = "orphaned: the node rebooted since the run started"
        elif pid is None or ticks is None:
            name = "pid" if pid is None else "start_ticks"
            reason = f"orphaned: malformed {name} {record[name][:40]!r} in its record"
        elif pid <= 0:
            reason = "orphaned: the supervisor died while starting the run"
        elif (now_ticks := process_start_ticks(pid)) != ticks:
            reason = f"orphaned: process {pid} is gone" + (
                "" if now_ticks is None else " (its PID now names another process)"
            )
        elif signal_proven(
            pid, functools.partial(_our_run_leader, task_id, ticks), signal.SIGKILL, with_group=True
        ):
            killed.add(task_id)
            reason = "orphaned: killed at supervisor restart"
        elif process_start_ticks(pid) is None:
            reason = f"orphaned: process {pid} is gone"
        else:
            reason = f"orphaned: process {pid} is not a run of this supervisor (left untouched)"
        failures[task_id] = {"reason": reason}
    # Whatever escaped its group (setsid, double fork) carries the run's marker.
    if failures:
        _kill_marked(set(failures))
    for container in containment.leftovers():
        containment.kill(container, None, 0, signal.SIGKILL)
        for _ in range(200):
            if not containment.populated(container):
                break
            await anyio.sleep(0.005)
        with contextlib.suppress(OSError):
            containment.release(container)
    orphans = list(failures)
    resumed = await resume_orphans(store, failures, epochs_read(task_ids, records))
    moved = await store.fail_many(failures)
    if orphans or finished:
        await store.client.srem(node_tasks_key, *orphans, *finished)
    for task_id, fields in failures.items():
        log.warning("task %s failed at reconcile: %s", task_id, fields["reason"])
    return ReconcileReport(
        len(task_ids), moved, len(killed), time.monotonic() - began, failures, len(resumed)
    )
