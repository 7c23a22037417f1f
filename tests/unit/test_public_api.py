"""The public API of both packages, pinned: adding or removing a name is a decision."""

from __future__ import annotations

import agent_runtime
import supervisor


def test_agent_runtime_exports() -> None:
    assert sorted(agent_runtime.__all__) == [
        "RedisOrchestrationPlugin",
        "RedisSessionService",
        "RedisUnavailableError",
        "SEAL_METADATA_KEY",
        "TASK_ID_METADATA_KEY",
        "TIMEOUT_METADATA_KEY",
        "connect",
        "redact_url",
        "seal_session",
        "seal_task_session",
    ]


def test_supervisor_exports_the_client_settings_and_errors_only() -> None:
    assert sorted(supervisor.__all__) == [
        "ConfigError",
        "ContainmentError",
        "DaemonError",
        "DaemonUnavailable",
        "NodeIdInUse",
        "RedisServerError",
        "RequestError",
        "SessionBusyError",
        "Settings",
        "SocketInUseError",
        "SpawnError",
        "StateDirLocked",
        "StateDirUnusable",
        "SupervisorClient",
        "SupervisorError",
        "TaskExistsError",
        "TaskNotFoundError",
        "load_settings",
        "submit_task",
    ]


def test_gateway_exports_its_app_factory_and_server() -> None:
    import supervisor.gateway

    assert sorted(supervisor.gateway.__all__) == ["create_app", "serve"]
    for name in supervisor.gateway.__all__:
        assert callable(getattr(supervisor.gateway, name))


def test_every_exported_name_resolves() -> None:
    for package in (agent_runtime, supervisor):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
        assert set(package.__all__) <= set(dir(package))


def test_every_supervisor_error_has_one_root() -> None:
    errors = [
        getattr(supervisor, n)
        for n in supervisor.__all__
        if n.endswith(("Error", "Unavailable", "Locked"))
    ]
    assert all(issubclass(e, supervisor.SupervisorError) for e in errors)
    # ... and keeps the standard base callers already catch.
    assert issubclass(supervisor.TaskNotFoundError, LookupError)
    assert issubclass(supervisor.ConfigError, ValueError)
    assert issubclass(supervisor.DaemonUnavailable, ConnectionError)
