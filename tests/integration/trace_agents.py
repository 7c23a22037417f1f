"""Agents whose run process records its OpenTelemetry spans to a file (for the trace tests).

At import, in the run's process, with ``ADK_TEST_SPAN_FILE`` set: an SDK
TracerProvider whose SimpleSpanProcessor appends one JSON line per ended span
(name, trace and span ids, parent id, attributes). Simple, not batched: no
export thread, and every span is on disk when it ends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from examples.agents import weather_agent

__all__ = ["SPAN_FILE_ENV", "weather_agent"]

SPAN_FILE_ENV = "ADK_TEST_SPAN_FILE"


class _JsonLines(SpanExporter):
    def __init__(self, path: str) -> None:
        self._path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self._path, "a", encoding="utf-8") as out:
            for span in spans:
                context = span.get_span_context()
                assert context is not None
                line = {
                    "name": span.name,
                    "trace_id": f"{context.trace_id:032x}",
                    "span_id": f"{context.span_id:016x}",
                    "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                    "attributes": {k: str(v) for k, v in (span.attributes or {}).items()},
                }
                out.write(json.dumps(line) + "\n")
        return SpanExportResult.SUCCESS


if path := os.environ.get(SPAN_FILE_ENV):
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(_JsonLines(path)))
    trace.set_tracer_provider(_provider)
