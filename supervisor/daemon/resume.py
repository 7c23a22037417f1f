"""Orphans of durable apps: put back on the runs stream instead of failed.

Reconcile (after a restart) and peer takeover (a dead node) find runs whose
process is gone; those whose app has ``on_orphan = "resume"`` (the daemon that
claimed them saved what to resume from) go back to ``queued`` through one
compare-and-set each (:meth:`TaskStore.resume`), so of several daemons that
notice at once exactly one resumes a run. The rest are failed as before, with
a reason that says when a run's attempts were used up.
"""

from __future__ import annotations

import logging

from agent_runtime.task_store import TaskStore

__all__ = ["resume_orphans"]

log = logging.getLogger("adk_supervisor")


async def resume_orphans(
    store: TaskStore, failures: dict[str, dict[str, object]]
) -> dict[str, int]:
    """Resumes the durable runs among ``failures`` and takes them out of it; returns the
    resumed runs and their new epochs. Runs another daemon moved first are taken out too."""
    resumed: dict[str, int] = {}
    for task_id in list(failures):
        reason = str(failures[task_id]["reason"])
        result = await store.resume(task_id, reason)
        if result.outcome == "resumed":
            del failures[task_id]
            resumed[task_id] = result.epoch or 0
            log.warning(
                "task %s: %s; resumed (attempt %s, epoch %s)",
                task_id,
                reason,
                result.attempt,
                result.epoch,
            )
        elif result.outcome == "exhausted":
            failures[task_id]["reason"] = (
                f"{reason}; not resumed: its {result.attempt} attempts (max_attempts) are used up"
            )
        elif result.outcome in ("rejected", "missing"):
            del failures[task_id]
    return resumed
