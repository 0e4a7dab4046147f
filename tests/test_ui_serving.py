"""How ``python proxy.py`` serves the chat page (types, caching, CSP) and answers browsers of other origins (CORS)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser

import aiohttp
import pytest

from .conftest import MockProvider, Proxy, proxy_config, start_proxy
from .helpers import provider_request

APP_ORIGIN = "http://app.example.test:3000"


@pytest.fixture(scope="module")
def ui_proxy(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    config = proxy_config(mock_provider, ui={"enabled": True}, cors={"allow_origins": [APP_ORIGIN]})
    proxy = start_proxy(tmp_path_factory.mktemp("ui-serving"), config)
    yield proxy
    proxy.program.stop()


@pytest.fixture(scope="module")
def plain_proxy(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """No ui and no cors keys: what an existing config gets."""
    proxy = start_proxy(tmp_path_factory.mktemp("plain"), proxy_config(mock_provider))
    yield proxy
    proxy.program.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/index.html", "text/html; charset=utf-8"),
        ("/ui/cancelproxy.js", "text/javascript; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ],
)
async def test_files_have_their_types_and_revalidate(
    ui_proxy: Proxy, http: aiohttp.ClientSession, path: str, content_type: str
) -> None:
    async with http.get(ui_proxy.root + path) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == content_type
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        etag = response.headers["ETag"]
        body = await response.read()
    assert body
    async with http.get(ui_proxy.root + path, headers={"If-None-Match": etag}) as response:
        assert response.status == 304 and await response.read() == b""
        assert response.headers["ETag"] == etag and response.headers["Cache-Control"] == "no-cache"
    async with http.get(ui_proxy.root + path, headers={"If-None-Match": '"an-older-version"'}) as response:
        assert response.status == 200 and await response.read() == body
    async with http.head(ui_proxy.root + path) as response:
        assert response.status == 200 and response.headers["ETag"] == etag


class _Inline(HTMLParser):
    """Whatever a strict CSP would refuse to run or apply in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "style":
            self.found.append("<style>")
        if tag == "script" and "src" not in names:
            self.found.append("<script> without src")
        self.found += [f"{tag} {name}=" for name in names if name.startswith("on") or name == "style"]
        self._in = tag if tag == "script" else None

    def handle_data(self, data: str) -> None:
        if self._in == "script" and data.strip():
            self.found.append("script text")

    def handle_endtag(self, tag: str) -> None:
        self._in = None


async def test_the_page_has_a_strict_csp_and_nothing_inline(ui_proxy: Proxy, http: aiohttp.ClientSession) -> None:
    async with http.get(ui_proxy.root + "/ui/") as response:
        csp = response.headers["Content-Security-Policy"]
        html = await response.text()
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert "unsafe" not in csp
    parser = _Inline()
    parser.feed(html)
    assert parser.found == []
    assert '<script type="module" src="app.js"></script>' in html


async def test_ui_redirects_to_its_slash_and_serves_only_its_files(
    ui_proxy: Proxy, http: aiohttp.ClientSession
) -> None:
    async with http.get(ui_proxy.root + "/ui", allow_redirects=False) as response:
        assert response.status == 308 and response.headers["Location"] == "/ui/"
    for path in ("/ui/nope.js", "/ui/%2e%2e/config.yaml", "/ui/..%2fui.py", "/ui/ui.py"):
        async with http.get(ui_proxy.root + path) as response:
            assert response.status == 404, path
            assert (await response.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/ui/", "/ui/cancelproxy.js", "/ui"])
async def test_nothing_is_served_when_the_ui_is_not_enabled(
    plain_proxy: Proxy, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.get(plain_proxy.root + path, allow_redirects=False) as response:
        assert response.status == 404
        error = (await response.json())["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert "Content-Security-Policy" not in response.headers


def _preflight(method: str = "POST", headers: str = "content-type,x-session-id,authorization") -> dict[str, str]:
    return {"Origin": APP_ORIGIN, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


async def test_cors_is_off_by_default(plain_proxy: Proxy, http: aiohttp.ClientSession) -> None:
    for path in ("/v1/chat/completions", "/v1/models", "/api/chat/cancel/s1", "/sessions/s1"):
        async with http.options(plain_proxy.root + path, headers=_preflight()) as response:
            assert response.status == 403, path  # answered here, never forwarded
            assert "Access-Control-Allow-Origin" not in response.headers, path
    async with http.post(plain_proxy.root + "/sessions/s1/cancel", headers={"Origin": APP_ORIGIN}) as response:
        assert response.status == 403 and "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("told", ["sec-fetch-site", "origin-only"])
async def test_a_page_of_another_origin_cannot_spend_the_key(
    plain_proxy: Proxy, mock_provider: MockProvider, http: aiohttp.ClientSession, told: str
) -> None:
    # A text/plain POST needs no preflight: forwarded, it spent the configured
    # key for any site, and an upstream's own "Access-Control-Allow-Origin: *"
    # would have let the page read the answer too.
    def body(tag: str) -> str:
        return json.dumps({"model": "mock-1", "messages": [], "mock": {"tokens": 2, "rate": 0, "tag": tag}})

    foreign = {"Origin": "https://evil.example.test", "Content-Type": "text/plain"}
    if told == "sec-fetch-site":
        foreign["Sec-Fetch-Site"] = "cross-site"
    refused = f"cross-origin-{told}"
    async with http.post(plain_proxy.base_url + "/chat/completions", data=body(refused), headers=foreign) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "origin_not_allowed"
    # The proxy's own page is of its origin, whatever Host a proxy in front of it sends.
    own = {"Origin": "https://chat.example.test", "Sec-Fetch-Site": "same-origin", "Content-Type": "text/plain"}
    if told == "origin-only":
        own = {"Origin": plain_proxy.root, "Content-Type": "text/plain"}
    async with http.post(plain_proxy.base_url + "/chat/completions", data=body(f"own-{told}"), headers=own) as answer:
        assert answer.status == 200
    seen = await provider_request(mock_provider.root, f"own-{told}")
    assert seen["headers"]["Origin"] == own["Origin"]
    async with http.get(f"{mock_provider.root}/_mock/requests/{refused}") as response:
        assert response.status == 404  # the refused one never reached the provider


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/mock/v1/chat/completions",
        "/v1/models",
        "/api/chat/cancel/s1",
        "/sessions/s1/cancel",
        "/requests/req_x/cancel",
        "/sessions/s1",
        "/requests/req_x",
        "/requests/req_x/stream",
    ],
)
async def test_a_preflight_is_answered_by_the_proxy(ui_proxy: Proxy, http: aiohttp.ClientSession, path: str) -> None:
    async with http.options(ui_proxy.root + path, headers=_preflight()) as response:
        # 204 with the proxy's headers: the mock provider has no OPTIONS route, so it was not asked.
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert response.headers["Access-Control-Allow-Headers"] == "content-type,x-session-id,authorization"
        assert "Origin" in response.headers["Vary"]


async def test_a_preflight_from_another_origin_is_refused(ui_proxy: Proxy, http: aiohttp.ClientSession) -> None:
    headers = {**_preflight(), "Origin": "http://evil.example.test"}
    async with http.options(ui_proxy.root + "/v1/chat/completions", headers=headers) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "origin_not_allowed"
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_answers_to_an_allowed_origin_expose_the_ids(ui_proxy: Proxy, http: aiohttp.ClientSession) -> None:
    body = {"model": "mock-1", "stream": True, "messages": [{"role": "user", "content": "hi"}], "mock": {"rate": 0}}
    headers = {"Origin": APP_ORIGIN, "X-Session-Id": "cors-1"}
    async with http.post(ui_proxy.root + "/v1/chat/completions", json=body, headers=headers) as response:
        assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"x-session-id", "x-request-id"} <= exposed
        assert "Origin" in response.headers["Vary"]
        assert (await response.read()).endswith(b"data: [DONE]\n\n")
    for method, path in [("GET", "/sessions/cors-1"), ("POST", "/api/chat/cancel/cors-1"), ("GET", "/v1/models")]:
        async with http.request(method, ui_proxy.root + path, headers=headers) as response:
            assert response.status == 200, path
            assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN, path
    # Another origin, or a route that is not the API: no CORS headers.
    async with http.get(ui_proxy.root + "/sessions/cors-1", headers={"Origin": "http://evil.example.test"}) as response:
        assert "Access-Control-Allow-Origin" not in response.headers
    for path in ("/ui/", "/ui/app.js", "/metrics", "/healthz"):
        async with http.get(ui_proxy.root + path, headers={"Origin": APP_ORIGIN}) as response:
            assert "Access-Control-Allow-Origin" not in response.headers, path


async def test_any_frontend_may_import_the_module(
    plain_proxy: Proxy, ui_proxy: Proxy, http: aiohttp.ClientSession
) -> None:
    async with http.get(ui_proxy.root + "/ui/cancelproxy.js", headers={"Origin": "http://anywhere.test"}) as response:
        assert response.status == 200 and response.headers["Access-Control-Allow-Origin"] == "*"


async def test_any_origin(
    mock_provider: MockProvider, http: aiohttp.ClientSession, tmp_path_factory: pytest.TempPathFactory
) -> None:
    proxy = start_proxy(tmp_path_factory.mktemp("any"), proxy_config(mock_provider, cors={"allow_origins": ["*"]}))
    try:
        async with http.options(proxy.root + "/v1/chat/completions", headers=_preflight()) as response:
            assert response.status == 204 and response.headers["Access-Control-Allow-Origin"] == "*"
        async with http.get(proxy.root + "/v1/models", headers={"Origin": "http://anywhere.test"}) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "*"
    finally:
        proxy.program.stop()
