"""The daemon's file-descriptor limit at start: raised to the hard limit, refused when short."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil

from .daemon_harness import ROOT, Daemon


def _nofile(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-files limit for {pid}")


def _command(redis_url: str, soft: int, hard: int) -> list[str]:
    # prlimit execs the daemon with these limits (it is util-linux's; apt-get install util-linux).
    return [
        "prlimit",
        f"--nofile={soft}:{hard}",
        "--",
        sys.executable,
        "-m",
        "supervisor",
        "--redis-url",
        redis_url,
        "run",
    ]


def test_the_daemon_raises_its_soft_fd_limit_to_the_hard_one(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    daemon = Daemon(redis_url, key_prefix, tmp_path / "state", "auto")
    daemon.state_dir.mkdir()
    with daemon.log_path.open("ab") as log:
        proc = subprocess.Popen(
            _command(redis_url, 256, hard), env=daemon.env, cwd=ROOT, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60
        while "ready: reconcile done" not in daemon.log():
            assert proc.poll() is None, daemon.log()
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)
        assert _nofile(proc.pid) == (hard, hard)
        # The fork server (and so every run it forks) inherits the raised limit.
        children = psutil.Process(proc.pid).children()
        servers = [c for c in children if "agent_runtime.fork_server" in " ".join(c.cmdline())]
        assert servers, children
        assert _nofile(servers[0].pid) == (hard, hard)
    finally:
        proc.terminate()
        proc.wait(60)


def test_a_hard_fd_limit_short_of_max_concurrent_runs_refuses_to_start(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    daemon = Daemon(
        redis_url,
        key_prefix,
        tmp_path / "state",
        "auto",
        ADK_SUPERVISOR_MAX_CONCURRENT_RUNS="1000",
    )
    daemon.state_dir.mkdir()
    done = subprocess.run(
        _command(redis_url, 1024, 1024),
        env=daemon.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "max_concurrent_runs = 1000 needs up to" in done.stderr, done.stderr
    assert "LimitNOFILE=" in done.stderr, done.stderr
    # Never got as far as taking runs.
    assert "ready:" not in done.stderr + done.stdout
