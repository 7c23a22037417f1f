"""Fixtures shared by the integration tests: real daemons, a session service, a task store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agent_runtime import RedisSessionService
from agent_runtime.task_store import TaskStore

from .daemon_harness import Daemon
from .gateway_harness import GatewayProcess


@pytest.fixture
def start_daemon(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> Iterator[Callable[..., Daemon]]:
    """Starts real daemons (``python -m supervisor run``) and stops them after the test.

    ``start(mechanism="auto", url="shared", state=None, **env)``: ``url`` is the
    shared test Redis by default, another URL, or None for the embedded Redis;
    ``state`` names the state directory (a fresh one by default); ``env`` sets
    ``ADK_SUPERVISOR_*`` settings (and ``node_id``).
    """
    daemons: list[Daemon] = []

    def start(
        mechanism: str = "auto", url: str | None = "shared", state: str | None = None, **env: str
    ) -> Daemon:
        daemon = Daemon(
            redis_url if url == "shared" else url,
            key_prefix,
            tmp_path / (state or f"state{len(daemons)}"),
            mechanism,
            **env,
        )
        daemon.start()
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
async def sessions(redis_url: str, key_prefix: str) -> AsyncIterator[RedisSessionService]:
    """The Redis session service on the shared test Redis, under this test's prefix."""
    async with RedisSessionService(redis_url, key_prefix) as service:
        yield service


@pytest.fixture
async def store(redis_url: str, key_prefix: str) -> AsyncIterator[TaskStore]:
    """A task store on the shared test Redis, under this test's prefix."""
    client = aioredis.Redis.from_url(redis_url)
    yield TaskStore(client, key_prefix)
    await client.aclose()


@pytest.fixture
def start_gateway(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> Iterator[Callable[..., GatewayProcess]]:
    """Starts real gateways (``python -m supervisor gateway --port 0``) on the shared test
    Redis and stops them after the test. ``start(**env)`` sets ``ADK_SUPERVISOR_*`` settings;
    the gateway serves the apps of ``gateway_harness.EXAMPLE_APPS``."""
    gateways: list[GatewayProcess] = []

    def start(**env: str) -> GatewayProcess:
        gateway = GatewayProcess(
            redis_url, key_prefix, tmp_path / f"gateway{len(gateways)}" / "gateway.log", **env
        )
        gateways.append(gateway)
        gateway.start()
        return gateway

    yield start
    for gateway in gateways:
        gateway.stop()
