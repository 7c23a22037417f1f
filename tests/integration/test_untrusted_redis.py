"""Values anyone with Redis access can write must not crash, stall or mislead the daemon."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from agent_runtime.plugin._abort_hub import acquire_abort_hub
from agent_runtime.task_store import TaskStore
from supervisor.client import SupervisorClient

from .daemon_harness import Daemon, until_state

pytestmark = pytest.mark.anyio

A = "examples.agents:"
# json.loads of this raises RecursionError, not ValueError.
DEEP = "[" * 100_000


async def test_a_deeply_nested_abort_payload_still_aborts_and_the_daemon_serves_on(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon(ADK_SUPERVISOR_HEARTBEAT_INTERVAL_S="0.5")
    marked = await client.submit(A + "slow_agent", "go", user_id="u")
    await until_state(client, marked, "running")
    # A durable mark: read back at the next periodic re-check.
    await client.client.set(client.store.keys.abort_mark(marked), DEEP)
    record = await client.wait(marked, 30)
    assert record["state"] == "aborted", record
    # A live message of the same shape.
    published = await client.submit(A + "slow_agent", "go", user_id="u")
    await until_state(client, published, "running")
    await client.client.publish(client.store.keys.abort_channel(published), DEEP)
    assert (await client.wait(published, 30))["state"] == "aborted"
    done = await client.wait(await client.submit(A + "weather_agent", "hi", user_id="u"), 60)
    assert done["state"] == "completed"
    assert daemon.proc is not None and daemon.proc.poll() is None


async def test_the_plugin_feed_survives_a_deeply_nested_mark(
    store: TaskStore, redis_url: str, key_prefix: str
) -> None:
    await store.client.set(store.keys.abort_mark("poisoned"), DEEP)
    hub = acquire_abort_hub(redis_url, key_prefix)
    try:
        poisoned: list[str] = []
        hub.register("poisoned", poisoned.append)
        assert await hub.feed.wait_subscribed(30)  # it used to resubscribe for ever
        assert poisoned and poisoned[0].startswith("aborted")  # any payload aborts
        healthy: list[str] = []
        hub.register("healthy", healthy.append)
        await store.request_abort("healthy", "operator")
        async with asyncio.timeout(30):
            while not healthy:
                await asyncio.sleep(0.02)
        assert healthy == ["operator"]
    finally:
        await hub.release()


async def test_a_node_registry_of_the_wrong_type_does_not_stop_the_daemon(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    # WRONGTYPE is an error reply, not an outage: startup used to retry it for ever.
    await client.client.set(client.store.keys.nodes, "not a set")
    daemon = start_daemon()
    done = await client.wait(await client.submit(A + "weather_agent", "hi", user_id="u"), 60)
    assert done["state"] == "completed"
    assert daemon.logged(f"{client.store.keys.nodes} holds the wrong kind of value")


async def test_keys_of_the_layout_before_the_hash_tag_are_named_at_start(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    # An upgrade while runs waited on the old stream would strand them without a word.
    prefix = client.store.keys.prefix
    await client.client.xadd(f"{prefix}runs", {"task_id": "old", "app": "x"})
    daemon = start_daemon()
    assert daemon.logged(f"found {prefix}runs or {prefix}nodes of the key layout before")
    done = await client.wait(await client.submit(A + "weather_agent", "hi", user_id="u"), 60)
    assert done["state"] == "completed"
