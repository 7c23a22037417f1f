"""Redis Cluster: the daemon, the CLI, the plugin and the session service through
``redis+cluster://``.

Real servers: three primaries formed by ``redis-cli --cluster create`` (the session-scoped
``redis_cluster`` fixture, :mod:`tests.cluster_topology`).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import httpx
import pytest
import redis
from google.adk.apps import App
from google.adk.events.event import Event
from google.adk.runners import Runner
from google.genai import types
from redis.crc import key_slot

from agent_runtime import RedisOrchestrationPlugin, RedisSessionService
from agent_runtime.abort_feed import AbortFeed
from agent_runtime.keys import AppKeys, KeySchema
from agent_runtime.redis_connection import (
    RedisUnavailableError,
    connect,
    explain_redis_error,
    open_pubsub,
    translate_redis_errors,
)
from agent_runtime.redis_url import describe_topology, parse_cluster_url, redact_url
from agent_runtime.sessions.service import FencedWriteError
from agent_runtime.task_store import TaskStore
from supervisor.client import SupervisorClient
from supervisor.ops.redis_server import RedisServer
from supervisor.run_acl import explain_run_credentials, shared_rules, with_credentials

from ..cluster_topology import ClusterTopology
from .daemon_harness import ROOT, Daemon, until_state
from .gateway_harness import EXAMPLE_APPS, GatewayProcess
from .plugin_agents import ToolGate, slow_agent, weather_agent
from .sse import frames

pytestmark = pytest.mark.anyio

A = "examples.agents:"


def test_cluster_url_form() -> None:
    url = "redis+cluster://u:p%3Aw@h1:7000,h2:7001"
    parsed = parse_cluster_url(url)
    assert parsed.nodes == (("h1", 7000), ("h2", 7001))
    assert (parsed.username, parsed.password, parsed.tls) == ("u", "p:w", False)
    assert parse_cluster_url("rediss+cluster://h1").nodes == (("h1", 6379),)
    assert parse_cluster_url("rediss+cluster://h1").tls
    assert "p%3Aw" not in redact_url(url)
    # A run's credentials replace the daemon's and keep the node list.
    per_run = with_credentials(url, "run:1", "pw")
    assert per_run == "redis+cluster://run%3A1:pw@h1:7000,h2:7001"
    for bad in ("redis+cluster://h1:x", "redis+cluster://h1:7000/1", "redis+cluster://h?x=1"):
        with pytest.raises(ValueError):
            parse_cluster_url(bad)
    assert describe_topology(url).startswith("Redis Cluster found through 2 node(s)")
    # No per-run ACL users on a cluster: check-config says what auto does there instead.
    assert "on a Redis Cluster" in explain_run_credentials("auto", "adk:", None, cluster=True)[0]


def _apps_on_every_shard(cluster: ClusterTopology, key_prefix: str) -> dict[str, str]:
    """App names whose session slots fall on every primary, each running weather_agent."""
    by_node: dict[int, str] = {}
    for n in range(1000):
        name = f"app{n}"
        slot = key_slot(AppKeys.for_app(key_prefix, name).base.encode())
        by_node.setdefault(cluster.slot_owner(slot), name)
        if len(by_node) == len(cluster.ports):
            break
    return {name: A + "weather_agent" for name in by_node.values()}


async def test_daemon_takes_aborts_and_records_runs_on_the_cluster(
    redis_cluster: ClusterTopology, start_daemon: Callable[..., Daemon], key_prefix: str
) -> None:
    url = redis_cluster.url()
    apps = _apps_on_every_shard(redis_cluster, key_prefix)
    daemon = start_daemon(
        url=url, ADK_SUPERVISOR_APPS=json.dumps({**apps, "slow": A + "slow_agent"})
    )
    async with SupervisorClient(url, key_prefix) as client:
        done = [await client.submit(app, "weather?", user_id="u") for app in apps]
        held = await client.submit("slow", "go", user_id="u")
        for task in done:
            assert (await client.wait(task, 60))["state"] == "completed"
        await until_state(client, held, "running")
        # A bare PUBLISH on any node reaches the daemon's subscription (classic pub/sub is
        # broadcast over the cluster bus), whichever node it listens on.
        with redis_cluster.node(redis_cluster.ports[-1]) as node:
            node.publish(f"{key_prefix}abort:{held}", '{"action":"abort","reason":"by publish"}')
        record = await client.wait(held, 30)
        assert record["state"] == "aborted" and record["reason"] == "by publish"
        history = [entry async for entry in client.events(done[0])]
        assert history, "the run's events stream is readable on the cluster"
    assert "run credentials: daemon: on a Redis Cluster" in daemon.log()
    # Every key the runs left is in the coordination slot or in one of the apps' slots...
    keys = KeySchema(key_prefix)
    coordination = key_slot(keys.coordination.encode())
    app_slots = {key_slot(AppKeys.for_app(key_prefix, app).base.encode()) for app in apps}
    app_slots.add(key_slot(AppKeys.for_app(key_prefix, "slow").base.encode()))
    ours = {
        port: [k for k in found if k.startswith(key_prefix)]
        for port, found in redis_cluster.keys().items()
    }
    assert keys.task(held) in ours[redis_cluster.slot_owner(coordination)]
    for port, found in ours.items():
        for key in found:
            assert key_slot(key.encode()) in app_slots | {coordination}, key
            assert port == redis_cluster.slot_owner(key_slot(key.encode()))
    # ...and the sessions spread over every shard.
    with_sessions = {
        port
        for port, found in ours.items()
        if any(not k.startswith(keys.coordination) for k in found)
    }
    assert with_sessions == set(redis_cluster.ports)


def _cli(*args: str, key_prefix: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ADK_SUPERVISOR_KEY_PREFIX": key_prefix,
        # No daemon: the client commands go straight to Redis.
        "ADK_SUPERVISOR_SOCKET_PATH": "/nonexistent/supervisor.sock",
    }
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_cli_submits_gets_and_aborts_on_the_cluster_without_a_daemon(
    redis_cluster: ClusterTopology, key_prefix: str
) -> None:
    url = redis_cluster.url(nodes=1)
    submitted = _cli(
        "--redis-url", url, "submit", A + "weather_agent", "hi", "--user-id", "u",
        key_prefix=key_prefix,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    task = submitted.stdout.strip()
    got = _cli("--redis-url", url, "get", task, "--json", key_prefix=key_prefix)
    assert got.returncode == 0 and json.loads(got.stdout)["state"] == "queued", got.stderr
    aborted = _cli("--redis-url", url, "abort", task, "--reason", "no", key_prefix=key_prefix)
    assert aborted.returncode == 0, aborted.stderr
    record = json.loads(
        _cli("--redis-url", url, "get", task, "--json", key_prefix=key_prefix).stdout
    )
    assert record["state"] == "aborted", record


def test_cli_given_a_plain_url_to_a_cluster_node_says_so_in_one_line(
    redis_cluster: ClusterTopology, key_prefix: str
) -> None:
    # Whichever node the coordination slot is not on answers MOVED.
    slot = key_slot(KeySchema(key_prefix).coordination.encode())
    other = next(p for p in redis_cluster.ports if p != redis_cluster.slot_owner(slot))
    plain = f"redis://127.0.0.1:{other}"
    done = _cli("--redis-url", plain, "get", "t-1", key_prefix=key_prefix)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "is a Redis Cluster node: use redis+cluster://" in done.stderr
    submitted = _cli(
        "--redis-url", plain, "submit", A + "weather_agent", "hi", "--user-id", "u",
        key_prefix=key_prefix,
    )  # fmt: skip
    assert submitted.returncode == 2 and "Traceback" not in submitted.stderr, submitted.stderr
    assert "is a Redis Cluster node" in submitted.stderr


def test_a_daemon_given_a_plain_url_to_a_cluster_node_stops_at_start_and_says_why(
    redis_cluster: ClusterTopology, start_daemon: Callable[..., Daemon]
) -> None:
    plain = f"redis://127.0.0.1:{redis_cluster.ports[0]}"
    with pytest.raises(RuntimeError) as refused:
        start_daemon(url=plain)
    assert f"{plain} is a Redis Cluster node: use redis+cluster://" in str(refused.value)


@pytest.fixture
async def cluster_store(
    redis_cluster: ClusterTopology, key_prefix: str
) -> AsyncIterator[TaskStore]:
    client = connect(redis_cluster.url())
    yield TaskStore(client, key_prefix)
    await client.aclose()


def _runner(
    agent: object, plugin: RedisOrchestrationPlugin, sessions: RedisSessionService
) -> Runner:
    app = App(name="papp", root_agent=agent, plugins=[plugin])  # type: ignore[arg-type]
    return Runner(app=app, session_service=sessions, auto_create_session=True)


async def _run(runner: Runner, session_id: str, task_id: str) -> list[Event]:
    from google.adk.agents.run_config import RunConfig

    from agent_runtime import TASK_ID_METADATA_KEY

    message = types.Content(role="user", parts=[types.Part(text="go")])
    config = RunConfig(custom_metadata={TASK_ID_METADATA_KEY: task_id})
    return [
        e
        async for e in runner.run_async(
            user_id="u", session_id=session_id, new_message=message, run_config=config
        )
    ]


@pytest.mark.parametrize("given_client", [False, True])
async def test_plugin_records_completed_and_aborted_on_the_cluster(
    redis_cluster: ClusterTopology, cluster_store: TaskStore, key_prefix: str, given_client: bool
) -> None:
    url = redis_cluster.url()
    client = cluster_store.client
    plugin = (
        RedisOrchestrationPlugin(redis_client=client, key_prefix=key_prefix)
        if given_client
        else RedisOrchestrationPlugin(url, key_prefix)
    )
    async with RedisSessionService(redis_client=client, key_prefix=key_prefix) as sessions:
        try:
            await _run(_runner(weather_agent(), plugin, sessions), "s1", "t-done")
            record = await cluster_store.get("t-done")
            assert record is not None and record["state"] == "completed", record
            gate = ToolGate()
            run = asyncio.create_task(
                _run(_runner(slow_agent(gate), plugin, sessions), "s2", "t-ab")
            )
            async with asyncio.timeout(30):
                await gate.started.wait()
            await cluster_store.request_abort("t-ab", "operator")
            async with asyncio.timeout(30):
                await run
            record = await cluster_store.get("t-ab")
            assert record is not None and record["state"] == "aborted", record
            assert not await client.hlen(cluster_store.keys.plugin_running)
        finally:
            await plugin.close()
    assert await client.ping()  # a given client stays the caller's


async def test_a_fenced_session_append_on_the_cluster_is_checked_not_crossslot(
    redis_cluster: ClusterTopology, cluster_store: TaskStore, key_prefix: str
) -> None:
    # The epoch key lies in the coordination slot, the session in its app's: no one script.
    client = cluster_store.client
    epoch_key = cluster_store.keys.task_epoch("t-fenced")
    async with RedisSessionService(
        redis_client=client, key_prefix=key_prefix, fence=(epoch_key, 0)
    ) as sessions:
        session = await sessions.create_session(app_name="a", user_id="u", session_id="s")
        await sessions.append_event(session, Event(author="user", invocation_id="i", id="e1"))
        await client.set(epoch_key, "1")  # a resume elsewhere
        with pytest.raises(FencedWriteError, match="resumed elsewhere"):
            await sessions.append_event(session, Event(author="user", invocation_id="i", id="e2"))
        stored = await sessions.get_session(app_name="a", user_id="u", session_id="s")
        assert stored is not None and [e.id for e in stored.events] == ["e1"]


def test_moved_through_a_plain_url_is_explained() -> None:
    moved = redis.exceptions.MovedError("3999 127.0.0.1:7001")
    assert "is a Redis Cluster node" in (explain_redis_error(moved, "redis://h:7000") or "")
    assert "moving slots" in (explain_redis_error(moved, "redis+cluster://h:7000") or "")


def test_a_daemon_given_a_replica_stops_at_start_and_says_why(
    redis_server: RedisServer, start_daemon: Callable[..., Daemon]
) -> None:
    replica = RedisServer(tcp=True, extra_args=("--replicaof", "127.0.0.1", str(redis_server.port)))
    replica.start()
    try:
        with pytest.raises(RuntimeError) as refused:
            start_daemon(url=replica.tcp_url)
        assert f"{replica.tcp_url} is a read-only replica" in str(refused.value)
    finally:
        replica.cleanup()


async def test_cluster_replies_of_a_failover_reach_callers_as_unavailable() -> None:
    # What redis-py raises when a cluster is resharding or failing over, or when its
    # retries ran out: each is an outage to retry, never a raw cluster exception.
    for error in (
        redis.exceptions.MovedError("3999 127.0.0.1:7001"),
        redis.exceptions.AskError("3999 127.0.0.1:7001"),
        redis.exceptions.TryAgainError("TRYAGAIN"),
        redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"),
        redis.exceptions.SlotNotCoveredError("slot 3999 not covered"),
        redis.exceptions.ClusterError("TTL exhausted."),
        redis.exceptions.MaxConnectionsError("Too many connections"),
    ):
        with pytest.raises(RedisUnavailableError):
            async with translate_redis_errors("redis+cluster://h:7000"):
                raise error
    # Through a plain URL, MOVED means the URL is wrong: no retry helps.
    with pytest.raises(redis.exceptions.MovedError):
        async with translate_redis_errors("redis://h:7000"):
            raise redis.exceptions.MovedError("3999 127.0.0.1:7001")
    with pytest.raises(redis.exceptions.ClusterCrossSlotError):  # a bug: not retried
        async with translate_redis_errors("redis+cluster://h:7000"):
            raise redis.exceptions.ClusterCrossSlotError("CROSSSLOT")


async def test_a_tls_cluster_client_built_elsewhere_gets_a_tls_pubsub_link() -> None:
    # The plugin takes a caller's RedisCluster: its abort feed must not go plaintext
    # (a TLS-only cluster would refuse it, and the run would never hear an abort).
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.connection import SSLConnection

    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", 7000)], ssl=True)
    link = open_pubsub(client)  # type: ignore[arg-type]
    assert issubclass(link.connection_pool.connection_class, SSLConnection)


async def test_a_wrong_url_through_the_cluster_client_is_not_an_outage(
    redis_server: RedisServer,
) -> None:
    # redis-py's cluster client says so itself (a RedisClusterException, no reply of
    # Redis's): called "unavailable, safe to retry", it hid the wrong URL from the CLI's
    # explanation and background loops retried it for ever.
    url = "redis+cluster://" + redis_server.tcp_url.removeprefix("redis://").split("/")[0]
    client = connect(url)
    try:
        with pytest.raises(redis.exceptions.RedisClusterException) as raised:
            async with translate_redis_errors(url):
                await client.ping()
        assert not isinstance(raised.value, RedisUnavailableError)
        assert "is not a Redis Cluster" in (explain_redis_error(raised.value, url) or "")
    finally:
        await client.aclose()
    with pytest.raises(RedisUnavailableError):
        async with translate_redis_errors("redis+cluster://h:7000"):
            raise redis.exceptions.RedisClusterException(
                "Redis Cluster cannot be connected. Please provide at least one reachable node"
            )


def test_runs_connect_as_a_shared_confined_user_made_on_every_node(
    redis_cluster: ClusterTopology, start_daemon: Callable[..., Daemon], key_prefix: str
) -> None:
    # What check-config tells an operator to do on a cluster: the same user on every node.
    user, password = f"runs-{key_prefix.rstrip(':')}", "s3cret-run"
    for port in redis_cluster.ports:
        with redis_cluster.node(port) as node:
            node.execute_command("ACL", "SETUSER", user, f">{password}", *shared_rules(key_prefix))
    try:
        nodes = ",".join(f"127.0.0.1:{p}" for p in redis_cluster.ports[:2])
        daemon = start_daemon(
            url=redis_cluster.url(),
            ADK_SUPERVISOR_RUN_REDIS_URL=f"redis+cluster://{user}:{password}@{nodes}",
        )
        done = daemon.cli("--redis-url", redis_cluster.url(), "submit", A + "weather_agent", "hi",
                          "--user-id", "u", "--wait", "--json")  # fmt: skip
        assert json.loads(done.stdout)["state"] == "completed", done.stdout + done.stderr
        assert "run credentials: shared" in daemon.log()
    finally:
        for port in redis_cluster.ports:
            with redis_cluster.node(port) as node:
                node.execute_command("ACL", "DELUSER", user)


async def test_the_gateway_runs_streams_and_shows_the_console_on_the_cluster(
    redis_cluster: ClusterTopology,
    start_daemon: Callable[..., Daemon],
    key_prefix: str,
    tmp_path: Path,
) -> None:
    url = redis_cluster.url()
    start_daemon(url=url, ADK_SUPERVISOR_APPS=json.dumps(EXAMPLE_APPS))
    gateway = GatewayProcess(url, key_prefix, tmp_path / "gateway" / "gateway.log")
    gateway.start()
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
            made = await http.post("/apps/weather/users/u/sessions", json={"sessionId": "s1"})
            assert made.status_code == 200, made.text
            body = {
                "appName": "weather",
                "userId": "u",
                "sessionId": "s1",
                "newMessage": {"role": "user", "parts": [{"text": "weather?"}]},
            }
            async with http.stream("POST", "/run_sse", json=body) as reply:
                assert reply.status_code == 200
                task_id = reply.headers["x-adk-task-id"]
                got = [f async for f in frames(reply) if f.comment is None]
            assert len(got) == 3, got
            assert (await http.get(f"/runs/{task_id}")).json()["state"] == "completed"
            state = (await http.get("/console/api/state")).json()
            assert any(end["task_id"] == task_id for end in state["ended"]), state
            # The console's live feed subscribes through one node of the cluster.
            async with http.stream("GET", "/console/api/events") as events:
                assert events.status_code == 200
                async for frame in frames(events):
                    if frame.event == "snapshot":
                        break
    finally:
        gateway.stop()


async def test_a_durable_run_is_resumed_and_fenced_on_the_cluster(
    redis_cluster: ClusterTopology,
    start_daemon: Callable[..., Daemon],
    key_prefix: str,
    tmp_path: Path,
) -> None:
    # Each attempt dies by SIGKILL: the resume script (record, epoch, saved entry, runs
    # stream, session lease) runs on the coordination slot, the run's fenced writes too.
    log = tmp_path / "tools.log"
    apps = {
        "poison": {
            "ref": "tests.integration.durable_agents:poison_app",
            "on_orphan": "resume",
            "max_attempts": 2,
        }
    }
    url = redis_cluster.url()
    start_daemon(url=url, ADK_SUPERVISOR_APPS=json.dumps(apps), DURABLE_TEST_LOG=str(log))
    async with SupervisorClient(url, key_prefix) as client:
        task = await client.submit("poison", "go", user_id="u")
        record = await until_state(client, task, "failed")
    assert record["attempt"] == "2" and record["epoch"] == "1", record
    assert "max_attempts" in record["reason"], record
    assert len([line for line in log.read_text().splitlines() if "poison call" in line]) == 2


async def test_the_abort_feed_moves_to_another_node_when_its_link_is_lost(
    redis_cluster: ClusterTopology, cluster_store: TaskStore, key_prefix: str
) -> None:
    def linked() -> list[int]:
        """The nodes holding a pub/sub link (each link is a plain connection to one)."""
        found = []
        for port in redis_cluster.ports:
            with redis_cluster.node(port) as node:
                if node.execute_command("CLIENT", "LIST", "TYPE", "pubsub"):
                    found.append(port)
        return found

    got: list[str] = []
    feed = AbortFeed(cluster_store.client, key_prefix, lambda a: got.append(a.reason), list)
    async with anyio.create_task_group() as tg:
        await tg.start(feed.run)
        [first] = linked()
        with redis_cluster.node(first) as node:
            assert node.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 1
        with anyio.fail_after(30):
            while not got:
                await cluster_store.client.publish(
                    cluster_store.keys.abort_channel("t-x"), '{"reason": "after the loss"}'
                )
                await anyio.sleep(0.1)
        assert got[0] == "after the loss"
        assert linked() != [first]  # the feed reconnected through the next node
        feed.stop()
        tg.cancel_scope.cancel()


def test_pubsub_links_take_the_cluster_nodes_in_turn(redis_cluster: ClusterTopology) -> None:
    async def ports() -> list[int]:
        client = connect(redis_cluster.url(nodes=1))
        try:
            await client.ping()  # learns every node
            links = [open_pubsub(client) for _ in redis_cluster.ports]
            found = [link.connection_pool.connection_kwargs["port"] for link in links]
            for link in links:
                await link.aclose()
            return found
        finally:
            await client.aclose()

    assert sorted(anyio.run(ports)) == sorted(redis_cluster.ports)


def test_a_redis_error_reply_through_the_cli_is_one_line(
    redis_cluster: ClusterTopology, key_prefix: str
) -> None:
    keys = KeySchema(key_prefix)
    slot = key_slot(keys.coordination.encode())
    with redis_cluster.node(redis_cluster.slot_owner(slot)) as node:
        node.set(keys.task("t-garbage"), "not a hash")
    done = _cli("--redis-url", redis_cluster.url(), "get", "t-garbage", key_prefix=key_prefix)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Redis refused the command: WRONGTYPE" in done.stderr


def test_a_daemon_given_a_cluster_url_to_a_single_redis_stops_at_start_and_says_why(
    redis_server: RedisServer, start_daemon: Callable[..., Daemon]
) -> None:
    url = f"redis+cluster://127.0.0.1:{redis_server.port}"
    with pytest.raises(RuntimeError) as refused:
        start_daemon(url=url)
    assert f"{url} is not a Redis Cluster" in str(refused.value)
