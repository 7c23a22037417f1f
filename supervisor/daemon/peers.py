"""Peer reconcile: supervisors sharing one Redis take over the work of a node that is gone.

Every daemon registers its node in ``<prefix>{<prefix>}nodes`` and keeps
``<prefix>{<prefix>}node:<node_id>:heartbeat`` alive. A daemon that sees a peer's
heartbeat missing for ``node_dead_after_s``, timed on its own monotonic clock
from the first time it saw it missing (so a Redis restart that lost every
heartbeat is not taken for a mass death), takes the peer's work over:

- it fails the peer's ``starting``/``running`` records as
  ``orphaned: node <id> stopped heartbeating`` through the task store's
  compare-and-set, so when several peers notice at once each task fails once
  (a run of a durable app is resumed instead, once: :mod:`.resume`);
- it claims the runs the peer took off the stream but never started (the
  peer's pending entries), so they run here;
- it removes the peer from the registry and from the consumer group.

It never signals the peer's processes: they are on another host. A daemon's
runs die with it (parent-death signal), and a daemon that was only cut off from
Redis kills, once it is back, every run whose record a peer ended meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus
from redis.exceptions import ResponseError

from agent_runtime.keys import RUNS_GROUP
from agent_runtime.redis_connection import REDIS_ERRORS, as_text, describe_reply, wrong_type
from agent_runtime.task_store import LIVE_STATES, TaskStore

from .resume import EPOCH_FIELD, epochs_read, resume_orphans

__all__ = ["PeerWatch", "Takeover"]

log = logging.getLogger("adk_supervisor")


@dataclass(frozen=True, slots=True)
class Takeover:
    """What taking over one gone node did."""

    node_id: str
    failed: dict[str, dict[str, object]]
    claimed: int
    moved: int = 0
    """How many of ``failed`` this node moved (a peer that noticed first moved the rest)."""
    resumed: int = 0
    """Runs of durable apps this node put back on the runs stream instead of failing them."""


class PeerWatch:
    """Notices nodes whose daemon is gone and takes their work over; one per daemon."""

    def __init__(self, store: TaskStore, node_id: str, dead_after_s: float) -> None:
        self.store = store
        self.keys = store.keys
        self.stream = store.keys.runs
        self.group = RUNS_GROUP
        self.node_id = node_id
        self.dead_after_s = dead_after_s
        self._missing_since: dict[str, float] = {}

    async def register(self) -> None:
        """Adds this node to the registry peers watch."""
        await self.store.client.sadd(self.keys.nodes, self.node_id)

    async def run(
        self,
        interval_s: float,
        on_takeover: Callable[[Takeover], Awaitable[None]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sweeps every ``interval_s`` until cancelled; Redis trouble skips a sweep."""
        task_status.started()
        while True:
            await anyio.sleep(interval_s)
            try:
                takeovers = await self.sweep()
            except REDIS_ERRORS as exc:
                log.debug("peer sweep skipped: %s", exc)
                continue
            except Exception:  # garbage in a peer's keys must not stop the daemon
                log.exception("peer sweep failed; retrying at the next one")
                continue
            for takeover in takeovers:
                await on_takeover(takeover)

    async def sweep(self) -> list[Takeover]:
        """One look at every peer; takes over those gone for ``dead_after_s``."""
        client = self.store.client
        peers = []
        for member in await client.smembers(self.keys.nodes):
            node = as_text(member)
            if isinstance(member, bytes) and node.encode() != member:
                # Not UTF-8, so no daemon's node id: taken over, it would stay in the
                # registry (its text is another member) and be taken over again for ever.
                log.warning("%s: member %r is no node id; removed", self.keys.nodes, member[:80])
                await client.srem(self.keys.nodes, member)
            elif node != self.node_id:
                peers.append(node)
        peers.sort()
        if not peers:
            return []
        async with client.pipeline(transaction=False) as pipe:
            for node in peers:
                pipe.exists(self.keys.node_heartbeat(node))
            alive = await pipe.execute()
        now = time.monotonic()
        done = []
        for node, live in zip(peers, alive, strict=True):
            if live:
                self._missing_since.pop(node, None)
                continue
            since = self._missing_since.setdefault(node, now)
            if now - since >= self.dead_after_s:
                try:
                    done.append(await self._take_over(node, now - since))
                except ResponseError as exc:
                    # An error reply about one gone peer must not keep the peers after it
                    # from ever being taken over.
                    log.error(
                        "cannot take over node %s (%s); retrying at the next sweep", node, exc
                    )
                    continue
                self._missing_since.pop(node, None)
        return done

    async def _take_over(self, node: str, missing_s: float) -> Takeover:
        client = self.store.client
        tasks_key = self.keys.node_tasks(node)
        try:
            task_ids = sorted(map(as_text, await client.smembers(tasks_key)))
        except ResponseError as exc:
            if not wrong_type(exc):
                raise
            log.error("node %s: %s; its runs are not failed", node, describe_reply(tasks_key, exc))
            task_ids = []
        records = await self.store.fields_many(task_ids, ("state", "node_id", EPOCH_FIELD))
        reason = (
            f"orphaned: node {node} stopped heartbeating (no supervisor seen for "
            f"{missing_s:.0f}s; taken over by {self.node_id})"
        )
        failures: dict[str, dict[str, object]] = {
            task_id: {"reason": reason}
            for task_id, record in zip(task_ids, records, strict=True)
            if record.get("state") in LIVE_STATES and record.get("node_id") == node
        }
        resumed = await resume_orphans(self.store, failures, epochs_read(task_ids, records))
        moved = await self.store.fail_many(failures)
        if task_ids:
            await client.srem(tasks_key, *task_ids)
        # Runs the peer read but never started wait in its pending list: claim them.
        claimed = 0
        while True:
            pending = await client.xpending_range(
                self.stream, self.group, min="-", max="+", count=100, consumername=node
            )
            if not pending:
                break
            ids: list[bytes | str | int | memoryview[int]] = [p["message_id"] for p in pending]
            await client.xclaim(self.stream, self.group, self.node_id, 0, ids)
            claimed += len(ids)
        await client.xgroup_delconsumer(self.stream, self.group, node)
        await client.srem(self.keys.nodes, node)
        log.warning(
            "took over node %s (no heartbeat for %.0fs): %d runs failed as orphaned, "
            "%d queued runs claimed",
            node,
            missing_s,
            moved,
            claimed,
        )
        return Takeover(node, failures, claimed, moved, len(resumed))
