"""CORS for the API routes, so a page served from another origin can chat, stop and read.

Only the origins ``cors.allow_origins`` names may call the API routes from a
page served elsewhere (none by default). A browser's request from any other
origin is refused with 403 before it goes anywhere: were it forwarded, a
page on any site could spend the configured key with a "simple" request
(a ``text/plain`` POST needs no preflight), and an upstream's own
``Access-Control-Allow-Origin: *`` would even let it read the answer. What
is a browser's cross-origin request the browser says itself
(``Sec-Fetch-Site``), which a reverse proxy in front that rewrites ``Host``
does not change; for a browser too old to send it, ``Origin`` is compared
with ``Host``. Clients that are not browsers send no ``Origin``.

Preflights are answered by the proxy itself and never forwarded: they are
caught in a middleware, before the pass-through route (which takes every
method, OPTIONS included) could send them upstream; that catch-all route is
also why aiohttp-cors, which adds an OPTIONS route per resource, does not
fit. The headers of actual answers are set when they are prepared, so
streamed answers get them too, and any ``Access-Control-*`` header an
upstream sent is replaced: the proxy's policy is the one that holds.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict

from .config import CorsConfig
from .errors import OriginNotAllowed, error_response

__all__ = ["EXPOSED_HEADERS", "setup_cors"]

# What a page needs to read from an answer: the ids it stops, reads and resumes by.
EXPOSED_HEADERS = "X-Session-Id, X-Request-Id"
_ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
_PREFLIGHT_MAX_AGE_S = "600"
# The routes a frontend calls: /v1 and /{upstream}/v1, cancels, reads, resume.
_API_PATH = re.compile(r"^/(?:[^/]+/)?v1(?:/|$)|^/(?:sessions|requests)/|^/api/chat/cancel/")
# A list of header names, as a preflight asks for them (it is echoed back).
_HEADER_LIST = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Policy:
    def __init__(self, config: CorsConfig) -> None:
        self._any = "*" in config.allow_origins
        self._origins = frozenset(config.allow_origins)

    def allowed(self, origin: str) -> str | None:
        """The Access-Control-Allow-Origin for ``origin``, or None if it may not call."""
        if self._any:
            return "*"
        return origin if origin.lower() in self._origins else None


def _vary(headers: CIMultiDict[str], *names: str) -> None:
    present = [v.strip() for v in headers.get("Vary", "").split(",") if v.strip()]
    headers["Vary"] = ", ".join([*present, *(n for n in names if n.lower() not in {p.lower() for p in present})])


def _is_preflight(request: web.Request) -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def _cross_origin(request: web.Request, origin: str) -> bool:
    """Whether a browser sent this request from a page of another origin."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("cross-site", "same-site")
    return urlsplit(origin).netloc.lower() != request.host.lower()


def setup_cors(app: web.Application, config: CorsConfig) -> None:
    policy = _Policy(config)

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or not _API_PATH.match(request.path):
            return await handler(request)
        asking = _is_preflight(request)
        allow = policy.allowed(origin)
        if allow is None:
            if asking or _cross_origin(request, origin):
                refused = OriginNotAllowed(f"origin '{origin}' may not call this proxy (cors.allow_origins)")
                return error_response(refused)
            return await handler(request)  # a page of the proxy's own origin (its chat page)
        if not asking:
            return await handler(request)
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Origin"] = allow
        response.headers["Access-Control-Allow-Methods"] = _ALLOWED_METHODS
        asked = request.headers.get("Access-Control-Request-Headers", "").strip()
        if asked and _HEADER_LIST.match(asked):
            # Any header: the SDKs send their own (x-stainless-*, OpenAI-Beta, ...).
            response.headers["Access-Control-Allow-Headers"] = asked
        response.headers["Access-Control-Max-Age"] = _PREFLIGHT_MAX_AGE_S
        _vary(response.headers, "Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")
        return response

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is None or _is_preflight(request) or not _API_PATH.match(request.path):
            return  # a preflight's answer was made whole by the middleware
        for name in [n for n in response.headers if n.lower().startswith("access-control-")]:
            response.headers.popall(name, None)
        allow = policy.allowed(origin)
        if allow is not None:
            response.headers["Access-Control-Allow-Origin"] = allow
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if allow != "*":
            _vary(response.headers, "Origin")

    app.middlewares.insert(0, preflight)
    app.on_response_prepare.append(on_prepare)
