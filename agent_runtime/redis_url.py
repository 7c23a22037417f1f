"""Redis URLs: which schemes are accepted, and showing one without its password.

Kept apart from :mod:`agent_runtime.redis_connection` so that code which only
checks or prints a URL (the configuration, the CLI) does not import redis-py,
a third of a second on a small machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

__all__ = [
    "CLUSTER_FORM",
    "CLUSTER_SCHEMES",
    "SCHEMES",
    "SENTINEL_SCHEMES",
    "ClusterURL",
    "SentinelURL",
    "describe_topology",
    "is_cluster_url",
    "parse_cluster_url",
    "parse_sentinel_url",
    "redact_url",
]

SENTINEL_SCHEMES: Final = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
SCHEMES: Final = ("redis", "rediss", "unix", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)

CLUSTER_FORM: Final = "redis+cluster://[user:password@]host:6379[,host2:6379...]"

SENTINEL_FORM: Final = (
    "redis+sentinel://[user:password@]host:26379[,host2:26379...]/<master-name>[/db]"
)

# Query options of a Sentinel URL; anything else is a typo the operator should hear about.
_SENTINEL_OPTIONS: Final = frozenset(
    {"sentinel_username", "sentinel_password", "wait_replicas", "wait_timeout_ms"}
)
# Query options of a Cluster URL.
_CLUSTER_OPTIONS: Final = frozenset({"wait_replicas", "wait_timeout_ms"})


def _wait_options(options: dict[str, str]) -> tuple[int, int]:
    """``wait_replicas`` and ``wait_timeout_ms`` of a URL's query (defaults 0 and 1000)."""
    numbers = {}
    for name, default in (("wait_replicas", 0), ("wait_timeout_ms", 1000)):
        raw = options.get(name, str(default))
        if not raw.isdigit():
            raise ValueError(f"{name} must be a whole number, got {raw!r}")
        numbers[name] = int(raw)
    if numbers["wait_timeout_ms"] < 1:
        raise ValueError("wait_timeout_ms must be at least 1")
    return numbers["wait_replicas"], numbers["wait_timeout_ms"]


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A ``redis+sentinel://`` URL taken apart.

    ``username``/``password`` are the master's (the data node's); the sentinels get
    ``sentinel_username``/``sentinel_password`` from the query, as they often have
    no ACL users of their own. ``wait_replicas`` > 0 asks writers that can (the
    session service) to confirm each append on that many replicas with ``WAIT``.
    """

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    tls: bool
    username: str | None
    password: str | None
    sentinel_username: str | None
    sentinel_password: str | None
    wait_replicas: int
    wait_timeout_ms: int


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parses ``redis+sentinel://`` / ``rediss+sentinel://``; ``ValueError`` says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL ({SENTINEL_FORM})")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    sentinels = _hosts(hostlist, 26379, "sentinel", url, SENTINEL_FORM)
    path = [segment for segment in parts.path.split("/") if segment]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{redact_url(url)!r} names no master (or a bad db): {SENTINEL_FORM}")
    username, password = _credentials(userinfo)
    options = _options(parts.query, _SENTINEL_OPTIONS, "a Sentinel URL", url)
    wait_replicas, wait_timeout_ms = _wait_options(options)
    return SentinelURL(
        sentinels=sentinels,
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        tls=parts.scheme == "rediss+sentinel",
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username"),
        sentinel_password=options.get("sentinel_password"),
        wait_replicas=wait_replicas,
        wait_timeout_ms=wait_timeout_ms,
    )


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """A ``redis+cluster://`` URL taken apart: the nodes to start from (any primaries or
    replicas of the cluster; the client learns the rest from them) and the credentials,
    the same on every node. ``wait_replicas`` > 0 (``?wait_replicas=N``) makes every write
    that must survive a failover (task transitions with their events stream entry, session
    appends) wait with ``WAIT`` on the primary that took it until that many of its
    replicas have it, at most ``wait_timeout_ms``."""

    nodes: tuple[tuple[str, int], ...]
    tls: bool
    username: str | None
    password: str | None
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.startswith(tuple(f"{scheme}://" for scheme in CLUSTER_SCHEMES))


def parse_cluster_url(url: str) -> ClusterURL:
    """Parses ``redis+cluster://`` / ``rediss+cluster://``; ``ValueError`` says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL ({CLUSTER_FORM})")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    nodes = _hosts(hostlist, 6379, "node", url, CLUSTER_FORM)
    if parts.path.strip("/"):
        # A cluster has database 0 only.
        raise ValueError(
            f"{redact_url(url)!r} names a database: a Redis Cluster has only db 0 ({CLUSTER_FORM})"
        )
    options = _options(parts.query, _CLUSTER_OPTIONS, "a Redis Cluster URL", url)
    wait_replicas, wait_timeout_ms = _wait_options(options)
    username, password = _credentials(userinfo)
    return ClusterURL(
        nodes=nodes,
        tls=parts.scheme == "rediss+cluster",
        username=username,
        password=password,
        wait_replicas=wait_replicas,
        wait_timeout_ms=wait_timeout_ms,
    )


def _hosts(
    hostlist: str, default_port: int, what: str, url: str, form: str
) -> tuple[tuple[str, int], ...]:
    """``host[:port],host[:port]...`` of a Sentinel or Cluster URL, each checked."""
    hosts = []
    for item in hostlist.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = item.strip(), str(default_port)
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad {what} address {item!r} in {redact_url(url)!r}: {form}")
        hosts.append((host, int(port)))
    return tuple(hosts)


def _options(query: str, allowed: frozenset[str], what: str, url: str) -> dict[str, str]:
    """The query options of a Sentinel or Cluster URL; ``ValueError`` names unknown ones."""
    options = dict(parse_qsl(query))
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} in {redact_url(url)!r}: {what} takes {sorted(allowed)}"
        )
    return options


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    """(username, password) of a URL's ``user:password`` part, percent-decoded."""
    if not userinfo:
        return None, None
    user, sep, secret = userinfo.partition(":")
    return unquote(user) or None, unquote(secret) if sep else None


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs and error messages."""
    parts = urlsplit(url)
    query = "&".join(
        f"{item.split('=', 1)[0]}=***" if item.startswith("sentinel_password=") else item
        for item in parts.query.split("&")
        if item
    )
    if query != parts.query:
        parts = parts._replace(query=query)
    if parts.password is None:
        return urlunsplit(parts) if query else url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def describe_topology(url: str | None) -> str:
    """One line for ``check-config``: which Redis ``url`` reaches, and how it fails over."""
    if url is None:
        return "embedded: the daemon starts its own redis-server in state_dir (no failover)"
    if is_cluster_url(url):
        cluster = parse_cluster_url(url)
        nodes = ", ".join(f"{host}:{port}" for host, port in cluster.nodes)
        return (
            f"Redis Cluster{' (TLS)' if cluster.tls else ''} found through "
            f"{len(cluster.nodes)} node(s) ({nodes}); MOVED/ASK replies are followed and the "
            "slot map is read again after a failover. Every coordination key of a key_prefix "
            "(task records, runs stream, node keys, session lines) lives in ONE slot, "
            "'<prefix>{<prefix>}', so one shard carries the coordination of one prefix; "
            "sessions spread over the shards by app. Pub/sub (aborts, task events) goes "
            "through one node and reaches every node of the cluster; "
            + (
                f"task transitions and session appends wait for {cluster.wait_replicas} "
                f"replica(s) of their primary (WAIT, {cluster.wait_timeout_ms} ms) before "
                "they are acknowledged"
                if cluster.wait_replicas
                else "writes are acknowledged by their primary alone (add ?wait_replicas=1 "
                "to confirm each on a replica, so a failover cannot lose it)"
            )
        )
    if not url.startswith(tuple(f"{scheme}://" for scheme in SENTINEL_SCHEMES)):
        return f"standalone: one Redis at {redact_url(url)} (no failover)"
    parsed = parse_sentinel_url(url)
    sentinels = ", ".join(f"{host}:{port}" for host, port in parsed.sentinels)
    wait = (
        f"task submits, claims and transitions and session appends wait for "
        f"{parsed.wait_replicas} replica(s) "
        f"(WAIT, {parsed.wait_timeout_ms} ms) before they are acknowledged"
        if parsed.wait_replicas
        else "writes are acknowledged by the master alone (add ?wait_replicas=1 "
        "to confirm each on a replica)"
    )
    return (
        f"Sentinel: master {parsed.service!r} (db {parsed.db}{', TLS' if parsed.tls else ''}) "
        f"found through {len(parsed.sentinels)} sentinel(s) ({sentinels}), asked again at "
        f"most every second and on every lost connection or READONLY reply; {wait}"
    )
