"""Orphans of durable apps: put back on the runs stream instead of failed.

Reconcile (after a restart) and peer takeover (a dead node) find runs whose
process is gone; those whose app has ``on_orphan = "resume"`` (the daemon that
claimed them saved what to resume from) go back to ``queued`` through one
compare-and-set each (:meth:`TaskStore.resume`), so of several daemons that
notice at once exactly one resumes a run. The rest are failed as before, with
a reason that says when a run's attempts were used up.

The compare-and-set is on the epoch read with the record that made the run an
orphan: a daemon slow between that read and its resume would otherwise resume
again a run a faster peer had already resumed and started anew (its state is
``starting``/``running`` once more).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from agent_runtime.task_store import TaskStore

__all__ = ["EPOCH_FIELD", "epochs_read", "resume_orphans"]

EPOCH_FIELD = "epoch"
"""The record field to read with ``state`` for :func:`epochs_read`."""


def epochs_read(
    task_ids: Sequence[str], records: Sequence[Mapping[str, str]]
) -> dict[str, int | None]:
    """Each run's epoch as its record says (absent: 0, before any resume; not a number: None,
    which resumes without the check)."""
    epochs: dict[str, int | None] = {}
    for task_id, record in zip(task_ids, records, strict=True):
        raw = record.get(EPOCH_FIELD, "0")
        epochs[task_id] = int(raw) if raw.isdigit() and len(raw) < 19 else None
    return epochs


log = logging.getLogger("adk_supervisor")


async def resume_orphans(
    store: TaskStore,
    failures: dict[str, dict[str, object]],
    epochs: Mapping[str, int | None] | None = None,
) -> dict[str, int]:
    """Resumes the durable runs among ``failures`` and takes them out of it; returns the
    resumed runs and their new epochs. Runs another daemon moved first are taken out too.

    ``epochs`` (:func:`epochs_read`): a run is resumed only if still at that epoch."""
    resumed: dict[str, int] = {}
    for task_id in list(failures):
        reason = str(failures[task_id]["reason"])
        epoch = None if epochs is None else epochs.get(task_id)
        result = await store.resume(task_id, reason, epoch=epoch)
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
        elif result.outcome in ("rejected", "missing", "stale"):
            del failures[task_id]
    return resumed
