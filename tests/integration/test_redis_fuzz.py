"""A seeded fuzz: garbage of every type and shape in every Redis key the daemon and the plugin read.

Anyone who can write to Redis can write anything to it. While a daemon (and, in
the second test, a process running the orchestration plugin) serves, a seeded
``random.Random`` writes wrong key types, records with missing and wrong-typed
fields, stream entries with missing and extra fields, abort marks and PUBLISHes
of any shape, node sets and heartbeats of garbage, to every key
:class:`~agent_runtime.keys.KeySchema` names. Throughout and after (the daemon
restarted once, so its reconcile reads the garbage too) it keeps serving: the
status socket answers, a normal run completes, a PUBLISH aborts a run, and
every bad item it skipped is logged by name. ``ADK_FUZZ_SEED`` replays a seed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from agent_runtime.keys import RUNS_GROUP, KeySchema
from agent_runtime.task_store import TaskState, TaskStore
from supervisor.client import SupervisorClient
from supervisor.control.client import request
from supervisor.daemon.health import Health
from supervisor.errors import NodeIdInUse
from supervisor.ops.sd_notify import SdNotifier
from supervisor.process import boot_id
from supervisor.process.identity import process_start_ticks

from .daemon_harness import ROOT, Daemon, until_state

pytestmark = pytest.mark.anyio

A = "examples.agents:"
SEED = int(os.environ.get("ADK_FUZZ_SEED") or 20_240_611)
ROUNDS = 30
HOST = socket.gethostname()
BOOT = boot_id()
ME = os.getpid()

# json.loads of these raises RecursionError, not ValueError.
DEEP = (b"[" * 100_000, b"{" * 100_000, b'{"a":' * 50_000, b'{"reason":' * 50_000)
NUMBERS = (
    b"12ab",
    b"-1",
    b"0",
    b"-0",
    b"NaN",
    b"nan",
    b"inf",
    b"-inf",
    b"1e400",
    b"1e-400",
    str(2**200).encode(),
    str(-(2**70)).encode(),
    b"0x1f",
    b" 42 ",
    b"4_2",
    b"3.5",
    "\u0663".encode(),
    b"99999999999999999999999",
    b"",
)
TEXTS = (
    b"bogus",
    b"\xff\xfe\x80",
    b"\x00",
    "\u202e\u0301".encode(),
    b"running\x00",
    b"RUNNING",
    b" running",
    b"a:b:*",
    b"../../etc/passwd",
    b"\r\n",
    b"%s%n%x",
)
JSONS = (
    b"null",
    b"true",
    b"[]",
    b"{}",
    b'"x"',
    b"1e400",
    b'{"reason": {"nested": [1, 2]}}',
    b'{"reason": null}',
    b'{"action": 5, "reason": 1e400}',
    b'{"reason": "\\ud800"}',
    b'{"owner": null}',
    b'{"owner": []}',
    b'{"owner": {}}',
    b'{"owner": {"pid": true}}',
    json.dumps({"owner": {"host": HOST, "boot_id": BOOT, "pid": "1"}}).encode(),
    json.dumps({"owner": {"host": HOST, "boot_id": BOOT, "pid": 2**70}}).encode(),
    json.dumps({"owner": {"host": HOST, "boot_id": BOOT, "pid": -1, "start_ticks": 0}}).encode(),
    json.dumps({"owner": {"host": "elsewhere"}}).encode(),
    json.dumps({"pid": ME, "host": HOST, "at": "x"}).encode(),
)
RECORD_FIELDS = tuple(
    [
        "task_id",
        "state",
        "pid",
        "pgid",
        "start_ticks",
        "boot_id",
        "node_id",
        "app",
        "user_id",
        "session_id",
        "message",
        "owner",
        "tracker",
        "intent",
        "cgroup",
        "created_at",
        "started_at",
        "ended_at",
        "timeout_s",
        "reason",
        "error",
        "duration_s",
        "model_calls",
        "tool_calls",
        "current_agent",
        "last_event_at",
        "invocation_id",
        "exit_code",
        "signal",
    ]
)
STATES = (*(s.value.encode() for s in TaskState), b"bogus", b"", b"RUNNING", b"running\x00")
ENTRY_FIELDS = ("task_id", "app", "user_id", "message", "session_id", "timeout")


class Garbage:
    """Garbage of every type and shape for every key a daemon or plugin reads, from one seed."""

    def __init__(self, client: aioredis.Redis, keys: KeySchema, rng: random.Random) -> None:
        self.client = client
        self.keys = keys
        self.rng = rng
        # Task ids, node ids and plugin owners the garbage keeps pointing at, so that
        # sets, streams and indexes name keys that hold garbage too.
        self.task_ids = [f"fz-{i}".encode() for i in range(12)] + [
            b"\xff\xfe",
            b"",
            b"../x",
            b"x" * 1000,
            "t\u00e9\u202e".encode(),
            b"a:b",
        ]
        self.nodes = [f"aa-fz-node-{i}".encode() for i in range(4)] + [b"\xff", b"*", b""]
        self.owners = [f"fz-owner-{i}".encode() for i in range(4)] + [b"\xc3\x28"]

    def value(self) -> bytes:
        """One garbage value: a number that is none, text, JSON of a wrong shape, deep JSON, 1 MB."""
        rng = self.rng
        pick = rng.random()
        if pick < 0.03:
            return rng.randbytes(1 << 20)
        if pick < 0.10:
            return rng.choice(DEEP)
        if pick < 0.35:
            return rng.choice(NUMBERS)
        if pick < 0.55:
            return rng.choice(TEXTS)
        if pick < 0.80:
            return rng.choice(JSONS)
        return rng.randbytes(rng.randint(0, 40))

    def field(self, name: str) -> bytes:
        """A value for one record field: plausible (our node, this boot, a live PID) or garbage."""
        rng = self.rng
        if rng.random() < 0.4:
            return self.value()
        if name == "state":
            return rng.choice(STATES)
        if name == "boot_id":
            return BOOT.encode()
        if name in ("pid", "pgid"):
            return str(rng.choice((ME, 1, os.getppid()))).encode()
        if name == "start_ticks":
            return str(process_start_ticks(ME) or 0).encode()
        if name == "node_id":
            return rng.choice(self.nodes)
        if name == "owner":
            return rng.choice(self.owners)
        if name == "app":
            return f"{A}weather_agent".encode()
        return self.value()

    def record(self) -> dict[bytes, bytes]:
        """A task hash with a random subset of the record's fields, and extra ones."""
        rng = self.rng
        names = rng.sample(RECORD_FIELDS, rng.randint(0, len(RECORD_FIELDS)))
        record = {name.encode(): self.field(name) for name in names}
        for _ in range(rng.randint(0 if record else 1, 3)):
            record[self.value()[:64] or b"?"] = self.value()
        return record

    def entry(self) -> dict[bytes, bytes]:
        """A runs-stream entry: fields missing, extra, garbage; its app, if any, ends fast."""
        rng = self.rng
        names = rng.sample(ENTRY_FIELDS, rng.randint(0, len(ENTRY_FIELDS)))
        entry = {}
        for name in names:
            if name == "task_id":
                entry[b"task_id"] = rng.choice(self.task_ids)
            elif name == "app" and rng.random() < 0.5:
                entry[b"app"] = f"{A}weather_agent".encode()
            else:
                entry[name.encode()] = self.value()
        for _ in range(rng.randint(0 if entry else 1, 2)):
            entry[self.value()[:64] or b"?"] = self.value()
        return entry

    def plant(self, pipe: Any, key: bytes | str, kind: str | None = None) -> None:
        """Queues a DEL of ``key`` and a write of garbage of ``kind`` (default: any) there."""
        rng = self.rng
        kind = kind or rng.choice(("string", "hash", "list", "set", "zset", "stream"))
        pipe.delete(key)
        if kind == "string":
            pipe.set(key, self.value())
        elif kind == "hash":
            pipe.hset(key, mapping=self.record())
        elif kind == "list":
            pipe.rpush(key, *[self.value() for _ in range(rng.randint(1, 3))])
        elif kind == "set":
            pipe.sadd(key, *[rng.choice((*self.task_ids, self.value())) for _ in range(3)])
        elif kind == "zset":
            pipe.zadd(key, {self.value() or b"m": rng.choice((0, -1e308, float("inf")))})
        else:
            pipe.xadd(key, self.entry())

    async def round(self, own_node: str, protect: set[str]) -> None:
        """One pass over every key the daemon and the plugin read; ``protect``: real runs' ids."""
        rng, k = self.rng, self.keys
        async with self.client.pipeline(transaction=False) as pipe:
            for task_id in rng.sample(self.task_ids, 4):
                key = k.coordination.encode() + b"task:" + task_id
                if rng.random() < 0.6:
                    pipe.delete(key)
                    pipe.hset(key, mapping=self.record())
                else:
                    self.plant(pipe, key)
                mark = k.coordination.encode() + b"abort-mark:" + task_id
                self.plant(pipe, mark, "string" if rng.random() < 0.5 else None)
            for task_id in protect:  # a real run's mark of a wrong type is no mark
                self.plant(pipe, k.abort_mark(task_id), rng.choice(("hash", "list", "zset")))
            for _ in range(3):
                channel = k.prefix.encode() + b"abort:" + rng.choice(self.task_ids)
                pipe.publish(channel, self.value())
            pipe.publish(k.task_events, self.value())
            for _ in range(2):
                pipe.xadd(k.runs, self.entry())
            if rng.random() < 0.1:
                self.plant(pipe, k.runs)  # the runs stream of a wrong type (restored by settle)
            if rng.random() < 0.1:
                pipe.xgroup_destroy(k.runs, RUNS_GROUP)
            if rng.random() < 0.2:
                pipe.xgroup_createconsumer(k.runs, RUNS_GROUP, rng.choice(self.nodes))
            if rng.random() < 0.15:
                self.plant(pipe, k.task_history)
            else:
                pipe.xadd(k.task_history, self.entry())
            if rng.random() < 0.15:
                self.plant(pipe, k.nodes)
            else:
                pipe.sadd(k.nodes, *rng.sample(self.nodes, 2), self.value())
            for node in rng.sample(self.nodes, 2):
                self.plant(pipe, k.coordination.encode() + b"node:" + node + b":heartbeat")
                tasks = k.coordination.encode() + b"node:" + node + b":tasks"
                if rng.random() < 0.5:
                    self.plant(pipe, tasks)
                else:
                    pipe.sadd(tasks, *rng.sample(self.task_ids, 3))
            if rng.random() < 0.3:
                self.plant(pipe, k.node_heartbeat(own_node))  # the daemon writes it back
            if rng.random() < 0.15:
                self.plant(pipe, k.node_tasks(own_node))
            else:
                pipe.sadd(k.node_tasks(own_node), *rng.sample(self.task_ids, 2))
            if rng.random() < 0.15:
                self.plant(pipe, k.plugin_running)
            else:
                pipe.hset(k.plugin_running, rng.choice(self.task_ids), rng.choice(self.owners))
            for owner in rng.sample(self.owners, 2):
                heartbeat = k.coordination.encode() + b"plugin-heartbeat:" + owner
                if rng.random() < 0.5:
                    self.plant(pipe, heartbeat)
                else:
                    pipe.delete(heartbeat)
            # Session lines (one live run per session): bindings of the garbage task ids to
            # a few lines, whose leases, queues and parked entries hold garbage.
            lines = [b"fz-line-%d" % i for i in range(3)]
            for task_id in rng.sample(self.task_ids, 4):
                binding = k.coordination.encode() + b"task-session:" + task_id
                if rng.random() < 0.7:
                    pipe.set(binding, rng.choice(lines))
                else:
                    self.plant(pipe, binding)
                self.plant(
                    pipe, k.coordination.encode() + b"parked:" + task_id, rng.choice(("hash", None))
                )
            for line in lines:
                lease = k.coordination.encode() + b"session-lease:" + line
                queue = k.coordination.encode() + b"session-queue:" + line
                if rng.random() < 0.5:
                    pipe.set(lease, rng.choice(self.task_ids))
                else:
                    self.plant(pipe, lease)
                if rng.random() < 0.5:
                    pipe.rpush(queue, *rng.sample(self.task_ids, 3))
                else:
                    self.plant(pipe, queue)
            # Commands that fail on a key of the wrong type fail here too: that is the point.
            await pipe.execute(raise_on_error=False)

    async def settle(self) -> None:
        """Restores what a normal run needs: a runs stream (the daemon recreates its group)."""
        if await self.client.type(self.keys.runs) not in (b"stream", b"none"):
            await self.client.delete(self.keys.runs)


def _status(daemon: Daemon) -> dict[str, Any]:
    return request(daemon.socket_path, "status", io_timeout_s=10)


async def _status_answers(daemon: Daemon) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(_status, daemon)


async def _plant_dead_peer(client: aioredis.Redis, keys: KeySchema) -> str:
    """A peer that is really gone, with a live run, sorted after every garbage peer."""
    node, task_id = "zz-fz-dead-peer", "fz-dead-peer-run"
    await client.hset(
        keys.task(task_id),
        mapping={"state": "running", "node_id": node, "boot_id": BOOT, "pid": "0"},
    )
    await client.sadd(keys.node_tasks(node), task_id)
    await client.sadd(keys.nodes, node)
    return task_id


async def _plant_broken_keys(garbage: Garbage, own_node: str) -> str:
    """On top of the random rounds, the same every time: keys every run writes, of the wrong
    type; peers that cannot be taken over before one that can; a run whose record is no hash.
    Returns the task id of that run."""
    client, keys = garbage.client, garbage.keys
    await garbage.settle()
    async with client.pipeline(transaction=False) as pipe:
        garbage.plant(pipe, keys.task_history, "string")
        garbage.plant(pipe, keys.node_tasks(own_node), "hash")
        pipe.delete(keys.nodes)
        for node in garbage.nodes[:2]:
            garbage.plant(pipe, keys.coordination.encode() + b"node:" + node + b":tasks", "string")
            pipe.delete(keys.coordination.encode() + b"node:" + node + b":heartbeat")
        pipe.sadd(keys.nodes, *garbage.nodes[:2], b"\xff\xfe")
        garbage.plant(pipe, keys.task("fz-no-hash"), "list")
        pipe.xadd(
            keys.runs,
            {"task_id": "fz-no-hash", "app": A + "weather_agent", "user_id": "u", "message": "hi"},
        )
        await pipe.execute()
    return "fz-no-hash"


async def test_the_daemon_serves_on_through_garbage_in_every_key(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, key_prefix: str
) -> None:
    print(f"fuzz seed {SEED} (replay: ADK_FUZZ_SEED={SEED})")
    keys = client.store.keys
    daemon = start_daemon(
        ADK_SUPERVISOR_HEARTBEAT_INTERVAL_S="0.5", ADK_SUPERVISOR_NODE_DEAD_AFTER_S="2"
    )
    garbage = Garbage(client.client, keys, random.Random(SEED))
    held = await client.submit(A + "slow_agent", "go", user_id="u")
    victim = await client.submit(A + "slow_agent", "go", user_id="u")
    await until_state(client, held, "running")
    await until_state(client, victim, "running")

    began = time.monotonic()
    for i in range(ROUNDS):
        await garbage.round(daemon.node_id, {held, victim})
        if i % 10 == 0:
            assert (await _status_answers(daemon))["node_id"] == daemon.node_id
        await asyncio.sleep(0.05)
    print(f"{ROUNDS} rounds of garbage in {time.monotonic() - began:.1f}s")
    # A live run whose record turns into a list: its end cannot be recorded, and that
    # must not hold back the records of every other run.
    await client.client.delete(keys.task(victim))
    await client.client.rpush(keys.task(victim), b"garbage")
    await client.client.publish(keys.abort_channel(victim), b'{"reason": "fuzz"}')
    no_hash = await _plant_broken_keys(garbage, daemon.node_id)
    dead_run = await _plant_dead_peer(client.client, keys)  # due at the sweep of those peers

    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()[-3000:]
    assert (await _status_answers(daemon))["node_id"] == daemon.node_id
    done = await client.wait(await client.submit(A + "weather_agent", "hi", user_id="u"), 30)
    assert done["state"] == "completed", done
    await client.client.publish(keys.abort_channel(held), b'{"action":"abort","reason":"op"}')
    assert (await client.wait(held, 30))["state"] == "aborted"
    # The peer that is really gone is taken over, whatever garbage peers sort before it.
    orphaned = await client.wait(dead_run, 30)
    assert orphaned["state"] == "failed" and "zz-fz-dead-peer" in orphaned["reason"], orphaned
    # Each bad item it skipped is logged by name, once: nothing is retried for ever.
    wrong = "holds the wrong kind of value"
    assert daemon.logged(f"{keys.coordination}node:aa-fz-node-0:tasks {wrong}")
    assert daemon.logged(f"task {victim}: aborted not recorded: {keys.task(victim)} {wrong}")
    assert daemon.logged(f"{keys.node_tasks(daemon.node_id)} {wrong}")
    assert daemon.logged(f"{keys.task_history} {wrong}")
    assert daemon.logged(f"dropped: {keys.task(no_hash)} {wrong}")
    assert daemon.logged(f"{keys.nodes}: member b'\\xff\\xfe' is no node id; removed")
    assert daemon.log().count(f"{keys.task(no_hash)} {wrong}") == 1

    # Restart: the node check, reconcile and the group creation read the garbage too.
    assert daemon.stop() == 0, daemon.log()[-3000:]
    for _ in range(5):
        await garbage.round(daemon.node_id, set())
    await _plant_broken_keys(garbage, daemon.node_id)
    tasks = keys.node_tasks(daemon.node_id)
    async with client.client.pipeline(transaction=False) as pipe:
        # Not a daemon's heartbeat: a hash, so GET on it fails.
        garbage.plant(pipe, keys.node_heartbeat(daemon.node_id), "hash")
        garbage.plant(pipe, tasks, "set")
        pipe.sadd(tasks, "fz-badpid", *garbage.task_ids)
        pipe.delete(keys.task("fz-badpid"))
        pipe.hset(
            keys.task("fz-badpid"),
            mapping={"state": "running", "node_id": daemon.node_id, "boot_id": BOOT, "pid": "12ab"},
        )
        for _ in range(3):
            pipe.xadd(keys.runs, garbage.entry())
        await pipe.execute()
    daemon.start()
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert (await _status_answers(daemon))["node_id"] == daemon.node_id
    cli = await anyio.to_thread.run_sync(lambda: daemon.cli("status", timeout=30))
    assert cli.returncode == 0, cli.stderr
    done = await client.wait(await client.submit(A + "weather_agent", "hi", user_id="u"), 30)
    assert done["state"] == "completed", done
    aborted = await client.submit(A + "slow_agent", "go", user_id="u")
    await until_state(client, aborted, "running")
    await client.client.publish(keys.abort_channel(aborted), b"\xff not json")
    assert (await client.wait(aborted, 30))["state"] == "aborted"
    assert daemon.proc.poll() is None
    assert daemon.logged(f"{keys.node_heartbeat(daemon.node_id)} {wrong}")
    assert daemon.logged("task fz-badpid failed at reconcile: orphaned: malformed pid '12ab'")
    assert daemon.logged("carries a non-JSON payload")
    assert daemon.logged("rejected: ")


async def test_no_garbage_heartbeat_passes_for_a_live_daemon_of_this_node_id(
    client: SupervisorClient,
) -> None:
    """Only a well-formed heartbeat of a live process keeps a daemon from starting."""
    rng = random.Random(SEED)
    print(f"fuzz seed {SEED} (replay: ADK_FUZZ_SEED={SEED})")
    keys = client.store.keys
    ours = {"host": HOST, "boot_id": BOOT, "pid": 0, "start_ticks": 0, "state_dir": "/x"}
    health = Health(
        client.client,
        keys,
        "fz-node",
        ours,
        5.0,
        SdNotifier.from_env(),
        str,
        int,
        _nothing,
    )
    garbage = Garbage(client.client, keys, rng)
    key = keys.node_heartbeat("fz-node")
    for value in (*DEEP, *JSONS, *NUMBERS, *TEXTS):
        await client.client.set(key, value)
        await health.check_node_free()
    for _ in range(100):
        async with client.client.pipeline(transaction=False) as pipe:
            garbage.plant(pipe, key)
            await pipe.execute()
        await health.check_node_free()
    # A live process of this host and boot under the same node id: this test's own.
    live = {**ours, "pid": ME, "start_ticks": process_start_ticks(ME)}
    await client.client.set(key, json.dumps({"owner": live}))
    with pytest.raises(NodeIdInUse):
        await health.check_node_free()


async def _nothing() -> None:
    return None


def _worker(redis_url: str, prefix: str, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.fuzz_plugin_worker", redis_url, prefix],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )


async def _line(worker: subprocess.Popen[str], expected: str, timeout: float = 30) -> None:
    assert worker.stdout is not None
    stdout = worker.stdout

    def read() -> str:
        return stdout.readline()

    with anyio.fail_after(timeout):
        while True:
            line = (await anyio.to_thread.run_sync(read)).strip()
            if not line and worker.poll() is not None:
                raise AssertionError(f"the plugin process exited with {worker.returncode}")
            if line == expected:
                return


def _send(worker: subprocess.Popen[str], command: str) -> None:
    assert worker.stdin is not None
    worker.stdin.write(command + "\n")
    worker.stdin.flush()


async def test_the_plugin_serves_on_through_garbage_in_every_key(
    store: TaskStore, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    print(f"fuzz seed {SEED} (replay: ADK_FUZZ_SEED={SEED})")
    keys, client = store.keys, store.client
    garbage = Garbage(client, keys, random.Random(SEED + 1))
    for _ in range(5):
        await garbage.round("fz-no-daemon", set())
    log = tmp_path / "plugin.log"
    worker = _worker(redis_url, key_prefix, log)
    try:
        await _line(worker, "READY")
        _send(worker, "hold fz-held")
        await _line(worker, "STARTED fz-held")
        for _ in range(ROUNDS):
            await garbage.round("fz-no-daemon", {"fz-held"})
            await asyncio.sleep(0.05)
        # Whatever the garbage left there, the running index is a hash again, listing dead
        # owners whose tasks no command can move before one that is really gone.
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(keys.plugin_running)
            for i, owner in enumerate(garbage.owners[:3]):
                pipe.set(keys.task(f"fz-wrong-{i}"), b"garbage")
                pipe.delete(keys.coordination.encode() + b"plugin-heartbeat:" + owner)
                pipe.hset(keys.plugin_running, f"fz-wrong-{i}", owner)
            pipe.hset(keys.task("fz-dead-owner-run"), mapping={"state": "running"})
            pipe.hset(keys.plugin_running, "fz-dead-owner-run", "zz-fz-dead-owner")
            await pipe.execute()
        _send(worker, "complete fz-ok")
        await _line(worker, "DONE fz-ok")
        assert (await store.get("fz-ok") or {}).get("state") == "completed"
        _send(worker, "hold fz-aborted")
        await _line(worker, "STARTED fz-aborted")
        await client.publish(keys.abort_channel("fz-aborted"), b'{"reason": "operator"}')
        await _line(worker, "DONE fz-aborted")
        assert (await store.get("fz-aborted") or {}).get("reason") == "operator"
        await client.publish(keys.abort_channel("fz-held"), b"[" * 100_000)
        await _line(worker, "DONE fz-held")
        # Recovery got past every owner whose tasks it could not move.
        with anyio.fail_after(30):
            while (await store.get("fz-dead-owner-run") or {}).get("state") != "failed":
                await asyncio.sleep(0.1)
        # No running index: invocations are not tracked, but still run and are still aborted.
        await client.set(keys.plugin_running, b"garbage")
        _send(worker, "complete fz-untracked")
        await _line(worker, "DONE fz-untracked")
        _send(worker, "hold fz-untracked-abort")
        await _line(worker, "STARTED fz-untracked-abort")
        await client.publish(keys.abort_channel("fz-untracked-abort"), b"operator")
        await _line(worker, "DONE fz-untracked-abort")
        assert worker.poll() is None, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            assert worker.stdin is not None
            worker.stdin.close()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    text = log.read_text(errors="replace")
    assert f"{keys.task('fz-wrong-0')} holds the wrong kind of value" in text, text[-3000:]
    assert f"{keys.plugin_running} holds the wrong kind of value" in text, text[-3000:]
    assert "abort for fz-held carries a non-JSON payload" in text
