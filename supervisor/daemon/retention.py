"""Retention of run logs: the daemon's periodic pruning of ``state_dir/logs``.

Redis keeps itself bounded (record TTLs, deleted stream entries, a capped
history, session TTLs: the README's Retention); the log directory has nothing
of the kind, so every ``run_log_prune_interval_s`` this job scans it, in a
worker thread, and

- cuts every log over ``run_log_max_bytes``, a live run's too, to its first half
  plus a note saying how much was cut (:func:`cut`);
- deletes the logs of finished runs last written more than
  ``run_log_retention_s`` ago;
- deletes the oldest of the rest until at most ``run_log_max_files`` remain and
  they hold at most ``run_log_dir_max_bytes``.

A live run's log is never deleted: the run would go on filling a file nobody
can read, whose space comes back only when the run ends. Neither is the fork
server's own log, nor a log written in the last second (a run being spawned
is not in the run table yet). So the directory can exceed its budget by what
live runs hold, each at most ``run_log_max_bytes`` plus what it writes in one
interval.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from ..config import Settings

__all__ = ["LogFile", "LogPolicy", "LogRetention", "PruneReport", "cut", "plan"]

log = logging.getLogger("adk_supervisor")

# Logs of the daemon's own processes, next to the runs' (node.py names the fork server's).
_DAEMON_LOGS = frozenset({"fork-server.log"})
# A log this young may belong to a run being spawned (not in the run table yet).
_YOUNG_S = 1.0
_SUFFIX = ".log"


@dataclass(frozen=True, slots=True)
class LogPolicy:
    """The limits on the run logs; None: no such limit."""

    max_age_s: float | None = None
    max_files: int | None = None
    max_dir_bytes: int | None = None
    max_file_bytes: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LogPolicy:
        """The ``run_log_*`` settings."""
        return cls(
            settings.run_log_retention_s,
            settings.run_log_max_files,
            None if settings.run_log_dir_max_bytes is None else int(settings.run_log_dir_max_bytes),
            None if settings.run_log_max_bytes is None else int(settings.run_log_max_bytes),
        )


@dataclass(frozen=True, slots=True)
class LogFile:
    """One log in the directory: its name, size in bytes and last write (epoch seconds)."""

    name: str
    size: int
    mtime: float


@dataclass(slots=True)
class PruneReport:
    """What one pass found and did."""

    files: int = 0
    bytes: int = 0
    deleted: int = 0
    freed: int = 0
    cut: dict[str, int] = field(default_factory=dict)
    """Name -> bytes cut by this pass."""


def plan(
    files: Iterable[LogFile], policy: LogPolicy, now: float, keep: Collection[str]
) -> list[LogFile]:
    """The logs to delete, oldest first: ``keep`` (names) and young ones are never chosen."""
    every = sorted(files, key=lambda f: (f.mtime, f.name))
    deletable = [
        f
        for f in every
        if f.name not in keep and f.name not in _DAEMON_LOGS and f.mtime <= now - _YOUNG_S
    ]
    doomed: list[LogFile] = []
    if policy.max_age_s is not None:
        doomed = [f for f in deletable if f.mtime < now - policy.max_age_s]
    count = len(every) - len(doomed)
    total = sum(f.size for f in every) - sum(f.size for f in doomed)
    for f in deletable[len(doomed) :]:  # the age pass took a prefix of the oldest
        over_count = policy.max_files is not None and count > policy.max_files
        over_bytes = policy.max_dir_bytes is not None and total > policy.max_dir_bytes
        if not (over_count or over_bytes):
            break
        doomed.append(f)
        count -= 1
        total -= f.size
    return doomed


def _note(total_cut: int, max_bytes: int) -> bytes:
    return (
        f"\n[adk-supervisor: {total_cut} bytes of this log cut here, to keep it under "
        f"run_log_max_bytes = {max_bytes}; later output follows]\n"
    ).encode()


def cut(path: Path, max_bytes: int, cut_before: int = 0) -> int:
    """Cuts the log at ``path``, if over ``max_bytes``, to its first half plus a note.

    Returns the bytes this cut dropped (0: under the limit, or not a plain file
    of its own). Sound for a log its run still writes: both spawners open it
    ``O_APPEND``, so each of the run's writes lands at the end as the file is
    then, and after the cut the run's output goes on right after the note, with
    no hole. ``cut_before`` is what earlier cuts of this file dropped (the note
    says the total).
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags)  # a run may put a symlink or a FIFO here: never follow it
    try:
        st = os.fstat(fd)
        # A hard link would make the cut reach a file outside the directory.
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size <= max_bytes:
            return 0
        keep = max_bytes // 2
        os.ftruncate(fd, keep)
        dropped = st.st_size - keep  # at least: the run may have written since fstat
        os.write(fd, _note(cut_before + dropped, max_bytes))
        return dropped
    finally:
        os.close(fd)


def _scan(log_dir: Path) -> list[LogFile]:
    files = []
    with os.scandir(log_dir) as entries:
        for entry in entries:
            if not entry.name.endswith(_SUFFIX):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                files.append(LogFile(entry.name, st.st_size, st.st_mtime))
    return files


class LogRetention:
    """The pruning job: ``await tg.start(retention.run)``; each pass in a worker thread."""

    def __init__(
        self,
        log_dir: Path,
        policy: LogPolicy,
        interval_s: float,
        live: Callable[[], Iterable[str]],
    ) -> None:
        """``live``: the task ids of the runs whose logs must stay (the run table's)."""
        self.log_dir = log_dir
        self.policy = policy
        self.interval_s = interval_s
        self._live = live
        self._cut_so_far: dict[str, int] = {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Prunes at once (logs an earlier daemon left), then every interval, for ever."""
        task_status.started()
        while True:
            await self.prune()
            await anyio.sleep(self.interval_s)

    async def prune(self) -> PruneReport | None:
        """One pass; None if it failed (logged: the next interval tries again)."""
        keep = frozenset(f"{task_id}{_SUFFIX}" for task_id in self._live())
        try:
            report = await anyio.to_thread.run_sync(self._prune, keep, time.time())
        except OSError as exc:
            log.warning("run logs not pruned: %s", exc)
            return None
        except Exception:  # the next pass may fare better; the daemon must go on
            log.exception("run logs not pruned")
            return None
        if report.deleted:
            log.debug(
                "run logs: deleted %d (%d bytes); %d left (%d bytes)",
                report.deleted,
                report.freed,
                report.files,
                report.bytes,
            )
        return report

    def _prune(self, keep: frozenset[str], now: float) -> PruneReport:
        """Blocking: cut, plan, delete."""
        files = _scan(self.log_dir)
        report = PruneReport()
        max_file = self.policy.max_file_bytes
        if max_file is not None:
            files = [self._cut(f, max_file, report) for f in files]
        doomed = plan(files, self.policy, now, keep)
        for f in doomed:
            try:
                (self.log_dir / f.name).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("run log %s not deleted: %s", f.name, exc)
                continue
            report.deleted += 1
            report.freed += f.size
        gone = {f.name for f in doomed}
        left = [f for f in files if f.name not in gone]
        report.files = len(left)
        report.bytes = sum(f.size for f in left)
        # Forget cut totals of logs that are gone.
        names = {f.name for f in left}
        self._cut_so_far = {n: c for n, c in self._cut_so_far.items() if n in names}
        return report

    def _cut(self, f: LogFile, max_bytes: int, report: PruneReport) -> LogFile:
        if f.size <= max_bytes:
            return f
        before = self._cut_so_far.get(f.name, 0)
        try:
            dropped = cut(self.log_dir / f.name, max_bytes, before)
        except OSError as exc:
            log.warning("run log %s over run_log_max_bytes not cut: %s", f.name, exc)
            return f
        if not dropped:
            return f
        self._cut_so_far[f.name] = before + dropped
        report.cut[f.name] = dropped
        if not before:
            log.warning(
                "run log %s reached run_log_max_bytes (%d): cut to its first half; "
                "further cuts are not logged",
                f.name,
                max_bytes,
            )
        return LogFile(f.name, max_bytes // 2 + len(_note(before + dropped, max_bytes)), f.mtime)
