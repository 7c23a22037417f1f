"""The unit file under a real systemd: Debian's, booted in a systemd-nspawn container.

The project is installed the README's way ("Installing as a systemd service"):
a venv in /opt/adk-supervisor/.venv with the checkout pip-installed into it,
/etc/adk-supervisor/config.toml, the unit copied unchanged from
systemd/adk-supervisor.service, a system user for it, ``systemctl enable --now``.
The daemon talks to the container's own redis-server, which the outage test
stops. The tests share one container and run in file order; each begins by
waiting for the unit to be active.

The first run on a machine builds the cached root and venv (about two minutes
with a fast mirror, see nspawn_container); later runs boot on them in seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from . import nspawn_container
from .nspawn_container import REDIS_SOCKET, VENV, Container, SetupError

ROOT = Path(__file__).resolve().parents[2]
UNIT = "adk-supervisor"
SERVICE_CGROUP = "/system.slice/adk-supervisor.service"
CLI = f"{VENV}/bin/adk-supervisor"
SRC = "/opt/adk-supervisor-src"
APPS = "/opt/adk-supervisor/apps"
OUTAGE_S = 60.0
TERMINAL = ("completed", "failed", "timed_out", "aborted")

CONFIG = f"""\
redis_url = "unix://{REDIS_SOCKET}"
socket_path = "/run/adk-supervisor/supervisor.sock"
# Fail, rather than fall back to process groups, if the delegated subtree is unusable.
kill_mechanism = "cgroup"
max_concurrent_runs = 4

[apps]
setsid = "examples.agents:setsid_agent"
nap = "nspawn_agents:nap_agent"
"""

T = TypeVar("T")


class Box:
    """The booted container with the project installed; helpers for what the tests ask of it."""

    def __init__(self, container: Container) -> None:
        self.c = container
        self.node = container.name  # node_id defaults to the host name

    def sh(self, *cmd: str, timeout: float = 30.0) -> str:
        return self.c.run(cmd, timeout=timeout).stdout

    def show(self, prop: str, unit: str = UNIT) -> str:
        return self.sh("systemctl", "show", "-p", prop, "--value", unit).strip()

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return self.c.run([CLI, *args], timeout=timeout, check=False)

    def submit(self, app: str, message: str, *options: str) -> str:
        task = f"nspawn-{app}-{time.monotonic_ns()}"
        done = self.cli("submit", app, message, "--user-id", "u1", "--task-id", task, *options)
        assert done.returncode == 0, done.stderr
        return task

    def record(self, task: str) -> dict[str, str] | None:
        """The task's record, or None while Redis cannot be read."""
        done = self.cli("--json", "get", task)
        if done.returncode != 0:
            return None
        data: dict[str, str] = json.loads(done.stdout)
        return data

    def ended(self, task: str) -> dict[str, str] | None:
        """The task's record once it is terminal, else None."""
        record = self.record(task)
        return record if record and record.get("state") in TERMINAL else None

    def leaf(self, task: str) -> str:
        return f"{SERVICE_CGROUP}/adk-supervisor-{self.node}/run-{task}"

    def leaf_pids(self, task: str) -> list[int]:
        done = self.c.run(
            ["cat", f"/sys/fs/cgroup{self.leaf(task)}/cgroup.procs"], check=False, timeout=10
        )
        return [int(p) for p in done.stdout.split()]

    def alive(self, pid: int) -> bool:
        # A zombie has left its cgroup and holds nothing: it counts as gone.
        done = self.c.run(["cat", f"/proc/{pid}/stat"], check=False, timeout=10)
        return done.returncode == 0 and done.stdout.rpartition(")")[2].split()[0] != "Z"

    def proc_status(self, pid: int, field: str) -> str:
        for line in self.sh("cat", f"/proc/{pid}/status").splitlines():
            if line.startswith(f"{field}:"):
                return line.split()[1]
        raise AssertionError(f"/proc/{pid}/status has no {field}")

    def running_tree(self, task: str, at_least: int) -> list[int]:
        """Waits until the task runs with ``at_least`` processes in its leaf; returns them."""

        def ready() -> list[int] | None:
            record = self.record(task) or {}
            assert record.get("state") not in TERMINAL, f"{task} ended before it ran: {record}"
            pids = self.leaf_pids(task)
            return pids if record.get("state") == "running" and len(pids) >= at_least else None

        return wait_for(ready, 30, f"task {task} running with {at_least} processes")

    def unit_active(self) -> None:
        wait_for(lambda: self.show("ActiveState") == "active" or None, 60, f"{UNIT} to be active")


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.25)


def _checkout_files() -> list[str]:
    try:
        listed = nspawn_container.run(
            ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"], timeout=60
        ).stdout.splitlines()
    except (SetupError, FileNotFoundError) as exc:
        pytest.fail(f"cannot list the checkout's files with git: {exc}", pytrace=False)
    return [f for f in listed if (ROOT / f).is_file()]


def install(box: Box) -> None:
    """Installs the checkout the README's way, then starts the unit."""
    root = box.c.root
    for name in _checkout_files():
        dest = root / SRC.lstrip("/") / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest)
    # The agents: the example package, and the nap agent as a module of its own,
    # on the venv's path through a .pth file (as "your agents' packages" would be).
    apps = root / APPS.lstrip("/")
    shutil.copytree(
        ROOT / "examples", apps / "examples", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy2(Path(__file__).with_name("nspawn_agents.py"), apps / "nspawn_agents.py")
    site = next((root / VENV.lstrip("/")).glob("lib/python3*/site-packages"))
    (site / "adk_supervisor_test_apps.pth").write_text(APPS + "\n")

    # The unit's header: a system user for the daemon; it may use the local Redis socket.
    box.sh(
        "useradd",
        "--system",
        "--home",
        "/var/lib/adk-supervisor",
        "--shell",
        "/usr/sbin/nologin",
        UNIT,
    )
    box.sh("usermod", "-aG", "redis", UNIT)
    # The venv already holds every dependency (cached): --no-index proves it is enough.
    box.sh(
        f"{VENV}/bin/pip", "install", "--quiet", "--no-index", "--no-build-isolation",
        f"{SRC}[embedded]",
        timeout=300,
    )  # fmt: skip
    box.sh(
        "install",
        "-D",
        "-m",
        "0644",
        f"{SRC}/config.example.toml",
        "/etc/adk-supervisor/config.toml",
    )
    (root / "etc/adk-supervisor/config.toml").write_text(CONFIG)
    box.sh("cp", f"{SRC}/systemd/adk-supervisor.service", "/etc/systemd/system/")
    box.sh("systemctl", "daemon-reload")
    box.sh("systemctl", "enable", "--now", UNIT, timeout=150)


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    started = time.monotonic()
    try:
        container = nspawn_container.boot(ROOT / "pyproject.toml")
    except SetupError as exc:
        pytest.fail(f"cannot boot the systemd container: {exc}", pytrace=False)
    print(f"container {container.name} up after {time.monotonic() - started:.1f}s")
    try:
        b = Box(container)
        try:
            install(b)
        except SetupError as exc:
            print(container.journal("-u", UNIT, "-n", "200"))
            pytest.fail(f"cannot install the project in the container: {exc}", pytrace=False)
        print(f"{UNIT} active after {time.monotonic() - started:.1f}s")
        yield b
    finally:
        container.destroy()


@pytest.fixture(autouse=True)
def journal_on_failure(box: Box) -> Iterator[None]:
    """The unit's journal during the test, in the test's captured output (shown on failure)."""
    since = f"@{time.time() - 1:.0f}"
    yield
    print(f"--- journalctl -u {UNIT} --no-pager --since {since} ---")
    print(box.c.journal("-u", UNIT, "--since", since))


def test_ready_after_startup_and_status_line(box: Box) -> None:
    box.unit_active()
    assert box.show("Type") == "notify"
    assert box.show("SubState") == "running"
    assert box.show("WatchdogUSec") == "30s"
    assert re.fullmatch(r"\d+ running, \d+ finished, redis ok", box.show("StatusText"))
    # Type=notify: systemd called the unit active when the daemon said READY=1, once
    # its startup was done, not when it exec'd it. (The journal cannot show the order:
    # the daemon's lines come through a pipe, systemd's do not.)
    exec_at = int(box.show("ExecMainStartTimestampMonotonic"))
    active_at = int(box.show("ActiveEnterTimestampMonotonic"))
    assert active_at - exec_at > 100_000, f"active {active_at - exec_at} us after exec"
    assert "ready: reconcile done" in box.c.journal("-u", UNIT, "-o", "cat")


def test_daemon_runs_as_its_own_user_with_the_delegated_subtree(box: Box) -> None:
    box.unit_active()
    uid = box.sh("id", "-u", UNIT).strip()
    assert uid != "0"
    daemon = int(box.show("MainPID"))
    assert box.proc_status(daemon, "Uid") == uid
    # Delegate=yes with User=: systemd hands the service's cgroup to that user.
    owner = box.sh("stat", "-c", "%u", f"/sys/fs/cgroup{SERVICE_CGROUP}").strip()
    assert owner == uid
    node_cgroup = f"/sys/fs/cgroup{SERVICE_CGROUP}/adk-supervisor-{box.node}"
    assert box.sh("stat", "-c", "%u", node_cgroup).strip() == uid
    # The daemon left the service's cgroup for a leaf: cgroup v2 lets only a cgroup
    # with no processes of its own hand memory/pids/cpu controllers to the runs.
    assert f"0::{SERVICE_CGROUP}/supervisor" in box.sh("cat", f"/proc/{daemon}/cgroup").splitlines()
    assert box.sh("cat", f"/sys/fs/cgroup{SERVICE_CGROUP}/cgroup.procs").split() == []


def test_run_in_a_delegated_leaf_is_killed_whole_by_abort(box: Box) -> None:
    box.unit_active()
    uid = box.sh("id", "-u", UNIT).strip()
    task = box.submit("setsid", "hi")
    # The leader and a grandchild that called setsid() and double-forked.
    pids = box.running_tree(task, at_least=2)
    record = box.record(task)
    assert record is not None
    assert record["cgroup"] == f"/sys/fs/cgroup{box.leaf(task)}"
    sessions = set()
    for pid in pids:
        # The host's v1 hierarchies show up too, as "/": the v2 line is the container's.
        assert f"0::{box.leaf(task)}" in box.sh("cat", f"/proc/{pid}/cgroup").splitlines()
        assert box.proc_status(pid, "Uid") == uid
        sessions.add(box.sh("ps", "-o", "sid=", "-p", str(pid)).strip())
    assert len(sessions) == 2, "the grandchild left the leader's session"

    done = box.cli("abort", task, "--reason", "test abort")
    assert done.returncode == 0, done.stderr
    record = wait_for(
        lambda: box.ended(task),
        30,
        f"task {task} to end",
    )
    assert record["state"] == "aborted", record
    wait_for(lambda: not any(box.alive(p) for p in pids), 10, f"processes {pids} to be gone")
    gone = box.c.run(["test", "-e", f"/sys/fs/cgroup{box.leaf(task)}"], check=False)
    assert gone.returncode != 0, "the run's leaf was removed"


def test_sigkill_restarts_the_daemon_and_it_reconciles_the_orphan(box: Box) -> None:
    box.unit_active()
    restarts, daemon = int(box.show("NRestarts")), box.show("MainPID")
    task = box.submit("setsid", "hi")
    pids = box.running_tree(task, at_least=2)

    box.sh("systemctl", "kill", "-s", "SIGKILL", UNIT)
    wait_for(
        lambda: (
            int(box.show("NRestarts")) == restarts + 1
            and box.show("ActiveState") == "active"
            and box.show("MainPID") not in ("0", daemon)
        ),
        60,
        "systemd to restart the daemon",
    )
    record = wait_for(
        lambda: box.ended(task),
        30,
        f"task {task} reconciled",
    )
    assert record["state"] == "failed", record
    assert record["reason"].startswith("orphaned"), record
    assert not any(box.alive(p) for p in pids)
    gone = box.c.run(["test", "-e", f"/sys/fs/cgroup{box.leaf(task)}"], check=False)
    assert gone.returncode != 0, "reconcile removed the dead run's leaf"


def test_no_restart_during_a_redis_outage_and_the_outbox_lands_after(box: Box) -> None:
    box.unit_active()
    restarts, daemon = box.show("NRestarts"), box.show("MainPID")
    # One run outlives the outage; one times out in the middle of it (the deadline
    # needs no Redis), so its terminal state waits in the outbox.
    nap_s = OUTAGE_S + 12
    outliving = box.submit("nap", f"{nap_s:g}")
    timing_out = box.submit("nap", "600", "--timeout", "15")
    (outliving_pid,) = box.running_tree(outliving, at_least=1)
    (timing_out_pid,) = box.running_tree(timing_out, at_least=1)

    box.sh("systemctl", "stop", "redis-server")
    down_at = time.monotonic()
    wait_for(lambda: "redis DOWN" in box.show("StatusText"), 20, "STATUS= to say redis DOWN")
    while time.monotonic() < down_at + OUTAGE_S:
        assert box.show("NRestarts") == restarts
        assert box.show("MainPID") == daemon
        assert box.show("ActiveState") == "active"
        time.sleep(max(0.0, min(5.0, down_at + OUTAGE_S - time.monotonic())))
    # Pings went on through the outage, well past WatchdogSec without Redis.
    last_ping_s = int(box.show("WatchdogTimestampMonotonic")) / 1e6
    assert last_ping_s > down_at + 30, (last_ping_s, down_at)
    assert box.alive(outliving_pid), "a run survives the outage"
    assert not box.alive(timing_out_pid), "the timeout fired without Redis"

    box.sh("systemctl", "start", "redis-server")
    back_at = time.time()
    record = wait_for(lambda: box.ended(timing_out), 30, f"{timing_out}'s record to land")
    assert record["state"] == "timed_out", record
    assert float(record["ended_at"]) < back_at - 20, "it ended during the outage"
    record = wait_for(lambda: box.ended(outliving), 30, f"{outliving} to end")
    assert record["state"] == "completed", record
    assert float(record["duration_s"]) == pytest.approx(nap_s, abs=5)
    wait_for(lambda: box.show("StatusText").endswith("redis ok"), 20, "STATUS= to say redis ok")
    assert box.show("NRestarts") == restarts
    assert box.show("MainPID") == daemon


def test_clean_stop_kills_and_records_runs(box: Box) -> None:
    box.unit_active()
    task = box.submit("setsid", "hi")
    pids = box.running_tree(task, at_least=2)

    box.sh("systemctl", "stop", UNIT, timeout=120)
    assert box.show("ActiveState") == "inactive"
    assert box.show("Result") == "success"
    # The daemon is gone: the CLI reads the record from Redis directly.
    record = box.record(task)
    assert record is not None
    assert record["state"] == "aborted", record
    assert "shutting down" in record["reason"], record
    assert not any(box.alive(p) for p in pids)
    log = box.c.journal("-u", UNIT, "-o", "cat", "-n", "50")
    assert "not removed at stop" not in log
