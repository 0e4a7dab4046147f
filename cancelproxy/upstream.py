"""The upstream side of a relay: where a request goes, and closing it from outside.

A stop (a cancel route, a disconnect that is not waited out, shutdown) must
end the provider's generation at once, whatever the relay is doing: while
the provider has not answered yet, by cancelling the relay's own await of
it; once it has, by shutting its socket down.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .config import Upstream

__all__ = ["Abandon", "Target", "closer"]


@dataclass(frozen=True)
class Target:
    """Where a request goes upstream, and what is sent there."""

    upstream: Upstream
    method: str
    url: URL
    headers: CIMultiDict[str]
    body: bytes


def closer(upstream: aiohttp.ClientResponse) -> Callable[[], None]:
    """What closes the upstream connection of an answer from outside (a stop).

    The socket is shut down first: the FIN leaves now, not when the busy loop
    next gets to the transport's own close, so the provider stops generating
    at once however many streams the proxy is relaying."""

    def close() -> None:
        connection = upstream.connection
        transport = connection.transport if connection is not None else None
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        upstream.close()

    return close


class Abandon:
    """What closes the upstream while it has not answered yet: cancel the await of it."""

    __slots__ = ("task", "used")

    def __init__(self, task: asyncio.Task[object] | None) -> None:
        self.task = task
        self.used = False

    def __call__(self) -> None:
        if self.task is not None:
            self.used = True
            self.task.cancel()

    def swallow(self) -> bool:
        """Take back our own cancellation; False if another one (the client
        leaving, shutdown) is pending too, which must then go on."""
        return self.task is not None and self.task.uncancel() == 0
