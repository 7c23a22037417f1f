"""CLI latency benchmark: the wall time of one ``adk-supervisor`` call, as a person types it.

Starts a real daemon (example agents, private ``redis-server``), then times N
(default 20) whole-process calls each of ``adk-supervisor --help``, ``status``
and ``submit`` (through the local daemon's socket, as the README's quick start
does), and, as peers in the same run, a bare ``python -c pass`` (the
interpreter's floor) and ADK's own CLI, ``adk --help``.

    .venv/bin/python bench/cli_latency.py            # 20 calls each
    .venv/bin/python bench/cli_latency.py --runs 50 --json

The exit code is 0 whatever the numbers are: this is a benchmark, not a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running as a script puts bench/ (not the repository root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time

from supervisor.ops.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _time(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` calls of ``argv`` (each must exit 0)."""
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
        samples.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"{argv} exited {done.returncode}: {done.stderr}")
    return samples


def _summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "min_ms": round(ms[0], 1),
        "median_ms": round(statistics.median(ms), 1),
        "max_ms": round(ms[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="cli-bench-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ADK_SUPERVISOR_CONFIG": str(ROOT / "examples" / "config.toml"),
        "ADK_SUPERVISOR_STATE_DIR": str(state),
        "ADK_SUPERVISOR_LOG_LEVEL": "WARNING",
    }
    cli = [str(BIN / "adk-supervisor")]
    results: dict[str, dict[str, float]] = {}
    with RedisServer() as server:
        log = (state / "daemon.log").open("ab")
        daemon = subprocess.Popen(
            [*cli, "--redis-url", server.url, "run"],
            env={**env, "ADK_SUPERVISOR_LOG_LEVEL": "INFO"},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            while "ready:" not in (state / "daemon.log").read_text(errors="replace"):
                if daemon.poll() is not None:
                    raise SystemExit((state / "daemon.log").read_text())
                time.sleep(0.05)
            calls = {
                "python -c pass (floor)": [sys.executable, "-c", "pass"],
                "adk --help (ADK's CLI)": [str(BIN / "adk"), "--help"],
                "adk-supervisor --help": [*cli, "--help"],
                "adk-supervisor status": [*cli, "status"],
                "adk-supervisor submit": [*cli, "submit", "weather", "hi", "--user-id", "b"],
            }
            for name, argv in calls.items():
                results[name] = _summary(_time(argv, env, args.runs))
        finally:
            daemon.terminate()
            daemon.wait(30)
            shutil.rmtree(state, ignore_errors=True)
    floor = results["python -c pass (floor)"]["median_ms"]
    for figures in results.values():
        figures["x_floor"] = round(figures["median_ms"] / floor, 2)
    report = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
        "python": platform.python_version(),
        "runs": args.runs,
        "calls": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{report['when']} {report['machine']}, Python {report['python']}, {args.runs} calls each"
    )
    print(f"{'call':<28}{'min ms':>9}{'median ms':>11}{'max ms':>9}{'x floor':>9}")
    for name, f in results.items():
        print(
            f"{name:<28}{f['min_ms']:>9.1f}{f['median_ms']:>11.1f}{f['max_ms']:>9.1f}"
            f"{f['x_floor']:>9.2f}"
        )


if __name__ == "__main__":
    main()
