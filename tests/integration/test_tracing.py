"""Trace context from submit to the run: a W3C traceparent given by the client, the CLI or
the status socket becomes the parent of the run's spans, ADK's own among them."""

from __future__ import annotations

import http.server
import json
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.task_store import TaskState
from agent_runtime.trace_context import SPAN_NAME, TASK_ATTRIBUTE
from supervisor.client import SupervisorClient

from .daemon_harness import Daemon, until_state
from .trace_agents import SPAN_FILE_ENV

pytestmark = pytest.mark.anyio

AGENT = "tests.integration.trace_agents:weather_agent"


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent_id}-01", trace_id, parent_id


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _check_run_spans(
    spans: list[dict[str, Any]], task_id: str, trace_id: str, parent: str | None
) -> None:
    runs = [
        s
        for s in spans
        if s["name"] == SPAN_NAME and s["attributes"].get(TASK_ATTRIBUTE) == task_id
    ]
    assert len(runs) == 1, spans
    (run,) = runs
    assert run["trace_id"] == trace_id and run["parent_id"] == parent, run
    # ADK's own spans of the run (its invocation, agent, LLM call and tool spans) hang
    # below the run's span, in the caller's trace.
    in_trace = [s for s in spans if s["trace_id"] == trace_id]
    children = {s["span_id"]: s for s in in_trace}
    adk = [s for s in in_trace if s["name"] != SPAN_NAME]
    assert len(adk) >= 3, [s["name"] for s in in_trace]
    assert any(s["name"].startswith("execute_tool") for s in adk), [s["name"] for s in adk]
    for span in adk:  # every ADK span descends from the run's span
        seen = span
        while seen["parent_id"] in children and seen["span_id"] != run["span_id"]:
            seen = children[seen["parent_id"]]
        assert seen["span_id"] == run["span_id"], (span, run)


async def test_a_traceparent_given_at_submit_parents_adks_spans_of_the_run(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, tmp_path: Path
) -> None:
    span_file = tmp_path / "spans.jsonl"
    daemon = start_daemon(**{SPAN_FILE_ENV: str(span_file)})

    # The client.
    traceparent, trace_id, parent = _traceparent()
    handle = await client.start(AGENT, "weather in Paris?", user_id="u", traceparent=traceparent)
    record = await until_state(client, handle.task_id, "completed")
    assert record["traceparent"] == traceparent
    _check_run_spans(_spans(span_file), handle.task_id, trace_id, parent)

    # The CLI, through the daemon's status socket.
    traceparent, trace_id, parent = _traceparent()
    done = daemon.cli(
        "submit", AGENT, "weather in Oslo?", "--user-id", "u", "--traceparent", traceparent
    )
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    await until_state(client, task_id, "completed")
    _check_run_spans(_spans(span_file), task_id, trace_id, parent)

    # No traceparent: the run's span starts a trace of its own, ADK's spans still below it.
    task_id = await client.submit(AGENT, "weather in Rome?", user_id="u")
    await until_state(client, task_id, "completed")
    (own,) = [s for s in _spans(span_file) if s["attributes"].get(TASK_ATTRIBUTE) == task_id]
    assert own["parent_id"] is None
    _check_run_spans(_spans(span_file), task_id, own["trace_id"], None)


async def test_a_malformed_traceparent_is_refused_with_its_reason(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon()
    bad = "00-" + "0" * 32 + "-" + "1" * 16 + "-01"
    with pytest.raises(ValueError, match="trace id is all zeros"):
        await client.submit(AGENT, "hi", user_id="u", traceparent=bad)
    done = daemon.cli("submit", AGENT, "hi", "--user-id", "u", "--traceparent", "nope")
    assert done.returncode != 0 and "is not a W3C traceparent" in done.stderr, done

    # An entry written straight to the stream (anyone who can XADD): failed, with the reason.
    store = client.store
    await store.create("bad-trace", TaskState.QUEUED, {"app": AGENT, "user_id": "u"})
    await store.client.xadd(
        store.keys.runs,
        {
            "task_id": "bad-trace",
            "app": AGENT,
            "user_id": "u",
            "message": "hi",
            "traceparent": "x" * 5000,
        },
    )
    record = await until_state(client, "bad-trace", "failed")
    assert record["reason"].startswith("bad request: traceparent 'xxx"), record
    assert len(record["reason"]) < 300, record["reason"]


class _Collector:
    """An OTLP/HTTP trace receiver on loopback: every span POSTed to /v1/traces, decoded."""

    def __init__(self) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http import trace_exporter  # noqa: F401
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
            )
        except ImportError as exc:
            pytest.fail(
                f"the OTLP exporter is not installed ({exc}): install the dev extra "
                "(make .venv/.installed, or pip install -e '.[dev]')",
                pytrace=False,
            )

        self.spans: list[dict[str, Any]] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest.FromString(body)
                    for resource in request.resource_spans:
                        service = {
                            a.key: a.value.string_value for a in resource.resource.attributes
                        }.get("service.name")
                        for scope in resource.scope_spans:
                            for span in scope.spans:
                                collector.spans.append(
                                    {
                                        "name": span.name,
                                        "service": service,
                                        "trace_id": span.trace_id.hex(),
                                        "span_id": span.span_id.hex(),
                                        "parent_id": span.parent_span_id.hex() or None,
                                        "attributes": {
                                            a.key: a.value.string_value for a in span.attributes
                                        },
                                    }
                                )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


async def test_runs_export_their_spans_over_otlp_from_the_standard_variables(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    collector = _Collector()
    try:
        start_daemon(OTEL_EXPORTER_OTLP_ENDPOINT=collector.url, OTEL_SERVICE_NAME="adk-runs")
        traceparent, trace_id, parent = _traceparent()
        handle = await client.start(
            "examples.agents:weather_agent",
            "weather in Paris?",
            user_id="u",
            traceparent=traceparent,
        )
        await until_state(client, handle.task_id, "completed")
        # Flushed before the run's process exited: all there once the run is recorded.
        _check_run_spans(collector.spans, handle.task_id, trace_id, parent)
        assert {s["service"] for s in collector.spans} == {"adk-runs"}
    finally:
        collector.server.shutdown()
