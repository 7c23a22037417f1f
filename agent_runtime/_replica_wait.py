"""Writes acknowledged only once replicas have them: a script run followed by ``WAIT``.

``WAIT`` counts the writes of the connection it is sent on, so the script and the
``WAIT`` travel together on one connection: a pipeline on a single Redis (Sentinel's
master), and on a Redis Cluster one connection to the primary of the keys' slot, taken
from the client's pool for that node (redis-py's cluster pipeline may re-send a
redirected command alone, on another connection, and route a retried ``WAIT`` to any
node: a ``WAIT`` that counts nothing would acknowledge a write no replica has).

What this guarantees, and what not: an acknowledged write was on ``replicas`` replicas
when acknowledged, so a failover that promotes one of them keeps it (Redis Cluster
promotes the replica with the most data; Sentinel likewise). ``WAIT`` is no transaction:
a write that times out may be stored (on the primary alone) and may be lost or kept; the
caller gets :class:`RedisUnavailableError` and retries, and every write that uses this is
idempotent (a retried transition or append is recognised). A retry that finds its write
already stored writes nothing, so its ``WAIT`` covers its connection's earlier writes, not
that one: it can be acknowledged before the first attempt's write reached a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from .redis_connection import RedisUnavailableError, ReplicaWait, outage_reply

__all__ = ["run_confirmed"]


# One slot map refresh at a time per cluster client, however many writers saw it change.
_refreshing: weakref.WeakKeyDictionary[object, asyncio.Lock] = weakref.WeakKeyDictionary()

# Tries of one write on a cluster whose slot map is changing (a failover promotes a
# replica within the node timeout; redis-py learns it from the next CLUSTER SLOTS).
_CLUSTER_TRIES = 3
_CLUSTER_BACKOFF_S = 0.25


def _short(where: str, acked: int, wait: ReplicaWait) -> RedisUnavailableError:
    return RedisUnavailableError(
        f"Redis at {where}: the write reached {acked} of {wait.replicas} replica(s) "
        f"within {wait.timeout_ms} ms, so a failover could lose it; it may be stored, "
        "and is safe to retry"
    )


async def run_confirmed(
    client: aioredis.Redis,
    script: AsyncScript,
    keys: Sequence[str],
    args: Sequence[str | int],
    wait: ReplicaWait,
    where: str,
) -> Any:
    """Runs ``script`` and returns its reply once ``wait.replicas`` replicas have its
    writes; else raises :class:`RedisUnavailableError` (the write may be stored)."""
    if isinstance(client, RedisCluster):
        return await _run_on_cluster(client, script, keys, args, wait, where)
    async with client.pipeline(transaction=False) as pipe:
        await script(keys=list(keys), args=list(args), client=pipe)
        pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
        reply, acked = await pipe.execute()
    if int(acked) < wait.replicas:
        # A master cut off from its replicas is often a demoted one that Sentinel has not
        # reconfigured yet: reopen, so the retry asks the sentinels. Idle connections
        # only: the pool's others carry other callers' calls (a daemon's XREADGROUP).
        await client.connection_pool.disconnect(inuse_connections=False)
        raise _short(where, int(acked), wait)
    return reply


async def _run_on_cluster(
    client: RedisCluster,
    script: AsyncScript,
    keys: Sequence[str],
    args: Sequence[str | int],
    wait: ReplicaWait,
    where: str,
) -> Any:
    last: BaseException | None = None
    for attempt in range(_CLUSTER_TRIES):
        if attempt:
            await asyncio.sleep(_CLUSTER_BACKOFF_S * attempt)
            await _refresh(client)
        try:
            if client._initialize:  # first use: no slot map yet
                await client.initialize()
            node = client.get_node_from_key(keys[0])
        except (RedisError, RedisClusterException, OSError) as exc:
            last = exc
            continue
        if node is None:
            last = RedisClusterException(f"no primary serves the slot of {keys[0]}")
            continue
        try:
            reply, acked = await _script_then_wait(node, script, keys, args, wait)
        except (ConnectionError, TimeoutError, OSError, RedisError) as exc:
            if isinstance(exc, ResponseError) and not outage_reply(exc):
                raise
            # A dead primary, a demoted one (MOVED, READONLY), a cluster failing over.
            last = exc
            continue
        if acked < wait.replicas:
            raise _short(f"{where} ({node.name})", acked, wait)
        return reply
    raise RedisUnavailableError(
        f"the Redis Cluster at {where} cannot take the write now ({last}): a failover "
        "in progress; it may not have been applied and is safe to retry"
    ) from last


async def _script_then_wait(
    node: ClusterNode,
    script: AsyncScript,
    keys: Sequence[str],
    args: Sequence[str | int],
    wait: ReplicaWait,
) -> tuple[Any, int]:
    """The script and ``WAIT`` in one round trip on one connection to ``node``."""
    run: tuple[Any, ...] = ("EVALSHA", script.sha, len(keys), *keys, *args)
    for _ in range(2):
        commands = [
            PipelineCommand(0, *run),
            PipelineCommand(1, "WAIT", wait.replicas, wait.timeout_ms),
        ]
        await node.execute_pipeline(commands)
        reply, acked = commands[0].result, commands[1].result
        if isinstance(reply, NoScriptError):
            # A promoted replica has no script cache: send the body once.
            run = ("EVAL", script.script, len(keys), *keys, *args)
            continue
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(acked, BaseException):
            raise acked
        return reply, int(cast(int, acked))
    raise AssertionError("unreachable: EVAL does not answer NOSCRIPT")


async def _refresh(client: RedisCluster) -> None:
    """Reads the slot map again (after a failover), once however many writers ask."""
    lock = _refreshing.setdefault(client, asyncio.Lock())
    if lock.locked():
        async with lock:
            return
    # A failed read leaves the map as it was: the next try fails alike, and says why.
    async with lock:
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await client.nodes_manager.initialize()
