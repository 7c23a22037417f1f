"""Registration with ADK's CLI service registry (``adk web`` / ``adk api_server``).

ADK builds its session service from ``--session_service_uri``; schemes it does not
know fall through to SQLAlchemy. Calling :func:`register_session_service` (from an
agents directory's ``services.py``), or listing ``agent_runtime.RedisSessionService``
in its ``services.yaml``, makes ``redis://``, ``rediss://`` and ``unix://`` URIs
build a :class:`~agent_runtime.RedisSessionService`.
"""

from __future__ import annotations

from typing import Any

from google.adk.cli.service_registry import ServiceRegistry, get_service_registry

from .sessions.service import RedisSessionService

__all__ = ["SCHEMES", "register_session_service"]

SCHEMES = ("redis", "rediss", "unix")


def _factory(uri: str, **kwargs: Any) -> RedisSessionService:
    return RedisSessionService(uri=uri, **kwargs)


def register_session_service(registry: ServiceRegistry | None = None) -> None:
    """Registers :class:`RedisSessionService` for ``redis://``, ``rediss://`` and ``unix://``."""
    registry = registry or get_service_registry()
    for scheme in SCHEMES:
        registry.register_session_service(scheme, _factory)
