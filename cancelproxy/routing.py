"""Which upstream a request goes to, its URL there, and which headers cross."""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .config import Config, Upstream

__all__ = [
    "PROXY_ONLY_HEADERS",
    "choose_upstream",
    "request_headers",
    "response_headers",
    "upstream_url",
]

# RFC 9110 §7.6.1 hop-by-hop headers, plus the Proxy-Connection of old clients.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Headers the proxy itself reads; the provider never sees them.
PROXY_ONLY_HEADERS = frozenset({"x-session-id"})
# The body is re-sent as the bytes aiohttp's server handed us: its length is
# recomputed, and the server already decoded any Content-Encoding.
_REQUEST_DROP = _HOP_BY_HOP | PROXY_ONLY_HEADERS | {"host", "content-length", "content-encoding"}
# aiohttp chunks the response itself; a copied Content-Length could truncate.
_RESPONSE_DROP = _HOP_BY_HOP | {"content-length"}


def choose_upstream(config: Config, explicit: str | None, model: object) -> Upstream | None:
    """The named upstream, else the first whose ``models`` globs match, else the default.

    None when ``explicit`` names no upstream.
    """
    if explicit is not None:
        return config.upstream(explicit)
    if isinstance(model, str):
        for upstream in config.upstreams:
            if upstream.serves(model):
                return upstream
    return config.upstream(config.default_upstream)


def upstream_url(base_url: str, raw_tail: str, raw_query: str) -> URL:
    """``base_url`` + the path after ``/v1``, query kept, without re-encoding either."""
    url = base_url + raw_tail
    if raw_query:
        url += "?" + raw_query
    return URL(url, encoded=True)


def _connection_named(headers: Mapping[str, str]) -> set[str]:
    # Connection may name further headers that are hop-by-hop for this hop only.
    named = headers.get("connection", "")
    return {token.strip().lower() for token in named.split(",") if token.strip()}


def request_headers(incoming: CIMultiDictProxy[str], upstream: Upstream) -> CIMultiDict[str]:
    drop = _REQUEST_DROP | _connection_named(incoming)
    headers = CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in drop)
    if upstream.api_key:
        headers["Authorization"] = f"Bearer {upstream.api_key}"
    return headers


def response_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    drop = _RESPONSE_DROP | _connection_named(incoming)
    return CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in drop)
