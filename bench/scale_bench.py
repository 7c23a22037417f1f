"""Scale benchmark (issue 13): one host's throughput, spawn latency, 1,000 live runs, vs RQ.

One private ``redis-server``; on it, in one sitting, our daemon (fork server,
``bench/_scale_agent.py``'s ``stamp_agent``: an ``LlmAgent`` on a scripted
model that answers at once, whose first line stamps the time) driven through
the public :class:`SupervisorClient`, then RQ with one forking worker per core
(ADK and the agent imported, and one warm-up invocation run, before it forks;
the job is the same invocation on the same ``RedisSessionService``). Measured:

* throughput: ``--runs`` trivial runs submitted at once, runs/s until the last
  is recorded ``completed`` (RQ: until the last job is finished);
* submit -> the agent's first line, p50/p99 over ``--latency-runs`` runs one at
  a time (RQ: enqueue -> first line);
* memory per idle live run at ``--live-small`` and ``--live`` concurrent runs:
  the sum of PSS (``/proc/<pid>/smaps_rollup``) of every run process, plus the
  daemon and the fork server; the daemon's, fork server's and Redis's CPU over
  ``--hold-window-s`` while holding them;
* abort of one run among ``--live`` live ones, p50/p99 over ``--probes``
  probes (``client.abort`` -> the run's leader gone), vs the same with the
  daemon otherwise idle;
* mass abort of the ``--live`` runs: ``client.abort`` of each, until every
  process of every run (leaders and their descendants, read before) is gone,
  and until every record is terminal;
* what one run costs Redis (``CONFIG RESETSTAT`` before the throughput phase,
  ``INFO`` after: commands by type, read events ~ round trips, bytes in and
  out, Redis CPU) and the daemon (CPU per run), and what it leaves behind once
  finished (keys by kind with their TTLs and ``MEMORY USAGE``). ``--capacity``
  adds a ``MONITOR`` of ``--monitor-runs`` runs one at a time, every command
  counted by the key pattern it touches: the hot keys.

    .venv/bin/python bench/scale_bench.py                         # 1,000 runs, 1,000 live
    .venv/bin/python bench/scale_bench.py --runs 100 --live 50 --live-small 10 --probes 5
    .venv/bin/python bench/scale_bench.py --capacity --json

RQ (``pip install rq``) is a bench-only tool, like DBOS for bench/resume_bench.py;
without it only ours is measured. The exit code is 0 whatever the numbers are:
this is a benchmark, not a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running as a script puts bench/ (not the repository root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import re
import select
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import redis

from supervisor.client import SupervisorClient
from supervisor.ops.redis_server import RedisServer
from supervisor.process.tree import descendants

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
APP = "scale"
STAMP_DIR_ENV = "ADK_BENCH_STAMP_DIR"
TERMINAL = {"completed", "failed", "aborted", "timed_out"}
_TICK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30

# Targets (issue 13).
TARGET_RUNS_PER_S = 150.0
TARGET_VS_RQ = 2.0
TARGET_SPAWN_P50_MS = 10.0
TARGET_HOST_BYTES = 24 * GIB
TARGET_ABORT_VS_IDLE = 2.0


def _with_bytecode(env: os._Environ[str]) -> dict[str, str]:
    """``env`` without PYTHONDONTWRITEBYTECODE: an installed package has its bytecode
    compiled, so a module a run imports lazily must not be compiled from source in
    every run (on a machine that sets it, that was a quarter of a run's CPU)."""
    return {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}


# ---------------------------------------------------------------- /proc


def pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (its reaped children not included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def children_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid``'s reaped children (the daemon reaps every run process)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[13]) + int(fields[14])) / _TICK


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def wait_gone(fds: list[int], timeout_s: float) -> bool:
    """Waits until every pidfd is readable (its process exited); closes them."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    left = set(fds)
    deadline = time.monotonic() + timeout_s
    try:
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for fd, _ in poller.poll(remaining * 1000):
                poller.unregister(fd)
                left.discard(fd)
        return True
    finally:
        for fd in fds:
            os.close(fd)


def pidfds(pids: list[int]) -> list[int]:
    fds = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds.append(os.pidfd_open(pid))
    return fds


# ---------------------------------------------------------------- Redis


def redis_info(client: redis.Redis) -> dict[str, Any]:
    info: dict[str, Any] = client.info("all")
    return info


def redis_cpu(info: dict[str, Any]) -> float:
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def commandstats(info: dict[str, Any]) -> dict[str, int]:
    return {
        k.removeprefix("cmdstat_"): int(v["calls"])
        for k, v in info.items()
        if k.startswith("cmdstat_") and isinstance(v, dict)
    }


_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f-]{27}")


def key_kind(key: str, prefix: str) -> str:
    """A key with ids replaced by ``<id>``: its kind."""
    return _ID.sub("<id>", key.replace(prefix, "<prefix>", 1))


def keys_left(client: redis.Redis, prefix: str) -> dict[str, dict[str, Any]]:
    """Every key under ``prefix`` (and session keys), by kind: count, bytes, TTL range."""
    kinds: dict[str, dict[str, Any]] = {}
    for raw in client.scan_iter(match=f"{prefix}*", count=1000):
        key = raw.decode()
        kind = key_kind(key, prefix)
        entry = kinds.setdefault(
            kind, {"count": 0, "bytes": 0, "ttl_s_min": None, "ttl_s_max": None, "type": ""}
        )
        entry["count"] += 1
        entry["bytes"] += int(client.memory_usage(key) or 0)
        entry["type"] = client.type(key).decode()
        ttl = int(client.ttl(key))
        for name, pick in (("ttl_s_min", min), ("ttl_s_max", max)):
            entry[name] = ttl if entry[name] is None else pick(entry[name], ttl)
    return kinds


class Monitor:
    """Counts every command by the key kinds it names, from ``MONITOR`` (a thread)."""

    def __init__(self, url: str, prefix: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._prefix = prefix
        self.by_kind: Counter[str] = Counter()
        self.commands = 0
        self.script_commands = 0
        self._ready = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._client.ping()  # a command wakes the listener
        self._thread.join(10)

    def _run(self) -> None:
        with self._client.monitor() as monitor:
            self._ready.set()
            for event in monitor.listen():
                if self._stop:
                    return
                command = str(event.get("command", ""))
                if self._prefix not in command:
                    continue
                self.commands += 1
                if event.get("client_type") == "lua":
                    self.script_commands += 1
                for token in command.split():
                    if token.startswith(self._prefix):
                        self.by_kind[key_kind(token, self._prefix)] += 1
                        break


# ---------------------------------------------------------------- ours


class Daemon:
    """Our daemon on ``url``, fork server, with the scale agent as its one app."""

    def __init__(self, url: str, stamps: Path, slots: int, mechanism: str) -> None:
        self.url = url
        self.prefix = f"bench-{uuid.uuid4().hex[:6]}:"
        self.state = Path(tempfile.mkdtemp(prefix="scale-bench-"))
        self.log = self.state / "daemon.log"
        env = {
            **_with_bytecode(os.environ),
            "PYTHONPATH": f"{ROOT}:{BENCH}",
            "ADK_SUPERVISOR_KEY_PREFIX": self.prefix,
            "ADK_SUPERVISOR_NODE_ID": f"bench-{uuid.uuid4().hex[:6]}",
            "ADK_SUPERVISOR_STATE_DIR": str(self.state),
            "ADK_SUPERVISOR_SPAWN_MODE": "fork-server",
            "ADK_SUPERVISOR_KILL_MECHANISM": mechanism,
            "ADK_SUPERVISOR_MAX_CONCURRENT_RUNS": str(slots),
            "ADK_SUPERVISOR_APPS": json.dumps({APP: "_scale_agent:stamp_agent"}),
            STAMP_DIR_ENV: str(stamps),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "--redis-url", url, "run"],
            env=env,
            cwd=ROOT,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    async def ready(self) -> None:
        deadline = time.monotonic() + 120
        while "ready:" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"daemon did not start:\n{self.log.read_text()}")
            await asyncio.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fork_server(self) -> int | None:
        for child in descendants(self.pid):
            if "fork_server" in cmdline(child):
                return child
        return None

    def mechanism(self) -> str:
        found = re.search(r"kill_mechanism=(\w+)", self.log.read_text(errors="replace"))
        return found.group(1) if found else "?"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # The log outlives the state dir, for a run that went wrong.
        with contextlib.suppress(OSError):
            shutil.copy(self.log, Path(tempfile.gettempdir()) / "scale-bench-daemon.log")
        shutil.rmtree(self.state, ignore_errors=True)


# A burst with no run ending for this long has lost runs (a dropped entry stays queued).
_STALL_S = 60.0
POLLS = Counter[str]()
"""The bench's own reads of records (HMGETs and pipelines), taken out of a run's cost."""


async def _states(
    client: SupervisorClient, ids: list[str], fields: tuple[str, ...] = ("state",)
) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for start in range(0, len(ids), 500):
        batch = ids[start : start + 500]
        out += await client.store.fields_many(batch, fields)
        POLLS["hmget"] += len(batch)
        POLLS["pipelines"] += 1
    return out


async def _until_terminal(
    client: SupervisorClient, ids: list[str], timeout_s: float
) -> Counter[str]:
    pending = list(ids)
    states: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    progress_at = time.monotonic()
    while pending:
        now = time.monotonic()
        if now > deadline or now - progress_at > _STALL_S:
            raise SystemExit(
                f"{len(pending)} of {len(ids)} runs not finished ({dict(states)} so far; "
                f"the daemon's log: {Path(tempfile.gettempdir()) / 'scale-bench-daemon.log'})"
            )
        rows = await _states(client, pending)
        if len(rows) and any(row.get("state") in TERMINAL for row in rows):
            progress_at = time.monotonic()
        still = []
        for task_id, row in zip(pending, rows, strict=True):
            if row.get("state") in TERMINAL:
                states[row["state"]] += 1
            else:
                still.append(task_id)
        pending = still
        if pending:
            await asyncio.sleep(0.1)
    return states


async def _until_running(client: SupervisorClient, ids: list[str], timeout_s: float) -> list[int]:
    pids: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(pids) < len(ids):
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(pids)} of {len(ids)} runs running after {timeout_s:g}s")
        waiting = [t for t in ids if t not in pids]
        for task_id, row in zip(
            waiting, await _states(client, waiting, ("state", "pid")), strict=True
        ):
            if row.get("state") == "running" and row.get("pid"):
                pids[task_id] = int(row["pid"])
            elif row.get("state") in TERMINAL:
                raise SystemExit(f"run {task_id} ended early: {row}")
        await asyncio.sleep(0.05)
    return [pids[t] for t in ids]


async def _submit_many(client: SupervisorClient, message: str, count: int) -> list[str]:
    ids: list[str] = [""] * count
    gate = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with gate:
            ids[i] = await client.submit(APP, message, user_id="bench", session_id=uuid.uuid4().hex)

    await asyncio.gather(*(one(i) for i in range(count)))
    return ids


async def _first_line_ms(client: SupervisorClient, stamps: Path, n: int) -> list[float]:
    out = []
    for _ in range(n):
        session = uuid.uuid4().hex
        t0 = time.time()
        task = await client.submit(APP, "go", user_id="bench", session_id=session)
        record = await client.wait(task, 60)
        assert record["state"] == "completed", record
        out.append((float((stamps / session).read_text()) - t0) * 1000)
    return out


async def _abort_probe_ms(client: SupervisorClient, probes: int) -> list[float]:
    out = []
    for _ in range(probes):
        (task,) = await _submit_many(client, "hold", 1)
        (pid,) = await _until_running(client, [task], 60)
        await asyncio.sleep(0.3)  # past the start's own Redis writes
        fd = os.pidfd_open(pid)
        t0 = time.perf_counter()
        await client.abort(task, "probe")
        gone = await asyncio.to_thread(wait_gone, [fd], 60)
        out.append((time.perf_counter() - t0) * 1000 if gone else float("inf"))
        await _until_terminal(client, [task], 60)
    return out


def _tree_pids(leaders: list[int]) -> list[int]:
    out = []
    for leader in leaders:
        out.append(leader)
        out += descendants(leader)
    return out


async def _hold(
    daemon: Daemon, rclient: redis.Redis, pids: list[int], window_s: float
) -> dict[str, Any]:
    """Memory of the live runs now, and CPU over ``window_s`` while they idle."""
    await asyncio.sleep(2)  # settle: the last starts' writes
    tree = _tree_pids(pids)
    runs_pss = sum(pss_bytes(p) for p in tree)
    server = daemon.fork_server()
    daemon_pss = pss_bytes(daemon.pid)
    server_pss = pss_bytes(server) if server else 0
    info0 = redis_info(rclient)
    d0, s0 = cpu_s(daemon.pid), cpu_s(server) if server else 0.0
    t0 = time.monotonic()
    await asyncio.sleep(window_s)
    elapsed = time.monotonic() - t0
    info1 = redis_info(rclient)
    d1, s1 = cpu_s(daemon.pid), cpu_s(server) if server else 0.0
    return {
        "live": len(pids),
        "processes": len(tree),
        "runs_pss_bytes": runs_pss,
        "pss_per_run_bytes": runs_pss / max(1, len(pids)),
        "daemon_pss_bytes": daemon_pss,
        "fork_server_pss_bytes": server_pss,
        "total_pss_bytes": runs_pss + daemon_pss + server_pss,
        "daemon_cpu_pct": (d1 - d0) / elapsed * 100,
        "fork_server_cpu_pct": (s1 - s0) / elapsed * 100,
        "redis_cpu_pct": (redis_cpu(info1) - redis_cpu(info0)) / elapsed * 100,
        "redis_clients": int(info1["connected_clients"]),
        "daemon_fds": len(os.listdir(f"/proc/{daemon.pid}/fd")),
        "fork_server_fds": len(os.listdir(f"/proc/{server}/fd")) if server else 0,
        "redis_used_memory_bytes": int(info1["used_memory"]),
    }


async def _ours(args: argparse.Namespace, url: str, stamps: Path) -> dict[str, Any]:
    rclient = redis.Redis.from_url(url)
    daemon = Daemon(url, stamps, args.live + 16, args.mechanism)
    out: dict[str, Any] = {}
    try:
        await daemon.ready()
        out["kill_mechanism"] = daemon.mechanism()
        async with SupervisorClient(url, daemon.prefix) as client:
            await _first_line_ms(client, stamps, 3)  # warm-up
            out["first_line_ms"] = await _first_line_ms(client, stamps, args.latency_runs)
            out["abort_idle_ms"] = await _abort_probe_ms(client, args.probes)

            # Throughput, with what it costs Redis and the daemon.
            rclient.config_resetstat()
            POLLS.clear()
            info0 = redis_info(rclient)
            d0, c0 = cpu_s(daemon.pid), children_cpu_s(daemon.pid)
            server = daemon.fork_server()
            s0 = cpu_s(server) if server else 0.0
            t0 = time.monotonic()
            ids = await _submit_many(client, "go", args.runs)
            submitted = time.monotonic() - t0
            states = await _until_terminal(client, ids, 600)
            elapsed = time.monotonic() - t0
            info1 = redis_info(rclient)
            d1, s1 = cpu_s(daemon.pid), cpu_s(server) if server else 0.0
            c1 = children_cpu_s(daemon.pid)
            out["throughput"] = {
                "runs": args.runs,
                "seconds": elapsed,
                "submit_seconds": submitted,
                "runs_per_s": args.runs / elapsed,
                "states": dict(states),
            }
            # What the bench's own polling cost Redis, per HMGET, to take it out below.
            before = redis_info(rclient)
            for _ in range(4):
                await _states(client, ids[:500])
            after = redis_info(rclient)
            polled = 4 * len(ids[:500])
            per_poll = {
                name: (after[name] - before[name]) / polled
                for name in ("total_net_input_bytes", "total_net_output_bytes")
            } | {"cpu": (redis_cpu(after) - redis_cpu(before)) / polled}
            for name in ("total_net_input_bytes", "total_net_output_bytes"):
                info1[name] -= per_poll[name] * POLLS["hmget"]
            redis_cpu_s = redis_cpu(info1) - redis_cpu(info0) - per_poll["cpu"] * POLLS["hmget"]
            n = args.runs
            cmds = commandstats(info1)
            # The bench's polling is no part of a run's cost (+1: the INFO itself).
            cmds["hmget"] = cmds.get("hmget", 0) - POLLS["hmget"]
            cmds["info"] = cmds.get("info", 0) - 1
            out["cost_per_run"] = {
                "commands": sum(cmds.values()) / n,
                "by_command": {k: v / n for k, v in sorted(cmds.items(), key=lambda kv: -kv[1])},
                "read_events": (
                    info1["total_reads_processed"]
                    - info0["total_reads_processed"]
                    - POLLS["pipelines"]
                )
                / n,
                "net_input_bytes": (info1["total_net_input_bytes"] - info0["total_net_input_bytes"])
                / n,
                "net_output_bytes": (
                    info1["total_net_output_bytes"] - info0["total_net_output_bytes"]
                )
                / n,
                "redis_cpu_ms": redis_cpu_s / n * 1000,
                "redis_cpu_ms_with_bench_polls": (redis_cpu(info1) - redis_cpu(info0)) / n * 1000,
                "daemon_cpu_ms": (d1 - d0) / n * 1000,
                "fork_server_cpu_ms": (s1 - s0) / n * 1000,
                "run_process_cpu_ms": (c1 - c0) / n * 1000,
                "load_avg_after": os.getloadavg(),
                "bench_polls": dict(POLLS),
                "bench_poll_cost_per_hmget": per_poll,
                "note": "the bench's polling is taken out: counted (commands, read events) "
                "or estimated from a calibration pass (bytes, Redis CPU)",
            }
            left = keys_left(rclient, daemon.prefix)
            out["keys_left_after_runs"] = {
                "runs": n + args.latency_runs + args.probes + 3,
                "kinds": left,
                "used_memory_bytes": int(info1["used_memory"]),
            }
            if args.capacity:
                with Monitor(url, daemon.prefix) as monitor:
                    await _first_line_ms(client, stamps, args.monitor_runs)
                out["monitor"] = {
                    "runs": args.monitor_runs,
                    "commands_per_run": monitor.commands / args.monitor_runs,
                    "script_commands_per_run": monitor.script_commands / args.monitor_runs,
                    "by_key_kind_per_run": {
                        k: v / args.monitor_runs for k, v in monitor.by_kind.most_common()
                    },
                    "note": "includes the bench's client.wait (GET of the record, SUBSCRIBE)",
                }

            # Live idle runs: memory and CPU at --live-small, then --live.
            mem0 = mem_available()
            live: list[str] = []
            pids: list[int] = []
            out["hold"] = []
            for target in (args.live_small, args.live):
                more = await _submit_many(client, "hold", target - len(live))
                t_start = time.monotonic()
                pids += await _until_running(client, more, 900)
                live += more
                hold = await _hold(daemon, rclient, pids, args.hold_window_s)
                hold["start_seconds"] = time.monotonic() - t_start
                hold["host_memory_used_bytes"] = mem0 - mem_available()
                out["hold"].append(hold)
            out["abort_live_ms"] = await _abort_probe_ms(client, args.probes)

            # Mass abort: every process of every run gone, every record terminal.
            fds = pidfds(_tree_pids(pids))
            gate = asyncio.Semaphore(64)

            async def abort(task: str) -> None:
                async with gate:
                    await client.abort(task, "mass")

            t0 = time.monotonic()
            gone_wait = asyncio.create_task(asyncio.to_thread(wait_gone, fds, 300))
            await asyncio.gather(*(abort(t) for t in live))
            published = time.monotonic() - t0
            all_gone = await gone_wait
            t_gone = time.monotonic() - t0
            ended = await _until_terminal(client, live, 300)
            t_recorded = time.monotonic() - t0
            left_alive = [p for p in _tree_pids(pids) if Path(f"/proc/{p}").exists()]
            out["mass_abort"] = {
                "runs": len(live),
                "processes": len(fds),
                "publish_seconds": published,
                "all_gone_seconds": t_gone if all_gone else float("inf"),
                "all_recorded_seconds": t_recorded,
                "states": dict(ended),
                "processes_left": len(left_alive),
            }
    finally:
        daemon.stop()
        rclient.close()
    return out


# ---------------------------------------------------------------- RQ


def _rq(args: argparse.Namespace, url: str, stamps: Path) -> dict[str, Any]:
    from rq import Queue, Worker

    rclient = redis.Redis.from_url(url)
    queue_name = f"scale-{uuid.uuid4().hex[:6]}"
    queue = Queue(queue_name, connection=rclient)
    prefix = f"rq-bench-{uuid.uuid4().hex[:6]}:"
    env = {
        **_with_bytecode(os.environ),
        "PYTHONPATH": f"{ROOT}:{BENCH}",
        STAMP_DIR_ENV: str(stamps),
    }
    workers = [
        subprocess.Popen(
            [sys.executable, str(BENCH / "_scale_agent.py"), url, queue_name],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(os.cpu_count() or 1)
    ]
    out: dict[str, Any] = {"workers": len(workers)}
    try:
        deadline = time.monotonic() + 120
        while Worker.count(queue=queue) < len(workers):
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise SystemExit("RQ workers did not start")
            time.sleep(0.1)

        def first_line(n: int) -> list[float]:
            samples = []
            for _ in range(n):
                session = uuid.uuid4().hex
                t0 = time.time()
                job = queue.enqueue("_scale_agent.rq_job", url, prefix, session)
                while job.get_status(refresh=True) not in ("finished", "failed"):
                    time.sleep(0.002)
                assert job.get_status() == "finished", job.exc_info
                samples.append((float((stamps / session).read_text()) - t0) * 1000)
            return samples

        first_line(3)
        out["first_line_ms"] = first_line(args.latency_runs)
        finished = queue.finished_job_registry
        base = finished.count
        t0 = time.monotonic()
        for _ in range(args.runs):
            queue.enqueue("_scale_agent.rq_job", url, prefix, uuid.uuid4().hex)
        submitted = time.monotonic() - t0
        deadline = time.monotonic() + 600
        while finished.count + queue.failed_job_registry.count - base < args.runs:
            if time.monotonic() > deadline:
                raise SystemExit("RQ jobs did not finish")
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        out["throughput"] = {
            "runs": args.runs,
            "seconds": elapsed,
            "submit_seconds": submitted,
            "runs_per_s": args.runs / elapsed,
            "failed": queue.failed_job_registry.count,
        }
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        rclient.close()
    return out


# ---------------------------------------------------------------- report


def _table(report: dict[str, Any]) -> Iterator[str]:
    ours, rq = report["ours"], report.get("rq")
    tp = ours["throughput"]["runs_per_s"]
    rq_tp = rq["throughput"]["runs_per_s"] if rq else None
    fl50, fl99 = pct(ours["first_line_ms"], 0.5), pct(ours["first_line_ms"], 0.99)
    ai50, ai99 = pct(ours["abort_idle_ms"], 0.5), pct(ours["abort_idle_ms"], 0.99)
    al50, al99 = pct(ours["abort_live_ms"], 0.5), pct(ours["abort_live_ms"], 0.99)
    big = ours["hold"][-1]

    def ok(good: bool) -> str:
        return "met" if good else "MISSED"

    yield f"# scale bench, {report['date']}, {report['machine']}, commit {report['commit']}"
    yield (
        f"# ours: fork server, kill mechanism {ours['kill_mechanism']}; "
        f"RQ {report.get('rq_version', '-')}: {rq['workers'] if rq else '-'} forking workers"
    )
    yield f"{'figure':<44}{'ours':>12}{'RQ':>12}{'ours/RQ':>9}  target"
    yield (
        f"{'runs/s, ' + str(ours['throughput']['runs']) + ' trivial runs':<44}{tp:>12.1f}"
        f"{rq_tp if rq_tp else float('nan'):>12.1f}{tp / rq_tp if rq_tp else float('nan'):>9.2f}"
        f"  >= {TARGET_RUNS_PER_S:g} ({ok(tp >= TARGET_RUNS_PER_S)}), >= {TARGET_VS_RQ:g}x RQ "
        f"({ok(bool(rq_tp) and tp >= TARGET_VS_RQ * rq_tp)})"
    )
    rq50 = pct(rq["first_line_ms"], 0.5) if rq else float("nan")
    rq99 = pct(rq["first_line_ms"], 0.99) if rq else float("nan")
    yield (
        f"{'submit -> first line p50 ms':<44}{fl50:>12.1f}{rq50:>12.1f}{fl50 / rq50:>9.2f}"
        f"  <= {TARGET_SPAWN_P50_MS:g} ({ok(fl50 <= TARGET_SPAWN_P50_MS)})"
    )
    yield f"{'submit -> first line p99 ms':<44}{fl99:>12.1f}{rq99:>12.1f}{fl99 / rq99:>9.2f}"
    for hold in ours["hold"]:
        n = hold["live"]
        yield (
            f"{f'PSS per idle run, {n} live (MB)':<44}{hold['pss_per_run_bytes'] / 1e6:>12.2f}"
            f"{'-':>12}{'':>9}"
        )
        yield (
            f"{f'PSS total, {n} live + daemon + fork server (GiB)':<44}"
            f"{hold['total_pss_bytes'] / GIB:>12.2f}{'-':>12}{'':>9}"
            + (
                f"  within 24 GiB ({ok(hold['total_pss_bytes'] <= TARGET_HOST_BYTES)})"
                if n == big["live"]
                else ""
            )
        )
        yield (
            f"{f'daemon CPU holding {n} live (% of a core)':<44}{hold['daemon_cpu_pct']:>12.2f}"
            f"{'-':>12}"
        )
        yield (
            f"#   {n} live: {hold['processes']} run processes, daemon {hold['daemon_fds']} fds, "
            f"fork server {hold['fork_server_fds']} fds, Redis {hold['redis_clients']} clients, "
            f"{hold['redis_used_memory_bytes'] / 1e6:.1f} MB, Redis CPU "
            f"{hold['redis_cpu_pct']:.2f} %, fork server CPU {hold['fork_server_cpu_pct']:.2f} %, "
            f"started in {hold['start_seconds']:.1f} s, host memory used "
            f"{hold['host_memory_used_bytes'] / GIB:.2f} GiB"
        )
    yield f"{'abort p50 ms, daemon idle':<44}{ai50:>12.1f}"
    yield f"{'abort p99 ms, daemon idle':<44}{ai99:>12.1f}"
    yield (
        f"{'abort p50 ms, among ' + str(big['live']) + ' live':<44}{al50:>12.1f}{'-':>12}"
        f"{'':>9}  <= 2x idle = {2 * ai50:.1f} ({ok(al50 <= TARGET_ABORT_VS_IDLE * ai50)})"
    )
    yield f"{'abort p99 ms, among ' + str(big['live']) + ' live':<44}{al99:>12.1f}"
    mass = ours["mass_abort"]
    yield (
        f"{'mass abort of ' + str(mass['runs']) + ': all gone (s)':<44}{mass['all_gone_seconds']:>12.2f}"
        f"  ({mass['processes']} processes, {mass['processes_left']} left; "
        f"records terminal at {mass['all_recorded_seconds']:.2f} s)"
    )
    cost = ours["cost_per_run"]
    yield ""
    yield (
        f"# per run: {cost['commands']:.1f} Redis commands, {cost['read_events']:.1f} read "
        f"events (~round trips), {cost['net_input_bytes']:.0f} B in, "
        f"{cost['net_output_bytes']:.0f} B out, Redis CPU {cost['redis_cpu_ms']:.3f} ms, "
        f"daemon CPU {cost['daemon_cpu_ms']:.2f} ms, fork server CPU "
        f"{cost['fork_server_cpu_ms']:.2f} ms, run process CPU "
        f"{cost.get('run_process_cpu_ms', float('nan')):.1f} ms"
    )
    node_ms = cost["daemon_cpu_ms"] + cost["fork_server_cpu_ms"] + cost.get("run_process_cpu_ms", 0)
    yield (
        f"# model check at the measured point: {tp:.1f} runs/s x {node_ms:.1f} ms of node CPU "
        f"per run = {tp * node_ms / 1000:.2f} of {os.cpu_count()} cores (the rest went to other "
        f"load: load average {report['load_avg_at_start'][0]:.1f} at start); Redis "
        f"{tp * cost['redis_cpu_ms'] / 10:.1f} % of a core; node CPU alone would allow "
        f"{(os.cpu_count() or 1) * 1000 / node_ms:.0f} runs/s, Redis CPU alone "
        f"{1000 / cost['redis_cpu_ms']:.0f} runs/s per core"
    )
    yield "# commands per run: " + ", ".join(
        f"{k} {v:.2f}" for k, v in list(cost["by_command"].items())[:14]
    )
    left = ours["keys_left_after_runs"]
    yield f"# keys left after {left['runs']} finished runs (kind: count, bytes each, TTL s):"
    for kind, entry in sorted(left["kinds"].items(), key=lambda kv: -kv[1]["bytes"]):
        yield (
            f"#   {kind:<52} {entry['type']:<7}{entry['count']:>6}"
            f"{entry['bytes'] / entry['count']:>9.0f}  {entry['ttl_s_min']}..{entry['ttl_s_max']}"
        )
    if "monitor" in ours:
        mon = ours["monitor"]
        yield (
            f"# MONITOR, {mon['runs']} runs one at a time: {mon['commands_per_run']:.1f} "
            f"commands per run ({mon['script_commands_per_run']:.1f} inside scripts), by key:"
        )
        for kind, count in mon["by_key_kind_per_run"].items():
            yield f"#   {kind:<60}{count:>7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="trivial runs for runs/s")
    parser.add_argument("--live", type=int, default=1000, help="idle live runs held")
    parser.add_argument("--live-small", type=int, default=100, help="the smaller live figure")
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--probes", type=int, default=20, help="single-abort probes each way")
    parser.add_argument("--hold-window-s", type=float, default=10.0)
    parser.add_argument("--mechanism", default="auto", choices=["auto", "cgroup", "pgroup"])
    parser.add_argument("--no-rq", action="store_true", help="measure ours only")
    parser.add_argument("--capacity", action="store_true", help="also MONITOR some runs")
    parser.add_argument("--monitor-runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--table", type=Path, help="print the table of a saved --json report")
    args = parser.parse_args()
    if args.table is not None:
        for line in _table(json.loads(args.table.read_text())):
            print(line)
        return
    args.live_small = min(args.live_small, args.live)

    has_rq = importlib.util.find_spec("rq") is not None and not args.no_rq
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GIB:.0f} GiB, "
        f"Linux {platform.release()}, Python {platform.python_version()}",
        "commit": commit + (" (+ uncommitted changes)" if dirty else ""),
        "load_avg_at_start": os.getloadavg(),
        "args": vars(args),
    }
    with tempfile.TemporaryDirectory(dir="/dev/shm") as stamps, RedisServer() as server:
        report["redis_version"] = redis.Redis.from_url(server.url).info("server")["redis_version"]
        report["ours"] = asyncio.run(_ours(args, server.url, Path(stamps)))
        if has_rq:
            import rq

            report["rq_version"] = rq.__version__
            report["rq"] = _rq(args, server.url, Path(stamps))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    for line in _table(report):
        print(line)


if __name__ == "__main__":
    main()
