"""The proxy's own errors, and their OpenAI-shaped answers.

The two sides of a proxy fail differently and must never be confused::

    ProxyError                  answered to the client in OpenAI's error shape
    ├── BadRequest              400: invalid JSON, bad X-Session-Id, malformed HTTP
    ├── RequestTimeout          408: the request's head or body came too slowly
    ├── OriginNotAllowed        403: a browser preflight from an origin not in cors.allow_origins
    ├── BodyTooLarge            413
    ├── RequestLineTooLong      414
    ├── HeaderFieldsTooLarge    431
    ├── NotFound                404: unknown route, session or request (or not yours)
    ├── RequestCancelled        499: a non-streaming request stopped by a cancel route
    ├── StoreUnavailable        503: a read while the record store is down
    ├── InternalError           500: something unexpected inside the proxy (a bug)
    ├── TooManyConnections      503: every connection is busy, or this one was evicted
    └── UpstreamError           the provider side (aiohttp *client* errors map here)
        ├── UpstreamUnreachable 502: could not connect, or it hung up before answering
        ├── UpstreamBroken      502: the answer broke off mid-body
        └── UpstreamTimeout     504: connect, first-byte or idle timeout

    DownstreamGone              the client side: writing to the client failed
                                (it went away). Never answered: there is no one
                                to answer. The relay treats it as a disconnect.

``map_upstream_error`` is the one place aiohttp client exceptions become
``UpstreamError``; nothing else inspects aiohttp's exception types on the
client side. On the server side, connections.py maps aiohttp's errors for a
request head and forward.py those for a body, both worded by
``refusal_reason``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, InvalidHeader

__all__ = [
    "CLOSE_CONNECTION",
    "BadRequest",
    "BodyTooLarge",
    "DownstreamGone",
    "InternalError",
    "HeaderFieldsTooLarge",
    "NotFound",
    "OriginNotAllowed",
    "ProxyError",
    "RequestCancelled",
    "RequestLineTooLong",
    "RequestTimeout",
    "StoreUnavailable",
    "TooManyConnections",
    "UpstreamBroken",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "error_body",
    "error_response",
    "map_upstream_error",
    "raw_error_response",
    "refusal_reason",
    "sse_error_event",
]

# Where aiohttp's parsing error messages start quoting the client's bytes.
_QUOTED_BYTES = re.compile(r"(?:^|(?<=\s))(?:bytearray\()?b?['\"]")

# Set on an answer after which the connection is closed at once: aiohttp
# would otherwise go on reading (up to 10 s) a request body the proxy gave up
# on. connections.py does the closing.
CLOSE_CONNECTION = web.ResponseKey("close_connection", bool)


class ProxyError(Exception):
    status = 500
    type = "proxy_error"
    code = "internal_error"
    # The connection cannot go on after this answer (a request half-read).
    closes_connection = False

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class BadRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class RequestTimeout(ProxyError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    closes_connection = True


class BodyTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    closes_connection = True  # the rest of the body is never read


class RequestLineTooLong(ProxyError):
    status = 414
    type = "invalid_request_error"
    code = "request_line_too_long"


class HeaderFieldsTooLarge(ProxyError):
    status = 431
    type = "invalid_request_error"
    code = "header_fields_too_large"


class OriginNotAllowed(ProxyError):
    status = 403
    type = "invalid_request_error"
    code = "origin_not_allowed"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class RequestCancelled(ProxyError):
    status = 499
    type = "request_cancelled"
    code = "request_cancelled"


class StoreUnavailable(ProxyError):
    status = 503
    type = "store_unavailable"
    code = "store_unavailable"


class InternalError(ProxyError):
    status = 500
    type = "proxy_error"
    code = "internal_error"


class TooManyConnections(ProxyError):
    status = 503
    type = "proxy_overloaded"
    code = "too_many_connections"
    closes_connection = True


class UpstreamError(ProxyError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamBroken(UpstreamError):
    code = "upstream_broken"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class DownstreamGone(Exception):
    """The client connection is gone; raised from writes to it."""


def error_body(error: ProxyError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def error_response(
    error: ProxyError, headers: Mapping[str, str] | None = None, *, body: dict[str, Any] | None = None
) -> web.Response:
    """The proxy's error as an answer; ``body`` is it in another protocol's shape (default: OpenAI's)."""
    shaped = error_body(error) if body is None else body
    response = web.json_response(shaped, status=error.status, headers=dict(headers) if headers else None)
    if error.closes_connection:
        response.force_close()
        response[CLOSE_CONNECTION] = True
    return response


def raw_error_response(error: ProxyError) -> bytes:
    """The whole HTTP/1.1 answer as bytes, ending the connection.

    For the server's guards (server.py, connections.py), which answer where aiohttp has no
    request object to build a ``web.Response`` for: a head that never
    completed, a connection refused before it was handed to aiohttp.
    """
    body = json.dumps(error_body(error), separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def sse_error_event(error: ProxyError) -> bytes:
    """The event openai-python turns into an ``APIError`` mid-stream."""
    return b"data: " + json.dumps(error_body(error), separators=(",", ":")).encode() + b"\n\n"


def map_upstream_error(exc: BaseException, upstream: str, *, answered: bool) -> UpstreamError:
    """Turn an aiohttp client error (or a timeout) on the provider side into ours.

    ``answered`` says whether the provider had sent its status line: a failure
    before it means the provider was not reached; after it, the answer broke.
    """
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(f"upstream '{upstream}' timed out")
    detail = str(exc) or type(exc).__name__
    if answered:
        return UpstreamBroken(f"upstream '{upstream}' broke off the answer: {detail}")
    return UpstreamUnreachable(f"upstream '{upstream}' is unreachable: {detail}")


def refusal_reason(exc: BaseException | None) -> str:
    """aiohttp's reason for refusing what a client sent, without the client's bytes it quotes after it.

    Those bytes could be anything the client sent, a key in a header or a
    query included, so they are neither echoed nor logged.
    """
    message = exc.message if isinstance(exc, HttpProcessingError) else ""
    if isinstance(exc, InvalidHeader):
        message = "Invalid HTTP header"
    kept = _QUOTED_BYTES.split(message, maxsplit=1)[0]
    return " ".join(kept.split()).strip(" :.^") or "malformed request"
