"""The Redis schema the README documents, pinned: a renamed key breaks every deployed client."""

from __future__ import annotations

from agent_runtime.keys import RUNS_GROUP, KeySchema


def test_every_task_abort_node_and_plugin_key_keeps_its_documented_name() -> None:
    keys = KeySchema("adk:")
    assert keys.task("t1") == "adk:task:t1"
    assert keys.task_events == "adk:task-events"
    assert keys.task_channel("t1") == "adk:task-events:t1"
    assert keys.task_history == "adk:task-history"
    assert keys.abort_channel("t1") == "adk:abort:t1"
    assert keys.abort_pattern == "adk:abort:*"
    assert keys.abort_mark("t1") == "adk:abort-mark:t1"
    assert keys.runs == "adk:runs" and RUNS_GROUP == "supervisors"
    assert keys.nodes == "adk:nodes"
    assert keys.node_tasks("n1") == "adk:node:n1:tasks"
    assert keys.node_heartbeat("n1") == "adk:node:n1:heartbeat"
    assert keys.plugin_running == "adk:plugin-running"
    assert keys.plugin_heartbeat("h:1:ab") == "adk:plugin-heartbeat:h:1:ab"


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
    assert keys.session_lease("w", "u:1", "s") == "adk:session-lease:w:u%3A1:s"
    assert keys.session_queue("w", "u:1", "s") == "adk:session-queue:w:u%3A1:s"
    assert keys.task_session("t1") == "adk:task-session:t1"
    assert keys.parked_run("t1") == "adk:parked:t1"
