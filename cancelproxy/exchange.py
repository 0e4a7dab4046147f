"""What a relayed request is to the proxy: the relay's hooks, and the pass-through kind.

The relay (``relay.py``) moves bytes and calls these hooks at fixed points;
it never asks which kind of request it carries. There are two kinds:

- ``PassThrough`` — every ``/v1/*`` request that is not a generation: no
  record, no registration, the answer's bytes as they came, and the
  proxy's own errors in OpenAI's shape;
- ``Generation`` (``generation.py``) — a request of a generation protocol:
  registered, teed into its record, stoppable by a cancel route.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from aiohttp import web

from .errors import ProxyError, error_response, sse_error_event
from .live import StopCause
from .sse import Event
from .tee import PassThroughTee, Tee

__all__ = ["Exchange", "PassThrough"]


class Exchange(Protocol):
    @property
    def stop_reason(self) -> StopCause | None:
        """Why the request is being stopped, once it is (a cancel route, the client, shutdown)."""
        ...

    @property
    def wants_stream(self) -> bool:
        """The client asked for a stream (so a stop before any answer still ends as one)."""
        ...

    def attach_upstream(self, close: Callable[[], object]) -> None:
        """The way to close the upstream connection from outside, now or later."""
        ...

    def detach_upstream(self) -> None:
        """The way given to ``attach_upstream`` must no longer be called."""
        ...

    def close_upstream(self) -> None: ...

    def client_gone(self) -> bool:
        """The client left; True if the generation goes on without it (readers
        that resumed it follow, or its disconnect grace is running)."""
        ...

    def stop_for_shutdown(self) -> None:
        """The proxy is stopping while the generation goes on without its client."""
        ...

    def sent(self, data: bytes, events: list[Event]) -> None:
        """``data`` went to the client (or, with the client gone, would have):
        ``events`` are the events it carries, for the record."""
        ...

    def ended_with(self, data: bytes) -> None:
        """The proxy's own ending (cancelled, failed) went to the client."""
        ...

    def settle(self) -> None:
        """The upstream finished or failed on its own: the outcome is known."""
        ...

    async def before_answer(self) -> None:
        """Called before the client's answer begins (its status line)."""
        ...

    def tee(self, status: int, headers: Mapping[str, str]) -> Tee | PassThroughTee: ...

    def cancelled_ending(self) -> bytes:
        """The events that end a stream cleanly after a stop."""
        ...

    def error_event(self, error: ProxyError) -> bytes: ...

    def error_response(self, error: ProxyError, headers: Mapping[str, str]) -> web.Response: ...

    def finish(self, failure: ProxyError | None, upstream_status: int | None, bytes_out: int) -> None:
        """The request is over (its client has its end): account for it, without waiting."""
        ...


class PassThrough:
    """A plain pass-through: nothing is recorded, and only the client can stop it."""

    stop_reason: StopCause | None = None
    wants_stream = False

    def attach_upstream(self, close: Callable[[], object]) -> None:
        pass

    def detach_upstream(self) -> None:
        pass

    def close_upstream(self) -> None:
        pass

    def client_gone(self) -> bool:
        return False

    def stop_for_shutdown(self) -> None:
        pass

    def sent(self, data: bytes, events: list[Event]) -> None:
        pass

    def ended_with(self, data: bytes) -> None:
        pass

    def settle(self) -> None:
        pass

    async def before_answer(self) -> None:
        pass

    def tee(self, status: int, headers: Mapping[str, str]) -> PassThroughTee:
        return PassThroughTee()

    def cancelled_ending(self) -> bytes:
        return b""  # never stopped by anything but its client

    def error_event(self, error: ProxyError) -> bytes:
        return sse_error_event(error)

    def error_response(self, error: ProxyError, headers: Mapping[str, str]) -> web.Response:
        return error_response(error, headers)

    def finish(self, failure: ProxyError | None, upstream_status: int | None, bytes_out: int) -> None:
        pass
