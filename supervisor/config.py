"""Daemon settings: a TOML file overridden by ``ADK_SUPERVISOR_*`` environment variables.

``config.example.toml`` documents every key. :func:`load_settings` turns every
problem (unknown key, wrong type, bad URL, unreadable or malformed file) into
one :class:`ConfigError` listing one line per problem, naming the key and what
is allowed, so ``adk-supervisor`` can print it and exit 2.
"""

from __future__ import annotations

import grp
import os
import socket
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from agent_runtime.redis_url import (
    CLUSTER_FORM,
    SENTINEL_FORM,
    SENTINEL_SCHEMES,
    is_cluster_url,
    parse_cluster_url,
    parse_sentinel_url,
    redact_url,
)

from .errors import ConfigError
from .paths import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_STATE_DIR,
    ENV_PREFIX,
    find_config_path,
    socket_path_for,
)
from .process.limits import RunLimits

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Settings",
    "find_config_path",
    "load_settings",
    "unknown_env_vars",
]

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107


def _split_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port); ValueError if malformed."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError('must be "host:port", such as "127.0.0.1:8000" or "[::1]:8000"')
    return host, int(port)


class AppLimits(BaseModel):
    """The options of an ``[apps.<name>]`` table besides ``ref``: limits and durability."""

    model_config = ConfigDict(extra="forbid")

    memory_max: ByteSize | None = None
    pids_max: int | None = Field(default=None, ge=1)
    cpu_max: float | None = Field(default=None, gt=0)
    on_orphan: Literal["fail", "resume"] = "fail"
    """What a run whose process died without an end of its own becomes: failed, or
    resumed from its persisted session (the app must be resumable: see README)."""
    max_attempts: int = Field(default=3, ge=1, le=100)
    """Attempts of a resumed run in all (the first one included)."""
    idempotent_tools: list[str] = Field(default_factory=list)
    """Tools safe to run again when a run died while they ran."""
    workspace: bool = False
    """Each run gets its own working directory (``state_dir/workspaces/<task_id>``); a
    durable run's is snapshotted to Redis at every tool boundary and restored on resume."""

    def limits(self) -> RunLimits:
        """As run limits (unset ones fall back to the top-level defaults)."""
        return RunLimits(
            None if self.memory_max is None else int(self.memory_max), self.pids_max, self.cpu_max
        )


class Settings(BaseSettings):
    """Every setting of the daemon; ``config.example.toml`` documents each key."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")
    toml_path: ClassVar[Path | None] = None

    redis_url: str | None = None
    run_credentials: Literal["auto", "per_run", "shared", "daemon"] = "auto"
    run_redis_url: str | None = None
    redis_socket_timeout_s: float = Field(default=10.0, gt=1.0)
    key_prefix: str = "adk:"
    node_id: str = Field(default_factory=socket.gethostname)
    state_dir: Path = DEFAULT_STATE_DIR
    socket_path: Path | None = None
    socket_mode: int = Field(default=0o600, ge=0, le=0o777)
    socket_group: str | None = None
    socket_max_connections: int = Field(default=512, ge=1)
    socket_idle_timeout_s: float = Field(default=60.0, gt=0)
    max_concurrent_runs: int = Field(default=8, ge=1)
    default_timeout_s: float | None = Field(default=None, ge=0)
    kill_grace_s: float = Field(default=0.0, ge=0)
    kill_mechanism: Literal["auto", "cgroup", "pgroup"] = "auto"
    pgroup_fork_events: bool = True
    on_shutdown: Literal["kill", "drain"] = "kill"
    drain_timeout_s: float = Field(default=60.0, ge=0)
    spawn_mode: Literal["fork-server", "exec"] = "fork-server"
    session_ttl_s: float | None = Field(default=3600, ge=0)
    record_ttl_s: float | None = Field(default=7 * 24 * 3600, ge=0)
    events_maxlen: int = Field(default=10_000, ge=1)
    events_ttl_s: float | None = Field(default=24 * 3600, ge=0)
    max_input_bytes: int = Field(default=1 << 20, ge=1024)
    task_history_maxlen: int = Field(default=10_000, ge=1)
    run_log_retention_s: float | None = Field(default=7 * 24 * 3600, ge=0)
    run_log_max_files: int | None = Field(default=10_000, ge=0)
    run_log_dir_max_bytes: ByteSize | None = ByteSize(1024**3)
    run_log_max_bytes: ByteSize | None = ByteSize(64 * 1024**2)
    workspace_snapshot_max_bytes: ByteSize = Field(default=ByteSize(16 * 1024**2), ge=1)
    run_log_prune_interval_s: float = Field(default=10.0, gt=0)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    node_dead_after_s: float = Field(default=30.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    metrics_listen: str = ""
    """Where ``/metrics`` is served, ``host:port``; empty: not at all."""
    metrics_poll_interval_s: float = Field(default=5.0, gt=0)
    allow_import_paths: bool = False
    memory_max: ByteSize | None = None
    pids_max: int | None = Field(default=None, ge=1)
    cpu_max: float | None = Field(default=None, gt=0)
    gateway_listen: str = "127.0.0.1:8000"
    gateway_token: SecretStr | None = None
    gateway_allow_origins: list[str] = Field(default_factory=list)
    gateway_on_disconnect: Literal["abort", "continue"] = "abort"
    gateway_keepalive_s: float = Field(default=15.0, gt=0)
    gateway_dev_ui: bool = True
    apps: dict[str, str] = Field(default_factory=dict)
    app_limits: dict[str, AppLimits] = Field(default_factory=dict)
    """Per-app limits, written as ``[apps.<name>]`` tables (moved here on load)."""

    @model_validator(mode="before")
    @classmethod
    def _app_tables(cls, data: Any) -> Any:
        # [apps] takes `name = "module:attr"` or a table `[apps.name]` with `ref` and
        # options; the tables' options are kept apart so `apps` stays name -> ref.
        if not isinstance(data, dict) or not isinstance(data.get("apps"), dict):
            return data
        apps: dict[str, Any] = {}
        limits: dict[str, Any] = dict(data.get("app_limits") or {})
        for name, value in data["apps"].items():
            if isinstance(value, dict):
                options = dict(value)
                apps[name] = options.pop("ref", None)
                if apps[name] is None:
                    raise ValueError(f'[apps.{name}] needs ref = "package.module:attribute"')
                limits[name] = options
            else:
                apps[name] = value
        return {**data, "apps": apps, "app_limits": limits}

    def durable_for(self, app: str) -> AppLimits | None:
        """The options of ``app`` if its runs are resumed (``on_orphan = "resume"``), else None."""
        own = self.app_limits.get(app)
        return own if own is not None and own.on_orphan == "resume" else None

    def workspace_for(self, app: str) -> bool:
        """Whether each run of ``app`` gets its own working directory (``workspace = true``)."""
        own = self.app_limits.get(app)
        return own is not None and own.workspace

    def limits_for(self, app: str) -> RunLimits:
        """The limits of a run of ``app`` (an [apps] name or an import path)."""
        defaults = RunLimits(
            None if self.memory_max is None else int(self.memory_max), self.pids_max, self.cpu_max
        )
        own = self.app_limits.get(app)
        return defaults if own is None else own.limits().over(defaults)

    @field_validator("redis_url", "run_redis_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.startswith(tuple(f"{scheme}://" for scheme in SENTINEL_SCHEMES)):
            parse_sentinel_url(value)  # its ValueError names what is wrong
            return value
        if is_cluster_url(value):
            parse_cluster_url(value)
            return value
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"must be a redis://, rediss://, unix://, Sentinel ({SENTINEL_FORM}) or "
                f"Cluster ({CLUSTER_FORM}) URL; leave it unset for the embedded Redis"
            )
        return value

    @field_validator("gateway_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _split_listen(value)
        return value

    @field_validator("gateway_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        # TOML has no null: an empty token means none.
        return value if value is not None and value.get_secret_value() else None

    @field_validator("node_id", "key_prefix")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError("must be non-empty and contain no whitespace")
        if "{" in value or "}" in value:
            # They would move the Redis Cluster hash tag of the coordination keys.
            raise ValueError("must not contain '{' or '}'")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_listen(cls, value: str) -> str:
        if value:
            _split_listen(value)
        return value

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal(cls, value: object) -> object:
        # "0660" (env var or TOML string) is octal, as chmod reads it; TOML can also say 0o660.
        if isinstance(value, str):
            try:
                return int(value, 8)
            except ValueError:
                raise ValueError('must be an octal file mode such as "0600" or 0o660') from None
        return value

    @field_validator("socket_group")
    @classmethod
    def _group_exists(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                grp.getgrnam(value)
            except KeyError:
                raise ValueError(f"no group named {value!r} on this host") from None
        return value

    @field_validator(
        "default_timeout_s",
        "session_ttl_s",
        "record_ttl_s",
        "events_ttl_s",
        "run_log_retention_s",
        "run_log_max_files",
        "run_log_dir_max_bytes",
        "run_log_max_bytes",
    )
    @classmethod
    def _zero_is_none(cls, value: float | None) -> float | None:
        # TOML has no null: 0 means "no limit" / "never expire".
        return None if value == 0 else value

    @field_validator("apps")
    @classmethod
    def _import_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for name, ref in value.items():
            module, _, attribute = ref.partition(":")
            if not module or not attribute:
                raise ValueError(
                    f"app {name!r} = {ref!r}: must be an import path 'package.module:attribute'"
                )
        return value

    @model_validator(mode="after")
    def _run_credentials(self) -> Settings:
        # A run_redis_url that a mode would ignore is a mistake worth stopping for.
        if self.run_credentials == "shared" and not self.run_redis_url:
            raise ValueError(
                'run_credentials = "shared" needs run_redis_url: the URL (with the user and '
                "password) every run connects with"
            )
        if self.run_credentials == "per_run" and self.redis_url and is_cluster_url(self.redis_url):
            raise ValueError(
                'run_credentials = "per_run" cannot work on a Redis Cluster (ACL users live '
                "on each node, unreplicated): create one confined user on every node and set "
                'run_credentials = "shared" with run_redis_url'
            )
        if self.run_credentials in ("per_run", "daemon") and self.run_redis_url:
            raise ValueError(
                f"run_redis_url is set but run_credentials = {self.run_credentials!r} ignores "
                'it: unset it, or set run_credentials = "shared" (or "auto")'
            )
        return self

    @model_validator(mode="after")
    def _peer_timing(self) -> Settings:
        # A heartbeat key lives 3 intervals: a shorter dead-after would take over live peers.
        if self.node_dead_after_s <= 3 * self.heartbeat_interval_s:
            raise ValueError(
                f"node_dead_after_s ({self.node_dead_after_s:g}) must exceed 3 x "
                f"heartbeat_interval_s ({3 * self.heartbeat_interval_s:g})"
            )
        return self

    @model_validator(mode="after")
    def _absolute_paths(self) -> Settings:
        # Resolved once, against the directory the command started in, so the daemon and
        # the CLI of one checkout agree on where state and the socket live.
        self.state_dir, self.socket_path = socket_path_for(self.state_dir, self.socket_path)
        size = len(os.fsencode(self.socket_path))
        if size > _MAX_SOCKET_PATH:
            raise ValueError(
                f"socket_path {self.socket_path} is {size} bytes; a unix socket path may have at "
                f"most {_MAX_SOCKET_PATH}: set socket_path (or state_dir) to a shorter path"
            )
        return self

    @property
    def gateway_address(self) -> tuple[str, int]:
        """``gateway_listen`` as (host, port)."""
        return _split_listen(self.gateway_listen)

    @property
    def status_socket(self) -> Path:
        """Where the status socket lives (``socket_path``, else ``state_dir/supervisor.sock``)."""
        assert self.socket_path is not None  # set by the validator
        return self.socket_path

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``metrics_listen`` as (host, port); None when metrics are off."""
        return _split_listen(self.metrics_listen) if self.metrics_listen else None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_path))
        return tuple(sources)


# ADK_SUPERVISOR_* variables that are not settings: the config file's path, the
# redis-server binary, and what the daemon hands its run processes.
_NOT_SETTINGS = {"CONFIG", "REDIS_SERVER", "TASK_ID", "RUN", "PRELOAD"}


def unknown_env_vars(environ: dict[str, str] | None = None) -> list[str]:
    """``ADK_SUPERVISOR_*`` variables that name no setting (likely typos: they are ignored)."""
    env = os.environ if environ is None else environ
    known = {name.upper() for name in Settings.model_fields} | _NOT_SETTINGS
    return sorted(
        name
        for name in env
        if name.startswith(ENV_PREFIX) and name.removeprefix(ENV_PREFIX) not in known
    )


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    keys = ", ".join(sorted(Settings.model_fields))
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            problems.append(f"{loc}: unknown key; known keys are {keys}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        key = loc or "config"
        shown = error.get("input")
        if isinstance(shown, str) and "://" in shown:
            shown = redact_url(shown)  # a mistyped redis_url must not print its password
        got = f" (got {shown!r})" if loc and not isinstance(shown, dict) else ""
        problems.append(f"{key}: {message}{got}")
    return problems


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from the file :func:`find_config_path` picks, overridden by ``ADK_SUPERVISOR_*``.

    Raises :class:`ConfigError` with one line per problem.
    """
    toml = find_config_path(path)
    if toml is not None:
        try:
            # Parsed here first only to report read and syntax errors clearly.
            tomllib.loads(toml.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"config file {toml} does not exist"], toml) from None
        except IsADirectoryError:
            raise ConfigError([f"config file {toml} is a directory, not a file"], toml) from None
        except PermissionError:
            raise ConfigError(
                [f"config file {toml} is not readable by uid {os.getuid()}: fix its permissions"],
                toml,
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"config file {toml} cannot be read: {exc}"], toml) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"config file {toml} is not valid TOML: {exc}"], toml) from None

    class _FromFile(Settings):
        toml_path: ClassVar[Path | None] = toml

    try:
        return _FromFile(**overrides)
    except ValidationError as exc:
        raise ConfigError(_problems(exc), toml) from None
