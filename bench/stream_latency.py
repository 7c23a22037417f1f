"""Stream-latency benchmark: a supervised run's live output versus ADK's own api_server.

One scripted streaming agent (``bench/_stream_agent.py``: each chunk's text is the
``time.monotonic_ns()`` at which the model yielded it) is served, in the same run,
by a real supervisor daemon on a private ``redis-server`` (read with
``SupervisorClient.events``, as a bot would) and by ADK's own api_server
(``get_fast_api_app`` under uvicorn in a subprocess, in-memory sessions, read with
a streaming ``POST /run_sse``). For each side, N times each:

* submit -> the first model chunk at the client;
* per-chunk latency, from the model yielding a chunk to the client holding it, at
  two rates: dense (1,000 chunks ~2 ms apart: the supervisor's child coalesces
  partial text to one entry per 50 ms by design, so this shows that cost) and
  sparse (200 chunks 60 ms apart: no coalescing, the transport's own cost);
* stop: an abort from another connection while the run streams -> the ``killing``
  entry seen by the following reader, -> the reader's stream ended (the terminal
  entry), -> the run's process gone (its pidfd). ADK's server cannot stop a run
  from another connection at all; what it has, measured instead, is the client
  hanging up -> the model's generator cancelled inside the server.

    .venv/bin/python bench/stream_latency.py              # 5 runs of each
    .venv/bin/python bench/stream_latency.py --runs 3 --json

The exit code is 0 whatever the numbers are: this is a benchmark, not a test.
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
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import redis.asyncio as aioredis

from supervisor.client import SupervisorClient
from supervisor.ops.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
APP = "stream_bench"
STAMP_DIR_ENV = "ADK_BENCH_STAMP_DIR"  # as bench/_stream_agent.py reads it

# ADK's api_server as `adk api_server` builds it, minus the on-disk services.
_ADK_SERVER = """
import sys, uvicorn
from google.adk.cli.fast_api import get_fast_api_app
app = get_fast_api_app(agents_dir=sys.argv[1], web=False, session_service_uri="memory://",
                       artifact_service_uri="memory://", memory_service_uri="memory://",
                       use_local_storage=False)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


@dataclass
class StreamSample:
    """One streamed run: submit -> first chunk yielded and received, every chunk's latency (ms)."""

    first_yield_ms: float
    first_chunk_ms: float
    chunk_ms: list[float]
    chunks: int


@dataclass
class StopSample:
    """One stop: milliseconds from the abort call to each thing a client can see."""

    killing_ms: float | None = None
    stream_ended_ms: float | None = None
    tree_gone_ms: float | None = None
    state: str = ""


@dataclass
class Results:
    """Every sample of one benchmark run, by side and figure."""

    stream: dict[str, dict[str, list[StreamSample]]] = field(default_factory=dict)
    stops: list[StopSample] = field(default_factory=list)
    adk_disconnect_ms: list[float | None] = field(default_factory=list)
    floor_killing_ms: list[float] = field(default_factory=list)


def _ms_since(t0_ns: int, t1_ns: int | None = None) -> float:
    return ((time.monotonic_ns() if t1_ns is None else t1_ns) - t0_ns) / 1e6


def _script(chunks: int, delay_ms: float, tag: str = "") -> str:
    return f"chunks={chunks} delay_ms={delay_ms:g} tag={tag or uuid.uuid4().hex}"


def _stamps(data: dict[str, Any]) -> Iterator[int]:
    """The yield times carried by a partial model event's text."""
    if not data.get("partial") or data.get("author") == "user":
        return
    for part in (data.get("content") or {}).get("parts") or ():
        for word in str(part.get("text") or "").split():
            if word.isdigit():
                yield int(word)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the supervisor ---------------------------------------------------------------


def _start_daemon(
    url: str, prefix: str, state: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    log = (state / "daemon.log").open("ab")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--redis-url", url, "run"],
        env={
            **env,
            "ADK_SUPERVISOR_KEY_PREFIX": prefix,
            "ADK_SUPERVISOR_NODE_ID": f"bench-{uuid.uuid4().hex[:6]}",
            "ADK_SUPERVISOR_STATE_DIR": str(state),
            # A configured app: the fork server preloads it, as a deployment would.
            "ADK_SUPERVISOR_APPS": json.dumps({APP: "_stream_agent:root_agent"}),
        },
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while "ready:" not in (state / "daemon.log").read_text(errors="replace"):
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"daemon not ready: {(state / 'daemon.log').read_text()}")
        time.sleep(0.05)
    return daemon


async def _supervisor_stream(
    client: SupervisorClient, chunks: int, delay_ms: float
) -> StreamSample:
    t0 = time.monotonic_ns()
    handle = await client.start(APP, _script(chunks, delay_ms), user_id="bench", streaming=True)
    first: float | None = None
    first_yield = 0.0
    latencies: list[float] = []
    async for entry in client.events(handle.task_id):
        now = time.monotonic_ns()
        if entry.type != "event":
            continue
        stamps = list(_stamps(entry.data))
        if stamps and first is None:
            first, first_yield = _ms_since(t0, now), _ms_since(t0, stamps[0])
        latencies.extend((now - s) / 1e6 for s in stamps)
    record = await client.get(handle.task_id)
    if record.get("state") != "completed" or first is None:
        raise SystemExit(f"supervised run {handle.task_id} did not stream: {record}")
    return StreamSample(first_yield, first, latencies, len(latencies))


async def _pid_gone(pid: int) -> None:
    """Returns once ``pid`` has exited (its pidfd turns readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await anyio.wait_readable(fd)
    finally:
        os.close(fd)


async def _supervisor_stop(client: SupervisorClient, aborter: SupervisorClient) -> StopSample:
    """Streams a long run, and once it is flowing, aborts it from another connection."""
    handle = await client.start(APP, _script(100_000, 20), user_id="bench", streaming=True)
    sample = StopSample()
    flowing = anyio.Event()
    t0 = 0

    async def read() -> None:
        seen = 0
        async for entry in client.events(handle.task_id):
            now = time.monotonic_ns()
            if entry.type == "event":
                seen += len(list(_stamps(entry.data)))
                if seen >= 5:
                    flowing.set()
            elif entry.data.get("state") == "killing" and t0:
                sample.killing_ms = _ms_since(t0, now)
        if t0:
            sample.stream_ended_ms = _ms_since(t0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        with anyio.fail_after(30):
            await flowing.wait()
        pid = int((await client.get(handle.task_id))["pid"])
        # Opened before the abort: the pid cannot be reused under the measurement.
        fd = os.pidfd_open(pid)
        try:
            t0 = time.monotonic_ns()
            await aborter.abort(handle.task_id, "bench stop")
            with anyio.fail_after(10):
                await anyio.wait_readable(fd)
            sample.tree_gone_ms = _ms_since(t0)
        finally:
            os.close(fd)
    sample.state = (await client.wait(handle.task_id, 30))["state"]
    return sample


# The floor of "PUBLISH abort -> killing seen": a bare process that XADDs an entry to
# a stream whenever a message arrives on a channel, nothing else. The same two
# process wake-ups and Redis round trips as the daemon's path, with no daemon.
_FLOOR_NOTER = """
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
p = r.pubsub()
p.subscribe(sys.argv[2])
p.get_message(timeout=5)  # the subscribe confirmation
print("ready", flush=True)
for message in p.listen():
    if message["type"] == "message":
        r.xadd(sys.argv[3], {"type": "state", "data": "{}"})
"""


async def _floor_publish_to_entry(url: str, prefix: str, samples: int) -> list[float]:
    """PUBLISH -> an entry seen by a following reader, written by a bare subscriber."""
    channel, stream = f"{prefix}floor:abort", f"{prefix}floor:events"
    noter = subprocess.Popen(
        [sys.executable, "-c", _FLOOR_NOTER, url, channel, stream],
        stdout=subprocess.PIPE,
        text=True,
    )
    client = aioredis.Redis.from_url(url)
    reader = aioredis.Redis.from_url(url)
    out: list[float] = []
    try:
        assert noter.stdout is not None
        await anyio.to_thread.run_sync(noter.stdout.readline)
        last = "0-0"
        for _ in range(samples):
            t0 = 0
            seen = 0

            async def follow() -> None:
                nonlocal last, seen
                reply: Any = await reader.xread({stream: last}, block=5000)
                seen = time.monotonic_ns()
                last = reply[0][1][-1][0].decode()

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await anyio.sleep(0.02)  # the reader is blocked in XREAD by now
                t0 = time.monotonic_ns()
                await client.publish(channel, "{}")
            out.append(_ms_since(t0, seen))
            await anyio.sleep(0.05)
    finally:
        noter.kill()
        noter.wait()
        await client.aclose()
        await reader.aclose()
    return out


# --- ADK's api_server -------------------------------------------------------------


def _start_adk_server(
    agents_dir: Path, port: int, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [sys.executable, "-c", _ADK_SERVER, str(agents_dir), str(port)],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"ADK's api_server exited: {log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/list-apps", timeout=1).status_code == 200:
                return server
        time.sleep(0.1)
    raise SystemExit(f"ADK's api_server not up after 60 s: {log.read_text()}")


async def _adk_session(http: httpx.AsyncClient) -> str:
    session = uuid.uuid4().hex
    reply = await http.post(f"/apps/{APP}/users/bench/sessions", json={"session_id": session})
    reply.raise_for_status()
    return session


def _run_sse_body(session: str, text: str) -> dict[str, Any]:
    return {
        "appName": APP,
        "userId": "bench",
        "sessionId": session,
        "newMessage": {"role": "user", "parts": [{"text": text}]},
        "streaming": True,
    }


async def _adk_stream(http: httpx.AsyncClient, chunks: int, delay_ms: float) -> StreamSample:
    # ADK's flow: the session first (not timed), then the run.
    session = await _adk_session(http)
    first: float | None = None
    first_yield = 0.0
    latencies: list[float] = []
    t0 = time.monotonic_ns()
    async with http.stream(
        "POST", "/run_sse", json=_run_sse_body(session, _script(chunks, delay_ms))
    ) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            now = time.monotonic_ns()
            if not line.startswith("data:"):
                continue
            stamps = list(_stamps(json.loads(line[5:])))
            if stamps and first is None:
                first, first_yield = _ms_since(t0, now), _ms_since(t0, stamps[0])
            latencies.extend((now - s) / 1e6 for s in stamps)
    if first is None:
        raise SystemExit("ADK's api_server did not stream")
    return StreamSample(first_yield, first, latencies, len(latencies))


async def _adk_disconnect(http: httpx.AsyncClient, stamps: Path) -> float | None:
    """Hangs up on a streaming run; ms until the model's generator was cancelled."""
    session = await _adk_session(http)
    tag = uuid.uuid4().hex
    seen = 0
    async with http.stream(
        "POST", "/run_sse", json=_run_sse_body(session, _script(100_000, 20, tag))
    ) as reply:
        async for line in reply.aiter_lines():
            if line.startswith("data:"):
                seen += len(list(_stamps(json.loads(line[5:]))))
                if seen >= 5:
                    break
        t0 = time.monotonic_ns()
    stopped = stamps / f"{tag}.stopped"
    deadline = time.monotonic() + 5
    while not stopped.exists():
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)  # written, not just created
    return _ms_since(t0, int(stopped.read_text()))


# --- the run ----------------------------------------------------------------------


async def _measure(
    url: str, prefix: str, port: int, stamps: Path, args: argparse.Namespace
) -> Results:
    rates = {
        "dense": (args.dense_chunks, args.dense_delay_ms),
        "sparse": (args.sparse_chunks, args.sparse_delay_ms),
    }
    results = Results({rate: {"supervisor": [], "adk": []} for rate in rates})
    async with (
        SupervisorClient(url, prefix) as client,
        SupervisorClient(url, prefix) as aborter,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http,
    ):
        # Warm both sides (imports, first session, connection pools); not counted.
        await _supervisor_stream(client, 20, 5)
        await _adk_stream(http, 20, 5)
        # The daemon imports ADK on its first seal of a killed run's session, in a
        # worker thread; aborts in that second wait for the GIL. A daemon that has
        # been up a while has done it: let this one do it before the figures.
        await _supervisor_stop(client, aborter)
        await _adk_disconnect(http, stamps)
        await anyio.sleep(5)
        for i in range(args.runs):
            for rate, (chunks, delay) in rates.items():
                # Alternate who goes first, so a slow spell of the machine hits both.
                sides = ["supervisor", "adk"] if i % 2 == 0 else ["adk", "supervisor"]
                for side in sides:
                    if side == "supervisor":
                        sample = await _supervisor_stream(client, chunks, delay)
                    else:
                        sample = await _adk_stream(http, chunks, delay)
                    results.stream[rate][side].append(sample)
                    print(f"# run {i + 1} {rate} {side}: {sample.chunks} chunks", file=sys.stderr)
        for _ in range(args.stops):
            results.stops.append(await _supervisor_stop(client, aborter))
            results.adk_disconnect_ms.append(await _adk_disconnect(http, stamps))
        results.floor_killing_ms = await _floor_publish_to_entry(url, prefix, args.stops)
    return results


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p99": p99, "max": ordered[-1], "n": len(ordered)}


def _report(results: Results, args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        "load_average_at_end": os.getloadavg(),
        "runs": args.runs,
        "stops": args.stops,
        "rates": {
            "dense": {"chunks": args.dense_chunks, "delay_ms": args.dense_delay_ms},
            "sparse": {"chunks": args.sparse_chunks, "delay_ms": args.sparse_delay_ms},
        },
    }
    first_chunk = {
        side: _stats([s.first_chunk_ms for rate in results.stream.values() for s in rate[side]])
        for side in ("supervisor", "adk")
    }
    report["submit_to_first_chunk_ms"] = first_chunk
    report["submit_to_first_chunk_yielded_ms"] = {
        side: _stats([s.first_yield_ms for rate in results.stream.values() for s in rate[side]])
        for side in ("supervisor", "adk")
    }
    for rate, sides in results.stream.items():
        by_side = {
            side: _stats([ms for s in samples for ms in s.chunk_ms])
            for side, samples in sides.items()
        }
        sup, adk = by_side["supervisor"], by_side["adk"]
        expected = (args.dense_chunks if rate == "dense" else args.sparse_chunks) * args.runs
        report[f"chunk_latency_{rate}_ms"] = {
            **by_side,
            "added_p50": sup["p50"] - adk["p50"] if sup and adk else None,
            "added_p99": sup["p99"] - adk["p99"] if sup and adk else None,
            "chunks_lost": {side: expected - (s["n"] if s else 0) for side, s in by_side.items()},
        }
    stops = results.stops
    report["supervisor_stop_ms"] = {
        "abort_to_killing_seen": _stats([s.killing_ms for s in stops if s.killing_ms is not None]),
        "abort_to_stream_ended": _stats(
            [s.stream_ended_ms for s in stops if s.stream_ended_ms is not None]
        ),
        "abort_to_tree_gone": _stats([s.tree_gone_ms for s in stops if s.tree_gone_ms is not None]),
        "killing_never_seen": sum(s.killing_ms is None for s in stops),
        "not_aborted": sum(s.state != "aborted" for s in stops),
    }
    report["adk_disconnect_to_model_cancelled_ms"] = _stats(
        [ms for ms in results.adk_disconnect_ms if ms is not None]
    )
    report["floor_publish_to_entry_seen_ms"] = _stats(results.floor_killing_ms)
    report["adk_model_never_cancelled"] = sum(ms is None for ms in results.adk_disconnect_ms)
    return report


def _print(report: dict[str, Any]) -> None:
    def cells(s: dict[str, float] | None) -> str:
        return f"{s['p50']:>9.2f}{s['p99']:>9.2f}" if s else f"{'-':>9}{'-':>9}"

    rates = report["rates"]
    print(f"# stream latency, {report['date']}, {report['host']}, {report['machine']}")
    load = " ".join(f"{x:.2f}" for x in report["load_average_at_end"])
    print(f"# load average at the end: {load} (other work on the machine shows in every figure)")
    print(
        f"# {report['runs']} runs of each rate per side, {report['stops']} stops; "
        f"dense = {rates['dense']['chunks']} chunks {rates['dense']['delay_ms']:g} ms apart, "
        f"sparse = {rates['sparse']['chunks']} chunks {rates['sparse']['delay_ms']:g} ms apart"
    )
    print(f"{'figure (ms)':<44}{'supervisor':>18}{'ADK api_server':>18}{'added':>18}")
    print(f"{'':<44}{'p50':>9}{'p99':>9}{'p50':>9}{'p99':>9}{'p50':>9}{'p99':>9}")
    first = report["submit_to_first_chunk_ms"]
    sup, adk = first["supervisor"], first["adk"]
    print(f"{'submit -> first chunk at the client':<44}{cells(sup)}{cells(adk)}", end="")
    print(f"{sup['p50'] - adk['p50']:>9.2f}{sup['p99'] - adk['p99']:>9.2f}")
    yielded = report["submit_to_first_chunk_yielded_ms"]
    sup, adk = yielded["supervisor"], yielded["adk"]
    print(f"{'  of which submit -> model yields it':<44}{cells(sup)}{cells(adk)}", end="")
    print(f"{sup['p50'] - adk['p50']:>9.2f}{sup['p99'] - adk['p99']:>9.2f}")
    for rate in ("dense", "sparse"):
        row = report[f"chunk_latency_{rate}_ms"]
        print(
            f"{'chunk yielded -> at the client, ' + rate:<44}{cells(row['supervisor'])}{cells(row['adk'])}",
            end="",
        )
        print(f"{row['added_p50']:>9.2f}{row['added_p99']:>9.2f}")
    stop = report["supervisor_stop_ms"]
    print(
        f"{'abort (other connection) -> killing seen':<44}{cells(stop['abort_to_killing_seen'])}{'cannot':>18}"
    )
    floor = report["floor_publish_to_entry_seen_ms"]
    print(f"{'  floor: bare subscriber XADDs, reader sees':<44}{cells(floor)}")
    print(
        f"{'abort -> client stream ended':<44}{cells(stop['abort_to_stream_ended'])}{'cannot':>18}"
    )
    print(f"{'abort -> run process gone':<44}{cells(stop['abort_to_tree_gone'])}{'cannot':>18}")
    disconnect = report["adk_disconnect_to_model_cancelled_ms"]
    print(f"{'client hangs up -> model cancelled':<44}{'-':>9}{'-':>9}{cells(disconnect)}")
    lost = {rate: report[f"chunk_latency_{rate}_ms"]["chunks_lost"] for rate in ("dense", "sparse")}
    print(
        f"# chunks lost {lost}; killing never seen {stop['killing_never_seen']}, "
        f"stops not ending aborted {stop['not_aborted']}, "
        f"ADK model never cancelled {report['adk_model_never_cancelled']}"
    )
    sparse = report["chunk_latency_sparse_ms"]["added_p50"]
    dense = report["chunk_latency_dense_ms"]["added_p50"]
    ended = stop["abort_to_stream_ended"]
    killing = stop["abort_to_killing_seen"]
    targets = [
        ("added chunk latency p50 <= 2 ms, sparse", sparse <= 2, f"{sparse:.2f} ms"),
        (
            "added chunk latency p50 <= 2 ms, dense",
            dense <= 2,
            f"{dense:.2f} ms (partial text coalesced to one entry per 50 ms by design)",
        ),
        (
            "abort -> stream ended p50 <= 15 ms",
            bool(ended) and ended["p50"] <= 15,
            f"{ended['p50']:.2f} ms" if ended else "never",
        ),
        (
            "abort -> killing seen p50 <= 1 ms",
            bool(killing) and killing["p50"] <= 1,
            f"{killing['p50']:.2f} ms" if killing else "never",
        ),
    ]
    for name, ok, value in targets:
        print(f"{'ok    ' if ok else 'MISSED'} {name}: {value}")
    ratios = [
        ("first chunk, supervisor / ADK p50", first["supervisor"]["p50"] / first["adk"]["p50"]),
        (
            "sparse chunk latency, supervisor / ADK p50",
            report["chunk_latency_sparse_ms"]["supervisor"]["p50"]
            / report["chunk_latency_sparse_ms"]["adk"]["p50"],
        ),
        (
            "dense chunk latency, supervisor / ADK p50",
            report["chunk_latency_dense_ms"]["supervisor"]["p50"]
            / report["chunk_latency_dense_ms"]["adk"]["p50"],
        ),
    ]
    for name, ratio in ratios:
        print(f"ratio {name}: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="streamed runs per rate and side")
    parser.add_argument("--stops", type=int, default=20, help="stops per side")
    parser.add_argument("--dense-chunks", type=int, default=1000)
    parser.add_argument("--dense-delay-ms", type=float, default=2)
    parser.add_argument("--sparse-chunks", type=int, default=200)
    parser.add_argument("--sparse-delay-ms", type=float, default=60)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    stamps = work / "stamps"
    stamps.mkdir()
    agents = work / "agents" / APP
    agents.mkdir(parents=True)
    (agents / "__init__.py").write_text("from _stream_agent import root_agent  # noqa: F401\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}", STAMP_DIR_ENV: str(stamps)}
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    port = _free_port()
    print(f"# logs: {work}", file=sys.stderr)
    try:
        with RedisServer() as server:
            daemon = _start_daemon(server.url, prefix, work, env)
            adk = _start_adk_server(work / "agents", port, env, work / "adk_server.log")
            try:
                results = asyncio.run(_measure(server.url, prefix, port, stamps, args))
            finally:
                for proc in (adk, daemon):
                    proc.terminate()
                    proc.wait(30)
    finally:
        shutil.rmtree(stamps, ignore_errors=True)
    report = _report(results, args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)


if __name__ == "__main__":
    main()
