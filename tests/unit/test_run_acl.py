"""The ACL rules of runs and the URLs runs get (pure: no Redis)."""

from __future__ import annotations

from fnmatch import fnmatchcase

from redis.connection import parse_url

from agent_runtime.keys import KeySchema
from supervisor.run_acl import (
    RUN_COMMANDS,
    acl_glob_escape,
    explain_run_credentials,
    password_hash,
    run_key_patterns,
    run_rules,
    run_user_name,
    shared_rules,
    with_credentials,
)


def test_a_run_is_confined_to_its_app_sessions_and_its_own_record() -> None:
    # Its record, its events stream, its tool-call journal, its workspace snapshot, and
    # read-only its epoch.
    own = [
        "~adk:{adk:}task:t-1",
        "~adk:{adk:}events:t-1",
        "~adk:{adk:}tool-journal:t-1",
        "~adk:{adk:}workspace-snapshot:t-1",
        "%R~adk:{adk:}task-epoch:t-1",
    ]
    assert run_key_patterns("adk:", "t-1", "weather") == ["~adk:{weather}:*", *own]
    # An import path: the daemon cannot know the ADK name, so every app's sessions.
    assert run_key_patterns("adk:", "t-1", None) == ["~adk:{*}:*", *own]


def test_glob_characters_in_a_prefix_or_app_match_only_themselves() -> None:
    assert acl_glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"
    assert run_key_patterns("x*:", "t", "app") == [
        "~x\\*:{app}:*",
        "~x\\*:{x\\*:}task:t",
        "~x\\*:{x\\*:}events:t",
        "~x\\*:{x\\*:}tool-journal:t",
        "~x\\*:{x\\*:}workspace-snapshot:t",
        "%R~x\\*:{x\\*:}task-epoch:t",
    ]
    # App names are percent-encoded in keys: "{", "}" and ":" cannot move the hash tag.
    assert run_key_patterns("adk:", "t", "a}b")[0] == "~adk:{a%7Db}:*"


def test_rules_start_from_nothing_and_carry_only_the_password_hash() -> None:
    rules = run_rules("adk:", "t", "app", "s3cret", optional=False)
    assert rules[:4] == ["reset", "on", f"#{password_hash('s3cret')}", "resetchannels"]
    assert "s3cret" not in " ".join(rules)
    assert rules[rules.index("-@all") + 1 :] == [f"+{c}" for c in RUN_COMMANDS]
    assert "+client|setinfo" in run_rules("adk:", "t", "app", "p")
    assert not any(r.startswith("&") for r in rules), "no channel, so no PUBLISH of an abort"


def test_commands_that_reach_beyond_the_run_are_not_granted() -> None:
    for command in ("set", "publish", "sadd", "eval", "keys", "scan", "flushall", "xtrim"):
        assert command not in RUN_COMMANDS
    # XADD is granted for the run's own events stream: the key patterns keep it there
    # (not the runs stream, not another run's events).


def test_shared_rules_cover_every_session_and_task_record() -> None:
    rules = shared_rules("adk:")
    assert "~adk:{*}:*" in rules and "~adk:{adk:}task:*" in rules and "resetchannels" in rules
    assert "~adk:{adk:}events:*" in rules


def test_no_session_pattern_reaches_a_coordination_key() -> None:
    # The coordination keys share the tag {<prefix>}; the session patterns, of one app or
    # of all, must still refuse them: the runs stream, node keys, other runs' lines...
    keys = KeySchema("adk:")
    coordination = [
        keys.runs,
        keys.nodes,
        keys.node_heartbeat("n-1"),
        keys.abort_mark("t-2"),
        keys.task_history,
        keys.session_lease("weather", "u:1", "s}:x"),
        keys.session_queue("weather", "u", "s"),
        keys.task_session("t-1"),
        keys.task_resume("t-1"),
        keys.parked_run("t-1"),
        keys.plugin_running,
        keys.task("t-2"),
    ]
    patterns = [
        run_key_patterns("adk:", "t-1", "weather")[0],
        run_key_patterns("adk:", "t-1", None)[0],
        run_key_patterns("adk:", "t-1", "adk:")[0],
        *(p for p in shared_rules("adk:") if p.startswith("~{") or p == "~adk:{*}:*"),
    ]
    for pattern in patterns:
        for key in coordination:
            assert not fnmatchcase(key, pattern[1:]), (pattern, key)
    # ...and still grant the sessions.
    session = keys.app("weather").session("u:1", "s").meta
    assert fnmatchcase(session, run_key_patterns("adk:", "t-1", "weather")[0][1:])
    assert fnmatchcase(session, run_key_patterns("adk:", "t-1", None)[0][1:])


def test_run_urls_carry_the_run_user_and_keep_the_rest() -> None:
    name = run_user_name("adk:", "node-1", "t:1")
    url = with_credentials("redis://daemon:pw@redis.example:6380/2?ssl_cert_reqs=none", name, "p")
    parsed = parse_url(url)
    assert parsed["username"] == "adk:run:node-1:t:1" and parsed["password"] == "p"
    assert parsed["host"] == "redis.example" and parsed["port"] == 6380 and parsed["db"] == 2
    unix = parse_url(with_credentials("unix:///run/r.sock?db=1&password=x", name, "p"))
    assert unix["path"] == "/run/r.sock" and unix["password"] == "p" and unix["db"] == 1


def test_explanations_name_what_each_mode_means() -> None:
    assert "daemon's own" in explain_run_credentials("daemon", "adk:", None)[0]
    assert "refuses to start" in explain_run_credentials("per_run", "adk:", None)[0]
    assert explain_run_credentials("auto", "adk:", None)[0].startswith("auto: each run")
    shared = explain_run_credentials("auto", "adk:", "redis://u:p@h")
    assert "run_redis_url" in shared[0] and "ACL SETUSER" in shared[1]
