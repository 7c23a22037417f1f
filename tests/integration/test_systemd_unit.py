"""The unit file carries what the daemon's lifecycle relies on (``make verify-unit`` runs
``systemd-analyze verify`` on it where systemd's tools exist)."""

from __future__ import annotations

from pathlib import Path

from supervisor.config import Settings

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "adk-supervisor.service"


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_unit_matches_the_daemon() -> None:
    d = _directives()
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "KillMode": "mixed",
        "Delegate": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "RuntimeDirectory": "adk-supervisor",
        "StateDirectory": "adk-supervisor",
        # Not root: a user of its own, handed the service's cgroup by Delegate=yes.
        "User": "adk-supervisor",
        "Group": "adk-supervisor",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], key
    assert int(d["WatchdogSec"][0]) > 2 * Settings.model_fields["heartbeat_interval_s"].default
    # The state dir the daemon defaults to is the one the sandbox leaves writable.
    assert d["ReadWritePaths"] == [str(Settings.model_fields["state_dir"].default)]
    assert all(" run" in cmd or "check-config" in cmd for cmd in d["ExecStart"] + d["ExecStartPre"])
