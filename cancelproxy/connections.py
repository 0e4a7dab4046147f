"""Client connections: how many are open, which wait for a request head, and each one's guards.

``GuardedHandler`` is aiohttp's protocol for one connection (its
``RequestHandler``) with three additions, each at a method aiohttp calls on
itself, which is the narrowest extension it allows:

- ``handle_error``: aiohttp's answer to a request it cannot parse (a request
  line or header field over 8,190 bytes, obs-fold, a bare CR or LF, NUL,
  Content-Length beside Transfer-Encoding, ...) or whose handler raised, is
  text/plain. Here it is OpenAI's error shape, with a status that says what
  was wrong (400, 414, 431, 500), and the connection closes after it.
- ``connection_made`` / ``data_received`` / ``finish_response``: a request
  head must be complete ``head_timeout_s`` after the connection opened, or
  after its first byte on a connection kept alive (an idle one is left to
  aiohttp's ``keepalive_timeout``); else a 408 and the connection closes.
- ``evict``: when the proxy is full, the connection that has waited longest
  for a request head makes room for a new one (``Connections``).

``GuardedServer`` is aiohttp's ``Server`` building them, and telling each
when aiohttp has parsed a head. tests/test_server.py pins what this relies on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from .errors import (
    CLOSE_CONNECTION,
    BadRequest,
    HeaderFieldsTooLarge,
    ProxyError,
    RequestLineTooLong,
    RequestTimeout,
    TooManyConnections,
    error_response,
    raw_error_response,
    refusal_reason,
)

__all__ = ["Connections", "GuardedHandler", "GuardedServer"]

# aiohttp's message when a head has more than max_headers fields (both its parsers).
_TOO_MANY_HEADERS = "Too many headers received"


class Connections:
    """The open client connections, and which of them wait for a request head.

    A connection counts from its accept to its close. One that waits for a
    head (just opened, idle between requests, or sending a head) may be
    evicted to make room; one whose request is being handled may not.
    """

    def __init__(self, max_connections: int, head_timeout_s: float, log: logging.Logger) -> None:
        self.max_connections = max_connections
        self.head_timeout_s = head_timeout_s
        self.log = log
        self._accepted = 0  # accepted, not yet handed to aiohttp
        self._open: set[GuardedHandler] = set()
        # Insertion-ordered: the first has waited longest.
        self._waiting: dict[GuardedHandler, None] = {}

    def reserve(self) -> bool:
        """Room for a connection just accepted, evicting one if need be; False if there is none."""
        if self._accepted + len(self._open) >= self.max_connections and not self.evict_oldest():
            return False
        self._accepted += 1
        return True

    def release(self) -> None:
        """A reserved connection was handed to aiohttp (and counts as open), or failed."""
        self._accepted -= 1

    def evict_oldest(self) -> bool:
        oldest = next(iter(self._waiting), None)
        if oldest is None:
            return False
        oldest.evict()
        return True

    def opened(self, handler: GuardedHandler) -> None:
        self._open.add(handler)

    def waiting(self, handler: GuardedHandler) -> None:
        self._waiting.pop(handler, None)
        self._waiting[handler] = None

    def busy(self, handler: GuardedHandler) -> None:
        self._waiting.pop(handler, None)

    def closed(self, handler: GuardedHandler) -> None:
        self._open.discard(handler)
        self._waiting.pop(handler, None)


class GuardedHandler(web.RequestHandler):
    """aiohttp's protocol for one connection, with a head timeout, eviction and OpenAI-shaped HTTP errors.

    It watches the bytes of a head only while it waits for one, and stops at
    the end of the request line: enough to tell whether a head has begun
    (a timeout then answers 408; before, it just closes) and whether the
    request line or a header field was too long (414 or 431).
    """

    __slots__ = (
        "_connections",
        "_waiting_for_head",
        "_head_timer",
        "_head_started",
        "_request_line_bytes",
        "_request_line_ended",
        "_unread_body",
    )

    def __init__(self, manager: web.Server, connections: Connections, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._connections = connections
        self._waiting_for_head = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False
        self._request_line_bytes = 0
        self._request_line_ended = False
        # The last request's body, while aiohttp reads and drops what is left of it.
        self._unread_body: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connections.opened(self)
        self._wait_for_head(timed=True)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        self._connections.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Bytes after an answer may still be the last request's body, not a new head.
        if self._waiting_for_head and data and (self._unread_body is None or self._unread_body.is_eof()):
            self._unread_body = None
            self._note_head_bytes(data)
        super().data_received(data)

    def head_received(self) -> None:
        """aiohttp parsed a whole head (or gave up on a broken one): a request is being handled."""
        self._waiting_for_head = False
        self._stop_head_timer()
        self._connections.busy(self)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        # aiohttp calls this once the handler returned, to send the answer's
        # end. Then the connection closes at once (an answer marked so), or
        # waits for its next head, untimed until that head's first byte.
        sent, reset = await super().finish_response(request, resp, start_time)
        if reset:
            return sent, reset
        if sent.get(CLOSE_CONNECTION):
            self._close_now(None)
        else:
            self._unread_body = None if request.content.is_eof() else request.content
            self._wait_for_head(timed=False)
        return sent, reset

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (400) or whose handler raised (500).

        In OpenAI's error shape, with a status that says what was wrong; as
        aiohttp's own, it closes the connection.
        """
        if request.writer.output_size > 0:
            # As aiohttp's own: an answer has begun, so another cannot be sent.
            raise ConnectionError("an answer was begun: the error cannot be sent")
        error = self._error_for(status, exc)
        if error.status >= 500:
            self.log_exception("error handling a request from %s", request.remote, exc_info=exc)
        else:
            # Debug, as the proxy's other 4xx: the internet sends plenty of
            # broken requests. The code, not the message: aiohttp's reason may
            # quote what the client sent.
            self._connections.log.debug("refused a request from %s: %d %s", request.remote, error.status, error.code)
        response = error_response(error)
        response.force_close()
        return response

    def evict(self) -> None:
        """Make room for a new connection: this one has waited longest for its request head."""
        self._close_now(
            TooManyConnections("the proxy is at its connection limit, and this connection had not sent its request")
            if self._head_started
            else None
        )

    def _error_for(self, status: int, exc: BaseException | None) -> ProxyError:
        if status >= 500:
            failed = ProxyError("the proxy failed to handle the request")
            failed.status = status
            return failed
        if isinstance(exc, LineTooLong):
            # aiohttp raises it for both; only the length of the request line tells which.
            if self._request_line_bytes > self.max_line_size:
                return RequestLineTooLong(f"the request line is longer than {self.max_line_size} bytes")
            return HeaderFieldsTooLarge(f"a header field is larger than {self.max_field_size} bytes")
        if isinstance(exc, HttpProcessingError) and exc.message == _TOO_MANY_HEADERS:
            return HeaderFieldsTooLarge(f"the request has more than {self.max_headers} header fields")
        shaped = BadRequest(f"the request is not valid HTTP/1.1: {refusal_reason(exc)}", code="invalid_http")
        shaped.status = status  # aiohttp's choice: 400 for everything it cannot parse
        return shaped

    def _wait_for_head(self, *, timed: bool) -> None:
        self._waiting_for_head = True
        self._head_started = False
        self._request_line_bytes = 0
        self._request_line_ended = False
        self._connections.waiting(self)
        if timed:
            self._start_head_timer()

    def _note_head_bytes(self, data: bytes) -> None:
        if not self._head_started:
            data = data.lstrip(b"\r\n")  # empty lines before a request line are allowed
            if not data:
                return
            self._head_started = True
            if self._head_timer is None:
                self._start_head_timer()
        if not self._request_line_ended:
            end = data.find(b"\n")
            self._request_line_bytes += len(data) if end < 0 else end
            self._request_line_ended = end >= 0

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self._connections.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._waiting_for_head:
            return
        timeout_s = self._connections.head_timeout_s
        # Nothing was asked on a connection that sent nothing: nothing to answer.
        self._close_now(
            RequestTimeout(f"the request head did not arrive within {timeout_s:g} s") if self._head_started else None
        )

    def _close_now(self, answer: ProxyError | None) -> None:
        self._stop_head_timer()
        self._waiting_for_head = False
        self._connections.closed(self)
        transport = self.transport
        if transport is not None:
            if answer is not None:
                transport.write(raw_error_response(answer))
            # abort, not close: close would wait for ever on a client that
            # does not read. What the kernel took is still sent, then a FIN.
            transport.abort()
        self.force_close()


_RequestFactory = Callable[
    [RawRequestMessage, StreamReader, web.RequestHandler, AbstractStreamWriter, "asyncio.Task[None]"],
    web.BaseRequest,
]


class GuardedServer(web.Server):
    """aiohttp's Server, building ``GuardedHandler``s and telling them when a head is parsed."""

    def __init__(self, handler: Any, *, connections: Connections, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._guarded = connections  # not _connections: Server's own dict of handlers has that name
        app_request_factory: _RequestFactory = self.request_factory

        # aiohttp calls the request factory once per parsed head (a broken one
        # included), just before that request's handler runs.
        def request_factory(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: web.RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> web.BaseRequest:
            if isinstance(protocol, GuardedHandler):
                protocol.head_received()
            return app_request_factory(message, payload, protocol, writer, task)

        self.request_factory = request_factory

    def __call__(self) -> GuardedHandler:
        # As Server.__call__, with the guarded class: the loop and the
        # handler options are what aiohttp's own passes.
        return GuardedHandler(self, self._guarded, loop=self._loop, **self._kwargs)
