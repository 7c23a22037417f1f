"""ADK's ``GET /health``, ``GET /version`` and ``GET /list-apps``.

The apps are the ``[apps]`` names of the configuration. ``?detailed=true``
answers ADK's ``ListAppsResponse`` shape with what the gateway knows without
importing an app (it never does: agents run only in supervised runs).
"""

from __future__ import annotations

import sys

from fastapi import APIRouter
from google.adk.version import __version__ as adk_version

from ._gateway import Gateway

__all__ = ["app_router"]


def app_router(gw: Gateway) -> APIRouter:
    """The app routes."""
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/version")
    async def version() -> dict[str, str]:
        info = sys.version_info
        return {
            "version": adk_version,
            "language": "python",
            "language_version": f"{info.major}.{info.minor}.{info.micro}",
        }

    @router.get("/list-apps", response_model=None)
    async def list_apps(detailed: bool = False) -> list[str] | dict[str, object]:
        names = sorted(gw.apps)
        if not detailed:
            return names
        return {
            "apps": [
                {"name": n, "rootAgentName": n, "description": "", "language": "python"}
                for n in names
            ]
        }

    return router
