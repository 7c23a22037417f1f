"""ADK's own web UI (the ``adk web`` front end, shipped in the google-adk package) at ``/dev-ui/``.

Its files are served as they are; ``runtime-config.json`` (which ADK writes at
``adk web`` start) is answered by a route registered before the static mount,
telling the UI its backend is this origin. Chat, streaming, sessions and the
stop button work on the routes the gateway serves (stop closes the UI's fetch
of ``/run_sse``: the run is aborted, its tree killed). What the UI also calls
for ``adk web``'s developer features (eval sets and results, tests, traces,
the agent graph, telemetry consent, the builder) answers empty here, as does a
stylesheet its page links and the package lacks, so the UI's console stays
clean; live audio/video (``/run_live``) is refused.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

import google.adk.cli
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

__all__ = ["BROWSER_DIR", "mount_dev_ui"]

BROWSER_DIR = Path(google.adk.cli.__file__).parent / "browser"

# What adk web's developer features get: (path under /dev/apps/{app_name}, answer).
_EMPTY: list[tuple[str, Any]] = [
    ("/build_graph", {}),
    ("/build_graph_image", {}),
    ("/debug/trace/session/{session_id}", []),
    ("/debug/trace/{event_id}", {}),
    ("/eval_sets", []),
    ("/eval-sets", {"evalSetIds": []}),
    ("/eval_results", []),
    ("/eval-results", {"evalResultIds": []}),
    ("/metrics-info", {"metricsInfo": []}),
    ("/tests", []),
]


def _stubs() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    for path, answer in _EMPTY:

        async def empty(answer: Any = answer) -> JSONResponse:
            return JSONResponse(answer)

        router.add_api_route("/dev/apps/{app_name}" + path, empty, methods=["GET"])

    @router.get("/apps/{app_name}/users/{user_id}/sessions/{session_id}/events/{event_id}/graph")
    async def event_graph() -> JSONResponse:
        return JSONResponse({})

    @router.get("/dev/apps/{app_name}/builder")
    async def builder() -> PlainTextResponse:
        return PlainTextResponse("")  # as ADK for an app that is no YAML agent

    @router.get("/config/telemetry")
    async def telemetry() -> JSONResponse:
        return JSONResponse({"telemetry": False})

    if not (BROWSER_DIR / "prism-dark.css").exists():
        # index.html links it, ADK's package does not ship it: a 404 in every page's console.
        @router.get("/dev-ui/prism-dark.css")
        async def prism_css() -> Response:
            return Response(b"", media_type="text/css")

    return router


def mount_dev_ui(app: FastAPI) -> None:
    """Serves the UI at ``/dev-ui/`` (``/`` redirects there) and the stubs it calls.

    Call it after every other route: the static mount takes whatever is left under
    ``/dev-ui/``.
    """
    if not (BROWSER_DIR / "index.html").is_file():
        raise FileNotFoundError(
            f"ADK's web UI is not at {BROWSER_DIR}: reinstall google-adk, or set "
            "gateway_dev_ui = false"
        )
    # Some hosts map .js to text/plain, which browsers refuse to run as a module.
    mimetypes.add_type("text/javascript", ".js", True)
    app.include_router(_stubs())

    @app.get("/dev-ui/assets/config/runtime-config.json", include_in_schema=False)
    async def runtime_config() -> JSONResponse:
        return JSONResponse(
            {"backendUrl": "", "telemetry": False}, headers={"Cache-Control": "no-store"}
        )

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dev-ui/")

    @app.get("/dev-ui", include_in_schema=False)
    async def dev_ui_slash() -> RedirectResponse:
        return RedirectResponse("/dev-ui/")

    app.mount("/dev-ui/", StaticFiles(directory=BROWSER_DIR, html=True), name="dev-ui")
