"""The W3C traceparent check the client, the status socket and admission share."""

from __future__ import annotations

import pytest

from agent_runtime.trace_context import check_traceparent
from supervisor.daemon.admission import Rejected, RunRequest, admit

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "value",
    [
        GOOD,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        GOOD.replace("00-", "01-", 1) + "-future",
    ],
)
def test_valid_traceparents_pass(value: str) -> None:
    assert check_traceparent(value) == value


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "is not a W3C traceparent"),
        (GOOD.upper(), "is not a W3C traceparent"),
        (GOOD[:-1], "is not a W3C traceparent"),
        (" " + GOOD, "is not a W3C traceparent"),
        (GOOD + "-extra", "version 00 has exactly four fields"),
        ("ff" + GOOD[2:], "version ff is invalid"),
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", "the trace id is all zeros"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01", "the parent id is all zeros"),
        ("x" * 100_000, "is not a W3C traceparent"),
    ],
)
def test_malformed_traceparents_say_why(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as caught:
        check_traceparent(value)
    assert len(str(caught.value)) < 300  # quotes a bounded part of an untrusted value


def _entry(**extra: str) -> dict[str, str]:
    return {"task_id": "t1", "app": "m:a", "user_id": "u", "message": "hi", **extra}


def test_admission_carries_a_valid_traceparent_and_refuses_a_bad_one() -> None:
    def run(entry: dict[str, str]) -> RunRequest:
        return admit(entry, {}, allow_import_paths=True, default_timeout_s=None)

    assert run(_entry(traceparent=GOOD)).traceparent == GOOD
    assert run(_entry()).traceparent is None
    with pytest.raises(Rejected, match="is not a W3C traceparent") as caught:
        run(_entry(traceparent="00-nope"))
    assert caught.value.task_id == "t1"  # the queued record is failed with the reason
