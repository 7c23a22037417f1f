"""Resume benchmark (issue 12): a run SIGKILLed mid-tool, back to its tool, ours vs DBOS.

The scenario: a scripted model calls one 5 s tool; 0.3 s into the tool the
process running it is SIGKILLed. Measured, in one run:

* ours, same node: the daemon is ``kill -9``ed (its run dies with it) and
  started again with the same node id; time from the restart's launch to the
  tool running again (the tool is in ``idempotent_tools``), tool executions,
  and whether both saw the same idempotency key;
* ours, same node, tool not idempotent: the journal answers the call "outcome
  unknown" instead: tool executions, and time to the model's next call;
* ours, peer: two daemons on one Redis, the one running the run is ``kill -9``ed;
  time from the crash to the tool running again on the other
  (``node_dead_after_s`` bounds how soon a peer may call a node dead);
  A peer calls a node dead once its heartbeat key (which outlives the last beat by
  three heartbeat intervals) has been missing for ``node_dead_after_s`` on the
  peer's own clock, seen by sweeps one heartbeat apart;
* DBOS with ``dbos-google-adk`` on SQLite: the process running the workflow
  is ``kill -9``ed and started again; time from the restart's launch to the
  tool running again, and tool executions.

    .venv/bin/python bench/resume_bench.py            # also: --json, --tool-s, --dead-after-s

Targets: same-node resume <= half of DBOS's figure; peer resume <=
``node_dead_after_s`` + 1 s; tool executions as the journal promises (2 with
one key for an idempotent tool, 1 for the other). DBOS (``pip install dbos
dbos-google-adk``) is a bench-only tool; without it only ours is measured. The
exit code is 0 whatever the numbers are: this is a benchmark, not a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running as a script puts bench/ (not the repository root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from typing import Any

from supervisor.client import SupervisorClient
from supervisor.ops.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
KILL_AFTER_S = 0.3
APPS = {
    "resume_idem": {
        "ref": "_resume_agent:idem_app",
        "on_orphan": "resume",
        "idempotent_tools": ["effect"],
    },
    "resume_once": {"ref": "_resume_agent:once_app", "on_orphan": "resume"},
}


def _lines(log: Path, text: str) -> list[str]:
    if not log.exists():
        return []
    return [line for line in log.read_text().splitlines() if text in line]


async def _until(log: Path, text: str, count: int = 1, limit_s: float = 120) -> float:
    """The time stamped on the ``count``-th line of ``log`` holding ``text``."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = _lines(log, text)
        if len(found) >= count:
            return float(found[count - 1].split()[0])
        await asyncio.sleep(0.01)
    raise SystemExit(f"{text!r} x{count} never logged in {log}")


class _Daemon:
    """``python -m supervisor run`` on the bench's Redis, with its node id and state dir."""

    def __init__(self, url: str, env: dict[str, str], node_id: str, state: Path) -> None:
        self.url, self.state = url, state
        self.env = {
            **env,
            "ADK_SUPERVISOR_NODE_ID": node_id,
            "ADK_SUPERVISOR_STATE_DIR": str(state),
        }
        self.node_id = node_id
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.seen = len(self.log())
        with (self.state / "daemon.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "--redis-url", self.url, "run"],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        path = self.state / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def ready(self) -> None:
        while "ready: reconcile done" not in self.log()[self.seen :]:
            if self.proc is None or self.proc.poll() is not None:
                raise SystemExit(f"daemon exited: {self.log()[-3000:]}")
            await asyncio.sleep(0.02)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _env(
    prefix: str, log: Path, tool_s: float, heartbeat_s: float, dead_s: float
) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}",
        "ADK_SUPERVISOR_KEY_PREFIX": prefix,
        "ADK_SUPERVISOR_APPS": json.dumps(APPS),
        "ADK_SUPERVISOR_HEARTBEAT_INTERVAL_S": str(heartbeat_s),
        "ADK_SUPERVISOR_NODE_DEAD_AFTER_S": str(dead_s),
        "RESUME_BENCH_LOG": str(log),
        "RESUME_BENCH_TOOL_S": str(tool_s),
    }


async def _ours(url: str, app: str, peer: bool, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="resume-bench-"))
    log = work / "tools.log"
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    env = _env(prefix, log, args.tool_s, args.heartbeat_s, args.dead_after_s)
    daemons = [_Daemon(url, env, f"node-{i}", work / f"state{i}") for i in range(2 if peer else 1)]
    try:
        for daemon in daemons:
            daemon.launch()
        for daemon in daemons:
            await daemon.ready()
        async with SupervisorClient(url, prefix) as client:
            task = await client.submit(app, "go", user_id="u")
            await _until(log, "effect start")
            await asyncio.sleep(KILL_AFTER_S)
            record = await client.get(task)
            victim = next(d for d in daemons if d.node_id == record.get("node_id"))
            victim.kill9()  # its run dies with it: its fork server and runs die with their parent
            crashed = time.time()
            if not peer:
                victim.launch()
            again_text, count = ("effect start", 2) if app == "resume_idem" else ("model 1", 1)
            again = await _until(log, again_text, count)
            done = await client.wait(task, 120)
        starts = [line.split()[-1] for line in _lines(log, "effect start")]
        return {
            "to_tool_again_s" if app == "resume_idem" else "to_next_model_call_s": again - crashed,
            "tool_executions": len(starts),
            "same_idempotency_key": len(set(starts)) == 1,
            "first_attempt_finished_its_tool": len(_lines(log, "effect end")) > len(starts) - 1,
            "state": done.get("state"),
            "attempt": done.get("attempt"),
        }
    finally:
        for daemon in daemons:
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


async def _dbos(tool_s: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="resume-bench-dbos-"))
    log = work / "tools.log"
    env = {**os.environ, "RESUME_BENCH_LOG": str(log), "RESUME_BENCH_TOOL_S": str(tool_s)}
    agent = str(ROOT / "bench" / "_resume_agent.py")

    def worker(mode: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, agent, "dbos", str(work / "dbos.sqlite"), "wf-bench", mode]
        with (work / "worker.log").open("ab") as out:
            return subprocess.Popen(cmd, env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT)

    try:
        first = worker("start")
        await _until(log, "effect start")
        await asyncio.sleep(KILL_AFTER_S)
        first.send_signal(signal.SIGKILL)
        first.wait()
        restarted = time.time()
        second = worker("recover")
        again = await _until(log, "effect start", 2)
        returncode = await asyncio.to_thread(second.wait, 120)
        return {
            "to_tool_again_s": again - restarted,
            "tool_executions": len(_lines(log, "effect start")),
            "completed": returncode == 0 and len(_lines(log, "effect end")) == 1,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool-s", type=float, default=5.0, help="how long the tool runs")
    parser.add_argument("--heartbeat-s", type=float, default=0.5)
    parser.add_argument("--dead-after-s", type=float, default=2.0, help="node_dead_after_s")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    has_dbos = all(importlib.util.find_spec(m) for m in ("dbos", "dbos_google_adk"))
    with RedisServer() as server:
        report: dict[str, Any] = {
            "date": datetime.date.today().isoformat(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "tool_s": args.tool_s,
            "kill_after_s": KILL_AFTER_S,
            "heartbeat_interval_s": args.heartbeat_s,
            "node_dead_after_s": args.dead_after_s,
            "ours_same_node": asyncio.run(_ours(server.url, "resume_idem", False, args)),
            "ours_same_node_not_idempotent": asyncio.run(
                _ours(server.url, "resume_once", False, args)
            ),
            "ours_peer": asyncio.run(_ours(server.url, "resume_idem", True, args)),
        }
    report["dbos"] = (
        asyncio.run(_dbos(args.tool_s))
        if has_dbos
        else "not installed: .venv/bin/pip install dbos dbos-google-adk"
    )
    same = report["ours_same_node"]["to_tool_again_s"]
    peer = report["ours_peer"]["to_tool_again_s"]
    report["targets"] = {
        "peer_resume_le_dead_after_plus_1s": peer <= args.dead_after_s + 1,
        "tool_executions_as_journal_promises": (
            report["ours_same_node"]["tool_executions"] == 2
            and report["ours_same_node"]["same_idempotency_key"]
            and report["ours_peer"]["tool_executions"] == 2
            and report["ours_same_node_not_idempotent"]["tool_executions"] == 1
        ),
    }
    if isinstance(report["dbos"], dict):
        dbos_s = report["dbos"]["to_tool_again_s"]
        report["same_node_vs_dbos_ratio"] = same / dbos_s
        report["targets"]["same_node_le_half_of_dbos"] = same <= dbos_s / 2
    if args.json:
        print(json.dumps(report, indent=2))
        return
    once = report["ours_same_node_not_idempotent"]
    print(f"scenario: scripted model, {args.tool_s:g}s tool, SIGKILL {KILL_AFTER_S}s into it")
    print(
        f"ours, daemon restart (same node) -> tool running again: {same:.2f}s, "
        f"tool executions {report['ours_same_node']['tool_executions']} "
        f"(same idempotency key: {report['ours_same_node']['same_idempotency_key']})"
    )
    print(
        f"ours, not idempotent: tool executions {once['tool_executions']}, "
        f"restart -> model's next call (outcome unknown): {once['to_next_model_call_s']:.2f}s"
    )
    print(
        f"ours, peer (node_dead_after_s={args.dead_after_s:g}) crash -> tool running again: "
        f"{peer:.2f}s, tool executions {report['ours_peer']['tool_executions']}"
    )
    if isinstance(report["dbos"], dict):
        print(
            f"DBOS + dbos-google-adk (SQLite), restart -> tool running again: "
            f"{report['dbos']['to_tool_again_s']:.2f}s, tool executions "
            f"{report['dbos']['tool_executions']}; ours / DBOS = "
            f"{report['same_node_vs_dbos_ratio']:.2f}"
        )
    else:
        print(f"DBOS: {report['dbos']}")
    print(f"targets: {report['targets']}")


if __name__ == "__main__":
    main()
