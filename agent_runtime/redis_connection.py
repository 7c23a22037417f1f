"""Building redis-py asyncio clients from URLs, and turning connection loss into one clear error."""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.exceptions import (
    AskError,
    AuthenticationError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    MaxConnectionsError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .redis_url import (
    CLUSTER_FORM,
    CLUSTER_SCHEMES,
    SCHEMES,
    SENTINEL_FORM,
    SENTINEL_SCHEMES,
    is_cluster_url,
    parse_cluster_url,
    parse_sentinel_url,
    redact_url,
)

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_POOL_TIMEOUT_S",
    "REDIS_ERRORS",
    "PoolExhaustedError",
    "RedisUnavailableError",
    "ReplicaWait",
    "WrongTypeError",
    "as_text",
    "connect",
    "describe_reply",
    "explain_redis_error",
    "is_cluster",
    "open_pubsub",
    "outage_reply",
    "redact_url",
    "replica_wait_of",
    "set_replica_wait",
    "topology_problem",
    "translate_redis_errors",
    "wrong_type",
]


# Everything a Redis call can raise that is Redis's trouble, not a bug of ours:
# lost connections and timeouts, and error replies such as OOM (maxmemory),
# READONLY (a failover) or MISCONF (disk full). Background loops catch these,
# log, back off and go on; they never let one end the process's work.
# (redis-py's cluster client raises RedisClusterException, no RedisError, when it finds no
# reachable node or no node for a slot.)
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    ConnectionError,
    TimeoutError,
    OSError,
)


# redis-py's message when a blocking pool had no free connection in time.
_POOL_EXHAUSTED = "No connection available."


class RedisUnavailableError(ConnectionError):
    """Redis could not be reached; the operation may not have been applied.

    Every write of the session service is safe to retry: a retried append of
    the same event is recognised and not stored twice.
    """


class PoolExhaustedError(RedisUnavailableError):
    """Every connection of the client's pool stayed busy too long; Redis itself answers."""


def as_text(value: bytes | str) -> str:
    """A Redis reply as ``str``, whether the client decodes replies or not.

    Bytes that are not UTF-8 (anyone can write anything to Redis) become U+FFFD.
    """
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# redis-py puts a failed pipeline command in front of Redis's own text.
_WRONGTYPE = re.compile(r"(?:Command # \d+ \(.*\) of pipeline caused error: \('?)?WRONGTYPE ", re.S)


class WrongTypeError(ResponseError):
    """A key holds the wrong kind of value (anyone can write one); the message names the key."""


def wrong_type(error: BaseException) -> bool:
    """Whether ``error`` is Redis refusing a key of the wrong type: no outage, and no
    retry helps until someone deletes the key."""
    return isinstance(error, WrongTypeError) or (
        isinstance(error, ResponseError) and _WRONGTYPE.match(str(error)) is not None
    )


# Error replies that mean "not now, ask again" rather than "this command is wrong": a
# failover in progress (READONLY from a demoted master, MASTERDOWN from a replica whose
# master is gone), too few replicas for min-replicas-to-write (NOREPLICAS), a node still
# loading its data set (LOADING), or a cluster resharding or down.
_OUTAGE_REPLY = re.compile(
    r"(?:Command # \d+ \(.*\) of pipeline caused error: \('?)?"
    r"(?:READONLY|NOREPLICAS|MASTERDOWN|LOADING|TRYAGAIN|CLUSTERDOWN)\b",
    re.S,
)


# AskError covers MovedError: a redirect that redis-py gave up following (slots moving
# faster than its retries, a failover in progress).
_OUTAGE_CLASSES = (ReadOnlyError, MasterDownError, TryAgainError, ClusterDownError, AskError)


# What redis-py's cluster client says, without a reply of Redis's, when the cluster is
# out of reach or mid-failover; its other RedisClusterExceptions are our bugs (keys of
# several slots in one call) or a wrong URL (cluster mode disabled on the node).
_CLUSTER_OUTAGE = re.compile(
    r"cannot be connected|could not agree on a valid slots cache|slots are not covered"
)


def _cluster_outage(error: BaseException) -> bool:
    if isinstance(error, ClusterError | SlotNotCoveredError):
        return True
    text = str(error)
    # "cannot be connected ...: Cluster mode is not enabled on this node" is a wrong URL.
    return (
        isinstance(error, RedisClusterException)
        and "not enabled" not in text
        and _CLUSTER_OUTAGE.search(text) is not None
    )


def outage_reply(error: BaseException) -> bool:
    """Whether ``error`` is an error reply that an outage or failover explains (retry later)."""
    # redis-py strips the code of the replies it has a class for (READONLY...).
    return isinstance(error, _OUTAGE_CLASSES) or (
        isinstance(error, ResponseError) and _OUTAGE_REPLY.match(str(error)) is not None
    )


def _with_code(error: ResponseError) -> str:
    code = getattr(error, "status_code", None)
    text = str(error)
    return f"{code} {text}" if isinstance(code, str) and not text.startswith(code) else text


def describe_reply(key: str, error: BaseException) -> str:
    """An error reply about ``key``, said so an operator knows what to do."""
    text = str(error)
    if isinstance(error, WrongTypeError):
        return text  # named its key already
    if wrong_type(error):
        return (
            f"{key} holds the wrong kind of value for adk-supervisor (Redis: {text}); "
            "something else wrote to it: check its content, then DEL it"
        )
    return f"Redis refused a command on {key}: {text}"


@dataclass(frozen=True, slots=True)
class ReplicaWait:
    """How many replicas must have a write before it is acknowledged, and for how long
    to wait for them."""

    replicas: int
    timeout_ms: int


# Set by connect() from the URL's ?wait_replicas=; read by every writer given that client.
_policies: weakref.WeakKeyDictionary[object, ReplicaWait] = weakref.WeakKeyDictionary()


def set_replica_wait(client: object, replicas: int, timeout_ms: int) -> None:
    """Makes writers given ``client`` confirm their writes on ``replicas`` replicas."""
    if replicas < 0 or timeout_ms < 1:
        raise ValueError("wait_replicas must be >= 0 and wait_timeout_ms >= 1")
    if replicas:
        _policies[client] = ReplicaWait(replicas, timeout_ms)
    else:
        _policies.pop(client, None)


def replica_wait_of(client: object) -> ReplicaWait | None:
    """The confirmation ``client`` was built with (``?wait_replicas=N``), or None."""
    return _policies.get(client)


DEFAULT_MAX_CONNECTIONS = 128
"""Connections one client opens at most; callers beyond wait for a free one."""
DEFAULT_POOL_TIMEOUT_S = 30.0
"""How long a caller waits for a free connection before :class:`PoolExhaustedError`."""
DEFAULT_SOCKET_TIMEOUT_S = 10.0
"""How long one reply may take before the call fails as unreachable (a frozen Redis, a
failed-over master whose TCP connections hang): above the daemon's 1 s stream block."""
DEFAULT_CONNECT_TIMEOUT_S = 5.0
"""How long opening a connection may take."""


def connect(
    url: str,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
    socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    **kwargs: Any,
) -> aioredis.Redis:
    """A ``redis.asyncio.Redis`` for a ``redis://``, ``rediss://`` (TLS), ``unix://`` or
    ``redis+sentinel://`` URL; a ``redis.asyncio.cluster.RedisCluster`` for a
    ``redis+cluster://`` URL (typed as ``Redis``: it answers the same commands; use
    :func:`open_pubsub` rather than its ``pubsub()``).

    Credentials (``redis://user:password@host``) and the database number
    (``/0`` or ``?db=0``) come from the URL, as redis-py parses them. Replies
    are bytes (``decode_responses=False``) unless ``kwargs`` say otherwise.
    The client holds at most ``max_connections``; a caller that finds them all
    busy waits for one, up to ``pool_timeout_s`` (redis-py's default pool fails
    at once instead, which callers could only take for an outage). Every reply
    must come within ``socket_timeout_s`` (redis-py waits for ever by default, so a
    frozen Redis or a connection to a dead master hung every caller); pub/sub's
    blocking reads are exempt (redis-py 8.1 reads them without a timeout).

    A Sentinel URL gives a client of the named master, found through the sentinels,
    with the same pool and timeouts; see :class:`_SentinelMasterPool` for how it
    follows a failover. A Cluster URL gives a client that starts from the listed nodes,
    follows MOVED/ASK and reads the slot map again after a failover; ``max_connections``
    holds per node, and a caller beyond it fails at once (redis-py's cluster pool does
    not wait) with :class:`PoolExhaustedError` through :func:`translate_redis_errors`.

    A Sentinel or Cluster URL's ``?wait_replicas=N&wait_timeout_ms=T`` is kept with the
    client (:func:`replica_wait_of`): the task store and the session service given it
    acknowledge a transition or an append only once ``WAIT`` saw it on N replicas.
    """
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(
            f"unsupported Redis URL {redact_url(url)!r}: use redis://host:port/db, "
            f"rediss://host:port/db (TLS), unix:///path/to/redis.sock, {SENTINEL_FORM} "
            f"or {CLUSTER_FORM}"
        )
    kwargs.setdefault("decode_responses", False)
    client: aioredis.Redis
    if scheme in CLUSTER_SCHEMES:
        client = _connect_cluster(
            url,
            max_connections=max_connections,
            socket_timeout_s=socket_timeout_s,
            connect_timeout_s=connect_timeout_s,
            **kwargs,
        )
        cluster = parse_cluster_url(url)
        set_replica_wait(client, cluster.wait_replicas, cluster.wait_timeout_ms)
        return client
    if scheme in SENTINEL_SCHEMES:
        client = _connect_sentinel(
            url,
            max_connections=max_connections,
            pool_timeout_s=pool_timeout_s,
            socket_timeout_s=socket_timeout_s,
            connect_timeout_s=connect_timeout_s,
            **kwargs,
        )
        sentinel = parse_sentinel_url(url)
        set_replica_wait(client, sentinel.wait_replicas, sentinel.wait_timeout_ms)
        return client
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        **kwargs,
    )
    if pool.connection_class is aioredis.UnixDomainSocketConnection:
        pool.connection_class = _UnixConnection
    return aioredis.Redis.from_pool(pool)


class _UnixConnection(aioredis.UnixDomainSocketConnection):
    """A unix-socket connection that runs its handshake once.

    redis-py 8.1's own runs it (HELLO, AUTH, CLIENT SETNAME, ...) in ``_connect``
    and again in ``connect_check_health``, as TCP connections do not: every new
    connection of a run, the daemon or a client paid a round trip more.
    """

    async def _connect(self) -> None:
        async with asyncio.timeout(self.socket_connect_timeout):
            reader, writer = await asyncio.open_unix_connection(path=self.path)
        self._reader = reader
        self._writer = writer


SENTINEL_RECHECK_S = 1.0
"""How often (at most) a Sentinel client asks the sentinels who the master is."""


class _SentinelMasterPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """redis-py's Sentinel pool, blocking when full, that also notices a failover in time.

    redis-py asks the sentinels only when it opens a connection, and turns READONLY into
    a reconnect; but a demoted master keeps accepting writes until Sentinel reconfigures
    it (about 10 s after a ``SENTINEL FAILOVER``), and every one of those is lost when it
    resyncs. So at most every :data:`SENTINEL_RECHECK_S` a caller asks the sentinels
    again, and a pooled connection to anything but the current master is reopened.
    """

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self._recheck_at = 0.0

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        now = time.monotonic()
        if now >= self._recheck_at:
            # Set first: callers meanwhile use the address known so far, one asks.
            self._recheck_at = now + SENTINEL_RECHECK_S
            try:
                # Closes the idle connections if the master moved.
                await self.get_master_address()  # type: ignore[no-untyped-call]
            except MasterNotFoundError:
                self._recheck_at = 0.0  # connecting raises it to the caller
        connection = await super().get_connection()  # type: ignore[no-untyped-call]
        address = self.master_address
        if (
            address is not None
            and connection.is_connected
            and (connection.host, connection.port) != address
        ):
            try:
                await connection.disconnect()
                await self.ensure_connection(connection)
            except BaseException:
                await self.release(connection)
                raise
        return connection


def _connect_sentinel(
    url: str,
    *,
    max_connections: int,
    pool_timeout_s: float,
    socket_timeout_s: float,
    connect_timeout_s: float,
    **kwargs: Any,
) -> aioredis.Redis:
    parsed = parse_sentinel_url(url)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": connect_timeout_s,
    }
    if parsed.sentinel_password is not None:
        sentinel_kwargs["password"] = parsed.sentinel_password
        sentinel_kwargs["username"] = parsed.sentinel_username
    if parsed.tls:
        sentinel_kwargs["ssl"] = True
    sentinels = list(parsed.sentinels)
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    client: aioredis.Redis = sentinel.master_for(
        parsed.service,
        connection_pool_class=_SentinelMasterPool,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.tls,
        **kwargs,
    )
    return client


class _Cluster(RedisCluster):
    """redis-py's asyncio cluster client, remembering how to open a plain connection to one
    of its nodes (for pub/sub: see :func:`open_pubsub`)."""

    def __init__(self, node_kwargs: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.node_kwargs = node_kwargs


def _connect_cluster(
    url: str,
    *,
    max_connections: int,
    socket_timeout_s: float,
    connect_timeout_s: float,
    **kwargs: Any,
) -> aioredis.Redis:
    parsed = parse_cluster_url(url)
    common: dict[str, Any] = {
        "username": parsed.username,
        "password": parsed.password,
        "ssl": parsed.tls,
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": connect_timeout_s,
        **kwargs,
    }
    client = _Cluster(
        node_kwargs=common,
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes],
        max_connections=max_connections,
        **common,
    )
    # Duck-typed: RedisCluster has the command methods of Redis (not its class).
    return cast(aioredis.Redis, client)


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a redis-py asyncio Redis Cluster client."""
    return isinstance(client, RedisCluster)


class _NodePubSub(PubSub):
    """A pub/sub link to one node of a cluster, owning its connection pool."""

    async def aclose(self) -> None:
        try:
            await super().aclose()  # type: ignore[no-untyped-call]
        finally:
            await self.connection_pool.disconnect()


# The node each cluster client last subscribed through: the next link takes another.
_last_node: weakref.WeakKeyDictionary[RedisCluster, str] = weakref.WeakKeyDictionary()

# What a plain connection to a node borrows from a cluster client built elsewhere.
_NODE_OPTIONS = (
    "username",
    "password",
    "credential_provider",
    "ssl",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_cert_reqs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
    "socket_timeout",
    "socket_connect_timeout",
    "decode_responses",
    "encoding",
    "encoding_errors",
    "client_name",
)


def open_pubsub(client: aioredis.Redis) -> PubSub:
    """A pub/sub link from any client :func:`connect` returns (or any redis-py asyncio
    ``Redis`` / ``RedisCluster``); close it with ``aclose()``.

    On a cluster: classic PUBLISH reaches every node, so the link is a plain connection
    to one node (PSUBSCRIBE patterns work, which sharded pub/sub lacks); each call takes
    the next known node, so a caller that reopens after a lost link moves to another one.
    """
    if not isinstance(client, RedisCluster):
        pubsub: PubSub = client.pubsub()
        return pubsub
    if isinstance(client, _Cluster):
        options = dict(client.node_kwargs)
    else:
        options = {
            name: client.connection_kwargs[name]
            for name in _NODE_OPTIONS
            if name in client.connection_kwargs
        }
    nodes = client.get_nodes() or list(client.nodes_manager.startup_nodes.values())
    # Primaries first: a replica delivers the same messages, but is the likelier to go.
    nodes.sort(key=lambda node: (node.server_type != "primary", node.name))
    names = [node.name for node in nodes]
    last = _last_node.get(client)
    node = nodes[(names.index(last) + 1) % len(nodes)] if last in names else nodes[0]
    _last_node[client] = node.name
    # connect() notes ``ssl=True``; a RedisCluster built elsewhere keeps its connection
    # class instead (SSLConnection), with no ``ssl`` key.
    tls = options.pop("ssl", False) or issubclass(
        client.connection_kwargs.get("connection_class", object), aioredis.SSLConnection
    )
    if tls:
        options["connection_class"] = aioredis.SSLConnection
    else:
        options = {k: v for k, v in options.items() if not k.startswith("ssl_")}
    pool = aioredis.ConnectionPool(host=node.host, port=node.port, **options)
    return _NodePubSub(connection_pool=pool)


async def topology_problem(client: aioredis.Redis, url: str) -> str | None:
    """What is wrong with the kind of Redis ``url`` reaches, said for an operator, or None.

    A plain URL to a cluster node (every key of another slot would come back MOVED), a
    plain URL to a replica (every write READONLY), a cluster URL to a node without
    cluster mode. Unknown (a user without INFO/ROLE rights): None. Connection errors
    are raised, for the caller's retry.
    """
    where = redact_url(url)
    if isinstance(client, RedisCluster):
        try:
            await client.initialize()
        except RedisClusterException as exc:
            if "not enabled" in str(exc):
                return (
                    f"{where} is not a Redis Cluster (cluster mode is disabled on the node): "
                    "use redis://host:port/db for a single Redis"
                )
            raise
        return None
    try:
        info = await client.info("cluster")
    except ResponseError:
        info = {}
    if str(info.get("cluster_enabled", "0")) == "1":
        return (
            f"{where} is a Redis Cluster node: use {CLUSTER_FORM} (a plain redis:// client "
            "reaches one node's slots only)"
        )
    if urlsplit(url).scheme in SENTINEL_SCHEMES:
        return None  # Sentinel hands out the master
    try:
        role = await client.execute_command("ROLE")  # type: ignore[no-untyped-call]
    except ResponseError:
        return None
    if isinstance(role, list | tuple) and role and as_text(role[0]) == "slave":
        master = f"{as_text(role[1])}:{role[2]}" if len(role) > 2 else "its master"
        return (
            f"{where} is a read-only replica (of {master}): point the URL at the primary, or "
            f"use {SENTINEL_FORM} to follow failovers"
        )
    return None


def explain_redis_error(error: BaseException, url: str | None = None) -> str | None:
    """A one-line explanation of a Redis error that a wrong URL explains, or None."""
    where = redact_url(url) if url else "this Redis"
    if isinstance(error, AskError):  # MovedError too
        if url is not None and is_cluster_url(url):
            return f"the cluster at {where} is moving slots or failing over ({error}): retry"
        reply = "MOVED" if isinstance(error, MovedError) else "ASK"
        return f"{where} is a Redis Cluster node: use {CLUSTER_FORM} (it answered {reply} {error})"
    # Through a Sentinel or Cluster URL, READONLY is a failover in progress, not a wrong URL.
    failover_aware = url is not None and (
        is_cluster_url(url) or urlsplit(url).scheme in SENTINEL_SCHEMES
    )
    if isinstance(error, ReadOnlyError) and not failover_aware:
        return (
            f"{where} is a read-only replica (READONLY): point the URL at the primary, or use "
            f"{SENTINEL_FORM}"
        )
    if isinstance(error, RedisClusterException) and "not enabled" in str(error):
        return f"{where} is not a Redis Cluster ({error}): use redis://host:port/db"
    return None


@asynccontextmanager
async def translate_redis_errors(where: str) -> AsyncIterator[None]:
    """Re-raises redis-py's connection and timeout errors, and the error replies of a
    failover or of too few replicas (:func:`outage_reply`), as :class:`RedisUnavailableError`.

    A MOVED/ASK reply with ``where`` a plain URL (``redis://``...) is re-raised as it is: a
    cluster node reached through a single-node URL is a wrong URL, which no retry fixes
    (:func:`explain_redis_error` says which form to use)."""
    try:
        yield
    except ResponseError as exc:
        if not outage_reply(exc):
            raise
        if isinstance(exc, AskError):
            if "://" in where and not is_cluster_url(where):
                # A plain URL to a cluster node: no retry helps, the URL is wrong
                # (explain_redis_error says which form to use).
                raise
            raise RedisUnavailableError(
                f"the Redis Cluster at {where} still redirects the call ({_with_code(exc)}): "
                "slots are moving or a failover is in progress; the call may not have been "
                "applied and is safe to retry"
            ) from exc
        raise RedisUnavailableError(
            f"Redis at {where} cannot take the call now ({_with_code(exc)}): a failover, "
            "or too few replicas for min-replicas-to-write; the call may not have been "
            "applied and is safe to retry"
        ) from exc
    except AuthenticationError:
        # A subclass of ConnectionError in redis-py, but retrying will not help.
        raise
    except (ClusterError, RedisClusterException) as exc:
        if not _cluster_outage(exc):
            raise  # a cross-slot call or a wrong URL: no retry helps
        # No node reachable, a slot no node serves, the cluster's retries used up.
        raise RedisUnavailableError(
            f"the Redis Cluster at {where} cannot take the call now ({exc}); the call may "
            "not have been applied and is safe to retry once the cluster is back"
        ) from exc
    except (RedisConnectionError, RedisTimeoutError) as exc:
        if str(exc) == _POOL_EXHAUSTED or isinstance(exc, MaxConnectionsError):
            raise PoolExhaustedError(
                f"every connection to Redis at {where} stayed busy for the pool's whole "
                "timeout: raise max_connections or pool_timeout_s, or send fewer calls at "
                "once; Redis itself answers"
            ) from exc
        raise RedisUnavailableError(
            f"Redis at {where} is unreachable ({exc}); the call may not have been "
            "applied and is safe to retry once Redis is back"
        ) from exc
