"""Redis URLs: which schemes are accepted, and showing one without its password.

Kept apart from :mod:`agent_runtime.redis_connection` so that code which only
checks or prints a URL (the configuration, the CLI) does not import redis-py,
a third of a second on a small machine.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit, urlunsplit

__all__ = ["SCHEMES", "redact_url"]

SCHEMES: Final = ("redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
