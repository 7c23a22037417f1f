"""Daemon settings: a TOML file overridden by ``ADK_SUPERVISOR_*`` environment variables."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["DEFAULT_CONFIG_PATH", "Settings", "load_settings"]

DEFAULT_CONFIG_PATH = Path("/etc/adk-supervisor/config.toml")


class Settings(BaseSettings):
    """Every setting of the daemon; ``config.example.toml`` documents each key."""

    model_config = SettingsConfigDict(env_prefix="ADK_SUPERVISOR_", extra="forbid")
    toml_path: ClassVar[Path | None] = None

    redis_url: str | None = None
    key_prefix: str = "adk:"
    node_id: str = Field(default_factory=socket.gethostname)
    state_dir: Path = Path("/var/lib/adk-supervisor")
    max_concurrent_runs: int = Field(default=8, ge=1)
    default_timeout_s: float | None = Field(default=None, gt=0)
    kill_grace_s: float = Field(default=0.0, ge=0)
    kill_mechanism: Literal["auto", "cgroup", "pgroup"] = "auto"
    spawn_mode: Literal["fork-server", "exec"] = "fork-server"
    session_ttl_s: float | None = Field(default=3600, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    apps: dict[str, str] = Field(default_factory=dict)

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("node_id", "key_prefix")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError("must be non-empty and contain no whitespace")
        return value

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


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from ``path`` (else ``$ADK_SUPERVISOR_CONFIG``, else the default path if present)."""
    chosen = path or os.environ.get("ADK_SUPERVISOR_CONFIG")
    toml: Path | None = Path(chosen) if chosen else None
    if toml is None and DEFAULT_CONFIG_PATH.exists():
        toml = DEFAULT_CONFIG_PATH
    if toml is not None and not toml.is_file():
        raise FileNotFoundError(f"config file {toml} does not exist or is not a file")

    class _FromFile(Settings):
        toml_path: ClassVar[Path | None] = toml

    return _FromFile(**overrides)
