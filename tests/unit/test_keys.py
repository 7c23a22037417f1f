"""The Redis schema the README documents, pinned: a renamed key breaks every deployed client."""

from __future__ import annotations

import pytest

from agent_runtime.keys import RUNS_GROUP, KeySchema


def test_every_task_abort_node_and_plugin_key_keeps_its_documented_name() -> None:
    keys = KeySchema("adk:")
    assert keys.coordination == "adk:{adk:}"
    assert keys.task("t1") == "adk:{adk:}task:t1"
    assert keys.task_events == "adk:task-events"
    assert keys.task_channel("t1") == "adk:task-events:t1"
    assert keys.run_events("t1") == "adk:{adk:}events:t1"
    assert keys.task_history == "adk:{adk:}task-history"
    assert keys.abort_channel("t1") == "adk:abort:t1"
    assert keys.abort_pattern == "adk:abort:*"
    assert keys.abort_mark("t1") == "adk:{adk:}abort-mark:t1"
    assert keys.runs == "adk:{adk:}runs" and RUNS_GROUP == "supervisors"
    assert keys.nodes == "adk:{adk:}nodes"
    assert keys.node_tasks("n1") == "adk:{adk:}node:n1:tasks"
    assert keys.node_heartbeat("n1") == "adk:{adk:}node:n1:heartbeat"
    assert keys.node_usage("n1") == "adk:{adk:}node:n1:usage"
    assert keys.task_epoch("t1") == "adk:{adk:}task-epoch:t1"
    assert keys.task_resume("t1") == "adk:{adk:}task-resume:t1"
    assert keys.tool_journal("t1") == "adk:{adk:}tool-journal:t1"
    assert keys.workspace_snapshot("t1") == "adk:{adk:}workspace-snapshot:t1"
    assert keys.plugin_running == "adk:{adk:}plugin-running"
    assert keys.plugin_heartbeat("h:1:ab") == "adk:{adk:}plugin-heartbeat:h:1:ab"


def _hash_tag(key: str) -> str:
    # Redis Cluster's rule: the text between the first '{' and the next '}', if not empty.
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start + 1 else key


def test_every_coordination_key_shares_one_hash_tag_no_app_can_have() -> None:
    # One slot for every multi-key script; an app's tag is its encoded name, which
    # holds no ':', so no app shares that slot.
    keys = KeySchema("adk:")
    coordination = [
        keys.task("t1"),
        keys.run_events("t1"),
        keys.task_history,
        keys.abort_mark("t1"),
        keys.runs,
        keys.nodes,
        keys.node_tasks("n1"),
        keys.node_heartbeat("n1"),
        keys.node_usage("n1"),
        keys.session_lease("a:b", "u", "s"),
        keys.session_queue("a:b", "u", "s"),
        keys.task_session("t1"),
        keys.task_epoch("t1"),
        keys.task_resume("t1"),
        keys.tool_journal("t1"),
        keys.workspace_snapshot("t1"),
        keys.parked_run("t1"),
        keys.plugin_running,
        keys.plugin_heartbeat("o"),
    ]
    assert {_hash_tag(key) for key in coordination} == {"adk:"}
    assert _hash_tag(keys.app("adk:").index) == "adk%3A"
    assert _hash_tag(KeySchema("tenant:a:").runs) == "tenant:a:"


def test_a_prefix_with_braces_is_refused() -> None:
    for prefix in ("a{b}:", "a{", "}"):
        with pytest.raises(ValueError, match="hash tags"):
            KeySchema(prefix)


def test_the_task_id_of_an_abort_channel_survives_colons_in_prefix_and_id() -> None:
    keys = KeySchema("tenant:a:")
    assert keys.task_of_abort_channel(keys.abort_channel("x:y")) == "x:y"


def test_session_keys_share_the_app_hash_tag_and_encode_ids() -> None:
    session = KeySchema("adk:").app("A").session("u:1", "s{2}")
    assert session.meta == "adk:{A}:sess:u%3A1:s%7B2%7D"
    assert session.events == "adk:{A}:ev:u%3A1:s%7B2%7D"
    assert KeySchema("adk:").app("a}b").index == "adk:{a%7Db}:idx"


def test_session_line_keys_encode_the_session_and_keep_their_names() -> None:
    # The task store's Lua builds the same names from the prefix and the session part.
    keys = KeySchema("adk:")
    assert KeySchema.session_part("w", "u:1", "s 2") == "w:u%3A1:s%202"
    assert keys.session_lease("w", "u:1", "s") == "adk:{adk:}session-lease:w:u%3A1:s"
    assert keys.session_queue("w", "u:1", "s") == "adk:{adk:}session-queue:w:u%3A1:s"
    assert keys.task_session("t1") == "adk:{adk:}task-session:t1"
    assert keys.parked_run("t1") == "adk:{adk:}parked:t1"
