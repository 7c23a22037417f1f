"""The HTTP gateway: ADK's api_server routes and web UI, each run a supervised process tree.

``adk-supervisor gateway`` serves it (:func:`serve`); :func:`create_app` builds
the ASGI app for embedding. Any number of gateways on any hosts talk to the
same Redis as the daemons, and only to it: HTTP load never touches a daemon's
event loop. Importing this package loads FastAPI and ADK; the CLI imports it
only for the ``gateway`` command.
"""

from __future__ import annotations

from ._serve import serve
from .app import create_app

__all__ = ["create_app", "serve"]
