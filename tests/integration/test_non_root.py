"""The daemon as an unprivileged user, in a cgroup v2 subtree delegated (chowned) to it,
as systemd runs it with ``User=`` and ``Delegate=yes``."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.client import SupervisorClient
from supervisor.ops.redis_server import RedisServer
from supervisor.process import find_writable_cgroup2

from .daemon_harness import ROOT, until_state

pytestmark = pytest.mark.anyio

NOBODY = 65534
# Files of a cgroup the delegatee must own (cgroup-v2.rst, "Delegation").
_DELEGATED = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")


@pytest.fixture
def subtree() -> Iterator[Path]:
    parent = find_writable_cgroup2()
    assert parent is not None, "no writable cgroup v2 here: run the tests as root"
    sub = parent / f"adk-nonroot-{uuid.uuid4().hex[:8]}"
    sub.mkdir()
    for path in (sub, *(sub / name for name in _DELEGATED)):
        os.chown(path, NOBODY, NOBODY)
    yield sub
    for leaf in sorted(sub.glob("**/"), key=lambda p: len(p.parts), reverse=True):
        if leaf != sub:
            leaf.rmdir()
    sub.rmdir()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: /tmp/pytest-of-root is root's alone.
    path = Path(tempfile.mkdtemp(prefix="adk-nonroot-"))
    os.chown(path, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _tree(leader: int, task_id: str, count: int) -> list[psutil.Process]:
    """The run's marked processes, once there are ``count`` of them."""
    marker = f"ADK_SUPERVISOR_TASK_ID={task_id}".encode()
    deadline = time.monotonic() + 30
    while True:
        found = []
        for proc in psutil.process_iter():
            try:
                if marker in Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0"):
                    found.append(proc)
            except OSError:
                continue
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"only {found} of the run {leader} started"
        time.sleep(0.05)


def _proc_file(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_text()


def _start(
    sub: Path, state: Path, url: str, prefix: str, node_id: str, mechanism: str
) -> subprocess.Popen[bytes]:
    python = Path(sys.executable)
    home = Path.home()
    daemon = [str(python), "-m", "supervisor", "--redis-url", url, "run"]
    # Joined as root (moving a process needs write access at the common ancestor), then
    # privileges dropped for good. The interpreter of these machines lives under /root
    # (mode 0700, pyenv): a private mount namespace shows it, and only it, to the daemon.
    script = "; ".join(
        [
            "set -e",
            f"mount --bind {shlex.quote(str(home / '.pyenv'))} {shlex.quote(str(state))}/.pyenv",
            f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(home))}",
            f"mkdir {shlex.quote(str(home / '.pyenv'))}",
            f"mount --move {shlex.quote(str(state))}/.pyenv {shlex.quote(str(home / '.pyenv'))}",
            f"echo $$ > {shlex.quote(str(sub / 'cgroup.procs'))}",
            f"exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups "
            + " ".join(map(shlex.quote, daemon)),
        ]
    )
    (state / ".pyenv").mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "HOME": str(state),
        "ADK_SUPERVISOR_KEY_PREFIX": prefix,
        "ADK_SUPERVISOR_NODE_ID": node_id,
        "ADK_SUPERVISOR_STATE_DIR": str(state / "state"),
        "ADK_SUPERVISOR_ALLOW_IMPORT_PATHS": "true",
        "ADK_SUPERVISOR_MEMORY_MAX": "2GiB",
        "ADK_SUPERVISOR_KILL_MECHANISM": mechanism,
        # The marker sweep, without fork events (the root tests cover those).
        "ADK_SUPERVISOR_PGROUP_FORK_EVENTS": "false",
        "ADK_EXAMPLE_HOLD_S": "60",
    }
    log = (state / "daemon.log").open("ab")
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("mechanism", ["cgroup", "pgroup"])
async def test_a_non_root_daemon_contains_and_kills_runs_in_its_delegated_subtree(
    mechanism: str,
    subtree: Path,
    state_dir: Path,
    redis_server: RedisServer,
    client: SupervisorClient,
    key_prefix: str,
) -> None:
    node_id = f"nonroot-{uuid.uuid4().hex[:6]}"
    proc = _start(subtree, state_dir, redis_server.tcp_url, key_prefix, node_id, mechanism)
    log = state_dir / "daemon.log"
    try:
        deadline = time.monotonic() + 60
        while "ready:" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        text = log.read_text()
        assert psutil.Process(proc.pid).uids().effective == NOBODY
        assert f"kill_mechanism={mechanism}" in text
        if mechanism == "pgroup":
            assert "found by its marker only" in text
        # No v1 hierarchy is writable for it: memory falls back to RLIMIT_AS, the rest
        # is said to be unenforced.
        assert "resource limits: memory_max: rlimit, pids_max: none, cpu_max: none" in text

        task = await client.submit("examples.agents:setsid_agent", "go", user_id="u")
        running = await until_state(client, task, "running", timeout=60)
        leader = psutil.Process(int(running["pid"]))
        assert leader.uids().effective == NOBODY
        limit = _proc_file(leader.pid, "limits")
        assert any(
            line.startswith("Max address space") and "2147483648" in line
            for line in limit.splitlines()
        ), limit
        members = _tree(leader.pid, task, 2)  # the leader and its setsid grandchild
        if mechanism == "cgroup":
            cgroup = _proc_file(leader.pid, "cgroup")
            assert f"/{subtree.name}/adk-supervisor-{node_id}/run-{task}" in cgroup, cgroup
        await client.abort(task, "as nobody")
        record = await client.wait(task, 30)
        assert record["state"] == "aborted" and record["reason"] == "as nobody"
        _, alive = psutil.wait_procs(members, timeout=10)
        assert not alive, alive
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
