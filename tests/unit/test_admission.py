"""Admission of runs-stream entries: every field of an untrusted entry is checked."""

from __future__ import annotations

import pytest

from agent_runtime.task_store import InvalidTaskIdError, check_task_id
from supervisor.daemon.admission import QUOTED_CHARS, Rejected, admit, resolve_app

APPS = {"weather": "examples.agents:weather_agent"}


def _admit(entry: dict[str, str], **options: object) -> object:
    kwargs: dict[str, object] = {"allow_import_paths": True, "default_timeout_s": None}
    kwargs.update(options)
    return admit(entry, APPS, **kwargs)  # type: ignore[arg-type]


def test_a_full_entry_is_admitted_with_its_app_resolved() -> None:
    request = admit(
        {"task_id": "t1", "app": "weather", "user_id": "u", "message": "hi", "timeout": "2.5"},
        APPS,
        allow_import_paths=False,
        default_timeout_s=None,
    )
    assert request.app_ref == "examples.agents:weather_agent"
    assert request.session_id == "t1"  # the task id, unless the entry names a session
    assert request.timeout_s == 2.5


def test_the_default_timeout_applies_when_the_entry_names_none() -> None:
    entry = {"task_id": "t1", "app": "weather", "user_id": "u", "message": "hi"}
    assert admit(entry, APPS, allow_import_paths=True, default_timeout_s=30).timeout_s == 30


@pytest.mark.parametrize("task_id", ["", "../etc", ".hidden", "a b", "x" * 129])
def test_an_entry_without_a_valid_task_id_touches_no_record(task_id: str) -> None:
    with pytest.raises(Rejected) as rejected:
        _admit({"task_id": task_id, "app": "weather", "user_id": "u", "message": "hi"})
    assert rejected.value.task_id is None


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"app": "weather", "user_id": "u"}, "missing message"),
        ({"app": "weather", "message": "hi"}, "missing user_id"),
        ({"app": "nope", "user_id": "u", "message": "hi"}, "unknown app 'nope'"),
        ({"app": "weather", "user_id": "u", "message": "hi", "timeout": "-1"}, "positive"),
        ({"app": "weather", "user_id": "u", "message": "hi", "timeout": "nan"}, "positive"),
        ({"app": "weather", "user_id": "u", "message": "hi", "timeout": "inf"}, "positive"),
        ({"app": "weather", "user_id": "u", "message": "hi", "timeout": "soon"}, "soon"),
    ],
)
def test_a_bad_entry_fails_its_queued_record_with_the_reason(
    entry: dict[str, str], says: str
) -> None:
    with pytest.raises(Rejected) as rejected:
        _admit({"task_id": "t1", **entry})
    assert rejected.value.task_id == "t1" and says in str(rejected.value)


def test_import_paths_only_where_the_operator_allowed_them() -> None:
    assert resolve_app("pkg.mod:agent", APPS, True) == "pkg.mod:agent"
    with pytest.raises(ValueError, match=r"allow_import_paths = false.*weather"):
        resolve_app("pkg.mod:agent", APPS, False)


HUGE = "x" * 1_000_000


@pytest.mark.parametrize(
    "entry",
    [
        {"task_id": "t1", "app": HUGE, "user_id": "u", "message": "hi"},
        {"task_id": "t1", "app": f"m:{HUGE}", "user_id": "u", "message": "hi"},
        {"task_id": "t1", "app": "weather", "user_id": "u", "message": "hi", "timeout": HUGE},
        {"task_id": HUGE, "app": "weather", "user_id": "u", "message": "hi"},
        {"task_id": f"{HUGE}/", "app": "weather", "user_id": "u", "message": "hi"},
    ],
    ids=["unknown-app", "import-path", "timeout", "long-task-id", "bad-task-id"],
)
@pytest.mark.parametrize("allow_import_paths", [True, False])
def test_a_rejection_quotes_at_most_a_bounded_part_of_an_untrusted_value(
    entry: dict[str, str], allow_import_paths: bool
) -> None:
    # The message is logged and becomes the record's reason: a 1 MB field must not
    # make a 1 MB log line.
    with pytest.raises(Rejected) as rejected:
        _admit(entry, allow_import_paths=allow_import_paths)
    message = str(rejected.value)
    assert len(message) < QUOTED_CHARS + 300, message[:500]
    assert "x" * 50 in message and "bytes)" in message


def test_a_short_value_is_quoted_whole() -> None:
    with pytest.raises(Rejected, match=r"unknown app 'nope': name one of"):
        _admit({"task_id": "t1", "app": "nope", "user_id": "u", "message": "hi"})
    with pytest.raises(ValueError, match=r"^unknown app '" + "y" * 200 + "'"):
        resolve_app("y" * 200, APPS, True)


def test_an_invalid_task_id_is_quoted_in_part_wherever_it_is_checked() -> None:
    # check_task_id serves the client, the socket and the gateway too, not only admission.
    try:
        check_task_id("/" * 1_000_000)
    except InvalidTaskIdError as exc:
        assert len(str(exc)) < 400 and "(1000000 chars)" in str(exc)
    else:
        raise AssertionError("accepted")
