"""A Redis that stops answering fails calls after the socket timeout instead of hanging
them for ever, and quiet pub/sub is not taken for such a Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import redis

from supervisor.client import SupervisorClient
from supervisor.ops.redis_server import RedisServer

from .daemon_harness import ROOT, Daemon, until_state

pytestmark = pytest.mark.anyio

A = "examples.agents:"


def test_a_frozen_redis_fails_a_cli_call_instead_of_hanging(private_redis: RedisServer) -> None:
    pid = private_redis.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "supervisor", "--redis-url", private_redis.url, "get", "x"],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            pytest.fail("the CLI hung on a frozen Redis")
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert done.returncode != 0
    assert "cannot reach redis" in done.stderr.lower(), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert took < 40, took


async def test_quiet_abort_channels_outlive_the_socket_timeout(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, redis_url: str, key_prefix: str
) -> None:
    # The socket timeout applies to replies, not to pub/sub's wait for the next message:
    # a feed that timed out in every quiet spell would resubscribe for ever.
    daemon = start_daemon(ADK_SUPERVISOR_REDIS_SOCKET_TIMEOUT_S="1.5")
    task = await client.submit(A + "slow_agent", "go", user_id="u")
    await until_state(client, task, "running")
    time.sleep(4)
    publisher = redis.Redis.from_url(redis_url)
    try:
        heard = publisher.publish(f"{key_prefix}abort:{task}", '{"reason": "after a quiet spell"}')
    finally:
        publisher.close()
    assert heard >= 1
    record = await client.wait(task, 30)
    assert record["state"] == "aborted" and record["reason"] == "after a quiet spell"
    assert "abort subscription lost" not in daemon.log()


async def test_the_client_raises_redis_unavailable_when_redis_is_gone(
    private_redis: RedisServer,
) -> None:
    """A caller of the Python client catches one documented, retryable error, as with the
    session service, not redis-py's own ConnectionError (a bot's stop button during a
    failover)."""
    from agent_runtime.redis_connection import RedisUnavailableError

    client = SupervisorClient(private_redis.url)
    try:
        task = await client.submit(A + "weather_agent", "hi", user_id="u")
        private_redis.stop()
        with pytest.raises(RedisUnavailableError, match=r"safe to retry|cannot reach"):
            await client.abort(task, "stop")
        with pytest.raises(RedisUnavailableError):
            await client.get(task)
        with pytest.raises(RedisUnavailableError):
            await client.submit(A + "weather_agent", "again", user_id="u")
        with pytest.raises(RedisUnavailableError):
            await anext(aiter(client.events(task)))
        with pytest.raises(RedisUnavailableError):
            await client.wait(task, timeout_s=5)
    finally:
        await client.close()


async def test_a_new_unix_socket_connection_says_hello_once(private_redis: RedisServer) -> None:
    """redis-py 8.1's unix-socket connection ran its handshake twice (TCP once): a round
    trip more for every connection each run, daemon and client opens."""
    from agent_runtime.redis_connection import connect

    def hellos(info: dict[str, object]) -> int:
        stats = info.get("cmdstat_hello")
        return int(stats["calls"]) if isinstance(stats, dict) else 0

    probe = connect(private_redis.url)
    try:
        before = hellos(await probe.info("commandstats"))
        fresh = connect(private_redis.url, client_name="fresh")
        try:
            await fresh.ping()
        finally:
            await fresh.aclose()
        # The probe's own connection is open already: only the fresh one's handshake counts.
        assert hellos(await probe.info("commandstats")) - before == 1
    finally:
        await probe.aclose()
