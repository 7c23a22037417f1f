"""What ``adk-supervisor status`` and ``ps`` show of the runs: one row per run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio
import psutil

from ..process.tree import descendants
from .runs import ActiveRun

__all__ = ["package_version", "run_rows", "tree_usage"]


def package_version() -> str:
    """The installed adk-supervisor version."""
    try:
        return version("adk-supervisor")
    except PackageNotFoundError:
        return "unknown"


def tree_usage(pid: int) -> tuple[int, float]:
    """RSS bytes and CPU seconds of a process and all its descendants (0 for gone ones)."""
    rss, cpu = 0, 0.0
    # The tree from the kernel's children lists: psutil's recursive children() reads
    # every process on the host, on the event loop, per run, per status request.
    procs = []
    for member in (pid, *descendants(pid)):
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(member))
    for proc in procs:
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system
        except psutil.Error:
            continue
    return rss, cpu


async def run_rows(runs: Iterable[ActiveRun], apps: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per run, with its tree's memory and CPU; apps shown by their [apps] name.

    The rows are taken on the loop; the /proc reads for memory and CPU (about
    0.3 ms per process) run in a worker thread, so a ``status`` of 1,000 runs
    does not hold up an abort. A leader reaped meanwhile may lend its PID to
    another process for that read: the figures are for display only.
    """
    now = time.monotonic()
    by_ref = {ref: name for name, ref in apps.items()}
    rows = []
    leaders: list[int | None] = []
    for run in runs:
        # A reaped leader's PID may name someone else by now: report nothing for it.
        leaders.append(run.pid if run.pidfd is not None else None)
        rows.append(
            {
                "task_id": run.task_id,
                "app": by_ref.get(run.spec.app_ref, run.spec.app_ref),
                "user_id": run.spec.user_id,
                "session_id": run.spec.session_id,
                "pid": run.pid,
                "elapsed_s": round(now - run.started, 3),
                "timeout_in_s": None if run.deadline is None else round(run.deadline - now, 3),
                "rss_bytes": 0,
                "cpu_s": 0.0,
                "killing": run.kill is not None,
            }
        )
    usage = await anyio.to_thread.run_sync(
        lambda: [(0, 0.0) if pid is None else tree_usage(pid) for pid in leaders]
    )
    for row, (rss, cpu) in zip(rows, usage, strict=True):
        row["rss_bytes"], row["cpu_s"] = rss, round(cpu, 3)
    return rows
