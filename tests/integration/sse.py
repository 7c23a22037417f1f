"""A server-sent events reader for the gateway tests (httpx streams in, frames out)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Frame:
    """One SSE frame: its ``id:``, ``event:`` and ``data:`` (JSON-decoded), or a comment."""

    id: str | None = None
    event: str | None = None
    data_lines: list[str] = field(default_factory=list)
    comment: str | None = None

    @property
    def data(self) -> Any:
        """The frame's data, decoded from JSON."""
        return json.loads("\n".join(self.data_lines))


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """The frames of a streamed response, comments (keep-alives) included, as they arrive."""
    current = Frame()
    async for line in response.aiter_lines():
        if line == "":
            if current.data_lines or current.comment is not None:
                yield current
            current = Frame()
        elif line.startswith(":"):
            yield Frame(comment=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                current.id = value
            elif name == "event":
                current.event = value
            elif name == "data":
                current.data_lines.append(value)
    if current.data_lines:
        yield current


async def data_frames(response: httpx.Response) -> list[Frame]:
    """Every data frame of a response, to its end."""
    return [f async for f in frames(response) if f.comment is None]
