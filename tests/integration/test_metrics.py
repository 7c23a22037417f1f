"""Prometheus metrics of a real daemon over real HTTP: they move as runs start, end, abort
and queue, and every panel of the Grafana dashboard queries a metric the daemon exports."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_runtime.task_store import TaskState
from supervisor.client import SupervisorClient

from .daemon_harness import ROOT, Daemon, until_state

pytestmark = pytest.mark.anyio

DASHBOARD = ROOT / "deploy" / "grafana" / "adk-supervisor.json"
APPS = {"weather": "examples.agents:weather_agent", "slow": "examples.agents:slow_agent"}

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _metrics_url(daemon: Daemon) -> str:
    assert daemon.logged("metrics at http://"), daemon.log()
    found = re.search(r"metrics at (http://\S+/metrics)", daemon.log())
    assert found, daemon.log()
    return found[1]


def _scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
    return sum(v for have, v in samples.get(name, []) if labels.items() <= have.items())


async def _until(url: str, check: Callable[[Samples], bool], timeout: float = 20) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = await anyio.to_thread.run_sync(_scrape, url)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never got there: {json.dumps(samples)[:4000]}")
        await anyio.sleep(0.1)


# ------------------------------------------------------------------ PromQL names

_FUNCTIONS_AND_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values``) reads."""
    if found := re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", expr):
        expr = found[1]
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    grouping = "|".join(_FUNCTIONS_AND_KEYWORDS)
    expr = re.sub(rf"\b({grouping})\s*\([^)]*\)", " ", expr)  # by (le, app), on (node)
    names = set()
    # Numbers and durations (0.95, 5m, 1e3) are one token each, never names.
    for match in re.finditer(r"\d[\w.]*|[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        word = match[0]
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or an aggregation
        if re.fullmatch(r"\d.*", word):
            continue
        names.add(word)
    return names


def test_metric_names_of_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, app) (rate(a_bucket{node=~"$node",x="y{z}"}'
        "[$__rate_interval]))) / on (node) b offset 5m + time() - c"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}
    assert metric_names('label_values(d{job=~"$job"}, node)') == {"d"}


def _dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        targets = [t["expr"] for t in panel.get("targets", [])]
        assert targets, f"panel {panel['title']!r} queries nothing"
        exprs += [(panel["title"], e) for e in targets]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append((f"variable {variable['name']}", variable["query"]["query"]))
    return exprs


# ------------------------------------------------------------------ the test


async def test_metrics_move_with_runs_aborts_and_the_queue_and_feed_every_dashboard_panel(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon(
        ADK_SUPERVISOR_METRICS_LISTEN="127.0.0.1:0",
        ADK_SUPERVISOR_METRICS_POLL_INTERVAL_S="0.2",
        ADK_SUPERVISOR_MAX_CONCURRENT_RUNS="1",
        ADK_SUPERVISOR_APPS=json.dumps(APPS),
    )
    url = _metrics_url(daemon)
    node = {"node": daemon.node_id}
    first = await anyio.to_thread.run_sync(_scrape, url)
    assert value(first, "adk_supervisor_runs_started_total") == 0
    assert value(first, "adk_supervisor_redis_up", **node) == 1
    assert value(first, "adk_supervisor_run_slots", **node) == 1
    assert value(first, "adk_supervisor_orphans_total", by="reconcile", outcome="failed") == 0
    assert value(first, "adk_supervisor_node_info", **node, spawner="fork-server") == 1

    # A run to its end.
    done = await client.submit("weather", "weather in Paris?", user_id="u")
    await until_state(client, done, "completed")
    # The end is counted when it is recorded, the run leaves the live gauge just after.
    after_run = await _until(
        url,
        lambda s: (
            value(s, "adk_supervisor_runs_ended_total", app="weather") == 1
            and value(s, "adk_supervisor_live_runs", app="weather") == 0
        ),
    )
    assert value(after_run, "adk_supervisor_runs_started_total", **node, app="weather") == 1
    assert (
        value(after_run, "adk_supervisor_runs_ended_total", app="weather", state="completed") == 1
    )
    assert value(after_run, "adk_supervisor_spawn_latency_seconds_count", app="weather") == 1
    assert 0 < value(after_run, "adk_supervisor_spawn_latency_seconds_sum", app="weather") < 30
    duration = {"app": "weather", "state": "completed"}
    assert value(after_run, "adk_supervisor_run_duration_seconds_count", **duration) == 1
    assert value(after_run, "adk_supervisor_live_runs", app="weather") == 0

    # A live run holds the only slot: the next one queues, and its age grows.
    slow = await client.submit("slow", "weather in Oslo?", user_id="u")
    await until_state(client, slow, "running")
    queued = await client.submit("weather", "weather in Rome?", user_id="u2")
    live = await _until(
        url,
        lambda s: (
            value(s, "adk_supervisor_live_runs", app="slow") == 1
            and value(s, "adk_supervisor_queued_runs") == 1
            and value(s, "adk_supervisor_queue_oldest_age_seconds") > 0.3
            and value(s, "adk_supervisor_live_runs_rss_bytes", app="slow") > 10_000_000
        ),
    )
    assert value(live, "adk_supervisor_queue_oldest_age_seconds") < 30
    assert value(live, "adk_supervisor_live_runs_cpu_cores", app="slow") >= 0

    # An abort: its latency and the tree's end are measured; the queued run then runs.
    await client.abort(slow, "operator stop")
    await until_state(client, slow, "aborted")
    await until_state(client, queued, "completed")
    end = await _until(
        url,
        lambda s: (
            value(s, "adk_supervisor_queued_runs") == 0
            and value(s, "adk_supervisor_runs_ended_total", app="weather") == 2
        ),
    )
    assert value(end, "adk_supervisor_abort_kill_latency_seconds_count", **node) == 1
    assert value(end, "adk_supervisor_abort_kill_latency_seconds_sum") < 0.5
    assert value(end, "adk_supervisor_kill_tree_gone_seconds_count", state="aborted") == 1
    assert value(end, "adk_supervisor_runs_ended_total", app="slow", state="aborted") == 1
    assert value(end, "adk_supervisor_run_duration_seconds_count", app="slow", state="aborted") == 1
    assert value(end, "adk_supervisor_live_runs") == 0
    assert value(end, "adk_supervisor_live_runs_rss_bytes", app="slow") == 0
    assert value(end, "adk_supervisor_outbox_depth", **node) == 0
    assert value(end, "adk_supervisor_fork_server_restarts_total", **node) == 0

    # An entry admission refuses (anyone can XADD).
    await client.store.client.xadd(client.store.keys.runs, {"task_id": "no-app"})
    await _until(url, lambda s: value(s, "adk_supervisor_runs_rejected_total", **node) == 1)

    # Every series names this node; no task id is a label.
    samples = await anyio.to_thread.run_sync(_scrape, url)
    for name, series in samples.items():
        if name.startswith("adk_supervisor_"):
            for labels, _ in series:
                assert labels.get("node") == daemon.node_id, (name, labels)
                assert slow not in labels.values() and queued not in labels.values()

    # The dashboard reads only what the daemon exports.
    exported = set(samples)
    missing = {
        f"{title}: {name}"
        for title, expr in _dashboard_exprs()
        for name in metric_names(expr)
        if name not in exported
    }
    assert not missing, f"dashboard queries metrics /metrics does not have: {sorted(missing)}"


async def test_a_port_in_use_leaves_the_daemon_running_without_metrics(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    first = start_daemon(ADK_SUPERVISOR_METRICS_LISTEN="127.0.0.1:0")
    port = _metrics_url(first).split(":")[2].split("/")[0]
    second = start_daemon(ADK_SUPERVISOR_METRICS_LISTEN=f"127.0.0.1:{port}")
    assert second.logged("metrics: cannot listen on 127.0.0.1:"), second.log()
    task_id = await client.submit("examples.agents:weather_agent", "hi", user_id="u")
    await until_state(client, task_id, TaskState.COMPLETED.value)


def test_the_prometheus_example_scrapes_the_documented_default(tmp_path: Path) -> None:
    text = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    assert "job_name: adk-supervisor" in text and "metrics_path: /metrics" in text
    assert "127.0.0.1:9464" in text
