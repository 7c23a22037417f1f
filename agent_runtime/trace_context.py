"""W3C trace context of a run: the ``traceparent`` a submitter gives, checked, and the run's span.

A ``traceparent`` (``00-<trace id>-<parent span id>-<flags>``) given at submit
travels in the stream entry and the run's spec to the child, where
:func:`run_span` makes it the parent of an ``adk-supervisor.run`` span (with
the ``adk_supervisor.task_id`` attribute) around the ADK invocation: ADK's own
spans then join the caller's trace. The child exports nothing unless an
OpenTelemetry SDK is configured: by the app, or by the standard
``OTEL_EXPORTER_OTLP_*ENDPOINT`` variables (:func:`configure_from_env`, with
the ``otel`` extra installed).

The format check imports nothing: the client, the daemon and the CLI use it
without loading OpenTelemetry. The span helpers import ``opentelemetry-api``
(a dependency of ADK) only in the child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from typing import Final

__all__ = [
    "SPAN_NAME",
    "TASK_ATTRIBUTE",
    "check_traceparent",
    "configure_from_env",
    "flush_spans",
    "run_span",
]

SPAN_NAME: Final = "adk-supervisor.run"
"""The span the child opens around a run's ADK invocation."""
TASK_ATTRIBUTE: Final = "adk_supervisor.task_id"
"""The attribute of :data:`SPAN_NAME` that holds the run's task id."""

_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-[^\s]*)?"
)
_MAX_TRACEPARENT = 512  # a version-00 header is 55 characters; later versions may add fields
_FLUSH_MS = 5000
_OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

log = logging.getLogger(__name__)


def check_traceparent(value: str) -> str:
    """``value`` if it is a valid W3C ``traceparent``; ValueError says what is wrong.

    Per the W3C Trace Context spec: lowercase hex; version ``ff`` is invalid;
    version ``00`` has exactly four fields; the trace id and the parent id are
    not all zeros.
    """
    shown = repr(value[:80]) + ("..." if len(value) > 80 else "")
    match = _TRACEPARENT.fullmatch(value) if len(value) <= _MAX_TRACEPARENT else None
    if match is None:
        raise ValueError(
            f"traceparent {shown} is not a W3C traceparent "
            "('00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>', lowercase)"
        )
    if match["version"] == "ff":
        raise ValueError(f"traceparent {shown}: version ff is invalid")
    if match["version"] == "00" and match["rest"]:
        raise ValueError(f"traceparent {shown}: version 00 has exactly four fields")
    if set(match["trace"]) == {"0"}:
        raise ValueError(f"traceparent {shown}: the trace id is all zeros")
    if set(match["parent"]) == {"0"}:
        raise ValueError(f"traceparent {shown}: the parent id is all zeros")
    return value


def configure_from_env() -> None:
    """Sets up OTLP export from the standard ``OTEL_EXPORTER_OTLP_*ENDPOINT`` variables.

    ADK's own setup does it (as ``adk api_server`` does), and it changes nothing
    where the app already set a tracer provider, or where no endpoint is set.
    The exporter needs ``opentelemetry-exporter-otlp-proto-http`` (the ``otel``
    extra); without it ADK logs a warning and nothing is exported.
    """
    if not any(os.environ.get(name) for name in _OTLP_ENDPOINTS):
        return
    from google.adk.telemetry.setup import maybe_set_otel_providers

    maybe_set_otel_providers()


@contextlib.contextmanager
def run_span(task_id: str, traceparent: str | None) -> Iterator[None]:
    """The ``adk-supervisor.run`` span, current for the block, child of ``traceparent``.

    Without a ``traceparent`` the span starts a trace of its own. Without a
    configured SDK every span is a no-op and nothing is exported.
    """
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    # This propagator, whatever OTEL_PROPAGATORS says: the header is W3C's by definition.
    carrier = {"traceparent": traceparent} if traceparent else {}
    parent = TraceContextTextMapPropagator().extract(carrier) if traceparent else None
    tracer = trace.get_tracer("adk_supervisor")
    with tracer.start_as_current_span(
        SPAN_NAME, context=parent, attributes={TASK_ATTRIBUTE: task_id}
    ):
        yield


def flush_spans() -> None:
    """Exports the spans an SDK still buffers: a run's process ends with ``os._exit``,
    which runs no exit hook (where the SDK would flush)."""
    from opentelemetry import trace

    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is None:
        return
    try:
        flush(_FLUSH_MS)
    except Exception as exc:  # an exporter's failure must not change the run's exit code
        log.warning("could not export the run's spans: %s", exc)
