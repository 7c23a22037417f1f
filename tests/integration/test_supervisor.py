"""Fault injection against a real daemon: real processes, real signals, real Redis.

Tree and crash cases run under both kill mechanisms (cgroup v2 leaves, and
process group + subreaper sweep).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import redis
import redis.asyncio as aioredis

from agent_runtime import RedisSessionService
from agent_runtime.task_store import TaskState
from supervisor.client import SupervisorClient
from supervisor.ops.redis_server import RedisServer
from supervisor.process import boot_id, find_writable_cgroup2, process_start_ticks

from .daemon_harness import ROOT, Daemon, until_state
from .history import terminal_events
from .signal_agents import NAMELESS_SIGNAL

pytestmark = pytest.mark.anyio

MECHANISMS = ["cgroup", "pgroup"]
A = "examples.agents:"


@pytest.fixture(scope="session", autouse=True)
def _cgroup_available() -> None:
    if find_writable_cgroup2() is None:
        pytest.fail(
            "the cgroup kill mechanism needs a writable cgroup v2 hierarchy: run the tests as root "
            "on a host with cgroup2 mounted (see /proc/self/mountinfo)",
            pytrace=False,
        )


def _gone(pids: list[int], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):  # gone between two looks: gone
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
        if not alive:
            return True
        time.sleep(0.02)
    return False


def _marked(task_id: str) -> list[int]:
    marker = f"ADK_SUPERVISOR_TASK_ID={task_id}".encode()
    found = []
    for proc in psutil.process_iter():
        try:
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
            if marker in environ and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return found


@pytest.mark.parametrize("spawn_mode", ["fork-server", "exec"])
async def test_exit_kinds_are_recorded_faithfully(
    spawn_mode: str, start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    start_daemon(ADK_SUPERVISOR_SPAWN_MODE=spawn_mode)
    ok = await client.submit(A + "weather_agent", "weather?", user_id="u")
    raising = await client.submit(A + "raising_agent", "go", user_id="u")
    exit3 = await client.submit(A + "exit3_agent", "go", user_id="u")
    done = await client.wait(ok, 60)
    assert done["state"] == "completed" and done["exit_code"] == "0"
    assert float(done["cpu_s"]) > 0 and int(done["max_rss_kb"]) > 0
    failed = await client.wait(raising, 60)
    assert failed["state"] == "failed" and failed["exit_code"] == "1"
    assert "the agent broke on purpose" in failed["reason"]
    exited = await client.wait(exit3, 60)
    assert exited["state"] == "failed" and exited["exit_code"] == "3" and "signal" not in exited


async def test_run_ended_by_a_signal_without_a_name_is_recorded_failed(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    # Signal 40 has no signal.Signals member: naming it used to raise in the daemon,
    # which dropped the run and left its record `running` for good.
    start_daemon()
    task = await client.submit(
        "tests.integration.signal_agents:nameless_signal_agent", "go", user_id="u"
    )
    record = await client.wait(task, 60)
    assert record["state"] == "failed" and record["signal"] == f"SIG{NAMELESS_SIGNAL}"
    assert "not sent by the supervisor" in record["reason"]


@pytest.mark.parametrize(
    ("mechanism", "spawn_mode"),
    [("cgroup", "fork-server"), ("pgroup", "fork-server"), ("pgroup", "exec")],
)
async def test_abort_kills_setsid_double_forked_grandchild(
    mechanism: str,
    spawn_mode: str,
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    redis_url: str,
    key_prefix: str,
) -> None:
    daemon = start_daemon(mechanism, ADK_SUPERVISOR_SPAWN_MODE=spawn_mode)
    task = await client.submit(A + "setsid_agent", "go", user_id="u")
    await until_state(client, task, "running")
    deadline = time.monotonic() + 30
    while len(_marked(task)) < 2 and time.monotonic() < deadline:  # leader + escaped grandchild
        await asyncio.sleep(0.05)
    tree = _marked(task)
    assert len(tree) >= 2
    # A raw PUBLISH, as `redis-cli PUBLISH adk:abort:<id> '{"action":"abort"}'` sends it.
    publisher = redis.Redis.from_url(redis_url)
    publisher.publish(
        f"{key_prefix}abort:{task}", json.dumps({"action": "abort", "reason": "operator"})
    )
    publisher.close()
    record = await client.wait(task, 30)
    assert (
        record["state"] == "aborted"
        and record["signal"] == "SIGKILL"
        and record["reason"] == "operator"
    )
    assert _gone(tree), f"leaked: {_marked(task)}"
    assert daemon.descendants() == []


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_abort_of_fifty_process_tree(
    mechanism: str, start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    start_daemon(mechanism)
    task = await client.submit(A + "fork50_agent", "go", user_id="u")
    await until_state(client, task, "running")
    deadline = time.monotonic() + 30
    while len(_marked(task)) < 51 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    tree = _marked(task)
    assert len(tree) >= 51
    await client.abort(task, "too many")
    assert (await client.wait(task, 30))["state"] == "aborted"
    assert _gone(tree), f"leaked: {_marked(task)}"


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_timeout_kills_and_records_timed_out(
    mechanism: str, start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    start_daemon(mechanism)
    task = await client.submit(A + "slow_agent", "go", user_id="u", timeout_s=3)
    record = await client.wait(task, 60)
    assert record["state"] == "timed_out" and record["signal"] == "SIGKILL"
    assert record["reason"] == "timed out after 3s"
    assert _marked(task) == []


async def test_abort_of_queued_run_never_starts(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    start_daemon(ADK_SUPERVISOR_MAX_CONCURRENT_RUNS="1")
    busy = await client.submit(A + "slow_agent", "hold the only slot", user_id="u")
    await until_state(client, busy, "running")
    queued = await client.submit(A + "weather_agent", "never", user_id="u")
    await client.abort(queued, "changed my mind")
    await client.abort(busy, "free the slot")
    record = await client.wait(queued, 60)
    assert record["state"] == "aborted" and record["reason"] == "changed my mind"
    assert "pid" not in record


async def test_non_json_and_unknown_aborts_keep_daemon_serving(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, redis_url: str, key_prefix: str
) -> None:
    daemon = start_daemon()
    publisher = redis.Redis.from_url(redis_url)
    publisher.publish(f"{key_prefix}abort:no-such-task", "{not json")
    task = await client.submit(A + "slow_agent", "go", user_id="u")
    await until_state(client, task, "running")
    publisher.publish(f"{key_prefix}abort:{task}", b"\xff\xfe plain bytes")
    publisher.close()
    record = await client.wait(task, 30)
    assert record["state"] == "aborted" and "non-JSON" in record["reason"]
    done = await client.wait(
        await client.submit(A + "weather_agent", "still there?", user_id="u"), 60
    )
    assert done["state"] == "completed"
    assert "non-JSON" in daemon.log() and "not running on this node" in daemon.log()


async def test_abort_published_while_subscriber_is_disconnected_is_honoured(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, redis_url: str
) -> None:
    start_daemon()
    task = await client.submit(A + "slow_agent", "go", user_id="u")
    await until_state(client, task, "running")
    admin = aioredis.Redis.from_url(redis_url)
    await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    heard = await client.abort(task, "while away")  # nobody subscribed: only the mark survives
    await admin.aclose()
    record = await client.wait(task, 30)
    assert record["state"] == "aborted" and record["reason"] == "while away"
    assert heard == 0 or record["state"] == "aborted"


async def test_abort_racing_normal_exit_gives_one_terminal_state(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, key_prefix: str
) -> None:
    start_daemon()
    tasks = [await client.submit(A + "exit3_agent", "go", user_id="u") for _ in range(4)]
    for task in tasks:
        await until_state(client, task, "running")
    for task in tasks:
        await client.abort(task, "race")
    states = {t: (await client.wait(t, 60))["state"] for t in tasks}
    await asyncio.sleep(0.5)  # a second, late terminal write would land by now
    for task in tasks:
        terminal = await terminal_events(client.store, task)
        assert len(terminal) == 1, terminal
        assert terminal[0]["state"] == states[task]


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_daemon_kill9_then_restart_fails_orphans_and_leaves_no_process(
    mechanism: str, start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon(mechanism)
    task = await client.submit(A + "setsid_agent", "go", user_id="u")
    await until_state(client, task, "running")
    deadline = time.monotonic() + 30
    while len(_marked(task)) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    leader = int((await client.get(task))["pid"])
    daemon.kill9()
    assert _gone([leader]), "the run leader outlived its daemon"
    restarted = start_daemon(mechanism, node_id=daemon.node_id)
    record = await until_state(client, task, "failed")
    assert record["reason"].startswith("orphaned:")
    assert _gone(_marked(task)), f"leaked: {_marked(task)}"
    assert "failed at reconcile" in restarted.log()


async def test_planted_record_with_foreign_pid_is_failed_and_process_untouched(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        node = "planted-node"
        ticks = process_start_ticks(stranger.pid)
        assert ticks is not None
        await client.store.create(
            "planted",
            TaskState.RUNNING,
            {
                "node_id": node,
                "boot_id": boot_id(),
                "pid": stranger.pid,
                "start_ticks": ticks + 1,
            },
        )
        await client.client.sadd(client.store.keys.node_tasks(node), "planted")
        start_daemon(node_id=node)
        record = await until_state(client, "planted", "failed")
        assert record["reason"] == (
            f"orphaned: process {stranger.pid} is gone (its PID now names another process)"
        )
        assert stranger.poll() is None, "an unrelated process was signalled"
    finally:
        stranger.kill()
        stranger.wait()


async def test_planted_record_with_the_true_start_time_cannot_get_a_process_killed(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    # PID, start ticks and boot id are public in /proc: a record can name any process
    # exactly. Reconcile used to SIGKILL it and its whole process group.
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        node = "forged-node"
        await client.store.create(
            "forged",
            TaskState.RUNNING,
            {
                "node_id": node,
                "boot_id": boot_id(),
                "pid": stranger.pid,
                "start_ticks": process_start_ticks(stranger.pid),
            },
        )
        await client.client.sadd(client.store.keys.node_tasks(node), "forged")
        start_daemon(node_id=node)
        record = await until_state(client, "forged", "failed")
        assert record["reason"] == (
            f"orphaned: process {stranger.pid} is not a run of this supervisor (left untouched)"
        )
        assert stranger.poll() is None, "an unrelated process was signalled"
    finally:
        stranger.kill()
        stranger.wait()


async def test_terminal_state_written_after_redis_comes_back(
    start_daemon: Callable[..., Daemon], private_redis: RedisServer, key_prefix: str
) -> None:
    daemon = start_daemon(url=private_redis.url)
    async with SupervisorClient(private_redis.url, key_prefix) as c:
        task = await c.submit(A + "slow_agent", "go", user_id="u", timeout_s=6)
        await until_state(c, task, "running")
        async with RedisSessionService(private_redis.url, key_prefix) as sessions:
            # Stop Redis only once the agent sits in its slow tool (it needs Redis until then).
            for _ in range(500):
                s = await sessions.get_session(app_name="slow", user_id="u", session_id=task)
                if s is not None and any(e.get_function_calls() for e in s.events):
                    break
                await asyncio.sleep(0.02)
        tree = _marked(task)
        private_redis.stop()
        # The kill does not wait for Redis.
        assert _gone(tree, timeout=15), "timeout kill waited for Redis"
        await asyncio.sleep(1)
        private_redis.start()
        record = await until_state(c, task, "timed_out", timeout=30)
        assert record["signal"] == "SIGKILL"
    assert daemon.logged("written after Redis came back")


async def test_kill_grace_sends_sigterm_first_then_sigkill(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, redis_url: str, key_prefix: str
) -> None:
    daemon = start_daemon(ADK_SUPERVISOR_KILL_GRACE_S="1.5")
    polite = await client.submit(A + "slow_agent", "go", user_id="u")
    stubborn = await client.submit(A + "term_ignoring_agent", "go", user_id="u")
    for task in (polite, stubborn):
        await until_state(client, task, "running")
    # The stubborn agent installs its SIGTERM handler before its first event.
    async with RedisSessionService(redis_url, key_prefix) as sessions:
        for _ in range(1500):
            s = await sessions.get_session(
                app_name="term_ignoring", user_id="u", session_id=stubborn
            )
            if s is not None and s.events:
                break
            await asyncio.sleep(0.02)
    await client.abort(polite, "polite stop")
    await client.abort(stubborn, "stubborn stop")
    # A run that lets SIGTERM end it is recorded with the signal that ended it.
    ended = await client.wait(polite, 30)
    assert ended["state"] == "aborted" and ended["signal"] == "SIGTERM"
    # One that ignores SIGTERM gets SIGKILL once the grace is over.
    record = await client.wait(stubborn, 30)
    assert record["state"] == "aborted" and record["signal"] == "SIGKILL"
    log = daemon.state_dir / "logs" / f"{stubborn}.log"
    assert "got SIGTERM, ignoring it" in log.read_text()
    assert _marked(stubborn) == []


async def test_unimportable_app_fails_with_a_clear_reason(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    start_daemon()
    task = await client.submit("examples.no_such_module:agent", "go", user_id="u")
    record = await client.wait(task, 60)
    assert record["state"] == "failed" and record["exit_code"] == "1"
    assert "cannot import module 'examples.no_such_module'" in record["reason"]


async def test_runs_go_on_after_the_fork_server_is_killed(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon()
    first = await client.wait(await client.submit(A + "weather_agent", "hi", user_id="u"), 60)
    assert first["state"] == "completed"
    servers = []
    for child in psutil.Process(daemon.pid).children():
        with contextlib.suppress(psutil.Error):  # a run's leader may be exiting
            if "agent_runtime.fork_server" in child.cmdline():
                servers.append(child)
    assert len(servers) == 1, servers
    servers[0].kill()
    second = await client.wait(await client.submit(A + "weather_agent", "hi", user_id="u"), 60)
    assert second["state"] == "completed", second.get("reason")
    assert "restarting it" in daemon.log()


async def test_raw_abort_while_the_run_is_starting_is_not_lost(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, redis_url: str, key_prefix: str
) -> None:
    # The fork server preloads an app that takes 3 s to import: the run waits in `starting`.
    daemon = start_daemon(
        ADK_SUPERVISOR_APPS=json.dumps({"slow": "tests.integration.slow_import_app:agent"})
    )
    task = await client.submit("slow", "hi", user_id="u")
    await until_state(client, task, "starting")
    # A bare PUBLISH leaves no durable mark: only the daemon's memory can keep it.
    publisher = redis.Redis.from_url(redis_url)
    publisher.publish(f"{key_prefix}abort:{task}", '{"action": "abort", "reason": "too early"}')
    publisher.close()
    record = await client.wait(task, 60)
    assert record["state"] == "aborted" and record["reason"] == "too early"
    assert "arrived while it starts" in daemon.log()


async def test_import_paths_can_be_disabled(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    apps = json.dumps({"weather": A + "weather_agent"})
    start_daemon(ADK_SUPERVISOR_ALLOW_IMPORT_PATHS="false", ADK_SUPERVISOR_APPS=apps)
    refused = await client.wait(await client.submit(A + "exit3_agent", "go", user_id="u"), 60)
    assert refused["state"] == "failed" and "import paths are disabled" in refused["reason"]
    assert "pid" not in refused
    named = await client.wait(await client.submit("weather", "hi", user_id="u"), 60)
    assert named["state"] == "completed"


async def test_a_timeout_fires_on_time_while_redis_is_frozen(
    start_daemon: Callable[..., Daemon], private_redis: RedisServer, key_prefix: str
) -> None:
    # The fork server preloads a 3 s import, so the run waits in `starting`; Redis is
    # frozen then, before the daemon could record `running`. The deadline used to be
    # armed only after that record: with Redis frozen, never.
    start_daemon(
        url=private_redis.url,
        ADK_SUPERVISOR_APPS=json.dumps({"slow": "tests.integration.slow_import_app:slow"}),
    )
    async with SupervisorClient(private_redis.url, key_prefix) as c:
        task = await c.submit("slow", "go", user_id="u", timeout_s=1)
        await until_state(c, task, "starting")
        redis_pid = private_redis.pid
        assert redis_pid is not None
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 60
            tree: list[int] = []
            while not tree and time.monotonic() < deadline:
                tree = _marked(task)
                await asyncio.sleep(0.01)
            assert tree, "the run never started"
            born = time.monotonic()
            assert _gone(tree, timeout=15), "the timeout waited for Redis"
            assert time.monotonic() - born < 5
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        record = await until_state(c, task, "timed_out", timeout=30)
        assert record["reason"] == "timed out after 1s"


async def test_a_run_that_exits_on_our_sigterm_is_recorded_as_it_ended(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, sessions: RedisSessionService
) -> None:
    # The record used to say signal=SIGKILL for a run that exited 143 on the SIGTERM.
    start_daemon(ADK_SUPERVISOR_KILL_GRACE_S="5")
    task = await client.submit("tests.integration.signal_agents:term_exit_agent", "go", user_id="u")
    for _ in range(3000):  # its SIGTERM handler is in place once its event is in the session
        s = await sessions.get_session(app_name="term_exit", user_id="u", session_id=task)
        if s is not None and any(e.author == "term_exit" for e in s.events):
            break
        await asyncio.sleep(0.02)
    await client.abort(task, "stop")
    record = await client.wait(task, 30)
    assert record["state"] == "aborted" and record["exit_code"] == "143"
    assert "signal" not in record and record["signal_sent"] == "SIGTERM"


@pytest.mark.parametrize("spawn_mode", ["fork-server", "exec"])
async def test_a_long_prompt_reaches_the_run_whatever_the_spawner(
    spawn_mode: str,
    start_daemon: Callable[..., Daemon],
    client: SupervisorClient,
    sessions: RedisSessionService,
) -> None:
    # Past about 212 KB the fork server's datagram failed (taken for a dead server);
    # past 128 KiB the exec spawner's environment variable did.
    daemon = start_daemon(ADK_SUPERVISOR_SPAWN_MODE=spawn_mode)
    prompt = "weather? " + "x" * 300_000
    task = await client.submit(A + "weather_agent", prompt, user_id="u")
    record = await client.wait(task, 120)
    assert record["state"] == "completed", record
    session = await sessions.get_session(app_name="weather", user_id="u", session_id=task)
    assert session is not None
    first = session.events[0].content
    assert first is not None and first.parts and first.parts[0].text == prompt
    assert not list((daemon.state_dir / "specs").iterdir()), "a spec file (the prompt) was left"


@pytest.mark.parametrize("spawn_mode", ["fork-server", "exec"])
async def test_runs_never_import_from_the_daemons_working_directory(
    spawn_mode: str, tmp_path: Path, redis_url: str, key_prefix: str, client: SupervisorClient
) -> None:
    # The unit runs the daemon as root in "/": with the working directory first on
    # sys.path, an app reference named any file there (say /dev/shm/x.py) and it ran.
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    planted = tmp_path / "imported"
    (workdir / "strayapp.py").write_text(
        f"open({str(planted)!r}, 'w').close()\nfrom examples.agents import weather_agent as agent\n"
    )
    daemon = Daemon(
        redis_url, key_prefix, tmp_path / "state", "auto", ADK_SUPERVISOR_SPAWN_MODE=spawn_mode
    )
    daemon.cwd = workdir
    daemon.start()
    try:
        record = await client.wait(await client.submit("strayapp:agent", "hi", user_id="u"), 60)
        assert record["state"] == "failed"
        assert not planted.exists(), "a run imported a module from the working directory"
        # Apps on the configured path still load.
        done = await client.wait(await client.submit(A + "weather_agent", "hi", user_id="u"), 60)
        assert done["state"] == "completed"
    finally:
        daemon.stop()


def test_a_fork_server_run_leads_its_own_group_when_its_pid_is_reported(
    tmp_path: Path, redis_url: str
) -> None:
    # It used to call setsid() only after the daemon had its PID: a pgroup kill sent
    # then signalled the fork server's group (or, without the pidfd group flag, nobody).
    # (That window is microseconds wide: this checks the invariant, it did not catch
    # the old code in the act.)
    for _ in range(5):
        probe = subprocess.run(
            [sys.executable, "-m", "tests.integration.fork_probe", redis_url, str(tmp_path)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert probe.returncode == 0, probe.stderr
        assert json.loads(probe.stdout.splitlines()[-1])["leads_its_group"]


async def test_a_taken_run_leaves_no_prompt_in_the_runs_stream(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    # The stream used to keep every prompt ever submitted.
    start_daemon()
    done = await client.wait(
        await client.submit(A + "weather_agent", "a private question", user_id="u"), 60
    )
    assert done["state"] == "completed"
    assert await client.client.xlen(client.store.keys.runs) == 0


async def test_terminal_records_expire_after_record_ttl_s(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    # Task records used to be kept for ever.
    start_daemon(ADK_SUPERVISOR_RECORD_TTL_S="120")
    task = await client.submit(A + "weather_agent", "hi", user_id="u")
    assert (await client.wait(task, 60))["state"] == "completed"
    ttl = await client.client.ttl(client.store.keys.task(task))
    assert 0 < ttl <= 120
