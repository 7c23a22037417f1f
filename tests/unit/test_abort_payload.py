"""Abort payloads are untrusted: whatever their shape, they abort, and never raise."""

from __future__ import annotations

from agent_runtime.task_store import MAX_REASON, parse_abort_payload


def test_untrusted_abort_payloads_always_parse_to_an_abort() -> None:
    assert parse_abort_payload("[" * 100_000) == (
        "aborted (abort payload of 100000 bytes not read)",
        False,
    )
    assert parse_abort_payload("[" * 10_000) == ("aborted (non-JSON abort payload)", False)
    assert parse_abort_payload(b"\xff\xfe") == ("aborted (non-JSON abort payload)", False)
    reason, ok = parse_abort_payload('{"reason": "' + "x" * 10_000 + '"}')
    assert ok and len(reason) == MAX_REASON
    assert parse_abort_payload('{"action": "abort", "reason": "stuck"}') == ("stuck", True)
