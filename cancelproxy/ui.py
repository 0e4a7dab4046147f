"""The reference chat page: the files of ``cancelproxy/ui/`` served at ``/ui/`` (``ui.enabled``).

The page is a handful of small files known at start, so they are read once
into memory and served from there with a content-hash ETag. aiohttp's static
route would guess their types from the machine's MIME table (``.js`` varies
between systems; a module script needs a JavaScript type) and serves no index
page, so these few lines do it instead.

Every answer carries a strict Content-Security-Policy: the page runs only its
own files (no inline script or style), talks only to the proxy that served
it, and cannot be framed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from .errors import NotFound

__all__ = ["add_ui_routes"]

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

# The module any frontend can import (the rest is the page's own).
_MODULE = "cancelproxy.js"

_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated every time (a 304 when unchanged): a page and the module it
    # imports must never mix two versions after an upgrade.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class _File:
    body: bytes
    content_type: str
    etag: str


_UI: web.AppKey[dict[str, _File]] = web.AppKey("cancelproxy.ui")


def _load() -> dict[str, _File]:
    files = {}
    for entry in (resources.files("cancelproxy") / "ui").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            files[entry.name] = _File(body, _TYPES[suffix], etag)
    return files


def _matches(if_none_match: str, etag: str) -> bool:
    # Weak comparison (RFC 9110 13.1.2): a proxy in between may have added W/.
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


async def _serve(request: web.Request) -> web.Response:
    name = request.match_info.get("name") or "index.html"
    file = request.app[_UI].get(name)
    if file is None:
        raise NotFound(f"no file '/ui/{name}'", code="not_found")
    headers = {**_PAGE_HEADERS, "ETag": file.etag}
    if name == _MODULE:
        # Module scripts are fetched with CORS: a frontend of any origin may
        # import it from here. It is public and carries no credentials.
        headers["Access-Control-Allow-Origin"] = "*"
    if _matches(request.headers.get("If-None-Match", ""), file.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=file.body, headers={**headers, "Content-Type": file.content_type})


async def _to_index(request: web.Request) -> web.Response:
    # The page imports its module by a relative URL, which needs the slash.
    raise web.HTTPPermanentRedirect("/ui/")


def add_ui_routes(app: web.Application) -> None:
    app[_UI] = _load()
    app.router.add_get("/ui", _to_index)
    app.router.add_get("/ui/", _serve)
    app.router.add_get("/ui/{name}", _serve)
