"""The daemon's file-descriptor budget, raised and checked before it starts.

Each live run holds a pidfd of its leader for its whole life, and a start or a
kill opens a few more for a moment (the run's log, its spec, cgroup files);
besides, the daemon holds up to ``DEFAULT_MAX_CONNECTIONS`` Redis connections,
up to ``socket_max_connections`` status-socket clients, and a fixed set (the
fork server's socket and pidfd, the process-event socket, the metrics server,
its own log and lock). With ``max_concurrent_runs = 1000`` that is far over
the usual soft limit of 1,024.

At start the soft ``RLIMIT_NOFILE`` is raised to the hard limit (the runs, the
fork server and an embedded Redis inherit it). If even the hard limit cannot
cover the budget, the daemon refuses to start, as a configuration error: out
of descriptors, a spawn fails (the run is lost as ``failed``) and, worse, a
kill cannot open ``cgroup.kill``: the kill switch would fail under exactly the
load it exists for. Refusing at start says so once, with what to set, instead.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

from agent_runtime.redis_connection import DEFAULT_MAX_CONNECTIONS

from ..config import Settings
from ..errors import ConfigError

__all__ = ["FDS_PER_RUN", "FdBudget", "fd_budget", "raise_fd_limit"]

log = logging.getLogger("adk_supervisor")

FDS_PER_RUN = 2
"""A run's pidfd, held for its life, plus one opened for a moment while it starts or is
killed (its spec, a cgroup file). Measured: 1,024 descriptors at 1,000 live runs."""
_FIXED_FDS = 128
"""Standard streams, logs, the state lock, the fork server's socket and pidfd, the
process-event socket, the metrics server, the abort subscription, anyio's own."""


@dataclass(frozen=True, slots=True)
class FdBudget:
    """What the daemon needs and what it may open."""

    needed: int
    soft: int
    hard: int

    @property
    def enough(self) -> bool:
        """Whether the hard limit covers the budget."""
        return self.hard == resource.RLIM_INFINITY or self.hard >= self.needed


def fds_needed(settings: Settings) -> int:
    """File descriptors the daemon may hold at once with these settings."""
    return (
        settings.max_concurrent_runs * FDS_PER_RUN
        + DEFAULT_MAX_CONNECTIONS
        + settings.socket_max_connections
        + _FIXED_FDS
    )


def fd_budget(settings: Settings) -> FdBudget:
    """The budget against this process's limits, as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FdBudget(fds_needed(settings), soft, hard)


def raise_fd_limit(settings: Settings) -> FdBudget:
    """Raises the soft ``RLIMIT_NOFILE`` to the hard one; :class:`ConfigError` if that is
    still short of what ``max_concurrent_runs`` needs (the message says what to set)."""
    budget = fd_budget(settings)
    if budget.soft != budget.hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (budget.hard, budget.hard))
        log.info("file descriptors: soft limit raised from %d to %d", budget.soft, budget.hard)
        budget = FdBudget(budget.needed, budget.hard, budget.hard)
    if not budget.enough:
        most = max(
            1,
            (budget.hard - DEFAULT_MAX_CONNECTIONS - settings.socket_max_connections - _FIXED_FDS)
            // FDS_PER_RUN,
        )
        raise ConfigError(
            [
                f"max_concurrent_runs = {settings.max_concurrent_runs} needs up to "
                f"{budget.needed} file descriptors ({FDS_PER_RUN} per run, plus Redis connections, "
                f"status-socket clients and the daemon's own), but this process may open only "
                f"{budget.hard} (the hard RLIMIT_NOFILE). Raise it (systemd: LimitNOFILE= in the "
                f"unit, e.g. LimitNOFILE={_suggest(budget.needed)}; a shell: ulimit -n, as root) "
                f"or set max_concurrent_runs to at most {most}"
            ]
        )
    log.info(
        "file descriptors: up to %d (max_concurrent_runs = %d needs up to %d)",
        budget.hard,
        settings.max_concurrent_runs,
        budget.needed,
    )
    return budget


def _suggest(needed: int) -> int:
    """A round limit above ``needed``."""
    limit = 65536
    while limit < needed:
        limit *= 2
    return limit
