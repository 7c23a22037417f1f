"""Configuration: the example file, defaults, environment overrides, and clear errors (exit 2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from supervisor.cli import main
from supervisor.config import Settings, load_settings
from supervisor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ADK_SUPERVISOR_"):
            monkeypatch.delenv(name)


def test_example_config_loads_and_documents_every_key() -> None:
    example = ROOT / "config.example.toml"
    settings = load_settings(example)
    text = example.read_text()
    documented = set(re.findall(r"^#? ?([a-z_]+) = ", text, flags=re.M))
    documented |= set(re.findall(r"^#? ?\[([a-z_]+)\]", text, flags=re.M))
    missing = set(Settings.model_fields) - documented
    assert not missing, f"config.example.toml does not document {sorted(missing)}"
    # The example shows the defaults: loading it changes nothing but its [apps].
    defaults = load_settings(None, apps=settings.apps)
    assert settings.model_dump(exclude={"node_id"}) == defaults.model_dump(exclude={"node_id"})


def test_no_file_gives_defaults_that_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None)
    assert settings.redis_url is None  # the embedded Redis
    assert settings.socket_path == settings.state_dir / "supervisor.sock"
    assert settings.socket_mode == 0o600
    assert settings.on_shutdown == "kill" and settings.log_format == "text"


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('max_concurrent_runs = 3\nstate_dir = "s"\n[apps]\nw = "m:a"\n')
    monkeypatch.setenv("ADK_SUPERVISOR_MAX_CONCURRENT_RUNS", "7")
    monkeypatch.setenv("ADK_SUPERVISOR_SOCKET_MODE", "0660")
    monkeypatch.setenv("ADK_SUPERVISOR_CONFIG", str(config))
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.max_concurrent_runs == 7
    assert settings.socket_mode == 0o660
    assert settings.state_dir == tmp_path / "s" and settings.apps == {"w": "m:a"}


def test_every_problem_is_reported_by_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        'redis_url = "http://localhost"\nmax_concurrent_runs = "many"\nbogus_key = 1\n'
        'on_shutdown = "explode"\n[apps]\nx = "no-colon"\n'
    )
    assert main(["--config", str(config), "check-config"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(lines) == 5, err
    assert any(line.startswith("  - redis_url: must be a redis://") for line in lines)
    assert any(line.startswith("  - max_concurrent_runs: ") for line in lines)
    assert any("bogus_key: unknown key; known keys are" in line for line in lines)
    assert any("on_shutdown: Input should be 'kill' or 'drain'" in line for line in lines)
    assert any("apps: " in line and "package.module:attribute" in line for line in lines)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "does not exist"), ("dir", "is a directory"), ("key = = 1", "is not valid TOML")],
)
def test_unreadable_or_malformed_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, expected: str
) -> None:
    path = tmp_path / "config.toml"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    assert main(["--config", str(path), "run"]) == 2
    assert expected in capsys.readouterr().err


def test_bad_environment_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADK_SUPERVISOR_KILL_GRACE_S", "-1")
    monkeypatch.setenv("ADK_SUPERVISOR_SOCKET_GROUP", "no-such-group-here")
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    assert sorted(p.split(":")[0] for p in caught.value.problems) == [
        "kill_grace_s",
        "socket_group",
    ]


def test_too_long_socket_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"socket_path .* at most 107"):
        load_settings(None, state_dir=tmp_path / ("x" * 120))


def test_check_config_accepts_a_valid_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(ROOT / "examples/config.toml"), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"weather": "examples.agents:weather_agent"' in out and '"socket_mode": "0600"' in out


def test_misspelt_environment_variable_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADK_SUPERVISOR_MAX_CONCURENT_RUNS", "2")
    monkeypatch.setenv("ADK_SUPERVISOR_TASK_ID", "a-run-marker")  # not a setting, not a typo
    assert main(["check-config", "--config", str(ROOT / "examples/config.toml")]) == 0
    err = capsys.readouterr().err
    assert "ADK_SUPERVISOR_MAX_CONCURENT_RUNS is set but names no setting" in err
    assert "ADK_SUPERVISOR_TASK_ID" not in err
